"""Collators: rows of a cardiomm ECG dataset → model-ready batches, through the checkpoint's own processor.

The waveform column is stored at the dataset's sampling rate in mV with leads in the standard order; the
processor (feature extractor + tokenizer) saved with the model does resampling, normalisation, cropping and
tokenisation, so training and inference share one preprocessing path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def _stack_ecg(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    return np.stack([np.asarray(r["ecg"], dtype=np.float32) for r in rows])


def _dataset_lead_mask(rows: Sequence[Mapping[str, Any]], num_leads: int) -> torch.Tensor:
    if "lead_mask" not in rows[0]:
        return torch.ones(len(rows), num_leads, dtype=torch.bool)
    return torch.as_tensor(np.stack([np.asarray(r["lead_mask"], dtype=bool) for r in rows]))


@dataclass
class ECGCollator:
    """Batches ECG rows through an ``ECGFeatureExtractor``; adds multi-hot ``labels`` from ``label_column``.

    The output ``lead_mask`` is the extractor's (leads with signal) AND the dataset's (leads recorded).
    """

    feature_extractor: Any
    sampling_rate: float
    lead_names: Sequence[str] | None = None
    crop: str = "random"
    label_column: str | None = None

    def ecg_features(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """``input_values`` and ``lead_mask`` of ``rows``."""
        out = self.feature_extractor(
            _stack_ecg(rows), sampling_rate=self.sampling_rate, lead_names=self.lead_names, crop=self.crop,
            return_tensors="pt",
        )
        lead_mask = out["lead_mask"].bool()
        dataset_mask = _dataset_lead_mask(rows, lead_mask.shape[-1])
        if lead_mask.ndim == 3:  # crop="windows": presence per window, (batch, windows, leads)
            dataset_mask = dataset_mask[:, None, :]
        lead_mask = lead_mask & dataset_mask
        return {"input_values": out["input_values"], "lead_mask": lead_mask}

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.ecg_features(rows)
        if self.label_column is not None:
            batch["labels"] = torch.as_tensor(np.stack([np.asarray(r[self.label_column]) for r in rows])).float()
        return batch


@dataclass
class ECGTextCollator(ECGCollator):
    """Batches (ECG, report) rows: the ECG through the feature extractor, the report through the tokenizer,
    truncated at ``max_text_length`` and padded to the longest report of the batch (``padding="longest"``,
    dynamic padding) or to ``max_text_length`` (``padding="max_length"``)."""

    tokenizer: Any = None
    text_column: str = "report"
    max_text_length: int = 256
    padding: str = "longest"

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.ecg_features(rows)
        text = self.tokenizer(
            [str(r[self.text_column] or "") for r in rows], padding=self.padding, truncation=True,
            max_length=self.max_text_length, return_tensors="pt",
        )
        batch.update({k: v for k, v in text.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
        return batch
