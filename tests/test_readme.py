"""The README's promises: its Python example runs as written, and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_thirty_second_example_runs(tmp_path: Path, monkeypatch) -> None:
    code = re.search(r"## 30 seconds\n\n```python\n(.*?)```", README, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert tuple(namespace["embedding"].shape) == (1, 512)
    lead_mask = namespace["inputs"]["lead_mask"][0].numpy()
    assert not lead_mask[6] and lead_mask.sum() == 11  # V1 absent
    assert (tmp_path / "my-encoder" / "modeling_ecg_encoder.py").is_file()
    assert type(namespace["reloaded"]).__name__ == "ECGEncoderModel"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci  # CI extracts the command from the README
    block = README.split("<!-- test-command -->", 1)[1]
    command = re.search(r"```bash\n(.*?)\n```", block, re.S).group(1)
    assert command.startswith("pip install torch==2.13.0 && ") and "pytest" in command
