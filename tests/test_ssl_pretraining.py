"""ECG-only self-supervised pretraining through the `cardiomm` command with the shipped `ssl_*_tiny` experiment
files: every strategy trains, the encoder is exported as a plain ECG encoder, the training batches hold only
training patients with a positive for every anchor, a killed run resumes exactly, and bad keys are clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import cardiomm
from cardiomm.data.ecg_dataset import load_ecg_dataset
from cardiomm.training.config import load_config
from cardiomm.training.objectives import build_run, check_experiment
from cardiomm.training.positive_pairs import SAME_ECG_STRATEGIES, STRATEGIES
from cli_process import KILLED_AFTER_STEP

CONFIGS = Path(cardiomm.__file__).parent / "configs"
# every run with the same threads (a different thread count changes float sums, hence the weights)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}


def cardiomm_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cardiomm.cli", *args], capture_output=True, text=True, timeout=900,
                          env=ENV)


def tiny_settings(out: Path, data: Path, steps: int = 4) -> list[str]:
    values = {
        "data.path": str(data), "data.synthetic.n_patients": 60, "training.output_dir": str(out),
        "training.max_steps": steps, "training.per_device_batch_size": 8, "training.save_every_steps": 2,
        "training.eval_every_steps": 2, "training.log_every_steps": 1, "training.warmup_steps": 1,
    }
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic cohort (with measured wave attributes) every test here trains on, written by a first run."""
    root = tmp_path_factory.mktemp("ssl")
    result = cardiomm_command("pretrain", "--config", "ssl_simclr_tiny", *tiny_settings(root / "simclr", root / "data"))
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "data"


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "simclr"])
def test_every_strategy_trains_from_its_shipped_file_and_exports_its_encoder(strategy: str, data: Path,
                                                                            tmp_path: Path) -> None:
    result = cardiomm_command("pretrain", "--config", f"ssl_{strategy}_tiny", *tiny_settings(tmp_path / "run", data))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained 4 steps" in result.stdout
    if strategy not in SAME_ECG_STRATEGIES:
        assert "have a partner" in result.stdout
    run = tmp_path / "run"
    encoder = run / "encoder"
    assert (encoder / "config.json").is_file() and (encoder / "preprocessor_config.json").is_file()
    # the exported encoder holds exactly the trained model's encoder weights
    whole = load_file(str(run / "model.safetensors"))
    exported = load_file(str(encoder / "model.safetensors"))
    assert exported and all(torch.equal(whole[f"ecg_model.{name}"], value) for name, value in exported.items())


def test_the_exported_encoder_loads_as_a_plain_ecg_encoder_in_a_fresh_process(data: Path) -> None:
    run = data.parent / "simclr"
    script = f"""
import numpy as np, torch
from transformers import AutoFeatureExtractor, AutoModel
import cardiomm
encoder = AutoModel.from_pretrained({str(run / 'encoder')!r})
whole = AutoModel.from_pretrained({str(run)!r})
assert type(encoder).__name__ == "ECGEncoderModel", type(encoder)
assert type(whole).__name__ == "ECGSelfSupervisedModel", type(whole)
fe = AutoFeatureExtractor.from_pretrained({str(run / 'encoder')!r})
ecg = np.random.default_rng(0).normal(size=(2, 12, 1000)).astype("float32")
inputs = fe(ecg, sampling_rate=100, crop="center")
encoder.eval(); whole.eval()
with torch.no_grad():
    a = encoder(**inputs).pooler_output
    b = whole(**inputs).pooler_output
assert a.shape == (2, encoder.config.hidden_size) or a.shape[0] == 2, a.shape
assert torch.equal(a, b)
print("OK", fe.sampling_rate, fe.crop_length)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK 100 500" in result.stdout


@pytest.mark.parametrize("strategy", ["pclr", "attributes", "cmsc"])
def test_training_batches_hold_only_training_patients_and_a_positive_for_every_anchor(strategy: str, data: Path,
                                                                                     tmp_path: Path) -> None:
    experiment = load_config(CONFIGS / f"ssl_{strategy}_tiny.yaml",
                             [f"data.path={data}", f"training.output_dir={tmp_path}",
                              "training.per_device_batch_size=8"])
    run = build_run(experiment)
    dataset, _ = load_ecg_dataset(data)
    train_patients = set(dataset["train"]["patient_id"])
    test_patients = set(dataset["test"]["patient_id"])
    assert not train_patients & test_patients
    assert len(run.train_dataset) == len(dataset["train"])
    if run.train_batch_sampler is None:  # same-ECG strategies: every row of the training split, two views each
        loader = torch.utils.data.DataLoader(run.train_dataset, batch_size=8, collate_fn=run.collate_fn)
        batch = next(iter(loader))
        ids = batch["positive_ids"]
        assert batch["input_values"].shape[0] == 16 and torch.equal(ids[0::2], ids[1::2])
        return
    run.train_batch_sampler.set_epoch(0)
    batches = list(run.train_batch_sampler)
    assert batches and all(len(b) == 16 for b in batches)
    patient_of = np.asarray(dataset["train"]["patient_id"])
    seen = set()
    for indices in batches:
        seen |= set(patient_of[indices])
        batch = run.collate_fn([run.train_dataset[i] for i in indices])
        if strategy == "attributes":
            a = batch["positive_attributes"]
            for anchor in range(0, len(indices), 2):  # each anchor is followed by a partner within h
                distance = torch.linalg.vector_norm(a[anchor] - a[anchor + 1])
                assert distance <= run.model.config.attribute_threshold + 1e-5
        else:
            ids = batch["positive_ids"]
            assert torch.equal(ids[0::2], ids[1::2])
            assert all(patient_of[indices[k]] == patient_of[indices[k + 1]] and indices[k] != indices[k + 1]
                       for k in range(0, len(indices), 2))
    assert seen <= train_patients


def test_a_killed_run_with_a_pair_sampler_resumes_to_the_weights_of_the_uninterrupted_one(data: Path,
                                                                                        tmp_path: Path) -> None:
    """The attribute strategy's batches come from its own sampler, and each view is a random crop: the resumed run must
    draw the same ones."""
    straight = cardiomm_command("pretrain", "--config", "ssl_attributes_tiny",
                                *tiny_settings(tmp_path / "straight", data, steps=5))
    assert straight.returncode == 0, straight.stderr[-3000:]
    settings = tiny_settings(tmp_path / "killed", data, steps=5)
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_STEP, "3", "pretrain", "--config",
                             "ssl_attributes_tiny", *settings], capture_output=True, text=True, timeout=900, env=ENV)
    assert killed.returncode == 17, killed.stderr[-3000:]
    resumed = cardiomm_command("pretrain", "--config", "ssl_attributes_tiny", *settings, "--resume-from", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    first = load_file(str(tmp_path / "straight" / "model.safetensors"))
    again = load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert first.keys() == again.keys()
    for name in first:
        assert torch.equal(first[name], again[name]), name


def test_a_misspelt_strategy_view_or_positive_key_is_an_error_naming_it(tmp_path: Path) -> None:
    result = cardiomm_command("pretrain", "--config", "ssl_attributes_tiny", "--set", f"data.path={tmp_path / 'd'}",
                              "--set", "data.positives={thresold: 1.0}", "--set", "model.projection_dims=64",
                              "--set", f"training.output_dir={tmp_path / 'bad'}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "ssl_attributes_tiny.yaml" in result.stderr
    assert "'data.positives.thresold'" in result.stderr and "'data.positives.threshold'" in result.stderr
    assert "'model.projection_dims'" in result.stderr and "'model.projection_dim'" in result.stderr
    assert not (tmp_path / "bad").exists() and not (tmp_path / "d").exists()
    wrong = cardiomm_command("pretrain", "--config", "ssl_simclr_tiny", "--set", f"data.path={tmp_path / 'd'}",
                             "--set", "data.strategy=simclear", "--set", f"training.output_dir={tmp_path / 'bad'}")
    assert wrong.returncode == 2 and "simclear" in wrong.stderr and "simclr" in wrong.stderr
    positives = cardiomm_command("pretrain", "--config", "ssl_simclr_tiny", "--set", f"data.path={tmp_path / 'd'}",
                                 "--set", "data.positives={task: rhythm}",
                                 "--set", f"training.output_dir={tmp_path / 'bad'}")
    assert positives.returncode == 2 and "data.positives" in positives.stderr and "simclr" in positives.stderr


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("ssl_*.yaml")))
def test_the_shipped_experiment_files_pass_their_checks(name: str) -> None:
    experiment = load_config(CONFIGS / f"{name}.yaml")
    check_experiment(experiment)
    strategy = experiment.data["strategy"]
    assert name in (f"ssl_{strategy}", f"ssl_{strategy}_tiny")
    if not name.endswith("_tiny"):  # the good-views paper's settings
        assert experiment.model["ecg"]["backbone"] == "resnet1d_18" and experiment.model["projection_dim"] == 128
        assert experiment.model["temperature"] == 0.07 and experiment.training.num_epochs == 50
        assert experiment.training.learning_rate == 1e-4 and experiment.training.per_device_batch_size * 2 == 64


def test_the_attribute_strategy_measures_a_dataset_written_without_measurements(tmp_path: Path) -> None:
    data = tmp_path / "unmeasured"
    settings = tiny_settings(tmp_path / "run", data, steps=2)
    result = cardiomm_command("pretrain", "--config", "ssl_attributes_tiny", *settings,
                              "--set", "data.synthetic.measure=false")
    assert result.returncode == 0, result.stderr[-3000:]
    dataset, _ = load_ecg_dataset(data)
    assert all(value is None or np.isnan(value) for value in dataset["train"]["measured_heart_rate"])
    assert "wave attributes (7): heart_rate, pr_interval" in result.stdout  # measured by delineation here
    assert "have a partner" in result.stdout and (tmp_path / "run" / "encoder" / "model.safetensors").is_file()
