"""Which ECGs form positive pairs in ECG-only contrastive learning, and batches made of such pairs.

The positive-pair strategies of the "good views" study and of the ECG-only baselines:

- same-ECG strategies (``cmsc``, ``cmlc``, ``cmsmlc``, ``simclr``, ``3kg``): two views of one ECG are positives;
  any batch of ECGs works, the views carry the positives.
- group strategies: two different ECGs are positives when they share a group: the patient (``pclr``, PCLR), the
  age band and sex (``demographics``), the set of rhythm labels (``rhythm``) — :class:`GroupCandidates`.
- ``attributes``: two ECGs are positives when their standardised wave attributes (heart rate, PR, QRS, QT, QTc,
  axes, ...) lie within a Euclidean distance ``threshold`` — :class:`AttributeNeighbours`.

For the strategies that pair different ECGs, :class:`PositivePairBatchSampler` builds every batch from anchors each
followed by one of its positive partners, so that every anchor has at least one positive in its batch. The order is
a function of ``(seed, epoch)`` only, as for every cardiomm sampler (exact resume, every process alike).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from .sampling import epoch_seed

STRATEGIES: tuple[str, ...] = ("cmsc", "cmlc", "cmsmlc", "simclr", "3kg", "pclr", "demographics", "rhythm",
                               "attributes")
SAME_ECG_STRATEGIES: tuple[str, ...] = ("cmsc", "cmlc", "cmsmlc", "simclr", "3kg")
GROUP_STRATEGIES: tuple[str, ...] = ("pclr", "demographics", "rhythm")

STRATEGY_OPTIONS: dict[str, tuple[str, ...]] = {
    **{s: () for s in SAME_ECG_STRATEGIES},
    "pclr": (),
    "demographics": ("age_band_years",),
    "rhythm": ("task",),
    "attributes": ("columns", "threshold", "max_neighbours"),
}
"""The pair options (experiment file ``data.positives``) each strategy accepts."""

MIMIC_MEASUREMENT_COLUMNS: tuple[str, ...] = ("rr_interval", "p_onset", "p_end", "qrs_onset", "qrs_end", "t_end",
                                              "p_axis", "qrs_axis", "t_axis")
"""Machine-measurement columns of MIMIC-IV-ECG (kept by its converter), in milliseconds and degrees."""

MIMIC_MISSING_VALUE = 29999.0
"""MIMIC-IV-ECG's machine measurements hold this value (or more) where the cart measured nothing."""

_SAMPLER_STREAM = 5
_QUERY_CHUNK = 8192  # neighbour queries per task


class PositiveCandidates:
    """The positive partners each row may be paired with (the interface :class:`PositivePairBatchSampler` uses).

    Attributes:
        anchors: the rows with at least one candidate partner, ascending (int64).
        num_rows: rows described.
        num_without_partner: rows with no candidate (never drawn), including :attr:`num_missing`.
        num_missing: rows whose key is unknown (no group id, a NaN attribute).
    """

    anchors: np.ndarray
    num_rows: int
    num_missing: int

    @property
    def num_without_partner(self) -> int:
        return self.num_rows - len(self.anchors)

    def candidates(self, index: int) -> np.ndarray:
        """The candidate partners of row ``index`` (int64, never ``index`` itself)."""
        raise NotImplementedError

    def draw_partners(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One partner for each of ``anchors`` (rows of :attr:`anchors`), uniform over its candidates."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_rows


def group_codes(group_ids: Sequence[Hashable] | np.ndarray) -> np.ndarray:
    """Integer codes (int64) of ``group_ids``: equal ids get equal codes, ``None``/NaN get -1.

    Codes number the distinct ids in order of first appearance, so they depend only on the sequence, never on
    Python's string hashing (which differs between processes).
    """
    import pandas as pd

    if isinstance(group_ids, np.ndarray) and group_ids.ndim == 1 and group_ids.dtype.kind in "biuf":
        values = group_ids
    else:
        values = np.empty(len(group_ids), dtype=object)
        values[:] = list(group_ids)  # element-wise: tuples stay keys instead of becoming a 2-D array
    codes, _ = pd.factorize(values, use_na_sentinel=True)  # None and NaN -> -1
    codes = np.asarray(codes, dtype=np.int64)
    return codes


class GroupCandidates(PositiveCandidates):
    """Positives share a group id: the candidates of row ``i`` are the other rows with ``group_ids[i]``.

    Args:
        group_ids: one hashable id per row (a patient id, an ``(age band, sex)`` tuple, ...); ``None`` or NaN:
            the row belongs to no group and is never drawn.

    Attributes:
        codes: the integer group code of each row (-1: no group), usable as the model's ``positive_ids``.
        num_groups: distinct group ids.
    """

    def __init__(self, group_ids: Sequence[Hashable] | np.ndarray) -> None:
        self.codes = group_codes(group_ids)
        self.num_rows = len(self.codes)
        grouped = np.flatnonzero(self.codes >= 0)
        self.num_missing = self.num_rows - len(grouped)
        self.num_groups = int(self.codes.max()) + 1 if len(grouped) else 0
        self._sizes = np.bincount(self.codes[grouped], minlength=self.num_groups).astype(np.int64)
        self._starts = np.concatenate([[0], np.cumsum(self._sizes)])[:-1].astype(np.int64)
        # members of each group, contiguous and ascending; the position of each row inside its group
        self._members = grouped[np.argsort(self.codes[grouped], kind="stable")]
        self._position = np.full(self.num_rows, -1, dtype=np.int64)
        self._position[self._members] = np.arange(len(self._members)) - np.repeat(self._starts, self._sizes)
        self.anchors = grouped[self._sizes[self.codes[grouped]] >= 2]

    def candidates(self, index: int) -> np.ndarray:
        code = self.codes[index]
        if code < 0:
            return np.empty(0, dtype=np.int64)
        members = self._members[self._starts[code] : self._starts[code] + self._sizes[code]]
        return members[members != index]

    def draw_partners(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        anchors = np.asarray(anchors, dtype=np.int64)
        codes = self.codes[anchors]
        # uniform over the group minus the anchor: draw among size - 1 slots and skip the anchor's own slot
        slot = rng.integers(0, self._sizes[codes] - 1)
        slot += slot >= self._position[anchors]
        return self._members[self._starts[codes] + slot]


def _available_cpus() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


class AttributeNeighbours(PositiveCandidates):
    """Positives lie close in attribute space: the candidates of row ``i`` are its (up to) ``max_neighbours``
    nearest other rows within Euclidean distance ``threshold`` of ``attributes[i]``.

    Capping the candidates keeps the index small and bounded (dense regions of attribute space hold thousands of
    rows within the threshold) while every candidate still satisfies the strategy's condition
    ``||a_i - a_j|| <= threshold``: sampling is uniform over the nearest ones rather than over all of them.
    Candidates are not symmetric (``j`` may be a candidate of ``i`` but not the reverse).

    The neighbours come from an exact k-nearest-neighbour search in a KD-tree (scikit-learn ``KDTree``), built
    once. On 800k ECGs (:func:`neighbour_index_cost`) it takes about 110 CPU-seconds at 7 attributes and about
    20 CPU-minutes at 11 (the search slows with the dimension); a ball tree is about ten times slower at 7
    dimensions and brute force is quadratic. The queries run in tree order (neighbouring queries touch the same
    leaves, about a quarter faster) on ``num_threads`` threads (the search releases the GIL). Candidates are
    stored CSR-style: ``indptr`` (int64, ``num_rows + 1``) and ``indices`` (int32, nearest first).

    Args:
        attributes: ``(N, A)`` standardised attributes; a row with a NaN (or infinite) value is never an anchor
            nor a partner.
        threshold: the distance ``h`` below which (inclusive) two ECGs are positives.
        max_neighbours: most candidates kept per row.
        progress: show a progress bar over the queries.
        num_threads: threads for the queries (default: every CPU this process may use).
    """

    def __init__(self, attributes: np.ndarray, threshold: float, max_neighbours: int = 32, progress: bool = False,
                 num_threads: int | None = None) -> None:
        from sklearn.neighbors import KDTree
        from tqdm.auto import tqdm

        values = np.asarray(attributes, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] == 0:
            raise ValueError(f"attributes must be a 2-D array (ECGs, attributes), got shape {values.shape}")
        if not (math.isfinite(threshold) and threshold >= 0):
            raise ValueError(f"threshold must be a finite number >= 0, got {threshold}")
        if max_neighbours < 1:
            raise ValueError(f"max_neighbours must be at least 1, got {max_neighbours}")
        self.threshold = float(threshold)
        self.max_neighbours = int(max_neighbours)
        self.num_rows = len(values)
        valid = np.flatnonzero(np.isfinite(values).all(axis=1))
        self.num_missing = self.num_rows - len(valid)
        counts = np.zeros(self.num_rows, dtype=np.int64)
        indices = np.empty(0, dtype=np.int32)
        k = min(self.max_neighbours + 1, len(valid))
        if k >= 2:
            points = np.ascontiguousarray(values[valid])
            tree = KDTree(points, leaf_size=40)
            query_order = np.asarray(tree.get_arrays()[1])  # the points in leaf order
            chunks = np.array_split(query_order, max(1, math.ceil(len(points) / _QUERY_CHUNK)))
            bar = tqdm(total=len(points), desc="attribute neighbours", unit="ecg", disable=not progress)

            def neighbours(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                distance, index = tree.query(points[chunk], k=k)
                # drop the row itself (ties at distance 0 may put it anywhere among them), keep the nearest
                # max_neighbours within the threshold
                keep = (index != chunk[:, None]) & (distance <= self.threshold)
                keep &= np.cumsum(keep, axis=1) <= self.max_neighbours
                return keep.sum(axis=1), index[keep].astype(np.int32)

            threads = num_threads or _available_cpus()
            results: list[tuple[np.ndarray, np.ndarray]] = []
            with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
                for chunk, result in zip(chunks, pool.map(neighbours, chunks)):
                    results.append(result)
                    bar.update(len(chunk))
            bar.close()
            # back from leaf order to row order: lay each query's neighbours out by row
            chunk_counts = np.concatenate([c for c, _ in results])
            flat = np.concatenate([i for _, i in results])
            valid_counts = np.zeros(len(points), dtype=np.int64)
            valid_counts[query_order] = chunk_counts
            counts[valid] = valid_counts
            source_start = np.concatenate([[0], np.cumsum(chunk_counts)[:-1]])
            start_in_row_order = np.zeros(len(points), dtype=np.int64)
            start_in_row_order[query_order] = source_start
            take = np.repeat(start_in_row_order - np.concatenate([[0], np.cumsum(valid_counts)[:-1]]), valid_counts)
            take += np.arange(len(flat))
            indices = valid.astype(np.int32)[flat[take]]
        self.indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.indices = indices
        self.anchors = np.flatnonzero(counts > 0)

    @property
    def nbytes(self) -> int:
        """Bytes held by the candidate arrays."""
        return int(self.indptr.nbytes + self.indices.nbytes)

    def candidates(self, index: int) -> np.ndarray:
        return self.indices[self.indptr[index] : self.indptr[index + 1]].astype(np.int64)

    def draw_partners(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        anchors = np.asarray(anchors, dtype=np.int64)
        start = self.indptr[anchors]
        slot = rng.integers(0, self.indptr[anchors + 1] - start)
        return self.indices[start + slot].astype(np.int64)


class PositivePairBatchSampler(Sampler[list[int]]):
    """Batches of positive pairs: ``batch_size // 2`` anchors, each immediately followed by one partner drawn
    uniformly from its candidates (never itself).

    Every row with at least one candidate is an anchor exactly once per epoch, in an order shuffled from
    ``(seed, epoch)``; rows without candidates are not drawn (:attr:`num_without_partner`). A row may also appear
    as the partner of other anchors, and a batch may hold further positives by chance (the loss's positive mask
    takes care of them). With ``shuffle=False`` the anchors keep their row order and the partners are drawn from
    ``seed`` alone, so the batches are the same at every epoch (evaluation).

    Args:
        candidates: the positive candidates of every row.
        batch_size: rows per batch (an odd size gives batches of ``batch_size - 1`` rows).
        seed: the run's seed.
        drop_last: drop the last batch when it holds fewer than ``batch_size // 2`` anchors.
        shuffle: shuffle the anchors (training) or keep them in row order (evaluation).
    """

    def __init__(self, candidates: PositiveCandidates, batch_size: int, seed: int = 0, drop_last: bool = True,
                 shuffle: bool = True) -> None:
        if batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (an anchor and its partner), got {batch_size}")
        self.candidates = candidates
        self.batch_size = batch_size
        self.pairs_per_batch = batch_size // 2
        self.seed = seed
        self.drop_last = drop_last
        self.shuffle = shuffle
        self.epoch = 0
        self.num_anchors = len(candidates.anchors)
        self.num_without_partner = candidates.num_without_partner
        if self.num_anchors == 0:
            raise ValueError(f"no ECG has a positive partner ({candidates.num_rows} ECGs, "
                             f"{candidates.num_missing} without a group or attribute value)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """The anchors of the current epoch in batch order and the partner drawn for each."""
        rng = np.random.default_rng(epoch_seed(self.seed, self.epoch if self.shuffle else 0, stream=_SAMPLER_STREAM))
        anchors = self.candidates.anchors
        anchors = rng.permutation(anchors) if self.shuffle else anchors
        return anchors, self.candidates.draw_partners(anchors, rng)

    def batches(self) -> list[list[int]]:
        """The batches of the current epoch."""
        anchors, partners = self.pairs()
        rows = np.empty(2 * len(anchors), dtype=np.int64)
        rows[0::2], rows[1::2] = anchors, partners
        size = 2 * self.pairs_per_batch
        full = len(rows) // size
        batches = rows[: full * size].reshape(full, size).tolist()
        if len(rows) > full * size and not self.drop_last:
            batches.append(rows[full * size :].tolist())
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_anchors // self.pairs_per_batch
        return -(-self.num_anchors // self.pairs_per_batch)


def check_options(strategy: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """Check ``strategy`` and its pair ``options``; returns the options (a dict, ``{}`` for ``None``)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown positive-pair strategy {strategy!r}; strategies: {', '.join(STRATEGIES)}")
    options = dict(options or {})
    accepted = STRATEGY_OPTIONS[strategy]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for positive-pair strategy "
                         f"{strategy!r}; accepted: {', '.join(accepted) if accepted else 'none'}")
    return options


def _columns(dataset: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    """``names`` columns of ``dataset`` (a ``datasets.Dataset``, a DataFrame or a dict of columns) as arrays."""
    if hasattr(dataset, "select_columns") and hasattr(dataset, "with_format"):
        table = dataset.select_columns(list(names)).with_format("numpy")[:]
        return {n: np.asarray(table[n]) for n in names}
    return {n: np.asarray(dataset[n]) for n in names}


def _column_names(dataset: Any) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is None:
        names = list(dataset.columns) if hasattr(dataset, "columns") else list(dataset.keys())
    return list(names)


def _require_columns(dataset: Any, names: Sequence[str], what: str) -> None:
    have = _column_names(dataset)
    missing = [n for n in names if n not in have]
    if missing:
        raise ValueError(f"{what} needs column(s) {', '.join(missing)}; the dataset has: {', '.join(have)}")


def _keys_from_unique(inverse: np.ndarray, keys: list[Any]) -> np.ndarray:
    table = np.empty(len(keys), dtype=object)
    table[:] = keys
    return table[inverse]


def group_ids(dataset: Any, strategy: str, options: dict[str, Any] | None = None) -> np.ndarray | None:
    """The group id of each ECG of ``dataset`` for a group strategy (``None`` for the others).

    - ``pclr``: the patient id (two ECGs of one patient are positives);
    - ``demographics``: ``(age band, sex)`` with bands of ``options["age_band_years"]`` years (default 10:
      ``(6, "F")`` is a woman of 60 to 70);
    - ``rhythm``: the tuple of positive label indices of task ``options["task"]`` (default ``"rhythm"``).

    An unknown age, sex, patient id or an ECG without any positive label has no group (``None``). Reads only the
    columns it needs (never the ECG signals). Returns an object array, one id per ECG.
    """
    options = check_options(strategy, options)
    if strategy not in GROUP_STRATEGIES:
        return None
    n = len(dataset)
    if strategy == "pclr":
        _require_columns(dataset, ["patient_id"], "the pclr strategy")
        patients = _columns(dataset, ["patient_id"])["patient_id"].astype(str)
        ids = np.empty(n, dtype=object)
        ids[:] = list(patients)
        ids[(patients == "") | (patients == "None")] = None
        return ids
    if strategy == "demographics":
        band = options.get("age_band_years", 10)
        if not (isinstance(band, (int, float)) and not isinstance(band, bool) and band > 0):
            raise ValueError(f"age_band_years must be a positive number, got {band!r}")
        _require_columns(dataset, ["age", "sex"], "the demographics strategy")
        cols = _columns(dataset, ["age", "sex"])
        age = cols["age"].astype(np.float64)
        sex = cols["sex"].astype(str)
        known = np.isfinite(age) & np.isin(sex, ["M", "F"])
        bands = np.where(known, np.floor(np.where(known, age, 0) / band), 0).astype(np.int64)
        pairs = np.stack([bands, (sex == "F").astype(np.int64)], axis=1)
        unique, inverse = np.unique(pairs[known], axis=0, return_inverse=True)
        ids = np.full(n, None, dtype=object)
        ids[known] = _keys_from_unique(inverse.ravel(), [(int(b), "F" if f else "M") for b, f in unique])
        return ids
    task = options.get("task", "rhythm")
    column = f"labels_{task}"
    have = _column_names(dataset)
    if column not in have:
        tasks = [c[len("labels_"):] for c in have if c.startswith("labels_")]
        raise ValueError(f"the rhythm strategy needs label column {column!r} (task {task!r}); "
                         f"tasks of the dataset: {', '.join(tasks) if tasks else 'none'}")
    labels = _columns(dataset, [column])[column]
    labels = np.asarray(labels, dtype=np.int64).reshape(n, -1) > 0
    labelled = labels.any(axis=1)
    unique, inverse = np.unique(labels[labelled], axis=0, return_inverse=True)
    ids = np.full(n, None, dtype=object)
    ids[labelled] = _keys_from_unique(inverse.ravel(), [tuple(int(c) for c in np.flatnonzero(u)) for u in unique])
    return ids


def _mimic_attributes(table: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """Heart rate, PR, QRS, QT, QTc (Bazett) and the P/QRS/T axes from MIMIC-IV-ECG machine measurements."""
    m = {}
    for name, values in table.items():
        v = np.asarray(values, dtype=np.float64)
        m[name] = np.where(v >= MIMIC_MISSING_VALUE, np.nan, v)
    rr = np.where(m["rr_interval"] > 0, m["rr_interval"], np.nan)
    derived: dict[str, np.ndarray] = {"heart_rate": 60_000.0 / rr}
    if "p_onset" in m and "qrs_onset" in m:
        derived["pr_interval"] = m["qrs_onset"] - m["p_onset"]
    if "qrs_onset" in m and "qrs_end" in m:
        derived["qrs_duration"] = m["qrs_end"] - m["qrs_onset"]
    if "qrs_onset" in m and "t_end" in m:
        derived["qt_interval"] = m["t_end"] - m["qrs_onset"]
        derived["qtc"] = derived["qt_interval"] / np.sqrt(rr / 1000.0)
    for axis in ("p_axis", "qrs_axis", "t_axis"):
        if axis in m:
            derived[axis] = m[axis]
    names = list(derived)
    return np.stack([derived[n] for n in names], axis=1), names


def wave_attributes(dataset: Any, columns: Sequence[str] | str = "auto", sampling_rate: float | None = None,
                    progress: bool = True, lead_names: Sequence[str] | None = None,
                    batch_size: int = 256) -> tuple[np.ndarray, list[str]]:
    """The raw (not standardised) wave attributes of every ECG of ``dataset``: ``(values (N, A), names)``.

    ``columns="auto"`` takes, in this order:

    1. the dataset's ``measured_<name>`` columns for the names of :data:`cardiomm.synthetic.WAVE_ATTRIBUTES`
       (what a measurement program reads from the signal; never the generator's ``true_*`` values), unless they
       are all empty (a synthetic cohort written without ``measure``);
    2. else MIMIC-IV-ECG machine measurements (``rr_interval``, ``p_onset``, ``qrs_onset``, ``qrs_end``,
       ``t_end``, ``p_axis``, ``qrs_axis``, ``t_axis``): heart rate, PR, QRS duration, QT, QTc (Bazett) and the
       axes, with the carts' missing-value code (29999) read as NaN;
    3. else the attributes measured here by delineating the ``ecg`` column
       (:func:`cardiomm.synthetic.cohort.measure_wave_attributes`, which needs ``sampling_rate`` and the 12
       standard leads: ``lead_names`` gives the dataset's lead order when it is not the standard one), read
       ``batch_size`` ECGs at a time.

    An explicit list of column names is read as is. NaN marks a value that could not be measured.
    """
    from ..synthetic.ecg import WAVE_ATTRIBUTES

    have = _column_names(dataset)
    if not isinstance(columns, str):
        names = list(columns)
        if not names:
            raise ValueError("columns must name at least one attribute column")
        missing = [c for c in names if c not in have]
        if missing:
            raise ValueError(f"attribute column(s) {', '.join(missing)} not in the dataset; "
                             f"it has: {', '.join(have)}")
        table = _columns(dataset, names)
        return np.stack([np.asarray(table[c], dtype=np.float64) for c in names], axis=1), names
    if columns != "auto":
        raise ValueError(f"columns must be 'auto' or a list of column names, got {columns!r}")
    measured = [f"measured_{a}" for a in WAVE_ATTRIBUTES if f"measured_{a}" in have]
    if measured:
        table = _columns(dataset, measured)
        values = np.stack([np.asarray(table[c], dtype=np.float64) for c in measured], axis=1)
        if np.isfinite(values).any():  # all empty: a dataset written without measuring; measure it below
            return values, measured
    if "rr_interval" in have and "qrs_onset" in have:
        values, names = _mimic_attributes(_columns(dataset, [c for c in MIMIC_MEASUREMENT_COLUMNS if c in have]))
        if np.isfinite(values).any():
            return values, names
    return _delineated_attributes(dataset, have, sampling_rate, progress, lead_names, batch_size)


def _delineated_attributes(dataset: Any, have: list[str], sampling_rate: float | None, progress: bool,
                           lead_names: Sequence[str] | None, batch_size: int) -> tuple[np.ndarray, list[str]]:
    from tqdm.auto import tqdm

    from ..processing.ecg_records import STANDARD_12_LEADS, canonical_lead_name
    from ..synthetic.cohort import measure_wave_attributes
    from ..synthetic.ecg import WAVE_ATTRIBUTES

    if "ecg" not in have:
        raise ValueError("the dataset has no wave-attribute columns (measured_* or MIMIC-IV-ECG machine "
                         f"measurements) and no 'ecg' column to measure them from; it has: {', '.join(have)}")
    if sampling_rate is None:
        raise ValueError("measuring wave attributes from the 'ecg' column needs the dataset's sampling_rate")
    rows = list(range(12))
    if lead_names is not None:
        canonical = [canonical_lead_name(n) for n in lead_names]
        absent = [lead for lead in STANDARD_12_LEADS if lead not in canonical]
        if absent:
            raise ValueError(f"measuring wave attributes needs the 12 standard leads; missing: {', '.join(absent)} "
                             f"(the dataset's leads: {', '.join(lead_names)})")
        rows = [canonical.index(lead) for lead in STANDARD_12_LEADS]
    signals = dataset.select_columns(["ecg"]).with_format("numpy") if hasattr(dataset, "select_columns") else None
    n = len(dataset)
    out = np.full((n, len(WAVE_ATTRIBUTES)), np.nan)
    bar = tqdm(total=n, desc="measuring wave attributes", unit="ecg", disable=not progress)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        batch = np.asarray(signals[start:stop]["ecg"] if signals is not None else dataset["ecg"][start:stop])
        if batch.ndim != 3 or batch.shape[1] < 12:
            raise ValueError(f"measuring wave attributes needs 12-lead ECGs, got ECGs of shape {batch.shape[1:]}")
        frame = measure_wave_attributes(batch[:, rows], int(round(sampling_rate)), progress=False)
        out[start:stop] = frame[list(WAVE_ATTRIBUTES)].to_numpy(dtype=np.float64)
        bar.update(stop - start)
    bar.close()
    return out, list(WAVE_ATTRIBUTES)


def standardise(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Z-score each column of ``values`` with the NaN-ignoring mean and std of ``reference``'s column (a constant
    or empty column divides by 1). NaN stays NaN."""
    values = np.asarray(values, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if values.ndim != 2 or reference.ndim != 2 or values.shape[1] != reference.shape[1]:
        raise ValueError(f"values {values.shape} and reference {reference.shape} must be 2-D with the same "
                         "number of columns")
    with warnings.catch_warnings():  # an all-NaN column: mean 0, std 1
        warnings.simplefilter("ignore", RuntimeWarning)
        finite = np.where(np.isfinite(reference), reference, np.nan)
        mean, std = np.nanmean(finite, axis=0), np.nanstd(finite, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    return (values - mean) / std


def _patient_ids(patients: Any) -> np.ndarray:
    if hasattr(patients, "column_names") or hasattr(patients, "columns"):
        _require_columns(patients, ["patient_id"], "checking patient overlap")
        patients = _columns(patients, ["patient_id"])["patient_id"]
    ids = np.array([str(p) for p in patients if p is not None], dtype=str)
    return np.unique(ids[ids != ""])


def check_disjoint_patients(train: Any, test: Any) -> None:
    """Raise ``ValueError`` naming the patients that ``train`` and ``test`` share (datasets with a
    ``patient_id`` column, or sequences of patient ids). ECGs without a patient id are not compared."""
    shared = np.intersect1d(_patient_ids(train), _patient_ids(test))
    if len(shared):
        shown = ", ".join(shared[:10].tolist()) + (f" and {len(shared) - 10} more" if len(shared) > 10 else "")
        raise ValueError(f"{len(shared)} patient(s) are in both the training and the held-out ECGs: {shown}")


def _synthetic_attributes(num_ecgs: int, num_attributes: int, rng: np.random.Generator) -> np.ndarray:
    """Standardised attributes of a mixture of rhythm-like clusters: a large normal cluster, a few smaller ones
    (slow, fast, irregular rhythms, conduction delays) with their own spread and correlated attributes."""
    weights = np.array([0.55, 0.12, 0.1, 0.08, 0.06, 0.04, 0.03, 0.02])
    centres = rng.normal(0.0, 1.2, (len(weights), num_attributes))
    centres[0] = 0.0
    component = rng.choice(len(weights), size=num_ecgs, p=weights)
    mixing = np.stack([np.eye(num_attributes) + 0.3 * rng.normal(size=(num_attributes, num_attributes))
                       for _ in weights])
    spread = rng.uniform(0.3, 0.8, (len(weights), 1))
    noise = rng.normal(size=(num_ecgs, num_attributes))
    values = centres[component] + spread[component] * np.einsum("na,nab->nb", noise, mixing[component])
    return standardise(values, values)


def neighbour_index_cost(num_ecgs: int = 800_000, num_attributes: int = 7, threshold: float = 1.0,
                         max_neighbours: int = 32, seed: int = 0, batch_size: int = 64,
                         progress: bool = False) -> dict[str, float]:
    """Cost of the wave-attribute strategy's neighbour index on ``num_ecgs`` random standardised attributes (a
    Gaussian mixture shaped like rhythm clusters): build time, time to draw one epoch of ``batch_size`` batches,
    memory of the candidate arrays, mean candidates per ECG and the fraction of ECGs without a partner.
    ``build_cpu_s`` is the build's CPU time over all threads (what the build costs when cores are shared)."""
    attributes = _synthetic_attributes(num_ecgs, num_attributes, np.random.default_rng(seed))
    start, start_cpu = time.perf_counter(), time.process_time()
    neighbours = AttributeNeighbours(attributes, threshold, max_neighbours=max_neighbours, progress=progress)
    build_s, build_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    sampler = PositivePairBatchSampler(neighbours, batch_size=batch_size, seed=seed)
    start = time.perf_counter()
    batches = sampler.batches()
    epoch_s = time.perf_counter() - start
    assert len(batches) == len(sampler)
    return {
        "num_ecgs": float(num_ecgs),
        "num_attributes": float(num_attributes),
        "build_s": build_s,
        "build_cpu_s": build_cpu_s,
        "epoch_sampling_s": epoch_s,
        "memory_mb": neighbours.nbytes / 2**20,
        "mean_candidates": float(len(neighbours.indices) / max(num_ecgs, 1)),
        "fraction_without_partner": neighbours.num_without_partner / max(num_ecgs, 1),
    }
