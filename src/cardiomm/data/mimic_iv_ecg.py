"""MIMIC-IV-ECG (diagnostic 12-lead ECGs, 500 Hz, 10 s; ~800k records) as a cardiomm dataset.

Source folder: ``record_list.csv`` (``subject_id, study_id, file_name, ecg_time, path``),
``machine_measurements.csv`` (``subject_id, study_id, cart_id, ecg_time, report_0 … report_17, bandwidth,
filtering, rr_interval, p_onset, …``; either may be ``.csv.gz``) and the WFDB records under ``files/``.

- ``report``: the non-empty ``report_*`` statements of the machine read joined with ". " (trailing periods of
  each statement dropped, one final period). Records with no machine-measurement row, an empty report or a
  report of fewer than ``min_report_words`` words (default 3) are skipped with that reason, as in MERL.
- ``patient_id`` is ``subject_id``; the split is :func:`~cardiomm.data.splits.patient_level_split` (80/10/10).
- The other machine-measurement columns are kept (numbers as float32, ``cart_id`` and text as strings), with
  ``study_id``, ``subject_id`` and ``ecg_time``.
- ``age``/``sex`` come from MIMIC-IV ``patients.csv(.gz)`` when given (``patients=``): ``anchor_age`` shifted by
  the years between ``anchor_year`` and the ECG; otherwise NaN / "".

The conversion writes Parquet incrementally and holds only the (text) metadata tables in memory; read the
result lazily with ``load_ecg_dataset(out, streaming=True)``. No training fractions by default (a pre-training
corpus); pass ``fractions=(0.01, 0.1)`` for random ones.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from cardiomm.data.conversion import (
    ConversionJob,
    ConversionSummary,
    SkippedRecord,
    convert_records,
    convert_single_ecg_record,
)
from cardiomm.data.ecg_dataset import ECGDatasetInfo
from cardiomm.data.splits import DEFAULT_SPLIT_FRACTIONS, patient_level_split
from cardiomm.processing.ecg_records import STANDARD_12_LEADS

MIMIC_IV_ECG_CITATION = (
    "Gow, B., Pollard, T., Nathanson, L.A., et al. MIMIC-IV-ECG: Diagnostic Electrocardiogram Matched Subset "
    "(version 1.0). PhysioNet (2023)."
)
MIMIC_IV_ECG_SAMPLING_RATE = 500  # every record; a header saying otherwise is damaged and the record skipped
_STRING_COLUMNS = ("cart_id", "bandwidth", "filtering")
_KEY_COLUMNS = ("subject_id", "study_id", "ecg_time")


def _find_table(src: Path, stem: str) -> Path:
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (src / name).is_file():
            return src / name
    raise FileNotFoundError(f"{src}: no {stem}.csv(.gz)")


def join_report(statements: list[Any]) -> str:
    """Join machine-read report statements: non-empty ones, ". "-separated, ending with a period."""
    parts = []
    for s in statements:
        if s is None or (isinstance(s, float) and np.isnan(s)):
            continue
        text = str(s).strip().rstrip(".").strip()
        if text:
            parts.append(text)
    return ". ".join(parts) + "." if parts else ""


def report_word_count(report: str) -> int:
    """Number of words of a report (tokens holding a letter or digit)."""
    return sum(1 for w in report.split() if re.search(r"\w", w))


def read_machine_measurements(path: str | os.PathLike, chunksize: int = 200_000):
    """Read ``machine_measurements.csv`` with the ``report_*`` columns replaced by one joined ``report``."""
    import pandas as pd

    columns = list(pd.read_csv(path, nrows=0).columns)
    report_cols = sorted((c for c in columns if re.fullmatch(r"report_\d+", c)), key=lambda c: int(c[7:]))
    dtypes = {c: str for c in report_cols + [c for c in _STRING_COLUMNS if c in columns] + ["ecg_time"]}
    parts = []
    for chunk in pd.read_csv(path, chunksize=chunksize, dtype=dtypes, keep_default_na=True):
        chunk["report"] = [join_report(list(r)) for r in chunk[report_cols].itertuples(index=False)]
        parts.append(chunk.drop(columns=report_cols))
    return pd.concat(parts, ignore_index=True)


def _ages(patients_path: str | os.PathLike, subject_ids, ecg_times) -> tuple[np.ndarray, list[str]]:
    import pandas as pd

    patients = pd.read_csv(patients_path, usecols=["subject_id", "gender", "anchor_age", "anchor_year"])
    patients = patients.set_index("subject_id")
    joined = patients.reindex(subject_ids)
    years = pd.to_datetime(pd.Series(list(ecg_times)), errors="coerce").dt.year.to_numpy(dtype=float)
    age = joined.anchor_age.to_numpy(dtype=float) + years - joined.anchor_year.to_numpy(dtype=float)
    sex = [g if g in ("M", "F") else "" for g in joined.gender.fillna("")]
    return age.astype(np.float32), sex


def convert_mimic_iv_ecg(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    sampling_rate: int = 500,
    num_proc: int = 1,
    min_report_words: int = 3,
    patients: str | os.PathLike | None = None,
    split_fractions: dict[str, float] | None = None,
    fractions: tuple[float, ...] = (),
    seed: int = 0,
    duration_s: float = 10.0,
    max_records: int | None = None,
    progress: bool = True,
) -> ConversionSummary:
    """Convert MIMIC-IV-ECG at ``src`` into a cardiomm dataset at ``out`` (see the module docstring)."""
    import pandas as pd
    from datasets import Value

    src = Path(src)
    records = pd.read_csv(_find_table(src, "record_list"), dtype={"path": str, "ecg_time": str})
    if max_records is not None:
        records = records.iloc[:max_records]
    measurements = read_machine_measurements(_find_table(src, "machine_measurements"))
    measurements = measurements.drop_duplicates("study_id").set_index("study_id")
    extra_cols = [c for c in measurements.columns if c not in _KEY_COLUMNS and c != "report"]
    extra: dict[str, Any] = {"study_id": Value("int64"), "subject_id": Value("int64"), "ecg_time": Value("string")}
    for c in extra_cols:
        numeric = pd.api.types.is_numeric_dtype(measurements[c]) and c not in _STRING_COLUMNS
        extra[c] = Value("float32") if numeric else Value("string")

    joined = measurements.reindex(records.study_id.to_numpy())
    skipped: list[SkippedRecord] = []
    keep = np.zeros(len(records), dtype=bool)
    reports = joined.report.tolist()
    for i, (path, report) in enumerate(zip(records.path, reports)):
        if not isinstance(report, str):
            skipped.append(SkippedRecord(str(path), "no machine_measurements row for the study"))
        elif not report:
            skipped.append(SkippedRecord(str(path), "empty report"))
        elif (n := report_word_count(report)) < min_report_words:
            skipped.append(SkippedRecord(str(path), f"report has {n} word(s) (< {min_report_words})"))
        else:
            keep[i] = True
    kept = np.flatnonzero(keep)
    if not len(kept):
        raise ValueError(f"{src}: no record with a usable report")
    subject_ids = records.subject_id.to_numpy()[kept]
    split_of = np.empty(len(kept), dtype=object)
    for split, idx in patient_level_split(subject_ids.astype(str), split_fractions or DEFAULT_SPLIT_FRACTIONS,
                                          seed=seed).items():
        split_of[idx] = split
    if patients is not None:
        ages, sexes = _ages(patients, subject_ids, records.ecg_time.to_numpy()[kept])
    else:
        ages, sexes = np.full(len(kept), np.nan, dtype=np.float32), [""] * len(kept)

    info = ECGDatasetInfo(
        name="mimic_iv_ecg",
        sampling_rate=int(sampling_rate),
        num_samples=int(round(duration_s * sampling_rate)),
        lead_names=list(STANDARD_12_LEADS),
        tasks={},
        description="MIMIC-IV-ECG 12-lead diagnostic ECGs (10 s) with machine-read reports and measurements.",
        license="PhysioNet Credentialed Health Data License 1.5.0",
        citation=MIMIC_IV_ECG_CITATION,
        extra={
            "split_fractions": dict(split_fractions or DEFAULT_SPLIT_FRACTIONS),
            "min_report_words": min_report_words,
            "report": "non-empty report_* statements joined with '. '",
        },
    )

    def value(v: Any, feature) -> Any:
        if v is None or (isinstance(v, (float, np.floating)) and np.isnan(v)):
            return None
        return str(v) if feature.dtype == "string" else float(v)

    study = records.study_id.to_numpy()
    paths = records.path.astype(str).to_numpy()
    times = records.ecg_time.to_numpy()
    columns = {c: joined[c].to_numpy() for c in extra_cols}

    def jobs():
        for j, i in enumerate(kept):
            row = {
                "ecg_id": str(study[i]),
                "patient_id": str(subject_ids[j]),
                "age": float(ages[j]),
                "sex": sexes[j],
                "report": reports[i],
                "study_id": int(study[i]),
                "subject_id": int(subject_ids[j]),
                "ecg_time": value(times[i], extra["ecg_time"]),
            }
            for c in extra_cols:
                row[c] = value(columns[c][i], extra[c])
            data = {"path": str(src / paths[i]), "row": row, "source_sampling_rate": MIMIC_IV_ECG_SAMPLING_RATE}
            yield ConversionJob(paths[i], str(split_of[j]), data)

    return convert_records(
        jobs(),
        convert_single_ecg_record,
        info,
        out,
        extra_features=extra,
        num_proc=num_proc,
        skipped=skipped,
        fractions=fractions,
        seed=seed,
        num_jobs=len(kept),
        progress=progress,
    )
