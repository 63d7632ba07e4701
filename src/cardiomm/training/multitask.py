"""The supervised multi-task pretraining run (``model.type: ecg_multitask``): ECG-MTL of the EHR paper
(:class:`~cardiomm.ECGEncoderForMultiTask`), one shared ECG encoder with one MLP head per binary classification and
regression task, trained with random loss weighting.

The tasks are dataset columns, named in the ``data`` section:

* ``classification_columns``: a multi-hot column ``labels_<task>`` gives one binary task per label of the dataset's
  task (``labels_conditions``: one per condition), ``labels_<task>:<label>`` one task for that label only, ``sex``
  one task (1 = "M", 0 = "F", missing when empty), any other numeric or boolean column one task (its 0/1 values);
* ``regression_columns``: numeric columns (echo measurements ``lvef``, ``lv_mass_index``, ``ivs_thickness``; labs
  ``nt_probnp``, ``troponin_t``, ``potassium``, ``creatinine``, ``hemoglobin``, ``hba1c``, ``ldl_cholesterol``;
  ``age``; MIMIC-IV-ECG's machine measurements ``rr_interval``, ``p_axis``, ``qrs_axis``, ``t_axis``, ...), with
  optional ``regression_valid_ranges`` (``{column: [low, high]}``; values outside are missing).

Missing values (NaN) are left out of their task's loss. The regression targets are standardised with the mean and
standard deviation of the *training* split, saved in the model's configuration (``regression_mean``,
``regression_std``) with the task names, label names, units and source columns.

Experiment file::

    model:
      type: ecg_multitask
      init_from: null                     # or a saved ECGEncoderForMultiTask folder (same tasks) to continue from
      ecg: {backbone: resnet1d_8}         # ECGEncoderConfig fields, or {pretrained: any cardiomm checkpoint folder}
      head_hidden_sizes: [128, 64]        # ... any other ECGMultiTaskConfig field
      loss_weighting: random
    data:
      path: outputs/synthetic_mtl
      synthetic: {n_patients: 400, seed: 0}
      sampling_rate: 100
      crop_length: 500
      normalization: zscore
      classification_columns: [labels_conditions, sex]
      regression_columns: [age, lvef, potassium]
    training:
      monitor_metric: eval_mean_auroc     # per-task metrics of the validation split at every evaluation
      monitor_mode: max

At every evaluation the validation split is predicted (centre crop) and its per-task metrics are reported:
``eval_mean_auroc`` (mean AUROC over the classification tasks), ``eval_mean_r2``, ``eval_mean_pearson``,
``eval_mean_spearman`` and per task ``eval_auroc/<task>``, ``eval_r2/<task>``, ... (non-alphanumerics of the task
name replaced by ``_``), next to ``eval_loss``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .annotated_rows import AnnotatedRows
from .config import ExperimentConfig, check_keys, config_class_parameters
from .experiment_data import ExperimentData

MULTITASK_DATA_KEYS = ("path", "synthetic", "train_split", "eval_split", "test_split", "sampling_rate", "crop_length",
                       "normalization", "classification_columns", "regression_columns", "regression_valid_ranges")

#: ECGMultiTaskConfig fields the objective fills from the ``data`` section (not given under ``model``).
DATA_FILLED_FIELDS = ("ecg_config", "classification_tasks", "regression_tasks", "task_id2label", "regression_units",
                      "regression_mean", "regression_std", "task_columns", "regression_valid_ranges")

#: Units of columns whose dataset does not name them (MIMIC-IV-ECG machine measurements: milliseconds and degrees).
KNOWN_UNITS: dict[str, str] = {
    "age": "years",
    "rr_interval": "ms", "p_onset": "ms", "p_end": "ms", "qrs_onset": "ms", "qrs_end": "ms", "t_end": "ms",
    "p_axis": "deg", "qrs_axis": "deg", "t_axis": "deg",
}

SEX_LABELS = {0: "F", 1: "M"}


# ------------------------------------------------------------------------------------------------ task specs
@dataclass
class TaskSpec:
    """The tasks of a run, in model order, with what the configuration records about them."""

    classification_tasks: list[str] = field(default_factory=list)
    regression_tasks: list[str] = field(default_factory=list)
    task_columns: dict[str, str] = field(default_factory=dict)
    task_id2label: dict[str, dict[int, str]] = field(default_factory=dict)
    regression_units: dict[str, str] = field(default_factory=dict)


def _string_list(value: Any, source: str, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{source}: {key} must be a list of column names, got {value!r}")
    return list(value)


def _feature_dtype(feature: Any) -> str | None:
    return getattr(feature, "dtype", None) if type(feature).__name__ == "Value" else None


def _is_numeric(feature: Any) -> bool:
    dtype = _feature_dtype(feature)
    return dtype is not None and (dtype == "bool" or dtype.startswith(("float", "int", "uint")))


def resolve_tasks(features: Mapping[str, Any], info: Any, classification_columns: Sequence[str],
                  regression_columns: Sequence[str], source: str = "experiment config") -> TaskSpec:
    """The tasks named by ``classification_columns`` / ``regression_columns`` (see the module docstring) on a
    dataset with columns ``features`` (a split's ``datasets.Features``) and ``info``
    (:class:`~cardiomm.data.ecg_dataset.ECGDatasetInfo`).

    Raises:
        ValueError: naming ``source`` and the entry, for a column the dataset does not have, a label its task does
            not have, a column of the wrong type, or a task named twice.
    """
    spec = TaskSpec()
    columns = sorted(features)
    units = dict((getattr(info, "extra", None) or {}).get("lab_units") or {})

    def missing(key: str, column: str) -> ValueError:
        return ValueError(f"{source}: data.{key} names column {column!r}, which the dataset {info.name!r} does not "
                          f"have (columns: {', '.join(columns)})")

    def add(kind: str, name: str, column: str) -> None:
        if name in spec.task_columns:
            raise ValueError(f"{source}: task {name!r} is named twice (from {spec.task_columns[name]!r} and "
                             f"{column!r}); give each column once")
        spec.task_columns[name] = column
        (spec.classification_tasks if kind == "classification" else spec.regression_tasks).append(name)

    for entry in classification_columns:
        column, _, label = entry.partition(":")
        if column not in features:
            raise missing("classification_columns", column)
        if column.startswith("labels_"):
            task = column[len("labels_"):]
            names = list((info.tasks or {}).get(task) or [])
            if not names:
                raise ValueError(f"{source}: data.classification_columns: column {column!r} is not the multi-hot "
                                 f"column of a task of the dataset (tasks: {sorted(info.tasks)})")
            if label and label not in names:
                raise ValueError(f"{source}: data.classification_columns: {entry!r}: task {task!r} has no label "
                                 f"{label!r} (labels: {names})")
            for name in [label] if label else names:
                add("classification", name if name not in spec.task_columns else f"{task}/{name}",
                    f"{column}:{name}")
                spec.task_id2label[spec.classification_tasks[-1]] = {0: f"no {name}", 1: name}
        elif label:
            raise ValueError(f"{source}: data.classification_columns: {entry!r}: only a labels_<task> column takes "
                             "':<label>'")
        elif column == "sex":
            add("classification", "sex", "sex")
            spec.task_id2label["sex"] = dict(SEX_LABELS)
        elif _is_numeric(features[column]):
            add("classification", column, column)
            spec.task_id2label[column] = {0: f"no {column}", 1: column}
        else:
            raise ValueError(f"{source}: data.classification_columns: column {column!r} is neither a labels_<task> "
                             f"column, 'sex', nor a numeric 0/1 column ({features[column]})")
    for column in regression_columns:
        if column not in features:
            raise missing("regression_columns", column)
        if not _is_numeric(features[column]) or _feature_dtype(features[column]) == "bool":
            raise ValueError(f"{source}: data.regression_columns: column {column!r} is not numeric "
                             f"({features[column]})")
        add("regression", column, column)
        spec.regression_units[column] = str(units.get(column) or KNOWN_UNITS.get(column, ""))
    if not spec.task_columns:
        raise ValueError(f"{source}: an ecg_multitask run needs at least one task: give data.classification_columns "
                         "and/or data.regression_columns")
    return spec


def task_targets(split: Any, config: Any, info: Any) -> tuple[np.ndarray, np.ndarray]:
    """The targets of every task of ``config`` (an :class:`~cardiomm.ECGMultiTaskConfig`, read from its
    ``task_columns``) on a dataset split: ``(classification (N, n_cls), regression (N, n_reg))`` float32, NaN where
    unknown (an empty ``sex``, a NaN value, a regression value outside its ``regression_valid_ranges``); regression
    targets in their original units. ``info`` is the dataset's ``ECGDatasetInfo`` (label order of ``labels_*``)."""
    needed = sorted({config.task_columns[t].partition(":")[0] for t in config.task_names})
    absent = [c for c in needed if c not in split.column_names]
    if absent:
        raise ValueError(f"the split has no column {absent} that the model's tasks are read from "
                         f"(columns: {sorted(split.column_names)})")
    table = split.select_columns(needed).with_format("numpy")[:]
    n = len(split)

    def values(task: str) -> np.ndarray:
        column, _, label = config.task_columns[task].partition(":")
        raw = table[column]
        if label:
            names = list(info.tasks[column[len("labels_"):]])
            if label not in names:
                raise ValueError(f"the dataset's task {column[len('labels_'):]!r} has no label {label!r}")
            matrix = np.stack([np.asarray(r) for r in raw]) if raw.dtype == object else np.asarray(raw)
            return matrix.reshape(n, -1)[:, names.index(label)].astype(np.float32)
        if column == "sex":
            sexes = np.asarray(raw).astype(str)
            return np.where(sexes == "M", 1.0, np.where(sexes == "F", 0.0, np.nan)).astype(np.float32)
        return np.asarray(raw, dtype=np.float32).reshape(n)

    classification = np.full((n, len(config.classification_tasks)), np.nan, dtype=np.float32)
    for j, task in enumerate(config.classification_tasks):
        classification[:, j] = values(task)
    regression = np.full((n, len(config.regression_tasks)), np.nan, dtype=np.float32)
    for j, task in enumerate(config.regression_tasks):
        column = values(task)
        bounds = (config.regression_valid_ranges or {}).get(task)
        if bounds is not None:
            column = np.where((column >= bounds[0]) & (column <= bounds[1]), column, np.nan)
        regression[:, j] = column
    return classification, regression


def fit_standardisation(regression: np.ndarray, tasks: Sequence[str], source: str = "training split"
                        ) -> tuple[list[float], list[float]]:
    """``(mean, std)`` of every regression column over its known (finite) values; std 1 where the values do not
    vary. ``ValueError`` naming the task when a column has no known value."""
    means, stds = [], []
    for j, task in enumerate(tasks):
        column = regression[:, j][np.isfinite(regression[:, j])].astype(np.float64)
        if column.size == 0:
            raise ValueError(f"{source}: regression task {task!r} has no known value in the training split; drop it "
                             "from data.regression_columns or use data where it is measured")
        std = float(column.std())
        means.append(float(column.mean()))
        stds.append(std if std > 0 and np.isfinite(std) else 1.0)
    return means, stds


# ------------------------------------------------------------------------------------------------ rows, batches
@dataclass
class MultiTaskCollator:
    """ECG rows through the encoder's :class:`~cardiomm.ECGFeatureExtractor` (``input_values``, ``lead_mask``,
    ``time_mask``) plus ``classification_labels`` (batch, n_cls) and ``regression_labels`` (batch, n_reg) float32
    tensors stacked from the rows' target columns, NaN where unknown (regression targets in original units; the
    model standardises them)."""

    feature_extractor: Any
    sampling_rate: float
    lead_names: Sequence[str] | None = None
    crop: str = "random"

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        from ..data.collators import ECGCollator

        batch = ECGCollator(self.feature_extractor, self.sampling_rate, self.lead_names, self.crop)(rows)
        for key in ("classification_labels", "regression_labels"):
            batch[key] = torch.as_tensor(np.stack([np.asarray(r[key], dtype=np.float32) for r in rows]))
        return batch


# ------------------------------------------------------------------------------------------------ evaluation
@dataclass
class MultiTaskEvaluation:
    """The per-task metrics of a split at every evaluation (``eval_fn`` of the training loop): the split is
    predicted with a centre crop and :func:`~cardiomm.evaluation.multitask_metrics.multitask_metrics` scores it."""

    rows: Any
    classification: np.ndarray
    regression: np.ndarray
    feature_extractor: Any
    batch_size: int = 64

    def __call__(self, model: Any, accelerator: Any) -> dict[str, float]:
        from ..evaluation.multitask_metrics import multitask_metrics, predict_multitask

        model = accelerator.unwrap_model(model)
        logits, predictions = predict_multitask(model, self.feature_extractor, self.rows,
                                                sampling_rate=float(self.feature_extractor.sampling_rate),
                                                batch_size=self.batch_size, progress=False)
        result = multitask_metrics(model.config, logits, self.classification,
                                   model.to_original_units(predictions).numpy(), self.regression)
        return result.summary()


def metric_key(name: str) -> str:
    """A task name as it appears in a metric name: characters other than letters, digits, ``.`` and ``-`` become
    ``_``."""
    return re.sub(r"[^0-9A-Za-z.\-]+", "_", name).strip("_")


# ------------------------------------------------------------------------------------------------ checks, run
def multitask_checks(model: dict[str, Any], data: dict[str, Any], source: str) -> list[Callable[[], None]]:
    """The checks of the ``model`` and ``data`` sections of an ``ecg_multitask`` experiment, run by
    :func:`~cardiomm.training.objectives.check_experiment` like every objective's; each raises a ``ValueError``
    naming ``source`` and the key. Nothing is built or read (the columns are checked when the dataset is read)."""
    from ..modeling.configuration_ecg_mtl import ECGMultiTaskConfig
    from .experiment_data import check_synthetic_section
    from .objectives import check_ecg_tower

    accepted = {"type", "init_from", "ecg"} | (config_class_parameters(ECGMultiTaskConfig) - set(DATA_FILLED_FIELDS))

    def columns_section() -> None:
        classification = _string_list(data.get("classification_columns"), source, "data.classification_columns")
        regression = _string_list(data.get("regression_columns"), source, "data.regression_columns")
        if not classification and not regression:
            raise ValueError(f"{source}: an ecg_multitask run needs at least one task: give "
                             "data.classification_columns and/or data.regression_columns")
        ranges = data.get("regression_valid_ranges") or {}
        if not isinstance(ranges, dict):
            raise ValueError(f"{source}: data.regression_valid_ranges must be a mapping column -> [low, high]")
        for column, bounds in ranges.items():
            if column not in regression:
                raise ValueError(f"{source}: data.regression_valid_ranges names {column!r}, which is not among "
                                 f"data.regression_columns {regression}")
            if (not isinstance(bounds, list) or len(bounds) != 2
                    or not all(isinstance(b, (int, float)) for b in bounds) or not bounds[0] < bounds[1]):
                raise ValueError(f"{source}: data.regression_valid_ranges.{column} must be [low, high] with "
                                 f"low < high, got {bounds!r}")

    return [
        lambda: check_keys(model, accepted, source, "model", owner="ECGMultiTaskConfig or the ecg_multitask objective"),
        lambda: check_ecg_tower(model.get("ecg"), source),
        lambda: check_keys(data, MULTITASK_DATA_KEYS, source, "data", owner="the ecg_multitask objective"),
        lambda: check_synthetic_section(data.get("synthetic"), source, paired=False),
        columns_section,
    ]


def _split(dataset: Any, name: str, what: str, source: str) -> Any:
    if name not in dataset:
        raise ValueError(f"{source}: the dataset has no {what} split {name!r} (splits: {sorted(dataset)})")
    return dataset[name]


def build_multitask_run(experiment: ExperimentConfig, experiment_data: ExperimentData) -> Any:
    """Build an ``ecg_multitask`` run (see the module docstring): the tasks from the dataset's columns, the
    standardisation of the regression targets fitted on the training split, the model, the feature extractor, the
    training and validation rows with their targets, the collator and the per-task evaluation."""
    from ..evaluation.checkpoint import load_ecg_encoder
    from ..modeling.configuration_ecg_encoder import ECGEncoderConfig
    from ..modeling.modeling_ecg_mtl import ECGEncoderForMultiTask
    from ..processing.feature_extraction_ecg import ECGFeatureExtractor
    from .objectives import PretrainingRun
    from .self_supervised import records_at_model_rate

    source = experiment.source or "experiment config"
    spec = dict(experiment.model)
    spec.pop("type", None)
    data = dict(experiment.data)
    training = experiment.training
    dataset, info = experiment_data.dataset, experiment_data.info

    train_split = _split(dataset, data.get("train_split", "train"), "training", source)
    tasks = resolve_tasks(train_split.features, info,
                          _string_list(data.get("classification_columns"), source, "data.classification_columns"),
                          _string_list(data.get("regression_columns"), source, "data.regression_columns"), source)
    ranges = {str(k): [float(b) for b in v] for k, v in (data.get("regression_valid_ranges") or {}).items()}
    task_fields = dict(classification_tasks=tasks.classification_tasks, regression_tasks=tasks.regression_tasks,
                       task_id2label=tasks.task_id2label, regression_units=tasks.regression_units,
                       task_columns=tasks.task_columns, regression_valid_ranges=ranges)

    init_from = spec.pop("init_from", None)
    ecg_spec = dict(spec.pop("ecg", None) or {"backbone": "resnet1d_8"})
    if init_from:
        model = ECGEncoderForMultiTask.from_pretrained(init_from)
        for key in ("classification_tasks", "regression_tasks", "task_columns"):
            if getattr(model.config, key) != task_fields[key]:
                raise ValueError(f"{source}: model.init_from {init_from} was trained on {key} "
                                 f"{getattr(model.config, key)}, the data section gives {task_fields[key]}")
        for key, value in spec.items():
            setattr(model.config, key, value)
        model.config.validate_multitask_fields()
    else:
        pretrained = ecg_spec.pop("pretrained", None)
        encoder = load_ecg_encoder(pretrained)[0] if pretrained else ECGEncoderConfig(**ecg_spec)
        # the standardisation is fitted below, once the targets are read
        model = ECGEncoderForMultiTask.from_encoder_pretrained(encoder, **task_fields, **spec)
    config = model.config

    classification, regression = task_targets(train_split, config, info)
    if not init_from:
        config.regression_mean, config.regression_std = fit_standardisation(regression, config.regression_tasks,
                                                                            source)
    known = np.concatenate([np.isfinite(classification), np.isfinite(regression)], axis=1).sum(axis=0)
    print(f"ecg_multitask: {len(config.classification_tasks)} classification and {len(config.regression_tasks)} "
          f"regression tasks on {len(train_split)} training ECGs; known targets per task: "
          + ", ".join(f"{t} {int(k)}" for t, k in zip(config.task_names, known)), flush=True)

    model_rate = float(data.get("sampling_rate", info.sampling_rate))
    feature_extractor = ECGFeatureExtractor(
        lead_names=config.ecg_config.lead_names,
        sampling_rate=data.get("sampling_rate", info.sampling_rate),
        normalization=data.get("normalization", "zscore"),
        crop_length=data.get("crop_length", 2500),
        window_stride=max(1, int(round(model_rate))),  # test-time windows 1 s apart (the EHR paper's protocol)
    )
    rate = float(feature_extractor.sampling_rate)
    lead_names = list(feature_extractor.lead_names)
    # the records are resampled once (records_at_model_rate): the collator reads them at the extractor's rate
    collator = MultiTaskCollator(feature_extractor, sampling_rate=rate, lead_names=lead_names, crop="random")
    train = AnnotatedRows(records_at_model_rate(train_split, feature_extractor, info).with_format("numpy"),
                          classification_labels=classification, regression_labels=regression)
    evaluation = eval_fn = None
    eval_name = data.get("eval_split", "validation")
    if eval_name in dataset and len(dataset[eval_name]):
        eval_split = dataset[eval_name]
        eval_rows = records_at_model_rate(eval_split, feature_extractor, info).with_format("numpy")
        eval_classification, eval_regression = task_targets(eval_split, config, info)
        evaluation = AnnotatedRows(eval_rows, classification_labels=eval_classification,
                                   regression_labels=eval_regression)
        eval_fn = MultiTaskEvaluation(eval_rows, eval_classification, eval_regression, feature_extractor,
                                      batch_size=training.per_device_eval_batch_size or training.per_device_batch_size)
    return PretrainingRun(model, feature_extractor, None, train, evaluation, collator, info, eval_fn=eval_fn)


__all__ = [
    "KNOWN_UNITS",
    "MULTITASK_DATA_KEYS",
    "MultiTaskCollator",
    "MultiTaskEvaluation",
    "TaskSpec",
    "build_multitask_run",
    "fit_standardisation",
    "metric_key",
    "multitask_checks",
    "resolve_tasks",
    "task_targets",
]
