"""Hostile ECG records: every record is read correctly or rejected with a ValueError that names it.

Record reading (WFDB headers edited by hand after ``wfdb.wrsamp``) and the feature extractor's handling of
missing, flat, huge and oddly sampled signals.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cardiomm.processing import feature_extraction_ecg
from cardiomm.processing.ecg_records import STANDARD_12_LEADS, read_ecg_record, resample_signal
from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor, LeadOffWarning


def _synthetic(n_leads: int = 12, n_time: int = 5000, fs: float = 500.0, seed: int = 0) -> np.ndarray:
    """Distinct smooth lead signals (mV): lead k is a sine of its own frequency plus noise and an offset."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_time) / fs
    leads = [np.sin(2 * np.pi * (1.0 + 0.3 * k) * t) * (0.5 + 0.1 * k) + 0.05 * k for k in range(n_leads)]
    return (np.stack(leads) + 0.01 * rng.standard_normal((n_leads, n_time))).astype(np.float32)


def _write(directory: Path, name: str, signal: np.ndarray, fs: float, lead_names=None, units: str = "mV") -> Path:
    """A format-16 WFDB record of ``signal`` (leads, time) in mV, gain 1000 adu/mV."""
    import wfdb

    n = signal.shape[0]
    wfdb.wrsamp(
        name, fs=fs, units=[units] * n, sig_name=list(lead_names or STANDARD_12_LEADS[:n]),
        p_signal=signal.T.astype(np.float64), fmt=["16"] * n, adc_gain=[1000.0] * n, baseline=[0] * n,
        write_dir=str(directory),
    )
    return directory / name


def _edit_header(path: Path, new_name: str, edit: Callable[[list[str]], list[str]]) -> Path:
    """A copy of ``path``'s header named ``new_name`` (same signal files), with its lines passed through ``edit``."""
    lines = [line for line in path.with_suffix(".hea").read_text().splitlines() if line.strip()]
    tokens = lines[0].split()
    lines[0] = " ".join([new_name] + tokens[1:])
    edited = path.parent / new_name
    edited.with_suffix(".hea").write_text("\n".join(edit(lines)) + "\n")
    return edited


def _names(path: Path) -> str:
    """Regex for a message that starts with the record path."""
    return "^" + re.escape(str(path)) + ": "


# ------------------------------------------------------------------------------------- record reading


@pytest.mark.parametrize(
    "record_line, problem",
    [("bad 3 -500 1000", "the header's sampling frequency '-500' is not a positive number"),
     ("bad 3", r"the header gives no sampling frequency \(wfdb would assume 250 Hz\); pass the rate explicitly")],
    ids=["negative", "missing"],
)
def test_negative_or_missing_sampling_frequency_is_rejected(tmp_path, record_line, problem):
    path = _write(tmp_path, "rec", _synthetic(3, 1000), 500)
    bad = _edit_header(path, "bad", lambda lines: [record_line] + lines[1:])
    with pytest.raises(ValueError, match=_names(bad) + problem):
        read_ecg_record(bad)
    with pytest.raises(ValueError, match=_names(bad)):
        ECGFeatureExtractor()(str(bad))
    if record_line == "bad 3":  # the caller may state the rate the header lacks
        record = read_ecg_record(bad, sampling_rate=500)
        assert record.sampling_rate == 500
        np.testing.assert_array_equal(record.signal, read_ecg_record(path).signal)


def test_header_declaring_fewer_signals_than_the_file_holds_is_rejected(tmp_path):
    path = _write(tmp_path, "rec", _synthetic(12, 1000), 500)
    bad = _edit_header(path, "bad", lambda lines: ["bad 8 500 1000"] + lines[1:9])  # 12 leads on file, 8 declared
    with pytest.raises(ValueError, match=_names(bad) + r"signal file rec.dat holds 24000 bytes .* 8 signal\(s\)"):
        read_ecg_record(bad)


@pytest.mark.parametrize("gain", ["0", None], ids=["zero", "absent"])
def test_uncalibrated_gain_is_rejected(tmp_path, gain):
    path = _write(tmp_path, "rec", _synthetic(3, 1000), 500)

    def edit(lines: list[str]) -> list[str]:
        tokens = lines[2].split()
        lines[2] = " ".join(tokens[:2]) if gain is None else " ".join(tokens[:2] + ["0(0)/mV"] + tokens[3:])
        return lines

    bad = _edit_header(path, "bad", edit)
    with pytest.raises(ValueError, match=_names(bad) + r"signal .* is uncalibrated \(ADC gain (0|absent)"):
        read_ecg_record(bad)


def test_absurd_sampling_frequency_is_rejected(tmp_path):
    path = _write(tmp_path, "rec", _synthetic(3, 1000), 500)
    bad = _edit_header(path, "bad", lambda lines: ["bad 3 1000000000 1000"] + lines[1:])
    with pytest.raises(ValueError, match=_names(bad) + r"sampling rate 1e\+09 Hz is outside the range"):
        read_ecg_record(bad)
    with pytest.raises(ValueError, match=r"^input record: sampling rate 1e\+09 Hz is outside the range"):
        ECGFeatureExtractor()(_synthetic(), sampling_rate=1e9)


def test_absurd_length_is_rejected_before_anything_is_allocated(tmp_path):
    path = _write(tmp_path, "rec", _synthetic(3, 1000), 500)
    bad = _edit_header(path, "bad", lambda lines: ["bad 3 500 100000000"] + lines[1:])  # 6 kB file, 600 MB declared
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=_names(bad) + r"signal file rec.dat holds 6000 bytes .* 600000000 bytes"):
            read_ecg_record(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20


@pytest.mark.parametrize("unit", ["mmHg", "bpm", "NU", ""], ids=["mmHg", "bpm", "NU", "no-unit"])
def test_unit_errors_name_the_record(tmp_path, unit):
    def in_unit(lines: list[str]) -> list[str]:
        return [lines[0]] + [line.replace("/mV", "/" + unit) for line in lines[1:]]

    leads = _edit_header(_write(tmp_path, "rec", _synthetic(3, 1000), 500), "leads", in_unit)
    recorded = f"in '{unit}'" if unit else "without a unit"
    with pytest.raises(ValueError, match=_names(leads) + f"lead 'I' is recorded {recorded}, which is not a voltage"):
        read_ecg_record(leads)
    other = _write(tmp_path, "other", _synthetic(3, 1000), 500, lead_names=["ABP", "PLETH", "RESP"])
    other = _edit_header(other, "signals", in_unit)
    with pytest.raises(ValueError, match=_names(other) + "no ECG signal: no signal is in a voltage unit"):
        read_ecg_record(other)


def test_ecg_lead_in_a_non_voltage_unit_is_rejected_and_other_signals_are_left_out(tmp_path):
    path = _write(tmp_path, "rec", _synthetic(3, 1000), 500, lead_names=["I", "II", "ABP"])
    abp = _edit_header(path, "abp", lambda lines: lines[:3] + [lines[3].replace("/mV", "/mmHg")])
    record = read_ecg_record(abp)  # the blood pressure channel is not ECG: left out, the leads are read
    assert record.lead_names == ["I", "II"]
    np.testing.assert_array_equal(record.signal, read_ecg_record(path).signal[:2])

    bad = _edit_header(path, "bad", lambda lines: lines[:2] + [lines[2].replace("/mV", "/bpm")] + lines[3:])
    with pytest.raises(ValueError, match=_names(bad) + "lead 'II' is recorded in 'bpm', which is not a voltage"):
        read_ecg_record(bad)


def _write_multi_frequency(directory: Path, frames: list[int]) -> tuple[Path, list[np.ndarray]]:
    """Leads I, II, III (+ RESP) at 250 Hz frames with ``frames`` samples per frame each; returns the signals."""
    import wfdb

    n_frames, names = 1000, ["I", "II", "III", "RESP"][: len(frames)]
    signals = [_synthetic(1, n_frames * k, fs=250.0 * k, seed=i)[0].astype(np.float64) for i, k in enumerate(frames)]
    wfdb.wrsamp(
        "multi", fs=250, units=["mV"] * len(frames), sig_name=names, e_p_signal=signals, samps_per_frame=frames,
        fmt=["16"] * len(frames), adc_gain=[1000.0] * len(frames), baseline=[0] * len(frames),
        write_dir=str(directory),
    )
    return directory / "multi", signals


def test_multi_frequency_record_is_read_at_the_leads_own_rate(tmp_path):
    path, signals = _write_multi_frequency(tmp_path, [2, 2, 2, 1])  # ECG at 500 Hz, respiration at 250 Hz
    record = read_ecg_record(path)
    assert record.sampling_rate == 500 and record.lead_names == ["I", "II", "III"]
    assert record.signal.shape == (3, 2000)
    np.testing.assert_allclose(record.signal, np.stack(signals[:3]), atol=1e-3)  # 1 adu = 1 uV
    out = ECGFeatureExtractor(normalization="none")(str(path), crop="none", return_tensors="np")
    assert out["lead_mask"][0].tolist() == [True] * 3 + [False] * 9
    np.testing.assert_array_equal(out["input_values"][0, :3], record.signal)


def test_ecg_leads_at_different_rates_are_rejected(tmp_path):
    path, _ = _write_multi_frequency(tmp_path, [2, 1, 1])
    with pytest.raises(ValueError, match=_names(path) + r"the ECG leads have different sampling rates \(I at 500 Hz"):
        read_ecg_record(path)


# ---------------------------------------------------------------------------------- feature extractor


def test_lead_missing_over_the_crop_window_is_absent_there():
    signal = _synthetic(n_time=5000)
    signal[6, 1000:] = np.nan  # V1 lost after 2 s
    fe = ECGFeatureExtractor()
    center = fe(signal, sampling_rate=500, crop="center", return_tensors="np")  # samples 1250-3750
    assert center["lead_mask"][0].tolist() == [k != 6 for k in range(12)]
    assert not center["input_values"][0, 6].any()

    windows = fe(signal, sampling_rate=500, crop="windows", return_tensors="np")  # starts 0, 500, ..., 2500
    assert windows["lead_mask"].shape == (1, 6, 12)
    assert windows["lead_mask"][0, :, 6].tolist() == [True, True, False, False, False, False]
    assert windows["lead_mask"][0][:, np.arange(12) != 6].all()
    assert not windows["input_values"][0, 2:, 6].any()


def test_constant_leads_are_absent_and_a_record_without_signal_is_rejected():
    signal = _synthetic()
    signal[[0, 5]] = np.array([[0.4], [-1.2]], dtype=np.float32)
    with pytest.warns(LeadOffWarning, match=r"input record: lead\(s\) \['I', 'aVF'\] are flat"):
        out = ECGFeatureExtractor()(signal, sampling_rate=500, return_tensors="np")
    assert out["lead_mask"][0].tolist() == [k not in (0, 5) for k in range(12)]
    assert not out["input_values"][0, [0, 5]].any()

    constant = np.repeat(np.linspace(-1, 1, 12, dtype=np.float32)[:, None], 5000, axis=1)
    with pytest.warns(LeadOffWarning), pytest.raises(ValueError, match="^input record: no usable lead"):
        ECGFeatureExtractor()(constant, sampling_rate=500)


def test_all_zero_lead_is_absent_without_a_warning():
    signal = _synthetic()
    signal[11] = 0.0  # how datasets store a lead that was not recorded
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeadOffWarning)
        out = ECGFeatureExtractor()(signal, sampling_rate=500, return_tensors="np")
    assert out["lead_mask"][0].tolist() == [True] * 11 + [False]


@pytest.mark.parametrize("normalization", ["zscore", "minmax"])
@pytest.mark.parametrize("fs", [500, 250])
def test_values_near_the_float32_limit_normalise_to_finite_values(normalization, fs):
    rng = np.random.default_rng(0)
    signal = (rng.uniform(-3, 3, (12, 10 * fs)) * 1e38).astype(np.float32)
    out = ECGFeatureExtractor(normalization=normalization)(signal, sampling_rate=fs, crop="none", return_tensors="np")
    values = out["input_values"][0]
    assert np.isfinite(values).all() and out["lead_mask"].all()
    if normalization == "zscore":
        np.testing.assert_allclose(values.std(-1), 1.0, atol=0.05)
    else:
        assert -0.1 < values.min() and values.max() < 1.1


def test_values_that_overflow_float32_are_rejected():
    square = np.where(np.arange(2500) % 100 < 50, 3.3e38, -3.3e38)  # resampling overshoots its edges
    signal = np.repeat(square[None].astype(np.float32), 12, axis=0)
    with pytest.raises(ValueError, match="^input record: values do not fit float32 after normalization='none'"):
        ECGFeatureExtractor(normalization="none")(signal, sampling_rate=250)


def test_one_sample_at_one_hertz_is_rejected():
    with pytest.raises(ValueError, match=r"^input record: sampling rate 1 Hz is outside the range of ECG"):
        ECGFeatureExtractor()(_synthetic(n_time=1), sampling_rate=1)
    with pytest.raises(ValueError, match=r"^input record: 1 samples at 50 Hz give 10 samples at 500 Hz"):
        ECGFeatureExtractor()(_synthetic(n_time=1), sampling_rate=50)


def _whole_record_path(signal: np.ndarray, fs: float, fe: ECGFeatureExtractor, crop: str) -> np.ndarray:
    """Resample the whole record, normalise over it in float64, then crop: the definition of the output."""
    resampled = resample_signal(signal.astype(np.float64), fs, fe.sampling_rate)
    if fe.normalization == "zscore":
        values = (resampled - resampled.mean(-1, keepdims=True)) / np.maximum(resampled.std(-1, keepdims=True), 1e-6)
    else:
        values = (resampled - resampled.min()) / max(resampled.max() - resampled.min(), 1e-6)
    if crop == "center":
        start = (values.shape[-1] - fe.crop_length) // 2
        return values[:, start : start + fe.crop_length]
    return np.stack([values[:, s : s + fe.crop_length] for s in range(0, 6 * fe.window_stride, fe.window_stride)])


@pytest.mark.parametrize("fs", [100, 250, 360, 500, 1000])
@pytest.mark.parametrize("normalization", ["zscore", "minmax"])
def test_cropping_before_resampling_equals_resampling_the_whole_record(fs, normalization, monkeypatch):
    signal = _synthetic(n_time=12 * fs, fs=fs, seed=fs)
    fe = ECGFeatureExtractor(normalization=normalization)
    for crop in ("center", "windows"):
        expected = _whole_record_path(signal, fs, fe, crop)
        got = fe(signal, sampling_rate=fs, crop=crop, return_tensors="np")["input_values"][0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        # a record too long for one piece: statistics gathered piece by piece, only the windows resampled
        monkeypatch.setattr(feature_extraction_ecg, "STATISTICS_CHUNK", 1000, raising=False)
        pieces = fe(signal, sampling_rate=fs, crop=crop, return_tensors="np")["input_values"][0]
        monkeypatch.undo()
        np.testing.assert_allclose(pieces, expected, rtol=1e-5, atol=1e-5)


def test_long_low_rate_record_is_cropped_without_resampling_all_of_it():
    signal = _synthetic(n_time=360_000, fs=100.0)  # 1 h at 100 Hz: 21 MB; the whole record at 500 Hz: 173 MB
    fe = ECGFeatureExtractor()
    tracemalloc.start()
    try:
        out = fe(signal, sampling_rate=100, crop="center", return_tensors="np")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out["input_values"].shape == (1, 12, 2500) and np.isfinite(out["input_values"]).all()
    assert out["lead_mask"].all()
    assert peak < 64 * 2**20


def test_lead_flat_over_the_window_is_absent_with_a_warning():
    signal = _synthetic(n_time=10_000)
    signal[7, 2500:7500] = 0.3  # V2 off in the middle of the record, around the centre crop 3750-6250
    with pytest.warns(LeadOffWarning, match=r"input record: lead\(s\) flat .*\['V2'\] in samples 3750-6250"):
        out = ECGFeatureExtractor()(signal, sampling_rate=500, crop="center", return_tensors="np")
    assert out["lead_mask"][0].tolist() == [k != 7 for k in range(12)]
    assert not out["input_values"][0, 7].any()
    with warnings.catch_warnings():  # the start of the record is fine
        warnings.simplefilter("error", LeadOffWarning)
        first = ECGFeatureExtractor(crop_length=2000)(signal[:, :2400], sampling_rate=500, return_tensors="np")
    assert first["lead_mask"].all()


def test_checkpoint_extractor_rejects_and_masks_in_a_fresh_process(tmp_path):
    """The copy saved with a checkpoint, loaded without cardiomm, behaves the same."""
    ECGFeatureExtractor().save_pretrained(tmp_path / "ckpt")
    path = _write(tmp_path, "rec", _synthetic(3, 1000), 500)
    no_rate = _edit_header(path, "no_rate", lambda lines: ["no_rate 3"] + lines[1:])
    signal = _synthetic(n_time=10_000)
    signal[7, 2500:7500] = 0.3
    np.save(tmp_path / "x.npy", signal)
    script = textwrap.dedent(
        f"""
        import json, sys, warnings
        sys.modules["cardiomm"] = None  # any import of cardiomm now fails
        import numpy as np
        from transformers import AutoFeatureExtractor
        fe = AutoFeatureExtractor.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True)
        try:
            fe({str(no_rate)!r})
            error = None
        except ValueError as err:
            error = str(err)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = fe(np.load({str(tmp_path / "x.npy")!r}), sampling_rate=500, crop="center", return_tensors="np")
        print(json.dumps({{"error": error, "mask": out["lead_mask"][0].tolist(),
                          "warnings": [type(w.message).__name__ for w in caught]}}))
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["error"].startswith(f"{no_rate}: the header gives no sampling frequency")
    assert report["mask"] == [k != 7 for k in range(12)]
    assert report["warnings"] == ["LeadOffWarning"]
