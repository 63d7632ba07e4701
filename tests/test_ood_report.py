"""``cardiomm ood``: Mahalanobis-based OOD detection on a checkpoint's ECG embeddings (Table 6 of the EHR paper).

Through the command in a fresh process: a synthetic cohort as in-distribution against a shifted synthetic cohort
(swapped limb electrodes, baseline wander, noise) must be told apart (AUROC > 0.5), the rejection rates must be the
share of OOD scores above the quantiles of the held-out scores written next to them, and bad inputs exit with
status 2 naming the path. The scoring math is checked against a direct computation.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cardiomm.evaluation.ood import RelativeMahalanobis
from cardiomm.modeling.configuration_ecg_encoder import ECGEncoderConfig
from cardiomm.modeling.modeling_ecg_encoder import ECGEncoderModel
from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor
from cli_process import describe, run_cardiomm

DATA = Path(os.environ.get("CARDIOMM_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny ECG encoder (random weights, 16-d output) with its feature extractor (100 Hz, 2.5 s crops)."""
    folder = tmp_path_factory.mktemp("checkpoint")
    torch.manual_seed(0)
    config = ECGEncoderConfig(backbone="resnet1d_8", stage_channels=[8, 16], stage_depths=[1, 1],
                              stage_kernel_sizes=[5, 3], stage_strides=[2, 2])
    ECGEncoderModel(config).eval().save_pretrained(folder)
    ECGFeatureExtractor(sampling_rate=100, crop_length=250).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> tuple[Path, Path]:
    """In-distribution synthetic cohort, and another cohort (other seed) under the documented shift."""
    from cardiomm.evaluation.ood_report import write_shifted_dataset
    from cardiomm.synthetic import synthesize

    root = tmp_path_factory.mktemp("cohorts")
    in_dist = synthesize(n_patients=40, out_dir=root / "in", seed=0, write_wfdb_files=False, progress=False)
    other = synthesize(n_patients=16, out_dir=root / "other", seed=1, write_wfdb_files=False, progress=False)
    return in_dist, write_shifted_dataset(other, root / "shifted", seed=0)


def _scores(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    sets: dict[str, list[float]] = {}
    for row in rows:
        sets.setdefault(row["set"], []).append(float(row["score"]))
    return {name: np.array(values) for name, values in sets.items()}


def test_shifted_synthetic_cohort_is_detected(checkpoint: Path, cohorts: tuple[Path, Path], tmp_path: Path) -> None:
    in_dist, shifted = cohorts
    out = tmp_path / "ood"
    done = run_cardiomm("ood", "--model", checkpoint, "--in-dist", in_dist, "--data", shifted, "--name", "shifted",
                        "--out", out, cwd=tmp_path)
    assert done.returncode == 0, describe(done)
    results = json.loads((out / "results.json").read_text())
    (entry,) = results["ood_sets"]
    assert entry["name"] == "shifted" and entry["auroc"] > 0.5
    rates = entry["rejection_rate"]
    assert set(rates) == {"0.01", "0.05"} and all(0.0 <= r <= 1.0 for r in rates.values())
    assert rates["0.05"] >= rates["0.01"]
    assert results["method"].startswith("Mahalanobis") and results["in_distribution"]["classes"] == 1

    scores = _scores(out / "scores.csv")  # the written numbers follow from the written scores
    held_out, ood = scores["in-distribution test"], scores["shifted"]
    assert len(held_out) == results["in_distribution"]["held_out_ecgs"] and len(ood) == entry["ecgs"]
    for a, rate in rates.items():
        threshold = np.quantile(held_out, 1 - float(a))
        assert results["thresholds"][a] == pytest.approx(threshold, rel=1e-6)
        assert rate == pytest.approx(float((ood > threshold).mean()))
    from sklearn.metrics import roc_auc_score

    auroc = roc_auc_score(np.r_[np.zeros(len(held_out)), np.ones(len(ood))], np.r_[held_out, ood])
    assert entry["auroc"] == pytest.approx(auroc, abs=1e-6)

    assert "shifted" in done.stdout and "AUROC" in done.stdout
    assert "| shifted |" in (out / "results.md").read_text().replace("  ", " ")
    png = (out / "score_histogram.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_task_labels_make_the_detector_class_conditional(
    checkpoint: Path, cohorts: tuple[Path, Path], tmp_path: Path
) -> None:
    in_dist, shifted = cohorts
    out = tmp_path / "ood"
    done = run_cardiomm("ood", "--model", checkpoint, "--in-dist", in_dist, "--data", shifted, "--data", in_dist,
                        "--task", "conditions", "--out", out, cwd=tmp_path)
    assert done.returncode == 0, describe(done)
    results = json.loads((out / "results.json").read_text())
    assert results["method"].startswith("relative Mahalanobis") and results["in_distribution"]["classes"] > 1
    shifted_entry, same = results["ood_sets"]
    assert shifted_entry["name"] == "shifted" and same["name"] == "in"
    assert same["ecgs"] > results["in_distribution"]["fit_ecgs"]  # every split of a --data dataset is scored
    assert all(0.0 <= r <= 1.0 for e in results["ood_sets"] for r in e["rejection_rate"].values())


def test_plain_and_relative_mahalanobis_scores() -> None:
    rng = np.random.default_rng(0)
    z = rng.standard_normal((200, 3)) @ np.diag([1.0, 2.0, 0.5])
    detector = RelativeMahalanobis.fit(z, np.zeros(len(z)), ridge=0.0)
    np.testing.assert_allclose(detector.score(z), 0.0, atol=1e-8)  # one class: the relative distance vanishes
    x = rng.standard_normal((5, 3))
    centred = x - z.mean(axis=0)
    expected = np.einsum("nd,de,ne->n", centred, np.linalg.inv(np.cov(z.T, bias=True)), centred)
    np.testing.assert_allclose(detector.score(x, relative=False), expected, rtol=1e-8)


def test_bad_inputs_exit_2_naming_the_path(checkpoint: Path, cohorts: tuple[Path, Path], tmp_path: Path) -> None:
    in_dist, shifted = cohorts
    records = tmp_path / "records"
    records.mkdir()
    (records / "x.hea").write_text("garbage\n")
    cases = [
        (["--in-dist", records, "--data", shifted], str(records)),  # in-distribution must be a dataset folder
        (["--in-dist", in_dist, "--data", tmp_path / "missing"], "missing"),
        (["--in-dist", in_dist, "--data", shifted, "--task", "nonsense"], "conditions"),  # lists the tasks
    ]
    for args, named in cases:
        done = run_cardiomm("ood", "--model", checkpoint, *args, "--out", tmp_path / "o", cwd=tmp_path)
        assert done.returncode == 2, describe(done)
        assert done.stderr.startswith("cardiomm: error:") and named in done.stderr, describe(done)
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not (DATA / "cinc2021").is_dir(), reason="real records (CARDIOMM_TEST_DATA) not available")
def test_raw_challenge_records_as_an_ood_set(checkpoint: Path, cohorts: tuple[Path, Path], tmp_path: Path) -> None:
    in_dist, _ = cohorts
    out = tmp_path / "ood"
    done = run_cardiomm("ood", "--model", checkpoint, "--in-dist", in_dist, "--data", DATA / "cinc2021",
                        "--out", out, cwd=tmp_path)
    assert done.returncode == 0, describe(done)
    (entry,) = json.loads((out / "results.json").read_text())["ood_sets"]
    assert entry["name"] == "cinc2021" and entry["ecgs"] == 50 and entry["unreadable"] == 0
    assert 0.0 <= entry["auroc"] <= 1.0
    assert len(_scores(out / "scores.csv")["cinc2021"]) == 50
