"""Reference features that a learned ECG representation must beat.

:func:`signal_statistics` is the hand-made baseline of the real-data check: per-lead amplitude statistics and
band powers, fed to the same logistic-regression protocol as the learned embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.signal import welch

PERCENTILES: tuple[float, ...] = (1, 5, 25, 50, 75, 95, 99)
BANDS_HZ: tuple[tuple[float, float], ...] = ((0.5, 3), (3, 8), (8, 15), (15, 25), (25, 40))


def signal_statistics(
    ecg: np.ndarray,
    sampling_rate: float,
    percentiles: Sequence[float] = PERCENTILES,
    bands_hz: Sequence[tuple[float, float]] = BANDS_HZ,
) -> np.ndarray:
    """Per-lead standard deviation, amplitude percentiles and log band powers (Welch) of ``ecg`` (N, leads, T).

    Returns (N, leads × (1 + len(percentiles) + len(bands_hz))) float32 features.
    """
    x = np.asarray(ecg, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"ecg must be (records, leads, time), got shape {x.shape}")
    std = x.std(axis=-1)[..., None]
    pct = np.moveaxis(np.percentile(x, percentiles, axis=-1), 0, -1)
    freqs, power = welch(x, fs=sampling_rate, nperseg=min(x.shape[-1], int(2 * sampling_rate)), axis=-1)
    bands = np.stack([power[..., (freqs >= lo) & (freqs < hi)].sum(-1) for lo, hi in bands_hz], axis=-1)
    feats = np.concatenate([std, pct, np.log(bands + 1e-8)], axis=-1)
    return feats.reshape(len(x), -1).astype(np.float32)
