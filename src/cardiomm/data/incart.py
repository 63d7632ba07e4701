"""St Petersburg INCART 12-lead Arrhythmia Database as 10-s ECGs (the out-of-distribution set of the ECG-EHR paper).

75 Holter extracts (``I01`` … ``I75``) of 30 min, 12 leads at 257 Hz. Each record is resampled (polyphase) to
``sampling_rate`` and cut into non-overlapping ``segment_s`` windows from its start (a trailing partial window is
dropped): 180 segments of 10 s per full record. ``ecg_id`` is ``<record>_<segment index, 3 digits>``; the columns
``record_name``, ``segment_index`` and ``segment_start_s`` locate each window.

Patients: the 75 records come from 32 patients, and the files do not say which record belongs to whom. With
``patient_grouping="header"`` (default) the header comments decide: a ``patient <n>`` comment when present,
otherwise records with identical age, sex and diagnoses are taken as one patient (approximate: it can merge two
patients, never split one). ``"record"`` makes every record its own patient. ``report`` holds the diagnoses of the
header. All segments go to one ``test`` split by default (an evaluation-only set); pass ``split_fractions`` for a
patient-level split.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from cardiomm.data.conversion import ConversionJob, ConversionSummary, SkippedRecord, convert_records, to_standard_leads
from cardiomm.data.ecg_dataset import ECGDatasetInfo
from cardiomm.data.splits import patient_level_split
from cardiomm.processing.ecg_records import STANDARD_12_LEADS

INCART_CITATION = (
    "Tihonenko, V., Khaustov, A., Ivanov, S., Rivin, A., Yakushenko, E. St Petersburg INCART 12-lead Arrhythmia "
    "Database. PhysioBank, PhysioToolkit and PhysioNet (2008)."
)


def parse_incart_header(comments: list[str]) -> dict[str, Any]:
    """``{"age", "sex", "diagnoses", "patient"}`` from INCART header comments.

    The comments read like ``<age>: 65 <sex>: F <diagnoses> Coronary artery disease, arterial hypertension``.
    """
    text = " ".join(comments)
    age = re.search(r"<age>\s*:?\s*(\d+(?:\.\d+)?)", text, re.I)
    sex = re.search(r"<sex>\s*:?\s*([MF])\b", text, re.I)
    dx = re.search(r"<diagnoses>\s*:?\s*(.*?)(?=<\w+>|$)", text, re.I)
    patient = re.search(r"\bpatient\s*(?:no\.?|#|id)?\s*:?\s*(\d+)", re.sub(r"<[^>]*>", " ", text), re.I)
    return {
        "age": float(age.group(1)) if age else float("nan"),
        "sex": sex.group(1).upper() if sex else "",
        "diagnoses": dx.group(1).strip().rstrip(".").strip() if dx else "",
        "patient": patient.group(1) if patient else None,
    }


def incart_patient_id(record_name: str, header: dict[str, Any], grouping: str = "header") -> str:
    """Patient id of an INCART record (see the module docstring for the approximation)."""
    if grouping == "record":
        return record_name
    if grouping != "header":
        raise ValueError(f"patient_grouping must be 'header' or 'record', got {grouping!r}")
    if header.get("patient"):
        return f"incart_patient{int(header['patient']):02d}"
    if math.isnan(header["age"]) and not header["sex"] and not header["diagnoses"]:
        return record_name
    key = f"{header['age']:g}|{header['sex']}|{header['diagnoses'].lower()}"
    return "incart_" + hashlib.sha1(key.encode()).hexdigest()[:10]


def _convert_incart_record(job: ConversionJob, info: ECGDatasetInfo) -> list[dict[str, Any]]:
    from cardiomm.processing.ecg_records import read_ecg_record

    record = read_ecg_record(job.data["path"])
    segment = info.num_samples
    duration = record.signal.shape[1] / record.sampling_rate
    total = int(math.floor(duration * info.sampling_rate + 1e-6))
    count = total // segment
    if count == 0:
        raise ValueError(f"record of {duration:.1f} s is shorter than one {segment / info.sampling_rate:g}-s segment")
    ecg, mask = to_standard_leads(record, info.sampling_rate, count * segment, info.lead_names)
    header = job.data["header"]
    rows = []
    for k in range(count):
        rows.append({
            "ecg_id": f"{job.record}_{k:03d}",
            "patient_id": job.data["patient_id"],
            "ecg": np.ascontiguousarray(ecg[:, k * segment:(k + 1) * segment]),
            "lead_mask": mask,
            "age": header["age"],
            "sex": header["sex"],
            "report": header["diagnoses"],
            "record_name": job.record,
            "segment_index": k,
            "segment_start_s": k * segment / info.sampling_rate,
        })
    return rows


def convert_incart(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    sampling_rate: int = 500,
    num_proc: int = 1,
    segment_s: float = 10.0,
    patient_grouping: str = "header",
    split_fractions: dict[str, float] | None = None,
    fractions: tuple[float, ...] = (),
    seed: int = 0,
    max_records: int | None = None,
    progress: bool = True,
) -> ConversionSummary:
    """Convert INCART records (``I*.hea``) under ``src`` into 10-s segments at ``sampling_rate`` in ``out``."""
    import wfdb
    from datasets import Value

    headers = sorted(p for p in Path(src).rglob("*.hea") if re.fullmatch(r"I\d+", p.stem))
    if max_records is not None:
        headers = headers[:max_records]
    if not headers:
        raise ValueError(f"{src}: no INCART records (I01.hea …) found")
    skipped: list[SkippedRecord] = []
    names, parsed, patients = [], {}, []
    for h in headers:
        try:
            comments = wfdb.rdheader(str(h.with_suffix(""))).comments or []
        except Exception as err:  # an unreadable header is a skipped record, not a failed conversion
            skipped.append(SkippedRecord(h.stem, f"unreadable header ({type(err).__name__}: {err})"))
            continue
        parsed[h.stem] = parse_incart_header(comments)
        names.append(h.stem)
        patients.append(incart_patient_id(h.stem, parsed[h.stem], patient_grouping))
    fractions_by_split = split_fractions or {"test": 1.0}
    split_of: dict[str, str] = {}
    for split, idx in patient_level_split(patients, fractions_by_split, seed=seed).items():
        for i in idx:
            split_of[names[i]] = split
    info = ECGDatasetInfo(
        name="incart",
        sampling_rate=int(sampling_rate),
        num_samples=int(round(segment_s * sampling_rate)),
        lead_names=list(STANDARD_12_LEADS),
        tasks={},
        description="St Petersburg INCART 12-lead Holter extracts cut into non-overlapping 10-s segments.",
        license="ODC Attribution License (PhysioNet)",
        citation=INCART_CITATION,
        extra={
            "segment_s": segment_s,
            "source_sampling_rate": 257,
            "patient_grouping": patient_grouping,
            "patients": "approximate: 75 records of 32 patients; grouped by header comments"
            if patient_grouping == "header" else "one patient per record",
            "split_fractions": dict(fractions_by_split),
        },
    )
    jobs = [
        ConversionJob(n, split_of[n], {"path": str(h.with_suffix("")), "header": parsed[n], "patient_id": p})
        for n, p, h in zip(names, patients, [h for h in headers if h.stem in parsed])
    ]
    extra = {"record_name": Value("string"), "segment_index": Value("int32"), "segment_start_s": Value("float32")}
    return convert_records(
        jobs,
        _convert_incart_record,
        info,
        out,
        extra_features=extra,
        num_proc=num_proc,
        skipped=skipped,
        fractions=fractions,
        seed=seed,
        progress=progress,
    )
