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
- baselines: an ECG-only encoder (e.g. a self-supervised one, or the model's ECG tower architecture with random
  weights) gets the same linear probe (tasks, fractions, seeds, C grid, crop option, splits) on its frozen
  ``pooler_output`` and the same ECG→ECG retrieval on it, each ECG prepared by the baseline's own feature extractor
  (by the model's for the random one); zero-shot and text→ECG retrieval do not apply to a baseline.
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

import copy
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.ecg_dataset import ECGDatasetInfo, label_column
from .embeddings import embed_ecgs, text_encoder
from .linear_probe import linear_probe
from .metrics import as_multi_hot, classification_metrics, evaluable_classes
from .plots import embedding_map_coordinates, plot_embedding_map, plot_roc_curves
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

    def baselines_text(self) -> str:
        """Where each baseline of the table comes from and how its ECGs were prepared, as a Markdown list (empty
        string without baselines)."""
        baselines = self.results.get("baselines") or {}
        if not baselines:
            return ""
        lines = ["Baselines: ECG-only encoders under the same linear probe (tasks, fractions, seeds, C grid, crop, "
                 "splits) and ECG→ECG retrieval as the model's ECG tower; zero-shot and text→ECG retrieval do not "
                 "apply to them"]
        for entry in baselines.values():
            prep = entry["preprocessing"]
            how = f"{entry['feature_extractor']} feature extractor ({prep['sampling_rate']} Hz, crop_length " \
                  f"{prep['crop_length']})"
            differs = entry["preprocessing_differs_from_model"]
            note = f"; its preprocessing differs from the model's: {'; '.join(differs)}" if differs else ""
            lines.append(f"- {entry['label']}: {entry['source']} ({entry['model_class']}), {how}{note}")
        return "\n".join(lines)

    def markdown(self) -> str:
        """The table followed by the baselines' origins and the list of left-out results."""
        parts = (self.table(), self.baselines_text(), self.skipped_text())
        return "\n\n".join(part for part in parts if part)


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


#: The ``--baseline`` value that stands for the model's own ECG tower architecture with random weights.
RANDOM_BASELINE = "random"
#: Seed of the random weights of the :data:`RANDOM_BASELINE`.
RANDOM_BASELINE_SEED = 0
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_FEATURE_EXTRACTOR_FILES = ("preprocessor_config.json", "processor_config.json")
_PREPROCESSING_FIELDS = ("sampling_rate", "crop_length", "normalization", "lead_names")
_WINDOW_FIELDS = ("num_windows", "window_stride")


@dataclass
class ECGBaseline:
    """An ECG-only encoder evaluated next to a model (see the module protocol).

    ``model``: its ``pooler_output`` (or that of its ``ecg_model``) is the representation; ``processor``: its ECG
    feature extractor (``None``: the evaluated model's processor); ``source``: where it comes from, for the results.
    """

    model: Any
    processor: Any = None
    source: str = ""


def parse_baseline_options(values: Sequence[str]) -> dict[str, Path | None]:
    """``--baseline`` values (``NAME=FOLDER`` or ``random``) as ``{name: folder}``, ``None`` for ``random``.

    ``ValueError`` naming the value for one without ``=``, an empty name or folder, the reserved name ``random``
    given a folder, and a name given twice.
    """
    out: dict[str, Path | None] = {}
    for value in values:
        if value == RANDOM_BASELINE:
            name, folder = RANDOM_BASELINE, None
        elif "=" not in value:
            raise ValueError(f"--baseline {value!r}: expected NAME=FOLDER (a name for the table and an ECG encoder "
                             f"checkpoint folder) or {RANDOM_BASELINE!r}")
        else:
            name, _, path = value.partition("=")
            name = name.strip()
            if not name:
                raise ValueError(f"--baseline {value!r}: the name before '=' is empty")
            if name == RANDOM_BASELINE:
                raise ValueError(f"--baseline {value!r}: the name {RANDOM_BASELINE!r} is reserved for the model's ECG "
                                 "tower architecture with random weights (--baseline random); choose another name")
            if not path.strip():
                raise ValueError(f"--baseline {value!r}: no checkpoint folder after '='")
            folder = Path(path)
        if name in out:
            raise ValueError(f"--baseline: the name {name!r} is given twice; every baseline needs its own name")
        out[name] = folder
    return out


def check_baseline_folder(folder: str | os.PathLike) -> Path:
    """``folder`` when it holds a saved ECG encoder (``config.json``, weights, the feature extractor's
    ``preprocessor_config.json``); otherwise ``ValueError`` naming the folder and everything that is missing."""
    root = Path(folder)
    if not root.exists():
        raise ValueError(f"{root}: no such checkpoint folder (--baseline NAME=FOLDER needs a saved ECG encoder)")
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder (--baseline NAME=FOLDER needs a saved ECG encoder's folder)")
    missing = []
    if not (root / "config.json").is_file():
        missing.append("config.json")
    if not any((root / name).is_file() for name in _WEIGHT_FILES):
        missing.append("the weights (model.safetensors or pytorch_model.bin)")
    if not any((root / name).is_file() for name in _FEATURE_EXTRACTOR_FILES):
        missing.append("the ECG feature extractor's preprocessor_config.json")
    if missing:
        raise ValueError(f"{root} is not a saved ECG encoder checkpoint: missing {', '.join(missing)}")
    return root


def _feature_extractor(processor: Any) -> Any:
    """The ECG feature extractor of a processor (the processor itself when it is one)."""
    return getattr(processor, "feature_extractor", None) or processor


def _require_pooler_output(model: Any, feature_extractor: Any, folder: Path) -> None:
    """``ValueError`` naming ``folder`` unless ``model`` gives a ``pooler_output`` for an ECG prepared by
    ``feature_extractor`` (one short random record)."""
    length = max(feature_extractor.crop_length or 0, feature_extractor.min_length)
    ecg = np.random.default_rng(0).standard_normal((1, len(feature_extractor.lead_names), length)).astype(np.float32)
    inputs = feature_extractor(ecg=ecg, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt")
    tower = _ECGTower(model)
    what = f"{folder}: its model ({type(model).__name__}) gives no pooler_output for an ECG"
    try:
        with torch.inference_mode():
            output = tower(input_values=inputs["input_values"], lead_mask=inputs["lead_mask"],
                           time_mask=inputs["time_mask"])
    except Exception as err:  # any failure: the model does not embed an ECG
        raise ValueError(f"{what} ({type(err).__name__}: {err}); a baseline must be an ECG encoder (e.g. model_type "
                         "'ecg_encoder') whose output has pooler_output") from err
    if getattr(output, "pooler_output", None) is None:
        fields = list(output.keys()) if hasattr(output, "keys") else []
        raise ValueError(f"{what} (its output holds {', '.join(fields) or 'no named field'}); a baseline must be an "
                         "ECG encoder (e.g. model_type 'ecg_encoder') whose output has pooler_output")


def load_ecg_baseline(folder: str | os.PathLike, trust_remote_code: bool = False) -> ECGBaseline:
    """An :class:`ECGBaseline` from a saved ECG encoder folder (``AutoModel`` + ``AutoFeatureExtractor``; a whole
    ECG self-supervised or dual-encoder model whose output, or ECG tower's, has ``pooler_output`` works too).

    Without ``trust_remote_code`` no Python file of the folder is imported (see
    :func:`~cardiomm.evaluation.checkpoint.require_known_model_type`). ``ValueError`` naming the folder when it is
    not a checkpoint, its feature extractor is not an ECG one, or its model gives no ``pooler_output``.
    """
    from transformers import AutoFeatureExtractor, AutoModel

    from .checkpoint import check_loadable_model_type

    root = check_baseline_folder(folder)
    check_loadable_model_type(root, trust_remote_code)
    try:
        model = AutoModel.from_pretrained(root, trust_remote_code=trust_remote_code).eval()
        feature_extractor = AutoFeatureExtractor.from_pretrained(root, trust_remote_code=trust_remote_code)
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{root}: cannot load the baseline checkpoint: {err}") from err
    if not all(hasattr(feature_extractor, name) for name in ("lead_names", "sampling_rate", "crop_length")):
        raise ValueError(f"{root}: its feature extractor ({type(feature_extractor).__name__}) is not an ECG "
                         "feature extractor (ECGFeatureExtractor)")
    _require_pooler_output(model, feature_extractor, root)
    return ECGBaseline(model, feature_extractor, source=str(root))


def random_ecg_baseline(model: Any, seed: int = RANDOM_BASELINE_SEED) -> ECGBaseline:
    """The floor every representation must beat: ``model``'s ECG tower architecture (its configuration) with
    random weights drawn from ``seed`` (torch's global generator is left as it was), prepared by the model's own
    processor."""
    tower = _ECGTower(model).model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random_tower = type(tower)(copy.deepcopy(tower.config))
    parameter = next(tower.parameters())
    random_tower = random_tower.to(device=parameter.device, dtype=parameter.dtype).eval()
    backbone = getattr(tower.config, "backbone", None)
    architecture = f" ({backbone})" if backbone else ""
    return ECGBaseline(random_tower, None,
                       source=f"the model's ECG tower architecture{architecture} with random weights (seed {seed})")


def _as_baseline(value: Any) -> ECGBaseline:
    """An :class:`ECGBaseline` from one, a ``(model, processor)`` pair or a model (prepared by the model's
    processor)."""
    if isinstance(value, ECGBaseline):
        return value
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"a baseline is a model or a (model, processor) pair, got {len(value)} items")
        return ECGBaseline(value[0], value[1], source=type(value[0]).__name__)
    return ECGBaseline(value, None, source=type(value).__name__)


def _preprocessing(feature_extractor: Any, crop: str) -> dict[str, Any]:
    """What a feature extractor does to an ECG that decides the embedding: rate, crop, normalisation, leads."""
    fields = _PREPROCESSING_FIELDS + (_WINDOW_FIELDS if crop == "windows" else ())
    values = {name: getattr(feature_extractor, name, None) for name in fields}
    if values["lead_names"] is not None:
        values["lead_names"] = list(values["lead_names"])
    return values


def _linear_probe_result(
    report: EvaluationReport, task: str, encoder: str, features: Mapping[str, np.ndarray],
    labels: Sequence[np.ndarray], trainable: np.ndarray, probe_names: Sequence[str], n_classes: int,
    fractions: Sequence[float], seeds: Sequence[int],
) -> dict[str, Any]:
    """The linear probe of one encoder on a task (the model's ECG tower or a baseline: one code path for all):
    ``features`` per split, ``labels`` the (train, validation, test) multi-hot labels; its rows added to
    ``report`` under ``encoder``."""
    y_train, y_val, y_test = (y[:, trainable] for y in labels)
    n_probe_test = int(evaluable_classes(y_test).sum())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # left-out classes are reported by the caller
        probe = linear_probe(
            (features["train"], y_train, probe_names),
            (features["validation"], y_val, probe_names),
            (features["test"], y_test, probe_names),
            fractions=fractions, seeds=seeds,
        )
    for fraction, stats in probe.summary().items():
        report.rows.append({"task": task, "encoder": encoder, "protocol": "linear probe",
                            "fraction": f"{float(fraction):.0%}",
                            "result": f"{stats['mean']:.3f} ± {stats['std']:.3f}",
                            "metric": "macro AUROC (test)", "classes": f"{n_probe_test} of {n_classes}"})
    return probe.to_dict()


def _ecg_retrieval_result(
    report: EvaluationReport, task: str, encoder: str, queries: np.ndarray, gallery: np.ndarray,
    y_test: np.ndarray, y_train: np.ndarray, ks: Sequence[int],
) -> dict[int, float]:
    """ECG→ECG precision@k of one encoder's test embeddings against its training ones; rows added to ``report``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k clipped to the gallery size is reported in the key itself
        retrieval = precision_at_k(queries, gallery, y_test, y_train, ks=ks)
    for k, value in retrieval.items():
        report.rows.append({"task": task, "encoder": encoder, "protocol": f"ECG→ECG precision@{k}",
                            "fraction": "", "result": f"{value:.3f}", "metric": "precision"})
    return retrieval


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
    baselines: Mapping[str, ECGBaseline | tuple[Any, Any] | Any] | None = None,
    batch_size: int = 64,
    progress: bool = True,
    retrieval_ks: Sequence[int] = (100, 500, 1000),
) -> EvaluationReport:
    """Zero-shot, linear-probe and retrieval evaluation of an ECG–text dual encoder (see the module protocol).

    ``processor`` is the model's processor (an ``ECGTextProcessor``, as saved with the checkpoint): every ECG and
    every prompt reaches the model through it.

    ``baselines`` maps a name to an ECG-only encoder: an :class:`ECGBaseline` (:func:`load_ecg_baseline`,
    :func:`random_ecg_baseline`), a ``(model, feature_extractor)`` pair, or a model alone (prepared by
    ``processor``). Each gets the model's linear probe and ECG→ECG retrieval on its frozen ``pooler_output``, so the
    table compares like with like: rows ``baseline: NAME`` (``(own preprocessing)`` added when its feature
    extractor's rate, crop, normalisation or leads differ from the model's), results under ``"baselines"``. Results
    go to ``out_dir`` as ``results.json``, ``results.md`` (which lists the figures), one ROC-curve PNG per task with
    a zero-shot result and one embedding map per task (``embedding_map_<task>.png``: t-SNE, or UMAP when umap-learn
    is installed, of the test embeddings, coloured by label; see :func:`~cardiomm.evaluation.plots.map_labels`).

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

    def probe_features(encoder: Any, encoder_processor: Any) -> dict[str, np.ndarray]:
        return {split: embed_ecgs(encoder, encoder_processor, dataset[split], rate, batch_size, crop,
                                  progress=progress, lead_names=leads)
                for split in ("train", "validation", "test")}

    model_features = probe_features(_ECGTower(model), processor)
    model_preprocessing = _preprocessing(_feature_extractor(processor), crop)
    baseline_features: dict[str, dict[str, np.ndarray]] = {}
    baseline_results: dict[str, dict[str, Any]] = {}
    for name, value in (baselines or {}).items():
        baseline = _as_baseline(value)
        tower = _ECGTower(baseline.model)
        own = baseline.processor is not None
        baseline_processor = baseline.processor if own else processor
        baseline_features[name] = probe_features(tower, baseline_processor)
        preprocessing = _preprocessing(_feature_extractor(baseline_processor), crop)
        differs = [f"{key} {got!r} (model: {model_preprocessing[key]!r})" for key, got in preprocessing.items()
                   if got != model_preprocessing[key]]
        baseline_results[name] = {
            "label": f"baseline: {name}" + (" (own preprocessing)" if differs else ""),
            "source": baseline.source, "model_class": type(baseline.model).__name__,
            "feature_extractor": "its own" if own else "the model's", "preprocessing": preprocessing,
            "preprocessing_differs_from_model": differs, "tasks": {},
        }
    if baseline_results:
        report.results["baselines"] = baseline_results
    out = Path(out_dir) if out_dir is not None else None
    map_coordinates = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        map_coordinates = embedding_map_coordinates(zs_embeddings)  # one map of the test embeddings for every task
    for task in tasks:
        column = label_column(task)
        names = list(info.tasks[task])
        y_test = as_multi_hot(np.asarray(test[column]), len(names))
        y_train = as_multi_hot(np.asarray(dataset["train"][column]), len(names))
        y_val = as_multi_hot(np.asarray(dataset["validation"][column]), len(names))
        entry: dict[str, Any] = {}
        baseline_tasks = {name: result["tasks"].setdefault(task, {}) for name, result in baseline_results.items()}
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
            probe_args = ((y_train, y_val, y_test), trainable, probe_names, len(names), fractions, seeds)
            entry["linear_probe_pretrained"] = _linear_probe_result(report, task, "pretrained", model_features,
                                                                    *probe_args)
            for name, feats in baseline_features.items():
                baseline_tasks[name]["linear_probe"] = _linear_probe_result(
                    report, task, baseline_results[name]["label"], feats, *probe_args)

        # ECG→ECG retrieval: test ECGs with a positive label query the training ECGs
        if y_test.any():
            entry["ecg_to_ecg_precision_at_k"] = _ecg_retrieval_result(
                report, task, "pretrained", zs_embeddings, gallery, y_test, y_train, retrieval_ks)
            for name, feats in baseline_features.items():
                baseline_tasks[name]["ecg_to_ecg_precision_at_k"] = _ecg_retrieval_result(
                    report, task, baseline_results[name]["label"], feats["test"], feats["train"], y_test, y_train,
                    retrieval_ks)
        else:
            skipped.append(SkippedResult(task, "ECG→ECG retrieval", "test", None,
                                         "no test ECG has a positive label of the task"))
        if map_coordinates is not None:
            report.files.append(plot_embedding_map(zs_embeddings, y_test, out / f"embedding_map_{task}.png",
                                                   label_names=names, coordinates=map_coordinates,
                                                   title=f"test ECG embeddings ({map_coordinates[2]}): {task}"))
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
        figures = "".join(f"\n- {path.name}" for path in report.files if path.suffix == ".png")
        (out / "results.md").write_text(report.markdown() + (f"\n\nFigures:{figures}" if figures else "")
                                        + "\n\nProtocol:\n" + PROTOCOL + "\n")
        report.files.append(out / "results.md")
    return report
