"""``cardiomm embed``: embeddings of a folder of raw records or of a dataset folder, written to Parquet.

Every promise is checked through the command in a fresh process: the record ids, the report of unreadable files,
embeddings equal to the checkpoint's own preprocessing and encoder, a killed run that resumes to the file of an
uninterrupted one, and bad inputs that exit with status 2 and a message naming the path.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from cardiomm.modeling.configuration_ecg_encoder import ECGEncoderConfig
from cardiomm.modeling.modeling_ecg_encoder import ECGEncoderModel
from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor
from cli_process import describe, run_cardiomm

LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
DATA = Path(os.environ.get("CARDIOMM_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

#: ``python -c KILLED_AFTER_PARTS N ARGS...``: ``cardiomm ARGS...`` in a process that dies (``os._exit(17)``) after
#: writing part N (counting from 1) and before recording it as done.
KILLED_AFTER_PARTS = """
import os, sys
from cardiomm.evaluation import record_embeddings
parts = int(sys.argv[1])
original = record_embeddings._save_progress
def save(folder, progress):
    if progress["parts_done"] == parts:
        os._exit(17)
    original(folder, progress)
record_embeddings._save_progress = save
from cardiomm.cli import main
sys.exit(main(sys.argv[2:]))
"""


def save_checkpoint(folder: Path, seed: int = 0) -> tuple[ECGEncoderModel, ECGFeatureExtractor]:
    """A tiny ECG encoder (random weights) with its feature extractor (100 Hz, 2.5 s crops)."""
    torch.manual_seed(seed)
    config = ECGEncoderConfig(backbone="resnet1d_8", stage_channels=[8, 16], stage_depths=[1, 1],
                              stage_kernel_sizes=[5, 3], stage_strides=[2, 2])
    model = ECGEncoderModel(config).eval()
    model.save_pretrained(folder)
    fe = ECGFeatureExtractor(sampling_rate=100, crop_length=250, window_stride=50, num_windows=3)
    fe.save_pretrained(folder)
    return model, fe


def ecg_like(seed: int, seconds: float, fs: int, leads: int = 12) -> np.ndarray:
    """A reproducible (time, leads) signal in mV (beats plus noise), rounded to the µV for format 16."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * fs)) / fs
    beats = np.exp(-(((t * rng.uniform(1.0, 1.6)) % 1.0 - 0.3) ** 2) / 0.0005)
    signal = beats[:, None] * rng.uniform(-1.5, 1.5, leads) + 0.05 * rng.standard_normal((len(t), leads))
    return np.round(signal, 3)


def write_wfdb(folder: Path, name: str, signal: np.ndarray, fs: int) -> None:
    import wfdb

    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(name, fs=fs, units=["mV"] * signal.shape[1], sig_name=LEADS[: signal.shape[1]], p_signal=signal,
                fmt=["16"] * signal.shape[1], adc_gain=[1000.0] * signal.shape[1], baseline=[0] * signal.shape[1],
                write_dir=str(folder))


def write_challenge_mat(folder: Path, name: str, signal: np.ndarray, fs: int) -> None:
    """A PhysioNet/CinC challenge record: ``val`` (leads, time) int16 in µV in a .mat file, and its header."""
    from scipy.io import savemat

    adu = np.round(signal.T * 1000).astype(np.int16)
    savemat(str(folder / f"{name}.mat"), {"val": adu}, format="4")
    lines = [f"{name} 12 {fs} {adu.shape[1]}"]
    lines += [f"{name}.mat 16+24 1000/mV 16 0 {adu[i, 0]} 0 0 {lead}" for i, lead in enumerate(LEADS)]
    lines += ["# Age: 60", "# Sex: Male", "# Dx: 426783006"]
    (folder / f"{name}.hea").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoint")
    save_checkpoint(folder)
    return folder


@pytest.fixture(scope="module")
def record_folder(tmp_path_factory) -> Path:
    """Three WFDB records (two in sub-folders), a challenge .mat record, a corrupt header, a .mat without header."""
    root = tmp_path_factory.mktemp("records")
    write_wfdb(root, "rec3", ecg_like(3, 6, 500), 500)
    write_wfdb(root / "a", "rec1", ecg_like(1, 10, 250), 250)
    write_wfdb(root / "a" / "b", "rec2", ecg_like(2, 5, 500)[:, :8], 500)  # 8 leads: the others are absent
    write_challenge_mat(root, "JS00001", ecg_like(4, 10, 500), 500)
    (root / "broken.hea").write_text("this is not a WFDB header\n\x00\x01 garbage\n")
    (root / "a" / "orphan.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    return root


def _reference_embedding(checkpoint: Path, record: Path, crop: str = "center") -> np.ndarray:
    """The checkpoint's own preprocessing of the record file and its encoder, L2 normalised."""
    model = ECGEncoderModel.from_pretrained(checkpoint).eval()
    fe = ECGFeatureExtractor.from_pretrained(checkpoint)
    inputs = fe(ecg=str(record), crop=crop, return_tensors="pt")
    with torch.inference_mode():
        if crop == "windows":
            flat = {k: v.flatten(0, 1) for k, v in inputs.items()}
            emb = torch.nn.functional.normalize(model(**flat).pooler_output, dim=-1)
            emb = torch.from_numpy(np.median(emb.numpy(), axis=0))
        else:
            emb = model(**inputs).pooler_output[0]
    emb = emb.numpy().astype(np.float64)
    return emb / np.linalg.norm(emb)


def test_raw_record_folder_gives_ids_embeddings_and_a_report_of_bad_files(
    checkpoint: Path, record_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "emb.parquet"
    done = run_cardiomm("embed", "--model", checkpoint, "--input", record_folder, "--out", out, "--batch-size", "3",
                        cwd=tmp_path)
    assert done.returncode == 0, describe(done)
    table = pq.read_table(out).to_pydict()
    assert table["record_id"] == ["JS00001", "a/b/rec2", "a/rec1", "rec3"]
    assert "split" not in table
    emb = np.array(table["embedding"])
    assert emb.shape == (4, ECGEncoderConfig.from_pretrained(checkpoint).hidden_size)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    for record_id, row in zip(table["record_id"], emb):
        np.testing.assert_allclose(row, _reference_embedding(checkpoint, record_folder / f"{record_id}.hea"),
                                   atol=1e-5, err_msg=record_id)
    with open(tmp_path / "emb.unreadable.csv", newline="") as handle:
        bad = {row["record_id"]: row for row in csv.DictReader(handle)}
    assert set(bad) == {"broken", "a/orphan"}
    assert bad["broken"]["path"].endswith("broken.hea") and "unreadable WFDB header" in bad["broken"]["error"]
    assert bad["a/orphan"]["path"].endswith("orphan.mat") and "no WFDB header" in bad["a/orphan"]["error"]
    assert "records/s" in done.stdout and "model" in done.stdout and "reading" in done.stdout
    assert not (tmp_path / "emb.parquet.parts").exists()


def test_a_killed_run_resumes_to_the_file_of_an_uninterrupted_run(checkpoint: Path, tmp_path: Path) -> None:
    import sys

    records = tmp_path / "records"
    for k in range(4):  # the first part: records too short for the feature extractor (4 s < min_length 5 s)
        write_wfdb(records / "a_short", f"s{k}", ecg_like(k, 4, 500), 500)
    for k in range(11):
        write_wfdb(records / f"site{k % 3}", f"r{k:02d}", ecg_like(10 + k, 6, 500), 500)
    (records / "site1" / "zz_bad.hea").write_text("garbage\n")
    args = ["embed", "--model", checkpoint, "--input", records, "--batch-size", "2", "--records-per-part", "4"]

    whole = run_cardiomm(*args, "--out", tmp_path / "whole.parquet", cwd=tmp_path)
    assert whole.returncode == 0, describe(whole)

    out = tmp_path / "resumed.parquet"
    killed = run_cardiomm("2", *args, "--out", out, cwd=tmp_path,
                          command=(sys.executable, "-c", KILLED_AFTER_PARTS))
    assert killed.returncode == 17, describe(killed)
    assert not out.exists()
    progress = json.loads((tmp_path / "resumed.parquet.parts" / "progress.json").read_text())
    assert progress["parts_done"] == 1 and progress["parts_total"] == 4  # 16 records, 4 per part
    assert (tmp_path / "resumed.parquet.parts" / "part-000001.parquet").exists()  # written, not yet recorded

    other = run_cardiomm(*args, "--out", out, "--crop", "windows", cwd=tmp_path)
    assert other.returncode == 2 and "resumed.parquet.parts" in other.stderr and "crop" in other.stderr, \
        describe(other)

    resumed = run_cardiomm(*args, "--out", out, cwd=tmp_path)
    assert resumed.returncode == 0, describe(resumed)
    assert "resumed at record 4" in resumed.stdout and "12 records" in resumed.stdout
    first, second = pq.read_table(tmp_path / "whole.parquet"), pq.read_table(out)
    assert first.num_rows == 11 and second.equals(first)
    assert np.array_equal(np.array(first["embedding"].to_pylist()), np.array(second["embedding"].to_pylist()))
    assert (tmp_path / "whole.unreadable.csv").read_text() == (tmp_path / "resumed.unreadable.csv").read_text()
    report = (tmp_path / "resumed.unreadable.csv").read_text()
    assert "site1/zz_bad" in report and "a_short/s3" in report and "shorter than min_length" in report
    assert not (tmp_path / "resumed.parquet.parts").exists()

    again = run_cardiomm(*args, "--out", out, cwd=tmp_path)  # a finished file is not silently replaced
    assert again.returncode == 2 and str(out) in again.stderr and "--overwrite" in again.stderr, describe(again)


def test_dataset_folder_gives_ecg_ids_and_the_embeddings_of_embed_ecgs(checkpoint: Path, tmp_path: Path) -> None:
    from cardiomm.data.ecg_dataset import load_ecg_dataset
    from cardiomm.evaluation.embeddings import embed_ecgs
    from cardiomm.synthetic import synthesize

    data = synthesize(n_patients=12, out_dir=tmp_path / "cohort", seed=3, write_wfdb_files=False, progress=False)
    out = tmp_path / "emb.parquet"
    done = run_cardiomm("embed", "--model", checkpoint, "--input", data, "--out", out, "--split", "test",
                        "--split", "train", "--crop", "windows", "--batch-size", "5", cwd=tmp_path)
    assert done.returncode == 0, describe(done)
    table = pq.read_table(out).to_pydict()
    dataset, info = load_ecg_dataset(data)
    model, fe = ECGEncoderModel.from_pretrained(checkpoint).eval(), ECGFeatureExtractor.from_pretrained(checkpoint)
    start = 0
    for split in ("test", "train"):
        rows = dataset[split]
        assert table["record_id"][start:start + len(rows)] == rows["ecg_id"]
        assert set(table["split"][start:start + len(rows)]) == {split}
        expected = embed_ecgs(model, fe, rows.with_format("numpy"), info.sampling_rate, crop="windows",
                              progress=False, lead_names=info.lead_names)
        np.testing.assert_allclose(np.array(table["embedding"][start:start + len(rows)]), expected, atol=1e-5)
        start += len(rows)
    assert start == len(table["record_id"])


def test_bad_inputs_exit_2_with_a_message_naming_the_path(
    checkpoint: Path, record_folder: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no records here")
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    cases = [
        (["--model", checkpoint, "--input", tmp_path / "missing", "--out", tmp_path / "o.parquet"], "missing"),
        (["--model", checkpoint, "--input", empty, "--out", tmp_path / "o.parquet"], str(empty)),
        (["--model", not_a_model, "--input", record_folder, "--out", tmp_path / "o.parquet"], str(not_a_model)),
    ]
    for args, named in cases:
        done = run_cardiomm("embed", *args, cwd=tmp_path)
        assert done.returncode == 2, describe(done)
        assert done.stderr.startswith("cardiomm: error:") and named in done.stderr, describe(done)


@pytest.mark.skipif(not (DATA / "cinc2021").is_dir() or not (DATA / "wfdb_sample").is_dir(),
                    reason="real records (CARDIOMM_TEST_DATA) not available")
def test_real_records_challenge_and_wfdb_sample(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "cinc.parquet"
    done = run_cardiomm("embed", "--model", checkpoint, "--input", DATA / "cinc2021", "--out", out, cwd=tmp_path)
    assert done.returncode == 0, describe(done)
    ids = pq.read_table(out).column("record_id").to_pylist()
    assert ids == sorted(p.stem for p in (DATA / "cinc2021").glob("*.hea")) and len(ids) == 50
    assert (tmp_path / "cinc.unreadable.csv").read_text().strip() == "record_id,path,error"

    out = tmp_path / "sample.parquet"
    done = run_cardiomm("embed", "--model", checkpoint, "--input", DATA / "wfdb_sample", "--out", out, cwd=tmp_path)
    assert done.returncode == 0, describe(done)
    ids = pq.read_table(out).column("record_id").to_pylist()
    assert "s0010_re" in ids  # PTB Diagnostic record: 12 standard leads (+ Frank leads, not used)
    with open(tmp_path / "sample.unreadable.csv", newline="") as handle:
        bad = {row["record_id"]: row["error"] for row in csv.DictReader(handle)}
    assert "multi-segment records are not supported" in bad["multi-segment/fixed1/v102s"]
    assert "not found" in bad["1003"]  # a header whose signal file is missing
    assert len(ids) + len(bad) == len(list((DATA / "wfdb_sample").rglob("*.hea")))
