"""Cardiac-entity mining from ECG reports for knowledge-enhanced pretraining (K-MERL, section 2.4).

Each report gets the list of cardiac entities it states as *positive*: an extractor names them
(:class:`KnowledgeBaseExtractor`, offline and deterministic, or :class:`GenerativeEntityExtractor`, a local LLM
prompted as in the paper), synonyms are merged into one unique name per entity (the knowledge-base entry name),
subtypes are aggregated under their superclasses (the knowledge-base hierarchy: anterior and inferior myocardial
infarction under myocardial infarction) and :func:`mine_entities` returns a :class:`MinedEntities` vocabulary with a
multi-hot label per report. As in the paper's vocabulary (252 merged entities + 25 superclasses = 277 queries), a
superclass is itself a label entity: a report that states a subtype is also labelled with every superclass above
it.

The assertion detector is written here rather than taken from a clinical-negation package (negspacy, medspacy)
because those need a spaCy pipeline, ship English-only cue lists and read "possible"/"consider" as uncertain,
while ECG reports come in English, German and Swedish and their hedged statements count as positive.

Assertion rules (NegEx-style, inside one clause of one sentence; clauses end at ",", ":", " - ", runs of two or
more spaces as in PTB-XL's German statements, "but", "however", "aber" and the sentence end):

- a pre-negation cue ("no", "no evidence of", "without", "negative for", "absence of", "not", "kein(e)",
  "inget") negates the entities that follow it within :data:`SCOPE_WORDS` words; a post-negation cue ("ruled out",
  "absent", "not seen") the entities before it;
- uncertainty cues ("cannot exclude", "cannot rule out", "rule out", "r/o", "questionable", "?", "dd") make the
  entities after them uncertain, "cannot be excluded", "nicht auszuschliessen", "kan ej uteslutas" the entities
  before them, and "vs."/"versus" the whole clause; uncertain entities are not positive unless ``keep_uncertain``;
- hedges that ECG readers use for positive statements ("possible", "probable", "consider", "likely",
  "borderline", "suggests", "möglich", "wahrscheinlich", "verdacht auf", "bör övervägas") leave them positive.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .entities import CONDITION_SYNONYMS, build_entity_lexicon
from .knowledge_base import KnowledgeBase, load_knowledge_base, normalize_term

FORMAT = "cardiomm-entities"
VERSION = 1

EXTRACTION_PROMPT = (
    "Please extract all positive Cardiac-related Entities from the given ECG report. "
    "Output format is [Entity1, Entity2, ...]"
)
"""The paper's entity-extraction prompt."""

VERIFICATION_PROMPT = (
    "Please verify the extracted cardiac-related entities as existing and positive in the given report. "
    "Output format is YES or NO"
)
"""The paper's verification prompt (asked once per extracted entity)."""

SCOPE_WORDS = 6
"""How many words after a pre-cue (before a post-cue) a negation or uncertainty cue reaches."""

PRE_NEGATION: tuple[str, ...] = (
    "no", "no evidence of", "no sign of", "no signs of", "without", "negative for", "absence of", "not", "free of",
    "kein", "keine", "keinen", "inget", "ingen",
)
POST_NEGATION: tuple[str, ...] = (
    "ruled out", "has been ruled out", "is ruled out", "absent", "not seen", "not present", "not identified",
    "no longer present",
)
PRE_UNCERTAINTY: tuple[str, ...] = (
    "cannot exclude", "can not exclude", "cannot rule out", "can not rule out", "rule out", "r/o", "questionable",
    "?", "dd",
)
POST_UNCERTAINTY: tuple[str, ...] = (
    "cannot be excluded", "can not be excluded", "cannot be ruled out", "not excluded", "nicht auszuschliessen",
    "nicht auszuschließen", "kan ej uteslutas", "kan inte uteslutas",
)
CLAUSE_UNCERTAINTY: tuple[str, ...] = ("vs", "vs.", "versus")
PSEUDO_NEGATION: tuple[str, ...] = (
    "no change", "no significant change", "no interval change", "not only", "no further analysis",
)
"""Phrases that contain a negation word without denying a finding (they are skipped as cues)."""

POSITIVE_HEDGES: tuple[str, ...] = (
    "possible", "possibly", "probable", "probably", "consider", "likely", "borderline", "suggests", "suggestive of",
    "suggesting", "möglich", "wahrscheinlich", "verdacht auf", "bör övervägas", "överväg", "möjligen", "sannolikt",
)
"""Hedges of positive statements: documentation only, they never change an assertion."""

_GAP = "\u2016"  # stands for a run of two or more spaces, which separates PTB-XL's German statements
_CLAUSE_BREAK = re.compile(_GAP + r"|[,:]|\s-\s|\b(?:but|however|aber|jedoch)\b")

REPORT_PHRASES: dict[str, str] = {
    # German PTB-XL statements (as the real reports spell them, casefolded)
    "sinusrhythmus": "SR",
    "sinusbradykardie": "SBRAD",
    "sinustachykardie": "STACH",
    "sinus arrhythmie": "SARRH",
    "normales ekg": "NORM",
    "ekg normal": "NORM",
    "periphere niederspannung": "LVOLT",
    "ueberdrehter linkstyp": "ALS",
    "überdrehter linkstyp": "ALS",
    "rechtstyp": "ARS",
    "ueberdrehter rechtstyp": "ARS",
    "überdrehter rechtstyp": "ARS",
    "rechtsschenkelblock": "RBBB",
    "unvollständiger rechtsschenkelblock": "IRBBB",
    "linksschenkelblock": "LBBB",
    "linksanteriorer hemiblock": "LAFB",
    "lahb": "LAFB",
    "linksposteriorer hemiblock": "LPFB",
    "linkshypertrophie": "LVH",
    "amplitudenkriterien für linkshypertrophie": "VCLVH",
    "amplitudenkriterien f#r linkshypertrophie": "VCLVH",
    "inferiorer infarkt": "IMI",
    "anteriorer infarkt": "AMI",
    "anterolateraler infarkt": "ALMI",
    "septaler infarkt": "ASMI",
    "inferiorer myokardschaden": "INJIN",
    "anteroseptaler myokardschaden": "INJAS",
    "vorderwandaneurysma": "ANEUR",
    "unspezifisches abnormales t": "NDT",
    "qt verlängerung": "LNGQT",
    "p sinistrocardiale": "LAO/LAE",
    "unspezifischer intraventrikulärer block": "IVCD",
    "unspezifische intraventrikuläre leitungsstörung": "IVCD",
    "vorhofflimmern": "AFIB",
    "vorhofflattern": "AFLT",
    "ventrikuläre extrasystole(n)": "PVC",
    "supraventrikuläre extrasystole(n)": "PAC",
    "supraventrikuläre tachykardie": "SVTAC",
    "a v block i": "1AVB",
    "av block 1.grades": "1AVB",
    "st senkung": "STDD",
    "st hebung": "STE",
    "vorhofsueberlastung links": "LAO/LAE",
    "vorhofsueberlastung rechts": "RAO/RAE",
    "qrs(t) abnormal": "ABQRS",
    # Swedish PTB-XL statements
    "sinusrytm": "SR",
    "sinusbradykardi": "SBRAD",
    "sinustachykardi": "STACH",
    "sinus arytmi": "SARRH",
    "normalt ekg": "NORM",
    "förmaksflimmer": "AFIB",
    "vänster kammarhypertrofi": "LVH",
    "vänster el axel": "ALS",
    "extrem vänster el axel": "ALS",
    "höger el axel": "ARS",
    "högersidigt skänkelblock": "RBBB",
    "inkomplett högersidigt skänkelblock": "IRBBB",
    "vänstersidigt skänkelblock": "LBBB",
    "vänster främre hemiblock": "LAFB",
    "inferior infarkt": "IMI",
    "anterior infarkt": "AMI",
    "anteroseptal infarkt": "ASMI",
    "lateral infarkt": "LMI",
    "inferior myokardskada": "INJIN",
    "anteroseptal myokardskada": "INJAS",
    "lateral myokardskada": "INJLA",
    "låga qrs amplituder": "LVOLT",
    "ventrikulär(a) extrasystoli(er)": "PVC",
    "supraventrikulär(a) extrasystoli(er)": "PAC",
    "supraventrikulära extraslag": "PAC",
    "wpw syndrom": "WPW",
    "avvikande qrs(t) förlopp": "ABQRS",
    # English variants of PTB-XL and MIMIC-IV-ECG machine statements
    "premature atrial contraction(s)": "PAC",
    "premature ventricular contraction(s)": "PVC",
    "pacs": "PAC",
    "septal infarct": "ASMI",
    "t wave flattening": "LOWT",
    "non specific t wave flattening": "NT_",
    "lv hypertrophy": "LVH",
    "st t wave changes": "STTC",
    "non specific st t wave changes": "NST_",
}
"""Report phrases (normalised) the knowledge base does not list, with the knowledge-base code they name."""

ENTITY_MERGES: dict[str, str] = {"LPR": "1AVB", "VCLVH": "LVH"}
"""Knowledge-base codes read as the same entity as another one: a prolonged PR interval is the first-degree AV
block criterion, and voltage criteria for LVH is how an ECG states left ventricular hypertrophy."""


@runtime_checkable
class EntityExtractor(Protocol):
    """Names the positive cardiac entities of one report."""

    def extract(self, report: str) -> list[str]:
        """Canonical names of the entities ``report`` states as positive, in order, without repeats."""

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description of the extractor (written into the entity file)."""


@dataclass(frozen=True)
class EntityMention:
    """One entity mention in a report and its assertion ("positive", "negated" or "uncertain")."""

    entity: str
    text: str
    status: str


def _cue_pattern(groups: Mapping[str, Iterable[str]]) -> tuple[re.Pattern, dict[str, str]]:
    kinds: dict[str, str] = {}
    for kind, cues in groups.items():
        for cue in cues:
            kinds.setdefault(cue, kind)
    ordered = sorted(kinds, key=lambda c: (-len(c), c))
    pattern = re.compile(r"(?<![\w/])(?:" + "|".join(re.escape(c) for c in ordered) + r")(?![\w/])")
    return pattern, kinds


_CUES, _CUE_KINDS = _cue_pattern({
    "pseudo": PSEUDO_NEGATION,
    "post_uncertain": POST_UNCERTAINTY,
    "pre_uncertain": PRE_UNCERTAINTY,
    "clause_uncertain": CLAUSE_UNCERTAINTY,
    "post_negation": POST_NEGATION,
    "pre_negation": PRE_NEGATION,
})
_SENTENCE = re.compile(r"(?<!\bvs)[.;](?=\s|$)|\n")
_WORD = re.compile(r"\w+")
_SPACES = re.compile(r"\s+")


def _sentences(text: str) -> list[str]:
    """Normalised sentences of ``text``, runs of two or more spaces kept as a gap mark."""
    out = []
    for sentence in _SENTENCE.split(text or ""):
        sentence = normalize_term(re.sub(r"[ \t]{2,}", f" {_GAP} ", sentence))
        if sentence.strip(f" {_GAP}"):
            out.append(sentence)
    return out


def _phrase_regex(phrases: Iterable[str]) -> re.Pattern:
    """Phrases on word boundaries, longest first; a gap mark may stand between two words of a phrase (PTB-XL's
    English reports wrap lines inside a statement: "old inferior    myocardial infarction")."""
    ordered = sorted(phrases, key=lambda p: (-len(p), p))
    spaced = (re.escape(p).replace(r"\ ", f"(?: | {_GAP} )") for p in ordered)
    return re.compile(r"(?<!\w)(?:" + "|".join(spaced) + r")(?!\w)")


def _words_between(text: str, start: int, end: int) -> int:
    return len(_WORD.findall(text[start:end])) if end > start else 0


def _assertions(sentence: str, spans: Sequence[tuple[int, int]]) -> list[str]:
    """The assertion of each ``(start, end)`` span of a normalised sentence: cues reach spans of their clause."""
    breaks = [m.start() for m in _CLAUSE_BREAK.finditer(sentence)
              if not any(start < m.start() < end for start, end in spans)]
    cues = [(m.start(), m.end(), _CUE_KINDS[m.group(0)]) for m in _CUES.finditer(sentence)]
    cues = [c for c in cues if c[2] != "pseudo"]
    out = []
    for start, end in spans:
        clause_start = max((b for b in breaks if b < start), default=-1)
        clause_end = min((b for b in breaks if b >= end), default=len(sentence) + 1)
        negated = uncertain = False
        for c_start, c_end, kind in cues:
            if c_start < end and start < c_end:  # the cue is part of the mention itself
                continue
            if not clause_start < c_start < clause_end:
                continue
            after = c_end <= start and _words_between(sentence, c_end, start) <= SCOPE_WORDS
            before = end <= c_start and _words_between(sentence, end, c_start) <= SCOPE_WORDS
            if kind == "pre_negation" and after or kind == "post_negation" and before:
                negated = True
            elif kind == "pre_uncertain" and after or kind == "post_uncertain" and before:
                uncertain = True
            elif kind == "clause_uncertain":
                uncertain = True
        out.append("negated" if negated else "uncertain" if uncertain else "positive")
    return out


class KnowledgeBaseExtractor:
    """Offline, deterministic entity extractor: lexicon matching with negation and uncertainty handling.

    The lexicon holds the knowledge base's names and synonyms, the condition vocabulary
    (:data:`~cardiomm.knowledge.CONDITION_SYNONYMS`) and :data:`REPORT_PHRASES` (German, Swedish and further
    English report phrases); every phrase is mapped to one unique name, the knowledge-base entry name (after
    :data:`ENTITY_MERGES`). Mentions are asserted by the module's rules; only positive ones are extracted, and
    uncertain ones too with ``keep_uncertain``.
    """

    name = "knowledge-base"

    def __init__(
        self,
        knowledge_base: KnowledgeBase | None = None,
        keep_uncertain: bool = False,
        extra_phrases: Mapping[str, str] | None = None,
        merges: Mapping[str, str] | None = None,
    ) -> None:
        self.knowledge_base = knowledge_base if knowledge_base is not None else load_knowledge_base()
        self.keep_uncertain = keep_uncertain
        kb = self.knowledge_base
        self.merges = dict(ENTITY_MERGES if merges is None else merges)
        phrases = {p: kb[c].name for p, c in REPORT_PHRASES.items() if c in kb}
        phrases.update(extra_phrases or {})
        lexicon = build_entity_lexicon(kb, extra_phrases=phrases)
        condition_names = {c: self._condition_entry_name(c) for c in CONDITION_SYNONYMS}
        self.phrases: dict[str, str] = {
            phrase: self.canonical(condition_names.get(name, name)) for phrase, name in lexicon.phrases.items()
        }
        self._pattern = _phrase_regex(self.phrases)

    def _condition_entry_name(self, condition: str) -> str:
        for phrase in (condition, *CONDITION_SYNONYMS[condition]):
            entry = self.knowledge_base.find(phrase)
            if entry is not None:
                return entry.name
        return condition

    def canonical(self, name: str) -> str:
        """The unique name of an entity name, synonym or code (knowledge-base entry name after
        :data:`ENTITY_MERGES`); a name the knowledge base does not know comes back normalised."""
        entry = self.knowledge_base.find(name)
        if entry is None:
            known = self.phrases.get(normalize_term(name)) if hasattr(self, "phrases") else None
            return known if known is not None else normalize_term(name)
        code = self.merges.get(entry.code, entry.code)
        return self.knowledge_base[code].name if code in self.knowledge_base else entry.name

    def mentions(self, report: str) -> list[EntityMention]:
        """Every entity mention of ``report`` with its assertion, in order of appearance."""
        out = []
        for sentence in _sentences(report):
            matches = list(self._pattern.finditer(sentence))
            statuses = _assertions(sentence, [m.span() for m in matches])
            for match, status in zip(matches, statuses):
                phrase = _SPACES.sub(" ", match.group(0).replace(_GAP, " "))
                out.append(EntityMention(self.phrases[phrase], phrase, status))
        return out

    def extract(self, report: str) -> list[str]:
        """Canonical names of the positive (and, with ``keep_uncertain``, uncertain) entities of ``report``."""
        keep = ("positive", "uncertain") if self.keep_uncertain else ("positive",)
        return list(dict.fromkeys(m.entity for m in self.mentions(report) if m.status in keep))

    def phrase_status(self, report: str, phrase: str) -> str | None:
        """The assertion of ``phrase`` in ``report``: "positive" when one occurrence is positive, else "uncertain"
        or "negated"; None when it does not occur (compared after :func:`normalize_term`, on word boundaries)."""
        key = normalize_term(phrase)
        if not key:
            return None
        pattern = _phrase_regex([key])
        found: list[str] = []
        for sentence in _sentences(report):
            found.extend(_assertions(sentence, [m.span() for m in pattern.finditer(sentence)]))
        if not found:
            return None
        for status in ("positive", "uncertain", "negated"):
            if status in found:
                return status
        return None

    def describe(self) -> dict[str, Any]:
        """Name, lexicon size and assertion settings."""
        return {"name": self.name, "phrases": len(self.phrases), "keep_uncertain": self.keep_uncertain,
                "scope_words": SCOPE_WORDS, "merges": dict(self.merges)}


def parse_entity_list(text: str) -> list[str]:
    """The entity names of a generated ``[Entity1, Entity2, ...]`` answer, read leniently: the first bracketed
    list (or, without brackets, the first non-empty line), split on commas and semicolons, quotes and list marks
    stripped, "none" and empty items left out, repeats removed."""
    text = text or ""
    match = re.search(r"\[([^\[\]]*)\]?", text)
    if match:
        body = match.group(1)
        if "]" not in text[match.start():]:
            body = body.splitlines()[0] if body.strip() else ""
    else:
        body = next((line for line in text.splitlines() if line.strip()), "")
    items = []
    for item in re.split(r"[,;]", body):
        item = item.strip().strip("\"'`*-•").strip().rstrip(".").strip()
        if item and item.casefold() not in ("none", "n/a", "entity1", "entity2", "..."):
            items.append(item)
    return list(dict.fromkeys(items))


class GenerativeEntityExtractor:
    """Entity extraction by a local text-generation model, prompted as in the paper, with verification.

    Args:
        model: a local transformers causal-LM folder (model + tokenizer), loaded with ``local_files_only``.
        generate: instead of ``model``, a callable prompt -> generated text (a scripted generator, another client).
        llm_verification: also ask the model the paper's YES/NO verification prompt per entity.
        keep_uncertain: let entities that the deterministic detector reads as uncertain count.
        max_new_tokens: generation length of the extraction answer.

    Every generated entity must pass verification before it counts: it occurs in the report (after
    :func:`normalize_term`), it is not negated (nor uncertain, by default) by :class:`KnowledgeBaseExtractor`'s
    rules and, with ``llm_verification``, the model answers YES. Entities the lexicon knows are merged into their
    unique name (:meth:`merge`); unknown ones are kept as their normalised text.
    """

    name = "generative"

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        generate: Callable[[str], str] | None = None,
        llm_verification: bool = False,
        keep_uncertain: bool = False,
        max_new_tokens: int = 64,
        detector: KnowledgeBaseExtractor | None = None,
    ) -> None:
        if (model is None) == (generate is None):
            raise ValueError("give either a local model folder or a generate callable")
        self.model_path = None if model is None else str(model)
        self.llm_verification = llm_verification
        self.keep_uncertain = keep_uncertain
        self.max_new_tokens = max_new_tokens
        self.detector = detector if detector is not None else KnowledgeBaseExtractor()
        self.rejected: Counter[str] = Counter()
        if generate is not None:
            self._generate = generate
        else:
            self._generate = self._load(self.model_path)

    def _load(self, folder: str) -> Callable[[str], str]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not Path(folder).is_dir():
            raise ValueError(f"{folder}: not a local model folder")
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{folder}: cannot load a text-generation model and tokenizer ({err})") from err
        model.eval()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

        def generate(prompt: str) -> str:
            if getattr(tokenizer, "chat_template", None):
                prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                       add_generation_prompt=True)
            inputs = tokenizer(prompt, return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                     pad_token_id=pad)
            return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

        return generate

    def extraction_prompt(self, report: str) -> str:
        """The extraction prompt for ``report``."""
        return f"{EXTRACTION_PROMPT}\nECG report: {report}\nEntities:"

    def verification_prompt(self, report: str, entity: str) -> str:
        """The verification prompt for one extracted entity of ``report``."""
        return f"{VERIFICATION_PROMPT}\nECG report: {report}\nEntity: {entity}\nAnswer:"

    def verify(self, report: str, entity: str) -> bool:
        """Whether ``entity`` occurs in ``report``, is asserted positive and (optionally) the model says YES."""
        status = self.detector.phrase_status(report, entity)
        keep = ("positive", "uncertain") if self.keep_uncertain else ("positive",)
        if status not in keep:
            return False
        if self.llm_verification:
            answer = self._generate(self.verification_prompt(report, entity)).strip().upper()
            return answer.startswith("YES")
        return True

    def merge(self, entity: str) -> str:
        """The unique name of a generated entity: the lexicon's name for it, or for the one lexicon entity it
        contains ("possible LVH"); otherwise its normalised text."""
        if normalize_term(entity) in self.detector.phrases or self.detector.knowledge_base.find(entity) is not None:
            return self.detector.canonical(entity)
        inside = list(dict.fromkeys(m.entity for m in self.detector.mentions(entity)))
        return inside[0] if len(inside) == 1 else normalize_term(entity)

    def extract(self, report: str) -> list[str]:
        """Generate, parse, verify and merge the entities of ``report``."""
        if not (report or "").strip():
            return []
        out = []
        for entity in parse_entity_list(self._generate(self.extraction_prompt(report))):
            if self.verify(report, entity):
                out.append(self.merge(entity))
            else:
                self.rejected[normalize_term(entity)] += 1
        return list(dict.fromkeys(out))

    def describe(self) -> dict[str, Any]:
        """Name, model folder, prompts and verification settings."""
        return {"name": self.name, "model": self.model_path, "extraction_prompt": EXTRACTION_PROMPT,
                "verification_prompt": VERIFICATION_PROMPT if self.llm_verification else None,
                "keep_uncertain": self.keep_uncertain, "max_new_tokens": self.max_new_tokens}


def knowledge_base_hierarchy(
    knowledge_base: KnowledgeBase | None = None, merges: Mapping[str, str] | None = None
) -> dict[str, list[str]]:
    """Superclass name -> names of all its direct and indirect subtypes, from the knowledge base's ``subtypes``."""
    kb = knowledge_base if knowledge_base is not None else load_knowledge_base()
    merges = ENTITY_MERGES if merges is None else merges
    out: dict[str, list[str]] = {}
    for entry in kb:
        if entry.subtypes:
            members = {kb[merges.get(c, c)].name for c in kb.descendants(entry.code)} - {entry.name}
            if members:
                out[entry.name] = sorted(members)
    return out


def _superclasses_of(hierarchy: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    """Entity -> every superclass above it (transitively)."""
    direct: dict[str, set[str]] = {}
    for superclass, members in hierarchy.items():
        for member in members:
            if member != superclass:
                direct.setdefault(member, set()).add(superclass)
    out: dict[str, set[str]] = {}
    for entity in direct:
        seen: set[str] = set()
        stack = list(direct[entity])
        while stack:
            s = stack.pop()
            if s not in seen and s != entity:
                seen.add(s)
                stack.extend(direct.get(s, ()))
        out[entity] = seen
    return out


@dataclass
class MinedEntities:
    """The mined entity vocabulary and each report's multi-hot entity label (the entity file's content).

    ``entities`` is the vocabulary (most frequent first), ``hierarchy`` superclass -> member entities (both in the
    vocabulary), ``counts`` entity -> number of reports labelled with it, ``labels`` ECG id -> its entities.
    """

    entities: list[str]
    hierarchy: dict[str, list[str]]
    counts: dict[str, int]
    labels: dict[str, list[str]]
    extractor: dict[str, Any] = field(default_factory=dict)
    text_column: str = "report"
    n_reports: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def superclasses(self) -> list[str]:
        """The superclass entities."""
        return list(self.hierarchy)

    @property
    def reports_per_second(self) -> float:
        """Mining speed."""
        return self.n_reports / self.seconds if self.seconds > 0 else float("inf")

    def label_matrix(self, ecg_ids: Iterable[Any]) -> np.ndarray:
        """(n, Q) float32 multi-hot matrix of ``ecg_ids`` over :attr:`entities`; unknown ids give zero rows."""
        index = {name: i for i, name in enumerate(self.entities)}
        ids = [str(i) for i in ecg_ids]
        out = np.zeros((len(ids), len(self.entities)), dtype=np.float32)
        for row, ecg_id in enumerate(ids):
            for name in self.labels.get(ecg_id, ()):
                if name in index:
                    out[row, index[name]] = 1.0
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the entity file."""
        return {"format": FORMAT, "version": VERSION, "extractor": self.extractor, "text_column": self.text_column,
                "entities": self.entities, "hierarchy": self.hierarchy, "counts": self.counts,
                "labels": self.labels, "n_reports": self.n_reports, "seconds": self.seconds, **self.extra}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the entity file (JSON; written to a temporary file first, then moved into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> MinedEntities:
        """Read an entity file (see :func:`load_mined_entities`)."""
        return load_mined_entities(path)


def load_mined_entities(path: str | os.PathLike) -> MinedEntities:
    """Read an entity file written by ``cardiomm entities mine`` / :meth:`MinedEntities.save`.

    Raises ``ValueError`` naming the file when it is missing, not JSON, not a cardiomm entity file of a supported
    version, or inconsistent (a label or hierarchy member that is not in the vocabulary).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: entity file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a JSON entity file ({err})") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a cardiomm entity file (expected \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise ValueError(f"{path}: entity file version {data.get('version')!r} is not supported (expected {VERSION})")
    entities, hierarchy, counts, labels = (data.get(k) for k in ("entities", "hierarchy", "counts", "labels"))
    if not (isinstance(entities, list) and all(isinstance(e, str) for e in entities)):
        raise ValueError(f"{path}: \"entities\" must be a list of names")
    if not isinstance(hierarchy, dict) or not all(isinstance(v, list) for v in hierarchy.values()):
        raise ValueError(f"{path}: \"hierarchy\" must map superclass names to lists of entity names")
    if not isinstance(counts, dict) or not isinstance(labels, dict) \
            or not all(isinstance(v, list) for v in labels.values()):
        raise ValueError(f"{path}: \"counts\" must be an object and \"labels\" must map ECG ids to lists of names")
    known = set(entities)
    unknown = {n for names in labels.values() for n in names} - known
    unknown |= {n for s, members in hierarchy.items() for n in (s, *members)} - known
    if unknown:
        raise ValueError(f"{path}: names not in \"entities\": {sorted(unknown)[:5]}")
    core = {"format", "version", "extractor", "text_column", "entities", "hierarchy", "counts", "labels",
            "n_reports", "seconds"}
    return MinedEntities(
        entities=entities, hierarchy=hierarchy, counts={k: int(v) for k, v in counts.items()},
        labels={str(k): v for k, v in labels.items()}, extractor=data.get("extractor") or {},
        text_column=data.get("text_column", "report"), n_reports=int(data.get("n_reports", len(labels))),
        seconds=float(data.get("seconds", 0.0)), extra={k: v for k, v in data.items() if k not in core},
    )


def mine_entities(
    reports: Sequence[str | None],
    ids: Sequence[Any],
    extractor: EntityExtractor | None = None,
    hierarchy: KnowledgeBase | Mapping[str, Iterable[str]] | None = None,
    aggregate: bool = True,
    min_count: int = 1,
    progress: bool = True,
) -> MinedEntities:
    """Mine the entities of ``reports`` (one per id of ``ids``).

    Args:
        extractor: default :class:`KnowledgeBaseExtractor`.
        hierarchy: superclass -> member entity names, or a knowledge base whose ``subtypes`` give it (default: the
            shipped knowledge base, :func:`knowledge_base_hierarchy`).
        aggregate: label each report with every superclass above its entities (superclasses are entities too).
        min_count: keep entities that label at least this many reports.
        progress: show a tqdm progress bar.
    """
    from tqdm.auto import tqdm

    if len(reports) != len(ids):
        raise ValueError(f"got {len(reports)} reports but {len(ids)} ids")
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    extractor = extractor if extractor is not None else KnowledgeBaseExtractor()
    if hierarchy is None or isinstance(hierarchy, KnowledgeBase):
        merges = getattr(extractor, "merges", None)
        if merges is None and isinstance(extractor, GenerativeEntityExtractor):
            merges = extractor.detector.merges
        hierarchy = knowledge_base_hierarchy(hierarchy, merges)
    hierarchy = {s: list(m) for s, m in hierarchy.items()}
    above = _superclasses_of(hierarchy) if aggregate else {}
    start = time.perf_counter()
    labels: dict[str, list[str]] = {}
    for ecg_id, report in tqdm(zip(ids, reports), total=len(ids), desc="mining entities", unit="report",
                               disable=not progress):
        found = extractor.extract(report or "")
        names = list(found)
        for name in found:
            names.extend(sorted(above.get(name, ())))
        labels[str(ecg_id)] = list(dict.fromkeys(names))
    seconds = time.perf_counter() - start
    counts = Counter(name for names in labels.values() for name in names)
    kept = {name for name, n in counts.items() if n >= min_count}
    entities = sorted(kept, key=lambda n: (-counts[n], n))
    labels = {k: [n for n in v if n in kept] for k, v in labels.items()}
    used = {s: sorted(m for m in members if m in kept) for s, members in hierarchy.items() if s in kept}
    return MinedEntities(
        entities=entities,
        hierarchy={s: m for s, m in sorted(used.items()) if m},
        counts={n: counts[n] for n in entities},
        labels=labels,
        extractor=extractor.describe(),
        n_reports=len(labels),
        seconds=seconds,
        extra={"min_count": min_count, "aggregated": aggregate},
    )


def mine_dataset_entities(
    data_dir: str | os.PathLike,
    splits: Sequence[str] | None = None,
    text_column: str = "report",
    extractor: EntityExtractor | None = None,
    hierarchy: KnowledgeBase | Mapping[str, Iterable[str]] | None = None,
    aggregate: bool = True,
    min_count: int = 1,
    progress: bool = True,
) -> MinedEntities:
    """Mine the entities of every row of ``splits`` (default: all) of a cardiomm dataset folder, keyed by
    ``str(ecg_id)``; see :func:`mine_entities` for the other arguments."""
    from ..data.ecg_dataset import load_ecg_dataset

    dataset, _ = load_ecg_dataset(data_dir)
    splits = list(dataset) if splits is None else list(splits)
    missing = [s for s in splits if s not in dataset]
    if missing:
        raise ValueError(f"{data_dir}: no split(s) {missing}; splits: {sorted(dataset)}")
    ids: list[str] = []
    reports: list[str | None] = []
    for split in splits:
        columns = dataset[split].column_names
        if text_column not in columns or "ecg_id" not in columns:
            raise ValueError(f"{data_dir}: split {split!r} has no column {text_column!r} or 'ecg_id'")
        table = dataset[split].select_columns(["ecg_id", text_column])
        ids.extend(str(i) for i in table["ecg_id"])
        reports.extend(table[text_column])
    duplicated = [i for i, n in Counter(ids).items() if n > 1]
    if duplicated:
        raise ValueError(f"{data_dir}: ecg_id repeated across the splits {splits}: {duplicated[:5]}")
    mined = mine_entities(reports, ids, extractor=extractor, hierarchy=hierarchy, aggregate=aggregate,
                          min_count=min_count, progress=progress)
    mined.text_column = text_column
    mined.extra.update({"data": str(data_dir), "splits": splits})
    return mined


__all__ = [
    "ENTITY_MERGES",
    "EXTRACTION_PROMPT",
    "REPORT_PHRASES",
    "VERIFICATION_PROMPT",
    "EntityExtractor",
    "EntityMention",
    "GenerativeEntityExtractor",
    "KnowledgeBaseExtractor",
    "MinedEntities",
    "knowledge_base_hierarchy",
    "load_mined_entities",
    "mine_dataset_entities",
    "mine_entities",
    "parse_entity_list",
]
