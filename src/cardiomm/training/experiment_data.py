"""The ``data`` section of an experiment file, turned into the loaded dataset an objective trains on.

``data.path`` names a cardiomm dataset folder (:func:`~cardiomm.data.ecg_dataset.save_ecg_dataset` layout).
With ``data.synthetic`` (arguments of the synthetic cohort) and no dataset in that folder yet, the cohort is
written there first (:func:`prepare_dataset_folder`); a folder that already holds a dataset is used as it is,
so a second run reads what the first one wrote. :func:`load_experiment_data` then loads the folder, and the
objectives (:mod:`cardiomm.training.objectives`) build their runs from that :class:`ExperimentData` alone.

Two kinds of objectives read a dataset differently:

* ECG-text (``paired=False``): the cohort is written by :func:`cardiomm.synthetic.synthesize` (``data.synthetic``
  takes its arguments; no WFDB copy unless ``write_wfdb_files: true``).
* structured EHR (``paired=True``: ECG-sEHR, sEHR-ECG-text, sEHR-BERT): the cohort is written by
  :func:`cardiomm.synthetic.generate_cohort` (``data.synthetic`` takes its arguments and ``fractions``, the
  patient-level split fractions) together with its full event and notes tables
  (:func:`~cardiomm.data.pairing.save_pairing_tables`), so that pairs see the events and notes *after* each ECG.
  Loading reads those tables when the folder has them.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..data.ecg_dataset import METADATA_FILE, ECGDatasetInfo, load_ecg_dataset
from ..data.pairing import EVENTS_TABLE_FILE, NOTES_TABLE_FILE
from .config import check_keys

PAIRED_SYNTHETIC_EXTRA_KEYS: tuple[str, ...] = ("fractions", "write_wfdb_files", "include_ehr")
"""Keys of ``data.synthetic`` for the structured-EHR objectives besides
:func:`~cardiomm.synthetic.generate_cohort`'s arguments."""


@dataclass
class ExperimentData:
    """A dataset folder loaded for pretraining.

    Args:
        dataset: the ``datasets.DatasetDict`` of the folder (its patient-level splits).
        info: the folder's :class:`~cardiomm.data.ecg_dataset.ECGDatasetInfo`.
        events: the full event table (``ehr_events.parquet``) when the folder has one, else ``None``: pairing then
            uses the rows' ``ehr_events``.
        notes: the patient notes table (``patient_notes.parquet``) when the folder has one, else ``None``: pairing
            then uses the rows' report columns.
        path: the dataset folder (its ``imaging/`` manifest is read by the CLERC objective).
    """

    dataset: Any
    info: ECGDatasetInfo
    events: pd.DataFrame | None = None
    notes: pd.DataFrame | None = None
    path: Path | None = None


def _dataset_path(data: Mapping[str, Any]) -> Path:
    if "path" not in data:
        raise ValueError("the 'data' section needs 'path' (a cardiomm dataset folder)")
    return Path(data["path"])


def prepare_dataset_folder(data: Mapping[str, Any], paired: bool = False) -> Path:
    """The dataset folder ``data["path"]``, with the synthetic cohort of ``data["synthetic"]`` written into it first
    when given (not ``None``) and the folder holds no dataset yet (see the module docstring for ``paired``)."""
    path = _dataset_path(data)
    if data.get("synthetic") is None or (path / METADATA_FILE).is_file():
        return path
    synth = dict(data["synthetic"])
    if paired:
        from ..data.pairing import save_pairing_tables
        from ..synthetic import generate_cohort, save_synthetic_dataset

        fractions = synth.pop("fractions", None)
        for key in ("write_wfdb_files", "include_ehr"):
            synth.pop(key, None)
        synth.setdefault("progress", False)
        cohort = generate_cohort(**synth)
        save_synthetic_dataset(cohort, path, fractions=fractions)
        save_pairing_tables(cohort, path)
    else:
        from ..synthetic import synthesize

        synth.setdefault("write_wfdb_files", False)
        synthesize(out_dir=path, **synth)
    return path


def load_experiment_data(data: Mapping[str, Any], paired: bool = False) -> ExperimentData:
    """Load the dataset folder of a ``data`` section (written first by :func:`prepare_dataset_folder` when
    ``data.synthetic`` asks for it); with ``paired``, the folder's event and notes tables as well."""
    path = prepare_dataset_folder(data, paired=paired)
    dataset, info = load_ecg_dataset(path)
    if not paired:
        return ExperimentData(dataset, info, path=path)
    events = pd.read_parquet(path / EVENTS_TABLE_FILE) if (path / EVENTS_TABLE_FILE).is_file() else None
    notes = pd.read_parquet(path / NOTES_TABLE_FILE) if (path / NOTES_TABLE_FILE).is_file() else None
    return ExperimentData(dataset, info, events=events, notes=notes, path=path)


def check_synthetic_section(value: Any, source: str, paired: bool) -> None:
    """Check the keys of ``data.synthetic`` against the arguments of the function that writes the cohort.

    Raises:
        ValueError: naming ``source`` (the experiment file), the key and the closest valid key.
    """
    from ..synthetic import generate_cohort, synthesize

    if value is None:
        return
    if not isinstance(value, dict):
        raise ValueError(f"{source}: data.synthetic must be a mapping, got {value!r}")
    if paired:
        accepted = set(inspect.signature(generate_cohort).parameters) | set(PAIRED_SYNTHETIC_EXTRA_KEYS)
    else:
        accepted = set(inspect.signature(synthesize).parameters) - {"out_dir"}
    owner = "cardiomm.synthetic.generate_cohort" if paired else "cardiomm.synthetic.synthesize"
    check_keys(value, accepted, source, "data.synthetic", owner=owner)


__all__ = [
    "PAIRED_SYNTHETIC_EXTRA_KEYS",
    "ExperimentData",
    "check_synthetic_section",
    "load_experiment_data",
    "prepare_dataset_folder",
]
