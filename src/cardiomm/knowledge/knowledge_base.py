"""The ECG statement knowledge base and the label sets of the downstream tasks.

``ecg_statements.json`` holds one entry per ECG statement: the 71 SCP-ECG statements used by PTB-XL, the
PTB-XL diagnostic super- and subclasses, and the CPSC2018 and Chapman-Shaoxing (CSN) findings. Each entry has
a unique ``code``, a ``name``, a one-sentence ``description``, ``synonyms``, ``category`` (any of
``diagnostic superclass``, ``diagnostic subclass``, ``diagnostic``, ``form``, ``rhythm``), the PTB-XL
``superclass``/``subclass`` it belongs to, its ``subtypes`` (codes of finer entries) and its characteristic
ECG ``attributes``.

``label_sets.json`` maps every label column of every task (``ptbxl_super_class``, ``ptbxl_sub_class``,
``ptbxl_form``, ``ptbxl_rhythm``, ``cpsc2018``, ``csn``) to an entry code, plus dataset-specific label
aliases (e.g. the CPSC2018 class names and the CSN long names) and notes on labels whose column name
differs from the concept (e.g. the CPSC2018 column ``CRBBB`` holds the class "RBBB").

Label resolution is by exact match only, never by substring: a label is looked up as a label of the given
task, then as one of that task's label aliases, then as an entry code (case-sensitive), then as an entry
name or synonym. Names, synonyms and aliases compare after :func:`normalize_term` (case folding, hyphens read
as spaces, runs of whitespace collapsed), which changes spelling only: "AFL" never matches "AFLT" and "MI"
never matches "AMI".
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

STATEMENTS_FILE = Path(__file__).with_name("ecg_statements.json")
LABEL_SETS_FILE = Path(__file__).with_name("label_sets.json")

CATEGORIES = ("diagnostic superclass", "diagnostic subclass", "diagnostic", "form", "rhythm")

_DASHES = re.compile("[\u2010-\u2015\u2212]")
_INNER_HYPHEN = re.compile(r"(?<=\w)-(?=\w)")
_SPACES = re.compile(r"\s+")


def normalize_term(text: str) -> str:
    """Spelling-normalised form of a term: case-folded, hyphens between words read as spaces, single spaces."""
    text = _DASHES.sub("-", text).casefold()
    text = _INNER_HYPHEN.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


@dataclass(frozen=True)
class KnowledgeEntry:
    """One ECG statement of the knowledge base."""

    code: str
    name: str
    description: str = ""
    synonyms: tuple[str, ...] = ()
    category: tuple[str, ...] = ()
    superclass: str | None = None
    subclass: str | None = None
    subtypes: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()
    scp_code: str | None = None
    note: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KnowledgeEntry:
        """Build an entry from its JSON object (lists become tuples)."""
        values = dict(data)
        for key in ("synonyms", "category", "subtypes", "attributes"):
            values[key] = tuple(values.get(key) or ())
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"entry {values.get('code')!r} has unknown fields {sorted(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists, ``note`` only when set)."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if out["note"] is None:
            del out["note"]
        return out

    @property
    def names(self) -> tuple[str, ...]:
        """The entry's name followed by its synonyms."""
        return (self.name, *self.synonyms)

    @property
    def terms(self) -> tuple[str, ...]:
        """Every clinical term this entry contributes: code, name, synonyms and attribute phrases."""
        return (self.code, *self.names, *self.attributes)


@dataclass(frozen=True)
class LabelSet:
    """The label columns of one downstream task and the knowledge-base entry each one denotes."""

    name: str
    dataset: str
    task: str | None
    labels: dict[str, str]
    aliases: tuple[str, ...] = ()
    label_aliases: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def label_names(self) -> list[str]:
        """Label columns in their canonical order."""
        return list(self.labels)


class KnowledgeBase:
    """ECG statements indexed by code and by (normalised) name, with the task label sets.

    Build it with :func:`load_knowledge_base`; ``kb["AFIB"]`` returns an entry by code.
    """

    def __init__(self, entries: list[KnowledgeEntry], label_sets: list[LabelSet] | None = None) -> None:
        self._entries: dict[str, KnowledgeEntry] = {}
        self._by_name: dict[str, str] = {}
        for entry in entries:
            if entry.code in self._entries:
                raise ValueError(f"duplicate knowledge-base code {entry.code!r}")
            self._entries[entry.code] = entry
        for entry in entries:
            for name in entry.names:
                key = normalize_term(name)
                other = self._by_name.setdefault(key, entry.code)
                if other != entry.code:
                    raise ValueError(f"name {name!r} is used by both {other!r} and {entry.code!r}")
        for entry in entries:
            missing = [c for c in (*entry.subtypes, entry.superclass, entry.subclass) if c and c not in self._entries]
            if missing:
                raise ValueError(f"entry {entry.code!r} refers to unknown codes {missing}")
        self._label_sets: dict[str, LabelSet] = {}
        self._task_aliases: dict[str, str] = {}
        for label_set in label_sets or []:
            self.add_label_set(label_set)

    # ------------------------------------------------------------------ entries
    def __getitem__(self, code: str) -> KnowledgeEntry:
        try:
            return self._entries[code]
        except KeyError:
            raise KeyError(f"no knowledge-base entry with code {code!r}") from None

    def __contains__(self, code: object) -> bool:
        return code in self._entries

    def __iter__(self) -> Iterator[KnowledgeEntry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def codes(self) -> list[str]:
        """Codes of all entries, in file order."""
        return list(self._entries)

    def find(self, name: str) -> KnowledgeEntry | None:
        """The entry whose code equals ``name`` or whose name/synonym equals it after normalisation."""
        if name in self._entries:
            return self._entries[name]
        code = self._by_name.get(normalize_term(name))
        return self._entries[code] if code is not None else None

    def subtype_entries(self, code: str) -> list[KnowledgeEntry]:
        """Direct subtypes of ``code``."""
        return [self[c] for c in self[code].subtypes]

    def descendants(self, code: str) -> set[str]:
        """Codes of all direct and indirect subtypes of ``code`` (not including ``code``)."""
        seen: set[str] = set()
        stack = list(self[code].subtypes)
        while stack:
            current = stack.pop()
            if current in seen or current == code:
                continue
            seen.add(current)
            stack.extend(self[current].subtypes)
        return seen

    def ancestors(self, code: str) -> set[str]:
        """Codes of all entries that list ``code`` among their (direct or indirect) subtypes."""
        return {other for other in self._entries if other != code and code in self.descendants(other)}

    # ------------------------------------------------------------------ label sets
    def add_label_set(self, label_set: LabelSet) -> None:
        """Register a task's label set (its label codes must exist)."""
        missing = {lab: code for lab, code in label_set.labels.items() if code not in self._entries}
        if missing:
            raise ValueError(f"label set {label_set.name!r} maps labels to unknown codes: {missing}")
        bad_alias = {a: lab for a, lab in label_set.label_aliases.items() if lab not in label_set.labels}
        if bad_alias:
            raise ValueError(f"label set {label_set.name!r} has aliases of unknown labels: {bad_alias}")
        self._label_sets[label_set.name] = label_set
        for alias in (label_set.name, *label_set.aliases):
            self._task_aliases[alias.casefold()] = label_set.name

    @property
    def tasks(self) -> list[str]:
        """Names of the registered label sets."""
        return list(self._label_sets)

    def label_set(self, dataset: str, task: str | None = None) -> LabelSet:
        """The label set of ``dataset`` (and ``task``): ``("ptbxl", "form")``, ``("ptbxl_form")``, ``("csn")``.

        Task names and their aliases (e.g. ``"icbeb (CPSC2018)"``, ``"chapman"``) compare case-insensitively.
        """
        name = self._task_aliases.get((dataset if task is None else f"{dataset}_{task}").casefold())
        if name is None and task is not None:
            # ``task`` may already be a full task name of that dataset: ("ptbxl", "ptbxl_form")
            candidate = self._task_aliases.get(task.casefold())
            if candidate is not None and self._label_sets[candidate].dataset.casefold() == dataset.casefold():
                name = candidate
        if name is not None:
            return self._label_sets[name]
        raise KeyError(f"no label set for dataset={dataset!r} task={task!r}; known: {self.tasks}")

    def task_entries(self, dataset: str, task: str | None = None) -> dict[str, KnowledgeEntry]:
        """``{label: entry}`` for every label column of a task, in column order."""
        label_set = self.label_set(dataset, task)
        return {label: self[code] for label, code in label_set.labels.items()}

    def resolve_label(self, label: str, task: str | None = None) -> KnowledgeEntry:
        """The entry a label denotes, by exact match only (see the module docstring for the order).

        ``task`` names a label set (e.g. ``"csn"``): there ``"AF"`` is atrial flutter, while in ``"cpsc2018"``
        the alias ``"AF"`` is atrial fibrillation. Raises ``KeyError`` when nothing matches exactly.
        """
        if task is not None:
            label_set = self.label_set(task)
            if label in label_set.labels:
                return self[label_set.labels[label]]
            key = normalize_term(label)
            for alias, target in label_set.label_aliases.items():
                if normalize_term(alias) == key:
                    return self[label_set.labels[target]]
        entry = self.find(label)
        if entry is None:
            where = f" (task {task!r})" if task is not None else ""
            raise KeyError(f"no knowledge-base entry matches {label!r} exactly{where}")
        return entry

    def translate_label(self, label: str, source_task: str, target_task: str) -> str | None:
        """The label of ``target_task`` that denotes the same entry as ``label`` of ``source_task``, or None."""
        code = self.resolve_label(label, source_task).code
        for target_label, target_code in self.label_set(target_task).labels.items():
            if target_code == code:
                return target_label
        return None

    def match_labels(self, source_task: str, target_task: str, include_subtypes: bool = True) -> dict[str, list[str]]:
        """For each source label, the target labels denoting the same entry or (optionally) one of its subtypes.

        This is the category matching used to evaluate under distribution shift (a model trained on the source
        label set, tested on the target dataset).
        """
        source = self.label_set(source_task)
        target = self.label_set(target_task)
        out: dict[str, list[str]] = {}
        for label, code in source.labels.items():
            allowed = {code} | (self.descendants(code) if include_subtypes else set())
            out[label] = [t for t, t_code in target.labels.items() if t_code in allowed]
        return out

    def to_dict(self) -> dict[str, Any]:
        """The statements file content (``{"entries": [...]}``)."""
        return {"entries": [entry.to_dict() for entry in self]}


def _label_sets_from_json(data: Mapping[str, Any]) -> list[LabelSet]:
    out = []
    for name, spec in data["tasks"].items():
        out.append(
            LabelSet(
                name=name,
                dataset=spec["dataset"],
                task=spec.get("task"),
                labels=dict(spec["labels"]),
                aliases=tuple(spec.get("aliases", ())),
                label_aliases=dict(spec.get("label_aliases", {})),
                notes=dict(spec.get("notes", {})),
            )
        )
    return out


def load_knowledge_base(
    statements: str | os.PathLike | None = None, label_sets: str | os.PathLike | None = None
) -> KnowledgeBase:
    """Load a knowledge base; without arguments, the one shipped with cardiomm (cached)."""
    if statements is None and label_sets is None:
        return _default_knowledge_base()
    return _read(Path(statements or STATEMENTS_FILE), Path(label_sets or LABEL_SETS_FILE))


@lru_cache(maxsize=1)
def _default_knowledge_base() -> KnowledgeBase:
    return _read(STATEMENTS_FILE, LABEL_SETS_FILE)


def _read(statements: Path, label_sets: Path) -> KnowledgeBase:
    entries = [KnowledgeEntry.from_dict(e) for e in json.loads(statements.read_text())["entries"]]
    sets = _label_sets_from_json(json.loads(label_sets.read_text())) if label_sets.exists() else []
    return KnowledgeBase(entries, sets)
