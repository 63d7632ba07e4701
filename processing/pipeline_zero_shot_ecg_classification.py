"""``pipeline("zero-shot-ecg-classification")``: score ECGs against any labels with an ECG–text dual encoder.

Each candidate label has one or more prompts: ``hypothesis_template.format(label)`` (default ``"{}"``, the label
itself), or the prompts given per label (``candidate_labels={"AFIB": ["atrial fibrillation", ...], ...}``, a
knowledge base's descriptions). Prompt ensembling: every prompt embedding is L2-normalised, a label's embedding is
the mean of its prompts' embeddings, normalised again. A label's score is the cosine similarity between the
normalised ECG embedding and the label embedding (the zero-shot protocol of ``cardiomm evaluate``). With
``crop="windows"`` the ECG embedding is the median of the normalised embeddings of its test-time windows,
normalised again.

A K-MERL checkpoint can also score with its cardiac query network (``scorer="query_network"``): the label names
are its queries and the sigmoid of its logits the scores.

ECG inputs are those of ``pipeline("ecg-classification")`` (record paths, arrays with ``sampling_rate=``, dicts
``{"ecg": array, "sampling_rate": fs}``, or a list of them). This file ships inside checkpoints
(``custom_pipelines`` in ``config.json``) and imports only torch, numpy, transformers and its sibling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import Pipeline

from .pipeline_ecg_classification import (
    as_ecg_list,
    check_top_k,
    prepare_ecg,
    preprocess_parameters,
    ranked_labels,
    window_median,
)

#: ``scorer`` values of :class:`ZeroShotECGClassificationPipeline`.
ZERO_SHOT_SCORERS: tuple[str, ...] = ("similarity", "query_network")
#: Default prompt of a label: the label itself.
DEFAULT_HYPOTHESIS_TEMPLATE: str = "{}"
TEXT_INPUT_NAMES: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")


def label_prompts(
    candidate_labels: str | Sequence[str] | Mapping[str, str | Sequence[str]],
    hypothesis_template: str = DEFAULT_HYPOTHESIS_TEMPLATE,
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``((label, prompts), ...)`` in the order given: a dict's prompts as they are, each other label through
    ``hypothesis_template``.

    Raises:
        ValueError: for no labels, a repeated label, a label without prompts, or a template without ``{}``.
    """
    if isinstance(candidate_labels, str):
        candidate_labels = [candidate_labels]
    if isinstance(candidate_labels, Mapping):
        pairs = []
        for label, prompts in candidate_labels.items():
            prompts = (prompts,) if isinstance(prompts, str) else tuple(prompts)
            if not prompts or not all(isinstance(p, str) and p for p in prompts):
                raise ValueError(f"label {label!r} needs one or more non-empty prompt strings, got {prompts!r}")
            pairs.append((str(label), prompts))
    else:
        if not isinstance(hypothesis_template, str) or "{}" not in hypothesis_template:
            raise ValueError(f"hypothesis_template must contain '{{}}' for the label, got {hypothesis_template!r}")
        labels = list(candidate_labels)
        if not all(isinstance(label, str) and label for label in labels):
            raise ValueError(f"candidate_labels must be non-empty strings, got {labels!r}")
        pairs = [(label, (hypothesis_template.format(label),)) for label in labels]
    if not pairs:
        raise ValueError("zero-shot-ecg-classification needs candidate_labels (a list of labels or a dict of prompts)")
    names = [label for label, _ in pairs]
    repeated = sorted({label for label in names if names.count(label) > 1})
    if repeated:
        raise ValueError(f"candidate_labels repeats {repeated}")
    return tuple(pairs)


class ZeroShotECGClassificationPipeline(Pipeline):
    """Zero-shot ECG classification with an ECG–text dual encoder (a model with ``get_ecg_features`` and
    ``get_text_features``, e.g. ``ECGTextDualEncoder`` or ``KMERLQueryModel``) and its ``ECGTextProcessor``.

    Call arguments (also accepted when the pipeline is built):
        candidate_labels: a list of labels, or a dict label -> prompt or list of prompts.
        hypothesis_template: prompt of a listed label, ``"{}"`` standing for the label (default ``"{}"``).
        sampling_rate: sampling rate in Hz of array inputs.
        lead_names: names of the rows of array inputs (default: the feature extractor's leads, in its order).
        crop: ``"center"`` (default) or ``"windows"`` (median over the test-time windows).
        top_k: number of labels returned per ECG (default: all).
        scorer: ``"similarity"`` (default: cosine similarity of ECG and label embeddings) or ``"query_network"``
            (K-MERL: sigmoid of the cardiac query network's logits, the label names being its queries).
    """

    _load_processor = None
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._label_cache: tuple[Any, torch.Tensor] | None = None
        super().__init__(*args, **kwargs)
        model = self.model
        if not (hasattr(model, "get_ecg_features") and hasattr(model, "get_text_features")):
            config = getattr(model, "config", None)
            raise ValueError(
                "zero-shot-ecg-classification needs an ECG-text dual encoder (get_ecg_features and "
                f"get_text_features); this checkpoint holds a {type(model).__name__} "
                f"({getattr(config, 'model_type', 'unknown type')}). Use ecg-classification for a fine-tuned "
                "classifier."
            )
        if self.processor is None or not callable(self.processor) or self.feature_extractor is None \
                or self.tokenizer is None:
            raise ValueError(
                "zero-shot-ecg-classification needs the checkpoint's ECG-text processor (processor_config.json with "
                "its feature extractor and tokenizer): save it next to the model, or pass processor= to pipeline()"
            )
        self.model.eval()

    def __call__(self, ecg: Any, **kwargs: Any) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Score one ECG (a list of ``{"label", "score"}``) or a list of ECGs (a list of those lists)."""
        return super().__call__(as_ecg_list(ecg), **kwargs)

    def _sanitize_parameters(
        self, candidate_labels: Any = None, hypothesis_template: str | None = None, sampling_rate: float | None = None,
        lead_names: Sequence[str] | None = None, crop: str | None = None, top_k: int | None = None,
        scorer: str | None = None, **kwargs: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        if kwargs:
            raise ValueError(f"unknown arguments of the zero-shot-ecg-classification pipeline: {sorted(kwargs)}")
        preprocess = preprocess_parameters(sampling_rate, lead_names, crop)
        forward: dict[str, Any] = {}
        if candidate_labels is not None:
            template = DEFAULT_HYPOTHESIS_TEMPLATE if hypothesis_template is None else hypothesis_template
            label_prompts(candidate_labels, template)  # checked now, before any ECG is read
            forward["candidate_labels"] = candidate_labels
        if hypothesis_template is not None:
            forward["hypothesis_template"] = hypothesis_template
        if scorer is not None:
            if scorer not in ZERO_SHOT_SCORERS:
                raise ValueError(f"scorer must be one of {ZERO_SHOT_SCORERS}, got {scorer!r}")
            if scorer == "query_network" and not (hasattr(self.model, "get_query_logits")
                                                  and hasattr(self.model, "encode_queries")):
                raise ValueError(f"scorer='query_network' needs a model with a cardiac query network (K-MERL); "
                                 f"this is a {type(self.model).__name__}")
            forward["scorer"] = scorer
        postprocess: dict[str, Any] = {}
        if top_k is not None:
            postprocess["top_k"] = check_top_k(top_k)
        return preprocess, forward, postprocess

    def preprocess(self, inputs: Any, sampling_rate: float | None = None, lead_names: Sequence[str] | None = None,
                   crop: str = "center") -> dict[str, torch.Tensor]:
        return prepare_ecg(self.feature_extractor, inputs, sampling_rate, lead_names, crop)

    def _tokens(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        tokens = self.processor(text=list(texts), padding="longest", truncation=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in tokens.items() if k in TEXT_INPUT_NAMES}

    def label_embeddings(self, pairs: tuple[tuple[str, tuple[str, ...]], ...], scorer: str) -> torch.Tensor:
        """``(labels, D)`` normalised ensembled prompt embeddings (``"similarity"``) or the query network's
        queries for the label names (``"query_network"``); the last result is kept for the next ECG."""
        key = (pairs, scorer)
        if self._label_cache is not None and self._label_cache[0] == key:
            return self._label_cache[1]
        if scorer == "query_network":
            embeddings = self.model.encode_queries(**self._tokens([label for label, _ in pairs])).float()
        else:
            flat = [prompt for _, prompts in pairs for prompt in prompts]
            prompt_embeddings = self.model.get_text_features(**self._tokens(flat)).pooler_output.double()
            prompt_embeddings = torch.nn.functional.normalize(prompt_embeddings, dim=-1)
            means, start = [], 0
            for _, prompts in pairs:
                means.append(prompt_embeddings[start:start + len(prompts)].mean(dim=0))
                start += len(prompts)
            embeddings = torch.nn.functional.normalize(torch.stack(means), dim=-1)
        self._label_cache = (key, embeddings)
        return embeddings

    def _forward(self, model_inputs: dict[str, torch.Tensor], candidate_labels: Any = None,
                 hypothesis_template: str = DEFAULT_HYPOTHESIS_TEMPLATE, scorer: str = "similarity") -> dict[str, Any]:
        if candidate_labels is None:
            raise ValueError("zero-shot-ecg-classification needs candidate_labels (a list of labels or a dict of "
                             "prompts)")
        pairs = label_prompts(candidate_labels, hypothesis_template)
        labels = self.label_embeddings(pairs, scorer)
        if scorer == "query_network":
            logits = self.model.get_query_logits(**model_inputs, query_embeds=labels)  # (windows, labels)
            scores = window_median(torch.sigmoid(logits.double()))
        else:
            ecg = self.model.get_ecg_features(**model_inputs).pooler_output.float()  # (windows, D)
            ecg = torch.nn.functional.normalize(ecg, dim=-1)
            if ecg.shape[0] > 1:
                ecg = window_median(ecg).float()
            ecg = torch.nn.functional.normalize(ecg.reshape(1, -1).double(), dim=-1)
            scores = (ecg @ labels.T)[0]
        return {"scores": scores, "labels": [label for label, _ in pairs]}

    def postprocess(self, model_outputs: dict[str, Any], top_k: int | None = None) -> list[dict[str, Any]]:
        return ranked_labels(model_outputs["scores"], model_outputs["labels"], top_k)


__all__ = ["ZeroShotECGClassificationPipeline", "label_prompts"]
