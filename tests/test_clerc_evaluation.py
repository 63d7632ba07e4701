"""CLERC evaluation: cross-modal retrieval (closest pairs, the matrix, the heatmap), zero-shot binary and regression
tasks from prompt files, study averaging, linear probing with the regularisation chosen on validation, cross-modal
labels, the embedding tables, and `cardiomm evaluate` on a CLERC checkpoint with a synthetic imaging dataset."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import CLIPTextConfig, CLIPVisionConfig

import cardiomm  # noqa: F401  (registration)
from cardiomm.evaluation.cross_modal_retrieval import (
    closest_pairs,
    plot_retrieval_heatmap,
    retrieval_cells,
    retrieval_matrix,
)
from cardiomm.evaluation.multimodal_embeddings import embed_clerc_split, embedding_matrix, load_clerc_dataset
from cardiomm.evaluation.multimodal_probe import ProbeSplit, attach_labels, fit_linear_probe, probe_label
from cardiomm.evaluation.multimodal_zero_shot import (
    PROMPTS_DIR,
    binary_scores,
    evaluate_zero_shot_task,
    load_prompt_task,
    load_prompt_tasks,
    prompt_task_from_dict,
    zero_shot_predictions,
)
from cardiomm.evaluation.retrieval import median_percentile_rank
from cardiomm.modeling.configuration_clerc import CLERC_MODALITIES, CLERCMultiEncoderConfig
from cardiomm.modeling.configuration_ecg_encoder import ECGEncoderConfig
from cardiomm.modeling.configuration_r2plus1d import R2Plus1DConfig
from cardiomm.modeling.modeling_clerc import CLERCMultiEncoder
from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor
from cardiomm.processing.image_processing_chest_xray import ChestXrayImageProcessor
from cardiomm.processing.processing_clerc import CLERCProcessor
from cardiomm.processing.video_processing_cardiac import CardiacVideoProcessor
from cli_process import describe, run_cardiomm
from fixtures.clip_tokenizer import tiny_clip_tokenizer

T0 = pd.Timestamp("2020-01-01 08:00")
DAY = pd.Timedelta(days=1)


def table(rows: list[tuple], embeddings: np.ndarray | None = None, **labels: list) -> pd.DataFrame:
    """An embedding table from (sample_id, study_id, patient_id, time) rows, unit embeddings and label columns."""
    frame = pd.DataFrame(rows, columns=["sample_id", "study_id", "patient_id", "time"])
    frame["time"] = pd.to_datetime(frame["time"])
    if embeddings is None:
        embeddings = np.eye(len(rows), max(len(rows), 2), dtype=np.float32)
    embeddings = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    frame["embedding"] = list(embeddings.astype(np.float32))
    for name, values in labels.items():
        frame[name] = np.asarray(values, dtype=np.float64)
    return frame


def paired_tables(n: int, noise: float, seed: int = 0, dim: int = 32) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two modalities of ``n`` patients, one sample each; the second is the first plus ``noise`` (inf: unrelated)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, dim))
    b = rng.standard_normal((n, dim)) if np.isinf(noise) else a + noise * rng.standard_normal((n, dim))
    rows = [(f"s{i}", f"st{i}", f"P{i:03d}", T0 + i * DAY) for i in range(n)]
    return table(rows, a), table([(f"t{i}", f"su{i}", p, t) for i, (_, _, p, t) in enumerate(rows)], b)


# ------------------------------------------------------------------------------------------------------ retrieval

def test_median_percentile_rank_is_zero_for_identical_and_about_fifty_for_random_embeddings() -> None:
    same_a, same_b = paired_tables(200, noise=0.0)
    matrix = retrieval_matrix({"ecg": same_a, "echo": same_b})
    assert matrix.loc["ecg", "echo"] == pytest.approx(0.0, abs=1e-9)
    assert matrix.loc["echo", "ecg"] == pytest.approx(0.0, abs=1e-9)
    rand_a, rand_b = paired_tables(400, noise=np.inf, seed=1)
    matrix = retrieval_matrix({"ecg": rand_a, "echo": rand_b})
    assert 40.0 < matrix.loc["ecg", "echo"] < 60.0 and 40.0 < matrix.loc["echo", "ecg"] < 60.0
    # a little noise keeps the true match near the top, far better than chance
    near_a, near_b = paired_tables(200, noise=0.3, seed=2)
    assert median_percentile_rank(embedding_matrix(near_a), embedding_matrix(near_b)) < 5.0


def test_closest_pairs_takes_the_temporally_closest_samples() -> None:
    a = table([
        ("a0", "x0", "P1", T0), ("a1", "x1", "P1", T0 + 10 * DAY),      # P1: a1 is 1 day from b0
        ("a2", "x2", "P2", T0),                                          # P2: no b sample
        ("a3", "S", "P3", T0), ("a4", "x4", "P3", None),                 # P3: unknown time is farthest
        ("a5", "Q", "P4", T0),                                           # P4: tie, same study preferred
    ])
    b = table([
        ("b0", "y0", "P1", T0 + 9 * DAY), ("b1", "y1", "P1", T0 - 30 * DAY),
        ("b2", "S", "P3", T0 + 5 * DAY), ("b3", "y3", "P3", T0 + 2 * DAY),
        ("b4", "y4", "P4", T0), ("b5", "Q", "P4", T0),
        ("b6", "y6", "P5", T0),                                          # P5: no a sample
    ])
    pairs = closest_pairs(a, b).set_index("patient_id")
    assert list(pairs.index) == ["P1", "P3", "P4"]
    chosen = {p: (a["sample_id"][r.a_row], b["sample_id"][r.b_row]) for p, r in pairs.iterrows()}
    assert chosen == {"P1": ("a1", "b0"), "P3": ("a3", "b3"), "P4": ("a5", "b5")}
    assert pairs.loc["P1", "gap"] == pytest.approx(DAY.total_seconds())
    assert closest_pairs(a, b.iloc[:0]).empty


def test_retrieval_matrix_has_every_ordered_pair_and_nan_below_two_patients(tmp_path: Path) -> None:
    a, b = paired_tables(6, noise=0.0)
    lone = table([("c0", "c0", "P000", T0), ("c1", "c1", "P999", T0)])  # one patient shared with the others
    tables = {"ecg": a, "echo_report": b, "chest_xray": lone}
    matrix = retrieval_matrix(tables)
    order = ["ecg", "chest_xray", "echo_report"]  # CLERC_MODALITIES order
    assert list(matrix.index) == order and list(matrix.columns) == order
    assert all(np.isnan(matrix.loc[m, m]) for m in order)
    patients = matrix.attrs["patients"]
    assert patients["ecg"]["echo_report"] == patients["echo_report"]["ecg"] == 6
    assert patients["ecg"]["chest_xray"] == patients["chest_xray"]["echo_report"] == 1
    for query, retrieved in [("ecg", "chest_xray"), ("chest_xray", "ecg"), ("echo_report", "chest_xray")]:
        assert np.isnan(matrix.loc[query, retrieved])
    assert matrix.loc["ecg", "echo_report"] == 0.0 and matrix.loc["echo_report", "ecg"] == 0.0
    cells = retrieval_cells(matrix)
    assert {(c["query"], c["retrieved"]) for c in cells} == {(q, r) for q in order for r in order if q != r}
    full = retrieval_matrix(tables, list(CLERC_MODALITIES))  # modalities without samples: NaN, 0 patients
    assert full.shape == (8, 8) and len(retrieval_cells(full)) == 56
    assert np.isnan(full.loc["angiogram", "ecg"]) and full.attrs["patients"]["angiogram"]["ecg"] == 0
    path = plot_retrieval_heatmap(full, tmp_path / "heat.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


# ------------------------------------------------------------------------------------------------------ zero-shot

def value_encoder(values: list[float], dim: int = 32):
    """A text encoder mapping a prompt to the one-hot vector of the number it contains (the same for every template);
    any other prompt to the last axis."""
    index = {float(v): i for i, v in enumerate(values)}

    def encode(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), dim))
        for row, text in enumerate(texts):
            numbers = re.findall(r"\d+(?:\.\d+)?", text)
            out[row, index[float(numbers[0])] if numbers else dim - 1] = 1.0
        return out

    return encode


def test_lvef_regression_recovers_the_value_whose_prompt_matches_at_high_temperature() -> None:
    task = load_prompt_tasks(tasks=["echo_lvef"])["echo_lvef"]
    assert task.kind == "regression" and task.modality == "echo" and task.label == "lvef"
    assert task.values == tuple(float(v) for v in range(20, 81, 5)) and len(task.templates) == 2
    assert task.value_prompts()[35.0] == ["The left ventricular ejection fraction is estimated to be 35%.",
                                          "LV ejection fraction is 35%."]
    encode = value_encoder(list(task.values))
    targets = [20.0, 35.0, 55.0, 80.0]
    samples = encode([f"{v:g}" for v in targets])  # each sample embedding equals the prompt embedding of its value
    hot = zero_shot_predictions(task, samples, encode, logit_scale=100.0)
    np.testing.assert_allclose(hot, targets, atol=1e-6)
    cold = zero_shot_predictions(task, samples, encode, logit_scale=1e-3)  # near-uniform softmax: the mean value
    np.testing.assert_allclose(cold, np.mean(task.values), atol=0.1)
    # halfway between two value embeddings: the expected value is halfway between the values
    between = encode(["40"]) + encode(["45"])
    assert zero_shot_predictions(task, between, encode, 100.0)[0] == pytest.approx(42.5, abs=1e-6)


def test_binary_zero_shot_auroc_is_one_on_separable_embeddings() -> None:
    task = load_prompt_tasks(tasks=["chest_xray_edema"])["chest_xray_edema"]
    rng = np.random.default_rng(0)
    direction = np.zeros(16)
    direction[0] = 1.0
    labels = np.array([1, 0, 1, 0, 0, 1, 0, 0], dtype=float)
    embeddings = rng.normal(scale=0.1, size=(8, 16)) + np.where(labels[:, None] > 0, 1.0, -1.0) * direction
    rows = [(f"s{i}", f"st{i}", f"P{i}", T0) for i in range(8)]
    tables = {"chest_xray": table(rows, embeddings, edema=labels)}
    result = evaluate_zero_shot_task(task, tables, lambda texts: np.tile(direction, (len(texts), 1)), 100.0)
    assert result.metric == "AUROC" and result.value == 1.0 and result.n_studies == 8 and result.reason is None
    flipped = evaluate_zero_shot_task(task, tables, lambda texts: -np.tile(direction, (len(texts), 1)), 100.0)
    assert flipped.value == 0.0
    # a test split without a positive study has no AUROC, and says why
    tables["chest_xray"]["edema"] = 0.0
    empty = evaluate_zero_shot_task(task, tables, lambda texts: np.tile(direction, (len(texts), 1)), 100.0)
    assert np.isnan(empty.value) and "0 positive" in empty.reason


def test_predictions_are_averaged_over_the_samples_of_a_study() -> None:
    task = prompt_task_from_dict({"modality": "echo", "label": "pacemaker", "kind": "binary", "prompts": ["x"]}, "t")
    prompt = np.array([1.0, 0.0])
    angles = np.array([0.0, 1.4, 0.9, 0.5])  # cosines with the prompt: 1.0, 0.17, 0.62, 0.88
    embeddings = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = [1.0, 1.0, 0.0, 0.0]  # study A (samples 0 and 1) positive; studies B and C negative
    rows = [("s0", "A", "P1", T0), ("s1", "A", "P1", T0), ("s2", "B", "P2", T0), ("s3", "C", "P3", T0)]
    tables = {"echo": table(rows, embeddings, pacemaker=labels)}
    encode = lambda texts: np.tile(prompt, (len(texts), 1))  # noqa: E731
    scores = binary_scores(embeddings, ["x"], encode)
    np.testing.assert_allclose(scores, np.cos(angles))
    result = evaluate_zero_shot_task(task, tables, encode, 100.0)
    assert result.study_ids == ["A", "B", "C"] and result.n_samples == 4 and result.n_studies == 3
    np.testing.assert_allclose(result.predictions, [scores[:2].mean(), scores[2], scores[3]])
    # averaged, positive study A (0.59) ranks below both negatives (0.62, 0.88): AUROC 0
    assert result.value == pytest.approx(0.0)
    # each sample its own study: positives 1.0 and 0.17 against 0.62 and 0.88, AUROC 0.5
    separate = tables["echo"].assign(study_id=["A", "A2", "B", "C"])
    assert evaluate_zero_shot_task(task, {"echo": separate}, encode, 100.0).value == pytest.approx(0.5)


BAD_PROMPT_FILES = {
    "not_json.json": ("{not json", "not valid JSON"),
    "no_placeholder.json": (json.dumps({"modality": "echo", "label": "lvef", "kind": "regression",
                                        "template": ["LVEF is 50%"], "values": [20, 30]}), "placeholder"),
    "one_value.json": (json.dumps({"modality": "echo", "label": "lvef", "kind": "regression",
                                   "template": "LVEF [VALUE]", "values": [20]}), "at least two"),
    "bad_kind.json": (json.dumps({"modality": "ecg", "label": "x", "kind": "multiclass", "prompts": ["a"]}), "kind"),
    "bad_modality.json": (json.dumps({"modality": "mri", "label": "x", "kind": "binary", "prompts": ["a"]}),
                          "modality"),
    "empty_prompts.json": (json.dumps({"modality": "ecg", "label": "x", "kind": "binary", "prompts": []}), "prompts"),
    "typo_key.json": (json.dumps({"modality": "ecg", "label": "x", "kind": "binary", "prompt": ["a"]}),
                      "unknown keys"),
    "array.json": ("[1, 2]", "JSON object"),
}


@pytest.mark.parametrize("name", sorted(BAD_PROMPT_FILES))
def test_malformed_prompt_file_is_a_value_error_naming_the_file(tmp_path: Path, name: str) -> None:
    text, problem = BAD_PROMPT_FILES[name]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(path))) as err:
        load_prompt_task(path)
    assert problem in str(err.value)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_prompt_tasks(tmp_path)


def test_malformed_prompt_file_fails_clearly_in_a_fresh_process(tmp_path: Path) -> None:
    (tmp_path / "ok.json").write_text(json.dumps({"modality": "ecg", "label": "x", "kind": "binary",
                                                  "prompts": ["a"]}))
    bad = tmp_path / "lvef.json"
    bad.write_text(json.dumps({"modality": "echo", "label": "lvef", "kind": "regression", "values": [1, 2]}))
    code = ("import sys\nfrom cardiomm.evaluation import load_prompt_tasks\n"
            "try:\n    load_prompt_tasks(sys.argv[1])\nexcept ValueError as err:\n    print(err)\n    sys.exit(3)\n")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 3, run.stderr[-2000:]
    assert str(bad) in run.stdout and "template" in run.stdout


def test_shipped_prompt_files_cover_the_papers_tasks() -> None:
    tasks = load_prompt_tasks()
    assert set(tasks) == {
        "echo_lvef", "echo_pacemaker", "ecg_rbbb", "ecg_lbbb", "ecg_pacemaker", "angiogram_lad_occlusion",
        "angiogram_rca_occlusion", "angiogram_lcx_occlusion", "chest_xray_consolidation", "chest_xray_edema",
        "chest_xray_pacemaker", "chest_xray_cardiomegaly",
    }
    assert tasks["ecg_rbbb"].prompts == ("Right bundle branch block.",)
    assert tasks["ecg_rbbb"].label == "right bundle branch block"
    assert tasks["angiogram_lad_occlusion"].prompts[0].startswith("Conclusion: 1. LAD had an occlusion.")
    assert all(t.path and Path(t.path).parent == PROMPTS_DIR for t in tasks.values())
    with pytest.raises(ValueError, match="unknown zero-shot tasks"):
        load_prompt_tasks(tasks=["echo_lvef", "mri_volume"])


# ------------------------------------------------------------------------------------------------- linear probing

def ridge_data(val_slope: float, test_slope: float, seed: int = 0):
    """One feature; train y = x, validation y = val_slope * x, test y = test_slope * x (100 samples each)."""
    rng = np.random.default_rng(seed)
    x = [rng.standard_normal((100, 1)) for _ in range(3)]
    return [(x[0], x[0][:, 0] + 0.01 * rng.standard_normal(100)), (x[1], val_slope * x[1][:, 0]),
            (x[2], test_slope * x[2][:, 0])]


def test_probe_chooses_the_regularisation_on_validation() -> None:
    # with 100 standardised samples, ridge alpha 0.01 keeps the slope ~1 and alpha 100 halves it
    alphas = (0.01, 100.0)
    unshrunk = fit_linear_probe(*ridge_data(val_slope=1.0, test_slope=0.5), kind="regression", alphas=alphas)
    shrunk = fit_linear_probe(*ridge_data(val_slope=0.5, test_slope=1.0), kind="regression", alphas=alphas)
    assert unshrunk.chosen == 0.01 and shrunk.chosen == 100.0
    assert unshrunk.val_by_parameter[1] > unshrunk.val_by_parameter[0]  # grid strongest first: [100, 0.01]
    # the test split would have preferred the other value: its score is reported at the chosen one, not its best
    train, val, test = ridge_data(val_slope=1.0, test_slope=0.5)
    other = fit_linear_probe(train, test, test, kind="regression", alphas=alphas)
    assert other.chosen == 100.0 and other.value > unshrunk.value
    assert unshrunk.parameter == "alpha" and unshrunk.n_test_studies == 100


def test_probe_never_uses_the_test_labels_to_choose() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((90, 6))
    y = (x[:, 0] + 0.8 * rng.standard_normal(90) > 0).astype(float)
    studies = np.repeat(np.arange(45), 2).astype(str)
    train, val, test = (ProbeSplit.of(x[i::3], y[i::3], studies[i::3]) for i in range(3))
    result = fit_linear_probe(train, val, test, kind="binary")
    shuffled = ProbeSplit(test.x, rng.permutation(test.y), test.study_ids)
    again = fit_linear_probe(train, val, shuffled, kind="binary")
    assert result.chosen == again.chosen and result.val_by_parameter == again.val_by_parameter
    assert result.test_predictions == again.test_predictions
    assert result.value != again.value
    assert result.grid == sorted(result.grid) and result.chosen in result.grid


def test_cross_modal_labels_come_from_the_closest_labelled_sample_of_the_same_patient() -> None:
    target = table([("e0", "E0", "P1", T0), ("e1", "E1", "P1", T0 + 100 * DAY), ("e2", "E2", "P2", T0),
                    ("e3", "E3", "P3", T0)])
    source = table([("g0", "G0", "P1", T0 - 5 * DAY), ("g1", "G1", "P1", T0 + 90 * DAY),
                    ("g2", "G2", "P1", T0 + 99 * DAY), ("g3", "G3", "P2", T0 + 400 * DAY)],
                   age=[60.0, 61.0, np.nan, 70.0])
    np.testing.assert_array_equal(attach_labels(target, source, "age"), [60.0, 61.0, 70.0, np.nan])
    assert np.isnan(attach_labels(target, source, "lvef")).all()
    # a probe from the target modality takes these labels (its own table has none)
    splits = {s: {"echo": target, "ecg": source} for s in ("train", "validation", "test")}
    result = probe_label(splits, "echo", "age", "regression", source="ecg")
    assert result.n_train == 3 and result.n_test_studies == 3


# ----------------------------------------------------------------------------------- model, data and the command

@pytest.fixture(scope="module")
def clerc_data(tmp_path_factory) -> Path:
    from cardiomm.synthetic import synthesize

    return synthesize(40, tmp_path_factory.mktemp("clerc_data"), seed=0, imaging=True, write_wfdb_files=False,
                      progress=False)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_clerc")
    tokenizer = tiny_clip_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    video = {"hidden_sizes": [4, 8], "depths": [1, 1], "strides": [1, 2], "stem_width": 3}
    config = CLERCMultiEncoderConfig(
        ecg_config=ECGEncoderConfig(backbone="resnet1d_8", stage_channels=[8, 8], stage_depths=[1, 1],
                                    stage_kernel_sizes=[5, 3], stage_strides=[2, 2]),
        echo_config=R2Plus1DConfig(**video), angiogram_config=R2Plus1DConfig(**video),
        chest_xray_config=CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=8),
        text_config=CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37,
                                   num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
                                   pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                   eos_token_id=tokenizer.eos_token_id),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLERCMultiEncoder(config).save_pretrained(folder)
    CLERCProcessor(
        tokenizer, feature_extractor=ECGFeatureExtractor(sampling_rate=500, crop_length=2500),
        echo_video_processor=CardiacVideoProcessor(crop_to_sector=True, size=16, num_frames=4),
        angiogram_video_processor=CardiacVideoProcessor(crop_to_sector=False, size=16, num_frames=4),
        chest_xray_image_processor=ChestXrayImageProcessor(resize_size=36, crop_size=32), max_text_length=32,
    ).save_pretrained(folder)
    return folder


def test_embedding_tables_hold_each_sample_and_each_study_report_once(clerc_data: Path,
                                                                      tiny_checkpoint: Path) -> None:
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(tiny_checkpoint).eval()
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    dataset, info, studies = load_clerc_dataset(clerc_data)
    test = studies[studies["split"] == "test"]
    tables = embed_clerc_split(model, processor, dataset["test"], info, test, progress=False)
    for modality in ("echo", "chest_xray"):
        rows = test[test["modality"] == modality]
        assert sorted(tables[modality]["sample_id"]) == sorted(rows["sample_id"])
        reports = tables[f"{modality}_report"]
        assert sorted(reports["study_id"]) == sorted(rows["study_id"].unique())  # one report per study
    assert list(tables["ecg"]["sample_id"]) == list(dataset["test"]["ecg_id"])
    for name, frame in tables.items():
        if len(frame):
            norms = np.linalg.norm(embedding_matrix(frame), axis=1)
            np.testing.assert_allclose(norms, 1.0, atol=1e-5, err_msg=name)
    # the ECG embedding is the model's own, of the processor's deterministic centre window
    record = np.asarray(dataset["test"][0]["ecg"], dtype=np.float32)
    inputs = processor(ecg=record[None], sampling_rate=info.sampling_rate)
    with torch.no_grad():
        direct = model.get_modality_features("ecg", values=inputs["ecg_values"],
                                             lead_mask=inputs["ecg_lead_mask"]).pooler_output
    direct = torch.nn.functional.normalize(direct, dim=-1)[0].numpy()
    np.testing.assert_allclose(embedding_matrix(tables["ecg"])[0], direct, atol=1e-5)
    ecg = tables["ecg"]
    assert {"age", "female", "right bundle branch block", "left bundle branch block"} <= set(ecg.columns)
    assert set(ecg["female"].dropna()) <= {0.0, 1.0}


def test_cardiomm_evaluate_runs_the_clerc_protocol(clerc_data: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    run = run_cardiomm("evaluate", "--model", tiny_checkpoint, "--data", clerc_data, "--out", out)
    assert run.returncode == 0, describe(run)
    assert "Cross-modal retrieval" in run.stdout and "retrieval_heatmap.png" in run.stdout
    results = json.loads((out / "results.json").read_text())
    cells = results["retrieval"]["cells"]
    assert {(c["query"], c["retrieved"]) for c in cells} == {
        (q, r) for q in CLERC_MODALITIES for r in CLERC_MODALITIES if q != r}
    finite = [c for c in cells if c["median_percentile_rank"] is not None]
    assert finite and all(c["patients"] >= 2 and 0 <= c["median_percentile_rank"] <= 100 for c in finite)
    assert all(c["patients"] < 2 for c in cells if c["median_percentile_rank"] is None)
    assert set(results["zero_shot"]) == set(load_prompt_tasks())
    assert set(results["cross_modal"]["table"]) >= {"Age (R2)", "LVEF (R2)", "RBBB (AUROC)"}
    markdown = (out / "results.md").read_text()
    for heading in ("Cross-modal retrieval", "Zero-shot", "Cross-modal prediction", "Protocol:"):
        assert heading in markdown
    png = (out / "retrieval_heatmap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_cardiomm_evaluate_refuses_options_that_do_not_apply_to_clerc(tiny_checkpoint: Path, tmp_path: Path) -> None:
    run = run_cardiomm("evaluate", "--model", tiny_checkpoint, "--data", tmp_path, "--protocol", "merl",
                       "--leads", "1..12")
    assert run.returncode == 2, describe(run)
    assert "--leads" in run.stderr and "--protocol" in run.stderr and "CLERC" in run.stderr
