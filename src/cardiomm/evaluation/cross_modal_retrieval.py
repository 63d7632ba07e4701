"""Cross-modal retrieval between the modalities of a CLERC model (the paper's Table 3).

For an ordered pair of distinct modalities (query ``a``, retrieved ``b``):

1. every patient with samples of both is taken once, with the pair of samples closest in time
   (:func:`closest_pairs`; among equally close pairs, one of the same study is preferred, then table order);
2. each patient's ``a`` sample queries the ``b`` samples of all those patients, ranked by cosine similarity;
3. the percentile rank of the patient's own ``b`` sample (:func:`~cardiomm.evaluation.retrieval.percentile_ranks`:
   0 best, about 50 chance, 100 worst) is taken, and the median over patients is the cell of the matrix.

Both directions use the same pairs. A cell with fewer than two patients having both modalities is NaN.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from ..modeling.configuration_clerc import CLERC_MODALITIES
from .multimodal_embeddings import embedding_matrix, time_seconds
from .retrieval import median_percentile_rank

MIN_PATIENTS = 2
MODALITY_TITLES: dict[str, str] = {
    "ecg": "ECG waveform", "echo": "Echo video", "angiogram": "Angiogram video", "chest_xray": "CXR image",
    "ecg_report": "ECG report", "echo_report": "Echo report", "angiogram_report": "Angiogram report",
    "chest_xray_report": "CXR report",
}


def closest_pairs(a_table: pd.DataFrame, b_table: pd.DataFrame) -> pd.DataFrame:
    """For every patient with rows in both tables, the pair of rows closest in ``time``.

    Returns a DataFrame with one row per such patient (sorted by ``patient_id``): ``patient_id``, ``a_row`` and
    ``b_row`` (positions in ``a_table`` / ``b_table``) and ``gap`` (absolute time difference in seconds; NaN when a
    time is unknown). Ties go to a pair of the same ``study_id``, then to the first rows of the tables; an unknown
    time counts as farther than any known one.
    """
    columns = ["patient_id", "a_row", "b_row", "gap"]
    if len(a_table) == 0 or len(b_table) == 0:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(columns, (object, np.int64, np.int64, float))})
    a_patients = a_table["patient_id"].astype(str).to_numpy()
    b_patients = b_table["patient_id"].astype(str).to_numpy()
    a_times, b_times = time_seconds(a_table["time"]), time_seconds(b_table["time"])
    a_studies = a_table["study_id"].astype(str).to_numpy() if "study_id" in a_table else np.full(len(a_table), "")
    b_studies = b_table["study_id"].astype(str).to_numpy() if "study_id" in b_table else np.full(len(b_table), "")
    a_groups = pd.Series(np.arange(len(a_table))).groupby(a_patients).indices
    b_groups = pd.Series(np.arange(len(b_table))).groupby(b_patients).indices
    rows = []
    for patient in sorted(set(a_groups) & set(b_groups)):
        ia, ib = np.sort(a_groups[patient]), np.sort(b_groups[patient])
        gaps = np.abs(a_times[ia][:, None] - b_times[ib][None, :])
        rank = np.where(np.isnan(gaps), np.inf, gaps).ravel()
        other_study = (a_studies[ia][:, None] != b_studies[ib][None, :]).ravel()
        best = int(np.lexsort((np.arange(rank.size), other_study, rank))[0])
        i, j = divmod(best, len(ib))
        rows.append((patient, int(ia[i]), int(ib[j]), float(gaps[i, j])))
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({"a_row": np.int64, "b_row": np.int64, "gap": float})


def retrieval_matrix(
    tables: Mapping[str, pd.DataFrame],
    modalities: Sequence[str] | None = None,
    min_patients: int = MIN_PATIENTS,
) -> pd.DataFrame:
    """Median percentile rank of the true match for every ordered pair of distinct modalities.

    ``tables`` maps a modality to its embedding table (``patient_id``, ``study_id``, ``time``, ``embedding``; see
    :mod:`cardiomm.evaluation.multimodal_embeddings`). ``modalities`` defaults to the modalities of ``tables`` in
    :data:`CLERC_MODALITIES` order; a modality without a table counts as having no samples.

    Returns a square DataFrame, query modalities as rows (index name ``query``) and retrieved modalities as columns
    (``retrieved``), NaN on the diagonal and where fewer than ``min_patients`` patients have both. The number of
    patients of each cell is in ``matrix.attrs["patients"]`` (``{query: {retrieved: n}}``).
    """
    if modalities is None:
        modalities = [m for m in CLERC_MODALITIES if m in tables] + sorted(set(tables) - set(CLERC_MODALITIES))
    modalities = list(modalities)
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities repeat: {modalities}")
    values = pd.DataFrame(np.nan, index=pd.Index(modalities, name="query"),
                          columns=pd.Index(modalities, name="retrieved"))
    patients: dict[str, dict[str, int]] = {m: {} for m in modalities}
    empty = pd.DataFrame(columns=["patient_id", "study_id", "time", "embedding"])
    for a, b in combinations(modalities, 2):
        a_table, b_table = tables.get(a, empty), tables.get(b, empty)
        pairs = closest_pairs(a_table, b_table)
        patients[a][b] = patients[b][a] = len(pairs)
        if len(pairs) < max(min_patients, 2):
            continue
        a_embeddings = embedding_matrix(a_table)[pairs["a_row"].to_numpy()]
        b_embeddings = embedding_matrix(b_table)[pairs["b_row"].to_numpy()]
        values.loc[a, b] = median_percentile_rank(a_embeddings, b_embeddings)
        values.loc[b, a] = median_percentile_rank(b_embeddings, a_embeddings)
    values.attrs["patients"] = patients
    return values


def retrieval_cells(matrix: pd.DataFrame) -> list[dict[str, object]]:
    """The off-diagonal cells of a :func:`retrieval_matrix` as rows: ``query``, ``retrieved``,
    ``median_percentile_rank`` (None where NaN) and ``patients``."""
    patients = matrix.attrs.get("patients", {})
    rows = []
    for query in matrix.index:
        for retrieved in matrix.columns:
            if query == retrieved:
                continue
            value = matrix.loc[query, retrieved]
            rows.append({"query": query, "retrieved": retrieved,
                         "median_percentile_rank": None if pd.isna(value) else float(value),
                         "patients": int(patients.get(query, {}).get(retrieved, 0))})
    return rows


def plot_retrieval_heatmap(matrix: pd.DataFrame, path: str | os.PathLike, title: str | None = None,
                           dpi: int = 120) -> Path:
    """Write a :func:`retrieval_matrix` as an annotated heatmap PNG (each cell: its median percentile rank and the
    number of patients; "–" where it could not be computed); returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = matrix.to_numpy(dtype=np.float64)
    patients = matrix.attrs.get("patients", {})
    rows, columns = list(matrix.index), list(matrix.columns)
    size = max(4.0, 0.9 * len(columns) + 2.5)
    fig = Figure(figsize=(size + 1.5, max(3.5, 0.8 * len(rows) + 2.0)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis_r", vmin=0.0, vmax=100.0)
    ax.set_facecolor("#dddddd")
    for i, query in enumerate(rows):
        for j, retrieved in enumerate(columns):
            if query == retrieved:
                continue
            n = int(patients.get(query, {}).get(retrieved, 0))
            if np.isfinite(values[i, j]):
                text, colour = f"{values[i, j]:.1f}\nn={n}", ("white" if values[i, j] > 60 else "black")
            else:
                text, colour = f"–\nn={n}", "dimgrey"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels([MODALITY_TITLES.get(c, c) for c in columns], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([MODALITY_TITLES.get(r, r) for r in rows], fontsize=8)
    ax.set_xlabel("retrieved modality")
    ax.set_ylabel("query modality")
    ax.set_title(title or "Cross-modal retrieval: median percentile rank of the true match\n"
                          "(0 = best, 50 = chance; – = fewer than 2 patients)", fontsize=9)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("median percentile rank (chance = 50)", fontsize=8)
    colorbar.ax.axhline(50.0, color="red", linewidth=1.0)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path


__all__ = ["MODALITY_TITLES", "closest_pairs", "plot_retrieval_heatmap", "retrieval_cells", "retrieval_matrix"]
