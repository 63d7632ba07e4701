"""Configuration of CLERC, the multimodal cardiac foundation model: one encoder per diagnostic modality (ECG,
echocardiogram, angiogram, chest X-ray) and one text encoder shared by the reports of every modality, all projected
into one joint space and trained with the sum of the CLIP losses of every pair of modalities present for the same
patients.

Paper towers: a 1D CNN for the ECG (random initialisation), R(2+1)D-18 for echocardiograms and angiograms (separate
weights, both from Kinetics-400), CLIP's ViT-B/32 for chest X-rays and CLIP's text transformer for the reports (both
from CLIP's weights), 512-dimensional embeddings.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from transformers import AutoConfig, CLIPVisionConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_ecg_contrastive import ECGContrastiveConfig
from .configuration_ecg_encoder import ECGEncoderConfig
from .configuration_r2plus1d import R2Plus1DConfig

#: Every CLERC modality, in the order of the model's outputs and of `pair_losses` / `pair_counts`.
CLERC_MODALITIES: tuple[str, ...] = (
    "ecg", "echo", "angiogram", "chest_xray", "ecg_report", "echo_report", "angiogram_report", "chest_xray_report",
)
#: The diagnostic modalities, each with its own encoder.
CLERC_DIAGNOSTIC_MODALITIES: tuple[str, ...] = CLERC_MODALITIES[:4]
#: The report types, all read by the one text encoder.
CLERC_REPORT_MODALITIES: tuple[str, ...] = CLERC_MODALITIES[4:]
#: The video modalities (R(2+1)D encoders).
CLERC_VIDEO_MODALITIES: tuple[str, ...] = ("echo", "angiogram")


class CLERCMultiEncoderConfig(ECGContrastiveConfig):
    r"""
    Configuration of [`CLERCMultiEncoder`].

    Args:
        ecg_config (`ECGEncoderConfig` or `dict`, *optional*): ECG encoder; defaults to the `resnet1d_18` 1D ResNet
            (512 features).
        echo_config / angiogram_config (`R2Plus1DConfig` or `dict`, *optional*): echocardiogram and angiogram
            encoders (separate weights); default R(2+1)D-18 (torchvision's `r2plus1d_18` layout, 512 features).
        chest_xray_config (`CLIPVisionConfig` or `dict`, *optional*): chest X-ray encoder; default CLIP ViT-B/32.
        text_config (`PreTrainedConfig` or `dict`, *optional*): the report encoder shared by every report type; CLIP's
            text transformer by default (`CLIPTextConfig`), but any transformers text encoder works (a dict is
            rebuilt from its `model_type`, e.g. a BERT).
        echo_model_name_or_path / angiogram_model_name_or_path / chest_xray_model_name_or_path /
            text_model_name_or_path (`str`, *optional*): where the towers' pretrained weights came from;
            informative only (set by [`CLERCMultiEncoder.from_modality_pretrained`]).
        echo_pooling / angiogram_pooling (`str`, defaults to `"pooler"`): the video encoders' global average pooling
            (the only choice).
        chest_xray_pooling (`str`, defaults to `"pooler"`): `"pooler"` (CLIP's normalised class token), `"cls"` or
            `"mean"`.
        text_pooling (`str`, defaults to `"pooler"`): `"pooler"` (CLIP: the end-of-text token's final state; BERT:
            its pooler), `"cls"` (the first token's final state) or `"mean"` (mean over the non-padding tokens).
        freeze_echo_layers / freeze_angiogram_layers / freeze_chest_xray_layers / freeze_text_layers (`int`,
            defaults to 0): `-1` freezes the whole tower, `0` nothing; `N > 0` (embeddings and the first `N` layers)
            works for BERT-like text towers only.
        freeze_ecg (`bool`, defaults to `False`): freeze the ECG encoder.
        projection_dim (`int`, defaults to 512): dimension of the joint space.
        projection_type (`str`, defaults to `"linear"`): one bias-free linear projection per diagnostic modality and
            one for the text (CLIP); `"mlp"` uses the contrastive core's MLP heads instead.
        logit_scale_init_value (`float`, defaults to `log(1 / 0.07)`): initial log inverse temperature (CLIP's).
        learnable_temperature (`bool`, defaults to `True`): learn the temperature (CLIP).
        loss (`str`, defaults to `"clip"`): the pairwise objective; CLERC uses CLIP's loss only.
    """

    model_type: ClassVar[str] = "clerc_multi_encoder"
    partner_modalities: ClassVar[tuple[str, ...]] = ("echo", "angiogram", "chest_xray", "text")
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "ecg_config": SubConfigSpec(config_class=ECGEncoderConfig),
        "echo_config": SubConfigSpec(config_class=R2Plus1DConfig),
        "angiogram_config": SubConfigSpec(config_class=R2Plus1DConfig),
        "chest_xray_config": SubConfigSpec(config_class=CLIPVisionConfig),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_text_model"),
    }

    echo_config: R2Plus1DConfig | dict | None = None
    angiogram_config: R2Plus1DConfig | dict | None = None
    chest_xray_config: CLIPVisionConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    echo_model_name_or_path: str | None = None
    angiogram_model_name_or_path: str | None = None
    chest_xray_model_name_or_path: str | None = None
    text_model_name_or_path: str | None = None
    echo_pooling: str = "pooler"
    angiogram_pooling: str = "pooler"
    chest_xray_pooling: str = "pooler"
    text_pooling: str = "pooler"
    freeze_echo_layers: int = 0
    freeze_angiogram_layers: int = 0
    freeze_chest_xray_layers: int = 0
    freeze_text_layers: int = 0
    projection_dim: int = 512
    projection_type: str = "linear"
    logit_scale_init_value: int | float = math.log(1 / 0.07)
    learnable_temperature: bool = True
    loss: str = "clip"

    def validate_contrastive_fields(self) -> None:
        """Check the shared fields and the towers' pooling and freezing; CLERC's loss is CLIP's."""
        super().validate_contrastive_fields()
        if self.loss != "clip":
            raise ValueError(f"CLERC uses the CLIP loss of every pair of modalities, got loss={self.loss!r}.")
        for modality in CLERC_VIDEO_MODALITIES:
            if getattr(self, f"{modality}_pooling") != "pooler":
                raise ValueError(
                    f"{modality}_pooling must be 'pooler' (the R(2+1)D encoder's global average pooling), got "
                    f"{getattr(self, f'{modality}_pooling')!r}."
                )

    @classmethod
    def from_tower_configs(cls, **configs_and_fields: Any) -> CLERCMultiEncoderConfig:
        """Build the configuration from tower configurations (`ecg_config=...`, `text_config=...`; copied as dicts)
        and other fields."""
        fields = {k: v.to_dict() if isinstance(v, PreTrainedConfig) else v for k, v in configs_and_fields.items()}
        return cls(**fields)


__all__ = [
    "CLERC_MODALITIES",
    "CLERC_DIAGNOSTIC_MODALITIES",
    "CLERC_REPORT_MODALITIES",
    "CLERC_VIDEO_MODALITIES",
    "CLERCMultiEncoderConfig",
]

CLERCMultiEncoderConfig.register_for_auto_class()
