"""Tests of ECGFeatureExtractor: lead matching, repair, resampling, normalisation, cropping, errors, saving."""

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

from cardiomm.processing import feature_extraction_ecg
from cardiomm.processing.ecg_records import STANDARD_12_LEADS, read_ecg_record, resample_signal
from cardiomm.processing.feature_extraction_ecg import (
    ECGFeatureExtractor,
    LeadOffWarning,
    normalize_signal,
    repair_non_finite,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    path = Path(os.environ.get("CARDIOMM_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"real ECG test data not found at {path} (set CARDIOMM_TEST_DATA)")
    return path


def _synthetic(n_leads: int = 12, n_time: int = 5000, fs: float = 500.0, seed: int = 0) -> np.ndarray:
    """Distinct smooth lead signals (mV): lead k is a sine of its own frequency plus noise and an offset."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_time) / fs
    leads = [np.sin(2 * np.pi * (1.0 + 0.3 * k) * t) * (0.5 + 0.1 * k) + 0.05 * k for k in range(n_leads)]
    return (np.stack(leads) + 0.01 * rng.standard_normal((n_leads, n_time))).astype(np.float32)


def _write_wfdb(directory: Path, name: str, signal_mv: np.ndarray, fs: float, lead_names: list[str], unit: str) -> str:
    import wfdb

    scale = {"mV": 1.0, "uV": 1000.0}[unit]
    wfdb.wrsamp(
        name,
        fs=fs,
        units=[unit] * len(lead_names),
        sig_name=lead_names,
        p_signal=(signal_mv.T * scale).astype(np.float64),
        fmt=["16"] * len(lead_names),
        write_dir=str(directory),
    )
    return str(directory / name)


# ------------------------------------------------------------------------------------------ real records


def test_ptbxl_100hz_and_500hz_agree_after_resampling():
    data = _data_dir()
    fe = ECGFeatureExtractor()
    out = fe(
        [data / "ptbxl/records100/00000/00001_lr", data / "ptbxl/records500/00000/00001_hr"],
        crop="none",
        return_tensors="np",
    )
    low, high = out["input_values"]
    assert out["input_values"].shape == (2, 12, 5000)
    assert out["lead_mask"].all() and out["time_mask"].all()
    corr = np.array([np.corrcoef(low[k], high[k])[0, 1] for k in range(12)])
    assert corr.min() > 0.9 and corr.mean() > 0.95


def test_cinc2021_mat_record_is_read_in_mv_and_normalised():
    data = _data_dir()
    path = data / "cinc2021/E07500"
    raw = read_ecg_record(path)
    out = ECGFeatureExtractor(normalization="none")(path, crop="none", return_tensors="np")
    assert out["input_values"].shape == (1, 12, 5000)
    np.testing.assert_array_equal(out["input_values"][0], raw.signal)

    z = ECGFeatureExtractor()(path, crop="none", return_tensors="np")["input_values"][0]
    np.testing.assert_allclose(z.mean(-1), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(-1), 1.0, atol=1e-3)
    centred = ECGFeatureExtractor()(str(path) + ".mat", crop="center")
    assert tuple(centred["input_values"].shape) == (1, 12, 2500)
    torch.testing.assert_close(centred["input_values"][0], torch.from_numpy(z[:, 1250:3750]))


def test_ptbdb_15_lead_1khz_record_keeps_12_leads_at_500hz():
    data = _data_dir()
    path = data / "ptbdb/s0010_re"
    header = (data / "ptbdb/s0010_re.hea").read_text().splitlines()
    assert [line.split()[-1] for line in header[1:4]] == ["i", "ii", "iii"]  # lower-case names in the file
    raw = read_ecg_record(path)
    assert raw.sampling_rate == 1000 and len(raw.lead_names) == 15

    out = ECGFeatureExtractor(normalization="none", min_length=1)(path, crop="none", return_tensors="np")
    assert out["input_values"].shape == (1, 12, 19200)
    assert out["lead_mask"].all()
    index = [raw.lead_names.index(lead) for lead in STANDARD_12_LEADS]
    expected = resample_signal(raw.signal[index], 1000, 500)
    np.testing.assert_allclose(out["input_values"][0], expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------- written WFDB records


def test_wfdb_record_with_shuffled_uv_250hz_and_missing_leads(tmp_path):
    fs = 250
    full = _synthetic(n_time=2500, fs=fs)  # 10 s
    present = ["V3", "avr", "I", "v6", "II", "AVF", "V1", "lead iii"]  # shuffled, odd spellings, 4 leads missing
    canonical = ["V3", "aVR", "I", "V6", "II", "aVF", "V1", "III"]
    rows = [STANDARD_12_LEADS.index(c) for c in canonical]
    path = _write_wfdb(tmp_path, "shuffled", full[rows], fs, present, unit="uV")
    assert read_ecg_record(path).lead_names == canonical

    out = ECGFeatureExtractor(normalization="none")(path, crop="none", return_tensors="np")
    values, mask = out["input_values"][0], out["lead_mask"][0]
    assert values.shape == (12, 5000)
    assert mask.tolist() == [lead in canonical for lead in STANDARD_12_LEADS]
    expected = resample_signal(full, fs, 500)
    np.testing.assert_allclose(values[mask], expected[mask], atol=2e-3)  # uV -> mV, 16-bit quantisation
    assert not values[~mask].any()


def test_wfdb_files_in_a_batch_match_arrays(tmp_path):
    signal = _synthetic()
    path = _write_wfdb(tmp_path, "rec", signal, 500, list(STANDARD_12_LEADS), unit="mV")
    fe = ECGFeatureExtractor()
    from_file = fe([path, Path(path + ".hea")], crop="none")["input_values"]
    from_array = fe(read_ecg_record(path).signal, sampling_rate=500, crop="none")["input_values"]
    torch.testing.assert_close(from_file[0], from_array[0], rtol=0, atol=0)
    torch.testing.assert_close(from_file[1], from_array[0], rtol=0, atol=0)


def test_file_errors_name_the_path(tmp_path):
    fe = ECGFeatureExtractor()
    with pytest.raises(ValueError, match="missing_record"):
        fe(str(tmp_path / "missing_record"))
    (tmp_path / "broken.hea").write_text("this is not a header\n")
    with pytest.raises(ValueError, match="broken"):
        fe(str(tmp_path / "broken"))
    path = _write_wfdb(tmp_path, "odd", _synthetic(n_leads=3), 500, ["I", "II", "ECG-chest"], unit="mV")
    with pytest.raises(ValueError, match=r"odd.*unknown lead names \['ECG-chest'\]"):
        fe(path)
    with pytest.raises(ValueError, match="read from the record header"):
        fe(path, sampling_rate=500)


# ------------------------------------------------------------------------------------------- lead names


def test_leads_are_matched_by_name_in_any_spelling():
    signal = _synthetic()
    fe = ECGFeatureExtractor()
    reference = fe(signal, sampling_rate=500, crop="none")["input_values"]
    order = np.random.default_rng(3).permutation(12)
    spellings = {"aVR": "AVR", "aVL": "avl", "aVF": "aVF", "V1": "v1", "II": "ii"}
    names = [spellings.get(STANDARD_12_LEADS[k], STANDARD_12_LEADS[k]) for k in order]
    shuffled = fe(signal[order], sampling_rate=500, lead_names=names, crop="none")
    torch.testing.assert_close(shuffled["input_values"], reference, rtol=0, atol=0)
    assert shuffled["lead_mask"].all()


def test_frank_leads_dropped_and_missing_leads_masked():
    signal = _synthetic(n_leads=15)
    names = list(STANDARD_12_LEADS) + ["vx", "vy", "vz"]
    out = ECGFeatureExtractor()(signal, sampling_rate=500, lead_names=names, crop="none")
    reference = ECGFeatureExtractor()(signal[:12], sampling_rate=500, crop="none")
    torch.testing.assert_close(out["input_values"], reference["input_values"], rtol=0, atol=0)

    limb = ECGFeatureExtractor()(signal[:6], sampling_rate=500, lead_names=STANDARD_12_LEADS[:6], crop="none")
    assert limb["lead_mask"][0].tolist() == [True] * 6 + [False] * 6
    assert (limb["input_values"][0, 6:] == 0).all()
    torch.testing.assert_close(limb["input_values"][0, :6], reference["input_values"][0, :6], rtol=0, atol=0)


def test_configured_lead_subset_and_order():
    signal = _synthetic()
    fe = ECGFeatureExtractor(lead_names=["v1", "II", "avr"])
    assert fe.lead_names == ["V1", "II", "aVR"]
    out = fe(signal, sampling_rate=500, lead_names=STANDARD_12_LEADS, crop="none", return_tensors="np")
    full = ECGFeatureExtractor()(signal, sampling_rate=500, crop="none", return_tensors="np")["input_values"][0]
    np.testing.assert_array_equal(out["input_values"][0], full[[6, 1, 3]])


# -------------------------------------------------------------------------------------- NaN/Inf repair


def test_nan_is_filled_from_its_own_lead_neighbours_not_other_leads():
    signal = np.array(
        [
            [1.0, 2.0, np.nan, 4.0, np.nan, np.nan, 10.0],
            [100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0],
            [np.nan, np.inf, 5.0, 6.0, 7.0, -np.inf, np.nan],
        ],
        dtype=np.float32,
    )
    repaired, usable = repair_non_finite(signal)
    expected = np.array(
        [
            [1.0, 2.0, 3.0, 4.0, 7.0, 7.0, 10.0],  # gaps: mean of the finite samples either side in time
            [100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0],
            [5.0, 5.0, 5.0, 6.0, 7.0, 7.0, 7.0],  # edges: the one available neighbour
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(repaired, expected)
    assert usable.all()
    # repairing along the lead axis would have used 300 (lead 1, same time) for the first NaN
    assert repaired[0, 2] != signal[1, 2]


def test_nan_repair_inside_the_extractor():
    signal = _synthetic()
    damaged = signal.copy()
    damaged[4, 1000] = np.nan
    damaged[4, 2000:2003] = np.inf
    fe = ECGFeatureExtractor(normalization="none")
    out = fe(damaged, sampling_rate=500, crop="none", return_tensors="np")["input_values"][0]
    assert np.isfinite(out).all()
    assert out[4, 1000] == pytest.approx(0.5 * (signal[4, 999] + signal[4, 1001]))
    assert out[4, 2001] == pytest.approx(0.5 * (signal[4, 1999] + signal[4, 2003]))
    np.testing.assert_array_equal(np.delete(out, 4, axis=0), np.delete(signal, 4, axis=0))


def test_all_nan_lead_becomes_absent():
    signal = _synthetic()
    signal[7] = np.nan
    out = ECGFeatureExtractor()(signal, sampling_rate=500, crop="none", return_tensors="np")
    assert out["lead_mask"][0].tolist() == [k != 7 for k in range(12)]
    assert (out["input_values"][0, 7] == 0).all()
    assert np.isfinite(out["input_values"]).all()
    np.testing.assert_allclose(np.delete(out["input_values"][0], 7, 0).std(-1), 1.0, atol=1e-3)
    signal[:] = np.nan
    with pytest.raises(ValueError, match="input record: every lead is entirely NaN"):
        ECGFeatureExtractor()(signal, sampling_rate=500)


# --------------------------------------------------------------------------------------- normalisation


def test_normalisation_definitions_over_present_leads():
    signal = _synthetic()
    signal[3] = 0.25  # flat lead: lead off, absent
    names = list(STANDARD_12_LEADS[:10])  # V5, V6 absent
    with pytest.warns(LeadOffWarning, match="aVR"):
        z = ECGFeatureExtractor()(signal[:10], sampling_rate=500, lead_names=names, crop="none", return_tensors="np")
    zv = z["input_values"][0]
    assert z["lead_mask"][0].tolist() == [k < 10 and k != 3 for k in range(12)]
    assert np.isfinite(zv).all() and (zv[3] == 0).all() and (zv[10:] == 0).all()
    present = [k for k in range(10) if k != 3]
    np.testing.assert_allclose(zv[present].mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(zv[present].std(-1), 1.0, atol=1e-4)

    with pytest.warns(LeadOffWarning):
        m = ECGFeatureExtractor(normalization="minmax")(
            signal[:10], sampling_rate=500, lead_names=names, crop="none", return_tensors="np"
        )["input_values"][0]
    assert m[:10].min() == 0.0 and m[:10].max() == pytest.approx(1.0)
    assert (m[3] == 0).all() and (m[10:] == 0).all()
    raw = signal[present]  # the range is that of the present leads
    np.testing.assert_allclose(m[present], (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-6)
    flat = normalize_signal(np.full((2, 50), 3.0, np.float32), "minmax", 1e-6)
    assert (flat == 0).all()


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda fe, x: fe(x[0, 0], sampling_rate=500), r"input: expected a 2-D record"),
        (lambda fe, x: fe(x[None], sampling_rate=500), r"input: expected a 2-D record"),
        (lambda fe, x: fe(x[0]), r"input record: sampling_rate must be given"),
        (lambda fe, x: fe(x[0], sampling_rate=0), r"input record: sampling_rate must be given"),
        (lambda fe, x: fe(x[0], sampling_rate=-250), r"input record: sampling_rate must be given"),
        (lambda fe, x: fe(list(x), sampling_rate=[500, 500, None]), r"record 2 of the batch: sampling_rate"),
        (lambda fe, x: fe(x, sampling_rate=[500, 250]), r"2 values of sampling_rate given for a batch of 3"),
        (lambda fe, x: fe(x[:, :8], sampling_rate=500), r"record 0 of the batch: 8 leads .* no lead_names"),
        (lambda fe, x: fe(x[0].T, sampling_rate=500), r"did you mean layout='time_first'"),
        (
            lambda fe, x: fe([x[0], x[1, :3]], sampling_rate=500, lead_names=[STANDARD_12_LEADS, ["I", "II"]]),
            r"record 1 of the batch: 2 lead names given for 3 rows",
        ),
        (
            lambda fe, x: fe([x[0], x[1, :3]], sampling_rate=500, lead_names=[STANDARD_12_LEADS, ["I", "V7", "Q"]]),
            r"record 1 of the batch: unknown lead names \['V7', 'Q'\]",
        ),
        (
            lambda fe, x: fe(x[0, :2], sampling_rate=500, lead_names=["I", "i"]),
            r"input record: lead 'I' appears more than once",
        ),
        (
            lambda fe, x: fe(x[0, :2], sampling_rate=500, lead_names=["X", "Y"]),
            r"input record: none of the leads",
        ),
        (lambda fe, x: fe([x[0], x[1, :, :400]], sampling_rate=500), r"record 1 of the batch: .*min_length=500"),
        (lambda fe, x: fe(x[0, :, :998], sampling_rate=1000), r"input record: 998 samples at 1000 Hz give 499"),
        (lambda fe, x: fe(x[0, :, :199], sampling_rate=200), r"input record: .*shorter than min_length=500"),
        (lambda fe, x: fe(x[0, :, :0], sampling_rate=500), r"input record: empty record"),
        (lambda fe, x: fe([], sampling_rate=500), r"empty input"),
        (lambda fe, x: fe(x[:0], sampling_rate=500), r"empty input"),
        (lambda fe, x: fe(x[0].astype(np.complex64), sampling_rate=500), r"real numbers"),
        (lambda fe, x: fe({"ecg": x}, sampling_rate=500), r"unsupported ECG input"),
        (lambda fe, x: fe([x[0], "a/path"], sampling_rate=500), r"all file paths or all arrays"),
        (lambda fe, x: fe(x, sampling_rate=500, crop="middle"), r"crop must be one of"),
        (lambda fe, x: fe(x, sampling_rate=500, layout="lead_first"), r"layout must be one of"),
        (lambda fe, x: fe(x, sampling_rate=500, crop="random", seed="7"), r"seed must be"),
    ],
)
def test_bad_input_raises_value_error_naming_the_record(call, message):
    x = np.stack([_synthetic(seed=s) for s in range(3)])
    with pytest.raises(ValueError, match=message):
        call(ECGFeatureExtractor(), x)


def test_bad_configuration_raises():
    for kwargs in (
        {"normalization": "l2"},
        {"sampling_rate": 0},
        {"crop_length": 0},
        {"lead_names": []},
        {"lead_names": ["I", "i"]},
        {"num_windows": 0},
    ):
        with pytest.raises(ValueError):
            ECGFeatureExtractor(**kwargs)
    with pytest.raises(ValueError, match="crop_length"):
        ECGFeatureExtractor(crop_length=None)(_synthetic(), sampling_rate=500, crop="windows")


# ---------------------------------------------------------------------------------------------- length


def test_random_crop_reproducible_with_seed_and_a_slice_of_the_record():
    batch = np.stack([_synthetic(seed=s) for s in range(4)])
    fe = ECGFeatureExtractor()
    full = fe(batch, sampling_rate=500, crop="none", return_tensors="np")["input_values"]
    a = fe(batch, sampling_rate=500, crop="random", seed=11, return_tensors="np")["input_values"]
    b = fe(batch, sampling_rate=500, crop="random", seed=11, return_tensors="np")["input_values"]
    c = fe(batch, sampling_rate=500, crop="random", seed=12, return_tensors="np")["input_values"]
    assert a.shape == (4, 12, 2500)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for record, crop in zip(full, a):
        starts = [s for s in range(0, 2501) if np.array_equal(record[:, s : s + 2500], crop)]
        assert len(starts) == 1

    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    t1 = fe(batch, sampling_rate=500, crop="random", seed=g1)["input_values"]
    t2 = fe(batch, sampling_rate=500, crop="random", seed=g2)["input_values"]
    torch.testing.assert_close(t1, t2, rtol=0, atol=0)
    torch.manual_seed(0)
    u1 = fe(batch, sampling_rate=500, crop="random")["input_values"]
    torch.manual_seed(0)
    u2 = fe(batch, sampling_rate=500, crop="random")["input_values"]
    torch.testing.assert_close(u1, u2, rtol=0, atol=0)


def test_windows_are_strided_slices_of_the_record():
    batch = np.stack([_synthetic(seed=s) for s in range(2)])
    fe = ECGFeatureExtractor()
    full = fe(batch, sampling_rate=500, crop="none", return_tensors="np")["input_values"]
    out = fe(batch, sampling_rate=500, crop="windows", return_tensors="np")
    assert out["input_values"].shape == (2, 6, 12, 2500)
    assert out["time_mask"].shape == (2, 6, 2500) and out["time_mask"].all()
    for w in range(6):
        np.testing.assert_array_equal(out["input_values"][:, w], full[:, :, 500 * w : 500 * w + 2500])


def test_windows_of_a_short_record_are_padded_and_masked():
    fe = ECGFeatureExtractor(padding_value=-9.0)
    out = fe([_synthetic(n_time=3500), _synthetic(n_time=5000)], sampling_rate=500, crop="windows", return_tensors="np")
    assert out["input_values"].shape == (2, 6, 12, 2500)
    assert out["time_mask"][0].sum(-1).tolist() == [2500, 2500, 2500, 2000, 1500, 1000]
    assert out["time_mask"][1].sum(-1).tolist() == [2500] * 6
    assert (out["input_values"][0, 5, :, 1000:] == -9.0).all()
    assert (out["input_values"][0, 5, :, :1000] != -9.0).all()


def test_short_records_are_padded_and_marked_in_time_mask():
    fe = ECGFeatureExtractor(padding_value=-5.0)
    records = [_synthetic(n_time=3000), _synthetic(n_time=1500, seed=1)]
    out = fe(records, sampling_rate=500, crop="center", return_tensors="np")
    assert out["input_values"].shape == (2, 12, 2500)
    assert out["time_mask"].sum(-1).tolist() == [2500, 1500]
    assert (out["input_values"][1, :, 1500:] == -5.0).all()
    alone = fe(records[1], sampling_rate=500, crop="none", return_tensors="np")["input_values"][0]
    np.testing.assert_array_equal(out["input_values"][1, :, :1500], alone)

    padded = fe(records, sampling_rate=500, crop="none", return_tensors="np")
    assert padded["input_values"].shape == (2, 12, 3000)
    assert padded["time_mask"].sum(-1).tolist() == [3000, 1500]
    np.testing.assert_array_equal(padded["input_values"][1, :, :1500], alone)
    assert (padded["input_values"][1, :, 1500:] == -5.0).all()


def test_resampling_to_the_target_rate():
    fs = 250
    signal = _synthetic(n_time=2500, fs=fs)
    out = ECGFeatureExtractor(normalization="none")(signal, sampling_rate=fs, crop="none", return_tensors="np")
    assert out["input_values"].shape == (1, 12, 5000)
    np.testing.assert_allclose(out["input_values"][0], resample_signal(signal, fs, 500), rtol=0, atol=0)


# ------------------------------------------------------------------------------------ input equivalence


def test_time_first_layout_equals_leads_first_of_the_transpose():
    batch = np.stack([_synthetic(seed=s) for s in range(2)])
    fe = ECGFeatureExtractor()
    leads_first = fe(batch, sampling_rate=500, crop="none")["input_values"]
    time_first = fe(batch.transpose(0, 2, 1), sampling_rate=500, layout="time_first", crop="none")["input_values"]
    torch.testing.assert_close(time_first, leads_first, rtol=0, atol=0)


def test_torch_numpy_and_list_inputs_give_identical_outputs():
    batch = np.stack([_synthetic(seed=s) for s in range(3)])
    fe = ECGFeatureExtractor()
    outputs = [
        fe(batch, sampling_rate=500, crop="random", seed=1),
        fe(torch.from_numpy(batch), sampling_rate=500, crop="random", seed=1),
        fe(list(batch), sampling_rate=500, crop="random", seed=1),
        fe([torch.from_numpy(r) for r in batch], sampling_rate=[500, 500, 500], crop="random", seed=1),
    ]
    for out in outputs[1:]:
        for key in ("input_values", "lead_mask", "time_mask"):
            torch.testing.assert_close(out[key], outputs[0][key], rtol=0, atol=0)
    assert outputs[0]["input_values"].dtype == torch.float32
    assert outputs[0]["lead_mask"].dtype == torch.bool
    np_out = fe(batch, sampling_rate=500, crop="random", seed=1, return_tensors="np")
    np.testing.assert_array_equal(np_out["input_values"], outputs[0]["input_values"].numpy())


# -------------------------------------------------------------------------------------- save and load


def _custom_extractor() -> ECGFeatureExtractor:
    return ECGFeatureExtractor(
        lead_names=["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"],
        sampling_rate=250,
        normalization="minmax",
        crop_length=1000,
        min_length=250,
        window_stride=250,
        num_windows=4,
        padding_value=-1.0,
    )


def test_save_pretrained_round_trip(tmp_path):
    from transformers import AutoFeatureExtractor

    fe = _custom_extractor()
    fe.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["auto_map"] == {"AutoFeatureExtractor": "feature_extraction_ecg.ECGFeatureExtractor"}
    assert saved["lead_names"] == fe.lead_names and saved["normalization"] == "minmax"
    assert (tmp_path / "feature_extraction_ecg.py").is_file() and (tmp_path / "ecg_records.py").is_file()

    loaded = AutoFeatureExtractor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "ECGFeatureExtractor"
    assert loaded.to_dict() == fe.to_dict()
    direct = ECGFeatureExtractor.from_pretrained(tmp_path)
    assert direct.to_dict() == fe.to_dict()

    x = [_synthetic(n_time=4000, seed=1), _synthetic(n_time=1200, seed=2)[:10]]
    names = [STANDARD_12_LEADS, STANDARD_12_LEADS[:10]]
    for crop in ("random", "windows", "none"):
        a = fe(x, sampling_rate=500, lead_names=names, crop=crop, seed=3)
        b = loaded(x, sampling_rate=500, lead_names=names, crop=crop, seed=3)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_saved_extractor_loads_without_cardiomm(tmp_path):
    fe = _custom_extractor()
    fe.save_pretrained(tmp_path / "ckpt")
    x = _synthetic(n_time=3000)
    np.save(tmp_path / "x.npy", x)
    leads = ["v6", "V5", "v4", "V3", "V2", "V1", "aVF", "aVL", "aVR", "III", "II", "I"]
    expected = fe(x, sampling_rate=500, lead_names=leads, crop="center", return_tensors="np")["input_values"]
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["cardiomm"] = None  # any import of cardiomm now fails
        import numpy as np
        from transformers import AutoFeatureExtractor
        fe = AutoFeatureExtractor.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True)
        x = np.load({str(tmp_path / "x.npy")!r})
        out = fe(x, sampling_rate=500, lead_names={leads!r}, crop="center", return_tensors="np")
        np.save({str(tmp_path / "y.npy")!r}, out["input_values"])
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


def test_batch_resampling_equals_one_record_at_a_time():
    fs = 250
    records = [_synthetic(n_time=2500, fs=fs, seed=s) for s in range(3)] + [_synthetic(n_time=2000, fs=fs, seed=3)]
    records[1] = records[1][:9]
    names = [STANDARD_12_LEADS, STANDARD_12_LEADS[:9], STANDARD_12_LEADS, STANDARD_12_LEADS]
    fe = ECGFeatureExtractor()
    batch = fe(records, sampling_rate=fs, lead_names=names, crop="none", return_tensors="np")
    for b, (record, leads) in enumerate(zip(records, names)):
        alone = fe(record, sampling_rate=fs, lead_names=leads, crop="none", return_tensors="np")
        n = alone["input_values"].shape[-1]
        np.testing.assert_array_equal(batch["input_values"][b, :, :n], alone["input_values"][0])
        np.testing.assert_array_equal(batch["lead_mask"][b], alone["lead_mask"][0])
        assert batch["time_mask"][b].sum() == n == 2 * record.shape[-1]


# ------------------------------------------------------------------------- uniform batch = records one by one


def _hostile_batch(n_records: int, n_time: int, seed: int) -> np.ndarray:
    """A (batch, 12, time) float32 batch with an absent (all-zero) lead, a lead flat over part of a record, NaN
    samples and a lead off (constant, non-zero) lead, in different records."""
    rng = np.random.default_rng(seed)
    batch = (rng.standard_normal((n_records, 12, n_time)) * rng.uniform(0.2, 2.0, (n_records, 12, 1))
             + rng.standard_normal((n_records, 12, 1))).astype(np.float32)
    batch[0, 2] = 0.0
    batch[-1, 5, : n_time // 2] = 0.7
    batch[rng.integers(n_records), 7, rng.integers(n_time, size=25)] = np.nan
    batch[n_records // 2, 3] = 1.5
    return batch


def _outputs_and_warnings(extractor: ECGFeatureExtractor, ecg, **kwargs):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out, error = extractor(ecg, return_tensors="np", **kwargs), None
        except ValueError as err:
            out, error = None, str(err)
    return out, error, [(str(w.message), w.category, w.filename, w.lineno) for w in caught]


def _assert_same_as_records(extractor: ECGFeatureExtractor, batch: np.ndarray, **kwargs) -> None:
    """The batch as one array and as a list of records give bit-identical outputs, the same warnings (pointing
    at the same caller line) and the same error."""
    uniform = _outputs_and_warnings(extractor, batch, **kwargs)
    records = _outputs_and_warnings(extractor, list(batch), **kwargs)
    assert uniform[1:] == records[1:]
    if records[0] is not None:
        assert set(uniform[0]) == set(records[0]) == {"input_values", "lead_mask", "time_mask"}
        for key, value in records[0].items():
            assert uniform[0][key].dtype == value.dtype and uniform[0][key].shape == value.shape, key
            assert uniform[0][key].tobytes() == value.tobytes(), key


@pytest.mark.parametrize("crop", ["random", "center", "windows", "none"])
@pytest.mark.parametrize(("rate", "normalization"), [(500, "zscore"), (250, "minmax"), (360, "zscore"), (1000, "none")])
def test_uniform_batch_is_bit_identical_to_records_one_by_one(crop, rate, normalization):
    extractor = ECGFeatureExtractor(sampling_rate=500, normalization=normalization, crop_length=1000,
                                    window_stride=400, num_windows=4, min_length=200, padding_value=-2.0)
    batch = _hostile_batch(3, 1700 * rate // 500, seed=rate)
    leads = ["V6", "v5", "V4", "V3", "V2", "V1", "aVF", "aVL", "avr", "III", "II", "I"]
    for lead_names in (None, leads):
        _assert_same_as_records(extractor, batch, sampling_rate=rate, lead_names=lead_names, crop=crop, seed=7)
    # records shorter than crop_length: padded, with later windows past their end
    _assert_same_as_records(extractor, batch[..., : 600 * rate // 500], sampling_rate=rate, crop=crop, seed=7)


@pytest.mark.parametrize("crop", ["random", "center", "windows"])
def test_uniform_batch_of_long_records_is_bit_identical(crop, monkeypatch):
    """Records longer than STATISTICS_CHUNK: statistics gathered piece by piece, only the windows resampled."""
    monkeypatch.setattr(feature_extraction_ecg, "STATISTICS_CHUNK", 700)
    for rate, normalization in ((250, "zscore"), (500, "minmax")):
        extractor = ECGFeatureExtractor(sampling_rate=500, normalization=normalization, crop_length=800,
                                        window_stride=450, num_windows=5, min_length=100)
        batch = _hostile_batch(3, 1500 * rate // 500, seed=1)
        _assert_same_as_records(extractor, batch, sampling_rate=rate, crop=crop, seed=3)
        _assert_same_as_records(extractor, batch.transpose(0, 2, 1).copy(), sampling_rate=rate, crop=crop,
                                seed=3, layout="time_first")


def test_uniform_batch_errors_are_those_of_the_records():
    extractor = ECGFeatureExtractor(sampling_rate=500, crop_length=1000, min_length=500)
    batch = _hostile_batch(3, 1200, seed=2)
    all_nan = batch.copy()
    all_nan[1] = np.nan
    _assert_same_as_records(extractor, all_nan, sampling_rate=500)
    flat = batch.copy()
    flat[2] = 0.25
    _assert_same_as_records(extractor, flat, sampling_rate=500)
    _assert_same_as_records(extractor, batch, sampling_rate=500, lead_names=STANDARD_12_LEADS[:11])
    _assert_same_as_records(extractor, batch, sampling_rate=5)
    _assert_same_as_records(extractor, batch[..., :400], sampling_rate=500)
    huge = batch.copy()
    huge[1, 4] = np.where(np.arange(1200) < 600, 3.3e38, -3.3e38)  # the step overshoots float32 once resampled
    unnormalized = ECGFeatureExtractor(normalization="none", crop_length=1000)
    _assert_same_as_records(unnormalized, huge, sampling_rate=250)
    for check, ecg, rate, message in (
        (extractor, all_nan, 500, "record 1 of the batch: every lead is entirely NaN/Inf"),
        (extractor, flat, 500, "record 2 of the batch: no usable lead"),
        (unnormalized, huge, 250, "record 1 of the batch: values do not fit float32"),
    ):
        assert message in _outputs_and_warnings(check, ecg, sampling_rate=rate)[1]


def test_records_are_processed_in_batches_of_one_rate_length_and_lead_set(monkeypatch):
    """A uniform batch is one batch; a list is grouped into batches of the records that share sampling rate,
    length and lead names, and each record gets the outputs it gets alone, in the input order."""
    batch = _hostile_batch(4, 2000, seed=4)
    extractor = ECGFeatureExtractor(crop_length=1000)
    batches = []
    prepare_batch = ECGFeatureExtractor._prepare_batch

    def recorded(self, raw, findings):
        batches.append((raw.signal.shape, raw.sampling_rate, raw.names))
        return prepare_batch(self, raw, findings)

    monkeypatch.setattr(ECGFeatureExtractor, "_prepare_batch", recorded)
    names = [f"record {i} of the batch" for i in range(4)]
    for ecg, rate in ((batch, 250), (torch.from_numpy(batch), [250] * 4), (list(batch), 250)):
        batches.clear()
        with pytest.warns(LeadOffWarning, match="record 2 of the batch"):
            extractor(ecg, sampling_rate=rate, crop="center", return_tensors="np")
        assert batches == [((4, 12, 2000), 250.0, names)]

    reversed_leads = list(STANDARD_12_LEADS[::-1])
    records = [batch[0], batch[1][:, :1500], batch[2], batch[3], 2 * batch[0]]
    rates = [250, 250, 500, 250, 250]
    leads = [STANDARD_12_LEADS, STANDARD_12_LEADS, STANDARD_12_LEADS, reversed_leads, STANDARD_12_LEADS]
    batches.clear()
    with pytest.warns(LeadOffWarning, match="record 2 of the batch"):
        out = extractor(records, sampling_rate=rates, lead_names=leads, crop="center", return_tensors="np")
    assert [(shape[0], rate, record_names) for shape, rate, record_names in batches] == [
        (2, 250.0, ["record 0 of the batch", "record 4 of the batch"]),
        (1, 250.0, ["record 1 of the batch"]),
        (1, 500.0, ["record 2 of the batch"]),
        (1, 250.0, ["record 3 of the batch"]),
    ]
    for b, (record, rate, record_leads) in enumerate(zip(records, rates, leads)):
        alone, error, _ = _outputs_and_warnings(extractor, record, sampling_rate=rate, lead_names=record_leads,
                                                crop="center")
        assert error is None
        for key, value in alone.items():
            assert out[key][b].tobytes() == value[0].tobytes(), (b, key)

    # a batch larger than BATCH_SAMPLES is cut into consecutive batches; the outputs stay those of one batch
    with pytest.warns(LeadOffWarning, match="record 2 of the batch"):
        whole = extractor(batch, sampling_rate=250, crop="random", seed=1, return_tensors="np")
    monkeypatch.setattr(feature_extraction_ecg, "BATCH_SAMPLES", 3 * 12 * 2000)
    batches.clear()
    with pytest.warns(LeadOffWarning, match="record 2 of the batch"):
        cut = extractor(batch, sampling_rate=250, crop="random", seed=1, return_tensors="np")
    assert [(shape, record_names) for shape, _, record_names in batches] == [
        ((3, 12, 2000), names[:3]),
        ((1, 12, 2000), names[3:]),
    ]
    for key, value in whole.items():
        assert cut[key].tobytes() == value.tobytes(), key


def test_warnings_and_errors_come_in_the_order_of_the_records():
    batch = _hostile_batch(3, 2000, seed=4)  # record 1 has a lead off
    all_nan = np.full((12, 1000), np.nan, np.float32)
    extractor = ECGFeatureExtractor(crop_length=1000)
    # records 0 and 2 form one batch, record 1 another: record 1's error comes before record 2's warning
    records = [batch[1], all_nan, batch[1]]
    _, error, caught = _outputs_and_warnings(extractor, records, sampling_rate=[250, 500, 250])
    assert error == "record 1 of the batch: every lead is entirely NaN/Inf; no usable signal"
    assert [message for message, *_ in caught] == [
        "record 0 of the batch: lead(s) ['aVR'] are flat (constant) over the whole record (lead off?); "
        "they are marked absent in lead_mask"
    ]
    _, error, caught = _outputs_and_warnings(extractor, [batch[1], batch[0], batch[1]], sampling_rate=[250, 500, 250])
    assert error is None
    assert [message.split(":")[0] for message, *_ in caught] == ["record 0 of the batch", "record 2 of the batch"]
    assert {filename for *_, filename, _ in caught} == {__file__}  # the caller's line, not the extractor's
