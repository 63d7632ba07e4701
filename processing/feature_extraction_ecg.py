"""ECG feature extractor: the preprocessing that turns raw ECG records into model inputs.

The extractor is saved with every checkpoint (``preprocessor_config.json`` plus this file and
``ecg_records.py``), so a model always sees its inputs prepared exactly as in training.

Per record, in this order:

1. **Leads by name.** Input leads are matched to the configured ``lead_names`` through
   :func:`canonical_lead_name` (``"AVR"``/``"avr"`` → ``"aVR"``, ``"v1"`` → ``"V1"``). Configured leads the
   record lacks are zeros with ``lead_mask`` False; extra known leads (other standard leads, Frank X/Y/Z) are
   dropped; any other name is an error.
2. **Non-finite repair** along the time axis of each lead: a NaN/Inf sample becomes the mean of the nearest
   finite samples before and after it in the same lead (the one available side at the record edges). A lead
   with no finite sample is absent; so is a lead that is flat (peak-to-peak at most ``epsilon`` mV) over the
   whole record, with a :class:`LeadOffWarning` unless it is all zeros (how datasets store a lead that was not
   recorded). A record with no lead left is an error.
3. **Resampling** to ``sampling_rate`` with a polyphase anti-aliasing filter (``ecg_records.resample_signal``).
   Records must be sampled within ``ECG_SAMPLING_RATE_RANGE`` and give at least ``min_length`` samples at
   ``sampling_rate``.
4. **Normalisation** over the present leads and the whole (uncropped) record at ``sampling_rate``, computed in
   float64:

   - ``"zscore"``: per lead, ``(x - mean) / max(std, epsilon)``;
   - ``"minmax"``: per record (all present leads together), ``(x - min) / max(max - min, epsilon)``, so values
     lie in [0, 1];
   - ``"none"``: values stay in millivolts.

   Absent leads stay exactly zero in every mode. A value that does not fit float32 is an error.
5. **Length**: a random or centred window of ``crop_length`` samples, ``num_windows`` windows at
   ``window_stride`` (test-time windows), or the full record. Missing time samples are filled with
   ``padding_value`` and marked 0 in ``time_mask``.
6. **Presence per window.** In each returned window a lead is present only if the window holds finite samples
   of it that are not flat; otherwise it is zero there and False in ``lead_mask`` (a flat lead also raises a
   :class:`LeadOffWarning`). With ``crop="windows"``, ``lead_mask`` is per window. A window with samples but
   no present lead is an error.

Only the returned windows are resampled (the record is cut with a margin wider than the resampling filter, so
the values equal those of resampling the whole record); the whole-record statistics of long records are
gathered piece by piece, so cropping a long record takes memory that does not grow with its length.

Records are processed in batches: lead selection, repair, resampling, statistics, cropping and presence run over
the batch axis at once. A (batch, leads, time) array or tensor with one sampling rate and one set of lead names, as
a collator stacks it, is one batch; a list of records (whose lengths, lead sets and rates may differ) is grouped
into batches of the records that share sampling rate, length and lead names, a single record being a batch of one;
a batch larger than ``BATCH_SAMPLES`` is cut into consecutive batches of that size, so that its arrays stay in cache.
Each record gets exactly the outputs, warnings and errors it gets alone (naming it by its place in the input), and
warnings and errors come in the order of the records.

Arrays are taken to be in millivolts; files are converted to millivolts from their header units.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from transformers import BatchFeature, FeatureExtractionMixin

from .ecg_records import (
    ECG_SAMPLING_RATE_RANGE,
    FRANK_LEADS,
    STANDARD_12_LEADS,
    canonical_lead_name,
    read_ecg_record,
    resample_window,
    resampled_chunks,
    resampled_length,
    resampling_factors,
)

NORMALIZATIONS: tuple[str, ...] = ("zscore", "minmax", "none")
CROP_MODES: tuple[str, ...] = ("random", "center", "windows", "none")
LAYOUTS: tuple[str, ...] = ("leads_first", "time_first")

# Records longer than this (samples at the target rate) have their normalisation statistics gathered in pieces.
STATISTICS_CHUNK: int = 2**16
# Records are processed in batches of at most this many input samples (records x leads x time), one record at
# the least: a batch's arrays stay in the processor's cache.
BATCH_SAMPLES: int = 2**18

ArrayLike = Union[np.ndarray, torch.Tensor]
ECGInput = Union[ArrayLike, str, os.PathLike, Sequence[ArrayLike], Sequence[Union[str, os.PathLike]]]
SeedLike = Union[int, np.random.Generator, torch.Generator, None]


class LeadOffWarning(UserWarning):
    """A lead is flat (constant) where it should carry signal; it is marked absent in ``lead_mask``."""


def repair_non_finite(signal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replace NaN/Inf samples along the time (last) axis of a (leads, time) or (batch, leads, time) signal.

    Each non-finite sample becomes the mean of the nearest finite samples before and after it in the same lead,
    or the one available neighbour at the edges. Returns the repaired signal and a per-lead bool array that is
    False for leads with no finite sample at all (those leads are returned as zeros).
    """
    finite = np.isfinite(signal)
    if finite.all():
        return signal, np.ones(signal.shape[:-1], dtype=bool)
    n_time = signal.shape[-1]
    index = np.arange(n_time)
    prev_idx = np.maximum.accumulate(np.where(finite, index, -1), axis=-1)
    next_idx = np.minimum.accumulate(np.where(finite, index, n_time)[..., ::-1], axis=-1)[..., ::-1]
    has_prev, has_next = prev_idx >= 0, next_idx < n_time
    safe = np.where(finite, signal, 0.0)
    prev_val = np.take_along_axis(safe, np.clip(prev_idx, 0, n_time - 1), axis=-1)
    next_val = np.take_along_axis(safe, np.clip(next_idx, 0, n_time - 1), axis=-1)
    fill = np.where(has_prev & has_next, 0.5 * (prev_val + next_val), np.where(has_prev, prev_val, next_val))
    repaired = np.where(finite, signal, np.where(has_prev | has_next, fill, 0.0)).astype(signal.dtype, copy=False)
    return repaired, finite.any(axis=-1)


def _sum_of_squares(centred: np.ndarray, **kwargs: Any) -> np.ndarray:
    """Per-row sum of squares over the last axis of a (..., time) array (one einsum over all rows)."""
    rows = centred.reshape(-1, centred.shape[-1])
    return np.einsum("lt,lt->l", rows, rows, **kwargs).reshape(centred.shape[:-1])


def normalization_statistics(
    chunks: Iterable[np.ndarray], normalization: str, epsilon: float, present: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-lead ``(offset, scale)`` (float64) so that ``(x - offset) / scale`` is the normalised signal.

    ``chunks`` are consecutive (leads, time) pieces of one signal, or (batch, leads, time) pieces of a batch of
    signals of one length; the statistics are those of each whole signal, accumulated in float64 (values near the
    float32 limit do not overflow). ``present`` (bool, (leads,) or (batch, leads)) marks the leads a signal has:
    ``"minmax"`` takes its range over those leads only, and the statistics of the other leads are not used. Each
    lead of each signal gets exactly the statistics it gets alone.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}")
    count, mean, m2, low, high, shape = 0, None, None, math.inf, -math.inf, (0,)
    for chunk in chunks:
        shape, size = chunk.shape[:-1], chunk.shape[-1]
        mask = np.ones(shape, dtype=bool) if present is None else np.broadcast_to(present, shape)
        if size == 0 or normalization == "none":
            continue
        if normalization == "zscore":
            chunk_mean = chunk.mean(axis=-1, dtype=np.float64)
            with np.errstate(over="ignore", invalid="ignore"):
                centred = chunk - chunk_mean.astype(chunk.dtype)[..., None]
                chunk_m2 = _sum_of_squares(centred, dtype=np.float64)
            # values near the float32 limit: centre that signal's leads in float64
            redo = (~np.isfinite(chunk_m2) & mask).any(axis=-1)
            if redo.any() and chunk.ndim == 2:
                chunk_m2 = _sum_of_squares(chunk.astype(np.float64) - chunk_mean[:, None])
            elif redo.any():
                chunk_m2[redo] = _sum_of_squares(chunk[redo].astype(np.float64) - chunk_mean[redo][..., None])
            if count == 0:
                mean, m2 = chunk_mean, chunk_m2
            else:  # Chan et al.: merge the two partial means and sums of squared deviations
                delta = chunk_mean - mean
                total = count + size
                mean = mean + delta * (size / total)
                m2 = m2 + chunk_m2 + np.square(delta) * (count * size / total)
        else:
            lead_low = np.where(mask, chunk.min(axis=-1), np.inf).min(axis=-1).astype(np.float64)
            lead_high = np.where(mask, chunk.max(axis=-1), -np.inf).max(axis=-1).astype(np.float64)
            low, high = np.minimum(low, lead_low), np.maximum(high, lead_high)
        count += size
    if normalization == "none" or count == 0:
        return np.zeros(shape), np.ones(shape)
    if normalization == "zscore":
        return mean, np.maximum(np.sqrt(m2 / count), epsilon)
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    offset = np.broadcast_to(low[..., None], shape)
    scale = np.broadcast_to(np.maximum(high - low, epsilon)[..., None], shape)
    return offset.copy(), scale.copy()


def normalize_signal(signal: np.ndarray, normalization: str, epsilon: float) -> np.ndarray:
    """Normalise a (present leads, time) signal: per-lead ``"zscore"``, per-record ``"minmax"`` or ``"none"``."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}")
    if normalization == "none":
        return signal
    offset, scale = normalization_statistics([signal], normalization, epsilon)
    values = (np.asarray(signal, dtype=np.float64) - offset[:, None]) / scale[:, None]
    return values.astype(np.float32)


@dataclass
class _RawBatch:
    members: list[int]  # positions of its records in the input
    names: list[str]
    signal: np.ndarray  # (batch, leads, time) float32, mV
    sampling_rate: float
    lead_names: list[str] | None


@dataclass
class _PreparedBatch:
    members: list[int]  # positions of its records in the input
    names: list[str]
    signal: np.ndarray  # (batch, selected leads, time) float32, mV, non-finite samples repaired
    finite: np.ndarray | None  # (batch, selected leads, time) bool, None when every sample is finite
    rows: np.ndarray  # rows of ``input_values`` the selected leads go to
    leads: list[str]  # their names
    usable: np.ndarray  # (batch, selected leads) bool: leads with finite samples that are not flat
    sampling_rate: float
    length: int  # samples at the target rate


# What the preparation finds in one record, in the order it is found: a LeadOffWarning message, or its error.
_Finding = Union[str, ValueError]


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def _check_sampling_rate(rate: Any, name: str) -> None:
    if rate is None or isinstance(rate, bool) or not isinstance(rate, (int, float, np.number)) or not (
        math.isfinite(rate) and rate > 0
    ):
        raise ValueError(f"{name}: sampling_rate must be given as a positive number, got {rate!r}")
    low, high = ECG_SAMPLING_RATE_RANGE
    if not low <= rate <= high:
        raise ValueError(
            f"{name}: sampling rate {rate:g} Hz is outside the range of ECG recordings ({low:g}-{high:g} Hz)"
        )


def _peak_to_peak(signal: np.ndarray, finite: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per lead: whether any sample is finite, and the peak-to-peak amplitude (float64) of the finite samples."""
    if signal.shape[-1] == 0:
        return np.zeros(signal.shape[:-1], bool), np.zeros(signal.shape[:-1])
    if finite is None:
        return np.ones(signal.shape[:-1], bool), signal.max(-1).astype(np.float64) - signal.min(-1).astype(np.float64)
    has = finite.any(-1)
    high = np.where(finite, signal, -np.inf).max(-1).astype(np.float64)
    low = np.where(finite, signal, np.inf).min(-1).astype(np.float64)
    return has, np.where(has, high - low, 0.0)


def _windows_at(array: np.ndarray, starts: np.ndarray, size: int) -> np.ndarray:
    """``array[b, ..., starts[b] : starts[b] + size]`` for each ``b`` of the first axis, as one array."""
    if (starts == starts[0]).all():
        return array[..., int(starts[0]) : int(starts[0]) + size]
    windows = np.lib.stride_tricks.sliding_window_view(array, size, axis=-1)
    return windows[np.arange(len(starts)), ..., starts, :]


def _to_numpy(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype not in (torch.float32, torch.float64):
            if value.is_complex() or value.dtype == torch.bool:
                raise ValueError(f"{name}: ECG values must be real numbers, got a {value.dtype} tensor")
            value = value.float()
        return value.numpy()
    try:
        array = np.asarray(value)
    except ValueError as err:  # ragged nested lists
        raise ValueError(f"{name}: cannot make an array of the input ({err})") from err
    if array.dtype == object or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name}: ECG values must be real numbers, got dtype {array.dtype}")
    return array


class ECGFeatureExtractor(FeatureExtractionMixin):
    r"""Turns ECG records (arrays, tensors or WFDB/challenge files) into ``input_values`` and ``lead_mask``.

    Args:
        lead_names: canonical lead order of ``input_values`` (default: the standard 12 leads).
        sampling_rate: target sampling rate in Hz; every record is resampled to it.
        normalization: ``"zscore"`` (per lead), ``"minmax"`` (per record, to [0, 1]) or ``"none"``.
        crop_length: window length in samples at ``sampling_rate`` (``None`` keeps the full length).
        min_length: records shorter than this (samples at ``sampling_rate``, after resampling) are an error.
        window_stride: stride in samples between test-time windows (``crop="windows"``).
        num_windows: number of test-time windows.
        padding_value: value of padded time samples.
        epsilon: smallest scale divided by in normalisation, and the peak-to-peak amplitude (mV) at or below
            which a lead counts as flat (lead off) and is marked absent.
    """

    model_input_names = ["input_values", "lead_mask", "time_mask"]

    def __init__(
        self,
        lead_names: Sequence[str] = STANDARD_12_LEADS,
        sampling_rate: float = 500,
        normalization: str = "zscore",
        crop_length: int | None = 2500,
        min_length: int = 500,
        window_stride: int = 500,
        num_windows: int = 6,
        padding_value: float = 0.0,
        epsilon: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(lead_names, str) or len(lead_names) == 0:
            raise ValueError(f"lead_names must be a non-empty list of lead names, got {lead_names!r}")
        names = [canonical_lead_name(n) for n in lead_names]
        if len(set(names)) != len(names):
            raise ValueError(f"lead_names has duplicate leads: {names}")
        if isinstance(sampling_rate, np.number):
            sampling_rate = sampling_rate.item()
        if isinstance(sampling_rate, bool) or not (
            isinstance(sampling_rate, (int, float)) and math.isfinite(sampling_rate) and sampling_rate > 0
        ):
            raise ValueError(f"sampling_rate must be a positive number, got {sampling_rate!r}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        for field_name, value in (("min_length", min_length), ("window_stride", window_stride),
                                  ("num_windows", num_windows)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{field_name} must be a positive integer, got {value!r}")
        if crop_length is not None and (not isinstance(crop_length, int) or crop_length < 1):
            raise ValueError(f"crop_length must be a positive integer or None, got {crop_length!r}")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
        self.lead_names = names
        self.sampling_rate = sampling_rate
        self.normalization = normalization
        self.crop_length = crop_length
        self.min_length = min_length
        self.window_stride = window_stride
        self.num_windows = num_windows
        self.padding_value = float(padding_value)
        self.epsilon = float(epsilon)

    @property
    def num_leads(self) -> int:
        """Number of leads in ``input_values``."""
        return len(self.lead_names)

    def __call__(
        self,
        ecg: ECGInput,
        sampling_rate: float | Sequence[float] | None = None,
        lead_names: Sequence[str] | Sequence[Sequence[str]] | None = None,
        layout: str = "leads_first",
        crop: str = "center",
        return_tensors: str | None = "pt",
        seed: SeedLike = None,
    ) -> BatchFeature:
        """Preprocess one record or a batch.

        Args:
            ecg: one record (2-D array/tensor), a batch (3-D array/tensor, or a list of 2-D arrays/tensors whose
                lengths and lead sets may differ), or WFDB/challenge record paths (one, or a list).
            sampling_rate: sampling rate of array input in Hz, one for all records or one per record (required
                for arrays; files carry their own).
            lead_names: names of the input rows, one list for all records or one list per record. Without it an
                array must have exactly ``len(self.lead_names)`` rows in that order. Files carry their own.
            layout: ``"leads_first"`` (leads, time) or ``"time_first"`` (time, leads) for array input.
            crop: ``"random"`` window of ``crop_length``, ``"center"`` window, ``"windows"`` (``num_windows``
                windows at ``window_stride``), or ``"none"`` (full length, batch padded to the longest).
            return_tensors: ``"pt"`` (torch), ``"np"`` or ``None`` (numpy arrays, unconverted).
            seed: random crops only: an int seed, a ``numpy.random.Generator`` or a ``torch.Generator``; ``None``
                draws from torch's global generator (so ``torch.manual_seed`` and DataLoader worker seeding apply).

        Returns:
            ``BatchFeature`` with ``input_values`` float32 (batch, leads, time) — (batch, windows, leads, time) for
            ``crop="windows"`` —, ``lead_mask`` bool (batch, leads) — (batch, windows, leads) for
            ``crop="windows"``: presence is decided in each returned window — and ``time_mask`` int64
            (batch, time) or (batch, windows, time), 1 for recorded samples and 0 for padding.

        Raises:
            ValueError: naming the record (file path, or ``record i of the batch`` counting from 0) on any bad
                input: wrong rank or shape, missing, non-positive or implausible (outside
                ``ECG_SAMPLING_RATE_RANGE``) sampling rate, unknown or duplicate lead names, lead-name count not
                matching the rows, too short a record (after resampling), no usable lead (every lead NaN or flat,
                in the record or in a returned window), values beyond float32, unreadable or rejected file (see
                :func:`read_ecg_record`).

        Warns:
            LeadOffWarning: for each record with a lead that is flat (constant) over the record or a window.
        """
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {crop!r}")
        if crop == "windows" and self.crop_length is None:
            raise ValueError("crop='windows' needs crop_length to be set")
        batches = self._collect_batches(ecg, sampling_rate, lead_names, layout)
        n_records = sum(len(raw.members) for raw in batches)
        findings: list[list[_Finding]] = [[] for _ in range(n_records)]
        prepared = [self._prepare_batch(raw, findings) for raw in batches]
        self._report(findings)  # called from here: warnings point at the caller
        lengths = [0] * n_records
        for batch in prepared:
            for member in batch.members:
                lengths[member] = batch.length
        out_len, starts = self._window_starts(lengths, crop, seed)
        n_windows = len(starts[0])
        input_values = np.full((n_records, n_windows, self.num_leads, out_len), self.padding_value, np.float32)
        time_mask = np.zeros((n_records, n_windows, out_len), dtype=np.int64)
        lead_mask = np.zeros((n_records, n_windows, self.num_leads), dtype=bool)
        findings = [[] for _ in range(n_records)]
        for batch in prepared:
            members = batch.members  # ascending
            in_order = members[-1] - members[0] == len(members) - 1
            where: Any = slice(members[0], members[-1] + 1) if in_order else members
            outputs = input_values[where], time_mask[where], lead_mask[where]  # views if in order, else copies
            self._place_batch_windows(batch, [starts[member] for member in members], out_len, findings, *outputs)
            if not in_order:
                input_values[where], time_mask[where], lead_mask[where] = outputs
        self._report(findings)
        if crop != "windows":
            input_values, time_mask, lead_mask = input_values[:, 0], time_mask[:, 0], lead_mask[:, 0]
        data = {"input_values": input_values, "lead_mask": lead_mask, "time_mask": time_mask}
        return BatchFeature(data=data, tensor_type=return_tensors)

    # ----------------------------------------------------------------------------------------------- inputs

    def _collect_batches(self, ecg: Any, sampling_rate: Any, lead_names: Any, layout: str) -> list[_RawBatch]:
        """The input as batches of the records that share sampling rate, length and lead names: a uniform
        (batch, leads, time) array as it is, the records of any other input grouped."""
        uniform = self._uniform_batch(ecg, sampling_rate, lead_names, layout)
        if uniform is not None:
            size = max(1, BATCH_SAMPLES // uniform.signal[0].size)  # records per batch
            return [
                _RawBatch(uniform.members[part], uniform.names[part], uniform.signal[part], uniform.sampling_rate,
                          uniform.lead_names)
                for part in (slice(start, start + size) for start in range(0, len(uniform.members), size))
            ]
        groups: dict[tuple[Any, ...], list[_RawBatch]] = {}
        for record in self._collect_records(ecg, sampling_rate, lead_names, layout):
            leads = None if record.lead_names is None else tuple(record.lead_names)
            groups.setdefault((record.sampling_rate, record.signal.shape, leads), []).append(record)
        batches = []
        for group in groups.values():
            size = max(1, BATCH_SAMPLES // group[0].signal.size)
            for start in range(0, len(group), size):
                part = group[start : start + size]
                batches.append(part[0] if len(part) == 1 else _RawBatch(
                    [record.members[0] for record in part],
                    [record.names[0] for record in part],
                    np.concatenate([record.signal for record in part]),
                    part[0].sampling_rate,
                    part[0].lead_names,
                ))
        return batches

    def _uniform_batch(self, ecg: Any, sampling_rate: Any, lead_names: Any, layout: str) -> _RawBatch | None:
        """A (batch, leads, time) array or tensor with one sampling rate and one set of lead names as one batch,
        checked as its first record is checked; ``None`` for any other input."""
        if not isinstance(ecg, (np.ndarray, torch.Tensor)) or ecg.ndim != 3 or ecg.shape[0] == 0:
            return None
        if not (lead_names is None or (len(lead_names) > 0 and isinstance(lead_names[0], str))):
            return None
        array = _to_numpy(ecg, "input")
        names = [f"record {i} of the batch" for i in range(array.shape[0])]
        rates = self._per_record(sampling_rate, len(names), "sampling_rate")
        if any(rate != rates[0] for rate in rates[1:]):
            return None
        # every record has the shape, rate and lead names of the first: the first is where a check fails first
        _, leads = self._check_record(array[0], names[0], rates[0], lead_names, layout)
        signal = array.transpose(0, 2, 1) if layout == "time_first" else array
        return _RawBatch(
            list(range(len(names))), names, np.ascontiguousarray(signal, dtype=np.float32), float(rates[0]), leads
        )

    def _collect_records(self, ecg: Any, sampling_rate: Any, lead_names: Any, layout: str) -> list[_RawBatch]:
        """Each input record, checked, as a batch of one."""
        if _is_path(ecg) or (isinstance(ecg, (list, tuple)) and len(ecg) > 0 and all(_is_path(e) for e in ecg)):
            if sampling_rate is not None or lead_names is not None:
                raise ValueError(
                    "sampling_rate and lead_names are read from the record header; do not pass them with file paths"
                )
            paths = [ecg] if _is_path(ecg) else list(ecg)
            records = []
            for i, path in enumerate(paths):
                rec = read_ecg_record(path)
                _check_sampling_rate(rec.sampling_rate, os.fspath(path))
                records.append(_RawBatch([i], [os.fspath(path)], rec.signal[None], rec.sampling_rate, rec.lead_names))
            return records

        if isinstance(ecg, (list, tuple)):
            if len(ecg) == 0:
                raise ValueError("empty input: no ECG records given")
            if any(_is_path(e) for e in ecg):
                raise ValueError("a batch must be all file paths or all arrays, not a mix")
            if all(isinstance(e, (np.ndarray, torch.Tensor)) for e in ecg):
                arrays = [_to_numpy(e, f"record {i} of the batch") for i, e in enumerate(ecg)]
                names = [f"record {i} of the batch" for i in range(len(arrays))]
            else:
                stacked = _to_numpy(ecg, "input")
                arrays, names = self._split_array(stacked)
        elif isinstance(ecg, (np.ndarray, torch.Tensor)):
            arrays, names = self._split_array(_to_numpy(ecg, "input"))
        elif ecg is None:
            raise ValueError("empty input: no ECG records given")
        else:
            raise ValueError(
                f"unsupported ECG input of type {type(ecg).__name__}; pass an array/tensor, a list of them, "
                "or record file paths"
            )

        rates = self._per_record(sampling_rate, len(arrays), "sampling_rate")
        if lead_names is None or (len(lead_names) > 0 and isinstance(lead_names[0], str)):
            per_record_leads = [lead_names] * len(arrays)
        else:
            per_record_leads = self._per_record(lead_names, len(arrays), "lead_names")

        records = []
        for i, (array, name, rate, leads) in enumerate(zip(arrays, names, rates, per_record_leads)):
            signal, leads = self._check_record(array, name, rate, leads, layout)
            signal = np.ascontiguousarray(signal[None], dtype=np.float32)
            records.append(_RawBatch([i], [name], signal, float(rate), leads))
        return records

    def _check_record(
        self, array: np.ndarray, name: str, rate: Any, leads: Sequence[str] | None, layout: str
    ) -> tuple[np.ndarray, list[str] | None]:
        """Check one input array and its sampling rate and lead names; return it as (leads, time) and the names."""
        if array.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D (leads, time) or (time, leads) array, got shape {array.shape}")
        _check_sampling_rate(rate, name)
        signal = array.T if layout == "time_first" else array
        if signal.shape[0] == 0 or signal.shape[1] == 0:
            raise ValueError(f"{name}: empty record of shape {array.shape} ({layout})")
        if leads is not None:
            leads = [str(n) for n in leads]
            if len(leads) != signal.shape[0]:
                hint = self._layout_hint(array, layout, len(leads))
                raise ValueError(
                    f"{name}: {len(leads)} lead names given for {signal.shape[0]} rows of a {layout} array "
                    f"of shape {tuple(array.shape)}{hint}"
                )
        elif signal.shape[0] != self.num_leads:
            hint = self._layout_hint(array, layout, self.num_leads)
            raise ValueError(
                f"{name}: {signal.shape[0]} leads in a {layout} array of shape {tuple(array.shape)} but no "
                f"lead_names; without lead_names a record must have exactly {self.num_leads} leads in the "
                f"order {self.lead_names}{hint}"
            )
        return signal, leads

    @staticmethod
    def _split_array(array: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
        if array.ndim == 2:
            return [array], ["input record"]
        if array.ndim == 3:
            if array.shape[0] == 0:
                raise ValueError("empty input: a batch of 0 records")
            return list(array), [f"record {i} of the batch" for i in range(array.shape[0])]
        raise ValueError(
            f"input: expected a 2-D record (leads, time) or a 3-D batch (batch, leads, time), got shape {array.shape}"
        )

    @staticmethod
    def _per_record(value: Any, count: int, what: str) -> list[Any]:
        if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0:
            value = value.item()
        if isinstance(value, (list, tuple, np.ndarray, torch.Tensor)):
            values = value.tolist() if isinstance(value, (np.ndarray, torch.Tensor)) else list(value)
            if len(values) != count:
                raise ValueError(f"{len(values)} values of {what} given for a batch of {count} records")
            return values
        return [value] * count

    @staticmethod
    def _layout_hint(array: np.ndarray, layout: str, expected_rows: int) -> str:
        other = "time_first" if layout == "leads_first" else "leads_first"
        cols = array.shape[1] if layout == "leads_first" else array.shape[0]
        return f" (did you mean layout={other!r}?)" if cols == expected_rows else ""

    # -------------------------------------------------------------------------------------------- batches

    def _lead_rows(self, lead_names: list[str] | None, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the configured leads among ``lead_names`` (the input's rows) and the rows of ``input_values``
        they go to."""
        target_rows = np.arange(self.num_leads)
        if lead_names is None:
            source_rows = target_rows
        else:
            canonical = [canonical_lead_name(n) for n in lead_names]
            known = set(self.lead_names) | set(STANDARD_12_LEADS) | set(FRANK_LEADS)
            unknown = [orig for orig, c in zip(lead_names, canonical) if c not in known]
            if unknown:
                raise ValueError(
                    f"{name}: unknown lead names {unknown}; expected names of {self.lead_names} "
                    f"(any spelling/case) or other standard/Frank leads, which are dropped"
                )
            position = {}
            for row, lead in enumerate(canonical):
                if lead in position and lead in self.lead_names:
                    raise ValueError(f"{name}: lead {lead!r} appears more than once in {lead_names}")
                position[lead] = row
            pairs = [(t, position[lead]) for t, lead in enumerate(self.lead_names) if lead in position]
            target_rows = np.array([t for t, _ in pairs], dtype=np.intp)
            source_rows = np.array([s for _, s in pairs], dtype=np.intp)
        if len(source_rows) == 0:
            raise ValueError(f"{name}: none of the leads {self.lead_names} found in the record's leads {lead_names}")
        return source_rows, target_rows

    def _window_starts(self, lengths: list[int], crop: str, seed: SeedLike) -> tuple[int, list[list[int]]]:
        """Output length and, per record, the start of each returned window (samples at the target rate)."""
        if crop == "windows":
            starts = [w * self.window_stride for w in range(self.num_windows)]
            return self.crop_length, [list(starts) for _ in lengths]
        if crop == "none" or self.crop_length is None:
            return max(lengths), [[0] for _ in lengths]
        out_len = self.crop_length
        if crop == "center":
            return out_len, [[max(n - out_len, 0) // 2] for n in lengths]
        draw = self._start_sampler(seed)
        return out_len, [[draw(n - out_len) if n > out_len else 0] for n in lengths]

    @staticmethod
    def _span(length: int, starts: list[int], out_len: int) -> tuple[int, int]:
        """The samples (at the target rate) that the windows of one record take from it."""
        real = [(s, min(s + out_len, length)) for s in starts if s < length]
        return min(s for s, _ in real), max(e for _, e in real)

    def _prepare_batch(self, raw: _RawBatch, findings: list[list[_Finding]]) -> _PreparedBatch | None:
        """Select and repair the leads, mark the unusable ones (all NaN, or flat), check the resampled length.

        What is found in each record is added to ``findings`` at its position in the input; ``None`` when a check
        on what the records share (lead names, length) fails, which is an error of the first record.
        """
        name = raw.names[0]  # a check on the shared shape, rate or lead names fails first for the first record
        try:
            source_rows, rows = self._lead_rows(raw.lead_names, name)
            length = self._checked_length(raw.signal.shape[-1], raw.sampling_rate, name)
        except ValueError as err:
            findings[raw.members[0]].append(err)
            return None
        signal = raw.signal
        if not (len(source_rows) == signal.shape[1] and np.array_equal(source_rows, np.arange(signal.shape[1]))):
            signal = signal[:, source_rows]
        finite = np.isfinite(signal)
        repair = ~finite.all(axis=(1, 2))  # the records with a non-finite sample
        if not repair.any():
            finite = None
        elif repair.all():
            signal, _ = repair_non_finite(signal)
        else:
            signal = signal.copy()
            signal[repair], _ = repair_non_finite(signal[repair])
        has_finite, peak_to_peak = _peak_to_peak(signal, finite)
        flat = has_finite & (peak_to_peak <= self.epsilon)
        usable = has_finite & ~flat
        # An all-zero lead is how datasets store a lead that was not recorded: absent without a warning.
        lead_off = flat & (np.abs(signal).max(-1) > 0) if flat.any() else flat
        names = [self.lead_names[r] for r in rows]
        for b, (member, record_name) in enumerate(zip(raw.members, raw.names)):
            found = findings[member]
            if not has_finite[b].any():
                found.append(ValueError(f"{record_name}: every lead is entirely NaN/Inf; no usable signal"))
                continue
            if lead_off[b].any():
                found.append(
                    f"{record_name}: lead(s) {[n for n, f in zip(names, lead_off[b]) if f]} are flat (constant) "
                    "over the whole record (lead off?); they are marked absent in lead_mask"
                )
            if not usable[b].any():
                missing = [n for n, h in zip(names, has_finite[b]) if not h]
                found.append(ValueError(
                    f"{record_name}: no usable lead: leads {[n for n, f in zip(names, flat[b]) if f]} are flat "
                    "(constant)" + (f" and {missing} entirely NaN/Inf" if missing else "")
                ))
        return _PreparedBatch(raw.members, raw.names, signal, finite, rows, names, usable, raw.sampling_rate, length)

    def _checked_length(self, n_samples: int, rate: float, name: str) -> int:
        """Samples at the target rate of a record of ``n_samples`` at ``rate``; an error below ``min_length``."""
        try:
            length = resampled_length(n_samples, rate, self.sampling_rate)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
        if length < self.min_length:
            raise ValueError(
                f"{name}: {n_samples} samples at {rate:g} Hz give "
                f"{length} samples at {self.sampling_rate:g} Hz, shorter than min_length={self.min_length}"
            )
        return length

    def _place_batch_windows(
        self,
        batch: _PreparedBatch,
        starts: list[list[int]],
        out_len: int,
        findings: list[list[_Finding]],
        input_values: np.ndarray,
        time_mask: np.ndarray,
        lead_mask: np.ndarray,
    ) -> None:
        """Resample, normalise and write each record's windows, with the leads present in each window, into the
        batch's ``input_values``, ``time_mask`` and ``lead_mask`` (with a windows axis; padding and zeros where
        nothing is written). What is found in each record (a lead flat in a window, a window with no present lead,
        values beyond float32) is added to ``findings``.

        Records up to ``STATISTICS_CHUNK`` samples are resampled whole; longer ones have their statistics gathered
        piece by piece and only the samples their windows take resampled.
        """
        n_batch, n_rows, n_source = batch.signal.shape
        rate, target, length = batch.sampling_rate, self.sampling_rate, batch.length
        up, down = resampling_factors(rate, target)
        spans = [self._span(length, record_starts, out_len) for record_starts in starts]
        everyone = np.arange(n_batch)
        # pieces of the signal at the target rate, each (members, first sample, (members, leads, samples) array)
        if length <= STATISTICS_CHUNK:
            whole = batch.signal if rate == target else resample_window(batch.signal, rate, target, 0, length)
            statistics_chunks: Iterable[np.ndarray] = [whole]
            pieces = [(everyone, 0, whole)]
        else:
            statistics_chunks = resampled_chunks(batch.signal, rate, target, STATISTICS_CHUNK)
            pieces = []
            for span in dict.fromkeys(spans):
                members = np.array([b for b in everyone if spans[b] == span])
                source = batch.signal if len(members) == n_batch else batch.signal[members]
                pieces.append((members, span[0], resample_window(source, rate, target, *span)))
        offset = scale = None
        if self.normalization != "none":
            offset, scale = normalization_statistics(statistics_chunks, self.normalization, self.epsilon, batch.usable)

        def normalized(values: np.ndarray, index: Any = slice(None)) -> np.ndarray:
            if offset is None:
                return np.asarray(values, dtype=np.float64)
            values = np.subtract(values, offset[index][..., None], dtype=np.float64)
            return np.divide(values, scale[index][..., None], out=values)

        def gather(members: np.ndarray, piece_start: int, piece: np.ndarray, first: np.ndarray, size: int):
            """Samples ``first - piece_start ... + size`` of each member's piece (one slice when they agree)."""
            return _windows_at(piece, first[members] - piece_start, size)

        n_windows = len(starts[0])
        window_starts = np.array(starts, dtype=np.int64)  # (batch, windows)
        present = np.zeros((n_batch, n_windows, n_rows), dtype=bool)
        flat = np.zeros((n_batch, n_windows, n_rows), dtype=bool)
        overflow = np.zeros((n_batch, n_windows), dtype=bool)
        stops = np.minimum(window_starts + out_len, length)
        every_row = np.array_equal(batch.rows, np.arange(self.num_leads))
        for w in range(n_windows):
            start = window_starts[:, w]
            size = int(stops[0, w] - start[0])  # the same for every record of one length
            if size <= 0:
                continue  # a window past the end of the records: all padding
            # The source samples that fall inside the window; at least the one nearest its start.
            first = np.minimum(-(-start * down // up), n_source)
            last = np.minimum(-(-stops[:, w] * down // up), n_source)
            empty = last <= first
            first = np.where(empty, np.minimum(start * down // up, n_source - 1), first)
            last = np.where(empty, first + 1, last)
            # each record's source samples, the longest count for all; the extra sample of shorter ones is masked
            width = int((last - first).max())
            inside = None
            if (last - first < width).any():
                time = np.minimum(first, n_source - width)[:, None] + np.arange(width)
                inside, first = (time >= first[:, None]) & (time < last[:, None]), time[:, 0]
            finite = None if batch.finite is None else _windows_at(batch.finite, first, width)
            if inside is not None:
                inside = np.broadcast_to(inside[:, None, :], (n_batch, n_rows, width))
                finite = inside if finite is None else inside & finite
            has_finite, peak_to_peak = _peak_to_peak(_windows_at(batch.signal, first, width), finite)
            present[:, w] = batch.usable & has_finite & (peak_to_peak > self.epsilon)
            flat[:, w] = batch.usable & has_finite & ~present[:, w]

            if len(pieces) == 1:
                values = gather(*pieces[0], start, size)
            else:
                values = np.empty((n_batch, n_rows, size), dtype=np.float64)
                for members, piece_start, piece in pieces:
                    values[members] = gather(members, piece_start, piece, start, size)
            with np.errstate(over="ignore"):
                window = normalized(values).astype(np.float32)
            if not np.isfinite(window).all():
                overflow[:, w] = (~np.isfinite(window) & present[:, w, :, None]).any(axis=(1, 2))
            placed = input_values[:, w, :, :size]
            if every_row and present[:, w].all():
                placed[...] = window
            elif every_row:
                placed[...] = 0.0
                np.copyto(placed, window, where=present[:, w, :, None])
            else:
                placed[...] = 0.0
                placed[:, batch.rows] = np.where(present[:, w, :, None], window, np.float32(0.0))
            time_mask[:, w, :size] = 1
            lead_mask[:, w][:, batch.rows] = present[:, w]

        def span_values(b: int) -> np.ndarray:
            span_start, span_stop = spans[b]
            for members, piece_start, piece in pieces:
                where = np.flatnonzero(members == b)
                if where.size:
                    return normalized(piece[where[0], :, span_start - piece_start : span_stop - piece_start], b)
            raise AssertionError(f"record {b} is in no piece")  # every record is in one

        for b, (member, name) in enumerate(zip(batch.members, batch.names)):
            found = findings[member]
            usable_leads = [n for n, u in zip(batch.leads, batch.usable[b]) if u]
            flat_in: list[str] = []
            for w in range(n_windows):
                start, stop = int(window_starts[b, w]), int(stops[b, w])
                if stop <= start:
                    continue
                if flat[b, w].any():
                    flat_in.append(f"{[batch.leads[i] for i in np.flatnonzero(flat[b, w])]} in samples {start}-{stop}")
                if not present[b, w].any():
                    found.append(ValueError(
                        f"{name}: no usable lead in the returned samples {start}-{stop} at "
                        f"{self.sampling_rate:g} Hz: leads {usable_leads} are flat or NaN/Inf there"
                    ))
                    break
                if overflow[b, w]:
                    largest = np.abs(span_values(b)[present[b, w]]).max()
                    found.append(ValueError(
                        f"{name}: values do not fit float32 after normalization={self.normalization!r} "
                        f"(largest magnitude {largest:.3g}); check the record's units and gain"
                    ))
                    break
            else:
                if flat_in:
                    found.append(
                        f"{name}: lead(s) flat (lead off?) at {self.sampling_rate:g} Hz: {'; '.join(flat_in)}; "
                        "marked absent in lead_mask there"
                    )

    @staticmethod
    def _report(findings: list[list[_Finding]]) -> None:
        """Warn and raise what was found, record by record in the input order, up to the first error. Called
        from ``__call__``: a warning points at its caller."""
        for found in findings:
            for finding in found:
                if isinstance(finding, ValueError):
                    raise finding
                warnings.warn(finding, LeadOffWarning, stacklevel=3)

    # ------------------------------------------------------------------------------------------------ length

    @staticmethod
    def _start_sampler(seed: SeedLike):
        """Return ``draw(high) -> int`` uniform on [0, high] from the given seed or generator."""
        if isinstance(seed, torch.Generator) or seed is None:
            generator = seed

            def draw(high: int) -> int:
                return int(torch.randint(0, high + 1, (1,), generator=generator).item())

            return draw
        if isinstance(seed, np.random.Generator):
            rng = seed
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            rng = np.random.default_rng(int(seed))
        else:
            raise ValueError(
                f"seed must be an int, numpy Generator, torch Generator or None, got {type(seed).__name__}"
            )
        return lambda high: int(rng.integers(0, high + 1))


ECGFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
