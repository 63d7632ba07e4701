"""Patient-level splits and prevalence-keeping training fractions.

Every split in cardiomm is made at the patient level: all records of one patient land in the same split, so
that no evaluation ever sees a patient the model was trained on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

DEFAULT_SPLIT_FRACTIONS: dict[str, float] = {"train": 0.8, "validation": 0.1, "test": 0.1}


def patient_level_split(
    patient_ids: Sequence[str] | np.ndarray,
    fractions: Mapping[str, float] = DEFAULT_SPLIT_FRACTIONS,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Split records into named splits so that each patient is in exactly one split.

    Patients (not records) are shuffled with ``seed`` and assigned to splits in proportion to ``fractions``.
    Returns sorted record indices per split.
    """
    ids = np.asarray(patient_ids).astype(str)
    if ids.ndim != 1 or len(ids) == 0:
        raise ValueError("patient_ids must be a non-empty 1-D sequence")
    total = float(sum(fractions.values()))
    if total <= 0 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"split fractions must be >= 0 and sum to > 0, got {dict(fractions)}")
    patients, inverse = np.unique(ids, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(patients))
    bounds = np.cumsum([f / total for f in fractions.values()]) * len(patients)
    bounds = np.round(bounds).astype(int)
    patient_split = np.empty(len(patients), dtype=np.int64)
    start = 0
    for k, stop in enumerate(bounds):
        patient_split[order[start:stop]] = k
        start = stop
    record_split = patient_split[inverse]
    return {name: np.flatnonzero(record_split == k) for k, name in enumerate(fractions)}


def fold_split(
    folds: Sequence[int] | np.ndarray,
    assignment: Mapping[str, Sequence[int]],
    patient_ids: Sequence[str] | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Split records by a fold column (e.g. PTB-XL ``strat_fold``): ``{"train": [1..8], "test": [10]}``.

    With ``patient_ids`` given, a patient whose records fall in several folds is moved whole to the split of
    their first record, so the result stays patient-level even for datasets with duplicate patients. Records
    whose fold is missing (NaN, None), not a whole number, or in no split of ``assignment`` are in no split.
    """
    split_of_fold = {int(f): name for name, fs in assignment.items() for f in fs}
    names = list(assignment)
    record_split = np.array(
        [names.index(split_of_fold[f]) if (f := _fold_number(v)) in split_of_fold else -1 for v in folds], dtype=int
    )
    if patient_ids is not None:
        ids = np.asarray(patient_ids).astype(str)
        first: dict[str, int] = {}
        for i, pid in enumerate(ids):
            if record_split[i] >= 0:
                first.setdefault(pid, record_split[i])
        record_split = np.array([first.get(pid, -1) if s >= 0 else -1 for pid, s in zip(ids, record_split)])
    return {name: np.flatnonzero(record_split == k) for k, name in enumerate(names)}


def _fold_number(value) -> int | None:
    """``value`` as a fold number, or None when it is missing or not a whole number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if np.isfinite(number) and number == int(number) else None


def stratified_fraction(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Choose ``fraction`` of the records so that every label keeps its prevalence (multi-label aware).

    Greedy iterative stratification: labels are visited from rarest to most common and, for each, positives
    are drawn until the label has ``round(fraction * count)`` of them (at least one where the label occurs);
    the rest of the budget is filled with records drawn at random, preferring those with no positive label
    still over its quota. Reproducible from ``seed``. Returns sorted indices.
    """
    y = np.asarray(labels)
    if y.ndim == 1:
        y = y[:, None]
    y = y > 0
    n = len(y)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    target = max(1, int(round(fraction * n)))
    counts = y.sum(0)
    quota = np.where(counts > 0, np.maximum(1, np.round(fraction * counts)), 0).astype(int)
    chosen = np.zeros(n, dtype=bool)
    for c in np.argsort(counts, kind="stable"):
        if counts[c] == 0:
            continue
        have = int((chosen & y[:, c]).sum())
        need = quota[c] - have
        if need <= 0:
            continue
        pool = np.flatnonzero(y[:, c] & ~chosen)
        # prefer records that push fewer other labels over their quota
        over = (y[pool] & ((chosen[:, None] & y).sum(0) >= quota)[None, :]).sum(1)
        pool = pool[np.lexsort((rng.random(len(pool)), over))]
        chosen[pool[:need]] = True
    remaining = target - int(chosen.sum())
    if remaining > 0:
        full = (chosen[:, None] & y).sum(0) >= quota
        rest = np.flatnonzero(~chosen)
        penalty = (y[rest] & full[None, :]).sum(1)
        rest = rest[np.lexsort((rng.random(len(rest)), penalty))]
        chosen[rest[:remaining]] = True
    return np.flatnonzero(chosen)
