"""Processor of the ECG–report dual encoder: the ECG feature extractor and the report tokenizer in one object.

``ECGTextProcessor(ecg=..., text=...)`` returns one ``BatchFeature`` with the model inputs of both modalities:
``input_values``, ``lead_mask`` and ``time_mask`` from [`ECGFeatureExtractor`], ``input_ids``, ``attention_mask``
(and ``token_type_ids`` for BERT-like tokenizers) from the tokenizer. Reports are padded to the longest report of
the batch, not to a fixed length. Either modality alone is prepared too (embedding ECGs or reports on their own).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from transformers import AutoFeatureExtractor, BatchFeature, ProcessorMixin

from .feature_extraction_ecg import ECGFeatureExtractor, ECGInput, SeedLike

# MERL tokenises reports to at most 256 tokens.
DEFAULT_MAX_TEXT_LENGTH: int = 256


def tokenize_reports(
    tokenizer: Any,
    text: str | Sequence[str],
    max_length: int,
    padding: bool | str = "longest",
    truncation: bool | str = True,
    return_tensors: str | None = "pt",
) -> dict[str, Any]:
    """Reports through ``tokenizer``, truncated at ``max_length`` tokens capped by its ``model_max_length``."""
    model_max_length = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max_length, int) and model_max_length > 0:
        max_length = min(max_length, model_max_length)
    return dict(tokenizer(text, padding=padding, truncation=truncation, max_length=max_length,
                          return_tensors=return_tensors))


def check_batch_sizes(data: dict[str, Any], modalities: dict[str, str]) -> None:
    """Raise ``ValueError`` when the modalities present in ``data`` differ in batch size. ``modalities`` maps the
    first input of each modality (``"input_values"``) to what its rows are (``"ECGs"``)."""
    sizes = {what: len(data[key]) for key, what in modalities.items() if key in data}
    if len(set(sizes.values())) > 1:
        counts = " and ".join(f"{size} {what}" for what, size in sizes.items())
        raise ValueError(f"Got {counts}; {'pairs' if len(sizes) == 2 else 'triplets'} need equal counts.")


def load_ecg_feature_extractor(
    pretrained_model_name_or_path: Any, processor_dict: dict[str, Any] | None, subfolder: str,
    trust_remote_code: bool | None, **kwargs: Any,
) -> Any:
    """The feature extractor of a saved processor.

    An `ECGFeatureExtractor` (its config nested in `processor_config.json`) is built with this module's sibling
    class: the installed one, or, when the processor itself was loaded as a checkpoint's remote code, the
    checkpoint's own `feature_extraction_ecg.py` from the same module package. It therefore loads whether or not
    `ECGFeatureExtractor` is registered with `AutoFeatureExtractor` and needs no second `trust_remote_code`
    resolution. Any other feature extractor goes through `AutoFeatureExtractor` with the caller's
    `trust_remote_code`.
    """
    fe_config = (processor_dict or {}).get("feature_extractor")
    if isinstance(fe_config, dict) and fe_config.get("feature_extractor_type") == ECGFeatureExtractor.__name__:
        return ECGFeatureExtractor.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
    return AutoFeatureExtractor.from_pretrained(
        pretrained_model_name_or_path, subfolder=subfolder, trust_remote_code=trust_remote_code, **kwargs
    )


def join_subfolder(subfolder: str, name: str) -> str:
    """``name`` inside ``subfolder`` (the folder of a processor within a repository, or ``""``)."""
    return os.path.join(subfolder, name) if subfolder else name


class ECGTextProcessor(ProcessorMixin):
    r"""Feature extractor + tokenizer of [`ECGTextDualEncoder`].

    Args:
        feature_extractor ([`ECGFeatureExtractor`]): ECG preprocessing.
        tokenizer ([`PreTrainedTokenizerBase`]): report tokenizer of the text tower.
        max_text_length (`int`, defaults to 256): longest report in tokens (MERL: 256); also capped by the
            tokenizer's `model_max_length`.
    """

    # transformers 5 reads the sub-processors from the names of `__init__`'s parameters (`feature_extractor`,
    # `tokenizer`); the former `attributes` / `<name>_class` class attributes are deprecated there.

    def __init__(self, feature_extractor: Any, tokenizer: Any, max_text_length: int = DEFAULT_MAX_TEXT_LENGTH) -> None:
        if not isinstance(max_text_length, int) or max_text_length < 1:
            raise ValueError(f"max_text_length must be a positive integer, got {max_text_length!r}")
        self.max_text_length = max_text_length
        super().__init__(feature_extractor, tokenizer)

    def __call__(
        self,
        ecg: ECGInput | None = None,
        text: str | Sequence[str] | None = None,
        sampling_rate: float | Sequence[float] | None = None,
        lead_names: Sequence[str] | Sequence[Sequence[str]] | None = None,
        crop: str = "center",
        padding: bool | str = "longest",
        truncation: bool | str = True,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
        layout: str = "leads_first",
        seed: SeedLike = None,
    ) -> BatchFeature:
        """Prepare ECGs, reports, or ECG–report pairs.

        Args:
            ecg: ECG record(s), any input [`ECGFeatureExtractor`] accepts (arrays, tensors, record paths).
            text: one report or a list of reports (row `i` paired with ECG `i`).
            sampling_rate, lead_names, layout, seed: passed to the feature extractor.
            crop: `"center"` (evaluation), `"random"` (training), `"windows"` or `"none"`.
            padding: tokenizer padding (`"longest"`: to the longest report of the batch).
            truncation: tokenizer truncation.
            max_length: longest report in tokens; defaults to `max_text_length`, capped by the tokenizer's
                `model_max_length`.
            return_tensors: `"pt"`, `"np"` or `None`.

        Returns:
            `BatchFeature` with `input_values` (batch, leads, time), `lead_mask` (batch, leads) and `time_mask`
            (batch, time) when `ecg` is given, and `input_ids`, `attention_mask` (batch, tokens) (plus
            `token_type_ids` if the tokenizer makes them) when `text` is given.

        Raises:
            ValueError: when neither modality is given, or ECGs and reports differ in number.
        """
        if ecg is None and text is None:
            raise ValueError("Pass ECGs (`ecg`), reports (`text`) or both.")
        data: dict[str, Any] = {}
        if ecg is not None:
            data.update(self.feature_extractor(
                ecg, sampling_rate=sampling_rate, lead_names=lead_names, layout=layout, crop=crop,
                return_tensors=return_tensors, seed=seed,
            ))
        if text is not None:
            limit = max_length if max_length is not None else self.max_text_length
            data.update(tokenize_reports(self.tokenizer, text, limit, padding, truncation, return_tensors))
        check_batch_sizes(data, {"input_values": "ECGs", "input_ids": "reports"})
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        """Names of the model inputs this processor returns."""
        names = list(self.feature_extractor.model_input_names) + list(self.tokenizer.model_input_names)
        return list(dict.fromkeys(names))

    @classmethod
    def _get_arguments_from_pretrained(
        cls, pretrained_model_name_or_path: Any, processor_dict: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Any]:
        """Load the feature extractor (:func:`load_ecg_feature_extractor`) and the tokenizer."""
        kwargs = dict(kwargs)
        subfolder = kwargs.pop("subfolder", "")
        trust_remote_code = kwargs.pop("trust_remote_code", None)
        feature_extractor = load_ecg_feature_extractor(
            pretrained_model_name_or_path, processor_dict, subfolder, trust_remote_code, **kwargs
        )
        tokenizer = cls._load_tokenizer_from_pretrained(
            "tokenizer", pretrained_model_name_or_path, subfolder=subfolder, trust_remote_code=trust_remote_code,
            **kwargs,
        )
        return [feature_extractor, tokenizer]


__all__ = ["ECGTextProcessor", "DEFAULT_MAX_TEXT_LENGTH"]

ECGTextProcessor.register_for_auto_class()
