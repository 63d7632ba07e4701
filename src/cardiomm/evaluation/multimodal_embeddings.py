"""Embedding every sample of a dataset split with a CLERC model, one table per modality.

A CLERC evaluation dataset is a cardiomm ECG dataset folder with its imaging studies
(:mod:`cardiomm.data.imaging_studies`). Every sample of every modality of a split is embedded by the model's tower
of that modality, through the checkpoint's own :class:`~cardiomm.CLERCProcessor` at its evaluation settings (the
centre ECG window, the deterministic video clip and image crop), in batches, without gradients, in eval mode:

- ``ecg``: each ECG row; ``ecg_report``: each ECG row's report (rows with an empty report are left out);
- ``echo`` / ``angiogram`` / ``chest_xray``: each imaging sample (one video or image);
- ``echo_report`` / ``angiogram_report`` / ``chest_xray_report``: each study's report, once per study.

Each table has ``sample_id`` (ECG: its ``ecg_id``), ``study_id`` (ECG: its ``ecg_id`` too: an ECG is its own
study), ``patient_id``, ``time`` (``acquisition_time`` of an ECG, the study time of an imaging sample; NaT when
unknown), ``embedding`` (the L2-normalised projected embedding, a float32 array per row) and label columns:

- ECG tables: ``age``, ``female`` (1.0 for "F", 0.0 for "M", NaN otherwise), ``pacemaker`` (when the dataset has
  the column) and one 0/1 column per class of every label task of the dataset, named by the class ("right bundle
  branch block", ...);
- imaging tables: the manifest's label columns (:data:`~cardiomm.data.imaging_studies.IMAGING_LABELS`, NaN where
  not applicable).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data.ecg_dataset import ECGDatasetInfo, label_column, load_ecg_dataset
from ..data.imaging_studies import (
    IMAGING_LABELS,
    IMAGING_MODALITIES,
    MANIFEST_FILE,
    imaging_folder,
    load_imaging_studies,
)
from ..modeling.configuration_clerc import CLERC_DIAGNOSTIC_MODALITIES, CLERC_MODALITIES
from .embeddings import embed_ecgs

DIAGNOSTIC_MODALITIES: tuple[str, ...] = tuple(CLERC_DIAGNOSTIC_MODALITIES)
KEY_COLUMNS: tuple[str, ...] = ("sample_id", "study_id", "patient_id", "time", "embedding")
"""Columns every embedding table starts with; label columns follow."""
ECG_SCALAR_LABELS: tuple[str, ...] = ("pacemaker",)
"""Per-ECG label columns of the dataset kept in the ECG tables (besides ``age``, ``female`` and the task classes)."""


def embedding_matrix(table: pd.DataFrame) -> np.ndarray:
    """The ``embedding`` column of a table as an ``(N, D)`` float32 array (``(0, 0)`` for an empty table)."""
    if len(table) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([np.asarray(e, dtype=np.float32) for e in table["embedding"]])


def time_seconds(times: Any) -> np.ndarray:
    """Timestamps as float seconds since 1970 (NaN where unknown; time-zone aware ones in UTC)."""
    values = pd.to_datetime(pd.Series(times).reset_index(drop=True))
    if getattr(values.dt, "tz", None) is not None:
        values = values.dt.tz_convert(None)
    return (values - pd.Timestamp(0)).dt.total_seconds().to_numpy(dtype=np.float64)


def _normalized_rows(features: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy().astype(np.float32)


def _device_and_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def encode_reports(
    model: Any, processor: Any, texts: Sequence[str], batch_size: int = 64, progress: bool = False,
    description: str = "embedding reports",
) -> np.ndarray:
    """``(N, D)`` L2-normalised embeddings of ``texts`` by the shared text tower (tokenised by the processor as
    reports, at its ``max_text_length``)."""
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, model.config.projection_dim), dtype=np.float32)
    model.eval()
    device, _ = _device_and_dtype(model)
    chunks = []
    with torch.no_grad():
        for start in tqdm(range(0, len(texts), batch_size), desc=description, disable=not progress, leave=False):
            inputs = processor(ecg_report=texts[start:start + batch_size], return_tensors="pt")
            features = model.get_modality_features(
                "ecg_report", input_ids=inputs["ecg_report_input_ids"].to(device),
                attention_mask=inputs["ecg_report_attention_mask"].to(device),
            ).pooler_output
            chunks.append(_normalized_rows(features))
    return np.concatenate(chunks)


def report_text_encoder(model: Any, processor: Any, batch_size: int = 64) -> Callable[[Sequence[str]], np.ndarray]:
    """``encode_text(list[str]) -> (N, D)`` (L2-normalised) by the model's shared text tower, for prompts."""
    return lambda texts: encode_reports(model, processor, list(texts), batch_size=batch_size)


def encode_imaging_samples(
    model: Any, processor: Any, modality: str, paths: Sequence[str], batch_size: int = 16, progress: bool = True,
) -> np.ndarray:
    """``(N, D)`` L2-normalised embeddings of the imaging files ``paths`` of ``modality`` (``echo``, ``angiogram``
    or ``chest_xray``), each prepared by the processor's evaluation preprocessing."""
    if modality not in IMAGING_MODALITIES:
        raise ValueError(f"modality must be one of {IMAGING_MODALITIES}, got {modality!r}")
    if not len(paths):
        return np.zeros((0, model.config.projection_dim), dtype=np.float32)
    model.eval()
    device, dtype = _device_and_dtype(model)
    chunks = []
    with torch.no_grad():
        for start in tqdm(range(0, len(paths), batch_size), desc=f"embedding {modality}", disable=not progress,
                          leave=False):
            batch = [str(p) for p in paths[start:start + batch_size]]
            values = processor(**{modality: batch}, training=False, return_tensors="pt")[f"{modality}_values"]
            features = model.get_modality_features(modality, values=values.to(device=device, dtype=dtype))
            chunks.append(_normalized_rows(features.pooler_output))
    return np.concatenate(chunks)


def _ecg_label_columns(split: Any, info: ECGDatasetInfo) -> dict[str, np.ndarray]:
    n = len(split)
    columns = split.column_names
    labels: dict[str, np.ndarray] = {}
    labels["age"] = (np.asarray(split["age"], dtype=np.float64) if "age" in columns
                     else np.full(n, np.nan))
    if "sex" in columns:
        sex = np.asarray([str(s or "").strip().upper() for s in split["sex"]])
        labels["female"] = np.where(sex == "F", 1.0, np.where(sex == "M", 0.0, np.nan))
    else:
        labels["female"] = np.full(n, np.nan)
    for name in ECG_SCALAR_LABELS:
        if name in columns:
            labels[name] = np.asarray([np.nan if v is None else float(v) for v in split[name]], dtype=np.float64)
    for task, classes in info.tasks.items():
        column = label_column(task)
        if column not in columns:
            continue
        values = np.asarray(split[column], dtype=np.float64).reshape(n, len(classes))
        for j, name in enumerate(classes):
            labels.setdefault(name, values[:, j])
    return labels


def _ecg_times(split: Any) -> pd.Series:
    if "acquisition_time" in split.column_names:
        return pd.Series(pd.to_datetime(split["acquisition_time"]))
    return pd.Series(pd.NaT, index=range(len(split)), dtype="datetime64[ns]")


def ecg_tables(
    model: Any, processor: Any, split: Any, info: ECGDatasetInfo, modalities: Sequence[str] = ("ecg", "ecg_report"),
    batch_size: int = 32, progress: bool = True,
) -> dict[str, pd.DataFrame]:
    """The ``ecg`` and/or ``ecg_report`` tables (see the module docstring) of an ECG dataset split."""
    ids = [str(i) for i in split["ecg_id"]]
    base = pd.DataFrame({"sample_id": ids, "study_id": ids, "patient_id": [str(p) for p in split["patient_id"]],
                         "time": _ecg_times(split)})
    labels = pd.DataFrame(_ecg_label_columns(split, info))
    out: dict[str, pd.DataFrame] = {}
    if "ecg" in modalities:
        if len(split):
            columns = [c for c in ("ecg", "lead_mask") if c in split.column_names]
            records = split.select_columns(columns).with_format("numpy")
            embeddings = embed_ecgs(model, processor.feature_extractor, records, info.sampling_rate, batch_size,
                                    crop="center", progress=progress, lead_names=info.lead_names)
        else:
            embeddings = np.zeros((0, model.config.projection_dim), dtype=np.float32)
        out["ecg"] = pd.concat([base.assign(embedding=list(embeddings)), labels], axis=1)
    if "ecg_report" in modalities:
        reports = [str(r or "") for r in split["report"]] if "report" in split.column_names else [""] * len(split)
        keep = np.flatnonzero([bool(r.strip()) for r in reports])
        embeddings = encode_reports(model, processor, [reports[i] for i in keep], batch_size, progress,
                                    "embedding ECG reports")
        table = pd.concat([base.iloc[keep].reset_index(drop=True), labels.iloc[keep].reset_index(drop=True)], axis=1)
        table.insert(4, "embedding", list(embeddings))
        out["ecg_report"] = table
    return out


def imaging_tables(
    model: Any, processor: Any, studies: pd.DataFrame, modalities: Sequence[str] = CLERC_MODALITIES,
    batch_size: int = 16, progress: bool = True,
) -> dict[str, pd.DataFrame]:
    """The imaging sample and report tables (see the module docstring) of manifest rows ``studies`` (one split)."""
    labels = [c for c in IMAGING_LABELS if c in studies.columns]
    out: dict[str, pd.DataFrame] = {}
    for modality in IMAGING_MODALITIES:
        rows = studies[studies["modality"] == modality].sort_values(["patient_id", "time", "sample_id"])
        rows = rows.reset_index(drop=True)
        base = pd.DataFrame({"sample_id": rows["sample_id"].astype(str), "study_id": rows["study_id"].astype(str),
                             "patient_id": rows["patient_id"].astype(str),
                             "time": pd.to_datetime(rows["time"])})
        if modality in modalities:
            embeddings = encode_imaging_samples(model, processor, modality, list(rows["path"]), batch_size, progress)
            out[modality] = pd.concat([base.assign(embedding=list(embeddings)), rows[labels]], axis=1)
        report_modality = f"{modality}_report"
        if report_modality in modalities:
            first = ~rows["study_id"].duplicated()
            text = rows["report"].fillna("").astype(str)
            keep = first & (text.str.strip() != "")
            study_rows = rows[keep].reset_index(drop=True)
            embeddings = encode_reports(model, processor, list(text[keep]), batch_size * 4, progress,
                                        f"embedding {modality} reports")
            table = base[keep].reset_index(drop=True)
            table["sample_id"] = table["study_id"]
            out[report_modality] = pd.concat([table.assign(embedding=list(embeddings)), study_rows[labels]], axis=1)
    return out


def embed_clerc_split(
    model: Any,
    processor: Any,
    ecg_split: Any | None,
    info: ECGDatasetInfo | None,
    studies: pd.DataFrame | None,
    modalities: Sequence[str] = CLERC_MODALITIES,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, pd.DataFrame]:
    """One table per modality of ``modalities`` (those the data has) for one split: the ECG rows ``ecg_split``
    (with the dataset's ``info``) and the imaging manifest rows ``studies`` of that split; either may be ``None``."""
    unknown = sorted(set(modalities) - set(CLERC_MODALITIES))
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; CLERC has {list(CLERC_MODALITIES)}")
    model.eval()
    tables: dict[str, pd.DataFrame] = {}
    if ecg_split is not None and info is not None:
        tables.update(ecg_tables(model, processor, ecg_split, info, [m for m in modalities if m.startswith("ecg")],
                                 batch_size * 2, progress))
    if studies is not None:
        tables.update(imaging_tables(model, processor, studies, modalities, batch_size, progress))
    return {m: tables[m] for m in CLERC_MODALITIES if m in tables}


def load_clerc_dataset(dataset_dir: str | os.PathLike) -> tuple[Any, ECGDatasetInfo, pd.DataFrame | None]:
    """``(DatasetDict, ECGDatasetInfo, imaging manifest or None)`` of a dataset folder. A folder without an imaging
    manifest gives ``None`` (with a warning): only the ECG modalities can then be evaluated."""
    dataset, info = load_ecg_dataset(dataset_dir)
    manifest = imaging_folder(dataset_dir) / MANIFEST_FILE
    if not manifest.is_file():
        warnings.warn(f"{manifest}: no imaging manifest; only the ECG modalities are evaluated", UserWarning,
                      stacklevel=2)
        return dataset, info, None
    return dataset, info, load_imaging_studies(dataset_dir)


def embed_clerc_dataset(
    model: Any,
    processor: Any,
    dataset: Mapping[str, Any],
    info: ECGDatasetInfo,
    studies: pd.DataFrame | None,
    splits: Sequence[str] = ("train", "validation", "test"),
    modalities: Sequence[str] = CLERC_MODALITIES,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, dict[str, pd.DataFrame]]:
    """``{split: {modality: table}}`` for every split of ``splits`` (see :func:`embed_clerc_split`). A split the ECG
    dataset lacks (a tiny cohort can leave one empty) has only its imaging tables, if any."""
    out = {}
    for split in splits:
        rows = None if studies is None else studies[studies["split"] == split]
        ecg_split = dataset[split] if split in dataset else None
        out[split] = embed_clerc_split(model, processor, ecg_split, info, rows, modalities, batch_size, progress)
    return out


__all__ = [
    "DIAGNOSTIC_MODALITIES",
    "IMAGING_MODALITIES",
    "KEY_COLUMNS",
    "embed_clerc_dataset",
    "embed_clerc_split",
    "embedding_matrix",
    "encode_imaging_samples",
    "encode_reports",
    "ecg_tables",
    "imaging_tables",
    "load_clerc_dataset",
    "report_text_encoder",
    "time_seconds",
]
