"""Linear probing of CLERC embeddings, within a modality and across modalities (the paper's Tables 4 and 5).

Protocol of :func:`fit_linear_probe` (every task, every modality):

1. samples with a missing label are left out of each split;
2. the embeddings are standardised with the training split's mean and standard deviation;
3. binary tasks: an L2-regularised logistic regression (scikit-learn, ``lbfgs``) for every inverse strength ``C``
   of the grid; regression tasks: a ridge regression for every ``alpha`` of the grid, each fitted on the training
   samples (every sample carries its study's label);
4. predictions are averaged over the samples of each study; the regularisation with the best study-level metric
   on the **validation** split is chosen (AUROC for binary, R² for regression; ties go to the stronger
   regularisation); the test labels are read only after that, to score the chosen model on the test studies
   (AUROC; R² and Pearson r).

Cross-modal prediction (:func:`cross_modal_table`): the embedding of modality A predicts a label of modality B.
Each sample of A takes the label of the temporally closest sample of B of the same patient that has the label
(:func:`attach_labels`); the splits are the patients' splits. Age and sex come from the ECG rows for every
modality; a task whose source is ``None`` (the pacemaker) takes each modality's own label.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler

from .linear_probe import DEFAULT_CS
from .multimodal_embeddings import DIAGNOSTIC_MODALITIES, embedding_matrix, time_seconds
from .multimodal_zero_shot import binary_auroc, regression_metrics, study_average, unusable_labels_reason

DEFAULT_ALPHAS: tuple[float, ...] = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
"""Ridge regularisation strengths searched for regression probes (on standardised embeddings)."""
SPLITS: tuple[str, ...] = ("train", "validation", "test")


@dataclass(frozen=True)
class ProbeTask:
    """A label predicted by linear probing: ``column`` of the ``source`` modality's tables (``None``: the
    predicting modality's own tables)."""

    name: str
    kind: str
    column: str
    source: str | None

    @property
    def metric(self) -> str:
        """``"AUROC"`` (binary) or ``"R2"`` (regression)."""
        return "AUROC" if self.kind == "binary" else "R2"


CROSS_MODAL_TASKS: tuple[ProbeTask, ...] = (
    ProbeTask("Age", "regression", "age", "ecg"),
    ProbeTask("Sex (female)", "binary", "female", "ecg"),
    ProbeTask("LVEF", "regression", "lvef", "echo"),
    ProbeTask("Pacemaker", "binary", "pacemaker", None),
    ProbeTask("RBBB", "binary", "right bundle branch block", "ecg"),
    ProbeTask("LBBB", "binary", "left bundle branch block", "ecg"),
    ProbeTask("LAD occlusion", "binary", "lad_occlusion", "angiogram"),
    ProbeTask("RCA occlusion", "binary", "rca_occlusion", "angiogram"),
    ProbeTask("LCX occlusion", "binary", "lcx_occlusion", "angiogram"),
    ProbeTask("Consolidation", "binary", "consolidation", "chest_xray"),
    ProbeTask("Edema", "binary", "edema", "chest_xray"),
    ProbeTask("Cardiomegaly", "binary", "cardiomegaly", "chest_xray"),
)
"""The rows of the cross-modal table: the paper's Table 5 (with cardiomegaly), in the synthetic cohort's labels."""


@dataclass
class ProbeSplit:
    """One split of a probe: embeddings ``x`` (N, D), labels ``y`` (N,) (NaN: unknown) and the study of each sample."""

    x: np.ndarray
    y: np.ndarray
    study_ids: np.ndarray

    @classmethod
    def of(cls, x: Any, y: Any, study_ids: Any | None = None) -> ProbeSplit:
        """A split from array-likes; without ``study_ids`` every sample is its own study."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if x.ndim != 2 or len(x) != len(y):
            raise ValueError(f"embeddings {x.shape} and labels {y.shape} do not match")
        studies = np.arange(len(y)).astype(str) if study_ids is None else np.asarray(study_ids).astype(str)
        if len(studies) != len(y):
            raise ValueError(f"{len(studies)} study ids for {len(y)} samples")
        keep = np.isfinite(y)
        return cls(x[keep], y[keep], studies[keep])

    @property
    def n_studies(self) -> int:
        """Number of distinct studies."""
        return len(np.unique(self.study_ids))


@dataclass
class ProbeResult:
    """A linear probe: the chosen regularisation, the validation metric of every grid value and the test result
    (``value`` NaN with a ``reason`` when it could not be computed)."""

    kind: str
    metric: str
    value: float = float("nan")
    pearson_r: float = float("nan")
    parameter: str = ""
    grid: list[float] = field(default_factory=list)
    chosen: float | None = None
    val_by_parameter: list[float] = field(default_factory=list)
    n_train: int = 0
    n_val_studies: int = 0
    n_test_studies: int = 0
    reason: str | None = None
    test_study_ids: list[str] = field(default_factory=list, repr=False)
    test_predictions: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (without the per-study test predictions)."""
        keys = ("kind", "metric", "value", "pearson_r", "parameter", "grid", "chosen", "val_by_parameter",
                "n_train", "n_val_studies", "n_test_studies", "reason")
        return {k: getattr(self, k) for k in keys}


def _study_metric(kind: str, predictions: np.ndarray, split: ProbeSplit) -> float:
    _, means, labels = study_average(predictions, split.study_ids, split.y)
    if kind == "binary":
        return binary_auroc(labels, means)
    return regression_metrics(labels, means)["r2"]


def fit_linear_probe(
    train: ProbeSplit | Sequence[Any],
    validation: ProbeSplit | Sequence[Any],
    test: ProbeSplit | Sequence[Any],
    kind: str,
    Cs: Sequence[float] = DEFAULT_CS,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    max_iter: int = 1000,
) -> ProbeResult:
    """Linear probe of one label (see the module protocol); each split is a :class:`ProbeSplit` or
    ``(x, y[, study_ids])``. ``kind`` is ``"binary"`` (logistic regression over ``Cs``) or ``"regression"`` (ridge
    over ``alphas``)."""
    if kind not in ("binary", "regression"):
        raise ValueError(f"kind must be 'binary' or 'regression', got {kind!r}")
    train, validation, test = (s if isinstance(s, ProbeSplit) else ProbeSplit.of(*s) for s in (train, validation, test))
    binary = kind == "binary"
    # strongest regularisation first, so that ties (first best) go to it
    grid = sorted(float(c) for c in Cs) if binary else sorted((float(a) for a in alphas), reverse=True)
    if not grid:
        raise ValueError("the regularisation grid is empty")
    result = ProbeResult(kind=kind, metric="AUROC" if binary else "R2", parameter="C" if binary else "alpha",
                         grid=grid, n_train=len(train.y), n_val_studies=validation.n_studies,
                         n_test_studies=test.n_studies)
    if len(train.y) < 2 or (binary and len(np.unique(train.y > 0)) < 2) or (not binary and np.ptp(train.y) == 0):
        result.reason = f"train: {len(train.y)} labelled samples, not enough to fit (both classes / variation needed)"
        return result
    val_labels = study_average(np.zeros(len(validation.y)), validation.study_ids, validation.y)[2]
    result.reason = unusable_labels_reason(kind, val_labels, "validation")
    if result.reason is not None:
        return result
    scaler = StandardScaler().fit(train.x)
    x_train, x_val, x_test = (scaler.transform(s.x) for s in (train, validation, test))
    y_train = (train.y > 0).astype(int) if binary else train.y
    models, val_scores = [], []
    for value in grid:
        model = LogisticRegression(C=value, max_iter=max_iter) if binary else Ridge(alpha=value)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x_train, y_train)
        predictions = model.decision_function(x_val) if binary else model.predict(x_val)
        models.append(model)
        val_scores.append(_study_metric(kind, predictions, validation))
    result.val_by_parameter = val_scores
    if not np.isfinite(val_scores).any():
        result.reason = "validation: the metric is undefined for every regularisation value"
        return result
    best = int(np.nanargmax(val_scores))
    result.chosen = grid[best]
    # the test labels are used from here on only
    predictions = models[best].decision_function(x_test) if binary else models[best].predict(x_test)
    studies, means, labels = study_average(predictions, test.study_ids, test.y)
    result.test_study_ids, result.test_predictions = [str(s) for s in studies], [float(p) for p in means]
    result.reason = unusable_labels_reason(kind, labels, "test")
    if result.reason is not None:
        return result
    if binary:
        result.value = binary_auroc(labels, means)
    else:
        metrics = regression_metrics(labels, means)
        result.value, result.pearson_r = metrics["r2"], metrics["pearson_r"]
    return result


def attach_labels(target: pd.DataFrame, source: pd.DataFrame, column: str) -> np.ndarray:
    """``(len(target),)`` labels: for each row of ``target``, ``column`` of the temporally closest row of
    ``source`` of the same patient among those with a known value (NaN when there is none; an unknown time counts
    as farther than any known one; ties go to the first row of ``source``)."""
    out = np.full(len(target), np.nan)
    if len(target) == 0 or len(source) == 0 or column not in source.columns:
        return out
    values = pd.to_numeric(source[column], errors="coerce").to_numpy(dtype=np.float64)
    known = np.isfinite(values)
    source_times, target_times = time_seconds(source["time"])[known], time_seconds(target["time"])
    values = values[known]
    by_patient = pd.Series(np.arange(len(values))).groupby(source["patient_id"].astype(str).to_numpy()[known]).indices
    target_patients = target["patient_id"].astype(str).to_numpy()
    for i, patient in enumerate(target_patients):
        rows = by_patient.get(patient)
        if rows is None:
            continue
        rows = np.sort(rows)
        gaps = np.abs(source_times[rows] - target_times[i])
        out[i] = values[rows[int(np.argmin(np.where(np.isnan(gaps), np.inf, gaps)))]]
    return out


def probe_split(tables: Mapping[str, pd.DataFrame], modality: str, column: str, source: str | None = None
                ) -> ProbeSplit | None:
    """The :class:`ProbeSplit` of one split's tables: ``modality``'s embeddings and ``column`` of its own rows
    (``source`` None or ``modality``) or of the closest ``source`` rows (:func:`attach_labels`); ``None`` when the
    split has no sample of ``modality``."""
    table = tables.get(modality)
    if table is None or len(table) == 0:
        return None
    if source is None or source == modality:
        labels = (pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
                  if column in table.columns else np.full(len(table), np.nan))
    else:
        labels = attach_labels(table, tables.get(source, pd.DataFrame()), column)
    return ProbeSplit.of(embedding_matrix(table), labels, table["study_id"].to_numpy())


def probe_label(
    split_tables: Mapping[str, Mapping[str, pd.DataFrame]],
    modality: str,
    column: str,
    kind: str,
    source: str | None = None,
    splits: Sequence[str] = SPLITS,
    **grids: Any,
) -> ProbeResult:
    """Linear probe of ``column`` (of ``source``, default: ``modality`` itself) from ``modality``'s embeddings;
    ``split_tables`` is ``{split: {modality: table}}`` and ``splits`` names its train, validation and test splits."""
    parts = []
    for split in splits:
        part = probe_split(split_tables.get(split, {}), modality, column, source)
        if part is None or len(part.y) == 0:
            where = f" (from the closest {source} sample)" if source not in (None, modality) else ""
            return ProbeResult(kind=kind, metric="AUROC" if kind == "binary" else "R2",
                               reason=f"{split}: no {modality} sample with a label {column!r}{where}")
        parts.append(part)
    return fit_linear_probe(*parts, kind=kind, **grids)


def cross_modal_table(
    split_tables: Mapping[str, Mapping[str, pd.DataFrame]],
    tasks: Sequence[ProbeTask] = CROSS_MODAL_TASKS,
    modalities: Sequence[str] = DIAGNOSTIC_MODALITIES,
    splits: Sequence[str] = SPLITS,
    **grids: Any,
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The cross-modal prediction table: rows are tasks (``"Age (R2)"``, ...), columns the predicting modalities,
    cells the test metric (NaN where it could not be computed); and one record per cell (task, modality, source
    and the :class:`ProbeResult` fields, ``reason`` included)."""
    index = [f"{t.name} ({t.metric})" for t in tasks]
    columns = pd.Index(list(modalities), name="modality")
    table = pd.DataFrame(np.nan, index=pd.Index(index, name="task"), columns=columns)
    cells = []
    for task, row in zip(tasks, index):
        for modality in modalities:
            result = probe_label(split_tables, modality, task.column, task.kind, task.source, splits, **grids)
            table.loc[row, modality] = result.value
            cells.append({"task": task.name, "modality": modality, "label": task.column,
                          "label_source": task.source or modality, **result.to_dict()})
    return table, cells


__all__ = [
    "CROSS_MODAL_TASKS",
    "DEFAULT_ALPHAS",
    "ProbeResult",
    "ProbeSplit",
    "ProbeTask",
    "attach_labels",
    "cross_modal_table",
    "fit_linear_probe",
    "probe_label",
    "probe_split",
]
