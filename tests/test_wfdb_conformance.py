"""Conformance of ECG record reading on the WFDB package's own sample records (every header, recursively).

For each record, ``read_ecg_record`` either returns exactly what wfdb reads (``wfdb.rdsamp``, or
``wfdb.rdrecord(smooth_frames=False)`` for multi-frequency records) for the signals it documents as the ECG, in
mV and float32, or raises a ``ValueError`` that starts with the record path and gives one of its documented
reasons. The signals of each accepted record, relabelled to standard leads, then go through the feature
extractor, which must return their documented resampling, absent leads exactly where a lead is all NaN or flat,
or reject the record by name.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from cardiomm.processing.ecg_records import (
    FRANK_LEADS,
    STANDARD_12_LEADS,
    canonical_lead_name,
    read_ecg_record,
    resample_signal,
)
from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor, repair_non_finite

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = Path(os.environ.get("CARDIOMM_TEST_DATA", REPO_ROOT.parent / "shared" / "data")) / "wfdb_sample"
RECORDS = sorted(str(p.relative_to(SAMPLE_DIR).with_suffix("")) for p in SAMPLE_DIR.rglob("*.hea")) if (
    SAMPLE_DIR.is_dir()
) else []
ABSENT = pytest.param(None, marks=pytest.mark.skip(reason=f"WFDB sample records not found at {SAMPLE_DIR}"))

VOLTS_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nv": 1e-6}
# The problems read_ecg_record documents; every rejection must state one of them.
DOCUMENTED_REASONS = (
    "not found", "multi-segment records are not supported", "declares 0 samples", "no ECG signal",
    "not a voltage", "uncalibrated", "sampling frequency", "sampling rate", "holds", "several ECG rates",
    "storage format", "float32", "unreadable",
)
RELABELLED = STANDARD_12_LEADS + FRANK_LEADS


def _wfdb_ecg(base: Path) -> tuple[list[int], list[str], float, np.ndarray]:
    """The ECG signals as documented, read by wfdb alone: channels, names, rate and (leads, time) values in mV."""
    import wfdb

    header = wfdb.rdheader(str(base))
    voltage = [i for i, unit in enumerate(header.units) if str(unit).strip().lower() in VOLTS_TO_MV]
    fastest = max((header.samps_per_frame[i] or 1) for i in voltage)
    channels = [i for i in voltage if (header.samps_per_frame[i] or 1) == fastest]
    factors = np.array([VOLTS_TO_MV[header.units[i].strip().lower()] for i in channels])
    if fastest == 1:
        values, fields = wfdb.rdsamp(str(base), channels=channels)
        assert fields["sig_name"] == [header.sig_name[i] for i in channels]
    else:
        values = np.stack(wfdb.rdrecord(str(base), channels=channels, smooth_frames=False).e_p_signal, axis=1)
    names = [header.sig_name[i] for i in channels]
    return channels, names, float(header.fs) * fastest, (values * factors).T.astype(np.float32)


@pytest.mark.parametrize("record", RECORDS or [ABSENT])
def test_record_is_read_as_wfdb_reads_it_or_rejected_by_name(record, tmp_path):
    base = SAMPLE_DIR / record
    try:
        got = read_ecg_record(base)
    except ValueError as err:
        message = str(err)
        assert message.startswith(str(base) + ":"), message
        assert any(reason in message for reason in DOCUMENTED_REASONS), message
        return

    channels, names, rate, expected = _wfdb_ecg(base)
    assert got.sampling_rate == rate
    assert got.lead_names == [canonical_lead_name(n) for n in names]
    assert got.signal.dtype == np.float32 and got.signal.shape == expected.shape
    np.testing.assert_array_equal(got.signal, expected)  # NaN where wfdb has NaN, nowhere else
    assert len(channels) <= len(RELABELLED)

    # The same values through the feature extractor, with the signals relabelled to standard leads.
    fe = ECGFeatureExtractor(normalization="none", min_length=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fe(got.signal, sampling_rate=rate, lead_names=RELABELLED[: len(channels)], crop="none",
                     return_tensors="np")
    except ValueError as err:
        assert str(err).startswith("input record:"), str(err)
        return
    values, mask = out["input_values"][0], out["lead_mask"][0]
    assert np.isfinite(values).all()
    source = got.signal[: len(STANDARD_12_LEADS)]
    repaired, _ = repair_non_finite(source)
    present = np.zeros(12, bool)
    for k, lead in enumerate(source):  # a lead is present unless it is all NaN or flat
        finite = lead[np.isfinite(lead)].astype(np.float64)
        present[k] = finite.size > 0 and finite.max() - finite.min() > fe.epsilon
    assert mask.tolist() == present.tolist()  # absent exactly where the lead is all NaN or flat
    expected_values = resample_signal(repaired, rate, fe.sampling_rate)
    n = expected_values.shape[-1]
    assert out["time_mask"][0].sum() == n
    np.testing.assert_allclose(values[present, :n], expected_values[present[: len(source)]], rtol=1e-6, atol=1e-6)
    assert not values[~present].any()
