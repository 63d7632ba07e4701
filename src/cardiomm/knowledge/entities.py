"""Biomedical entity detection in clinical text: the condition vocabulary and the entity lexicon.

``condition_synonyms.json`` holds the cardiac conditions named in ECG reports and, per condition, the lower-case
phrases that mention it (full names, abbreviations, common variants): :data:`CONDITION_SYNONYMS`.

The :class:`EntityLexicon` (:func:`build_entity_lexicon`) detects entities by exact phrase matching after
:func:`~cardiomm.knowledge.normalize_term` normalisation, on word boundaries, longest phrase first. It holds the
names and synonyms of the ECG statement knowledge base and the condition vocabulary. Text is split into sentences
(:func:`split_sentences`); sentences that start with a negation cue (:data:`NEGATION_CUES`: "No ...",
"Without ...") name what the patient does *not* have, and are skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .knowledge_base import load_knowledge_base, normalize_term

CONDITION_SYNONYMS_FILE = Path(__file__).with_name("condition_synonyms.json")

CONDITION_SYNONYMS: dict[str, tuple[str, ...]] = {
    condition: tuple(phrases)
    for condition, phrases in json.loads(CONDITION_SYNONYMS_FILE.read_text())["conditions"].items()
}
"""Condition -> lower-case phrases that mention it in a report or note (matched on word boundaries)."""

NEGATION_CUES: tuple[str, ...] = ("no ", "without ", "negative for ")
"""A sentence starting with one of these (lower case) denies, rather than states, what it names."""

_SENTENCE_BREAK = re.compile(r"[.;\n]\s*(?=\D|$)")


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` as written (split on ``.``, ``;`` and new lines, but not inside decimal numbers
    such as "0.12"), stripped, empty ones left out."""
    return [sentence.strip() for sentence in _SENTENCE_BREAK.split(text) if sentence.strip()]


@dataclass
class EntityLexicon:
    """Biomedical entity phrases for entity detection by exact phrase matching.

    Args:
        phrases: normalised phrase -> entity name (the knowledge-base concept or condition it names).

    Matching normalises the text with :func:`~cardiomm.knowledge.normalize_term` (case-folded, hyphens between
    words read as spaces), splits it into sentences (:func:`split_sentences`), skips sentences that start with a
    negation cue (:data:`NEGATION_CUES`), and finds the phrases on word boundaries, longest first, without overlaps.
    """

    phrases: dict[str, str]
    _pattern: re.Pattern | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.phrases:
            raise ValueError("an entity lexicon needs at least one phrase")
        ordered = sorted(self.phrases, key=lambda p: (-len(p), p))
        self._pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(p) for p in ordered) + r")(?!\w)")

    def __len__(self) -> int:
        return len(self.phrases)

    def __contains__(self, phrase: object) -> bool:
        return isinstance(phrase, str) and normalize_term(phrase) in self.phrases

    def find(self, text: str) -> list[str]:
        """The entity mentions of ``text`` (normalised phrases) in order of appearance, negated sentences skipped."""
        found: list[str] = []
        for sentence in split_sentences(normalize_term(text or "")):
            if sentence.startswith(NEGATION_CUES):
                continue
            found.extend(match.group(0) for match in self._pattern.finditer(sentence))
        return found

    def entities(self, text: str) -> list[str]:
        """The entity names (not the surface phrases) that ``text`` mentions, in order, without repeats."""
        return list(dict.fromkeys(self.phrases[p] for p in self.find(text)))

    def has_entity(self, text: str) -> bool:
        """Whether ``text`` mentions at least one entity (the paper's entity detection)."""
        return bool(self.find(text))


def build_entity_lexicon(
    knowledge_base: Any = None,
    synonyms: Mapping[str, Iterable[str]] | None = None,
    extra_phrases: Mapping[str, str] | None = None,
    min_length: int = 2,
) -> EntityLexicon:
    """The entity lexicon: the names and synonyms of the knowledge base (default
    :func:`~cardiomm.knowledge.load_knowledge_base`), the condition vocabulary (default :data:`CONDITION_SYNONYMS`:
    each condition and its phrases) and ``extra_phrases`` (phrase -> entity name). Phrases shorter than
    ``min_length`` characters are left out; a phrase named by two sources keeps the first entity name (knowledge
    base, then condition vocabulary, then extras)."""
    knowledge_base = knowledge_base if knowledge_base is not None else load_knowledge_base()
    synonyms = CONDITION_SYNONYMS if synonyms is None else synonyms
    phrases: dict[str, str] = {}

    def add(phrase: str, name: str) -> None:
        key = normalize_term(phrase)
        if len(key) >= min_length:
            phrases.setdefault(key, name)

    for entry in knowledge_base:
        for name in entry.names:
            add(name, entry.name)
    for condition, condition_phrases in synonyms.items():
        add(condition, condition)
        for phrase in condition_phrases:
            add(phrase, condition)
    for phrase, name in (extra_phrases or {}).items():
        add(phrase, name)
    return EntityLexicon(phrases)


__all__ = [
    "CONDITION_SYNONYMS",
    "CONDITION_SYNONYMS_FILE",
    "NEGATION_CUES",
    "EntityLexicon",
    "build_entity_lexicon",
    "split_sentences",
]
