"""Out-of-distribution detection with the relative Mahalanobis distance (Ren et al., 2021).

Fitted on in-distribution embeddings ``z`` with class labels:

- class means ``μ_k`` and one covariance ``Σ`` shared by all classes (pooled within-class scatter);
- a background Gaussian ``N(μ_0, Σ_0)`` fitted to all embeddings regardless of class.

With ``MD_k(z) = (z − μ_k)ᵀ Σ⁻¹ (z − μ_k)`` and ``MD_0(z) = (z − μ_0)ᵀ Σ_0⁻¹ (z − μ_0)``, the relative distance
to class ``k`` is ``RMD_k(z) = MD_k(z) − MD_0(z)`` and the OOD score is ``min_k RMD_k(z)`` (higher = more
out-of-distribution). With multi-hot labels a sample contributes to the mean and the pooled scatter of every
class it is positive for; samples without a positive label only enter the background Gaussian.

With a single class holding every sample the class Gaussian is the background one and ``RMD`` is 0 everywhere;
``score(..., relative=False)`` then gives the plain Mahalanobis score ``min_k MD_k(z)`` (Lee et al., 2018).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from .zero_shot import _to_numpy


def _precision_matrix(scatter: np.ndarray, count: int, ridge: float) -> np.ndarray:
    cov = scatter / max(count, 1)
    cov = cov + ridge * np.trace(cov) / len(cov) * np.eye(len(cov))
    return np.linalg.pinv(cov, hermitian=True)


def _squared_distances(z: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    zp = z @ precision
    return (zp * z).sum(axis=1)[:, None] - 2.0 * zp @ means.T + ((means @ precision) * means).sum(axis=1)[None, :]


@dataclass
class RelativeMahalanobis:
    """Fitted relative-Mahalanobis OOD detector; :meth:`score` returns ``min_k RMD_k`` (higher = more OOD)."""

    class_means: np.ndarray
    class_precision: np.ndarray
    background_mean: np.ndarray
    background_precision: np.ndarray

    @classmethod
    def fit(cls, embeddings: Any, labels: Any, ridge: float = 1e-6) -> RelativeMahalanobis:
        """Fit on in-distribution ``embeddings`` ``(N, D)`` with class indices ``(N,)`` or multi-hot ``(N, C)``.

        ``ridge`` (relative to the mean variance) keeps the covariances invertible.
        """
        z = _to_numpy(embeddings)
        y = np.asarray(labels)
        if y.ndim == 1:
            classes = np.unique(y)
            member = y[:, None] == classes[None, :]
        else:
            member = y > 0
            member = member[:, member.any(axis=0)]
        if member.shape[1] == 0:
            raise ValueError("no class has a member")
        means = np.stack([z[m].mean(axis=0) for m in member.T])
        scatter = np.zeros((z.shape[1], z.shape[1]))
        count = 0
        for k, m in enumerate(member.T):
            centred = z[m] - means[k]
            scatter += centred.T @ centred
            count += int(m.sum())
        mu0 = z.mean(axis=0)
        centred0 = z - mu0
        return cls(
            class_means=means,
            class_precision=_precision_matrix(scatter, count, ridge),
            background_mean=mu0,
            background_precision=_precision_matrix(centred0.T @ centred0, len(z), ridge),
        )

    def relative_distances(self, embeddings: Any) -> np.ndarray:
        """``RMD_k(z)`` for every class: ``(N, K)``."""
        z = _to_numpy(embeddings)
        md_k = _squared_distances(z, self.class_means, self.class_precision)
        md_0 = _squared_distances(z, self.background_mean[None, :], self.background_precision)
        return md_k - md_0

    def distances(self, embeddings: Any) -> np.ndarray:
        """``MD_k(z)`` for every class: ``(N, K)``."""
        return _squared_distances(_to_numpy(embeddings), self.class_means, self.class_precision)

    def score(self, embeddings: Any, relative: bool = True) -> np.ndarray:
        """OOD score ``min_k RMD_k(z)`` per embedding: ``(N,)``, higher = more out-of-distribution;
        ``relative=False`` gives ``min_k MD_k(z)`` instead."""
        if not relative:
            return self.distances(embeddings).min(axis=1)
        return self.relative_distances(embeddings).min(axis=1)


def relative_mahalanobis(train_embeddings: Any, train_labels: Any, embeddings: Any) -> np.ndarray:
    """Fit on in-distribution training embeddings and return the OOD scores of ``embeddings``."""
    return RelativeMahalanobis.fit(train_embeddings, train_labels).score(embeddings)


def ood_auroc(in_scores: Any, out_scores: Any) -> float:
    """AUROC of separating out-of-distribution (positive) from in-distribution scores."""
    i, o = np.asarray(in_scores, dtype=np.float64), np.asarray(out_scores, dtype=np.float64)
    y = np.r_[np.zeros(len(i)), np.ones(len(o))]
    return float(roc_auc_score(y, np.r_[i, o]))


def rejection_rate(
    reference_in_scores: Any, out_scores: Any, significance: Sequence[float] = (0.01, 0.05, 0.1)
) -> dict[float, float]:
    """Fraction of OOD samples rejected at each significance level.

    The threshold of level ``α`` is the ``1 − α`` quantile of held-out in-distribution scores, so about
    ``α`` of in-distribution data is rejected.
    """
    ref = np.asarray(reference_in_scores, dtype=np.float64)
    out = np.asarray(out_scores, dtype=np.float64)
    return {float(a): float((out > np.quantile(ref, 1.0 - a)).mean()) for a in significance}
