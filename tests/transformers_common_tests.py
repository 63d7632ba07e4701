"""transformers' own common model tests (``ModelTesterMixin``), for the installed transformers version.

transformers does not ship its test suite in the wheel, so the files come from the source distribution of exactly
the installed version, looked up in this order:

1. ``$TRANSFORMERS_TESTS_DIR``: a folder holding the sdist's top-level ``tests/*.py`` (e.g. the ``tests/`` folder
   of an extracted ``transformers-<version>.tar.gz``), copied to ``<cache>/<version>-<hash of the files>/``;
2. the cache ``~/.cache/cardiomm/transformers-tests/<version>/`` (``$CARDIOMM_TRANSFORMERS_TESTS_CACHE`` replaces
   ``~/.cache/cardiomm/transformers-tests``), filled by step 3 on first use;
3. ``pip download --no-binary :all: --no-deps transformers==<version>`` (PyPI), whose ``tests/*.py`` are
   extracted into the cache.

The files become the importable package ``transformers_tests``. The sdist lacks two modules that
``test_modeling_common.py`` imports; they are written here instead:

- ``generation/test_utils.py``: ``GenerationTesterMixin`` as an empty class (cardiomm models do not generate);
- ``exporters/test_export.py``: ``ExportTesterMixin`` with one check, ``test_torch_export``: every model class
  exports with ``torch.export.export`` on the tester's inputs and the exported program gives the eager outputs
  (turned off by the mixin's own ``test_torch_exportable = False``).

When the files cannot be obtained (no network, no cache), :func:`load_model_tester_mixin` raises
:class:`TransformersTestsUnavailable`, whose message says why, and the tests that use it skip.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

import pytest
import transformers

PACKAGE = "transformers_tests"
CACHE_ENV = "CARDIOMM_TRANSFORMERS_TESTS_CACHE"
SOURCE_ENV = "TRANSFORMERS_TESTS_DIR"

GENERATION_MODULE = '''"""Stand-in for transformers' tests/generation/test_utils.py, absent from the sdist: no
cardiomm model generates, so the generation tests do not apply."""


class GenerationTesterMixin:
    pass
'''

EXPORT_MODULE = '''"""Stand-in for transformers' tests/exporters/test_export.py, absent from the sdist: the model
exports with ``torch.export.export`` on the tester's inputs and the exported program gives the eager outputs."""

import torch


def _tensors(output):
    if isinstance(output, torch.Tensor):
        return [output]
    if hasattr(output, "to_tuple"):
        output = output.to_tuple()
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    return []


class ExportTesterMixin:
    test_torch_exportable = True

    def test_torch_export(self):
        if not self.test_torch_exportable:
            self.skipTest(reason="test_torch_exportable is False for this model")
        for model_class in self.all_model_classes:
            with self.subTest(model_class.__name__):
                config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
                inputs = self._prepare_for_class(inputs_dict, model_class)
                torch.manual_seed(0)
                model = model_class(config).eval()
                with torch.no_grad():
                    expected = _tensors(model(**inputs))
                    program = torch.export.export(model, args=(), kwargs=inputs, strict=False)
                    actual = _tensors(program.module()(**inputs))
                self.assertEqual(len(actual), len(expected))
                for got, want in zip(actual, expected):
                    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
'''


class TransformersTestsUnavailable(RuntimeError):
    """transformers' test files for the installed version could not be found or downloaded."""


def _cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "cardiomm" / "transformers-tests")


def _write_package(test_files: dict[str, bytes], parent: Path) -> None:
    """Write ``transformers_tests/`` (the given top-level test files plus the two stand-ins) under ``parent``."""
    package = parent / PACKAGE
    (package / "generation").mkdir(parents=True)
    (package / "exporters").mkdir()
    for name, data in test_files.items():
        (package / name).write_bytes(data)
    (package / "__init__.py").write_text("")
    for relative, text in STAND_INS.items():
        (package / relative).parent.joinpath("__init__.py").write_text("")
        (package / relative).write_text(text)


STAND_INS = {"generation/test_utils.py": GENERATION_MODULE, "exporters/test_export.py": EXPORT_MODULE}


def _refresh_stand_ins(package: Path) -> None:
    """Rewrite the stand-in modules of a cached package whose text differs from this file's (atomic replace)."""
    for relative, text in STAND_INS.items():
        path = package / relative
        if path.read_text() != text:
            temporary = path.with_name(f".{path.name}.{os.getpid()}")
            temporary.write_text(text)
            os.replace(temporary, path)


def _publish(test_files: dict[str, bytes], target: Path) -> None:
    """Build the package in a temporary folder beside ``target`` and rename it into place (atomic; a concurrent
    process that got there first wins)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _write_package(test_files, staging)
        os.rename(staging, target)
    except OSError:
        if not (target / PACKAGE / "test_modeling_common.py").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _files_from_folder(folder: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in folder.glob("*.py")}
    if "test_modeling_common.py" not in files:
        raise TransformersTestsUnavailable(f"${SOURCE_ENV}={folder} holds no test_modeling_common.py")
    return files


def _files_from_pypi(version: str) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as download:
        command = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--quiet",
                   f"transformers=={version}", "--dest", download]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise TransformersTestsUnavailable(f"`{' '.join(command[2:])}` failed: {error}") from error
        archives = list(Path(download).glob("transformers-*.tar.gz"))
        if result.returncode != 0 or not archives:
            reason = (result.stderr.strip().splitlines() or ["no sdist downloaded"])[-1]
            raise TransformersTestsUnavailable(f"`pip download` of the transformers=={version} sdist failed "
                                               f"(offline?): {reason}")
        files = {}
        with tarfile.open(archives[0]) as archive:
            for member in archive.getmembers():
                parts = Path(member.name).parts  # transformers-<version>/tests/<name>.py
                if member.isfile() and len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py"):
                    files[parts[2]] = archive.extractfile(member).read()
    if "test_modeling_common.py" not in files:
        raise TransformersTestsUnavailable(f"the transformers=={version} sdist holds no tests/test_modeling_common.py")
    return files


def transformers_tests_path(version: str = transformers.__version__) -> Path:
    """The folder to put on ``sys.path`` so that ``transformers_tests`` imports (see the module docstring)."""
    source = os.environ.get(SOURCE_ENV)
    if source:
        files = _files_from_folder(Path(source))
        digest = hashlib.sha256(b"".join(name.encode() + files[name] for name in sorted(files))).hexdigest()[:12]
        target = _cache_root() / f"{version}-{digest}"
    else:
        target = _cache_root() / version
    if (target / PACKAGE / "test_modeling_common.py").is_file():
        _refresh_stand_ins(target / PACKAGE)
        return target
    if not source:
        files = _files_from_pypi(version)
    _publish(files, target)
    return target


def load_model_tester_mixin() -> type:
    """transformers' ``ModelTesterMixin`` of the installed version; raises :class:`TransformersTestsUnavailable`."""
    path = str(transformers_tests_path())
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        with warnings.catch_warnings():  # transformers registers its own marks (flash_attn_test, ...) in its conftest
            warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
            module = importlib.import_module(f"{PACKAGE}.test_modeling_common")
    except ImportError as error:
        raise TransformersTestsUnavailable(f"transformers' test_modeling_common.py from {path} does not import: "
                                           f"{error}") from error
    return module.ModelTesterMixin
