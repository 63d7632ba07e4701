"""Model cards and Hub upload (against a fake transport: there is no network in tests)."""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

import pytest
import yaml

from cardiomm.hub.model_card import EvaluationEntry, ModelCardInfo, TrainingDataEntry, write_model_card
from cardiomm.hub.push import check_checkpoint, push_checkpoint
from cardiomm.modeling.configuration_ecg_encoder import ECGEncoderConfig
from cardiomm.modeling.modeling_ecg_encoder import ECGEncoderModel
from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor


def _card_info() -> ModelCardInfo:
    return ModelCardInfo(
        model_name="tiny-ecg",
        summary="A tiny ECG encoder.",
        training_data=[TrainingDataEntry("cardiomm synthetic cohort", "generated 12-lead ECGs", "apache-2.0")],
        evaluations=[EvaluationEntry("zero-shot rhythm", "synthetic", "macro AUROC", 0.8123)],
        eval_protocol="held-out patients, 6-crop median",
    )


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    tmp_path = tmp_path / "ckpt"
    model = ECGEncoderModel(ECGEncoderConfig(backbone="resnet1d_8"))
    fe = ECGFeatureExtractor(sampling_rate=250, crop_length=1250, normalization="zscore")
    model.save_pretrained(tmp_path)
    fe.save_pretrained(tmp_path)
    write_model_card(tmp_path, _card_info(), fe)
    return tmp_path


def test_card_states_input_format_use_and_results(checkpoint: Path) -> None:
    text = (checkpoint / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    result = meta["model-index"][0]["results"][0]
    assert result["metrics"][0]["value"] == pytest.approx(0.8123)
    assert result["metrics"][0]["name"] == "macro AUROC"
    assert "not for clinical decisions" in text.lower()
    # the input format comes from the saved feature extractor, not from defaults
    assert "250 Hz" in text and "1250 samples (5 s)" in text
    assert "I, II, III, aVR, aVL, aVF, V1, V2, V3, V4, V5, V6" in text
    assert "0.8123" in text and "held-out patients, 6-crop median" in text


class _FakeHub:
    """Records create_repo calls and copies uploaded folders into a local 'remote'."""

    def __init__(self, remote: Path) -> None:
        self.remote = remote
        self.repos: list[str] = []

    def create_repo(self, repo_id: str, **kwargs) -> None:
        self.repos.append(repo_id)

    def upload_folder(self, repo_id: str, folder_path: str, ignore_patterns=(), **kwargs) -> str:
        # like huggingface_hub: patterns are matched against paths relative to the folder
        for path in Path(folder_path).rglob("*"):
            rel = path.relative_to(folder_path).as_posix()
            if path.is_file() and not any(fnmatch.fnmatch(rel, pat) for pat in ignore_patterns):
                (self.remote / repo_id / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, self.remote / repo_id / rel)
        return f"https://hub.example/{repo_id}/commit/1"


def test_push_uploads_complete_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    (checkpoint / "checkpoints").mkdir()
    (checkpoint / "checkpoints" / "state.pt").write_bytes(b"x")
    hub = _FakeHub(tmp_path / "remote")
    url = push_checkpoint(checkpoint, "org/tiny-ecg", api=hub)
    assert hub.repos == ["org/tiny-ecg"] and url.endswith("/commit/1")
    uploaded = {p.name for p in (tmp_path / "remote" / "org/tiny-ecg").iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md",
            "modeling_ecg_encoder.py", "configuration_ecg_encoder.py", "feature_extraction_ecg.py"} <= uploaded
    assert "checkpoints" not in uploaded  # training state stays local


def test_push_refuses_incomplete_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    (checkpoint / "README.md").unlink()
    (checkpoint / "modeling_ecg_encoder.py").unlink()
    problems = check_checkpoint(checkpoint)
    assert any("README.md" in p for p in problems)
    assert any("modeling_ecg_encoder" in p for p in problems)
    hub = _FakeHub(tmp_path / "remote")
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        push_checkpoint(checkpoint, "org/x", api=hub)
    assert hub.repos == []


def test_check_accepts_fresh_checkpoint(checkpoint: Path) -> None:
    assert check_checkpoint(checkpoint) == []
    assert json.loads((checkpoint / "config.json").read_text())["model_type"] == "ecg_encoder"
