"""``cardiomm evaluate`` and ``cardiomm push`` on hostile input, run as the user runs them (a subprocess).

- a checkpoint folder whose ``auto_map`` points at Python files that write a marker file when imported: the
  files must not run, and a genuine cardiomm checkpoint that carries such files still evaluates with the
  installed classes;
- a dataset whose test split has no positive (or no negative) ECG for some classes and for a whole task, and
  whose validation split has a single label value for every class of a task: what cannot be computed is left
  out and listed, everything else is written;
- a checkpoint folder holding data, optimizer state, logs, a ``.env`` file, pickle weights and a training
  config with absolute paths: only the allow-listed files reach the (fake) Hub, without local paths.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from cardiomm.data.ecg_dataset import label_column, save_ecg_dataset
from cardiomm.synthetic import build_dataset, generate_cohort, synthetic_dataset_info
from cardiomm.training.config import ExperimentConfig, load_config
from cli_process import describe
from test_cli_evaluate_push import cardiomm, pretrain_like_folder, save_tiny_checkpoint

MARKER_CODE = '\nimport pathlib as _pathlib\n_pathlib.Path({marker!r}).write_text("shipped code ran")\n'


def with_marker_code(folder: Path, marker: Path) -> Path:
    """Append code that writes ``marker`` to every ``.py`` file of ``folder``."""
    for path in folder.glob("*.py"):
        path.write_text(path.read_text() + MARKER_CODE.format(marker=str(marker)))
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("hostile") / "tiny-merl")


@pytest.fixture(scope="module")
def hostile_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 synthetic patients, with labels changed so that: no test ECG has a rhythm label (the rhythm task has
    nothing to score on test); every test ECG has 'normal ECG' and none has 'sinus rhythm'; no validation ECG
    has a condition (so C cannot be chosen on validation for the conditions task)."""
    cohort = generate_cohort(n_patients=24, seed=0)
    dataset, info = build_dataset(cohort, include_ehr=False), synthetic_dataset_info(cohort)
    conditions = info.tasks["conditions"]
    normal, sinus = conditions.index("normal ECG"), conditions.index("sinus rhythm")

    def test_labels(row: dict) -> dict:
        labels = list(row["labels_conditions"])
        labels[normal], labels[sinus] = 1, 0
        return {"labels_conditions": labels, "labels_rhythm": [0] * len(row["labels_rhythm"])}

    dataset["test"] = dataset["test"].map(test_labels, keep_in_memory=True)
    dataset["validation"] = dataset["validation"].map(
        lambda row: {"labels_conditions": [0] * len(row["labels_conditions"])}, keep_in_memory=True)
    return save_ecg_dataset(dataset, tmp_path_factory.mktemp("hostile") / "synth", info)


def test_evaluate_runs_no_code_shipped_with_an_unknown_model(hostile_dataset: Path, tmp_path: Path) -> None:
    folder, marker = tmp_path / "unknown-model", tmp_path / "marker"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "marker_model",
        "auto_map": {"AutoConfig": "configuration_marker.MarkerConfig", "AutoModel": "modeling_marker.MarkerModel"},
    }))
    for name in ("configuration_marker.py", "modeling_marker.py"):
        (folder / name).write_text("from transformers import PretrainedConfig\n")
    with_marker_code(folder, marker)
    out = tmp_path / "evaluation"
    run = cardiomm(["evaluate", "--model", str(folder), "--data", str(hostile_dataset), "--out", str(out)],
                   tmp_path)
    assert not marker.exists(), "evaluate imported the Python files shipped in the checkpoint folder"
    assert run.returncode == 2, describe(run)
    assert "cardiomm: error:" in run.stderr and "Traceback" not in run.stderr
    assert "'marker_model'" in run.stderr and "configuration_marker.py, modeling_marker.py" in run.stderr
    assert "Pass --trust-remote-code" in run.stderr
    assert not out.exists()


def _skipped(results: dict, task: str, protocol: str, split: str, label: str | None) -> dict:
    matches = [s for s in results["skipped"]
               if (s["task"], s["protocol"], s["split"], s["label"]) == (task, protocol, split, label)]
    assert len(matches) == 1, (task, protocol, split, label, results["skipped"])
    return matches[0]


def test_evaluate_leaves_out_what_cannot_be_computed(checkpoint: Path, hostile_dataset: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    marked = with_marker_code(shutil.copytree(checkpoint, tmp_path / "marked"), marker)
    out = tmp_path / "evaluation"
    run = cardiomm(["evaluate", "--model", str(marked), "--data", str(hostile_dataset), "--out", str(out)],
                   tmp_path)
    assert run.returncode == 0, describe(run)
    # a cardiomm checkpoint loads with the installed classes: the code shipped next to its weights never runs
    assert not marker.exists()
    results = json.loads((out / "results.json").read_text())
    markdown = (out / "results.md").read_text()

    # zero-shot conditions: macro AUROC over the classes with both label values in the test split
    info = json.loads((hostile_dataset / "cardiomm_dataset.json").read_text())
    names = info["tasks"]["conditions"]
    y_test = np.array(pq.read_table(hostile_dataset / "data/test.parquet").column(label_column("conditions"))
                      .to_pylist())
    computable = {n for n, column in zip(names, y_test.T) if 0 < column.sum() < len(column)}
    zero_shot = results["tasks"]["conditions"]["zero_shot"]
    assert set(zero_shot["auroc"]) == computable and computable
    assert zero_shot["macro_auroc"] == pytest.approx(np.mean(list(zero_shot["auroc"].values())))
    assert (zero_shot["classes_evaluated"], zero_shot["classes_total"]) == (len(computable), len(names))
    count = f"{len(computable)} of {len(names)}"
    assert any("zero-shot" in line and count in line for line in run.stdout.splitlines()), run.stdout
    assert count in markdown
    normal = _skipped(results, "conditions", "zero-shot and linear probe", "test", "normal ECG")
    assert normal["reason"].startswith(f"no negative ECG in the test split: all {len(y_test)} are positive")
    sinus = _skipped(results, "conditions", "zero-shot and linear probe", "test", "sinus rhythm")
    assert sinus["reason"].startswith("no positive ECG in the test split")
    # linear probe conditions: C cannot be chosen on a validation split without positives
    assert "C cannot be chosen on validation" in _skipped(
        results, "conditions", "linear probe", "validation", None)["reason"]
    assert "linear_probe_pretrained" not in results["tasks"]["conditions"]
    assert results["tasks"]["conditions"]["ecg_to_ecg_precision_at_k"]
    assert (out / "roc_zero_shot_conditions.png").is_file()
    # rhythm: nothing to score on test, so each protocol is left out (retrieval used to abort everything)
    for protocol in ("zero-shot", "linear probe", "ECG→ECG retrieval"):
        _skipped(results, "rhythm", protocol, "test", None)
    assert set(results["tasks"]["rhythm"]) == {"skipped"}
    assert not (out / "roc_zero_shot_rhythm.png").exists()
    assert 0.0 <= results["text_to_ecg_median_percentile_rank"] <= 100.0

    # every left-out item is named (task, protocol, split, class) in results.md, on stdout and in a warning
    assert f"Left out ({len(results['skipped'])})" in markdown and f"Left out ({len(results['skipped'])})" in run.stdout
    assert "task 'conditions', zero-shot and linear probe, test split: class 'normal ECG' left out" in markdown
    assert "task 'rhythm', ECG→ECG retrieval, test split: the whole protocol left out" in markdown
    warnings = [line for line in run.stderr.splitlines() if "UserWarning" in line]
    assert any("task 'conditions', zero-shot and linear probe, test split: left out" in w and "'normal ECG'" in w
               and "'sinus rhythm'" in w for w in warnings), run.stderr
    assert any("task 'conditions', linear probe, validation split" in w for w in warnings), run.stderr


ABSOLUTE_PATH = re.compile(r"(^|[\s=])(/|~|[A-Za-z]:\\)")


def test_push_uploads_only_allow_listed_files(checkpoint: Path, tmp_path: Path) -> None:
    experiment = ExperimentConfig(data={"path": "/home/alice/cohorts/synth", "cache_dir": "~/.cache/cardiomm"},
                                  model={"text": "/tmp/minilm/model", "ecg": {"backbone": "resnet1d_8"}})
    experiment.training.output_dir = "/tmp/runs/tiny-merl"
    folder = pretrain_like_folder(checkpoint, tmp_path / "run", experiment)
    expected = {p.name for p in folder.iterdir()}  # the checkpoint, its card and its training config
    stray = {"data.parquet": b"PAR1 patient rows", "optimizer.pt": b"\x80\x04 pickle", "metrics.csv": b"step,loss\n",
             ".env": b"HF_TOKEN=hf_secret\n", "pytorch_model.bin": b"\x80\x04 pickle", "notes.py": b"print(1)\n"}
    for name, content in stray.items():
        (folder / name).write_bytes(content)
    (folder / "checkpoints" / "step_000010").mkdir(parents=True)
    (folder / "checkpoints" / "step_000010" / "model.safetensors").write_bytes(b"state")

    remote = tmp_path / "remote"
    run = cardiomm(["push", str(folder), "org/tiny-merl"], tmp_path, fake_hub=remote)
    assert run.returncode == 0, describe(run)
    repo = remote / "repos/org/tiny-merl"
    assert {p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()} == expected
    for name in expected - {"training_config.yaml"}:
        assert (repo / name).read_bytes() == (folder / name).read_bytes(), name
    calls = json.loads((remote / "calls.json").read_text())
    assert [c["method"] for c in calls] == ["create_repo", "repo_info", "create_commit"]
    assert calls[0]["kwargs"]["private"] is False and calls[0]["kwargs"]["repo_type"] == "model"

    # the uploaded training config: no absolute or home-relative path left, and it still loads
    uploaded = yaml.safe_load((repo / "training_config.yaml").read_text())
    strings, stack = [], [uploaded]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            stack += item
        elif isinstance(item, str):
            strings.append(item)
    assert not [s for s in strings if ABSOLUTE_PATH.search(s)], uploaded
    assert "alice" not in (repo / "training_config.yaml").read_text()
    reloaded = load_config(repo / "training_config.yaml")
    assert reloaded.data == {"path": "<local>/synth", "cache_dir": "<local>/cardiomm"}
    assert reloaded.model["text"] == "<local>/model" and reloaded.training.output_dir == "<local>/tiny-merl"

    # stdout: PUBLIC said plainly, then every uploaded file with its size, then what stays local
    visibility, upload_list = run.stdout.split("files to upload", 1)
    upload_list, left_out = upload_list.split("left out, not uploaded", 1)
    assert "org/tiny-merl will be PUBLIC: anyone can see and download these files" in visibility
    for name in expected:  # one line per file: name, size (and a note for the training config)
        line = next((line for line in upload_list.splitlines() if line.split()[:1] == [name]), "")
        size = line.split("(")[0].split()[-2:]
        assert len(size) == 2 and size[1] in {"B", "kB", "MB"} and float(size[0]) > 0, (name, run.stdout)
    assert "4 local paths replaced by <local>/NAME" in upload_list
    for name in [*stray, "checkpoints/"]:
        assert name not in upload_list and name in left_out, (name, run.stdout)
    assert f"uploaded {len(expected)} files to org/tiny-merl (PUBLIC)" in run.stdout
