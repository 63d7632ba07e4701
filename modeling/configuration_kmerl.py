"""Configuration of K-MERL (Knowledge-enhanced Multimodal ECG Representation Learning, arbitrary-lead inputs).

K-MERL is MERL's ECG–report dual encoder ([`ECGTextDualEncoderConfig`]) with three additions:

* the ECG tower is the lead-aware ViT (`vit_tiny` by default: tokens per lead, patch 100, learnable lead
  embeddings, lead-agnostic temporal embeddings);
* a **cardiac query network**: transformer decoder layers whose queries are the text tower's embeddings of the
  cardiac entities mined from the reports and whose keys/values are the ECG tokens, then one linear classifier
  shared by every query, trained with BCE against each report's multi-hot entity labels;
* **dynamic lead masking** (per ECG, `min_masked_leads`..`max_masked_leads` of the 12 leads are masked) and
  **lead-independent segment masking** (`segment_masking_ratio` of each kept lead's tokens, the same count for every
  lead); masked tokens are dropped before the encoder. Both act in training mode only.

The paper's settings (Liu et al., K-MERL): ViT-tiny, Med-CPT text tower, projections to 256, CLIP loss with a fixed
τ = 0.07, query network of 4 layers and 4 heads, 9–11 masked leads, segment ratio 0.25, total loss
`L_contrast + L_CQ`, no uni-modal alignment.
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import AutoConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_ecg_encoder import ECGEncoderConfig
from .configuration_ecg_text import ECGTextDualEncoderConfig


class KMERLQueryModelConfig(ECGTextDualEncoderConfig):
    r"""
    Configuration of [`KMERLQueryModel`]: every field of [`ECGTextDualEncoderConfig`] and the fields below.

    Args:
        ecg_config (`ECGEncoderConfig` or `dict`, *optional*):
            ECG tower; must be the lead-aware ViT (`backbone_family="vit"`). Defaults to `vit_tiny`.
        entity_names (`list[str]`, *optional*):
            The cardiac-entity vocabulary the query network was pretrained on (label order of `entity_labels`).
            Set with [`KMERLQueryModel.set_entity_vocabulary`], which also stores the entities' token ids in the
            weights, so `from_pretrained` restores the queries.
        entity_hierarchy (`dict[str, list[str]]`, *optional*): superclass -> member entities of the vocabulary.
        entity_max_length (`int`, defaults to 32): Tokens per entity name in the stored token ids.
        query_hidden_size (`int`, defaults to 256): Width of the cardiac query network.
        query_num_layers (`int`, defaults to 4): Decoder layers of the query network (the paper's 4).
        query_num_heads (`int`, defaults to 4): Attention heads of the query network (the paper's 4).
        query_mlp_ratio (`float`, defaults to 4.0): Feed-forward width of each layer, times `query_hidden_size`.
        query_dropout (`float`, defaults to 0.0): Dropout on the query network's attention and feed-forward outputs
            (0, as the ViT's `dropout`: the paper names none, and on a CPU drawing the masks costs a quarter of the
            network's training step).
        query_attention_dropout (`float`, defaults to 0.0): Dropout on its attention probabilities (it also moves
            attention off the fused kernel).
        query_loss_weight (`float`, defaults to 1.0): Weight of the BCE query loss `L_CQ` in the total loss.
        lead_masking (`bool`, defaults to `True`): Dynamic lead masking and segment masking in training mode.
        min_masked_leads / max_masked_leads (`int`, defaults to 9 / 11):
            Each training ECG masks `k` leads, `k` drawn uniformly from `min_masked_leads..max_masked_leads` (of
            `ecg_config.num_leads`); an ECG recorded with fewer leads keeps at most what it has, at least one.
        segment_masking_ratio (`float`, defaults to 0.25):
            Fraction of each kept lead's patch tokens masked in training (the same number for every lead).
    """

    model_type: ClassVar[str] = "kmerl_query_model"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "ecg_config": SubConfigSpec(config_class=ECGEncoderConfig, init_kwargs={"backbone": "vit_tiny"}),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
    }

    unimodal_alignment: bool = False
    entity_names: list[str] | None = None
    entity_hierarchy: dict[str, list[str]] | None = None
    entity_max_length: int = 32
    query_hidden_size: int = 256
    query_num_layers: int = 4
    query_num_heads: int = 4
    query_mlp_ratio: int | float = 4.0
    query_dropout: int | float = 0.0
    query_attention_dropout: int | float = 0.0
    query_loss_weight: int | float = 1.0
    lead_masking: bool = True
    min_masked_leads: int = 9
    max_masked_leads: int = 11
    segment_masking_ratio: int | float = 0.25

    def __post_init__(self, **kwargs: Any) -> None:
        self.entity_names = list(self.entity_names or [])
        self.entity_hierarchy = {k: list(v) for k, v in (self.entity_hierarchy or {}).items()}
        super().__post_init__(**kwargs)

    def validate_contrastive_fields(self) -> None:
        super().validate_contrastive_fields()
        family = getattr(self.ecg_config, "backbone_family", None)
        if family != "vit":
            raise ValueError(f"K-MERL needs the lead-aware ViT ECG tower (backbone vit_*); got {family!r}.")
        if len(set(self.entity_names)) != len(self.entity_names):
            raise ValueError("entity_names must not repeat a name.")
        if self.query_hidden_size % self.query_num_heads != 0:
            raise ValueError(
                f"query_hidden_size ({self.query_hidden_size}) must be a multiple of query_num_heads "
                f"({self.query_num_heads})."
            )
        if self.query_num_layers < 1 or self.entity_max_length < 1:
            raise ValueError("query_num_layers and entity_max_length must be positive.")
        num_leads = self.ecg_config.num_leads
        if not 0 <= self.min_masked_leads <= self.max_masked_leads < num_leads:
            raise ValueError(
                f"need 0 <= min_masked_leads <= max_masked_leads < num_leads ({num_leads}); got "
                f"{self.min_masked_leads}..{self.max_masked_leads}."
            )
        if not 0.0 <= self.segment_masking_ratio < 1.0:
            raise ValueError(f"segment_masking_ratio must lie in [0, 1), got {self.segment_masking_ratio}.")


__all__ = ["KMERLQueryModelConfig"]

KMERLQueryModelConfig.register_for_auto_class()
