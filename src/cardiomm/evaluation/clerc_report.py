"""The evaluation protocol of a CLERC model on a cardiomm dataset with imaging studies (``cardiomm evaluate``).

Protocol (written into every results file):

- embeddings: every sample of the train, validation and test splits of every modality (ECG rows and their
  reports, each echo / angiogram / chest X-ray sample, each imaging study's report once), through the checkpoint's
  processor at its evaluation settings (the centre ECG window, the deterministic video clip and image crop),
  L2-normalised.
- cross-modal retrieval (test split): for every ordered pair of distinct modalities, each patient having both
  contributes the pair of samples closest in time; each query ranks the other modality's samples of those
  patients by cosine similarity; the cell is the median percentile rank of the true match (0 best, 50 chance;
  left empty with fewer than 2 patients).
- zero-shot (test split): the prompt tasks (``cardiomm/knowledge/clerc_prompts``); binary: the cosine with the
  averaged prompt embedding (AUROC); regression: the expected value of the softmax over a prompt sweep at the
  model's learned temperature (R², Pearson r). Predictions are averaged over the samples of each study.
- linear probing: logistic (binary) or ridge (regression) regression on standardised training-split embeddings;
  the regularisation is chosen by the study-level metric on the validation split; the test split scores it.
- cross-modal prediction: the same linear probing, where each sample of the predicting modality takes the label
  of the temporally closest sample of the label's modality of the same patient (age and sex from the ECG rows).
- what the data cannot support (too few patients, a label with a single value in a split, a modality without
  samples) is left empty and listed with the reason; the evaluation itself always completes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..modeling.configuration_clerc import CLERC_MODALITIES
from .checkpoint import checkpoint_model_type
from .cross_modal_retrieval import MODALITY_TITLES, plot_retrieval_heatmap, retrieval_cells, retrieval_matrix
from .multimodal_embeddings import DIAGNOSTIC_MODALITIES, embed_clerc_dataset, load_clerc_dataset, report_text_encoder
from .multimodal_probe import ProbeResult, cross_modal_table, probe_label
from .multimodal_zero_shot import ZeroShotTaskResult, evaluate_zero_shot_task, load_prompt_tasks
from .results import results_table, save_results

PROTOCOL = __doc__.split("Protocol (written into every results file):", 1)[1].strip()
CLERC_MODEL_TYPE = "clerc_multi_encoder"
HEATMAP_FILE = "retrieval_heatmap.png"


def is_clerc_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether ``folder/config.json`` names a CLERC model (``False`` for a missing or unreadable folder)."""
    try:
        return checkpoint_model_type(folder) == CLERC_MODEL_TYPE
    except (OSError, ValueError):
        return False


def load_clerc_checkpoint(folder: str | os.PathLike, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """``(model, processor)`` of a CLERC checkpoint folder saved with its :class:`~cardiomm.CLERCProcessor`; the
    model in eval mode. ``ValueError`` naming the folder when it is not one."""
    from transformers import AutoModel, AutoProcessor

    root = Path(folder)
    model_type = checkpoint_model_type(root)
    if model_type != CLERC_MODEL_TYPE:
        raise ValueError(f"{root / 'config.json'}: model type {model_type!r} is not a CLERC model "
                         f"({CLERC_MODEL_TYPE!r})")
    try:
        model = AutoModel.from_pretrained(root, trust_remote_code=trust_remote_code).eval()
        processor = AutoProcessor.from_pretrained(root, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ValueError(f"{root}: cannot load the checkpoint: {err}") from err
    parts = ("feature_extractor", "echo_video_processor", "angiogram_video_processor", "chest_xray_image_processor",
             "tokenizer")
    missing = [p for p in parts if getattr(processor, p, None) is None]
    if not hasattr(model, "get_modality_features") or missing:
        raise ValueError(f"{root}: a CLERC evaluation needs the model saved with its CLERCProcessor; this folder "
                         f"holds {type(model).__name__} with {type(processor).__name__}")
    return model, processor


def inverse_temperature(model: Any) -> float:
    """The model's learned inverse temperature ``exp(logit_scale)`` (as its loss uses it, capped at 100)."""
    with torch.no_grad():
        if hasattr(model, "scale"):
            return float(model.scale().reshape(-1)[0])
        return float(model.logit_scale.exp().reshape(-1)[0])


def _cell(value: Any, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


@dataclass
class CLERCEvaluationReport:
    """Results of :func:`evaluate_clerc_model`: the retrieval matrix, the zero-shot and linear-probe results of
    the prompt tasks, the cross-modal table, the JSON payload and the written files."""

    retrieval: pd.DataFrame
    zero_shot: list[ZeroShotTaskResult]
    linear_probe: dict[str, ProbeResult]
    cross_modal: pd.DataFrame
    cross_modal_cells: list[dict[str, Any]]
    results: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def retrieval_markdown(self) -> str:
        """The retrieval matrix as a Markdown table (cells: median percentile rank and patients)."""
        patients = self.retrieval.attrs.get("patients", {})
        rows = []
        for query in self.retrieval.index:
            row = {"query \\ retrieved": MODALITY_TITLES.get(query, query)}
            for retrieved in self.retrieval.columns:
                value = self.retrieval.loc[query, retrieved]
                n = patients.get(query, {}).get(retrieved, 0)
                row[MODALITY_TITLES.get(retrieved, retrieved)] = (
                    "" if query == retrieved else f"{_cell(float(value), 1)} (n={n})")
            rows.append(row)
        return results_table(rows)

    def prediction_markdown(self) -> str:
        """Zero-shot and linear probing per prompt task (the paper's Table 4) as a Markdown table."""
        rows = []
        for result in self.zero_shot:
            probe = self.linear_probe.get(result.task)
            rows.append({"modality": result.modality, "task": result.name, "metric": result.metric,
                         "zero-shot": _cell(result.value), "linear probing": _cell(probe.value if probe else None),
                         "test studies": result.n_studies})
        return results_table(rows)

    def cross_modal_markdown(self) -> str:
        """The cross-modal linear-probing table (the paper's Table 5) as a Markdown table."""
        rows = [{"task": task, **{MODALITY_TITLES.get(m, m): _cell(float(self.cross_modal.loc[task, m]))
                                  for m in self.cross_modal.columns}}
                for task in self.cross_modal.index]
        return results_table(rows)

    def left_out(self) -> list[str]:
        """One line per result that could not be computed, with the reason."""
        lines = []
        for result in self.zero_shot:
            if result.reason:
                lines.append(f"zero-shot {result.task}: {result.reason}")
        for task, probe in self.linear_probe.items():
            if probe.reason:
                lines.append(f"linear probing {task}: {probe.reason}")
        for cell in self.cross_modal_cells:
            if cell["reason"]:
                lines.append(f"cross-modal {cell['task']} from {cell['modality']}: {cell['reason']}")
        return lines

    def markdown(self) -> str:
        """Every table, then the list of what was left out."""
        split = self.results.get("splits", {}).get("evaluation", "test")
        parts = [
            f"## Cross-modal retrieval ({split} split): median percentile rank of the true match "
            "(0 best, 50 chance; – fewer than 2 patients)", self.retrieval_markdown(),
            f"## Zero-shot ({split} split) and linear probing (metric on the {split} split)",
            self.prediction_markdown(),
            "## Cross-modal prediction (linear probing; rows: label, columns: predicting modality)",
            self.cross_modal_markdown(),
        ]
        left_out = self.left_out()
        if left_out:
            parts.append(f"Left out ({len(left_out)}):\n" + "\n".join(f"- {line}" for line in left_out))
        return "\n\n".join(parts)


def _counts(tables: dict[str, dict[str, pd.DataFrame]]) -> dict[str, dict[str, dict[str, int]]]:
    return {split: {m: {"samples": len(t), "studies": int(t["study_id"].nunique()) if len(t) else 0,
                        "patients": int(t["patient_id"].nunique()) if len(t) else 0}
                    for m, t in by_modality.items()}
            for split, by_modality in tables.items()}


def evaluate_clerc_model(
    model: Any,
    processor: Any,
    dataset_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    tasks: Sequence[str] | None = None,
    prompts_dir: str | os.PathLike | None = None,
    train_split: str = "train",
    validation_split: str = "validation",
    eval_split: str = "test",
    batch_size: int = 16,
    progress: bool = True,
) -> CLERCEvaluationReport:
    """Cross-modal retrieval, zero-shot, linear probing and cross-modal prediction of a CLERC model (see the
    module protocol) on ``dataset_dir`` (an ECG dataset folder with ``imaging/studies.parquet``).

    ``tasks`` selects prompt tasks by name (default: every file of ``prompts_dir``, by default the package's).
    With ``out_dir``, writes ``results.json``, ``results.md`` and ``retrieval_heatmap.png`` there.
    """
    prompt_tasks = load_prompt_tasks(prompts_dir, tasks)  # a bad prompt file fails before any embedding
    dataset, info, studies = load_clerc_dataset(dataset_dir)
    if eval_split not in dataset and (studies is None or not (studies["split"] == eval_split).any()):
        raise ValueError(f"{dataset_dir}: no {eval_split!r} split to evaluate (ECG splits: {sorted(dataset)})")
    splits = {"train": train_split, "validation": validation_split, "evaluation": eval_split}
    model.eval()
    tables = embed_clerc_dataset(model, processor, dataset, info, studies,
                                 splits=list(dict.fromkeys(splits.values())), batch_size=batch_size,
                                 progress=progress)
    evaluation = tables[eval_split]
    matrix = retrieval_matrix(evaluation, list(CLERC_MODALITIES))
    scale = inverse_temperature(model)
    encode_text = report_text_encoder(model, processor)
    zero_shot = [evaluate_zero_shot_task(task, evaluation, encode_text, scale) for task in prompt_tasks.values()]
    probe_splits = (train_split, validation_split, eval_split)
    linear = {name: probe_label(tables, task.modality, task.label, task.kind, splits=probe_splits)
              for name, task in prompt_tasks.items()}
    cross, cells = cross_modal_table(tables, modalities=DIAGNOSTIC_MODALITIES, splits=probe_splits)
    report = CLERCEvaluationReport(retrieval=matrix, zero_shot=zero_shot, linear_probe=linear, cross_modal=cross,
                                   cross_modal_cells=cells)
    report.results = {
        "protocol": PROTOCOL,
        "model_type": CLERC_MODEL_TYPE,
        "splits": splits,
        "inverse_temperature": scale,
        "counts": _counts(tables),
        "retrieval": {
            "metric": "median percentile rank of the true match (0 best, 50 chance)",
            "matrix": {q: {r: (None if q == r or pd.isna(v) else float(v)) for r, v in row.items()}
                       for q, row in matrix.to_dict(orient="index").items()},
            "patients": matrix.attrs["patients"],
            "cells": retrieval_cells(matrix),
        },
        "zero_shot": {r.task: r.to_dict() for r in zero_shot},
        "linear_probe": {name: {"modality": prompt_tasks[name].modality, "label": prompt_tasks[name].label,
                                **probe.to_dict()} for name, probe in linear.items()},
        "cross_modal": {
            "table": {task: {m: (None if pd.isna(v) else float(v)) for m, v in row.items()}
                      for task, row in cross.to_dict(orient="index").items()},
            "cells": cells,
        },
        "left_out": report.left_out(),
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report.files.append(save_results(report.results, out / "results.json"))
        (out / "results.md").write_text(report.markdown() + "\n\nProtocol:\n" + PROTOCOL + "\n", encoding="utf-8")
        report.files.append(out / "results.md")
        report.files.append(plot_retrieval_heatmap(matrix, out / HEATMAP_FILE))
    return report


def evaluate_clerc_checkpoint(
    folder: str | os.PathLike, dataset_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
    trust_remote_code: bool = False, **options: Any,
) -> CLERCEvaluationReport:
    """:func:`evaluate_clerc_model` of the checkpoint in ``folder`` (:func:`load_clerc_checkpoint`); the prompt
    files are checked before the model is loaded."""
    load_prompt_tasks(options.get("prompts_dir"), options.get("tasks"))
    model, processor = load_clerc_checkpoint(folder, trust_remote_code=trust_remote_code)
    return evaluate_clerc_model(model, processor, dataset_dir, out_dir=out_dir, **options)


__all__ = [
    "CLERCEvaluationReport",
    "CLERC_MODEL_TYPE",
    "PROTOCOL",
    "evaluate_clerc_checkpoint",
    "evaluate_clerc_model",
    "inverse_temperature",
    "is_clerc_checkpoint",
    "load_clerc_checkpoint",
]
