"""The evaluation protocol of an ECG–text model on a cardiomm dataset: zero-shot, linear probing, retrieval.

Protocol (written into every results file):

- zero-shot: test split; each class scored by the cosine of the ECG embedding with the mean of its prompt
  embeddings (prompts from the package's knowledge base); per-class and macro AUROC.
- linear probing: frozen ECG-encoder features (``pooler_output``); logistic regression on 1 / 10 / 100 %
  prevalence-keeping fractions of ``train`` over several seeds; the regularisation is chosen on
  ``validation`` only; macro AUROC on ``test`` reported as mean ± std.
- retrieval: ECG→ECG precision@k (test ECGs query the training ECGs; relevant = shares a positive label of the
  task) and text→ECG median percentile rank of each report's own ECG on the test split (0 best, 50 chance).
- ``crop="windows"`` embeds each record as the median over its test-time windows (6 × 5 s, stride 1 s).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.ecg_dataset import ECGDatasetInfo, label_column
from .embeddings import embed_ecgs, text_encoder
from .linear_probe import linear_probe
from .plots import plot_roc_curves
from .results import results_table, save_results
from .retrieval import median_percentile_rank, precision_at_k
from .zero_shot import zero_shot_classify

PROTOCOL = __doc__.split("Protocol (written into every results file):", 1)[1].strip()


def dataset_prompts(info: ECGDatasetInfo, task: str) -> dict[str, list[str]]:
    """Prompts for every label of ``task``, from the knowledge base (by SCP code when the dataset maps labels to
    codes, else by the label's name); a label the knowledge base does not know is prompted by its own name."""
    from ..knowledge import entry_prompts, load_knowledge_base

    kb = load_knowledge_base()
    codes: Mapping[str, str] = info.extra.get("scp_codes", {})
    prompts = {}
    for label in info.tasks[task]:
        entry = None
        for key in (codes.get(label), label):
            if key is None:
                continue
            try:
                entry = kb[key]
            except KeyError:
                entry = kb.find(key)
            if entry is not None:
                break
        prompts[label] = entry_prompts(entry, kb) if entry is not None else [label]
    return prompts


@dataclass
class EvaluationReport:
    """Results of :func:`evaluate_ecg_text_model`: table rows, the full JSON payload and written files."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def table(self) -> str:
        """The results as a Markdown table."""
        return results_table(self.rows)


class _ECGTower:
    """The ECG encoder of a dual encoder, exposed as a plain encoder (``pooler_output``) for linear probing."""

    def __init__(self, model: Any) -> None:
        self.model = model.ecg_model if hasattr(model, "ecg_model") else model

    def parameters(self):
        return self.model.parameters()

    def eval(self):
        return self.model.eval()

    def __call__(self, **kwargs):
        return self.model(**kwargs)


def evaluate_ecg_text_model(
    model: Any,
    feature_extractor: Any,
    tokenizer: Any,
    dataset: Mapping[str, Any],
    info: ECGDatasetInfo,
    tasks: Sequence[str] | None = None,
    out_dir: str | os.PathLike | None = None,
    crop: str = "center",
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seeds: Sequence[int] = (0, 1, 2),
    prompts: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
    baselines: Mapping[str, Any] | None = None,
    batch_size: int = 64,
    progress: bool = True,
    retrieval_ks: Sequence[int] = (100, 500, 1000),
) -> EvaluationReport:
    """Zero-shot, linear-probe and retrieval evaluation of an ECG–text dual encoder (see the module protocol).

    ``baselines`` maps a name to another ECG encoder (e.g. a randomly initialised one) that gets the same
    linear-probe protocol, so the table compares like with like. Results go to ``out_dir`` as
    ``results.json``, ``results.md`` and one ROC-curve PNG per zero-shot task.
    """
    tasks = list(tasks or info.tasks)
    report = EvaluationReport(results={"protocol": PROTOCOL, "crop": crop, "tasks": {}})
    rate = info.sampling_rate
    test = dataset["test"]
    zs_embeddings = embed_ecgs(model, feature_extractor, test, rate, batch_size, crop, progress=progress)
    gallery = embed_ecgs(model, feature_extractor, dataset["train"], rate, batch_size, crop, progress=progress)
    encode_text = text_encoder(model, tokenizer)
    encoders = {"pretrained": _ECGTower(model), **{k: _ECGTower(v) for k, v in (baselines or {}).items()}}
    probe_features = {
        name: {split: embed_ecgs(enc, feature_extractor, dataset[split], rate, batch_size, crop, progress=progress)
               for split in ("train", "validation", "test")}
        for name, enc in encoders.items()
    }
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        column = label_column(task)
        names = info.tasks[task]
        y_test = np.asarray(test[column])
        task_prompts = dict(prompts[task]) if prompts and task in prompts else dataset_prompts(info, task)
        zs = zero_shot_classify(zs_embeddings, task_prompts, encode_text, labels=y_test, label_names=names)
        entry: dict[str, Any] = {"zero_shot": {"macro_auroc": zs.metrics.macro_auroc,
                                               "auroc": dict(zs.metrics.auroc),
                                               "prompts": task_prompts}}
        report.rows.append({"task": task, "encoder": "pretrained", "protocol": "zero-shot", "fraction": "",
                            "result": round(float(zs.metrics.macro_auroc), 4), "metric": "macro AUROC"})
        if out is not None:
            report.files.append(plot_roc_curves(y_test, zs.scores, out / f"roc_zero_shot_{task}.png",
                                                label_names=zs.metrics.label_names, title=f"zero-shot: {task}"))
        for name, feats in probe_features.items():
            probe = linear_probe(
                (feats["train"], np.asarray(dataset["train"][column]), names),
                (feats["validation"], np.asarray(dataset["validation"][column]), names),
                (feats["test"], y_test, names),
                fractions=fractions, seeds=seeds,
            )
            summary = probe.summary()
            entry[f"linear_probe_{name}"] = probe.to_dict()
            for fraction, stats in summary.items():
                report.rows.append({"task": task, "encoder": name, "protocol": "linear probe",
                                    "fraction": f"{float(fraction):.0%}",
                                    "result": f"{stats['mean']:.3f} ± {stats['std']:.3f}",
                                    "metric": "macro AUROC (test)"})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # k clipped to the gallery size is reported in the key itself
            retrieval = precision_at_k(zs_embeddings, gallery, y_test, np.asarray(dataset["train"][column]),
                                       ks=retrieval_ks)
        entry["ecg_to_ecg_precision_at_k"] = retrieval
        for k, value in retrieval.items():
            report.rows.append({"task": task, "encoder": "pretrained", "protocol": f"ECG→ECG precision@{k}",
                                "fraction": "", "result": f"{value:.3f}", "metric": "precision"})
        report.results["tasks"][task] = entry
    reports = [str(r or "") for r in test["report"]] if "report" in test.column_names else []
    if reports:
        mpr = median_percentile_rank(encode_text(reports), zs_embeddings)
        report.results["text_to_ecg_median_percentile_rank"] = mpr
        report.rows.append({"task": "retrieval", "encoder": "pretrained", "protocol": "text→ECG median percentile",
                            "fraction": "", "result": f"{mpr:.1f}", "metric": "percentile (0 best, 50 chance)"})
    if out is not None:
        report.files.append(save_results(report.results, out / "results.json"))
        (out / "results.md").write_text(report.table() + "\n\nProtocol:\n" + PROTOCOL + "\n")
        report.files.append(out / "results.md")
    return report
