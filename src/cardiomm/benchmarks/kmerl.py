"""Speed of a K-MERL pretraining step next to MERL's with the same ViT size, measured in one run.

Each variant times full optimiser steps (forward, backward, AdamW) of the model on one in-memory batch of
``batch_size`` ECG–report pairs (12 leads x ``length`` samples). The text tower is frozen whole, as both papers'
released settings train it, so the reports enter as precomputed pooled features (``text_pooler_output``, what
cardiomm's text-feature cache feeds) and the step is the ECG side: tower, projections, losses and, for K-MERL, the
cardiac query network over ``num_entities`` entity queries (277 in the paper; their text-tower embeddings are
computed once, in the warm-up). Data loading is not included (see ``cardiomm bench pretraining`` for the whole
training path).

Variants:

* ``merl_vit_tiny`` -- MERL as published: MERL's ViT-tiny (one Conv1d patch of 50 samples over all leads, so
  ``length / 50`` tokens), CLIP + uni-modal alignment on two linear views;
* ``merl_lead_vit_tiny`` -- the MERL objective on K-MERL's lead-aware ViT-tiny with every token
  (12 x ``length / 100`` tokens): the encoder K-MERL uses, without its masking;
* ``kmerl_vit_tiny`` -- K-MERL: lead-aware ViT-tiny with dynamic lead masking (9-11 of 12 leads masked) and 25 %
  segment masking (masked tokens dropped before the encoder), CLIP + the query network's BCE;
* ``kmerl_vit_tiny_unmasked`` -- K-MERL with its masking off (what the masking saves).

``pairs_per_s`` is batch size / median step time; ``vs_<variant>`` columns are ratios to the other variants of the
same precision, timed in the same run with rounds alternating between variants. ``ecg_tokens`` is the mean
number of tokens the ECG tower runs per ECG. Run ``cardiomm bench kmerl --help``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from transformers import BertConfig

VARIANTS: tuple[str, ...] = ("merl_vit_tiny", "merl_lead_vit_tiny", "kmerl_vit_tiny", "kmerl_vit_tiny_unmasked")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")

# BERT-base width (Med-CPT's) with one layer: the frozen text tower is only run once, for the entity queries
_TEXT = dict(hidden_size=768, num_hidden_layers=1, num_attention_heads=12, intermediate_size=3072)


def build_variant(name: str, length: int = 5000, num_entities: int = 277, seed: int = 0) -> Any:
    """The model of a variant (random weights, training mode)."""
    from ..modeling.configuration_ecg_encoder import ECGEncoderConfig
    from ..modeling.configuration_ecg_text import ECGTextDualEncoderConfig
    from ..modeling.configuration_kmerl import KMERLQueryModelConfig
    from ..modeling.modeling_ecg_text import ECGTextDualEncoder
    from ..modeling.modeling_kmerl import KMERLQueryModel

    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {VARIANTS}")
    torch.manual_seed(seed)
    text = BertConfig(**_TEXT)
    common = dict(text_config=text, projection_dim=256, projection_hidden_size=256, freeze_text_layers=-1)
    if name.startswith("merl"):
        backbone = "merl_vit_tiny" if name == "merl_vit_tiny" else "vit_tiny"
        config = ECGTextDualEncoderConfig(ecg_config=ECGEncoderConfig(backbone=backbone, max_length=length),
                                          unimodal_alignment=True, uma_projection=True, **common)
        return ECGTextDualEncoder(config).train()
    config = KMERLQueryModelConfig(ecg_config=ECGEncoderConfig(backbone="vit_tiny", max_length=length),
                                   lead_masking=name == "kmerl_vit_tiny", query_hidden_size=256,
                                   entity_names=[f"entity {i}" for i in range(num_entities)], entity_max_length=8,
                                   **common)
    model = KMERLQueryModel(config).train()
    generator = torch.Generator().manual_seed(seed)
    model.entity_input_ids = torch.randint(1000, text.vocab_size, (num_entities, 8), generator=generator)
    model.entity_attention_mask = torch.ones(num_entities, 8, dtype=torch.long)
    return model


def _batch(model: Any, batch_size: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    batch = {"input_values": torch.randn(batch_size, 12, length, generator=generator),
             "text_pooler_output": torch.randn(batch_size, 768, generator=generator)}
    if getattr(model.config, "entity_names", None):
        batch["entity_labels"] = (torch.rand(batch_size, len(model.config.entity_names), generator=generator)
                                  < 0.05).float()
    return batch


def time_variant(model: Any, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor], precision: str,
                 steps: int) -> tuple[list[float], float, float]:
    """Step times (s) of ``steps`` optimiser steps, the mean ECG tokens per ECG and the last loss."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    times, tokens, loss = [], [], float("nan")
    for _ in range(steps):
        start = time.perf_counter()
        with autocast:
            out = model(**batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        tokens.append(out.ecg_model_output.last_hidden_state.shape[1] if out.ecg_model_output.token_mask is None
                      else out.ecg_model_output.token_mask.sum(dim=1).float().mean().item())
        loss = float(out.loss.detach())
    return times, statistics.mean(tokens), loss


def benchmark_kmerl(
    variants: Sequence[str] = VARIANTS,
    precisions: Sequence[str] = PRECISIONS,
    batch_size: int = 32,
    length: int = 5000,
    num_entities: int = 277,
    steps: int = 3,
    warmup: int = 1,
    rounds: int = 2,
    num_threads: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of the benchmark table (see the module docstring), one per variant and precision."""
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    rows = []
    for precision in precisions:
        setups = {}
        for name in variants:
            model = build_variant(name, length, num_entities)
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            batch = _batch(model, batch_size, length, seed=1)
            time_variant(model, optimizer, batch, precision, warmup)
            setups[name] = (model, optimizer, batch)
        times: dict[str, list[float]] = {name: [] for name in variants}
        info: dict[str, tuple[float, float]] = {}
        for _ in range(rounds):
            for name, (model, optimizer, batch) in setups.items():
                step_times, tokens, loss = time_variant(model, optimizer, batch, precision, steps)
                times[name] += step_times
                info[name] = (tokens, loss)
        speed = {name: batch_size / statistics.median(t) for name, t in times.items()}
        for name in variants:
            row = {"variant": name, "precision": precision, "batch": batch_size, "length": length,
                   "ecg_tokens": round(info[name][0], 1), "step_s": round(statistics.median(times[name]), 3),
                   "pairs_per_s": round(speed[name], 2)}
            row.update({f"vs_{other}": round(speed[name] / speed[other], 2) for other in variants})
            row["final_loss"] = round(info[name][1], 3)
            rows.append(row)
        del setups
    return rows


__all__ = ["VARIANTS", "PRECISIONS", "benchmark_kmerl", "build_variant", "time_variant"]
