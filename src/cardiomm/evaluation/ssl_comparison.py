"""Table 1 of the "good views" paper: ECG self-supervised strategies compared by linear evaluation on 4 rhythm classes.

Protocol (what :func:`compare_ssl_strategies` does, exactly):

1. Every experiment (an ``ecg_self_supervised`` experiment file, e.g. the shipped ``ssl_<strategy>_tiny``) must
   read the same dataset folder (``data.path``) and the same train / validation / test splits. Each is pretrained
   once per seed with ``training.seed = seed`` into ``<out_dir>/runs/<experiment>/seed<seed>``; the run exports its
   ECG encoder to ``encoder/`` (a plain ``ECGEncoderModel`` with its ``ECGFeatureExtractor``). A run whose
   ``encoder/`` exists is reused; a run stopped half way resumes from its newest intact checkpoint.
2. The downstream task has 4 rhythm classes (:func:`rhythm_classes`): SR, SB, GSVT and AFIB, from the dataset's
   ``chapman_rhythm`` task (Chapman-Shaoxing) or, on the synthetic cohort, its ``rhythm`` task merged as SR = sinus
   rhythm, SB = sinus bradycardia, GSVT = sinus tachycardia, AFIB = atrial fibrillation + atrial flutter. ECGs with
   none of the four classes (or, on real data, more than one) are left out of every split and counted.
3. Each frozen encoder embeds the ECGs of the three splits (its own feature extractor, centre crop, the pooled
   representation, not L2-normalised). The linear evaluation is
   :func:`~cardiomm.evaluation.linear_probe.linear_probe` on the whole training split: features standardised on
   train, one L2-regularised logistic regression per class (one-vs-rest), ``C`` chosen by the validation macro
   AUROC, the macro one-vs-rest AUROC over the 4 classes reported on test. The training patients are never
   evaluated on (the splits are patient-level; a shared patient is an error).
4. Baselines with the same encoder architecture (the first experiment's ``model.ecg``), data, splits and seeds:
   ``random init`` (an ``ECGEncoderModel`` with the seed's random weights, evaluated as in 3) and ``supervised``
   (an ``ECGEncoderForSequenceClassification`` with one linear layer on the pooled representation, trained end to
   end with cross-entropy on the training split with the first experiment's optimiser, learning rate, epochs and
   crop length, ``2 x per_device_batch_size`` ECGs per step, the number of views of a pretraining step; the test
   AUROC is that of its softmax scores, centre crop).
5. Each row reports the test macro AUROC of every seed, their mean and standard deviation (``ddof=1``: the
   sample standard deviation over seeds).

The rows whose strategy is ``rhythm`` are marked ``oracle``: their positive pairs use the labels of the evaluated
task, so they are not self-supervised.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.collators import ECGCollator, stack_ecg, with_recorded_leads
from ..data.ecg_dataset import ECGDatasetInfo, label_column
from ..training.positive_pairs import check_disjoint_patients
from .metrics import per_class_auroc
from ..tables import format_table

RHYTHM_CLASSES: tuple[str, ...] = ("SR", "SB", "GSVT", "AFIB")
"""The 4 rhythm classes of the evaluation task, in column order (the paper's Table 2)."""

SYNTHETIC_RHYTHM_MERGE: dict[str, tuple[str, ...]] = {
    "SR": ("sinus rhythm",),
    "SB": ("sinus bradycardia",),
    "GSVT": ("sinus tachycardia",),
    "AFIB": ("atrial fibrillation", "atrial flutter"),
}
"""How the synthetic cohort's ``rhythm`` labels merge into the 4 classes."""

CHAPMAN_RHYTHM_TASK = "chapman_rhythm"
SYNTHETIC_RHYTHM_TASK = "rhythm"
STD_DDOF = 1
"""Degrees of freedom of the reported standard deviation over seeds (1: sample standard deviation)."""

KINDS = ("self-supervised", "oracle", "supervised", "random init")
STRATEGY_LABELS: dict[str, str] = {
    "cmsc": "CLOCS - Time (CMSC)",
    "cmlc": "CLOCS - Lead (CMLC)",
    "cmsmlc": "CLOCS - Time + Lead (CMSMLC)",
    "simclr": "SimCLR",
    "3kg": "3KG",
    "pclr": "PCLR (same patient)",
    "demographics": "Demographics",
    "rhythm": "Rhythms",
    "attributes": "Wave attributes",
}
"""Method names of the table, after the paper's Table 1 and the EHR paper's baselines."""

RUNS_FOLDER = "runs"
BASELINES_FOLDER = "baselines"
ENCODER_FOLDER = "encoder"


# ----------------------------------------------------------------------------------------------- rhythm task
def rhythm_membership(dataset_split: Any, info: ECGDatasetInfo, source: str | os.PathLike | None = None
                      ) -> tuple[np.ndarray, list[str]]:
    """Which of the 4 rhythm classes each ECG of ``dataset_split`` belongs to: an ``(N, 4)`` int8 multi-hot matrix
    (a row may hold none, or on real data several) and the class names (:data:`RHYTHM_CLASSES`).

    Raises:
        ValueError: naming the dataset folder (``source``, else the dataset's name) and its tasks when the dataset
            has neither a ``chapman_rhythm`` task nor the synthetic ``rhythm`` task.
    """
    where = str(source) if source is not None else f"dataset {info.name!r}"
    names = list(RHYTHM_CLASSES)
    if CHAPMAN_RHYTHM_TASK in info.tasks:
        task = CHAPMAN_RHYTHM_TASK
        members = {name: (name,) for name in names}
    elif SYNTHETIC_RHYTHM_TASK in info.tasks and set(info.tasks[SYNTHETIC_RHYTHM_TASK]) >= {
            r for merged in SYNTHETIC_RHYTHM_MERGE.values() for r in merged}:
        task = SYNTHETIC_RHYTHM_TASK
        members = SYNTHETIC_RHYTHM_MERGE
    else:
        raise ValueError(
            f"{where}: no rhythm task for the 4-class evaluation (SR, SB, GSVT, AFIB): it needs the "
            f"'{CHAPMAN_RHYTHM_TASK}' task (Chapman-Shaoxing, `cardiomm data convert challenge`) or the synthetic "
            f"'{SYNTHETIC_RHYTHM_TASK}' task with {sorted(r for m in SYNTHETIC_RHYTHM_MERGE.values() for r in m)}; "
            f"the dataset's tasks are {dict(info.tasks)}"
        )
    task_names = list(info.tasks[task])
    missing = [label for merged in members.values() for label in merged if label not in task_names]
    if missing:
        raise ValueError(f"{where}: task {task!r} has no label {missing} (its labels: {task_names})")
    column = label_column(task)
    if len(dataset_split) == 0:
        return np.zeros((0, len(names)), dtype=np.int8), names
    labels = np.asarray(dataset_split.select_columns([column]).with_format("numpy")[column]).reshape(
        len(dataset_split), len(task_names)) > 0
    out = np.zeros((len(dataset_split), len(names)), dtype=np.int8)
    for j, name in enumerate(names):
        out[:, j] = labels[:, [task_names.index(label) for label in members[name]]].any(axis=1)
    return out, names


def rhythm_classes(dataset_split: Any, info: ECGDatasetInfo, source: str | os.PathLike | None = None
                   ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The 4-class rhythm task of a dataset split (see the module docstring): ``(labels, kept, names)`` with
    ``labels`` the ``(K, 4)`` one-hot int8 classes of the ``kept`` row indices (the ECGs of exactly one class;
    those of none, or of several, are left out) and ``names`` the class names (SR, SB, GSVT, AFIB).

    Raises:
        ValueError: naming the dataset folder (``source``) and its tasks when it has no rhythm task to read.
    """
    membership, names = rhythm_membership(dataset_split, info, source)
    kept = np.flatnonzero(membership.sum(axis=1) == 1)
    return membership[kept], kept, names


# ----------------------------------------------------------------------------------------------- results
@dataclass
class SSLSeedResult:
    """One seed of a row: the test macro AUROC and how it was obtained."""

    seed: int
    test_macro_auroc: float
    test_auroc: dict[str, float]
    val_macro_auroc: float | None = None
    C: float | None = None
    run_dir: str | None = None
    reused: bool = False


@dataclass
class SSLComparisonRow:
    """One row of the table: a strategy (an experiment) or a baseline, over every seed."""

    name: str
    method: str
    strategy: str | None
    kind: str
    runs: list[SSLSeedResult]
    n_train: int
    n_val: int
    n_test: int
    experiment: str | None = None

    @property
    def test_auroc(self) -> list[float]:
        """The test macro AUROC of each seed, in seed order."""
        return [r.test_macro_auroc for r in self.runs]

    @property
    def mean(self) -> float:
        """Mean test macro AUROC over seeds."""
        return float(np.mean(self.test_auroc))

    @property
    def std(self) -> float:
        """Standard deviation over seeds with ``ddof`` = :data:`STD_DDOF` (NaN for a single seed)."""
        values = np.asarray(self.test_auroc, dtype=np.float64)
        return float(values.std(ddof=STD_DDOF)) if len(values) > STD_DDOF else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the row for ``table.json``."""
        return {
            "name": self.name, "method": self.method, "strategy": self.strategy, "kind": self.kind,
            "experiment": self.experiment, "seeds": [r.seed for r in self.runs], "test_auroc": self.test_auroc,
            "mean": self.mean, "std": self.std, "std_ddof": STD_DDOF,
            "n_train": self.n_train, "n_val": self.n_val, "n_test": self.n_test,
            "runs": [asdict(r) for r in self.runs],
        }


def _pm(row: SSLComparisonRow) -> str:
    std = row.std
    return f"{100 * row.mean:.1f} ± {100 * std:.1f}" if np.isfinite(std) else f"{100 * row.mean:.1f}"


@dataclass
class SSLComparison:
    """The table: its rows, the evaluation task and the ECGs left out of it."""

    rows: list[SSLComparisonRow]
    classes: list[str]
    seeds: list[int]
    dataset: str
    splits: dict[str, str]
    counts: dict[str, dict[str, int]]
    task: str
    out_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """The Markdown table as the paper prints it: AUROC x 100, mean ± std over seeds."""
        return format_table([
            {"Method": row.method, "Experiment": row.name, "Kind": row.kind, "AUROC (x 100)": _pm(row),
             "Runs": len(row.runs)}
            for row in self.rows
        ])

    def protocol(self) -> str:
        """The protocol in words (the rows of the table, the data, the ECGs left out)."""
        counts = self.counts
        kept = ", ".join(f"{counts[s]['kept']} {s}" for s in ("train", "validation", "test"))
        left = "; ".join(
            f"{s}: {counts[s]['no_class']} with none of the 4 classes, {counts[s]['several_classes']} with several"
            for s in ("train", "validation", "test"))
        return "\n".join([
            f"Linear evaluation on {len(self.classes)} rhythm classes ({', '.join(self.classes)}; task "
            f"`{self.task}`) of the dataset `{self.dataset}` (splits: train `{self.splits['train']}`, validation "
            f"`{self.splits['validation']}`, test `{self.splits['test']}`; patient-level). ECGs evaluated: {kept}.",
            f"ECGs left out (rows of none, or several, of the 4 classes): {left}.",
            "Each self-supervised encoder is frozen; a one-vs-rest L2 logistic regression per class is fitted on the "
            "standardised pooled representations of the training ECGs (centre crop), C is chosen on validation "
            "macro AUROC, and the macro one-vs-rest AUROC over the 4 classes is reported on test.",
            "Supervised: the same encoder with one linear layer, trained end to end with cross-entropy on the "
            "training ECGs (softmax scores on test). Random init: the same encoder with random weights, evaluated "
            "as the self-supervised ones. Oracle: the positive pairs of the rhythm strategy use the labels of "
            "this very task.",
            f"AUROC x 100, mean ± standard deviation (ddof={STD_DDOF}) over the seeds "
            f"{', '.join(map(str, self.seeds))} (one pretraining, or one baseline training, per seed).",
        ])

    def markdown(self) -> str:
        """``table.md``: a title, the table and the protocol."""
        return "\n\n".join([
            "# ECG self-supervised strategies: linear evaluation on 4 rhythm classes (good-views Table 1)",
            self.table(),
            self.protocol(),
        ]) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """``table.json``: every row with its per-seed AUROC, the task and the counts."""
        return {
            "classes": self.classes, "task": self.task, "seeds": self.seeds, "dataset": self.dataset,
            "splits": self.splits, "counts": self.counts, "std_ddof": STD_DDOF,
            "metric": "test macro one-vs-rest AUROC over the rhythm classes",
            "protocol": self.protocol(), "rows": [row.to_dict() for row in self.rows], **self.extra,
        }


# ----------------------------------------------------------------------------------------------- plotting
KIND_STYLES: dict[str, dict[str, Any]] = {
    "self-supervised": {"color": "#1f77b4", "hatch": ""},
    "oracle": {"color": "#ff7f0e", "hatch": "//"},
    "supervised": {"color": "#7f7f7f", "hatch": ""},
    "random init": {"color": "#c7c7c7", "hatch": ".."},
}


def plot_comparison(comparison: SSLComparison, path: str | os.PathLike, dpi: int = 120) -> Path:
    """A horizontal bar chart of the rows (mean AUROC x 100, standard-deviation error bars), coloured and hatched
    by kind (self-supervised, oracle, supervised, random init); written as a PNG (matplotlib's Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows = comparison.rows
    fig = Figure(figsize=(9.0, 0.45 * len(rows) + 1.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    positions = np.arange(len(rows))[::-1]
    for y, row in zip(positions, rows):
        style = KIND_STYLES[row.kind]
        std = row.std if np.isfinite(row.std) else 0.0
        ax.barh(y, 100 * row.mean, xerr=100 * std, color=style["color"], hatch=style["hatch"],
                edgecolor="black", linewidth=0.6, capsize=3)
        ax.text(100 * (row.mean + std) + 0.8, y, _pm(row), va="center", fontsize="small")
    ax.axvline(50, color="grey", linestyle="--", linewidth=0.8)
    ax.set_yticks(positions)
    ax.set_yticklabels([f"{row.method} [{row.name}]" if row.kind in ("self-supervised", "oracle") else row.method
                        for row in rows], fontsize="small")
    ax.set_xlim(0, 112)
    ax.set_xlabel(f"test macro AUROC x 100 (mean ± std over {len(comparison.seeds)} seeds)")
    ax.set_title(f"Linear evaluation, {len(comparison.classes)} rhythm classes ({', '.join(comparison.classes)})",
                 fontsize="medium")
    kinds = [k for k in KINDS if any(row.kind == k for row in rows)]
    ax.legend(handles=[Patch(facecolor=KIND_STYLES[k]["color"], hatch=KIND_STYLES[k]["hatch"], edgecolor="black",
                             label=k) for k in kinds], loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
              title="kind", title_fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path


# ----------------------------------------------------------------------------------------------- data
class RhythmRows(torch.utils.data.Dataset):
    """The ECG rows of a split with their rhythm class index (``rhythm_class``), for supervised training."""

    def __init__(self, split: Any, classes: np.ndarray) -> None:
        self.split = split.select_columns(["ecg", "lead_mask"]).with_format("numpy")
        self.classes = np.asarray(classes, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.split[int(index)], "rhythm_class": int(self.classes[int(index)])}

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        batch = self.split[[int(i) for i in indices]]  # one columnar read
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        return [{**row, "rhythm_class": int(self.classes[int(i)])} for row, i in zip(rows, indices)]


@dataclass
class RhythmCollator:
    """Batches :class:`RhythmRows` through the encoder's feature extractor (random crop) with ``labels``: the class
    indices (cross-entropy)."""

    feature_extractor: Any
    sampling_rate: float
    lead_names: Sequence[str] | None = None

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = ECGCollator(self.feature_extractor, self.sampling_rate, self.lead_names, crop="random")(rows)
        batch["labels"] = torch.as_tensor([int(r["rhythm_class"]) for r in rows], dtype=torch.long)
        return batch


@dataclass
class RhythmEvaluationData:
    """The ECGs of the train / validation / test splits kept for the rhythm task, with their one-hot classes
    (``labels``), the class names, the task read and the per-split counts (``total``, ``kept``, ``no_class``,
    ``several_classes``)."""

    info: ECGDatasetInfo
    splits: dict[str, Any]  # train / validation / test -> datasets.Dataset of the kept rows
    labels: dict[str, np.ndarray]
    names: list[str]
    task: str
    counts: dict[str, dict[str, int]]


def load_rhythm_evaluation_data(experiment: Any, split_names: dict[str, str]) -> RhythmEvaluationData:
    """The dataset of ``experiment`` (written first when ``data.synthetic`` asks for it) read for the rhythm task:
    ``split_names`` maps train / validation / test to the dataset's split names.

    Raises:
        ValueError: naming the dataset folder when a split is missing or empty, two splits share a patient, the
            dataset has no rhythm task, or the training split lacks one of the classes.
    """
    from ..training.experiment_data import load_experiment_data

    data = load_experiment_data(experiment.data)
    dataset, info, folder = data.dataset, data.info, data.path
    for role, name in split_names.items():
        if name not in dataset or len(dataset[name]) == 0:
            raise ValueError(f"{folder}: the dataset has no {role} split {name!r} with ECGs (splits: "
                             f"{ {k: len(v) for k, v in dataset.items()} }); the linear evaluation needs train, "
                             "validation and test")
    roles = list(split_names)
    for i, first in enumerate(roles):  # the evaluation must never see a training patient
        for second in roles[i + 1:]:
            try:
                check_disjoint_patients(dataset[split_names[first]], dataset[split_names[second]])
            except ValueError as err:
                raise ValueError(f"{folder}: the {first} and {second} splits: {err}; the evaluation needs "
                                 "patient-level splits") from err
    splits, labels, counts = {}, {}, {}
    names: list[str] = []
    for role, name in split_names.items():
        membership, names = rhythm_membership(dataset[name], info, folder)
        per_row = membership.sum(axis=1)
        kept = np.flatnonzero(per_row == 1)
        counts[role] = {"total": int(len(per_row)), "kept": int(len(kept)), "no_class": int((per_row == 0).sum()),
                        "several_classes": int((per_row > 1).sum())}
        if len(kept) == 0:
            raise ValueError(f"{folder}: no ECG of the {role} split {name!r} has one of the classes {names}")
        splits[role] = dataset[name].select(kept.tolist())
        labels[role] = membership[kept]
    missing = [n for j, n in enumerate(names) if labels["train"][:, j].sum() == 0]
    if missing:
        raise ValueError(f"{folder}: the training split has no ECG of the classes {missing}; the {len(names)}-class "
                         "evaluation needs every class in training (use more data)")
    task = CHAPMAN_RHYTHM_TASK if CHAPMAN_RHYTHM_TASK in info.tasks else SYNTHETIC_RHYTHM_TASK
    return RhythmEvaluationData(info, splits, labels, names, task, counts)


# ----------------------------------------------------------------------------------------------- evaluation
def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _embed_splits(model: Any, feature_extractor: Any, evaluation: RhythmEvaluationData) -> dict[str, np.ndarray]:
    from .embeddings import embed_ecgs

    return {
        role: embed_ecgs(model, feature_extractor, split, sampling_rate=evaluation.info.sampling_rate,
                         crop="center", normalize=False, progress=False, lead_names=evaluation.info.lead_names)
        for role, split in evaluation.splits.items()
    }


def linear_evaluation(model: Any, feature_extractor: Any, evaluation: RhythmEvaluationData, seed: int) -> SSLSeedResult:
    """Linear evaluation of a frozen encoder (step 3 of the module docstring) for one seed."""
    from .linear_probe import linear_probe

    x = _embed_splits(model.to(_device()), feature_extractor, evaluation)
    y = evaluation.labels
    names = evaluation.names
    result = linear_probe((x["train"], y["train"], names), (x["validation"], y["validation"], names),
                          (x["test"], y["test"], names), fractions=(1.0,), seeds=(seed,))
    run = result.runs[0]
    return SSLSeedResult(seed=seed, test_macro_auroc=run.test_macro_auroc, test_auroc=dict(run.test_auroc),
                         val_macro_auroc=run.val_macro_auroc, C=run.C)


@torch.inference_mode()
def _predict_scores(model: Any, feature_extractor: Any, split: Any, info: ECGDatasetInfo,
                    batch_size: int = 64) -> np.ndarray:
    """Softmax scores (N, C) of a sequence classifier on the ECGs of ``split`` (centre crop)."""
    model.eval()
    device = next(model.parameters()).device
    rows_view = split.select_columns(["ecg", "lead_mask"]).with_format("numpy")
    out = []
    for start in range(0, len(rows_view), batch_size):
        batch = rows_view[start:start + batch_size]
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        inputs = feature_extractor(ecg=stack_ecg(rows), sampling_rate=info.sampling_rate, crop="center",
                                   return_tensors="pt", lead_names=list(info.lead_names))
        inputs = with_recorded_leads(dict(inputs), rows, info.lead_names, feature_extractor)
        logits = model(input_values=inputs["input_values"].to(device), lead_mask=inputs["lead_mask"].to(device),
                       time_mask=inputs["time_mask"].to(device)).logits
        out.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
    return np.concatenate(out)


# ----------------------------------------------------------------------------------------------- experiments
def _experiment_name(experiment: Any, given: str | Path) -> str:
    return Path(experiment.source).stem if experiment.source else Path(str(given)).stem


def _encoder_spec(experiment: Any) -> tuple[Any, dict[str, Any]]:
    """The ``ECGEncoderConfig`` of an experiment's ``model.ecg`` (a fresh one, or that of a saved encoder)."""
    from ..modeling.configuration_ecg_encoder import ECGEncoderConfig

    ecg = dict(experiment.model.get("ecg") or {"backbone": "resnet1d_18"})
    pretrained = ecg.pop("pretrained", None)
    if pretrained:
        return ECGEncoderConfig.from_pretrained(pretrained), {"pretrained": pretrained}
    return ECGEncoderConfig(**ecg), ecg


def _feature_extractor(experiment: Any, config: Any, info: ECGDatasetInfo) -> Any:
    """The feature extractor a pretraining run of ``experiment`` saves (same rate, normalisation, crop length)."""
    from ..processing.feature_extraction_ecg import ECGFeatureExtractor

    data = experiment.data
    return ECGFeatureExtractor(lead_names=config.lead_names,
                               sampling_rate=data.get("sampling_rate", info.sampling_rate),
                               normalization=data.get("normalization", "zscore"),
                               crop_length=int(data.get("crop_length", 2500)))


def _load_experiments(experiments: Sequence[str | Path], overrides: Sequence[str]) -> list[tuple[str, Any]]:
    from ..training.config import load_config
    from ..training.objectives import check_experiment

    if not experiments:
        raise ValueError("no experiment to compare: give at least one ecg_self_supervised experiment file")
    loaded: list[tuple[str, Any]] = []
    for given in experiments:
        experiment = load_config(given, overrides)
        name = _experiment_name(experiment, given)
        source = experiment.source or str(given)
        if experiment.model.get("type") != "ecg_self_supervised":
            raise ValueError(f"{source}: model.type is {experiment.model.get('type')!r}; the table compares "
                             "ecg_self_supervised experiments")
        for other_name, other in loaded:
            if other_name == name:
                raise ValueError(f"{source} and {other.source}: two experiments named {name!r} (their runs would "
                                 "share a folder); rename one file")
        check_experiment(experiment)
        loaded.append((name, experiment))
    first_name, first = loaded[0]
    first_path = Path(str(first.data.get("path"))).resolve()
    for name, experiment in loaded[1:]:
        path = Path(str(experiment.data.get("path"))).resolve()
        if path != first_path:
            raise ValueError(
                f"the experiments must use the same dataset: {first.source} ({first_name}) has data.path "
                f"{first.data.get('path')} ({first_path}) but {experiment.source} ({name}) has data.path "
                f"{experiment.data.get('path')} ({path})"
            )
        for key, default in (("train_split", "train"), ("eval_split", "validation"), ("test_split", "test")):
            if experiment.data.get(key, default) != first.data.get(key, default):
                raise ValueError(f"the experiments must use the same splits: {first.source} has data.{key} "
                                 f"{first.data.get(key, default)!r} but {experiment.source} has "
                                 f"{experiment.data.get(key, default)!r}")
    return loaded


def _has_encoder(run_dir: Path) -> bool:
    folder = run_dir / ENCODER_FOLDER
    return (folder / "config.json").is_file() and (folder / "preprocessor_config.json").is_file() and any(
        folder.glob("*.safetensors"))


def _pretrained_encoder(experiment: Any, run_dir: Path, seed: int, say: Any) -> tuple[Path, bool]:
    """The ``encoder/`` folder of the run of ``experiment`` at ``seed``: reused when it exists, else trained (resumed
    from the newest intact checkpoint of a run stopped half way). Returns the folder and whether it was reused."""
    from ..training.checkpointing import CHECKPOINTS_FOLDER, completed_checkpoints
    from ..training.pretrain import pretrain

    if _has_encoder(run_dir):
        say(f"reusing the encoder of {run_dir} (seed {seed}): not retrained")
        return run_dir / ENCODER_FOLDER, True
    if completed_checkpoints(run_dir / CHECKPOINTS_FOLDER):
        say(f"resuming the pretraining of {run_dir} (seed {seed}) from its newest checkpoint")
    else:
        say(f"pretraining {run_dir} (seed {seed})")
    result, _ = pretrain(copy.deepcopy(experiment), seed=seed, output_dir=str(run_dir), resume_from="latest")
    if not _has_encoder(run_dir):
        raise ValueError(f"{run_dir}: the run finished but wrote no {ENCODER_FOLDER}/ folder")
    say(f"pretrained {run_dir}: {result.global_step} steps, final loss {result.final_loss:.4f}")
    return run_dir / ENCODER_FOLDER, False


def _random_init(experiment: Any, evaluation: RhythmEvaluationData, seed: int, run_dir: Path) -> SSLSeedResult:
    """The random-init baseline of one seed: an ``ECGEncoderModel`` with the seed's random weights (saved to
    ``run_dir`` with its feature extractor), linear-evaluated like the pretrained encoders."""
    from ..modeling.modeling_ecg_encoder import ECGEncoderModel
    from ..training.sampling import seed_everything

    config, _ = _encoder_spec(experiment)
    seed_everything(seed)
    model = ECGEncoderModel(config)
    feature_extractor = _feature_extractor(experiment, config, evaluation.info)
    model.save_pretrained(run_dir)
    feature_extractor.save_pretrained(run_dir)
    result = linear_evaluation(model, feature_extractor, evaluation, seed)
    result.run_dir = str(run_dir)
    return result


def supervised_training_config(experiment: Any, seed: int, run_dir: Path) -> Any:
    """The ``ExperimentConfig`` of the supervised baseline: the experiment's training recipe with ``seed``,
    ``output_dir = run_dir`` and ``2 x per_device_batch_size`` ECGs per step (the views of a pretraining step)."""
    from ..training.config import ExperimentConfig

    training = copy.deepcopy(experiment.training)
    training.seed = seed
    training.output_dir = str(run_dir)
    training.per_device_batch_size = 2 * experiment.training.per_device_batch_size
    training.resume_from = "latest"
    ecg = dict(experiment.model.get("ecg") or {})
    data = {k: v for k, v in experiment.data.items() if k not in ("strategy", "views", "positives")}
    return ExperimentConfig(  # recorded in the run's training_config.yaml
        training=training,
        model={"architecture": "ECGEncoderForSequenceClassification", "ecg": ecg,
               "num_labels": len(RHYTHM_CLASSES), "classifier_head": "linear",
               "problem_type": "single_label_classification"},
        data={**data, "classes": list(RHYTHM_CLASSES)},
        source=experiment.source,
    )


def _supervised(experiment: Any, evaluation: RhythmEvaluationData, seed: int, run_dir: Path, say: Any) -> SSLSeedResult:
    """The supervised baseline of one seed (step 4 of the module docstring); a finished run is reused, a stopped
    one resumed."""
    from ..modeling.modeling_ecg_encoder import ECGEncoderForSequenceClassification
    from ..processing.feature_extraction_ecg import ECGFeatureExtractor
    from ..training.checkpointing import CHECKPOINTS_FOLDER, resolve_resume_checkpoint
    from ..training.loop import TrainingLoop
    from ..training.sampling import seed_everything

    finished = (run_dir / "config.json").is_file() and (run_dir / "preprocessor_config.json").is_file()
    info = evaluation.info
    if finished:
        say(f"reusing the supervised baseline of {run_dir} (seed {seed}): not retrained")
        model = ECGEncoderForSequenceClassification.from_pretrained(run_dir)
        feature_extractor = ECGFeatureExtractor.from_pretrained(run_dir)
    else:
        encoder_config, _ = _encoder_spec(experiment)
        config = copy.deepcopy(encoder_config)
        config.num_labels = len(evaluation.names)
        config.id2label = dict(enumerate(evaluation.names))
        config.label2id = {name: i for i, name in enumerate(evaluation.names)}
        config.classifier_head = "linear"
        config.problem_type = "single_label_classification"
        feature_extractor = _feature_extractor(experiment, config, info)
        run_config = supervised_training_config(experiment, seed, run_dir)
        checkpoint = resolve_resume_checkpoint("latest", run_dir / CHECKPOINTS_FOLDER)
        say(f"{'resuming' if checkpoint else 'training'} the supervised baseline {run_dir} (seed {seed})")
        seed_everything(seed)
        model = ECGEncoderForSequenceClassification(config)
        pretrained = (experiment.model.get("ecg") or {}).get("pretrained")
        if pretrained:  # the same starting encoder as the self-supervised runs
            from ..modeling.modeling_ecg_encoder import ECGEncoderModel

            model.ecg_encoder.load_state_dict(ECGEncoderModel.from_pretrained(pretrained).state_dict())
        collator = RhythmCollator(feature_extractor, info.sampling_rate, info.lead_names)
        loop = TrainingLoop(
            model, run_config, RhythmRows(evaluation.splits["train"], evaluation.labels["train"].argmax(axis=1)),
            collate_fn=collator,
            eval_dataset=RhythmRows(evaluation.splits["validation"], evaluation.labels["validation"].argmax(axis=1)),
            on_save=lambda output_dir: feature_extractor.save_pretrained(output_dir),
            resume_checkpoint=checkpoint,
        )
        result = loop.train()
        model = loop.accelerator.unwrap_model(loop.model)
        say(f"trained the supervised baseline {run_dir}: {result.global_step} steps, final loss "
            f"{result.final_loss:.4f}")
    model = model.to(_device())
    scores = {role: _predict_scores(model, feature_extractor, evaluation.splits[role], info)
              for role in ("validation", "test")}
    val_macro, _ = per_class_auroc(evaluation.labels["validation"], scores["validation"], evaluation.names)
    test_macro, per_class = per_class_auroc(evaluation.labels["test"], scores["test"], evaluation.names)
    return SSLSeedResult(seed=seed, test_macro_auroc=test_macro, test_auroc=per_class, val_macro_auroc=val_macro,
                         run_dir=str(run_dir), reused=finished)


def compare_ssl_strategies(
    experiments: Sequence[str | Path],
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    out_dir: str | Path = "outputs/ssl_table",
    overrides: Sequence[str] = (),
    supervised: bool = True,
    random_init: bool = True,
    progress: bool = True,
) -> SSLComparison:
    """Table 1 of the good-views paper (see the module docstring): pretrain every experiment for every seed,
    linear-evaluate its frozen encoder on the 4 rhythm classes next to a supervised and a random-init baseline, and
    write ``table.json``, ``table.md`` and ``table.png`` to ``out_dir``.

    Args:
        experiments: ``ecg_self_supervised`` experiment files, or names of shipped ones (``ssl_cmsc_tiny``).
        seeds: one pretraining (and one baseline training) per seed.
        out_dir: output folder; the runs go to ``out_dir/runs/<experiment>/seed<seed>`` (reused when their
            ``encoder/`` exists, resumed when stopped half way), the baselines to ``out_dir/baselines/``.
        overrides: ``SECTION.KEY=VALUE`` strings applied to every experiment file (``training.output_dir`` and
            ``training.seed`` are set per run).
        supervised, random_init: add the baselines.
        progress: show a progress bar over the runs.

    Raises:
        ValueError: for an experiment that is not ``ecg_self_supervised`` or has a bad key, experiments on
            different datasets or splits (naming both), no seed, or a dataset without a rhythm task.
    """
    from ..modeling.modeling_ecg_encoder import ECGEncoderModel
    from ..processing.feature_extraction_ecg import ECGFeatureExtractor

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat: {seeds}")
    out = Path(out_dir)
    loaded = _load_experiments(experiments, overrides)
    first = loaded[0][1]
    split_names = {"train": first.data.get("train_split", "train"),
                   "validation": first.data.get("eval_split", "validation"),
                   "test": first.data.get("test_split", "test")}
    evaluation = load_rhythm_evaluation_data(first, split_names)
    n = {role: len(split) for role, split in evaluation.splits.items()}

    total = len(seeds) * (len(loaded) + int(supervised) + int(random_init))
    bar = tqdm(total=total, desc="ssl-table runs", unit="run", disable=not progress, dynamic_ncols=True)

    def say(message: str) -> None:
        tqdm.write(message)

    rows: list[SSLComparisonRow] = []
    if supervised:
        results = []
        for seed in seeds:
            bar.set_postfix_str(f"supervised seed {seed}")
            results.append(_supervised(first, evaluation, seed, out / BASELINES_FOLDER / "supervised" / f"seed{seed}",
                                       say))
            bar.update()
        rows.append(SSLComparisonRow("supervised", "Supervised baseline", None, "supervised", results,
                                     n["train"], n["validation"], n["test"], experiment=first.source))
    for name, experiment in loaded:
        strategy = str(experiment.data.get("strategy"))
        results = []
        for seed in seeds:
            bar.set_postfix_str(f"{name} seed {seed}")
            run_dir = out / RUNS_FOLDER / name / f"seed{seed}"
            encoder_dir, reused = _pretrained_encoder(experiment, run_dir, seed, say)
            model = ECGEncoderModel.from_pretrained(encoder_dir)
            feature_extractor = ECGFeatureExtractor.from_pretrained(encoder_dir)
            result = linear_evaluation(model, feature_extractor, evaluation, seed)
            result.run_dir, result.reused = str(run_dir), reused
            results.append(result)
            bar.update()
        kind = "oracle" if strategy == "rhythm" else "self-supervised"
        method = STRATEGY_LABELS.get(strategy, strategy) + (" (oracle)" if kind == "oracle" else "")
        rows.append(SSLComparisonRow(name, method, strategy, kind, results, n["train"], n["validation"],
                                     n["test"], experiment=experiment.source))
    if random_init:
        results = []
        for seed in seeds:
            bar.set_postfix_str(f"random init seed {seed}")
            run_dir = out / BASELINES_FOLDER / "random_init" / f"seed{seed}"
            results.append(_random_init(first, evaluation, seed, run_dir))
            bar.update()
        rows.append(SSLComparisonRow("random_init", "Random init (frozen)", None, "random init", results,
                                     n["train"], n["validation"], n["test"], experiment=first.source))
    bar.close()

    comparison = SSLComparison(
        rows=rows, classes=list(evaluation.names), seeds=seeds, dataset=str(first.data.get("path")),
        splits=split_names, counts=evaluation.counts, task=evaluation.task, out_dir=str(out),
        extra={"experiments": [{"name": name, "file": e.source, "strategy": e.data.get("strategy")}
                               for name, e in loaded], "overrides": list(overrides)},
    )
    write_comparison(comparison, out)
    return comparison


def write_comparison(comparison: SSLComparison, out_dir: str | Path) -> dict[str, Path]:
    """Write ``table.json``, ``table.md`` and ``table.png`` to ``out_dir``; returns their paths."""
    from .results import save_results

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": save_results(comparison.to_dict(), out / "table.json"), "md": out / "table.md",
             "png": plot_comparison(comparison, out / "table.png")}
    paths["md"].write_text(comparison.markdown(), encoding="utf-8")
    return paths


def shipped_tiny_experiments() -> list[str]:
    """The names of the shipped ``ssl_*_tiny`` experiment files (the default rows of ``cardiomm ssl-table``)."""
    from importlib import resources

    folder = Path(str(resources.files("cardiomm.configs")))
    return sorted(p.stem for p in folder.glob("ssl_*_tiny.yaml"))


__all__ = [
    "RHYTHM_CLASSES",
    "SYNTHETIC_RHYTHM_MERGE",
    "SSLComparison",
    "SSLComparisonRow",
    "SSLSeedResult",
    "compare_ssl_strategies",
    "RhythmEvaluationData",
    "linear_evaluation",
    "load_rhythm_evaluation_data",
    "plot_comparison",
    "rhythm_classes",
    "rhythm_membership",
    "shipped_tiny_experiments",
    "supervised_training_config",
    "write_comparison",
]
