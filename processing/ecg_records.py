"""Reading ECG records from disk and the low-level signal operations shared by preprocessing.

Supports WFDB records (``.hea`` + ``.dat``) and PhysioNet/CinC-challenge records (``.hea`` + ``.mat``), both read
through ``wfdb`` (imported lazily so that checkpoints without file input never need it).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

STANDARD_12_LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

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

_UNIT_TO_MV: dict[str, float] = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nu": 1.0, "": 1.0}


def canonical_lead_name(name: str) -> str:
    """Return the canonical spelling of a lead name (``"AVR"`` → ``"aVR"``, ``"v1"`` → ``"V1"``).

    Names that are not known leads are returned stripped but otherwise unchanged.
    """
    key = re.sub(r"[\s_\-]", "", str(name)).lower()
    return _LEAD_ALIASES.get(key, str(name).strip())


def units_to_mv_factor(unit: str) -> float:
    """Multiplicative factor that converts a physical unit string (``"uV"``, ``"mV"``, ``"V"``) to millivolts."""
    key = str(unit).strip().lower()
    if key not in _UNIT_TO_MV:
        raise ValueError(f"unknown ECG signal unit {unit!r}; expected one of mV, uV, V")
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


def read_ecg_record(path: str | os.PathLike) -> ECGRecord:
    """Read a WFDB (``.hea``/``.dat``) or challenge (``.hea``/``.mat``) record, in mV, leads first.

    ``path`` may name the record without extension or any of its files. Raises ``ValueError`` naming the
    record when it is missing or unreadable.
    """
    base = _record_base(path)
    if not os.path.exists(base + ".hea"):
        raise ValueError(f"{base}: no WFDB header ({base}.hea) found")
    try:
        import wfdb  # lazy: only file input needs it
    except ImportError as err:  # pragma: no cover - wfdb is a cardiomm dependency
        raise ImportError("reading ECG files needs the `wfdb` package: pip install wfdb") from err
    try:
        rec = wfdb.rdrecord(base)
    except Exception as err:  # wfdb raises many types for corrupt files
        raise ValueError(f"{base}: unreadable ECG record ({type(err).__name__}: {err})") from err
    if rec.p_signal is None or rec.p_signal.ndim != 2 or rec.p_signal.shape[0] == 0:
        raise ValueError(f"{base}: record holds no signal samples")
    units = rec.units or [""] * rec.n_sig
    factors = np.array([units_to_mv_factor(u) for u in units], dtype=np.float64)
    signal = (rec.p_signal * factors[None, :]).T.astype(np.float32)
    return ECGRecord(
        signal=np.ascontiguousarray(signal),
        sampling_rate=float(rec.fs),
        lead_names=[canonical_lead_name(n) for n in rec.sig_name],
        record_name=base,
        comments=list(rec.comments or []),
    )


def resample_signal(signal: np.ndarray, orig_rate: float, target_rate: float) -> np.ndarray:
    """Resample along the last axis with a polyphase anti-aliasing filter (``scipy.signal.resample_poly``)."""
    if orig_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sampling rates must be > 0, got {orig_rate} -> {target_rate}")
    if orig_rate == target_rate:
        return signal
    from scipy.signal import resample_poly

    ratio = Fraction(target_rate / orig_rate).limit_denominator(1000)
    out = resample_poly(signal, ratio.numerator, ratio.denominator, axis=-1)
    return out.astype(signal.dtype, copy=False)
