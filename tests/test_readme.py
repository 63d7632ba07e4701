"""The README's promises: every Python example runs as written in a fresh process, every command of its command
table is run by a test as the user runs it, and CI runs its test command."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def python_blocks(text: str) -> list[tuple[str, str]]:
    """(heading of the section, code) of every ```python block, in order."""
    blocks, heading = [], "top"
    for match in re.finditer(r"^(#+) ([^\n]*)$|^```python\n(.*?)^```", text, re.M | re.S):
        if match.group(2) is not None:
            heading = match.group(2).strip()
        else:
            blocks.append((heading, match.group(3)))
    return blocks


# What each example promises beyond running, checked in the same process right after it.
EXAMPLE_CHECKS = {
    "30 seconds": """
        assert tuple(embedding.shape) == (1, 512), embedding.shape
        lead_mask = inputs["lead_mask"][0].numpy()
        assert not lead_mask[6] and lead_mask.sum() == 11  # V1 absent
        import os
        assert os.path.isfile("my-encoder/modeling_ecg_encoder.py")
        assert type(reloaded).__name__ == "ECGEncoderModel"
    """,
    "K-MERL: knowledge-enhanced pretraining with any subset of leads": """
        assert tuple(probabilities.shape) == (1, 2), probabilities.shape
        assert bool(((probabilities > 0) & (probabilities < 1)).all())
        assert inputs["lead_mask"][0].sum().item() == 2
        assert model.config.entity_names == ["sinus rhythm", "atrial fibrillation"]
    """,
    "CLERC: ECG, echocardiogram and angiogram video, chest X-ray and their reports in one space": """
        assert tuple(similarity.shape) == (2, 2)
        assert tuple(inputs["echo_values"].shape) == (2, 3, 8, 56, 56)
        assert torch.isfinite(outputs.loss)
        counts = outputs.pair_counts
        assert counts[0, 1] == counts[1, 5] == counts[0, 5] == 2  # ECG-echo, echo-echo report, ECG-echo report
        assert counts[2:5].sum() == 0  # no angiogram, chest X-ray or ECG report
    """,
    'ECG-only self-supervised baselines: SimCLR, CLOCS, 3KG, PCLR and "good views"': """
        assert tuple(inputs.shape) == (8, 12, 500) and bool(lead_mask.all())
        # CMSC: the two views of each ECG are its two halves, in some order
        for n in range(4):
            halves = {tuple(ecgs[n, 0, :500].tolist()), tuple(ecgs[n, 0, 500:].tolist())}
            assert {tuple(inputs[2 * n, 0].tolist()), tuple(inputs[2 * n + 1, 0].tolist())} == halves
        assert torch.isfinite(loss) and loss.item() > 0
        assert type(encoder).__name__ == "ECGEncoderModel"
        assert all(p.grad is not None for p in model.projection.parameters())
    """,    "Pipelines": """
        for result in (by_name, by_prompts, top_two):
            scores = [item["score"] for item in result]
            assert scores == sorted(scores, reverse=True), result
        assert {item["label"] for item in by_name} == {"atrial fibrillation", "sinus rhythm"}
        assert {item["label"] for item in by_prompts} == {"AFIB", "SR"}
        assert len(top_two) == 2 and all(0 < item["score"] < 1 for item in top_two)
        assert len(batch) == 2 and all(len(result) == 3 for result in batch)
        import json
        assert set(json.load(open("clf/config.json"))["custom_pipelines"]) == {"ecg-classification"}
    """,
    "ECG-MTL: one encoder, many clinical targets": """
        assert torch.isfinite(out.loss) and abs(out.loss_weights.sum().item() - 1) < 1e-6
        assert out.classification_logits.shape == (4, 2) and out.regression_predictions.shape == (4, 2)
        assert tuple(lvef.shape) == (4,)
        assert all(p.grad is not None for p in model.ecg_encoder.parameters() if p.requires_grad)
    """,
}


def test_readme_has_the_thirty_second_example() -> None:
    assert "30 seconds" in [heading for heading, _ in python_blocks(README)]


@pytest.mark.parametrize(("heading", "code"), python_blocks(README), ids=[h for h, _ in python_blocks(README)])
def test_python_example_runs(heading: str, code: str, tmp_path: Path) -> None:
    script = code + "\n" + textwrap.dedent(EXAMPLE_CHECKS.get(heading, "")) + "\nprint('README example done')\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"README example under '{heading}' failed:\n{proc.stderr[-3000:]}"
    assert proc.stdout.rstrip().endswith("README example done")


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci  # CI extracts the command from the README
    block = README.split("<!-- test-command -->", 1)[1]
    command = re.search(r"```bash\n(.*?)\n```", block, re.S).group(1)
    assert command.startswith("pip install torch==2.13.0 && ") and "pytest" in command


# ---------------------------------------------------------------------------------------- command table
def readme_commands() -> list[list[str]]:
    """The subcommand path (``["data", "synth"]``, ``["bench", "encoders"]``, ...) of every ``cardiomm ...`` in the
    README's command table, as the ``cardiomm`` parser reads it."""
    from cardiomm.cli import build_parser

    section = README.split("## Command line", 1)[1].split("\n## ", 1)[0]
    commands = []
    for line in section.splitlines():
        match = re.match(r"\|\s*`cardiomm ([^`]*)`", line)
        if not match:
            continue
        words, parser, path = match.group(1).split(), build_parser(), []
        while words:
            sub = next((a for a in parser._actions if isinstance(a.choices, dict) and a.choices), None)
            if sub is None or words[0] not in sub.choices:
                break
            parser = sub.choices[words[0]]
            path.append(words.pop(0))
        assert path, f"`cardiomm {match.group(1)}` of the README is not a cardiomm command"
        commands.append(path)
    return commands


def _string_runs(tree: ast.AST) -> list[list[str]]:
    """Runs of consecutive string literals in list / tuple literals and in call arguments."""
    runs = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)):
            items = node.elts
        else:
            items = node.args if isinstance(node, ast.Call) else []
        run: list[str] = []
        for item in [*items, None]:
            if isinstance(item, ast.Constant) and isinstance(item.value, str):
                run.append(item.value)
            elif run:
                runs.append(run)
                run = []
    return runs


def _runs_cardiomm_in_a_subprocess(source: str) -> bool:
    if "from cli_process import" in source and ("run_cardiomm" in source or "CARDIOMM" in source):
        return True  # tests/cli_process.py runs ``python -m cardiomm.cli`` in a subprocess
    return "subprocess" in source and ('"cardiomm.cli"' in source or "shutil.which(\"cardiomm\")" in source)


def test_every_readme_command_is_run_by_a_test_in_a_subprocess() -> None:
    """Each command of the README table appears as the argv of a ``cardiomm`` subprocess in some test file."""
    runs = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        source = path.read_text()
        if _runs_cardiomm_in_a_subprocess(source):
            runs += _string_runs(ast.parse(source))
    commands = readme_commands()
    assert {" ".join(c) for c in commands} >= {"data synth", "data convert", "pretrain", "evaluate", "push",
                                                "bench encoders", "quickstart"}
    untested = [" ".join(c) for c in commands
                if not any(run[i:i + len(c)] == c for run in runs for i in range(len(run)))]
    assert not untested, f"README commands no test runs as `cardiomm ...` in a subprocess: {untested}"
