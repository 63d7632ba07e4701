"""Embedding a dataset's ECGs and a list of texts with a trained model, for every evaluation protocol.

The inputs are prepared by the checkpoint's own processor, as loaded with it (``AutoProcessor.from_pretrained``:
an :class:`~cardiomm.ECGTextProcessor`, :class:`~cardiomm.ECGSEHRProcessor` or
:class:`~cardiomm.SEHRECGTextProcessor`, each called with one modality), or by the
:class:`~cardiomm.ECGFeatureExtractor` of an ECG encoder: the preprocessing of training, ``time_mask`` included.

``crop="windows"`` gives the test-time protocol of the EHR paper: the feature extractor cuts
``num_windows`` windows (default 6 windows of 5 s, stride 1 s), each is embedded, and the median over windows
is the record's embedding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.collators import stack_ecg, with_recorded_leads
from .aggregation import aggregate_windows


def _ecg_embed_fn(model: Any) -> Callable[..., torch.Tensor]:
    if hasattr(model, "get_ecg_features"):  # the projected embedding is the output's pooler_output
        return lambda **inputs: model.get_ecg_features(**inputs).pooler_output
    return lambda input_values, lead_mask=None, time_mask=None: model(
        input_values=input_values, lead_mask=lead_mask, time_mask=time_mask
    ).pooler_output


@torch.inference_mode()
def embed_ecgs(
    model: Any,
    processor: Any,
    dataset: Any,
    sampling_rate: float,
    batch_size: int = 64,
    crop: str = "center",
    normalize: bool = True,
    progress: bool = True,
    lead_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Embed every ECG of ``dataset`` (rows with ``ecg`` and ``lead_mask``): returns (N, D) float32.

    ``processor`` is the model's processor (called as ``processor(ecg=...)``) or its ``ECGFeatureExtractor``; the
    dataset's recorded leads are AND-ed into its ``lead_mask``, and its ``time_mask`` reaches the model.
    ``lead_names`` names the rows of the dataset's ``ecg`` (its ``ECGDatasetInfo.lead_names``): they are matched
    by name to the processor's lead order (a model pretrained in another order, e.g. MERL's aVF before aVL, gets
    its own); ``None`` means the rows already are in the processor's order. Uses
    ``model.get_ecg_features`` when the model has it (dual encoders), else the encoder's ``pooler_output``. With
    ``crop="windows"`` each record's embedding is the median over its windows.
    """
    model.eval()
    embed_ecg = _ecg_embed_fn(model)
    device = next(model.parameters()).device
    chunks = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="embedding ECGs", disable=not progress, leave=False):
        rows = dataset[start:start + batch_size]
        rows = [dict(zip(rows, values)) for values in zip(*rows.values())]
        names = {} if lead_names is None else {"lead_names": list(lead_names)}
        inputs = processor(ecg=stack_ecg(rows), sampling_rate=sampling_rate, crop=crop, return_tensors="pt", **names)
        batch = with_recorded_leads(dict(inputs), rows, lead_names, processor)
        x, mask = batch["input_values"].to(device), batch["lead_mask"].to(device)
        time_mask = batch["time_mask"].to(device)
        embed = partial(embed_ecg, time_mask=time_mask)
        if x.ndim == 4:  # (B, W, L, T): test-time windows, lead_mask (B, W, L) per window or (B, L) per record
            b, w = x.shape[:2]
            mask = mask.flatten(0, 1) if mask.ndim == 3 else mask.repeat_interleave(w, 0)
            embed = partial(embed_ecg, time_mask=time_mask.flatten(0, 1))
            emb = embed(input_values=x.flatten(0, 1), lead_mask=mask).float()
            emb = torch.nn.functional.normalize(emb, dim=-1) if normalize else emb
            chunks.append(aggregate_windows(emb.reshape(b, w, -1).cpu().numpy(), method="median"))
            continue
        emb = embed(input_values=x, lead_mask=mask).float()
        emb = torch.nn.functional.normalize(emb, dim=-1) if normalize else emb
        chunks.append(emb.cpu().numpy())
    out = np.concatenate(chunks).astype(np.float32)
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def text_encoder(
    model: Any, processor: Any, max_length: int | None = None, batch_size: int = 128
) -> Callable[[Sequence[str]], np.ndarray]:
    """A ``encode_text(list[str]) -> (N, D)`` callable (L2-normalised) from a dual encoder and its processor
    (called as ``processor(text=...)``; its tokenizer alone works too). ``max_length`` defaults to the processor's
    (``max_text_length``, as in training)."""

    @torch.inference_mode()
    def encode(texts: Sequence[str]) -> np.ndarray:
        model.eval()
        device = next(model.parameters()).device
        out = []
        for start in range(0, len(texts), batch_size):
            tok = processor(text=list(texts[start:start + batch_size]), padding="longest", truncation=True,
                            max_length=max_length, return_tensors="pt")
            tok = {k: v.to(device) for k, v in tok.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            emb = model.get_text_features(**tok).pooler_output.float()
            out.append(torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
        return np.concatenate(out)

    return encode
