"""Processor of the ECG–sEHR dual encoder: the ECG feature extractor and the medical-code tokenizer in one object.

``ECGSEHRProcessor(ecg=..., timelines=..., reference_times=...)`` returns one ``BatchFeature`` with
``input_values``, ``lead_mask`` and ``time_mask`` from [`ECGFeatureExtractor`] and the code sequences as
``ehr_input_ids``, ``ehr_attention_mask``, ``ehr_time_ids``, ``ehr_type_ids`` from [`MedicalCodeTokenizer`]
(padded to the longest sequence of the batch; the most recent codes are kept when a timeline is too long). Either
modality alone is prepared too. Saved, the code tokenizer lives in the sub-folder ``code_tokenizer/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import BatchFeature, ProcessorMixin

from .feature_extraction_ecg import ECGInput, SeedLike
from .processing_ecg_text import check_batch_sizes, join_subfolder, load_ecg_feature_extractor
from .tokenization_medical_codes import MedicalCodeTokenizer

#: Prefix of the code-sequence inputs of the composite models (``ehr_input_ids``, ...).
EHR_PREFIX: str = "ehr_"
#: Sub-folder of a saved processor that holds its code tokenizer (the `code_tokenizer` attribute's name).
CODE_TOKENIZER_FOLDER: str = "code_tokenizer"


def encode_timelines(
    code_tokenizer: Any,
    timelines: Any,
    reference_times: Any,
    max_length: int | None,
    return_tensors: str | None,
) -> dict[str, Any]:
    """Code timelines through ``code_tokenizer`` (most recent codes kept, padded to the longest), keyed
    ``ehr_input_ids``, ``ehr_attention_mask``, ``ehr_time_ids``, ``ehr_type_ids``."""
    encoded = code_tokenizer(timelines, reference_times, max_length=max_length, window="recent", padding="longest",
                             return_tensors=return_tensors)
    return {EHR_PREFIX + key: encoded[key] for key in code_tokenizer.model_input_names if key in encoded}


def check_max_codes_length(max_codes_length: Any) -> None:
    """``ValueError`` unless ``max_codes_length`` is ``None`` or an integer of at least 3 ([CLS], a code, [SEP])."""
    if max_codes_length is not None and (
        isinstance(max_codes_length, bool) or not isinstance(max_codes_length, int) or max_codes_length < 3
    ):
        raise ValueError(f"max_codes_length must be None or an integer of at least 3, got {max_codes_length!r}")


def load_code_tokenizer(pretrained_model_name_or_path: Any, subfolder: str, **kwargs: Any) -> MedicalCodeTokenizer:
    """The code tokenizer saved in ``code_tokenizer/`` of a processor folder, built with this module's sibling
    class (the installed one, or the checkpoint's own `tokenization_medical_codes.py` when loaded as remote code)."""
    return MedicalCodeTokenizer.from_pretrained(
        pretrained_model_name_or_path, subfolder=join_subfolder(subfolder, CODE_TOKENIZER_FOLDER), **kwargs
    )


class ECGSEHRProcessor(ProcessorMixin):
    r"""Feature extractor + medical-code tokenizer of [`ECGSEHRDualEncoder`].

    Args:
        feature_extractor ([`ECGFeatureExtractor`]): ECG preprocessing.
        code_tokenizer ([`MedicalCodeTokenizer`]): tokenizer of the code timelines (the sEHR tower's).
        max_codes_length (`int`, *optional*): longest code sequence, `[CLS]` and `[SEP]` included (defaults to
            the code tokenizer's `model_max_length`).
    """

    def __init__(self, feature_extractor: Any, code_tokenizer: Any, max_codes_length: int | None = None) -> None:
        check_max_codes_length(max_codes_length)
        self.max_codes_length = max_codes_length
        super().__init__(feature_extractor, code_tokenizer)

    def __call__(
        self,
        ecg: ECGInput | None = None,
        timelines: Any = None,
        reference_times: Any = None,
        sampling_rate: float | Sequence[float] | None = None,
        lead_names: Sequence[str] | Sequence[Sequence[str]] | None = None,
        crop: str = "center",
        max_codes_length: int | None = None,
        return_tensors: str | None = "pt",
        layout: str = "leads_first",
        seed: SeedLike = None,
    ) -> BatchFeature:
        """Prepare ECGs, code timelines, or ECG–timeline pairs.

        Args:
            ecg: ECG record(s), any input [`ECGFeatureExtractor`] accepts (arrays, tensors, record paths).
            timelines: one timeline or a list of timelines (events `{time, code_system, code}` or
                `(code, code_system, time)`), timeline `i` paired with ECG `i`.
            reference_times: the time each timeline is seen from (e.g. the ECG acquisition times: time ids
                count weeks from it), one for all or one per timeline; `None` counts from each first code.
            sampling_rate, lead_names, layout, seed: passed to the feature extractor.
            crop: `"center"` (evaluation), `"random"` (training), `"windows"` or `"none"`.
            max_codes_length: longest code sequence; defaults to the processor's `max_codes_length`.
            return_tensors: `"pt"`, `"np"` or `None`.

        Returns:
            `BatchFeature` with `input_values`, `lead_mask`, `time_mask` when `ecg` is given and `ehr_input_ids`,
            `ehr_attention_mask`, `ehr_time_ids`, `ehr_type_ids` (batch, codes) when `timelines` are given.

        Raises:
            ValueError: when neither modality is given, ECGs and timelines differ in number, or an input is
                invalid (the feature extractor's and the code tokenizer's errors).
        """
        if ecg is None and timelines is None:
            raise ValueError("Pass ECGs (`ecg`), code timelines (`timelines`) or both.")
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
        check_batch_sizes(data, {"input_values": "ECGs", EHR_PREFIX + "input_ids": "code timelines"})
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        """Names of the model inputs this processor returns."""
        names = list(self.feature_extractor.model_input_names)
        names += [EHR_PREFIX + name for name in self.code_tokenizer.model_input_names]
        return list(dict.fromkeys(names))

    @classmethod
    def _get_arguments_from_pretrained(
        cls, pretrained_model_name_or_path: Any, processor_dict: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Any]:
        """Load the feature extractor (as [`ECGTextProcessor`] does) and the code tokenizer of `code_tokenizer/`,
        both with this module's sibling classes, so a checkpoint loaded as remote code uses its own files."""
        kwargs = dict(kwargs)
        subfolder = kwargs.pop("subfolder", "")
        trust_remote_code = kwargs.pop("trust_remote_code", None)
        feature_extractor = load_ecg_feature_extractor(
            pretrained_model_name_or_path, processor_dict, subfolder, trust_remote_code, **kwargs
        )
        return [feature_extractor, load_code_tokenizer(pretrained_model_name_or_path, subfolder, **kwargs)]


__all__ = ["ECGSEHRProcessor", "CODE_TOKENIZER_FOLDER", "EHR_PREFIX"]

ECGSEHRProcessor.register_for_auto_class()
