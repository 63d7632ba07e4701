"""Test-time aggregation over crops / windows of one recording (e.g. the median over six 5-s crops)."""

from __future__ import annotations

from typing import Any

import numpy as np


def aggregate_windows(values: Any, method: str = "median", window_mask: Any = None) -> np.ndarray:
    """Aggregate per-window embeddings or scores ``(N, W, D)`` (or ``(N, W)``) over windows → ``(N, D)``.

    ``method`` is ``"median"`` (default) or ``"mean"``. ``window_mask`` ``(N, W)`` marks the windows that exist
    when recordings have different numbers of windows; every recording needs at least one.
    """
    if hasattr(values, "detach"):
        values = values.detach().cpu().float().numpy()
    x = np.asarray(values, dtype=np.float64)
    if x.ndim not in (2, 3):
        raise ValueError(f"expected (N, W, D) or (N, W), got shape {x.shape}")
    if method not in ("median", "mean"):
        raise ValueError(f"method must be 'median' or 'mean', got {method!r}")
    if window_mask is not None:
        mask = np.asarray(window_mask, dtype=bool)
        if mask.shape != x.shape[:2]:
            raise ValueError(f"window_mask shape {mask.shape} does not match (N, W) = {x.shape[:2]}")
        if not mask.any(axis=1).all():
            raise ValueError("every recording needs at least one window")
        x = np.where(mask[(...,) + (None,) * (x.ndim - 2)], x, np.nan)
        return np.nanmedian(x, axis=1) if method == "median" else np.nanmean(x, axis=1)
    return np.median(x, axis=1) if method == "median" else x.mean(axis=1)
