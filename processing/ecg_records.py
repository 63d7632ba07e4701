"""Reading ECG records from disk and the low-level signal operations shared by preprocessing.

Supports WFDB records (``.hea`` + ``.dat``) and PhysioNet/CinC-challenge records (``.hea`` + ``.mat``), both read
through ``wfdb`` (imported lazily so that checkpoints without file input never need it). What is read and what is
rejected is listed in :func:`read_ecg_record`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

STANDARD_12_LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
FRANK_LEADS: tuple[str, ...] = ("X", "Y", "Z")

# Sampling rates (Hz) accepted for an ECG signal: below the lower bound no QRS complex survives, above the upper
# bound the number is a corrupt header, not a recording.
ECG_SAMPLING_RATE_RANGE: tuple[float, float] = (50.0, 100_000.0)

# Most samples a record may declare when its file size cannot vouch for them (FLAC-compressed signal files).
MAX_DECLARED_SAMPLES: int = 200_000_000

# Spelling variants seen in WFDB headers, challenge files and vendor exports, keyed by a squashed form
# (lower case, no spaces/dashes/underscores).
_LEAD_ALIASES: dict[str, str] = {
    "i": "I", "ii": "II", "iii": "III", "1": "I", "2": "II", "3": "III",
    "lead1": "I", "lead2": "II", "lead3": "III", "leadi": "I", "leadii": "II", "leadiii": "III",
    "avr": "aVR", "avl": "aVL", "avf": "aVF",
    "vx": "X", "vy": "Y", "vz": "Z", "x": "X", "y": "Y", "z": "Z",
}
for _k in range(1, 7):
    _LEAD_ALIASES[f"v{_k}"] = f"V{_k}"
    _LEAD_ALIASES[f"lead v{_k}".replace(" ", "")] = f"V{_k}"

_UNIT_TO_MV: dict[str, float] = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nv": 1e-6}

# Bytes per stored sample of the WFDB storage formats whose file size follows from the sample count.
_BYTES_PER_SAMPLE: dict[str, float] = {
    "8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "160": 2, "212": 1.5, "310": 4 / 3, "311": 4 / 3,
}
_FLAC_FORMATS: frozenset[str] = frozenset({"508", "516", "524"})


def canonical_lead_name(name: str) -> str:
    """Return the canonical spelling of a lead name (``"AVR"`` → ``"aVR"``, ``"v1"`` → ``"V1"``).

    Names that are not known leads are returned stripped but otherwise unchanged.
    """
    key = re.sub(r"[\s_\-]", "", str(name)).lower()
    return _LEAD_ALIASES.get(key, str(name).strip())


def units_to_mv_factor(unit: str) -> float:
    """Multiplicative factor that converts a voltage unit string (``"uV"``, ``"mV"``, ``"V"``, ``"nV"``) to mV.

    Raises ``ValueError`` for anything that is not a voltage (``"mmHg"``, ``"bpm"``, ``"NU"``, an empty unit).
    """
    key = str(unit).strip().lower() if unit is not None else ""
    if key not in _UNIT_TO_MV:
        raise ValueError(f"signal unit {unit!r} is not a voltage; expected one of mV, uV, V, nV")
    return _UNIT_TO_MV[key]


@dataclass
class ECGRecord:
    """One ECG record read from disk: ``signal`` is (leads, time) float32 in millivolts."""

    signal: np.ndarray
    sampling_rate: float
    lead_names: list[str]
    record_name: str
    comments: list[str] = field(default_factory=list)


def _record_base(path: str | os.PathLike) -> str:
    base = os.fspath(path)
    for ext in (".hea", ".dat", ".mat", ".xyz"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


def _header_text_lines(header_path: str) -> list[str]:
    """Non-comment, non-empty lines of a header file (as wfdb splits them)."""
    with open(header_path, encoding="utf-8", errors="replace") as handle:
        lines = [line.strip() for line in handle.read().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _header_sampling_frequency(base: str, record_line: str) -> float | None:
    """The frame frequency written on the record line, ``None`` when the field is absent."""
    tokens = record_line.split()
    if len(tokens) < 3:
        return None
    text = tokens[2].split("/")[0].split("(")[0]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{base}: the header's sampling frequency {tokens[2]!r} is not a positive number")
    return value


def _header_gain_and_unit(signal_line: str) -> tuple[float | None, str | None]:
    """The ADC gain and the unit written on a signal line; ``None`` for a field that is absent.

    ``"200"`` has no unit field (the WFDB header format then means mV); ``"200(0)/"`` has an empty one.
    """
    tokens = signal_line.split()
    if len(tokens) < 3:
        return None, None
    gain_text = re.split(r"[(/]", tokens[2], maxsplit=1)[0]
    unit = tokens[2].split("/", 1)[1] if "/" in tokens[2] else None
    try:
        return float(gain_text), unit
    except ValueError:
        return None, unit


def _data_bytes_needed(fmt: str, n_samples: int) -> int:
    """Bytes a WFDB signal file of ``fmt`` needs to hold ``n_samples`` samples (as wfdb reads them)."""
    return int(math.ceil(n_samples * _BYTES_PER_SAMPLE[fmt]))


def _check_signal_files(base: str, header) -> None:
    """Check every signal file against the header before anything is read.

    For the formats with a fixed size per sample the file must hold exactly the samples the header declares
    (up to the format's last partial block): a header that declares too few signals or samples for its file
    would otherwise be read with its leads scrambled, and one that declares too many would make wfdb allocate
    the declared size before failing. FLAC files (formats 508/516/524) are bounded by ``MAX_DECLARED_SAMPLES``.
    """
    directory = os.path.dirname(base)
    files: dict[str, dict] = {}
    for name, fmt, spf, offset in zip(header.file_name, header.fmt, header.samps_per_frame, header.byte_offset):
        entry = files.setdefault(name, {"fmt": fmt, "samples_per_frame": 0, "offset": offset or 0, "signals": 0})
        if fmt != entry["fmt"]:
            raise ValueError(f"{base}: signals in {name} have different storage formats ({entry['fmt']}, {fmt})")
        entry["samples_per_frame"] += spf or 1
        entry["signals"] += 1
    sig_len = header.sig_len
    for name, entry in files.items():
        fmt = entry["fmt"]
        if fmt not in _BYTES_PER_SAMPLE and fmt not in _FLAC_FORMATS:
            raise ValueError(f"{base}: storage format {fmt!r} of {name} is not supported")
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise ValueError(f"{base}: signal file {name} not found (looked for {path})")
        data_bytes = os.path.getsize(path) - entry["offset"]
        frame_bytes = entry["samples_per_frame"] * _BYTES_PER_SAMPLE.get(fmt, 0)
        if sig_len is None:  # no length in the header: wfdb takes it from the first signal file
            if fmt in _FLAC_FORMATS:
                raise ValueError(f"{base}: the header gives no record length and {name} is FLAC-compressed")
            sig_len = int(max(data_bytes, 0) // frame_bytes)
        n_samples = sig_len * entry["samples_per_frame"]
        if fmt in _FLAC_FORMATS:
            if n_samples > MAX_DECLARED_SAMPLES:
                raise ValueError(
                    f"{base}: the header declares {n_samples} samples in {name}, more than the "
                    f"{MAX_DECLARED_SAMPLES} a record may hold"
                )
            continue
        needed = _data_bytes_needed(fmt, n_samples)
        if data_bytes < needed or data_bytes - needed >= max(frame_bytes, 4):
            raise ValueError(
                f"{base}: signal file {name} holds {max(data_bytes, 0)} bytes of samples but the header declares "
                f"{entry['signals']} signal(s) ({entry['samples_per_frame']} samples per frame) x {sig_len} frames "
                f"in format {fmt} = {needed} bytes; the header does not describe the file (wrong signal count or "
                f"length), so its leads would be read scrambled or not at all"
            )


def read_ecg_record(path: str | os.PathLike, sampling_rate: float | None = None) -> ECGRecord:
    """Read the ECG signals of a WFDB (``.hea``/``.dat``) or challenge (``.hea``/``.mat``) record, in mV, leads first.

    ``path`` may name the record without extension or any of its files. The values are exactly those of
    ``wfdb.rdsamp`` for the returned signals, converted to millivolts and float32; signals with several samples
    per frame are read at their own rate (``wfdb.rdrecord(..., smooth_frames=False)``), never frame-averaged.

    What is returned:

    - every signal whose unit is a voltage (mV, uV, V, nV; a signal line without a unit is in mV, as the WFDB
      header format defines), whatever its name: the feature extractor and the converters select leads by name;
    - in a multi-frequency record (several samples per frame), the voltage signals sampled fastest, at their own
      rate (``fs`` x samples per frame): that is the ECG; slower voltage signals are left out;
    - signals in other units (mmHg, bpm, NU, %, ...) or with an empty unit field (``gain/``) are left out.

    A signal named as an ECG lead (standard 12 or Frank, any spelling) is never left out: if it would be, the
    record is rejected. Supported storage formats are wfdb's: 8, 16, 24, 32, 61, 80, 160, 212, 310, 311 and FLAC
    (508, 516, 524), with skew and byte offsets; challenge ``.mat`` files are format 16 with a byte offset.

    What is rejected, with a ``ValueError`` that starts with the record path and says the problem (nothing is
    allocated for the signal before the header has been checked against the signal files):

    - a missing header or signal file, an unreadable header, a storage format wfdb cannot read;
    - multi-segment records ("multi-segment records are not supported") and layout headers without samples;
    - a missing sampling frequency (wfdb would silently assume 250 Hz) unless ``sampling_rate`` is given, a
      non-positive one, one that contradicts ``sampling_rate``, or an ECG rate outside
      ``ECG_SAMPLING_RATE_RANGE``;
    - a signal file whose size does not match the declared signal count, samples per frame and length (a header
      that declares too few signals would scramble the leads; one that declares too many samples would make wfdb
      allocate them); without a length in the header, wfdb takes it from the file and this cannot be checked;
    - no signal in a voltage unit ("no ECG signal"), or an ECG lead in a non-voltage unit;
    - an ECG signal with gain 0 or no gain: the WFDB header format defines that as "uncalibrated" (wfdb then
      assumes 200 adu per unit), so its values are not millivolts;
    - ECG leads sampled at different rates;
    - values outside the float32 range.

    Args:
        path: the record (``.hea`` base name, or one of its files).
        sampling_rate: the frame frequency in Hz, only for headers that do not state one.
    """
    base = _record_base(path)
    header_path = base + ".hea"
    if not os.path.exists(header_path):
        raise ValueError(f"{base}: no WFDB header ({header_path}) found")
    try:
        import wfdb  # lazy: only file input needs it
    except ImportError as err:  # pragma: no cover - wfdb is a cardiomm dependency
        raise ImportError("reading ECG files needs the `wfdb` package: pip install wfdb") from err
    try:
        header = wfdb.rdheader(base)
        lines = _header_text_lines(header_path)
    except Exception as err:  # wfdb raises many types for corrupt headers
        raise ValueError(f"{base}: unreadable WFDB header ({type(err).__name__}: {err})") from err
    if getattr(header, "n_seg", None) is not None or isinstance(header, wfdb.MultiRecord):
        raise ValueError(
            f"{base}: multi-segment records are not supported (the header lists {header.n_seg} segments); "
            "read its segments one by one"
        )
    if not header.n_sig or not lines:
        raise ValueError(f"{base}: the header declares no signals")
    if header.sig_len == 0:
        raise ValueError(f"{base}: the header declares 0 samples (a layout header holds no signal)")

    if sampling_rate is not None and (isinstance(sampling_rate, bool) or not (
        isinstance(sampling_rate, (int, float, np.number)) and math.isfinite(sampling_rate) and sampling_rate > 0
    )):
        raise ValueError(f"{base}: sampling_rate must be a positive number, got {sampling_rate!r}")
    declared_fs = _header_sampling_frequency(base, lines[0])
    if declared_fs is None:
        if sampling_rate is None:
            raise ValueError(
                f"{base}: the header gives no sampling frequency (wfdb would assume 250 Hz); pass the rate "
                "explicitly: read_ecg_record(path, sampling_rate=...)"
            )
        frame_rate = float(sampling_rate)
    else:
        frame_rate = float(header.fs)
        if sampling_rate is not None and not math.isclose(float(sampling_rate), frame_rate, rel_tol=1e-9):
            raise ValueError(
                f"{base}: sampling_rate={sampling_rate!r} contradicts the {frame_rate:g} Hz the header declares"
            )

    # Which signals are ECG: a voltage unit. A signal line without a unit field is in mV (the WFDB default, which
    # wfdb fills in); an empty unit field ("gain/") is no unit, which wfdb would also turn into mV.
    signal_lines = lines[1 : 1 + header.n_sig]
    written = [_header_gain_and_unit(line) for line in signal_lines] + [(None, None)] * header.n_sig
    keep, left_out = [], []
    for index, (name, unit) in enumerate(zip(header.sig_name, header.units)):
        if written[index][1] == "":
            unit = ""
        try:
            factor = units_to_mv_factor(unit)
        except ValueError:
            if canonical_lead_name(name) in STANDARD_12_LEADS + FRANK_LEADS:
                recorded = f"in {unit!r}" if unit else "without a unit"
                raise ValueError(
                    f"{base}: lead {name!r} is recorded {recorded}, which is not a voltage (mV, uV, V, nV)"
                ) from None
            left_out.append(f"{name} [{unit or 'no unit'}]")
            continue
        keep.append((index, factor))
    if not keep:
        raise ValueError(
            f"{base}: no ECG signal: no signal is in a voltage unit (mV, uV, V, nV); signals: {', '.join(left_out)}"
        )
    # Multi-frequency records: the ECG is the fastest signal; slower voltage signals (respiration, annotation
    # channels written without a unit) are left out, but never a signal named as an ECG lead.
    frames = {index: header.samps_per_frame[index] or 1 for index, _ in keep}
    fastest = max(frames.values())
    slower = [index for index, _ in keep if frames[index] < fastest]
    if any(canonical_lead_name(header.sig_name[i]) in STANDARD_12_LEADS + FRANK_LEADS for i in slower):
        rates = ", ".join(f"{header.sig_name[i]} at {frame_rate * frames[i]:g} Hz" for i, _ in keep)
        raise ValueError(
            f"{base}: the ECG leads have different sampling rates ({rates}; different samples per frame); "
            "records with several ECG rates are not supported"
        )
    keep = [(index, factor) for index, factor in keep if frames[index] == fastest]
    samples_per_frame = fastest
    for index, _ in keep:
        gain = written[index][0]
        if gain is None or gain == 0:
            raise ValueError(
                f"{base}: signal {header.sig_name[index]!r} is uncalibrated (ADC gain {'0' if gain == 0 else 'absent'}"
                "; WFDB would assume 200 adu per unit), so its values are not millivolts"
            )
    rate = frame_rate * samples_per_frame
    low, high = ECG_SAMPLING_RATE_RANGE
    if not low <= rate <= high:
        raise ValueError(
            f"{base}: sampling rate {rate:g} Hz is outside the range of ECG recordings ({low:g}-{high:g} Hz)"
        )
    _check_signal_files(base, header)

    channels = [index for index, _ in keep]
    try:
        if samples_per_frame == 1:
            rec = wfdb.rdrecord(base, channels=channels)
            physical = rec.p_signal
        else:
            rec = wfdb.rdrecord(base, channels=channels, smooth_frames=False)
            physical = np.stack(rec.e_p_signal, axis=1)
    except Exception as err:  # wfdb raises many types for corrupt files
        raise ValueError(f"{base}: unreadable ECG record ({type(err).__name__}: {err})") from err
    if physical is None or physical.ndim != 2 or physical.shape[0] == 0:
        raise ValueError(f"{base}: record holds no signal samples")
    factors = np.array([factor for _, factor in keep], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        signal = (physical * factors[None, :]).T.astype(np.float32)
    if np.count_nonzero(np.isfinite(signal)) != np.count_nonzero(np.isfinite(physical)):
        raise ValueError(f"{base}: signal values exceed the float32 range (|x| > 3.4e38 mV)")
    return ECGRecord(
        signal=np.ascontiguousarray(signal),
        sampling_rate=float(rate),
        lead_names=[canonical_lead_name(header.sig_name[i]) for i in channels],
        record_name=base,
        comments=list(header.comments or []),
    )


# ------------------------------------------------------------------------------------------------ resampling


def resampling_factors(orig_rate: float, target_rate: float) -> tuple[int, int]:
    """``(up, down)`` of the polyphase resampling from ``orig_rate`` to ``target_rate`` (ratio within 1/1000)."""
    if not (orig_rate > 0 and target_rate > 0 and math.isfinite(orig_rate) and math.isfinite(target_rate)):
        raise ValueError(f"sampling rates must be > 0, got {orig_rate} -> {target_rate}")
    ratio = Fraction(target_rate / orig_rate).limit_denominator(1000)
    if ratio.numerator == 0:
        raise ValueError(f"cannot resample from {orig_rate:g} Hz to {target_rate:g} Hz: ratio below 1/1000")
    return ratio.numerator, ratio.denominator


def resampled_length(n_samples: int, orig_rate: float, target_rate: float) -> int:
    """Number of samples :func:`resample_signal` returns for ``n_samples`` input samples."""
    if orig_rate == target_rate:
        return int(n_samples)
    up, down = resampling_factors(orig_rate, target_rate)
    return -(-int(n_samples) * up // down)


def resample_signal(signal: np.ndarray, orig_rate: float, target_rate: float) -> np.ndarray:
    """Resample along the last axis with a polyphase anti-aliasing filter (``scipy.signal.resample_poly``).

    Computed in float64 and returned in the input's dtype.
    """
    up, down = resampling_factors(orig_rate, target_rate)
    if orig_rate == target_rate:
        return signal
    from scipy.signal import resample_poly

    out = resample_poly(np.asarray(signal, dtype=np.float64), up, down, axis=-1)
    return out.astype(signal.dtype, copy=False)


def resample_window(signal: np.ndarray, orig_rate: float, target_rate: float, start: int, stop: int) -> np.ndarray:
    """``resample_signal(signal, ...)[..., start:stop]`` in float64, resampling only the input the window needs.

    The input is cut with a margin wider than the resampling filter, at an input sample that maps onto an output
    sample, so the result equals the slice of the whole resampled signal while the work and memory depend on the
    window only.
    """
    n = signal.shape[-1]
    total = resampled_length(n, orig_rate, target_rate)
    start, stop = max(int(start), 0), min(int(stop), total)
    if stop <= start:
        return np.zeros(signal.shape[:-1] + (0,), dtype=np.float64)
    if orig_rate == target_rate:
        return np.asarray(signal[..., start:stop], dtype=np.float64)
    from scipy.signal import resample_poly

    up, down = resampling_factors(orig_rate, target_rate)
    margin = -(-10 * max(up, down) // up) + 2  # scipy's default filter spans 10 * max(up, down) samples each side
    first = max(0, start * down // up - margin)
    first -= first % down  # input sample ``first`` is output sample ``first * up / down``
    last = min(n, -(-stop * down // up) + margin)
    out = resample_poly(np.asarray(signal[..., first:last], dtype=np.float64), up, down, axis=-1)
    offset = first * up // down
    return out[..., start - offset : stop - offset]


def resampled_chunks(
    signal: np.ndarray, orig_rate: float, target_rate: float, chunk: int
) -> Iterator[np.ndarray]:
    """The whole resampled signal (float64) in consecutive pieces of at most ``chunk`` samples."""
    total = resampled_length(signal.shape[-1], orig_rate, target_rate)
    for start in range(0, total, chunk):
        yield resample_window(signal, orig_rate, target_rate, start, min(start + chunk, total))
