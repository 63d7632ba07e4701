"""Pre-training pairs of the EHR paper (Lalam et al., Section 4.2): ECG–sEHR pairs, ECG–text pairs from patient
notes, and (sEHR, ECG, text) triplets, as ``datasets`` with the columns their collators need.

* **ECG–sEHR** (:func:`build_ecg_sehr_pairs`): every coded event of the patient within ``window_days`` (365)
  before *and after* the ECG acquisition, in time order (:func:`codes_for_ecg`). When more than ``max_codes``
  fall in the window, the ones nearest in time to the ECG are kept.
* **ECG–text** (:func:`build_ecg_text_pairs`): the patient's notes around the ECG after *entity detection*
  (a note is kept only if it names a biomedical entity of the :class:`~cardiomm.knowledge.EntityLexicon`), then either
  **report concatenation** (the kept notes within ``window_days``, 30 by default, concatenated) or **entity
  concatenation** (only the entities of the kept notes within 365 days, concatenated; the paper's main setting).
* **Triplets** (:func:`build_sehr_ecg_text_triplets`): the ECGs that have both a code sequence and a text.

Token budget (400 tokens in the paper): the text of an ECG is built from the notes (or entities) *nearest in time
to the ECG first* -- the ECG's own report first, then outward in time -- as long as the running token count stays
within ``max_tokens``; what is kept is then written in chronological order. A nearest note that alone exceeds
the budget is cut to its first ``max_tokens`` tokens. Tokens are counted with ``count_tokens`` (e.g.
``lambda s: len(tokenizer.tokenize(s))``; whitespace words by default), without special tokens; the collator
truncates at ``max_text_length`` as well.

Entity detection is a lexicon step (:class:`~cardiomm.knowledge.EntityLexicon`: exact phrase matching after
:func:`~cardiomm.knowledge.normalize_term` normalisation, on word boundaries, longest phrase first): the lexicon
holds the names and synonyms of the ECG statement knowledge base and the condition vocabulary
(:data:`~cardiomm.knowledge.CONDITION_SYNONYMS`). Sentences that start with a negation cue ("No ...",
"Without ...") name what the patient does *not* have, and are skipped.

Patient-level splits are preserved: the ECG rows keep their split, and codes and notes come from the ECG's own
patient (patients in two splits raise). Events *after* an ECG come from a full event table when there is one: a
:class:`~cardiomm.synthetic.SyntheticCohort`, an event ``DataFrame``, ``{patient_id: events}``, or the
``ehr_events.parquet`` that :func:`save_pairing_tables` writes next to a dataset folder. Without one, a patient's
timeline is the union of the ``ehr_events`` of their rows (each row holds the events up to its ECG), so events
after the patient's last ECG are missing. Notes likewise come from ``patient_notes.parquet`` (ECG and imaging
reports of the synthetic cohort) or, without it, from the rows' ``report`` (+ ``*_report``) columns.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..knowledge.entities import EntityLexicon, build_entity_lexicon
from .ehr import codes_around, patient_timelines

EVENTS_TABLE_FILE = "ehr_events.parquet"
"""Full event table (``patient_id, time, code_system, code`` [, ...]) saved next to a dataset folder."""
NOTES_TABLE_FILE = "patient_notes.parquet"
"""Patient notes table (``patient_id, time, note_type, text``) saved next to a dataset folder."""
PAIRED_EVENT_FIELDS: tuple[str, ...] = ("time", "code_system", "code", "event_type")
TEXT_PAIRINGS: tuple[str, ...] = ("entity", "report")
DEFAULT_EHR_WINDOW_DAYS = 365
DEFAULT_REPORT_WINDOW_DAYS = 30
DEFAULT_ENTITY_WINDOW_DAYS = 365
DEFAULT_TEXT_TOKENS = 400
DEFAULT_MAX_CODES = 510  # 512 positions minus [CLS] and [SEP]


# ----------------------------------------------------------------------------------------------------- sources
def _timestamp(value: Any) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    if stamp is pd.NaT:
        raise ValueError(f"missing timestamp {value!r}")
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo is not None else stamp


def _dataset_folder(source: Any) -> Path | None:
    return Path(source) if isinstance(source, (str, os.PathLike)) else None


def cohort_notes(cohort: Any) -> pd.DataFrame:
    """The patient notes of a synthetic cohort: its ECG reports and imaging (echo, angiogram, chest X-ray)
    reports, as a table ``patient_id, time, note_type, text`` sorted by patient and time."""
    ecgs = cohort.ecgs
    parts = [pd.DataFrame({
        "patient_id": ecgs["patient_id"].astype(str), "time": pd.to_datetime(ecgs["acquisition_time"]),
        "note_type": "ecg report", "text": ecgs["report"].astype(str),
    })]
    imaging = getattr(cohort, "imaging", None)
    if imaging is not None and len(imaging):
        parts.append(pd.DataFrame({
            "patient_id": imaging["patient_id"].astype(str), "time": pd.to_datetime(imaging["time"]),
            "note_type": imaging["modality"].astype(str) + " report", "text": imaging["report"].astype(str),
        }))
    notes = pd.concat(parts, ignore_index=True)
    return notes.sort_values(["patient_id", "time"], kind="stable").reset_index(drop=True)


def save_pairing_tables(cohort: Any, out_dir: str | os.PathLike) -> Path:
    """Write a synthetic cohort's full event table (:data:`EVENTS_TABLE_FILE`) and notes table
    (:data:`NOTES_TABLE_FILE`) into ``out_dir`` (its dataset folder), so that pairing sees events and notes after
    each ECG. Returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    events = cohort.ehr_events.copy()
    events["patient_id"] = events["patient_id"].astype(str)
    events.to_parquet(out / EVENTS_TABLE_FILE, index=False)
    cohort_notes(cohort).to_parquet(out / NOTES_TABLE_FILE, index=False)
    return out


def pairing_timelines(source: Any, events: Any = None) -> dict[str, list[dict[str, Any]]]:
    """``{patient_id: events}`` (time-ordered) for pairing: from ``events`` (a cohort, event table or mapping) when
    given, else the :data:`EVENTS_TABLE_FILE` of a dataset folder ``source``, else the union of the rows'
    ``ehr_events`` (see the module docstring)."""
    if events is not None:
        return patient_timelines(events)
    folder = _dataset_folder(source)
    if folder is not None and (folder / EVENTS_TABLE_FILE).is_file():
        return patient_timelines(pd.read_parquet(folder / EVENTS_TABLE_FILE))
    return patient_timelines(source)


def _notes_from_frame(frame: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    missing = {"patient_id", "time", "text"} - set(frame.columns)
    if missing:
        raise ValueError(f"notes table lacks columns {sorted(missing)}")
    frame = frame.assign(time=pd.to_datetime(frame["time"]), patient_id=frame["patient_id"].astype(str))
    frame = frame.sort_values(["patient_id", "time"], kind="stable")
    note_types = frame["note_type"] if "note_type" in frame.columns else pd.Series("note", index=frame.index)
    out: dict[str, list[dict[str, Any]]] = {}
    for pid, time, note_type, text in zip(frame["patient_id"], frame["time"], note_types, frame["text"]):
        if isinstance(text, str) and text.strip():
            out.setdefault(pid, []).append({"time": time, "note_type": str(note_type), "text": text})
    return out


def _notes_from_rows(splits: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    for split in splits.values():
        report_columns = [c for c in split.column_names if c == "report" or c.endswith("_report")]
        table = split.select_columns(["patient_id", "acquisition_time", *report_columns]).to_dict()
        for column in report_columns:
            note_type = "ecg report" if column == "report" else column.replace("_", " ")
            rows.extend(
                {"patient_id": pid, "time": time, "note_type": note_type, "text": text}
                for pid, time, text in zip(table["patient_id"], table["acquisition_time"], table[column])
            )
    if not rows:
        return {}
    return _notes_from_frame(pd.DataFrame(rows))


def patient_notes(source: Any, notes: Any = None) -> dict[str, list[dict[str, Any]]]:
    """``{patient_id: notes}`` (each ``{time, note_type, text}``, time-ordered) for pairing, from ``notes`` (a
    cohort, a notes ``DataFrame`` or a ready mapping) when given, else the :data:`NOTES_TABLE_FILE` of a dataset
    folder ``source``, else the report columns of the rows of ``source`` (a dataset folder or ``DatasetDict``)."""
    if notes is not None:
        if hasattr(notes, "ecgs") and hasattr(notes, "ehr_events"):
            return _notes_from_frame(cohort_notes(notes))
        if isinstance(notes, pd.DataFrame):
            return _notes_from_frame(notes)
        return {str(pid): sorted(items, key=lambda n: _timestamp(n["time"])) for pid, items in notes.items()}
    folder = _dataset_folder(source)
    if folder is not None and (folder / NOTES_TABLE_FILE).is_file():
        return _notes_from_frame(pd.read_parquet(folder / NOTES_TABLE_FILE))
    return _notes_from_rows(_ecg_splits(source))


# ------------------------------------------------------------------------------------------------ ECG-sEHR codes
def codes_for_ecg(
    events: Sequence[Mapping[str, Any]],
    time: Any,
    window_days: float = DEFAULT_EHR_WINDOW_DAYS,
    max_codes: int | None = DEFAULT_MAX_CODES,
) -> list[dict[str, Any]]:
    """The sEHR side of an ECG–sEHR pair: the patient's events within ``window_days`` before and after ``time``
    (bounds included), oldest first, each as ``{time, code_system, code, event_type}``. With more than
    ``max_codes`` events in the window, the ``max_codes`` nearest in time to the ECG are kept (ties: the earlier
    event in the timeline)."""
    kept = codes_around(events, time, window_days=window_days)
    if max_codes is not None and len(kept) > max_codes:
        center = _timestamp(time)
        distance = [abs((_timestamp(e["time"]) - center).total_seconds()) for e in kept]
        nearest = sorted(range(len(kept)), key=lambda i: (distance[i], i))[:max_codes]
        kept = [kept[i] for i in sorted(nearest)]
    return [
        {
            "time": _timestamp(e["time"]).to_pydatetime(),
            "code_system": str(e["code_system"]),
            "code": str(e["code"]),
            "event_type": str(e.get("event_type") or ""),
        }
        for e in kept
    ]


# -------------------------------------------------------------------------------------------- ECG-text pairing
def word_count(text: str) -> int:
    """Default token counter of the text budget: white-space separated words."""
    return len(text.split())


def _truncate_to_budget(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> str:
    """The longest prefix of ``text`` (whole words) that ``count_tokens`` puts within ``max_tokens``."""
    words = text.split()
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(" ".join(words[:mid])) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def _fit_budget(
    pieces: Sequence[tuple[float, tuple, str]],
    max_tokens: int | None,
    count_tokens: Callable[[str], int],
    separator: str,
) -> str:
    """Keep the pieces ``(distance to the ECG, chronological key, text)`` nearest to the ECG first while the token
    count stays within ``max_tokens``; write the kept ones in chronological order."""
    ranked = sorted(pieces, key=lambda p: (p[0], p[1]))
    if max_tokens is None:
        kept = list(ranked)
    else:
        kept, total = [], 0
        separator_cost = count_tokens(separator) if separator.strip() else 0
        for piece in ranked:
            cost = count_tokens(piece[2]) + (separator_cost if kept else 0)
            if total + cost > max_tokens:
                if not kept:
                    kept.append((piece[0], piece[1], _truncate_to_budget(piece[2], max_tokens, count_tokens)))
                break
            kept.append(piece)
            total += cost
    return separator.join(p[2] for p in sorted(kept, key=lambda p: p[1]) if p[2])


def _notes_in_window(notes: Sequence[Mapping[str, Any]], time: Any, window_days: float) -> list[tuple[float, int]]:
    center = _timestamp(time)
    limit = window_days * 86400.0
    out = []
    for index, note in enumerate(notes):
        seconds = abs((_timestamp(note["time"]) - center).total_seconds())
        if seconds <= limit:
            out.append((seconds, index))
    return out


def report_concatenation(
    notes: Sequence[Mapping[str, Any]],
    time: Any,
    lexicon: EntityLexicon,
    window_days: float = DEFAULT_REPORT_WINDOW_DAYS,
    max_tokens: int | None = DEFAULT_TEXT_TOKENS,
    count_tokens: Callable[[str], int] = word_count,
) -> str:
    """The text of an ECG by report concatenation: the patient's notes (time-ordered ``{time, text}``) within
    ``window_days`` before and after ``time`` that name an entity, concatenated in time order within the token
    budget (nearest notes first, see the module docstring). Empty when no note qualifies."""
    pieces = [
        (seconds, (_timestamp(notes[i]["time"]), i), " ".join(str(notes[i]["text"]).split()))
        for seconds, i in _notes_in_window(notes, time, window_days)
        if lexicon.has_entity(str(notes[i]["text"]))
    ]
    return _fit_budget(pieces, max_tokens, count_tokens, " ")


def entity_concatenation(
    notes: Sequence[Mapping[str, Any]],
    time: Any,
    lexicon: EntityLexicon,
    window_days: float = DEFAULT_ENTITY_WINDOW_DAYS,
    max_tokens: int | None = DEFAULT_TEXT_TOKENS,
    count_tokens: Callable[[str], int] = word_count,
) -> str:
    """The text of an ECG by entity concatenation: only the entity mentions of the patient's notes within
    ``window_days`` before and after ``time``, each entity once (its mention nearest in time to the ECG, as
    written there; synonyms of one entity count as one), joined with ``", "`` in time order within the token
    budget (nearest mentions first). Empty without mentions."""
    best: dict[str, tuple[float, tuple, str]] = {}
    for seconds, i in _notes_in_window(notes, time, window_days):
        for position, mention in enumerate(lexicon.find(str(notes[i]["text"]))):
            entity = lexicon.phrases[mention]
            key = (_timestamp(notes[i]["time"]), i, position)
            if entity not in best or (seconds, key) < best[entity][:2]:
                best[entity] = (seconds, key, mention)
    return _fit_budget(list(best.values()), max_tokens, count_tokens, ", ")


def text_for_ecg(
    notes: Sequence[Mapping[str, Any]],
    time: Any,
    lexicon: EntityLexicon,
    method: str = "entity",
    window_days: float | None = None,
    max_tokens: int | None = DEFAULT_TEXT_TOKENS,
    count_tokens: Callable[[str], int] = word_count,
) -> str:
    """The text side of an ECG–text pair by ``method`` ``"entity"`` (entity concatenation, 365-day window by
    default) or ``"report"`` (report concatenation, 30-day window by default)."""
    if method not in TEXT_PAIRINGS:
        raise ValueError(f"method must be one of {TEXT_PAIRINGS}, got {method!r}")
    if method == "entity":
        window = DEFAULT_ENTITY_WINDOW_DAYS if window_days is None else window_days
        return entity_concatenation(notes, time, lexicon, window, max_tokens, count_tokens)
    window = DEFAULT_REPORT_WINDOW_DAYS if window_days is None else window_days
    return report_concatenation(notes, time, lexicon, window, max_tokens, count_tokens)


# ---------------------------------------------------------------------------------------------- paired datasets
def _ecg_splits(source: Any) -> dict[str, Any]:
    """``split name -> datasets.Dataset`` of a dataset folder, ``DatasetDict`` or mapping of datasets."""
    if isinstance(source, (str, os.PathLike)):
        from .ecg_dataset import load_ecg_dataset

        source, _ = load_ecg_dataset(source)
    if hasattr(source, "column_names") and not isinstance(source, Mapping):
        raise ValueError("pass a DatasetDict (patient-level splits) or a dataset folder, not a single split")
    return dict(source)


def _check_patient_splits(splits: Mapping[str, Any]) -> None:
    owner: dict[str, str] = {}
    for name, split in splits.items():
        for pid in set(split["patient_id"]):
            if owner.setdefault(pid, name) != name:
                raise ValueError(f"patient {pid!r} is in splits {owner[pid]!r} and {name!r}; pairs need "
                                 "patient-level splits")


def _sehr_events_feature() -> list:
    from datasets import Value

    return [{"time": Value("timestamp[ms]"), "code_system": Value("string"), "code": Value("string"),
             "event_type": Value("string")}]


def _build_pairs(
    source: Any,
    make_columns: Callable[[str, Any], dict[str, Any] | None],
    features: Mapping[str, Any],
    keep_columns: Sequence[str] | None,
    splits: Sequence[str] | None,
):
    """A ``DatasetDict`` of the ECG rows of ``source`` for which ``make_columns(patient_id, acquisition_time)``
    returns new columns (``None``: no pair), with those columns added."""
    from datasets import DatasetDict

    parts = _ecg_splits(source)
    _check_patient_splits(parts)
    out = {}
    for name in (list(parts) if splits is None else list(splits)):
        split = parts[name]
        if "acquisition_time" not in split.column_names:
            raise ValueError(f"split {name!r} has no 'acquisition_time' column: ECGs cannot be paired in time")
        ids = split.select_columns(["patient_id", "acquisition_time"]).to_dict()
        kept, columns = [], {key: [] for key in features}
        for index, (pid, time) in enumerate(zip(ids["patient_id"], ids["acquisition_time"])):
            values = make_columns(str(pid), time)
            if values is None:
                continue
            kept.append(index)
            for key in features:
                columns[key].append(values[key])
        wanted = [c for c in split.column_names if keep_columns is None or c in keep_columns]
        paired = split.select(kept).select_columns(wanted)
        for key, feature in features.items():
            paired = paired.add_column(key, columns[key], feature=feature)
        out[name] = paired
    return DatasetDict(out)


DEFAULT_KEEP_COLUMNS: tuple[str, ...] = ("ecg_id", "patient_id", "ecg", "lead_mask", "acquisition_time", "age", "sex")


def _keep(keep_columns: Sequence[str] | None, split_columns: Iterable[str]) -> list[str] | None:
    if keep_columns is None:
        return None
    return [*keep_columns, *(c for c in split_columns if c.startswith("labels_") and c not in keep_columns)]


def _label_columns(source: Any) -> list[str]:
    first = next(iter(_ecg_splits(source).values()))
    return [c for c in first.column_names if c.startswith("labels_")]


def build_ecg_sehr_pairs(
    source: Any,
    events: Any = None,
    window_days: float = DEFAULT_EHR_WINDOW_DAYS,
    max_codes: int | None = DEFAULT_MAX_CODES,
    min_codes: int = 1,
    splits: Sequence[str] | None = None,
    keep_columns: Sequence[str] | None = DEFAULT_KEEP_COLUMNS,
):
    """ECG–sEHR pairs: a ``DatasetDict`` with the ECG rows of ``source`` (dataset folder or ``DatasetDict``, its
    patient-level splits) that have at least ``min_codes`` events within ``window_days`` of the ECG, plus the
    column ``sehr_events`` (list of ``{time, code_system, code, event_type}``, :func:`codes_for_ecg`). Kept columns:
    ``keep_columns`` and every ``labels_*`` column (``None``: all). Events come from ``events`` or
    :func:`pairing_timelines`. Batch them with :class:`~cardiomm.data.collators.ECGSEHRCollator`."""
    timelines = pairing_timelines(source, events)

    def make(pid: str, time: Any) -> dict[str, Any] | None:
        codes = codes_for_ecg(timelines.get(pid, []), time, window_days, max_codes)
        return {"sehr_events": codes} if len(codes) >= min_codes else None

    parts = _ecg_splits(source)
    return _build_pairs(parts, make, {"sehr_events": _sehr_events_feature()},
                        _keep(keep_columns, _label_columns(parts)), splits)


def build_ecg_text_pairs(
    source: Any,
    notes: Any = None,
    method: str = "entity",
    window_days: float | None = None,
    lexicon: EntityLexicon | None = None,
    max_tokens: int | None = DEFAULT_TEXT_TOKENS,
    count_tokens: Callable[[str], int] = word_count,
    splits: Sequence[str] | None = None,
    keep_columns: Sequence[str] | None = DEFAULT_KEEP_COLUMNS,
):
    """ECG–text pairs from patient notes: the ECG rows of ``source`` with a non-empty :func:`text_for_ecg`
    (``method`` ``"entity"`` or ``"report"``), plus the column ``text``. Notes come from ``notes`` or
    :func:`patient_notes`; ``lexicon`` defaults to :func:`build_entity_lexicon`."""
    lexicon = lexicon if lexicon is not None else build_entity_lexicon()
    parts = _ecg_splits(source)
    by_patient = patient_notes(source, notes)

    def make(pid: str, time: Any) -> dict[str, Any] | None:
        text = text_for_ecg(by_patient.get(pid, []), time, lexicon, method, window_days, max_tokens, count_tokens)
        return {"text": text} if text else None

    from datasets import Value

    return _build_pairs(parts, make, {"text": Value("string")}, _keep(keep_columns, _label_columns(parts)), splits)


def build_sehr_ecg_text_triplets(
    source: Any,
    events: Any = None,
    notes: Any = None,
    method: str = "entity",
    ehr_window_days: float = DEFAULT_EHR_WINDOW_DAYS,
    text_window_days: float | None = None,
    max_codes: int | None = DEFAULT_MAX_CODES,
    lexicon: EntityLexicon | None = None,
    max_tokens: int | None = DEFAULT_TEXT_TOKENS,
    count_tokens: Callable[[str], int] = word_count,
    splits: Sequence[str] | None = None,
    keep_columns: Sequence[str] | None = DEFAULT_KEEP_COLUMNS,
):
    """(sEHR, ECG, text) triplets: the ECGs with both an ECG–sEHR pair (``sehr_events``) and an ECG–text pair
    (``text``), as a ``DatasetDict`` in the patient-level splits of ``source``. Batch with
    :class:`~cardiomm.data.collators.SEHRECGTextCollator`."""
    lexicon = lexicon if lexicon is not None else build_entity_lexicon()
    parts = _ecg_splits(source)
    timelines = pairing_timelines(source, events)
    by_patient = patient_notes(source, notes)

    def make(pid: str, time: Any) -> dict[str, Any] | None:
        codes = codes_for_ecg(timelines.get(pid, []), time, ehr_window_days, max_codes)
        if not codes:
            return None
        text = text_for_ecg(by_patient.get(pid, []), time, lexicon, method, text_window_days, max_tokens,
                            count_tokens)
        return {"sehr_events": codes, "text": text} if text else None

    from datasets import Value

    features = {"sehr_events": _sehr_events_feature(), "text": Value("string")}
    return _build_pairs(parts, make, features, _keep(keep_columns, _label_columns(parts)), splits)


__all__ = [
    "DEFAULT_EHR_WINDOW_DAYS",
    "DEFAULT_ENTITY_WINDOW_DAYS",
    "DEFAULT_MAX_CODES",
    "DEFAULT_REPORT_WINDOW_DAYS",
    "DEFAULT_TEXT_TOKENS",
    "EVENTS_TABLE_FILE",
    "NOTES_TABLE_FILE",
    "PAIRED_EVENT_FIELDS",
    "TEXT_PAIRINGS",
    "build_ecg_sehr_pairs",
    "build_ecg_text_pairs",
    "build_sehr_ecg_text_triplets",
    "codes_for_ecg",
    "cohort_notes",
    "entity_concatenation",
    "pairing_timelines",
    "patient_notes",
    "report_concatenation",
    "save_pairing_tables",
    "text_for_ecg",
    "word_count",
]
