"""``cardiomm quickstart``: the end-to-end main job on the built-in synthetic cohort.

1. build the synthetic cohort (patients, 12-lead ECGs, reports) as a dataset folder;
2. pretrain a tiny MERL (8-conv 1D ResNet + the offline all-MiniLM-L6-v2 text tower) for a few minutes;
3. evaluate zero-shot classification and linear probing on held-out patients, next to a randomly initialised
   encoder;
4. save the checkpoint with its processor and model card, reload it with ``AutoModel.from_pretrained``, and
   check the reloaded model gives the same embeddings;
5. print the results table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .tables import format_table

TINY_CONFIG = "merl_tiny.yaml"


def _card(run: Any, report: Any, steps: int) -> Any:
    from .hub.model_card import EvaluationEntry, ModelCardInfo, TrainingDataEntry

    evals = []
    for row in report.rows:
        if row["encoder"] == "pretrained" and row["protocol"] == "zero-shot":
            evals.append(EvaluationEntry(task=f"zero-shot {row['task']}", dataset="cardiomm-synthetic",
                                         metric="macro AUROC", value=float(row["result"])))
    return ModelCardInfo(
        model_name="cardiomm MERL-tiny (synthetic demo)",
        summary=(
            "A tiny MERL model (ECG–report CLIP with uni-modal alignment): an 8-conv 1D ResNet ECG encoder and "
            "an all-MiniLM-L6-v2 text encoder trained on cardiomm's synthetic cohort. It demonstrates the "
            "pipeline; it has never seen a real ECG."
        ),
        architecture=(
            "ECG tower: resnet1d_8 (8 residual stages, 32→256 channels, ~1M parameters) + MLP projection; "
            "text tower: all-MiniLM-L6-v2 (first 4 layers frozen) with mean pooling + MLP projection; "
            "128-d joint space, learnable temperature."
        ),
        training_data=[TrainingDataEntry(
            "cardiomm synthetic cohort", run.dataset_info.description, run.dataset_info.license or "CC0-1.0")],
        training_procedure=f"{steps} AdamW steps, batch 32, 5-s random crops; see training_config.yaml.",
        evaluations=evals,
        eval_protocol=report.results.get("protocol", ""),
        base_model="sentence-transformers/all-MiniLM-L6-v2",
    )


def run_quickstart(
    out_dir: str | os.PathLike = "outputs/quickstart",
    n_patients: int = 300,
    seed: int = 0,
    max_steps: int | None = None,
    tasks: Sequence[str] = ("rhythm", "conditions"),
    probe_seeds: Sequence[int] = (0, 1, 2),
) -> dict[str, Any]:
    """Run the main job; returns the results (also written under ``out_dir``).

    ``tasks`` are the label tasks evaluated (zero-shot and linear probing), ``probe_seeds`` the subsampling seeds of
    the linear probes; ``max_steps`` overrides the pretraining steps of the tiny config (300).
    """
    from transformers import AutoModel

    from .evaluation.embeddings import embed_ecgs
    from .evaluation.runner import evaluate_ecg_text_model
    from .hub.model_card import write_model_card
    from .modeling.modeling_ecg_encoder import ECGEncoderModel
    from .training.config import load_config
    from .training.pretrain import pretrain

    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    if not tasks or not probe_seeds:
        raise ValueError("the quickstart needs at least one task and one linear-probe seed")
    out = Path(out_dir)
    experiment = load_config(TINY_CONFIG)
    experiment.data["path"] = str(out / "data")
    experiment.data["synthetic"] = {"n_patients": n_patients, "seed": seed}
    experiment.training.output_dir = str(out / "merl_tiny")
    experiment.training.seed = seed
    if max_steps is not None:
        experiment.training.max_steps = max_steps

    print(f"[1/4] synthetic cohort ({n_patients} patients) and tiny MERL pretraining -> {out}")
    result, run = pretrain(experiment)
    model = run.model.eval()
    ckpt = Path(result.output_dir)

    print("[2/4] evaluation on held-out patients (zero-shot, linear probing vs a random encoder, retrieval)")
    from datasets import DatasetDict

    from .data.ecg_dataset import load_ecg_dataset

    dataset, info = load_ecg_dataset(experiment.data["path"])
    dataset = DatasetDict({k: v.with_format("numpy") for k, v in dataset.items()})
    torch.manual_seed(seed)
    random_encoder = ECGEncoderModel(model.config.ecg_config).eval()
    report = evaluate_ecg_text_model(
        model, run.processor, dataset, info, tasks=list(tasks), seeds=tuple(probe_seeds),
        out_dir=out / "evaluation", baselines={"random init": random_encoder},
    )

    print("[3/4] model card, then reload with AutoModel.from_pretrained")
    write_model_card(ckpt, _card(run, report, result.global_step), run.feature_extractor)
    reloaded = AutoModel.from_pretrained(ckpt, trust_remote_code=True).eval()
    probe = dataset["test"].select(range(min(16, len(dataset["test"]))))
    before = embed_ecgs(model, run.processor, probe, info.sampling_rate, progress=False, lead_names=info.lead_names)
    after = embed_ecgs(reloaded, run.processor, probe, info.sampling_rate, progress=False, lead_names=info.lead_names)
    max_diff = float(np.abs(before - after).max())
    report.results["reload_max_abs_diff"] = max_diff

    print("[4/4] results\n")
    print(report.markdown())
    print(format_table([
        {"item": "checkpoint", "value": str(ckpt)},
        {"item": "training steps", "value": result.global_step},
        {"item": "final training loss", "value": round(result.final_loss, 4)},
        {"item": "reloaded model: largest embedding difference", "value": f"{max_diff:.2e}"},
        {"item": "results", "value": str(out / "evaluation" / "results.md")},
    ]))
    if max_diff > 1e-5:
        raise RuntimeError(f"the reloaded checkpoint gives different embeddings (max |Δ| = {max_diff:.2e})")
    return report.results
