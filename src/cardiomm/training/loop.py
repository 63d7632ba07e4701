"""The Accelerate training loop shared by every cardiomm objective (CLIP/MERL, ConVIRT, MLM, multi-task).

The same code runs on one CPU, one GPU, many GPUs (DDP) and DeepSpeed ZeRO-2/3: the distributed setup comes from
``accelerate launch`` (see ``scripts/README.md``) or from a :class:`accelerate.utils.DeepSpeedPlugin` passed to
:class:`TrainingLoop`.

Output folder::

    output_dir/
      config.json, model.safetensors   final model (``save_pretrained``), plus what ``on_save`` writes
      training_config.yaml             the experiment configuration (re-loadable with ``load_config``)
      run_info.json                    cardiomm / torch / transformers / accelerate versions, world size, ...
      metrics.csv, eval_metrics.csv    training and evaluation metrics
      runs/                            TensorBoard events
      checkpoints/step_000500/         model.safetensors, optimizer.safetensors, trainer_state.json (the last
                                       ``keep_last``; see :mod:`cardiomm.training.checkpointing`)

Reproducibility: with the same seed, configuration, data, software and hardware, a run ends with the same weights
bit for bit, whatever the number of DataLoader workers. The shuffling order of each epoch comes from
``(seed, epoch)``, every random draw made while reading or collating a sample (crops, masks) from
``(seed, epoch, sample index)``, and the random generators of the training step (dropout) are reseeded from
``(seed, epoch, batch position)`` before each micro-batch (see :mod:`cardiomm.training.sampling`).

Resuming (``resume_from="latest"`` or a checkpoint folder) restores the model, the optimiser, the learning-rate
schedule and the position in the data, then skips the batches already consumed in the current epoch; as nothing
else carries randomness from one step to the next, a run stopped at any point, even killed mid-epoch, and resumed
from its last checkpoint ends with exactly the weights of the uninterrupted run. ``latest`` takes the newest
checkpoint that verifies (damaged ones are skipped with a warning); a damaged checkpoint named explicitly, or no
intact checkpoint at all, is a ``ValueError`` naming the file and the problem. A caller that has already verified
the checkpoint (:func:`~cardiomm.training.checkpointing.resolve_resume_checkpoint`) passes it as
``resume_checkpoint`` and its files are not hashed a second time.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import pickle
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import (
    DeepSpeedPlugin,
    DistributedDataParallelKwargs,
    DistributedType,
    InitProcessGroupKwargs,
    ProjectConfiguration,
)
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from .checkpointing import (
    CHECKPOINT_PREFIX,
    CHECKPOINTS_FOLDER,
    MODEL_FILE,
    OPTIMIZER_FILE,
    TRAINER_STATE_FILE,
    DamagedCheckpointError,
    VerifiedCheckpoint,
    checkpoint_name,
    completed_checkpoints,
    deepspeed_state_classes,
    partial_folder,
    publish,
    read_tensors,
    remove_partial_checkpoints,
    resolve_resume_checkpoint,
    state_from_json,
    state_to_json,
    weights_only_torch_load,
    write_trainer_state,
)
from .config import ExperimentConfig, TrainingConfig, save_config
from .optimization import PlateauScheduleWithWarmup, build_lr_scheduler, build_optimizer
from .sampling import (
    EpochShuffleSampler,
    KeyedBatchSampler,
    KeyedSampler,
    SeededCollator,
    SeededSamples,
    epoch_seed,
    sample_seed,
    seed_everything,
)

logger = logging.getLogger(__name__)

BEST_MODEL_FOLDER = "best_model"
"""Sub-folder of ``output_dir`` holding the weights of the best evaluation (``load_best_model_at_end``)."""

__all__ = [
    "CHECKPOINT_PREFIX",
    "TRAINER_STATE_FILE",
    "EpochShuffleSampler",
    "TrainingLoop",
    "TrainingState",
    "TrainResult",
    "completed_checkpoints",
    "epoch_seed",
]


@dataclass
class TrainingState:
    """Where training stands; saved in every checkpoint as ``trainer_state.json``.

    ``batches_in_epoch`` counts the micro-batches of epoch ``epoch`` already consumed on each process.
    """

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    last_eval_step: int = -1
    best_metric: float | None = None
    evaluations_without_improvement: int = 0
    stopped_early: bool = False
    last_metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What :meth:`TrainingLoop.train` returns."""

    global_step: int
    final_loss: float
    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    resumed_from: Path | None = None


OutputHook = Callable[[Path], None]
StepHook = Callable[[TrainingState], "bool | None"]
EvalFunction = Callable[[torch.nn.Module, Accelerator], Mapping[str, float]]


class TrainingLoop:
    """One Accelerate loop for every objective: the model's forward returns the loss.

    Args:
        model: a ``torch.nn.Module`` (usually a ``PreTrainedModel``) whose forward, called as ``model(**batch)``
            (``model(*batch)`` for tuple batches), returns a mapping or object with a scalar ``loss``. Every other
            scalar tensor field whose name ends in ``_loss`` is logged as a loss term.
        config: a :class:`TrainingConfig`, or an :class:`ExperimentConfig` (its ``model``/``data`` sections are
            saved to ``training_config.yaml`` too).
        train_dataset: a map-style dataset (``torch.utils.data.Dataset``, ``datasets.Dataset`` with a format).
        collate_fn: turns a list of dataset items into a batch (``None``: PyTorch's default collation).
        eval_dataset: optional validation set; its mean loss is reported as ``eval_loss`` (and its loss terms as
            ``eval_<term>``), every ``eval_every_steps`` or at the end of every epoch.
        eval_fn: optional ``eval_fn(model, accelerator) -> {name: value}`` called at each evaluation on every
            process (in eval mode, under ``torch.no_grad``); names without the ``eval_`` prefix get it.
        on_save: ``on_save(output_dir)`` called on the main process after the final ``save_pretrained`` (save the
            processor, the model card, ...).
        on_step_end: ``on_step_end(state)`` called on every process after each optimiser step (after logging,
            evaluation and checkpointing); returning ``True`` on any process ends training after this step.
        deepspeed_plugin: a DeepSpeed plugin; without it DeepSpeed is used when ``accelerate launch`` configured
            it. ``"auto"`` gradient clipping / accumulation values are filled from ``config``.
        resume_checkpoint: ``"config"`` (default): resume as ``config.resume_from`` says, verifying the checkpoint
            when training starts; a :class:`~cardiomm.training.checkpointing.VerifiedCheckpoint` (from
            :func:`~cardiomm.training.checkpointing.resolve_resume_checkpoint` or
            :func:`~cardiomm.training.checkpointing.verify_checkpoint`): resume from it without hashing its files
            again; ``None``: start from scratch.
        train_batch_sampler: optional batch sampler over ``train_dataset`` (lists of indices, with ``epoch`` /
            ``set_epoch``, its order a function of ``(seed, epoch)``, e.g.
            :class:`~cardiomm.training.sampling.ModalityGroupedBatchSampler`) replacing the shuffled batches of
            ``per_device_batch_size``.
        eval_batch_sampler: optional batch sampler over ``eval_dataset``, used as it is at every evaluation.
        plateau_metric: the evaluation metric that drives ``lr_schedule: plateau`` when it differs from
            ``monitor_metric`` (which then drives early stopping and the best model alone), e.g. the rate halved
            when the validation AUROC stalls while training stops on the validation loss.
        plateau_mode: ``"min"`` or ``"max"`` for ``plateau_metric`` (default: ``monitor_mode``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: TrainingConfig | ExperimentConfig,
        train_dataset: Dataset,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        eval_dataset: Dataset | None = None,
        eval_fn: EvalFunction | None = None,
        on_save: OutputHook | None = None,
        on_step_end: StepHook | None = None,
        deepspeed_plugin: DeepSpeedPlugin | None = None,
        resume_checkpoint: VerifiedCheckpoint | Literal["config"] | None = "config",
        train_batch_sampler: Any | None = None,
        eval_batch_sampler: Any | None = None,
        plateau_metric: str | None = None,
        plateau_mode: str | None = None,
    ) -> None:
        if isinstance(resume_checkpoint, str) and resume_checkpoint != "config":
            raise ValueError(f"resume_checkpoint must be 'config', a VerifiedCheckpoint or None, not "
                             f"{resume_checkpoint!r} (a folder or 'latest' is set as config.resume_from)")
        self.experiment = config if isinstance(config, ExperimentConfig) else ExperimentConfig(training=config)
        self.config = cfg = self.experiment.training
        self.output_dir = Path(cfg.output_dir)
        self.checkpoint_dir = self.output_dir / CHECKPOINTS_FOLDER
        self._resume_checkpoint = resume_checkpoint
        self.eval_fn = eval_fn
        self.on_save = on_save
        self.on_step_end = on_step_end
        self.plateau_metric = plateau_metric or cfg.monitor_metric
        self.state = TrainingState()

        mixed_precision = _resolve_mixed_precision(cfg.mixed_precision)
        _allow_new_precision(mixed_precision)
        kwargs_handlers: list[Any] = _process_group_kwargs(deepspeed_plugin)
        if cfg.ddp_find_unused_parameters:
            kwargs_handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
        self.accelerator = Accelerator(
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            mixed_precision=mixed_precision,
            log_with=_available_trackers(cfg.log_with) or None,
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "runs")
            ),
            deepspeed_plugin=deepspeed_plugin,
            kwargs_handlers=kwargs_handlers,
        )
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            _fill_deepspeed_auto_values(self.accelerator.state.deepspeed_plugin, cfg)
        seed_everything(cfg.seed)

        # samples are read as (epoch, index) keys so that their random draws depend on nothing else
        self._loader_generator = torch.Generator()
        if train_batch_sampler is not None:  # batches composed by the objective (e.g. grouped by modalities)
            self.train_sampler = KeyedBatchSampler(train_batch_sampler)
            batching: dict[str, Any] = {"batch_sampler": self.train_sampler}
        else:
            self.train_sampler = KeyedSampler(EpochShuffleSampler(len(train_dataset), cfg.seed))
            batching = {"batch_size": cfg.per_device_batch_size, "sampler": self.train_sampler,
                        "drop_last": cfg.drop_last}
        train_loader = DataLoader(
            SeededSamples(train_dataset, cfg.seed),
            collate_fn=SeededCollator(collate_fn, cfg.seed),
            num_workers=cfg.num_workers,
            pin_memory=torch.cuda.is_available(),
            generator=self._loader_generator,
            **batching,
        )
        self._eval_generator = torch.Generator()
        eval_loader = None
        if eval_dataset is not None:
            if eval_batch_sampler is not None:
                eval_batching: dict[str, Any] = {"batch_sampler": eval_batch_sampler}
            else:
                eval_batching = {"batch_size": cfg.per_device_eval_batch_size or cfg.per_device_batch_size,
                                 "sampler": SequentialSampler(eval_dataset)}
            eval_loader = DataLoader(  # the same random draws (crops, masks) at every evaluation
                SeededSamples(eval_dataset, epoch_seed(cfg.seed, 0, stream=2)),
                collate_fn=SeededCollator(collate_fn, epoch_seed(cfg.seed, 0, stream=2)),
                num_workers=cfg.num_workers,
                pin_memory=torch.cuda.is_available(),
                generator=self._eval_generator,
                **eval_batching,
            )

        self._raw_optimizer = build_optimizer(model, cfg)
        to_prepare = [model, self._raw_optimizer, train_loader] + ([eval_loader] if eval_loader is not None else [])
        try:
            prepared = self.accelerator.prepare(*to_prepare)
        except RuntimeError as err:
            scalars = [n for n, p in model.named_parameters() if p.ndim == 0]
            if self.accelerator.distributed_type == DistributedType.DEEPSPEED and scalars and "dim" in str(err):
                raise ValueError(
                    f"DeepSpeed could not broadcast the 0-dim parameters {scalars} when starting its engine ({err}); "
                    "store such scalars (e.g. logit_scale) with shape (1,)"
                ) from err
            raise
        self.model, self.optimizer, self.train_loader = prepared[:3]
        self.eval_loader = prepared[3] if eval_loader is not None else None
        if len(self.train_loader) == 0:
            raise ValueError(
                f"the training set ({len(train_dataset)} items) gives no batch of {cfg.per_device_batch_size} "
                f"per process on {self.accelerator.num_processes} process(es)"
            )

        self.steps_per_epoch = math.ceil(len(self.train_loader) / self.accelerator.gradient_accumulation_steps)
        self.total_steps = cfg.max_steps or cfg.num_epochs * self.steps_per_epoch
        # stepped once per optimiser step by the loop (not by Accelerate, which would step it once per process)
        schedule_config = dataclasses.replace(cfg, monitor_mode=plateau_mode) if plateau_mode else cfg
        self.lr_scheduler = build_lr_scheduler(self._raw_optimizer, schedule_config, self.total_steps,
                                               self.steps_per_epoch)
        self.accelerator.register_for_checkpointing(self.lr_scheduler)

    # ------------------------------------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        """Train for ``max_steps`` (or ``num_epochs``), resuming first when ``resume_from`` is set."""
        cfg, accelerator = self.config, self.accelerator
        checkpoint = self._resume_checkpoint
        if isinstance(checkpoint, str):  # "config"
            checkpoint = resolve_resume_checkpoint(cfg.resume_from, self.checkpoint_dir)
        resumed_from = self._resume(checkpoint) if checkpoint is not None else None
        state = self.state
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            remove_partial_checkpoints(self.checkpoint_dir)
            save_config(self.experiment, self.output_dir / "training_config.yaml")
            self._write_run_info(resumed_from)
            for name in ("metrics.csv", "eval_metrics.csv"):
                _truncate_csv_after(self.output_dir / name, state.global_step)
        if accelerator.log_with:
            accelerator.init_trackers(cfg.run_name, config=_tracker_hparams(cfg))

        progress = _progress_bar(self.total_steps, state.global_step, accelerator.is_main_process)
        window = _LossWindow(accelerator.device)
        last_step_losses: list[torch.Tensor] = []
        step_losses: list[torch.Tensor] = []
        last_saved_step = state.global_step if resumed_from else -1
        grad_norm: float | None = None
        stop = state.global_step >= self.total_steps or state.stopped_early
        self.model.train()

        while not stop:
            loader = self._epoch_loader(state.epoch, state.batches_in_epoch)
            for batch in loader:
                # the step's own random draws (dropout, ...) depend only on (seed, epoch, batch position)
                seed_everything(sample_seed(cfg.seed, state.epoch, state.batches_in_epoch,
                                            stream=16 + accelerator.process_index))
                with accelerator.accumulate(self.model):
                    outputs = self._forward(batch)
                    loss = _output_loss(outputs)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        grad_norm = self._clip_gradients()
                    self.optimizer.step()
                    if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                        self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                state.batches_in_epoch += 1
                window.add(loss, _loss_terms(outputs), _batch_size(batch))
                step_losses.append(loss.detach())
                if not accelerator.sync_gradients:
                    continue

                state.global_step += 1
                last_step_losses, step_losses = step_losses, []
                progress.update(1)
                epoch_position = state.epoch + state.batches_in_epoch / len(self.train_loader)
                if state.batches_in_epoch >= len(self.train_loader):  # the epoch ends with this step
                    state.epoch += 1
                    state.batches_in_epoch = 0
                if state.global_step % cfg.log_every_steps == 0 or state.global_step == self.total_steps:
                    self._log_training(window, epoch_position, grad_norm, progress)
                if self._evaluation_due(epoch_ended=state.batches_in_epoch == 0):
                    self._evaluate_and_track(epoch_position)
                if cfg.save_every_steps and state.global_step % cfg.save_every_steps == 0:
                    self._save_checkpoint()
                    last_saved_step = state.global_step
                hook_stop = self._hook_requests_stop()  # called after every step, the last one included
                stop = state.global_step >= self.total_steps or state.stopped_early or hook_stop
                if stop:
                    break
            if hasattr(loader, "end"):
                loader.end()  # release Accelerate's reference when the epoch was left early

        if self.eval_loader is not None or self.eval_fn is not None:
            if state.last_eval_step != state.global_step:
                self._evaluate_and_track(state.epoch + state.batches_in_epoch / len(self.train_loader))
        if cfg.save_every_steps and last_saved_step != state.global_step:
            self._save_checkpoint()
        progress.close()
        final_loss = self._mean_across_processes(last_step_losses)
        if cfg.load_best_model_at_end:
            self._load_best_model()
        self._save_final_model()
        accelerator.end_training()
        return TrainResult(
            global_step=state.global_step,
            final_loss=final_loss,
            output_dir=self.output_dir,
            metrics=dict(state.last_metrics),
            stopped_early=state.stopped_early,
            resumed_from=resumed_from,
        )

    # ------------------------------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Mean validation loss (and loss terms) plus ``eval_fn`` metrics; training RNG streams are untouched."""
        accelerator = self.accelerator
        metrics: dict[str, float] = {}
        was_training = self.model.training
        self.model.eval()
        with _preserved_rng_state(), torch.no_grad():
            if self.eval_loader is not None:
                self._eval_generator.manual_seed(epoch_seed(self.config.seed, 0, stream=2))
                names: list[str] = []
                sums: torch.Tensor | None = None
                for batch in self.eval_loader:
                    outputs = self._forward(batch)
                    terms = {"loss": _output_loss(outputs).detach(), **_loss_terms(outputs)}
                    n = _batch_size(batch)
                    values = torch.stack([terms[k].float().reshape(()) for k in terms] + [torch.tensor(1.0)]) * n
                    if sums is None:
                        names, sums = list(terms), values.to(accelerator.device)
                    else:
                        sums = sums + values.to(accelerator.device)
                if sums is not None:
                    totals = accelerator.reduce(sums, reduction="sum").tolist()
                    metrics.update({f"eval_{k}": totals[i] / totals[-1] for i, k in enumerate(names)})
            if self.eval_fn is not None:
                for name, value in dict(self.eval_fn(self.model, accelerator)).items():
                    metrics[name if name.startswith("eval_") else f"eval_{name}"] = float(value)
        if was_training:
            self.model.train()
        return metrics

    # ------------------------------------------------------------------------------------------------------------
    def _epoch_loader(self, epoch: int, skip_batches: int) -> Any:
        """The prepared loader of ``epoch``, seeded from ``(seed, epoch)``, past its first ``skip_batches``."""
        self.train_sampler.set_epoch(epoch)
        self._loader_generator.manual_seed(
            epoch_seed(self.config.seed, epoch, stream=1 + self.accelerator.process_index)
        )
        loader = self.train_loader
        if skip_batches:
            loader = self.accelerator.skip_first_batches(self.train_loader, skip_batches)
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        self.train_sampler.set_epoch(epoch)
        return loader

    def _forward(self, batch: Any) -> Any:
        if isinstance(batch, Mapping):
            return self.model(**batch)
        if isinstance(batch, (tuple, list)):
            return self.model(*batch)
        return self.model(batch)

    def _clip_gradients(self) -> float | None:
        """Clip to ``max_grad_norm`` and return the total norm before clipping (DeepSpeed clips in its engine)."""
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm else float("inf")
        norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        return None if norm is None else float(norm)

    def _hook_requests_stop(self) -> bool:
        if self.on_step_end is None:
            return False
        wants_stop = bool(self.on_step_end(self.state))
        if self.accelerator.num_processes > 1:
            flag = torch.tensor(float(wants_stop), device=self.accelerator.device)
            wants_stop = bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)
        return wants_stop

    def _mean_across_processes(self, losses: Sequence[torch.Tensor]) -> float:
        value = torch.stack([x.float() for x in losses]).mean() if losses else torch.tensor(float("nan"))
        return float(self.accelerator.reduce(value.to(self.accelerator.device), reduction="mean"))

    # --- logging ------------------------------------------------------------------------------------------------
    def _log_training(self, window: _LossWindow, epoch: float, grad_norm: float | None, progress: Any) -> None:
        accelerator = self.accelerator
        means = window.reduce(accelerator)
        samples_per_second = window.samples * accelerator.num_processes / max(window.elapsed(), 1e-9)
        row: dict[str, Any] = {
            "step": self.state.global_step,
            "epoch": round(epoch, 4),
            "lr": self.lr_scheduler.get_last_lr()[0],
            **means,
            "grad_norm": grad_norm if grad_norm is not None else "",
            "samples_per_second": round(samples_per_second, 2),
        }
        window.reset()
        progress.set_postfix(loss=f"{means.get('loss', float('nan')):.4f}", samples_s=f"{samples_per_second:.1f}")
        if accelerator.log_with:
            accelerator.log({f"train/{k}": v for k, v in row.items() if k != "step" and v != ""}, step=row["step"])
        if accelerator.is_main_process:
            _append_csv(self.output_dir / "metrics.csv", row)

    def _evaluation_due(self, epoch_ended: bool) -> bool:
        if self.eval_loader is None and self.eval_fn is None:
            return False
        if self.config.eval_every_steps:
            return self.state.global_step % self.config.eval_every_steps == 0
        return epoch_ended

    def _evaluate_and_track(self, epoch: float) -> None:
        """Evaluate, feed the plateau schedule and early stopping, and log; before checkpointing the step."""
        cfg, state = self.config, self.state
        metrics = self.evaluate()
        state.last_eval_step = state.global_step
        state.last_metrics = metrics
        value = metrics.get(cfg.monitor_metric)
        plateau_value = metrics.get(self.plateau_metric)
        if (plateau_value is not None and math.isfinite(plateau_value)
                and isinstance(self.lr_scheduler, PlateauScheduleWithWarmup)
                and self.lr_scheduler.report(plateau_value)):
            logger.info("step %d: %s stalled, learning rate now %.3g", state.global_step, self.plateau_metric,
                        self.lr_scheduler.get_last_lr()[0])
        if value is not None and math.isfinite(value):
            better = state.best_metric is None or (
                value < state.best_metric if cfg.monitor_mode == "min" else value > state.best_metric
            )
            if better:
                state.best_metric = value
                state.evaluations_without_improvement = 0
                if cfg.load_best_model_at_end:
                    self._save_best_model()
            else:
                state.evaluations_without_improvement += 1
                patience = cfg.early_stopping_patience
                if patience and state.evaluations_without_improvement >= patience:
                    state.stopped_early = True
        elif metrics and (cfg.lr_schedule == "plateau" or cfg.early_stopping_patience):
            logger.warning("monitor_metric %r is not among the evaluation metrics %s", cfg.monitor_metric,
                           list(metrics))
        if self.accelerator.log_with and metrics:
            self.accelerator.log(metrics, step=state.global_step)
        if self.accelerator.is_main_process and metrics:
            row = {"step": state.global_step, "epoch": round(epoch, 4), "lr": self.lr_scheduler.get_last_lr()[0]}
            _append_csv(self.output_dir / "eval_metrics.csv", {**row, **metrics})

    # --- checkpoints --------------------------------------------------------------------------------------------
    def _save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_NNNNNN`` atomically (a hidden folder, renamed once complete)."""
        accelerator = self.accelerator
        final = self.checkpoint_dir / checkpoint_name(self.state.global_step)
        partial = partial_folder(self.checkpoint_dir, self.state.global_step)
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        accelerator.wait_for_everyone()
        if accelerator.distributed_type == DistributedType.DEEPSPEED:
            self.model.save_checkpoint(str(partial), "deepspeed")  # every process writes its partitions
        elif accelerator.is_main_process:
            from safetensors.torch import save_file, save_model

            save_model(accelerator.unwrap_model(self.model), str(partial / MODEL_FILE))
            optimizer_tensors: dict[str, torch.Tensor] = {}
            optimizer_state = state_to_json(self.optimizer.state_dict(), optimizer_tensors, "optimizer")
            save_file(optimizer_tensors, str(partial / OPTIMIZER_FILE))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            values = dataclasses.asdict(self.state)
            scheduler_tensors: dict[str, torch.Tensor] = {}
            values["lr_scheduler"] = state_to_json(self.lr_scheduler.state_dict(), scheduler_tensors, "lr_scheduler")
            if accelerator.scaler is not None:
                values["grad_scaler"] = state_to_json(accelerator.scaler.state_dict(), scheduler_tensors, "scaler")
            if scheduler_tensors:
                raise TypeError(f"schedule / gradient scaler states hold tensors: {sorted(scheduler_tensors)}")
            if accelerator.distributed_type != DistributedType.DEEPSPEED:
                values["optimizer"] = optimizer_state
            write_trainer_state(partial, values)
            publish(partial, final)
            self._rotate_checkpoints()
        accelerator.wait_for_everyone()
        return final

    @property
    def best_model_file(self) -> Path:
        """Where ``load_best_model_at_end`` keeps the weights of the best evaluation."""
        return self.output_dir / BEST_MODEL_FOLDER / MODEL_FILE

    def _save_best_model(self) -> None:
        """Write the current weights as the best ones (atomically: a crash leaves the earlier best intact)."""
        accelerator = self.accelerator
        if accelerator.distributed_type == DistributedType.DEEPSPEED:
            raise ValueError("load_best_model_at_end is not supported under DeepSpeed; keep checkpoints instead")
        if accelerator.is_main_process:
            from safetensors.torch import save_model

            target = self.best_model_file
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial")
            save_model(accelerator.unwrap_model(self.model), str(partial))
            os.replace(partial, target)
        accelerator.wait_for_everyone()

    def _load_best_model(self) -> None:
        """Load the weights of the best evaluation (when one was kept) before the final model is saved."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if not self.best_model_file.is_file():
            logger.warning("load_best_model_at_end: no evaluation kept weights (%s missing); saving the last ones",
                           self.best_model_file)
            return
        from safetensors.torch import load_model

        load_model(accelerator.unwrap_model(self.model), str(self.best_model_file))
        logger.info("loaded the best weights (%s = %s) from %s", self.config.monitor_metric, self.state.best_metric,
                    self.best_model_file)

    def _rotate_checkpoints(self) -> None:
        if not self.config.keep_last:
            return
        for old in completed_checkpoints(self.checkpoint_dir)[: -self.config.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def _resume(self, checkpoint: VerifiedCheckpoint) -> Path:
        """Restore the state saved in a checkpoint whose files were verified; returns its folder."""
        path, document = checkpoint.path, checkpoint.document
        self._load_checkpoint(path, document)
        known = {f.name for f in dataclasses.fields(TrainingState)}
        self.state = TrainingState(**{k: v for k, v in document.items() if k in known})
        if self.state.batches_in_epoch >= len(self.train_loader):
            self.state.epoch += 1
            self.state.batches_in_epoch = 0
        self.accelerator.step = self.state.batches_in_epoch  # position in the gradient-accumulation cycle
        logger.info("resumed from %s at step %d (epoch %d)", path, self.state.global_step, self.state.epoch)
        return path

    def _load_checkpoint(self, path: Path, document: dict[str, Any]) -> None:
        """Load weights, optimiser, schedule (and gradient scaler) from a verified checkpoint folder."""
        accelerator = self.accelerator
        where = path / TRAINER_STATE_FILE
        try:
            if accelerator.distributed_type == DistributedType.DEEPSPEED:
                # DeepSpeed's files are pickles: only tensors, containers and its loss-scaler data are accepted
                with weights_only_torch_load(deepspeed_state_classes()):
                    self.model.load_checkpoint(str(path), "deepspeed")
            else:
                from safetensors.torch import load_model

                model_file = path / MODEL_FILE
                read_tensors(model_file)  # a clear error for a file that is not safetensors
                try:
                    load_model(accelerator.unwrap_model(self.model), str(model_file), strict=True)
                except RuntimeError as err:
                    raise ValueError(f"{model_file}: does not fit the model being trained ({err})") from None
                if "optimizer" not in document:
                    raise DamagedCheckpointError(f"{where}: no optimizer state")
                tensors = read_tensors(path / OPTIMIZER_FILE)
                optimizer_state = state_from_json(document["optimizer"], tensors, str(path / OPTIMIZER_FILE))
                try:
                    self.optimizer.load_state_dict(optimizer_state)
                except (ValueError, KeyError, TypeError, RuntimeError) as err:
                    raise ValueError(f"{path / OPTIMIZER_FILE}: does not fit the optimiser ({err})") from None
            self.lr_scheduler.load_state_dict(state_from_json(document.get("lr_scheduler", {}), {}, str(where)))
            if accelerator.scaler is not None and "grad_scaler" in document:
                accelerator.scaler.load_state_dict(state_from_json(document["grad_scaler"], {}, str(where)))
        except pickle.UnpicklingError as err:
            raise ValueError(f"{path}: refused to load a file of the checkpoint ({err})") from None

    def _write_run_info(self, resumed_from: Path | None) -> None:
        import accelerate
        import transformers

        from .. import __version__

        info = {
            "cardiomm_version": __version__,
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "accelerate_version": accelerate.__version__,
            "distributed_type": self.accelerator.distributed_type.value,
            "num_processes": self.accelerator.num_processes,
            "mixed_precision": self.accelerator.mixed_precision,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "resumed_from": str(resumed_from) if resumed_from else None,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            import deepspeed

            info["deepspeed_version"] = deepspeed.__version__
            info["zero_stage"] = self.accelerator.state.deepspeed_plugin.zero_stage
        (self.output_dir / "run_info.json").write_text(json.dumps(info, indent=2))

    def _save_final_model(self) -> None:
        """``save_pretrained`` of the unwrapped model into ``output_dir`` (ZeRO-3 weights gathered first)."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        unwrapped = accelerator.unwrap_model(self.model)
        if hasattr(unwrapped, "save_pretrained"):
            state_dict = accelerator.get_state_dict(self.model)  # a collective under ZeRO-3
            unwrapped.save_pretrained(
                self.output_dir, is_main_process=accelerator.is_main_process, state_dict=state_dict
            )
        else:
            accelerator.save_model(self.model, self.output_dir)
        if accelerator.is_main_process and self.on_save is not None:
            self.on_save(self.output_dir)
        accelerator.wait_for_everyone()


# --------------------------------------------------------------------------------------------------------------------
class _LossWindow:
    """Running sums of the loss and loss terms between two log lines (kept on device: no sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.samples = 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, terms: Mapping[str, torch.Tensor], batch_size: int) -> None:
        for name, value in {"loss": loss, **terms}.items():
            value = value.detach().float().reshape(())
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += 1
        self.samples += batch_size

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def reduce(self, accelerator: Accelerator) -> dict[str, float]:
        if not self.sums:
            return {}
        names = list(self.sums)
        stacked = torch.stack([self.sums[n] for n in names]).to(accelerator.device) / self.count
        means = accelerator.reduce(stacked, reduction="mean").tolist()
        return dict(zip(names, means))


def _output_loss(outputs: Any) -> torch.Tensor:
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
    if loss is None:
        raise ValueError(
            f"the model returned no loss ({type(outputs).__name__}); the training batch must carry what the "
            "objective needs (labels, return_loss=True, ...)"
        )
    return loss


def _loss_terms(outputs: Any) -> dict[str, torch.Tensor]:
    """Scalar tensor fields named ``*_loss`` of a model output (besides ``loss``)."""
    if isinstance(outputs, Mapping):
        items = outputs.items()
    elif dataclasses.is_dataclass(outputs):
        items = ((f.name, getattr(outputs, f.name)) for f in dataclasses.fields(outputs))
    else:
        items = vars(outputs).items() if hasattr(outputs, "__dict__") else ()
    return {
        name: value.detach()
        for name, value in items
        if name.endswith("_loss") and isinstance(value, torch.Tensor) and value.numel() == 1
    }


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.ndim else 1
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        size = _batch_size(value) if isinstance(value, (torch.Tensor, Mapping, list, tuple)) else 0
        if size:
            return size
    return 0


def _resolve_mixed_precision(value: str) -> str | None:
    """``auto``: what ``accelerate launch`` configured, else bf16 on a GPU that has it, else full precision."""
    if value != "auto":
        return value
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return "no"
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _allow_new_precision(mixed_precision: str | None) -> None:
    """Let a later single-process run in the same Python process use another precision.

    Accelerate keeps one process-wide state and refuses a second ``Accelerator`` with another mixed precision;
    without distribution there is nothing to keep, so that state is cleared (the distributed state is kept).
    """
    if not AcceleratorState._shared_state or mixed_precision is None:
        return
    state = AcceleratorState()
    if state.distributed_type == DistributedType.NO and state.mixed_precision != mixed_precision:
        AcceleratorState._reset_state()


def _available_trackers(names: Sequence[str]) -> list[str]:
    from accelerate.utils import is_tensorboard_available

    trackers = []
    for name in names:
        if name == "tensorboard" and not is_tensorboard_available():
            logger.warning("TensorBoard is not installed: metrics go to metrics.csv only")
            continue
        trackers.append(name)
    return trackers


def _process_group_kwargs(deepspeed_plugin: DeepSpeedPlugin | None) -> list[InitProcessGroupKwargs]:
    """DeepSpeed without a GPU: ask for the gloo backend, otherwise Accelerate sees a single process."""
    uses_deepspeed = deepspeed_plugin is not None or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1
    if uses_deepspeed and launched and not torch.cuda.is_available():
        return [InitProcessGroupKwargs(backend="gloo")]
    return []


def _fill_deepspeed_auto_values(plugin: DeepSpeedPlugin, config: TrainingConfig) -> None:
    ds_config = plugin.deepspeed_config
    if ds_config.get("gradient_clipping", "auto") == "auto":
        if config.max_grad_norm:
            ds_config["gradient_clipping"] = config.max_grad_norm
        else:
            ds_config.pop("gradient_clipping", None)
    if ds_config.get("gradient_accumulation_steps") == "auto":
        ds_config["gradient_accumulation_steps"] = config.gradient_accumulation_steps


def _tracker_hparams(config: TrainingConfig) -> dict[str, Any]:
    """Config values TensorBoard's hparams accept (no ``None``, no lists)."""
    out = {}
    for key, value in config.to_dict().items():
        if value is None:
            value = "none"
        elif isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        out[key] = value
    return out


def _append_csv(path: Path, row: Mapping[str, Any]) -> None:
    """Append ``row``; a column first seen later (a new loss term) rewrites the file with the wider header."""
    rows: list[dict[str, Any]] = []
    fieldnames = list(row)
    if path.exists():
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            existing = list(reader.fieldnames or [])
            if set(row) <= set(existing):
                with open(path, "a", newline="") as out:
                    csv.DictWriter(out, fieldnames=existing).writerow(dict(row))
                return
            rows = list(reader)
        fieldnames = existing + [k for k in row if k not in existing]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
        writer.writerow(dict(row))


def _truncate_csv_after(path: Path, step: int) -> None:
    """Drop rows logged after ``step`` by an interrupted run that is being resumed from ``step``."""
    if not path.exists():
        return
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fieldnames = reader.fieldnames or []
        rows = list(reader)
    kept = [r for r in rows if int(float(r.get("step") or 0)) <= step]
    if len(kept) != len(rows):
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(kept)


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="training", dynamic_ncols=True)


@contextlib.contextmanager
def _preserved_rng_state() -> Iterator[None]:
    """Run a block (evaluation) without advancing the training random streams (python, numpy, torch, CUDA)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)
