"""ROC-curve figures written as PNG files (matplotlib's Agg canvas; no display or global backend needed)."""

from __future__ import annotations

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
