"""Model cards for cardiomm checkpoints, rendered from the templates in ``model_cards/``.

Card metadata goes through ``huggingface_hub.ModelCardData`` (with ``eval_results``), so the Hub shows the
evaluation table in the model page's widget as well as in the text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..tables import format_table

DEFAULT_LIMITATIONS: tuple[str, ...] = (
    "Not validated for clinical use; outputs are research signals, not diagnoses.",
    "Performance depends on the acquisition device, filtering and population; expect shifts on cohorts unlike "
    "the training data (age, sex, ancestry, hospital, device).",
    "Labels of the training data come from reports or machine statements and carry their errors.",
    "Inputs must follow the input format above; the saved feature extractor enforces it.",
)


@dataclass
class TrainingDataEntry:
    """One dataset a checkpoint was trained on, as the card lists it."""

    name: str
    description: str = ""
    license: str = "unknown"
    hub_id: str | None = None


@dataclass
class EvaluationEntry:
    """One evaluation figure: ``metric`` of ``task`` on ``dataset`` (split), e.g. macro AUROC 0.87."""

    task: str
    dataset: str
    metric: str
    value: float
    split: str = "test"
    task_type: str = "ecg-classification"
    metric_type: str = "roc_auc"


@dataclass
class ModelCardInfo:
    """Everything a cardiomm model card says beyond what the config and feature extractor give."""

    model_name: str
    summary: str
    repo_id: str = "path/to/checkpoint"
    intended_use: str = (
        "Research on ECG representation learning: feature extraction, linear probing, fine-tuning and "
        "zero-shot experiments on retrospective data."
    )
    architecture: str = ""
    training_data: list[TrainingDataEntry] = field(default_factory=list)
    training_procedure: str = "See the `training_config.yaml` saved with this checkpoint."
    evaluations: list[EvaluationEntry] = field(default_factory=list)
    eval_protocol: str = ""
    limitations: list[str] = field(default_factory=lambda: list(DEFAULT_LIMITATIONS))
    citation: str = ""
    license: str = "apache-2.0"
    base_model: str | list[str] | None = None
    tags: list[str] = field(default_factory=lambda: ["cardiomm", "ecg", "cardiology"])
    #: further variables of the template (e.g. the source file of a converted checkpoint)
    extra: dict[str, Any] = field(default_factory=dict)


def input_format_from_feature_extractor(feature_extractor: Any) -> dict[str, str]:
    """The input-format table rows (leads, rate, units, normalisation, crop) of an ``ECGFeatureExtractor``."""
    crop = getattr(feature_extractor, "crop_length", None)
    rate = getattr(feature_extractor, "sampling_rate", None)
    crop_text = "full record" if crop is None else f"{crop} samples ({crop / rate:g} s)" if rate else f"{crop} samples"
    return {
        "leads (in this order)": ", ".join(getattr(feature_extractor, "lead_names", []) or []),
        "sampling rate": f"{rate} Hz (other rates are resampled with a polyphase filter)",
        "units": "millivolts (files in other units are converted)",
        "normalisation": str(getattr(feature_extractor, "normalization", "unknown")),
        "crop length": crop_text,
        "missing leads": "zero-filled and flagged in `lead_mask`",
    }


def _template_path(template: str) -> str:
    return str(resources.files("cardiomm.model_cards").joinpath(template))


def render_model_card(info: ModelCardInfo, feature_extractor: Any = None, template: str = "ecg_model.md") -> ModelCard:
    """Render a ``ModelCard`` from ``info`` and the checkpoint's feature extractor."""
    eval_results = [
        EvalResult(
            task_type=e.task_type,
            task_name=e.task,
            dataset_type=e.dataset,
            dataset_name=e.dataset,
            dataset_split=e.split,
            metric_type=e.metric_type,
            metric_name=e.metric,
            metric_value=float(e.value),
        )
        for e in info.evaluations
    ]
    card_data = ModelCardData(
        model_name=info.model_name,
        license=info.license,
        library_name="transformers",
        tags=info.tags,
        base_model=info.base_model,
        datasets=[d.hub_id for d in info.training_data if d.hub_id] or None,
        eval_results=eval_results or None,
    )
    rows = [{"task": e.task, "dataset": e.dataset, "split": e.split, "metric": e.metric, "value": e.value}
            for e in info.evaluations]
    return ModelCard.from_template(
        card_data,
        template_path=_template_path(template),
        model_name=info.model_name,
        summary=info.summary,
        repo_id=info.repo_id,
        intended_use=info.intended_use,
        input_format=input_format_from_feature_extractor(feature_extractor) if feature_extractor is not None else {},
        architecture=info.architecture,
        training_data=info.training_data,
        training_procedure=info.training_procedure,
        eval_rows=rows,
        eval_table=format_table(rows, floatfmt=".4f") if rows else "",
        eval_protocol=info.eval_protocol,
        limitations=info.limitations,
        citation=info.citation or "Please cite the papers of the methods this checkpoint implements.",
        **info.extra,
    )


def write_model_card(
    output_dir: str | os.PathLike, info: ModelCardInfo, feature_extractor: Any = None, template: str = "ecg_model.md"
) -> Path:
    """Render and write ``README.md`` into a checkpoint folder; returns its path."""
    path = Path(output_dir) / "README.md"
    render_model_card(info, feature_extractor, template).save(str(path))
    return path
