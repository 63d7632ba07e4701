"""Zero-shot binary classification and regression of CLERC embeddings from text prompts (the paper's Table 4).

Each task is a JSON file (the package ships the paper's Supplementary Table 1 tasks, mapped to the synthetic
cohort's labels, in ``cardiomm/knowledge/clerc_prompts/<task>.json``; the file name is the task name)::

    {"name": "LVEF", "modality": "echo", "label": "lvef", "kind": "regression",
     "template": ["The left ventricular ejection fraction is estimated to be [VALUE]%.",
                  "LV ejection fraction is [VALUE]%."],
     "values": [20, 25, ..., 80]}
    {"name": "RBBB", "modality": "ecg", "label": "right bundle branch block", "kind": "binary",
     "prompts": ["Right bundle branch block."]}

``modality`` is a diagnostic modality (``ecg``, ``echo``, ``angiogram``, ``chest_xray``), ``label`` a label column
of its embedding table (:mod:`cardiomm.evaluation.multimodal_embeddings`), ``kind`` ``binary`` or ``regression``;
``name`` (display name) and ``source`` are optional.

- **binary**: every prompt is embedded by the text tower and L2-normalised; their mean, normalised again, is the
  task embedding; a sample's score is its cosine with it. Metric: AUROC.
- **regression**: each value of ``values`` gets the prompts of ``template`` with ``[VALUE]`` replaced by the value
  (ensembled as above); the cosines of a sample with the value embeddings, multiplied by the model's learned
  inverse temperature ``exp(logit_scale)``, go through a softmax over the values, and the prediction is the
  expected value. Metrics: R² and Pearson r.

Predictions are averaged over all samples of a study (one ECG is its own study) before the metrics, which are
computed over studies.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import pearsonr
from sklearn.metrics import r2_score

from .metrics import auroc_columns
from .multimodal_embeddings import DIAGNOSTIC_MODALITIES, embedding_matrix
from .zero_shot import class_text_embeddings, l2_normalize, zero_shot_regression

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "knowledge" / "clerc_prompts"
"""The prompt task files shipped with the package."""
VALUE_PLACEHOLDER = "[VALUE]"
TASK_KINDS: tuple[str, ...] = ("binary", "regression")
_KEYS = {"name", "modality", "label", "kind", "prompts", "template", "values", "source"}

TextEncoder = Callable[[list[str]], Any]


@dataclass(frozen=True)
class PromptTask:
    """One zero-shot task of a prompt file (see the module docstring)."""

    task: str
    modality: str
    label: str
    kind: str
    prompts: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    values: tuple[float, ...] = ()
    name: str = ""
    source: str = ""
    path: str | None = None

    @property
    def metric(self) -> str:
        """The task's headline metric: ``"AUROC"`` (binary) or ``"R2"`` (regression)."""
        return "AUROC" if self.kind == "binary" else "R2"

    def value_prompts(self) -> dict[float, list[str]]:
        """``{value: prompts}`` of a regression task: the templates with ``[VALUE]`` replaced by each value."""
        return {v: [t.replace(VALUE_PLACEHOLDER, format_value(v)) for t in self.templates] for v in self.values}


def format_value(value: float) -> str:
    """A sweep value as written in a prompt: ``20`` for 20.0, ``2.5`` for 2.5."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _strings(value: Any, key: str, source: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(s, str) and s.strip() for s in items):
        raise ValueError(f"{source}: {key!r} must be a non-empty string or a non-empty list of non-empty strings")
    return tuple(items)


def prompt_task_from_dict(data: Any, task: str, source: str = "<prompt task>") -> PromptTask:
    """Validate the contents of a prompt file; ``ValueError`` naming ``source`` and the problem."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a prompt task must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown}; allowed: {sorted(_KEYS)}")
    for key in ("modality", "label", "kind"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise ValueError(f"{source}: {key!r} is required (a non-empty string)")
    modality, kind = data["modality"], data["kind"]
    if modality not in DIAGNOSTIC_MODALITIES:
        raise ValueError(f"{source}: modality {modality!r} is not one of {list(DIAGNOSTIC_MODALITIES)}")
    if kind not in TASK_KINDS:
        raise ValueError(f"{source}: kind {kind!r} is not one of {list(TASK_KINDS)}")
    for key in ("name", "source"):
        if key in data and not isinstance(data[key], str):
            raise ValueError(f"{source}: {key!r} must be a string")
    fields: dict[str, Any] = {}
    if kind == "binary":
        if "template" in data or "values" in data:
            raise ValueError(f"{source}: a binary task has 'prompts', not 'template' / 'values'")
        if "prompts" not in data:
            raise ValueError(f"{source}: a binary task needs 'prompts' (a list of prompts, averaged)")
        fields["prompts"] = _strings(data["prompts"], "prompts", source)
    else:
        if "prompts" in data:
            raise ValueError(f"{source}: a regression task has 'template' and 'values', not 'prompts'")
        if "template" not in data or "values" not in data:
            raise ValueError(f"{source}: a regression task needs 'template' (with {VALUE_PLACEHOLDER}) and 'values'")
        templates = _strings(data["template"], "template", source)
        missing = [t for t in templates if VALUE_PLACEHOLDER not in t]
        if missing:
            raise ValueError(f"{source}: template {missing[0]!r} has no {VALUE_PLACEHOLDER} placeholder")
        values = data["values"]
        if (not isinstance(values, list) or len(values) < 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in values)):
            raise ValueError(f"{source}: 'values' must be a list of at least two finite numbers")
        if len(set(values)) != len(values):
            raise ValueError(f"{source}: 'values' repeat")
        fields["templates"], fields["values"] = templates, tuple(float(v) for v in values)
    return PromptTask(task=task, modality=modality, label=data["label"], kind=kind, name=data.get("name", task),
                      source=data.get("source", ""), path=None if source.startswith("<") else source, **fields)


def load_prompt_task(path: str | os.PathLike) -> PromptTask:
    """Read one prompt file (the task is named after the file); ``ValueError`` naming the file when it is missing,
    not JSON or malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such prompt file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    return prompt_task_from_dict(data, path.stem, str(path))


def load_prompt_tasks(
    folder: str | os.PathLike | None = None, tasks: Sequence[str] | None = None
) -> dict[str, PromptTask]:
    """The prompt tasks of ``folder`` (default: the package's :data:`PROMPTS_DIR`), ``{task: PromptTask}`` sorted
    by name; ``tasks`` selects some by name (an unknown name is a ``ValueError`` listing the known ones)."""
    folder = Path(folder) if folder is not None else PROMPTS_DIR
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such prompt folder")
    found = {p.stem: p for p in sorted(folder.glob("*.json"))}
    if not found:
        raise ValueError(f"{folder}: no prompt files (*.json)")
    if tasks is not None:
        unknown = [t for t in tasks if t not in found]
        if unknown:
            raise ValueError(f"unknown zero-shot tasks {unknown}; the tasks of {folder}: {sorted(found)}")
        found = {t: found[t] for t in dict.fromkeys(tasks)}
    return {name: load_prompt_task(path) for name, path in found.items()}


def binary_scores(embeddings: Any, prompts: Sequence[str], encode_text: TextEncoder) -> np.ndarray:
    """``(N,)`` cosines of the samples with the ensembled (mean of normalised, normalised again) prompt embedding."""
    _, task_embedding = class_text_embeddings({"task": list(prompts)}, encode_text)
    x = l2_normalize(np.asarray(embeddings, dtype=np.float64))
    if x.ndim != 2 or x.shape[1] != task_embedding.shape[1]:
        raise ValueError(f"embeddings {x.shape} do not match the prompt embedding {task_embedding.shape}")
    return x @ task_embedding[0]


def zero_shot_predictions(task: PromptTask, embeddings: Any, encode_text: TextEncoder,
                          logit_scale: float) -> np.ndarray:
    """Per-sample predictions ``(N,)`` of a task: scores (binary) or expected values (regression) at the inverse
    temperature ``logit_scale`` (the model's ``exp(logit_scale)``)."""
    if task.kind == "binary":
        return binary_scores(embeddings, task.prompts, encode_text)
    return zero_shot_regression(embeddings, task.value_prompts(), encode_text, logit_scale=float(logit_scale))


def study_average(predictions: Any, study_ids: Sequence[Any], labels: Any | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Average per-sample predictions over the samples of each study: ``(study ids, mean predictions, labels)`` in
    order of first appearance; the study's label is that of its first sample (samples of a study share it)."""
    frame = pd.DataFrame({"study": [str(s) for s in study_ids], "prediction": np.asarray(predictions, float)})
    if labels is not None:
        frame["label"] = np.asarray(labels, dtype=np.float64)
    grouped = frame.groupby("study", sort=False)
    means = grouped["prediction"].mean()
    study_labels = grouped["label"].first().to_numpy() if labels is not None else None
    return means.index.to_numpy(), means.to_numpy(), study_labels


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """``{"r2": ..., "pearson_r": ...}``; NaN where undefined (fewer than two values, a constant)."""
    y, p = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if len(y) < 2 or np.ptp(y) == 0:
        return {"r2": float("nan"), "pearson_r": float("nan")}
    r = float(pearsonr(y, p)[0]) if np.ptp(p) > 0 else float("nan")
    return {"r2": float(r2_score(y, p)), "pearson_r": r}


def binary_auroc(y_true: Any, scores: Any) -> float:
    """AUROC of 0/1 labels and scores; NaN without both a positive and a negative."""
    y = np.asarray(y_true, np.float64)
    if len(y) == 0:
        return float("nan")
    return float(auroc_columns((y > 0)[:, None], np.asarray(scores, np.float64)[:, None])[0])


def unusable_labels_reason(kind: str, labels: np.ndarray, what: str) -> str | None:
    """Why ``labels`` (per study) cannot give a metric, or ``None`` when they can."""
    if kind == "binary":
        positives = int((labels > 0).sum())
        if positives == 0 or positives == len(labels):
            return f"{what}: {len(labels)} studies, {positives} positive (AUROC needs both classes)"
    elif len(labels) < 2 or np.ptp(labels) == 0:
        return f"{what}: {len(labels)} studies with {len(np.unique(labels))} distinct values (R2 needs variation)"
    return None


@dataclass
class ZeroShotTaskResult:
    """The zero-shot result of one task on one split (``value`` is NaN with a ``reason`` when not computable)."""

    task: str
    name: str
    modality: str
    label: str
    kind: str
    metric: str
    value: float = float("nan")
    pearson_r: float = float("nan")
    n_studies: int = 0
    n_samples: int = 0
    reason: str | None = None
    study_ids: list[str] = field(default_factory=list, repr=False)
    predictions: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (without the per-study predictions)."""
        keys = ("task", "name", "modality", "label", "kind", "metric", "value", "pearson_r", "n_studies",
                "n_samples", "reason")
        return {k: getattr(self, k) for k in keys}


def evaluate_zero_shot_task(
    task: PromptTask, tables: Mapping[str, pd.DataFrame], encode_text: TextEncoder, logit_scale: float
) -> ZeroShotTaskResult:
    """Zero-shot predictions of ``task`` for the samples of its modality's table in ``tables`` with a known label,
    averaged per study, and the metric over studies."""
    result = ZeroShotTaskResult(task=task.task, name=task.name, modality=task.modality, label=task.label,
                                kind=task.kind, metric=task.metric)
    table = tables.get(task.modality)
    if table is None or len(table) == 0:
        result.reason = f"no {task.modality} samples"
        return result
    if task.label not in table.columns:
        result.reason = f"the {task.modality} samples have no label column {task.label!r}"
        return result
    labels = pd.to_numeric(table[task.label], errors="coerce").to_numpy(dtype=np.float64)
    keep = np.isfinite(labels)
    result.n_samples = int(keep.sum())
    if not keep.any():
        result.reason = f"no {task.modality} sample has a {task.label!r} label"
        return result
    rows = table[keep]
    predictions = zero_shot_predictions(task, embedding_matrix(rows), encode_text, logit_scale)
    studies, study_predictions, study_labels = study_average(predictions, rows["study_id"], labels[keep])
    result.n_studies = len(studies)
    result.study_ids, result.predictions = [str(s) for s in studies], [float(p) for p in study_predictions]
    result.reason = unusable_labels_reason(task.kind, study_labels, f"{task.label!r}")
    if result.reason is not None:
        return result
    if task.kind == "binary":
        result.value = binary_auroc(study_labels, study_predictions)
    else:
        metrics = regression_metrics(study_labels, study_predictions)
        result.value, result.pearson_r = metrics["r2"], metrics["pearson_r"]
    return result


__all__ = [
    "PROMPTS_DIR",
    "PromptTask",
    "ZeroShotTaskResult",
    "binary_auroc",
    "binary_scores",
    "evaluate_zero_shot_task",
    "format_value",
    "load_prompt_task",
    "load_prompt_tasks",
    "prompt_task_from_dict",
    "regression_metrics",
    "study_average",
    "zero_shot_predictions",
]
