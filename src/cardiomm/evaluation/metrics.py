"""Per-class and macro AUROC and max-F1 for multi-label (or single-label) classification scores.

A class whose labels take a single value in the evaluated split (all negative or all positive) has no AUROC:
it is left out of the per-class results and of the macro average, listed in ``skipped``, and a
``UserWarning`` names it. The same rule applies to max-F1 so that both averages cover the same classes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import precision_recall_curve


def as_multi_hot(labels: Any, num_classes: int) -> np.ndarray:
    """``(N, C)`` 0/1 labels from multi-hot ``(N, C)``, binary ``(N,)`` (C = 1) or class indices ``(N,)``."""
    y = np.asarray(labels)
    if y.ndim == 2:
        if y.shape[1] != num_classes:
            raise ValueError(f"labels have {y.shape[1]} columns, scores have {num_classes}")
        return (y > 0).astype(np.int8)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D or 2-D, got shape {y.shape}")
    if num_classes == 1:
        return (y > 0).astype(np.int8)[:, None]
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
        raise ValueError("1-D labels with several classes must be integer class indices in [0, C)")
    return np.eye(num_classes, dtype=np.int8)[y]


def _as_2d_scores(scores: Any) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    return s[:, None] if s.ndim == 1 else s


def checked_labels_and_scores(
    y_true: Any, scores: Any, label_names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(N, C)`` 0/1 labels (:func:`as_multi_hot`), ``(N, C)`` float64 scores (``(N,)`` for one class) and the
    ``C`` class names (default ``"0"``, ``"1"``, ...); a ``ValueError`` when their sizes disagree."""
    s = _as_2d_scores(scores)
    y = as_multi_hot(y_true, s.shape[1])
    if len(y) != len(s):
        raise ValueError(f"{len(y)} labels but {len(s)} score rows")
    names = list(label_names) if label_names is not None else [str(i) for i in range(s.shape[1])]
    if len(names) != s.shape[1]:
        raise ValueError(f"{len(names)} label names for {s.shape[1]} score columns")
    return y, s, names


def evaluable_classes(y_true: np.ndarray) -> np.ndarray:
    """Boolean mask of the columns of ``(N, C)`` labels that hold both a positive and a negative."""
    positives = y_true.sum(axis=0)
    return (positives > 0) & (positives < len(y_true))


def auroc_columns(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of every column of ``(N, C)`` 0/1 labels and scores; NaN where a column has a single label value.

    Computed as the Mann–Whitney U statistic from average ranks (``scipy.stats.rankdata``), which equals
    ``sklearn.metrics.roc_auc_score`` column by column, ties included, without its per-call overhead (the
    linear probe scores every class at every ``C``). Non-finite scores raise ``ValueError``.
    """
    y = np.asarray(y_true) > 0
    s = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    positives = y.sum(axis=0).astype(np.float64)
    negatives = len(y) - positives
    ranks = rankdata(s, axis=0)
    u = np.where(y, ranks, 0.0).sum(axis=0) - positives * (positives + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((positives > 0) & (negatives > 0), u / (positives * negatives), np.nan)


def max_f1(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best F1 over all decision thresholds of one class, and the threshold that reaches it."""
    precision, recall, thresholds = precision_recall_curve(y_true, scores)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    return float(f1[best]), float(thresholds[best]) if len(thresholds) else float("nan")


@dataclass
class ClassificationMetrics:
    """Per-class and macro AUROC / max-F1; classes in ``skipped`` had a single label value."""

    label_names: list[str]
    auroc: dict[str, float] = field(default_factory=dict)
    max_f1: dict[str, float] = field(default_factory=dict)
    max_f1_threshold: dict[str, float] = field(default_factory=dict)
    macro_auroc: float = float("nan")
    macro_max_f1: float = float("nan")
    skipped: list[str] = field(default_factory=list)
    num_samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)

    def rows(self) -> list[dict[str, Any]]:
        """One row per evaluated class (``class``, ``auroc``, ``max_f1``) for :func:`format_table`."""
        return [{"class": c, "auroc": self.auroc[c], "max_f1": self.max_f1[c]} for c in self.auroc]


def classification_metrics(
    y_true: Any,
    scores: Any,
    label_names: Sequence[str] | None = None,
    warn: bool = True,
) -> ClassificationMetrics:
    """AUROC (:func:`auroc_columns`) and max-F1 per class and their macro averages over the evaluable classes.

    ``scores`` is ``(N, C)`` (or ``(N,)`` for one class); ``y_true`` is multi-hot ``(N, C)``, binary ``(N,)``
    or integer class indices ``(N,)``.
    """
    y, s, names = checked_labels_and_scores(y_true, scores, label_names)
    ok = evaluable_classes(y)
    result = ClassificationMetrics(label_names=names, num_samples=len(y))
    result.skipped = [n for n, keep in zip(names, ok) if not keep]
    if result.skipped and warn:
        warnings.warn(
            f"classes with a single label value in this split were left out of the metrics: {result.skipped}",
            UserWarning,
            stacklevel=2,
        )
    aurocs = auroc_columns(y, s)
    for j, name in enumerate(names):
        if not ok[j]:
            continue
        result.auroc[name] = float(aurocs[j])
        result.max_f1[name], result.max_f1_threshold[name] = max_f1(y[:, j], s[:, j])
    if result.auroc:
        result.macro_auroc = float(np.mean(list(result.auroc.values())))
        result.macro_max_f1 = float(np.mean(list(result.max_f1.values())))
    return result


def per_class_auroc(y: np.ndarray, scores: np.ndarray, names: Sequence[str]) -> tuple[float, dict[str, float]]:
    """``(macro AUROC, {class name: AUROC})`` over the classes with both label values (macro NaN when none)."""
    values = auroc_columns(y, scores)
    per_class = {name: float(v) for name, v in zip(names, values) if np.isfinite(v)}
    return (float(np.mean(list(per_class.values()))) if per_class else float("nan")), per_class


def macro_auroc(y_true: Any, scores: Any) -> float:
    """Macro AUROC over the evaluable classes (NaN when none), without warnings."""
    return classification_metrics(y_true, scores, warn=False).macro_auroc
