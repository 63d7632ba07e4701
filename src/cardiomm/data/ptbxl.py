"""PTB-XL (Wagner et al., Sci Data 2020) as a cardiomm dataset.

Source folder: ``ptbxl_database.csv``, ``scp_statements.csv`` and ``records100/`` (100 Hz) or ``records500/``
(500 Hz). ``sampling_rate=100`` reads ``records100``; any other rate reads ``records500`` and resamples.

Labels follow the PTB-XL benchmark (Strodthoff et al., 2020): every statement in a record's ``scp_codes`` counts,
whatever its likelihood;

- ``super`` (5) / ``sub`` (23): ``diagnostic_class`` / ``diagnostic_subclass`` of the statements with
  ``diagnostic == 1``;
- ``form`` (19) / ``rhythm`` (12): the statements themselves with ``form == 1`` / ``rhythm == 1``.

Label names are the SCP names without the padding underscores of ``scp_statements.csv`` (``NST_`` → ``NST``,
``_AVB`` → ``AVB``), sorted alphabetically; they are the label columns of the MERL benchmark files. The
benchmark evaluates each task on the records with at least one positive label of that task (rows with an
all-zero ``labels_<task>`` are kept here, drop them for that protocol).

Splits by ``strat_fold``: 1–8 ``train``, 9 ``validation``, 10 ``test``, grouped by ``patient_id`` (v1.0.1 keeps a
few patients whose records span folds; such a patient goes whole to the split of their first record).

Columns beyond the shared schema: ``report`` is an English report built from the SCP statement descriptions
(rhythm statements first, then the others in ``scp_codes`` order, deduplicated, lower case, ". "-separated);
``report_original`` is the original free text (mostly German); ``strat_fold``, ``recording_date``,
``scp_codes`` (JSON). ``age`` 300 (PTB-XL's code for "older than 89") is stored as 90.
"""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cardiomm.data.conversion import (
    DEFAULT_FRACTIONS,
    ConversionJob,
    ConversionSummary,
    SkippedRecord,
    convert_records,
    convert_single_ecg_record,
)
from cardiomm.data.ecg_dataset import ECGDatasetInfo, label_column, multi_hot
from cardiomm.data.splits import fold_split
from cardiomm.processing.ecg_records import STANDARD_12_LEADS

PTBXL_TASKS: tuple[str, ...] = ("super", "sub", "form", "rhythm")
PTBXL_FOLDS: dict[str, tuple[int, ...]] = {"train": tuple(range(1, 9)), "validation": (9,), "test": (10,)}
PTBXL_CITATION = (
    "Wagner, P., Strodthoff, N., Bousseljot, R.-D., Kreiseler, D., Lunze, F.I., Samek, W., Schaeffter, T. "
    "PTB-XL, a large publicly available electrocardiography dataset. Scientific Data 7, 154 (2020)."
)


def statement_label_name(code: str) -> str:
    """Label name of an SCP statement or subclass: the code without padding underscores (``NST_`` → ``NST``)."""
    return str(code).strip().strip("_")


@dataclass(frozen=True)
class SCPStatement:
    """One row of ``scp_statements.csv``: an SCP-ECG statement and how PTB-XL aggregates it."""

    code: str
    description: str
    diagnostic: bool
    diagnostic_class: str | None
    diagnostic_subclass: str | None
    form: bool
    rhythm: bool


def read_scp_statements(path: str | os.PathLike) -> dict[str, SCPStatement]:
    """Read ``scp_statements.csv`` as ``{code: SCPStatement}``."""
    import pandas as pd

    table = pd.read_csv(path, index_col=0)

    def text(value: Any) -> str | None:
        return str(value) if isinstance(value, str) and value.strip() else None

    return {
        str(code): SCPStatement(
            code=str(code),
            description=str(row.description) if pd.notna(row.description) else "",
            diagnostic=row.diagnostic == 1,
            diagnostic_class=text(row.diagnostic_class),
            diagnostic_subclass=text(row.diagnostic_subclass),
            form=row.form == 1,
            rhythm=row.rhythm == 1,
        )
        for code, row in table.iterrows()
    }


def ptbxl_label_names(statements: dict[str, SCPStatement]) -> dict[str, list[str]]:
    """The label names of each PTB-XL task (alphabetical), from the SCP statements."""
    diagnostic = [s for s in statements.values() if s.diagnostic]
    return {
        "super": sorted({statement_label_name(s.diagnostic_class) for s in diagnostic if s.diagnostic_class}),
        "sub": sorted({statement_label_name(s.diagnostic_subclass) for s in diagnostic if s.diagnostic_subclass}),
        "form": sorted({statement_label_name(s.code) for s in statements.values() if s.form}),
        "rhythm": sorted({statement_label_name(s.code) for s in statements.values() if s.rhythm}),
    }


def ptbxl_labels(scp_codes: dict[str, float], statements: dict[str, SCPStatement]) -> dict[str, list[str]]:
    """The labels of one record per task, from its ``scp_codes`` (all statements, any likelihood)."""
    out: dict[str, set[str]] = {task: set() for task in PTBXL_TASKS}
    for code in scp_codes:
        st = statements.get(code)
        if st is None:
            continue
        if st.diagnostic and st.diagnostic_class:
            out["super"].add(statement_label_name(st.diagnostic_class))
        if st.diagnostic and st.diagnostic_subclass:
            out["sub"].add(statement_label_name(st.diagnostic_subclass))
        if st.form:
            out["form"].add(statement_label_name(code))
        if st.rhythm:
            out["rhythm"].add(statement_label_name(code))
    return {task: sorted(labels) for task, labels in out.items()}


def english_report(scp_codes: dict[str, float], statements: dict[str, SCPStatement]) -> str:
    """English report of a record from the descriptions of its SCP statements.

    Rhythm statements come first, then the others in ``scp_codes`` order; duplicates are dropped; the text is
    lower case with ". " between statements, e.g. ``"sinus rhythm. normal ecg."``.
    """
    known = [statements[c] for c in scp_codes if c in statements]
    parts: list[str] = []
    for st in [s for s in known if s.rhythm] + [s for s in known if not s.rhythm]:
        text = st.description.strip().rstrip(".").lower()
        if text and text not in parts:
            parts.append(text)
    return ". ".join(parts) + "." if parts else ""


def _age(value: Any) -> float:
    try:
        age = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return 90.0 if age >= 300 else age


def _parse_scp_codes(value: Any) -> dict[str, float]:
    """A record's ``scp_codes`` cell (a Python dict literal) as a dict; ``ValueError`` when it is none."""
    if not isinstance(value, str):
        raise ValueError("scp_codes is empty")
    try:
        codes = ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
        raise ValueError(f"scp_codes {value[:80]!r} is not a Python dict literal ({type(err).__name__})") from None
    if not isinstance(codes, dict):
        raise ValueError(f"scp_codes {value[:80]!r} is not a dict")
    return codes


def convert_ptbxl(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    sampling_rate: int = 500,
    num_proc: int = 1,
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
    seed: int = 0,
    folds: dict[str, tuple[int, ...]] | None = None,
    duration_s: float = 10.0,
    max_records: int | None = None,
    progress: bool = True,
) -> ConversionSummary:
    """Convert PTB-XL at ``src`` into a cardiomm dataset at ``out`` (``folds`` overrides the 8/1/1 fold split).

    Every row of ``ptbxl_database.csv`` is a record found; one whose metadata cannot be used (no ``strat_fold``,
    a fold in no split, unparsable ``scp_codes``, no file name) or whose signal file cannot be read (or is not
    at the rate of its folder: ``records100`` 100 Hz, ``records500`` 500 Hz) is skipped and reported.
    """
    import pandas as pd

    src = Path(src)
    for name in ("ptbxl_database.csv", "scp_statements.csv"):
        if not (src / name).is_file():
            raise FileNotFoundError(f"{src}: no {name} (expected the PTB-XL folder, holding {name} and records100/)")
    database = pd.read_csv(src / "ptbxl_database.csv", index_col="ecg_id").sort_index()
    if max_records is not None:
        database = database.iloc[:max_records]
    statements = read_scp_statements(src / "scp_statements.csv")
    names = {task: labels for task, labels in ptbxl_label_names(statements).items() if labels}
    file_column = "filename_lr" if sampling_rate == 100 else "filename_hr"
    source_rate = 100 if file_column == "filename_lr" else 500
    assignment = folds or PTBXL_FOLDS
    info = ECGDatasetInfo(
        name="ptbxl",
        sampling_rate=int(sampling_rate),
        num_samples=int(round(duration_s * sampling_rate)),
        lead_names=list(STANDARD_12_LEADS),
        tasks=names,
        description="PTB-XL 12-lead ECGs (10 s) with SCP-ECG statements; labels as in the PTB-XL benchmark.",
        license="CC BY 4.0",
        citation=PTBXL_CITATION,
        extra={
            "source_files": file_column,
            "folds": {k: list(v) for k, v in assignment.items()},
            "label_protocol": "all scp_codes statements (any likelihood); super/sub from diagnostic == 1 statements",
            "task_evaluation": "PTB-XL benchmark: evaluate each task on rows with at least one positive label",
        },
    )
    patient_ids = [str(int(p)) if pd.notna(p) else f"ecg{e}" for e, p in zip(database.index, database.patient_id)]
    strat_folds = pd.to_numeric(database.strat_fold, errors="coerce").to_numpy(dtype=float)
    split_of = np.full(len(database), "", dtype=object)
    for split, idx in fold_split(strat_folds, assignment, patient_ids).items():
        split_of[idx] = split
    skipped: list[SkippedRecord] = []
    scp: list[dict[str, float] | None] = []
    for i, (ecg_id, rec) in enumerate(database.iterrows()):
        reason = None
        if not np.isfinite(strat_folds[i]):
            reason = f"ptbxl_database.csv: no strat_fold ({rec.strat_fold!r})"
        elif not split_of[i]:
            reason = f"ptbxl_database.csv: strat_fold {rec.strat_fold} is in none of the folds {info.extra['folds']}"
        elif not isinstance(rec.get(file_column), str) or not rec.get(file_column).strip():
            reason = f"ptbxl_database.csv: no {file_column}"
        try:
            codes = _parse_scp_codes(rec.scp_codes)
        except ValueError as err:
            codes, reason = None, reason or f"ptbxl_database.csv: {err}"
        if reason is not None:
            skipped.append(SkippedRecord(str(ecg_id), reason, str(split_of[i])))
            codes = None
        scp.append(codes)
    labels = [ptbxl_labels(codes or {}, statements) for codes in scp]
    hot = {task: multi_hot([lab[task] for lab in labels], names[task]) for task in names}

    def sex(value: Any) -> str:
        try:
            return {0: "M", 1: "F"}.get(int(value), "")
        except (TypeError, ValueError):
            return ""

    def jobs():
        for i, rec in enumerate(database.reset_index().itertuples(index=False)):
            if scp[i] is None:
                continue
            ecg_id = rec.ecg_id
            row = {
                "ecg_id": str(ecg_id),
                "patient_id": patient_ids[i],
                "age": _age(rec.age),
                "sex": sex(rec.sex),
                "report": english_report(scp[i], statements),
                "report_original": str(rec.report).strip() if pd.notna(rec.report) else "",
                "strat_fold": int(strat_folds[i]),
                "recording_date": str(rec.recording_date) if pd.notna(rec.recording_date) else "",
                "scp_codes": json.dumps(scp[i]),
            }
            for task in names:
                row[label_column(task)] = hot[task][i]
            path = str(src / getattr(rec, file_column))
            data = {"path": path, "row": row, "source_sampling_rate": source_rate}
            yield ConversionJob(str(ecg_id), str(split_of[i]), data)

    from datasets import Value

    extra = {
        "report_original": Value("string"),
        "strat_fold": Value("int64"),
        "recording_date": Value("string"),
        "scp_codes": Value("string"),
    }
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
        num_jobs=sum(codes is not None for codes in scp),
        progress=progress,
    )
