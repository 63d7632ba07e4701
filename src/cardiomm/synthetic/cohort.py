"""The synthetic cardiology cohort: cardiomm's built-in default data, with known answers.

A cohort is a set of patients (age, sex, risk factors) followed over 2010-2022 through encounters. Chronic
cardiac conditions start at an onset date and stay (bundle branch blocks, LVH, infarctions, axis deviation,
low voltage, first-degree AV block); atrial fibrillation and flutter come in episodes; sinus brady- and
tachycardia, PVCs and QT prolongation are transient. About one patient in ten gets a permanent pacemaker (more
often when older or with conduction disease, atrial fibrillation, infarction or a weaker heart), implanted at some
time and present from then on: the ECGs after it are ventricular paced (``pacemaker``; pacing hides the
conduction and QRS findings, :data:`~cardiomm.synthetic.ecg.HIDDEN_BY_PACING`), and echo, angiogram and chest
X-ray show the device. At each ECG encounter the patient's state sets the ECG's labels, its 12-lead waveform
(:mod:`cardiomm.synthetic.ecg`), a free-text report (:mod:`cardiomm.synthetic.reports`), labs and echo values;
every encounter leaves coded EHR events (:mod:`cardiomm.synthetic.ehr`). Imaging studies (echo, coronary
angiogram, chest X-ray; :mod:`cardiomm.synthetic.imaging`) are done at ECG encounters and at other visits, each
with its report, labels and several samples (echo clips, angiographic runs, radiographs); they are rendered on
request (``imaging=True``) or written as files with a manifest (:func:`write_imaging`, ``cardiomm data synth
--imaging``). Wave attributes are stored as modelled (``true_*``) and, optionally, as measured from the signal by
delineation (``measured_*``, neurokit2 on lead II).

Everything is deterministic in ``seed``. The same cohort can be written as WFDB records plus metadata
(:func:`write_wfdb`) or as a Hugging Face dataset in the shared cardiomm layout (:func:`build_dataset`,
:func:`save_synthetic_dataset`, :func:`synthesize`).
"""

from __future__ import annotations

import bisect
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..data.ecg_dataset import (
    METADATA_FILE,
    ECGDatasetInfo,
    ecg_features,
    label_column,
    multi_hot,
    save_ecg_dataset,
)
from ..data.splits import DEFAULT_SPLIT_FRACTIONS, patient_level_split
from .ecg import (
    HIDDEN_BY_PACING,
    RHYTHMS,
    SCP_CODES,
    STANDARD_LEAD_ORDER,
    SYNTHETIC_CONDITIONS,
    WAVE_ATTRIBUTES,
    ECGParameters,
    normalize_conditions,
    render_ecgs,
    sample_ecg_parameters,
)
from .ehr import (
    CODE_SYSTEMS,
    LAB_UNITS,
    RISK_FACTORS,
    events_before,
    generate_ehr_events,
    generate_labs,
    lab_tests_measured,
    observed_labs,
    therapy_classes,
)
from .imaging import (
    ANGIOGRAM_SHAPE,
    CHEST_XRAY_SHAPE,
    CORONARY_ARTERIES,
    ECHO_SHAPE,
    FRAME_RATE,
    LUNG_LOBES,
    OCCLUSION_THRESHOLD,
    angiogram_report,
    chest_xray_report,
    echo_report,
    render_angiogram_run,
    render_chest_xray_image,
    render_echo_clip,
)
from .reports import write_ecg_reports

if TYPE_CHECKING:
    from datasets import DatasetDict

__all__ = [
    "SyntheticCohort",
    "build_dataset",
    "generate_cohort",
    "imaging_manifest",
    "measure_wave_attributes",
    "render_imaging_sample",
    "save_synthetic_dataset",
    "synthesize",
    "synthetic_dataset_info",
    "write_imaging",
    "write_wfdb",
]

COHORT_START = pd.Timestamp("2010-01-01")
COHORT_END = pd.Timestamp("2022-12-31")
SAMPLING_RATE = 500
DURATION = 10.0
_YEAR = pd.Timedelta(days=365.25)

# chronic ECG conditions with an onset date (the EHR key of an infarction is "myocardial infarction")
_CHRONIC = (
    "atrial fibrillation",
    "atrial flutter",
    "first degree AV block",
    "left bundle branch block",
    "right bundle branch block",
    "left ventricular hypertrophy",
    "anterior myocardial infarction",
    "inferior myocardial infarction",
    "low QRS voltage",
    "left axis deviation",
    "right axis deviation",
)
_ONSET_COLUMN = {c: "onset_" + SCP_CODES[c].lower() for c in _CHRONIC}


@dataclass
class SyntheticCohort:
    """A generated cohort: tables (pandas) plus the ECG waveforms and optional imaging arrays.

    - ``patients``: one row per patient (``patient_id``, ``sex``, ``birth_date``, risk factors, the onset
      date of each chronic condition ``onset_<scp code>`` (NaT if never), prescribing choices, ECG traits,
      ``pacemaker_implant`` (NaT if never))
    - ``encounters``: ``encounter_id, patient_id, time, setting, has_ecg``
    - ``ecgs``: one row per ECG (``ecg_id, patient_id, encounter_id, acquisition_time, age, sex, rhythm,
      labels, scp_codes, mi_stage, pacemaker, report, report_labels, report_complete, true_<attribute>,
      measured_<attribute>``, the test flags ``has_echo``, ``has_angiogram``, ``has_chest_xray``, ``seed``);
      ``mi_stage`` is the patient's infarct stage even where pacing hides the infarct from the labels
    - ``waveforms``: (N ECGs, 12, T) float32 mV, leads in :data:`STANDARD_LEAD_ORDER`, rows as ``ecgs``
    - ``ehr_events``: ``patient_id, encounter_id, time, event_type, code_system, code, description``
    - ``labs``: one row per ECG, ``ecg_id`` and :data:`LAB_UNITS` columns (NaN when not measured)
    - ``imaging``: one row per study, by patient and time (``study_id, patient_id, ecg_id`` (None when not at an
      ECG encounter), ``encounter_id, modality, time, age, sex, report, n_samples`` and what it shows: echo
      ``lvef, ivs_thickness, heart_rate, irregular_rhythm, dyssynchrony, anterior_akinesis, inferior_akinesis``;
      angiogram ``stenosis_<artery>, lesion_position_<artery>, stented_<artery>`` and ``lad_occlusion,
      lcx_occlusion, rca_occlusion`` (stenosis >= :data:`~cardiomm.synthetic.imaging.OCCLUSION_THRESHOLD`); chest
      X-ray ``cardiothoracic_ratio, effusion, edema, consolidation, consolidation_lobe, cardiomegaly`` (ratio >
      0.5); all ``pacemaker``)
    - ``imaging_samples``: one row per sample (``sample_id, study_id, patient_id, modality, view, sample_index,
      seed, path``): echo 1-3 clips, angiogram 2-4 runs, chest X-ray 1-2 images
    - ``imaging_arrays`` (``imaging=True``): modality -> (studies of that modality, ...) uint8, the first
      sample of each study, in ``imaging`` row order
    - ``parameters``: the waveform model's parameters per ECG
    """

    patients: pd.DataFrame
    encounters: pd.DataFrame
    ecgs: pd.DataFrame
    waveforms: np.ndarray
    ehr_events: pd.DataFrame
    labs: pd.DataFrame
    imaging: pd.DataFrame
    parameters: ECGParameters
    imaging_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    imaging_samples: pd.DataFrame = field(default_factory=pd.DataFrame)
    sampling_rate: int = SAMPLING_RATE
    seed: int = 0

    @property
    def labels(self) -> np.ndarray:
        """(N, C) int8 multi-hot over :data:`SYNTHETIC_CONDITIONS`."""
        return multi_hot(list(self.ecgs["labels"]), list(SYNTHETIC_CONDITIONS))

    def __len__(self) -> int:
        return len(self.ecgs)


def _probability(p: np.ndarray, lo: float = 0.005, hi: float = 0.9) -> np.ndarray:
    return np.clip(p, lo, hi)


def _sample_patients(n: int, rng: np.random.Generator, ecgs_per_patient: tuple[int, int]) -> pd.DataFrame:
    """Demographics, follow-up, risk factors, chronic condition onsets, prescribing choices, ECG traits."""
    female = rng.random(n) < 0.45
    age = np.clip(rng.normal(62, 14, n), 20, 92)
    first = COHORT_START + pd.to_timedelta(rng.uniform(0, 11.5, n) * 365.25, unit="D")
    lo, hi = ecgs_per_patient
    if lo < 1 or hi < lo:
        raise ValueError(f"ecgs_per_patient must be (lo, hi) with 1 <= lo <= hi, got {ecgs_per_patient}")
    n_ecg = rng.integers(lo, hi + 1, n)
    room = (COHORT_END - first) / _YEAR
    span = np.minimum(rng.uniform(0.3, 8.0, n), room.to_numpy() - 0.01)
    last = first + pd.to_timedelta(np.where(n_ecg > 1, span, 0.0) * 365.25, unit="D")
    male = ~female
    rf = {}
    rf["hypertension"] = rng.random(n) < np.clip(0.12 + 0.013 * (age - 40), 0.05, 0.75)
    rf["diabetes"] = rng.random(n) < np.clip(0.07 + 0.004 * (age - 40), 0.03, 0.35)
    rf["hyperlipidemia"] = rng.random(n) < np.clip(0.22 + 0.006 * (age - 40), 0.1, 0.6)
    rf["smoker"] = rng.random(n) < np.where(female, 0.18, 0.26)
    rf["copd"] = rng.random(n) < np.clip(0.03 + 0.12 * rf["smoker"] + 0.002 * (age - 40), 0.01, 0.4)
    rf["ckd"] = rng.random(n) < np.clip(0.03 + 0.004 * (age - 50) + 0.08 * rf["diabetes"], 0.01, 0.4)
    rf["obesity"] = rng.random(n) < 0.28
    rf["hypothyroidism"] = rng.random(n) < 0.04 + 0.06 * female

    has: dict[str, np.ndarray] = {}
    has["left bundle branch block"] = rng.random(n) < _probability(0.05 + 0.002 * (age - 50))
    lbbb = has["left bundle branch block"]
    has["atrial fibrillation"] = rng.random(n) < _probability(0.07 + 0.005 * (age - 50) + 0.05 * rf["hypertension"])
    has["atrial flutter"] = rng.random(n) < _probability(0.08 + 0.002 * (age - 50))
    has["first degree AV block"] = rng.random(n) < _probability(0.12 + 0.002 * (age - 50))
    has["right bundle branch block"] = ~lbbb & (rng.random(n) < _probability(0.08 + 0.002 * (age - 50)))
    mi = ~lbbb & (
        rng.random(n)
        < _probability(0.06 + 0.06 * male + 0.05 * rf["diabetes"] + 0.04 * rf["smoker"] + 0.003 * (age - 50))
    )
    site = rng.random(n)
    has["anterior myocardial infarction"] = mi & ((site < 0.5) | (site > 0.93))
    has["inferior myocardial infarction"] = mi & (site >= 0.5)
    has["left ventricular hypertrophy"] = ~lbbb & (rng.random(n) < 0.06 + 0.2 * rf["hypertension"])
    lvh = has["left ventricular hypertrophy"]
    has["low QRS voltage"] = ~lbbb & ~lvh & (rng.random(n) < 0.07 + 0.06 * rf["obesity"] + 0.06 * rf["copd"])
    has["left axis deviation"] = rng.random(n) < 0.09 + 0.04 * lvh + 0.06 * lbbb
    has["right axis deviation"] = ~has["left axis deviation"] & ~lvh & (rng.random(n) < 0.09 + 0.08 * rf["copd"])

    cols: dict[str, Any] = {
        "patient_id": [f"P{i:06d}" for i in range(n)],
        "sex": np.where(female, "F", "M"),
        "birth_date": first - pd.to_timedelta(age * 365.25, unit="D"),
        "first_ecg": first,
        "last_ecg": last,
        "n_ecgs": n_ecg,
    }
    cols.update(rf)
    back = first - 6 * _YEAR
    for c in _CHRONIC:
        u = rng.random(n)
        onset = back + (last - back) * u
        cols[_ONSET_COLUMN[c]] = pd.Series(onset).where(has[c], pd.NaT).to_numpy()
    cols["af_pattern"] = np.where(rng.random(n) < 0.5, "paroxysmal", "persistent")
    cols["typical_flutter"] = rng.random(n) < 0.5
    cols["hypertension_beta_blocker"] = rng.random(n) < 0.3
    cols["hypertension_acei"] = rng.random(n) < 0.6
    cols["hypertension_ccb"] = rng.random(n) < 0.3
    cols["hypertension_thiazide"] = rng.random(n) < 0.25
    cols["diabetes_statin"] = rng.random(n) < 0.5
    cols["amiodarone"] = rng.random(n) < 0.15
    cols["rate_control"] = rng.choice(np.array(["", "digoxin", "diltiazem"]), n, p=[0.7, 0.1, 0.2])
    cols["prefers_warfarin"] = rng.random(n) < 0.25
    cols["insulin"] = rng.random(n) < 0.2
    cols["hf_mra"] = rng.random(n) < 0.5
    cols["pci"] = rng.random(n) < 0.7
    cols["cardioversion"] = rng.random(n) < 0.35
    cols["ablation"] = rng.random(n) < 0.1
    cols["lvef_offset"] = rng.normal(0, 3, n)
    # person-level ECG traits, so that one patient's ECGs resemble each other
    cols["trait_resting_rate"] = np.clip(rng.normal(74, 8, n), 62, 96)
    cols["trait_pr"] = np.clip(rng.normal(158, 16, n) + 0.3 * (age - 55), 118, 196)
    cols["trait_qrs"] = np.clip(rng.normal(90, 6, n) + 4 * male, 74, 106)
    cols["trait_qtc"] = np.clip(rng.normal(412, 13, n) + 10 * female, 375, 450)
    cols["trait_axis"] = np.clip(rng.normal(45, 22, n) - 0.3 * (age - 55), -20, 85)
    cols["trait_voltage"] = np.exp(rng.normal(0, 0.12, n) - 0.15 * rf["obesity"])
    cols["trait_rotation"] = rng.normal(0, 12, n)
    # drawn last, so that the draws above do not depend on them: a dilated cardiomyopathy that lowers the LVEF,
    # and a permanent pacemaker (more often when older or with conduction disease, atrial fibrillation,
    # infarction or a weaker heart)
    cardiomyopathy = rng.random(n) < 0.05 + 0.001 * np.maximum(age - 40, 0) + 0.08 * lbbb
    cols["lvef_offset"] = cols["lvef_offset"] - cardiomyopathy * rng.uniform(10, 32, n)
    p_pacer = (0.008 + 0.003 * np.maximum(age - 55, 0) + 0.18 * lbbb + 0.1 * has["first degree AV block"]
               + 0.07 * has["atrial fibrillation"] + 0.04 * mi + 0.06 * (cols["lvef_offset"] < -4))
    pacer = rng.random(n) < np.clip(p_pacer, 0.0, 0.6)
    earliest = first - 4 * _YEAR
    implant = earliest + (last - earliest) * rng.random(n)
    cols["pacemaker_implant"] = pd.Series(implant).where(pacer, pd.NaT).to_numpy()
    return pd.DataFrame(cols)


def _schedule(patients: pd.DataFrame, rng: np.random.Generator) -> tuple[pd.DataFrame, list[list[int]]]:
    """Encounters (ECG and other visits) per patient; returns the table and each patient's ECG encounters."""
    rows = []
    ecg_encounters: list[list[int]] = []
    for p in patients.itertuples(index=False):
        k = int(p.n_ecgs)
        frac = np.sort(rng.random(k - 1)) if k > 1 else np.zeros(0)
        times = [p.first_ecg] + [p.first_ecg + (p.last_ecg - p.first_ecg) * f for f in frac]
        times[-1] = p.last_ecg if k > 1 else times[-1]
        times = [t.normalize() + pd.Timedelta(minutes=int(rng.integers(7 * 60, 19 * 60))) for t in times]
        for j in range(1, len(times)):  # distinct days
            if times[j] <= times[j - 1] + pd.Timedelta(days=1):
                times[j] = times[j - 1] + pd.Timedelta(days=1, minutes=int(rng.integers(0, 120)))
        mine = []
        for t in times:
            mine.append(len(rows))
            rows.append((p.patient_id, t, True))
        n_extra = int(rng.poisson(2.5))
        lo = max(COHORT_START, p.first_ecg - _YEAR)
        hi = min(COHORT_END, times[-1] + _YEAR)
        for _ in range(n_extra):
            t = lo + (hi - lo) * rng.random()
            rows.append((p.patient_id, t.normalize() + pd.Timedelta(hours=int(rng.integers(8, 18))), False))
        ecg_encounters.append(mine)
    enc = pd.DataFrame(rows, columns=["patient_id", "time", "has_ecg"])
    enc["encounter_id"] = [f"V{i:07d}" for i in range(len(enc))]
    return enc, ecg_encounters


def _ecg_states(
    patients: pd.DataFrame,
    encounters: pd.DataFrame,
    ecg_encounters: list[list[int]],
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Labels and state of every ECG from its patient's conditions at that time."""
    rows = []
    for pi, p in enumerate(patients.to_dict(orient="records")):
        for ei in ecg_encounters[pi]:
            t = encounters.at[ei, "time"]
            on = {c: (pd.notna(p[_ONSET_COLUMN[c]]) and p[_ONSET_COLUMN[c]] <= t) for c in _CHRONIC}
            mi_onset = min(
                (p[_ONSET_COLUMN[c]] for c in ("anterior myocardial infarction", "inferior myocardial infarction")
                 if on[c]),
                default=None,
            )
            acute = mi_onset is not None and (t - mi_onset) <= pd.Timedelta(days=7)
            active_ehr = {c for c in _CHRONIC if on[c]} | {r for r in RISK_FACTORS if p[r]}
            if mi_onset is not None:
                active_ehr.add("myocardial infarction")
            therapy = therapy_classes(p, active_ehr, t)
            labels: set[str] = set()
            if on["atrial fibrillation"] and rng.random() < (0.55 if p["af_pattern"] == "paroxysmal" else 0.95):
                labels.add("atrial fibrillation")
            elif on["atrial flutter"] and rng.random() < 0.65:
                labels.add("atrial flutter")
            else:
                u = rng.random()
                p_sb = 0.07 + 0.1 * ("beta blocker" in therapy)
                p_st = 0.09 + 0.08 * p["copd"] + 0.2 * acute
                if u < p_sb:
                    labels.add("sinus bradycardia")
                elif u < p_sb + p_st:
                    labels.add("sinus tachycardia")
                else:
                    labels.add("sinus rhythm")
                if on["first degree AV block"]:
                    labels.add("first degree AV block")
            for c in (
                "left bundle branch block",
                "right bundle branch block",
                "left ventricular hypertrophy",
                "anterior myocardial infarction",
                "inferior myocardial infarction",
                "low QRS voltage",
                "left axis deviation",
                "right axis deviation",
            ):
                if on[c]:
                    labels.add(c)
            structural = mi_onset is not None or on["left ventricular hypertrophy"]
            if rng.random() < 0.08 + 0.08 * structural:
                labels.add("premature ventricular complexes")
            qt_risk = 0.05 + 0.2 * ("amiodarone" in therapy) + 0.03 * (p["sex"] == "F")
            long_qt = rng.random() < qt_risk
            if long_qt:
                labels.add("prolonged QT")
            potassium = rng.normal(4.2, 0.35) - 0.25 * ("thiazide" in therapy) + 0.25 * p["ckd"]
            if long_qt and rng.random() < 0.5:
                potassium = rng.normal(3.2, 0.2)
            rows.append(
                {
                    "patient_index": pi,
                    "encounter_index": ei,
                    "labels": normalize_conditions(sorted(labels)),
                    "mi_stage": "" if mi_onset is None else ("acute" if acute else "old"),
                    "acute_site": (
                        ""
                        if not acute
                        else ("anterior" if on["anterior myocardial infarction"] else "inferior")
                    ),
                    "potassium": float(np.clip(potassium, 2.5, 6.5)),
                    "on_statin": "statin" in therapy,
                    "on_diuretic": bool(therapy & {"thiazide", "loop diuretic"}),
                }
            )
    return pd.DataFrame(rows)


def _place_acute_infarctions(patients: pd.DataFrame, encounters: pd.DataFrame, ecg_encounters, rng) -> None:
    """Move infarction onsets that fall between ECGs to just before the next ECG (an acute presentation),
    and present a share of prevalent infarctions acutely at the first ECG."""
    for pi in range(len(patients)):
        times = [encounters.at[e, "time"] for e in ecg_encounters[pi]]
        for c in ("anterior myocardial infarction", "inferior myocardial infarction"):
            col = _ONSET_COLUMN[c]
            onset = patients.at[pi, col]
            if pd.isna(onset):
                continue
            later = [t for t in times if t >= onset] or times[-1:]
            if onset > times[0]:
                patients.at[pi, col] = later[0] - pd.Timedelta(hours=float(rng.uniform(3, 48)))
            elif onset <= times[0] and rng.random() < 0.2:
                patients.at[pi, col] = times[0] - pd.Timedelta(hours=float(rng.uniform(3, 48)))
        a, b = (patients.at[pi, _ONSET_COLUMN[c]] for c in
                ("anterior myocardial infarction", "inferior myocardial infarction"))
        if pd.notna(a) and pd.notna(b):  # one infarction event when both walls are involved
            patients.at[pi, _ONSET_COLUMN["inferior myocardial infarction"]] = min(a, b)
            patients.at[pi, _ONSET_COLUMN["anterior myocardial infarction"]] = min(a, b)


def _measure_chunk(signals: np.ndarray, sampling_rate: float) -> list[dict[str, float]]:
    import neurokit2 as nk
    from scipy.signal import butter, sosfiltfilt

    band = butter(2, [0.5, 40.0], btype="band", fs=sampling_rate, output="sos")
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for sig in signals:
            try:
                out.append(_measure_one(nk, band, sosfiltfilt, np.asarray(sig, np.float64), sampling_rate))
            except Exception:
                out.append(dict.fromkeys(WAVE_ATTRIBUTES, np.nan))
    return out


def _quiet_from(v: np.ndarray, start: int, stop: int, threshold: float, hold: int) -> int:
    """Walk from ``start`` toward ``stop`` until ``v`` stays below ``threshold`` for ``hold`` samples."""
    step = 1 if stop > start else -1
    below = v < threshold
    k = start
    while (stop - k) * step > 0:
        seg = below[k : k + hold] if step > 0 else below[max(k - hold + 1, 0) : k + 1]
        if len(seg) == hold and seg.all():
            return k
        k += step
    return k


def _measure_one(nk, band, sosfiltfilt, sig: np.ndarray, fs: float) -> dict[str, float]:
    res = dict.fromkeys(WAVE_ATTRIBUTES, np.nan)
    # R peaks: neurokit2 on the lead with the steepest QRS (lead II unless another is clearly steeper),
    # each moved to the nearest maximum of the spatial velocity of the eight independent leads
    x = sosfiltfilt(band, sig[[0, 1, 6, 7, 8, 9, 10, 11]], axis=-1)
    slope = np.abs(np.diff(sosfiltfilt(band, sig, axis=-1), axis=-1))
    steepness = np.percentile(slope, 99.5, axis=1)
    lead = 1 if steepness[1] >= 0.6 * steepness.max() else int(np.argmax(steepness))
    cleaned = nk.ecg_clean(sig[lead], sampling_rate=fs)
    _, info = nk.ecg_peaks(cleaned, sampling_rate=fs)
    r = np.asarray(info["ECG_R_Peaks"], dtype=np.int64)
    velocity = np.convolve(np.sqrt((np.diff(x, axis=1) ** 2).sum(0)), np.ones(5) / 5, mode="same")
    half = int(0.06 * fs)
    r = np.unique([max(k - half, 0) + int(np.argmax(velocity[max(k - half, 0) : k + half])) for k in r])
    if len(r) < 3:
        return res
    rr = np.diff(r) / fs
    res["heart_rate"] = 60.0 / rr.mean()
    res["rr_irregularity"] = float(np.sqrt(np.mean(np.diff(rr) ** 2)) / rr.mean())

    # median beat of the 8 independent leads (I, II, V1-V6), aligned on the R peaks
    pre, post = int(0.5 * fs), int(0.7 * fs)
    centres = r[(r >= pre) & (r < x.shape[1] - post)]
    if len(centres) < 2:
        return res
    med = np.median(np.stack([x[:, k - pre : k + post] for k in centres]), axis=0)
    c, hold, rr_n = pre, max(int(0.016 * fs), 2), int(np.median(np.diff(r)))

    # QRS: spatial velocity above 12 % of its peak, ended by 16 ms of quiet on either side
    v = np.sqrt((np.diff(med, axis=1) ** 2).sum(0))
    v = np.convolve(v, np.ones(5) / 5, mode="same")
    lo = c - int(0.08 * fs)
    peak = lo + int(np.argmax(v[lo : c + int(0.08 * fs)]))
    floor = np.percentile(v, 10)
    thr = floor + 0.12 * (v[peak] - floor)
    on = _quiet_from(v, peak, c - int(0.25 * fs), thr, hold)
    off = _quiet_from(v, peak, c + int(0.25 * fs), thr, hold)
    res["qrs_duration"] = (off - on) / fs * 1000.0

    # T end: spatial magnitude (PR-segment baseline) falls below 12 % of the T peak, before the next P
    base = med[:, max(on - int(0.02 * fs), 0) : max(on - int(0.004 * fs), 1)].mean(1, keepdims=True)
    mag = np.sqrt(((med - base) ** 2).sum(0))
    t_lo, t_hi = off + int(0.06 * fs), min(len(mag) - 1, off + int(0.6 * fs), c + int(0.75 * rr_n))
    if t_hi - t_lo > 5:
        t_peak = t_lo + int(np.argmax(mag[t_lo:t_hi]))
        t_end = t_peak + int(np.argmax(np.append(mag[t_peak:t_hi] < 0.12 * mag[t_peak], True)))
        res["qt_interval"] = (t_end - on) / fs * 1000.0
        res["qtc"] = res["qt_interval"] / np.sqrt(rr.mean())
    else:
        t_end = off + int(0.3 * fs)

    # P onset: lead II deflection in the 40-360 ms before the QRS (after the previous T) falls below 20 %
    p_lo = max(on - int(0.36 * fs), 0, t_end - rr_n + int(0.02 * fs))
    p_hi = on - int(0.04 * fs)
    if p_hi - p_lo > 10:
        p_dev = np.abs(med[1] - base[1])
        p_peak = p_lo + int(np.argmax(p_dev[p_lo:p_hi]))
        p_on = p_peak
        while p_on > p_lo and p_dev[p_on] > 0.2 * p_dev[p_peak]:
            p_on -= 1
        res["pr_interval"] = (on - p_on) / fs * 1000.0

    # frontal axis: baseline-corrected QRS areas in I and aVF (= II - I / 2)
    area = (med[:2, on : off + 1] - base[:2]).sum(1)
    res["qrs_axis"] = float(np.degrees(np.arctan2(area[1] - 0.5 * area[0], area[0])))
    return res


def measure_wave_attributes(
    signals: np.ndarray,
    sampling_rate: int = SAMPLING_RATE,
    num_proc: int = 1,
    progress: bool = True,
    chunk_size: int = 16,
) -> pd.DataFrame:
    """Measure :data:`WAVE_ATTRIBUTES` of 12-lead ECGs (N, 12, T) by delineation, one row per ECG.

    R peaks come from neurokit2 (``ecg_clean`` + ``ecg_peaks``) on lead II (or on the lead with the steepest
    QRS when lead II's is much flatter), each moved to the nearest maximum of the spatial velocity; heart
    rate and RR irregularity (RMSSD / mean RR) follow from them. Boundaries are delineated on the median
    beat of the eight independent leads (band-passed 0.5-40 Hz), as multi-lead measurement programs do:
    QRS onset / offset where the spatial velocity stays below 12 % of its peak, T end where the spatial
    magnitude falls below 12 % of the T peak, P onset where the lead-II P deflection falls below 20 % of its
    peak. QTc is Bazett's; the frontal axis is atan2 of the QRS areas in aVF and I. Values are NaN where
    delineation fails (PR is measured, not NaN, without P waves: it then reflects whatever atrial activity
    precedes the QRS).
    ``num_proc`` > 1 spreads chunks of ``chunk_size`` ECGs over processes.
    """
    from tqdm.auto import tqdm

    signals = np.asarray(signals)
    n = len(signals)
    chunks = [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    results: list[list[dict[str, float]]] = [[] for _ in chunks]
    bar = tqdm(total=n, desc="delineating ECGs", unit="ecg", disable=not progress)
    if num_proc <= 1 or len(chunks) <= 1:
        for k, (a, b) in enumerate(chunks):
            results[k] = _measure_chunk(signals[a:b], float(sampling_rate))
            bar.update(b - a)
    else:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=num_proc) as pool:
            futures = {
                pool.submit(_measure_chunk, signals[a:b], float(sampling_rate)): (k, b - a)
                for k, (a, b) in enumerate(chunks)
            }
            for fut in as_completed(futures):
                k, size = futures[fut]
                results[k] = fut.result()
                bar.update(size)
    bar.close()
    rows = [r for chunk in results for r in chunk]
    return pd.DataFrame(rows, columns=list(WAVE_ATTRIBUTES)).astype(float)


def _paced_labels(labels: list[str]) -> list[str]:
    """The labels of a ventricular-paced ECG of a patient whose own conduction would show ``labels``: the atrial
    rhythm (sinus bradycardia is paced up to the lower rate), PVCs and QT prolongation; pacing hides the rest."""
    kept = [c for c in labels if c not in HIDDEN_BY_PACING and c != "normal ECG"]
    if "sinus bradycardia" in labels:
        kept.append("sinus rhythm")
    return normalize_conditions(kept, paced=True)


_MI_SITES = ("anterior myocardial infarction", "inferior myocardial infarction")
_IMAGING_COLUMNS = [
    "study_id", "patient_id", "ecg_id", "encounter_id", "modality", "time", "age", "sex", "report", "n_samples",
    "lvef", "ivs_thickness", "heart_rate", "irregular_rhythm", "dyssynchrony", "anterior_akinesis",
    "inferior_akinesis", "pacemaker", "cardiothoracic_ratio", "effusion", "edema", "consolidation",
    "consolidation_lobe", "cardiomegaly",
] + [f"{k}_{a}" for k in ("stenosis", "lesion_position", "stented") for a in CORONARY_ARTERIES] + [
    "lad_occlusion", "lcx_occlusion", "rca_occlusion",
]
_SAMPLE_FOLDERS = {"echo": ("echo", ".avi"), "angiogram": ("angiogram", ".dcm"), "chest_xray": ("chest_xray", ".png")}


def _coronary_anatomy(patients: pd.DataFrame, rng: np.random.Generator) -> dict[str, dict[str, Any]]:
    """Per patient, the coronary disease that every angiogram of that patient shows: background narrowing and
    lesion position of LAD / LCx / RCA, significant lesions and chronic total occlusions with the risk factors,
    the artery of an inferior infarction (RCA, or LCx in a fifth) and whether an unstented culprit stays occluded."""
    anatomy = {}
    for p in patients.to_dict(orient="records"):
        had_mi = any(pd.notna(p[_ONSET_COLUMN[c]]) for c in _MI_SITES)
        base = np.where(rng.random(3) < 0.5, rng.uniform(0.1, 0.5, 3), rng.uniform(0.0, 0.1, 3))
        risk = 0.03 + 0.03 * (p["diabetes"] + p["smoker"] + p["hyperlipidemia"]) + 0.08 * had_mi
        base = np.where(rng.random(3) < risk, rng.uniform(0.7, 0.92, 3), base)
        base = np.where(rng.random(3) < np.array([1.0, 1.5, 1.0]) * (0.02 + 0.08 * had_mi), 1.0, base)
        anatomy[p["patient_id"]] = {
            "stenosis": base,
            "position": rng.uniform(0.12, 0.45, 3),
            "inferior_culprit": 1 if rng.random() < 0.35 else 2,
            "culprit_occluded": rng.random() < 0.5,
        }
    return anatomy


def _study_state(
    p: Mapping[str, Any], ecg: Any, lab: Mapping[str, Any], t: pd.Timestamp, at_ecg: bool, rng: np.random.Generator
) -> dict:
    """What the imaging of a patient shows at time ``t``: from the ECG done at that encounter (``at_ecg``) or from
    the patient's most recent ECG before ``t`` (LVEF and septum with a little drift), infarctions and their
    stage, LBBB and LVH from the onset dates, a pacemaker from its implant date."""
    on = {c: pd.notna(p[_ONSET_COLUMN[c]]) and p[_ONSET_COLUMN[c]] <= t for c in _CHRONIC}
    mi_onsets = [p[_ONSET_COLUMN[c]] for c in _MI_SITES if on[c]]
    implant = p["pacemaker_implant"]
    pacemaker = bool(pd.notna(implant) and implant <= t)
    lvef, ivs, hr = float(lab["lvef"]), float(lab["ivs_thickness"]), float(ecg.true_heart_rate)
    if not at_ecg:
        lvef = float(np.clip(lvef + rng.normal(0, 2), 12, 75))
        ivs = float(np.clip(ivs + rng.normal(0, 0.4), 6, 22))
        hr = float(hr * np.exp(rng.normal(0, 0.06)))
        if pacemaker and not ecg.pacemaker:
            hr = max(hr, 60.0)
    return {
        "time": t,
        "age": float((t - p["birth_date"]).days / 365.25),
        "sex": p["sex"],
        "lvef": lvef,
        "ivs_thickness": ivs,
        "heart_rate": hr,
        "irregular_rhythm": bool(ecg.rhythm == "atrial fibrillation" and not (pacemaker or ecg.pacemaker)),
        "anterior": on["anterior myocardial infarction"],
        "inferior": on["inferior myocardial infarction"],
        "acute": bool(mi_onsets) and (t - min(mi_onsets)) <= pd.Timedelta(days=7),
        "lvh": on["left ventricular hypertrophy"],
        "dyssynchrony": on["left bundle branch block"] or pacemaker,
        "pacemaker": pacemaker,
    }


def _echo_study(st: dict, rng: np.random.Generator) -> dict:
    report = echo_report(st["lvef"], st["ivs_thickness"], st["anterior"], st["inferior"], rng,
                         pacemaker=st["pacemaker"], atrial_fibrillation=st["irregular_rhythm"],
                         dyssynchrony=st["dyssynchrony"])
    return {"lvef": st["lvef"], "ivs_thickness": st["ivs_thickness"], "heart_rate": st["heart_rate"],
            "irregular_rhythm": st["irregular_rhythm"], "dyssynchrony": st["dyssynchrony"],
            "anterior_akinesis": st["anterior"], "inferior_akinesis": st["inferior"], "report": report}


def _angiogram_study(st: dict, p: Mapping[str, Any], anatomy: dict, rng: np.random.Generator) -> dict:
    stenosis = np.clip(anatomy["stenosis"] + rng.normal(0, 0.03, 3), 0, 0.98)
    stenosis = np.where(anatomy["stenosis"] >= OCCLUSION_THRESHOLD, 1.0, stenosis)
    stented = np.zeros(3, bool)
    for site, culprit in (("anterior", 0), ("inferior", anatomy["inferior_culprit"])):
        if not st[site]:
            continue
        if st["acute"]:
            stenosis[culprit] = 1.0 if rng.random() < 0.7 else rng.uniform(0.9, 0.98)
        elif p["pci"]:
            stenosis[culprit], stented[culprit] = rng.uniform(0.0, 0.3), True
        else:
            stenosis[culprit] = 1.0 if anatomy["culprit_occluded"] else rng.uniform(0.75, 0.95)
    position = anatomy["position"]
    row: dict[str, Any] = {"report": angiogram_report(stenosis, rng, position, stented, pacemaker=st["pacemaker"])}
    for j, a in enumerate(CORONARY_ARTERIES):
        row[f"stenosis_{a}"] = float(stenosis[j])
        row[f"lesion_position_{a}"] = float(position[j])
        row[f"stented_{a}"] = bool(stented[j])
        row[f"{a.lower()}_occlusion"] = bool(stenosis[j] >= OCCLUSION_THRESHOLD)
    return row


def _chest_xray_study(st: dict, p: Mapping[str, Any], previous: dict | None, rng: np.random.Generator) -> dict:
    lvef = st["lvef"]
    ctr = 0.44 + 0.0045 * max(0.0, 55 - lvef) + 0.05 * st["lvh"] + 0.001 * (st["age"] - 60) + rng.normal(0, 0.02)
    ctr = float(np.clip(ctr, 0.36, 0.72))
    p_edema = (0.6 if lvef < 35 else 0.45 if lvef < 40 else 0.12 if lvef < 50 else 0.04)
    p_edema += 0.2 * (st["acute"] and lvef < 45)
    edema = bool(rng.random() < p_edema)
    effusion = bool(rng.random() < (0.5 if edema else 0.05 + 0.15 * (lvef < 35)))
    lobe = str(rng.choice(LUNG_LOBES)) if rng.random() < 0.07 + 0.06 * p["copd"] else None
    report = chest_xray_report(ctr, effusion, rng, edema=edema, consolidation=lobe, pacemaker=st["pacemaker"],
                               previous=previous)
    return {"cardiothoracic_ratio": ctr, "effusion": effusion, "edema": edema, "consolidation": lobe is not None,
            "consolidation_lobe": lobe, "cardiomegaly": ctr > 0.5, "report": report}


def _sample_views(modality: str, st: dict, rng: np.random.Generator) -> list[str]:
    """The views of a study's samples: echo 1-3 clips (A4C first), angiogram 2-4 runs (a left and a right
    injection first), chest X-ray 1-2 images (AP first in hospital, else PA)."""
    if modality == "echo":
        n = 1 + int(rng.random() < 0.55) + int(rng.random() < 0.25)
        return ["A4C", "A2C", "A4C"][:n]
    if modality == "angiogram":
        n = 2 + int(rng.random() < 0.5) + int(rng.random() < 0.25)
        extra = list(rng.permutation(["LCA LAO cranial", "LCA RAO cranial"]))
        return (["LCA RAO caudal", "RCA LAO"] + [str(v) for v in extra])[:n]
    first = "AP" if st["acute"] or st["lvef"] < 35 else "PA"
    return [first, "PA" if first == "AP" else "AP"][: 1 + int(rng.random() < 0.35)]


def _imaging_studies(
    ecgs: pd.DataFrame,
    latent: pd.DataFrame,
    patients: pd.DataFrame,
    encounters: pd.DataFrame,
    rng: np.random.Generator,
    render: bool,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, np.ndarray]]:
    """Imaging studies (one row each), their samples (one row per video / image, with its view and rendering
    seed) and, with ``render``, the first sample of each study as arrays per modality.

    Studies are done at ECG encounters (``has_echo`` / ``has_angiogram`` / ``has_chest_xray``) and at the
    patient's other visits after the first ECG (echo more often with low LVEF or a pacemaker, chest X-ray with low
    LVEF or COPD, angiography after an infarction or with risk factors).
    """
    pat = {p["patient_id"]: p for p in patients.to_dict(orient="records")}
    lab = {r["ecg_id"]: r for r in latent.to_dict(orient="records")}
    anatomy = _coronary_anatomy(patients, rng)
    records = sorted(ecgs.itertuples(index=False), key=lambda e: (e.patient_id, e.acquisition_time))
    by_patient: dict[str, tuple[list[pd.Timestamp], list[Any]]] = {}
    for e in records:
        times, mine = by_patient.setdefault(e.patient_id, ([], []))
        times.append(e.acquisition_time)
        mine.append(e)
    plans: list[tuple[str, Any, Any, pd.Timestamp, str, str | None]] = []
    for e in ecgs.itertuples(index=False):
        for modality in ("echo", "angiogram", "chest_xray"):
            if getattr(e, f"has_{modality}"):
                plans.append((modality, e, e, e.acquisition_time, e.encounter_id, e.ecg_id))
    for v in encounters[~encounters["has_ecg"]].itertuples(index=False):
        times, mine = by_patient[v.patient_id]
        k = bisect.bisect_left(times, v.time) - 1  # the patient's most recent ECG before this visit
        if k < 0:
            continue
        e = mine[k]
        low_ef = lab[e.ecg_id]["lvef"] < 40
        p = pat[v.patient_id]
        paced = pd.notna(p["pacemaker_implant"]) and p["pacemaker_implant"] <= v.time
        had_mi = e.mi_stage != ""
        if rng.random() < 0.12 + 0.2 * low_ef + 0.15 * paced:
            plans.append(("echo", e, None, v.time, v.encounter_id, None))
        if rng.random() < 0.12 + 0.15 * low_ef + 0.1 * p["copd"]:
            plans.append(("chest_xray", e, None, v.time, v.encounter_id, None))
        if rng.random() < 0.04 + 0.15 * had_mi + 0.03 * (p["diabetes"] or p["hyperlipidemia"]):
            plans.append(("angiogram", e, None, v.time, v.encounter_id, None))
    plans.sort(key=lambda x: (x[1].patient_id, x[3], ("echo", "angiogram", "chest_xray").index(x[0])))

    rows, samples = [], []
    previous_xray: dict[str, dict] = {}
    for modality, e, at_ecg, t, encounter_id, ecg_id in plans:
        p = pat[e.patient_id]
        st = _study_state(p, e, lab[e.ecg_id], t, at_ecg is not None, rng)
        row: dict[str, Any] = {
            "study_id": f"S{len(rows):07d}", "patient_id": e.patient_id, "ecg_id": ecg_id,
            "encounter_id": encounter_id, "modality": modality, "time": t, "age": st["age"], "sex": st["sex"],
            "pacemaker": st["pacemaker"],
        }
        if modality == "echo":
            row.update(_echo_study(st, rng))
        elif modality == "angiogram":
            row.update(_angiogram_study(st, p, anatomy[e.patient_id], rng))
        else:
            row.update(_chest_xray_study(st, p, previous_xray.get(e.patient_id), rng))
            previous_xray[e.patient_id] = {"edema": row["edema"], "consolidation": row["consolidation"]}
        views = _sample_views(modality, st, rng)
        row["n_samples"] = len(views)
        folder, ext = _SAMPLE_FOLDERS[modality]
        for k, view in enumerate(views):
            sample_id = f"{row['study_id']}-{k + 1}"
            samples.append({"sample_id": sample_id, "study_id": row["study_id"], "patient_id": e.patient_id,
                            "modality": modality, "view": view, "sample_index": k,
                            "seed": int(rng.integers(0, 2**63 - 1)), "path": f"{folder}/{sample_id}{ext}"})
        rows.append(row)
    studies = pd.DataFrame(rows).reindex(columns=_IMAGING_COLUMNS)
    studies["time"] = pd.to_datetime(studies["time"])
    sample_table = pd.DataFrame(samples, columns=["sample_id", "study_id", "patient_id", "modality", "view",
                                                  "sample_index", "seed", "path"])
    arrays: dict[str, np.ndarray] = {}
    if render:
        first = sample_table[sample_table["sample_index"] == 0].set_index("study_id")
        shapes = {"echo": ECHO_SHAPE, "angiogram": ANGIOGRAM_SHAPE, "chest_xray": CHEST_XRAY_SHAPE}
        for modality, shape in shapes.items():
            part = studies[studies["modality"] == modality]
            arrays[modality] = np.zeros((len(part), *shape), np.uint8)
            for k, study in enumerate(part.to_dict(orient="records")):
                sample = first.loc[study["study_id"]]
                arrays[modality][k] = render_imaging_sample(study, sample["view"], int(sample["seed"]))
    return studies, sample_table, arrays


def render_imaging_sample(study: Mapping[str, Any], view: str, seed: int) -> np.ndarray:
    """Render one sample of an imaging study (a row of :attr:`SyntheticCohort.imaging` as a mapping) in ``view``
    from ``seed``: echo / angiogram (frames, H, W) or chest X-ray (H, W) uint8."""
    modality = study["modality"]
    pacemaker = bool(study["pacemaker"])
    if modality == "echo":
        return render_echo_clip(
            study["lvef"], study["ivs_thickness"], study["heart_rate"], seed, view=view,
            anterior_akinesis=bool(study["anterior_akinesis"]), inferior_akinesis=bool(study["inferior_akinesis"]),
            pacemaker=pacemaker, irregular=bool(study["irregular_rhythm"]), dyssynchrony=bool(study["dyssynchrony"]),
            female=study["sex"] == "F",
        )
    if modality == "angiogram":
        stenosis = [study[f"stenosis_{a}"] for a in CORONARY_ARTERIES]
        position = [study[f"lesion_position_{a}"] for a in CORONARY_ARTERIES]
        return render_angiogram_run(stenosis, seed, view=view, lesion_position=position, pacemaker=pacemaker)
    if modality == "chest_xray":
        lobe = study["consolidation_lobe"]
        return render_chest_xray_image(
            study["cardiothoracic_ratio"], seed, effusion=bool(study["effusion"]), edema=bool(study["edema"]),
            consolidation=lobe if isinstance(lobe, str) else None, pacemaker=pacemaker,
            female=study["sex"] == "F", view=view,
        )
    raise ValueError(f"unknown imaging modality {modality!r}")


def generate_cohort(
    n_patients: int = 200,
    seed: int = 0,
    ecgs_per_patient: tuple[int, int] = (1, 4),
    imaging: bool = False,
    measure: bool = False,
    num_proc: int = 1,
    incomplete_report_fraction: float = 0.1,
    progress: bool = False,
) -> SyntheticCohort:
    """Generate a synthetic cohort of ``n_patients`` patients, deterministic in ``seed``.

    ``ecgs_per_patient`` = (min, max) ECGs per patient; ``imaging`` renders the first sample of every echo /
    angiogram / chest X-ray study as arrays (the study tables exist either way); ``measure`` delineates every ECG
    (slow; ``num_proc`` processes) to fill
    the ``measured_*`` attributes (NaN otherwise); ``incomplete_report_fraction`` of multi-label ECGs get
    a report that leaves one label out.
    """
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(8)]
    rng_pat, rng_enc, rng_state, rng_ecg, rng_lab, rng_rep, rng_img, rng_ehr = streams

    patients = _sample_patients(n_patients, rng_pat, ecgs_per_patient)
    encounters, ecg_enc = _schedule(patients, rng_enc)
    _place_acute_infarctions(patients, encounters, ecg_enc, rng_enc)
    states = _ecg_states(patients, encounters, ecg_enc, rng_state)

    pi = states["patient_index"].to_numpy()
    ei = states["encounter_index"].to_numpy()
    pat = patients.iloc[pi].reset_index(drop=True)
    times = encounters["time"].to_numpy()[ei]
    ecgs = pd.DataFrame(
        {
            "ecg_id": [f"E{i:07d}" for i in range(len(states))],
            "patient_id": pat["patient_id"].to_numpy(),
            "encounter_id": encounters["encounter_id"].to_numpy()[ei],
            "acquisition_time": pd.to_datetime(times),
            "age": ((pd.to_datetime(times) - pat["birth_date"]).dt.days / 365.25).to_numpy(),
            "sex": pat["sex"].to_numpy(),
        }
    )
    for col in ("labels", "mi_stage", "acute_site", "potassium", "on_statin", "on_diuretic"):
        ecgs[col] = states[col].to_numpy()
    for r in RISK_FACTORS:
        ecgs[r] = pat[r].to_numpy()
    ecgs["lvef_offset"] = pat["lvef_offset"].to_numpy()
    # the patient's state (labs, imaging) follows the conditions; a paced ECG shows only what pacing leaves
    implant = pd.to_datetime(pat["pacemaker_implant"])
    ecgs["pacemaker"] = (implant.notna() & (implant <= ecgs["acquisition_time"])).to_numpy()
    state = ecgs.copy()
    ecgs["labels"] = [_paced_labels(labs) if paced else labs for labs, paced in zip(ecgs["labels"], ecgs["pacemaker"])]
    ecgs["rhythm"] = [next(c for c in labs if c in RHYTHMS) for labs in ecgs["labels"]]
    ecgs["scp_codes"] = [[SCP_CODES[c] for c in labs] + (["PACE"] if paced else [])
                         for labs, paced in zip(ecgs["labels"], ecgs["pacemaker"])]

    # waveforms
    traits = {k[len("trait_"):]: pat[k].to_numpy() for k in pat.columns if k.startswith("trait_")}
    mi_phase = np.where(ecgs["mi_stage"].to_numpy() == "acute", 1, 2)
    params = sample_ecg_parameters(
        list(ecgs["labels"]), rng_ecg, age=ecgs["age"].to_numpy(), sex=ecgs["sex"].to_numpy(),
        traits=traits, mi_phase=mi_phase, paced=ecgs["pacemaker"].to_numpy(),
    )
    waveforms, truth = render_ecgs(params, sampling_rate=SAMPLING_RATE, duration=DURATION, progress=progress)
    for a in WAVE_ATTRIBUTES:
        ecgs[f"true_{a}"] = truth[a].to_numpy()
    ecgs["n_pvc"] = truth["n_pvc"].to_numpy()
    ecgs["seed"] = params.seed

    # tests done at the ECG encounter, labs, imaging studies (from the patient's state)
    n = len(ecgs)
    latent = generate_labs(state, rng_lab)
    low_ef = latent["lvef"].to_numpy() < 40
    acute = ecgs["mi_stage"].to_numpy() == "acute"
    lbbb = np.array(["left bundle branch block" in labs for labs in state["labels"]])
    has_mi = ecgs["mi_stage"].to_numpy() != ""
    ecgs["has_echo"] = rng_lab.random(n) < 0.4 + 0.45 * (acute | low_ef | lbbb)
    ecgs["has_angiogram"] = rng_lab.random(n) < np.where(acute, 0.9, np.where(has_mi, 0.15, 0.03))
    ecgs["has_chest_xray"] = rng_lab.random(n) < 0.35 + 0.35 * (acute | low_ef)
    for col in ("has_echo", "has_angiogram", "has_chest_xray", "true_heart_rate"):
        state[col] = ecgs[col].to_numpy()
    state["rhythm"] = ecgs["rhythm"].to_numpy()
    measured = lab_tests_measured(state, ecgs["has_echo"].to_numpy(), rng_lab)
    labs = observed_labs(latent, measured)
    imaging_table, imaging_samples, imaging_arrays = _imaging_studies(
        state, latent, patients, encounters, rng_img, render=imaging
    )

    # heart failure: diagnosed at the first ECG with LVEF < 40 %
    hf_time = (
        pd.Series(ecgs["acquisition_time"].where(latent["lvef"].to_numpy() < 40))
        .groupby(ecgs["patient_id"]).min()
    )
    patients["onset_heart_failure"] = patients["patient_id"].map(hf_time)

    # reports
    attrs = ecgs[[f"true_{a}" for a in WAVE_ATTRIBUTES]].rename(columns=lambda c: c[len("true_"):])
    reports, mentioned = write_ecg_reports(
        list(ecgs["labels"]),
        rng_rep,
        attributes=attrs.to_dict(orient="records"),
        mi_phases=mi_phase,
        flutter_conduction=params.conduction,
        incomplete_fraction=incomplete_report_fraction,
        paced=ecgs["pacemaker"].to_numpy(),
    )
    ecgs["report"] = reports
    ecgs["report_labels"] = mentioned
    ecgs["report_complete"] = [len(m) == len(labs) for m, labs in zip(mentioned, ecgs["labels"])]

    # EHR timelines
    encounters = _encounter_states(patients, encounters, ecgs, labs)
    ehr_events = generate_ehr_events(encounters, patients.set_index("patient_id", drop=False), rng_ehr)

    measured_attrs = (
        measure_wave_attributes(waveforms, SAMPLING_RATE, num_proc=num_proc, progress=progress)
        if measure
        else pd.DataFrame(np.nan, index=range(n), columns=list(WAVE_ATTRIBUTES))
    )
    for a in WAVE_ATTRIBUTES:
        ecgs[f"measured_{a}"] = measured_attrs[a].to_numpy()

    keep = ["ecg_id", "patient_id", "encounter_id", "acquisition_time", "age", "sex", "rhythm", "labels",
            "scp_codes", "mi_stage", "pacemaker", "report", "report_labels", "report_complete"]
    keep += [f"true_{a}" for a in WAVE_ATTRIBUTES] + [f"measured_{a}" for a in WAVE_ATTRIBUTES]
    keep += ["n_pvc", "has_echo", "has_angiogram", "has_chest_xray", "seed"]
    enc_cols = ["encounter_id", "patient_id", "time", "setting", "has_ecg"]
    return SyntheticCohort(
        patients=patients,
        encounters=encounters[enc_cols].copy(),
        ecgs=ecgs[keep].copy(),
        waveforms=waveforms,
        ehr_events=ehr_events,
        labs=labs,
        imaging=imaging_table,
        parameters=params,
        imaging_arrays=imaging_arrays,
        imaging_samples=imaging_samples,
        sampling_rate=SAMPLING_RATE,
        seed=seed,
    )


def _encounter_states(
    patients: pd.DataFrame, encounters: pd.DataFrame, ecgs: pd.DataFrame, labs: pd.DataFrame
) -> pd.DataFrame:
    """Add what :func:`generate_ehr_events` needs per encounter: setting, active / new conditions, tests."""
    enc = encounters.copy()
    by_enc = ecgs.set_index("encounter_id")
    lab_by_ecg = labs.set_index("ecg_id")
    pat = patients.set_index("patient_id")
    onset_cols = {c: _ONSET_COLUMN[c] for c in _CHRONIC}
    settings, actives, news, ecg_labels, acute_sites, tests, potassium = [], [], [], [], [], [], []
    previous: dict[str, set[str]] = {}
    enc = enc.sort_values(["patient_id", "time"], kind="stable").reset_index(drop=True)
    for e in enc.itertuples(index=False):
        p = pat.loc[e.patient_id]
        t = e.time
        active = {r for r in RISK_FACTORS if p[r]}
        for c, col in onset_cols.items():
            if pd.notna(p[col]) and p[col] <= t:
                active.add(c)
        if {"anterior myocardial infarction", "inferior myocardial infarction"} & active:
            active -= {"anterior myocardial infarction", "inferior myocardial infarction"}
            active.add("myocardial infarction")
        if pd.notna(p["onset_heart_failure"]) and p["onset_heart_failure"] <= t:
            active.add("heart failure")
        new = active - previous.get(e.patient_id, set())
        previous[e.patient_id] = active
        if e.has_ecg:
            row = by_enc.loc[e.encounter_id]
            labels = list(row["labels"])
            site = row["acute_site"]
            done = {"ecg"} | {m for m, f in (("echo", row["has_echo"]), ("angiogram", row["has_angiogram"]),
                                             ("chest_xray", row["has_chest_xray"])) if f}
            lab_row = lab_by_ecg.loc[row["ecg_id"]]
            done |= {name for name in LAB_UNITS if np.isfinite(lab_row[name])}
            k = float(lab_row["potassium"])
            setting = "inpatient" if site else ("emergency" if "atrial fibrillation" in new else "outpatient")
        else:
            labels, site, done, k, setting = [], "", set(), np.nan, "outpatient"
        settings.append(setting)
        actives.append(active)
        news.append(new)
        ecg_labels.append(labels)
        acute_sites.append(site)
        tests.append(done)
        potassium.append(k)
    enc["setting"] = settings
    enc["active"] = actives
    enc["new"] = news
    enc["ecg_labels"] = ecg_labels
    enc["acute_mi"] = acute_sites
    enc["tests"] = tests
    enc["potassium"] = potassium
    return enc


def write_wfdb(cohort: SyntheticCohort, out_dir: str | os.PathLike, progress: bool = False) -> Path:
    """Write every ECG as a WFDB record (``records/<ecg_id>.hea/.dat``, 16-bit, 1 uV per unit, mV) plus
    the cohort tables as CSV (``ecgs.csv``, ``patients.csv``, ``encounters.csv``, ``ehr_events.csv``,
    ``labs.csv``, ``imaging.csv``) and ``cohort.json``. Returns ``out_dir``."""
    import wfdb
    from tqdm.auto import tqdm

    out = Path(out_dir)
    rec_dir = out / "records"
    rec_dir.mkdir(parents=True, exist_ok=True)
    gain = 1000.0
    digital = np.clip(np.rint(cohort.waveforms * gain), -32767, 32767).astype(np.int16)
    rows = cohort.ecgs
    for i in tqdm(range(len(rows)), desc="writing WFDB", unit="record", disable=not progress):
        e = rows.iloc[i]
        wfdb.wrsamp(
            record_name=str(e["ecg_id"]),
            fs=cohort.sampling_rate,
            units=["mV"] * len(STANDARD_LEAD_ORDER),
            sig_name=list(STANDARD_LEAD_ORDER),
            d_signal=np.ascontiguousarray(digital[i].T),
            fmt=["16"] * len(STANDARD_LEAD_ORDER),
            adc_gain=[gain] * len(STANDARD_LEAD_ORDER),
            baseline=[0] * len(STANDARD_LEAD_ORDER),
            comments=[
                f"Age: {e['age']:.0f}",
                f"Sex: {e['sex']}",
                f"Dx: {','.join(e['scp_codes'])}",
                f"Patient: {e['patient_id']}",
            ],
            write_dir=str(rec_dir),
        )
    (out / "RECORDS").write_text("".join(f"records/{i}\n" for i in rows["ecg_id"]))
    table = rows.copy()
    for col in ("labels", "scp_codes", "report_labels"):
        table[col] = table[col].map(lambda v: ";".join(v))
    table.to_csv(out / "ecgs.csv", index=False)
    cohort.patients.to_csv(out / "patients.csv", index=False)
    cohort.encounters.to_csv(out / "encounters.csv", index=False)
    cohort.ehr_events.to_csv(out / "ehr_events.csv", index=False)
    cohort.labs.to_csv(out / "labs.csv", index=False)
    cohort.imaging.to_csv(out / "imaging.csv", index=False)
    meta = {
        "seed": cohort.seed,
        "sampling_rate": cohort.sampling_rate,
        "lead_names": list(STANDARD_LEAD_ORDER),
        "conditions": list(SYNTHETIC_CONDITIONS),
        "scp_codes": SCP_CODES,
        "wave_attributes": WAVE_ATTRIBUTES,
        "lab_units": LAB_UNITS,
        "code_systems": CODE_SYSTEMS,
    }
    (out / "cohort.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def imaging_manifest(cohort: SyntheticCohort, splits: Mapping[str, str]) -> pd.DataFrame:
    """The imaging manifest of a cohort (the columns of :mod:`cardiomm.data.imaging_studies`), one row per sample:
    ``split`` from ``splits`` (patient_id -> split of the ECG dataset), paths relative to the imaging folder,
    labels as 0/1 floats with NaN where they do not apply (``lvef`` on echo; the occlusions, a total occlusion,
    on angiograms; consolidation, edema, cardiomegaly on chest X-rays; ``pacemaker`` on all), plus ``view``,
    ``ecg_id`` (the ECG of the same encounter, if any), ``age``, ``sex``, ``heart_rate`` (echo) and ``effusion``
    (chest X-ray)."""
    samples = cohort.imaging_samples
    st = cohort.imaging.set_index("study_id").loc[samples["study_id"]].reset_index()
    split = samples["patient_id"].map(dict(splits))
    if split.isna().any():
        raise ValueError(f"no split for patients {sorted(set(samples['patient_id'][split.isna()]))[:5]}")

    def only(modality: str, col: str) -> np.ndarray:
        return np.where(st["modality"] == modality, pd.to_numeric(st[col], errors="coerce").astype(float), np.nan)

    frame = pd.DataFrame({
        "sample_id": samples["sample_id"].to_numpy(),
        "study_id": samples["study_id"].to_numpy(),
        "patient_id": samples["patient_id"].to_numpy(),
        "split": split.to_numpy(),
        "modality": samples["modality"].to_numpy(),
        "view": samples["view"].to_numpy(),
        "time": pd.to_datetime(st["time"]).to_numpy(),
        "path": samples["path"].to_numpy(),
        "report": st["report"].to_numpy(),
        "lvef": only("echo", "lvef"),
        "pacemaker": st["pacemaker"].astype(float).to_numpy(),
        "lad_occlusion": only("angiogram", "lad_occlusion"),
        "rca_occlusion": only("angiogram", "rca_occlusion"),
        "lcx_occlusion": only("angiogram", "lcx_occlusion"),
        "consolidation": only("chest_xray", "consolidation"),
        "edema": only("chest_xray", "edema"),
        "cardiomegaly": only("chest_xray", "cardiomegaly"),
        "effusion": only("chest_xray", "effusion"),
        "heart_rate": only("echo", "heart_rate"),
        "ecg_id": st["ecg_id"].to_numpy(),
        "age": st["age"].astype(float).to_numpy(),
        "sex": st["sex"].to_numpy(),
    })
    return frame


def _write_samples(tasks: list[dict[str, Any]]) -> int:
    """Render and write imaging samples (see :func:`write_imaging`); returns how many."""
    from ..data.imaging_studies import write_angiogram_dicom, write_chest_xray_png, write_echo_video

    for task in tasks:
        study = task["study"]
        pixels = render_imaging_sample(study, task["view"], task["seed"])
        if study["modality"] == "echo":
            write_echo_video(task["file"], pixels, fps=FRAME_RATE)
        elif study["modality"] == "angiogram":
            write_angiogram_dicom(task["file"], pixels, study["patient_id"], study["study_id"], task["sample_id"],
                                  time=study["time"], fps=FRAME_RATE)
        else:
            write_chest_xray_png(task["file"], pixels)
    return len(tasks)


def _refuse_foreign_imaging(folder: Path) -> None:
    """Refuse an imaging folder that holds image files but no cardiomm manifest (they are not ours to replace)."""
    from ..data.imaging_studies import MANIFEST_FILE

    if (folder / MANIFEST_FILE).is_file():
        return
    if any(d.is_dir() and any(d.iterdir()) for d in (folder / m for m in _SAMPLE_FOLDERS)):
        raise ValueError(f"{folder}: holds imaging files of no cardiomm manifest (no {MANIFEST_FILE}); refusing to "
                         "overwrite them. Choose a new or empty output folder, or remove them yourself.")


def _remove_earlier_imaging(folder: Path) -> None:
    """Remove the files of an imaging manifest written earlier in ``folder`` (and the manifest); image files
    without a manifest are refused."""
    from ..data.imaging_studies import MANIFEST_FILE

    _refuse_foreign_imaging(folder)
    manifest = folder / MANIFEST_FILE
    if manifest.is_file():
        try:
            earlier = pd.read_parquet(manifest, columns=["path"])["path"]
        except Exception as err:
            raise ValueError(f"{manifest}: cannot read the earlier imaging manifest ({err}); remove the folder "
                             "yourself") from None
        root = folder.resolve()
        for rel in earlier:
            path = (folder / str(rel)).resolve()
            if root in path.parents and path.is_file():
                path.unlink()
        manifest.unlink()


def write_imaging(
    cohort: SyntheticCohort,
    out_dir: str | os.PathLike,
    splits: Mapping[str, str],
    progress: bool = False,
    num_proc: int = 1,
    chunk_size: int = 16,
) -> Path:
    """Render every imaging sample of a cohort and write the imaging folder ``out_dir``: ``echo/<sample>.avi``
    (lossless FFV1, PyAV), ``angiogram/<sample>.dcm`` (multi-frame DICOM), ``chest_xray/<sample>.png`` and the
    manifest ``studies.parquet`` (:func:`imaging_manifest`, written by
    :func:`~cardiomm.data.imaging_studies.write_imaging_studies`). ``splits`` maps each patient to its split in
    the ECG dataset. Files of an earlier manifest in ``out_dir`` are removed first. Every sample is rendered
    from its own seed, so the files are the same for any ``num_proc``. Returns ``out_dir``."""
    from tqdm.auto import tqdm

    from ..data.imaging_studies import write_imaging_studies

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_earlier_imaging(folder)
    manifest = imaging_manifest(cohort, splits)
    studies = {row["study_id"]: row for row in cohort.imaging.to_dict(orient="records")}
    tasks = [
        {"study": studies[s.study_id], "view": s.view, "seed": int(s.seed), "sample_id": s.sample_id,
         "file": str(folder / s.path)}
        for s in cohort.imaging_samples.itertuples(index=False)
    ]
    chunks = [tasks[k : k + chunk_size] for k in range(0, len(tasks), chunk_size)]
    with tqdm(total=len(tasks), desc="writing imaging", unit="file", disable=not progress) as bar:
        if num_proc <= 1 or len(chunks) <= 1:
            for chunk in chunks:
                bar.update(_write_samples(chunk))
        else:
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(max_workers=num_proc) as pool:
                for fut in as_completed([pool.submit(_write_samples, chunk) for chunk in chunks]):
                    bar.update(fut.result())
    write_imaging_studies(manifest, folder)
    return folder


def synthetic_dataset_info(cohort: SyntheticCohort) -> ECGDatasetInfo:
    """The :class:`ECGDatasetInfo` of a cohort's dataset (tasks ``conditions`` and ``rhythm``)."""
    return ECGDatasetInfo(
        name="cardiomm-synthetic",
        sampling_rate=cohort.sampling_rate,
        num_samples=int(cohort.waveforms.shape[-1]),
        lead_names=list(STANDARD_LEAD_ORDER),
        tasks={"conditions": list(SYNTHETIC_CONDITIONS), "rhythm": list(RHYTHMS)},
        description=(
            "Synthetic cardiology cohort generated by cardiomm: 12-lead ECGs from a dipole (VCG) model projected "
            "with the Dower transform, reports, structured-EHR timelines, labs"
            + (" and toy imaging" if cohort.imaging_arrays else "")
            + "."
        ),
        license="CC0-1.0",
        extra={
            "seed": cohort.seed,
            "n_patients": int(cohort.patients.shape[0]),
            "scp_codes": SCP_CODES,
            "wave_attributes": WAVE_ATTRIBUTES,
            "lab_units": LAB_UNITS,
            "code_systems": CODE_SYSTEMS,
        },
    )


def _dataset_features(info: ECGDatasetInfo, include_ehr: bool, include_imaging: bool):
    from datasets import Array2D, Array3D, Sequence, Value

    extra: dict[str, Any] = {
        "encounter_id": Value("string"),
        "acquisition_time": Value("timestamp[ms]"),
        "rhythm": Value("string"),
        "scp_codes": Sequence(Value("string")),
        "mi_stage": Value("string"),
        "report_labels": Sequence(Value("string")),
        "report_complete": Value("bool"),
        "pacemaker": Value("bool"),
    }
    for a in WAVE_ATTRIBUTES:
        extra[f"true_{a}"] = Value("float32")
    for a in WAVE_ATTRIBUTES:
        extra[f"measured_{a}"] = Value("float32")
    for name in LAB_UNITS:
        extra[name] = Value("float32")
    extra["has_echo"] = Value("bool")
    extra["has_angiogram"] = Value("bool")
    extra["has_chest_xray"] = Value("bool")
    if include_ehr:
        extra["ehr_events"] = [
            {
                "time": Value("timestamp[ms]"),
                "days_before_ecg": Value("int32"),
                "event_type": Value("string"),
                "code_system": Value("string"),
                "code": Value("string"),
                "description": Value("string"),
            }
        ]
    if include_imaging:
        extra["echo"] = Array3D(shape=ECHO_SHAPE, dtype="uint8")
        extra["echo_report"] = Value("string")
        extra["angiogram"] = Array3D(shape=ANGIOGRAM_SHAPE, dtype="uint8")
        extra["angiogram_report"] = Value("string")
        extra["chest_xray"] = Array2D(shape=CHEST_XRAY_SHAPE, dtype="uint8")
        extra["chest_xray_report"] = Value("string")
    return ecg_features(info, extra)


def build_dataset(
    cohort: SyntheticCohort,
    fractions: dict[str, float] | None = None,
    split_seed: int = 0,
    include_ehr: bool = True,
    include_imaging: bool | None = None,
    rows_per_chunk: int = 256,
) -> DatasetDict:
    """The cohort as a ``datasets.DatasetDict`` in the shared schema, split by patient.

    Columns: the shared ones (``ecg_id, patient_id, ecg, lead_mask, age, sex, report, labels_conditions,
    labels_rhythm``) plus ``encounter_id, acquisition_time, rhythm, scp_codes, mi_stage, report_labels,
    report_complete, pacemaker`` (the ECG is ventricular paced), ``true_<attribute>`` / ``measured_<attribute>``
    for :data:`WAVE_ATTRIBUTES`, the labs of :data:`LAB_UNITS`, ``has_echo / has_angiogram / has_chest_xray``,
    ``ehr_events`` (the patient's coded events up to the ECG: list of structs ``time, days_before_ecg,
    event_type, code_system, code, description``) and, with imaging, ``echo`` and ``angiogram``
    (:data:`ECHO_SHAPE` / :data:`ANGIOGRAM_SHAPE`) and ``chest_xray`` (:data:`CHEST_XRAY_SHAPE`) uint8 arrays (the
    first sample of the study done at that ECG's encounter, None where none) with their reports. Splits come
    from :func:`patient_level_split`.
    """
    from datasets import Dataset, DatasetDict, concatenate_datasets

    if include_imaging is None:
        include_imaging = bool(cohort.imaging_arrays)
    if include_imaging and not cohort.imaging_arrays:
        raise ValueError("the cohort has no imaging arrays; generate it with imaging=True")
    info = synthetic_dataset_info(cohort)
    features = _dataset_features(info, include_ehr, include_imaging)
    e = cohort.ecgs.reset_index(drop=True)
    labs = cohort.labs.set_index("ecg_id").loc[e["ecg_id"]].reset_index()
    y_cond = multi_hot(list(e["labels"]), list(SYNTHETIC_CONDITIONS))
    y_rhythm = multi_hot([[r] for r in e["rhythm"]], list(RHYTHMS))
    events = (
        events_before(cohort.ehr_events, list(e["patient_id"]), list(e["acquisition_time"])) if include_ehr else None
    )
    image_of: dict[str, dict[str, tuple[int, str]]] = {}
    if include_imaging:
        for modality in ("echo", "angiogram", "chest_xray"):
            studies = cohort.imaging[cohort.imaging["modality"] == modality].reset_index(drop=True)
            pairs = enumerate(zip(studies["ecg_id"], studies["report"]))
            image_of[modality] = {ecg_id: (k, report) for k, (ecg_id, report) in pairs if isinstance(ecg_id, str)}

    def rows(index: np.ndarray) -> dict[str, list]:
        cols: dict[str, list] = {
            "ecg_id": e["ecg_id"].iloc[index].tolist(),
            "patient_id": e["patient_id"].iloc[index].tolist(),
            "ecg": [cohort.waveforms[i] for i in index],
            "lead_mask": [[True] * len(STANDARD_LEAD_ORDER)] * len(index),
            "age": e["age"].iloc[index].astype(np.float32).tolist(),
            "sex": e["sex"].iloc[index].tolist(),
            "report": e["report"].iloc[index].tolist(),
            label_column("conditions"): y_cond[index].tolist(),
            label_column("rhythm"): y_rhythm[index].tolist(),
            "encounter_id": e["encounter_id"].iloc[index].tolist(),
            "acquisition_time": [t.to_pydatetime() for t in e["acquisition_time"].iloc[index]],
            "rhythm": e["rhythm"].iloc[index].tolist(),
            "scp_codes": e["scp_codes"].iloc[index].tolist(),
            "mi_stage": e["mi_stage"].iloc[index].tolist(),
            "report_labels": e["report_labels"].iloc[index].tolist(),
            "report_complete": e["report_complete"].iloc[index].tolist(),
            "pacemaker": e["pacemaker"].iloc[index].astype(bool).tolist(),
        }
        for prefix in ("true_", "measured_"):
            for a in WAVE_ATTRIBUTES:
                cols[prefix + a] = e[prefix + a].iloc[index].tolist()
        for name in LAB_UNITS:
            cols[name] = labs[name].iloc[index].tolist()
        for flag in ("has_echo", "has_angiogram", "has_chest_xray"):
            cols[flag] = e[flag].iloc[index].astype(bool).tolist()
        if events is not None:
            cols["ehr_events"] = [events[i] for i in index]
        if include_imaging:
            for modality in ("echo", "angiogram", "chest_xray"):
                arrays, reports = [], []
                for i in index:
                    hit = image_of[modality].get(e["ecg_id"].iat[i])
                    arrays.append(None if hit is None else cohort.imaging_arrays[modality][hit[0]])
                    reports.append("" if hit is None else hit[1])
                cols[modality] = arrays
                cols[f"{modality}_report"] = reports
        return cols

    splits = patient_level_split(e["patient_id"].to_numpy(), fractions or DEFAULT_SPLIT_FRACTIONS, seed=split_seed)
    out = {}
    for name, index in splits.items():
        parts = [
            Dataset.from_dict(rows(index[s : s + rows_per_chunk]), features=features)
            for s in range(0, len(index), rows_per_chunk)
        ]
        out[name] = concatenate_datasets(parts) if parts else Dataset.from_dict(rows(index), features=features)
    return DatasetDict(out)


def save_synthetic_dataset(cohort: SyntheticCohort, out_dir: str | os.PathLike, **build_kwargs: Any) -> Path:
    """Build the cohort's dataset (:func:`build_dataset` keyword arguments) and save it with
    :func:`save_ecg_dataset` (Parquet splits + ``cardiomm_dataset.json``), as :func:`synthesize` does: only the
    splits that hold patients, replacing the splits of a dataset saved there earlier. Returns ``out_dir``."""
    dataset = _non_empty_splits(build_dataset(cohort, **build_kwargs))
    _remove_earlier_splits(out_dir)
    return save_ecg_dataset(dataset, out_dir, synthetic_dataset_info(cohort))


def _remove_earlier_splits(out_dir: str | os.PathLike) -> None:
    """Remove the Parquet splits of a dataset saved earlier in ``out_dir``, so that none outlives the new one
    (a cohort with fewer patients may have fewer splits); Parquet files of no cardiomm dataset are refused."""
    data = Path(out_dir) / "data"
    earlier = sorted(data.glob("*.parquet")) if data.is_dir() else []
    if earlier and not (Path(out_dir) / METADATA_FILE).is_file():
        raise ValueError(
            f"{out_dir}: data/ holds Parquet files of no cardiomm dataset (no {METADATA_FILE}); refusing to delete "
            "them. Choose a new or empty output folder, or remove them yourself."
        )
    for path in earlier:
        path.unlink()


def _non_empty_splits(dataset: DatasetDict) -> DatasetDict:
    """The splits that hold rows: a tiny cohort may leave one without patients, and an empty Parquet split
    cannot be loaded back."""
    return type(dataset)({name: split for name, split in dataset.items() if len(split)})


def synthesize(
    n_patients: int,
    out_dir: str | os.PathLike,
    seed: int = 0,
    ecgs_per_patient: tuple[int, int] = (1, 4),
    imaging: bool = False,
    measure: bool = False,
    num_proc: int = 1,
    write_wfdb_files: bool = True,
    include_ehr: bool = True,
    progress: bool = True,
) -> Path:
    """Generate a cohort and save it as a cardiomm dataset folder (the ``cardiomm data synth`` command).

    Writes Parquet splits (those that hold patients: a tiny cohort can leave one empty) + ``cardiomm_dataset.json``
    under ``out_dir`` (:func:`save_ecg_dataset` layout); with ``imaging``, the imaging studies as files plus their
    manifest under ``out_dir/imaging`` (:func:`write_imaging`; the ECG rows then hold no image arrays, and each
    sample's ``split`` is its patient's split); with ``write_wfdb_files``, the WFDB records and CSV tables under
    ``out_dir/wfdb`` (:func:`write_wfdb`). ``measure`` delineates every ECG and ``imaging`` renders the files with
    ``num_proc`` processes. Returns ``out_dir``.
    """
    from tqdm.auto import tqdm

    from ..data.imaging_studies import IMAGING_DIR, MANIFEST_FILE

    if imaging:
        _refuse_foreign_imaging(Path(out_dir) / IMAGING_DIR)  # before anything is written
    steps = tqdm(total=3 + int(write_wfdb_files) + int(imaging), desc="synthetic cohort", unit="step",
                 disable=not progress)
    steps.set_postfix_str("generating")
    cohort = generate_cohort(
        n_patients=n_patients, seed=seed, ecgs_per_patient=ecgs_per_patient, imaging=False,
        measure=measure, num_proc=num_proc, progress=progress,
    )
    steps.update()
    steps.set_postfix_str("building dataset")
    dataset = _non_empty_splits(build_dataset(cohort, include_ehr=include_ehr, include_imaging=False))
    steps.update()
    steps.set_postfix_str("saving")
    _remove_earlier_splits(out_dir)
    info = synthetic_dataset_info(cohort)
    if imaging:
        info.description = info.description.rstrip(".") + f", with imaging studies in {IMAGING_DIR}/{MANIFEST_FILE}."
        info.extra["imaging_manifest"] = f"{IMAGING_DIR}/{MANIFEST_FILE}"
    out = save_ecg_dataset(dataset, out_dir, info)
    steps.update()
    if imaging:
        steps.set_postfix_str("writing imaging")
        splits = {str(pid): name for name, part in dataset.items() for pid in part.unique("patient_id")}
        write_imaging(cohort, out / IMAGING_DIR, splits, progress=progress, num_proc=num_proc)
        steps.update()
    elif (out / IMAGING_DIR / MANIFEST_FILE).is_file():
        _remove_earlier_imaging(out / IMAGING_DIR)  # it belonged to an earlier cohort
    if write_wfdb_files:
        steps.set_postfix_str("writing WFDB")
        write_wfdb(cohort, out / "wfdb", progress=progress)
        steps.update()
    steps.close()
    return out
