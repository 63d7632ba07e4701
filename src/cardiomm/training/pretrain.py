"""``cardiomm pretrain --config FILE``: build the objective of an experiment file and train it.

What a run guarantees (same experiment file, seed, data, software and hardware; on a GPU, as far as its kernels
are deterministic):

- **Checked first.** Every key of ``model`` (nested tower configurations included), ``data`` and ``training`` is
  checked against what the objective and its configuration classes accept before anything is built, read or
  downloaded; a misspelt key is a ``ValueError`` naming the file, the key's place and the closest valid key.
- **Reproducible.** Everything is seeded from ``training.seed`` before the model and the data are built, so two
  runs end with bit-identical weights, whatever ``training.num_workers`` is.
- **Exact resume.** ``resume_from: latest`` (``--resume-from latest``) continues a run stopped at any point (even
  killed with SIGKILL in the middle of an epoch) from its newest intact checkpoint and ends with the weights of the
  uninterrupted run, bit for bit.
- **Safe checkpoints.** Checkpoints are written atomically and verified (sizes and SHA-256) before use; a damaged
  newest checkpoint is skipped with a warning naming it, and resuming reads only safetensors and JSON (under
  DeepSpeed, its own files with ``torch.load(weights_only=True)`` enforced), so it never runs code from the
  checkpoint folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checkpointing import CHECKPOINTS_FOLDER, resolve_resume_checkpoint
from .config import ExperimentConfig, load_config
from .loop import TrainingLoop, TrainResult
from .objectives import PretrainingRun, build_run, check_experiment
from .sampling import seed_everything


def _is_ecg_text_run(run: PretrainingRun) -> bool:
    """Whether the run trains an ECG–text dual encoder with an ``ECGTextProcessor`` (zero-shot classifiable)."""
    from ..processing.processing_ecg_text import ECGTextProcessor

    model = run.model
    return isinstance(run.processor, ECGTextProcessor) and all(
        hasattr(model, name) for name in ("get_ecg_features", "get_text_features"))


def save_preprocessing(run: PretrainingRun, output_dir: str | os.PathLike) -> None:
    """Save the run's processor (or its feature extractor / tokenizer) next to the weights, then run the objective's
    ``after_save`` (e.g. the encoder export of a self-supervised run). An ECG–text dual encoder also gets the
    ``zero-shot-ecg-classification`` pipeline (:func:`cardiomm.hub.custom_pipelines.save_custom_pipeline`)."""
    if run.processor is not None:
        run.processor.save_pretrained(output_dir)
        if _is_ecg_text_run(run):
            from ..hub.custom_pipelines import save_custom_pipeline

            save_custom_pipeline(output_dir, "zero-shot-ecg-classification")
    else:
        for part in (run.feature_extractor, run.tokenizer):
            if part is not None:
                part.save_pretrained(output_dir)
    if run.after_save is not None:
        run.after_save(output_dir)


def pretrain(config: str | os.PathLike | ExperimentConfig, **overrides: Any) -> tuple[TrainResult, PretrainingRun]:
    """Train the experiment ``config`` (a YAML path or an :class:`ExperimentConfig`) with the shared training loop.

    ``overrides`` replace fields of the ``training`` section (e.g. ``max_steps=10``, ``output_dir=...``). The
    experiment is checked (:func:`~cardiomm.training.objectives.check_experiment`) and every random generator is
    seeded from ``training.seed`` before the data and the model are built. The processor is saved with the final
    weights so the checkpoint is self-contained.

    Raises:
        ValueError: for an unknown key or value in the experiment (naming the file and the key), or a damaged
            checkpoint to resume from (naming the file and the problem).
    """
    experiment = config if isinstance(config, ExperimentConfig) else load_config(config)
    for key, value in overrides.items():
        if not hasattr(experiment.training, key):
            raise ValueError(f"unknown training override {key!r}")
        setattr(experiment.training, key, value)
    experiment.training.__post_init__()  # the overridden values are checked too
    check_experiment(experiment)
    # the checkpoint is verified (a damaged one reported) before anything is built, and handed to the loop as is
    checkpoint = resolve_resume_checkpoint(
        experiment.training.resume_from, Path(experiment.training.output_dir) / CHECKPOINTS_FOLDER
    )
    seed_everything(experiment.training.seed)  # the model's initial weights depend on the seed only
    run = build_run(experiment)
    loop = TrainingLoop(
        run.model,
        experiment,
        run.train_dataset,
        collate_fn=run.collate_fn,
        eval_dataset=run.eval_dataset,
        eval_fn=run.eval_fn,
        on_save=lambda output_dir: save_preprocessing(run, output_dir),
        resume_checkpoint=checkpoint,
        train_batch_sampler=run.train_batch_sampler,
        eval_batch_sampler=run.eval_batch_sampler,
    )
    result = loop.train()
    run.model = loop.accelerator.unwrap_model(loop.model)
    return result, run


def main(config: str | os.PathLike, resume_from: str | None = None, max_steps: int | None = None,
         output_dir: str | None = None, overrides: Sequence[str] = ()) -> Path:
    """CLI body of ``cardiomm pretrain``; ``overrides`` are ``SECTION.KEY=VALUE`` strings. Returns the output
    folder."""
    experiment = load_config(config, overrides)
    training: dict[str, Any] = {}
    if resume_from is not None:
        training["resume_from"] = resume_from
    if max_steps is not None:
        training["max_steps"] = max_steps
    if output_dir is not None:
        training["output_dir"] = output_dir
    result, _ = pretrain(experiment, **training)
    if result.resumed_from is not None:
        print(f"resumed from {result.resumed_from}")
    print(f"trained {result.global_step} steps, final loss {result.final_loss:.4f}; saved to {result.output_dir}")
    return Path(result.output_dir)
