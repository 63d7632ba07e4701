"""Pre-training pairs of the EHR paper (Lalam et al., Section 4.2): ECG–sEHR pairs, ECG–text pairs from patient
notes, and (sEHR, ECG, text) triplets, as ``datasets`` with the columns their collators need.

* **ECG–sEHR** (:func:`build_ecg_sehr_pairs`): every coded event of the patient within ``window_days`` (365)
  before *and after* the ECG acquisition, in time order (:func:`codes_for_ecg`). When more than ``max_codes``
  fall in the window, the ones nearest in time to the ECG are kept.
* **ECG–text** (:func:`build_ecg_text_pairs`): the patient's notes around the ECG after *entity detection*
  (a note is kept only if it names a biomedical entity of the :class:`EntityLexicon`), then either
  **report concatenation** (the kept notes within ``window_days``, 30 by default, concatenated) or **entity
  concatenation** (only the entities of the kept notes within 365 days, concatenated; the paper's main setting).
* **Triplets** (:func:`build_sehr_ecg_text_triplets`): the ECGs that have both a code sequence and a text.

Token budget (400 tokens in the paper): the text of an ECG is built from the notes (or entities) *nearest in time
to the ECG first* -- the ECG's own report first, then outward in time -- as long as the running token count stays
within ``max_tokens``; what is kept is then written in chronological order. A nearest note that alone exceeds
the budget is cut to its first ``max_tokens`` tokens. Tokens are counted with ``count_tokens`` (e.g.
``lambda s: len(tokenizer.tokenize(s))``; whitespace words by default), without special tokens; the collator
truncates at ``max_text_length`` as well.

Entity detection is a lexicon step (exact phrase matching after :func:`~cardiomm.knowledge.normalize_term`
normalisation, on word boundaries, longest phrase first): the lexicon holds the names and synonyms of the ECG
statement knowledge base and the report phrases of the synthetic cohort
(:data:`~cardiomm.data.synthetic_reports.CONDITION_SYNONYMS`). Sentences that start with a negation cue
("No ...", "Without ...") name what the patient does *not* have, and are skipped.

Patient-level splits are preserved: the ECG rows keep their split, and codes and notes come from the ECG's own
patient (patients in two splits raise). Events *after* an ECG come from a full event table when there is one: a
:class:`~cardiomm.data.synthetic.SyntheticCohort`, an event ``DataFrame``, ``{patient_id: events}``, or the
``ehr_events.parquet`` that :func:`save_pairing_tables` writes next to a dataset folder. Without one, a patient's
timeline is the union of the ``ehr_events`` of their rows (each row holds the events up to its ECG), so events
after the patient's last ECG are missing. Notes likewise come from ``patient_notes.parquet`` (ECG and imaging
reports of the synthetic cohort) or, without it, from the rows' ``report`` (+ ``*_report``) columns.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..knowledge import load_knowledge_base, normalize_term
from .collators import ECGCollator
from .ehr import codes_around, patient_timelines
from .synthetic_reports import CONDITION_SYNONYMS

EVENTS_TABLE_FILE = "ehr_events.parquet"
"""Full event table (``patient_id, time, code_system, code`` [, ...]) saved next to a dataset folder."""
NOTES_TABLE_FILE = "patient_notes.parquet"
"""Patient notes table (``patient_id, time, note_type, text``) saved next to a dataset folder."""
CODE_TOKENIZER_FOLDER = "sehr_tokenizer"
"""Sub-folder of a tri-modal checkpoint holding its ``MedicalCodeTokenizer``."""
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


# ------------------------------------------------------------------------------------------------ entity lexicon
_NEGATION_CUES: tuple[str, ...] = ("no ", "without ", "negative for ")
_SENTENCE_BREAK = re.compile(r"[.;\n]\s*(?=\D|$)")


@dataclass
class EntityLexicon:
    """Biomedical entity phrases for entity detection by exact phrase matching.

    Args:
        phrases: normalised phrase -> entity name (the knowledge-base concept or synthetic condition it names).

    Matching normalises the text with :func:`~cardiomm.knowledge.normalize_term` (case-folded, hyphens between
    words read as spaces), splits it into sentences (on ``.``, ``;`` and new lines), skips sentences that start with
    a negation cue, and finds the phrases on word boundaries, longest first, without overlaps.
    """

    phrases: dict[str, str]
    _pattern: re.Pattern | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.phrases:
            raise ValueError("an entity lexicon needs at least one phrase")
        ordered = sorted(self.phrases, key=lambda p: (-len(p), p))
        self._pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(p) for p in ordered) + r")(?!\w)")

    def __len__(self) -> int:
        return len(self.phrases)

    def __contains__(self, phrase: object) -> bool:
        return isinstance(phrase, str) and normalize_term(phrase) in self.phrases

    def find(self, text: str) -> list[str]:
        """The entity mentions of ``text`` (normalised phrases) in order of appearance, negated sentences skipped."""
        found: list[str] = []
        for sentence in _SENTENCE_BREAK.split(normalize_term(text or "")):
            sentence = sentence.strip()
            if not sentence or sentence.startswith(_NEGATION_CUES):
                continue
            found.extend(match.group(0) for match in self._pattern.finditer(sentence))
        return found

    def entities(self, text: str) -> list[str]:
        """The entity names (not the surface phrases) that ``text`` mentions, in order, without repeats."""
        return list(dict.fromkeys(self.phrases[p] for p in self.find(text)))

    def has_entity(self, text: str) -> bool:
        """Whether ``text`` mentions at least one entity (the paper's entity detection)."""
        return bool(self.find(text))


def build_entity_lexicon(
    knowledge_base: Any = None,
    synonyms: Mapping[str, Iterable[str]] | None = None,
    extra_phrases: Mapping[str, str] | None = None,
    min_length: int = 2,
) -> EntityLexicon:
    """The entity lexicon: the names and synonyms of the knowledge base (default
    :func:`~cardiomm.knowledge.load_knowledge_base`), the synthetic report vocabulary (default
    :data:`~cardiomm.data.synthetic_reports.CONDITION_SYNONYMS`: each condition and its phrases) and
    ``extra_phrases`` (phrase -> entity name). Phrases shorter than ``min_length`` characters are left out; a phrase
    named by two sources keeps the first entity name (knowledge base, then synthetic vocabulary, then extras)."""
    knowledge_base = knowledge_base if knowledge_base is not None else load_knowledge_base()
    synonyms = CONDITION_SYNONYMS if synonyms is None else synonyms
    phrases: dict[str, str] = {}

    def add(phrase: str, name: str) -> None:
        key = normalize_term(phrase)
        if len(key) >= min_length:
            phrases.setdefault(key, name)

    for entry in knowledge_base:
        for name in entry.names:
            add(name, entry.name)
    for condition, condition_phrases in synonyms.items():
        add(condition, condition)
        for phrase in condition_phrases:
            add(phrase, condition)
    for phrase, name in (extra_phrases or {}).items():
        add(phrase, name)
    return EntityLexicon(phrases)


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
    :func:`pairing_timelines`. Batch them with :class:`ECGSEHRCollator`."""
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
    :class:`SEHRECGTextCollator`."""
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


# ------------------------------------------------------------------------------------------------ collators
def _row_time(value: Any) -> Any:
    return value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value


@dataclass
class ECGSEHRCollator(ECGCollator):
    """Batches ECG–sEHR pairs: the ECG through the feature extractor (:meth:`ECGCollator.ecg_features`), the
    ``events_column`` through the ``MedicalCodeTokenizer`` with the ECG acquisition (``time_column``) as reference
    time, padded to the longest sequence of the batch. Keys: ``input_values``, ``lead_mask``, ``input_ids``,
    ``attention_mask``, ``time_ids``, ``type_ids`` (the last four prefixed with ``code_prefix``)."""

    code_tokenizer: Any = None
    events_column: str = "sehr_events"
    time_column: str = "acquisition_time"
    max_codes_length: int = 512
    code_prefix: str = ""

    def code_features(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask``, ``time_ids``, ``type_ids`` of the rows' code sequences."""
        if self.code_tokenizer is None:
            raise ValueError("ECGSEHRCollator needs a code_tokenizer (MedicalCodeTokenizer)")
        encoded = self.code_tokenizer(
            [list(r[self.events_column]) for r in rows],
            reference_time=[_row_time(r[self.time_column]) for r in rows],
            max_length=self.max_codes_length, window="recent", padding="longest", return_tensors="pt",
        )
        return {self.code_prefix + k: encoded[k] for k in ("input_ids", "attention_mask", "time_ids", "type_ids")}

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.ecg_features(rows)
        batch.update(self.code_features(rows))
        if self.label_column is not None:
            batch["labels"] = torch.as_tensor(np.stack([np.asarray(r[self.label_column]) for r in rows])).float()
        return batch


@dataclass
class SEHRECGTextCollator(ECGSEHRCollator):
    """Batches (sEHR, ECG, text) triplets for :class:`SEHRECGTextModel`: ECG features, the code sequence with keys
    ``ehr_input_ids``, ``ehr_attention_mask``, ``ehr_time_ids``, ``ehr_type_ids``, and the text (``text_column``)
    through ``tokenizer`` as ``input_ids``, ``attention_mask`` (+ ``token_type_ids``), truncated at
    ``max_text_length``."""

    tokenizer: Any = None
    text_column: str = "text"
    max_text_length: int = DEFAULT_TEXT_TOKENS
    code_prefix: str = "ehr_"

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.ecg_features(rows)
        batch.update(self.code_features(rows))
        text = self.tokenizer(
            [str(r[self.text_column] or "") for r in rows], padding="longest", truncation=True,
            max_length=self.max_text_length, return_tensors="pt",
        )
        batch.update({k: v for k, v in text.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
        return batch


@dataclass
class SEHRECGTextPreprocessing:
    """The preprocessing of a tri-modal checkpoint, saved next to its weights: the ECG feature extractor and the
    text tokenizer in the folder itself, the ``MedicalCodeTokenizer`` in :data:`CODE_TOKENIZER_FOLDER`."""

    feature_extractor: Any
    code_tokenizer: Any
    tokenizer: Any

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write the three parts (see the class docstring)."""
        self.feature_extractor.save_pretrained(save_directory)
        self.tokenizer.save_pretrained(save_directory)
        self.code_tokenizer.save_pretrained(os.path.join(save_directory, CODE_TOKENIZER_FOLDER))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> SEHRECGTextPreprocessing:
        """Load the three parts of a folder written by :meth:`save_pretrained` (``kwargs``, e.g.
        ``trust_remote_code``, go to each ``from_pretrained``)."""
        from transformers import AutoFeatureExtractor, AutoTokenizer

        return cls(
            feature_extractor=AutoFeatureExtractor.from_pretrained(path, **kwargs),
            code_tokenizer=AutoTokenizer.from_pretrained(os.path.join(path, CODE_TOKENIZER_FOLDER), **kwargs),
            tokenizer=AutoTokenizer.from_pretrained(path, **kwargs),
        )


__all__ = [
    "CODE_TOKENIZER_FOLDER",
    "DEFAULT_EHR_WINDOW_DAYS",
    "DEFAULT_ENTITY_WINDOW_DAYS",
    "DEFAULT_MAX_CODES",
    "DEFAULT_REPORT_WINDOW_DAYS",
    "DEFAULT_TEXT_TOKENS",
    "ECGSEHRCollator",
    "EVENTS_TABLE_FILE",
    "EntityLexicon",
    "NOTES_TABLE_FILE",
    "PAIRED_EVENT_FIELDS",
    "SEHRECGTextCollator",
    "SEHRECGTextPreprocessing",
    "TEXT_PAIRINGS",
    "build_ecg_sehr_pairs",
    "build_ecg_text_pairs",
    "build_entity_lexicon",
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
