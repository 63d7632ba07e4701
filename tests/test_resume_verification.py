"""Resuming :func:`~cardiomm.training.pretrain.pretrain` verifies the checkpoint once.

``pretrain`` verifies the checkpoint to resume from (size and SHA-256 of every file) before it builds anything,
and the training loop resumes from that verified checkpoint: each file of the folder is read for hashing exactly
once, whether the checkpoint is named or found as ``latest`` (also when a damaged newer one is skipped), and the
resumed run still reports where it resumed from.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from cardiomm.training import TrainingConfig, TrainingLoop, VerifiedCheckpoint, checkpointing, verify_checkpoint
from cardiomm.training.config import resolve_config_path
from cardiomm.training.pretrain import pretrain


def tiny_experiment(folder: Path, data: Path) -> Path:
    """The shipped ``sehr_bert_mlm`` experiment made tiny: 2 steps, a checkpoint after each."""
    document = yaml.safe_load(resolve_config_path("sehr_bert_mlm").read_text())
    document["model"].update(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32)
    document["data"].update(path=str(data), synthetic={"n_patients": 24, "seed": 0}, min_code_patients=2,
                            max_length=32)
    document["training"].update(output_dir=str(folder / "run"), max_steps=2, per_device_batch_size=4,
                                save_every_steps=1, keep_last=2, eval_every_steps=None, log_every_steps=1,
                                warmup_steps=0, log_with=[], num_workers=0)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished 2-step run with checkpoints ``step_000001`` and ``step_000002``: (experiment file, output folder);
    tests resume copies of it."""
    folder = tmp_path_factory.mktemp("resume")
    config = tiny_experiment(folder, folder / "data")
    pretrain(config)
    return config, folder / "run"


def copy_of(finished_run: tuple[Path, Path], folder: Path) -> tuple[Path, Path]:
    config, run = finished_run
    shutil.copytree(run, folder / "run")
    return config, folder / "run"


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Every file whose bytes are read for hashing from now on, with how many times."""
    counts: Counter = Counter()
    sha256 = checkpointing._sha256

    def counting(path: Path) -> str:
        counts[Path(path).resolve()] += 1
        return sha256(path)

    monkeypatch.setattr(checkpointing, "_sha256", counting)
    return counts


def hashes_of(folder: Path, counts: Counter) -> dict[str, int]:
    """How many times each file of ``folder`` was hashed, by name (files never hashed included, as 0)."""
    folder = folder.resolve()
    names = {p.name: counts[p] for p in folder.iterdir() if p.is_file()}
    assert not [p for p in counts if p.parent == folder and p.name not in names]
    return names


def test_verify_checkpoint_returns_the_folder_with_its_state(finished_run: tuple[Path, Path]) -> None:
    _, run = finished_run
    checkpoint = verify_checkpoint(run / "checkpoints" / "step_000001")
    assert isinstance(checkpoint, VerifiedCheckpoint)
    assert checkpoint.path == run / "checkpoints" / "step_000001"
    assert checkpoint.document["global_step"] == 1
    assert sorted(checkpoint.document["files"]) == ["model.safetensors", "optimizer.safetensors"]


@pytest.mark.parametrize("resume_from", ["latest", "named"])
def test_resume_hashes_each_checkpoint_file_once(tmp_path: Path, finished_run: tuple[Path, Path], hashed: Counter,
                                                 resume_from: str) -> None:
    config, run = copy_of(finished_run, tmp_path)
    latest = run / "checkpoints" / "step_000002"
    result, _ = pretrain(config, resume_from="latest" if resume_from == "latest" else str(latest), max_steps=3,
                         output_dir=str(run), save_every_steps=None)
    assert result.resumed_from == latest and result.global_step == 3
    assert hashes_of(latest, hashed) == {"model.safetensors": 1, "optimizer.safetensors": 1,
                                         "trainer_state.json": 0}  # the state file holds the hashes


def test_resume_past_a_damaged_checkpoint_hashes_each_file_once(
    tmp_path: Path, finished_run: tuple[Path, Path], hashed: Counter
) -> None:
    config, copy = copy_of(finished_run, tmp_path)
    damaged, intact = copy / "checkpoints" / "step_000002", copy / "checkpoints" / "step_000001"
    optimizer = damaged / "optimizer.safetensors"
    optimizer.write_bytes(bytes(b ^ 1 for b in optimizer.read_bytes()))  # same size, other content

    result, _ = pretrain(config, resume_from="latest", max_steps=2, output_dir=str(copy), save_every_steps=None)
    assert result.resumed_from == intact and result.global_step == 2
    assert hashes_of(intact, hashed) == {"model.safetensors": 1, "optimizer.safetensors": 1,
                                         "trainer_state.json": 0}
    assert hashes_of(damaged, hashed)["optimizer.safetensors"] == 1  # found damaged once, then skipped


def test_training_loop_refuses_a_checkpoint_that_is_not_verified(tmp_path: Path) -> None:
    config = TrainingConfig(output_dir=str(tmp_path), max_steps=1, log_with=[])
    with pytest.raises(ValueError, match="resume_checkpoint must be 'config', a VerifiedCheckpoint or None"):
        TrainingLoop(torch.nn.Linear(2, 1), config, [torch.zeros(2)], resume_checkpoint="latest")
