"""Configuration of the ECG–report dual encoder (MERL; the ECG-Text model of Lalam et al.), on the fields every
ECG dual encoder shares ([`ECGDualEncoderConfig`], `configuration_ecg_contrastive`).

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

from typing import Any, ClassVar

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_ecg_contrastive import ECGDualEncoderConfig
from .configuration_ecg_encoder import ECGEncoderConfig


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
    partner_modalities: ClassVar[tuple[str, ...]] = ("text",)
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


__all__ = ["ECGTextDualEncoderConfig"]

ECGTextDualEncoderConfig.register_for_auto_class()
