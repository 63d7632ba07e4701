"""Free-text ECG reports for the synthetic cohort, in varied clinical phrasing, and a reader for them.

A report states every label of its ECG (with synonyms, abbreviations, hedges such as "possible" or "consider",
varied order, sometimes in upper case like machine reads), may add pertinent negatives ("No evidence of acute
infarction") only for conditions that are absent, and sometimes a measurement line. A fraction of reports is
incomplete: one label is left out, and the record keeps the list of labels its report mentions. A ventricular-paced
ECG's report says so (:data:`PACING_STATEMENTS`: "Ventricular paced rhythm", "Electronic ventricular pacemaker",
...) next to its atrial rhythm, and makes no statement about the findings pacing hides.

The reader (:func:`mentioned_conditions`) uses the knowledge base's condition vocabulary
(:data:`~cardiomm.knowledge.CONDITION_SYNONYMS`) and negation cues (:data:`~cardiomm.knowledge.NEGATION_CUES`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from ..knowledge.entities import CONDITION_SYNONYMS, NEGATION_CUES
from .ecg import RHYTHMS, SYNTHETIC_CONDITIONS

_POSITIVE: dict[str, tuple[str, ...]] = {
    "normal ECG": (
        "Normal ECG", "Normal electrocardiogram", "Normal tracing", "Within normal limits", "Normal 12-lead ECG"
    ),
    "sinus rhythm": ("Sinus rhythm", "Normal sinus rhythm", "NSR", "Regular sinus rhythm"),
    "sinus bradycardia": ("Sinus bradycardia", "Sinus brady"),
    "sinus tachycardia": ("Sinus tachycardia", "Sinus tach"),
    "atrial fibrillation": ("Atrial fibrillation", "AF", "Afib", "A-fib", "Atrial fib"),
    "atrial flutter": ("Atrial flutter", "Aflutter", "AFL", "Typical atrial flutter"),
    "first degree AV block": (
        "1st degree AV block",
        "First degree AV block",
        "1st degree AVB",
        "First-degree atrioventricular block",
        "Prolonged PR interval",
    ),
    "left bundle branch block": (
        "Left bundle branch block", "LBBB", "Complete left bundle branch block", "Left bundle-branch block"
    ),
    "right bundle branch block": (
        "Right bundle branch block",
        "RBBB",
        "Complete right bundle branch block",
        "Right bundle-branch block",
    ),
    "left ventricular hypertrophy": (
        "Left ventricular hypertrophy",
        "LVH",
        "LVH by voltage criteria",
        "Voltage criteria for left ventricular hypertrophy",
    ),
    "low QRS voltage": (
        "Low QRS voltage", "Low voltage QRS", "Low voltage in limb and precordial leads", "Low QRS voltages"
    ),
    "premature ventricular complexes": (
        "Premature ventricular complexes",
        "PVCs",
        "Occasional PVCs",
        "Ventricular premature beats",
        "Premature ventricular contractions",
        "Ventricular ectopy",
    ),
    "prolonged QT": ("Prolonged QT interval", "QT prolongation", "Long QT", "Prolonged QTc"),
    "left axis deviation": ("Left axis deviation", "Leftward axis", "Left axis deviation"),
    "right axis deviation": ("Right axis deviation", "Rightward axis", "Right axis deviation"),
}
_INFARCT: dict[tuple[str, int], tuple[str, ...]] = {
    ("anterior myocardial infarction", 1): (
        "Acute anterior ST elevation myocardial infarction",
        "Anterior STEMI",
        "ST elevation in V1-V4 consistent with acute anterior infarct",
        "Acute anterior infarct",
    ),
    ("anterior myocardial infarction", 2): (
        "Anterior infarct, age undetermined",
        "Old anterior myocardial infarction",
        "Anteroseptal infarct, age undetermined",
        "Q waves in V1-V3 consistent with prior anterior MI",
    ),
    ("inferior myocardial infarction", 1): (
        "Acute inferior ST elevation myocardial infarction",
        "Inferior STEMI",
        "ST elevation in II, III and aVF consistent with acute inferior infarct",
        "Acute inferior infarct",
    ),
    ("inferior myocardial infarction", 2): (
        "Inferior infarct, age undetermined",
        "Old inferior MI",
        "Q waves in II, III and aVF consistent with prior inferior infarction",
        "Inferior infarction, old",
    ),
}
PACING_STATEMENTS: tuple[str, ...] = (
    "Ventricular paced rhythm",
    "Ventricular pacing",
    "Electronic ventricular pacemaker",
    "Pacemaker rhythm",
    "V-paced rhythm",
    "Demand ventricular pacemaker",
    "Paced rhythm",
    "Pacemaker",
)
"""How a report states ventricular pacing (none of them names a condition of :data:`SYNTHETIC_CONDITIONS`)."""
_PACED_AFTER_RHYTHM: tuple[str, ...] = ("with ventricular pacing", "with a ventricular pacemaker", "with V-pacing")
_PACED_NOTE: tuple[str, ...] = ("Paced ECG, further analysis limited", "Pacemaker spikes present")
_HEDGES: tuple[str, ...] = ("Possible", "Consider", "Probable", "Cannot exclude", "Suggestive of")
_HEDGEABLE = {
    "left ventricular hypertrophy",
    "anterior myocardial infarction",
    "inferior myocardial infarction",
    "prolonged QT",
    "low QRS voltage",
}
_NEGATIVES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("anterior myocardial infarction", "inferior myocardial infarction"), (
        "No evidence of acute infarction",
        "No acute ST elevation",
        "No pathological Q waves",
    )),
    (("premature ventricular complexes",), ("No ectopy", "No ventricular ectopy")),
    (("left ventricular hypertrophy",), ("No LVH by voltage criteria", "No evidence of left ventricular hypertrophy")),
    (("left bundle branch block", "right bundle branch block"), ("No bundle branch block",)),
    (("atrial fibrillation", "atrial flutter"), ("No atrial arrhythmia",)),
)
_NORMAL_FINDINGS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("left axis deviation", "right axis deviation"), ("Normal axis", "Normal QRS axis")),
    (("prolonged QT",), ("Normal QT interval", "QTc normal")),
)


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _statement(label: str, rng: np.random.Generator, mi_phase: int, hedge: bool) -> str:
    if label in ("anterior myocardial infarction", "inferior myocardial infarction"):
        text = _pick(rng, _INFARCT[(label, 1 if mi_phase == 1 else 2)])
    else:
        text = _pick(rng, _POSITIVE[label])
    if hedge and label in _HEDGEABLE and not (label.endswith("infarction") and mi_phase == 1):
        text = f"{_pick(rng, _HEDGES)} {text[0].lower() + text[1:] if not text[:3].isupper() else text}"
    return text


def write_ecg_report(
    labels: Sequence[str],
    rng: np.random.Generator,
    attributes: Mapping[str, float] | None = None,
    mi_phase: int = 2,
    omit: str | None = None,
    flutter_conduction: int = 0,
    paced: bool = False,
) -> str:
    """Write one report that states every label in ``labels`` except ``omit``.

    ``attributes`` (heart_rate, pr_interval, qrs_duration, qt_interval, qtc, qrs_axis) may be quoted in a
    measurement line; ``mi_phase`` (1 acute, 2 old) picks the infarct wording; ``flutter_conduction``
    (2, 3, 4; 0 variable) the flutter wording. Pertinent negatives only name absent conditions. A ``paced``
    report states the pacing (:data:`PACING_STATEMENTS`) and gives no negatives or normal findings, which pacing
    would hide.
    """
    present = [lab for lab in labels if lab != omit]
    absent = set(SYNTHETIC_CONDITIONS) - set(labels)
    rhythm = [lab for lab in present if lab in RHYTHMS]
    rest = [lab for lab in present if lab not in RHYTHMS and lab != "normal ECG"]
    order = rng.permutation(len(rest))
    rest = [rest[i] for i in order]

    statements: list[str] = []
    paced_said = False
    if rhythm:
        r = rhythm[0]
        text = _statement(r, rng, mi_phase, hedge=False)
        if r == "atrial fibrillation" and attributes is not None and rng.random() < 0.5:
            rate = attributes.get("heart_rate", np.nan)
            if rate > 100:
                text += " with rapid ventricular response"
            elif rate >= 60:
                text += " with controlled ventricular response"
        if r == "atrial flutter" and rng.random() < 0.6:
            ratio = "variable" if flutter_conduction == 0 else f"{flutter_conduction}:1"
            text += f" with {ratio} AV conduction"
        # join a second finding into the rhythm statement ("Sinus rhythm with 1st degree AV block")
        if rest and rng.random() < 0.35 and rest[0] in ("first degree AV block", "premature ventricular complexes"):
            text += " with " + _statement(rest.pop(0), rng, mi_phase, hedge=False).lower().replace("pvcs", "PVCs")
        if paced and rng.random() < 0.4:
            text += " " + _pick(rng, _PACED_AFTER_RHYTHM)
            paced_said = True
        statements.append(text)
    for lab in rest:
        statements.append(_statement(lab, rng, mi_phase, hedge=rng.random() < 0.25))
    if "normal ECG" in present:
        statements.append(_statement("normal ECG", rng, mi_phase, hedge=False))
    if rhythm and rng.random() < 0.15 and len(statements) > 1:
        statements.append(statements.pop(0))  # rhythm last, as some readers write it
    if paced:
        if not paced_said:
            statements.insert(0 if rng.random() < 0.6 else 1, _pick(rng, PACING_STATEMENTS))
        if rng.random() < 0.2:
            statements.append(_pick(rng, _PACED_NOTE))
    for conditions, phrases in () if paced else _NEGATIVES:
        if all(c in absent for c in conditions) and rng.random() < 0.25:
            statements.append(_pick(rng, phrases))
    for conditions, phrases in () if paced else _NORMAL_FINDINGS:
        if all(c in absent for c in conditions) and rng.random() < 0.15:
            statements.append(_pick(rng, phrases))
    if "normal ECG" not in labels and rng.random() < 0.4:
        statements.append(_pick(rng, ("Abnormal ECG", "Abnormal electrocardiogram", "Borderline ECG")))
    if attributes is not None and rng.random() < 0.5:
        statements.insert(0 if rng.random() < 0.5 else len(statements), _measurement_line(attributes, rng))
    sep = _pick(rng, (". ", ". ", "; ", ".\n"))
    report = sep.join(statements).strip()
    if not report.endswith("."):
        report += "."
    if rng.random() < 0.15:
        report = report.upper()
    return report


def _measurement_line(a: Mapping[str, float], rng: np.random.Generator) -> str:
    parts = [f"Vent. rate {a['heart_rate']:.0f} bpm"]
    if np.isfinite(a.get("pr_interval", np.nan)):
        parts.append(f"PR interval {a['pr_interval']:.0f} ms")
    parts.append(f"QRS duration {a['qrs_duration']:.0f} ms")
    parts.append(f"QT/QTc {a['qt_interval']:.0f}/{a['qtc']:.0f} ms")
    if rng.random() < 0.6:
        parts.append(f"QRS axis {a['qrs_axis']:.0f}")
    return ", ".join(parts)


_PATTERNS: dict[str, re.Pattern] = {
    label: re.compile(
        r"(?<![\w-])(" + "|".join(re.escape(s) for s in sorted(syn, key=len, reverse=True)) + r")(?![\w-])"
    )
    for label, syn in CONDITION_SYNONYMS.items()
}


def report_sentences(report: str) -> list[str]:
    """Split a report into lower-case statements (on '.', ';' and new lines)."""
    return [s.strip() for s in re.split(r"[.;\n]\s*(?=\D|$)", report.lower()) if s.strip()]


def mentioned_conditions(report: str) -> list[str]:
    """Conditions a report states (hedged statements count; negated sentences are skipped), in label order."""
    found: set[str] = set()
    for sentence in report_sentences(report):
        if sentence.startswith(NEGATION_CUES):
            continue
        for label, pattern in _PATTERNS.items():
            if pattern.search(sentence):
                found.add(label)
    return [c for c in SYNTHETIC_CONDITIONS if c in found]


def write_ecg_reports(
    label_lists: Sequence[Sequence[str]],
    rng: np.random.Generator,
    attributes: Sequence[Mapping[str, float]] | None = None,
    mi_phases: Sequence[int] | None = None,
    flutter_conduction: Sequence[int] | None = None,
    incomplete_fraction: float = 0.1,
    paced: Sequence[bool] | None = None,
) -> tuple[list[str], list[list[str]]]:
    """Reports for many ECGs; returns the reports and, per report, the labels it mentions.

    ``incomplete_fraction`` of the ECGs with at least two labels get a report that leaves one label out
    (never the rhythm); ``paced`` marks ventricular-paced ECGs (their reports always state the pacing).
    """
    reports, mentioned = [], []
    for i, labels in enumerate(label_lists):
        labels = list(labels)
        omit = None
        candidates = [lab for lab in labels if lab not in RHYTHMS]
        if len(labels) >= 2 and candidates and rng.random() < incomplete_fraction:
            omit = _pick(rng, candidates)
        report = write_ecg_report(
            labels,
            rng,
            attributes=None if attributes is None else attributes[i],
            mi_phase=2 if mi_phases is None else int(mi_phases[i]),
            omit=omit,
            flutter_conduction=0 if flutter_conduction is None else int(flutter_conduction[i]),
            paced=paced is not None and bool(paced[i]),
        )
        reports.append(report)
        mentioned.append([lab for lab in labels if lab != omit])
    return reports, mentioned
