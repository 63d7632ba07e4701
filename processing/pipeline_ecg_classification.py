"""``pipeline("ecg-classification")``: the labels of a fine-tuned ECG classifier, with their scores.

The pipeline takes ECGs in any of these forms (one, or a list of them):

- a WFDB or challenge ``.mat`` record path (sampling rate and lead names come from its header);
- a 2-D array or tensor (leads, time) in millivolts, with ``sampling_rate=`` (and ``lead_names=`` when its rows
  are not the feature extractor's leads in its order) given to the call;
- a dict ``{"ecg": array, "sampling_rate": fs, "lead_names": [...]}`` (``lead_names`` optional).

Each ECG is prepared by the checkpoint's feature extractor: its centre window (``crop="center"``, default) or its
test-time windows (``crop="windows"``: ``num_windows`` windows at ``window_stride``, the median of the per-window
scores is the record's score). The output of one ECG is a list of ``{"label", "score"}``, highest score first.

This file ships inside checkpoints (``custom_pipelines`` in ``config.json``), so that
``pipeline("ecg-classification", model=folder, trust_remote_code=True)`` works without cardiomm; it imports only
torch, numpy and transformers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import Pipeline

#: ``crop`` values of the ECG pipelines.
PIPELINE_CROPS: tuple[str, ...] = ("center", "windows")
#: Keys of a dict input.
ECG_INPUT_KEYS: tuple[str, ...] = ("ecg", "sampling_rate", "lead_names")
#: ``function_to_apply`` values of :class:`ECGClassificationPipeline`.
SCORE_FUNCTIONS: tuple[str, ...] = ("sigmoid", "softmax", "none")


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def as_ecg_list(inputs: Any) -> Any:
    """A tuple or a 3-D (batch, leads, time) array as a list of ECGs (the pipeline then answers with a list);
    anything else unchanged."""
    if isinstance(inputs, tuple):
        return list(inputs)
    if isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim == 3:
        return list(inputs)
    return inputs


def resolve_ecg_input(
    inputs: Any, sampling_rate: float | None = None, lead_names: Sequence[str] | None = None
) -> tuple[Any, float | None, list[str] | None]:
    """``(ecg, sampling_rate, lead_names)`` for the feature extractor from one pipeline input.

    A dict's own ``sampling_rate`` / ``lead_names`` win over the call's; a record path takes both from its header
    (the call's are not used for it).

    Raises:
        ValueError: for an array without a sampling rate, a dict without ``ecg`` or with unknown keys, or an
            input that is not a path, array, tensor or dict.
    """
    if isinstance(inputs, Mapping):
        unknown = sorted(set(inputs) - set(ECG_INPUT_KEYS))
        if "ecg" not in inputs or unknown:
            problem = f"unknown keys {unknown}" if unknown else "no 'ecg' key"
            raise ValueError(f"an ECG given as a dict takes the keys {list(ECG_INPUT_KEYS)}; got {problem}")
        ecg = inputs["ecg"]
        if _is_path(ecg):  # the feature extractor refuses a rate or lead names given with a file
            return ecg, inputs.get("sampling_rate"), inputs.get("lead_names")
        sampling_rate = inputs.get("sampling_rate", sampling_rate)
        lead_names = inputs.get("lead_names", lead_names)
    else:
        ecg = inputs
        if _is_path(ecg):
            return ecg, None, None
    if not isinstance(ecg, (np.ndarray, torch.Tensor, list)):
        raise ValueError(
            f"unsupported ECG input of type {type(ecg).__name__}: pass a record path, a (leads, time) array or "
            "tensor with sampling_rate=, or a dict {'ecg': array, 'sampling_rate': fs}"
        )
    if sampling_rate is None:
        raise ValueError(
            "an ECG given as an array needs its sampling rate: pass sampling_rate=FS (Hz) to the pipeline call, "
            "or the input as {'ecg': array, 'sampling_rate': FS}"
        )
    return ecg, sampling_rate, None if lead_names is None else list(lead_names)


def prepare_ecg(
    feature_extractor: Any, inputs: Any, sampling_rate: float | None, lead_names: Sequence[str] | None, crop: str
) -> dict[str, torch.Tensor]:
    """Model inputs of one ECG: ``input_values`` (windows, leads, time), ``lead_mask``, ``time_mask``; one window
    for ``crop="center"``, the feature extractor's ``num_windows`` for ``crop="windows"``."""
    if crop not in PIPELINE_CROPS:
        raise ValueError(f"crop must be one of {PIPELINE_CROPS}, got {crop!r}")
    if feature_extractor is None:
        raise ValueError("this pipeline needs the checkpoint's ECG feature extractor (preprocessor_config.json)")
    ecg, sampling_rate, lead_names = resolve_ecg_input(inputs, sampling_rate, lead_names)
    if isinstance(ecg, list):
        ecg = np.asarray(ecg, dtype=np.float32)
    features = feature_extractor(ecg, sampling_rate=sampling_rate, lead_names=lead_names, crop=crop,
                                 return_tensors="pt")
    model_inputs = {name: features[name] for name in ("input_values", "lead_mask", "time_mask") if name in features}
    if crop == "windows":  # (1, windows, ...) -> (windows, ...)
        model_inputs = {name: value[0] for name, value in model_inputs.items()}
    return model_inputs


def preprocess_parameters(
    sampling_rate: float | None, lead_names: Sequence[str] | None, crop: str | None
) -> dict[str, Any]:
    """The ``preprocess`` keyword arguments of both ECG pipelines: those given, ``crop`` checked."""
    preprocess: dict[str, Any] = {}
    if sampling_rate is not None:
        preprocess["sampling_rate"] = sampling_rate
    if lead_names is not None:
        preprocess["lead_names"] = list(lead_names)
    if crop is not None:
        if crop not in PIPELINE_CROPS:
            raise ValueError(f"crop must be one of {PIPELINE_CROPS}, got {crop!r}")
        preprocess["crop"] = crop
    return preprocess


def window_median(values: torch.Tensor) -> torch.Tensor:
    """Median over the first (window) axis, the mean of the two middle values for an even count (as
    ``numpy.median``)."""
    return torch.quantile(values.double(), 0.5, dim=0)


def ranked_labels(scores: torch.Tensor, labels: Sequence[str], top_k: int | None) -> list[dict[str, Any]]:
    """``[{"label", "score"}]`` of the ``top_k`` highest scores (all when ``None``), highest first."""
    values = scores.double().cpu().numpy()
    order = sorted(range(len(labels)), key=lambda i: -values[i])
    if top_k is not None:
        order = order[:top_k]
    return [{"label": labels[i], "score": float(values[i])} for i in order]


def check_top_k(top_k: Any) -> int | None:
    """``top_k`` checked: ``None`` or a positive integer."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    return top_k


class ECGClassificationPipeline(Pipeline):
    """Labels of a fine-tuned ECG classifier (``ECGEncoderForSequenceClassification``) for each ECG, with scores.

    Scores follow the checkpoint's ``config.problem_type``: the sigmoid of each logit for multi-label
    classification (or a single output), the softmax over labels for single-label classification, the raw output
    for regression; ``function_to_apply`` overrides it. Label names come from ``config.id2label``.

    Call arguments (also accepted when the pipeline is built):
        sampling_rate: sampling rate in Hz of array inputs.
        lead_names: names of the rows of array inputs (default: the feature extractor's leads, in its order).
        crop: ``"center"`` (default) or ``"windows"`` (median of the scores of the test-time windows).
        top_k: number of labels returned per ECG (default: all).
        function_to_apply: ``"sigmoid"``, ``"softmax"`` or ``"none"``.
    """

    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = None
    _load_tokenizer = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_classifier(self.model)
        if self.feature_extractor is None:
            raise ValueError(
                "ecg-classification needs the checkpoint's ECG feature extractor (preprocessor_config.json): save "
                "it next to the model, or pass feature_extractor= to pipeline()"
            )
        self.model.eval()

    def __call__(self, ecg: Any, **kwargs: Any) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Classify one ECG (a list of ``{"label", "score"}``) or a list of ECGs (a list of those lists)."""
        return super().__call__(as_ecg_list(ecg), **kwargs)

    def _sanitize_parameters(
        self, sampling_rate: float | None = None, lead_names: Sequence[str] | None = None, crop: str | None = None,
        top_k: int | None = None, function_to_apply: str | None = None, **kwargs: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        if kwargs:
            raise ValueError(f"unknown arguments of the ecg-classification pipeline: {sorted(kwargs)}")
        preprocess = preprocess_parameters(sampling_rate, lead_names, crop)
        postprocess: dict[str, Any] = {}
        if top_k is not None:
            postprocess["top_k"] = check_top_k(top_k)
        if function_to_apply is not None:
            if function_to_apply not in SCORE_FUNCTIONS:
                raise ValueError(f"function_to_apply must be one of {SCORE_FUNCTIONS}, got {function_to_apply!r}")
            postprocess["function_to_apply"] = function_to_apply
        return preprocess, {}, postprocess

    def preprocess(self, inputs: Any, sampling_rate: float | None = None, lead_names: Sequence[str] | None = None,
                   crop: str = "center") -> dict[str, torch.Tensor]:
        return prepare_ecg(self.feature_extractor, inputs, sampling_rate, lead_names, crop)

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"logits": self.model(**model_inputs, return_dict=True).logits}

    def default_function(self) -> str:
        """The score function of the checkpoint's ``problem_type`` (as transformers' text classification)."""
        config = self.model.config
        if config.problem_type == "regression":
            return "none"
        if config.problem_type == "multi_label_classification" or config.num_labels == 1:
            return "sigmoid"
        return "softmax"

    def postprocess(self, model_outputs: dict[str, torch.Tensor], top_k: int | None = None,
                    function_to_apply: str | None = None) -> list[dict[str, Any]]:
        logits = model_outputs["logits"].double()  # (windows, labels)
        function = function_to_apply or self.default_function()
        if function == "sigmoid":
            scores = torch.sigmoid(logits)
        elif function == "softmax":
            scores = torch.softmax(logits, dim=-1)
        else:
            scores = logits
        id2label = self.model.config.id2label
        labels = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(scores.shape[-1])]
        return ranked_labels(window_median(scores), labels, top_k)


def check_classifier(model: Any) -> None:
    """Raise ``ValueError`` unless ``model`` is a fine-tuned ECG classifier (an ECG encoder with a classification
    head, saved as ``ECGEncoderForSequenceClassification``)."""
    config = getattr(model, "config", None)
    name = type(model).__name__
    if not (hasattr(model, "classifier") and hasattr(model, "ecg_encoder")):
        raise ValueError(
            f"ecg-classification needs a fine-tuned ECG classifier (ECGEncoderForSequenceClassification); this "
            f"checkpoint holds a {name} ({getattr(config, 'model_type', 'unknown type')}). Use "
            "zero-shot-ecg-classification for an ECG-text dual encoder."
        )
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures and name not in architectures:
        raise ValueError(
            f"ecg-classification needs a fine-tuned ECG classifier, but this checkpoint was saved as "
            f"{', '.join(architectures)}: it has no trained classification head (fine-tune it first)"
        )


__all__ = ["ECGClassificationPipeline", "check_classifier"]
