"""``cardiomm pretrain`` checks the whole experiment file before any work: a misspelt key anywhere (``model``, a
nested tower configuration, ``data``, ``data.synthetic``, a ``--set`` override) is an error naming the file, the
key's place and the closest valid key (exit 2, no traceback), and nothing is built or written."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from cli_process import run_cardiomm

from cardiomm.training.config import resolve_config_path


def cardiomm(*args: str) -> subprocess.CompletedProcess:
    """``cardiomm ARGS`` in a fresh Python process."""
    return run_cardiomm(*args)


def test_misspelt_keys_in_every_section_are_reported_before_any_work(tmp_path: Path) -> None:
    """A file derived from the shipped ``merl_tiny`` with a misspelt key in each section, and one more in a
    ``--set`` override: each is reported on its own line, and nothing is built or written."""
    document = yaml.safe_load(resolve_config_path("merl_tiny").read_text())
    document["model"]["projection_dm"] = 64  # projection_dim
    document["model"]["text_config"] = {"model_type": "bert", "num_hiden_layers": 1}  # BertConfig: num_hidden_layers
    document["data"].update(path=str(tmp_path / "data"), crop_lenght=500)  # crop_length
    document["data"]["synthetic"] = {"n_patiens": 20, "seed": 0}  # synthesize(n_patients=...)
    document["training"].update(output_dir=str(tmp_path / "run"), max_steps=1, log_with=[])
    config = tmp_path / "typos.yaml"
    config.write_text(yaml.safe_dump(document))

    result = cardiomm("pretrain", "--config", str(config), "--set", "model.ecg.hiden_size=32")  # ECGEncoderConfig
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith("cardiomm: error: ") and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "unknown key" in line]
    expected = [
        ("'model.projection_dm' (not accepted by ECGTextDualEncoderConfig", "'model.projection_dim'"),
        ("'model.ecg.hiden_size' (not accepted by ECGEncoderConfig)", "'model.ecg.hidden_size'"),
        ("'model.text_config.num_hiden_layers' (not accepted by BertConfig)", "'model.text_config.num_hidden_layers'"),
        ("'data.crop_lenght'", "'data.crop_length'"),
        ("'data.synthetic.n_patiens'", "'data.synthetic.n_patients'"),
    ]
    assert len(lines) == len(expected), result.stderr
    for line, (typo, suggestion) in zip(lines, expected):
        assert str(config) in line and typo in line and f"did you mean {suggestion}?" in line, line
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()  # nothing was built or written
