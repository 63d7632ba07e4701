"""The evaluation protocol of an ECG–text model on a cardiomm dataset: zero-shot, linear probing, retrieval.

Protocol (written into every results file):

- zero-shot: test split; each class scored by the cosine of the ECG embedding with the mean of its prompt
  embeddings (prompts from the package's knowledge base); per-class and macro AUROC. A model with a cardiac query
  network (K-MERL) is also scored by it: the class names (knowledge-base entry names) are its queries and the
  sigmoid of its logits the scores ("zero-shot (query network)").
- linear probing: frozen ECG-encoder features (``pooler_output``); logistic regression on 1 / 10 / 100 %
  prevalence-keeping fractions of ``train`` over several seeds; the regularisation is chosen on
  ``validation`` only; macro AUROC on ``test`` reported as mean ± std.
- retrieval: ECG→ECG precision@k (test ECGs query the training ECGs; relevant = shares a positive label of the
  task) and text→ECG median percentile rank of each report's own ECG on the test split (0 best, 50 chance).
- ``crop="windows"`` embeds each record as the median over the feature extractor's test-time windows
  (``num_windows`` crops of ``crop_length`` every ``window_stride`` samples; the EHR paper uses 6 × 5 s,
  stride 1 s).
- what cannot be computed is left out, never the whole evaluation: a class without a positive or without a
  negative ECG in the test split has no AUROC (macro AUROC averages the other classes; the table says how
  many); the linear probe leaves out classes with a single label value in ``train``, chooses C over the
  classes with both values in ``validation``, and is skipped for a task where no such class exists; ECG→ECG
  retrieval is skipped for a task where no test ECG has a positive label. Every left-out item is listed
  (task, protocol, split, label — the class, or none for a whole protocol — and reason) under ``skipped`` in
  the results and warned about.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.ecg_dataset import ECGDatasetInfo, label_column
from .embeddings import embed_ecgs, text_encoder
from .linear_probe import linear_probe
from .metrics import as_multi_hot, classification_metrics, evaluable_classes
from .plots import plot_roc_curves
from .results import results_table, save_results
from .retrieval import median_percentile_rank, precision_at_k
from .zero_shot import query_network_scores, zero_shot_classify

PROTOCOL = __doc__.split("Protocol (written into every results file):", 1)[1].strip()


def _knowledge_entries(info: ECGDatasetInfo, task: str) -> dict[str, Any]:
    """The knowledge-base entry of every label of ``task`` (by SCP code when the dataset maps labels to codes, else
    by the label's name), ``None`` for a label the knowledge base does not know."""
    from ..knowledge import load_knowledge_base

    kb = load_knowledge_base()
    codes: Mapping[str, str] = info.extra.get("scp_codes", {})
    entries = {}
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
        entries[label] = entry
    return entries


def dataset_prompts(info: ECGDatasetInfo, task: str) -> dict[str, list[str]]:
    """Prompts for every label of ``task``, from the knowledge base (:func:`_knowledge_entries`); a label the
    knowledge base does not know is prompted by its own name."""
    from ..knowledge import entry_prompts, load_knowledge_base

    kb = load_knowledge_base()
    return {label: entry_prompts(entry, kb) if entry is not None else [label]
            for label, entry in _knowledge_entries(info, task).items()}


def dataset_class_names(info: ECGDatasetInfo, task: str) -> dict[str, str]:
    """The clinical name of every label of ``task``: its knowledge-base entry's name ("NORM" -> "normal ECG"), or
    the label itself when the knowledge base does not know it. K-MERL's query network takes these as queries."""
    return {label: entry.name if entry is not None else label
            for label, entry in _knowledge_entries(info, task).items()}


@dataclass
class SkippedResult:
    """A result that could not be computed: ``label`` of ``task`` (``None``: the whole protocol) on ``split``."""

    task: str
    protocol: str
    split: str
    label: str | None
    reason: str

    def describe(self) -> str:
        """One line naming the task, protocol, split, class and reason."""
        what = f"class {self.label!r}" if self.label is not None else "the whole protocol"
        return f"task {self.task!r}, {self.protocol}, {self.split} split: {what} left out ({self.reason})"


@dataclass
class EvaluationReport:
    """Results of :func:`evaluate_ecg_text_model`: table rows, the full JSON payload, what was left out
    (``skipped``) and the written files."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    skipped: list[SkippedResult] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def table(self) -> str:
        """The results as a Markdown table."""
        return results_table(self.rows)

    def skipped_text(self) -> str:
        """The left-out results as a Markdown list (empty string when nothing was left out)."""
        if not self.skipped:
            return ""
        lines = [f"Left out ({len(self.skipped)}): what could not be computed on this data"]
        lines += [f"- {item.describe()}" for item in self.skipped]
        return "\n".join(lines)

    def markdown(self) -> str:
        """The table followed by the list of left-out results."""
        return "\n\n".join(part for part in (self.table(), self.skipped_text()) if part)


def _single_value_reason(column: np.ndarray, split: str) -> str:
    if column.max(initial=0) == 0:
        return f"no positive ECG in the {split} split"
    return f"no negative ECG in the {split} split: all {len(column)} are positive"


def _left_out_classes(
    y: np.ndarray, names: Sequence[str], task: str, protocol: str, split: str, consequence: str
) -> list[SkippedResult]:
    """A :class:`SkippedResult` for every class of ``y`` (N, C) that lacks a positive or a negative."""
    ok = evaluable_classes(y) if len(y) else np.zeros(len(names), dtype=bool)
    return [SkippedResult(task, protocol, split, name, f"{_single_value_reason(y[:, j], split)}; {consequence}")
            for j, name in enumerate(names) if not ok[j]]


def _warn_skipped(items: Sequence[SkippedResult]) -> None:
    groups: dict[tuple[str, str, str], list[SkippedResult]] = {}
    for item in items:
        groups.setdefault((item.task, item.protocol, item.split), []).append(item)
    for (task, protocol, split), group in groups.items():
        parts = [f"{item.label!r} ({item.reason})" if item.label is not None else f"everything ({item.reason})"
                 for item in group]
        warnings.warn(f"task {task!r}, {protocol}, {split} split: left out " + "; ".join(parts),
                      UserWarning, stacklevel=3)


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


def _zero_shot_result(report: EvaluationReport, task: str, protocol: str, y_test: np.ndarray, scores: np.ndarray,
                      names: Sequence[str], **what: Any) -> dict[str, Any]:
    """The zero-shot entry of a task's results (per-class and macro AUROC, with ``what`` scored the classes), its
    row added to ``report``."""
    metrics = classification_metrics(y_test, scores, names, warn=False)
    report.rows.append({"task": task, "encoder": "pretrained", "protocol": protocol, "fraction": "",
                        "result": round(float(metrics.macro_auroc), 4), "metric": "macro AUROC",
                        "classes": f"{len(metrics.auroc)} of {len(names)}"})
    return {"macro_auroc": metrics.macro_auroc, "auroc": dict(metrics.auroc), "classes_evaluated": len(metrics.auroc),
            "classes_total": len(names), "left_out": list(metrics.skipped), **what}


def evaluate_ecg_text_model(
    model: Any,
    processor: Any,
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

    ``processor`` is the model's processor (an ``ECGTextProcessor``, as saved with the checkpoint): every ECG and
    every prompt reaches the model through it.

    ``baselines`` maps a name to another ECG encoder (e.g. a randomly initialised one) that gets the same
    linear-probe protocol, so the table compares like with like. Results go to ``out_dir`` as
    ``results.json``, ``results.md`` and one ROC-curve PNG per task with a zero-shot result.

    Nothing that the data cannot support stops the evaluation: such classes and protocols are left out, each
    named in a ``UserWarning``, in ``report.skipped`` and under ``"skipped"`` in the results (per task and in
    total), and the table's ``classes`` column says how many classes each macro AUROC averages.
    """
    tasks = list(tasks or info.tasks)
    report = EvaluationReport(results={"protocol": PROTOCOL, "crop": crop, "tasks": {}})
    rate = info.sampling_rate
    test = dataset["test"]
    leads = info.lead_names
    zs_embeddings = embed_ecgs(model, processor, test, rate, batch_size, crop, progress=progress, lead_names=leads)
    gallery = embed_ecgs(model, processor, dataset["train"], rate, batch_size, crop, progress=progress,
                         lead_names=leads)
    encode_text = text_encoder(model, processor)
    encoders = {"pretrained": _ECGTower(model), **{k: _ECGTower(v) for k, v in (baselines or {}).items()}}
    probe_features = {
        name: {split: embed_ecgs(enc, processor, dataset[split], rate, batch_size, crop, progress=progress,
                                 lead_names=leads)
               for split in ("train", "validation", "test")}
        for name, enc in encoders.items()
    }
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        column = label_column(task)
        names = list(info.tasks[task])
        y_test = as_multi_hot(np.asarray(test[column]), len(names))
        y_train = as_multi_hot(np.asarray(dataset["train"][column]), len(names))
        y_val = as_multi_hot(np.asarray(dataset["validation"][column]), len(names))
        entry: dict[str, Any] = {}
        skipped: list[SkippedResult] = []

        # zero-shot: AUROC of the classes with both label values in the test split (the linear probe's too)
        task_prompts = dict(prompts[task]) if prompts and task in prompts else dataset_prompts(info, task)
        test_left_out = _left_out_classes(y_test, names, task, "zero-shot and linear probe", "test", "no AUROC")
        skipped += test_left_out
        zs = zero_shot_classify(zs_embeddings, task_prompts, encode_text, label_names=names)
        if len(test_left_out) < len(names):
            entry["zero_shot"] = _zero_shot_result(report, task, "zero-shot", y_test, zs.scores, names,
                                                   prompts=task_prompts)
            if out is not None:
                report.files.append(plot_roc_curves(y_test, zs.scores, out / f"roc_zero_shot_{task}.png",
                                                    label_names=names, title=f"zero-shot: {task}"))
            if hasattr(model, "get_query_logits"):  # K-MERL: the class names are the query network's queries
                class_names = dataset_class_names(info, task)
                scores = query_network_scores(model, processor, test, [class_names[n] for n in names], rate,
                                              batch_size, crop, lead_names=leads, progress=progress)
                entry["zero_shot_query_network"] = _zero_shot_result(
                    report, task, "zero-shot (query network)", y_test, scores, names, queries=class_names)
        else:
            skipped.append(SkippedResult(task, "zero-shot", "test", None,
                                         "no class has both a positive and a negative ECG in the test split"))

        # linear probing: classes trainable on train; C chosen on validation; macro AUROC on test
        trainable = evaluable_classes(y_train)
        skipped += _left_out_classes(y_train, names, task, "linear probe", "train", "the probe cannot be trained")
        probe_names = [n for n, keep in zip(names, trainable) if keep]
        probe_skip: SkippedResult | None = None
        if not probe_names:
            probe_skip = SkippedResult(task, "linear probe", "train", None,
                                       "no class has both a positive and a negative ECG in the train split")
        else:
            skipped += _left_out_classes(y_val[:, trainable], probe_names, task, "linear probe", "validation",
                                         "left out of the choice of C")
            if not evaluable_classes(y_val[:, trainable]).any():
                probe_skip = SkippedResult(task, "linear probe", "validation", None,
                                           "no class has both a positive and a negative ECG in the validation "
                                           "split: C cannot be chosen on validation")
            elif not evaluable_classes(y_test[:, trainable]).any():
                probe_skip = SkippedResult(task, "linear probe", "test", None,
                                           "no class has both a positive and a negative ECG in the test split")
        if probe_skip is not None:
            skipped.append(probe_skip)
        else:
            n_probe_test = int(evaluable_classes(y_test[:, trainable]).sum())
            for name, feats in probe_features.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # left-out classes are reported above
                    probe = linear_probe(
                        (feats["train"], y_train[:, trainable], probe_names),
                        (feats["validation"], y_val[:, trainable], probe_names),
                        (feats["test"], y_test[:, trainable], probe_names),
                        fractions=fractions, seeds=seeds,
                    )
                entry[f"linear_probe_{name}"] = probe.to_dict()
                for fraction, stats in probe.summary().items():
                    report.rows.append({"task": task, "encoder": name, "protocol": "linear probe",
                                        "fraction": f"{float(fraction):.0%}",
                                        "result": f"{stats['mean']:.3f} ± {stats['std']:.3f}",
                                        "metric": "macro AUROC (test)", "classes": f"{n_probe_test} of {len(names)}"})

        # ECG→ECG retrieval: test ECGs with a positive label query the training ECGs
        if y_test.any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # k clipped to the gallery size is reported in the key itself
                retrieval = precision_at_k(zs_embeddings, gallery, y_test, y_train, ks=retrieval_ks)
            entry["ecg_to_ecg_precision_at_k"] = retrieval
            for k, value in retrieval.items():
                report.rows.append({"task": task, "encoder": "pretrained", "protocol": f"ECG→ECG precision@{k}",
                                    "fraction": "", "result": f"{value:.3f}", "metric": "precision"})
        else:
            skipped.append(SkippedResult(task, "ECG→ECG retrieval", "test", None,
                                         "no test ECG has a positive label of the task"))
        entry["skipped"] = [asdict(item) for item in skipped]
        report.skipped += skipped
        report.results["tasks"][task] = entry
    reports = [str(r or "") for r in test["report"]] if "report" in test.column_names else []
    if len(reports) >= 2:
        mpr = median_percentile_rank(encode_text(reports), zs_embeddings)
        report.results["text_to_ecg_median_percentile_rank"] = mpr
        report.rows.append({"task": "retrieval", "encoder": "pretrained", "protocol": "text→ECG median percentile",
                            "fraction": "", "result": f"{mpr:.1f}", "metric": "percentile (0 best, 50 chance)"})
    elif reports:
        report.skipped.append(SkippedResult("retrieval", "text→ECG retrieval", "test", None,
                                            "fewer than two test ECGs with a report"))
    _warn_skipped(report.skipped)
    report.results["skipped"] = [asdict(item) for item in report.skipped]
    if out is not None:
        report.files.append(save_results(report.results, out / "results.json"))
        (out / "results.md").write_text(report.markdown() + "\n\nProtocol:\n" + PROTOCOL + "\n")
        report.files.append(out / "results.md")
    return report
