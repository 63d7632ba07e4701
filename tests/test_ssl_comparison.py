"""``cardiomm ssl-table``: the good-views Table 1 runner. Every experiment is pretrained per seed and linear-evaluated
on 4 rhythm classes next to a supervised and a random-init baseline; a second invocation reuses the encoders;
experiments on different datasets are refused; the synthetic rhythms merge into SR / SB / GSVT / AFIB."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_process import KILLED_AFTER_STEP, describe, run_cardiomm

from cardiomm.training.config import resolve_config_path

EXPERIMENTS = ("ssl_cmsc_tiny", "ssl_rhythm_tiny")
SEEDS = ("0", "1")


def _table_args(data: Path, out: Path) -> list[str]:
    return ["ssl-table", "--experiments", *EXPERIMENTS, "--seeds", *SEEDS, "--out", str(out),
            "--set", f"data.path={data}", "--set", "data.synthetic.n_patients=80",
            "--set", "data.synthetic.measure=false", "--set", "training.num_epochs=1",
            "--set", "training.log_with=none", "--set", "training.save_every_steps=2"]


@pytest.fixture(scope="module")
def table_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three invocations of ``cardiomm ssl-table`` on the same folders: one killed (as a crashed job) after the
    third optimiser step of its first run that has one (the pretraining ``ssl_cmsc_tiny`` seed 0: the supervised
    runs before it have 2 steps), one that completes the table, and one more; with the encoder files' mtimes after
    the second."""
    root = tmp_path_factory.mktemp("ssl_table")
    data, out = root / "data", root / "table"
    killed = run_cardiomm("3", *_table_args(data, out), command=(sys.executable, "-c", KILLED_AFTER_STEP),
                          timeout=900)
    assert killed.returncode == 17, describe(killed)
    first = run_cardiomm(*_table_args(data, out), timeout=900)
    assert first.returncode == 0, describe(first)
    encoder_files = sorted((out / "runs").glob("*/seed*/encoder/*.safetensors"))
    mtimes = {p: p.stat().st_mtime_ns for p in encoder_files}
    table = json.loads((out / "table.json").read_text())
    second = run_cardiomm(*_table_args(data, out), timeout=900)
    assert second.returncode == 0, describe(second)
    return {"data": data, "out": out, "first": first, "second": second, "table": table, "mtimes": mtimes,
            "table_again": json.loads((out / "table.json").read_text())}


def test_table_has_every_row_and_seed(table_runs: dict) -> None:
    table, out = table_runs["table"], table_runs["out"]
    rows = {row["name"]: row for row in table["rows"]}
    assert list(rows) == ["supervised", *EXPERIMENTS, "random_init"]
    assert rows["ssl_rhythm_tiny"]["kind"] == "oracle" and rows["ssl_rhythm_tiny"]["strategy"] == "rhythm"
    assert rows["ssl_cmsc_tiny"]["kind"] == "self-supervised"
    assert rows["supervised"]["kind"] == "supervised" and rows["random_init"]["kind"] == "random init"
    assert table["classes"] == ["SR", "SB", "GSVT", "AFIB"]
    counts = table["counts"]
    for row in rows.values():
        assert row["seeds"] == [int(s) for s in SEEDS]
        assert len(row["test_auroc"]) == len(SEEDS)
        assert all(0.0 <= v <= 1.0 for v in row["test_auroc"]), row
        assert row["mean"] == pytest.approx(np.mean(row["test_auroc"]))
        assert row["std"] == pytest.approx(np.std(row["test_auroc"], ddof=1)) and row["std_ddof"] == 1
        assert (row["n_train"], row["n_val"], row["n_test"]) == (
            counts["train"]["kept"], counts["validation"]["kept"], counts["test"]["kept"])
        assert row["n_test"] > 0 and row["n_train"] > row["n_test"]
    for name in EXPERIMENTS:  # one pretraining per seed, each with its exported encoder
        for seed in SEEDS:
            assert (out / "runs" / name / f"seed{seed}" / "encoder" / "config.json").is_file()
    markdown = (out / "table.md").read_text()
    assert "± " in markdown and "Supervised baseline" in markdown and "oracle" in markdown
    assert "ddof=1" in markdown and "left out" in markdown
    assert (out / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stdout = table_runs["first"].stdout
    assert "Method |" in stdout and "AUROC (x 100) |" in stdout
    assert "Random init" in stdout and "CLOCS - Time (CMSC)" in stdout and "Rhythms (oracle)" in stdout


def test_a_killed_invocation_resumes_where_it_stopped(table_runs: dict) -> None:
    """The run being trained when the job died resumes from its newest checkpoint; the runs it had finished are
    reused."""
    first, out = table_runs["first"], table_runs["out"]
    run_dir = out / "runs" / "ssl_cmsc_tiny" / "seed0"
    assert f"resuming the pretraining of {run_dir}" in first.stdout, describe(first)
    assert json.loads((run_dir / "run_info.json").read_text())["resumed_from"].endswith("step_000002")
    assert first.stdout.count("reusing the supervised baseline") == len(SEEDS), describe(first)
    assert "reusing the encoder of" not in first.stdout


def test_second_invocation_reuses_the_encoders(table_runs: dict) -> None:
    second, mtimes = table_runs["second"], table_runs["mtimes"]
    assert len(mtimes) == len(EXPERIMENTS) * len(SEEDS)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # not rewritten
    assert second.stdout.count("reusing the encoder of") == len(EXPERIMENTS) * len(SEEDS), describe(second)
    assert "reusing the supervised baseline" in second.stdout
    assert "pretraining " not in second.stdout and "trained the supervised" not in second.stdout
    before = {row["name"]: row["test_auroc"] for row in table_runs["table"]["rows"]}
    after = {row["name"]: row["test_auroc"] for row in table_runs["table_again"]["rows"]}
    assert after.keys() == before.keys()
    for name, values in before.items():  # the same encoders give the same evaluation
        assert after[name] == pytest.approx(values), name
    assert all(run["reused"] for row in table_runs["table_again"]["rows"] if row["kind"] != "random init"
               for run in row["runs"])


def test_random_init_auroc_matches_a_direct_fit_at_the_chosen_C(table_runs: dict) -> None:
    """The linear evaluation of a row is a logistic regression per class fitted on the training ECGs only, at the C
    it reports, scored on the test ECGs: refitting it with sklearn on the saved encoder's embeddings gives the same
    AUROC."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from cardiomm import ECGEncoderModel, ECGFeatureExtractor
    from cardiomm.data.ecg_dataset import load_ecg_dataset
    from cardiomm.evaluation.embeddings import embed_ecgs
    from cardiomm.evaluation.ssl_comparison import rhythm_classes

    row = next(r for r in table_runs["table"]["rows"] if r["name"] == "random_init")
    run = row["runs"][1]
    model = ECGEncoderModel.from_pretrained(run["run_dir"])
    extractor = ECGFeatureExtractor.from_pretrained(run["run_dir"])
    dataset, info = load_ecg_dataset(table_runs["data"])
    x, y = {}, {}
    for split in ("train", "test"):
        labels, kept, _ = rhythm_classes(dataset[split], info)
        rows = dataset[split].select(kept.tolist())
        x[split] = embed_ecgs(model, extractor, rows, info.sampling_rate, crop="center", normalize=False,
                              progress=False, lead_names=info.lead_names).astype(np.float64)
        y[split] = labels
    scaler = StandardScaler().fit(x["train"])
    aurocs = []
    for j in range(y["train"].shape[1]):
        fit = LogisticRegression(C=run["C"], max_iter=1000).fit(scaler.transform(x["train"]), y["train"][:, j])
        if 0 < y["test"][:, j].sum() < len(y["test"]):
            aurocs.append(roc_auc_score(y["test"][:, j], fit.decision_function(scaler.transform(x["test"]))))
    assert run["test_macro_auroc"] == pytest.approx(float(np.mean(aurocs)), abs=1e-9)
    assert x["train"].shape[0] == row["n_train"] and x["test"].shape[0] == row["n_test"]


def test_experiments_on_different_datasets_are_refused(tmp_path: Path) -> None:
    files = []
    for name, folder in (("first", "data_a"), ("second", "data_b")):
        document = yaml.safe_load(resolve_config_path("ssl_cmsc_tiny").read_text())
        document["data"]["path"] = str(tmp_path / folder)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(document))
        files.append(path)
    result = run_cardiomm("ssl-table", "--experiments", *map(str, files), "--seeds", "0", "--out",
                          str(tmp_path / "out"))
    assert result.returncode == 2, describe(result)
    assert result.stderr.startswith("cardiomm: error: ") and "Traceback" not in result.stderr
    message = result.stderr
    for path, folder in zip(files, ("data_a", "data_b")):
        assert str(path) in message and str(tmp_path / folder) in message, message
    assert not (tmp_path / "out").exists() and not (tmp_path / "data_a").exists()


# ----------------------------------------------------------------------------------------------- rhythm task
def test_rhythm_classes_merge_the_synthetic_rhythms(tmp_path: Path) -> None:
    from cardiomm.data.ecg_dataset import load_ecg_dataset
    from cardiomm.evaluation.ssl_comparison import rhythm_classes
    from cardiomm.synthetic import synthesize

    folder = synthesize(n_patients=16, out_dir=tmp_path / "cohort", seed=3, write_wfdb_files=False, progress=False)
    dataset, info = load_ecg_dataset(folder)
    expected = {"sinus rhythm": "SR", "sinus bradycardia": "SB", "sinus tachycardia": "GSVT",
                "atrial fibrillation": "AFIB", "atrial flutter": "AFIB"}
    seen = set()
    for split in dataset:
        labels, kept, names = rhythm_classes(dataset[split], info, folder)
        assert names == ["SR", "SB", "GSVT", "AFIB"]
        assert len(kept) == len(dataset[split])  # every synthetic ECG has exactly one of the five rhythms
        assert labels.dtype == np.int8 and (labels.sum(axis=1) == 1).all()
        rhythms = dataset[split]["rhythm"]
        for row, index in zip(labels, kept):
            assert names[int(row.argmax())] == expected[rhythms[int(index)]]
            seen.add(rhythms[int(index)])
    assert len(seen) >= 3  # the check covers several rhythms


def test_rhythm_classes_of_a_chapman_task_leave_out_rows_without_one_class() -> None:
    """A ``chapman_rhythm`` task (columns in the dataset's order) is read by class name; rows with none, or
    several, of the 4 classes are left out; a dataset with no rhythm task is an error naming its folder and
    tasks."""
    from datasets import Dataset

    from cardiomm.data.ecg_dataset import ECGDatasetInfo
    from cardiomm.evaluation.ssl_comparison import rhythm_classes

    info = ECGDatasetInfo(name="chapman", sampling_rate=500, num_samples=10, lead_names=["I"],
                          tasks={"chapman_rhythm": ["AFIB", "GSVT", "SB", "SR"], "dx": ["X"]})
    rows = [[0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 1, 0, 0]]
    split = Dataset.from_dict({"labels_chapman_rhythm": rows, "labels_dx": [[0]] * len(rows)})
    labels, kept, names = rhythm_classes(split, info, "outputs/chapman")
    assert names == ["SR", "SB", "GSVT", "AFIB"]
    assert kept.tolist() == [0, 1, 4, 5]
    assert [names[i] for i in labels.argmax(axis=1)] == ["SR", "AFIB", "SB", "GSVT"]

    other = ECGDatasetInfo(name="ptbxl", sampling_rate=500, num_samples=10, lead_names=["I"],
                           tasks={"superdiagnostic": ["NORM", "MI"]})
    folder = os.path.join("outputs", "ptbxl")
    with pytest.raises(ValueError, match="outputs.ptbxl.*superdiagnostic"):
        rhythm_classes(Dataset.from_dict({"labels_superdiagnostic": [[1, 0]]}), other, folder)


def test_repeated_seeds_are_refused_before_any_work(tmp_path: Path) -> None:
    from cardiomm.evaluation.ssl_comparison import compare_ssl_strategies

    with pytest.raises(ValueError, match="seeds repeat"):
        compare_ssl_strategies(["ssl_cmsc_tiny"], seeds=[1, 1], out_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
