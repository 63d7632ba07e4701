"""Zero-shot prompts built from the ECG statement knowledge base, their verification, and prompt files.

**Clinical-knowledge prompts.** :func:`template_prompt` writes a prompt from one entry with a fixed,
deterministic template::

    "{name}: {attribute 1}, {attribute 2}, ...; subtypes: {subtype name 1}, {subtype name 2}, ..."

An optional local language model may rephrase it (:class:`TextGenerationRephraser`, any ``transformers``
text-generation model folder); a rephrasing is kept only if it passes :func:`verify_prompt` against the entry
(and its subtypes) and still names the entry, otherwise the template prompt is used.

**Clinical terms and verification.** The clinical terms of a knowledge base (or of a set of entries) are
exactly the entry codes, names, synonyms and attribute phrases it lists. :func:`verify_prompt` masks every
occurrence of these terms in the prompt (whole words, longest term first, compared after
:func:`~cardiomm.knowledge.knowledge_base.normalize_term`); what is left is split at punctuation, and each
maximal run of leftover words that are not in :data:`CONNECTIVE_WORDS` (articles, prepositions, "and",
"with", "ECG", "showing", ...) is an *unknown term*. A prompt is verified when it has no unknown term. Numbers,
measurements and negations ("no", "not", "without") outside a listed phrase are therefore unknown terms: a
rephrasing cannot change a threshold or negate a finding and still pass.

**Prompt files.** :func:`load_prompts` reads a JSON object ``{label: prompt or [prompts]}`` (the layout of the
MERL CKEPE prompt file); :func:`select_prompts` picks the prompts of a task's labels by exact key.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .knowledge_base import KnowledgeBase, KnowledgeEntry, load_knowledge_base, normalize_term

CONNECTIVE_WORDS: frozenset[str] = frozenset(
    """a an the and or with of in on at to by for from as is are was were be been being this that these those
    which its their also both either ecg ecgs electrocardiogram electrocardiographic shows show showing shown
    demonstrates demonstrating including includes subtypes subtype features findings consistent compatible""".split()
)
"""Words allowed in a prompt outside clinical terms (grammar and report wording, no clinical content)."""

PROMPT_STYLES = ("name", "clinical", "ensemble")

REPHRASE_INSTRUCTION = (
    "Rewrite the following ECG statement as one fluent sentence. Use only the clinical terms it contains, "
    "do not add findings, numbers or negations.\nStatement: {prompt}\nRewritten statement:"
)

_SEGMENT_BREAK = re.compile(r"[\x00,;:.!?()\[\]{}\"\-\u2013\u2014/|]+")
_TOKEN = re.compile(r"[\w']+|[^\w\s]")

Knowledge = KnowledgeBase | KnowledgeEntry | Iterable[KnowledgeEntry]


# ---------------------------------------------------------------------------------------------- verification
def clinical_terms(knowledge: Knowledge) -> list[str]:
    """The clinical terms (codes, names, synonyms, attribute phrases) of a knowledge base or of entries."""
    entries = [knowledge] if isinstance(knowledge, KnowledgeEntry) else list(knowledge)
    return list(dict.fromkeys(term for entry in entries for term in entry.terms))


@lru_cache(maxsize=256)
def _term_pattern(terms: tuple[str, ...]) -> re.Pattern[str]:
    normalized = sorted({normalize_term(t) for t in terms if t.strip()}, key=len, reverse=True)
    body = "|".join(re.escape(t) for t in normalized)
    return re.compile(rf"(?<!\w)(?:{body})(?!\w)")


def _mask_terms(text: str, terms: Sequence[str]) -> str:
    return _term_pattern(tuple(terms)).sub("\x00", normalize_term(text))


def verify_prompt(prompt: str, knowledge: Knowledge) -> list[str]:
    """Unknown terms of ``prompt`` with respect to ``knowledge`` (empty when verified).

    ``knowledge`` is a :class:`KnowledgeBase` (any term of the base is allowed), one entry, or several
    entries (only their terms are allowed). Unknown terms are returned normalised, in order, without repeats.
    """
    masked = _mask_terms(prompt, clinical_terms(knowledge))
    unknown: list[str] = []
    for segment in _SEGMENT_BREAK.split(masked):
        run: list[str] = []
        for token in [*_TOKEN.findall(segment), ""]:
            if token and token not in CONNECTIVE_WORDS:
                run.append(token)
                continue
            if run:
                unknown.append(" ".join(run))
                run = []
    return list(dict.fromkeys(unknown))


def found_terms(text: str, knowledge: Knowledge) -> list[str]:
    """The clinical terms of ``knowledge`` found in ``text`` (normalised, in order, longest match first)."""
    return _term_pattern(tuple(clinical_terms(knowledge))).findall(normalize_term(text))


# ---------------------------------------------------------------------------------------------- prompt building
def template_prompt(
    entry: KnowledgeEntry,
    kb: KnowledgeBase | None = None,
    include_subtypes: bool = True,
    max_attributes: int | None = None,
) -> str:
    """The deterministic clinical-knowledge prompt of ``entry`` (see the module docstring for the template)."""
    attributes = list(entry.attributes[:max_attributes] if max_attributes is not None else entry.attributes)
    text = entry.name + (": " + ", ".join(attributes) if attributes else "")
    if include_subtypes and entry.subtypes:
        kb = kb if kb is not None else load_knowledge_base()
        text += "; subtypes: " + ", ".join(kb[code].name for code in entry.subtypes)
    return text


@dataclass(frozen=True)
class ClinicalPrompt:
    """A clinical-knowledge prompt and where it came from.

    ``source`` is ``"template"`` or ``"rephrased"``. A rejected rephrasing is kept in ``rejected_rephrasing``
    with the reasons: ``unknown_terms`` (terms not in the knowledge base) and ``missing_terms`` (clinical
    terms of the template that the rephrasing dropped).
    """

    text: str
    source: str
    template: str
    rejected_rephrasing: str | None = None
    unknown_terms: tuple[str, ...] = ()
    missing_terms: tuple[str, ...] = ()


def build_clinical_prompt(
    entry: KnowledgeEntry,
    kb: KnowledgeBase | None = None,
    rephraser: Callable[[str], str] | str | os.PathLike | None = None,
    include_subtypes: bool = True,
) -> ClinicalPrompt:
    """Template prompt of ``entry``, optionally rephrased by a language model and verified.

    ``rephraser`` is a callable ``str -> str`` or the folder of a ``transformers`` text-generation model
    (wrapped in :class:`TextGenerationRephraser`). The rephrasing is accepted only if, against the entry and
    its subtypes, :func:`verify_prompt` finds no unknown term and it keeps every clinical term of the
    template: it may reorder and connect the knowledge-base terms, not add, change or drop any.
    """
    kb = kb if kb is not None else load_knowledge_base()
    template = template_prompt(entry, kb, include_subtypes=include_subtypes)
    if rephraser is None:
        return ClinicalPrompt(text=template, source="template", template=template)
    if not callable(rephraser):
        rephraser = TextGenerationRephraser(rephraser)
    candidate = (rephraser(template) or "").strip()
    scope = [entry, *(kb.subtype_entries(entry.code) if include_subtypes else [])]
    unknown = tuple(verify_prompt(candidate, scope))
    kept = set(found_terms(candidate, scope))
    missing = tuple(t for t in dict.fromkeys(found_terms(template, scope)) if t not in kept)
    if candidate and not unknown and not missing:
        return ClinicalPrompt(text=candidate, source="rephrased", template=template)
    return ClinicalPrompt(
        text=template,
        source="template",
        template=template,
        rejected_rephrasing=candidate,
        unknown_terms=unknown,
        missing_terms=missing,
    )


class TextGenerationRephraser:
    """Rephrases a prompt with a local ``transformers`` text-generation model (greedy decoding).

    ``model`` is a model folder or Hub id loadable by ``pipeline("text-generation", model=...)``. The first
    line of the generated continuation is returned.
    """

    def __init__(
        self, model: str | os.PathLike, max_new_tokens: int = 64, instruction: str = REPHRASE_INSTRUCTION, **kwargs
    ) -> None:
        from transformers import pipeline

        self.generator = pipeline("text-generation", model=str(model), **kwargs)
        self.max_new_tokens = max_new_tokens
        self.instruction = instruction

    def __call__(self, prompt: str) -> str:
        tokenizer = self.generator.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        out = self.generator(
            self.instruction.format(prompt=prompt),
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            return_full_text=False,
            pad_token_id=pad_id,
        )
        text = out[0]["generated_text"].strip()
        return text.splitlines()[0].strip() if text else ""


def entry_prompts(
    entry: KnowledgeEntry,
    kb: KnowledgeBase | None = None,
    style: str = "ensemble",
    max_synonyms: int = 3,
    rephraser: Callable[[str], str] | str | os.PathLike | None = None,
) -> list[str]:
    """Prompts of one entry: ``"name"`` → [name]; ``"clinical"`` → [clinical prompt];
    ``"ensemble"`` → [clinical prompt, name, up to ``max_synonyms`` synonyms] (duplicates removed)."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"style must be one of {PROMPT_STYLES}, got {style!r}")
    if style == "name":
        return [entry.name]
    clinical = build_clinical_prompt(entry, kb, rephraser=rephraser).text
    if style == "clinical":
        return [clinical]
    return list(dict.fromkeys([clinical, entry.name, *entry.synonyms[:max_synonyms]]))


def get_prompts(
    dataset: str,
    task: str | None = None,
    style: str = "ensemble",
    kb: KnowledgeBase | None = None,
    max_synonyms: int = 3,
    rephraser: Callable[[str], str] | str | os.PathLike | None = None,
) -> dict[str, list[str]]:
    """``{label: [prompts]}`` for every label column of a task, generated from the knowledge base.

    ``get_prompts("ptbxl", "rhythm")``, ``get_prompts("cpsc2018")``, ``get_prompts("csn")``; see
    :func:`entry_prompts` for ``style``.
    """
    kb = kb if kb is not None else load_knowledge_base()
    if rephraser is not None and not callable(rephraser):
        rephraser = TextGenerationRephraser(rephraser)
    return {
        label: entry_prompts(entry, kb, style=style, max_synonyms=max_synonyms, rephraser=rephraser)
        for label, entry in kb.task_entries(dataset, task).items()
    }


# ---------------------------------------------------------------------------------------------- prompt files
def _as_prompt_list(label: str, value: object) -> list[str]:
    if isinstance(value, str):
        values = [value]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        values = list(value)
    else:
        raise TypeError(f"prompts of {label!r} must be a string or a list of strings, got {type(value).__name__}")
    values = [v.strip() for v in values if v.strip()]
    if not values:
        raise ValueError(f"label {label!r} has no non-empty prompt")
    return values


def load_prompts(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a prompt file: a JSON object ``{label: "prompt" | ["prompt", ...]}``; each string is one prompt."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a prompt file must hold a JSON object of label -> prompt(s)")
    return {str(label): _as_prompt_list(str(label), value) for label, value in data.items()}


def save_prompts(prompts: Mapping[str, str | Sequence[str]], path: str | os.PathLike) -> Path:
    """Write ``{label: [prompts]}`` as a prompt file that :func:`load_prompts` reads back."""
    path = Path(path)
    data = {label: _as_prompt_list(label, value) for label, value in prompts.items()}
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def select_prompts(prompts: Mapping[str, str | Sequence[str]], labels: Iterable[str]) -> dict[str, list[str]]:
    """The prompts of ``labels`` in that order, by exact key; ``KeyError`` names every label without prompts."""
    labels = list(labels)
    missing = [label for label in labels if label not in prompts]
    if missing:
        raise KeyError(f"no prompts for labels {missing} (keys are matched exactly)")
    return {label: _as_prompt_list(label, prompts[label]) for label in labels}
