"""PhysioNet/Computing in Cardiology Challenge 2020/2021 records (``.mat`` + ``.hea``) as a cardiomm dataset.

Each header carries ``# Age:``, ``# Sex:`` and ``# Dx:`` (comma-separated SNOMED-CT codes). The subset is read
from the record-name prefix (``A`` CPSC2018, ``Q`` CPSC2018-Extra, ``I`` INCART, ``S`` PTB, ``HR`` PTB-XL, ``E``
Georgia, ``JS`` Chapman-Shaoxing up to JS10646 and Ningbo after). The challenge files name no patient, so every
record is its own patient (PTB and INCART records in the challenge do share patients: their splits are only
record-level).

SNOMED-CT codes map to names through ``challenge_snomed_ct.csv`` (the challenge's ``dx_mapping_scored.csv`` and
``dx_mapping_unscored.csv``: 30 scored 2021 classes, 27 scored 2020 classes, 103 unscored). Label sets (tasks):

- ``dx``: one column per code of the table, named by its abbreviation (alphabetical); codes outside the table
  stay in the ``dx_codes`` column only;
- ``physionet2020_23``: the 27 scored 2020 classes with the equivalent pairs merged as in the ECG-EHR paper
  (after 3KG): RBBB = CRBBB + RBBB, PAC = PAC + SVPB, PVC = PVC + VPB, IAVB = IAVB + LPR (prolonged PR);
- ``chapman_rhythm``: the 4 rhythm classes of the Chapman database paper (Zheng et al., 2020):
  AFIB = AF + AFL (+ AF and flutter), GSVT = SVT + AT + AVNRT + AVRT + SAAWR + ST, SB, SR = SR + SA (sinus
  irregularity); records without any of them have an all-zero row;
- ``cpsc2018``: the 9 CPSC2018 classes under the names of the MERL benchmark columns (1AVB, AFIB, CLBBB, CRBBB,
  NORM, PAC, STD, STE, VPC).

``report`` is built from the diagnosis names of the record's codes (``"sinus tachycardia. t wave abnormal."``).
Records of other lengths are cropped (from the start) or zero-padded to ``duration_s``; ``source_duration_s``
and ``source_sampling_rate`` keep the originals. Default split: 60/10/30 % train/validation/test as in the ECG-EHR
paper's PhysioNet2020 and Chapman evaluation.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from cardiomm.data.conversion import (
    DEFAULT_FRACTIONS,
    ConversionJob,
    ConversionSummary,
    SkippedRecord,
    convert_records,
    to_standard_leads,
)
from cardiomm.data.ecg_dataset import ECGDatasetInfo, label_column, multi_hot
from cardiomm.data.splits import patient_level_split
from cardiomm.processing.ecg_records import STANDARD_12_LEADS

SNOMED_TABLE_FILE = Path(__file__).with_name("challenge_snomed_ct.csv")
CHALLENGE_SPLIT_FRACTIONS: dict[str, float] = {"train": 0.6, "validation": 0.1, "test": 0.3}
CHALLENGE_TASKS: tuple[str, ...] = ("dx", "physionet2020_23", "chapman_rhythm", "cpsc2018")
CHALLENGE_CITATION = (
    "Reyna, M.A., Sadr, N., Perez Alday, E.A., et al. Will Two Do? Varying Dimensions in Electrocardiography: "
    "The PhysioNet/Computing in Cardiology Challenge 2021. Computing in Cardiology 48 (2021)."
)

# Label sets as {label: SNOMED-CT codes}.
PHYSIONET2020_23_CLASSES: dict[str, tuple[str, ...]] = {
    "AF": ("164889003",),
    "AFL": ("164890007",),
    "Brady": ("426627000",),
    "IAVB": ("270492004", "164947007"),
    "IRBBB": ("713426002",),
    "LAD": ("39732003",),
    "LAnFB": ("445118002",),
    "LBBB": ("164909002",),
    "LQRSV": ("251146004",),
    "LQT": ("111975006",),
    "NSIVCB": ("698252002",),
    "NSR": ("426783006",),
    "PAC": ("284470004", "63593006"),
    "PR": ("10370003",),
    "PVC": ("427172004", "17338001"),
    "QAb": ("164917005",),
    "RAD": ("47665007",),
    "RBBB": ("59118001", "713427006"),
    "SA": ("427393009",),
    "SB": ("426177001",),
    "STach": ("427084000",),
    "TAb": ("164934002",),
    "TInv": ("59931005",),
}
CHAPMAN_RHYTHM_CLASSES: dict[str, tuple[str, ...]] = {
    "AFIB": ("164889003", "164890007", "195080001"),
    "GSVT": ("426761007", "713422000", "251166008", "233897008", "17366009", "427084000"),
    "SB": ("426177001",),
    "SR": ("426783006", "427393009"),
}
CPSC2018_CLASSES: dict[str, tuple[str, ...]] = {
    "1AVB": ("270492004",),
    "AFIB": ("164889003",),
    "CLBBB": ("164909002", "733534002"),
    "CRBBB": ("59118001", "713427006"),
    "NORM": ("426783006",),
    "PAC": ("284470004", "63593006"),
    "STD": ("429622005",),
    "STE": ("164931005",),
    "VPC": ("164884008", "427172004", "17338001"),
}


@dataclass(frozen=True)
class SnomedDiagnosis:
    """One SNOMED-CT diagnosis of the challenge mapping table."""

    code: str
    abbreviation: str
    diagnosis: str
    scored_2020: bool
    scored_2021: bool


@lru_cache(maxsize=1)
def read_snomed_table() -> dict[str, SnomedDiagnosis]:
    """The challenge's SNOMED-CT mapping table as ``{code: SnomedDiagnosis}``."""
    with open(SNOMED_TABLE_FILE, newline="") as f:
        return {
            r["snomed_ct_code"]: SnomedDiagnosis(
                code=r["snomed_ct_code"],
                abbreviation=r["abbreviation"],
                diagnosis=r["diagnosis"],
                scored_2020=r["scored_2020"] == "1",
                scored_2021=r["scored_2021"] == "1",
            )
            for r in csv.DictReader(f)
        }


@lru_cache(maxsize=None)
def challenge_label_set(task: str) -> dict[str, tuple[str, ...]]:
    """``{label: SNOMED-CT codes}`` of a challenge task (see the module docstring), labels in column order."""
    if task == "dx":
        table = read_snomed_table()
        return {d.abbreviation: (d.code,) for d in sorted(table.values(), key=lambda d: d.abbreviation.lower())}
    sets = {
        "physionet2020_23": PHYSIONET2020_23_CLASSES,
        "chapman_rhythm": CHAPMAN_RHYTHM_CLASSES,
        "cpsc2018": CPSC2018_CLASSES,
    }
    if task not in sets:
        raise ValueError(f"unknown challenge task {task!r}; choose from {CHALLENGE_TASKS}")
    return dict(sorted(sets[task].items()))


def challenge_labels(codes: list[str], task: str) -> list[str]:
    """Labels of ``task`` present among the SNOMED-CT ``codes`` of a record."""
    present = set(codes)
    return [label for label, members in challenge_label_set(task).items() if present.intersection(members)]


def challenge_subset(record_name: str) -> str:
    """Source database of a challenge record from its name prefix (``""`` when unknown)."""
    name = Path(record_name).name
    if name.startswith("JS"):
        digits = re.sub(r"\D", "", name)
        return "Chapman-Shaoxing" if digits and int(digits) <= 10646 else "Ningbo"
    if name.startswith("HR"):
        return "PTB-XL"
    prefixes = {"A": "CPSC2018", "Q": "CPSC2018-Extra", "I": "INCART", "S": "PTB", "E": "Georgia"}
    return prefixes.get(name[:1], "")


def parse_challenge_header(comments: list[str]) -> dict[str, Any]:
    """``{"age": float, "sex": "M"|"F"|"", "dx_codes": [str]}`` from the comment lines of a challenge header."""
    fields: dict[str, str] = {}
    for line in comments:
        m = re.match(r"\s*#?\s*([A-Za-z]+)\s*:\s*(.*)$", line)
        if m:
            fields[m.group(1).lower()] = m.group(2).strip()
    try:
        age = float(fields.get("age", "nan"))
    except ValueError:
        age = float("nan")
    sex = fields.get("sex", "").strip().lower()
    sex = "M" if sex in ("male", "m") else "F" if sex in ("female", "f") else ""
    codes = [c.strip() for c in fields.get("dx", "").split(",") if c.strip()]
    return {"age": age if math.isfinite(age) else float("nan"), "sex": sex, "dx_codes": list(dict.fromkeys(codes))}


def dx_report(codes: list[str]) -> str:
    """Report text from the diagnosis names of ``codes`` (table order of the record, unknown codes left out)."""
    table = read_snomed_table()
    names = [" ".join(table[c].diagnosis.split()).lower() for c in codes if c in table]
    return ". ".join(dict.fromkeys(names)) + "." if names else ""


def _convert_challenge_record(job: ConversionJob, info: ECGDatasetInfo) -> list[dict[str, Any]]:
    from cardiomm.processing.ecg_records import read_ecg_record

    record = read_ecg_record(job.data["path"])
    header = parse_challenge_header(record.comments)
    ecg, mask = to_standard_leads(record, info.sampling_rate, info.num_samples, info.lead_names)
    codes = header["dx_codes"]
    row: dict[str, Any] = {
        "ecg_id": job.record,
        "patient_id": job.record,
        "ecg": ecg,
        "lead_mask": mask,
        "age": header["age"],
        "sex": header["sex"],
        "report": dx_report(codes),
        "subset": challenge_subset(job.record),
        "dx_codes": ",".join(codes),
        "source_sampling_rate": float(record.sampling_rate),
        "source_duration_s": record.signal.shape[1] / float(record.sampling_rate),
    }
    for task in info.tasks:
        row[label_column(task)] = multi_hot([challenge_labels(codes, task)], info.tasks[task])[0]
    return [row]


def convert_challenge(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    sampling_rate: int = 500,
    num_proc: int = 1,
    tasks: tuple[str, ...] = CHALLENGE_TASKS,
    subsets: tuple[str, ...] | None = None,
    split_fractions: dict[str, float] | None = None,
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
    seed: int = 0,
    duration_s: float = 10.0,
    max_records: int | None = None,
    progress: bool = True,
) -> ConversionSummary:
    """Convert challenge records found (recursively) under ``src`` into a cardiomm dataset at ``out``.

    ``subsets`` keeps only those source databases (e.g. ``("Chapman-Shaoxing", "Ningbo")``); ``tasks`` picks the
    label sets; ``split_fractions`` overrides the 60/10/30 patient-level split.
    """
    headers = sorted(Path(src).rglob("*.hea"), key=lambda p: (p.stem, str(p)))
    skipped: list[SkippedRecord] = []
    records: dict[str, Path] = {}
    for h in headers:
        if subsets is not None and challenge_subset(h.stem) not in subsets:
            continue
        if h.stem in records:
            skipped.append(SkippedRecord(str(h.with_suffix("")), f"duplicate record name (kept {records[h.stem]})"))
            continue
        records[h.stem] = h.with_suffix("")
    names = list(records)[:max_records] if max_records is not None else list(records)
    if max_records is not None:
        kept = set(names)
        skipped = [s for s in skipped if Path(s.record).name in kept]
    if not names:
        raise ValueError(f"{src}: no challenge records (.hea) found" + (f" in subsets {subsets}" if subsets else ""))
    split_of: dict[str, str] = {}
    for split, idx in patient_level_split(names, split_fractions or CHALLENGE_SPLIT_FRACTIONS, seed=seed).items():
        for i in idx:
            split_of[names[i]] = split
    info = ECGDatasetInfo(
        name="physionet_challenge",
        sampling_rate=int(sampling_rate),
        num_samples=int(round(duration_s * sampling_rate)),
        lead_names=list(STANDARD_12_LEADS),
        tasks={task: list(challenge_label_set(task)) for task in tasks},
        description="PhysioNet/CinC Challenge 2020/2021 12-lead ECGs with SNOMED-CT diagnoses.",
        license="CC BY 4.0 (challenge training data; cite the source databases)",
        citation=CHALLENGE_CITATION,
        extra={
            "subsets": sorted({challenge_subset(n) for n in names}),
            "label_codes": {task: {k: list(v) for k, v in challenge_label_set(task).items()} for task in tasks},
            "split_fractions": dict(split_fractions or CHALLENGE_SPLIT_FRACTIONS),
            "patients": "one patient per record (the challenge files name no patient)",
            "duration_s": duration_s,
        },
    )
    jobs = [ConversionJob(n, split_of[n], {"path": str(records[n])}) for n in names if n in split_of]
    from datasets import Value

    extra = {
        "subset": Value("string"),
        "dx_codes": Value("string"),
        "source_sampling_rate": Value("float32"),
        "source_duration_s": Value("float32"),
    }
    return convert_records(
        jobs,
        _convert_challenge_record,
        info,
        out,
        extra_features=extra,
        num_proc=num_proc,
        skipped=skipped,
        fractions=fractions,
        seed=seed,
        progress=progress,
    )
