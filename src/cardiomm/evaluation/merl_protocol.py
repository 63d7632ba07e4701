"""MERL's own evaluation protocols (Liu et al., ICML 2024), for numbers comparable with the MERL paper.

Protocol (MERL, as its released evaluation code computes it):

- zero-shot: test split; one prompt string per class from a prompt file (JSON object: class name -> prompt);
  each prompt is lower-cased, tokenised (padded to 256 tokens, truncated), embedded by the text tower's pooled
  output and the text projection, and L2-normalised. The ECG embedding is the projected ECG embedding,
  L2-normalised. The score of a class is the raw cosine similarity.
- linear probe: a linear layer on the ECG tower's pooled features (ResNet: global average pool; ViT: LayerNorm of
  the mean token), trained with BCE-with-logits by Adam (lr 1e-3, weight decay 1e-4), batch 16, shuffled, 100
  epochs, on ``ratio`` % of the train split drawn by ``train_test_split(train_size=ratio/100,
  random_state=42)`` (no stratification; 100 % uses the whole split), seed 42. The tower is frozen (no gradient)
  but in training mode during the epochs: batch norms normalise with the batch statistics and update their
  running statistics, so the features are recomputed every epoch. ``MultiStepLR(milestones=[40], gamma=0.1)``
  is stepped after every batch and again after every epoch, so the learning rate drops to 1e-4 after 40
  scheduler steps. After every epoch the validation and test splits are scored in eval mode; the reported
  figures are the maxima over epochs of the test macro AUROC, macro max-F1 and macro accuracy (each maximised
  on its own).
- metrics, per class x100: AUROC; max-F1 = the best F1 over the thresholds of the precision-recall curve;
  accuracy with the decision ``score > t`` at that max-F1 threshold ``t``. Reported: their macro means.
- ECGs: the first ``crop_length`` samples of each record (the model's feature extractor, with its
  normalisation, sampling rate and lead order matched by name).
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.collators import stack_ecg, with_recorded_leads
from ..data.ecg_dataset import ECGDatasetInfo, label_column
from .metrics import as_multi_hot, auroc_columns, checked_labels_and_scores, evaluable_classes, max_f1
from .results import results_table, save_results
from .runner import PROTOCOL as CARDIOMM_PROTOCOL
from .runner import EvaluationReport, SkippedResult, _left_out_classes, _warn_skipped, dataset_prompts

MERL_PROTOCOL = __doc__.split("Protocol (MERL, as its released evaluation code computes it):", 1)[1].strip()

#: How MERL's protocol differs from cardiomm's own (``cardiomm.evaluation.runner``): written into every result.
DIFFERENCES_FROM_CARDIOMM_PROTOCOL: tuple[str, ...] = (
    "Linear-probe figures are selected on the TEST set: MERL reports the maximum test macro AUROC (and, "
    "separately, the maximum test F1 and accuracy) over the probe's epochs; cardiomm chooses every setting (the "
    "regularisation C) on the validation split only and looks at test labels only to report.",
    "Threshold metrics are chosen on the test labels: MERL's F1 is the best F1 over all thresholds of the test "
    "scores and its accuracy is taken at that threshold, so both are optimistic; cardiomm reports AUROC, which "
    "needs no threshold.",
    "The ECG tower's batch norms run in training mode during MERL's probe: they normalise each batch with its own "
    "statistics and overwrite their running statistics, which then change the validation and test features; "
    "cardiomm probes fixed eval-mode features computed once.",
    "MERL's probe is one linear layer trained by Adam for 100 epochs (BCE, batch 16, lr 1e-3 dropping to 1e-4 "
    "after 40 scheduler steps, weight decay 1e-4) with a single seed (42) on one unstratified subset per ratio; "
    "cardiomm fits an L2 logistic regression per class on prevalence-keeping subsets over several seeds and "
    "reports mean +- std.",
    "Zero-shot uses ONE prompt string per class, read from a prompt file and lower-cased (padded to 256 tokens); "
    "cardiomm averages the embeddings of several knowledge-base prompts per class.",
    "MERL takes the first crop_length samples of a record; cardiomm takes the centred crop (or test-time windows).",
    "MERL's figures are x100 (AUROC 85.3); cardiomm's are in [0, 1].",
    "MERL's protocol has no retrieval evaluation.",
)

#: Where this implementation cannot or does not follow MERL's released code line by line.
DEPARTURES_FROM_MERL_CODE: tuple[str, ...] = (
    "Computed in float32; MERL's probe ran under CUDA float16 autocast with a gradient scaler.",
    "Random streams differ (head initialisation, shuffling), so a run is not bit-identical to MERL's script even "
    "with the same seed.",
    "A class with a single label value in a split (no positive or no negative ECG) is left out of that split's "
    "metrics and listed; MERL's script stops with an error there.",
    "A ratio whose subset would be empty is left out and listed; MERL's script stops with an error there.",
    "The ratio subset is drawn from the rows of the dataset's train split in their stored order; MERL's split "
    "files may order the same records differently and so select other ones.",
    "ECGs are prepared by the checkpoint's own processor (its normalisation, sampling rate and lead order, leads "
    "matched by name, which also places aVL/aVF as MERL's lead swap does); MERL min-max normalises the cropped "
    "array directly.",
    "Prompts are truncated at 256 tokens or the text tower's maximum length, whichever is shorter.",
)

CROPS = ("start", "center")


# ----------------------------------------------------------------------------------------------------- metrics


@dataclass
class MERLClassificationMetrics:
    """Per-class AUROC, max-F1, accuracy at the max-F1 threshold (all x100) and their macro means.

    Classes with a single label value are in ``left_out`` and in no average.
    """

    label_names: list[str]
    auroc: dict[str, float] = field(default_factory=dict)
    f1: dict[str, float] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    threshold: dict[str, float] = field(default_factory=dict)
    macro_auroc: float = float("nan")
    macro_f1: float = float("nan")
    macro_accuracy: float = float("nan")
    left_out: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


def merl_max_f1(y_true: Any, scores: Any) -> tuple[float, float, float]:
    """MERL's threshold metrics of one class: ``(max F1, threshold, accuracy)``, F1 and accuracy in [0, 1].

    The F1 of every point of the precision-recall curve (0 where precision + recall is 0); the threshold is that
    of the first best point; the accuracy counts ``score > threshold`` as positive (strictly greater, so the ECGs
    scored exactly at the threshold count as negative).
    """
    y = np.asarray(y_true) > 0
    s = np.asarray(scores, dtype=np.float64)
    f1, threshold = max_f1(y, s)  # the curve's last point (recall 0) has F1 0, so MERL's argmax is the same
    return f1, threshold, float(np.mean((s > threshold) == y))


def merl_classification_metrics(
    y_true: Any, scores: Any, label_names: Sequence[str] | None = None
) -> MERLClassificationMetrics:
    """MERL's classification metrics of ``(N, C)`` scores: per-class AUROC, max-F1 and accuracy at the max-F1
    threshold, x100, and their macro means over the classes with both a positive and a negative."""
    y, s, names = checked_labels_and_scores(y_true, scores, label_names)
    ok = evaluable_classes(y) if len(y) else np.zeros(len(names), dtype=bool)
    result = MERLClassificationMetrics(label_names=names, left_out=[n for n, keep in zip(names, ok) if not keep])
    aurocs = auroc_columns(y, s)
    for j, name in enumerate(names):
        if not ok[j]:
            continue
        f1, threshold, accuracy = merl_max_f1(y[:, j], s[:, j])
        result.auroc[name] = 100.0 * float(aurocs[j])
        result.f1[name] = 100.0 * f1
        result.accuracy[name] = 100.0 * accuracy
        result.threshold[name] = threshold
    if result.auroc:
        result.macro_auroc = float(np.mean(list(result.auroc.values())))
        result.macro_f1 = float(np.mean(list(result.f1.values())))
        result.macro_accuracy = float(np.mean(list(result.accuracy.values())))
    return result


# ----------------------------------------------------------------------------------------------------- prompts


def load_merl_prompts(path: str | os.PathLike) -> dict[str, str]:
    """Read a MERL prompt file: a JSON object mapping each class name to one prompt string.

    Raises ``ValueError`` naming the file when it is missing, is not JSON, is not an object, or holds a value that
    is not a non-empty string.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ValueError(f"{path}: no such prompt file") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the prompt file ({err})") from err
    try:
        prompts = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); a MERL prompt file is a JSON object "
                         '{"CLASS": "prompt", ...}') from err
    if not isinstance(prompts, dict):
        raise ValueError(f"{path}: a MERL prompt file is a JSON object mapping class names to one prompt string "
                         f"each, got a JSON {type(prompts).__name__}")
    bad = [name for name, value in prompts.items() if not isinstance(value, str) or not value.strip()]
    if bad:
        raise ValueError(f"{path}: the prompt of every class must be one non-empty string; not so for {bad}")
    return dict(prompts)


def merl_task_prompts(
    prompts: Mapping[str, str], label_names: Sequence[str], task: str, source: str = "the prompts"
) -> dict[str, str]:
    """The prompt of every class of ``task`` (exact class names); ``ValueError`` names the missing classes."""
    missing = [name for name in label_names if name not in prompts]
    if missing:
        raise ValueError(f"{source}: no prompt for classes {missing} of task {task!r} (class names are matched "
                         f"exactly; the task's classes are {list(label_names)})")
    return {name: prompts[name] for name in label_names}


def default_merl_prompts(info: ECGDatasetInfo, task: str) -> dict[str, str]:
    """One prompt string per class of ``task``: the knowledge-base prompts of cardiomm's own protocol
    (:func:`~cardiomm.evaluation.runner.dataset_prompts`) joined with ``", "``, as MERL's prompt strings list a
    condition's names."""
    return {name: ", ".join(prompts) for name, prompts in dataset_prompts(info, task).items()}


# ----------------------------------------------------------------------------------------------------- inputs


@contextmanager
def _modes_kept(module: nn.Module) -> Iterator[None]:
    """Restore the training flag of every submodule of ``module`` on exit."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _feature_extractor(processor: Any) -> Any:
    return getattr(processor, "feature_extractor", None) or processor


class _SplitInputs:
    """A split's ECGs as model inputs (``input_values``, ``lead_mask``, ``time_mask``) through the processor.

    ``crop="start"`` keeps the first ``crop_length`` samples (at the processor's rate) of each record, as MERL
    does; ``"center"`` the centred crop. Prepared once and kept in memory when the whole split takes at most
    ``cache_bytes``; otherwise prepared batch by batch.
    """

    def __init__(self, processor: Any, split: Any, info: ECGDatasetInfo, crop: str, device: torch.device,
                 cache_bytes: int = 2**30) -> None:
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        self.processor, self.info, self.crop, self.device = processor, info, crop, device
        columns = [c for c in ("ecg", "lead_mask") if c in split.column_names]
        self.split = split.select_columns(columns) if hasattr(split, "select_columns") else split
        self.length = len(split)
        self._cache: dict[str, torch.Tensor] | None = None
        extractor = _feature_extractor(processor)
        out_len = getattr(extractor, "crop_length", None) or info.num_samples
        size = self.length * len(getattr(extractor, "lead_names", info.lead_names)) * out_len * 4
        if self.length and size <= cache_bytes:
            chunks = [self._prepare(range(start, min(start + 256, self.length)))
                      for start in range(0, self.length, 256)]
            self._cache = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}

    def _start_samples(self, length: int) -> int:
        extractor = _feature_extractor(self.processor)
        crop_length = getattr(extractor, "crop_length", None)
        if crop_length is None:
            return length
        rate = float(getattr(extractor, "sampling_rate", self.info.sampling_rate))
        return min(length, math.ceil(crop_length * self.info.sampling_rate / rate))

    def _prepare(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = self.split[[int(i) for i in indices]]
        rows = [dict(zip(rows, values)) for values in zip(*rows.values())]
        ecg = stack_ecg(rows)
        if self.crop == "start":
            ecg = ecg[..., : self._start_samples(ecg.shape[-1])]
        inputs = self.processor(ecg=ecg, sampling_rate=self.info.sampling_rate, lead_names=self.info.lead_names,
                                crop="center", return_tensors="pt")
        batch = with_recorded_leads(dict(inputs), rows, self.info.lead_names, self.processor)
        return {k: torch.as_tensor(batch[k]) for k in ("input_values", "lead_mask", "time_mask")}

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Model inputs of the rows ``indices``, on the device."""
        if self._cache is not None:
            index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
            batch = {k: v[index] for k, v in self._cache.items()}
        else:
            batch = self._prepare(indices)
        return {k: v.to(self.device) for k, v in batch.items()}

    def batches(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Model inputs of the whole split in order, ``batch_size`` rows at a time."""
        for start in range(0, self.length, batch_size):
            yield self.batch(range(start, min(start + batch_size, self.length)))


def _labels(split: Any, task: str, num_classes: int) -> np.ndarray:
    return as_multi_hot(np.asarray(split[label_column(task)]), num_classes)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------------------- zero-shot


@dataclass
class MERLZeroShotResult:
    """MERL zero-shot scores (raw cosine, ``(N, C)``), the prompts used and the metrics."""

    label_names: list[str]
    prompts: dict[str, str]
    scores: np.ndarray
    metrics: MERLClassificationMetrics

    def to_dict(self) -> dict[str, Any]:
        """The metrics and prompts as a plain dict (the scores are left out)."""
        return {"label_names": self.label_names, "prompts": self.prompts, **self.metrics.to_dict()}


def _text_max_length(model: Any, text_max_length: int) -> int:
    positions = getattr(getattr(model.config, "text_config", None), "max_position_embeddings", None)
    return min(text_max_length, positions) if positions else text_max_length


@torch.no_grad()
def merl_class_embeddings(
    model: Any, processor: Any, prompts: Sequence[str], text_max_length: int = 256
) -> torch.Tensor:
    """``(C, D)`` L2-normalised text embeddings of one prompt per class, as MERL computes them: lower-cased,
    padded to ``text_max_length`` tokens (capped by the text tower's positions), truncated, projected."""
    max_length = _text_max_length(model, text_max_length)
    out = []
    with _modes_kept(model):
        model.eval()
        for prompt in prompts:
            tok = processor(text=[prompt.lower()], padding="max_length", truncation=True, max_length=max_length,
                            return_tensors="pt")
            tok = {k: v.to(_device(model)) for k, v in tok.items()
                   if k in ("input_ids", "attention_mask", "token_type_ids")}
            emb = model.get_text_features(**tok).pooler_output.float()
            emb = emb / emb.norm(dim=-1, keepdim=True)  # one template: the mean over templates is this embedding
            out.append(emb.mean(dim=0) / emb.mean(dim=0).norm())
    return torch.stack(out)


def merl_zero_shot(
    model: Any,
    processor: Any,
    dataset_split: Any,
    info: ECGDatasetInfo,
    task: str,
    prompts: Mapping[str, str],
    batch_size: int = 64,
    text_max_length: int = 256,
    crop: str = "start",
    progress: bool = False,
) -> MERLZeroShotResult:
    """MERL zero-shot classification of ``task`` on ``dataset_split`` (the test split).

    ``prompts`` maps every class of the task to one prompt string (extra classes are ignored). The score of a
    class is the cosine of the L2-normalised projected ECG embedding with the class's normalised prompt
    embedding; the metrics are :func:`merl_classification_metrics`. The model's modes are left as they were.
    """
    names = list(info.tasks[task])
    task_prompts = merl_task_prompts(prompts, names, task)
    class_emb = merl_class_embeddings(model, processor, [task_prompts[n] for n in names], text_max_length)
    inputs = _SplitInputs(processor, dataset_split, info, crop, _device(model))
    scores = []
    with torch.no_grad(), _modes_kept(model):
        model.eval()
        for batch in tqdm(inputs.batches(batch_size), total=math.ceil(inputs.length / batch_size),
                          desc="MERL zero-shot", disable=not progress, leave=False):
            emb = model.get_ecg_features(**batch).pooler_output.float()
            emb = emb / emb.norm(dim=-1, keepdim=True)
            scores.append((emb @ class_emb.T).cpu().numpy())
    score_array = np.concatenate(scores) if scores else np.zeros((0, len(names)))
    metrics = merl_classification_metrics(_labels(dataset_split, task, len(names)), score_array, names)
    return MERLZeroShotResult(names, task_prompts, score_array, metrics)


# ---------------------------------------------------------------------------------------------- linear probe


def merl_probe_optimizer(
    parameters: Any, learning_rate: float = 1e-3, weight_decay: float = 1e-4, milestone: int = 40,
    gamma: float = 0.1,
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.MultiStepLR]:
    """MERL's probe optimiser: Adam over all ``parameters`` (those without a gradient are not updated) and
    ``MultiStepLR(milestones=[milestone], gamma=gamma)``, which MERL steps after every batch and every epoch."""
    optimizer = torch.optim.Adam(parameters, lr=learning_rate, weight_decay=weight_decay)
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[milestone], gamma=gamma)


def merl_learning_rate(scheduler_steps: int, learning_rate: float = 1e-3, milestone: int = 40,
                       gamma: float = 0.1) -> float:
    """The probe's learning rate after ``scheduler_steps`` scheduler steps (one per batch plus one per epoch)."""
    return learning_rate * (gamma if scheduler_steps >= milestone else 1.0)


def merl_training_subset(num_train: int, ratio: int) -> np.ndarray:
    """Row indices of the ``ratio`` % training subset as MERL draws it: the whole split at 100, else
    ``train_test_split(train_size=ratio/100, random_state=42)`` (unstratified), in the order it returns them."""
    from sklearn.model_selection import train_test_split

    if isinstance(ratio, bool) or not isinstance(ratio, (int, np.integer)) or not 1 <= ratio <= 100:
        raise ValueError(f"the probe ratio is a whole percentage from 1 to 100, got {ratio!r}")
    rows = np.arange(num_train)
    if ratio == 100:
        return rows
    if math.floor(ratio / 100 * num_train) < 1:
        raise ValueError(f"{ratio}% of the {num_train} training ECGs is less than one ECG")
    subset, _ = train_test_split(rows, train_size=ratio / 100, random_state=42)
    return np.asarray(subset)


def _depends_on_mode(tower: nn.Module) -> bool:
    """Whether the tower's output can differ between training and eval mode (batch norm, active dropout)."""
    for module in tower.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return True
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return True
        if any(float(getattr(module, name, 0) or 0) > 0 for name in ("attention_dropout", "drop_prob")):
            return True
    return False


@dataclass
class MERLProbeResult:
    """One MERL linear probe: the per-epoch history and the reported maxima (x100).

    ``backbone`` (the probed copy of the ECG tower, its batch-norm statistics as the probe left them) and
    ``head`` are kept for inspection and left out of :meth:`to_dict`.
    """

    task: str
    ratio: int
    label_names: list[str]
    train_size: int
    epochs: int
    batches_per_epoch: int
    history: list[dict[str, Any]]
    max_test_auroc: float
    max_test_f1: float
    max_test_accuracy: float
    best_test_epoch: int | None
    test_auroc_at_best_validation_epoch: float
    test_classes_evaluated: list[str]
    test_left_out: list[str]
    features_recomputed_every_epoch: bool
    backbone: nn.Module | None = None
    head: nn.Module | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (without ``backbone`` and ``head``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("backbone", "head")}


def _nanmax(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(max(finite)) if finite else float("nan")


def merl_linear_probe(
    model: Any,
    processor: Any,
    dataset: Mapping[str, Any],
    info: ECGDatasetInfo,
    task: str,
    ratio: int,
    epochs: int = 100,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 42,
    eval_batch_size: int = 64,
    crop: str = "start",
    milestone: int = 40,
    gamma: float = 0.1,
    progress: bool = False,
) -> MERLProbeResult:
    """MERL's linear probe of ``task`` on ``ratio`` % of ``dataset["train"]`` (see the module protocol).

    Works on a copy of the ECG tower (``model.ecg_model``, or ``model`` itself for an ECG encoder): it is frozen
    but in training mode during the epochs, so its batch norms use batch statistics and update their running
    statistics, and every epoch's features are recomputed (computed once only for a tower without batch norm
    or dropout, whose output does not depend on the mode). ``model`` is left unchanged. The validation and test
    splits are scored in eval mode after every epoch.
    """
    if epochs < 1 or batch_size < 1 or eval_batch_size < 1:
        raise ValueError(f"epochs, batch_size and eval_batch_size must be at least 1; got {epochs}, {batch_size}, "
                         f"{eval_batch_size}")
    names = list(info.tasks[task])
    subset = merl_training_subset(len(dataset["train"]), ratio)
    y_train = _labels(dataset["train"], task, len(names))[subset]
    y_val = _labels(dataset["validation"], task, len(names))
    y_test = _labels(dataset["test"], task, len(names))
    source = model.ecg_model if hasattr(model, "ecg_model") else model
    tower = copy.deepcopy(source)
    tower.requires_grad_(False)
    device = _device(tower)
    recompute = _depends_on_mode(tower)
    splits = {name: _SplitInputs(processor, dataset[name], info, crop, device)
              for name in ("train", "validation", "test")}

    def features(split: str, indices: Sequence[int] | None = None, chunk: int = eval_batch_size) -> torch.Tensor:
        """Pooled tower features of the rows ``indices`` (default: all) of ``split``, in the tower's mode, ``chunk``
        rows per forward pass (a training batch is one pass: its batch norms see the whole batch)."""
        inputs = splits[split]
        rows = np.arange(inputs.length) if indices is None else np.asarray(indices)
        out = [tower(**inputs.batch(rows[start:start + chunk])).pooler_output.float()
               for start in range(0, len(rows), chunk)]
        return torch.cat(out)

    cuda = [device.index or 0] if device.type == "cuda" else []
    history: list[dict[str, Any]] = []
    batches_per_epoch = math.ceil(len(subset) / batch_size)
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        head = nn.Linear(int(tower.config.hidden_size), len(names)).to(device)
        optimizer, scheduler = merl_probe_optimizer([*tower.parameters(), *head.parameters()], learning_rate,
                                                    weight_decay, milestone, gamma)
        criterion = nn.BCEWithLogitsLoss()
        shuffle = torch.Generator().manual_seed(seed)
        targets = torch.as_tensor(y_train, dtype=torch.float32, device=device)
        cached: dict[str, torch.Tensor] = {}
        if not recompute:
            with torch.no_grad():
                tower.eval()
                cached = {"train": features("train", subset), "validation": features("validation"),
                          "test": features("test")}
        for epoch in tqdm(range(epochs), desc=f"MERL probe {task} {ratio}%", disable=not progress, leave=False):
            tower.train()
            head.train()
            order = torch.randperm(len(subset), generator=shuffle).numpy()
            losses, rates = [], []
            for start in range(0, len(order), batch_size):
                positions = order[start:start + batch_size]
                with torch.no_grad():
                    feats = (cached["train"][positions] if cached
                             else features("train", subset[positions], chunk=len(positions)))
                rates.append(optimizer.param_groups[0]["lr"])
                loss = criterion(head(feats), targets[positions])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
            tower.eval()
            head.eval()
            entry: dict[str, Any] = {"epoch": epoch, "learning_rate_first_batch": rates[0],
                                     "learning_rate_last_batch": rates[-1], "train_loss": float(np.mean(losses))}
            with torch.no_grad():
                for split, y in (("validation", y_val), ("test", y_test)):
                    scores = head(cached[split] if cached else features(split)).cpu().numpy()
                    metrics = merl_classification_metrics(y, scores, names)
                    entry[f"{split}_auroc"] = metrics.macro_auroc
                    entry[f"{split}_f1"] = metrics.macro_f1
                    entry[f"{split}_accuracy"] = metrics.macro_accuracy
            history.append(entry)
            scheduler.step()
    test_auroc = [h["test_auroc"] for h in history]
    val_auroc = [h["validation_auroc"] for h in history]
    best = int(np.nanargmax(test_auroc)) if np.isfinite(test_auroc).any() else None
    best_val = int(np.nanargmax(val_auroc)) if np.isfinite(val_auroc).any() else None
    ok = evaluable_classes(y_test) if len(y_test) else np.zeros(len(names), dtype=bool)
    return MERLProbeResult(
        task=task, ratio=int(ratio), label_names=names, train_size=len(subset), epochs=epochs,
        batches_per_epoch=batches_per_epoch, history=history,
        max_test_auroc=_nanmax(test_auroc), max_test_f1=_nanmax([h["test_f1"] for h in history]),
        max_test_accuracy=_nanmax([h["test_accuracy"] for h in history]), best_test_epoch=best,
        test_auroc_at_best_validation_epoch=test_auroc[best_val] if best_val is not None else float("nan"),
        test_classes_evaluated=[n for n, keep in zip(names, ok) if keep],
        test_left_out=[n for n, keep in zip(names, ok) if not keep],
        features_recomputed_every_epoch=recompute, backbone=tower, head=head,
    )


# ------------------------------------------------------------------------------------------------- evaluation


def _figure(value: float) -> float | str:
    return round(float(value), 2) if np.isfinite(value) else ""


def merl_markdown(report: EvaluationReport) -> str:
    """The MERL results table, what was left out, MERL's protocol and the lists of differences."""
    results = report.results
    parts = [results_table(report.rows, floatfmt=".2f")]
    if report.skipped_text():
        parts.append(report.skipped_text())
    if results.get("prompts_source"):
        parts.append(f"Prompts: {results['prompts_source']}")
    parts.append("Protocol (MERL):\n" + MERL_PROTOCOL)
    parts.append("Differences from the cardiomm protocol:\n"
                 + "\n".join(f"- {d}" for d in results["differences_from_cardiomm_protocol"]))
    parts.append("Where this implementation departs from MERL's code:\n"
                 + "\n".join(f"- {d}" for d in results["departures_from_merl_code"]))
    return "\n\n".join(parts)


def evaluate_merl_protocol(
    model: Any,
    processor: Any,
    dataset: Mapping[str, Any],
    info: ECGDatasetInfo,
    tasks: Sequence[str] | None = None,
    prompts: Mapping[str, str] | str | os.PathLike | None = None,
    ratios: Sequence[int] = (1, 10, 100),
    epochs: int = 100,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 42,
    crop: str = "start",
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> EvaluationReport:
    """MERL's zero-shot and linear-probe protocols on every task (see the module protocol).

    ``prompts`` is a MERL prompt file (path) or its content (class name -> one prompt string) covering every class
    of the evaluated tasks; ``None`` joins cardiomm's knowledge-base prompts of each class into one string (the
    results say which). Classes and ratios the data cannot support are left out, warned about and listed under
    ``"skipped"``. With ``out_dir``, ``results.json`` and ``results.md`` are written there. Figures are x100.
    """
    tasks = list(tasks or info.tasks)
    unknown = [t for t in tasks if t not in info.tasks]
    if unknown:
        raise ValueError(f"dataset {info.name!r} has no task {unknown}; its tasks are {sorted(info.tasks)}")
    if isinstance(prompts, (str, os.PathLike)):
        source, prompt_map = f"MERL prompt file {prompts}", load_merl_prompts(prompts)
    elif prompts is not None:
        source, prompt_map = "the given prompts (one string per class)", dict(prompts)
    else:
        source, prompt_map = ("no prompt file: cardiomm's knowledge-base prompts of each class joined with ', ' "
                              "into one string"), None
    per_task = {task: merl_task_prompts(prompt_map, info.tasks[task], task, source) if prompt_map is not None
                else default_merl_prompts(info, task) for task in tasks}
    report = EvaluationReport(results={
        "protocol": MERL_PROTOCOL,
        "differences_from_cardiomm_protocol": list(DIFFERENCES_FROM_CARDIOMM_PROTOCOL),
        "departures_from_merl_code": list(DEPARTURES_FROM_MERL_CODE),
        "crop": crop, "prompts_source": source, "scale": "x100",
        "linear_probe_settings": {"ratios": [int(r) for r in ratios], "epochs": epochs, "batch_size": batch_size,
                                  "learning_rate": learning_rate, "weight_decay": weight_decay, "seed": seed,
                                  "lr_milestone_scheduler_steps": 40, "lr_gamma": 0.1},
        "tasks": {},
    })
    for task in tasks:
        names = list(info.tasks[task])
        y_test = _labels(dataset["test"], task, len(names))
        entry: dict[str, Any] = {}
        skipped = _left_out_classes(y_test, names, task, "MERL zero-shot and linear probe", "test",
                                    "no AUROC, F1 or accuracy")
        zs = merl_zero_shot(model, processor, dataset["test"], info, task, per_task[task], crop=crop,
                            progress=progress)
        classes = f"{len(zs.metrics.auroc)} of {len(names)}"
        if zs.metrics.auroc:
            entry["zero_shot"] = zs.to_dict()
            report.rows.append({"task": task, "protocol": "MERL zero-shot", "fraction": "",
                                "AUROC": _figure(zs.metrics.macro_auroc), "F1": _figure(zs.metrics.macro_f1),
                                "ACC": _figure(zs.metrics.macro_accuracy), "classes": classes,
                                "selection": "F1/ACC threshold on test labels"})
        else:
            skipped.append(SkippedResult(task, "MERL zero-shot", "test", None,
                                         "no class has both a positive and a negative ECG in the test split"))
        probes: dict[str, Any] = {}
        for ratio in ratios:
            try:
                merl_training_subset(len(dataset["train"]), ratio)
            except ValueError as err:
                skipped.append(SkippedResult(task, f"MERL linear probe {ratio}%", "train", None, str(err)))
                continue
            if not zs.metrics.auroc:
                skipped.append(SkippedResult(task, f"MERL linear probe {ratio}%", "test", None,
                                             "no class has both a positive and a negative ECG in the test split"))
                continue
            probe = merl_linear_probe(model, processor, dataset, info, task, ratio, epochs=epochs,
                                      batch_size=batch_size, learning_rate=learning_rate,
                                      weight_decay=weight_decay, seed=seed, crop=crop, progress=progress)
            probes[str(ratio)] = probe.to_dict()
            report.rows.append({"task": task, "protocol": "MERL linear probe", "fraction": f"{ratio}%",
                                "AUROC": _figure(probe.max_test_auroc), "F1": _figure(probe.max_test_f1),
                                "ACC": _figure(probe.max_test_accuracy), "classes": classes,
                                "selection": f"max over {epochs} epochs on test"})
        if probes:
            entry["linear_probe"] = probes
        entry["skipped"] = [asdict(item) for item in skipped]
        report.skipped += skipped
        report.results["tasks"][task] = entry
    _warn_skipped(report.skipped)
    report.results["skipped"] = [asdict(item) for item in report.skipped]
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report.files.append(save_results(report.results, out / "results.json"))
        (out / "results.md").write_text(merl_markdown(report) + "\n", encoding="utf-8")
        report.files.append(out / "results.md")
    return report


def combined_markdown(cardiomm_report: EvaluationReport, merl_report: EvaluationReport) -> str:
    """Both protocols' tables, cardiomm's protocol, MERL's protocol and the differences, as Markdown."""
    return "\n\n".join([
        "## cardiomm protocol", cardiomm_report.markdown(), "Protocol (cardiomm):\n" + CARDIOMM_PROTOCOL,
        "## MERL protocol", merl_markdown(merl_report),
    ])


def write_combined_results(
    cardiomm_report: EvaluationReport, merl_report: EvaluationReport, out_dir: str | os.PathLike
) -> list[Path]:
    """Write ``results.json`` (keys ``"cardiomm"`` and ``"merl"``, plus the differences between them) and
    ``results.md`` (both tables and the differences) to ``out_dir``; returns the two paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {"protocols": ["cardiomm", "merl"], "cardiomm": cardiomm_report.results, "merl": merl_report.results,
               "differences_from_cardiomm_protocol": list(DIFFERENCES_FROM_CARDIOMM_PROTOCOL)}
    json_path = save_results(results, out / "results.json")
    md_path = out / "results.md"
    md_path.write_text(combined_markdown(cardiomm_report, merl_report) + "\n", encoding="utf-8")
    return [json_path, md_path]


__all__ = [
    "DEPARTURES_FROM_MERL_CODE",
    "DIFFERENCES_FROM_CARDIOMM_PROTOCOL",
    "MERL_PROTOCOL",
    "MERLClassificationMetrics",
    "MERLProbeResult",
    "MERLZeroShotResult",
    "combined_markdown",
    "default_merl_prompts",
    "evaluate_merl_protocol",
    "load_merl_prompts",
    "merl_class_embeddings",
    "merl_classification_metrics",
    "merl_learning_rate",
    "merl_linear_probe",
    "merl_markdown",
    "merl_max_f1",
    "merl_probe_optimizer",
    "merl_task_prompts",
    "merl_training_subset",
    "merl_zero_shot",
    "write_combined_results",
]
