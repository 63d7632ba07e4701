"""Cardiac-entity mining (K-MERL section 2.4): known answers on the synthetic cohort, negation and uncertainty,
real PTB-XL reports, the generative extractor's verification, the entity file and the ``cardiomm entities mine``
command."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from cli_process import describe, run_cardiomm

from cardiomm.data.ecg_dataset import load_ecg_dataset
from cardiomm.knowledge import (
    GenerativeEntityExtractor,
    KnowledgeBaseExtractor,
    MinedEntities,
    load_mined_entities,
    mine_dataset_entities,
    mine_entities,
    normalize_term,
)
from cardiomm.knowledge.entity_mining import EntityExtractor, parse_entity_list
from cardiomm.synthetic import SYNTHETIC_CONDITIONS, synthesize

REPO_ROOT = Path(__file__).resolve().parents[1]
MI = "myocardial infarction"
AMI, IMI = "anterior myocardial infarction", "inferior myocardial infarction"
LVH = "left ventricular hypertrophy"


@pytest.fixture(scope="module")
def extractor() -> KnowledgeBaseExtractor:
    return KnowledgeBaseExtractor()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("entity_cohort") / "synth"
    synthesize(n_patients=150, out_dir=out, seed=11, write_wfdb_files=False, include_ehr=False, progress=False)
    return out


@pytest.fixture(scope="module")
def cohort_rows(cohort) -> list[dict]:
    dataset, _ = load_ecg_dataset(cohort)
    columns = ["ecg_id", "report", "report_labels", "labels_conditions"]
    return [row for split in dataset for row in dataset[split].select_columns(columns)]


def to_condition(extractor: KnowledgeBaseExtractor) -> dict[str, str]:
    """Mined entity name -> synthetic condition name (each condition's own name read through the lexicon)."""
    return {extractor.phrases[normalize_term(c)]: c for c in SYNTHETIC_CONDITIONS}


def precision_recall(mined: MinedEntities, rows: list[dict], names: dict[str, str], gold_key: str):
    tp = fp = fn = 0
    for row in rows:
        predicted = {names[e] for e in mined.labels[row["ecg_id"]] if e in names}
        if gold_key == "report_labels":
            gold = set(row["report_labels"])
        else:
            gold = {c for c, v in zip(SYNTHETIC_CONDITIONS, row["labels_conditions"]) if v}
        tp += len(predicted & gold)
        fp += len(predicted - gold)
        fn += len(gold - predicted)
    return tp / (tp + fp), tp / (tp + fn)


# ------------------------------------------------------------------------------------------- known answers
@pytest.mark.parametrize("keep_uncertain", [False, True])
def test_mined_labels_match_the_conditions_each_synthetic_report_states(cohort, cohort_rows, keep_uncertain):
    extractor = KnowledgeBaseExtractor(keep_uncertain=keep_uncertain)
    mined = mine_dataset_entities(cohort, extractor=extractor, progress=False)
    assert set(mined.labels) == {row["ecg_id"] for row in cohort_rows}
    names = to_condition(extractor)
    assert len(set(names.values())) == len(SYNTHETIC_CONDITIONS)  # every condition has its own entity
    precision, recall = precision_recall(mined, cohort_rows, names, "report_labels")
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    # nothing stated that the ECG does not have: negated and absent conditions never come out
    precision_true, _ = precision_recall(mined, cohort_rows, names, "labels_conditions")
    assert precision_true >= 0.99, precision_true
    if keep_uncertain:  # "cannot exclude X" is the only way a synthetic report states X uncertainly
        assert recall == 1.0


def test_pertinent_negatives_never_produce_an_entity(cohort_rows, extractor):
    checked = 0
    for row in cohort_rows:
        report = row["report"].lower()
        entities = set(extractor.extract(row["report"]))
        if "no evidence of acute infarction" in report or "no pathological q waves" in report:
            checked += 1
            assert not entities & {MI, AMI, IMI, "abnormal Q waves"}, row["report"]
        if "no lvh" in report or "no evidence of left ventricular hypertrophy" in report:
            checked += 1
            assert LVH not in entities, row["report"]
        if "no ventricular ectopy" in report:
            checked += 1
            assert "ventricular premature complex" not in entities, row["report"]
        for sentence in re.split(r"[.;\n]\s*", report):
            if sentence.startswith("no "):
                assert all(m.status == "negated" for m in extractor.mentions(sentence)), sentence
    assert checked >= 10


@pytest.mark.parametrize("report, expected, absent", [
    ("No evidence of acute infarction. Sinus rhythm.", {"sinus rhythm"}, {MI}),
    ("Sinus rhythm without LVH.", {"sinus rhythm"}, {LVH}),
    ("Negative for atrial fibrillation; sinus rhythm", {"sinus rhythm"}, {"atrial fibrillation"}),
    ("Absence of Q waves. Sinus rhythm", {"sinus rhythm"}, {"Q waves present"}),
    ("Atrial fibrillation ruled out, normal sinus rhythm", {"sinus rhythm"}, {"atrial fibrillation"}),
    ("ST elevation not seen. Sinus tachycardia", {"sinus tachycardia"}, {"ST-segment elevation"}),
    ("Pre-excitation absent. Sinus rhythm", {"sinus rhythm"}, {"Wolff-Parkinson-White syndrome"}),
    ("No atrial fibrillation but left bundle branch block", {"left bundle branch block"}, {"atrial fibrillation"}),
    ("Cannot exclude anterior infarct. Sinus rhythm", {"sinus rhythm"}, {AMI}),
    ("Anterior infarct cannot be excluded", set(), {AMI}),
    ("Cannot rule out LVH", set(), {LVH}),
    ("Rule out inferior MI", set(), {IMI}),
    ("R/O atrial flutter", set(), {"atrial flutter"}),
    ("LVH vs. normal variant", set(), {LVH}),
    ("Questionable right bundle branch block", set(), {"right bundle branch block"}),
    # hedges of positive statements count
    ("Possible anterior infarct - age undetermined", {AMI, MI}, set()),
    ("Probable left ventricular hypertrophy. Borderline ECG", {LVH}, set()),
    ("Consider inferior MI. Sinus rhythm", {IMI, MI, "sinus rhythm"}, set()),
    ("Voltages are high in chest leads suggesting LVH", {LVH}, set()),
    # a negation reaches only its clause and a few words
    ("No acute changes, atrial fibrillation", {"atrial fibrillation"}, set()),
    ("Pacemaker rhythm - no further analysis", {"normal functioning artificial pacemaker"}, set()),
    # German and Swedish PTB-XL statements
    ("sinusrhythmus normales ekg ergo:  225 watt  insbes. kein vorhofflimmern", {"sinus rhythm", "normal ECG"},
     {"atrial fibrillation"}),
    ("sinusrhythmus qrs(t) abnormal    septaler infarkt nicht auszuschliessen", {"sinus rhythm", "abnormal QRS"},
     {"anteroseptal myocardial infarction"}),
    ("sinusrytm avvikande qrs(t) fÖrlopp    lateral myokardskada kan ej uteslutas", {"sinus rhythm"},
     {"subendocardial injury in lateral leads"}),
    ("sinusrhythmus qrs(t) abnormal    anterolateraler infarkt mÖglich", {"anterolateral myocardial infarction"},
     set()),
])
def test_negation_and_uncertainty(extractor, report, expected, absent):
    found = set(mine_entities([report], ["1"], extractor, progress=False).labels["1"])
    assert expected <= found, (report, found)
    assert not absent & found, (report, found)


def test_keep_uncertain_keeps_uncertain_but_never_negated_mentions():
    keep = KnowledgeBaseExtractor(keep_uncertain=True)
    assert keep.extract("Cannot exclude LVH") == [LVH]
    assert keep.extract("LVH ruled out") == []
    assert keep.extract("No LVH") == []


def test_synonyms_merge_into_one_unique_name(extractor):
    reports = ["PVCs", "Premature ventricular contractions", "Ventricular ectopy", "ventrikulÄre extrasystole(n)"]
    assert {tuple(extractor.extract(r)) for r in reports} == {("ventricular premature complex",)}
    assert extractor.extract("Prolonged PR interval") == extractor.extract("1st degree AV block")
    assert extractor.extract("NSR") == extractor.extract("sinusrhythmus") == extractor.extract("sinusrytm")
    # "linkstyp" is the normal left axis type, not left axis deviation; "überdrehter linkstyp" is
    assert extractor.extract("linkstyp") == [] and extractor.extract("ueberdrehter linkstyp") == ["left axis deviation"]


def test_subtypes_are_aggregated_under_their_superclasses(extractor):
    reports = ["Anterior MI", "Inferior infarct, age undetermined", "Sinus rhythm", "Complete left bundle branch block"]
    mined = mine_entities(reports, [1, 2, 3, 4], extractor, progress=False)
    assert mined.labels["1"] == [AMI, MI] and mined.labels["2"] == [IMI, MI]
    assert mined.hierarchy[MI] == [AMI, IMI]
    assert "complete left bundle branch block" in mined.hierarchy["left bundle branch block"]
    assert {"left bundle branch block", "conduction disturbance"} <= set(mined.labels["4"])
    assert mined.counts[MI] == 2 and mined.entities[0] == MI  # most frequent first
    flat = mine_entities(reports, [1, 2, 3, 4], extractor, aggregate=False, progress=False)
    assert MI not in flat.entities and flat.labels["1"] == [AMI]
    custom = mine_entities(reports, [1, 2, 3, 4], extractor, hierarchy={"rhythm": ["sinus rhythm"]}, progress=False)
    assert custom.labels["3"] == ["sinus rhythm", "rhythm"] and custom.hierarchy == {"rhythm": ["sinus rhythm"]}


def test_min_count_and_label_matrix(tmp_path, extractor):
    reports = ["Sinus rhythm. LVH", "Sinus rhythm", "Atrial fibrillation", None]
    mined = mine_entities(reports, ["a", "b", "c", "d"], extractor, min_count=2, progress=False)
    assert mined.entities == ["sinus rhythm"] and mined.labels["c"] == [] and mined.labels["d"] == []
    mined = mine_entities(reports, ["a", "b", "c", "d"], extractor, progress=False)
    matrix = mined.label_matrix(["a", "zzz", "c"])
    assert matrix.dtype == np.float32 and matrix.shape == (3, len(mined.entities))
    assert matrix[1].sum() == 0
    assert matrix[0, mined.entities.index(LVH)] == 1 and matrix[0, mined.entities.index("sinus rhythm")] == 1
    assert matrix[2].sum() == 1
    path = mined.save(tmp_path / "entities.json")
    loaded = load_mined_entities(path)
    assert loaded.entities == mined.entities and loaded.labels == mined.labels and loaded.counts == mined.counts
    assert loaded.hierarchy == mined.hierarchy
    np.testing.assert_array_equal(MinedEntities.load(path).label_matrix(["a", "zzz", "c"]), matrix)
    with pytest.raises(ValueError, match="ids"):
        mine_entities(["x"], [], extractor, progress=False)


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    ("{not json", "not a JSON"),
    (json.dumps({"format": "something-else"}), "not a cardiomm entity file"),
    (json.dumps({"format": "cardiomm-entities", "version": 99}), "version"),
    (json.dumps({"format": "cardiomm-entities", "version": 1, "entities": ["a"], "hierarchy": {}, "counts": {},
                 "labels": {"1": ["b"]}}), "not in"),
    (json.dumps({"format": "cardiomm-entities", "version": 1, "entities": "a", "hierarchy": {}, "counts": {},
                 "labels": {}}), "entities"),
])
def test_a_bad_entity_file_is_an_error_naming_it(tmp_path, content, message):
    path = tmp_path / "entities.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        load_mined_entities(path)
    assert str(path) in str(err.value)


def test_unknown_split_and_column_are_errors(cohort):
    with pytest.raises(ValueError, match="nope"):
        mine_dataset_entities(cohort, splits=["nope"], progress=False)
    with pytest.raises(ValueError, match="no column"):
        mine_dataset_entities(cohort, splits=["train"], text_column="missing", progress=False)
    mined = mine_dataset_entities(cohort, splits=["test"], progress=False)
    dataset, _ = load_ecg_dataset(cohort)
    assert set(mined.labels) == set(dataset["test"]["ecg_id"]) and mined.extra["splits"] == ["test"]


# ------------------------------------------------------------------------------------------- real reports
def ptbxl_reports() -> dict[int, str]:
    import pandas as pd

    path = Path(os.environ.get("CARDIOMM_TEST_DATA", REPO_ROOT.parent / "shared" / "data")) / "ptbxl"
    table = path / "ptbxl_database.csv"
    if not table.is_file():
        pytest.skip(f"real PTB-XL sample not found at {path} (set CARDIOMM_TEST_DATA)")
    frame = pd.read_csv(table)
    return dict(zip(frame["ecg_id"].astype(int), frame["report"].astype(str)))


@pytest.mark.parametrize("ecg_id, expected, absent", [
    (1, {"sinus rhythm", "low QRS voltages in the frontal and horizontal leads"}, {"normal ECG"}),
    (8, {"sinus rhythm", "abnormal QRS", IMI, MI}, {"left axis deviation"}),  # linkstyp is no deviation
    (41, {"left axis deviation", "left anterior fascicular block"}, set()),
    (45, {"incomplete right bundle branch block", "normal ECG"}, set()),
    (63, {"sinus rhythm"}, {"subendocardial injury in anteroseptal leads"}),  # nicht auszuschliessen
    (137, {"sinus rhythm", LVH}, set()),  # Swedish
    (191, {"sinus bradycardia", LVH}, {"subendocardial injury in lateral leads"}),  # kan ej uteslutas
    (255, {"ventricular premature complex", "incomplete right bundle branch block"}, set()),
    (267, {IMI, MI, "Q waves present"}, set()),  # "old inferior    myocardial infarction" wrapped over spaces
    (269, {"first degree AV block", "right bundle branch block", IMI}, set()),
    (290, {IMI}, set()),  # "possible old inferior myocardial infarction"
])
def test_real_ptbxl_reports(extractor, ecg_id, expected, absent):
    report = ptbxl_reports()[ecg_id]
    found = set(mine_entities([report], [ecg_id], extractor, progress=False).labels[str(ecg_id)])
    assert expected <= found, (report, found)
    assert not absent & found, (report, found)


def test_every_real_ptbxl_report_with_a_statement_gets_an_entity(extractor):
    reports = ptbxl_reports()
    mined = mine_entities(list(reports.values()), list(reports), extractor, progress=False)
    empty = [reports[int(i)] for i, names in mined.labels.items() if not names]
    assert all("trace only requested" in r for r in empty), empty
    assert mined.counts["sinus rhythm"] >= 200


# ------------------------------------------------------------------------------------------- generative extractor
@pytest.mark.parametrize("text, expected", [
    ("[Sinus rhythm, LVH]", ["Sinus rhythm", "LVH"]),
    ("Entities: ['atrial fibrillation'; \"PVCs\"] and more text", ["atrial fibrillation", "PVCs"]),
    ("[Sinus rhythm, Left axis deviation", ["Sinus rhythm", "Left axis deviation"]),
    ("Sinus rhythm, first degree AV block.\nExplanation: ...", ["Sinus rhythm", "first degree AV block"]),
    ("[]", []),
    ("[None]", []),
    ("", []),
])
def test_parse_entity_list(text, expected):
    assert parse_entity_list(text) == expected


def test_generated_entities_are_verified_before_they_count():
    report = "Sinus rhythm. PVCs. No evidence of acute infarction. Cannot exclude LVH. Borderline ECG."
    prompts = []

    def generate(prompt: str) -> str:
        prompts.append(prompt)
        return "[Sinus rhythm, PVCs, acute infarction, LVH, atrial fibrillation, Borderline ECG]"

    extractor = GenerativeEntityExtractor(generate=generate)
    assert isinstance(extractor, EntityExtractor)
    found = extractor.extract(report)
    # merged synonyms, unknown-but-present entity kept normalised; hallucinated, negated, uncertain rejected
    assert found == ["sinus rhythm", "ventricular premature complex", "borderline ecg"]
    assert {"acute infarction", "lvh", "atrial fibrillation"} <= set(extractor.rejected)
    assert "Please extract all positive Cardiac-related Entities" in prompts[0] and report in prompts[0]
    assert LVH in GenerativeEntityExtractor(generate=generate, keep_uncertain=True).extract(report)
    assert extractor.extract("") == []
    assert extractor.merge("possible LVH") == LVH
    assert extractor.merge("Sinus rhythm with PVCs") == "sinus rhythm with pvcs"  # two entities: kept as written


def test_llm_verification_keeps_only_yes_answers():
    report = "Sinus rhythm. Left axis deviation."

    def generate(prompt: str) -> str:
        if prompt.startswith("Please verify"):
            return "YES" if "Entity: Sinus rhythm" in prompt else "NO"
        return "[Sinus rhythm, Left axis deviation]"

    plain = GenerativeEntityExtractor(generate=generate)
    verified = GenerativeEntityExtractor(generate=generate, llm_verification=True)
    assert plain.extract(report) == ["sinus rhythm", "left axis deviation"]
    assert verified.extract(report) == ["sinus rhythm"]
    assert verified.describe()["verification_prompt"].startswith("Please verify")


def test_generative_extractor_runs_a_local_causal_lm(tmp_path):
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["[", "]", ",", "sinus", "rhythm", "lvh", "no", "ecg", "report", "please", "entities", "."]
    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_positions=256, n_embd=16, n_layer=2, n_head=2,
                        eos_token_id=1, bos_token_id=1)
    folder = tmp_path / "tiny-lm"
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    extractor = GenerativeEntityExtractor(model=folder, max_new_tokens=8)
    report = "Sinus rhythm. No LVH."
    raw = extractor._generate(extractor.extraction_prompt(report))
    assert isinstance(raw, str) and raw == extractor._generate(extractor.extraction_prompt(report))  # greedy
    found = extractor.extract(report)
    assert set(found) <= {"sinus rhythm"}  # whatever a random model says, only verified entities count
    mined = mine_entities([report], ["1"], extractor, progress=False)
    assert mined.extractor["name"] == "generative" and mined.extractor["model"] == str(folder)
    with pytest.raises(ValueError, match="not a local model folder"):
        GenerativeEntityExtractor(model=tmp_path / "missing")


# ------------------------------------------------------------------------------------------- command line
def test_cli_mines_a_dataset_and_writes_the_entity_file(cohort, tmp_path):
    out = tmp_path / "entities.json"
    run = run_cardiomm("entities", "mine", "--data", cohort, "--out", out, "--min-count", "2", cwd=tmp_path)
    assert run.returncode == 0, describe(run)
    assert "reports/s" in run.stdout and str(out) in run.stdout and "superclasses" in run.stdout
    mined = load_mined_entities(out)
    dataset, _ = load_ecg_dataset(cohort)
    assert mined.n_reports == sum(len(dataset[s]) for s in dataset) == len(mined.labels)
    assert min(mined.counts.values()) >= 2 and "sinus rhythm" in mined.entities and MI in mined.hierarchy
    assert json.loads(out.read_text())["format"] == "cardiomm-entities"


def test_cli_bad_data_folder_exits_2_naming_it(tmp_path):
    missing = tmp_path / "no-such-dataset"
    run = run_cardiomm("entities", "mine", "--data", missing, "--out", tmp_path / "e.json", cwd=tmp_path)
    assert run.returncode == 2, describe(run)
    assert "cardiomm: error:" in run.stderr and str(missing) in run.stderr
    assert not (tmp_path / "e.json").exists()
    run = run_cardiomm("entities", "mine", "--data", missing, "--out", tmp_path / "e.json",
                       "--extractor", "generative", cwd=tmp_path)
    assert run.returncode == 2 and "--model" in run.stderr, describe(run)
