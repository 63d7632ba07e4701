"""The ``cardiomm data`` commands of the README, run as the user runs them: ``cardiomm`` in a subprocess.

Each dataset layout (PTB-XL, PhysioNet/CinC challenge, MIMIC-IV-ECG, INCART) is written here as a tiny fixture
with ``wfdb.wrsamp`` and its metadata tables, so these tests need no downloaded data; one more converts the real
PTB-XL sample in ``../shared/data`` (or ``$CARDIOMM_TEST_DATA``) and skips when it is absent. The fixture writers
are reused by ``test_hostile_conversion.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli_process import CARDIOMM, describe, run_cardiomm

from cardiomm.data.conversion import REPORT_FILE
from cardiomm.data.ecg_dataset import METADATA_FILE, label_column, load_ecg_dataset
from cardiomm.processing.ecg_records import STANDARD_12_LEADS

REPO_ROOT = Path(__file__).resolve().parents[1]
WFDB_LEADS = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]  # PTB-XL spelling


def run_cli(
    args: list[str], cwd: Path, *, script: Path | None = None, timeout: float = 240
) -> subprocess.CompletedProcess:
    """``cardiomm ARGS`` (or ``python SCRIPT ARGS``) in a fresh process group, killed on timeout."""
    command = CARDIOMM if script is None else (sys.executable, str(script))
    return run_cardiomm(*args, cwd=cwd, timeout=timeout, command=command)


def write_wfdb(folder: Path, name: str, signal_: np.ndarray, fs: float, *, leads=WFDB_LEADS, comments=()) -> None:
    """Write ``signal_`` (time, leads) in mV as a format-16 WFDB record (exact to the µV)."""
    import wfdb

    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(leads), sig_name=list(leads), p_signal=signal_,
                fmt=["16"] * len(leads), adc_gain=[1000.0] * len(leads), baseline=[0] * len(leads),
                comments=list(comments), write_dir=str(folder))


def ecg_signal(seed: int, num_samples: int, num_leads: int = 12) -> np.ndarray:
    """A reproducible (time, leads) signal in mV, rounded to the µV so that WFDB format 16 stores it exactly."""
    return np.round(np.random.default_rng(seed).standard_normal((num_samples, num_leads)) * 0.3, 3)


def _lead_order(leads) -> list[int]:
    canonical = [{"AVR": "aVR", "AVL": "aVL", "AVF": "aVF"}.get(n, n) for n in leads]
    return [canonical.index(n) for n in STANDARD_12_LEADS]


# ------------------------------------------------------------------------------------------------ layouts
PTBXL_STATEMENTS = [  # code, description, diagnostic, form, rhythm, class, subclass
    ("NORM", "normal ECG", 1, None, None, "NORM", "NORM"),
    ("IMI", "inferior myocardial infarction", 1, None, None, "MI", "IMI"),
    ("NDT", "non-diagnostic T abnormalities", 1, 1, None, "STTC", "STTC"),
    ("LVOLT", "low QRS voltages in the frontal and horizontal leads", None, 1, None, None, None),
    ("SR", "sinus rhythm", None, None, 1, None, None),
    ("AFIB", "atrial fibrillation", None, None, 1, None, None),
]
PTBXL_CODES = [{"NORM": 100.0, "SR": 0.0}, {"IMI": 80.0, "SR": 0.0}, {"NDT": 50.0, "LVOLT": 0.0, "AFIB": 0.0},
               {"NORM": 100.0, "LVOLT": 0.0, "SR": 0.0}]


def write_ptbxl(root: Path, folds: list[int]) -> dict[int, dict]:
    """A PTB-XL folder (100 Hz ``records100`` only) with one 10-s record per fold in ``folds``.

    Returns ``{ecg_id: {"signal": (leads, time) in mV, "fold", "codes", "header", "dat", "patient"}}``.
    """
    rows, records = [], {}
    for k, fold in enumerate(folds):
        ecg_id = k + 1
        folder = root / "records100" / "00000"
        name = f"{ecg_id:05d}_lr"
        signal_ = ecg_signal(ecg_id, 1000)
        write_wfdb(folder, name, signal_, 100)
        codes = PTBXL_CODES[k % len(PTBXL_CODES)]
        rows.append({
            "ecg_id": ecg_id, "patient_id": 1000.0 + ecg_id, "age": 40.0 + ecg_id, "sex": k % 2, "height": None,
            "recording_date": f"1990-01-{ecg_id % 28 + 1:02d} 10:00:00", "report": f"bericht {ecg_id}",
            "scp_codes": repr(codes), "strat_fold": fold,
            "filename_lr": f"records100/00000/{name}", "filename_hr": f"records500/00000/{ecg_id:05d}_hr",
        })
        records[ecg_id] = {"signal": signal_.T[_lead_order(WFDB_LEADS)].astype(np.float32), "fold": fold,
                           "codes": codes, "header": folder / f"{name}.hea", "dat": folder / f"{name}.dat",
                           "patient": str(1000 + ecg_id)}
    pd.DataFrame(rows).to_csv(root / "ptbxl_database.csv", index=False)
    pd.DataFrame(PTBXL_STATEMENTS, columns=["code", "description", "diagnostic", "form", "rhythm", "diagnostic_class",
                                            "diagnostic_subclass"]).to_csv(root / "scp_statements.csv", index=False)
    return records


CHALLENGE_RECORDS = {  # name: (age, sex, Dx)
    "E00001": (61, "Male", "426783006"),
    "E00002": (45, "Female", "164889003,59118001"),
    "E00003": (70, "Male", "426177001,67741000119109"),
    "HR00004": (33, "Female", "427084000"),
    "JS00005": (58, "Male", "426783006,713427006"),
    "JS00006": (80, "Female", "164890007"),
}


def write_challenge(root: Path) -> dict[str, np.ndarray]:
    """Challenge records (500 Hz, 10 s, ``# Age/Sex/Dx`` comments) in two sub-folders, as the challenge ships them."""
    signals = {}
    for k, (name, (age, sex, dx)) in enumerate(CHALLENGE_RECORDS.items()):
        signal_ = ecg_signal(100 + k, 5000)
        comments = [f"Age: {age}", f"Sex: {sex}", f"Dx: {dx}", "Rx: Unknown", "Hx: Unknown", "Sx: Unknown"]
        write_wfdb(root / ("georgia" if name.startswith("E") else "other"), name, signal_, 500, comments=comments)
        signals[name] = signal_.T[_lead_order(WFDB_LEADS)].astype(np.float32)
    return signals


MIMIC_LEADS = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
MIMIC_STUDIES = [  # subject, study, report statements
    (10000032, 40689238, ["Sinus rhythm", "Possible left atrial enlargement.", "Borderline ECG"]),
    (10000032, 44458630, ["Sinus rhythm", "Normal ECG", None]),
    (10000117, 45090959, ["Sinus tachycardia", "Low QRS voltages in precordial leads"]),
    (10000560, 46261163, [None, None, None]),  # empty report: skipped before any split
    (10001122, 49008114, ["Sinus bradycardia", "Otherwise normal ECG"]),
]


def write_mimic_iv_ecg(root: Path) -> dict[int, np.ndarray]:
    """MIMIC-IV-ECG layout: ``record_list.csv``, ``machine_measurements.csv`` and ``files/p…/p…/s…/<study>``."""
    signals, record_rows, measurement_rows = {}, [], []
    for k, (subject, study, report) in enumerate(MIMIC_STUDIES):
        rel = Path("files") / f"p{str(subject)[:4]}" / f"p{subject}" / f"s{study}"
        signal_ = ecg_signal(200 + k, 5000)
        write_wfdb(root / rel, str(study), signal_, 500, leads=MIMIC_LEADS)
        signals[study] = signal_.T[_lead_order(MIMIC_LEADS)].astype(np.float32)
        time = f"2180-07-{23 + k:02d} 08:44:00"
        record_rows.append({"subject_id": subject, "study_id": study, "file_name": str(study), "ecg_time": time,
                            "path": str(rel / str(study))})
        meas = {"subject_id": subject, "study_id": study, "cart_id": 6848296, "ecg_time": time}
        meas.update({f"report_{i}": r for i, r in enumerate(report)})
        meas.update({"bandwidth": "0.005-150 Hz", "filtering": "60 Hz notch", "rr_interval": 659 + k})
        measurement_rows.append(meas)
    pd.DataFrame(record_rows).to_csv(root / "record_list.csv", index=False)
    pd.DataFrame(measurement_rows).to_csv(root / "machine_measurements.csv", index=False)
    return signals


def write_incart(root: Path, seconds: float = 21.0) -> dict[str, np.ndarray]:
    """INCART-like records ``I01``/``I02`` at 257 Hz (two full 10-s segments each at the default length)."""
    signals = {}
    comments = {"I01": ["<age>: 65 <sex>: F <diagnoses> Coronary artery disease, arterial hypertension"],
                "I02": ["<age>: 72 <sex>: M <diagnoses> Sinus node dysfunction"]}
    for k, (name, comment) in enumerate(comments.items()):
        signal_ = ecg_signal(300 + k, int(257 * seconds))
        write_wfdb(root, name, signal_, 257, comments=comment)
        signals[name] = signal_.T[_lead_order(WFDB_LEADS)].astype(np.float32)
    return signals


# ------------------------------------------------------------------------------------------------ checks
def read_report(out: Path) -> dict:
    return json.loads((out / REPORT_FILE).read_text())


def assert_counts_add_up(report: dict) -> None:
    """converted + skipped == found, per split and in total; converted records per split match the written rows."""
    by_split = report["records_by_split"]
    for split, counts in by_split.items():
        assert counts["converted"] + counts["skipped"] == counts["found"], split
    assert sum(c["found"] for c in by_split.values()) == report["num_found"]
    assert sum(c["converted"] for c in by_split.values()) == report["num_converted"]
    assert sum(c["skipped"] for c in by_split.values()) == report["num_skipped"] == len(report["skipped"])
    assert report["num_converted"] + report["num_skipped"] == report["num_found"]
    for entry in report["skipped"]:
        assert entry["record"] and entry["reason"]
        assert by_split[entry["split"] or "unassigned"]["skipped"] > 0


def _rows(dataset_dict) -> dict[str, dict]:
    return {r["ecg_id"]: r for split in dataset_dict for r in dataset_dict[split].with_format("numpy")}


# ------------------------------------------------------------------------------------------------ tests
def test_data_synth_writes_a_loadable_cohort_with_its_wfdb_copy(tmp_path):
    earlier = tmp_path / "synth" / "data" / "validation.parquet"  # a split of an earlier, larger cohort
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"PAR1")
    (tmp_path / "synth" / METADATA_FILE).write_text("{}")
    run = run_cli(["data", "synth", "--n-patients", "6", "--out", str(tmp_path / "synth")], tmp_path)
    assert run.returncode == 0, describe(run)
    assert not earlier.exists()  # no split of the earlier dataset outlives it
    dataset_dict, info = load_ecg_dataset(tmp_path / "synth")  # 6 patients leave validation without any
    assert "train" in dataset_dict and set(dataset_dict) <= {"train", "validation", "test"}
    assert all(len(split) for split in dataset_dict.values())
    patients = {pid for split in dataset_dict for pid in dataset_dict[split]["patient_id"]}
    rows = sum(len(split) for split in dataset_dict.values())
    assert len(patients) == 6 and rows >= 6
    assert info.extra["splits"] == {s: len(dataset_dict[s]) for s in info.extra["splits"]}
    ecgs = pd.read_csv(tmp_path / "synth" / "wfdb" / "ecgs.csv")
    assert len(ecgs) == rows  # the WFDB copy holds every ECG of the dataset
    assert len(list((tmp_path / "synth" / "wfdb").rglob("*.hea"))) == rows
    assert f"{rows} ECGs of 6 patients" in run.stdout and str(tmp_path / "synth") in run.stdout


def test_data_convert_ptbxl_fixture(tmp_path):
    records = write_ptbxl(tmp_path / "ptbxl", folds=[1, 2, 3, 4, 9, 10])
    out = tmp_path / "out"
    run = run_cli(["data", "convert", "ptbxl", str(tmp_path / "ptbxl"), str(out), "--sampling-rate", "100",
                   "--num-proc", "1"], tmp_path)
    assert run.returncode == 0, describe(run)
    dataset_dict, info = load_ecg_dataset(out)
    sizes = {s: len(dataset_dict[s]) for s in ("train", "validation", "test")}
    assert sizes == {"train": 4, "validation": 1, "test": 1}
    assert info.sampling_rate == 100 and info.num_samples == 1000
    assert info.tasks["super"] == ["MI", "NORM", "STTC"] and info.tasks["rhythm"] == ["AFIB", "SR"]
    rows = _rows(dataset_dict)
    assert set(rows) == {str(i) for i in records}
    for ecg_id, expected in records.items():
        row = rows[str(ecg_id)]
        np.testing.assert_array_equal(row["ecg"], expected["signal"])
        supers = {name for name, hot in zip(info.tasks["super"], row[label_column("super")]) if hot}
        assert supers == {{"NORM": "NORM", "IMI": "MI", "NDT": "STTC"}[c] for c in expected["codes"]
                          if c in ("NORM", "IMI", "NDT")}
        assert row["patient_id"] == expected["patient"] and row["strat_fold"] == expected["fold"]
    report = read_report(out)
    assert report["status"] == "complete"
    assert (report["num_found"], report["num_converted"], report["num_skipped"]) == (6, 6, 0)
    assert report["records_by_split"]["train"] == {"found": 4, "converted": 4, "skipped": 0}
    assert_counts_add_up(report)
    assert "6 records found, 6 converted" in run.stdout


def test_data_convert_challenge_fixture(tmp_path):
    signals = write_challenge(tmp_path / "challenge")
    (tmp_path / "challenge" / "other" / "JS00006.dat").write_bytes(b"\x00\x01" * 100 + b"\x02")  # corrupt data file
    out = tmp_path / "out"
    run = run_cli(["data", "convert", "challenge", str(tmp_path / "challenge"), str(out), "--num-proc", "1"], tmp_path)
    assert run.returncode == 0, describe(run)  # one rejected record does not fail the conversion
    dataset_dict, info = load_ecg_dataset(out)
    rows = _rows(dataset_dict)
    assert set(rows) == set(CHALLENGE_RECORDS) - {"JS00006"}
    for name, row in rows.items():
        np.testing.assert_array_equal(row["ecg"], signals[name])
        age, sex, dx = CHALLENGE_RECORDS[name]
        assert (row["age"], row["sex"], row["dx_codes"]) == (age, sex[0], dx)
    sr = info.tasks["chapman_rhythm"].index("SR")
    assert rows["E00001"][label_column("chapman_rhythm")][sr] == 1 and rows["JS00005"]["subset"] == "Chapman-Shaoxing"
    report = read_report(out)
    assert (report["num_found"], report["num_converted"], report["num_skipped"]) == (6, 5, 1)
    assert report["skipped"][0]["record"] == "JS00006" and "JS00006" in report["skipped"][0]["reason"]
    assert_counts_add_up(report)
    for split, counts in report["records_by_split"].items():
        assert counts["converted"] == len(dataset_dict[split])
    assert "JS00006" in run.stdout  # the summary lists the rejected record


def test_data_convert_mimic_iv_ecg_fixture(tmp_path):
    signals = write_mimic_iv_ecg(tmp_path / "mimic")
    out = tmp_path / "out"
    run = run_cli(["data", "convert", "mimic-iv-ecg", str(tmp_path / "mimic"), str(out), "--num-proc", "1"], tmp_path)
    assert run.returncode == 0, describe(run)
    dataset_dict, info = load_ecg_dataset(out)
    rows = _rows(dataset_dict)
    assert set(rows) == {"40689238", "44458630", "45090959", "49008114"}
    for study, row in rows.items():
        np.testing.assert_array_equal(row["ecg"], signals[int(study)])
    assert rows["40689238"]["report"] == "Sinus rhythm. Possible left atrial enlargement. Borderline ECG."
    assert rows["40689238"]["patient_id"] == rows["44458630"]["patient_id"] == "10000032"
    report = read_report(out)
    assert (report["num_found"], report["num_converted"], report["num_skipped"]) == (5, 4, 1)
    assert report["skipped"] == [{"record": str(Path("files/p1000/p10000560/s46261163/46261163")), "split": "",
                                  "reason": "empty report"}]
    assert_counts_add_up(report)
    assert info.tasks == {}


def test_data_convert_incart_fixture(tmp_path):
    signals = write_incart(tmp_path / "incart")
    out = tmp_path / "out"
    run = run_cli(["data", "convert", "incart", str(tmp_path / "incart"), str(out), "--num-proc", "1"], tmp_path)
    assert run.returncode == 0, describe(run)
    dataset_dict, info = load_ecg_dataset(out)
    assert list(dataset_dict) == ["test"] and info.num_samples == 5000
    ids = dataset_dict["test"]["ecg_id"]
    assert ids == ["I01_000", "I01_001", "I02_000", "I02_001"]
    from cardiomm.processing.ecg_records import resample_signal

    second = dataset_dict["test"].with_format("numpy")[1]
    np.testing.assert_allclose(second["ecg"], resample_signal(signals["I01"], 257, 500)[:, 5000:10000], atol=2e-3)
    report = read_report(out)
    assert (report["num_found"], report["num_converted"], report["num_rows"]) == (2, 2, 4)
    assert_counts_add_up(report)


def test_data_convert_fails_clearly_when_no_record_converts(tmp_path):
    records = write_ptbxl(tmp_path / "ptbxl", folds=[1, 9, 10])
    for record in records.values():
        record["dat"].write_bytes(b"\x00")  # every data file corrupt
    out = tmp_path / "out"
    run = run_cli(["data", "convert", "ptbxl", str(tmp_path / "ptbxl"), str(out), "--sampling-rate", "100",
                   "--num-proc", "1"], tmp_path)
    assert run.returncode == 2, describe(run)
    assert "cardiomm: error:" in run.stderr and "none of the 3 records" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (out / METADATA_FILE).exists()  # no dataset pretends to exist
    report = read_report(out)
    assert report["status"] == "failed" and report["num_skipped"] == 3
    assert_counts_add_up(report)


def _data_dir() -> Path:
    path = Path(os.environ.get("CARDIOMM_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"real ECG test data not found at {path} (set CARDIOMM_TEST_DATA)")
    return path


def test_data_convert_real_ptbxl_sample_in_worker_processes(tmp_path):
    src = _data_dir() / "ptbxl"
    if not (src / "ptbxl_database.csv").is_file():
        pytest.skip("PTB-XL sample not found")
    out = tmp_path / "ptbxl"
    run = run_cli(["data", "convert", "ptbxl", str(src), str(out), "--sampling-rate", "100", "--num-proc", "2",
                   "--max-records", "40"], tmp_path)
    assert run.returncode == 0, describe(run)
    database = pd.read_csv(src / "ptbxl_database.csv", index_col="ecg_id").sort_index().iloc[:40]
    dataset_dict, info = load_ecg_dataset(out)
    rows = _rows(dataset_dict)
    main_ids = {i for s in ("train", "validation", "test") for i in dataset_dict[s]["ecg_id"]}
    assert main_ids == {str(i) for i in database.index}
    for ecg_id in database.index[:5]:
        folds = {"train": range(1, 9), "validation": (9,), "test": (10,)}
        split = next(s for s in folds if str(ecg_id) in dataset_dict[s]["ecg_id"])
        assert rows[str(ecg_id)]["strat_fold"] == database.loc[ecg_id, "strat_fold"]
        assert database.loc[ecg_id, "strat_fold"] in folds[split] or database.patient_id.duplicated(keep=False)[ecg_id]
    assert rows["1"][label_column("super")][info.tasks["super"].index("NORM")] == 1
    report = read_report(out)
    assert report["status"] == "complete" and (report["num_found"], report["num_converted"]) == (40, 40)
    assert_counts_add_up(report)
