"""The on-disk layout and schema shared by every cardiomm ECG dataset (synthetic and converted).

A dataset folder holds one Parquet file per split under ``data/`` and a ``cardiomm_dataset.json`` with what
the Parquet schema cannot carry: sampling rate, lead order and the label names (``id2label``) of every task.

Columns every dataset has:

- ``ecg_id`` (string), ``patient_id`` (string)
- ``ecg``: ``Array2D((num_leads, num_samples), float32)``, millivolts, leads in ``lead_names`` order, at
  ``sampling_rate`` (absent leads are zeros)
- ``lead_mask``: ``Sequence(bool, num_leads)``, which leads were recorded
- ``age`` (float32, NaN when unknown), ``sex`` ("M", "F" or "")
- ``report`` (string, may be empty)
- ``labels_<task>``: ``Sequence(int8, len(tasks[task]))`` multi-hot vector per task

Datasets add their own columns (e.g. ``strat_fold``, measurements) after these.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

METADATA_FILE = "cardiomm_dataset.json"


def label_column(task: str) -> str:
    """Name of the multi-hot label column of ``task``."""
    return f"labels_{task}"


@dataclass
class ECGDatasetInfo:
    """What a cardiomm ECG dataset folder says about itself (saved as ``cardiomm_dataset.json``)."""

    name: str
    sampling_rate: int
    num_samples: int
    lead_names: list[str]
    tasks: dict[str, list[str]] = field(default_factory=dict)
    description: str = ""
    license: str = ""
    citation: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def id2label(self, task: str) -> dict[int, str]:
        """``{index: label name}`` of ``task``'s multi-hot column."""
        if task not in self.tasks:
            raise KeyError(f"dataset {self.name!r} has no task {task!r}; tasks: {sorted(self.tasks)}")
        return dict(enumerate(self.tasks[task]))


def ecg_features(info: ECGDatasetInfo, extra: dict[str, Any] | None = None):
    """The ``datasets.Features`` of a dataset described by ``info`` (plus ``extra`` columns)."""
    from datasets import Array2D, Features, Sequence, Value

    feats: dict[str, Any] = {
        "ecg_id": Value("string"),
        "patient_id": Value("string"),
        "ecg": Array2D(shape=(len(info.lead_names), info.num_samples), dtype="float32"),
        "lead_mask": Sequence(Value("bool"), length=len(info.lead_names)),
        "age": Value("float32"),
        "sex": Value("string"),
        "report": Value("string"),
    }
    for task, names in info.tasks.items():
        feats[label_column(task)] = Sequence(Value("int8"), length=len(names))
    feats.update(extra or {})
    return Features(feats)


def multi_hot(label_lists: list[list[str]], names: list[str]) -> np.ndarray:
    """Multi-hot (N, C) int8 matrix of ``label_lists`` over ``names`` (exact name matches only)."""
    index = {n: i for i, n in enumerate(names)}
    out = np.zeros((len(label_lists), len(names)), dtype=np.int8)
    for r, labels in enumerate(label_lists):
        for lab in labels:
            if lab in index:
                out[r, index[lab]] = 1
    return out


def save_ecg_dataset(dataset_dict, out_dir: str | os.PathLike, info: ECGDatasetInfo) -> Path:
    """Write ``dataset_dict`` (a ``datasets.DatasetDict``) as Parquet splits plus ``cardiomm_dataset.json``."""
    out = Path(out_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    info.extra.setdefault("splits", {})
    for split, ds in dataset_dict.items():
        ds.to_parquet(str(out / "data" / f"{split}.parquet"))
        info.extra["splits"][split] = len(ds)
    (out / METADATA_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n")
    return out


def read_dataset_info(path: str | os.PathLike) -> ECGDatasetInfo:
    """Read ``cardiomm_dataset.json`` of a dataset folder, with an error naming the folder when missing."""
    meta = Path(path) / METADATA_FILE
    if not meta.is_file():
        raise ValueError(f"{path}: not a cardiomm ECG dataset (no {METADATA_FILE})")
    return ECGDatasetInfo(**json.loads(meta.read_text()))


def load_ecg_dataset(path: str | os.PathLike, streaming: bool = False):
    """Load a dataset folder written by :func:`save_ecg_dataset`: returns ``(DatasetDict, ECGDatasetInfo)``.

    A split is ``data/<split>.parquet`` or its shards ``data/<split>-NNNNN-of-NNNNN.parquet``.

    With ``streaming=True`` the splits are ``IterableDataset`` objects read lazily from Parquet.
    """
    from datasets import load_dataset

    info = read_dataset_info(path)
    files: dict[str, list[str]] = {}
    for p in sorted((Path(path) / "data").glob("*.parquet")):
        # ``train.parquet`` or shards ``train-00000-of-00004.parquet``
        files.setdefault(p.stem.split("-")[0], []).append(str(p))
    if not files:
        raise ValueError(f"{path}: no Parquet splits under data/")
    return load_dataset("parquet", data_files=files, streaming=streaming), info
