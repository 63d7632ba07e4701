"""The synthetic cardiology cohort: cardiomm's built-in data with known answers.

Patients followed over years through encounters, each ECG with its 12-lead waveform (:mod:`.ecg`), free-text
report (:mod:`.reports`), coded EHR events, labs and echo values (:mod:`.ehr`) and optional imaging
(:mod:`.imaging`), assembled by :mod:`.cohort` (:func:`generate_cohort`) and written as a cardiomm dataset folder
(:func:`synthesize`, :func:`save_synthetic_dataset`) or as WFDB records (:func:`write_wfdb`). Everything is
deterministic in ``seed``.
"""

from .cohort import (
    SyntheticCohort,
    build_dataset,
    generate_cohort,
    measure_wave_attributes,
    save_synthetic_dataset,
    synthesize,
    synthetic_dataset_info,
    write_wfdb,
)
from .ecg import (
    RHYTHMS,
    SCP_CODES,
    STANDARD_LEAD_ORDER,
    SYNTHETIC_CONDITIONS,
    WAVE_ATTRIBUTES,
    ECGParameters,
    normalize_conditions,
    render_ecgs,
    sample_ecg_parameters,
    simulate_ecgs,
)
from .ehr import CODE_SYSTEMS, ICD10_TRANSITION, LAB_UNITS
from .reports import mentioned_conditions

__all__ = [
    "CODE_SYSTEMS",
    "ICD10_TRANSITION",
    "LAB_UNITS",
    "RHYTHMS",
    "SCP_CODES",
    "STANDARD_LEAD_ORDER",
    "SYNTHETIC_CONDITIONS",
    "WAVE_ATTRIBUTES",
    "ECGParameters",
    "SyntheticCohort",
    "build_dataset",
    "generate_cohort",
    "measure_wave_attributes",
    "mentioned_conditions",
    "normalize_conditions",
    "render_ecgs",
    "sample_ecg_parameters",
    "save_synthetic_dataset",
    "simulate_ecgs",
    "synthesize",
    "synthetic_dataset_info",
    "write_wfdb",
]
