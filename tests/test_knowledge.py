"""ECG statement knowledge base, label resolution across datasets, prompt building and verification, and entity
detection in notes (the condition vocabulary and the entity lexicon)."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_process import cardiomm_env

from cardiomm.knowledge import (
    CATEGORIES,
    CONDITION_SYNONYMS,
    CONNECTIVE_WORDS,
    build_clinical_prompt,
    build_entity_lexicon,
    clinical_terms,
    get_prompts,
    load_knowledge_base,
    load_prompts,
    normalize_term,
    save_prompts,
    select_prompts,
    split_sentences,
    template_prompt,
    verify_prompt,
)
from cardiomm.knowledge.entities import CONDITION_SYNONYMS_FILE
from cardiomm.knowledge.prompts import REPHRASE_INSTRUCTION

SHARED = Path("/work/shared")
LABELS_BY_DATASET = SHARED / "reference/merl/labels_by_dataset.json"
CKEPE_PROMPTS = SHARED / "reference/merl/CKEPE_prompt.json"
SCP_STATEMENTS = SHARED / "data/ptbxl/scp_statements.csv"

TASKS = ["ptbxl_super_class", "ptbxl_sub_class", "ptbxl_form", "ptbxl_rhythm", "cpsc2018", "csn"]


@pytest.fixture(scope="module")
def kb():
    return load_knowledge_base()


# ------------------------------------------------------------------------------------------ knowledge base
def test_kb_has_the_71_ptbxl_scp_statements(kb):
    scp = {e.scp_code for e in kb if e.scp_code}
    assert len(scp) == 71
    if SCP_STATEMENTS.exists():
        with SCP_STATEMENTS.open() as f:
            codes = {row[""] for row in csv.DictReader(f)}
        assert scp == codes


def test_every_entry_is_complete_and_consistent(kb):
    for e in kb:
        assert e.name and e.description, e.code
        assert e.attributes, f"{e.code} has no ECG attributes"
        assert e.category and set(e.category) <= set(CATEGORIES), e.code
        for parent in (e.superclass, e.subclass):
            if parent and parent != e.code:
                assert e.code in kb.descendants(parent), f"{e.code} not under its class {parent}"


def test_names_and_synonyms_are_unambiguous(kb):
    seen: dict[str, str] = {}
    for e in kb:
        for name in e.names:
            key = normalize_term(name)
            assert seen.setdefault(key, e.code) == e.code, f"{name!r}: {seen[key]} and {e.code}"


def test_subtype_hierarchy_has_no_cycle(kb):
    for e in kb:
        stack, seen = list(e.subtypes), set()
        while stack:
            code = stack.pop()
            assert code != e.code, f"cycle through {e.code}"
            if code not in seen:
                seen.add(code)
                stack.extend(kb[code].subtypes)


def test_json_round_trip_of_entries(kb, tmp_path):
    path = tmp_path / "statements.json"
    path.write_text(json.dumps(kb.to_dict()))
    again = load_knowledge_base(path)
    assert [e for e in again] == [e for e in kb]


def test_every_task_label_resolves_to_an_entry(kb):
    for task in TASKS:
        label_set = kb.label_set(task)
        assert label_set.labels
        for label in label_set.labels:
            assert kb.resolve_label(label, task).code == label_set.labels[label]


@pytest.mark.skipif(not LABELS_BY_DATASET.exists(), reason="reference label file not available")
def test_label_sets_match_the_reference_split_files(kb):
    reference = json.loads(LABELS_BY_DATASET.read_text())
    for task_name, spec in reference.items():
        if not isinstance(spec, dict):
            continue  # free-text notes
        label_set = kb.label_set(task_name)  # "icbeb (CPSC2018)" and "chapman (CSN)" are aliases
        for split in ("train", "val", "test"):
            columns = spec[split]["label_columns_in_order"]
            assert set(columns) == set(label_set.labels), (task_name, split)
            for label in columns:
                kb.resolve_label(label, task_name)


def test_label_set_lookup_by_dataset_and_task(kb):
    assert kb.label_set("ptbxl", "rhythm").name == "ptbxl_rhythm"
    assert kb.label_set("ptbxl", "ptbxl_form").name == "ptbxl_form"
    assert kb.label_set("chapman").name == "csn"
    with pytest.raises(KeyError):
        kb.label_set("csn", "form")


# ------------------------------------------------------------------------------------------ exact resolution
def test_resolution_is_exact_never_by_substring(kb):
    assert kb.resolve_label("AFLT").code == "AFLT"
    with pytest.raises(KeyError):
        kb.resolve_label("AFL")  # a prefix of AFLT
    with pytest.raises(KeyError):
        kb.resolve_label("flutter")  # a substring of "atrial flutter"
    assert kb.resolve_label("MI").code == "MI"
    assert kb.resolve_label("AMI").code == "AMI"
    assert kb.resolve_label("IMI").code == "IMI"
    assert kb.resolve_label("Atrial  Flutter").code == "AFLT"  # case and spacing only
    assert kb.resolve_label("T wave inversion").code == kb.resolve_label("T-wave inversion").code == "INVT"


def test_dataset_specific_labels(kb):
    assert kb.resolve_label("AF", "csn").code == "AFLT"  # CSN: AF is atrial flutter
    assert kb.resolve_label("AF", "cpsc2018").code == "AFIB"  # CPSC2018 class name AF: atrial fibrillation
    with pytest.raises(KeyError):
        kb.resolve_label("AF")  # ambiguous abbreviation, no dataset given
    assert kb.resolve_label("STTC", "ptbxl_super_class").code == "STTC"
    assert kb.resolve_label("STTC", "ptbxl_sub_class").code == "STTC_OTHER"
    assert kb.resolve_label("STE", "ptbxl_form").code == "STE_"  # non-specific ST elevation
    assert kb.resolve_label("STE", "cpsc2018").code == "STE"  # ST-segment elevation
    assert kb.resolve_label("Sinus Irregularity", "csn").code == "SARRH"


def test_translate_labels_between_datasets(kb):
    assert kb.translate_label("VPC", "cpsc2018", "csn") == "VPB"
    assert kb.translate_label("VPC", "cpsc2018", "ptbxl_form") == "PVC"
    assert kb.translate_label("AF", "csn", "ptbxl_rhythm") == "AFLT"
    assert kb.translate_label("AFLT", "ptbxl_rhythm", "csn") == "AF"
    assert kb.translate_label("AFIB", "ptbxl_rhythm", "csn") == "AFIB"
    assert kb.translate_label("ST", "csn", "ptbxl_rhythm") == "STACH"
    assert kb.translate_label("CRBBB", "cpsc2018", "csn") == "RBBB"
    assert kb.translate_label("AMI", "ptbxl_sub_class", "csn") is None


def test_category_matching_for_distribution_shift(kb):
    # PTB-XL superclasses -> CPSC2018 classes, through the subtype hierarchy
    assert kb.match_labels("ptbxl_super_class", "cpsc2018") == {
        "HYP": [],
        "NORM": ["NORM"],
        "MI": [],
        "CD": ["1AVB", "CRBBB", "CLBBB"],
        "STTC": ["STE", "STD"],
    }
    exact = kb.match_labels("ptbxl_super_class", "csn", include_subtypes=False)
    assert exact["MI"] == ["MI"] and exact["HYP"] == []
    assert set(kb.match_labels("ptbxl_super_class", "csn")["HYP"]) == {"LVH", "RVH"}
    assert kb.ancestors("CRBBB") == {"CD", "RBBB"}
    assert kb.ancestors("ASMI") == {"AMI", "MI"}


# ------------------------------------------------------------------------------------------ prompts
def test_get_prompts_covers_every_label_and_verifies(kb):
    for task in TASKS:
        prompts = get_prompts(task)
        assert list(prompts) == kb.label_set(task).label_names
        for label, texts in prompts.items():
            assert texts and len(set(texts)) == len(texts)
            for text in texts:
                assert verify_prompt(text, kb) == [], (task, label, text)
    assert get_prompts("ptbxl", "rhythm", style="name")["AFIB"] == ["atrial fibrillation"]
    clinical = get_prompts("csn", style="clinical")["AF"]
    assert clinical == [template_prompt(kb["AFLT"], kb)]
    assert "sawtooth flutter waves" in clinical[0]


def test_template_prompt_is_deterministic_and_uses_kb_terms(kb):
    entry = kb["AFIB"]
    text = template_prompt(entry, kb)
    assert text == template_prompt(entry, kb)
    assert text.startswith("atrial fibrillation: ")
    assert all(a in text for a in entry.attributes)
    for e in kb:
        scope = [e, *kb.subtype_entries(e.code)]
        assert verify_prompt(template_prompt(e, kb), scope) == [], e.code


def test_verify_prompt_flags_terms_outside_the_kb(kb):
    good = "ECG showing atrial fibrillation with absent P-waves and irregularly irregular RR intervals"
    assert verify_prompt(good, kb["AFIB"]) == []
    bad = "atrial fibrillation: absent P waves, QRS duration > 150 ms, no fibrillatory f waves"
    assert verify_prompt(bad, kb) == ["qrs duration > 150 ms", "no"]
    # a real term of another entry is unknown for this entry, known for the whole base
    other = "atrial fibrillation with sawtooth flutter waves"
    assert verify_prompt(other, kb["AFIB"]) == ["sawtooth flutter waves"]
    assert verify_prompt(other, kb) == []
    assert verify_prompt("atrial fibrillation with tombstone hyperkalemia", kb) == ["tombstone hyperkalemia"]
    assert {"no", "not", "without"}.isdisjoint(CONNECTIVE_WORDS)


def test_rephrasing_is_kept_only_when_verified(kb):
    entry = kb["AFIB"]
    template = template_prompt(entry, kb)

    def reorder(text: str) -> str:
        return "ECG showing " + ", ".join(reversed(entry.attributes)) + " and atrial fibrillation"

    def hallucinate(text: str) -> str:
        return text + ", QRS duration of 150 ms"

    def drop(text: str) -> str:
        return "atrial fibrillation with absent P waves"

    kept = build_clinical_prompt(entry, kb, rephraser=reorder)
    assert kept.source == "rephrased" and kept.text == reorder(template)
    added = build_clinical_prompt(entry, kb, rephraser=hallucinate)
    assert added.source == "template" and added.text == template
    assert added.unknown_terms == ("qrs duration", "150 ms") and added.rejected_rephrasing == hallucinate(template)
    dropped = build_clinical_prompt(entry, kb, rephraser=drop)
    assert dropped.text == template and "fibrillatory f waves" in dropped.missing_terms


def _tiny_causal_lm(folder: Path, kb) -> Path:
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    text = " ".join(clinical_terms(kb)) + " " + REPHRASE_INSTRUCTION
    words = sorted(set(re.findall(r"\w+|[^\w\s]", text.lower())))
    vocab = {t: i for i, t in enumerate(["[UNK]", "[PAD]", "[EOS]", *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    ).save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(vocab), n_positions=256, n_embd=32, n_layer=1, n_head=2,
        bos_token_id=2, eos_token_id=2, pad_token_id=1,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def test_random_local_llm_rephrasing_is_rejected_for_the_template(kb, tmp_path):
    folder = _tiny_causal_lm(tmp_path / "tiny-lm", kb)
    for code in ("AFIB", "CD", "LVH"):
        entry = kb[code]
        result = build_clinical_prompt(entry, kb, rephraser=folder)
        assert result.source == "template"
        assert result.text == template_prompt(entry, kb)
        assert result.rejected_rephrasing is not None
        assert result.unknown_terms or result.missing_terms


# ------------------------------------------------------------------------------------------ prompt files
def test_prompt_file_round_trip_and_exact_selection(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"AFL": "atrial flutter", "AFLT": ["atrial flutter", "flutter waves"], "MI": "mi"}))
    prompts = load_prompts(path)
    assert prompts == {"AFL": ["atrial flutter"], "AFLT": ["atrial flutter", "flutter waves"], "MI": ["mi"]}
    assert load_prompts(save_prompts(prompts, tmp_path / "again.json")) == prompts
    assert list(select_prompts(prompts, ["MI", "AFLT"])) == ["MI", "AFLT"]
    with pytest.raises(KeyError, match="AMI"):
        select_prompts(prompts, ["AMI", "MI"])  # no fallback to the "MI" prompts
    path.write_text(json.dumps({"AFIB": 3}))
    with pytest.raises(TypeError):
        load_prompts(path)


@pytest.mark.skipif(not CKEPE_PROMPTS.exists(), reason="reference CKEPE prompt file not available")
def test_reference_prompt_file_format_is_compatible(kb):
    reference = load_prompts(CKEPE_PROMPTS)
    for task in TASKS:
        labels = kb.label_set(task).label_names
        selected = select_prompts(reference, labels)
        assert list(selected) == labels and all(selected.values())
        assert set(get_prompts(task)) == set(selected)


# ------------------------------------------------------------------------------------------------ entity lexicon
@pytest.fixture(scope="module")
def lexicon():
    return build_entity_lexicon()


def test_lexicon_exact_phrases_on_word_boundaries(lexicon) -> None:
    assert "atrial fibrillation" in lexicon and "LBBB" in lexicon and "normal electrocardiogram" in lexicon
    assert lexicon.find("AF after ablation. Afib with RVR") == ["af", "afib"]  # no "af" inside "after"
    # the longest phrase wins and is not also counted as its shorter parts
    assert lexicon.find("Complete right bundle branch block") == ["complete right bundle branch block"]
    # hyphens between words read as spaces; the case does not matter
    assert lexicon.find("First-Degree AV block") == ["first degree av block"]
    # negated sentences name what the patient does not have
    assert lexicon.find("No evidence of left ventricular hypertrophy. Sinus rhythm") == ["sinus rhythm"]
    assert lexicon.entities("LVH; left ventricular hypertrophy; lvh") == ["left ventricular hypertrophy"]
    assert not lexicon.has_entity("Vent. rate 71 bpm. Lungs are clear.")


def test_sentences_split_on_stops_but_not_inside_decimal_numbers() -> None:
    assert split_sentences("QRS 0.12 s. Sinus rhythm;\nNo LVH.") == ["QRS 0.12 s", "Sinus rhythm", "No LVH"]
    assert split_sentences(" . ;\n") == []


def test_condition_vocabulary_is_the_packaged_file_and_every_phrase_names_its_condition() -> None:
    from cardiomm.synthetic import mentioned_conditions

    stored = json.loads(CONDITION_SYNONYMS_FILE.read_text())["conditions"]
    assert CONDITION_SYNONYMS == {condition: tuple(phrases) for condition, phrases in stored.items()}
    vocabulary_only = build_entity_lexicon(knowledge_base=[])
    for condition, phrases in CONDITION_SYNONYMS.items():
        for phrase in phrases:
            # the lexicon on notes and the reader of the synthetic reports agree on what each phrase names
            assert vocabulary_only.entities(phrase) == [condition], phrase
            assert mentioned_conditions(phrase) == [condition], phrase


_IMPORT_PROBE = """
import sys
import cardiomm.knowledge
from cardiomm.knowledge import build_entity_lexicon
assert build_entity_lexicon().entities("Atrial fibrillation") == ["atrial fibrillation"]
import cardiomm.data.pairing
print(sorted(name for name in sys.modules if name.split(".")[:2] == ["cardiomm", "synthetic"]))
"""


def test_knowledge_and_the_lexicon_do_not_import_the_synthetic_cohort() -> None:
    """The knowledge base and the lexicon applied to real notes (and the pairing built on it) stand without the
    synthetic cohort: importing them in a fresh process loads no ``cardiomm.synthetic`` module."""
    proc = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], capture_output=True, text=True, timeout=300,
                          env=cardiomm_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
