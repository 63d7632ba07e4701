"""A vectorised physiological model of the 12-lead ECG for the synthetic cohort.

The heart is a moving dipole. Its vectorcardiogram (VCG: X left, Y inferior, Z posterior, in mV) is a sum of
3-D Gaussian waves per beat (P, septal q, R, S, R'/notch, infarct Q, ST, T), the 3-D extension of the
ECGSYN wave model (McSharry PE, Clifford GD, Tarassenko L, Smith LA. A dynamical model for generating
synthetic electrocardiogram signals. IEEE Trans Biomed Eng 2003;50(3):289-94). The VCG is projected onto
the eight independent leads (I, II, V1-V6) with the Dower transform (Dower GE, Machado HB, Osborne JA. On
deriving the electrocardiogram from vectorcardiographic leads. Clin Cardiol 1980;3(2):87-95), whose
pseudo-inverse is the "inverse Dower" matrix of Edenbrandt & Pahlm (J Electrocardiol 1988;21:361-7); III,
aVR, aVL and aVF follow from Einthoven's and Goldberger's relations, so the 12 leads are exactly as linearly
dependent as in a recorded ECG.

Beat timing carries heart-rate variability (respiratory sinus arrhythmia, a 0.1 Hz component, white
jitter), irregularly irregular RR in atrial fibrillation (with a fibrillatory f-wave baseline), multiples of
the flutter cycle in atrial flutter (with a sawtooth atrial signal), and premature ventricular complexes
with a compensatory pause. Noise is added per electrode (RA, LA, LL, C1-C6) and then referenced like a real
recording: baseline wander, EMG and powerline interference.

Conditions shape the waveform as in real ECGs: PR > 200 ms in first-degree AV block; QRS >= 120 ms with
rsR' in V1 and wide S in I/V6 (RBBB) or broad notched R in I/aVL/V5-V6 and deep S in V1 (LBBB) with
discordant ST-T; Sokolow-Lyon voltage gain (LVH, optional strain); pathological Q waves with ST elevation
(acute) or T inversion (old) in V1-V4 (anterior MI) or II/III/aVF (inferior MI); low QRS voltage; QTc
prolongation; left / right frontal QRS axis. A ventricular pacemaker (``paced``) replaces the patient's own
ventricular activation by a wide LBBB-like QRS with a left superior axis, each preceded by a narrow
high-amplitude pacing stimulus (one sample up, a smaller recharge sample down): atrially tracked after a programmed
AV delay in sinus rhythm, at a regular programmed rate over atrial fibrillation or flutter. Pacing hides the
conduction and QRS-morphology findings (:data:`HIDDEN_BY_PACING`). All arrays are computed for a batch of records
at once; randomness is drawn per record from its own seed, so a record is identical whatever batch it is rendered
in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

SYNTHETIC_CONDITIONS: tuple[str, ...] = (
    "normal ECG",
    "sinus rhythm",
    "sinus bradycardia",
    "sinus tachycardia",
    "atrial fibrillation",
    "atrial flutter",
    "first degree AV block",
    "left bundle branch block",
    "right bundle branch block",
    "left ventricular hypertrophy",
    "anterior myocardial infarction",
    "inferior myocardial infarction",
    "low QRS voltage",
    "premature ventricular complexes",
    "prolonged QT",
    "left axis deviation",
    "right axis deviation",
)
"""Label names of the ``conditions`` task, in column order."""

RHYTHMS: tuple[str, ...] = (
    "sinus rhythm",
    "sinus bradycardia",
    "sinus tachycardia",
    "atrial fibrillation",
    "atrial flutter",
)
"""The mutually exclusive rhythm labels (exactly one per ECG)."""

HIDDEN_BY_PACING: tuple[str, ...] = (
    "sinus bradycardia",
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
"""Conditions a ventricular-paced ECG cannot show: the pacemaker keeps the rate at or above its lower rate, sets the
AV delay and replaces the QRS (its axis included), so conduction and QRS-morphology findings are not read."""

SCP_CODES: dict[str, str] = {
    "normal ECG": "NORM",
    "sinus rhythm": "SR",
    "sinus bradycardia": "SBRAD",
    "sinus tachycardia": "STACH",
    "atrial fibrillation": "AFIB",
    "atrial flutter": "AFLT",
    "first degree AV block": "1AVB",
    "left bundle branch block": "CLBBB",
    "right bundle branch block": "CRBBB",
    "left ventricular hypertrophy": "LVH",
    "anterior myocardial infarction": "AMI",
    "inferior myocardial infarction": "IMI",
    "low QRS voltage": "LVOLT",
    "premature ventricular complexes": "PVC",
    "prolonged QT": "LNGQT",
    "left axis deviation": "LAD",
    "right axis deviation": "RAD",
}
"""Condition name -> SCP-ECG statement code (the PTB-XL vocabulary; LAD/RAD as in the PhysioNet 2020 labels)."""

WAVE_ATTRIBUTES: dict[str, str] = {
    "heart_rate": "bpm",
    "pr_interval": "ms",
    "qrs_duration": "ms",
    "qt_interval": "ms",
    "qtc": "ms",
    "qrs_axis": "deg",
    "rr_irregularity": "1",
}
"""Global wave attributes (name -> unit): QTc is Bazett's QT/sqrt(RR); the frontal QRS axis is
atan2(net aVF, net I) of the QRS area; RR irregularity is RMSSD / mean RR."""

STANDARD_LEAD_ORDER: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

# Dower transform, VCG (X, Y, Z) -> leads I, II, V1..V6 (Dower et al. 1980).
DOWER_MATRIX = np.array(
    [
        [0.632, -0.235, 0.059],  # I
        [0.235, 1.066, -0.132],  # II
        [-0.515, 0.157, -0.917],  # V1
        [0.044, 0.164, -1.387],  # V2
        [0.882, 0.098, -1.277],  # V3
        [1.213, 0.127, -0.601],  # V4
        [1.125, 0.127, -0.086],  # V5
        [0.831, 0.076, 0.230],  # V6
    ]
)

# Independent leads (I, II, V1..V6) -> the standard 12 leads (Einthoven / Goldberger relations).
LEAD_DERIVATION = np.zeros((12, 8))
LEAD_DERIVATION[0, 0] = 1.0  # I
LEAD_DERIVATION[1, 1] = 1.0  # II
LEAD_DERIVATION[2, :2] = (-1.0, 1.0)  # III = II - I
LEAD_DERIVATION[3, :2] = (-0.5, -0.5)  # aVR = -(I + II) / 2
LEAD_DERIVATION[4, :2] = (1.0, -0.5)  # aVL = I - II / 2
LEAD_DERIVATION[5, :2] = (-0.5, 1.0)  # aVF = II - I / 2
LEAD_DERIVATION[6:, 2:] = np.eye(6)

# Electrodes (RA, LA, LL, C1..C6) -> independent leads: I = LA - RA, II = LL - RA, Vk = Ck - WCT.
ELECTRODE_TO_LEADS = np.zeros((8, 9))
ELECTRODE_TO_LEADS[0, :2] = (-1.0, 1.0)
ELECTRODE_TO_LEADS[1, [0, 2]] = (-1.0, 1.0)
ELECTRODE_TO_LEADS[2:, :3] = -1.0 / 3.0
ELECTRODE_TO_LEADS[2:, 3:] = np.eye(6)

_FRONTAL = np.stack([DOWER_MATRIX[0], DOWER_MATRIX[1] - 0.5 * DOWER_MATRIX[0]])  # VCG -> (I, aVF)

# wave slots of one beat
_P1, _P2, _SEPT, _R, _S, _X, _QA, _QI, _ST, _T1, _T2, _PV1, _PV2, _PVT = range(14)
NUM_WAVES = 14
_ATRIAL = np.array([_P1, _P2])
_NORMAL_QRS = np.array([_SEPT, _R, _S, _X, _QA, _QI])
_REPOLARISATION = np.array([_ST, _T1, _T2])
_PVC_WAVES = np.array([_PV1, _PV2, _PVT])
# one flutter cycle: a band-limited (6 harmonics, Lanczos-smoothed) sawtooth, slow fall and fast rise
_SAWTOOTH_PHASE = np.linspace(0.0, 1.0, 513)
_SAWTOOTH = sum(
    np.sinc(h / 7.0) / h * np.sin(2 * np.pi * h * _SAWTOOTH_PHASE) for h in range(1, 7)
) / 1.3
_SQRT_2PI = np.sqrt(2.0 * np.pi)


@dataclass
class ECGParameters:
    """Per-record parameters of the waveform model; every field is an array with one row per record.

    Intervals are in ms, rates in bpm, amplitudes in mV, angles in degrees. ``rhythm`` indexes
    :data:`RHYTHMS`; ``bundle_branch_block`` is 0 none, 1 left, 2 right; ``anterior_mi`` / ``inferior_mi``
    are 0 none, 1 acute (ST elevation), 2 old (Q waves, T inversion); ``conduction`` is the flutter AV
    conduction ratio (0 = variable 2:1/4:1). ``paced`` marks ventricular pacing; ``spike_vector`` (N, 3) is the
    dipole of the pacing stimulus (mV, zero when not paced).
    """

    rhythm: np.ndarray
    heart_rate: np.ndarray
    pr_interval: np.ndarray
    p_duration: np.ndarray
    qrs_duration: np.ndarray
    qtc: np.ndarray
    qrs_axis: np.ndarray
    bundle_branch_block: np.ndarray
    lvh_gain: np.ndarray
    lvh_strain: np.ndarray
    low_voltage_gain: np.ndarray
    voltage_gain: np.ndarray
    p_amplitude: np.ndarray
    t_amplitude: np.ndarray
    anterior_mi: np.ndarray
    inferior_mi: np.ndarray
    mi_gain: np.ndarray
    n_pvc: np.ndarray
    pvc_first: np.ndarray
    pvc_gap: np.ndarray
    pvc_coupling: np.ndarray
    pvc_duration: np.ndarray
    pvc_vector: np.ndarray
    transverse_rotation: np.ndarray
    atrial_rate: np.ndarray
    conduction: np.ndarray
    af_rr_spread: np.ndarray
    f_wave_amplitude: np.ndarray
    f_wave_frequency: np.ndarray
    flutter_amplitude: np.ndarray
    rsa_amplitude: np.ndarray
    lf_amplitude: np.ndarray
    rr_jitter: np.ndarray
    respiration_rate: np.ndarray
    baseline_wander: np.ndarray
    emg_noise: np.ndarray
    powerline_noise: np.ndarray
    line_frequency: np.ndarray
    paced: np.ndarray
    spike_vector: np.ndarray
    seed: np.ndarray

    def __len__(self) -> int:
        return len(self.rhythm)

    def subset(self, index: np.ndarray | slice) -> ECGParameters:
        """The parameters of the records at ``index``."""
        return ECGParameters(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concatenate(parts: Sequence[ECGParameters]) -> ECGParameters:
        """Stack parameter sets record-wise."""
        return ECGParameters(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(ECGParameters)}
        )

    def to_frame(self) -> pd.DataFrame:
        """One row per record (the PVC and pacing-stimulus vectors split into three columns each)."""
        vectors = ("pvc_vector", "spike_vector")
        cols = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in vectors}
        for name in vectors:
            for d, axis in enumerate("xyz"):
                cols[f"{name}_{axis}"] = getattr(self, name)[:, d]
        return pd.DataFrame(cols)


def normalize_conditions(labels: Sequence[str], paced: bool = False) -> list[str]:
    """Validate one record's condition names and complete them into a consistent set.

    Adds "sinus rhythm" when no rhythm is given, adds "normal ECG" when the record is sinus rhythm with
    nothing else (and rejects "normal ECG" with anything but sinus rhythm); rejects unknown names, two
    rhythms, both bundle branch blocks, both axis deviations, first-degree AV block without a sinus rhythm,
    and LVH together with LBBB, low QRS voltage or right axis deviation. A ventricular-paced record
    (``paced``) is never a normal ECG and cannot carry the findings of :data:`HIDDEN_BY_PACING`. Returns names
    in :data:`SYNTHETIC_CONDITIONS` order.
    """
    got = set(labels)
    if paced:
        hidden = sorted(got & ({"normal ECG"} | set(HIDDEN_BY_PACING)))
        if hidden:
            raise ValueError(f"a ventricular-paced ECG cannot show {hidden}")
    unknown = got - set(SYNTHETIC_CONDITIONS)
    if unknown:
        raise ValueError(f"unknown conditions {sorted(unknown)}; known: {list(SYNTHETIC_CONDITIONS)}")
    rhythms = got & set(RHYTHMS)
    if len(rhythms) > 1:
        raise ValueError(f"at most one rhythm per ECG, got {sorted(rhythms)}")
    if not rhythms:
        got.add("sinus rhythm")
    pairs = [
        ("left bundle branch block", "right bundle branch block"),
        ("left axis deviation", "right axis deviation"),
        ("left ventricular hypertrophy", "left bundle branch block"),
        ("left ventricular hypertrophy", "low QRS voltage"),
        ("left ventricular hypertrophy", "right axis deviation"),
    ]
    for a, b in pairs:
        if a in got and b in got:
            raise ValueError(f"{a!r} and {b!r} are mutually exclusive")
    if "first degree AV block" in got and got & {"atrial fibrillation", "atrial flutter"}:
        raise ValueError("first degree AV block needs a sinus rhythm")
    others = got - {"normal ECG", "sinus rhythm"}
    if "normal ECG" in got and others:
        raise ValueError(f"'normal ECG' excludes {sorted(others)}")
    if got == {"sinus rhythm"} and not paced:
        got.add("normal ECG")
    return [c for c in SYNTHETIC_CONDITIONS if c in got]


def _as_multi_hot(conditions: np.ndarray | Sequence[Sequence[str]], paced: np.ndarray | None = None) -> np.ndarray:
    if isinstance(conditions, np.ndarray) and conditions.ndim == 2:
        if conditions.shape[1] != len(SYNTHETIC_CONDITIONS):
            raise ValueError(f"condition matrix needs {len(SYNTHETIC_CONDITIONS)} columns, got {conditions.shape}")
        lists = [[SYNTHETIC_CONDITIONS[j] for j in np.flatnonzero(row)] for row in conditions]
    else:
        lists = [list(c) for c in conditions]
    out = np.zeros((len(lists), len(SYNTHETIC_CONDITIONS)), dtype=np.int8)
    index = {c: i for i, c in enumerate(SYNTHETIC_CONDITIONS)}
    if paced is not None and len(paced) != len(lists):
        raise ValueError(f"paced has {len(paced)} entries for {len(lists)} records")
    for r, labs in enumerate(lists):
        for c in normalize_conditions(labs, paced=paced is not None and bool(paced[r])):
            out[r, index[c]] = 1
    return out


def sample_ecg_parameters(
    conditions: np.ndarray | Sequence[Sequence[str]],
    rng: np.random.Generator,
    age: np.ndarray | None = None,
    sex: np.ndarray | None = None,
    traits: dict[str, np.ndarray] | None = None,
    mi_phase: np.ndarray | None = None,
    paced: np.ndarray | None = None,
) -> ECGParameters:
    """Draw waveform parameters that realise each record's conditions.

    ``conditions``: an (N, C) multi-hot matrix over :data:`SYNTHETIC_CONDITIONS` or N lists of names
    (completed by :func:`normalize_conditions`). ``age`` / ``sex`` ("M"/"F") modulate voltage and intervals.
    ``traits`` holds per-record person-level baselines (``resting_rate``, ``pr``, ``qrs``, ``qtc``,
    ``axis``, ``voltage``, ``rotation``) so that repeated ECGs of one patient look alike; missing traits
    are drawn here. ``mi_phase`` (N,) is 1 for an acute and 2 for an old infarct (default: 30 % acute).
    ``paced`` (N,) bool marks ventricular-paced records (lower rate 60-70 bpm, AV delay 100-170 ms after a
    sinus P wave, paced QRS 150-190 ms with an axis of -85 to -40 degrees); the other records' parameters do not
    depend on it.
    """
    y = _as_multi_hot(conditions, paced).astype(bool)
    n = len(y)
    col = {c: y[:, i] for i, c in enumerate(SYNTHETIC_CONDITIONS)}
    age = np.full(n, 55.0) if age is None else np.asarray(age, dtype=float)
    female = np.zeros(n, bool) if sex is None else (np.asarray(sex).astype(str) == "F")
    traits = dict(traits or {})

    def trait(name: str, draw) -> np.ndarray:
        return np.asarray(traits[name], dtype=float) if name in traits else draw()

    resting = trait("resting_rate", lambda: np.clip(rng.normal(74, 8, n), 62, 96))
    pr_base = trait("pr", lambda: np.clip(rng.normal(158, 16, n) + 0.3 * (age - 55), 118, 196))
    qrs_base = trait("qrs", lambda: np.clip(rng.normal(90, 6, n) + 4 * ~female, 74, 106))
    qtc_base = trait("qtc", lambda: np.clip(rng.normal(412, 13, n) + 10 * female, 375, 450))
    axis_base = trait("axis", lambda: np.clip(rng.normal(45, 22, n), -20, 85))
    voltage = trait("voltage", lambda: np.exp(rng.normal(0, 0.12, n)))
    rotation = trait("rotation", lambda: rng.normal(0, 12, n))

    rhythm = np.zeros(n, dtype=np.int8)
    for k, name in enumerate(RHYTHMS):
        rhythm[col[name]] = k
    sinus = rhythm <= 2
    hr = np.clip(resting + rng.normal(0, 3, n), 62, 97)
    hr = np.where(col["sinus bradycardia"], rng.uniform(38, 56, n), hr)
    hr = np.where(col["sinus tachycardia"], rng.uniform(104, 150, n), hr)
    hr = np.where(col["atrial fibrillation"], np.clip(rng.normal(96, 20, n), 58, 150), hr)
    atrial_rate = np.where(col["atrial flutter"], rng.uniform(250, 330, n), np.nan)
    conduction = rng.choice(np.array([2, 4, 3, 0], dtype=np.int8), size=n, p=[0.55, 0.25, 0.05, 0.15])
    conduction = np.where(col["atrial flutter"], conduction, 0).astype(np.int8)
    mean_k = np.where(conduction == 0, 3.0, conduction)
    hr = np.where(col["atrial flutter"], atrial_rate / mean_k, hr)

    pr = np.clip(pr_base + rng.normal(0, 5, n) - 0.25 * (hr - 75), 115, 198)
    pr = np.where(col["first degree AV block"], rng.uniform(215, 330, n), pr)
    pr = np.where(sinus, pr, np.nan)

    bbb = np.zeros(n, dtype=np.int8)
    bbb[col["left bundle branch block"]] = 1
    bbb[col["right bundle branch block"]] = 2
    lvh = col["left ventricular hypertrophy"]
    qrs = np.clip(qrs_base + rng.normal(0, 3, n) + 8 * lvh, 72, 112)
    qrs = np.where(bbb == 1, rng.uniform(130, 170, n), qrs)
    qrs = np.where(bbb == 2, rng.uniform(124, 160, n), qrs)

    qtc = np.clip(qtc_base + rng.normal(0, 6, n) + 0.4 * (qrs - 92), 370, 456)
    qtc = np.where(col["prolonged QT"], rng.uniform(478, 560, n), qtc)

    axis = np.clip(axis_base + rng.normal(0, 4, n), -22, 88)
    leftward = col["left bundle branch block"] | col["left ventricular hypertrophy"]
    axis = np.where(leftward, np.clip(0.5 * axis + rng.normal(-5, 10, n), -25, 50), axis)
    lad = np.where(lvh, rng.uniform(-50, -35, n), rng.uniform(-65, -35, n))  # LVH keeps its leftward forces
    axis = np.where(col["left axis deviation"], lad, axis)
    axis = np.where(col["right axis deviation"], rng.uniform(102, 150, n), axis)

    if mi_phase is None:
        mi_phase = np.where(rng.random(n) < 0.3, 1, 2)
    mi_phase = np.asarray(mi_phase, dtype=np.int8)
    anterior = np.where(col["anterior myocardial infarction"], mi_phase, 0).astype(np.int8)
    inferior = np.where(col["inferior myocardial infarction"], mi_phase, 0).astype(np.int8)

    age_gain = np.clip(1.0 - 0.004 * (age - 55), 0.8, 1.15)
    voltage_gain = voltage * age_gain * np.where(female, 0.9, 1.0)

    n_pvc = np.where(col["premature ventricular complexes"], rng.integers(1, 5, n), 0).astype(np.int16)
    pvc_gap = rng.integers(2, 6, n).astype(np.int16)
    origin_rv = rng.random(n) < 0.5
    proto = np.where(origin_rv[:, None], np.array([0.45, 0.85, 0.55]), np.array([-0.35, 0.45, -0.85]))
    direction = proto + rng.normal(0, 0.25, (n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    pvc_vector = direction * rng.uniform(1.3, 2.2, n)[:, None]

    line60 = rng.random(n) < 0.6
    params = ECGParameters(
        rhythm=rhythm,
        heart_rate=hr,
        pr_interval=pr,
        p_duration=np.clip(rng.normal(100, 9, n), 80, 120),
        qrs_duration=qrs,
        qtc=qtc,
        qrs_axis=axis,
        bundle_branch_block=bbb,
        lvh_gain=np.where(lvh, rng.uniform(1.7, 2.3, n), 1.0),
        lvh_strain=lvh & (rng.random(n) < 0.4),
        low_voltage_gain=np.where(col["low QRS voltage"], rng.uniform(0.22, 0.33, n), 1.0),
        voltage_gain=voltage_gain,
        p_amplitude=np.exp(rng.normal(0, 0.15, n)),
        t_amplitude=np.exp(rng.normal(0, 0.15, n)),
        anterior_mi=anterior,
        inferior_mi=inferior,
        mi_gain=rng.uniform(0.75, 1.15, n),
        n_pvc=n_pvc,
        pvc_first=rng.integers(2, 6, n).astype(np.int16),
        pvc_gap=pvc_gap,
        pvc_coupling=rng.uniform(0.5, 0.7, n),
        pvc_duration=rng.uniform(140, 180, n),
        pvc_vector=pvc_vector,
        transverse_rotation=rotation + rng.normal(0, 3, n),
        atrial_rate=atrial_rate,
        conduction=conduction,
        af_rr_spread=np.where(col["atrial fibrillation"], rng.uniform(0.15, 0.3, n), 0.0),
        f_wave_amplitude=np.where(col["atrial fibrillation"], rng.uniform(0.03, 0.1, n), 0.0),
        f_wave_frequency=rng.uniform(5.0, 8.0, n),
        flutter_amplitude=np.where(col["atrial flutter"], rng.uniform(0.07, 0.15, n), 0.0),
        rsa_amplitude=rng.uniform(0.01, 0.05, n) * np.where(hr > 100, 0.3, 1.0),
        lf_amplitude=rng.uniform(0.0, 0.03, n),
        rr_jitter=rng.uniform(0.004, 0.012, n),
        respiration_rate=rng.uniform(0.15, 0.35, n),
        baseline_wander=rng.uniform(0.005, 0.04, n),
        emg_noise=rng.uniform(0.002, 0.012, n),
        powerline_noise=rng.uniform(0.0, 0.015, n),
        line_frequency=np.where(line60, 60.0, 50.0),
        paced=np.zeros(n, dtype=bool),
        spike_vector=np.zeros((n, 3)),
        seed=rng.integers(0, 2**62, n, dtype=np.int64),
    )
    # pacing is drawn after everything else, so that the other records keep their parameters
    paced = np.zeros(n, bool) if paced is None else np.asarray(paced, dtype=bool)
    lower_rate = rng.choice(np.array([60.0, 65.0, 70.0]), size=n, p=[0.6, 0.15, 0.25])
    av_delay = rng.uniform(100, 170, n)
    paced_qrs = rng.uniform(150, 190, n)
    paced_axis = rng.uniform(-85, -40, n)
    spike = np.array([-0.35, -0.6, 0.55]) + rng.normal(0, 0.2, (n, 3))
    spike *= (rng.uniform(2.0, 4.0, n) / np.linalg.norm(spike, axis=1))[:, None]
    if paced.any():
        _apply_pacing(params, paced, lower_rate, av_delay, paced_qrs, paced_axis, spike)
    return params


def _apply_pacing(
    p: ECGParameters,
    paced: np.ndarray,
    lower_rate: np.ndarray,
    av_delay: np.ndarray,
    paced_qrs: np.ndarray,
    paced_axis: np.ndarray,
    spike: np.ndarray,
) -> None:
    """Turn the ``paced`` records of ``p`` into ventricular pacing (in place)."""
    i = np.flatnonzero(paced)
    sinus = p.rhythm[i] <= 2
    p.paced[i] = True
    p.spike_vector[i] = spike[i]
    # atrial tracking in sinus rhythm (upper tracking rate 130 bpm), the lower rate over AF / flutter
    p.heart_rate[i] = np.where(sinus, np.clip(p.heart_rate[i], lower_rate[i], 130.0), lower_rate[i])
    p.pr_interval[i] = np.where(sinus, av_delay[i], np.nan)
    old_qrs = p.qrs_duration[i].copy()
    p.qrs_duration[i] = paced_qrs[i]
    p.qtc[i] = np.where(p.qtc[i] > 470, p.qtc[i], np.clip(p.qtc[i] + 0.4 * (paced_qrs[i] - old_qrs), 370, 470))
    p.qrs_axis[i] = paced_axis[i]
    p.bundle_branch_block[i] = 1  # right-ventricular apical pacing activates the ventricles like an LBBB
    p.af_rr_spread[i] = 0.0


def _rotate_z(v: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate (N, ..., 3) vectors in the frontal (X-Y) plane by ``angle`` (N,) radians (+X toward +Y)."""
    c = np.cos(angle).reshape((-1,) + (1,) * (v.ndim - 2))
    s = np.sin(angle).reshape((-1,) + (1,) * (v.ndim - 2))
    out = v.copy()
    out[..., 0] = c * v[..., 0] - s * v[..., 1]
    out[..., 1] = s * v[..., 0] + c * v[..., 1]
    return out


def _rotate_y(v: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate (N, ..., 3) vectors in the transverse (X-Z) plane by ``angle`` (N,) radians."""
    c = np.cos(angle).reshape((-1,) + (1,) * (v.ndim - 2))
    s = np.sin(angle).reshape((-1,) + (1,) * (v.ndim - 2))
    out = v.copy()
    out[..., 0] = c * v[..., 0] + s * v[..., 2]
    out[..., 2] = -s * v[..., 0] + c * v[..., 2]
    return out


def _frontal_axis(net: np.ndarray) -> np.ndarray:
    """Frontal QRS axis (deg) of net QRS vectors (N, 3): atan2(aVF, I) of their lead projections."""
    ia = net @ _FRONTAL.T
    return np.degrees(np.arctan2(ia[:, 1], ia[:, 0]))


def _wrap_degrees(a: np.ndarray) -> np.ndarray:
    return (a + 180.0) % 360.0 - 180.0


def _solve_frontal_rotation(n_rot: np.ndarray, n_fix: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Frontal-plane rotation (rad) of ``n_rot`` so that the axis of ``rot(n_rot) + n_fix`` is ``target``.

    A grid over the full turn finds the closest angle, then damped Newton steps refine it.
    """
    grid = np.linspace(-np.pi, np.pi, 361)
    rotated = np.repeat(n_rot[:, None], len(grid), 1)
    c, s = np.cos(grid)[None, :], np.sin(grid)[None, :]
    rotated[..., 0] = c * n_rot[:, None, 0] - s * n_rot[:, None, 1]
    rotated[..., 1] = s * n_rot[:, None, 0] + c * n_rot[:, None, 1]
    ia = (rotated + n_fix[:, None]) @ _FRONTAL.T
    axes = np.degrees(np.arctan2(ia[..., 1], ia[..., 0]))
    phi = grid[np.argmin(np.abs(_wrap_degrees(axes - target[:, None])), axis=1)]
    h = 1e-4
    for _ in range(6):
        f0 = _wrap_degrees(_frontal_axis(_rotate_z(n_rot[:, None], phi)[:, 0] + n_fix) - target)
        f1 = _wrap_degrees(_frontal_axis(_rotate_z(n_rot[:, None], phi + h)[:, 0] + n_fix) - target)
        slope = (f1 - f0) / h
        step = np.where(np.abs(slope) > 1e-6, -f0 / np.where(np.abs(slope) > 1e-6, slope, 1.0), 0.0)
        phi = phi + np.clip(step, -np.radians(2.0), np.radians(2.0))
    return phi


def _beat_templates(p: ECGParameters) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Wave centres (s from QRS onset), widths (s), VCG amplitudes (N, W, 3) and the realised QRS axis."""
    n = len(p)
    c = np.zeros((n, NUM_WAVES))
    w = np.full((n, NUM_WAVES), 1e-3)
    a = np.zeros((n, NUM_WAVES, 3))
    sinus = p.rhythm <= 2
    d = p.qrs_duration / 1000.0
    bbb = p.bundle_branch_block

    # atrial depolarisation: right atrium (anterior-inferior) then left atrium (left-posterior)
    pr = np.where(sinus, p.pr_interval, 160.0) / 1000.0
    pd_ = p.p_duration / 1000.0
    c[:, _P1], w[:, _P1] = -pr + 0.35 * pd_, 0.16 * pd_
    c[:, _P2], w[:, _P2] = -pr + 0.60 * pd_, 0.17 * pd_
    pgain = (p.p_amplitude * p.voltage_gain * sinus)[:, None]
    a[:, _P1] = pgain * np.array([0.0, 0.09, -0.06])
    a[:, _P2] = pgain * np.array([0.09, 0.05, 0.06])

    # ventricular depolarisation by conduction type: normal, LBBB (1), RBBB (2)
    def by_bbb(normal, left, right):
        return np.select([bbb == 1, bbb == 2], [np.asarray(left), np.asarray(right)], np.asarray(normal))

    c[:, _SEPT] = d * by_bbb(0.17, 0.1, 0.10)
    w[:, _SEPT] = d * by_bbb(0.085, 0.05, 0.06)
    c[:, _R] = d * by_bbb(0.45, 0.33, 0.30)
    w[:, _R] = d * by_bbb(0.12, 0.13, 0.09)
    c[:, _S] = d * by_bbb(0.74, 0.6, 0.50)
    w[:, _S] = d * by_bbb(0.10, 0.1, 0.07)
    c[:, _X] = d * by_bbb(0.7, 0.68, 0.76)
    w[:, _X] = d * by_bbb(0.1, 0.13, 0.11)
    e = (bbb == 0)[:, None], (bbb == 1)[:, None], (bbb == 2)[:, None]
    septal = np.array([-0.15, 0.02, -0.22])
    a[:, _SEPT] = (e[0] | e[2]) * septal
    a[:, _R] = e[0] * np.array([1.15, 0.75, 0.25]) + e[1] * np.array([0.75, -0.05, 0.75])
    a[:, _R] += e[2] * np.array([1.15, 0.75, 0.25])
    a[:, _S] = e[0] * np.array([-0.3, -0.12, 0.55]) + e[2] * np.array([-0.15, -0.06, 0.28])
    a[:, _X] = e[1] * np.array([0.85, 0.1, 0.7]) + e[2] * np.array([-0.7, -0.05, -0.6])
    lvh = p.lvh_gain > 1.0
    a[:, _R] += lvh[:, None] * np.array([0.1, 0.0, 0.15])

    # ventricular repolarisation (concordant T; discordant in LBBB, V1-V2 inversion in RBBB, LVH strain)
    qt = p.qtc / 1000.0 * np.sqrt(60.0 / p.heart_rate)
    sig_t = 0.11 * qt
    tp = qt - 2.0 * sig_t
    c[:, _T1], w[:, _T1] = tp - sig_t, 1.3 * sig_t
    c[:, _T2], w[:, _T2] = tp, sig_t
    c[:, _ST], w[:, _ST] = d + 0.35 * (tp - d), 0.3 * (tp - d)
    t_vec = np.where(e[1], np.array([-0.25, 0.08, -0.3]), np.array([0.25, 0.2, -0.15]))
    t_vec = t_vec + e[2] * np.array([0.12, 0.0, 0.18])
    strain = p.lvh_strain[:, None]
    t_vec = np.where(strain, np.array([-0.2, 0.1, 0.1]), t_vec)
    st_vec = e[1] * np.array([-0.06, 0.0, -0.1]) + strain * np.array([-0.07, 0.0, 0.02])

    # voltage: habitus, LVH (QRS only), low voltage (QRS, damped T)
    qrs_gain = (p.voltage_gain * p.lvh_gain * p.low_voltage_gain)[:, None, None]
    a[:, [_SEPT, _R, _S, _X]] *= qrs_gain
    rep_gain = (p.voltage_gain * p.t_amplitude * np.where(p.low_voltage_gain < 1, 0.6, 1.0))[:, None]
    t_vec = t_vec * rep_gain
    st_vec = st_vec * rep_gain

    # infarct Q waves (initial forces pointing away from the necrotic wall): fixed anatomy, not rotated
    mi_q = (p.mi_gain * p.voltage_gain * p.low_voltage_gain)[:, None]
    ant, inf = (p.anterior_mi > 0)[:, None], (p.inferior_mi > 0)[:, None]
    c[:, _QA], w[:, _QA] = 0.14 * d, 0.09 * d
    c[:, _QI], w[:, _QI] = 0.14 * d, 0.09 * d
    a[:, _QA] = ant * mi_q * np.array([0.05, 0.0, 0.75])
    a[:, _QI] = inf * mi_q * np.array([0.05, -0.6, -0.07])
    a[:, _SEPT] *= np.where(ant, 0.2, 1.0)

    # heart orientation: transverse rotation, then the frontal rotation that realises the target axis
    rot_waves = [_SEPT, _R, _S, _X]
    a[:, rot_waves] = _rotate_y(a[:, rot_waves], np.radians(p.transverse_rotation))
    t_vec = _rotate_y(t_vec[:, None], np.radians(p.transverse_rotation))[:, 0]
    area = w * _SQRT_2PI
    n_rot = (a[:, rot_waves] * area[:, rot_waves, None]).sum(1)
    n_fix = (a[:, [_QA, _QI]] * area[:, [_QA, _QI], None]).sum(1)
    phi = _solve_frontal_rotation(n_rot, n_fix, p.qrs_axis)
    a[:, rot_waves] = _rotate_z(a[:, rot_waves], phi)
    t_vec = _rotate_z(t_vec[:, None], phi)[:, 0]
    st_vec = _rotate_z(st_vec[:, None], phi)[:, 0]
    axis = _frontal_axis(_rotate_z(n_rot[:, None], phi)[:, 0] + n_fix)

    # infarct repolarisation: acute -> ST elevation toward the injured wall (hyperacute T); old -> T inversion
    mi_rep = (p.mi_gain * p.voltage_gain)[:, None]
    acute_a, old_a = (p.anterior_mi == 1)[:, None], (p.anterior_mi == 2)[:, None]
    acute_i, old_i = (p.inferior_mi == 1)[:, None], (p.inferior_mi == 2)[:, None]
    st_vec = st_vec + mi_rep * (acute_a * np.array([0.08, 0.0, -0.32]) + acute_i * np.array([0.0, 0.32, 0.0]))
    t_vec = t_vec + mi_rep * (acute_a * np.array([0.05, 0.0, -0.15]) + acute_i * np.array([0.0, 0.1, 0.0]))
    t_vec = t_vec + mi_rep * (old_a * np.array([0.0, 0.0, 0.4]) + old_i * np.array([0.0, -0.35, 0.0]))
    a[:, _ST] = st_vec
    a[:, _T1] = 0.45 * t_vec
    a[:, _T2] = 0.75 * t_vec

    # premature ventricular complex: wide biphasic QRS without P, discordant T
    dp = p.pvc_duration / 1000.0
    pv = p.pvc_vector * (p.voltage_gain * p.low_voltage_gain)[:, None]
    c[:, _PV1], w[:, _PV1], a[:, _PV1] = 0.32 * dp, 0.14 * dp, 0.8 * pv
    c[:, _PV2], w[:, _PV2] = 0.62 * dp, 0.14 * dp
    a[:, _PV2] = _rotate_z(pv[:, None], np.full(n, np.radians(25.0)))[:, 0]
    c[:, _PVT], w[:, _PVT], a[:, _PVT] = dp + 0.15, np.full(n, 0.055), -0.3 * pv
    return c, w, a, axis


def _beat_slots(duration: float) -> int:
    """Beats drawn per record: enough for the shortest possible RR (an early PVC, 0.2 s) over the record."""
    return int(np.ceil((duration + 2.5) / 0.2))


def _record_draws(seeds: np.ndarray, num_beats: int, num_samples: int, num_knots: int) -> dict[str, np.ndarray]:
    """Per-record random numbers, each record from its own seed (batch-independent).

    EMG is drawn as zero-mean uniform white noise with unit variance (``emg``, float32).
    """
    n = len(seeds)
    out = {
        "beat_normal": np.empty((n, num_beats)),
        "beat_uniform": np.empty((n, num_beats)),
        "misc": np.empty((n, 24)),
        "wander": np.empty((n, 9, num_knots), dtype=np.float32),
        "emg": np.empty((n, 9, num_samples), dtype=np.float32),
    }
    for i, s in enumerate(seeds):
        g = np.random.default_rng(int(s))
        g.standard_normal(out=out["beat_normal"][i])
        g.random(out=out["beat_uniform"][i])
        g.random(out=out["misc"][i])
        g.standard_normal(dtype=np.float32, out=out["wander"][i])
        g.random(dtype=np.float32, out=out["emg"][i])
    emg = out["emg"]
    emg -= np.float32(0.5)
    emg *= np.float32(np.sqrt(12.0))
    return out


def _beat_sequence(p: ECGParameters, r: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Beat onset times (N, B), PVC mask (N, B) and the flutter phase origin (N,)."""
    z, u, misc = r["beat_normal"], r["beat_uniform"], r["misc"]
    b = z.shape[1]
    rr0 = 60.0 / p.heart_rate
    j = np.arange(b)[None, :]
    t_approx = j * rr0[:, None]
    two_pi = 2.0 * np.pi
    sinus_mod = (
        p.rsa_amplitude[:, None] * np.sin(two_pi * p.respiration_rate[:, None] * t_approx + two_pi * misc[:, [1]])
        + p.lf_amplitude[:, None] * np.sin(two_pi * 0.1 * t_approx + two_pi * misc[:, [2]])
        + p.rr_jitter[:, None] * z
    )
    rr = rr0[:, None] * (1.0 + sinus_mod)
    spread = p.af_rr_spread[:, None]
    rr_af = np.maximum(0.28, rr0[:, None] * np.exp(spread * z - 0.5 * spread**2))
    rr = np.where((p.rhythm == 3)[:, None], rr_af, rr)
    cycle = 60.0 / np.where(p.rhythm == 4, p.atrial_rate, 300.0)
    k = np.where(p.conduction[:, None] == 0, np.where(u < 0.5, 2, 4), p.conduction[:, None])
    rr = np.where((p.rhythm == 4)[:, None], k * cycle[:, None], rr)
    if p.paced.any():  # a pacemaker paces regularly at its lower rate over atrial fibrillation or flutter
        rr = np.where((p.paced & (p.rhythm >= 3))[:, None], rr0[:, None], rr)

    # premature ventricular complexes: early beat, then a (sinus: fully) compensatory pause
    pvc = (p.n_pvc[:, None] > 0) & (j >= p.pvc_first[:, None])
    steps = j - p.pvc_first[:, None]
    pvc &= (steps % p.pvc_gap[:, None] == 0) & (steps // p.pvc_gap[:, None] < p.n_pvc[:, None])
    early = p.pvc_coupling[:, None] * rr
    after = np.zeros_like(pvc)
    after[:, 1:] = pvc[:, :-1]
    shortfall = np.zeros_like(rr)
    shortfall[:, 1:] = (rr - early)[:, :-1] * pvc[:, :-1]
    compensate = np.where((p.rhythm == 3)[:, None], 0.0, 1.0)
    rr = np.where(pvc, early, rr) + after * shortfall * compensate
    start = -0.8 - misc[:, 0] * rr0
    t = start[:, None] + np.cumsum(rr, axis=1) - rr[:, :1]
    return t, pvc, start


def _gaussian_waves(
    t_beats: np.ndarray,
    active: np.ndarray,
    centres: np.ndarray,
    widths: np.ndarray,
    scale: np.ndarray,
    gain: np.ndarray,
    fs: float,
    num_samples: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Flat sample indices into a (N, W, T) wave basis and the Gaussian weights of all active waves.

    Each wave is evaluated on its own window of +-3.5 sigma (ragged, so narrow QRS waves stay cheap).
    """
    ni, bi, wave = np.nonzero(active)
    if len(ni) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    sc = scale[ni, bi, wave]
    tau = t_beats[ni, bi] + centres[ni, wave] * sc
    sig = widths[ni, wave] * sc
    half = np.ceil(3.5 * sig * fs).astype(np.int64)
    length = 2 * half + 1
    owner = np.repeat(np.arange(len(ni)), length)
    first = np.rint(tau * fs).astype(np.int64) - half
    idx = np.arange(len(owner), dtype=np.int64)
    idx += np.repeat(first - (np.cumsum(length) - length), length)
    x = idx.astype(np.float32)
    x *= np.float32(1.0 / fs)
    x -= tau.astype(np.float32)[owner]
    x *= (1.0 / sig).astype(np.float32)[owner]
    x *= x
    x *= np.float32(-0.5)
    g = np.exp(x, out=x)
    g *= gain[ni, bi, wave].astype(np.float32)[owner]
    outside = (idx < 0) | (idx >= num_samples)
    g[outside] = 0.0
    idx[outside] = 0
    idx += ((ni * NUM_WAVES + wave) * num_samples)[owner]
    return idx, g


def _add_pacing_spikes(leads: np.ndarray, p: ECGParameters, t_beats: np.ndarray, beats: np.ndarray, fs: float) -> None:
    """Add the pacing stimulus (one sample of the stimulus dipole, then a recharge of -30 % on the next sample)
    4 ms before the QRS onset of every paced beat, through the same lead projection as the waves."""
    i = np.flatnonzero(p.paced)
    num_samples = leads.shape[-1]
    rec, beat = np.nonzero(beats[i])
    k = np.rint((t_beats[i][rec, beat] - 0.004) * fs).astype(np.int64)
    ok = (k >= 0) & (k < num_samples - 1)
    pulses = np.zeros((len(i), num_samples))
    np.add.at(pulses, (rec[ok], k[ok]), 1.0)
    np.add.at(pulses, (rec[ok], k[ok] + 1), -0.3)
    lead_spike = p.spike_vector[i] @ (LEAD_DERIVATION @ DOWER_MATRIX).T  # (paced records, 12)
    leads[i] += lead_spike[:, :, None] * pulses[:, None, :]


def _render_batch(
    p: ECGParameters, fs: float, duration: float, out: np.ndarray
) -> dict[str, np.ndarray]:
    """Render ``p`` into ``out`` (N, 12, T) float32; returns the realised rhythm attributes."""
    n = len(p)
    num_samples = out.shape[-1]
    time = np.arange(num_samples) / fs
    knots = np.arange(-0.4, duration + 0.8, 0.4)
    r = _record_draws(p.seed, _beat_slots(duration), num_samples, len(knots))
    centres, widths, amps, axis = _beat_templates(p)
    t_beats, pvc, start = _beat_sequence(p, r)

    valid = (t_beats > -1.2) & (t_beats < duration + 0.5)
    sinus = (p.rhythm <= 2)[:, None]
    rr0 = (60.0 / p.heart_rate)[:, None]
    rr_prev = np.diff(t_beats, axis=1, prepend=t_beats[:, :1] - rr0)
    num_beats = t_beats.shape[1]
    active = np.zeros((n, num_beats, NUM_WAVES), dtype=bool)
    normal = valid & ~pvc
    active[:, :, _ATRIAL] = (normal & sinus)[:, :, None]
    active[:, :, _NORMAL_QRS] = normal[:, :, None]
    active[:, :, _REPOLARISATION] = normal[:, :, None]
    active[:, :, _PVC_WAVES] = (valid & pvc)[:, :, None]
    active &= (np.abs(amps).sum(-1) > 0)[:, None, :]

    scale = np.ones((n, num_beats, NUM_WAVES))
    scale[:, :, _REPOLARISATION] = (np.clip(rr_prev / rr0, 0.5, 2.0) ** 0.3)[:, :, None]
    gain = np.ones((n, num_beats, NUM_WAVES))
    resp = 1.0 + 0.05 * np.sin(2 * np.pi * (p.respiration_rate[:, None] * t_beats + r["misc"][:, [3]]))
    gain[:, :, _NORMAL_QRS] = resp[:, :, None]

    flat, weights = _gaussian_waves(t_beats, active, centres, widths, scale, gain, fs, num_samples)
    basis = np.bincount(flat, weights=weights, minlength=n * NUM_WAVES * num_samples)
    basis = basis.reshape(n, NUM_WAVES, num_samples)
    lead_amps = amps @ (LEAD_DERIVATION @ DOWER_MATRIX).T  # (N, W, 12)
    leads = np.matmul(lead_amps.transpose(0, 2, 1), basis)  # (N, 12, T)
    if p.paced.any():
        _add_pacing_spikes(leads, p, t_beats, normal, fs)

    # atrial activity: fibrillatory f waves (AF) or a sawtooth flutter signal (AFL)
    misc = r["misc"]
    is_af, is_afl = p.rhythm == 3, p.rhythm == 4
    if is_af.any():
        i = np.flatnonzero(is_af)
        tt = time[None, :]
        drift = 0.6 / (2 * np.pi * 0.13) * np.cos(2 * np.pi * (0.13 * tt + misc[i, 4, None]))
        phase = 2 * np.pi * (p.f_wave_frequency[i, None] * tt - drift)
        env = 1.0 + 0.35 * np.sin(2 * np.pi * (0.21 * tt + misc[i, 5, None]))
        wave = env * (np.sin(phase) + 0.35 * np.sin(2 * phase + 2 * np.pi * misc[i, 6, None]))
        vec = np.array([0.15, 0.45, -0.75]) * (p.f_wave_amplitude[i] * p.voltage_gain[i])[:, None]
        leads[i] += (vec @ (LEAD_DERIVATION @ DOWER_MATRIX).T)[:, :, None] * wave[:, None, :]
    if is_afl.any():
        i = np.flatnonzero(is_afl)
        cycle = 60.0 / p.atrial_rate[i, None]
        ph = (time[None, :] - start[i, None] + 0.22) / cycle
        saw = np.interp(ph % 1.0, _SAWTOOTH_PHASE, _SAWTOOTH)
        vec = np.array([0.1, 1.0, 0.4]) * (p.flutter_amplitude[i] * p.voltage_gain[i])[:, None]
        leads[i] += (vec @ (LEAD_DERIVATION @ DOWER_MATRIX).T)[:, :, None] * saw[:, None, :]

    # electrode noise: baseline wander (smooth RBF), EMG (white), powerline (50/60 Hz), then referenced
    rbf = np.exp(-0.5 * ((time[None, :] - knots[:, None]) / 0.3) ** 2).astype(np.float32)
    wander = r["wander"] * p.baseline_wander[:, None, None].astype(np.float32)
    electrodes = np.matmul(wander, rbf)
    emg = r["emg"]
    emg *= p.emg_noise[:, None, None].astype(np.float32)
    electrodes += emg
    freqs, which = np.unique(p.line_frequency, return_inverse=True)
    base = 2 * np.pi * freqs[:, None] * time[None, :]
    phi = 2 * np.pi * misc[:, [7]]
    line = (np.sin(base)[which] * np.cos(phi) + np.cos(base)[which] * np.sin(phi)).astype(np.float32)
    pl_gain = (misc[:, 8:17] * p.powerline_noise[:, None]).astype(np.float32)
    electrodes += pl_gain[:, :, None] * line[:, None, :]
    leads += np.matmul((LEAD_DERIVATION @ ELECTRODE_TO_LEADS).astype(np.float32), electrodes)
    out[...] = leads

    # realised rhythm attributes over the beats inside the record
    inside = (t_beats >= 0) & (t_beats < duration)
    count = inside.sum(1)
    first = np.where(inside, t_beats, np.inf).min(1)
    last = np.where(inside, t_beats, -np.inf).max(1)
    rr = np.diff(t_beats, axis=1)
    pair = inside[:, 1:] & inside[:, :-1]
    triple = pair[:, 1:] & pair[:, :-1]
    mean_rr = np.where(pair, rr, 0).sum(1) / np.maximum(pair.sum(1), 1)
    rmssd = np.sqrt(np.where(triple, np.diff(rr, axis=1) ** 2, 0).sum(1) / np.maximum(triple.sum(1), 1))
    return {
        "heart_rate": 60.0 * (count - 1) / np.maximum(last - first, 1e-6),
        "rr_irregularity": rmssd / mean_rr,
        "qrs_axis": axis,
        "n_beats": count,
        "n_pvc": (inside & pvc).sum(1),
    }


def render_ecgs(
    params: ECGParameters,
    sampling_rate: int = 500,
    duration: float = 10.0,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Render 12-lead ECGs (N, 12, T) float32 in mV, leads in :data:`STANDARD_LEAD_ORDER`.

    Returns the signals and the ground-truth wave attributes (:data:`WAVE_ATTRIBUTES` plus ``n_beats`` and
    ``n_pvc``): heart rate and RR irregularity as realised by the beats in the record, PR / QRS / QT as
    modelled (PR is NaN without sinus P waves), QTc by Bazett from the realised mean RR, and the frontal QRS
    axis of the noise-free dipole.
    """
    n = len(params)
    num_samples = int(round(duration * sampling_rate))
    out = np.empty((n, 12, num_samples), dtype=np.float32)
    parts: dict[str, list[np.ndarray]] = {}
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="rendering ECGs", unit="batch")
    for s in starts:
        part = params.subset(slice(s, s + batch_size))
        attrs = _render_batch(part, float(sampling_rate), duration, out[s : s + len(part)])
        for k, v in attrs.items():
            parts.setdefault(k, []).append(v)
    realised = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    if n == 0:
        realised = {k: np.zeros(0) for k in ("heart_rate", "rr_irregularity", "qrs_axis", "n_beats", "n_pvc")}
    qt = params.qtc * np.sqrt(60.0 / params.heart_rate)
    hr = realised["heart_rate"]
    attributes = pd.DataFrame(
        {
            "heart_rate": hr,
            "pr_interval": params.pr_interval,
            "qrs_duration": params.qrs_duration,
            "qt_interval": qt,
            "qtc": qt / np.sqrt(60.0 / np.maximum(hr, 1.0)),
            "qrs_axis": realised["qrs_axis"],
            "rr_irregularity": realised["rr_irregularity"],
            "n_beats": realised["n_beats"].astype(np.int64),
            "n_pvc": realised["n_pvc"].astype(np.int64),
        }
    )
    return out, attributes


def simulate_ecgs(
    conditions: np.ndarray | Sequence[Sequence[str]],
    seed: int = 0,
    sampling_rate: int = 500,
    duration: float = 10.0,
    age: np.ndarray | None = None,
    sex: np.ndarray | None = None,
    return_attributes: bool = False,
    paced: np.ndarray | None = None,
) -> np.ndarray | tuple[np.ndarray, pd.DataFrame]:
    """Simulate one 12-lead ECG per record with the given conditions.

    ``conditions``: (N, C) multi-hot over :data:`SYNTHETIC_CONDITIONS` or N lists of condition names;
    ``paced`` (N,) bool: ventricular-paced records. Returns (N, 12, T) float32 mV, or ``(signals, attributes)``
    with ``return_attributes=True``. Deterministic in ``seed``.
    """
    rng = np.random.default_rng(seed)
    params = sample_ecg_parameters(conditions, rng, age=age, sex=sex, paced=paced)
    signals, attributes = render_ecgs(params, sampling_rate=sampling_rate, duration=duration)
    return (signals, attributes) if return_attributes else signals
