"""Tests of the real-dataset converters (PTB-XL, PhysioNet/CinC challenge, MIMIC-IV-ECG, INCART) and their engine.

PTB-XL and challenge tests read the real samples in ``../shared/data`` (or ``$CARDIOMM_TEST_DATA``) and skip when
absent; MIMIC-IV-ECG and INCART tests write small WFDB fixtures in their on-disk layouts.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cardiomm.benchmarks.data_loading import ArrowECGBatches
from cardiomm.data.conversion import (
    REPORT_FILE,
    ConversionJob,
    available_converters,
    convert,
    convert_records,
    fraction_split_name,
    to_standard_leads,
)
from cardiomm.data.ecg_dataset import ECGDatasetInfo, label_column, load_ecg_dataset, read_dataset_info
from cardiomm.processing.ecg_records import STANDARD_12_LEADS, ECGRecord, read_ecg_record, resample_signal

REPO_ROOT = Path(__file__).resolve().parents[1]
MAIN_SPLITS = ("train", "validation", "test")


def _data_dir() -> Path:
    path = Path(os.environ.get("CARDIOMM_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"real ECG test data not found at {path} (set CARDIOMM_TEST_DATA)")
    return path


def _numpy_split(dataset_dict, split: str):
    return dataset_dict[split].with_format("numpy")


def _all_rows(dataset_dict, column: str, splits=MAIN_SPLITS) -> np.ndarray:
    return np.concatenate([np.asarray(_numpy_split(dataset_dict, s)[column]) for s in splits if s in dataset_dict])


def _assert_patient_level(dataset_dict, splits=MAIN_SPLITS) -> None:
    seen: dict[str, str] = {}
    for split in splits:
        if split not in dataset_dict:
            continue
        for pid in dataset_dict[split]["patient_id"]:
            assert seen.setdefault(pid, split) == split, f"patient {pid} in {seen[pid]} and {split}"


# ------------------------------------------------------------------------------------------------ signals
def test_to_standard_leads_orders_by_name_masks_absent_and_repairs_along_time():
    t = np.arange(1000, dtype=np.float32)
    names = ["V1", "AVR", "II", "EXTRA", "I"]
    signal = np.stack([t + 100 * k for k in range(len(names))]).astype(np.float32)
    signal[2, 10:13] = np.nan  # lead II, three samples
    record = ECGRecord(signal=signal, sampling_rate=500.0, lead_names=names, record_name="r")
    ecg, mask = to_standard_leads(record, 500, 1200)
    assert ecg.shape == (12, 1200) and ecg.dtype == np.float32
    assert mask.tolist() == [n in ("I", "II", "aVR", "V1") for n in STANDARD_12_LEADS]
    np.testing.assert_allclose(ecg[0, :1000], signal[4])  # I
    np.testing.assert_allclose(ecg[3, :1000], signal[1])  # aVR
    np.testing.assert_allclose(ecg[1, 10:13], t[10:13] + 200)  # repaired by interpolation in time
    assert not ecg[~mask].any() and not ecg[:, 1000:].any()  # absent leads and padding are zeros
    with pytest.raises(ValueError, match="non-finite"):
        to_standard_leads(record, 500, 1000, nan_policy="skip")
    half, _ = to_standard_leads(record, 250, 500)
    np.testing.assert_allclose(half, resample_signal(ecg[:, :1000], 500, 250)[:, :500], atol=1e-4)


# ------------------------------------------------------------------------------------------------ PTB-XL
@pytest.fixture(scope="module")
def ptbxl(tmp_path_factory):
    src = _data_dir() / "ptbxl"
    if not (src / "ptbxl_database.csv").is_file():
        pytest.skip("PTB-XL sample not found")
    out = tmp_path_factory.mktemp("ptbxl100")
    summary = convert("ptbxl", src, out, sampling_rate=100, num_proc=1, progress=False)
    dataset_dict, info = load_ecg_dataset(out)
    return src, out, summary, dataset_dict, info


def _ptbxl_tables(src: Path):
    database = pd.read_csv(src / "ptbxl_database.csv", index_col="ecg_id")
    statements = pd.read_csv(src / "scp_statements.csv", index_col=0)
    return database, statements


def test_ptbxl_label_sets_match_merl_label_columns(ptbxl):
    _, _, _, _, info = ptbxl
    assert [len(info.tasks[t]) for t in ("super", "sub", "form", "rhythm")] == [5, 23, 19, 12]
    assert info.tasks["super"] == ["CD", "HYP", "MI", "NORM", "STTC"]
    for names in info.tasks.values():
        assert names == sorted(names)
    merl_file = _data_dir().parent / "reference" / "merl" / "labels_by_dataset.json"
    if not merl_file.is_file():
        pytest.skip("MERL reference label columns not found")
    merl = json.loads(merl_file.read_text())
    keys = {"super": "ptbxl_super_class", "sub": "ptbxl_sub_class", "form": "ptbxl_form", "rhythm": "ptbxl_rhythm"}
    for task, key in keys.items():
        for split in ("train", "val", "test"):
            assert set(info.tasks[task]) == set(merl[key][split]["label_columns_in_order"]), (task, split)


def test_ptbxl_super_and_rhythm_counts_match_the_csv(ptbxl):
    src, _, summary, dataset_dict, info = ptbxl
    database, statements = _ptbxl_tables(src)
    diagnostic = statements[statements.diagnostic == 1]
    expected_super = {name: 0 for name in info.tasks["super"]}
    expected_rhythm = {name: 0 for name in info.tasks["rhythm"]}
    for codes in database.scp_codes.map(ast.literal_eval):
        for cls in {diagnostic.loc[c, "diagnostic_class"] for c in codes if c in diagnostic.index}:
            expected_super[cls] += 1
        for c in codes:
            if c in statements.index and statements.loc[c, "rhythm"] == 1:
                expected_rhythm[c] += 1
    assert summary.num_converted == len(database) and summary.num_skipped == 0
    super_counts = _all_rows(dataset_dict, label_column("super")).sum(0)
    rhythm_counts = _all_rows(dataset_dict, label_column("rhythm")).sum(0)
    assert dict(zip(info.tasks["super"], super_counts.tolist())) == expected_super
    assert dict(zip(info.tasks["rhythm"], rhythm_counts.tolist())) == expected_rhythm
    assert sum(expected_super.values()) > 0


def test_ptbxl_layout_multi_hot_and_metadata(ptbxl):
    _, out, summary, dataset_dict, info = ptbxl
    assert info.sampling_rate == 100 and info.num_samples == 1000 and info.lead_names == list(STANDARD_12_LEADS)
    assert info.id2label("super") == {0: "CD", 1: "HYP", 2: "MI", 3: "NORM", 4: "STTC"}
    saved = json.loads((out / "cardiomm_dataset.json").read_text())
    assert saved["tasks"]["sub"] == info.tasks["sub"] and saved["extra"]["splits"] == summary.splits
    train = _numpy_split(dataset_dict, "train")
    batch = train[:8]
    assert batch["ecg"].shape == (8, 12, 1000) and batch["ecg"].dtype == np.float32
    for task, names in info.tasks.items():
        labels = batch[label_column(task)]
        assert labels.shape == (8, len(names)) and set(np.unique(labels)) <= {0, 1}
    assert batch["lead_mask"].all()
    assert set(batch["sex"]) <= {"M", "F"} and np.isfinite(batch["age"]).all()
    row = train[0]
    assert json.loads(row["scp_codes"]) and row["recording_date"] and 1 <= row["strat_fold"] <= 8


def test_ptbxl_waveform_equals_read_ecg_record(ptbxl, tmp_path):
    src, _, _, dataset_dict, _ = ptbxl
    database, _ = _ptbxl_tables(src)
    row = _numpy_split(dataset_dict, "test")[0]
    ecg_id = int(row["ecg_id"])
    record = read_ecg_record(src / database.loc[ecg_id, "filename_lr"])
    np.testing.assert_array_equal(row["ecg"], record.signal)  # records100: same rate, leads already standard
    # another rate: records500 read and resampled (polyphase) to 250 Hz
    convert("ptbxl", src, tmp_path, sampling_rate=250, num_proc=1, max_records=6, progress=False, fractions=())
    resampled, info = load_ecg_dataset(tmp_path)
    assert info.num_samples == 2500
    for split in resampled:
        for r in resampled[split].with_format("numpy"):
            original = read_ecg_record(src / database.loc[int(r["ecg_id"]), "filename_hr"])
            expected = resample_signal(original.signal, original.sampling_rate, 250)[:, :2500]
            np.testing.assert_allclose(r["ecg"], expected, rtol=1e-6, atol=1e-6)


def test_ptbxl_splits_follow_folds_and_keep_patients_together(ptbxl):
    src, _, summary, dataset_dict, _ = ptbxl
    _assert_patient_level(dataset_dict)
    database, _ = _ptbxl_tables(src)
    folds = {"train": set(range(1, 9)), "validation": {9}, "test": {10}}
    moved = 0
    for split in MAIN_SPLITS:
        for ecg_id, fold in zip(dataset_dict[split]["ecg_id"], dataset_dict[split]["strat_fold"]):
            assert database.loc[int(ecg_id), "strat_fold"] == fold
            moved += fold not in folds[split]
    assert moved <= database.patient_id.duplicated().sum()  # only duplicate patients may leave their fold
    assert sum(summary.splits[s] for s in MAIN_SPLITS) == len(database)


def test_ptbxl_reports_english_from_descriptions_and_original_kept(ptbxl):
    src, _, _, dataset_dict, _ = ptbxl
    database, statements = _ptbxl_tables(src)
    descriptions = {c: str(d).lower() for c, d in statements.description.items()}
    checked = 0
    for row in dataset_dict["train"].select(range(40)):
        codes = ast.literal_eval(database.loc[int(row["ecg_id"]), "scp_codes"])
        assert row["report"].endswith(".")
        parts = row["report"][:-1].split(". ")
        assert len(parts) == len(set(parts)) >= 1
        assert set(parts) == {descriptions[c] for c in codes if c in descriptions}
        rhythm = [descriptions[c] for c in codes if statements.loc[c, "rhythm"] == 1]
        assert parts[: len(rhythm)] == list(dict.fromkeys(rhythm))  # rhythm statements first
        assert row["report_original"] == database.loc[int(row["ecg_id"]), "report"].strip()
        checked += 1
    train_ids = dataset_dict["train"]["ecg_id"]
    if "2" in train_ids:  # scp_codes {'NORM': 80.0, 'SBRAD': 0.0}
        assert dataset_dict["train"][train_ids.index("2")]["report"] == "sinus bradycardia. normal ecg."
    assert checked == 40


def test_ptbxl_training_fractions_are_subsets_and_reproducible(ptbxl, tmp_path):
    src, out, summary, dataset_dict, info = ptbxl
    train_ids = set(dataset_dict["train"]["ecg_id"])
    for name in ("train_1pct", "train_10pct"):
        assert name in dataset_dict and set(dataset_dict[name]["ecg_id"]) <= train_ids
        assert info.extra["train_fractions"][name]["num_rows"] == len(dataset_dict[name])
    small = tmp_path / "again"
    convert("ptbxl", src, small, sampling_rate=100, num_proc=1, progress=False)
    again, _ = load_ecg_dataset(small)
    assert again["train_10pct"]["ecg_id"] == dataset_dict["train_10pct"]["ecg_id"]


# ------------------------------------------------------------------------------------------------ engine
def _synthetic_record(job: ConversionJob, info: ECGDatasetInfo) -> list[dict]:
    if job.data.get("fail"):
        raise OSError("simulated unreadable file")
    rng = np.random.default_rng(job.data["seed"])
    row = {
        "ecg_id": job.record,
        "patient_id": job.data["patient"],
        "ecg": rng.standard_normal((12, info.num_samples)).astype(np.float32),
        "lead_mask": np.ones(12, dtype=bool),
        "age": 50.0,
        "sex": "F",
        "report": "",
        label_column("dx"): job.data["labels"],
    }
    if job.data.get("bad_shape"):
        row["ecg"] = row["ecg"][:, :-1]
    return [row]


def _synthetic_jobs(n: int, seed: int = 0) -> list[ConversionJob]:
    rng = np.random.default_rng(seed)
    prevalence = np.array([0.5, 0.2, 0.08, 0.03])
    labels = (rng.random((n, len(prevalence))) < prevalence).astype(np.int8)
    return [
        ConversionJob(f"r{i:04d}", "train", {"seed": i, "patient": f"p{i}", "labels": labels[i]}) for i in range(n)
    ]


def test_fractions_keep_prevalence_and_are_reproducible(tmp_path):
    info = ECGDatasetInfo("synthetic", 100, 8, list(STANDARD_12_LEADS), tasks={"dx": ["a", "b", "c", "d"]})
    jobs = _synthetic_jobs(3000)
    full = np.stack([j.data["labels"] for j in jobs]).mean(0)
    first = convert_records(jobs, _synthetic_record, info, tmp_path / "a", fractions=(0.01, 0.1), progress=False)
    second = convert_records(jobs, _synthetic_record, info, tmp_path / "b", fractions=(0.01, 0.1), progress=False)
    other = convert_records(jobs, _synthetic_record, info, tmp_path / "c", fractions=(0.1,), seed=1, progress=False)
    a, _ = load_ecg_dataset(tmp_path / "a")
    b, _ = load_ecg_dataset(tmp_path / "b")
    c, _ = load_ecg_dataset(tmp_path / "c")
    assert first.splits["train_10pct"] == 300 and 30 <= first.splits["train_1pct"] <= 32
    for name, tolerance in (("train_10pct", 0.01), ("train_1pct", 0.03)):
        subset = np.asarray(a[name].with_format("numpy")[label_column("dx")]).mean(0)
        np.testing.assert_allclose(subset, full, atol=tolerance)
        assert a[name]["ecg_id"] == b[name]["ecg_id"]  # same seed, same records
    assert c["train_10pct"]["ecg_id"] != a["train_10pct"]["ecg_id"]  # another seed, another draw
    assert fraction_split_name(0.01) == "train_1pct" and fraction_split_name(0.005) == "train_0.5pct"
    assert second.num_rows == other.num_rows == 3000
    # the benchmark's batch reader gathers exactly what datasets' own random access returns
    batches = ArrowECGBatches(a["train"], label_columns=(label_column("dx"),))
    picked = [2999, 5, 1500, 5]
    batch = batches.__getitems__(picked)
    reference = a["train"].with_format("numpy")[picked]
    np.testing.assert_array_equal(batch["ecg"].numpy(), reference["ecg"])
    np.testing.assert_array_equal(batch[label_column("dx")].numpy(), reference[label_column("dx")])


def test_bad_records_are_skipped_and_reported_in_parallel(tmp_path):
    info = ECGDatasetInfo("synthetic", 100, 16, list(STANDARD_12_LEADS), tasks={"dx": ["a", "b", "c", "d"]})
    jobs = _synthetic_jobs(40)
    jobs[3].data["fail"] = True
    jobs[7].data["bad_shape"] = True
    for j in jobs[20:]:
        j.split = "test"
    summary = convert_records(jobs, _synthetic_record, info, tmp_path, num_proc=2, fractions=(), progress=False)
    assert (summary.num_converted, summary.num_skipped) == (38, 2)
    assert summary.splits == {"train": 18, "test": 20}
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    reasons = {s["record"]: s["reason"] for s in report["skipped"]}
    assert "OSError: simulated unreadable file" == reasons["r0003"]
    assert "inconsistent record" in reasons["r0007"] and "shape" in reasons["r0007"]
    assert {s["record"]: s["split"] for s in report["skipped"]} == {"r0003": "train", "r0007": "train"}
    assert report["records_by_split"] == {"train": {"found": 20, "converted": 18, "skipped": 2},
                                          "test": {"found": 20, "converted": 20, "skipped": 0}}
    assert report["status"] == "complete" and report["num_found"] == summary.num_found == 40
    data, _ = load_ecg_dataset(tmp_path)
    ids = data["train"]["ecg_id"]
    assert ids == sorted(ids) and "r0003" not in ids  # job order kept across worker processes
    serial = convert_records(jobs, _synthetic_record, info, tmp_path / "serial", fractions=(), progress=False)
    again, _ = load_ecg_dataset(tmp_path / "serial")
    np.testing.assert_array_equal(
        np.asarray(again["test"].with_format("numpy")["ecg"]), np.asarray(data["test"].with_format("numpy")["ecg"])
    )
    assert serial.num_skipped == 2


def test_convert_rejects_unknown_dataset_names(tmp_path):
    assert {"ptbxl", "cinc2021", "mimic_iv_ecg", "incart"} <= set(available_converters())
    with pytest.raises(ValueError, match="unknown dataset"):
        convert("not-a-dataset", tmp_path, tmp_path / "out")


# ------------------------------------------------------------------------------------------------ challenge
def _header_fields(path: Path) -> dict[str, str]:
    fields = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") and ":" in line:
            key, value = line[1:].split(":", 1)
            fields[key.strip()] = value.strip()
    return fields


def test_challenge_labels_subsets_and_merges(tmp_path):
    src = _data_dir() / "cinc2021"
    if not src.is_dir():
        pytest.skip("challenge sample not found")
    summary = convert("cinc2021", src, tmp_path, num_proc=1, progress=False)
    data, info = load_ecg_dataset(tmp_path)
    assert summary.num_converted == 50 and summary.num_skipped == 0
    assert len(info.tasks["physionet2020_23"]) == 23 and info.tasks["chapman_rhythm"] == ["AFIB", "GSVT", "SB", "SR"]
    assert info.tasks["cpsc2018"] == sorted(["AFIB", "VPC", "NORM", "1AVB", "CRBBB", "STE", "PAC", "CLBBB", "STD"])
    _assert_patient_level(data)
    index = {name: i for i, name in enumerate(info.tasks["physionet2020_23"])}
    rhythm = {name: i for i, name in enumerate(info.tasks["chapman_rhythm"])}
    dx = {name: i for i, name in enumerate(info.tasks["dx"])}
    rows = 0
    for split in MAIN_SPLITS:
        for row in data[split].with_format("numpy"):
            fields = _header_fields(src / f"{row['ecg_id']}.hea")
            codes = set(fields["Dx"].split(","))
            assert row["dx_codes"].split(",") == fields["Dx"].split(",")
            assert row["age"] == float(fields["Age"]) and row["sex"] == fields["Sex"][0]
            assert row["subset"] == {"E": "Georgia", "H": "PTB-XL", "J": "Ningbo"}[row["ecg_id"][0]]
            merged = row[label_column("physionet2020_23")]
            assert merged[index["RBBB"]] == bool(codes & {"59118001", "713427006"})
            assert merged[index["PAC"]] == bool(codes & {"284470004", "63593006"})
            assert merged[index["STach"]] == ("427084000" in codes)
            four = row[label_column("chapman_rhythm")]
            assert four[rhythm["GSVT"]] == bool(codes & {"427084000", "713422000", "426761007"})
            assert four[rhythm["SR"]] == bool(codes & {"426783006", "427393009"})
            assert row[label_column("dx")][dx["LAE"]] == ("67741000119109" in codes)
            assert row["report"] and row["report"].endswith(".")
            rows += 1
    assert rows == 50
    by_id = {r["ecg_id"]: r for s in MAIN_SPLITS for r in data[s].with_format("numpy")}
    assert by_id["E07500"]["report"] == "left atrial enlargement. sinus bradycardia."
    np.testing.assert_array_equal(by_id["HR06000"]["ecg"], read_ecg_record(src / "HR06000").signal)


# ------------------------------------------------------------------------------------------------ MIMIC-IV-ECG
MIMIC_LEADS = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]


def _mimic_fixture(root: Path) -> dict[int, np.ndarray]:
    import wfdb

    studies = [  # subject, study, report statements
        (10000032, 40689238, ["Sinus rhythm", "Possible left atrial enlargement.", "Borderline ECG"]),
        (10000032, 44458630, ["Sinus rhythm", "Normal ECG", None]),
        (10000117, 45090959, ["Sinus tachycardia", "Low QRS voltages in precordial leads"]),
        (10000560, 46261163, ["Normal ECG", None, None]),  # two words: dropped
        (10000764, 47212349, [None, None, None]),  # empty: dropped
        (10000898, 48014216, ["Atrial fibrillation with rapid ventricular response"]),  # missing .dat
        (10001122, 49008114, ["Sinus bradycardia", "Otherwise normal ECG"]),
    ]
    signals, record_rows, measurement_rows = {}, [], []
    rng = np.random.default_rng(0)
    for k, (subject, study, report) in enumerate(studies):
        rel = Path("files") / f"p{str(subject)[:4]}" / f"p{subject}" / f"s{study}"
        folder = root / rel
        folder.mkdir(parents=True)
        signal = np.round(rng.standard_normal((5000, 12)) * 0.3, 3)
        wfdb.wrsamp(str(study), fs=500, units=["mV"] * 12, sig_name=MIMIC_LEADS, p_signal=signal,
                    fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(folder))
        signals[study] = signal.T.astype(np.float32)
        time = f"2180-07-{23 + k:02d} 08:44:00"
        record_rows.append({"subject_id": subject, "study_id": study, "file_name": str(study), "ecg_time": time,
                            "path": str(rel / str(study))})
        meas = {"subject_id": subject, "study_id": study, "cart_id": 6848296, "ecg_time": time}
        meas.update({f"report_{i}": r for i, r in enumerate(report)})
        meas.update({"bandwidth": "0.005-150 Hz", "filtering": "60 Hz notch Baseline filter", "rr_interval": 659 + k,
                     "p_onset": 40, "qrs_axis": 10 * k})
        measurement_rows.append(meas)
    (root / "files/p1000/p10000898/s48014216/48014216.dat").unlink()
    pd.DataFrame(record_rows).to_csv(root / "record_list.csv", index=False)
    pd.DataFrame(measurement_rows).to_csv(root / "machine_measurements.csv", index=False)
    return signals


def test_mimic_iv_ecg_reports_skips_measurements_and_streaming(tmp_path):
    signals = _mimic_fixture(tmp_path / "mimic")
    out = tmp_path / "out"
    summary = convert("mimic-iv-ecg", tmp_path / "mimic", out, num_proc=1, progress=False,
                      split_fractions={"train": 0.5, "test": 0.5})
    assert (summary.num_converted, summary.num_skipped) == (4, 3)
    report = json.loads((out / REPORT_FILE).read_text())
    reasons = {Path(s["record"]).name: s["reason"] for s in report["skipped"]}
    assert reasons["46261163"].startswith("report has 2 word") and reasons["47212349"] == "empty report"
    assert "48014216.dat" in reasons["48014216"]  # the missing signal file is named
    data, info = load_ecg_dataset(out)
    _assert_patient_level(data, ("train", "test"))
    rows = {r["ecg_id"]: r for s in data for r in data[s].with_format("numpy")}
    assert set(rows) == {"40689238", "44458630", "45090959", "49008114"}
    assert rows["40689238"]["report"] == "Sinus rhythm. Possible left atrial enlargement. Borderline ECG."
    assert rows["44458630"]["report"] == "Sinus rhythm. Normal ECG."
    assert rows["40689238"]["patient_id"] == "10000032" and rows["40689238"]["cart_id"] == "6848296"
    assert rows["45090959"]["rr_interval"] == 661 and rows["45090959"]["qrs_axis"] == 20
    assert rows["40689238"]["ecg_time"] == "2180-07-23 08:44:00"
    expected = signals[40689238][[MIMIC_LEADS.index(n) for n in STANDARD_12_LEADS]]  # aVL/aVF reordered
    np.testing.assert_allclose(rows["40689238"]["ecg"], expected, atol=1e-6)
    assert info.tasks == {} and read_dataset_info(out).extra["splits"] == summary.splits
    streamed, _ = load_ecg_dataset(out, streaming=True)
    count = 0
    for split in streamed:
        for r in streamed[split]:
            assert np.asarray(r["ecg"], dtype=np.float32).shape == (12, 5000) and r["report"]
            count += 1
    assert count == 4


# ------------------------------------------------------------------------------------------------ INCART
def _incart_fixture(root: Path) -> dict[str, np.ndarray]:
    import wfdb

    root.mkdir()
    names = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    comments = {
        "I01": ["<age>: 65 <sex>: F <diagnoses> Coronary artery disease, arterial hypertension"],
        "I02": ["<age>: 65 <sex>: F <diagnoses> Coronary artery disease, arterial hypertension"],
        "I03": ["<age>: 72 <sex>: M <diagnoses> Sinus node dysfunction"],
    }
    rng = np.random.default_rng(1)
    signals = {}
    for name, comment in comments.items():
        t = np.arange(257 * 35) / 257
        signal = np.stack([np.sin(2 * np.pi * (1 + k / 5) * t) for k in range(12)], axis=1)
        signal = np.round(signal + 0.01 * rng.standard_normal(signal.shape), 3)
        wfdb.wrsamp(name, fs=257, units=["mV"] * 12, sig_name=names, p_signal=signal, fmt=["16"] * 12,
                    adc_gain=[1000.0] * 12, baseline=[0] * 12, comments=comment, write_dir=str(root))
        signals[name] = signal.T.astype(np.float32)
    dat = root / "I03.dat"
    dat.write_bytes(dat.read_bytes()[: dat.stat().st_size // 3 + 5])  # truncated: not a whole frame
    return signals


def test_incart_segments_rate_patients_and_corrupt_record(tmp_path):
    signals = _incart_fixture(tmp_path / "incart")
    out = tmp_path / "out"
    summary = convert("incart", tmp_path / "incart", out, num_proc=1, progress=False)
    assert (summary.num_converted, summary.num_skipped, summary.num_rows) == (2, 1, 6)
    assert json.loads((out / REPORT_FILE).read_text())["skipped"][0]["record"] == "I03"
    data, info = load_ecg_dataset(out)
    assert list(data) == ["test"] and info.sampling_rate == 500 and info.num_samples == 5000
    rows = list(data["test"].with_format("numpy"))
    assert [r["ecg_id"] for r in rows] == ["I01_000", "I01_001", "I01_002", "I02_000", "I02_001", "I02_002"]
    assert rows[0]["patient_id"] == rows[3]["patient_id"]  # same age, sex and diagnoses: one patient
    assert rows[1]["segment_start_s"] == 10.0 and rows[0]["report"].startswith("Coronary artery disease")
    assert rows[0]["age"] == 65 and rows[0]["sex"] == "F"
    full = resample_signal(signals["I01"], 257, 500)
    np.testing.assert_allclose(rows[1]["ecg"], full[:, 5000:10000], atol=2e-3)
