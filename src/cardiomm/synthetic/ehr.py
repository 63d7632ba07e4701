"""Structured-EHR timelines and laboratory / echo measurements for the synthetic cohort.

Every event is a real code of its system: ICD-9-CM diagnoses (``ICD9CM``) and procedures (``ICD9PCS``,
volume 3) for encounters before the US transition on 2015-10-01, ICD-10-CM / ICD-10-PCS from that day on,
CPT and HCPCS Level II throughout, and medications as WHO ATC codes with their generic names. Codes follow
the patient's conditions (atrial fibrillation -> I48.x / 427.31, anticoagulants, cardioversion; infarction
-> I21 / I25.2 / 410 / 412, PCI, statins, antiplatelets, beta-blockers; LVH -> hypertensive heart disease,
ACE inhibitors; ...), their risk factors and age, with background codes (routine visits, diabetes, COPD,
reflux, back pain, vaccinations) as noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

ICD10_TRANSITION = pd.Timestamp("2015-10-01")
"""Encounters on or after this day are coded in ICD-10-CM / ICD-10-PCS, earlier ones in ICD-9-CM."""

CODE_SYSTEMS: dict[str, str] = {
    "ICD9CM": "ICD-9-CM diagnosis",
    "ICD10CM": "ICD-10-CM diagnosis",
    "ICD9PCS": "ICD-9-CM volume 3 procedure",
    "ICD10PCS": "ICD-10-PCS procedure",
    "CPT": "CPT (AMA) procedure",
    "HCPCS": "HCPCS Level II",
    "ATC": "WHO ATC medication",
}

# name -> (ICD-9-CM code, description, ICD-10-CM code, description); pairs follow the CMS GEMs
DIAGNOSES: dict[str, tuple[str, str, str, str]] = {
    "paroxysmal atrial fibrillation": ("427.31", "Atrial fibrillation", "I48.0", "Paroxysmal atrial fibrillation"),
    "atrial fibrillation": ("427.31", "Atrial fibrillation", "I48.91", "Unspecified atrial fibrillation"),
    "atrial flutter": ("427.32", "Atrial flutter", "I48.92", "Unspecified atrial flutter"),
    "typical atrial flutter": ("427.32", "Atrial flutter", "I48.3", "Typical atrial flutter"),
    "first degree AV block": (
        "426.11", "First degree atrioventricular block", "I44.0", "Atrioventricular block, first degree"
    ),
    "left bundle branch block": (
        "426.3", "Other left bundle branch block", "I44.7", "Left bundle-branch block, unspecified"
    ),
    "right bundle branch block": (
        "426.4", "Right bundle branch block", "I45.10", "Unspecified right bundle-branch block"
    ),
    "hypertensive heart disease": (
        "402.90",
        "Unspecified hypertensive heart disease without heart failure",
        "I11.9",
        "Hypertensive heart disease without heart failure",
    ),
    "cardiomegaly": ("429.3", "Cardiomegaly", "I51.7", "Cardiomegaly"),
    "acute anterior myocardial infarction": (
        "410.11",
        "Acute myocardial infarction of other anterior wall, initial episode of care",
        "I21.09",
        "ST elevation (STEMI) myocardial infarction involving other coronary artery of anterior wall",
    ),
    "acute inferior myocardial infarction": (
        "410.41",
        "Acute myocardial infarction of other inferior wall, initial episode of care",
        "I21.19",
        "ST elevation (STEMI) myocardial infarction involving other coronary artery of inferior wall",
    ),
    "old myocardial infarction": ("412", "Old myocardial infarction", "I25.2", "Old myocardial infarction"),
    "coronary atherosclerosis": (
        "414.01",
        "Coronary atherosclerosis of native coronary artery",
        "I25.10",
        "Atherosclerotic heart disease of native coronary artery without angina pectoris",
    ),
    "bradycardia": ("427.89", "Other specified cardiac dysrhythmias", "R00.1", "Bradycardia, unspecified"),
    "tachycardia": ("785.0", "Tachycardia, unspecified", "R00.0", "Tachycardia, unspecified"),
    "premature ventricular complexes": (
        "427.69", "Other premature beats", "I49.3", "Ventricular premature depolarization"
    ),
    "long QT syndrome": ("426.82", "Long QT syndrome", "I45.81", "Long QT syndrome"),
    "abnormal ECG": (
        "794.31",
        "Nonspecific abnormal electrocardiogram [ECG] [EKG]",
        "R94.31",
        "Abnormal electrocardiogram [ECG] [EKG]",
    ),
    "heart failure": (
        "428.22", "Chronic systolic heart failure", "I50.22", "Chronic systolic (congestive) heart failure"
    ),
    "hypertension": ("401.9", "Unspecified essential hypertension", "I10", "Essential (primary) hypertension"),
    "diabetes": (
        "250.00",
        "Diabetes mellitus without mention of complication, type II or unspecified type, not stated as uncontrolled",
        "E11.9",
        "Type 2 diabetes mellitus without complications",
    ),
    "hyperlipidemia": ("272.4", "Other and unspecified hyperlipidemia", "E78.5", "Hyperlipidemia, unspecified"),
    "copd": (
        "496",
        "Chronic airway obstruction, not elsewhere classified",
        "J44.9",
        "Chronic obstructive pulmonary disease, unspecified",
    ),
    "ckd": ("585.9", "Chronic kidney disease, unspecified", "N18.9", "Chronic kidney disease, unspecified"),
    "obesity": ("278.00", "Obesity, unspecified", "E66.9", "Obesity, unspecified"),
    "hypothyroidism": ("244.9", "Unspecified acquired hypothyroidism", "E03.9", "Hypothyroidism, unspecified"),
    "smoker": ("V15.82", "Personal history of tobacco use", "Z87.891", "Personal history of nicotine dependence"),
    "hypokalemia": ("276.8", "Hypopotassemia", "E87.6", "Hypokalemia"),
    "long-term anticoagulants": (
        "V58.61", "Long-term (current) use of anticoagulants", "Z79.01", "Long term (current) use of anticoagulants"
    ),
    "angioplasty status": (
        "V45.82",
        "Percutaneous transluminal coronary angioplasty status",
        "Z98.61",
        "Coronary angioplasty status",
    ),
    "chest pain": ("786.50", "Chest pain, unspecified", "R07.9", "Chest pain, unspecified"),
    "syncope": ("780.2", "Syncope and collapse", "R55", "Syncope and collapse"),
    "shortness of breath": ("786.05", "Shortness of breath", "R06.02", "Shortness of breath"),
    "general exam": (
        "V70.0",
        "Routine general medical examination at a health care facility",
        "Z00.00",
        "Encounter for general adult medical examination without abnormal findings",
    ),
    "influenza vaccination": (
        "V04.81",
        "Need for prophylactic vaccination and inoculation against influenza",
        "Z23",
        "Encounter for immunization",
    ),
    "reflux": ("530.81", "Esophageal reflux", "K21.9", "Gastro-esophageal reflux disease without esophagitis"),
    "back pain": ("724.5", "Backache, unspecified", "M54.9", "Dorsalgia, unspecified"),
    "upper respiratory infection": (
        "465.9",
        "Acute upper respiratory infections of unspecified site",
        "J06.9",
        "Acute upper respiratory infection, unspecified",
    ),
    "depression": (
        "311",
        "Depressive disorder, not elsewhere classified",
        "F32.9",
        "Major depressive disorder, single episode, unspecified",
    ),
    "sleep apnea": (
        "327.23", "Obstructive sleep apnea (adult)(pediatric)", "G47.33", "Obstructive sleep apnea (adult) (pediatric)"
    ),
    "vitamin D deficiency": ("268.9", "Unspecified vitamin D deficiency", "E55.9", "Vitamin D deficiency, unspecified"),
}

# name -> [(system, code, description)]; ICD9PCS / ICD10PCS entries are chosen by the encounter date
PROCEDURES: dict[str, list[tuple[str, str, str]]] = {
    "electrocardiogram": [
        ("CPT", "93000", "Electrocardiogram, routine ECG with at least 12 leads; with interpretation and report"),
    ],
    "inpatient electrocardiogram": [
        ("ICD9PCS", "89.52", "Electrocardiogram"),
        ("ICD10PCS", "4A02X4Z", "Measurement of Cardiac Electrical Activity, External Approach"),
    ],
    "echocardiography": [
        ("CPT", "93306", "Echocardiography, transthoracic, complete, with spectral and color flow Doppler"),
    ],
    "cardioversion": [
        ("CPT", "92960", "Cardioversion, elective, electrical conversion of arrhythmia; external"),
        ("ICD9PCS", "99.61", "Atrial cardioversion"),
        ("ICD10PCS", "5A2204Z", "Restoration of Cardiac Rhythm, Single"),
    ],
    "ablation": [
        ("CPT", "93656", "Comprehensive electrophysiologic evaluation with transseptal catheterizations, "
         "ablation of atrial fibrillation by pulmonary vein isolation"),
        ("ICD9PCS", "37.34", "Excision or destruction of other lesion or tissue of heart, endovascular approach"),
        ("ICD10PCS", "02583ZZ", "Destruction of Conduction Mechanism, Percutaneous Approach"),
    ],
    "coronary angiography": [
        ("CPT", "93458", "Catheter placement in coronary artery(s) for coronary angiography, with left heart "
         "catheterization"),
        ("ICD9PCS", "88.56", "Coronary arteriography using two catheters"),
        ("ICD10PCS", "B2111ZZ", "Fluoroscopy of Multiple Coronary Arteries using Low Osmolar Contrast"),
    ],
    "pci": [
        ("CPT", "92928", "Percutaneous transcatheter placement of intracoronary stent(s), single major coronary "
         "artery"),
        ("ICD9PCS", "00.66", "Percutaneous transluminal coronary angioplasty [PTCA]"),
        ("ICD9PCS", "36.07", "Insertion of drug-eluting coronary artery stent(s)"),
        ("ICD10PCS", "027034Z", "Dilation of Coronary Artery, One Artery with Drug-eluting Intraluminal Device, "
         "Percutaneous Approach"),
    ],
    "chest radiograph": [("CPT", "71046", "Radiologic examination, chest; 2 views")],
    "chest radiograph (before 2018)": [("CPT", "71020", "Radiologic examination, chest, 2 views, frontal and lateral")],
    "metabolic panel": [("CPT", "80053", "Comprehensive metabolic panel")],
    "blood count": [("CPT", "85025", "Blood count; complete (CBC), automated, with differential WBC count")],
    "natriuretic peptide": [("CPT", "83880", "Natriuretic peptide")],
    "troponin": [("CPT", "84484", "Troponin, quantitative")],
    "hemoglobin A1c": [("CPT", "83036", "Hemoglobin; glycosylated (A1C)")],
    "lipid panel": [("CPT", "80061", "Lipid panel")],
    "venipuncture": [("CPT", "36415", "Collection of venous blood by venipuncture")],
    "office visit": [("CPT", "99213", "Office or other outpatient visit for an established patient, low complexity")],
    "office visit, moderate": [
        ("CPT", "99214", "Office or other outpatient visit for an established patient, moderate complexity")
    ],
    "emergency visit": [("CPT", "99285", "Emergency department visit, high severity")],
    "hospital admission": [("CPT", "99223", "Initial hospital care, per day, high complexity")],
    "influenza vaccine administration": [("HCPCS", "G0008", "Administration of influenza virus vaccine")],
    "annual wellness visit": [("HCPCS", "G0439", "Annual wellness visit, includes a personalized prevention plan "
                                         "of service (PPS), subsequent visit")],
    "glucose test strips": [("HCPCS", "A4253", "Blood glucose test or reagent strips for home blood glucose "
                                      "monitor, per 50 strips")],
}

MEDICATIONS: dict[str, list[tuple[str, str]]] = {
    "vitamin K antagonist": [("B01AA03", "warfarin")],
    "direct oral anticoagulant": [("B01AF02", "apixaban"), ("B01AF01", "rivaroxaban")],
    "aspirin": [("B01AC06", "acetylsalicylic acid")],
    "P2Y12 inhibitor": [("B01AC04", "clopidogrel"), ("B01AC24", "ticagrelor")],
    "beta blocker": [("C07AB02", "metoprolol"), ("C07AB07", "bisoprolol"), ("C07AG02", "carvedilol")],
    "statin": [("C10AA05", "atorvastatin"), ("C10AA07", "rosuvastatin"), ("C10AA01", "simvastatin")],
    "ACE inhibitor or ARB": [("C09AA05", "ramipril"), ("C09AA03", "lisinopril"), ("C09CA01", "losartan")],
    "calcium channel blocker": [("C08CA01", "amlodipine")],
    "thiazide": [("C03AA03", "hydrochlorothiazide")],
    "loop diuretic": [("C03CA01", "furosemide")],
    "mineralocorticoid antagonist": [("C03DA01", "spironolactone")],
    "amiodarone": [("C01BD01", "amiodarone")],
    "digoxin": [("C01AA05", "digoxin")],
    "rate-control calcium channel blocker": [("C08DB01", "diltiazem")],
    "metformin": [("A10BA02", "metformin")],
    "insulin": [("A10AE04", "insulin glargine")],
    "bronchodilator": [("R03AC02", "salbutamol"), ("R03BB04", "tiotropium bromide")],
    "thyroid hormone": [("H03AA01", "levothyroxine sodium")],
    "proton pump inhibitor": [("A02BC01", "omeprazole")],
    "antidepressant": [("N06AB06", "sertraline")],
    "potassium supplement": [("A12BA01", "potassium chloride")],
}

LAB_UNITS: dict[str, str] = {
    "lvef": "%",
    "lv_mass_index": "g/m2",
    "ivs_thickness": "mm",
    "nt_probnp": "pg/mL",
    "troponin_t": "ng/L",
    "potassium": "mmol/L",
    "creatinine": "mg/dL",
    "hemoglobin": "g/dL",
    "hba1c": "%",
    "ldl_cholesterol": "mg/dL",
}
"""Laboratory and echocardiographic measurements per ECG (name -> unit); NaN where not measured."""

RISK_FACTORS: tuple[str, ...] = (
    "hypertension",
    "diabetes",
    "hyperlipidemia",
    "copd",
    "ckd",
    "obesity",
    "hypothyroidism",
    "smoker",
)


def therapy_classes(patient: Mapping, active: set[str], time: pd.Timestamp) -> set[str]:
    """Medication classes a patient takes at ``time`` given the conditions ``active`` then.

    ``patient`` holds the risk factors and per-patient prescribing choices (``hypertension_beta_blocker``,
    ``amiodarone``, ``rate_control``, ...); ``active`` names conditions already diagnosed (onset <= time),
    including "myocardial infarction", "heart failure" and the risk factors.
    """
    t: set[str] = set()
    af = bool(active & {"atrial fibrillation", "atrial flutter"})
    mi = "myocardial infarction" in active
    hf = "heart failure" in active
    htn = "hypertension" in active
    if af:
        early = time < pd.Timestamp("2014-01-01") or patient.get("prefers_warfarin", False)
        t.add("vitamin K antagonist" if early else "direct oral anticoagulant")
        if patient.get("amiodarone", False):
            t.add("amiodarone")
        if patient.get("rate_control", "") == "digoxin":
            t.add("digoxin")
        elif patient.get("rate_control", "") == "diltiazem":
            t.add("rate-control calcium channel blocker")
    if mi or hf or af or (htn and patient.get("hypertension_beta_blocker", False)):
        t.add("beta blocker")
    if mi or "hyperlipidemia" in active or ("diabetes" in active and patient.get("diabetes_statin", False)):
        t.add("statin")
    if mi:
        t.add("aspirin")
    if mi or hf or "left ventricular hypertrophy" in active or (htn and patient.get("hypertension_acei", True)):
        t.add("ACE inhibitor or ARB")
    if htn and patient.get("hypertension_ccb", False):
        t.add("calcium channel blocker")
    if htn and patient.get("hypertension_thiazide", False):
        t.add("thiazide")
    if hf:
        t.add("loop diuretic")
        if patient.get("hf_mra", False):
            t.add("mineralocorticoid antagonist")
    if "diabetes" in active:
        t.add("metformin")
        if patient.get("insulin", False):
            t.add("insulin")
    if "copd" in active:
        t.add("bronchodilator")
    if "hypothyroidism" in active:
        t.add("thyroid hormone")
    return t


def _diagnosis(name: str, time: pd.Timestamp) -> tuple[str, str, str]:
    icd9, d9, icd10, d10 = DIAGNOSES[name]
    return ("ICD9CM", icd9, d9) if time < ICD10_TRANSITION else ("ICD10CM", icd10, d10)


def _procedures(name: str, time: pd.Timestamp) -> list[tuple[str, str, str]]:
    if name == "chest radiograph" and time < pd.Timestamp("2018-01-01"):
        name = "chest radiograph (before 2018)"
    pcs_system = "ICD9PCS" if time < ICD10_TRANSITION else "ICD10PCS"
    return [e for e in PROCEDURES[name] if e[0] in ("CPT", "HCPCS", pcs_system)]


_CONDITION_DIAGNOSES: dict[str, tuple[str, ...]] = {
    "first degree AV block": ("first degree AV block",),
    "left bundle branch block": ("left bundle branch block",),
    "right bundle branch block": ("right bundle branch block",),
    "left ventricular hypertrophy": ("hypertensive heart disease",),
    "low QRS voltage": ("abnormal ECG",),
    "left axis deviation": ("abnormal ECG",),
    "right axis deviation": ("abnormal ECG",),
    "heart failure": ("heart failure",),
}
_ECG_FINDING_DIAGNOSES: dict[str, str] = {
    "sinus bradycardia": "bradycardia",
    "sinus tachycardia": "tachycardia",
    "premature ventricular complexes": "premature ventricular complexes",
    "prolonged QT": "long QT syndrome",
}
_NOISE_DIAGNOSES: dict[str, float] = {
    "general exam": 0.15,
    "reflux": 0.06,
    "back pain": 0.06,
    "upper respiratory infection": 0.06,
    "depression": 0.04,
    "chest pain": 0.05,
    "syncope": 0.02,
    "shortness of breath": 0.04,
    "sleep apnea": 0.02,
    "vitamin D deficiency": 0.03,
}


def generate_ehr_events(
    encounters: pd.DataFrame,
    patients: pd.DataFrame,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Diagnosis, procedure and medication events for every encounter.

    ``encounters`` has one row per encounter with ``encounter_id``, ``patient_id``, ``time``, ``setting``
    ("outpatient", "emergency", "inpatient"), ``active`` (set of diagnosed conditions at that time, risk
    factors included), ``new`` (conditions diagnosed at this encounter), ``ecg_labels`` (labels of an ECG
    taken there, else empty), ``acute_mi`` ("anterior"/"inferior"/""), ``tests`` (set of tests done:
    "ecg", "echo", "angiogram", "chest_xray" and lab names) and ``potassium``. ``patients`` is indexed by
    ``patient_id`` and holds the prescribing choices of :func:`therapy_classes`.

    Returns a frame with ``patient_id, encounter_id, time, event_type, code_system, code, description``,
    sorted by patient and time.
    """
    rows: list[tuple] = []
    pat = patients.to_dict(orient="index")
    choice: dict[tuple[str, str], tuple[str, str]] = {}
    for enc in encounters.itertuples(index=False):
        t: pd.Timestamp = enc.time
        p = pat[enc.patient_id]
        active: set[str] = set(enc.active)
        out: list[tuple[str, str, str, str]] = []

        def dx(name: str, prob: float = 1.0) -> None:
            if prob >= 1.0 or rng.random() < prob:
                out.append(("diagnosis", *_diagnosis(name, t)))

        def px(name: str) -> None:
            out.extend(("procedure", *e) for e in _procedures(name, t))

        # diagnoses: chronic conditions (always at diagnosis, usually on follow-up), ECG findings, risk factors
        for cond in sorted(active):
            first = cond in enc.new
            p_code = 1.0 if first else 0.75
            if cond == "atrial fibrillation":
                dx("paroxysmal atrial fibrillation" if p.get("af_pattern") == "paroxysmal" else "atrial fibrillation",
                   p_code)
                dx("long-term anticoagulants", 0.5)
            elif cond == "atrial flutter":
                dx("typical atrial flutter" if p.get("typical_flutter", False) else "atrial flutter", p_code)
            elif cond == "myocardial infarction":
                if not enc.acute_mi:
                    dx("old myocardial infarction", p_code)
                dx("coronary atherosclerosis", 0.6)
                if p.get("pci", False) and not first:
                    dx("angioplasty status", 0.3)
            elif cond in _CONDITION_DIAGNOSES:
                for name in _CONDITION_DIAGNOSES[cond]:
                    dx(name, p_code if name != "abnormal ECG" else 0.4 * p_code)
                if cond == "left ventricular hypertrophy":
                    dx("cardiomegaly", 0.2)
            elif cond in DIAGNOSES:
                dx(cond, 1.0 if first else 0.7)
        if enc.acute_mi:
            dx(f"acute {enc.acute_mi} myocardial infarction")
            dx("chest pain", 0.8)
        for finding, name in _ECG_FINDING_DIAGNOSES.items():
            if finding in enc.ecg_labels:
                dx(name, 0.6)
        if enc.ecg_labels and "normal ECG" not in enc.ecg_labels:
            dx("abnormal ECG", 0.15)
        if np.isfinite(enc.potassium) and enc.potassium < 3.5:
            dx("hypokalemia", 0.7)
        for name, prob in _NOISE_DIAGNOSES.items():
            dx(name, prob)
        if rng.random() < 0.25:
            dx("influenza vaccination")
            px("influenza vaccine administration")

        # procedures: the visit itself, tests, interventions
        px({"outpatient": "office visit" if rng.random() < 0.6 else "office visit, moderate",
            "emergency": "emergency visit", "inpatient": "hospital admission"}[enc.setting])
        age = (t - p["birth_date"]).days / 365.25
        if enc.setting == "outpatient" and age >= 65 and t.year >= 2011 and rng.random() < 0.3:
            px("annual wellness visit")
        tests = set(enc.tests)
        if "ecg" in tests:
            px("electrocardiogram")
            if enc.setting == "inpatient" and rng.random() < 0.5:
                px("inpatient electrocardiogram")
        if "echo" in tests:
            px("echocardiography")
        if "chest_xray" in tests:
            px("chest radiograph")
        if "angiogram" in tests:
            px("coronary angiography")
        if enc.acute_mi and p.get("pci", False):
            px("pci")
        if "atrial fibrillation" in enc.new and p.get("cardioversion", False):
            px("cardioversion")
        if "atrial fibrillation" in active and p.get("ablation", False) and rng.random() < 0.15:
            px("ablation")
        labs = tests & {"potassium", "creatinine"}
        if labs:
            px("metabolic panel")
        if "hemoglobin" in tests:
            px("blood count")
        if "nt_probnp" in tests:
            px("natriuretic peptide")
        if "troponin_t" in tests:
            px("troponin")
        if "hba1c" in tests:
            px("hemoglobin A1c")
        if "ldl_cholesterol" in tests:
            px("lipid panel")
        if labs or tests & {"hemoglobin", "nt_probnp", "troponin_t", "hba1c", "ldl_cholesterol"}:
            px("venipuncture")
        if "diabetes" in active and rng.random() < 0.3:
            px("glucose test strips")

        # medications: prescriptions of the classes the patient is on (a fixed drug per patient and class)
        classes = therapy_classes(p, active, t)
        if np.isfinite(enc.potassium) and enc.potassium < 3.5:
            classes.add("potassium supplement")
        if rng.random() < 0.05:
            classes.add("proton pump inhibitor")
        if rng.random() < 0.03:
            classes.add("antidepressant")
        if enc.acute_mi:
            classes.add("P2Y12 inhibitor")
        for cls in sorted(classes):
            if rng.random() < 0.85:
                key = (enc.patient_id, cls)
                if key not in choice:
                    options = MEDICATIONS[cls]
                    choice[key] = options[int(rng.integers(len(options)))]
                code, name = choice[key]
                out.append(("medication", "ATC", code, name))
        rows.extend((enc.patient_id, enc.encounter_id, t, *e) for e in out)
    frame = pd.DataFrame(
        rows, columns=["patient_id", "encounter_id", "time", "event_type", "code_system", "code", "description"]
    )
    return frame.sort_values(["patient_id", "time"], kind="stable").reset_index(drop=True)


def generate_labs(ecgs: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Laboratory and echo values at each ECG (complete), correlated with its conditions and the patient.

    ``ecgs`` needs ``ecg_id``, ``age``, ``sex``, ``labels`` (list of condition names), ``mi_stage``
    ("", "acute", "old"), ``lvef_offset`` (patient-level), ``potassium``, ``on_statin`` and the
    risk-factor columns of :data:`RISK_FACTORS`. LVEF falls with infarction (anterior more than inferior),
    LBBB, AF and age; septal thickness and LV mass rise with LVH; NT-proBNP with AF, low LVEF, LVH, CKD and
    age; troponin T with an acute infarction; creatinine with CKD; HbA1c with diabetes; LDL falls on statins.
    Mask the values not measured with :func:`observed_labs`.
    """
    n = len(ecgs)
    has = {c: np.array([c in labs for labs in ecgs["labels"]]) for c in (
        "atrial fibrillation", "atrial flutter", "left bundle branch block", "left ventricular hypertrophy",
        "anterior myocardial infarction", "inferior myocardial infarction", "low QRS voltage")}
    age = ecgs["age"].to_numpy(float)
    female = ecgs["sex"].to_numpy() == "F"
    stage = ecgs["mi_stage"].to_numpy()
    rf = {k: ecgs[k].to_numpy(bool) for k in RISK_FACTORS}
    ant, inf = has["anterior myocardial infarction"], has["inferior myocardial infarction"]
    lvh = has["left ventricular hypertrophy"]
    af = has["atrial fibrillation"] | has["atrial flutter"]

    lvef = 61 + ecgs["lvef_offset"].to_numpy(float) + rng.normal(0, 3, n)
    lvef -= np.where(ant, np.where(stage == "acute", 12, 15), 0) + np.where(inf, np.where(stage == "acute", 7, 8), 0)
    lvef -= 11 * has["left bundle branch block"] + 4 * af + 0.05 * np.maximum(age - 60, 0)
    lvef = np.clip(lvef, 12, 75)
    ivs = np.where(lvh, rng.normal(14.2, 1.4, n), rng.normal(9.6, 0.9, n)) - 0.8 * female + 0.6 * rf["hypertension"]
    ivs = np.clip(ivs, 6, 22)
    lvmi = 85 - 12 * female + 11 * (ivs - 9.6) + 0.6 * np.maximum(50 - lvef, 0) + rng.normal(0, 8, n)
    ckd, dm = rf["ckd"], rf["diabetes"]
    bnp = np.exp(
        np.log(60) + 0.03 * (age - 50) + 1.0 * af + 0.07 * np.maximum(55 - lvef, 0) + 0.4 * lvh + 0.6 * ckd
        + 0.25 * female + rng.normal(0, 0.5, n)
    )
    trop = np.exp(np.log(6) + 0.015 * (age - 50) + 0.6 * ckd + rng.normal(0, 0.4, n))
    trop = np.where(stage == "acute", trop * np.exp(rng.uniform(np.log(20), np.log(400), n)), trop)
    creat = np.exp(np.log(np.where(female, 0.75, 0.95)) + 0.006 * (age - 50) + 0.55 * ckd + 0.08 * dm
                   + rng.normal(0, 0.12, n))
    hb = np.where(female, 13.3, 14.8) - 1.2 * ckd + rng.normal(0, 1.0, n)
    hba1c = np.where(dm, rng.normal(7.4, 0.9, n), rng.normal(5.5, 0.3, n))
    ldl = rng.normal(122, 28, n) - 45 * ecgs["on_statin"].to_numpy(bool) + 15 * rf["hyperlipidemia"]
    return pd.DataFrame(
        {
            "ecg_id": ecgs["ecg_id"].to_numpy(),
            "lvef": lvef,
            "lv_mass_index": np.clip(lvmi, 45, 260),
            "ivs_thickness": ivs,
            "nt_probnp": bnp,
            "troponin_t": trop,
            "potassium": ecgs["potassium"].to_numpy(float),
            "creatinine": creat,
            "hemoglobin": np.clip(hb, 7, 19),
            "hba1c": np.clip(hba1c, 4.2, 13),
            "ldl_cholesterol": np.clip(ldl, 30, 260),
        }
    )


def observed_labs(latent: pd.DataFrame, measured: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """``latent`` with the values not ``measured`` (name -> bool per row) set to NaN."""
    out = latent.copy()
    for name, keep in measured.items():
        out[name] = np.where(np.asarray(keep, bool), out[name].to_numpy(float), np.nan)
    return out


def lab_tests_measured(ecgs: pd.DataFrame, has_echo: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Which labs are measured at each ECG: echo values iff an echo was done, blood tests at random with
    clinically driven rates (troponin always for an acute infarction, HbA1c mostly in diabetics)."""
    n = len(ecgs)
    acute = ecgs["mi_stage"].to_numpy() == "acute"
    dm = ecgs["diabetes"].to_numpy(bool)
    return {
        "lvef": has_echo,
        "lv_mass_index": has_echo & (rng.random(n) < 0.9),
        "ivs_thickness": has_echo,
        "nt_probnp": rng.random(n) < 0.7,
        "troponin_t": acute | (rng.random(n) < 0.55),
        "potassium": rng.random(n) < 0.9,
        "creatinine": rng.random(n) < 0.9,
        "hemoglobin": rng.random(n) < 0.85,
        "hba1c": rng.random(n) < np.where(dm, 0.8, 0.3),
        "ldl_cholesterol": rng.random(n) < 0.6,
    }


def events_before(
    events: pd.DataFrame,
    patient_ids: Sequence[str],
    times: Sequence[pd.Timestamp],
) -> list[list[dict]]:
    """For each (patient, time), the patient's events up to that time, oldest first, as dicts with
    ``time, days_before_ecg, event_type, code_system, code, description``."""
    by_patient = {pid: g for pid, g in events.groupby("patient_id", sort=False)}
    out: list[list[dict]] = []
    for pid, t in zip(patient_ids, times):
        g = by_patient.get(pid)
        if g is None:
            out.append([])
            continue
        g = g[g["time"] <= t]
        days = ((t - g["time"]).dt.total_seconds() // 86400).astype(int).to_numpy()
        out.append(
            [
                {
                    "time": tm.to_pydatetime(),
                    "days_before_ecg": int(d),
                    "event_type": et,
                    "code_system": cs,
                    "code": c,
                    "description": desc,
                }
                for tm, d, et, cs, c, desc in zip(
                    g["time"], days, g["event_type"], g["code_system"], g["code"], g["description"]
                )
            ]
        )
    return out
