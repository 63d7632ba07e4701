"""The Accelerate training loop on a tiny two-tower CLIP model (CPU, single process).

Run as a script it is the other side of two tests: ``python tests/test_training.py kill OUT STEP SCHEDULE`` trains
the resume-test run and kills itself with ``os._exit`` right after optimiser step ``STEP``, as a crashed job would;
``torchrun --nproc_per_node 2 tests/test_training.py ddp OUT`` is the two-process data-parallel run.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from cardiomm.modeling.contrastive_losses import embedding_clip_loss, unimodal_alignment_loss
from cardiomm.training import (
    ModalityGroupedBatchSampler,
    PlateauScheduleWithWarmup,
    TrainingConfig,
    TrainingLoop,
    build_lr_scheduler,
    build_optimizer,
    completed_checkpoints,
    decay_parameter_names,
    load_config,
    save_config,
    verify_checkpoint,
)
from cardiomm.training.config import ExperimentConfig

INPUT_DIM, LATENT_DIM = 12, 4


class ToyClipConfig(PretrainedConfig):
    model_type = "cardiomm_toy_clip"

    def __init__(
        self, input_dim: int = INPUT_DIM, hidden_dim: int = 32, embed_dim: int = 8, dropout: float = 0.1,
        uma_dropout: float = 0.1, objective: str = "clip", scalar_logit_scale: bool = True, **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.input_dim, self.hidden_dim, self.embed_dim = input_dim, hidden_dim, embed_dim
        self.dropout, self.uma_dropout, self.objective = dropout, uma_dropout, objective
        self.scalar_logit_scale = scalar_logit_scale  # DeepSpeed 0.19 cannot broadcast 0-dim parameters


@dataclass
class ToyClipOutput(ModelOutput):
    loss: torch.Tensor | None = None
    contrastive_loss: torch.Tensor | None = None
    uma_loss: torch.Tensor | None = None
    regression_loss: torch.Tensor | None = None
    ecg_embeds: torch.Tensor | None = None


class ToyClipModel(PreTrainedModel):
    """ECG tower and report tower (Linear–LayerNorm–ReLU–Dropout–Linear), CLIP + MERL-UMA loss, or a per-sample
    regression loss (``objective="regression"``) whose batch mean splits exactly over micro-batches."""

    config_class = ToyClipConfig
    base_model_prefix = "toy"

    def __init__(self, config: ToyClipConfig) -> None:
        super().__init__(config)

        def tower() -> nn.Module:
            return nn.Sequential(
                nn.Linear(config.input_dim, config.hidden_dim),
                nn.LayerNorm(config.hidden_dim),
                nn.ReLU(),
                nn.Dropout(config.dropout),
                nn.Linear(config.hidden_dim, config.embed_dim),
            )

        self.ecg_tower, self.text_tower = tower(), tower()
        self.regression_head = nn.Linear(config.embed_dim, LATENT_DIM)
        shape = () if config.scalar_logit_scale else (1,)
        self.logit_scale = nn.Parameter(torch.full(shape, math.log(1 / 0.07)))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.3)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, ToyClipModel):
            nn.init.constant_(module.logit_scale, math.log(1 / 0.07))

    def forward(self, ecg: torch.Tensor, text: torch.Tensor, target: torch.Tensor | None = None) -> ToyClipOutput:
        ecg_embeds = self.ecg_tower(ecg)
        if self.config.objective == "regression":
            regression = ((self.regression_head(ecg_embeds) - target) ** 2).mean()
            return ToyClipOutput(loss=regression, regression_loss=regression, ecg_embeds=ecg_embeds)
        contrastive = embedding_clip_loss(ecg_embeds, self.text_tower(text), self.logit_scale.exp())
        uma = unimodal_alignment_loss(
            ecg_embeds, dropout_p=self.config.uma_dropout, temperature=0.1, training=self.training
        )
        return ToyClipOutput(
            loss=contrastive + 0.2 * uma, contrastive_loss=contrastive, uma_loss=uma, ecg_embeds=ecg_embeds
        )


class PairedDataset(torch.utils.data.Dataset):
    """ECG/report feature pairs that share a latent factor, plus a regression target from the same factor."""

    def __init__(self, n: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        mixing = torch.Generator().manual_seed(1234)
        to_ecg = torch.randn(LATENT_DIM, INPUT_DIM, generator=mixing)
        to_text = torch.randn(LATENT_DIM, INPUT_DIM, generator=mixing)
        latent = torch.randn(n, LATENT_DIM, generator=generator)
        self.ecg = latent @ to_ecg + 0.1 * torch.randn(n, INPUT_DIM, generator=generator)
        self.text = latent @ to_text + 0.1 * torch.randn(n, INPUT_DIM, generator=generator)
        self.target = latent

    def __len__(self) -> int:
        return len(self.ecg)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"ecg": self.ecg[i], "text": self.text[i], "target": self.target[i]}


def make_model(seed: int = 0, **config) -> ToyClipModel:
    torch.manual_seed(seed)
    return ToyClipModel(ToyClipConfig(**config))


def _config(out: Path, **overrides) -> TrainingConfig:
    values = dict(
        output_dir=str(out), seed=3, learning_rate=3e-3, per_device_batch_size=16, num_epochs=2,
        warmup_steps=2, log_every_steps=1, save_every_steps=None, log_with=[], max_grad_norm=1.0,
    )
    values.update(overrides)
    return TrainingConfig(**values)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def on_cpu():
    """Every run here is a CPU run (exactness checks), also on a machine with a GPU; subprocesses inherit it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ACCELERATE_USE_CPU", "true")
        patch.setenv("CUDA_VISIBLE_DEVICES", "")
        yield


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    """One CLIP training run with evaluation, checkpoints and trackers, shared by the output checks."""
    out = tmp_path_factory.mktemp("clip_run")
    saved_to = []
    experiment = ExperimentConfig(
        training=_config(
            out, num_epochs=4, per_device_batch_size=32, save_every_steps=5, keep_last=2, eval_every_steps=8,
            log_with=["tensorboard"], log_every_steps=2,
        ),
        model={"name": "toy-clip", "embed_dim": 8},
        data={"n_train": 256},
    )
    model = make_model()
    loop = TrainingLoop(
        model, experiment, PairedDataset(256), eval_dataset=PairedDataset(64, seed=9),
        eval_fn=lambda m, acc: {"custom": 1.5},
        on_save=lambda d: (saved_to.append(d), (d / "extra.txt").write_text("x")),
    )
    result = loop.train()
    return {"out": out, "result": result, "loop": loop, "experiment": experiment, "saved_to": saved_to}


def test_loss_falls(clip_run) -> None:
    rows = _rows(clip_run["out"] / "metrics.csv")
    losses = [float(r["loss"]) for r in rows]
    assert float(rows[-1]["step"]) == clip_run["result"].global_step == 32
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    eval_rows = _rows(clip_run["out"] / "eval_metrics.csv")
    assert [int(r["step"]) for r in eval_rows] == [8, 16, 24, 32]
    assert float(eval_rows[-1]["eval_loss"]) < float(eval_rows[0]["eval_loss"])
    assert float(eval_rows[0]["eval_custom"]) == 1.5
    assert clip_run["result"].metrics["eval_custom"] == 1.5


def test_metrics_csv_has_every_column(clip_run) -> None:
    rows = _rows(clip_run["out"] / "metrics.csv")
    assert len(rows) == 16  # every 2 of 32 steps
    expected = {"step", "epoch", "lr", "loss", "contrastive_loss", "uma_loss", "grad_norm", "samples_per_second"}
    assert expected <= set(rows[0])
    assert all(float(r["samples_per_second"]) > 0 for r in rows)
    assert "regression_loss" not in rows[0]  # None fields are not loss terms
    lrs = [float(r["lr"]) for r in rows]
    assert max(lrs) == pytest.approx(3e-3, rel=0.05) and lrs[-1] < 0.05 * max(lrs)  # warm-up then cosine decay
    assert float(rows[-1]["epoch"]) == pytest.approx(4.0)
    assert list((clip_run["out"] / "runs").rglob("events.out.tfevents*"))  # TensorBoard


def test_config_version_and_final_model_written(clip_run) -> None:
    import cardiomm

    out = clip_run["out"]
    reloaded = load_config(out / "training_config.yaml")
    assert reloaded == clip_run["experiment"]
    info = json.loads((out / "run_info.json").read_text())
    assert info["cardiomm_version"] == cardiomm.__version__ and info["num_processes"] == 1
    model = ToyClipModel.from_pretrained(out)
    trained = clip_run["loop"].accelerator.unwrap_model(clip_run["loop"].model)
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    assert clip_run["saved_to"] == [out] and (out / "extra.txt").exists()


def test_checkpoint_rotation_keeps_last(clip_run) -> None:
    names = [p.name for p in completed_checkpoints(clip_run["out"] / "checkpoints")]
    assert names == ["step_000030", "step_000032"]  # saves at 5, 10, ..., 30 and the final step; keep_last=2
    assert sorted(p.name for p in (clip_run["out"] / "checkpoints").iterdir()) == names
    state = json.loads((clip_run["out"] / "checkpoints" / "step_000030" / "trainer_state.json").read_text())
    assert state["global_step"] == 30 and state["epoch"] == 3 and state["batches_in_epoch"] == 6
    # safetensors and JSON only (nothing that is unpickled on resume), each file's size and hash recorded
    files = sorted(p.name for p in (clip_run["out"] / "checkpoints" / "step_000030").iterdir())
    assert files == ["model.safetensors", "optimizer.safetensors", "trainer_state.json"]
    assert sorted(state["files"]) == ["model.safetensors", "optimizer.safetensors"]
    assert verify_checkpoint(clip_run["out"] / "checkpoints" / "step_000030").document["global_step"] == 30


class AugmentedPairs(PairedDataset):
    """Pairs with random noise drawn from PyTorch's global generator when an item is read."""

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(i)
        return {**item, "ecg": item["ecg"] + 0.1 * torch.randn(INPUT_DIM)}


def jitter_collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Default collation plus a random per-batch scaling of the reports (the global generator again)."""
    batch = torch.utils.data.default_collate(rows)
    return {**batch, "text": batch["text"] * (1 + 0.1 * torch.rand(()))}


def test_random_augmentation_does_not_depend_on_the_number_of_workers(tmp_path) -> None:
    """Random draws made while reading and collating depend on (seed, epoch, sample), not on the worker process
    that made them: 0 and 2 DataLoader workers give bit-identical weights."""
    results = []
    for workers in (0, 2):
        model = make_model()
        TrainingLoop(model, _config(tmp_path / f"w{workers}", num_workers=workers), AugmentedPairs(64),
                collate_fn=jitter_collate).train()
        results.append(_weights(model))
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key


def test_resume_skips_leftovers_of_a_run_killed_while_saving(tmp_path) -> None:
    first = TrainingLoop(make_model(), _config(tmp_path, num_epochs=1, save_every_steps=1), PairedDataset(32))
    first.train()
    partial = tmp_path / "checkpoints" / ".step_000003.partial"  # a save cut short: never renamed to step_000003
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 10)
    resumed = TrainingLoop(make_model(), _config(tmp_path, num_epochs=2, save_every_steps=1, resume_from="latest"),
                      PairedDataset(32))
    result = resumed.train()
    assert result.resumed_from == tmp_path / "checkpoints" / "step_000002" and result.global_step == 4
    assert not partial.exists()


def test_gradient_accumulation_equals_large_batch(tmp_path) -> None:
    """2 micro-batches of 16 accumulated = one batch of 32 (per-sample loss, no dropout)."""
    data = PairedDataset(128)
    results = {}
    for batch, accumulation in ((32, 1), (16, 2)):
        model = make_model(dropout=0.0, objective="regression")
        start = _weights(model)
        config = _config(tmp_path / f"b{batch}", per_device_batch_size=batch, gradient_accumulation_steps=accumulation)
        result = TrainingLoop(model, config, data).train()
        assert result.global_step == 8
        results[batch] = _weights(model)
    assert any(not torch.equal(start[k], results[32][k]) for k in start)
    for key in results[32]:
        torch.testing.assert_close(results[16][key], results[32][key], rtol=1e-5, atol=1e-6)


def test_gradient_clipping_bounds_the_norm(tmp_path) -> None:
    max_norm = 0.05
    model = make_model()
    loop = TrainingLoop(model, _config(tmp_path, max_grad_norm=max_norm, num_epochs=1), PairedDataset(96))
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    loop.optimizer.optimizer.register_step_pre_hook(record)
    loop.train()
    assert len(norms) == 6
    assert max(norms) <= max_norm * (1 + 1e-5)
    logged = [float(r["grad_norm"]) for r in _rows(tmp_path / "metrics.csv")]
    assert min(logged) > max_norm  # the norms before clipping were larger: clipping did act


# --------------------------------------------------------------------------------------------------------------------
def _resume_config(out: Path, schedule: str, **overrides) -> TrainingConfig:
    # 96 samples / 8 = 12 batches per epoch, 2 per step: 6 steps per epoch, 18 steps in 3 epochs
    return _config(
        out, per_device_batch_size=8, gradient_accumulation_steps=2, num_epochs=3, save_every_steps=4, keep_last=2,
        eval_every_steps=3, lr_schedule=schedule, plateau_patience=1, monitor_metric="eval_score", **overrides,
    )


def _resume_loop(out: Path, schedule: str, resume_from: str | None = None, on_step_end=None) -> TrainingLoop:
    grouped = schedule == "step"  # SGD, a step schedule and batches grouped like CLERC's
    overrides = {"optimizer": "sgd", "lr_step_epochs": 1, "learning_rate": 3e-2} if grouped else {}
    # 20 patients of one modality set, 76 of another: 2 + 9 full batches of 8, and the 8 left over make a 12th
    batches = ModalityGroupedBatchSampler([i % 5 == 0 for i in range(96)], 8, seed=3) if grouped else None
    return TrainingLoop(
        make_model(), _resume_config(out, schedule, resume_from=resume_from, **overrides), PairedDataset(96),
        eval_dataset=PairedDataset(32, seed=5), eval_fn=lambda model, accelerator: {"score": 1.0},
        on_step_end=on_step_end, train_batch_sampler=batches,
    )


@pytest.mark.parametrize("schedule", ["cosine", "plateau", "step"])
def test_killed_run_resumes_to_identical_weights(tmp_path, schedule: str) -> None:
    """A run killed (``os._exit``) after step 9, resumed from its step-8 checkpoint (mid-epoch 2, 4 batches in),
    ends with exactly the weights of an uninterrupted run. Dropout makes the RNG restore matter."""
    reference = _resume_loop(tmp_path / "reference", schedule)
    reference_result = reference.train()
    expected = _weights(reference.accelerator.unwrap_model(reference.model))

    out = tmp_path / "resumed"
    killed = subprocess.run(
        [sys.executable, __file__, "kill", str(out), "9", schedule], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert killed.returncode == 17, killed.stderr[-3000:]
    assert [p.name for p in completed_checkpoints(out / "checkpoints")] == ["step_000004", "step_000008"]
    assert max(int(r["step"]) for r in _rows(out / "metrics.csv")) == 9

    resumed = _resume_loop(out, schedule, resume_from="latest")
    result = resumed.train()
    assert result.global_step == reference_result.global_step == 18
    weights = _weights(resumed.accelerator.unwrap_model(resumed.model))
    for key in expected:
        torch.testing.assert_close(weights[key], expected[key], rtol=0, atol=0, msg=key)  # bit-identical
    assert result.final_loss == pytest.approx(reference_result.final_loss, abs=1e-6)
    steps = [int(r["step"]) for r in _rows(out / "metrics.csv")]
    assert steps == list(range(1, 19))  # the rows of the lost steps 9 were replaced, not duplicated
    reference_rows, resumed_rows = _rows(tmp_path / "reference" / "metrics.csv"), _rows(out / "metrics.csv")
    for a, b in zip(reference_rows, resumed_rows):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), abs=1e-6)
        assert float(a["lr"]) == pytest.approx(float(b["lr"]), rel=1e-9)
    if schedule == "plateau":  # the stalled score halved the rate after every evaluation but the first
        assert float(reference_rows[-1]["lr"]) == pytest.approx(3e-3 / 2**4)
    if schedule == "step":  # the rate logged after step s is 3e-2 * 0.1 ** (s // 6): ÷ 10 every 6-step epoch
        assert [float(r["lr"]) for r in reference_rows[4:7]] == pytest.approx([3e-2, 3e-3, 3e-3])
        assert float(reference_rows[-1]["lr"]) == pytest.approx(3e-5)


def _ddp_config(out: Path, batch_size: int) -> TrainingConfig:
    return _config(out, per_device_batch_size=batch_size, num_epochs=1, ddp_find_unused_parameters=True)


def test_two_process_ddp_matches_one_process_on_the_concatenated_batch(tmp_path) -> None:
    """``torchrun`` with 2 CPU processes (gloo DDP) and 8 samples each per step = one process with 16.

    Both processes draw the same permutation and take alternate batches, the CLIP loss gathers the two halves
    in rank order, and DDP averages the gradients, so the two runs take the same optimiser steps (no dropout).
    """
    out = tmp_path / "ddp"
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
         str(_free_port()), __file__, "ddp", str(out)],
        capture_output=True, text=True, timeout=180,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "ACCELERATE_USE_CPU": "true",
             "OMP_NUM_THREADS": "1"},
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    info = json.loads((out / "run_info.json").read_text())
    assert info["num_processes"] == 2 and info["distributed_type"] == "MULTI_CPU"

    model = make_model(dropout=0.0, uma_dropout=0.0)
    TrainingLoop(model, _ddp_config(tmp_path / "single", 16), PairedDataset(96)).train()
    distributed = ToyClipModel.from_pretrained(out)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(distributed.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert [r["step"] for r in _rows(out / "metrics.csv")] == [str(i) for i in range(1, 7)]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_trains_on_a_formatted_datasets_dataset(tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    source = PairedDataset(64)
    table = datasets.Dataset.from_dict(
        {"ecg": source.ecg.numpy(), "text": source.text.numpy(), "target": source.target.numpy()}
    ).with_format("torch")
    result = TrainingLoop(make_model(), _config(tmp_path, num_epochs=1), table).train()
    assert result.global_step == 4 and math.isfinite(result.final_loss)


def test_runs_in_one_process_may_change_precision(tmp_path) -> None:
    first = TrainingLoop(make_model(), _config(tmp_path / "fp32", num_epochs=1, mixed_precision="no"),
                         PairedDataset(32))
    first.train()
    second = TrainingLoop(make_model(), _config(tmp_path / "bf16", num_epochs=1, mixed_precision="bf16"),
                          PairedDataset(32))
    assert second.accelerator.mixed_precision == "bf16"
    assert math.isfinite(second.train().final_loss)


def test_resume_from_latest_without_checkpoint_starts_fresh(tmp_path) -> None:
    config = _config(tmp_path, num_epochs=1, resume_from="latest")
    result = TrainingLoop(make_model(), config, PairedDataset(32)).train()
    assert result.global_step == 2


def test_step_hook_stops_training(tmp_path) -> None:
    loop = TrainingLoop(
        make_model(), _config(tmp_path, num_epochs=5), PairedDataset(64),
        on_step_end=lambda state: state.global_step == 3,
    )
    assert loop.train().global_step == 3


def test_early_stopping_on_a_stalled_metric(tmp_path) -> None:
    loop = TrainingLoop(
        make_model(), _config(tmp_path, num_epochs=20, early_stopping_patience=2, monitor_metric="eval_score",
                              monitor_mode="max"),
        PairedDataset(32), eval_fn=lambda m, acc: {"score": 1.0},
    )
    result = loop.train()
    assert result.stopped_early and result.global_step == 3 * 2  # best at epoch 1, no improvement at 2 and 3


def test_best_model_at_end_is_the_best_evaluation(tmp_path) -> None:
    """``load_best_model_at_end`` saves the weights of the best evaluation (the 2nd of 3), not the last ones."""
    scores, weights_at = iter([1.0, 3.0, 2.0]), []

    def evaluate(model, accelerator) -> dict[str, float]:
        weights_at.append(_weights(accelerator.unwrap_model(model)))
        return {"score": next(scores)}

    loop = TrainingLoop(
        make_model(), _config(tmp_path, num_epochs=3, load_best_model_at_end=True, monitor_metric="eval_score",
                              monitor_mode="max"),
        PairedDataset(32), eval_fn=evaluate,
    )
    loop.train()
    assert len(weights_at) == 3 and (tmp_path / "best_model" / "model.safetensors").is_file()
    saved = ToyClipModel.from_pretrained(tmp_path)
    for key, value in _weights(saved).items():
        torch.testing.assert_close(value, weights_at[1][key], rtol=0, atol=0, msg=key)
    assert not torch.equal(weights_at[1]["ecg_tower.0.weight"], weights_at[2]["ecg_tower.0.weight"])


def test_modality_grouped_batches_hold_each_patient_once() -> None:
    """Each patient once per epoch; full batches of one modality set; left-overs batched together; the order a
    function of (seed, epoch)."""
    sets = [frozenset({"ecg"})] * 23 + [frozenset({"ecg", "echo"})] * 17 + [frozenset({"echo"})] * 5
    sampler = ModalityGroupedBatchSampler(sets, batch_size=4, seed=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(45)) and len(batches) == len(sampler) == 12
    pure = [b for b in batches if len({sets[i] for i in b}) == 1]
    assert len(pure) >= 5 + 4 + 1  # 23 // 4 + 17 // 4 + 5 // 4 full batches of one modality set
    assert list(ModalityGroupedBatchSampler(sets, 4, seed=1)) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    dropped = ModalityGroupedBatchSampler(sets, 4, drop_last=True, seed=1)
    assert all(len(b) == 4 for b in dropped) and len(list(dropped)) == len(dropped) == 11
    ordered = ModalityGroupedBatchSampler(sets, 4, shuffle=False)
    assert list(ordered)[0] == [0, 1, 2, 3]


_BATCHES_IN_A_FRESH_PROCESS = """
import json, sys
from cardiomm.training import ModalityGroupedBatchSampler
names = ["ecg", "echo", "angiogram", "chest_xray", "ecg_report", "echo_report"]
sets = [frozenset(n for j, n in enumerate(names) if (i >> j) & 1) for i in range(1, 64)] * 3
print(json.dumps([ModalityGroupedBatchSampler(sets, 4, seed=2).batches(),
                  ModalityGroupedBatchSampler(sets, 4, shuffle=False).batches()]))
"""


def test_modality_grouped_batches_are_the_same_in_every_process() -> None:
    """Processes hash strings differently (PYTHONHASHSEED): a resumed run, or the processes of a distributed one,
    must still compose the same batches from sets of modality names."""
    runs = [subprocess.run([sys.executable, "-c", _BATCHES_IN_A_FRESH_PROCESS], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "PYTHONHASHSEED": str(seed)}) for seed in (1, 2, 3)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    assert runs[0].stdout == runs[1].stdout == runs[2].stdout


def test_sgd_with_a_step_schedule() -> None:
    model = make_model()
    config = TrainingConfig(optimizer="sgd", momentum=0.8, learning_rate=0.5, lr_schedule="step", lr_step_epochs=2,
                            lr_step_factor=0.1, log_with=[])
    optimizer = build_optimizer(model, config)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["momentum"] == 0.8
    schedule = build_lr_scheduler(optimizer, config, num_training_steps=30, steps_per_epoch=5)
    rates = []
    for _ in range(25):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert rates[9] == pytest.approx(0.5) and rates[10] == pytest.approx(0.05) and rates[20] == pytest.approx(0.005)
    with pytest.raises(ValueError, match="optimizer"):
        TrainingConfig(optimizer="lamb")


# --------------------------------------------------------------------------------------------------------------------
def test_weight_decay_skips_biases_norms_and_scalars() -> None:
    names = decay_parameter_names(make_model())
    assert "ecg_tower.0.weight" in names and "regression_head.weight" in names
    assert not {n for n in names if n.endswith("bias") or ".1." in n or n == "logit_scale"}


def test_plateau_schedule_halves_after_patience_and_round_trips() -> None:
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1.0)
    schedule = PlateauScheduleWithWarmup(optimizer, num_warmup_steps=2, factor=0.5, patience=2)
    assert schedule.get_last_lr() == [0.0]
    for _ in range(2):
        optimizer.step()
        schedule.step()
    assert schedule.get_last_lr() == [1.0]
    assert [schedule.report(v) for v in (1.0, 0.9, 0.95, 0.95, 0.95, 0.95)] == [False, False, False, True, False, True]
    assert optimizer.param_groups[0]["lr"] == 0.25
    optimizer.step()
    schedule.step()
    assert optimizer.param_groups[0]["lr"] == 0.25
    copy = PlateauScheduleWithWarmup(torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0), 2)
    copy.load_state_dict(schedule.state_dict())
    assert (copy.scale, copy.best, copy.num_bad_evaluations) == (0.25, 0.9, 0)


def test_load_config_round_trip_and_typos(tmp_path) -> None:
    path = tmp_path / "experiment.yaml"
    path.write_text(
        "model: {backbone: resnet1d_18}\n"
        "data: {path: data/}\n"
        "training:\n  learning_rate: 1e-4\n  max_steps: 1000\n  max_grad_norm: null\n  log_with: none\n"
    )
    experiment = load_config(path)
    assert experiment.training.learning_rate == 1e-4 and experiment.training.max_steps == 1000
    assert experiment.training.max_grad_norm is None and experiment.training.log_with == []
    assert experiment.model == {"backbone": "resnet1d_18"}
    save_config(experiment, tmp_path / "again.yaml")
    assert load_config(tmp_path / "again.yaml") == experiment

    path.write_text("training:\n  lerning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"experiment\.yaml.*'lerning_rate'.*did you mean 'learning_rate'"):
        load_config(path)
    path.write_text("trainig:\n  learning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"experiment\.yaml.*'trainig'"):
        load_config(path)
    path.write_text("training:\n  max_steps: ten\n")
    with pytest.raises(ValueError, match=r"training\.max_steps"):
        load_config(path)
    path.write_text("training:\n  lr_schedule: linear\n")
    with pytest.raises(ValueError, match="lr_schedule"):
        load_config(path)


if __name__ == "__main__":
    if sys.argv[1] == "kill":  # kill OUT STEP SCHEDULE
        output_dir, kill_step, lr_schedule = Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

        def kill(state) -> None:
            if state.global_step == kill_step:
                os._exit(17)

        _resume_loop(output_dir, lr_schedule, on_step_end=kill).train()
        sys.exit(1)  # not reached
    if sys.argv[1] == "ddp":  # ddp OUT, under torchrun
        model = make_model(dropout=0.0, uma_dropout=0.0)
        TrainingLoop(model, _ddp_config(Path(sys.argv[2]), 8), PairedDataset(96)).train()
