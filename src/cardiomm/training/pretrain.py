"""``cardiomm pretrain --config FILE``: build the objective of an experiment file and train it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import ExperimentConfig, load_config
from .loop import Trainer, TrainResult
from .objectives import PretrainingRun, build_run


def save_preprocessing(run: PretrainingRun, output_dir: str | os.PathLike) -> None:
    """Save the run's processor (or its feature extractor / tokenizer) next to the weights."""
    if run.processor is not None:
        run.processor.save_pretrained(output_dir)
        return
    for part in (run.feature_extractor, run.tokenizer):
        if part is not None:
            part.save_pretrained(output_dir)


def pretrain(config: str | os.PathLike | ExperimentConfig, **overrides: Any) -> tuple[TrainResult, PretrainingRun]:
    """Train the experiment ``config`` (a YAML path or an :class:`ExperimentConfig`) with the shared Trainer.

    ``overrides`` replace fields of the ``training`` section (e.g. ``max_steps=10``, ``output_dir=...``). The
    processor is saved with the final weights so the checkpoint is self-contained.
    """
    experiment = config if isinstance(config, ExperimentConfig) else load_config(config)
    for key, value in overrides.items():
        if not hasattr(experiment.training, key):
            raise ValueError(f"unknown training override {key!r}")
        setattr(experiment.training, key, value)
    run = build_run(experiment)
    trainer = Trainer(
        run.model,
        experiment,
        run.train_dataset,
        collate_fn=run.collate_fn,
        eval_dataset=run.eval_dataset,
        on_save=lambda output_dir: save_preprocessing(run, output_dir),
    )
    result = trainer.train()
    run.model = trainer.accelerator.unwrap_model(trainer.model)
    return result, run


def main(config: str | os.PathLike, resume_from: str | None = None, max_steps: int | None = None,
         output_dir: str | None = None) -> Path:
    """CLI body of ``cardiomm pretrain``; returns the output folder."""
    overrides: dict[str, Any] = {}
    if resume_from is not None:
        overrides["resume_from"] = resume_from
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    if output_dir is not None:
        overrides["output_dir"] = output_dir
    result, _ = pretrain(config, **overrides)
    print(f"trained {result.global_step} steps, final loss {result.final_loss:.4f}; saved to {result.output_dir}")
    return Path(result.output_dir)
