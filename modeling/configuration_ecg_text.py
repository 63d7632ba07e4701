"""Configuration of the ECG–report dual encoder (MERL; the ECG-Text model of Lalam et al.), and the fields every
ECG dual encoder shares ([`ECGDualEncoderConfig`]; the ECG–sEHR model of `configuration_ecg_sehr` builds on it).

The model pairs an ECG encoder ([`ECGEncoderConfig`], any backbone) with any transformers text encoder and
aligns them contrastively in a shared space of `projection_dim` dimensions.

Settings of the two papers:

* **MERL** (Liu et al., 2024): 1D ResNet18 (or ViT-tiny) ECG encoder, Med-CPT text encoder
  (`ncbi/MedCPT-Query-Encoder`), non-linear projectors to 256 dimensions, CLIP loss with a fixed temperature
  τ = 0.07 (`logit_scale_init_value = log(1 / 0.07)`), plus uni-modal alignment (UMA: two dropout views, p = 0.1,
  of the ECG latent contrasted with each other, weight 1).
* **ECG-Text** of Lalam et al.: EHR paper's 8-conv 1D ResNet, GatorTron text encoder with the first 18 of its
  24 layers frozen, global average pooling of the token states (`text_pooling="mean"`), MLP projections,
  ConVIRT loss with λ = 0.5 and a fixed τ = 0.1 (`loss="convirt"`, `logit_scale_init_value = log(1 / 0.1)`),
  no UMA.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_ecg_encoder import ECGEncoderConfig

PROJECTION_TYPES: tuple[str, ...] = ("mlp", "linear")
TEXT_POOLINGS: tuple[str, ...] = ("cls", "pooler", "mean")
PARTNER_POOLINGS: tuple[str, ...] = TEXT_POOLINGS
CONTRASTIVE_LOSSES: tuple[str, ...] = ("clip", "convirt")


def validate_partner_tower(config: PreTrainedConfig, modality: str) -> None:
    """Check the `<modality>_pooling` and `freeze_<modality>_layers` fields of a composite configuration against its
    `<modality>_config` (the partner tower of the ECG: `"text"` or `"ehr"`)."""
    pooling = getattr(config, f"{modality}_pooling")
    if pooling not in PARTNER_POOLINGS:
        raise ValueError(f"{modality}_pooling must be one of {PARTNER_POOLINGS}, got {pooling!r}.")
    num_frozen = getattr(config, f"freeze_{modality}_layers")
    if num_frozen < -1:
        raise ValueError(f"freeze_{modality}_layers must be -1 (whole tower) or >= 0, got {num_frozen}.")
    num_layers = getattr(getattr(config, f"{modality}_config"), "num_hidden_layers", None)
    if num_layers is not None and num_frozen > num_layers:
        raise ValueError(
            f"freeze_{modality}_layers={num_frozen} exceeds the {modality} tower's {num_layers} layers."
        )


def validate_projection_fields(config: PreTrainedConfig) -> None:
    """Check the projection fields shared by the cardiomm contrastive models."""
    if config.projection_type not in PROJECTION_TYPES:
        raise ValueError(f"projection_type must be one of {PROJECTION_TYPES}, got {config.projection_type!r}.")
    if config.projection_dim < 1 or config.projection_hidden_size < 1:
        raise ValueError("projection_dim and projection_hidden_size must be positive.")


class ECGDualEncoderConfig(PreTrainedConfig):
    r"""
    Fields shared by the ECG dual encoders: an ECG tower paired with one partner tower (`partner_modality`:
    `"text"` for [`ECGTextDualEncoderConfig`], `"ehr"` for `ECGSEHRDualEncoderConfig`). Subclasses add the
    partner's `<modality>_config`, `<modality>_pooling` and `freeze_<modality>_layers` fields.

    Args:
        ecg_config (`ECGEncoderConfig` or `dict`, *optional*):
            ECG tower; defaults to `ECGEncoderConfig()` (1D ResNet18, MERL's default).
        projection_dim (`int`, defaults to 256): Dimension of the shared space.
        projection_hidden_size (`int`, defaults to 256): Hidden width of the MLP projections.
        projection_type (`str`, defaults to `"mlp"`):
            `"mlp"`: MERL's non-linear projectors, ECG `Linear-BN-ReLU-Linear-BN`, partner `Linear-GELU-Linear`;
            `"linear"`: one bias-free linear layer per modality (CLIP).
        logit_scale_init_value (`float`, defaults to `log(1 / 0.07)`):
            Initial log of the inverse temperature: `log(1/0.07)` for MERL, `log(1/0.1)` for Lalam et al.
        learnable_temperature (`bool`, defaults to `False`):
            Learn `logit_scale` (CLIP) or keep it fixed at `logit_scale_init_value` (MERL, Lalam et al.). Either
            way the value is part of the saved weights.
        loss (`str`, defaults to `"clip"`):
            Cross-modal objective: `"clip"` (symmetric InfoNCE) or `"convirt"` (ConVIRT, weight `convirt_lambda`
            on the ECG→partner direction).
        convirt_lambda (`float`, defaults to 0.5): ConVIRT λ (Lalam et al. use 0.5).
        unimodal_alignment (`bool`, defaults to `True`): Add MERL's uni-modal alignment loss.
        uma_dropout (`float`, defaults to 0.1): Dropout rate of each UMA view.
        uma_weight (`float`, defaults to 1.0): Weight of the UMA loss in the total loss.
        freeze_ecg (`bool`, defaults to `False`): Freeze the ECG tower.
    """

    partner_modality: ClassVar[str] = ""
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
    convirt_lambda: int | float = 0.5
    unimodal_alignment: bool = True
    uma_dropout: int | float = 0.1
    uma_weight: int | float = 1.0
    freeze_ecg: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.validate_dual_encoder()

    @property
    def partner_config(self) -> PreTrainedConfig:
        """Configuration of the partner tower (`text_config`, `ehr_config`, ...)."""
        return getattr(self, f"{self.partner_modality}_config")

    def validate_dual_encoder(self) -> None:
        """Check the field values and that the partner's pooling and freezing fit the partner tower."""
        validate_projection_fields(self)
        if self.loss not in CONTRASTIVE_LOSSES:
            raise ValueError(f"loss must be one of {CONTRASTIVE_LOSSES}, got {self.loss!r}.")
        if not 0.0 <= self.convirt_lambda <= 1.0:
            raise ValueError(f"convirt_lambda must lie in [0, 1], got {self.convirt_lambda}.")
        if not 0.0 <= self.uma_dropout < 1.0:
            raise ValueError(f"uma_dropout must lie in [0, 1), got {self.uma_dropout}.")
        if self.partner_modality:
            validate_partner_tower(self, self.partner_modality)


class ECGTextDualEncoderConfig(ECGDualEncoderConfig):
    r"""
    Configuration of [`ECGTextDualEncoder`].

    Args:
        ecg_config (`ECGEncoderConfig` or `dict`, *optional*):
            ECG tower; defaults to `ECGEncoderConfig()` (1D ResNet18, MERL's default).
        text_config (`PreTrainedConfig` or `dict`, *optional*):
            Text tower, any transformers text-encoder config. A dict is rebuilt from its `model_type` (default
            `"bert"`), so a saved model is rebuilt without network access. Defaults to `BertConfig()` (the
            BERT-base shape of Med-CPT).
        text_model_name_or_path (`str`, defaults to `"ncbi/MedCPT-Query-Encoder"`):
            Where the text tower's pretrained weights come from; informative only (set by
            [`ECGTextDualEncoder.from_ecg_text_pretrained`]).
        projection_dim (`int`, defaults to 256): Dimension of the shared ECG–text space.
        projection_hidden_size (`int`, defaults to 256): Hidden width of the MLP projections.
        projection_type (`str`, defaults to `"mlp"`):
            `"mlp"`: MERL's non-linear projectors, ECG `Linear-BN-ReLU-Linear-BN`, text `Linear-GELU-Linear`;
            `"linear"`: one bias-free linear layer per modality (CLIP).
        text_pooling (`str`, defaults to `"pooler"`):
            Text embedding fed to the projection: `"pooler"` (the tower's `pooler_output`, as MERL uses),
            `"cls"` (final state of the first token, Med-CPT's own embedding) or `"mean"` (mean of the final states
            of the non-padding tokens, Lalam et al.).
        logit_scale_init_value (`float`, defaults to `log(1 / 0.07)`):
            Initial log of the inverse temperature: `log(1/0.07)` for MERL, `log(1/0.1)` for Lalam et al.
        learnable_temperature (`bool`, defaults to `False`):
            Learn `logit_scale` (CLIP) or keep it fixed at `logit_scale_init_value` (MERL, Lalam et al.). Either
            way the value is part of the saved weights.
        loss (`str`, defaults to `"clip"`):
            Cross-modal objective: `"clip"` (symmetric InfoNCE) or `"convirt"` (ConVIRT, weight `convirt_lambda`
            on the ECG→text direction).
        convirt_lambda (`float`, defaults to 0.5): ConVIRT λ (Lalam et al. use 0.5).
        unimodal_alignment (`bool`, defaults to `True`): Add MERL's uni-modal alignment loss.
        uma_dropout (`float`, defaults to 0.1): Dropout rate of each UMA view.
        uma_weight (`float`, defaults to 1.0): Weight of the UMA loss in the total loss.
        freeze_text_layers (`int`, defaults to 0):
            Freeze the text tower's embeddings and its first `N` transformer layers (BERT-like towers: modules
            `embeddings` and `encoder.layer`); `-1` freezes the whole text tower, `0` nothing. MERL's configuration
            names 6 of Med-CPT's 12 layers; Lalam et al. freeze 18 of GatorTron's 24.
        freeze_ecg (`bool`, defaults to `False`): Freeze the ECG tower.

    Example:

    ```python
    >>> from transformers import BertConfig
    >>> config = ECGTextDualEncoderConfig(
    ...     ecg_config=ECGEncoderConfig(backbone="resnet1d_18"),
    ...     text_config=BertConfig(),
    ...     loss="convirt", logit_scale_init_value=math.log(1 / 0.1), unimodal_alignment=False,
    ... )
    ```
    """

    model_type: ClassVar[str] = "ecg_text_dual_encoder"
    partner_modality: ClassVar[str] = "text"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "ecg_config": SubConfigSpec(config_class=ECGEncoderConfig),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
    }

    text_config: PreTrainedConfig | dict | None = None
    text_model_name_or_path: str | None = "ncbi/MedCPT-Query-Encoder"
    text_pooling: str = "pooler"
    freeze_text_layers: int = 0

    @classmethod
    def from_ecg_text_configs(
        cls, ecg_config: ECGEncoderConfig, text_config: PreTrainedConfig, **kwargs: Any
    ) -> ECGTextDualEncoderConfig:
        """Build the configuration from the two tower configurations (copied as dicts)."""
        return cls(ecg_config=ecg_config.to_dict(), text_config=text_config.to_dict(), **kwargs)


__all__ = [
    "ECGDualEncoderConfig",
    "ECGTextDualEncoderConfig",
    "PROJECTION_TYPES",
    "TEXT_POOLINGS",
    "PARTNER_POOLINGS",
    "CONTRASTIVE_LOSSES",
    "validate_partner_tower",
    "validate_projection_fields",
]

ECGTextDualEncoderConfig.register_for_auto_class()
