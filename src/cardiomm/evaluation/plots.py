"""Evaluation figures written as PNG files: ROC curves and embedding maps (matplotlib's Agg canvas; no display or
global backend needed)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from .metrics import as_multi_hot, evaluable_classes


def plot_roc_curves(
    y_true: Any,
    scores: Any,
    path: str | os.PathLike,
    label_names: Sequence[str] | None = None,
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Write one ROC curve per evaluable class (AUROC in the legend) to ``path`` as a PNG; returns the path.

    Classes with a single label value have no ROC curve and are left out (listed in the legend title).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = np.asarray(scores, dtype=np.float64)
    s = s[:, None] if s.ndim == 1 else s
    y = as_multi_hot(y_true, s.shape[1])
    names = list(label_names) if label_names is not None else [str(i) for i in range(s.shape[1])]
    ok = evaluable_classes(y)
    fig = Figure(figsize=(6, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for j, name in enumerate(names):
        if not ok[j]:
            continue
        fpr, tpr, _ = roc_curve(y[:, j], s[:, j])
        ax.plot(fpr, tpr, linewidth=1.2, label=f"{name} ({roc_auc_score(y[:, j], s[:, j]):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title(title or "ROC curves")
    skipped = [n for n, keep in zip(names, ok) if not keep]
    legend_title = "class (AUROC)" + (f"; no curve: {', '.join(skipped)}" if skipped else "")
    if ok.any():
        ax.legend(loc="lower right", fontsize="small", title=legend_title, title_fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path


#: Methods of :func:`embedding_map_coordinates`; ``"auto"`` is UMAP when umap-learn is installed, else t-SNE.
EMBEDDING_MAP_METHODS: tuple[str, ...] = ("auto", "tsne", "umap")


def embedding_map_coordinates(
    embeddings: Any, method: str = "auto", seed: int = 0, max_points: int = 5000
) -> tuple[np.ndarray, np.ndarray, str]:
    """2-D coordinates of ``embeddings`` (N, D) for a map: ``(coordinates, rows, method)`` with ``rows`` the
    embeddings mapped (all of them, or ``max_points`` drawn with ``seed``) and ``method`` the one used.

    ``"tsne"``: scikit-learn's t-SNE (PCA initialisation, perplexity min(30, (n - 1) / 3)); ``"umap"``: UMAP
    (umap-learn, not a cardiomm dependency; ``ValueError`` when missing); ``"auto"``: UMAP when installed, else t-SNE.
    Fewer than 5 points are placed by PCA (t-SNE needs more).
    """
    if method not in EMBEDDING_MAP_METHODS:
        raise ValueError(f"method must be one of {EMBEDDING_MAP_METHODS}, got {method!r}")
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must have shape (N, D), got {x.shape}")
    rows = np.arange(len(x))
    if len(x) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))
    x = x[rows]
    if method == "auto":
        method = "umap" if importlib.util.find_spec("umap") is not None else "tsne"
    if len(x) < 5:
        from sklearn.decomposition import PCA

        coords = np.zeros((len(x), 2))
        if len(x) > 1:
            fitted = PCA(n_components=min(2, len(x) - 1, x.shape[1])).fit_transform(x)
            coords[:, : fitted.shape[1]] = fitted
        return coords, rows, "PCA"
    if method == "umap":
        try:
            import umap
        except ImportError as err:
            raise ValueError("an embedding map with method 'umap' needs umap-learn (pip install umap-learn); "
                             "'tsne' works without it") from err
        coords = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed).fit_transform(x)
        return np.asarray(coords, dtype=np.float64), rows, "UMAP"
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, (len(x) - 1) / 3))
    coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    return np.asarray(coords, dtype=np.float64), rows, "t-SNE"


def map_labels(y_true: Any, label_names: Sequence[str]) -> list[str]:
    """One label per ECG for colouring a map: its positive label (single-label), or among several its label
    that is most frequent in ``y_true`` (multi-label); ``"no label"`` without a positive one."""
    y = as_multi_hot(y_true, len(label_names))
    frequency = y.sum(axis=0)
    out = []
    for row in y:
        positive = np.flatnonzero(row)
        out.append(label_names[positive[np.argmax(frequency[positive])]] if len(positive) else "no label")
    return out


def plot_embedding_map(
    embeddings: Any,
    y_true: Any,
    path: str | os.PathLike,
    label_names: Sequence[str] | None = None,
    title: str | None = None,
    method: str = "auto",
    seed: int = 0,
    coordinates: tuple[np.ndarray, np.ndarray, str] | None = None,
    dpi: int = 120,
) -> Path:
    """Write a 2-D map of ``embeddings`` (N, D) coloured by label (:func:`map_labels` of the multi-hot or index
    labels ``y_true``) to ``path`` as a PNG; returns the path. ``coordinates``: the output of
    :func:`embedding_map_coordinates` when already computed (e.g. one map per task of the same embeddings)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    y = np.asarray(y_true)
    n_classes = len(label_names) if label_names is not None else (int(y.max()) + 1 if y.ndim == 1 else y.shape[1])
    names = list(label_names) if label_names is not None else [str(i) for i in range(n_classes)]
    coords, rows, used = coordinates if coordinates is not None else embedding_map_coordinates(embeddings, method,
                                                                                               seed)
    labels = np.asarray(map_labels(y, names), dtype=object)[rows]
    fig = Figure(figsize=(6.5, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    present = [name for name in names + ["no label"] if np.any(labels == name)]
    tab10, tab20 = colormaps["tab10"], colormaps["tab20"]
    palette = [tab10(i) for i in range(10) if i != 7] + [tab20(i) for i in range(1, 20, 2)]  # grey: "no label"
    for k, name in enumerate(present):
        chosen = labels == name
        colour = "lightgrey" if name == "no label" else palette[k % len(palette)]
        ax.scatter(coords[chosen, 0], coords[chosen, 1], s=14, color=colour, label=f"{name} ({int(chosen.sum())})",
                   edgecolors="none", alpha=0.85)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{used} 1")
    ax.set_ylabel(f"{used} 2")
    ax.set_title(title or f"embedding map ({used})")
    if present:
        ax.legend(loc="best", fontsize="small", title="label (ECGs)", title_fontsize="small", markerscale=1.5)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path
