"""Configuration of the sEHR–ECG–Text tri-modal model (Lalam et al., Section 3.2; after MMV, Alayrac et al. 2020).

ECGs and sEHR code sequences meet in a *fine* joint space Ω_es; ECGs and clinical text in a *coarse* joint space
Ω_set, which the ECG reaches through a projection P_es→set from the fine space (the sEHR embedding can take the same
route). Loss `L = w_es · L_es + w_et · L_et` with ConVIRT terms (Eq. 1–3; the paper: w = 1, λ_es = λ_et = 0.5,
τ = 0.1). Paper towers: the 8-conv 1D ResNet (random init), sEHR-BERT from its MLM pre-training with its first 3
layers frozen, GatorTron-base (`UFNLP/gatortron-base`) with its first 18 of 24 layers frozen, global average
pooling for all three, MLP projections.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_ecg_contrastive import ECGContrastiveConfig
from .configuration_ecg_encoder import ECGEncoderConfig
from .configuration_sehr_bert import SEHRBertConfig


class SEHRECGTextConfig(ECGContrastiveConfig):
    r"""
    Configuration of [`SEHRECGTextModel`].

    Args:
        ecg_config (`ECGEncoderConfig` or `dict`, *optional*): ECG tower; defaults to the 8-conv 1D ResNet.
        ehr_config (`SEHRBertConfig` or `dict`, *optional*): sEHR-BERT tower (paper shape by default).
        text_config (`PreTrainedConfig` or `dict`, *optional*): Text tower, any transformers text encoder; a dict is
            rebuilt from its `model_type` (default `"bert"`).
        ehr_model_name_or_path / text_model_name_or_path (`str`, *optional*): Where the towers' pretrained weights
            come from; informative only.
        ehr_pooling / text_pooling (`str`, defaults to `"mean"`): `"mean"` (global average pooling, the paper),
            `"cls"` or `"pooler"`.
        freeze_ehr_layers (`int`, defaults to 3): Frozen sEHR-BERT prefix (embeddings + first `N` layers; `-1`:
            the whole tower).
        freeze_text_layers (`int`, defaults to 0): Frozen text prefix; the paper freezes 18 of GatorTron's 24.
        freeze_ecg (`bool`, defaults to `False`): Freeze the ECG tower.
        projection_dim (`int`, defaults to 256): Dimension of the fine ECG–sEHR space Ω_es.
        coarse_projection_dim (`int`, *optional*): Dimension of the coarse sEHR–ECG–Text space Ω_set; defaults to
            `projection_dim` (the paper's P_es→set maps R^{d_z} to R^{d_z}).
        projection_hidden_size (`int`, defaults to 256): Hidden width of the MLP projections.
        projection_type (`str`, defaults to `"mlp"`): `"mlp"` (ECG `Linear-BN-ReLU-Linear-BN`, sEHR / text / P_es→set
            `Linear-GELU-Linear`) or `"linear"` (one bias-free linear layer each).
        logit_scale_init_value (`float`, defaults to `log(1 / 0.1)`): Log of the inverse temperature (τ = 0.1),
            shared by both spaces.
        learnable_temperature (`bool`, defaults to `False`): Learn `logit_scale` instead of keeping τ fixed.
        loss (`str`, defaults to `"convirt"`): `"convirt"` (Eq. 1–2) or `"clip"` for both terms.
        lambda_es (`float`, defaults to 0.5): ConVIRT weight of the ECG→sEHR direction in L_es.
        lambda_et (`float`, defaults to 0.5): ConVIRT weight of the ECG→text direction in L_et.
        ecg_ehr_loss_weight (`float`, defaults to 1.0): Weight of L_es in the total loss.
        ecg_text_loss_weight (`float`, defaults to 1.0): Weight of L_et in the total loss.
    """

    model_type: ClassVar[str] = "sehr_ecg_text"
    partner_modalities: ClassVar[tuple[str, ...]] = ("ehr", "text")
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "ecg_config": SubConfigSpec(config_class=ECGEncoderConfig, init_kwargs={"backbone": "resnet1d_8"}),
        "ehr_config": SubConfigSpec(config_class=SEHRBertConfig),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
    }

    ehr_config: SEHRBertConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    ehr_model_name_or_path: str | None = None
    text_model_name_or_path: str | None = None
    ehr_pooling: str = "mean"
    text_pooling: str = "mean"
    freeze_ehr_layers: int = 3
    freeze_text_layers: int = 0
    coarse_projection_dim: int | None = None
    logit_scale_init_value: int | float = math.log(1 / 0.1)
    loss: str = "convirt"
    lambda_es: int | float = 0.5
    lambda_et: int | float = 0.5
    ecg_ehr_loss_weight: int | float = 1.0
    ecg_text_loss_weight: int | float = 1.0

    def __post_init__(self, **kwargs: Any) -> None:
        if self.coarse_projection_dim is None:
            self.coarse_projection_dim = self.projection_dim
        super().__post_init__(**kwargs)

    def validate_contrastive_fields(self) -> None:
        """Check the shared fields, the partner towers' pooling and freezing, and the tri-modal fields."""
        super().validate_contrastive_fields()
        if self.coarse_projection_dim < 1:
            raise ValueError("coarse_projection_dim must be positive.")
        for name in ("lambda_es", "lambda_et"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}.")
        for name in ("ecg_ehr_loss_weight", "ecg_text_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")

    @classmethod
    def from_tower_configs(
        cls, ecg_config: ECGEncoderConfig, ehr_config: SEHRBertConfig, text_config: PreTrainedConfig, **kwargs: Any
    ) -> SEHRECGTextConfig:
        """Build the configuration from the three tower configurations (copied as dicts)."""
        return cls(ecg_config=ecg_config.to_dict(), ehr_config=ehr_config.to_dict(), text_config=text_config.to_dict(),
                   **kwargs)


__all__ = ["SEHRECGTextConfig"]

SEHRECGTextConfig.register_for_auto_class()
