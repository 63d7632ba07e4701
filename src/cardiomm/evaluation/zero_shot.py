"""Zero-shot classification (and CLIP-style zero-shot regression) from embeddings and text prompts.

Each class has one or more prompts. Prompt ensembling: every prompt embedding is L2-normalised, the class
embedding is their mean, normalised again. The score of an ECG for a class is the cosine similarity between
the (normalised) ECG embedding and the class embedding.

Classes are matched to label columns by exact name only: the prompts of ``"MI"`` are never used for
``"AMI"`` or ``"IMI"``, and a label without prompts is an error, not a partial match.

A model with a cardiac query network (K-MERL: ``encode_queries`` and ``get_query_logits``) also scores classes
directly: the class names, encoded by its text tower, are the network's queries and the sigmoid of its logits the
scores (:func:`query_network_scores`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from .metrics import ClassificationMetrics, classification_metrics

TextEncoder = Callable[[list[str]], Any]


def l2_normalize(x: Any, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """``x`` divided by its L2 norm along ``axis``."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float64)


def class_text_embeddings(
    class_prompts: Mapping[str, str | Sequence[str]], encode_text: TextEncoder, class_names: Sequence[str] | None = None
) -> tuple[list[str], np.ndarray]:
    """Ensembled, normalised class embeddings ``(C, D)`` and the class names in row order.

    ``encode_text`` maps a list of strings to ``(len, D)`` embeddings (normalised or not; numpy or torch) and
    is called once with all prompts. ``class_names`` picks and orders classes by exact key.
    """
    names = list(class_names) if class_names is not None else list(class_prompts)
    missing = [name for name in names if name not in class_prompts]
    if missing:
        raise KeyError(f"no prompts for classes {missing} (class names are matched exactly)")
    prompt_lists = []
    for name in names:
        prompts = class_prompts[name]
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError(f"class {name!r} has no prompts")
        prompt_lists.append(prompts)
    flat = [p for prompts in prompt_lists for p in prompts]
    embeddings = l2_normalize(_to_numpy(encode_text(flat)))
    if embeddings.shape[0] != len(flat):
        raise ValueError(f"encode_text returned {embeddings.shape[0]} rows for {len(flat)} prompts")
    out, start = [], 0
    for prompts in prompt_lists:
        out.append(embeddings[start : start + len(prompts)].mean(axis=0))
        start += len(prompts)
    return names, l2_normalize(np.stack(out))


def _label_matrix(labels: Any, names: list[str]) -> np.ndarray:
    """Labels as ``(N, C)`` in the order of ``names``: arrays as given, mappings/DataFrames by exact column."""
    if isinstance(labels, Mapping) or hasattr(labels, "columns"):
        columns = list(labels.columns) if hasattr(labels, "columns") else list(labels)
        missing = [n for n in names if n not in columns]
        if missing:
            raise KeyError(f"label columns {missing} not found (columns are matched exactly): {columns}")
        return np.stack([np.asarray(labels[n]) for n in names], axis=1)
    return np.asarray(labels)


@dataclass
class ZeroShotResult:
    """Zero-shot scores and, when labels were given, their metrics.

    ``scores``: ``(N, C)`` cosine similarities, columns in ``label_names`` order;
    ``class_embeddings``: ``(C, D)`` normalised ensembled prompt embeddings.
    """

    label_names: list[str]
    scores: np.ndarray
    class_embeddings: np.ndarray
    metrics: ClassificationMetrics | None = None

    def to_dict(self) -> dict[str, Any]:
        """Metrics as a plain dict (scores and embeddings are left out)."""
        return {"label_names": self.label_names, "metrics": self.metrics.to_dict() if self.metrics else None}


def zero_shot_classify(
    ecg_embeddings: Any,
    class_prompts: Mapping[str, str | Sequence[str]],
    encode_text: TextEncoder,
    labels: Any = None,
    label_names: Sequence[str] | None = None,
) -> ZeroShotResult:
    """Score ECG embeddings ``(N, D)`` against each class's prompts; with ``labels``, compute the metrics.

    ``label_names`` fixes the classes and their order (default: the order of ``class_prompts``). ``labels``
    is ``(N, C)`` in that order, or a mapping / DataFrame whose columns are taken by exact name.
    """
    names, class_emb = class_text_embeddings(class_prompts, encode_text, label_names)
    ecg = l2_normalize(_to_numpy(ecg_embeddings))
    if ecg.ndim != 2 or ecg.shape[1] != class_emb.shape[1]:
        raise ValueError(f"ECG embeddings {ecg.shape} do not match text embeddings {class_emb.shape}")
    scores = ecg @ class_emb.T
    metrics = None
    if labels is not None:
        metrics = classification_metrics(_label_matrix(labels, names), scores, label_names=names)
    return ZeroShotResult(label_names=names, scores=scores, class_embeddings=class_emb, metrics=metrics)


def zero_shot_regression(
    ecg_embeddings: Any,
    value_prompts: Mapping[float, str | Sequence[str]],
    encode_text: TextEncoder,
    logit_scale: float = 100.0,
) -> np.ndarray:
    """Predict a continuous value by a prompt sweep: softmax over values of ``logit_scale`` × cosine score.

    ``value_prompts`` maps candidate values (e.g. ejection fractions 5, 10, ..., 80) to prompts describing
    them; the prediction is the expected value under the softmax (CLERC-style). Returns ``(N,)``.
    """
    values = np.array(list(value_prompts), dtype=np.float64)
    _, class_emb = class_text_embeddings({str(v): p for v, p in value_prompts.items()}, encode_text)
    logits = logit_scale * (l2_normalize(_to_numpy(ecg_embeddings)) @ class_emb.T)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(axis=1, keepdims=True)
    return weights @ values


def _tokenize(processor: Any, texts: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
    tok = processor(text=list(texts), padding="longest", truncation=True, return_tensors="pt")
    return {k: v.to(device) for k, v in tok.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def query_encoder(model: Any, processor: Any, batch_size: int = 128) -> Callable[[Sequence[str]], torch.Tensor]:
    """``encode(texts) -> (Q, text_hidden)`` tensor: the query embeddings of ``model.encode_queries`` for texts
    tokenised by the processor (not normalised: the cardiac query network takes them as they are)."""

    @torch.inference_mode()
    def encode(texts: Sequence[str]) -> torch.Tensor:
        model.eval()
        device = next(model.parameters()).device
        out = [model.encode_queries(**_tokenize(processor, texts[i:i + batch_size], device))
               for i in range(0, len(texts), batch_size)]
        return torch.cat(out).float()

    return encode


class QueryNetworkScorer:
    """A model's cardiac query network as an ECG "embedder" for :func:`~cardiomm.evaluation.embeddings.embed_ecgs`:
    its ``pooler_output`` is the sigmoid of the query logits of every query ``(batch, Q)``, so the ECGs are
    prepared exactly as for embedding."""

    def __init__(self, model: Any, query_embeds: torch.Tensor) -> None:
        self.model = model
        self.query_embeds = query_embeds

    def parameters(self):
        return self.model.parameters()

    def eval(self) -> Any:
        return self.model.eval()

    def get_ecg_features(self, input_values: torch.Tensor, lead_mask: torch.Tensor | None = None,
                         time_mask: torch.Tensor | None = None) -> SimpleNamespace:
        logits = self.model.get_query_logits(input_values, lead_mask=lead_mask, time_mask=time_mask,
                                             query_embeds=self.query_embeds.to(input_values.device))
        return SimpleNamespace(pooler_output=torch.sigmoid(logits.float()))


def query_network_scores(model: Any, processor: Any, dataset: Any, class_names: Sequence[str], sampling_rate: float,
                         batch_size: int = 64, crop: str = "center", lead_names: Sequence[str] | None = None,
                         progress: bool = True) -> np.ndarray:
    """(N, C) probabilities of the ECGs of ``dataset`` for the classes named ``class_names``, by a model's cardiac
    query network (the names are its queries). ``crop="windows"`` takes the median over the test-time windows."""
    from .embeddings import embed_ecgs

    scorer = QueryNetworkScorer(model, query_encoder(model, processor)(list(class_names)))
    return embed_ecgs(scorer, processor, dataset, sampling_rate, batch_size, crop, normalize=False,
                      progress=progress, lead_names=lead_names)
