"""Per-task metrics of a multi-task ECG model (:class:`~cardiomm.ECGEncoderForMultiTask`, ECG-MTL) on a dataset
split, as the EHR paper's Tables 11-12: AUROC for every binary classification task; Pearson and Spearman
correlation and the coefficient of determination R² for every regression task (in the target's original unit).

Only the ECGs whose target is known (not NaN) count for a task; a classification task whose known targets take a
single value, or a regression task with fewer than two known targets or a constant target or prediction, has no
value for the metric (NaN) and is left out of the means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.collators import stack_ecg, with_recorded_leads


@dataclass
class TaskMetrics:
    """The metrics of one task: ``auroc`` (classification) or ``pearson``, ``spearman``, ``r2`` (regression),
    over ``num_samples`` known targets (``num_positives`` for classification)."""

    task: str
    kind: str
    num_samples: int
    num_positives: int | None = None
    unit: str = ""
    auroc: float = float("nan")
    pearson: float = float("nan")
    spearman: float = float("nan")
    r2: float = float("nan")


@dataclass
class MultiTaskMetrics:
    """Every task's :class:`TaskMetrics` (classification tasks first) and their means over the tasks that have
    a value."""

    tasks: list[TaskMetrics] = field(default_factory=list)

    def _mean(self, name: str, kind: str) -> float:
        values = [getattr(t, name) for t in self.tasks if t.kind == kind and np.isfinite(getattr(t, name))]
        return float(np.mean(values)) if values else float("nan")

    @property
    def mean_auroc(self) -> float:
        """Mean AUROC over the classification tasks with one (NaN when none)."""
        return self._mean("auroc", "classification")

    @property
    def mean_r2(self) -> float:
        """Mean R² over the regression tasks with one."""
        return self._mean("r2", "regression")

    @property
    def mean_pearson(self) -> float:
        """Mean Pearson correlation over the regression tasks with one."""
        return self._mean("pearson", "regression")

    @property
    def mean_spearman(self) -> float:
        """Mean Spearman correlation over the regression tasks with one."""
        return self._mean("spearman", "regression")

    def __getitem__(self, task: str) -> TaskMetrics:
        for metrics in self.tasks:
            if metrics.task == task:
                return metrics
        raise KeyError(f"no task {task!r}; tasks: {[t.task for t in self.tasks]}")

    def summary(self) -> dict[str, float]:
        """Flat metric names for logging: ``mean_auroc``, ``mean_r2``, ``mean_pearson``, ``mean_spearman`` (of the
        kinds present) and per task ``auroc/<task>`` or ``r2/<task>``, ``pearson/<task>``, ``spearman/<task>``
        (task names through :func:`~cardiomm.training.multitask.metric_key`); NaN values left out."""
        from ..training.multitask import metric_key

        out: dict[str, float] = {}
        kinds = {t.kind for t in self.tasks}
        if "classification" in kinds:
            out["mean_auroc"] = self.mean_auroc
        if "regression" in kinds:
            out.update(mean_r2=self.mean_r2, mean_pearson=self.mean_pearson, mean_spearman=self.mean_spearman)
        for t in self.tasks:
            names = ("auroc",) if t.kind == "classification" else ("r2", "pearson", "spearman")
            for name in names:
                out[f"{name}/{metric_key(t.task)}"] = getattr(t, name)
        return {k: float(v) for k, v in out.items() if np.isfinite(v)}

    def rows(self) -> list[dict[str, Any]]:
        """One row per task for :func:`~cardiomm.tables.format_table`: task, kind, n, positives, unit, auroc,
        pearson, spearman, r2."""
        return [{"task": t.task, "kind": t.kind, "n": t.num_samples,
                 "positives": "" if t.num_positives is None else t.num_positives, "unit": t.unit,
                 "auroc": t.auroc, "pearson": t.pearson, "spearman": t.spearman, "r2": t.r2} for t in self.tasks]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (tasks and means)."""
        return {"tasks": [asdict(t) for t in self.tasks], "mean_auroc": self.mean_auroc, "mean_r2": self.mean_r2,
                "mean_pearson": self.mean_pearson, "mean_spearman": self.mean_spearman}


def classification_task_metrics(task: str, scores: np.ndarray, targets: np.ndarray) -> TaskMetrics:
    """AUROC of one binary task over its known targets (NaN when they take a single value)."""
    from .metrics import auroc_columns

    known = np.isfinite(targets)
    y, s = targets[known] > 0.5, np.asarray(scores, dtype=np.float64)[known]
    metrics = TaskMetrics(task, "classification", int(known.sum()), num_positives=int(y.sum()))
    if 0 < y.sum() < len(y):
        metrics.auroc = float(auroc_columns(y[:, None], s[:, None])[0])
    return metrics


def regression_task_metrics(task: str, predictions: np.ndarray, targets: np.ndarray, unit: str = "") -> TaskMetrics:
    """Pearson, Spearman and R² (``sklearn.metrics.r2_score``: 1 - residual / total sum of squares) of one
    regression task over its known targets."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import r2_score

    known = np.isfinite(targets) & np.isfinite(predictions)
    y, p = np.asarray(targets, np.float64)[known], np.asarray(predictions, np.float64)[known]
    metrics = TaskMetrics(task, "regression", int(known.sum()), unit=unit)
    if len(y) >= 2 and np.ptp(y) > 0:
        metrics.r2 = float(r2_score(y, p))
        if np.ptp(p) > 0:
            metrics.pearson = float(pearsonr(y, p)[0])
            metrics.spearman = float(spearmanr(y, p)[0])
    return metrics


def multitask_metrics(config: Any, classification_scores: np.ndarray, classification_targets: np.ndarray,
                      regression_predictions: np.ndarray, regression_targets: np.ndarray) -> MultiTaskMetrics:
    """The :class:`MultiTaskMetrics` of every task of ``config`` (an :class:`~cardiomm.ECGMultiTaskConfig`) from
    (N, n_cls) scores (logits or probabilities) and 0/1 targets and (N, n_reg) predictions and targets in original
    units; NaN targets are unknown."""
    scores, cls_targets = np.asarray(classification_scores), np.asarray(classification_targets)
    predictions, reg_targets = np.asarray(regression_predictions), np.asarray(regression_targets)
    n_cls, n_reg = len(config.classification_tasks), len(config.regression_tasks)
    if scores.shape[1:] != (n_cls,) or cls_targets.shape != scores.shape:
        raise ValueError(f"classification scores {scores.shape} and targets {cls_targets.shape} must both be "
                         f"(N, {n_cls})")
    if predictions.shape[1:] != (n_reg,) or reg_targets.shape != predictions.shape:
        raise ValueError(f"regression predictions {predictions.shape} and targets {reg_targets.shape} must both be "
                         f"(N, {n_reg})")
    result = MultiTaskMetrics()
    for j, task in enumerate(config.classification_tasks):
        result.tasks.append(classification_task_metrics(task, scores[:, j], cls_targets[:, j]))
    for j, task in enumerate(config.regression_tasks):
        result.tasks.append(regression_task_metrics(task, predictions[:, j], reg_targets[:, j],
                                                    (config.regression_units or {}).get(task, "")))
    return result


@torch.inference_mode()
def predict_multitask(
    model: Any,
    feature_extractor: Any,
    dataset: Any,
    sampling_rate: float,
    lead_names: Sequence[str] | None = None,
    crop: str = "center",
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``(classification logits (N, n_cls), standardised regression predictions (N, n_reg))`` of every ECG of
    ``dataset`` (rows with ``ecg`` and ``lead_mask`` at ``sampling_rate``, leads in ``lead_names`` order, ``None``:
    the extractor's). ``crop="windows"``: the median over the extractor's windows (the EHR paper's test-time
    protocol)."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, predictions = [], []
    try:
        for start in tqdm(range(0, len(dataset), batch_size), desc="predicting", disable=not progress, leave=False):
            rows = dataset[start:start + batch_size]
            rows = [dict(zip(rows, values)) for values in zip(*rows.values())]
            names = {} if lead_names is None else {"lead_names": list(lead_names)}
            inputs = feature_extractor(ecg=stack_ecg(rows), sampling_rate=sampling_rate, crop=crop,
                                       return_tensors="pt", **names)
            batch = with_recorded_leads(dict(inputs), rows, lead_names, feature_extractor)
            x, mask, time_mask = (batch[k].to(device) for k in ("input_values", "lead_mask", "time_mask"))
            records, windows = x.shape[0], (x.shape[1] if x.ndim == 4 else 0)
            if windows:  # (B, W, L, T): one prediction per window, the median over windows per record
                mask = mask.flatten(0, 1) if mask.ndim == 3 else mask.repeat_interleave(windows, 0)
                x, time_mask = x.flatten(0, 1), time_mask.flatten(0, 1)
            out = model(input_values=x, lead_mask=mask, time_mask=time_mask, return_dict=True)
            cls, reg = out.classification_logits.float(), out.regression_predictions.float()
            if windows:
                cls = cls.reshape(records, windows, cls.shape[-1]).median(dim=1).values
                reg = reg.reshape(records, windows, reg.shape[-1]).median(dim=1).values
            logits.append(cls.cpu().numpy())
            predictions.append(reg.cpu().numpy())
    finally:
        model.train(was_training)
    n_cls, n_reg = len(model.config.classification_tasks), len(model.config.regression_tasks)
    return (np.concatenate(logits) if logits else np.zeros((0, n_cls), np.float32),
            np.concatenate(predictions) if predictions else np.zeros((0, n_reg), np.float32))


def evaluate_multitask(
    model: Any,
    feature_extractor: Any,
    split: Any,
    info: Any,
    crop: str = "center",
    batch_size: int = 64,
    progress: bool = False,
) -> MultiTaskMetrics:
    """Per-task metrics of ``model`` (an :class:`~cardiomm.ECGEncoderForMultiTask`) on a dataset ``split`` of a
    cardiomm dataset described by ``info`` (its ``ECGDatasetInfo``): the targets are read from the columns named
    in ``model.config.task_columns``, the ECGs go through ``feature_extractor`` (``crop`` ``"center"`` or
    ``"windows"``).

    Raises:
        ValueError: when the split lacks a column a task is read from.
    """
    from ..training.multitask import task_targets

    classification, regression = task_targets(split, model.config, info)
    records = split.select_columns(["ecg", "lead_mask"]).with_format("numpy")
    logits, predictions = predict_multitask(model, feature_extractor, records,
                                            sampling_rate=float(info.sampling_rate), lead_names=info.lead_names,
                                            crop=crop, batch_size=batch_size, progress=progress)
    return multitask_metrics(model.config, logits, classification,
                             model.to_original_units(torch.as_tensor(predictions)).numpy(), regression)


__all__ = [
    "MultiTaskMetrics",
    "TaskMetrics",
    "classification_task_metrics",
    "evaluate_multitask",
    "multitask_metrics",
    "predict_multitask",
    "regression_task_metrics",
]
