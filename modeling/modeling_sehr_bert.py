"""sEHR-BERT: a BERT encoder over timelines of medical codes (Lalam et al., Section 3.1).

Each token's input is the sum of a code embedding, a weekly time embedding (all codes of one week share it) and a
code-type embedding (special, diagnosis, symptom, procedure, medication), plus a learned position embedding when
``config.use_position_embeddings``; then LayerNorm and dropout, as in BERT. The encoder, the `[CLS]` pooler and
the masked-language-model head are `transformers`' own BERT modules. Inputs come from ``MedicalCodeTokenizer``:
``input_ids``, ``attention_mask``, ``time_ids``, ``type_ids``.

Pre-training is masked language modelling (15 % of codes, 80/10/10 replacement, done by the data collator):
[`SEHRBertForMaskedLM`] returns the mean cross-entropy over the positions whose ``labels`` are not -100. The MLM
decoder shares its weight matrix with the code embeddings (``config.tie_word_embeddings``).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling, MaskedLMOutput
from transformers.models.bert.modeling_bert import (
    BertEncoder,
    BertLayer,
    BertLMPredictionHead,
    BertOnlyMLMHead,
    BertPooler,
    BertSelfAttention,
)
from transformers.utils.output_capturing import capture_outputs

from .configuration_sehr_bert import SEHRBertConfig


class SEHRBertEmbeddings(nn.Module):
    """Code + time + code-type (+ position) embeddings, LayerNorm, dropout."""

    def __init__(self, config: SEHRBertConfig) -> None:
        super().__init__()
        self.code_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.time_embeddings = nn.Embedding(config.num_time_buckets, config.hidden_size)
        self.type_embeddings = nn.Embedding(config.num_code_types, config.hidden_size)
        self.position_embeddings = (
            nn.Embedding(config.max_position_embeddings, config.hidden_size) if config.use_position_embeddings else None
        )
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        time_ids: torch.Tensor,
        type_ids: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        embeddings = self.code_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        embeddings = embeddings + self.time_embeddings(time_ids) + self.type_embeddings(type_ids)
        if self.position_embeddings is not None:
            positions = torch.arange(embeddings.shape[1], device=embeddings.device)
            embeddings = embeddings + self.position_embeddings(positions)[None]
        return self.dropout(self.LayerNorm(embeddings))


class SEHRBertPreTrainedModel(PreTrainedModel):
    """Base class: config class, prefixes, attention back-ends and the one weight initialisation."""

    config_class = SEHRBertConfig
    config: SEHRBertConfig
    base_model_prefix = "sehr_bert"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SEHRBertEmbeddings", "BertLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": BertLayer, "attentions": BertSelfAttention}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialise every parameter: linear layers and embeddings normal(0, `initializer_range`) with zero biases
        (the `[PAD]` code embedding zero), LayerNorm (1, 0), the MLM output bias 0."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            input_embeddings = self.get_input_embeddings()
            if module.weight is not getattr(input_embeddings, "weight", None):  # a tied decoder is the embedding
                init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, BertLMPredictionHead):
            init.zeros_(module.bias)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`; the checkpoint's `auto_map` names both the encoder (`AutoModel`) and
        the MLM model (`AutoModelForMaskedLM`), so either loads with `trust_remote_code=True`."""
        module = type(self).__module__.split(".")[-1]
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map.setdefault("AutoModel", f"{module}.SEHRBertModel")
        auto_map.setdefault("AutoModelForMaskedLM", f"{module}.SEHRBertForMaskedLM")
        self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _check_inputs(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        time_ids: torch.Tensor | None,
        type_ids: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        if len(shape) != 2:
            raise ValueError(f"input_ids must have shape (batch, sequence); got {tuple(shape)}.")
        if shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"Sequence length {shape[1]} exceeds max_position_embeddings={self.config.max_position_embeddings}."
            )
        if time_ids is None:
            time_ids = torch.zeros(shape, dtype=torch.long, device=device)
        if type_ids is None:
            type_ids = torch.zeros(shape, dtype=torch.long, device=device)
        for name, ids in (("time_ids", time_ids), ("type_ids", type_ids)):
            if ids.shape != shape:
                raise ValueError(f"{name} must have shape {tuple(shape)}; got {tuple(ids.shape)}.")
        if input_ids is not None and input_ids.numel() and not torch.compiler.is_compiling():
            checks = (
                ("input_ids", input_ids, self.config.vocab_size),
                ("time_ids", time_ids, self.config.num_time_buckets),
                ("type_ids", type_ids, self.config.num_code_types),
            )
            out_of_range = torch.stack([((ids < 0) | (ids >= size)).any() for _, ids, size in checks])
            if out_of_range.any().item():  # one device sync; an index error on an accelerator is far less clear
                name, ids, size = next(c for c, bad in zip(checks, out_of_range.tolist()) if bad)
                raise ValueError(f"{name} must lie in [0, {size}); got [{int(ids.min())}, {int(ids.max())}].")
        return time_ids, type_ids


class SEHRBertModel(SEHRBertPreTrainedModel):
    """sEHR-BERT encoder returning per-code states and a pooled sequence embedding (`config.pooling`)."""

    def __init__(self, config: SEHRBertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = SEHRBertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if config.pooling == "cls" and add_pooling_layer else None
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.code_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.code_embeddings = value

    @capture_outputs
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
        type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """
        Args:
            input_ids (`torch.LongTensor` of shape (batch, sequence)): Code token ids.
            attention_mask (`torch.LongTensor` of shape (batch, sequence), *optional*): 1 for codes, 0 for padding.
            time_ids (`torch.LongTensor` of shape (batch, sequence), *optional*): Week indices (0 if omitted).
            type_ids (`torch.LongTensor` of shape (batch, sequence), *optional*): Code-type indices (0 if omitted).
            inputs_embeds (`torch.FloatTensor` of shape (batch, sequence, hidden_size), *optional*): Code
                embeddings to use instead of `input_ids`.
            output_hidden_states / output_attentions (`bool`, *optional*): Also return the embeddings and each
                layer's output / each layer's attention probabilities.

        Returns:
            [`BaseModelOutputWithPooling`]: `last_hidden_state` (batch, sequence, hidden_size) and `pooler_output`
            (batch, hidden_size): masked mean over non-padding tokens (`pooling="mean"`) or the BERT pooler on
            `[CLS]` (`pooling="cls"`).
        """
        time_ids, type_ids = self._check_inputs(input_ids, inputs_embeds, time_ids, type_ids)
        embeddings = self.embeddings(input_ids, time_ids, type_ids, inputs_embeds=inputs_embeds)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=embeddings, attention_mask=attention_mask)
        hidden_states = self.encoder(embeddings, attention_mask=mask, **kwargs).last_hidden_state
        if self.pooler is not None:
            pooled = self.pooler(hidden_states)
        elif attention_mask is None:
            pooled = hidden_states.mean(dim=1)
        else:
            weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
            pooled = (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=pooled)


class SEHRBertForMaskedLM(SEHRBertPreTrainedModel):
    """sEHR-BERT with BERT's masked-language-model head; the decoder is tied to the code embeddings."""

    _keys_to_ignore_on_load_unexpected = [r"pooler"]
    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "sehr_bert.embeddings.code_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

    def __init__(self, config: SEHRBertConfig) -> None:
        super().__init__(config)
        # the MLM loss never reaches a pooler: none is built (as BERT's MLM model), and a checkpoint that has one
        # (a fine-tuned `SEHRBertModel`) loads without it
        self.sehr_bert = SEHRBertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
        type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MaskedLMOutput | tuple:
        """
        Args:
            input_ids, attention_mask, time_ids, type_ids, inputs_embeds: As in [`SEHRBertModel`].
            labels (`torch.LongTensor` of shape (batch, sequence), *optional*): Original code ids at masked
                positions, -100 elsewhere.

        Returns:
            [`MaskedLMOutput`]: `loss` (mean cross-entropy over labelled positions; with `labels`), `logits`
            (batch, sequence, vocab_size) -- or (num_labelled, vocab_size) with `labels` and
            `config.sparse_prediction` --, `hidden_states` / `attentions` when requested.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.sehr_bert(
            input_ids, attention_mask=attention_mask, time_ids=time_ids, type_ids=type_ids,
            inputs_embeds=inputs_embeds, return_dict=True, **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if labels is not None:
            labels = labels.to(hidden_states.device)
            if self.config.sparse_prediction:
                labelled = labels != -100
                hidden_states, labels = hidden_states[labelled], labels[labelled]
        logits = self.cls(hidden_states)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, self.config.vocab_size).float(), labels.reshape(-1), ignore_index=-100
            )
        result = MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return result if return_dict else result.to_tuple()


SEHRBertModel.register_for_auto_class("AutoModel")
SEHRBertForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")

__all__ = ["SEHRBertEmbeddings", "SEHRBertForMaskedLM", "SEHRBertModel", "SEHRBertPreTrainedModel"]
