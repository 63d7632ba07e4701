"""Out-of-distribution detection with the ECG embeddings of a checkpoint (the protocol of Table 6 of the EHR paper).

The ECG encoder of --model embeds the in-distribution dataset (--in-dist, a cardiomm dataset folder) and every
--data set (a dataset folder, all splits, or a folder of raw WFDB / challenge .mat records, searched recursively).
The embeddings are the encoder's raw output (--normalize L2-normalises them, which discards their norm).
A relative Mahalanobis detector (Ren et al., 2021) is fitted on the in-distribution training split: one Gaussian
per class of --task (its multi-hot label column) with a shared covariance, and a background Gaussian; the score of
an ECG is the smallest relative distance to a class (higher = more out-of-distribution). Without --task every ECG
is of one class, where the relative distance is 0 by construction, so the plain Mahalanobis distance is the score.

The threshold at significance a is the (1 - a) quantile of the scores of the in-distribution held-out (test)
split, so that about a of in-distribution ECGs are rejected; the rejection rate of a set is the share of its ECGs
scored above the threshold. Reported per --data set: rejection at 1 % and 5 % significance and the AUROC of
separating it from the held-out in-distribution ECGs. Written to --out: results.json, results.md, scores.csv
(every ECG's score), unreadable.csv (records that could not be used) and score_histogram.png (the score
distributions with the thresholds marked).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SIGNIFICANCE_LEVELS = (0.01, 0.05)


@dataclass
class OODSetResult:
    """Scores and metrics of one out-of-distribution set."""

    name: str
    path: str
    record_ids: list[str]
    scores: np.ndarray
    unreadable: list[dict[str, str]]
    rejection: dict[float, float]
    auroc: float


@dataclass
class OODReport:
    """The fitted detector's held-out in-distribution scores, thresholds and every OOD set's results."""

    model: str
    in_dist: str
    fit_split: str
    held_out_split: str
    task: str | None
    method: str
    num_classes: int
    num_fit: int
    held_out_ids: list[str]
    held_out_scores: np.ndarray
    thresholds: dict[float, float]
    sets: list[OODSetResult]
    unreadable: list[dict[str, str]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One table row per OOD set, rates and AUROC in percent (as Table 6 of the EHR paper)."""
        rows = []
        for s in self.sets:
            row: dict[str, Any] = {"OOD set": s.name, "ECGs": len(s.scores)}
            for a in sorted(self.thresholds):
                row[f"rejection at {100 * a:g} % sig. (%)"] = 100 * s.rejection[a]
            row["IND vs OOD AUROC (%)"] = 100 * s.auroc
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        """The results as JSON-ready values (rates and AUROC as fractions)."""
        return {
            "model": self.model,
            "method": self.method,
            "in_distribution": {
                "path": self.in_dist, "fit_split": self.fit_split, "held_out_split": self.held_out_split,
                "task": self.task, "classes": self.num_classes, "fit_ecgs": self.num_fit,
                "held_out_ecgs": len(self.held_out_scores), "unreadable": len(self.unreadable),
            },
            "thresholds": {f"{a:g}": t for a, t in sorted(self.thresholds.items())},
            "ood_sets": [
                {"name": s.name, "path": s.path, "ecgs": len(s.scores), "unreadable": len(s.unreadable),
                 "rejection_rate": {f"{a:g}": r for a, r in sorted(s.rejection.items())}, "auroc": s.auroc}
                for s in self.sets
            ],
            "settings": self.settings,
        }

    def to_markdown(self) -> str:
        """results.md: the setup and the table."""
        from ..tables import format_table

        labels = f"classes of task {self.task!r} ({self.num_classes})" if self.task else "one class"
        lines = [
            "# Out-of-distribution detection",
            "",
            f"- model: `{self.model}`",
            f"- in-distribution: `{self.in_dist}`; detector fitted on split `{self.fit_split}` "
            f"({self.num_fit} ECGs, {labels}), thresholds from split `{self.held_out_split}` "
            f"({len(self.held_out_scores)} ECGs)",
            f"- score: {self.method} (higher = more out-of-distribution)",
            "- thresholds: " + ", ".join(f"{100 * a:g} % sig. = {t:.4g}" for a, t in sorted(self.thresholds.items())),
            "",
            format_table(self.rows(), floatfmt=".1f"),
            "",
        ]
        return "\n".join(lines)


def _label_matrix(items: Sequence[Any], column: str) -> np.ndarray:
    return np.array([np.asarray(item.extra[column], dtype=np.int8) for item in items], dtype=np.int8)


def _unreadable_rows(name: str, failed: Sequence[Any]) -> list[dict[str, str]]:
    return [{"set": name, "record_id": i.record_id, "path": i.path, "error": i.error or ""} for i in failed]


def _set_names(paths: Sequence[Path], names: Sequence[str] | None) -> list[str]:
    if names:
        if len(names) != len(paths):
            raise ValueError(f"--name was given {len(names)} times for {len(paths)} --data sets")
        return list(names)
    out: list[str] = []
    for path in paths:
        name = path.resolve().name or str(path)
        out.append(name if name not in out else f"{name} ({len(out) + 1})")
    return out


def ood_report(
    model: str | os.PathLike,
    in_dist: str | os.PathLike,
    data: Sequence[str | os.PathLike],
    task: str | None = None,
    names: Sequence[str] | None = None,
    fit_split: str = "train",
    held_out_split: str = "test",
    crop: str = "center",
    batch_size: int = 64,
    normalize: bool = False,
    ridge: float = 1e-6,
    significance: Sequence[float] = SIGNIFICANCE_LEVELS,
    device: str = "cpu",
    trust_remote_code: bool = False,
    progress: bool = True,
) -> OODReport:
    """Fit the detector on ``in_dist``'s ``fit_split`` with the ECG encoder of ``model`` and score
    ``held_out_split`` and every set of ``data`` (dataset folders or folders of raw records).

    ``task`` names the label column (``labels_<task>``) whose classes the detector is conditioned on; ``None``
    fits one class and scores with the plain Mahalanobis distance. The embeddings are the encoder's
    ``pooler_output`` (L2 normalised with ``normalize``: that discards their norm, often a strong OOD signal).
    ``ridge`` (relative to the mean variance) is added to the covariances. ``ValueError`` naming the path for a
    bad model, dataset, split, task or an empty set.
    """
    from .checkpoint import load_ecg_encoder
    from .ood import RelativeMahalanobis, ood_auroc, rejection_rate
    from .record_embeddings import RecordEmbedder, embed_source, open_records

    if not data:
        raise ValueError("no --data set to score")
    for a in significance:
        if not 0 < a < 1:
            raise ValueError(f"significance levels must lie in (0, 1), got {a!r}")
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    in_root, data_paths = Path(in_dist), [Path(p) for p in data]
    set_names = _set_names(data_paths, names)
    from ..data.ecg_dataset import METADATA_FILE, label_column, read_dataset_info

    if not (in_root / METADATA_FILE).is_file():
        raise ValueError(f"{in_root}: the in-distribution data must be a cardiomm dataset folder (no {METADATA_FILE}) "
                         f"with a {fit_split!r} and a {held_out_split!r} split")
    info = read_dataset_info(in_root)
    columns: list[str] = []
    if task is not None:
        if task not in info.tasks:
            raise ValueError(f"{in_root}: no task {task!r}; tasks: {', '.join(sorted(info.tasks)) or 'none'}")
        columns = [label_column(task)]
    fit_source = open_records(in_root, [fit_split], extra_columns=columns)
    held_out_source = open_records(in_root, [held_out_split])
    sources = [open_records(p) for p in data_paths]  # every path is checked before anything is embedded

    encoder, feature_extractor = load_ecg_encoder(model, trust_remote_code=trust_remote_code)
    encoder.to(device)
    embedder = RecordEmbedder(encoder, feature_extractor, crop=crop, normalize=normalize)
    fit_items, fit_emb, fit_failed = embed_source(fit_source, embedder, batch_size, progress, f"{fit_split} split")
    if len(fit_items) < 2:
        raise ValueError(f"{in_root}: split {fit_split!r} has {len(fit_items)} usable ECGs; the detector needs more")
    if task is None:
        labels = np.zeros(len(fit_items), dtype=np.int64)
        method = "Mahalanobis distance (one class)"
    else:
        labels = _label_matrix(fit_items, columns[0])
        if not labels.any():
            raise ValueError(f"{in_root}: no ECG of split {fit_split!r} has a positive label of task {task!r}")
        method = "relative Mahalanobis distance (Ren et al., 2021)"
    detector = RelativeMahalanobis.fit(fit_emb, labels, ridge=ridge)
    relative = task is not None
    num_classes = len(detector.class_means)

    held_items, held_emb, held_failed = embed_source(held_out_source, embedder, batch_size, progress,
                                                     f"{held_out_split} split")
    if not held_items:
        raise ValueError(f"{in_root}: split {held_out_split!r} has no usable ECG to set the thresholds")
    held_scores = detector.score(held_emb, relative=relative)
    thresholds = {float(a): float(np.quantile(held_scores, 1.0 - a)) for a in significance}
    results = []
    for name, source in zip(set_names, sources):
        items, emb, failed = embed_source(source, embedder, batch_size, progress, name)
        if not items:
            raise ValueError(f"{source.root}: no usable ECG (all {source.count} records unreadable)")
        scores = detector.score(emb, relative=relative)
        results.append(OODSetResult(
            name=name, path=str(source.root), record_ids=[i.record_id for i in items], scores=scores,
            unreadable=_unreadable_rows(name, failed), rejection=rejection_rate(held_scores, scores, significance),
            auroc=ood_auroc(held_scores, scores),
        ))
    return OODReport(
        model=str(model), in_dist=str(in_root), fit_split=fit_split, held_out_split=held_out_split, task=task,
        method=method, num_classes=num_classes, num_fit=len(fit_items),
        held_out_ids=[i.record_id for i in held_items], held_out_scores=held_scores, thresholds=thresholds,
        sets=results,
        unreadable=_unreadable_rows(f"in-distribution {fit_split}", fit_failed)
        + _unreadable_rows(f"in-distribution {held_out_split}", held_failed),
        settings={"crop": crop, "normalize": normalize, "ridge": ridge, "batch_size": batch_size},
    )


def plot_score_histogram(report: OODReport, path: str | os.PathLike, bins: int = 40, dpi: int = 120) -> Path:
    """Write the score distributions (held-out in-distribution vs each OOD set, as densities) with the thresholds
    marked, to ``path`` as a PNG; scores beyond the 99.5th percentile of all scores are drawn in the last bin."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sets = [(f"in-distribution ({report.held_out_split})", report.held_out_scores)]
    sets += [(f"{s.name} (OOD)", s.scores) for s in report.sets]
    pooled = np.concatenate([np.asarray(s, dtype=np.float64) for _, s in sets])
    low, high = float(pooled.min()), float(np.quantile(pooled, 0.995))
    high = max(high, *report.thresholds.values())
    if not high > low:
        high = low + 1.0
    edges = np.linspace(low, high, bins + 1)
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for k, (label, scores) in enumerate(sets):
        clipped = np.clip(np.asarray(scores, dtype=np.float64), low, high)
        ax.hist(clipped, bins=edges, density=True, histtype="stepfilled" if k == 0 else "step", alpha=0.35 if k == 0
                else 1.0, linewidth=1.5, label=f"{label}, n={len(scores)}")
    for (a, t), style in zip(sorted(report.thresholds.items()), ("-", "--", ":", "-.")):
        ax.axvline(t, color="black", linestyle=style, linewidth=1.0, label=f"threshold at {100 * a:g} % sig.")
    ax.set_xlabel("OOD score (" + report.method.split(" (")[0] + ")")
    ax.set_ylabel("density")
    clipped_note = " (last bin: all higher scores)" if pooled.max() > high else ""
    ax.set_title("OOD scores" + clipped_note, fontsize="medium")
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def write_ood_report(report: OODReport, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write results.json, results.md, scores.csv, unreadable.csv and score_histogram.png to ``out_dir``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file; --out must be a folder")
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("results.json", "results.md", "scores.csv", "unreadable.csv",
                                           "score_histogram.png")}
    paths["results.json"].write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    paths["results.md"].write_text(report.to_markdown(), encoding="utf-8")
    with open(paths["scores.csv"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["set", "record_id", "score"])
        name = f"in-distribution {report.held_out_split}"
        writer.writerows((name, i, f"{s:.9g}") for i, s in zip(report.held_out_ids, report.held_out_scores))
        for s in report.sets:
            writer.writerows((s.name, i, f"{v:.9g}") for i, v in zip(s.record_ids, s.scores))
    with open(paths["unreadable.csv"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["set", "record_id", "path", "error"])
        writer.writeheader()
        writer.writerows(report.unreadable + [row for s in report.sets for row in s.unreadable])
    plot_score_histogram(report, paths["score_histogram.png"])
    return paths


# ------------------------------------------------------------------------------------------------ shifted data

LIMB_LEAD_REVERSAL = {"I": ("I", -1.0), "II": ("III", 1.0), "III": ("II", 1.0), "aVR": ("aVL", 1.0),
                      "aVL": ("aVR", 1.0), "aVF": ("aVF", 1.0)}


def shift_ecgs(
    ecg: np.ndarray, lead_names: Sequence[str], sampling_rate: float, rng: np.random.Generator,
    noise_mv: float = 0.05, wander_mv: float = 0.3, wander_hz: tuple[float, float] = (0.1, 0.5),
    swap_limb_leads: bool = True,
) -> np.ndarray:
    """ECGs ``(N, leads, time)`` in mV under a recording shift: the left- and right-arm electrodes swapped
    (``swap_limb_leads``: I → −I, II ↔ III, aVR ↔ aVL), baseline wander (per ECG and lead a sinusoid of amplitude
    ``wander_mv`` mV, frequency drawn in ``wander_hz``, random phase) and white noise of ``noise_mv`` mV (std)."""
    from ..processing.ecg_records import canonical_lead_name

    x = np.asarray(ecg, dtype=np.float32).copy()
    names = [canonical_lead_name(n) for n in lead_names]
    if swap_limb_leads:
        source = x.copy()
        for row, name in enumerate(names):
            if name in LIMB_LEAD_REVERSAL and LIMB_LEAD_REVERSAL[name][0] in names:
                other, sign = LIMB_LEAD_REVERSAL[name]
                x[:, row] = sign * source[:, names.index(other)]
    n, leads, length = x.shape
    t = np.arange(length) / float(sampling_rate)
    freq = rng.uniform(*wander_hz, size=(n, leads, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(n, leads, 1))
    x += (wander_mv * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)
    x += rng.normal(0.0, noise_mv, size=x.shape).astype(np.float32)
    return x


def write_shifted_dataset(
    src: str | os.PathLike, out: str | os.PathLike, seed: int = 0, noise_mv: float = 0.05, wander_mv: float = 0.3,
    swap_limb_leads: bool = True,
) -> Path:
    """Copy the dataset folder ``src`` to ``out`` with every recorded lead passed through :func:`shift_ecgs`
    (leads the dataset did not record stay zero): a covariate-shifted set to check an OOD detector with."""
    from datasets import DatasetDict

    from ..data.ecg_dataset import load_ecg_dataset, save_ecg_dataset

    dataset, info = load_ecg_dataset(src)
    rng = np.random.default_rng(seed)

    def shift(batch: dict[str, Any]) -> dict[str, Any]:
        ecg = np.asarray(batch["ecg"], dtype=np.float32)
        recorded = np.asarray(batch["lead_mask"], dtype=bool)[:, :, None]
        shifted = shift_ecgs(ecg, info.lead_names, info.sampling_rate, rng, noise_mv, wander_mv,
                             swap_limb_leads=swap_limb_leads)
        return {"ecg": np.where(recorded, shifted, 0.0).astype(np.float32)}

    shifted = DatasetDict({
        split: part.with_format("numpy").map(shift, batched=True, batch_size=64, features=part.features)
        .with_format(None)
        for split, part in dataset.items()
    })
    info.description = (f"{info.description} Shifted copy: limb leads swapped={swap_limb_leads}, baseline wander "
                        f"{wander_mv} mV, noise {noise_mv} mV (seed {seed}).").strip()
    info.extra.pop("splits", None)
    return save_ecg_dataset(shifted, out, info)


# ------------------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cardiomm ood``."""
    parser.add_argument("--model", required=True, metavar="CKPT",
                        help="checkpoint folder of any cardiomm model with an ECG encoder")
    parser.add_argument("--in-dist", required=True, metavar="DIR", help="in-distribution cardiomm dataset folder")
    parser.add_argument("--data", required=True, action="append", metavar="DIR",
                        help="out-of-distribution set: dataset folder or folder of raw records (repeatable)")
    parser.add_argument("--name", action="append", default=None, metavar="NAME",
                        help="name of each --data set in the table (repeatable, in order; default: folder name)")
    parser.add_argument("--task", default=None,
                        help="label task of the in-distribution dataset whose classes condition the detector "
                             "(default: one class, plain Mahalanobis distance)")
    parser.add_argument("--out", default="ood_results", metavar="DIR", help="output folder (default ood_results)")
    parser.add_argument("--fit-split", default="train", help="split the detector is fitted on (default train)")
    parser.add_argument("--held-out-split", default="test",
                        help="in-distribution split whose scores set the thresholds (default test)")
    parser.add_argument("--crop", choices=("center", "windows"), default="center",
                        help="center crop (default) or the median over the test-time windows")
    parser.add_argument("--batch-size", type=int, default=64, help="records per forward pass (default 64)")
    parser.add_argument("--ridge", type=float, default=1e-6,
                        help="added to the covariances, relative to the mean variance (default 1e-6)")
    parser.add_argument("--normalize", action="store_true",
                        help="L2-normalise the embeddings (default: the encoder's raw output, whose norm is "
                             "informative for the Mahalanobis distance)")
    parser.add_argument("--device", default="cpu", help="torch device of the model (default cpu)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a checkpoint whose model type needs the Python files shipped with it")


def run(args: argparse.Namespace) -> int:
    """``cardiomm ood``."""
    from ..tables import format_table

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    report = ood_report(
        args.model, args.in_dist, args.data, task=args.task, names=args.name, fit_split=args.fit_split,
        held_out_split=args.held_out_split, crop=args.crop, batch_size=args.batch_size,
        normalize=args.normalize, ridge=args.ridge, device=args.device,
        trust_remote_code=args.trust_remote_code,
    )
    paths = write_ood_report(report, args.out)
    print(f"{report.method}; fitted on {report.num_fit} ECGs of {report.in_dist} ({report.fit_split}), thresholds "
          f"from {len(report.held_out_scores)} ECGs ({report.held_out_split})")
    print(format_table(report.rows(), floatfmt=".1f"))
    unreadable = len(report.unreadable) + sum(len(s.unreadable) for s in report.sets)
    if unreadable:
        print(f"{unreadable} records could not be used (listed in {paths['unreadable.csv']})")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
