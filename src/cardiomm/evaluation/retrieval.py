"""Retrieval metrics on embeddings: precision@k (ECG→ECG, text→ECG) and median percentile rank of true pairs.

Candidates are ranked by cosine similarity to the query (both sides L2-normalised).

**Relevance rule of precision@k.** With multi-hot labels ``(N, C)`` a candidate is relevant to a query when
they share at least one positive label; with 1-D labels ``(N,)`` when the labels are equal. Queries without
any positive label (multi-hot rows of zeros) have no relevant set and are left out (with a warning).
precision@k of a query is (relevant candidates among its top k) / k, averaged over queries. ``k`` is clipped
to the number of candidates (minus one when ``exclude_self`` removes the query from its own gallery).

**Percentile rank of a paired item** (CLERC-style cross-modal retrieval, query ``i`` matches candidate ``i``):
``100 · (#{j ≠ i: s_ij > s_ii} + ½ · #{j ≠ i: s_ij = s_ii}) / (M − 1)`` for ``M`` candidates, so 0 is a perfect
retrieval, about 50 is chance and 100 the worst; :func:`median_percentile_rank` reports the median over
queries.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from .zero_shot import _to_numpy, l2_normalize

DEFAULT_KS: tuple[int, ...] = (100, 500, 1000)


def _relevance(query_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    if query_labels.ndim == 1:
        return query_labels[:, None] == gallery_labels[None, :]
    return (query_labels.astype(np.float32) @ gallery_labels.T.astype(np.float32)) > 0


def precision_at_k(
    query_embeddings: Any,
    gallery_embeddings: Any,
    query_labels: Any,
    gallery_labels: Any,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_self: bool = False,
    batch_size: int = 256,
) -> dict[int, float]:
    """Mean precision@k for each k (clipped to the gallery), keyed by the k actually used.

    Use ``exclude_self=True`` for ECG→ECG retrieval within one set (query ``i`` is gallery item ``i`` and is
    not retrieved for itself). For text→ECG retrieval pass text embeddings as queries (e.g. one prompt
    embedding per class with one-hot labels, or reports with their labels).
    """
    q = l2_normalize(_to_numpy(query_embeddings))
    g = l2_normalize(_to_numpy(gallery_embeddings))
    ql, gl = np.asarray(query_labels), np.asarray(gallery_labels)
    if ql.ndim != gl.ndim or (ql.ndim == 2 and ql.shape[1] != gl.shape[1]):
        raise ValueError(f"query labels {ql.shape} and gallery labels {gl.shape} do not match")
    if len(q) != len(ql) or len(g) != len(gl):
        raise ValueError("embeddings and labels must have the same number of rows")
    if exclude_self and len(q) != len(g):
        raise ValueError("exclude_self needs the queries to be the gallery (same number of rows)")
    if ql.ndim == 2:
        ql, gl = ql > 0, gl > 0
    available = len(g) - (1 if exclude_self else 0)
    if available < 1:
        raise ValueError("the gallery has no candidates")
    used = list(dict.fromkeys(min(int(k), available) for k in ks))
    if any(int(k) > available for k in ks):
        warnings.warn(f"k clipped to the {available} candidates available: {list(ks)} -> {used}", stacklevel=2)
    keep = ql.any(axis=1) if ql.ndim == 2 else np.ones(len(ql), dtype=bool)
    if not keep.all():
        warnings.warn(f"{int((~keep).sum())} queries without a positive label were left out", stacklevel=2)
    k_max = max(used)
    hits = np.zeros(len(used))
    n_queries = 0
    for start in range(0, len(q), batch_size):
        rows = np.arange(start, min(start + batch_size, len(q)))
        rows = rows[keep[rows]]
        if len(rows) == 0:
            continue
        sims = q[rows] @ g.T
        if exclude_self:
            sims[np.arange(len(rows)), rows] = -np.inf
        top = np.argpartition(-sims, k_max - 1, axis=1)[:, :k_max] if k_max < sims.shape[1] else np.tile(
            np.arange(sims.shape[1]), (len(rows), 1)
        )
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        relevant = np.take_along_axis(_relevance(ql[rows], gl), top, axis=1)
        cumulative = np.cumsum(relevant, axis=1)
        for i, k in enumerate(used):
            hits[i] += (cumulative[:, k - 1] / k).sum()
        n_queries += len(rows)
    if n_queries == 0:
        raise ValueError("no query has a positive label")
    return {k: float(h / n_queries) for k, h in zip(used, hits)}


def percentile_ranks(query_embeddings: Any, candidate_embeddings: Any, batch_size: int = 1024) -> np.ndarray:
    """Percentile rank (0 best, 100 worst) of candidate ``i`` among all candidates for query ``i``."""
    q = l2_normalize(_to_numpy(query_embeddings))
    c = l2_normalize(_to_numpy(candidate_embeddings))
    if q.shape != c.shape:
        raise ValueError(f"paired retrieval needs equal shapes, got {q.shape} and {c.shape}")
    if len(c) < 2:
        raise ValueError("paired retrieval needs at least two candidates")
    out = np.empty(len(q))
    for start in range(0, len(q), batch_size):
        rows = np.arange(start, min(start + batch_size, len(q)))
        sims = q[rows] @ c.T
        true = sims[np.arange(len(rows)), rows][:, None]
        higher = (sims > true).sum(axis=1)
        ties = (sims == true).sum(axis=1) - 1  # the true pair ties with itself
        out[rows] = 100.0 * (higher + 0.5 * ties) / (len(c) - 1)
    return out


def median_percentile_rank(query_embeddings: Any, candidate_embeddings: Any) -> float:
    """Median over queries of the percentile rank of each query's paired candidate (0 best, ~50 chance)."""
    return float(np.median(percentile_ranks(query_embeddings, candidate_embeddings)))
