"""Linear probing of frozen embeddings at several training-data fractions.

Protocol (what :func:`linear_probe` does, exactly):

1. The label columns of train, validation and test must be the same set of names; they are aligned to one
   order by exact name. Different sets raise ``ValueError`` (split files with different label columns would
   otherwise silently score the wrong classes).
2. For every fraction and seed, a training subset is drawn with
   :func:`cardiomm.data.splits.stratified_fraction` (multi-label iterative stratification: each label keeps
   its prevalence, with at least one positive where the label occurs; reproducible from the seed).
   Fraction 1.0 uses the whole training split.
3. Features are standardised with the subset's mean and standard deviation.
4. One L2-regularised logistic regression per label (one-vs-rest, sklearn ``lbfgs``) is fitted for every
   inverse regularisation strength ``C`` of the grid. A label with a single value in the subset gets a
   constant score.
5. ``C`` is chosen by macro AUROC on the **validation** split only (ties go to the smaller ``C``); the test
   macro AUROC is reported at that ``C``. Test scores at the other ``C`` values are kept for auditing in
   ``test_macro_auroc_by_C`` and never used for selection. When no class has both label values in the
   validation split, ``C`` cannot be chosen and a ``ValueError`` says so (no ``C`` is picked silently).
6. Macro AUROC averages the classes that have both label values in the evaluated split (see
   :mod:`cardiomm.evaluation.metrics`); results are summarised as mean ± standard deviation over seeds
   (population standard deviation, ``ddof=0``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ..data.splits import stratified_fraction
from .metrics import evaluable_classes, per_class_auroc

DEFAULT_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
SPLITS = ("train", "val", "test")


@dataclass
class LinearProbeRun:
    """One fraction × seed: the chosen ``C`` and the validation / test macro AUROC."""

    fraction: float
    seed: int
    n_train: int
    C: float
    val_macro_auroc: float
    test_macro_auroc: float
    test_auroc: dict[str, float]
    val_macro_auroc_by_C: list[float]
    test_macro_auroc_by_C: list[float]
    train_prevalence: dict[str, float]
    untrainable: list[str] = field(default_factory=list)


@dataclass
class LinearProbeResult:
    """All runs of a linear-probing evaluation and their per-fraction summary."""

    label_names: list[str]
    Cs: list[float]
    runs: list[LinearProbeRun]
    skipped_val: list[str] = field(default_factory=list)
    skipped_test: list[str] = field(default_factory=list)

    def summary(self) -> dict[float, dict[str, float]]:
        """``{fraction: {"mean": ..., "std": ..., "n_seeds": ...}}`` of the test macro AUROC."""
        out: dict[float, dict[str, float]] = {}
        for fraction in dict.fromkeys(r.fraction for r in self.runs):
            values = np.array([r.test_macro_auroc for r in self.runs if r.fraction == fraction])
            out[fraction] = {"mean": float(values.mean()), "std": float(values.std()), "n_seeds": len(values)}
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One row per fraction (``fraction``, ``test_macro_auroc``, ``std``, ``n_seeds``) for tables."""
        return [
            {"fraction": f, "test_macro_auroc": s["mean"], "std": s["std"], "n_seeds": s["n_seeds"]}
            for f, s in self.summary().items()
        ]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (summary keys are fractions as strings)."""
        return {
            "label_names": self.label_names,
            "Cs": self.Cs,
            "summary": {str(k): v for k, v in self.summary().items()},
            "runs": [asdict(r) for r in self.runs],
            "skipped_val": self.skipped_val,
            "skipped_test": self.skipped_test,
        }


def _split_parts(name: str, split: Sequence[Any]) -> tuple[np.ndarray, Any, list[str] | None]:
    if len(split) not in (2, 3):
        raise ValueError(f"{name} split must be (X, Y) or (X, Y, label_names)")
    x, y = split[0], split[1]
    names = list(split[2]) if len(split) == 3 else (list(y.columns) if hasattr(y, "columns") else None)
    x = x.detach().cpu().float().numpy() if hasattr(x, "detach") else np.asarray(x)
    y = np.asarray(y)
    if y.ndim == 1:
        y = y[:, None]
    if len(x) != len(y):
        raise ValueError(f"{name} split has {len(x)} embeddings but {len(y)} label rows")
    if names is not None and len(names) != y.shape[1]:
        raise ValueError(f"{name} split has {y.shape[1]} label columns but {len(names)} label names")
    return np.asarray(x, dtype=np.float64), (y > 0).astype(np.int8), names


def align_label_columns(
    splits: Mapping[str, Sequence[Any]], label_names: Sequence[str] | None = None
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Check that every split has the same label columns and put them in one order (by exact name).

    Each split is ``(X, Y)`` or ``(X, Y, names)``; a DataFrame ``Y`` brings its column names. The reference
    order is ``label_names`` if given, else the first split's names. Raises ``ValueError`` when the sets of
    names differ, a name repeats, or (without names) the column counts differ.
    """
    parts = {name: _split_parts(name, split) for name, split in splits.items()}
    first = next(iter(parts))
    named = {name: p[2] for name, p in parts.items() if p[2] is not None}
    reference = list(label_names) if label_names is not None else named.get(first)
    if reference is None:
        if named:
            raise ValueError(f"label names given for {sorted(named)} only; give them for every split")
        widths = {name: p[1].shape[1] for name, p in parts.items()}
        if len(set(widths.values())) != 1:
            raise ValueError(f"splits have different numbers of label columns: {widths}")
        reference = [str(i) for i in range(widths[first])]
    if len(set(reference)) != len(reference):
        raise ValueError(f"label names repeat: {reference}")
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, (x, y, names) in parts.items():
        if names is None:
            if y.shape[1] != len(reference):
                raise ValueError(f"{name} split has {y.shape[1]} label columns, expected {len(reference)}")
            out[name] = (x, y)
            continue
        if len(set(names)) != len(names):
            raise ValueError(f"{name} split repeats label columns: {names}")
        if set(names) != set(reference):
            missing = [n for n in reference if n not in names]
            extra = [n for n in names if n not in reference]
            raise ValueError(
                f"label columns of the {name} split differ from the reference: missing {missing}, extra {extra}"
            )
        order = [names.index(n) for n in reference]
        out[name] = (x, y[:, order])
    widths = {x.shape[1] for x, _ in out.values()}
    if len(widths) != 1:
        raise ValueError(f"splits have different embedding sizes: {sorted(widths)}")
    return out, list(reference)


def _fit_scores(
    x_train: np.ndarray, y_train: np.ndarray, evaluate: list[np.ndarray], C: float, max_iter: int
) -> list[np.ndarray]:
    outputs = [np.zeros((len(x), y_train.shape[1])) for x in evaluate]
    for j in range(y_train.shape[1]):
        column = y_train[:, j]
        if column.min() == column.max():
            for out in outputs:
                out[:, j] = float(column[0])
            continue
        model = LogisticRegression(C=C, max_iter=max_iter)
        model.fit(x_train, column)
        for out, x in zip(outputs, evaluate):
            out[:, j] = model.decision_function(x)
    return outputs


def linear_probe(
    train: Sequence[Any],
    val: Sequence[Any],
    test: Sequence[Any],
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seeds: Sequence[int] = (0, 1, 2),
    label_names: Sequence[str] | None = None,
    Cs: Sequence[float] = DEFAULT_CS,
    max_iter: int = 1000,
) -> LinearProbeResult:
    """Linear probing of frozen embeddings; see the module docstring for the protocol.

    ``train``/``val``/``test`` are ``(X, Y)`` or ``(X, Y, label_names)`` with ``X`` ``(N, D)`` and ``Y``
    multi-hot ``(N, C)`` (array or DataFrame) or binary ``(N,)``.
    """
    aligned, names = align_label_columns({"train": train, "val": val, "test": test}, label_names)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (aligned[s] for s in SPLITS)
    Cs = sorted(float(c) for c in Cs)
    if not Cs:
        raise ValueError("Cs must not be empty")
    skipped_val = [n for n, ok in zip(names, evaluable_classes(y_val)) if not ok]
    skipped_test = [n for n, ok in zip(names, evaluable_classes(y_test)) if not ok]
    if len(skipped_val) == len(names):
        raise ValueError(
            "no class has both a positive and a negative example in the validation split, so C cannot be chosen "
            f"on validation (classes: {names})"
        )
    for split, skipped in (("validation", skipped_val), ("test", skipped_test)):
        if skipped:
            warnings.warn(
                f"classes with a single label value in the {split} split are left out of its macro AUROC: {skipped}",
                UserWarning,
                stacklevel=2,
            )
    runs: list[LinearProbeRun] = []
    cache: dict[bytes, tuple[float, float, float, dict[str, float], list[float], list[float], list[str]]] = {}
    for fraction in fractions:
        for seed in seeds:
            idx = stratified_fraction(y_train, fraction, seed=seed)
            key = np.asarray(idx, dtype=np.int64).tobytes()
            if key not in cache:
                x_sub, y_sub = x_train[idx], y_train[idx]
                scaler = StandardScaler().fit(x_sub)
                xs_sub, xs_val, xs_test = scaler.transform(x_sub), scaler.transform(x_val), scaler.transform(x_test)
                val_by_c, test_by_c, test_aurocs = [], [], []
                for C in Cs:
                    s_val, s_test = _fit_scores(xs_sub, y_sub, [xs_val, xs_test], C, max_iter)
                    val_by_c.append(per_class_auroc(y_val, s_val, names)[0])
                    macro, per_class = per_class_auroc(y_test, s_test, names)
                    test_by_c.append(macro)
                    test_aurocs.append(per_class)
                best = int(np.nanargmax(val_by_c))
                untrainable = [n for n, ok in zip(names, evaluable_classes(y_sub)) if not ok]
                cache[key] = (
                    Cs[best], val_by_c[best], test_by_c[best], test_aurocs[best], val_by_c, test_by_c,
                    untrainable,
                )
            C, val_auc, test_auc, test_auroc, val_by_c, test_by_c, untrainable = cache[key]
            y_sub = y_train[idx]
            runs.append(
                LinearProbeRun(
                    fraction=float(fraction),
                    seed=int(seed),
                    n_train=int(len(idx)),
                    C=C,
                    val_macro_auroc=val_auc,
                    test_macro_auroc=test_auc,
                    test_auroc=dict(test_auroc),
                    val_macro_auroc_by_C=list(val_by_c),
                    test_macro_auroc_by_C=list(test_by_c),
                    train_prevalence={n: float(p) for n, p in zip(names, y_sub.mean(axis=0))},
                    untrainable=list(untrainable),
                )
            )
    return LinearProbeResult(label_names=names, Cs=Cs, runs=runs, skipped_val=skipped_val, skipped_test=skipped_test)
