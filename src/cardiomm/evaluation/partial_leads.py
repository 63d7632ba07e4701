"""Evaluation of an ECG–text model with a subset of the leads (the partial-lead setting of K-MERL, Figure 6).

Protocol (written into every results file):

- lead sets: the leads of the paper's order [I, II, III, aVF, aVR, aVL, V1, V2, V3, V4, V5, V6] added one at a
  time (the first 1, 2, ..., 12 leads), and named sets (``limb``: I, II, III, aVR, aVL, aVF; single leads; any
  list of lead names).
- restriction: leads are matched by name (the dataset's lead names against the processor's lead order, never
  by position). Only the rows of the set's leads are handed to the model's processor, so a lead outside the
  set is absent: its values are never read, it is zero in ``input_values`` and False in ``lead_mask`` (AND-ed
  with the leads the record has). A model that is not lead-aware (1D ResNets, MERL's ViT) sees zeros there; the
  lead-aware ViT leaves the absent leads' tokens out.
- zero-shot, test split, per task: macro AUROC over the classes with both label values. Scorers: ``cosine``
  (every dual encoder; the cosine of the ECG embedding with the mean of the class's prompt embeddings, the
  prompts of the knowledge base as in the full-lead protocol) and, for a model with a cardiac query network
  (``get_query_logits``), ``query network``: the sigmoid of the query logit of the class's name (K-MERL queries
  the category names, as its pretraining queried the entity names), encoded with ``encode_queries``. A class's
  name is its knowledge-base entry's name ("NORM" -> "normal ECG"), else its label.
- seen / unseen classes: a class is seen when the cosine between the text tower's embedding of its name and the
  nearest pretraining entity's exceeds the threshold (0.95 by default); both are embedded with
  ``encode_queries`` when the model has it, else with ``get_text_features`` (L2-normalised). Entities: an
  entity file when one is given, else the model's ``config.entity_names``. Macro AUROC is also reported over
  the seen and over the unseen classes.
- linear probe: frozen ECG-encoder features (``pooler_output``) of the restricted ECGs; logistic regression on a
  prevalence-keeping 1 % of ``train`` for each seed (0, 1, 2 by default), ``C`` chosen on ``validation``, macro
  AUROC on ``test`` reported as mean ± std over seeds (the full-lead protocol's linear probe).
- what the data cannot support is left out and listed under ``skipped``: a class without a positive or a negative
  test ECG has no AUROC; the probe is left out for a task where no class has both label values in train,
  validation (among the trainable classes) or test; a lead set none of whose leads the model or the dataset has
  is left out.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..data.collators import processor_lead_names
from ..data.ecg_dataset import ECGDatasetInfo, label_column
from ..processing.ecg_records import STANDARD_12_LEADS, canonical_lead_name
from .embeddings import embed_ecgs, text_encoder
from .linear_probe import linear_probe
from .metrics import as_multi_hot, auroc_columns, evaluable_classes
from .results import results_table, save_results
from .runner import _ECGTower, dataset_class_names, dataset_prompts
from .zero_shot import QueryNetworkScorer, class_text_embeddings, l2_normalize, query_encoder

PROTOCOL = __doc__.split("Protocol (written into every results file):", 1)[1].strip()

#: The order in which K-MERL's partial-lead setting adds leads (the order of MIMIC-IV-ECG, as the paper states it).
PAPER_LEAD_ORDER: tuple[str, ...] = ("I", "II", "III", "aVF", "aVR", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")

#: Named lead sets of clinical use.
NAMED_LEAD_SETS: dict[str, tuple[str, ...]] = {
    "limb": ("I", "II", "III", "aVR", "aVL", "aVF"),
    "I": ("I",),
    "II": ("II",),
}

#: The named sets evaluated next to the progressive ones when no set is named.
DEFAULT_NAMED_SETS: tuple[str, ...] = ("limb", "I", "II")

COSINE = "cosine"
QUERY_NETWORK = "query network"


@dataclass(frozen=True)
class LeadSet:
    """A named set of leads; ``progressive``: the first ``len(leads)`` leads of an order (a point of a line)."""

    name: str
    leads: tuple[str, ...]
    progressive: bool = False

    @property
    def n_leads(self) -> int:
        """Number of leads in the set."""
        return len(self.leads)


def _valid_lead_names() -> str:
    return ", ".join(STANDARD_12_LEADS)


def _check_lead_names(names: Iterable[str], what: str) -> tuple[str, ...]:
    """Canonical spellings of ``names``; ``ValueError`` naming the unknown ones and the valid leads."""
    canonical = [canonical_lead_name(n) for n in names]
    unknown = [n for n, c in zip(names, canonical) if c not in STANDARD_12_LEADS]
    if unknown:
        raise ValueError(f"{what}: unknown lead name(s) {unknown}; valid leads are {_valid_lead_names()}, and the "
                         f"named sets {', '.join(NAMED_LEAD_SETS)}")
    if len(set(canonical)) != len(canonical):
        raise ValueError(f"{what}: a lead appears more than once")
    if not canonical:
        raise ValueError(f"{what}: no lead named")
    return tuple(canonical)


def progressive_lead_sets(
    order: Sequence[str] = PAPER_LEAD_ORDER, counts: Iterable[int] = range(1, 13)
) -> list[LeadSet]:
    """The first ``n`` leads of ``order`` for every ``n`` of ``counts`` (named ``"1 lead"``, ``"2 leads"``, ...)."""
    leads = _check_lead_names(list(order), "lead order")
    out = []
    for n in counts:
        if not 1 <= n <= len(leads):
            raise ValueError(f"lead count {n} is outside 1..{len(leads)}")
        out.append(LeadSet(f"{n} lead" + ("s" if n > 1 else ""), leads[:n], progressive=True))
    return out


def parse_lead_counts(text: str, max_count: int = len(PAPER_LEAD_ORDER)) -> list[int]:
    """Lead counts from ``"1..12"``, ``"1,2,3,12"``, ``"4"`` or a mix (``"1..3,12"``), in ascending order.

    A ``ValueError`` names the bad part and the valid range.
    """
    counts: set[int] = set()
    parts = [p.strip() for p in str(text).split(",")]
    for part in parts:
        match = re.fullmatch(r"(\d+)\s*(?:\.\.|-)\s*(\d+)", part)
        if match:
            lo, hi = int(match.group(1)), int(match.group(2))
            if lo > hi:
                raise ValueError(f"{text!r}: range {part!r} is empty (write it low..high)")
            values = range(lo, hi + 1)
        elif part.isdigit():
            values = range(int(part), int(part) + 1)
        else:
            raise ValueError(f"{text!r}: {part!r} is not a lead count; write counts of the lead order as '1..12', "
                             "'1,2,3,12' or '1..3,12'")
        bad = [v for v in values if not 1 <= v <= max_count]
        if bad:
            raise ValueError(f"{text!r}: lead count {bad[0]} is outside 1..{max_count}")
        counts.update(values)
    return sorted(counts)


def parse_lead_set(text: str) -> LeadSet:
    """A named set (``limb``, ``I``, ``II``) or a comma-separated list of lead names (``"V1,V2"``)."""
    key = str(text).strip()
    if key in NAMED_LEAD_SETS:
        return LeadSet(key, NAMED_LEAD_SETS[key])
    names = [n.strip() for n in key.split(",") if n.strip()]
    leads = _check_lead_names(names, f"lead set {text!r}")
    return LeadSet(",".join(leads), leads)


def lead_sets_from_options(
    counts: str | None = None, named: Sequence[str] | None = None, order: Sequence[str] = PAPER_LEAD_ORDER
) -> list[LeadSet]:
    """The lead sets of ``cardiomm evaluate --leads COUNTS --lead-sets NAMED...``: the progressive sets of
    ``counts`` followed by the ``named`` sets; with ``counts`` alone, the named sets are ``limb``, ``I`` and
    ``II``."""
    sets = progressive_lead_sets(order, parse_lead_counts(counts, len(order))) if counts is not None else []
    if named is None:
        named = DEFAULT_NAMED_SETS if counts is not None else ()
    sets += [parse_lead_set(name) for name in named]
    if not sets:
        raise ValueError("no lead set to evaluate: give lead counts and/or named lead sets")
    return sets


def lead_rows(lead_names: Sequence[str], leads: Sequence[str]) -> tuple[list[int], list[str]]:
    """Rows of ``lead_names`` (e.g. a dataset's ``info.lead_names``) that hold the leads of ``leads``, matched by
    name in any spelling, in the order of ``lead_names``, and those rows' names. ``ValueError`` when none is
    there."""
    wanted = {canonical_lead_name(n) for n in leads}
    rows = [i for i, name in enumerate(lead_names) if canonical_lead_name(name) in wanted]
    if not rows:
        raise ValueError(f"none of the leads {list(leads)} is among the leads {list(lead_names)}")
    return rows, [str(lead_names[i]) for i in rows]


def restrict_leads(
    ecg: Any, lead_names: Sequence[str], leads: Sequence[str], lead_mask: Any = None
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """ECGs ``(..., len(lead_names), time)`` restricted to ``leads``: the rows of those leads (by name), the
    matching columns of ``lead_mask`` ``(..., len(lead_names))`` when given, and their lead names.

    Handed to a processor with these lead names, the other leads are absent (zero, False in ``lead_mask``) and
    their values never reach the model.
    """
    rows, names = lead_rows(lead_names, leads)
    ecg = np.asarray(ecg)
    if ecg.ndim < 2 or ecg.shape[-2] != len(lead_names):
        raise ValueError(f"ECGs of shape {ecg.shape} do not have {len(lead_names)} leads on the second-to-last axis")
    mask = None if lead_mask is None else np.asarray(lead_mask, dtype=bool)[..., rows]
    return ecg[..., rows, :], mask, names


class LeadSubsetView:
    """A dataset split seen through a lead set: slices give ``ecg`` (restricted rows, float32) and, when the
    split has it, ``lead_mask`` (the recorded leads, restricted); ``lead_names`` names the rows. Pass it to
    :func:`~cardiomm.evaluation.embeddings.embed_ecgs` with ``lead_names=view.lead_names``."""

    def __init__(self, dataset: Any, lead_names: Sequence[str], leads: Sequence[str]) -> None:
        self.rows, self.lead_names = lead_rows(lead_names, leads)
        self.all_lead_names = list(lead_names)
        columns = getattr(dataset, "column_names", None)
        self.has_mask = columns is None or "lead_mask" in columns
        if columns is not None and hasattr(dataset, "select_columns"):
            dataset = dataset.select_columns(["ecg"] + (["lead_mask"] if self.has_mask else []))
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: slice) -> dict[str, np.ndarray]:
        batch = self.dataset[index]
        ecg = np.stack([np.asarray(e, dtype=np.float32) for e in batch["ecg"]])
        if ecg.shape[1] != len(self.all_lead_names):
            raise ValueError(f"ECGs have {ecg.shape[1]} leads but the dataset names {len(self.all_lead_names)}")
        out = {"ecg": ecg[:, self.rows]}
        if self.has_mask and "lead_mask" in batch:
            out["lead_mask"] = np.stack([np.asarray(m, dtype=bool) for m in batch["lead_mask"]])[:, self.rows]
        return out


def load_entity_names(path: str | os.PathLike) -> list[str]:
    """The entity vocabulary of an entity file (``cardiomm entities mine``); ``ValueError`` naming the file."""
    path = Path(path)
    try:
        from ..knowledge.entity_mining import load_mined_entities
    except ImportError:
        load_mined_entities = None
    if load_mined_entities is not None:
        return [str(e) for e in load_mined_entities(path).entities]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ValueError(f"{path}: no such entity file") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a JSON entity file ({err})") from err
    if not isinstance(data, dict) or data.get("format") != "cardiomm-entities":
        raise ValueError(f"{path}: not a cardiomm entity file (expected a JSON object with "
                         "\"format\": \"cardiomm-entities\")")
    entities = data.get("entities")
    if not isinstance(entities, list) or not all(isinstance(e, str) for e in entities):
        raise ValueError(f"{path}: \"entities\" must be a list of entity names")
    return list(entities)


def text_tower_encoder(model: Any, processor: Any) -> Callable[[Sequence[str]], np.ndarray]:
    """L2-normalised text embeddings for the seen/unseen split: ``encode_queries`` (the text tower's pooled output)
    when the model has it, else ``get_text_features``."""
    if hasattr(model, "encode_queries"):
        encode = query_encoder(model, processor)
        return lambda texts: l2_normalize(encode(list(texts)).cpu().numpy())
    return text_encoder(model, processor)


@dataclass
class SeenUnseenSplit:
    """Classes whose name is close to a pretraining entity (``seen``) and the others (``unseen``)."""

    threshold: float
    seen: list[str]
    unseen: list[str]
    nearest_entity: dict[str, str]
    similarity: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {"threshold": self.threshold, "seen": self.seen, "unseen": self.unseen,
                "nearest_entity": self.nearest_entity, "similarity": self.similarity}


def seen_unseen_split(
    class_names: Sequence[str],
    entity_names: Sequence[str],
    encode: Callable[[Sequence[str]], Any],
    threshold: float = 0.95,
    labels: Sequence[str] | None = None,
) -> SeenUnseenSplit:
    """A class is seen when the cosine of its name's embedding with the nearest entity's exceeds ``threshold``.
    ``labels`` name the classes in the result (default: ``class_names``; e.g. a dataset's label "NORM" whose class
    name is "normal ECG")."""
    if not entity_names:
        raise ValueError("no pretraining entities to compare the class names with")
    labels = list(class_names if labels is None else labels)
    if len(labels) != len(class_names):
        raise ValueError(f"got {len(labels)} labels for {len(class_names)} class names")
    classes = l2_normalize(np.asarray(encode(list(class_names)), dtype=np.float64))
    entities = l2_normalize(np.asarray(encode(list(entity_names)), dtype=np.float64))
    sims = classes @ entities.T
    best = sims.argmax(axis=1)
    nearest = {c: str(entity_names[j]) for c, j in zip(labels, best)}
    similarity = {c: float(sims[i, j]) for i, (c, j) in enumerate(zip(labels, best))}
    seen = [c for c in labels if similarity[c] > threshold]
    unseen = [c for c in labels if similarity[c] <= threshold]
    return SeenUnseenSplit(float(threshold), seen, unseen, nearest, similarity)


@dataclass
class PartialLeadReport:
    """Results of :func:`evaluate_partial_leads`: table rows, the JSON payload and the written files."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def table(self) -> str:
        """The results as a Markdown table."""
        return results_table(self.rows)

    def skipped_text(self) -> str:
        """What was left out, as a Markdown list (empty when nothing was)."""
        skipped = self.results.get("skipped", [])
        if not skipped:
            return ""
        lines = [f"Left out ({len(skipped)}): what could not be computed on this data"]
        lines += [f"- {item['what']}: {item['reason']}" for item in skipped]
        return "\n".join(lines)

    def seen_unseen_text(self) -> str:
        """The seen and unseen classes of every task, as a Markdown list."""
        split = self.results.get("seen_unseen") or {}
        lines = []
        for task, entry in split.items():
            lines.append(f"- {task}: seen {entry['seen'] or 'none'}; unseen {entry['unseen'] or 'none'}")
        if not lines:
            return ""
        return f"Seen / unseen classes (threshold {self.results['seen_threshold']}):\n" + "\n".join(lines)

    def markdown(self) -> str:
        """The table, the seen/unseen classes and what was left out."""
        return "\n\n".join(p for p in (self.table(), self.seen_unseen_text(), self.skipped_text()) if p)


def _fmt(value: float | None) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.3f}"


def _macro(per_class: Mapping[str, float], names: Sequence[str] | None = None) -> float | None:
    values = [per_class[n] for n in (per_class if names is None else names) if n in per_class]
    return float(np.mean(values)) if values else None


def _probe_problem(y_train: np.ndarray, y_val: np.ndarray, y_test: np.ndarray) -> str | None:
    """Why the linear probe cannot run on these labels (``None`` when it can)."""
    trainable = evaluable_classes(y_train)
    if not trainable.any():
        return "no class has both a positive and a negative ECG in the train split"
    if not evaluable_classes(y_val[:, trainable]).any():
        return "no trainable class has both a positive and a negative ECG in the validation split: C cannot be chosen"
    if not evaluable_classes(y_test[:, trainable]).any():
        return "no trainable class has both a positive and a negative ECG in the test split"
    return None


def _plot_task(task: str, entries: Sequence[Mapping[str, Any]], scorers: Sequence[str], probe_name: str,
               path: Path, dpi: int = 120) -> Path:
    """AUROC against the number of leads: progressive sets as lines, named sets as marked points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    series = [(f"zero-shot ({s})", lambda t, s=s: (t["zero_shot"].get(s) or {}).get("macro_auroc"), None)
              for s in scorers]
    series.append((f"{probe_name} linear probe", lambda t: (t.get("linear_probe") or {}).get("mean"),
                   lambda t: (t.get("linear_probe") or {}).get("std")))
    markers = ["s", "^", "D", "v", "P", "X", "*", "h"]
    for k, (label, value, error) in enumerate(series):
        color = f"C{k}"
        line = [(e["n_leads"], value(e["tasks"][task]), error(e["tasks"][task]) if error else None)
                for e in entries if e["progressive"] and task in e["tasks"]]
        line = [p for p in line if p[1] is not None]
        if line:
            x, y, err = zip(*sorted(line))
            ax.errorbar(x, y, yerr=None if error is None else [v or 0.0 for v in err], color=color, marker="o",
                        markersize=4, linewidth=1.3, capsize=2, label=label)
        named = [e for e in entries if not e["progressive"] and task in e["tasks"]]
        for m, e in enumerate(named):
            v = value(e["tasks"][task])
            if v is None:
                continue
            ax.plot([e["n_leads"]], [v], linestyle="none", marker=markers[m % len(markers)], markersize=8,
                    markerfacecolor="none" if error is not None else color, markeredgecolor=color)
            ax.annotate(e["name"], (e["n_leads"], v), textcoords="offset points", xytext=(5, 4), fontsize="x-small",
                        color=color)
    ax.set_xlabel("number of leads")
    ax.set_ylabel("macro AUROC (test)")
    ax.set_xticks(range(1, 13))
    ax.set_xlim(0.5, 12.5)
    ax.set_title(f"partial leads: {task}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def evaluate_partial_leads(
    model: Any,
    processor: Any,
    dataset: Mapping[str, Any],
    info: ECGDatasetInfo,
    lead_sets: Sequence[LeadSet] | None = None,
    tasks: Sequence[str] | None = None,
    out_dir: str | os.PathLike | None = None,
    crop: str = "center",
    probe_fraction: float = 0.01,
    seeds: Sequence[int] = (0, 1, 2),
    entities: Sequence[str] | None = None,
    seen_threshold: float = 0.95,
    prompts: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
    batch_size: int = 64,
    progress: bool = True,
    entities_source: str | None = None,
) -> PartialLeadReport:
    """Zero-shot and linear-probe evaluation of an ECG–text dual encoder for every lead set (see the module's
    protocol).

    ``lead_sets`` defaults to the 12 progressive sets of :data:`PAPER_LEAD_ORDER` plus ``limb``, ``I`` and ``II``.
    ``entities`` (pretraining entity names; ``entities_source`` says where they come from, e.g. the entity file)
    default to ``model.config.entity_names``; without any, the seen/unseen split is left out. Results go to
    ``out_dir`` as ``partial_leads.json``, ``partial_leads.md`` and one ``partial_leads_<task>.png`` per task.
    """
    if not -1.0 <= seen_threshold <= 1.0:
        raise ValueError(f"the seen threshold is a cosine similarity in [-1, 1], got {seen_threshold}")
    lead_sets = list(lead_sets) if lead_sets is not None else lead_sets_from_options("1..12")
    tasks = list(tasks or info.tasks)
    unknown = [t for t in tasks if t not in info.tasks]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; the dataset has {list(info.tasks)}")
    rate, names_in_data = info.sampling_rate, list(info.lead_names)
    model_leads = processor_lead_names(processor) or list(names_in_data)
    has_query_network = hasattr(model, "get_query_logits") and hasattr(model, "encode_queries")
    scorers = [COSINE] + ([QUERY_NETWORK] if has_query_network else [])
    probe_name = f"{probe_fraction:.0%}"
    skipped: list[dict[str, Any]] = []

    # what does not depend on the leads: labels, prompts, class embeddings, query embeddings, seen/unseen classes
    entity_source = entities_source or "given"
    if entities is None:
        entities = list(getattr(getattr(model, "config", None), "entity_names", None) or [])
        entity_source = "model config (entity_names)"
    encode_text = text_encoder(model, processor)
    encode_queries = query_encoder(model, processor) if has_query_network else None
    static: dict[str, dict[str, Any]] = {}
    seen_unseen: dict[str, Any] = {}
    for task in tasks:
        column, names = label_column(task), list(info.tasks[task])
        y = {split: as_multi_hot(np.asarray(dataset[split][column]), len(names))
             for split in ("train", "validation", "test")}
        task_prompts = dict(prompts[task]) if prompts and task in prompts else dataset_prompts(info, task)
        _, class_emb = class_text_embeddings(task_prompts, encode_text, names)
        entry: dict[str, Any] = {"names": names, "y": y, "class_emb": class_emb, "prompts": task_prompts}
        class_names = dataset_class_names(info, task)
        entry["query_texts"] = [class_names[n] for n in names]
        if encode_queries is not None:  # K-MERL queries the class names, as its pretraining queried entity names
            entry["queries"] = encode_queries(entry["query_texts"])
        missing_test = [n for n, ok in zip(names, evaluable_classes(y["test"])) if not ok]
        if missing_test:
            skipped.append({"what": f"task {task!r}, zero-shot and linear probe, test split: classes {missing_test}",
                            "reason": "no positive or no negative ECG in the test split; no AUROC"})
        entry["probe_problem"] = _probe_problem(y["train"], y["validation"], y["test"])
        if entry["probe_problem"]:
            skipped.append({"what": f"task {task!r}, {probe_name} linear probe", "reason": entry["probe_problem"]})
        if entities:
            split = seen_unseen_split(entry["query_texts"], entities, text_tower_encoder(model, processor),
                                      seen_threshold, labels=names)
            entry["split"] = split
            seen_unseen[task] = split.to_dict()
        static[task] = entry
    if not entities:
        skipped.append({"what": "seen / unseen split", "reason": "no pretraining entities: the model's config has no "
                        "entity_names and no entity file was given"})

    report = PartialLeadReport(results={
        "protocol": PROTOCOL, "crop": crop, "lead_order": list(PAPER_LEAD_ORDER), "scorers": scorers,
        "probe_fraction": probe_fraction, "probe_seeds": list(seeds), "seen_threshold": seen_threshold,
        "entities_source": entity_source if entities else None, "n_entities": len(entities),
        "seen_unseen": seen_unseen, "lead_sets": [],
    })
    # features per distinct set of leads used (a named set equal to a progressive one is computed once)
    computed: dict[tuple[str, ...], dict[str, Any] | None] = {}
    for lead_set in tqdm(lead_sets, desc="lead sets", disable=not progress):
        present = [n for n in lead_set.leads if any(canonical_lead_name(d) == n for d in names_in_data)]
        used = tuple(n for n in present if n in {canonical_lead_name(m) for m in model_leads})
        set_entry: dict[str, Any] = {"name": lead_set.name, "leads": list(lead_set.leads),
                                     "n_leads": lead_set.n_leads, "progressive": lead_set.progressive,
                                     "leads_used": list(used), "tasks": {}}
        report.results["lead_sets"].append(set_entry)
        if not used:
            reason = (f"none of its leads is among the dataset's leads {names_in_data}" if not present
                      else f"none of its leads is among the model's leads {model_leads}")
            skipped.append({"what": f"lead set {lead_set.name!r}", "reason": reason})
            continue
        if used not in computed:
            computed[used] = _lead_set_outputs(model, processor, dataset, names_in_data, used, static, rate,
                                               batch_size, crop)
        outputs = computed[used]
        for task in tasks:
            set_entry["tasks"][task] = _task_results(task, static[task], outputs, seeds, probe_fraction)
            task_entry = set_entry["tasks"][task]
            probe = task_entry.get("linear_probe")
            probe_text = f"{probe['mean']:.3f} ± {probe['std']:.3f}" if probe else "–"
            for scorer in scorers:
                zs = task_entry["zero_shot"].get(scorer)
                result = "–" if zs is None else " / ".join(
                    _fmt(zs.get(k)) for k in ("macro_auroc", "seen_macro_auroc", "unseen_macro_auroc"))
                report.rows.append({"lead set": lead_set.name, "n leads": lead_set.n_leads, "task": task,
                                    "scorer": scorer,
                                    "zero-shot macro AUROC (all / seen / unseen)": result,
                                    f"{probe_name} probe (mean ± std)": probe_text})
    report.results["skipped"] = skipped
    for item in skipped:
        warnings.warn(f"{item['what']} left out: {item['reason']}", UserWarning, stacklevel=2)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report.files.append(save_results(report.results, out / "partial_leads.json"))
        (out / "partial_leads.md").write_text(report.markdown() + "\n\nProtocol:\n" + PROTOCOL + "\n",
                                              encoding="utf-8")
        report.files.append(out / "partial_leads.md")
        for task in tasks:
            report.files.append(_plot_task(task, report.results["lead_sets"], scorers, probe_name,
                                           out / f"partial_leads_{task}.png"))
    return report


def _lead_set_outputs(
    model: Any, processor: Any, dataset: Mapping[str, Any], lead_names: Sequence[str], leads: Sequence[str],
    static: Mapping[str, Mapping[str, Any]], rate: float, batch_size: int, crop: str,
) -> dict[str, Any]:
    """Test embeddings, ECG-tower features of every split and query-network scores per task, for one lead set."""
    views = {split: LeadSubsetView(dataset[split], lead_names, leads) for split in ("train", "validation", "test")}

    def embed(encoder: Any, split: str, normalize: bool = True) -> np.ndarray:
        view = views[split]
        return embed_ecgs(encoder, processor, view, rate, batch_size, crop, normalize=normalize, progress=False,
                          lead_names=view.lead_names)

    tower = _ECGTower(model)
    out: dict[str, Any] = {"test_embeddings": embed(model, "test"),
                           "features": {split: embed(tower, split) for split in views},
                           "query_scores": {}}
    for task, entry in static.items():
        if "queries" in entry:
            out["query_scores"][task] = embed(QueryNetworkScorer(model, entry["queries"]), "test", normalize=False)
    return out


def _zero_shot_entry(y: np.ndarray, scores: np.ndarray, names: Sequence[str], split: Any) -> dict[str, Any] | None:
    aurocs = auroc_columns(y, scores)
    per_class = {n: float(a) for n, a in zip(names, aurocs) if np.isfinite(a)}
    if not per_class:
        return None
    entry = {"macro_auroc": _macro(per_class), "auroc": per_class, "classes_evaluated": len(per_class),
             "classes_total": len(names)}
    if split is not None:
        entry["seen_macro_auroc"] = _macro(per_class, split.seen)
        entry["unseen_macro_auroc"] = _macro(per_class, split.unseen)
        entry["seen_evaluated"] = [n for n in split.seen if n in per_class]
        entry["unseen_evaluated"] = [n for n in split.unseen if n in per_class]
    return entry


def _task_results(task: str, entry: Mapping[str, Any], outputs: Mapping[str, Any], seeds: Sequence[int],
                  probe_fraction: float) -> dict[str, Any]:
    names, y, split = entry["names"], entry["y"], entry.get("split")
    cosine = l2_normalize(outputs["test_embeddings"]) @ entry["class_emb"].T
    zero_shot = {COSINE: _zero_shot_entry(y["test"], cosine, names, split)}
    if task in outputs["query_scores"]:
        zero_shot[QUERY_NETWORK] = _zero_shot_entry(y["test"], outputs["query_scores"][task], names, split)
    result: dict[str, Any] = {"zero_shot": zero_shot, "linear_probe": None}
    if entry["probe_problem"] is None:
        trainable = evaluable_classes(y["train"])
        probe_names = [n for n, keep in zip(names, trainable) if keep]
        feats = outputs["features"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # left-out classes are reported once per task
            probe = linear_probe(
                (feats["train"], y["train"][:, trainable], probe_names),
                (feats["validation"], y["validation"][:, trainable], probe_names),
                (feats["test"], y["test"][:, trainable], probe_names),
                fractions=(probe_fraction,), seeds=seeds,
            )
        stats = probe.summary()[float(probe_fraction)]
        result["linear_probe"] = {"fraction": probe_fraction, "mean": stats["mean"], "std": stats["std"],
                                  "n_seeds": stats["n_seeds"],
                                  "runs": [{"seed": r.seed, "n_train": r.n_train, "C": r.C,
                                            "test_macro_auroc": r.test_macro_auroc} for r in probe.runs]}
    return result
