"""Speed of ECG-only self-supervised pretraining (every positive-pair strategy) next to plain supervised training of
the same encoder, through the real training path, and the cost of the wave-attribute neighbour index.

Every variant trains ``warmup + steps`` optimiser steps with the shared :class:`~cardiomm.training.TrainingLoop` on
one synthetic cohort (12 leads, 10 s at 500 Hz, measured wave attributes), written once per invocation:

* a strategy of :data:`~cardiomm.training.positive_pairs.STRATEGIES` is the shipped experiment file
  ``ssl_<strategy>_tiny.yaml`` (``--size tiny``: the 8-conv 1D ResNet on 12 x 500 views at 100 Hz) or
  ``ssl_<strategy>.yaml`` (``--size paper``: ResNet-18 on 12 x 2500 views at 500 Hz), built by
  :func:`~cardiomm.training.objectives.build_run` with the benchmark's overrides (dataset folder, batch size,
  steps; nothing saved, logged or evaluated on the way): its rows, its positive-pair batch sampler (group and
  attribute strategies), its :class:`~cardiomm.data.collators.SelfSupervisedCollator` (feature extraction of the
  whole record, then the strategy's :class:`~cardiomm.training.ecg_views.ECGViewMaker`), the
  :class:`~cardiomm.ECGSelfSupervisedModel` and AdamW with gradient clipping;
* ``supervised`` is the supervised baseline of ``cardiomm ssl-table``
  (:mod:`cardiomm.evaluation.ssl_comparison`): an :class:`~cardiomm.ECGEncoderForSequenceClassification` of the
  same encoder with a linear head, cross-entropy on the 4 rhythm classes, one random crop of the same length per
  ECG, as many ECGs per step as a strategy's step has views, the same optimiser settings. Its collator resamples
  each batch's crops from the dataset's rate, where the self-supervised runs resample their records once before
  training (``records_at_model_rate``): with ``--size tiny`` (500 -> 100 Hz) that resampling is most of the
  supervised row's ``views_pct``.

``--batch-size`` is the number of views the encoder sees per step (default 64, the shipped files' 32 anchors x 2):
the same-ECG strategies read ``batch / 2`` records and make two views of each, the group and attribute strategies
read ``batch / 2`` anchors and one partner each and make one crop of each, supervised reads ``batch`` records. The
DataLoader runs without workers, so the sampler, the reads and the collator run in the timed process.

Columns of the step table (one row per variant; the timed steps of all repeats together):

* ``step_s`` -- median step time; a step is timed from the end of one optimiser step to the end of the next, so it
  holds the sampler, the reads, the collator, forward, backward, clipping and AdamW;
* ``records`` / ``views`` -- ECG records read per step (distinct rows of the batch: anchors + partners, a row drawn
  twice counted once) and views the encoder sees per step;
* ``ecg_per_s`` -- ``records / step_s``; ``views_per_s`` -- ``views / step_s``;
* ``vs_supervised`` -- ``ecg_per_s`` over the ``supervised`` row's ``ecg_per_s`` measured in the same invocation;
* ``sampler_pct`` -- time spent in the batch sampler (``time.perf_counter`` around every ``next()`` of its
  iterator: the positive-pair sampler, or the loop's shuffling sampler for the same-ECG strategies and
  supervised) over the step time; ``views_pct`` -- time spent in the collator's ``__call__`` (feature extraction of
  the whole records + view making + normalisation; for supervised, feature extraction + crop) over the step time;
  ``view_maker_pct`` -- the view maker's ``__call__`` alone (part of ``views_pct``); ``data_pct`` -- everything
  between two steps that is not forward, backward or optimiser (sampler, dataset reads, collator, loop
  bookkeeping); ``sampler_views_pct`` = ``sampler_pct + views_pct``; ``< 10 %`` -- ``yes`` when
  ``sampler_views_pct`` is below 10. Shares are totals over all timed steps divided by their total time, so work
  done once per epoch (the sampler draws a whole epoch of pairs at its first batch) counts at its true rate;
* ``final_loss`` -- the last timed step's loss (a sanity check); ``timed_steps``; ``threads`` -- torch threads of
  the variant's process;
* ``peak_rss_gb`` -- the variant's process's peak resident memory after its timed steps (each variant runs in a
  fresh process, forked from a server that has only imported torch and cardiomm, whose ~0.5 GB are included;
  ``nan`` with ``--same-process``);
* ``load_1min`` -- the machine's 1-minute load average at the end of the timed steps (median over the repeats;
  the benchmark itself adds about the number of threads it uses, so a value well above that means other work
  shared the CPUs and the figures are noisy).

Columns of the index table (:func:`cardiomm.training.positive_pairs.neighbour_index_cost` on ``num_ecgs`` random
standardised 7-attribute vectors shaped like rhythm clusters, h = 1, 32 candidates at most, each size in a fresh
process): ``build_s`` (wall time of the KD-tree neighbour search, every CPU) and ``build_cpu_s`` (its CPU time),
``epoch_sampling_s`` (drawing one epoch of anchor-partner batches of ``--batch-size`` rows), ``step_sampling_ms``
(the same per batch), ``memory_mb`` (the candidate arrays), ``mean_candidates``, ``fraction_without_partner``,
``peak_rss_gb`` and ``load_1min``. The index is built once per run, before the first step; what it costs per epoch
is ``epoch_sampling_s``.

Rounds alternate the variants so that a shared machine's load spreads over all of them. Run
``cardiomm bench ssl --help``.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from ..training.positive_pairs import STRATEGIES

SUPERVISED = "supervised"
"""The name of the supervised baseline's row."""

SIZES: tuple[str, ...] = ("tiny", "paper")
DEFAULT_INDEX_SIZES: tuple[int, ...] = (100_000, 800_000)
SHARE_LIMIT_PCT: float = 10.0
"""Sampler + views must stay below this share of a step."""

SYNTHETIC_SEED = 0


def experiment_file(strategy: str, size: str) -> str:
    """The shipped experiment file of ``strategy`` at ``size`` (``supervised`` uses the ``cmsc`` file's encoder,
    data settings and training recipe, which every file of a size shares)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if strategy != SUPERVISED and strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected {SUPERVISED} or one of {STRATEGIES}")
    name = "cmsc" if strategy == SUPERVISED else strategy
    return f"ssl_{name}_tiny" if size == "tiny" else f"ssl_{name}"


def experiment_for(strategy: str, size: str, data_path: str | os.PathLike, batch_size: int, max_steps: int,
                   output_dir: str | os.PathLike) -> Any:
    """The :class:`ExperimentConfig` of a variant: the shipped file with the benchmark's overrides (the dataset
    folder, ``batch_size / 2`` anchors per step, ``max_steps``, no evaluation, checkpoints, logging or workers)."""
    from ..training.config import load_config

    if batch_size < 2 or batch_size % 2:
        raise ValueError(f"batch_size (views per step) must be an even number of at least 2, got {batch_size}")
    experiment = load_config(experiment_file(strategy, size))
    data = experiment.data
    data.pop("synthetic", None)
    data.update({"path": str(data_path), "eval_split": "none"})
    if data.get("strategy") == "rhythm":
        # the paper file reads the Chapman rhythm task; the synthetic cohort's rhythm task is "rhythm"
        data["positives"] = {**dict(data.get("positives") or {}), "task": "rhythm"}
    from .pretraining import timed_training_settings

    timed_training_settings(experiment.training, output_dir, batch_size // 2, max_steps)
    experiment.training.resume_from = None
    return experiment


# ------------------------------------------------------------------------------------------------ timing wrappers
class TimedCall:
    """``function`` (a collator, a view maker) with the seconds spent in its ``__call__`` added to
    :attr:`seconds`; other attributes are the wrapped object's."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = self.function(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["function"], name)


class TimedSampler:
    """A sampler (of indices or of batches) whose iterators add the seconds of every ``next()`` to
    :attr:`seconds`; ``epoch``, ``set_epoch`` and ``len`` are the wrapped sampler's. For a batch sampler,
    :attr:`distinct` collects the number of distinct rows of each batch it yields."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.seconds = 0.0
        self.distinct: list[int] = []

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Any]:
        start = time.perf_counter()
        iterator = iter(self.sampler)
        self.seconds += time.perf_counter() - start
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                self.seconds += time.perf_counter() - start
                return
            self.seconds += time.perf_counter() - start
            if isinstance(item, (list, tuple)):
                self.distinct.append(len(set(item)))
            yield item


class StepTimer:
    """Hooks on the model and the optimiser that split each training step into data (everything before the
    forward), forward, backward and optimiser (clipping + AdamW) time; :meth:`step_end` closes a step."""

    def __init__(self, model: Any, optimizer: Any, sampler: TimedSampler, collator: TimedCall,
                 view_maker: TimedCall | None, synchronize: Callable[[], None]) -> None:
        self.sampler, self.collator, self.view_maker, self._sync = sampler, collator, view_maker, synchronize
        self._stamps: dict[str, float] = {}
        self._last_end = time.perf_counter()
        self._spent = self._counters()
        model.register_forward_pre_hook(lambda module, args: self._mark("fwd_start"))
        model.register_forward_hook(lambda module, args, output: self._forward_done(output))
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.register_post_accumulate_grad_hook(lambda p: self._mark("bwd_end"))
        optimizer.register_step_post_hook(lambda opt, args, kwargs: self._optimizer_done())

    def _counters(self) -> tuple[float, float, float]:
        return (self.sampler.seconds, self.collator.seconds,
                self.view_maker.seconds if self.view_maker is not None else float("nan"))

    def _mark(self, name: str) -> None:
        self._stamps[name] = time.perf_counter()

    def _forward_done(self, output: Any) -> None:
        self._sync()
        self._mark("fwd_end")
        self._loss_tensor = output["loss"].detach()

    def _optimizer_done(self) -> None:
        self._sync()
        self._mark("opt_end")

    def step_end(self) -> dict[str, float]:
        """Close the current step: seconds of ``step``, ``data``, ``forward``, ``backward``, ``optim``,
        ``sampler``, ``collate``, ``view_maker`` and the step's loss (``loss_value``)."""
        self._sync()
        now, s = time.perf_counter(), self._stamps
        spent = self._counters()
        sampler, collate, view_maker = (now_value - before for now_value, before in zip(spent, self._spent))
        out = {
            "step": now - self._last_end,
            "data": s["fwd_start"] - self._last_end,
            "forward": s["fwd_end"] - s["fwd_start"],
            "backward": s["bwd_end"] - s["fwd_end"],
            "optim": s["opt_end"] - s["bwd_end"],
            "sampler": sampler,
            "collate": collate,
            "view_maker": view_maker,
            "loss_value": float(self._loss_tensor),
        }
        self._stamps, self._spent, self._last_end = {}, spent, now
        return out


# ------------------------------------------------------------------------------------------------ one variant
def _supervised_parts(experiment: Any, output_dir: str | os.PathLike) -> tuple[Any, Any, Any, Any]:
    """The supervised baseline of ``cardiomm ssl-table`` for ``experiment``: its run configuration, model, training
    rows and collator."""
    from ..evaluation.ssl_comparison import (
        RhythmCollator,
        RhythmRows,
        load_rhythm_evaluation_data,
        supervised_training_config,
    )
    from ..modeling.configuration_ecg_encoder import ECGEncoderConfig
    from ..modeling.modeling_ecg_encoder import ECGEncoderForSequenceClassification
    from ..processing.feature_extraction_ecg import ECGFeatureExtractor

    evaluation = load_rhythm_evaluation_data(experiment, {"train": "train", "validation": "validation",
                                                          "test": "test"})
    run_config = supervised_training_config(experiment, experiment.training.seed, Path(output_dir))
    run_config.training.resume_from = None
    config = ECGEncoderConfig(**dict(experiment.model.get("ecg") or {"backbone": "resnet1d_18"}))
    config.num_labels = len(evaluation.names)
    config.id2label = dict(enumerate(evaluation.names))
    config.label2id = {name: i for i, name in enumerate(evaluation.names)}
    config.classifier_head = "linear"
    config.problem_type = "single_label_classification"
    model = ECGEncoderForSequenceClassification(config)
    data, info = experiment.data, evaluation.info
    feature_extractor = ECGFeatureExtractor(lead_names=config.lead_names,
                                            sampling_rate=data.get("sampling_rate", info.sampling_rate),
                                            normalization=data.get("normalization", "zscore"),
                                            crop_length=int(data.get("crop_length", 2500)))
    rows = RhythmRows(evaluation.splits["train"], evaluation.labels["train"].argmax(axis=1))
    return run_config, model, rows, RhythmCollator(feature_extractor, info.sampling_rate, info.lead_names)


def _use_device(device: str) -> Callable[[], None]:
    """Make the training loop run on ``device`` (``cpu`` or ``cuda``); returns the function that waits for it."""
    import torch

    if device == "cpu":
        if torch.cuda.is_available():
            os.environ["ACCELERATE_USE_CPU"] = "1"  # the loop's Accelerator would otherwise take the GPU
        return lambda: None
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible to this process")
        return torch.cuda.synchronize
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def run_variant(strategy: str, size: str, data_path: str | os.PathLike, batch_size: int = 64, steps: int = 6,
                warmup: int = 2, num_threads: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """Train ``warmup + steps`` steps of one variant (a strategy or ``supervised``) in this process.

    Returns the breakdowns of the timed steps (:meth:`StepTimer.step_end`), the records and views per step, the
    loop's precision, and this process's peak RSS and the load average at the end of the timed steps.
    """
    import torch

    from ..training.loop import TrainingLoop
    from ..training.objectives import build_run
    from ..training.sampling import seed_everything

    if warmup < 1 or steps < 1:
        raise ValueError("a variant needs at least one warm-up step and one timed step")
    synchronize = _use_device(device)
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    total = warmup + steps
    breakdowns: list[dict[str, float]] = []
    views: list[int] = []
    finish: dict[str, float] = {}
    timers: list[StepTimer] = []
    with tempfile.TemporaryDirectory() as output_dir:
        experiment = experiment_for(strategy, size, data_path, batch_size, total, output_dir)
        seed_everything(experiment.training.seed)
        batch_sampler = None
        if strategy == SUPERVISED:
            run_config, model, rows, collate_fn = _supervised_parts(experiment, output_dir)
            view_maker = None
        else:
            run = build_run(experiment)
            run_config, model, rows, collate_fn = experiment, run.model, run.train_dataset, run.collate_fn
            view_maker = TimedCall(collate_fn.views)
            collate_fn.views = view_maker
            batch_sampler = run.train_batch_sampler
        collator = TimedCall(collate_fn)

        def collate(items: Any) -> Any:
            batch = collator(items)
            views.append(int(batch["input_values"].shape[0]))
            return batch

        def on_step_end(state: Any) -> None:
            breakdowns.append(timers[0].step_end())
            if len(breakdowns) == total:
                finish["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
                finish["load_1min"] = os.getloadavg()[0]

        sampler = TimedSampler(batch_sampler) if batch_sampler is not None else None
        loop = TrainingLoop(model, run_config, rows, collate_fn=collate, on_step_end=on_step_end,
                            train_batch_sampler=sampler)
        if sampler is None:  # the loop's own shuffling sampler, read index by index by the DataLoader
            sampler = TimedSampler(loop.train_sampler.sampler)
            loop.train_sampler.sampler = sampler
        unwrapped = loop.accelerator.unwrap_model(loop.model)
        timers.append(StepTimer(unwrapped, loop.optimizer.optimizer, sampler, collator, view_maker, synchronize))
        loop.train()
        precision = str(loop.accelerator.mixed_precision)
        device_used = str(loop.accelerator.device)
    if len(breakdowns) < total or sampler.seconds == 0.0:
        raise RuntimeError(f"{strategy}: {len(breakdowns)} of {total} steps were timed, sampler time "
                           f"{sampler.seconds} s (the timing wrappers were not reached)")
    per_batch = run_config.training.per_device_batch_size
    if sampler.distinct:
        records = statistics.mean(sampler.distinct)
    else:
        records = float(per_batch)  # a shuffled permutation: every row of a batch is distinct
    ecg = experiment.model.get("ecg") or {}
    return {
        "strategy": strategy,
        "view_kind": "crop" if strategy == SUPERVISED else collate_fn.views.kind,
        "backbone": ecg.get("backbone", ecg.get("pretrained", "")),
        "input": f"{len(collate_fn.feature_extractor.lead_names)}x{int(experiment.data['crop_length'])}"
                 f"@{experiment.data['sampling_rate']:g}Hz",
        "steps": breakdowns[warmup:],
        "records": float(records),
        "views": float(statistics.mean(views)),
        "precision": precision,
        "device": device_used,
        "final_loss": breakdowns[-1]["loss_value"],
        "peak_rss_gb": finish["peak_rss_gb"],
        "load_1min": finish["load_1min"],
        "num_threads": torch.get_num_threads(),
    }


def write_caches(strategy: str | None, size: str, data_path: str | os.PathLike, batch_size: int = 64
                 ) -> dict[str, Any]:
    """Build (untimed) what the first run on a dataset writes to the ``datasets`` cache and later runs read: the
    dataset's Arrow files, and the records resampled to the encoder's rate of a ``strategy`` run and the rhythm rows
    of the supervised one; so that no timed variant's process pays for them (in time or peak memory)."""
    from ..evaluation.ssl_comparison import load_rhythm_evaluation_data
    from ..training.objectives import build_run

    with tempfile.TemporaryDirectory() as output_dir:
        if strategy is not None:
            build_run(experiment_for(strategy, size, data_path, batch_size, 1, output_dir))
        load_rhythm_evaluation_data(experiment_for(SUPERVISED, size, data_path, batch_size, 1, output_dir),
                                    {"train": "train", "validation": "validation", "test": "test"})
    return {}


def index_cost(num_ecgs: int, batch_size: int = 64) -> dict[str, Any]:
    """:func:`~cardiomm.training.positive_pairs.neighbour_index_cost` of ``num_ecgs`` with batches of ``batch_size``
    rows, with the sampling time per batch, this process's peak RSS and the load average at the end."""
    from ..training.positive_pairs import neighbour_index_cost

    cost = neighbour_index_cost(num_ecgs=num_ecgs, batch_size=batch_size)
    anchors = round(num_ecgs * (1.0 - cost["fraction_without_partner"]))
    batches = max(anchors // (batch_size // 2), 1)
    return {
        "num_ecgs": int(num_ecgs),
        "build_s": cost["build_s"],
        "build_cpu_s": cost["build_cpu_s"],
        "epoch_sampling_s": cost["epoch_sampling_s"],
        "batches_per_epoch": batches,
        "step_sampling_ms": 1000.0 * cost["epoch_sampling_s"] / batches,
        "memory_mb": cost["memory_mb"],
        "mean_candidates": cost["mean_candidates"],
        "fraction_without_partner": cost["fraction_without_partner"],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "load_1min": os.getloadavg()[0],
    }


PRELOADED_MODULES: tuple[str, ...] = (
    "torch", "sklearn.neighbors", "cardiomm.training.loop", "cardiomm.training.objectives",
    "cardiomm.training.self_supervised", "cardiomm.evaluation.ssl_comparison", "cardiomm.benchmarks.ssl",
)
"""Imported once by the fork server that starts the variants' processes (so that each starts in a fraction of a
second instead of importing torch and cardiomm again)."""


def _process_context() -> Any:
    """Fresh processes forked from a server that has imported :data:`PRELOADED_MODULES` and run nothing else (no
    torch thread pool, no model, no data), or spawned where there is no fork server (Windows)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOADED_MODULES))
    return context


def _in_fresh_process(function: Callable[..., dict[str, Any]], kwargs: dict[str, Any]) -> dict[str, Any]:
    # a worker of its own for each run: nothing of the earlier variants (memory, threads, caches) carries over
    with ProcessPoolExecutor(max_workers=1, mp_context=_process_context()) as pool:
        return pool.submit(function, **kwargs).result()


def prepare_data(directory: str | os.PathLike, n_patients: int = 150, seed: int = SYNTHETIC_SEED) -> Path:
    """The synthetic cohort with measured wave attributes (12 x 5000 at 500 Hz, about 300 training ECGs for 150
    patients) written in ``directory`` as an experiment's ``data.synthetic`` writes it (kept when already there)."""
    from ..training.experiment_data import prepare_dataset_folder

    return prepare_dataset_folder({"path": str(directory), "synthetic": {
        "n_patients": n_patients, "seed": seed, "measure": True, "include_ehr": False, "progress": False}})


# ------------------------------------------------------------------------------------------------ the benchmark
def _share(runs: list[dict[str, Any]], part: str) -> float:
    steps = [s for r in runs for s in r["steps"]]
    total = sum(s["step"] for s in steps)
    return 100.0 * sum(s[part] for s in steps) / total


def step_rows(results: dict[str, list[dict[str, Any]]], same_process: bool = False) -> list[dict[str, Any]]:
    """The step table (module docstring) from the runs of every variant."""
    speed: dict[str, float] = {}
    rows = []
    for strategy, runs in results.items():
        steps = [s for r in runs for s in r["steps"]]
        step_s = statistics.median(s["step"] for s in steps)
        records = statistics.mean(r["records"] for r in runs)
        views = statistics.mean(r["views"] for r in runs)
        speed[strategy] = records / step_s
        sampler, collate = _share(runs, "sampler"), _share(runs, "collate")
        view_maker = _share(runs, "view_maker") if strategy != SUPERVISED else float("nan")
        rows.append({
            "strategy": strategy,
            "views_kind": runs[-1]["view_kind"],
            "backbone": runs[-1]["backbone"],
            "input": runs[-1]["input"],
            "precision": runs[-1]["precision"],
            "records": records,
            "views": views,
            "step_s": step_s,
            "ecg_per_s": records / step_s,
            "views_per_s": views / step_s,
            "vs_supervised": float("nan"),
            "sampler_pct": sampler,
            "views_pct": collate,
            "view_maker_pct": view_maker,
            "data_pct": _share(runs, "data"),
            "sampler_views_pct": sampler + collate,
            "< 10 %": "yes" if sampler + collate < SHARE_LIMIT_PCT else "no",
            "final_loss": runs[-1]["final_loss"],
            "timed_steps": len(steps),
            "threads": runs[-1]["num_threads"],
            "peak_rss_gb": float("nan") if same_process else max(r["peak_rss_gb"] for r in runs),
            "load_1min": statistics.median(r["load_1min"] for r in runs),
        })
    if SUPERVISED in speed:
        for row in rows:
            row["vs_supervised"] = speed[row["strategy"]] / speed[SUPERVISED]
    return rows


def benchmark_ssl(
    size: str = "tiny",
    strategies: Sequence[str] = STRATEGIES,
    batch_size: int = 64,
    steps: int = 6,
    warmup: int = 2,
    repeats: int = 2,
    index_sizes: Sequence[int] = DEFAULT_INDEX_SIZES,
    num_threads: int | None = None,
    device: str = "cpu",
    data_path: str | os.PathLike | None = None,
    same_process: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Time every strategy and the supervised baseline (``repeats`` rounds, the variants alternating, each run in a
    fresh process unless ``same_process``), then the neighbour index at ``index_sizes``. Returns
    ``{"steps": step table rows, "index": index table rows}`` (columns in the module docstring).

    ``data_path``: the synthetic dataset folder (written there when missing; default: a temporary folder).
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; expected some of {STRATEGIES}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if steps < 1 or warmup < 1:
        raise ValueError(f"each run needs at least one warm-up and one timed step, got warmup {warmup}, steps {steps}")
    if batch_size < 2 or batch_size % 2:
        raise ValueError(f"batch_size (views per step) must be an even number of at least 2, got {batch_size}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible to this process")
    if any(int(n) < 2 for n in index_sizes):
        raise ValueError(f"index sizes must be at least 2 ECGs, got {list(index_sizes)}")
    say = progress or (lambda message: None)
    variants = [SUPERVISED, *dict.fromkeys(strategies)]
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        say("writing the synthetic cohort" if data_path is None or not Path(data_path).exists() else
            f"synthetic cohort in {data_path}")
        data = prepare_data(data_path or Path(tmp) / "synthetic", n_patients=max(150, 2 * batch_size))
        say("writing the dataset caches the runs read")
        kwargs = {"strategy": variants[1] if variants[1:] else None, "size": size, "data_path": str(data),
                  "batch_size": batch_size}
        write_caches(**kwargs) if same_process else _in_fresh_process(write_caches, kwargs)
        for repeat in range(repeats):
            for variant in variants:
                say(f"{variant} ({size}), round {repeat + 1}/{repeats}")
                kwargs = {"strategy": variant, "size": size, "data_path": str(data), "batch_size": batch_size,
                          "steps": steps, "warmup": warmup, "num_threads": num_threads, "device": device}
                results[variant].append(run_variant(**kwargs) if same_process
                                        else _in_fresh_process(run_variant, kwargs))
    index = []
    for n in index_sizes:
        say(f"attribute neighbour index of {int(n)} ECGs")
        kwargs = {"num_ecgs": int(n), "batch_size": batch_size}
        row = index_cost(**kwargs) if same_process else _in_fresh_process(index_cost, kwargs)
        if same_process:
            row["peak_rss_gb"] = float("nan")
        index.append(row)
    return {"steps": step_rows(results, same_process), "index": index}


def summary(tables: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Plain sentences under the tables: which strategies keep sampler + views under 10 % of a step, and what the
    neighbour index costs per epoch at the largest size."""
    lines = []
    rows = [r for r in tables["steps"] if r["strategy"] != SUPERVISED]
    over = [f"{r['strategy']} ({r['sampler_views_pct']:.1f} %)" for r in rows
            if not r["sampler_views_pct"] < SHARE_LIMIT_PCT]
    if rows:
        lines.append(f"sampler + views below {SHARE_LIMIT_PCT:g} % of a step: "
                     + ("every strategy" if not over else f"not for {', '.join(over)}"))
    if tables["index"]:
        largest = max(tables["index"], key=lambda r: r["num_ecgs"])
        lines.append(
            f"attribute neighbour index at {largest['num_ecgs']} ECGs: built once per run in "
            f"{largest['build_s']:.1f} s ({largest['build_cpu_s']:.1f} CPU s, {largest['memory_mb']:.1f} MB); per "
            f"epoch, drawing the pairs of {largest['batches_per_epoch']} batches costs "
            f"{largest['epoch_sampling_s']:.3f} s ({largest['step_sampling_ms']:.3f} ms per step)")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m cardiomm.benchmarks.ssl``: the same as ``cardiomm bench ssl``."""
    from ..cli import main as cli_main

    sys.exit(cli_main(["bench", "ssl", *(argv if argv is not None else sys.argv[1:])]))


if __name__ == "__main__":
    main()


__all__ = ["DEFAULT_INDEX_SIZES", "SHARE_LIMIT_PCT", "SIZES", "SUPERVISED", "StepTimer", "TimedCall", "TimedSampler",
           "benchmark_ssl", "experiment_for", "index_cost", "prepare_data", "run_variant", "step_rows", "summary",
           "write_caches"]
