"""K-MERL: the ECG–report dual encoder with the cardiac query network and lead / segment masking.

[`KMERLQueryModel`] is an [`ECGTextDualEncoder`] (lead-aware ViT ECG tower, any transformers text tower, projections
into a joint space, CLIP loss) with:

* the **cardiac query network** ([`KMERLCardiacQueryNetwork`]): the text tower's pooled embeddings of entity names
  are the queries of `query_num_layers` pre-norm transformer decoder layers (self-attention among the queries,
  cross-attention to the ECG tokens, feed-forward); one linear classifier, shared by every query, scores each query
  against the ECG. Because the classifier is shared, any text works as a query: the pretraining entities (trained
  with BCE against each report's multi-hot entity labels) or the class names of a downstream task (zero-shot
  classification, [`KMERLQueryModel.get_query_logits`]);
* **dynamic lead masking and lead-independent segment masking** in training mode ([`masked_token_index`]): each ECG
  keeps `num_leads - k` of its recorded leads (`k` drawn from `min_masked_leads..max_masked_leads`) and, of each kept
  lead, the same number of randomly chosen patches; only these tokens enter the ECG tower.

The entity vocabulary is part of the checkpoint: its names (and hierarchy) in the configuration, its token ids in
the buffers `entity_input_ids` / `entity_attention_mask`. The entity queries are recomputed by the text tower at
every forward pass while it trains, and computed once and cached while it is frozen whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput, logging

from .configuration_kmerl import KMERLQueryModelConfig
from .modeling_ecg_contrastive import tower_options
from .modeling_ecg_encoder import ECGEncoderModel, ECGEncoderOutput, recorded_patches
from .modeling_ecg_text import ECGTextDualEncoder

logger = logging.get_logger(__name__)


@dataclass
class KMERLQueryOutput(ModelOutput):
    """
    Output of [`KMERLQueryModel`].

    Args:
        loss (`torch.FloatTensor` of shape (), *optional*, returned when `return_loss=True`):
            `contrastive_loss + query_loss_weight * query_loss` (the query term when `entity_labels` are given; the
            UMA term too when `unimodal_alignment` is enabled).
        contrastive_loss (`torch.FloatTensor` of shape (), *optional*): ECG–report CLIP loss.
        query_loss (`torch.FloatTensor` of shape (), *optional*):
            BCE of the query network's entity logits against `entity_labels` (`L_CQ`).
        unimodal_alignment_loss (`torch.FloatTensor` of shape (), *optional*): MERL's UMA loss, when enabled.
        entity_logits (`torch.FloatTensor` of shape (batch, num_entities), *optional*):
            Query-network logits of each ECG for each entity of the vocabulary (`None` without a vocabulary).
        logits_per_ecg (`torch.FloatTensor` of shape (batch, batch)): scaled ECG–report cosine similarities.
        logits_per_text (`torch.FloatTensor` of shape (batch, batch)): transpose of `logits_per_ecg`.
        ecg_embeds (`torch.FloatTensor` of shape (batch, projection_dim)): L2-normalised ECG embeddings.
        text_embeds (`torch.FloatTensor` of shape (batch, projection_dim)): L2-normalised report embeddings.
        ecg_model_output (`ECGEncoderOutput`): output of the ECG tower (in training, over the kept tokens only).
        text_model_output (`ModelOutput`): output of the text tower (`None` with `text_pooler_output`).
    """

    loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    query_loss: torch.FloatTensor | None = None
    unimodal_alignment_loss: torch.FloatTensor | None = None
    entity_logits: torch.FloatTensor | None = None
    logits_per_ecg: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    ecg_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    ecg_model_output: ECGEncoderOutput | None = None
    text_model_output: ModelOutput | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(
            self[k] if not k.endswith("_model_output") else getattr(self, k).to_tuple() for k in self.keys()
        )


class KMERLQueryAttention(nn.Module):
    """Multi-head attention of queries over a context (the queries themselves for self-attention), with a key
    padding mask, through `scaled_dot_product_attention`."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        return states.view(*states.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, hidden_states: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`hidden_states` (batch, queries, hidden) attend to `context` (batch, keys, hidden); `key_mask`
        (batch, keys) is True for keys that may be attended to."""
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        attended = F.scaled_dot_product_attention(
            self._heads(self.q_proj(hidden_states)), self._heads(self.k_proj(context)),
            self._heads(self.v_proj(context)), attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(attended.transpose(1, 2).flatten(2))


class KMERLQueryDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm transformer decoder layer: query self-attention, cross-attention to the ECG tokens, feed-forward."""

    def __init__(self, config: KMERLQueryModelConfig) -> None:
        super().__init__()
        width = config.query_hidden_size
        self.self_attention_norm = nn.LayerNorm(width)
        self.self_attention = KMERLQueryAttention(width, config.query_num_heads, config.query_attention_dropout)
        self.cross_attention_norm = nn.LayerNorm(width)
        self.cross_attention = KMERLQueryAttention(width, config.query_num_heads, config.query_attention_dropout)
        self.mlp_norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, int(width * config.query_mlp_ratio))
        self.fc2 = nn.Linear(int(width * config.query_mlp_ratio), width)
        self.dropout = nn.Dropout(config.query_dropout)

    def forward(self, queries: torch.Tensor, ecg_tokens: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        """`queries` (batch or 1, num_queries, width) read `ecg_tokens` (batch, tokens, width). Queries shared by
        every ECG (batch 1, the first layer's) attend to each other once, then go on per ECG."""
        normed = self.self_attention_norm(queries)
        queries = queries + self.dropout(self.self_attention(normed, normed))
        queries = queries.expand(ecg_tokens.shape[0], -1, -1)
        queries = queries + self.dropout(self.cross_attention(self.cross_attention_norm(queries), ecg_tokens,
                                                              token_mask))
        return queries + self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(self.mlp_norm(queries))))))


class KMERLCardiacQueryNetwork(nn.Module):
    """K-MERL's cardiac query network: queries (text-tower embeddings of entity or class names) read the ECG tokens
    through decoder layers; one linear classifier shared by every query gives one logit per (ECG, query)."""

    def __init__(self, config: KMERLQueryModelConfig) -> None:
        super().__init__()
        width = config.query_hidden_size
        self.query_projection = nn.Linear(config.text_config.hidden_size, width)
        self.ecg_projection = nn.Linear(config.ecg_config.hidden_size, width)
        self.layers = nn.ModuleList([KMERLQueryDecoderLayer(config) for _ in range(config.query_num_layers)])
        self.layernorm = nn.LayerNorm(width)
        self.classifier = nn.Linear(width, 1)

    def forward(
        self, query_embeds: torch.Tensor, ecg_tokens: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (batch, num_queries) of `query_embeds` (num_queries, text hidden) against `ecg_tokens`
        (batch, tokens, ECG hidden), of which `token_mask` (batch, tokens) marks the real ones."""
        context = self.ecg_projection(ecg_tokens)
        queries = self.query_projection(query_embeds.to(context.dtype)).unsqueeze(0)  # the same for every ECG
        if token_mask is not None and not torch.compiler.is_compiling() and bool(token_mask.all()):
            token_mask = None  # every key attended: SDPA's unmasked kernel
        for layer in self.layers:
            queries = layer(queries, context, token_mask)
        return self.classifier(self.layernorm(queries)).squeeze(-1)


def masked_token_index(
    lead_mask: torch.Tensor,
    num_patches: int,
    min_masked_leads: int,
    max_masked_leads: int,
    segment_masking_ratio: float,
    patch_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """K-MERL's dynamic lead masking and lead-independent segment masking, as the tokens to keep.

    Each ECG masks `k` leads (`k` uniform in `min_masked_leads..max_masked_leads`): it keeps `num_leads - k` of its
    recorded leads (`lead_mask`, (batch, num_leads) bool), all of them when it has fewer, chosen at random. Of each
    kept lead it keeps `num_patches - round(segment_masking_ratio * num_patches)` patches chosen at random (the same
    number for every lead; patches with a recorded sample, `patch_mask` (batch, num_patches), first).

    Returns:
        (batch, kept_leads * kept_patches) long: lead-major grid indices `lead * num_patches + patch` of the kept
        tokens (leads in ascending order, patches in time order), `-1` where an ECG keeps fewer leads than the most
        of the batch. Pass it as the lead-aware ViT's `token_index`.
    """
    batch_size, num_leads = lead_mask.shape
    device = lead_mask.device
    masked = torch.randint(min_masked_leads, max_masked_leads + 1, (batch_size,), generator=generator,
                           device=device)
    keep = torch.minimum(num_leads - masked, lead_mask.sum(dim=1)).clamp(min=1)
    # random order of the recorded leads (absent leads last), then the first `keep` of each ECG
    scores = torch.rand(batch_size, num_leads, generator=generator, device=device) + lead_mask.float()
    order = scores.argsort(dim=1, descending=True)
    max_keep = int(keep.max())
    kept_leads = order[:, :max_keep]
    lead_kept = torch.arange(max_keep, device=device)[None, :] < keep[:, None]  # (batch, max_keep)
    kept_leads = torch.where(lead_kept, kept_leads, num_leads).sort(dim=1).values  # ascending, padding last
    lead_kept = kept_leads < num_leads

    num_kept_patches = max(1, num_patches - round(segment_masking_ratio * num_patches))
    patch_scores = torch.rand(batch_size, max_keep, num_patches, generator=generator, device=device)
    if patch_mask is not None:
        patch_scores = patch_scores + patch_mask[:, None, :].float()
    kept_patches = patch_scores.topk(num_kept_patches, dim=2).indices.sort(dim=2).values
    index = kept_leads.clamp(max=num_leads - 1)[:, :, None] * num_patches + kept_patches
    index = torch.where(lead_kept[:, :, None], index, -1)
    return index.flatten(1)


class KMERLQueryModel(ECGTextDualEncoder):
    """K-MERL: ECG–report contrastive learning with the cardiac query network and lead / segment masking (see the
    module docstring).

    Args:
        config: the model configuration.
        ecg_model: an existing lead-aware ViT tower to use instead of building one from `config.ecg_config`.
        text_model: an existing text tower to use instead of building one from `config.text_config`.
    """

    config_class = KMERLQueryModelConfig
    config: KMERLQueryModelConfig
    base_model_prefix = "kmerl"
    _no_split_modules = ["ECGViTLayer", "KMERLQueryDecoderLayer"]

    def __init__(
        self,
        config: KMERLQueryModelConfig,
        ecg_model: ECGEncoderModel | None = None,
        text_model: PreTrainedModel | None = None,
    ) -> None:
        super().__init__(config, ecg_model=ecg_model, text_model=text_model)
        self.query_network = KMERLCardiacQueryNetwork(config)
        shape = (len(config.entity_names), config.entity_max_length)
        self.register_buffer("entity_input_ids", torch.zeros(shape, dtype=torch.long))
        self.register_buffer("entity_attention_mask", torch.zeros(shape, dtype=torch.long))
        self._entity_query_cache: torch.Tensor | None = None
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The contrastive family's initialisation, plus the query network's LayerNorms (weight 1, bias 0) and
        unset entity token ids (all padding, until `set_entity_vocabulary`)."""
        if isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)
        if isinstance(module, KMERLQueryModel) and hasattr(module, "entity_input_ids"):  # set after the towers
            init.zeros_(module.entity_input_ids)
            init.zeros_(module.entity_attention_mask)

    # ------------------------------------------------------------------------------------------ entity queries
    def set_entity_vocabulary(
        self, entity_names: Sequence[str], tokenizer: Any, entity_hierarchy: dict[str, list[str]] | None = None
    ) -> None:
        """Make `entity_names` the query network's pretraining entities: names (and `entity_hierarchy`) go to the
        configuration, their token ids (by `tokenizer`, at most `config.entity_max_length` tokens) to the buffers
        `entity_input_ids` / `entity_attention_mask`, saved with the weights."""
        names = list(entity_names)
        if len(set(names)) != len(names):
            raise ValueError("entity names must not repeat.")
        tokens = tokenizer(names, padding="max_length", truncation=True, max_length=self.config.entity_max_length,
                           return_tensors="pt") if names else None
        device = self.entity_input_ids.device
        shape = (len(names), self.config.entity_max_length)
        self.entity_input_ids = tokens["input_ids"].to(device) if tokens is not None else torch.zeros(
            shape, dtype=torch.long, device=device)
        self.entity_attention_mask = tokens["attention_mask"].to(device) if tokens is not None else torch.zeros(
            shape, dtype=torch.long, device=device)
        self.config.entity_names = names
        self.config.entity_hierarchy = {k: list(v) for k, v in (entity_hierarchy or {}).items()}
        self._entity_query_cache = None

    def encode_queries(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The text tower's pooled output (num_queries, text hidden) of tokenised query texts (entity or class
        names): the queries of the cardiac query network."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.encode_partner("text", inputs)[0]

    def entity_query_embeds(self) -> torch.Tensor:
        """The queries of the pretraining entities (num_entities, text hidden): recomputed while the text tower
        trains, computed once and cached while it is frozen whole."""
        if not self.config.entity_names:
            raise ValueError("this K-MERL model has no entity vocabulary: call set_entity_vocabulary first.")
        tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()
        if not tracing and not bool(self.entity_attention_mask.any(dim=1).all()):
            logger.warning_once(
                "The entity token ids of this K-MERL model are not set (a model built from a configuration alone): "
                "every entity query reads padding. Call set_entity_vocabulary(names, tokenizer) before training."
            )
        if not self.text_tower_frozen:
            return self.encode_queries(self.entity_input_ids, self.entity_attention_mask)
        cache = self._entity_query_cache
        if cache is None or cache.device != self.entity_input_ids.device:
            with torch.no_grad():
                cache = self.encode_queries(self.entity_input_ids, self.entity_attention_mask)
            self._entity_query_cache = cache
        return cache

    def train(self, mode: bool = True) -> KMERLQueryModel:
        """Set train/eval mode (locked parts stay locked) and drop the cached entity queries (the text tower's
        weights may have been replaced since they were computed)."""
        self._entity_query_cache = None
        return super().train(mode)

    # ------------------------------------------------------------------------------------------------- masking
    def masked_token_index(
        self, input_values: torch.Tensor, lead_mask: torch.Tensor | None, time_mask: torch.Tensor | None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The tokens a training step keeps after dynamic lead masking and segment masking ([`masked_token_index`]
        with this configuration's settings), for the ECG tower's `token_index`."""
        batch_size, num_leads, length = input_values.shape
        num_patches = length // self.config.ecg_config.patch_size
        if lead_mask is None:
            lead_mask = torch.ones(batch_size, num_leads, dtype=torch.bool, device=input_values.device)
        patch_mask = None if time_mask is None else recorded_patches(time_mask, num_patches)
        return masked_token_index(
            lead_mask.bool(), num_patches, self.config.min_masked_leads, self.config.max_masked_leads,
            self.config.segment_masking_ratio, patch_mask=patch_mask, generator=generator,
        )

    # ------------------------------------------------------------------------------------------------- scoring
    def get_query_logits(
        self,
        input_values: torch.Tensor,
        lead_mask: torch.Tensor | None = None,
        time_mask: torch.Tensor | None = None,
        query_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cardiac-query-network logits (batch, num_queries) of each ECG for each query: zero-shot classification
        with any class names (their `encode_queries`) as `query_embeds`, or the pretraining entities (`None`).
        The sigmoid of a logit is the query network's probability. Every recorded lead is used (no masking)."""
        if query_embeds is None:
            query_embeds = self.entity_query_embeds()
        ecg_outputs = self.encode_ecg(input_values, lead_mask, time_mask)
        return self.query_network(query_embeds, ecg_outputs.last_hidden_state, ecg_outputs.token_mask)

    def forward(
        self,
        input_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        time_mask: torch.Tensor | None = None,
        entity_labels: torch.Tensor | None = None,
        return_loss: bool = True,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        text_pooler_output: torch.Tensor | None = None,
    ) -> KMERLQueryOutput | tuple:
        """
        Args:
            input_values (`torch.FloatTensor` of shape (batch, num_leads, time)): ECGs.
            input_ids (`torch.LongTensor` of shape (batch, tokens)): tokenised reports, row `i` paired with ECG `i`.
            attention_mask (`torch.LongTensor` of shape (batch, tokens), *optional*): 1 for real tokens.
            token_type_ids (`torch.LongTensor` of shape (batch, tokens), *optional*): segment ids.
            lead_mask (`torch.BoolTensor` of shape (batch, num_leads), *optional*): True for recorded leads; any
                subset of 1 to 12 leads works. In training mode lead and segment masking act within it.
            time_mask (`torch.LongTensor` of shape (batch, time), *optional*): 1 for recorded samples.
            entity_labels (`torch.FloatTensor` of shape (batch, num_entities), *optional*): multi-hot labels of the
                entity vocabulary (`config.entity_names`) mined from each report; gives `query_loss`.
            return_loss (`bool`, defaults to `True`): compute the losses.
            output_hidden_states / output_attentions (`bool`, *optional*): also return the towers' hidden states /
                the text tower's attentions.
            return_dict (`bool`, *optional*): return a [`KMERLQueryOutput`] instead of a tuple.
            text_pooler_output (`torch.FloatTensor` of shape (batch, text hidden), *optional*): precomputed pooled
                report features in place of `input_ids` (a text tower frozen whole).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (input_ids is None) == (text_pooler_output is None):
            raise ValueError("Pass exactly one of input_ids (reports) and text_pooler_output (precomputed).")
        ecg_tower_kwargs = tower_options(output_hidden_states)
        if self.training and self.config.lead_masking:
            ecg_tower_kwargs["token_index"] = self.masked_token_index(input_values, lead_mask, time_mask)
        text_inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        pair = self.forward_pair(input_values, text_inputs, lead_mask, time_mask, return_loss, output_hidden_states,
                                 output_attentions, partner_pooled=text_pooler_output,
                                 ecg_tower_kwargs=ecg_tower_kwargs)
        entity_logits = query_loss = None
        if self.config.entity_names:
            ecg_outputs = pair.ecg_model_output
            entity_logits = self.query_network(self.entity_query_embeds(), ecg_outputs.last_hidden_state,
                                               ecg_outputs.token_mask)
        loss = pair.loss
        if return_loss and entity_labels is not None:
            if entity_logits is None:
                raise ValueError("entity_labels were given but the model has no entity vocabulary.")
            if entity_labels.shape != entity_logits.shape:
                raise ValueError(f"entity_labels must have shape {tuple(entity_logits.shape)} (batch, entities); "
                                 f"got {tuple(entity_labels.shape)}.")
            query_loss = F.binary_cross_entropy_with_logits(entity_logits.float(), entity_labels.float())
            loss = loss + self.config.query_loss_weight * query_loss
        output = KMERLQueryOutput(
            loss=loss,
            contrastive_loss=pair.contrastive_loss,
            query_loss=query_loss,
            unimodal_alignment_loss=pair.unimodal_alignment_loss,
            entity_logits=entity_logits,
            logits_per_ecg=pair.logits_per_ecg,
            logits_per_text=pair.logits_per_ecg.t(),
            ecg_embeds=pair.ecg_embeds,
            text_embeds=pair.partner_embeds,
            ecg_model_output=pair.ecg_model_output,
            text_model_output=pair.partner_model_output,
        )
        return output if return_dict else output.to_tuple()


KMERLQueryModel.register_for_auto_class("AutoModel")

__all__ = ["KMERLQueryModel", "KMERLQueryOutput", "KMERLCardiacQueryNetwork", "masked_token_index"]
