"""Model cards and Hub upload (against a fake ``HfApi`` bound to the real signatures: no network in tests)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from huggingface_hub import CommitOperationAdd, HfApi

from cardiomm.hub.model_card import EvaluationEntry, ModelCardInfo, TrainingDataEntry, write_model_card
from cardiomm.hub.push import check_checkpoint, plan_upload, push_checkpoint, redact_local_paths
from cardiomm.hub.remote_code import remote_code_files
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


class FakeHub:
    """Stands in for ``huggingface_hub.HfApi``: every call is checked against the real method's signature and
    recorded; committed files land under ``remote/<repo_id>``. ``existing`` maps repo ids that already exist
    to their visibility (``True``: private)."""

    def __init__(self, remote: Path, existing: dict[str, bool] | None = None) -> None:
        self.remote = remote
        self.visibility = dict(existing or {})
        self.calls: list[tuple[str, dict]] = []

    def _record(self, method: str, *args, **kwargs) -> None:
        inspect.signature(getattr(HfApi, method)).bind(self, *args, **kwargs)
        self.calls.append((method, kwargs))

    def create_repo(self, repo_id: str, **kwargs):
        self._record("create_repo", repo_id, **kwargs)
        self.visibility.setdefault(repo_id, bool(kwargs.get("private")))
        return f"https://hub.example/{repo_id}"

    def repo_info(self, repo_id: str, **kwargs):
        self._record("repo_info", repo_id, **kwargs)
        return SimpleNamespace(id=repo_id, private=self.visibility[repo_id])

    def create_commit(self, repo_id: str, operations, **kwargs):
        self._record("create_commit", repo_id, operations, **kwargs)
        for op in operations:
            assert isinstance(op, CommitOperationAdd)
            target = self.remote / repo_id / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            with op.as_file() as handle:
                target.write_bytes(handle.read())
        return SimpleNamespace(commit_url=f"https://hub.example/{repo_id}/commit/1")

    def uploaded(self, repo_id: str) -> set[str]:
        root = self.remote / repo_id
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} if root.exists() else set()


CHECKPOINT_FILES = {"config.json", "model.safetensors", "preprocessor_config.json", "README.md",
                    "modeling_ecg_encoder.py", "configuration_ecg_encoder.py", "feature_extraction_ecg.py",
                    "ecg_records.py"}


def test_push_uploads_complete_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    (checkpoint / "checkpoints").mkdir()
    (checkpoint / "checkpoints" / "state.pt").write_bytes(b"x")
    hub = FakeHub(tmp_path / "remote")
    result = push_checkpoint(checkpoint, "org/tiny-ecg", api=hub)
    assert [c[0] for c in hub.calls] == ["create_repo", "repo_info", "create_commit"]
    assert hub.calls[0][1]["private"] is False and result.private is False
    assert result.commit_url.endswith("/commit/1")
    # exactly the checkpoint: the remote code and its sibling imports, no training state
    assert hub.uploaded("org/tiny-ecg") == CHECKPOINT_FILES == set(result.files)
    for name in CHECKPOINT_FILES:
        assert (tmp_path / "remote/org/tiny-ecg" / name).read_bytes() == (checkpoint / name).read_bytes()


def test_push_refuses_incomplete_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    (checkpoint / "README.md").unlink()
    (checkpoint / "modeling_ecg_encoder.py").unlink()
    (checkpoint / "ecg_records.py").unlink()
    problems = check_checkpoint(checkpoint)
    assert any("README.md" in p for p in problems)
    assert any("modeling_ecg_encoder.py" in p and "config.json" in p for p in problems)
    # a sibling module imported by the feature extractor's code is needed too
    assert any("ecg_records.py" in p and "feature_extraction_ecg.py" in p for p in problems)
    hub = FakeHub(tmp_path / "remote")
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        push_checkpoint(checkpoint, "org/x", api=hub)
    assert hub.calls == []


def test_check_accepts_fresh_checkpoint(checkpoint: Path) -> None:
    assert check_checkpoint(checkpoint) == []
    assert json.loads((checkpoint / "config.json").read_text())["model_type"] == "ecg_encoder"
    code = remote_code_files(checkpoint)
    assert code.missing == []
    assert set(code.files) == {n for n in CHECKPOINT_FILES if n.endswith(".py")}


def test_pickle_weights_are_never_uploaded(checkpoint: Path, tmp_path: Path) -> None:
    (checkpoint / "pytorch_model.bin").write_bytes(b"pickle")
    plan = plan_upload(checkpoint)
    assert "pytorch_model.bin" not in {f.path_in_repo for f in plan.files}
    assert ("pytorch_model.bin", "pickle file: never uploaded (loading it runs code)") in plan.left_out
    (checkpoint / "model.safetensors").unlink()
    problems = check_checkpoint(checkpoint)
    assert any("no safetensors weights" in p and "pytorch_model.bin is pickle" in p for p in problems)


def test_private_push_to_an_existing_public_repo_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    hub = FakeHub(tmp_path / "remote", existing={"org/public": False, "org/private": True})
    with pytest.raises(ValueError, match="already exists and is PUBLIC"):
        push_checkpoint(checkpoint, "org/public", private=True, api=hub)
    assert "create_commit" not in [c[0] for c in hub.calls] and hub.uploaded("org/public") == set()
    # an existing private repository stays private, and the result says so
    assert push_checkpoint(checkpoint, "org/private", api=hub).private is True


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/home/alice/data/synth", "<local>/synth"),
        ("/tmp/run-3/", "<local>/run-3"),
        ("~/cohorts/mimic", "<local>/mimic"),
        ("C:\\Users\\alice\\ptbxl", "<local>/ptbxl"),
        ("--data=/srv/ecg/a.csv --seed 3", "--data=<local>/a.csv --seed 3"),
        ("outputs/merl_tiny", "outputs/merl_tiny"),
        ("../shared/data", "../shared/data"),
        ("https://huggingface.co/org/model", "https://huggingface.co/org/model"),
        ("mV / s", "mV / s"),
    ],
)
def test_local_paths_are_redacted(value: str, expected: str) -> None:
    redacted, count = redact_local_paths({"data": {"path": value}, "tags": [value, 3, None]})
    assert redacted == {"data": {"path": expected}, "tags": [expected, 3, None]}
    assert count == (0 if value == expected else 2)


def test_checking_planning_and_card_writing_run_no_shipped_code(checkpoint: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    for path in checkpoint.glob("*.py"):
        path.write_text(path.read_text() + f"\nimport pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    assert check_checkpoint(checkpoint) == []
    plan = plan_upload(checkpoint)
    assert {f.path_in_repo for f in plan.files} == CHECKPOINT_FILES
    write_model_card(checkpoint, _card_info(), ECGFeatureExtractor(sampling_rate=250, crop_length=1250))
    push_checkpoint(checkpoint, "org/tiny-ecg", api=FakeHub(tmp_path / "remote"), plan=plan)
    assert not marker.exists()
