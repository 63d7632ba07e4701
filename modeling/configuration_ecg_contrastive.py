"""Configuration fields shared by every cardiomm ECG contrastive model.

[`ECGContrastiveConfig`] holds what every model of the family has: the ECG tower (`ecg_config`), the projection
heads into the joint space, the temperature, the cross-modal loss and the freezing of the ECG tower. For each
*partner tower* (the modalities of `partner_modalities`, e.g. `"text"`, `"ehr"`) a subclass adds `<m>_config`,
`<m>_model_name_or_path`, `<m>_pooling` and `freeze_<m>_layers`. [`ECGDualEncoderConfig`] adds what the ECG dual
encoders (one partner) share: the ConVIRT λ and MERL's uni-modal alignment. The model configurations build on
these: `ECGTextDualEncoderConfig` and `ECGSEHRDualEncoderConfig` on [`ECGDualEncoderConfig`], the tri-modal
`SEHRECGTextConfig` on [`ECGContrastiveConfig`].
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from transformers import PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_ecg_encoder import ECGEncoderConfig

PROJECTION_TYPES: tuple[str, ...] = ("mlp", "linear")
# ECG heads of the dual encoders: the projection types, or MERL's attention pooling of a ResNet feature map
ECG_PROJECTION_TYPES: tuple[str, ...] = PROJECTION_TYPES + ("attention_pool",)
TOWER_POOLINGS: tuple[str, ...] = ("cls", "pooler", "mean")
CONTRASTIVE_LOSSES: tuple[str, ...] = ("clip", "convirt")


class ECGContrastiveConfig(PreTrainedConfig):
    r"""
    Fields shared by every ECG contrastive model: an ECG tower and the partner towers of `partner_modalities`
    mapped into a joint space.

    Args:
        ecg_config (`ECGEncoderConfig` or `dict`, *optional*):
            ECG tower; defaults to `ECGEncoderConfig()` (1D ResNet18, MERL's default).
        projection_dim (`int`, defaults to 256): Dimension of the joint space.
        projection_hidden_size (`int`, defaults to 256): Hidden width of the MLP projections.
        projection_type (`str`, defaults to `"mlp"`):
            `"mlp"`: MERL's non-linear projectors, ECG `Linear-BN-ReLU-Linear-BN`, every other modality
            `Linear-GELU-Linear`; `"linear"`: one bias-free linear layer per modality (CLIP).
        logit_scale_init_value (`float`, defaults to `log(1 / 0.07)`):
            Initial log of the inverse temperature: `log(1/0.07)` for MERL, `log(1/0.1)` for Lalam et al.
        learnable_temperature (`bool`, defaults to `False`):
            Learn `logit_scale` (CLIP) or keep it fixed at `logit_scale_init_value` (MERL, Lalam et al.). Either
            way the value is part of the saved weights.
        loss (`str`, defaults to `"clip"`):
            Cross-modal objective: `"clip"` (symmetric InfoNCE) or `"convirt"` (ConVIRT, λ-weighted directions).
        freeze_ecg (`bool`, defaults to `False`): Freeze the ECG tower.
    """

    partner_modalities: ClassVar[tuple[str, ...]] = ()
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "ecg_config": SubConfigSpec(config_class=ECGEncoderConfig),
    }

    ecg_config: ECGEncoderConfig | dict | None = None
    projection_dim: int = 256
    projection_hidden_size: int = 256
    projection_type: str = "mlp"
    logit_scale_init_value: int | float = math.log(1 / 0.07)
    learnable_temperature: bool = False
    loss: str = "clip"
    freeze_ecg: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.validate_contrastive_fields()

    def validate_contrastive_fields(self) -> None:
        """Check the shared fields and, for each partner tower, that its pooling and freezing fit it."""
        if self.projection_type not in PROJECTION_TYPES:
            raise ValueError(f"projection_type must be one of {PROJECTION_TYPES}, got {self.projection_type!r}.")
        if self.projection_dim < 1 or self.projection_hidden_size < 1:
            raise ValueError("projection_dim and projection_hidden_size must be positive.")
        if self.loss not in CONTRASTIVE_LOSSES:
            raise ValueError(f"loss must be one of {CONTRASTIVE_LOSSES}, got {self.loss!r}.")
        for modality in self.partner_modalities:
            self._validate_partner_tower(modality)

    def _validate_partner_tower(self, modality: str) -> None:
        pooling = getattr(self, f"{modality}_pooling")
        if pooling not in TOWER_POOLINGS:
            raise ValueError(f"{modality}_pooling must be one of {TOWER_POOLINGS}, got {pooling!r}.")
        num_frozen = getattr(self, f"freeze_{modality}_layers")
        if num_frozen < -1:
            raise ValueError(f"freeze_{modality}_layers must be -1 (whole tower) or >= 0, got {num_frozen}.")
        num_layers = getattr(getattr(self, f"{modality}_config"), "num_hidden_layers", None)
        if num_layers is not None and num_frozen > num_layers:
            raise ValueError(
                f"freeze_{modality}_layers={num_frozen} exceeds the {modality} tower's {num_layers} layers."
            )


class ECGDualEncoderConfig(ECGContrastiveConfig):
    r"""
    Fields shared by the ECG dual encoders: an ECG tower paired with one partner tower (`partner_modalities`:
    `("text",)` for `ECGTextDualEncoderConfig`, `("ehr",)` for `ECGSEHRDualEncoderConfig`), on top of
    [`ECGContrastiveConfig`]'s.

    Args:
        convirt_lambda (`float`, defaults to 0.5): ConVIRT λ, the weight of the ECG→partner direction (Lalam et
            al. use 0.5).
        unimodal_alignment (`bool`, defaults to `True`): Add MERL's uni-modal alignment loss.
        uma_dropout (`float`, defaults to 0.1): Dropout rate of each UMA view.
        uma_weight (`float`, defaults to 1.0): Weight of the UMA loss in the total loss.
        uma_projection (`bool`, defaults to `False`):
            Form each UMA view as `dropout(linear_k(latent))` with two bias-free linear layers
            (`uma_projections`, latent -> `projection_dim`), as MERL's released code does, instead of dropout of
            the latent itself (MERL's paper).
        ecg_projection_type (`str`, *optional*):
            ECG head; `None` follows `projection_type`. `"attention_pool"` is MERL's ResNet head: a 1x1 convolution
            (`downconv`) of the ECG tower's feature map to `projection_dim` channels, then attention pooling (a
            class token and learned position embeddings over `attention_pool_positions` positions, one
            multi-head attention query with `attention_pool_heads` heads, a linear `c_proj`). The UMA latent is
            then the time average of the `downconv` features. ResNet towers only.
        attention_pool_heads (`int`, defaults to 4): Attention heads of the `"attention_pool"` head.
        attention_pool_positions (`int`, defaults to 313): Feature-map positions the `"attention_pool"` head's
            position embeddings cover: 313 for MERL's ResNets on 5000 samples. Other lengths interpolate them
            linearly (exact only at that length).
    """

    convirt_lambda: int | float = 0.5
    unimodal_alignment: bool = True
    uma_dropout: int | float = 0.1
    uma_weight: int | float = 1.0
    uma_projection: bool = False
    ecg_projection_type: str | None = None
    attention_pool_heads: int = 4
    attention_pool_positions: int = 313

    @property
    def partner_modality(self) -> str:
        """The modality of the one partner tower (`"text"`, `"ehr"`)."""
        return self.partner_modalities[0]

    @property
    def partner_config(self) -> PreTrainedConfig:
        """Configuration of the partner tower (`text_config`, `ehr_config`, ...)."""
        return getattr(self, f"{self.partner_modality}_config")

    def validate_contrastive_fields(self) -> None:
        super().validate_contrastive_fields()
        if not 0.0 <= self.convirt_lambda <= 1.0:
            raise ValueError(f"convirt_lambda must lie in [0, 1], got {self.convirt_lambda}.")
        if not 0.0 <= self.uma_dropout < 1.0:
            raise ValueError(f"uma_dropout must lie in [0, 1), got {self.uma_dropout}.")
        if self.resolved_ecg_projection_type not in ECG_PROJECTION_TYPES:
            raise ValueError(
                f"ecg_projection_type must be one of {ECG_PROJECTION_TYPES} or None, got {self.ecg_projection_type!r}."
            )
        if self.resolved_ecg_projection_type == "attention_pool":
            family = getattr(self.ecg_config, "backbone_family", None)
            if family != "resnet1d":
                raise ValueError(
                    f"ecg_projection_type='attention_pool' pools a ResNet feature map; the ECG tower is {family!r}."
                )
            if self.projection_dim % self.attention_pool_heads != 0:
                raise ValueError(
                    f"projection_dim ({self.projection_dim}) must be a multiple of attention_pool_heads "
                    f"({self.attention_pool_heads})."
                )
            if self.attention_pool_positions < 1:
                raise ValueError(f"attention_pool_positions must be positive, got {self.attention_pool_positions}.")

    @property
    def resolved_ecg_projection_type(self) -> str:
        """The ECG head: `ecg_projection_type`, or `projection_type` when that is unset."""
        return self.ecg_projection_type if self.ecg_projection_type is not None else self.projection_type


__all__ = [
    "ECGContrastiveConfig",
    "ECGDualEncoderConfig",
    "PROJECTION_TYPES",
    "ECG_PROJECTION_TYPES",
    "TOWER_POOLINGS",
    "CONTRASTIVE_LOSSES",
]
