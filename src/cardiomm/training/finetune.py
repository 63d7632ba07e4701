"""Fine-tune the ECG encoder of any cardiomm checkpoint on a task of a labelled dataset, fully or with LoRA.

The recipe is the EHR paper's (Lalam et al.): an MLP head (128 -> 64, ReLU, dropout 0.2) on the pretrained
encoder; the head is first trained alone for model.head_warmup_steps optimiser steps (1024) with the backbone
frozen (no gradients, batch norms in eval mode), then the whole network trains; AdamW; the learning rate is halved
when the validation macro AUROC has not improved for 2 evaluations; training stops when the validation loss has
not improved for training.early_stopping_patience evaluations (10) and the weights of the best validation loss
are kept. Test predictions are the median over 6 windows of 5 s (stride 1 s). Multi-label tasks train with BCE,
tasks with exactly one label per ECG with cross-entropy; the metric is the macro AUROC.

--fraction 0.01 0.1 1 trains on prevalence-keeping fractions of the training split and --seeds 0 1 2 3 4 repeats
every fraction over seeds (the fraction drawn and the head initialised from the seed); the table gives the mean
and standard deviation over seeds. --model random (the architecture of model.ecg) or --from-scratch (the
architecture of --model) trains the same network from random weights, the baseline to compare with. --lora
trains a LoRA adapter (PEFT) and the head instead of the whole encoder.

Every run folder is a complete checkpoint (one run: --out itself; several: --out/fraction_F/seed_S): config.json
with id2label, model.safetensors, the feature extractor, a model card with the data and test metrics, and the
ecg-classification pipeline. A LoRA run also holds adapter/ (PeftModel.from_pretrained(base, adapter)) and
base_model/ (the model the adapter loads onto). --out gets results.json and results.md.

Runs resume: an interrupted command run again with the same --out continues every unfinished run from its newest
intact checkpoint (ending with the weights of an uninterrupted run) and reuses the finished ones. The recipe comes
from an experiment file (--config, default: the shipped finetune.yaml; finetune_tiny.yaml trains in seconds on a
CPU) with --set SECTION.KEY=VALUE overrides.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = "finetune.yaml"
RANDOM_MODEL = "random"
PROBLEM_TYPES = ("auto", "multi_label_classification", "single_label_classification")
MODEL_KEYS = ("classifier_head", "classifier_hidden_sizes", "classifier_dropout", "head_warmup_steps", "problem_type",
              "lora", "ecg")
LORA_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save")
DATA_KEYS = ("train_split", "eval_split", "test_split", "sampling_rate", "crop_length", "normalization")
EVALUATION_KEYS = ("plateau_metric", "plateau_mode", "test_crop", "batch_size")
RUN_FILE = "finetune_run.json"
"""Settings of a run, written into its folder before it trains (a later command only continues a matching run)."""
RUN_RESULTS_FILE = "run_results.json"
"""Results of a finished run (its folder is reused as it is by a later command)."""
ADAPTER_FOLDER = "adapter"
BASE_MODEL_FOLDER = "base_model"


# ------------------------------------------------------------------------------------------------ results
@dataclass
class FinetuneRun:
    """One fine-tuning run: ``fraction`` of the training split, ``seed``, and its validation and test results."""

    fraction: float
    seed: int
    checkpoint: str
    num_train: int
    steps: int
    stopped_early: bool
    validation_macro_auroc: float
    test_macro_auroc: float
    test_auroc: dict[str, float] = field(default_factory=dict)
    trainable_parameters: int = 0
    total_parameters: int = 0


@dataclass
class FinetuneResults:
    """What :func:`finetune` returns: every run, and the mean ± std of the test macro AUROC per fraction."""

    model: str
    data: str
    task: str
    problem_type: str
    labels: list[str]
    method: str
    initialization: str
    head_warmup_steps: int
    out: str = ""
    runs: list[FinetuneRun] = field(default_factory=list)

    def summary(self) -> list[dict[str, Any]]:
        """One row per fraction: training ECGs, seeds, test macro AUROC mean and std (ddof=1; 0 for one seed),
        trainable and total parameters."""
        import numpy as np

        rows = []
        for fraction in sorted({r.fraction for r in self.runs}):
            runs = [r for r in self.runs if r.fraction == fraction]
            values = np.array([r.test_macro_auroc for r in runs], dtype=float)
            rows.append({
                "fraction": fraction,
                "num_train": int(round(np.mean([r.num_train for r in runs]))),
                "seeds": [r.seed for r in runs],
                "test_macro_auroc_mean": float(np.mean(values)),
                "test_macro_auroc_std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "validation_macro_auroc_mean": float(np.mean([r.validation_macro_auroc for r in runs])),
                "trainable_parameters": runs[0].trainable_parameters,
                "total_parameters": runs[0].total_parameters,
            })
        return rows

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary (``results.json``)."""
        out = asdict(self)
        out["summary"] = self.summary()
        return out

    def table(self) -> str:
        """The results table (Markdown)."""
        from ..tables import format_table

        rows = []
        for row in self.summary():
            share = row["trainable_parameters"] / max(row["total_parameters"], 1)
            rows.append({
                "fraction": f"{row['fraction']:g}",
                "train ECGs": row["num_train"],
                "seeds": len(row["seeds"]),
                "test macro AUROC": f"{row['test_macro_auroc_mean']:.4f} ± {row['test_macro_auroc_std']:.4f}",
                "validation macro AUROC": f"{row['validation_macro_auroc_mean']:.4f}",
                "trainable / total parameters": (f"{row['trainable_parameters']:,} / {row['total_parameters']:,} "
                                                 f"({100 * share:.1f} %)"),
            })
        return format_table(rows)

    def markdown(self) -> str:
        """``results.md``: what was fine-tuned, the table and the protocol."""
        return "\n".join([
            f"# Fine-tuning: {self.task} ({self.problem_type.replace('_', ' ')})",
            "",
            f"- model: `{self.model}` ({self.initialization} weights, {self.method} fine-tuning)",
            f"- data: `{self.data}`, task `{self.task}`: {', '.join(self.labels)}",
            f"- head warm-up: {self.head_warmup_steps} optimiser steps with the backbone frozen",
            "",
            self.table(),
            "",
            "Test macro AUROC over the classes with both label values in the test split; predictions are the median "
            "over the feature extractor's test-time windows. Mean ± standard deviation over seeds (ddof=1).",
            "",
        ])


# ------------------------------------------------------------------------------------------------ configuration
def load_finetune_config(config: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Any:
    """The experiment file ``config`` (default: the shipped ``finetune.yaml``) with ``SECTION.KEY=VALUE`` overrides,
    checked by :func:`check_finetune_experiment`."""
    from .config import load_config

    experiment = load_config(config or DEFAULT_CONFIG, overrides)
    check_finetune_experiment(experiment)
    return experiment


def check_finetune_experiment(experiment: Any) -> None:
    """Check the ``model``, ``data`` and ``evaluation`` sections of a fine-tuning experiment (keys and values).

    Raises:
        ValueError: one line per problem, naming the experiment file and the key.
    """
    from ..modeling.configuration_ecg_encoder import ECGEncoderConfig
    from .config import check_keys, config_class_parameters

    source = experiment.source or "experiment config"
    model, data, evaluation = experiment.model, experiment.data, experiment.evaluation
    problems: list[str] = []

    def check(condition: bool, message: str) -> None:
        if not condition:
            problems.append(f"{source}: {message}")

    for values, accepted, section in ((model, MODEL_KEYS, "model"), (data, DATA_KEYS, "data"),
                                      (evaluation, EVALUATION_KEYS, "evaluation")):
        try:
            check_keys(values, accepted, source, section, owner="cardiomm finetune")
        except ValueError as err:
            problems.append(str(err))
    for name, accepted, owner in (("lora", LORA_KEYS, "the LoRA settings"),
                                  ("ecg", config_class_parameters(ECGEncoderConfig), "ECGEncoderConfig")):
        section = model.get(name) or {}
        if not isinstance(section, Mapping):
            problems.append(f"{source}: model.{name} must be a mapping, got {section!r}")
            continue
        try:
            check_keys(section, accepted, source, f"model.{name}", owner=owner)
        except ValueError as err:
            problems.append(str(err))
    check(model.get("classifier_head", "mlp") in ("mlp", "linear"),
          f"model.classifier_head must be 'mlp' or 'linear', got {model.get('classifier_head')!r}")
    warmup = model.get("head_warmup_steps", 0)
    check(isinstance(warmup, int) and not isinstance(warmup, bool) and warmup >= 0,
          f"model.head_warmup_steps must be an integer >= 0, got {warmup!r}")
    dropout = model.get("classifier_dropout", 0.2)
    check(isinstance(dropout, (int, float)) and 0 <= dropout < 1,
          f"model.classifier_dropout must lie in [0, 1), got {dropout!r}")
    check(model.get("problem_type", "auto") in PROBLEM_TYPES,
          f"model.problem_type must be one of {PROBLEM_TYPES}, got {model.get('problem_type')!r}")
    check(evaluation.get("test_crop", "windows") in ("windows", "center"),
          f"evaluation.test_crop must be 'windows' or 'center', got {evaluation.get('test_crop')!r}")
    check(evaluation.get("plateau_mode", "max") in ("min", "max"),
          f"evaluation.plateau_mode must be 'min' or 'max', got {evaluation.get('plateau_mode')!r}")
    batch_size = evaluation.get("batch_size", 64)
    check(isinstance(batch_size, int) and batch_size > 0,
          f"evaluation.batch_size must be a positive integer, got {batch_size!r}")
    if problems:
        raise ValueError("\n".join(problems))


# ------------------------------------------------------------------------------------------------ data
@dataclass
class ClassificationCollator:
    """Training batches of an ECG encoder's feature extractor with the task's labels: multi-hot floats
    (multi-label) or class indices (single-label)."""

    collator: Any
    single_label: bool

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch = self.collator(rows)
        if self.single_label:
            batch["labels"] = batch["labels"].argmax(-1)
        return batch


@dataclass
class TaskData:
    """The splits of a dataset folder reduced to the columns one task needs, and what the task is."""

    path: Path
    info: Any
    task: str
    label_column: str
    labels: list[str]
    problem_type: str
    train: Any
    validation: Any
    test: Any


def load_task_data(path: str | os.PathLike, task: str, data: Mapping[str, Any], problem_type: str = "auto") -> TaskData:
    """Load the splits of the dataset folder ``path`` for ``task`` (one of its ``cardiomm_dataset.json`` tasks).

    ``problem_type`` ``auto``: single-label when every ECG of every split has exactly one label, else multi-label.

    Raises:
        ValueError: naming the folder, for a missing dataset, an unknown task or a missing split.
    """
    from ..data.ecg_dataset import label_column, load_ecg_dataset, read_dataset_info

    import numpy as np

    info = read_dataset_info(path)
    if task not in info.tasks:
        raise ValueError(f"{path}: the dataset has no task {task!r}; its tasks are: {', '.join(sorted(info.tasks))}")
    dataset, info = load_ecg_dataset(path)
    column = label_column(task)
    splits = {}
    for role, default in (("train", "train"), ("eval", "validation"), ("test", "test")):
        name = data.get(f"{role}_split", default)
        if name not in dataset:
            raise ValueError(f"{path}: no split {name!r} (data.{role}_split); its splits are: {', '.join(dataset)}")
        splits[role] = dataset[name].select_columns(["ecg", "lead_mask", column]).with_format("numpy")
        if len(splits[role]) == 0:
            raise ValueError(f"{path}: the split {name!r} is empty")
    if problem_type == "auto":
        one_each = all(bool(np.all(np.asarray(split[column]).sum(axis=1) == 1)) for split in splits.values())
        problem_type = "single_label_classification" if one_each else "multi_label_classification"
    return TaskData(Path(path), info, task, column, list(info.tasks[task]), problem_type,
                    splits["train"], splits["eval"], splits["test"])


def default_feature_extractor(info: Any, data: Mapping[str, Any]) -> Any:
    """The feature extractor of a randomly initialised encoder: ``data.sampling_rate`` (default: the dataset's),
    ``data.crop_length`` (default 5 s), ``data.normalization`` (zscore), 6 test windows with a 1-s stride."""
    from ..processing.feature_extraction_ecg import ECGFeatureExtractor

    rate = data.get("sampling_rate") or info.sampling_rate
    return ECGFeatureExtractor(
        lead_names=list(info.lead_names), sampling_rate=rate, normalization=data.get("normalization") or "zscore",
        crop_length=int(data.get("crop_length") or round(5 * rate)), window_stride=int(round(rate)), num_windows=6,
    )


def predict(model: Any, feature_extractor: Any, split: Any, task_data: TaskData, crop: str = "windows",
            batch_size: int = 64) -> tuple[Any, Any, float]:
    """``(labels, probabilities, mean loss)`` of ``model`` on ``split``.

    ``labels`` is the (N, C) multi-hot matrix; ``probabilities`` (N, C) sigmoid (multi-label) or softmax
    (single-label) outputs; with ``crop="windows"`` each ECG's probabilities are the median over the feature
    extractor's windows and the loss is NaN (it is computed for single-crop predictions only).
    """
    import numpy as np
    import torch

    from ..data.collators import stack_ecg, with_recorded_leads
    from .fine_tuning_model import base_classifier

    info = task_data.info
    single = task_data.problem_type == "single_label_classification"
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    labels, probabilities, loss_sum = [], [], 0.0
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            chunk = split[start:start + batch_size]
            rows = [dict(zip(chunk, values)) for values in zip(*chunk.values())]
            inputs = feature_extractor(ecg=stack_ecg(rows), sampling_rate=info.sampling_rate,
                                       lead_names=list(info.lead_names), crop=crop, return_tensors="pt")
            batch = with_recorded_leads(dict(inputs), rows, info.lead_names, feature_extractor)
            x, mask, time_mask = batch["input_values"], batch["lead_mask"], batch["time_mask"]
            windows = x.shape[1] if x.ndim == 4 else 0
            if windows:
                mask = mask.flatten(0, 1) if mask.ndim == 3 else mask.repeat_interleave(windows, 0)
                x, time_mask = x.flatten(0, 1), time_mask.flatten(0, 1)
            logits = model(input_values=x.to(device), lead_mask=mask.to(device),
                           time_mask=time_mask.to(device)).logits.float()
            y = np.stack([np.asarray(r[task_data.label_column]) for r in rows]).astype(np.float32)
            if not windows:
                target = torch.as_tensor(y).argmax(-1) if single else torch.as_tensor(y)
                loss_sum += float(base_classifier(model).compute_loss(logits, target.to(device))) * len(rows)
            p = (logits.softmax(-1) if single else logits.sigmoid()).cpu().numpy()
            if windows:
                p = np.median(p.reshape(len(rows), windows, -1), axis=1)
            labels.append(y)
            probabilities.append(p)
    if was_training:
        model.train()
    loss = float("nan") if crop == "windows" else loss_sum / max(len(split), 1)
    return np.concatenate(labels), np.concatenate(probabilities), loss


# ------------------------------------------------------------------------------------------------ one run
@dataclass
class _Setup:
    """What every run of one command shares."""

    experiment: Any
    task_data: TaskData
    encoder: Any
    feature_extractor: Any
    model_source: str
    from_scratch: bool
    lora: bool
    out: Path


def _fingerprint(setup: _Setup, fraction: float, seed: int) -> dict[str, Any]:
    experiment = setup.experiment.to_dict()
    for key in ("output_dir", "resume_from", "seed"):
        experiment["training"].pop(key, None)
    return {"model": setup.model_source, "from_scratch": setup.from_scratch, "lora": setup.lora,
            "data": str(setup.task_data.path.resolve()), "task": setup.task_data.task, "fraction": fraction,
            "seed": seed, "experiment": experiment}


def _check_run_folder(run_dir: Path, fingerprint: dict[str, Any]) -> FinetuneRun | None:
    """The finished run of ``run_dir`` when it has one for these settings; ``None`` when it is to be (re)trained.

    Raises:
        ValueError: when the folder holds a run made with other settings.
    """
    settings = run_dir / RUN_FILE
    if not settings.is_file():
        return None
    saved = json.loads(settings.read_text())
    if saved != json.loads(json.dumps(fingerprint)):
        differ = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != json.loads(json.dumps(
            fingerprint)).get(k))
        raise ValueError(f"{settings}: this folder holds a fine-tuning run with other settings ({', '.join(differ)} "
                         "differ); choose another --out")
    results = run_dir / RUN_RESULTS_FILE
    if results.is_file():
        return FinetuneRun(**json.loads(results.read_text()))
    return None


def _train_run(setup: _Setup, fraction: float, seed: int, run_dir: Path, label: str) -> FinetuneRun:
    """Train (or resume, or reuse) one run and write its checkpoint folder."""
    import numpy as np

    from ..data.collators import ECGCollator
    from ..data.splits import stratified_fraction
    from ..evaluation.metrics import classification_metrics
    from .checkpointing import CHECKPOINTS_FOLDER, resolve_resume_checkpoint
    from .fine_tuning_model import HeadWarmup, build_classifier, count_parameters, wrap_with_lora
    from .loop import TrainingLoop
    from .sampling import seed_everything

    fingerprint = _fingerprint(setup, fraction, seed)
    finished = _check_run_folder(run_dir, fingerprint)
    if finished is not None:
        print(f"{label}: finished already ({run_dir}), reused", flush=True)
        return finished
    experiment = copy.deepcopy(setup.experiment)
    experiment.training.output_dir = str(run_dir)
    experiment.training.seed = seed
    model_cfg, evaluation = experiment.model, experiment.evaluation
    task_data = setup.task_data
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_FILE).write_text(json.dumps(fingerprint, indent=2) + "\n")

    train_labels = np.asarray(task_data.train[task_data.label_column])
    indices = stratified_fraction(train_labels, fraction, seed=seed)
    train = task_data.train.select(indices.tolist())
    checkpoint = resolve_resume_checkpoint(experiment.training.resume_from, run_dir / CHECKPOINTS_FOLDER)
    seed_everything(seed)  # the head (and a from-scratch encoder) depends on the seed only
    model = build_classifier(setup.encoder, dict(enumerate(task_data.labels)), task_data.problem_type,
                             head=model_cfg, from_scratch=setup.from_scratch)
    if setup.lora:
        model.save_pretrained(run_dir / BASE_MODEL_FOLDER)
        setup.feature_extractor.save_pretrained(run_dir / BASE_MODEL_FOLDER)
        model = wrap_with_lora(model, model_cfg.get("lora"))
    warmup_steps = 0 if setup.from_scratch else int(model_cfg.get("head_warmup_steps", 0))
    single = task_data.problem_type == "single_label_classification"
    collator = ClassificationCollator(
        ECGCollator(setup.feature_extractor, sampling_rate=task_data.info.sampling_rate,
                    lead_names=list(task_data.info.lead_names), crop="random", label_column=task_data.label_column),
        single_label=single,
    )
    batch_size = int(evaluation.get("batch_size", 64))

    def validate(model: Any, accelerator: Any) -> dict[str, float]:
        y, p, loss = predict(model, setup.feature_extractor, task_data.validation, task_data, crop="center",
                             batch_size=batch_size)
        return {"loss": loss, "macro_auroc": classification_metrics(y, p, warn=False).macro_auroc}

    print(f"{label}: {len(train)} training ECGs, {setup.feature_extractor.crop_length}-sample random crops, "
          f"{warmup_steps} head warm-up steps -> {run_dir}", flush=True)
    loop = TrainingLoop(model, experiment, train, collate_fn=collator, eval_fn=validate, resume_checkpoint=checkpoint,
                        plateau_metric=evaluation.get("plateau_metric", "eval_macro_auroc"),
                        plateau_mode=evaluation.get("plateau_mode", "max"))
    warmup = HeadWarmup(model, warmup_steps, lambda: loop.state.global_step)
    if warmup_steps >= loop.total_steps:
        print(f"{label}: warning: the head warm-up ({warmup_steps} steps) covers the whole run ({loop.total_steps} "
              "steps); the backbone never trains", flush=True)
    trainable = count_parameters(warmup.trainable_parameters)
    result = loop.train()
    accelerator = loop.accelerator
    model = accelerator.unwrap_model(loop.model)
    warmup.remove()
    if accelerator.is_main_process:
        final = _save_final(model, setup, run_dir) if setup.lora else model
        final.eval()
        setup.feature_extractor.save_pretrained(run_dir)
        test_crop = evaluation.get("test_crop", "windows")
        metrics = {}
        for name, split in (("validation", task_data.validation), ("test", task_data.test)):
            y, p, _ = predict(final, setup.feature_extractor, split, task_data, crop=test_crop, batch_size=batch_size)
            metrics[name] = classification_metrics(y, p, task_data.labels, warn=False)
        run = FinetuneRun(
            fraction=fraction, seed=seed, checkpoint=str(run_dir), num_train=len(train), steps=result.global_step,
            stopped_early=result.stopped_early, validation_macro_auroc=metrics["validation"].macro_auroc,
            test_macro_auroc=metrics["test"].macro_auroc, test_auroc=dict(metrics["test"].auroc),
            trainable_parameters=trainable, total_parameters=count_parameters(list(final.parameters())),
        )
        _write_card(run_dir, setup, run, warmup_steps)
        from ..hub.custom_pipelines import save_custom_pipeline

        save_custom_pipeline(run_dir, "ecg-classification")
        (run_dir / RUN_RESULTS_FILE).write_text(json.dumps(asdict(run), indent=2) + "\n")
    accelerator.wait_for_everyone()
    run = FinetuneRun(**json.loads((run_dir / RUN_RESULTS_FILE).read_text()))
    print(f"{label}: {run.steps} steps{' (stopped early)' if run.stopped_early else ''}, validation macro AUROC "
          f"{run.validation_macro_auroc:.4f}, test macro AUROC {run.test_macro_auroc:.4f}", flush=True)
    return run


def _save_final(model: Any, setup: _Setup, run_dir: Path) -> Any:
    """LoRA: save the adapter (with the head and batch norms) in ``adapter/``, and the model it gives, merged, as the
    folder's checkpoint; returns the merged model."""
    from peft import PeftModel

    from ..modeling.modeling_ecg_encoder import ECGEncoderForSequenceClassification

    for name in ("adapter_config.json", "adapter_model.safetensors"):  # written by the loop's final save
        (run_dir / name).unlink(missing_ok=True)
    adapter_dir = run_dir / ADAPTER_FOLDER
    shutil.rmtree(adapter_dir, ignore_errors=True)
    model.save_pretrained(adapter_dir)
    base = ECGEncoderForSequenceClassification.from_pretrained(run_dir / BASE_MODEL_FOLDER)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(run_dir)
    return merged


def _write_card(run_dir: Path, setup: _Setup, run: FinetuneRun, warmup_steps: int) -> None:
    from ..hub.model_card import EvaluationEntry, ModelCardInfo, TrainingDataEntry, write_model_card

    task_data, info = setup.task_data, setup.task_data.info
    init = "random initialisation" if setup.from_scratch else f"the ECG encoder of `{setup.model_source}`"
    method = "a LoRA adapter (PEFT) and the head, merged into the encoder" if setup.lora else "the whole network"
    training = setup.experiment.training
    card = ModelCardInfo(
        model_name=f"cardiomm ECG classifier: {info.name} {task_data.task}",
        summary=(f"An ECG classifier for the {info.name} task `{task_data.task}` ({len(task_data.labels)} classes, "
                 f"{task_data.problem_type.replace('_', ' ')}), fine-tuned from {init} on {run.fraction:g} of the "
                 f"training split ({run.num_train} ECGs, seed {run.seed}); it trained {method}."),
        architecture=(f"{setup.encoder.config.backbone or setup.encoder.config.backbone_family} ECG encoder + MLP "
                      "head (see config.json: classifier_hidden_sizes, classifier_dropout)."),
        training_data=[TrainingDataEntry(info.name, info.description, info.license or "unknown")],
        training_procedure=(
            f"{run.steps} {training.optimizer} optimiser steps (learning rate {training.learning_rate:g}, batch "
            f"{training.per_device_batch_size}, random crops of {setup.feature_extractor.crop_length} samples), the "
            f"first {warmup_steps} training the head alone with the backbone frozen; learning rate halved when the "
            "validation macro AUROC stalls, early stopping on the validation loss, best validation loss kept. "
            "See training_config.yaml."),
        evaluations=[EvaluationEntry(task=task_data.task, dataset=info.name, metric="macro AUROC",
                                     value=run.test_macro_auroc)],
        eval_protocol=("Macro AUROC over the test classes with both label values; each ECG's prediction is the "
                       "median over the feature extractor's windows."),
        tags=["cardiomm", "ecg", "cardiology", "ecg-classification"],
    )
    write_model_card(run_dir, card, setup.feature_extractor)


# ------------------------------------------------------------------------------------------------ public API
def finetune(
    model: str | os.PathLike,
    data: str | os.PathLike,
    task: str,
    fractions: Sequence[float] = (1.0,),
    seeds: Sequence[int] = (0,),
    lora: bool = False,
    from_scratch: bool = False,
    config: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    out: str | os.PathLike | None = None,
) -> FinetuneResults:
    """Fine-tune the ECG encoder of checkpoint ``model`` on ``task`` of the dataset folder ``data``.

    Args:
        model: any cardiomm checkpoint holding an ECG encoder, or ``"random"`` (the architecture of ``model.ecg``
            with the feature extractor of the ``data`` section, randomly initialised).
        data: a cardiomm dataset folder; ``task`` is one of its tasks (``cardiomm_dataset.json``).
        fractions: fractions of the training split (prevalence kept, drawn from each seed).
        seeds: one run per seed and fraction.
        lora: train a LoRA adapter and the head instead of the whole network.
        from_scratch: the architecture of ``model`` with random weights (no head warm-up).
        config: the experiment file (default: the shipped ``finetune.yaml``); ``overrides`` are
            ``SECTION.KEY=VALUE`` strings.
        out: the output folder (default: ``training.output_dir``): one run's checkpoint, or one sub-folder per
            fraction and seed; ``results.json`` and ``results.md`` either way.

    Raises:
        ValueError: for a bad experiment file, checkpoint, dataset, task or fraction, naming the file and problem.
    """
    from ..evaluation.checkpoint import load_ecg_encoder

    experiment = load_finetune_config(config, overrides)
    fractions = [float(f) for f in fractions]
    seeds = [int(s) for s in seeds]
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad or not fractions or not seeds:
        raise ValueError(f"fractions must lie in (0, 1] and at least one fraction and seed are needed (got fractions "
                         f"{fractions}, seeds {seeds})")
    if len(set(fractions)) != len(fractions) or len(set(seeds)) != len(seeds):
        raise ValueError(f"repeated fraction or seed (fractions {fractions}, seeds {seeds})")
    out_dir = Path(out or experiment.training.output_dir)
    task_data = load_task_data(data, task, experiment.data, experiment.model.get("problem_type", "auto"))
    model_source = str(model)
    if model_source == RANDOM_MODEL:
        from ..modeling.configuration_ecg_encoder import ECGEncoderConfig
        from ..modeling.modeling_ecg_encoder import ECGEncoderModel

        ecg = dict(experiment.model.get("ecg") or {"backbone": "resnet1d_8"})
        encoder = ECGEncoderModel(ECGEncoderConfig(**ecg, lead_names=list(task_data.info.lead_names)))
        feature_extractor = default_feature_extractor(task_data.info, experiment.data)
        from_scratch = True
    else:
        encoder, feature_extractor = load_ecg_encoder(model)
        model_source = str(Path(model).resolve())
    setup = _Setup(experiment, task_data, encoder, feature_extractor, model_source, from_scratch, lora, out_dir)
    results = FinetuneResults(
        model=model_source, data=str(task_data.path), task=task, problem_type=task_data.problem_type,
        labels=task_data.labels, method="lora" if lora else "full",
        initialization="random" if from_scratch else "pretrained",
        head_warmup_steps=0 if from_scratch else int(experiment.model.get("head_warmup_steps", 0)),
        out=str(out_dir),
    )
    single_run = len(fractions) == 1 and len(seeds) == 1
    total = len(fractions) * len(seeds)
    for i, (fraction, seed) in enumerate((f, s) for f in fractions for s in seeds):
        run_dir = out_dir if single_run else out_dir / f"fraction_{fraction:g}" / f"seed_{seed}"
        label = f"[run {i + 1}/{total}] fraction {fraction:g}, seed {seed}"
        results.runs.append(_train_run(setup, fraction, seed, run_dir, label))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results.to_dict(), indent=2, allow_nan=True) + "\n")
    (out_dir / "results.md").write_text(results.markdown())
    return results


# ------------------------------------------------------------------------------------------------ command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cardiomm finetune``."""
    parser.add_argument("--model", required=True,
                        help="a cardiomm checkpoint folder holding an ECG encoder, or 'random' (model.ecg of the "
                             "experiment file, randomly initialised)")
    parser.add_argument("--data", required=True, help="a cardiomm dataset folder")
    parser.add_argument("--task", required=True, help="one of the dataset's tasks (cardiomm_dataset.json)")
    parser.add_argument("--fraction", "--fractions", dest="fractions", nargs="+", type=float, default=[1.0],
                        metavar="F", help="fractions of the training split, prevalence kept (default: 1)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="S",
                        help="one run per seed and fraction (default: 0); the table shows mean ± std over seeds")
    parser.add_argument("--lora", action="store_true",
                        help="train a LoRA adapter and the head (settings: model.lora in the experiment file)")
    parser.add_argument("--lora-r", type=int, default=None, help="LoRA rank (sets model.lora.r)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="train --model's architecture from random weights (the baseline; no head warm-up)")
    parser.add_argument("--config", default=None,
                        help=f"experiment YAML, or the name of a shipped one (default: {DEFAULT_CONFIG}; "
                             "finetune_tiny for a quick CPU run)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one value of the experiment file (YAML value; repeatable), e.g. "
                             "--set model.head_warmup_steps=100 --set training.learning_rate=1e-3")
    parser.add_argument("--max-steps", type=int, default=None, help="optimiser steps per run (training.max_steps)")
    parser.add_argument("--out", default=None, help="output folder (default: training.output_dir)")


def run(args: argparse.Namespace) -> int:
    """``cardiomm finetune``: train every run, print the table, write results.json and results.md."""
    overrides = list(args.set or [])
    if args.lora_r is not None:
        overrides.append(f"model.lora.r={args.lora_r}")
    if args.max_steps is not None:
        overrides.append(f"training.max_steps={args.max_steps}")
    results = finetune(args.model, args.data, args.task, fractions=args.fractions, seeds=args.seeds, lora=args.lora,
                       from_scratch=args.from_scratch, config=args.config, overrides=overrides, out=args.out)
    print()
    print(results.table())
    print(f"\nresults: {Path(results.out) / 'results.md'}")
    if not all(math.isfinite(r.test_macro_auroc) for r in results.runs):
        print("note: in some runs no test class had both label values; their AUROC is undefined (nan)")
    return 0


__all__ = [
    "ClassificationCollator",
    "FinetuneResults",
    "FinetuneRun",
    "TaskData",
    "add_arguments",
    "check_finetune_experiment",
    "default_feature_extractor",
    "finetune",
    "load_finetune_config",
    "load_task_data",
    "predict",
    "run",
]
