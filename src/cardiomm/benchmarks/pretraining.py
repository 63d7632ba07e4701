"""Speed of MERL pretraining (ECG–report CLIP + uni-modal alignment) on this machine, through the real training path.

Every variant trains ``warmup + steps`` optimiser steps with the shared :class:`~cardiomm.training.TrainingLoop` on a
synthetic cohort (12 leads, 10 s at 500 Hz), built from a shipped experiment file by
:func:`~cardiomm.training.objectives.build_ecg_text_run`: the dataset's rows go through a ``DataLoader`` and the
run's :class:`~cardiomm.data.collators.ECGTextCollator` (feature extractor + tokenizer), then forward, backward,
gradient clipping and AdamW. Two model configurations:

* ``tiny`` -- ``merl_tiny.yaml`` as shipped: 8-conv ResNet on 12 x 2500, pretrained all-MiniLM-L6-v2 text tower
  (first 4 of 6 layers frozen), reports truncated at 64 tokens;
* ``resnet18`` -- ``merl_resnet18.yaml`` at the public MERL implementation's sizes: ResNet18 on 12 x 5000, a
  randomly initialised BERT-base-shaped text tower (hidden 768, 12 layers, 12 heads, intermediate 3072, the
  BERT uncased vocabulary and tokenizer), reports truncated at 256 tokens, CLIP + UMA, AdamW. The text tower is
  frozen whole as in that implementation (``freeze_text_layers: -1``, run without autograd) unless the variant
  says otherwise.

Variants vary the mixed precision (``no`` = fp32, or ``bf16`` autocast), the text padding (``dynamic``: to the
longest report of the batch, or ``max_length``: every report padded to the truncation length, as the public
implementation does), the number of frozen text layers, and the report lengths (``synthetic``: the cohort's
machine reports, ~10-40 tokens; ``mimic``: each report extended with the reports of other ECGs to 40-80 words,
the length of MIMIC-IV-ECG report concatenations).

Columns of a row:

* ``pairs_per_s`` -- batch size / median step time over the timed steps of every round (steps are timed from
  the end of one optimiser step to the end of the next, so data loading and collation are included);
  ``best_pairs_per_s`` uses the fastest step; ``vs_anchor`` = ``pairs_per_s`` / 1.41 (the public MERL code on
  this machine at its own settings);
* ``ecg_pct``, ``text_pct``, ``loss_pct``, ``data_pct``, ``optim_pct`` -- median share of the step spent in the
  ECG tower (forward + backward), the text tower (forward + backward of its trainable layers), the projections
  and losses (forward + backward), data loading + collation (+ loop bookkeeping), and gradient clipping + AdamW.
  They come from hooks on the real step: forward (pre-)hooks of the towers, gradient hooks on their outputs
  (autograd runs the loss, then the text tower, then the ECG tower, in reverse creation order) and
  post-accumulate-grad hooks on the parameters. ``collate_pct`` is the collator's share alone (``nan`` with
  DataLoader workers, which collate in their own processes);
* ``text_tokens`` / ``text_real_tokens`` -- mean padded length of the batches' reports and mean number of real
  tokens per report (a frozen text tower runs on groups of similar-length reports, so its work follows the real
  tokens more closely than the padded length);
* ``gflop_per_step`` -- FLOPs of one step (convolutions, matrix products and attention of forward and backward,
  counted by ``torch.utils.flop_counter`` during the warm-up steps; batches differ in report length, so this is
  the warm-up batches' mean), ``ecg_gflop_per_step`` the ECG tower's part, and ``achieved_gflops`` =
  ``gflop_per_step`` / ``step_s``;
* ``peak_rss_gb`` -- the training process's peak resident memory at the end of the timed steps (each variant
  runs in a fresh process; it includes the memory-mapped dataset pages that were read);
* ``final_loss`` -- the loss of the last timed step (a sanity check that training is numerically sane);
* ``load_1min`` -- the machine's 1-minute load average at the end of the timed steps (median over the rounds;
  the benchmark itself adds about the number of threads it uses).

Rounds alternate the variants so that a shared machine's load spreads over all of them. Run
``python -m cardiomm.benchmarks.pretraining --help``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ANCHOR_PAIRS_PER_S: float = 1.41
"""The public MERL implementation's training speed on this machine at its own settings (pairs/s)."""

BERT_BASE_TEXT_CONFIG: dict[str, Any] = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
}


@dataclass(frozen=True)
class PretrainingVariant:
    """One benchmarked setting.

    Args:
        model: ``"tiny"`` or ``"resnet18"`` (see the module docstring).
        mixed_precision: ``"no"`` (fp32) or ``"bf16"`` (autocast), the training loop's ``mixed_precision``.
        text_padding: ``"dynamic"`` (to the longest report of the batch) or ``"max_length"``.
        freeze_text_layers: frozen text layers (-1: the whole tower); ``None`` keeps the experiment file's.
        reports: ``"synthetic"`` (the cohort's reports) or ``"mimic"`` (extended to 40-80 words).
    """

    model: str = "resnet18"
    mixed_precision: str = "bf16"
    text_padding: str = "dynamic"
    freeze_text_layers: int | None = -1
    reports: str = "mimic"

    @property
    def name(self) -> str:
        """``model/precision/padding/freeze/reports``, the form ``--variants`` takes."""
        freeze = "file" if self.freeze_text_layers is None else self.freeze_text_layers
        precision = "fp32" if self.mixed_precision == "no" else self.mixed_precision
        return f"{self.model}/{precision}/{self.text_padding}/{freeze}/{self.reports}"


DEFAULT_VARIANTS: tuple[PretrainingVariant, ...] = (
    PretrainingVariant("tiny", "no", "dynamic", None, "synthetic"),
    PretrainingVariant("tiny", "bf16", "dynamic", None, "synthetic"),
    PretrainingVariant("resnet18", "no", "max_length", -1, "mimic"),
    PretrainingVariant("resnet18", "no", "dynamic", -1, "mimic"),
    PretrainingVariant("resnet18", "bf16", "max_length", -1, "mimic"),
    PretrainingVariant("resnet18", "bf16", "dynamic", -1, "mimic"),
    PretrainingVariant("resnet18", "bf16", "dynamic", -1, "synthetic"),
    PretrainingVariant("resnet18", "bf16", "dynamic", 6, "mimic"),
)


def experiment_for(variant: PretrainingVariant, data_path: str | os.PathLike, batch_size: int, max_steps: int,
                   output_dir: str | os.PathLike, num_workers: int = 0) -> Any:
    """The :class:`ExperimentConfig` of ``variant``: the shipped experiment file with the benchmark's overrides."""
    from cardiomm.training.config import load_config

    if variant.model == "tiny":
        experiment = load_config("merl_tiny")
    elif variant.model == "resnet18":
        experiment = load_config("merl_resnet18")
        experiment.model.update(
            {"text": "offline-minilm", "text_config": dict(BERT_BASE_TEXT_CONFIG), "tokenizer": "offline-minilm"}
        )
    else:
        raise ValueError(f"model must be 'tiny' or 'resnet18', got {variant.model!r}")
    if variant.freeze_text_layers is not None:
        experiment.model["freeze_text_layers"] = variant.freeze_text_layers
    experiment.data.pop("synthetic", None)
    experiment.data.update({"path": str(data_path), "eval_split": "none"})
    timed_training_settings(experiment.training, output_dir, batch_size, max_steps, num_workers)
    experiment.training.mixed_precision = variant.mixed_precision
    experiment.training.text_feature_cache = "off"  # the variants time the text tower on tokenised reports
    return experiment


def timed_training_settings(training: Any, output_dir: str | os.PathLike, batch_size: int, max_steps: int,
                            num_workers: int = 0) -> None:
    """Set a ``TrainingConfig`` for timing: ``max_steps`` steps of ``batch_size`` into ``output_dir``, with
    ``num_workers`` DataLoader workers, no warm-up schedule, evaluation, checkpoints or loggers, one log line."""
    training.output_dir = str(output_dir)
    training.per_device_batch_size = batch_size
    training.max_steps = max_steps
    training.num_workers = num_workers
    training.save_every_steps = None
    training.eval_every_steps = None
    training.log_every_steps = max_steps
    training.log_with = []
    training.warmup_steps = 0
    training.warmup_ratio = 0.0


def mimic_length_reports(reports: Sequence[str], min_words: int = 40, max_words: int = 80, seed: int = 0
                         ) -> list[str]:
    """Each report extended with the reports of randomly drawn other rows to a length drawn from
    [``min_words``, ``max_words``] words (the first report kept whole, the last one cut at the word limit)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for report in reports:
        target = int(rng.integers(min_words, max_words + 1))
        words = str(report or "").split()
        while len(words) < target:
            words += str(reports[int(rng.integers(len(reports)))] or "").split()
        out.append(" ".join(words[: max(target, len(str(report or "").split()))]))
    return out


class StepProfile:
    """Hooks on a dual encoder that split each training step into tower, loss, data and optimiser time.

    Times are ``time.perf_counter`` stamps; :meth:`step_end` closes a step and returns its breakdown in seconds.
    The first ``flop_steps`` steps also count their FLOPs (``torch.utils.flop_counter``: convolutions, matrix
    products and attention of forward and backward) into :attr:`flops` as ``(total, ecg_tower)`` pairs.
    """

    def __init__(self, model: Any, optimizer: Any, flop_steps: int = 0) -> None:
        self._stamps: dict[str, float] = {}
        self._last_end = time.perf_counter()
        self.collate_seconds = 0.0
        self.tokens: list[tuple[int, float]] = []
        self.flops: list[tuple[int, int]] = []
        self._flop_steps = flop_steps
        self._counter: Any = None
        ecg_tower, text_tower = model.ecg_model, model.text_model
        self._ecg_tower_name = type(ecg_tower).__name__
        model.register_forward_pre_hook(lambda m, a, kw: self._step_start(kw), with_kwargs=True)
        model.register_forward_hook(lambda m, a, o: self._forward_done(o))
        # a tower may be called several times per step (a frozen text tower on groups of reports): from the start
        # of its first call to the end of its last
        ecg_tower.register_forward_pre_hook(lambda m, a: self._first("ecg_start"))
        ecg_tower.register_forward_hook(lambda m, a, o: self._tower_done("ecg", o))
        text_tower.register_forward_pre_hook(lambda m, a: self._first("text_start"))
        text_tower.register_forward_hook(lambda m, a, o: self._tower_done("text", o))
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.register_post_accumulate_grad_hook(lambda p: self._mark("bwd_end"))
        optimizer.register_step_post_hook(lambda opt, a, kw: self._step_done())

    def _mark(self, name: str) -> None:
        self._stamps[name] = time.perf_counter()

    def _step_start(self, inputs: dict[str, Any]) -> None:
        mask = inputs.get("attention_mask")
        if mask is not None:
            self.tokens.append((int(mask.shape[1]), float(mask.sum()) / mask.shape[0]))
        if len(self.flops) < self._flop_steps and self._counter is None:
            from torch.utils.flop_counter import FlopCounterMode

            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
        self._mark("fwd_start")  # after starting the counter, whose set-up is not the model's time

    def _forward_done(self, output: Any) -> None:
        self._mark("fwd_end")
        self._loss = output["loss"].detach()

    def _step_done(self) -> None:
        self._mark("opt_end")
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            # the counter starts inside the model's forward, so it names the ECG tower by its class
            ecg = sum(sum(c.values()) for k, c in self._counter.get_flop_counts().items()
                      if k == self._ecg_tower_name or k.endswith(".ecg_model"))
            self.flops.append((self._counter.get_total_flops(), ecg))
            self._counter = None

    def _tower_done(self, tower: str, output: Any) -> None:
        self._mark(f"{tower}_end")
        for name in ("pooler_output", "last_hidden_state"):
            tensor = getattr(output, name, None)
            if tensor is not None and tensor.requires_grad:
                tensor.register_hook(lambda grad, key=f"{tower}_grad": self._first(key))

    def _first(self, name: str) -> None:
        self._stamps.setdefault(name, time.perf_counter())

    def timed_collate(self, collate_fn: Any) -> Any:
        """``collate_fn`` wrapped to add its time to :attr:`collate_seconds` (in this process: DataLoader workers
        keep their own)."""

        def collate(rows: Any) -> Any:
            start = time.perf_counter()
            batch = collate_fn(rows)
            self.collate_seconds += time.perf_counter() - start
            return batch

        return collate

    def step_end(self) -> dict[str, float]:
        """Close the current step: seconds of ``step``, ``ecg``, ``text``, ``loss``, ``data``, ``optim``,
        ``collate``, and the step's loss value (``loss_value``)."""
        s, now = self._stamps, time.perf_counter()
        ecg_forward = s["ecg_end"] - s["ecg_start"]
        text_forward = s["text_end"] - s["text_start"]
        loss_forward = s["fwd_end"] - s["fwd_start"] - ecg_forward - text_forward
        ecg_grad = s.get("ecg_grad", s["fwd_end"])
        text_grad = s.get("text_grad")
        loss_backward = (min(text_grad, ecg_grad) if text_grad is not None else ecg_grad) - s["fwd_end"]
        text_backward = ecg_grad - text_grad if text_grad is not None else 0.0
        ecg_backward = s["bwd_end"] - ecg_grad
        out = {
            "step": now - self._last_end,
            "ecg": ecg_forward + ecg_backward,
            "text": text_forward + text_backward,
            "loss": loss_forward + loss_backward,
            "data": s["fwd_start"] - self._last_end,
            "optim": s["opt_end"] - s["bwd_end"],
            "collate": self.collate_seconds,
            "loss_value": float(self._loss),
        }
        self._stamps = {}
        self.collate_seconds = 0.0
        self._last_end = now
        return out


def run_variant(variant: PretrainingVariant, data_path: str | os.PathLike, batch_size: int = 32, steps: int = 4,
                warmup: int = 2, num_threads: int | None = None, num_workers: int = 0) -> dict[str, Any]:
    """Train ``warmup + steps`` steps of ``variant`` in this process (FLOPs counted during the warm-up steps).

    Returns the per-step breakdowns of the timed steps (:meth:`StepProfile.step_end`), their padded and mean
    real report lengths, the FLOPs of the warm-up steps, the last timed step's loss and this process's peak RSS
    at the end of the timed steps.
    """
    import torch

    from cardiomm.training.loop import TrainingLoop
    from cardiomm.training.objectives import build_run

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    with tempfile.TemporaryDirectory() as output_dir:
        # one more step than timed: the training loop does not call on_step_end after its last step
        experiment = experiment_for(variant, data_path, batch_size, warmup + steps + 1, output_dir, num_workers)
        run = build_run(experiment)
        run.collate_fn.padding = "max_length" if variant.text_padding == "max_length" else "longest"
        train = run.train_dataset
        if variant.reports == "mimic":
            column = run.collate_fn.text_column
            longer = mimic_length_reports(list(train.with_format(None)[column]))
            train = train.remove_columns(column).add_column(column, longer).with_format("numpy")
        breakdowns: list[dict[str, float]] = []
        profiles: list[StepProfile] = []
        peak_rss: list[float] = []
        load: list[float] = []

        def collate(rows: Any) -> Any:
            return profiles[0].timed_collate(run.collate_fn)(rows)

        def on_step_end(state: Any) -> None:
            breakdowns.append(profiles[0].step_end())
            if len(breakdowns) == warmup + steps:
                peak_rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
                load.append(os.getloadavg()[0])

        # DataLoader workers collate in their own processes (and need a picklable collator): not timed then
        collate_fn = collate if num_workers == 0 else run.collate_fn
        loop = TrainingLoop(run.model, experiment, train, collate_fn=collate_fn, on_step_end=on_step_end)
        model = loop.accelerator.unwrap_model(loop.model)
        profiles.append(StepProfile(model, loop.optimizer.optimizer, flop_steps=warmup))
        loop.train()
        profile = profiles[0]
    timed = slice(warmup, warmup + steps)
    if num_workers:
        for breakdown in breakdowns:
            breakdown["collate"] = float("nan")
    return {
        "variant": asdict(variant),
        "steps": breakdowns[timed],
        "text_tokens": [padded for padded, _ in profile.tokens[timed]],
        "text_real_tokens": [real for _, real in profile.tokens[timed]],
        "flops": profile.flops,
        "final_loss": breakdowns[timed][-1]["loss_value"],
        "peak_rss_gb": peak_rss[0],
        "load_1min": load[0],
        "num_threads": torch.get_num_threads(),
    }


def mixed_precision_check(model: str = "resnet18", data_path: str | os.PathLike | None = None, batch_size: int = 16,
                          seed: int = 0) -> dict[str, Any]:
    """Loss and gradients of one training batch in fp32 and under bf16 autocast, from the same weights, with every
    dropout off (UMA's views and the text tower's dropout would otherwise draw different masks): the two losses,
    and per part of the model the cosine similarity and relative L2 distance of the bf16 gradient to the fp32 one
    (computed in float64)."""
    import torch

    from cardiomm.training.objectives import build_run

    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(data_path or Path(tmp) / "synthetic")
        variant = PretrainingVariant(model=model, mixed_precision="no", freeze_text_layers=None)
        run = build_run(experiment_for(variant, data, batch_size, 1, Path(tmp) / "out"))
        rows = [run.train_dataset[i] for i in range(batch_size)]
        torch.manual_seed(seed)
        batch = run.collate_fn(rows)
    dual_encoder = run.model.train()
    dual_encoder.config.uma_dropout = 0.0
    for module in dual_encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    results: dict[str, tuple[float, dict[str, torch.Tensor]]] = {}
    for precision in ("fp32", "bf16"):
        dual_encoder.zero_grad(set_to_none=True)
        state = {k: v.clone() for k, v in dual_encoder.state_dict().items()}
        torch.manual_seed(seed + 1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = dual_encoder(**batch).loss
        loss.float().backward()
        grads = {n: p.grad.detach().double().flatten() for n, p in dual_encoder.named_parameters()
                 if p.grad is not None}
        results[precision] = (float(loss), grads)
        dual_encoder.load_state_dict(state)  # undo the batch-norm statistics update
    reference, mixed = results["fp32"][1], results["bf16"][1]
    row: dict[str, Any] = {"model": model, "batch": batch_size, "loss_fp32": results["fp32"][0],
                           "loss_bf16": results["bf16"][0]}
    for part in ("ecg_model", "text_model", "ecg_projection", "text_projection"):
        names = [n for n in reference if n.startswith(part + ".")]
        if not names:
            continue
        a = torch.cat([reference[n] for n in names])
        b = torch.cat([mixed[n] for n in names])
        row[f"{part}_grad_cosine"] = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
        row[f"{part}_grad_rel_l2"] = float((a - b).norm() / a.norm())
    return row


def _run_in_fresh_process(kwargs: dict[str, Any]) -> dict[str, Any]:
    # a non-daemonic worker, so that the DataLoader may start workers of its own
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_variant, **kwargs).result()


def prepare_data(directory: str | os.PathLike, n_patients: int = 300, seed: int = 0) -> Path:
    """The synthetic cohort (12 x 5000 at 500 Hz, ~600 training ECGs for 300 patients) saved in ``directory``."""
    from cardiomm.data.ecg_dataset import METADATA_FILE
    from cardiomm.synthetic import synthesize

    path = Path(directory)
    if not (path / METADATA_FILE).is_file():
        synthesize(n_patients, path, seed=seed, write_wfdb_files=False, include_ehr=False, progress=False)
    return path


def benchmark_pretraining(
    variants: Sequence[PretrainingVariant] = DEFAULT_VARIANTS,
    batch_size: int = 32,
    steps: int = 4,
    warmup: int = 2,
    rounds: int = 2,
    num_threads: int | None = None,
    num_workers: int = 0,
    data_path: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Time ``rounds`` x ``steps`` training steps of every variant (each run in a fresh process, the variants
    alternating round by round); one row per variant with the columns of the module docstring."""
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(data_path or Path(tmp) / "synthetic")
        runs: dict[PretrainingVariant, list[dict[str, Any]]] = {v: [] for v in variants}
        for _ in range(rounds):
            for variant in variants:
                runs[variant].append(_run_in_fresh_process({
                    "variant": variant, "data_path": str(data), "batch_size": batch_size, "steps": steps,
                    "warmup": warmup, "num_threads": num_threads, "num_workers": num_workers,
                }))
    rows = []
    for variant, results in runs.items():
        steps_all = [s for r in results for s in r["steps"]]
        step_time = statistics.median(s["step"] for s in steps_all)
        flops = [f for r in results for f in r["flops"]]
        gflop = statistics.mean(f[0] for f in flops) / 1e9 if flops else float("nan")

        def share(part: str) -> float:
            return 100.0 * statistics.median(s[part] / s["step"] for s in steps_all)

        rows.append({
            "model": variant.model,
            "precision": "fp32" if variant.mixed_precision == "no" else variant.mixed_precision,
            "text_padding": variant.text_padding,
            "text_frozen": "whole" if variant.freeze_text_layers == -1 else (
                "file" if variant.freeze_text_layers is None else f"{variant.freeze_text_layers} layers"),
            "reports": variant.reports,
            "text_tokens": statistics.mean(t for r in results for t in r["text_tokens"]),
            "text_real_tokens": statistics.mean(t for r in results for t in r["text_real_tokens"]),
            "batch": batch_size,
            "pairs_per_s": batch_size / step_time,
            "best_pairs_per_s": batch_size / min(s["step"] for s in steps_all),
            "vs_anchor": batch_size / step_time / ANCHOR_PAIRS_PER_S,
            "step_s": step_time,
            **{f"{part}_pct": share(part) for part in ("ecg", "text", "loss", "data", "optim", "collate")},
            "gflop_per_step": gflop,
            "ecg_gflop_per_step": statistics.mean(f[1] for f in flops) / 1e9 if flops else float("nan"),
            "achieved_gflops": gflop / step_time,
            "peak_rss_gb": max(r["peak_rss_gb"] for r in results),
            "final_loss": results[-1]["final_loss"],
            "timed_steps": len(steps_all),
            "load_1min": statistics.median(r["load_1min"] for r in results),
        })
    return rows


# ------------------------------------------------------------------------------ comparison with a plain PyTorch step
COMPARISON_VARIANTS: tuple[str, ...] = (
    "reference", "cardiomm tokenised", "cardiomm text cache", "cardiomm text cache bf16",
)
"""The MERL-ResNet18 training steps :func:`benchmark_reference_comparison` times (see its docstring)."""

QUICK_TEXT_CONFIG: dict[str, Any] = {
    "model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 64, "max_position_embeddings": 512,
}
"""The text tower of ``--quick`` comparisons (toy size; 512 positions so that reports padded to 256 tokens fit)."""

REFERENCE_TEXT_LENGTH: int = 256
"""The reference step pads (and truncates) every report to this many tokens, as the public MERL code does."""


def _plain_resnet18_1d(in_channels: int) -> Any:
    """A 1D ResNet18 feature extractor written out in plain PyTorch: a stride-2 7-tap stem convolution to 64
    channels, then four stages of two basic blocks (two 3-tap convolutions with batch norm and an identity or 1x1
    shortcut) with 64, 128, 256 and 512 channels and strides 1, 2, 2, 2. Returns the (batch, 512, length / 16)
    feature map."""
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, inputs: int, outputs: int, stride: int) -> None:
            super().__init__()
            self.first = nn.Sequential(nn.Conv1d(inputs, outputs, 3, stride, 1, bias=False), nn.BatchNorm1d(outputs),
                                       nn.ReLU())
            self.second = nn.Sequential(nn.Conv1d(outputs, outputs, 3, 1, 1, bias=False), nn.BatchNorm1d(outputs))
            self.shortcut: nn.Module = nn.Identity()
            if stride != 1 or inputs != outputs:
                self.shortcut = nn.Sequential(nn.Conv1d(inputs, outputs, 1, stride, bias=False),
                                              nn.BatchNorm1d(outputs))

        def forward(self, x: Any) -> Any:
            return (self.second(self.first(x)) + self.shortcut(x)).relu()

    layers: list[nn.Module] = [nn.Conv1d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm1d(64), nn.ReLU()]
    width = 64
    for channels, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(width, channels, stride), BasicBlock(channels, channels, 1)]
        width = channels
    return nn.Sequential(*layers)


def _feature_map_length(length: int) -> int:
    """Positions of the plain ResNet18's feature map for ``length`` samples (five halvings, rounding up)."""
    for _ in range(4):  # the stem and the three strided stages
        length = (length - 1) // 2 + 1
    return length


def reference_merl_model(text_config: dict[str, Any], length: int = 5000, num_leads: int = 12,
                         projection_dim: int = 256, hidden: int = 256, heads: int = 4, dropout: float = 0.1,
                         temperature: float = 0.07) -> Any:
    """A MERL-ResNet18 model in plain PyTorch (no cardiomm code), whose ``forward(ecg, input_ids, attention_mask)``
    returns the training loss: the plain ResNet18, a 1x1 convolution to ``projection_dim`` channels, attention
    pooling (a learned query and learned positions, one multi-head attention, an output linear) for the ECG
    embedding; the time-average of the reduced feature map through two bias-free linears with dropout for the two
    uni-modal views; a ``transformers`` ``BertModel`` of ``text_config`` run under ``torch.no_grad`` (pooler
    output) and a Linear-GELU-Linear text head; CLIP loss (temperature 0.07) of ECG against text plus the same loss
    between the two views."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from transformers import BertConfig, BertModel

    def clip_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t() / temperature
        target = torch.arange(len(a), device=a.device)
        return F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)

    class ReferenceMERL(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            config = {k: v for k, v in text_config.items() if k != "model_type"}
            positions = _feature_map_length(length)
            self.ecg_encoder = _plain_resnet18_1d(num_leads)
            self.reduce = nn.Conv1d(512, projection_dim, 1)
            self.query = nn.Parameter(torch.randn(projection_dim))
            self.positions = nn.Parameter(torch.randn(positions + 1, projection_dim) / projection_dim)
            self.attention = nn.MultiheadAttention(projection_dim, heads, batch_first=True)
            self.pool_output = nn.Linear(projection_dim, projection_dim)
            self.view_a = nn.Linear(projection_dim, projection_dim, bias=False)
            self.view_b = nn.Linear(projection_dim, projection_dim, bias=False)
            self.dropout = nn.Dropout(dropout)
            self.text_encoder = BertModel(BertConfig(**config))
            self.text_head = nn.Sequential(nn.Linear(self.text_encoder.config.hidden_size, hidden), nn.GELU(),
                                           nn.Linear(hidden, projection_dim))

        def forward(self, ecg: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            features = self.reduce(self.ecg_encoder(ecg))  # (batch, dim, positions)
            tokens = features.transpose(1, 2)
            query = (self.query + self.positions[0]).expand(len(ecg), 1, -1)
            sequence = torch.cat([query, tokens], dim=1) + self.positions[: tokens.shape[1] + 1]
            pooled = self.attention(sequence[:, :1], sequence, sequence, need_weights=False)[0][:, 0]
            ecg_embedding = self.pool_output(pooled)
            latent = features.mean(dim=-1)
            unimodal = clip_loss(self.dropout(self.view_a(latent)), self.dropout(self.view_b(latent)))
            with torch.no_grad():
                text = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).pooler_output
            return clip_loss(ecg_embedding, self.text_head(text)) + unimodal

    return ReferenceMERL()


def _comparison_experiment(data_path: str | os.PathLike, output_dir: str | os.PathLike, batch_size: int,
                           max_steps: int, length: int, quick: bool) -> Any:
    """The shipped ``merl_resnet18`` experiment as the benchmark runs it (fp32, text tower frozen whole)."""
    experiment = experiment_for(PretrainingVariant("resnet18", "no", "dynamic", -1, "mimic"), data_path, batch_size,
                                max_steps, output_dir)
    experiment.data["crop_length"] = length
    if quick:
        experiment.model["text_config"] = dict(QUICK_TEXT_CONFIG)
    return experiment


def _mimic_rows(train: Any, batch_size: int, steps: int, column: str) -> tuple[list[Any], list[str]]:
    """The first ``batch_size * steps`` training ECGs (cycling) and their reports extended to MIMIC length."""
    import numpy as np

    reports = mimic_length_reports(list(train.with_format(None)[column]))
    index = [i % len(train) for i in range(batch_size * steps)]
    ecgs = [np.asarray(train[i]["ecg"], dtype=np.float32) for i in sorted(set(index))]
    by_row = dict(zip(sorted(set(index)), ecgs))
    return [by_row[i] for i in index], [reports[i] for i in index]


def time_comparison_variant(variant: str, data_path: str | os.PathLike, batch_size: int = 32, steps: int = 3,
                            warmup: int = 1, num_threads: int | None = 2, length: int = 5000,
                            quick: bool = False) -> dict[str, Any]:
    """Train ``warmup + steps`` steps of one of :data:`COMPARISON_VARIANTS` in this process; the step times of the
    last ``steps``, the last loss, and for the cached variant the seconds spent computing the cache."""
    import numpy as np
    import torch

    from cardiomm.training.loop import TrainingLoop
    from cardiomm.training.objectives import build_run

    if variant not in COMPARISON_VARIANTS:
        raise ValueError(f"variant must be one of {COMPARISON_VARIANTS}, got {variant!r}")
    if warmup < 1 or steps < 1:
        raise ValueError("the comparison needs at least one warm-up step and one timed step")
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    total = warmup + steps
    with tempfile.TemporaryDirectory() as output_dir:
        experiment = _comparison_experiment(data_path, output_dir, batch_size, total, length, quick)
        torch.manual_seed(0)
        run = build_run(experiment)  # text_feature_cache is off: the cache is built below, on the longer reports
        column = run.collate_fn.text_column
        if variant == "reference":
            run.model = None  # only its data, tokenizer and settings are used
            return _time_reference(run, experiment, batch_size, steps, warmup, length, column)
        longer = mimic_length_reports(list(run.train_dataset.with_format(None)[column]))
        train = run.train_dataset.remove_columns(column).add_column(column, longer).with_format("numpy")
        collate_fn, cache_seconds, cached_reports = run.collate_fn, float("nan"), 0
        if variant.startswith("cardiomm text cache"):
            from cardiomm.data.collators import ECGTextFeatureCollator
            from cardiomm.training.text_feature_cache import TextFeatureCache

            start = time.perf_counter()
            cache = TextFeatureCache.build(run.model, run.processor, longer, Path(output_dir) / "text_feature_cache",
                                           batch_size=batch_size, progress=False)
            cache_seconds, cached_reports = time.perf_counter() - start, len(cache)
            collate_fn = ECGTextFeatureCollator.from_text_collator(run.collate_fn, cache)
        if variant.endswith("bf16"):
            experiment.training.mixed_precision = "bf16"
        stamps: list[float] = []
        losses: list[float] = []
        loop = TrainingLoop(run.model, experiment, train, collate_fn=collate_fn,
                            on_step_end=lambda state: stamps.append(time.perf_counter()))
        model = loop.accelerator.unwrap_model(loop.model)
        model.register_forward_hook(lambda module, args, output: losses.append(float(output["loss"].detach())))
        stamps.append(time.perf_counter())
        loop.train()
    durations = np.diff(stamps[: total + 1]).tolist()
    return {"variant": variant, "steps": durations[warmup:], "final_loss": losses[total - 1],
            "cache_seconds": cache_seconds, "cached_reports": cached_reports}


def _time_reference(run: Any, experiment: Any, batch_size: int, steps: int, warmup: int, length: int,
                    column: str) -> dict[str, Any]:
    """The plain PyTorch step on the rows the cardiomm variants train on: the ECGs held in memory after a
    per-record min-max scaling (not timed, like a data loader's work ahead of the step); each timed step stacks
    the batch, tokenises its reports padded to 256 tokens, runs forward and backward and an AdamW step."""
    import numpy as np
    import torch

    ecgs, reports = _mimic_rows(run.train_dataset, batch_size, warmup + steps, column)
    scaled = []
    for ecg in ecgs:
        ecg = ecg[:, :length]
        low, high = ecg.min(), ecg.max()
        scaled.append((ecg - low) / (high - low + 1e-8))
    text_config = experiment.model.get("text_config") or BERT_BASE_TEXT_CONFIG
    model = reference_merl_model(text_config, length=length, num_leads=scaled[0].shape[0]).train()
    training = experiment.training
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay)
    tokenizer = run.tokenizer
    durations, loss_value = [], float("nan")
    for step in range(warmup + steps):
        rows = slice(step * batch_size, (step + 1) * batch_size)
        start = time.perf_counter()
        ecg = torch.from_numpy(np.stack(scaled[rows]))
        tokens = tokenizer(reports[rows], padding="max_length", truncation=True, max_length=REFERENCE_TEXT_LENGTH,
                           return_tensors="pt")
        loss = model(ecg, tokens["input_ids"], tokens["attention_mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        durations.append(time.perf_counter() - start)
        loss_value = float(loss.detach())
    return {"variant": "reference", "steps": durations[warmup:], "final_loss": loss_value,
            "cache_seconds": float("nan"), "cached_reports": 0}


def _run_comparison_in_fresh_process(kwargs: dict[str, Any]) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(time_comparison_variant, **kwargs).result()


def benchmark_reference_comparison(
    batch_size: int = 32,
    steps: int = 3,
    warmup: int = 1,
    rounds: int = 1,
    num_threads: int | None = 2,
    length: int = 5000,
    quick: bool = False,
    data_path: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Time, in one run, MERL-ResNet18 training steps (fp32 unless named) on the same synthetic ECGs with reports
    extended to MIMIC-IV-ECG length (:func:`mimic_length_reports`):

    * ``reference`` -- the public implementation's step written in plain PyTorch (:func:`reference_merl_model`,
      no cardiomm code): reports tokenised and padded to 256 tokens, a BERT-base-shaped text tower run under
      ``torch.no_grad`` on all of them, CLIP + UMA loss, AdamW; the ECGs are already in memory and scaled;
    * ``cardiomm tokenised`` -- ``cardiomm pretrain`` of the shipped ``merl_resnet18`` experiment with the text
      tower frozen whole (``freeze_text_layers: -1``) and ``text_feature_cache: off``: each batch is read from the
      dataset, preprocessed and tokenised by the collator, and the frozen tower runs on it;
    * ``cardiomm text cache`` -- the same run training from the text feature cache
      (:mod:`cardiomm.training.text_feature_cache`): the tower ran once per distinct report before training (its
      cost is the ``cache_s`` column, for ``cached_reports`` reports), and never during the steps;
    * ``cardiomm text cache bf16`` -- the same under the training loop's bf16 autocast (``mixed_precision:
      bf16``; `mixed_precision: auto` picks it on a GPU that has bf16, on a CPU it must be asked for).

    The cardiomm steps are timed from the end of one optimiser step to the end of the next (data loading,
    preprocessing and gradient clipping included); the reference step from stacking its batch to the end of its
    AdamW step. Each variant runs ``rounds`` times in a fresh process with ``num_threads`` threads (the variants
    alternating); ``warmup`` untimed steps start every run. ``quick`` shrinks the text tower to a toy BERT and runs
    the variants in this process (a smoke test of the benchmark, not a measurement). One row per variant:
    ``pairs_per_s`` (batch size / median step time), ``vs_reference`` and ``vs_cardiomm_tokenised`` (ratios of
    ``pairs_per_s``).
    """
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(data_path or Path(tmp) / "synthetic", n_patients=max(20, batch_size))
        results: dict[str, list[dict[str, Any]]] = {v: [] for v in COMPARISON_VARIANTS}
        for _ in range(rounds):
            for variant in COMPARISON_VARIANTS:
                kwargs = {"variant": variant, "data_path": str(data), "batch_size": batch_size, "steps": steps,
                          "warmup": warmup, "num_threads": num_threads, "length": length, "quick": quick}
                # a quick run only checks the benchmark: it saves the fresh processes' start-up
                result = time_comparison_variant(**kwargs) if quick else _run_comparison_in_fresh_process(kwargs)
                results[variant].append(result)
    speed = {v: batch_size / statistics.median(s for r in rs for s in r["steps"]) for v, rs in results.items()}
    rows = []
    for variant, runs in results.items():
        cache_seconds = [r["cache_seconds"] for r in runs]
        rows.append({
            "variant": variant,
            "pairs_per_s": speed[variant],
            "vs_reference": speed[variant] / speed["reference"],
            "vs_cardiomm_tokenised": speed[variant] / speed["cardiomm tokenised"],
            "step_s": batch_size / speed[variant],
            "timed_steps": sum(len(r["steps"]) for r in runs),
            "batch": batch_size,
            "ecg_samples": length,
            "text_tower": "toy" if quick else "bert-base",
            "cache_s": statistics.median(cache_seconds),
            "cached_reports": runs[-1]["cached_reports"],
            "final_loss": runs[-1]["final_loss"],
        })
    return rows


def _parse_variant(text: str) -> PretrainingVariant:
    """``model/precision/padding/freeze/reports``, e.g. ``resnet18/bf16/dynamic/-1/mimic`` (freeze ``file``:
    the experiment file's)."""
    model, precision, padding, freeze, reports = text.split("/")
    return PretrainingVariant(
        model=model, mixed_precision="no" if precision == "fp32" else precision, text_padding=padding,
        freeze_text_layers=None if freeze == "file" else int(freeze), reports=reports,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: print the benchmark table."""
    import torch

    from cardiomm.tables import format_table

    parser = argparse.ArgumentParser(description="Speed of MERL pretraining through the cardiomm training loop.")
    parser.add_argument("--variants", nargs="+", default=None,
                        help="model/precision/padding/freeze/reports, e.g. resnet18/bf16/dynamic/-1/mimic "
                             "(default: the DEFAULT_VARIANTS set)")
    parser.add_argument("--models", nargs="+", default=None, choices=["tiny", "resnet18"],
                        help="keep only the default variants of these models")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per variant, alternating the variants")
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--data", default=None, help="synthetic dataset folder (built there if missing)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--check-numerics", action="store_true",
                        help="also compare the loss and gradients of one batch in fp32 and bf16 autocast")
    parser.add_argument("--compare-reference", action="store_true",
                        help="instead of the variants: a plain PyTorch MERL-ResNet18 step against cardiomm's step "
                             "with the frozen text tower and from the text feature cache (fp32; --batch-size, "
                             "--steps, --warmup, --rounds, --num-threads (default 2), --length, --quick apply)")
    parser.add_argument("--length", type=int, default=5000, help="ECG samples of the comparison (12 x LENGTH)")
    parser.add_argument("--quick", action="store_true",
                        help="the comparison with a toy text tower (checks that it runs; not a measurement)")
    args = parser.parse_args(argv)
    if args.compare_reference:
        rows = benchmark_reference_comparison(
            batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
            num_threads=2 if args.num_threads is None else args.num_threads, length=args.length, quick=args.quick,
            data_path=args.data,
        )
        print(format_table(rows))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return
    variants = [_parse_variant(v) for v in args.variants] if args.variants else list(DEFAULT_VARIANTS)
    if args.models:
        variants = [v for v in variants if v.model in args.models]
    rows = benchmark_pretraining(
        variants, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
        num_threads=args.num_threads, num_workers=args.num_workers, data_path=args.data,
    )
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {args.num_threads or torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.check_numerics:
        checks = [mixed_precision_check(m, data_path=args.data) for m in dict.fromkeys(v.model for v in variants)]
        print(format_table(checks, floatfmt=".4g"))


if __name__ == "__main__":
    main()
