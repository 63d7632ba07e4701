"""Patients with several cardiac tests, one training item per patient (CLERC).

CLERC trains on patients, not on samples: each patient appears once per epoch, with one randomly chosen sample of
every modality the patient has. :class:`MultimodalPatients` joins the ECG rows of a cardiomm dataset split (each
ECG and its report) with the imaging studies of the same patients (:mod:`cardiomm.data.imaging_studies`: echo and
angiogram videos, chest X-rays and their reports), and gives, per patient:

- ``ecg`` (leads, time) array and ``ecg_report``: a random ECG of the patient and its report;
- ``echo`` / ``angiogram`` / ``chest_xray``: the file of a random sample of a random study of that modality, and
  ``echo_report`` / ... : the report of *that* study, so that a video and its report describe the same test;
- ``None`` for a modality the patient does not have (a blank report counts as absent).

The choices draw from NumPy's process-wide generator, which the training loop seeds per ``(seed, epoch, patient)``
(:class:`~cardiomm.training.sampling.SeededSamples`): an epoch replays exactly after a resume.
:attr:`MultimodalPatients.modality_sets` gives each patient's modalities, for
:class:`~cardiomm.training.sampling.ModalityGroupedBatchSampler`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

DIAGNOSTIC_MODALITIES: tuple[str, ...] = ("ecg", "echo", "angiogram", "chest_xray")
"""The diagnostic modalities of CLERC; each has a report modality ``<modality>_report``."""

IMAGING_MODALITIES: tuple[str, ...] = ("echo", "angiogram", "chest_xray")

ALL_MODALITIES: tuple[str, ...] = DIAGNOSTIC_MODALITIES + tuple(f"{m}_report" for m in DIAGNOSTIC_MODALITIES)
"""Every modality in the model's order (the ``CLERC_MODALITIES`` of the configuration)."""


def _has_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


class MultimodalPatients(Dataset):
    """One item per patient: a random sample of each modality the patient has (see the module docstring).

    Args:
        ecg_split: a split of a cardiomm ECG dataset (``datasets.Dataset``) with ``patient_id``, the waveform
            column and the report column; or ``None`` (no ECG modality).
        studies: the imaging manifest rows of the same split (:func:`~cardiomm.data.imaging_studies.
            load_imaging_studies`: ``patient_id``, ``study_id``, ``modality``, ``path``, ``report``), or ``None``.
        modalities: the modalities to serve (a subset of :data:`ALL_MODALITIES`); the others are always ``None``.
        ecg_column, report_column: the waveform and report columns of ``ecg_split``.
    """

    def __init__(
        self,
        ecg_split: Any | None,
        studies: pd.DataFrame | None,
        modalities: Sequence[str] = ALL_MODALITIES,
        ecg_column: str = "ecg",
        report_column: str = "report",
    ) -> None:
        unknown = sorted(set(modalities) - set(ALL_MODALITIES))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; CLERC has {list(ALL_MODALITIES)}")
        self.modalities = tuple(m for m in ALL_MODALITIES if m in modalities)
        self.ecg_column, self.report_column = ecg_column, report_column
        self._ecg = None
        ecg_rows: dict[str, list[int]] = {}
        self._ecg_reports: list[str] = []
        if ecg_split is not None and ({"ecg", "ecg_report"} & set(self.modalities)):
            columns = [c for c in (ecg_column, "lead_mask") if c in ecg_split.column_names]
            self._ecg = ecg_split.select_columns(columns).with_format("numpy")
            self._ecg_reports = [str(r or "") for r in ecg_split[report_column]]
            for row, patient in enumerate(ecg_split["patient_id"]):
                ecg_rows.setdefault(str(patient), []).append(row)
        # patient -> modality -> study -> [sample paths], and each study's report
        imaging: dict[str, dict[str, dict[str, list[str]]]] = {}
        self._study_reports: dict[str, str] = {}
        if studies is not None and len(studies):
            wanted = {m for m in IMAGING_MODALITIES if m in self.modalities or f"{m}_report" in self.modalities}
            rows = studies[studies["modality"].isin(wanted)].sort_values(["patient_id", "study_id", "path"])
            for patient, modality, study, path, report in zip(
                rows["patient_id"].astype(str), rows["modality"], rows["study_id"].astype(str), rows["path"],
                rows["report"],
            ):
                imaging.setdefault(patient, {}).setdefault(modality, {}).setdefault(study, []).append(str(path))
                self._study_reports[study] = report if _has_text(report) else ""
        self.patient_ids: list[str] = sorted(set(ecg_rows) | set(imaging))
        self._ecg_rows = [ecg_rows.get(p, []) for p in self.patient_ids]
        self._imaging = [imaging.get(p, {}) for p in self.patient_ids]
        self.modality_sets: list[frozenset[str]] = [self._available(i) for i in range(len(self.patient_ids))]
        keep = [i for i, s in enumerate(self.modality_sets) if s]  # patients with nothing to contrast are dropped
        if len(keep) < len(self.patient_ids):
            self.patient_ids = [self.patient_ids[i] for i in keep]
            self._ecg_rows = [self._ecg_rows[i] for i in keep]
            self._imaging = [self._imaging[i] for i in keep]
            self.modality_sets = [self.modality_sets[i] for i in keep]

    def _available(self, index: int) -> frozenset[str]:
        have = set()
        rows = self._ecg_rows[index]
        if rows and "ecg" in self.modalities:
            have.add("ecg")
        if rows and "ecg_report" in self.modalities and any(_has_text(self._ecg_reports[r]) for r in rows):
            have.add("ecg_report")
        for modality, studies in self._imaging[index].items():
            if modality in self.modalities:
                have.add(modality)
            if f"{modality}_report" in self.modalities and any(self._study_reports[s] for s in studies):
                have.add(f"{modality}_report")
        return frozenset(have)

    def __len__(self) -> int:
        return len(self.patient_ids)

    def modality_counts(self) -> dict[str, int]:
        """How many patients have each modality."""
        return {m: sum(m in s for s in self.modality_sets) for m in self.modalities}

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        have = self.modality_sets[index]
        item: dict[str, Any] = {"patient_id": self.patient_ids[index]}
        item.update({m: None for m in self.modalities})
        rows = self._ecg_rows[index]
        if "ecg" in have or "ecg_report" in have:
            with_report = [r for r in rows if _has_text(self._ecg_reports[r])]
            # the ECG and its report come from one recording; without a report any ECG of the patient serves
            row = int(np.random.choice(with_report if with_report and "ecg_report" in have else rows))
            if "ecg" in have:
                record = self._ecg[row]
                item["ecg"] = np.asarray(record[self.ecg_column], dtype=np.float32)
                if "lead_mask" in record:
                    item["lead_mask"] = np.asarray(record["lead_mask"], dtype=bool)
            if "ecg_report" in have and _has_text(self._ecg_reports[row]):
                item["ecg_report"] = self._ecg_reports[row]
        for modality, studies in self._imaging[index].items():
            names = sorted(studies)
            if f"{modality}_report" in have and modality not in have:
                names = [s for s in names if self._study_reports[s]]
            study = names[int(np.random.randint(len(names)))]
            if modality in have:
                samples = studies[study]
                item[modality] = samples[int(np.random.randint(len(samples)))]
            if f"{modality}_report" in have and self._study_reports[study]:
                item[f"{modality}_report"] = self._study_reports[study]
        return item


__all__ = ["ALL_MODALITIES", "DIAGNOSTIC_MODALITIES", "IMAGING_MODALITIES", "MultimodalPatients"]
