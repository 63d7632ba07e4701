"""Processor of CLERC: the preprocessing of every modality of [`CLERCMultiEncoder`] in one object.

``CLERCProcessor(ecg=..., echo=..., angiogram=..., chest_xray=..., ecg_report=[...], echo_report=[...], ...)``
returns one ``BatchFeature`` whose keys are the model's forward arguments for the modalities given:

- ``ecg_values`` (batch, leads, time) and ``ecg_lead_mask`` (batch, leads) from [`ECGFeatureExtractor`]: with
  its default ``crop_length`` of 2500 samples at 500 Hz, a random 5 s window of each 10 s record in training and
  the centre window at evaluation (CLERC's ECG clips);
- ``echo_values`` / ``angiogram_values`` (batch, 3, frames, size, size) from two [`CardiacVideoProcessor`]s (the
  echo one crops to the ultrasound sector, the angiogram one does not);
- ``chest_xray_values`` (batch, 3, 224, 224) from [`ChestXrayImageProcessor`];
- ``<report>_input_ids`` and ``<report>_attention_mask`` (batch, tokens) for each report type given, all from the
  one tokenizer of the shared text tower (CLIP's BPE by default, at most ``max_text_length`` = 77 tokens),
  padded to the longest report of that type in the batch.

Row ``i`` of every modality belongs to patient ``i``: the modalities of one call must have equal counts.

Saved with ``save_pretrained``: the tokenizer's files go in the folder itself; the ECG feature extractor, both
video processors and the chest X-ray processor are nested in ``processor_config.json`` under their attribute
names (``feature_extractor``, ``echo_video_processor``, ``angiogram_video_processor``,
``chest_xray_image_processor``), so the echo and angiogram settings come back separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import BatchFeature, ProcessorMixin
from transformers.video_processing_utils import VideoProcessorMixin

from .feature_extraction_ecg import ECGFeatureExtractor, ECGInput
from .image_processing_chest_xray import ChestXrayImageProcessor, ImageInput
from .processing_ecg_text import load_ecg_feature_extractor, tokenize_reports
from .video_processing_cardiac import CardiacVideoProcessor, VideoInput

# CLIP's text context length.
DEFAULT_MAX_TEXT_LENGTH: int = 77
REPORT_TYPES: tuple[str, ...] = ("ecg_report", "echo_report", "angiogram_report", "chest_xray_report")
VIDEO_MODALITIES: tuple[str, ...] = ("echo", "angiogram")
TEXT_INPUTS: tuple[str, ...] = ("input_ids", "attention_mask")


class CLERCProcessor(ProcessorMixin):
    r"""Tokenizer + ECG feature extractor + echo and angiogram video processors + chest X-ray processor of
    [`CLERCMultiEncoder`].

    Args:
        tokenizer ([`PreTrainedTokenizerBase`]): tokenizer of the shared text tower (`CLIPTokenizer` for CLIP's
            text encoder; any tokenizer of the configured text tower).
        feature_extractor ([`ECGFeatureExtractor`], *optional*): ECG preprocessing (default: 12 leads at 500 Hz,
            z-score, 2500-sample windows).
        echo_video_processor ([`CardiacVideoProcessor`], *optional*): echocardiogram preprocessing (default:
            sector crop, 112 x 112, 16 frames at stride 2).
        angiogram_video_processor ([`CardiacVideoProcessor`], *optional*): angiogram preprocessing (default: as
            the echo one without the sector crop).
        chest_xray_image_processor ([`ChestXrayImageProcessor`], *optional*): chest X-ray preprocessing (default:
            256 then 224 x 224, CLIP normalisation).
        max_text_length (`int`, defaults to 77): longest report in tokens; also capped by the tokenizer's
            `model_max_length`.
    """

    def __init__(
        self,
        tokenizer: Any,
        feature_extractor: Any = None,
        echo_video_processor: Any = None,
        angiogram_video_processor: Any = None,
        chest_xray_image_processor: Any = None,
        max_text_length: int = DEFAULT_MAX_TEXT_LENGTH,
    ) -> None:
        if tokenizer is None:
            raise ValueError("CLERCProcessor needs the tokenizer of the text tower")
        if isinstance(max_text_length, bool) or not isinstance(max_text_length, int) or max_text_length < 1:
            raise ValueError(f"max_text_length must be a positive integer, got {max_text_length!r}")
        self.max_text_length = max_text_length
        super().__init__(
            tokenizer=tokenizer,
            feature_extractor=feature_extractor if feature_extractor is not None else ECGFeatureExtractor(),
            echo_video_processor=(
                echo_video_processor if echo_video_processor is not None
                else CardiacVideoProcessor(crop_to_sector=True)
            ),
            angiogram_video_processor=(
                angiogram_video_processor if angiogram_video_processor is not None
                else CardiacVideoProcessor(crop_to_sector=False)
            ),
            chest_xray_image_processor=(
                chest_xray_image_processor if chest_xray_image_processor is not None else ChestXrayImageProcessor()
            ),
        )

    def __call__(
        self,
        ecg: ECGInput | None = None,
        echo: VideoInput | None = None,
        angiogram: VideoInput | None = None,
        chest_xray: ImageInput | None = None,
        ecg_report: str | Sequence[str] | None = None,
        echo_report: str | Sequence[str] | None = None,
        angiogram_report: str | Sequence[str] | None = None,
        chest_xray_report: str | Sequence[str] | None = None,
        sampling_rate: float | Sequence[float] | None = None,
        lead_names: Sequence[str] | Sequence[Sequence[str]] | None = None,
        training: bool = False,
        max_text_length: int | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """Prepare any subset of the modalities of a batch of patients (row `i` of each is patient `i`).

        Args:
            ecg: ECG record(s), any input [`ECGFeatureExtractor`] accepts (arrays in mV, tensors, record paths).
            echo, angiogram: video(s), any input [`CardiacVideoProcessor`] accepts (arrays, video/DICOM files).
            chest_xray: image(s), any input [`ChestXrayImageProcessor`] accepts (arrays, PNG/JPEG/DICOM files).
            ecg_report, echo_report, angiogram_report, chest_xray_report: one report or a list of reports.
            sampling_rate, lead_names: of ECG arrays, passed to the feature extractor.
            training: random ECG windows, video clips and crops, and image crops (training) instead of the
                deterministic evaluation ones.
            max_text_length: longest report in tokens; defaults to the processor's `max_text_length`.
            return_tensors: `"pt"`, `"np"` or `None`.

        Returns:
            `BatchFeature` with the model inputs of the modalities given (see the module docstring).

        Raises:
            ValueError: when no modality is given, the modalities differ in count, or an input is invalid.
        """
        reports = {"ecg_report": ecg_report, "echo_report": echo_report, "angiogram_report": angiogram_report,
                   "chest_xray_report": chest_xray_report}
        given = {"ecg": ecg, "echo": echo, "angiogram": angiogram, "chest_xray": chest_xray, **reports}
        if all(value is None for value in given.values()):
            raise ValueError("Pass at least one modality: " + ", ".join(given) + ".")
        if max_text_length is not None and (
            isinstance(max_text_length, bool) or not isinstance(max_text_length, int) or max_text_length < 1
        ):
            raise ValueError(f"max_text_length must be a positive integer, got {max_text_length!r}")
        data: dict[str, Any] = {}
        if ecg is not None:
            features = self.feature_extractor(
                ecg, sampling_rate=sampling_rate, lead_names=lead_names, crop="random" if training else "center",
                return_tensors=return_tensors,
            )
            data["ecg_values"] = features["input_values"]
            data["ecg_lead_mask"] = features["lead_mask"]
        for modality, processor in (("echo", self.echo_video_processor),
                                    ("angiogram", self.angiogram_video_processor)):
            if given[modality] is not None:
                values = processor(given[modality], training=training, return_tensors=return_tensors)
                data[f"{modality}_values"] = values["pixel_values"]
        if chest_xray is not None:
            values = self.chest_xray_image_processor(chest_xray, training=training, return_tensors=return_tensors)
            data["chest_xray_values"] = values["pixel_values"]
        limit = max_text_length if max_text_length is not None else self.max_text_length
        for report_type, texts in reports.items():
            if texts is None:
                continue
            if not isinstance(texts, str) and not (
                isinstance(texts, Sequence) and texts and all(isinstance(text, str) for text in texts)
            ):
                raise ValueError(f"{report_type} must be a report or a non-empty list of reports (strings)")
            encoded = tokenize_reports(self.tokenizer, texts, limit, return_tensors=return_tensors)
            for name in TEXT_INPUTS:
                data[f"{report_type}_{name}"] = encoded[name]
        self._check_counts(data)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
        """As `ProcessorMixin`'s check, except that the video processors are checked against
        `VideoProcessorMixin` directly (transformers looks that class up through its video processor mapping,
        which exists only where torchvision is installed)."""
        if "video_processor" in argument_name and "image_processor" not in argument_name:
            if not isinstance(argument, VideoProcessorMixin):
                raise TypeError(
                    f"Received a {type(argument).__name__} for argument {argument_name}, but a VideoProcessorMixin "
                    "(e.g. CardiacVideoProcessor) was expected."
                )
            return VideoProcessorMixin
        return super().check_argument_for_proper_class(argument_name, argument)

    @staticmethod
    def _check_counts(data: dict[str, Any]) -> None:
        firsts = ["ecg_values", "echo_values", "angiogram_values", "chest_xray_values"]
        firsts += [f"{report_type}_input_ids" for report_type in REPORT_TYPES]
        counts = {key.rsplit("_", 2 if key.endswith("_input_ids") else 1)[0]: len(data[key])
                  for key in firsts if key in data}
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{count} {modality}" for modality, count in counts.items())
            raise ValueError(f"Got {listed}; every modality needs one row per patient (equal counts).")

    @property
    def model_input_names(self) -> list[str]:
        """Names of every model input this processor can return."""
        names = ["ecg_values", "ecg_lead_mask"] + [f"{modality}_values" for modality in VIDEO_MODALITIES]
        names.append("chest_xray_values")
        names += [f"{report_type}_{name}" for report_type in REPORT_TYPES for name in TEXT_INPUTS]
        return names

    @classmethod
    def _get_arguments_from_pretrained(
        cls, pretrained_model_name_or_path: Any, processor_dict: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Any]:
        """Load the tokenizer (`AutoTokenizer`), the ECG feature extractor (:func:`load_ecg_feature_extractor`) and
        the video and image processors from their configs nested in `processor_config.json`, built with this
        module's sibling classes (so a checkpoint's own code builds them when loaded as remote code)."""
        kwargs = dict(kwargs)
        subfolder = kwargs.pop("subfolder", "")
        trust_remote_code = kwargs.pop("trust_remote_code", None)
        processor_dict = processor_dict or {}
        tokenizer = cls._load_tokenizer_from_pretrained(
            "tokenizer", pretrained_model_name_or_path, subfolder=subfolder, trust_remote_code=trust_remote_code,
            **kwargs,
        )
        feature_extractor = load_ecg_feature_extractor(
            pretrained_model_name_or_path, processor_dict, subfolder, trust_remote_code, **kwargs
        )
        parts: list[Any] = [tokenizer, feature_extractor]
        for attribute, part_class in (("echo_video_processor", CardiacVideoProcessor),
                                      ("angiogram_video_processor", CardiacVideoProcessor),
                                      ("chest_xray_image_processor", ChestXrayImageProcessor)):
            config = processor_dict.get(attribute)
            if config is None:
                parts.append(None)  # the default of `__init__`
            elif isinstance(config, dict):
                parts.append(part_class(**config))
            else:
                raise ValueError(f"{attribute} in processor_config.json must be a dict, got {type(config).__name__}")
        return parts


__all__ = ["CLERCProcessor", "DEFAULT_MAX_TEXT_LENGTH", "REPORT_TYPES"]

CLERCProcessor.register_for_auto_class()
