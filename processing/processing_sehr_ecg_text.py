"""Processor of the sEHR–ECG–text model: ECG feature extractor, medical-code tokenizer and text tokenizer.

``SEHRECGTextProcessor(ecg=..., timelines=..., reference_times=..., text=...)`` returns one ``BatchFeature`` with
the union of [`ECGSEHRProcessor`]'s and [`ECGTextProcessor`]'s outputs: ``input_values``, ``lead_mask``,
``time_mask``; ``ehr_input_ids``, ``ehr_attention_mask``, ``ehr_time_ids``, ``ehr_type_ids``; ``input_ids``,
``attention_mask`` (+ ``token_type_ids``). Any subset of the three modalities is prepared. Saved, the text
tokenizer lives in the folder itself and the code tokenizer in ``code_tokenizer/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import BatchFeature, ProcessorMixin

from .feature_extraction_ecg import ECGInput, SeedLike
from .processing_ecg_sehr import EHR_PREFIX, check_max_codes_length, encode_timelines, load_code_tokenizer
from .processing_ecg_text import check_batch_sizes, load_ecg_feature_extractor, tokenize_reports

# The text budget of Lalam et al.: 400 tokens.
DEFAULT_MAX_TEXT_LENGTH: int = 400


class SEHRECGTextProcessor(ProcessorMixin):
    r"""Feature extractor + medical-code tokenizer + text tokenizer of [`SEHRECGTextModel`].

    Args:
        feature_extractor ([`ECGFeatureExtractor`]): ECG preprocessing.
        code_tokenizer ([`MedicalCodeTokenizer`]): tokenizer of the code timelines (the sEHR tower's).
        tokenizer ([`PreTrainedTokenizerBase`]): tokenizer of the text tower.
        max_codes_length (`int`, *optional*): longest code sequence, `[CLS]` and `[SEP]` included (defaults to
            the code tokenizer's `model_max_length`).
        max_text_length (`int`, defaults to 400): longest text in tokens; also capped by the tokenizer's
            `model_max_length`.
    """

    def __init__(
        self,
        feature_extractor: Any,
        code_tokenizer: Any,
        tokenizer: Any,
        max_codes_length: int | None = None,
        max_text_length: int = DEFAULT_MAX_TEXT_LENGTH,
    ) -> None:
        check_max_codes_length(max_codes_length)
        if isinstance(max_text_length, bool) or not isinstance(max_text_length, int) or max_text_length < 1:
            raise ValueError(f"max_text_length must be a positive integer, got {max_text_length!r}")
        self.max_codes_length = max_codes_length
        self.max_text_length = max_text_length
        super().__init__(feature_extractor, code_tokenizer, tokenizer)

    def __call__(
        self,
        ecg: ECGInput | None = None,
        timelines: Any = None,
        reference_times: Any = None,
        text: str | Sequence[str] | None = None,
        sampling_rate: float | Sequence[float] | None = None,
        lead_names: Sequence[str] | Sequence[Sequence[str]] | None = None,
        crop: str = "center",
        max_codes_length: int | None = None,
        max_length: int | None = None,
        padding: bool | str = "longest",
        truncation: bool | str = True,
        return_tensors: str | None = "pt",
        layout: str = "leads_first",
        seed: SeedLike = None,
    ) -> BatchFeature:
        """Prepare any subset of ECGs, code timelines and texts (row `i` of each belongs together).

        Args:
            ecg: ECG record(s), any input [`ECGFeatureExtractor`] accepts.
            timelines, reference_times, max_codes_length: as for [`ECGSEHRProcessor`].
            text: one text or a list of texts.
            sampling_rate, lead_names, layout, seed, crop: passed to the feature extractor.
            max_length, padding, truncation: text tokenisation; `max_length` defaults to `max_text_length`.
            return_tensors: `"pt"`, `"np"` or `None`.

        Returns:
            `BatchFeature` with the inputs of the modalities given (see the module docstring).

        Raises:
            ValueError: when no modality is given, the modalities differ in batch size, or an input is invalid.
        """
        if ecg is None and timelines is None and text is None:
            raise ValueError("Pass ECGs (`ecg`), code timelines (`timelines`), texts (`text`) or any of them.")
        data: dict[str, Any] = {}
        if ecg is not None:
            data.update(self.feature_extractor(
                ecg, sampling_rate=sampling_rate, lead_names=lead_names, layout=layout, crop=crop,
                return_tensors=return_tensors, seed=seed,
            ))
        if timelines is not None:
            check_max_codes_length(max_codes_length)
            limit = max_codes_length if max_codes_length is not None else self.max_codes_length
            data.update(encode_timelines(self.code_tokenizer, timelines, reference_times, limit, return_tensors))
        if text is not None:
            limit = max_length if max_length is not None else self.max_text_length
            data.update(tokenize_reports(self.tokenizer, text, limit, padding, truncation, return_tensors))
        check_batch_sizes(
            data, {"input_values": "ECGs", EHR_PREFIX + "input_ids": "code timelines", "input_ids": "texts"}
        )
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        """Names of the model inputs this processor returns."""
        names = list(self.feature_extractor.model_input_names)
        names += [EHR_PREFIX + name for name in self.code_tokenizer.model_input_names]
        names += list(self.tokenizer.model_input_names)
        return list(dict.fromkeys(names))

    @classmethod
    def _get_arguments_from_pretrained(
        cls, pretrained_model_name_or_path: Any, processor_dict: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Any]:
        """Load the feature extractor and the code tokenizer with this module's sibling classes (as
        [`ECGSEHRProcessor`] does) and the text tokenizer through `AutoTokenizer`."""
        kwargs = dict(kwargs)
        subfolder = kwargs.pop("subfolder", "")
        trust_remote_code = kwargs.pop("trust_remote_code", None)
        feature_extractor = load_ecg_feature_extractor(
            pretrained_model_name_or_path, processor_dict, subfolder, trust_remote_code, **kwargs
        )
        code_tokenizer = load_code_tokenizer(pretrained_model_name_or_path, subfolder, **kwargs)
        tokenizer = cls._load_tokenizer_from_pretrained(
            "tokenizer", pretrained_model_name_or_path, subfolder=subfolder, trust_remote_code=trust_remote_code,
            **kwargs,
        )
        return [feature_extractor, code_tokenizer, tokenizer]


__all__ = ["SEHRECGTextProcessor", "DEFAULT_MAX_TEXT_LENGTH"]

SEHRECGTextProcessor.register_for_auto_class()
