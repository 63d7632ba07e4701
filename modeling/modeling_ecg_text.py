"""ECG–report dual encoder: MERL (CLIP loss + uni-modal alignment) and the ECG-Text model of Lalam et al.
(ConVIRT loss), on the machinery every cardiomm ECG contrastive model shares.

An ECG tower ([`ECGEncoderModel`]) and a text tower (any transformers text encoder) are mapped by two projection
heads into a shared space of `projection_dim` dimensions, where paired ECGs and reports are pulled together by a
contrastive loss over the batch (gathered across processes when training distributed). With
`unimodal_alignment=True`, MERL's UMA loss contrasts two dropout views of each ECG latent (the pooled ECG tower
output, before projection) with each other.

Frozen parts of the towers (`freeze_ecg`, `freeze_text_layers`) are locked: `requires_grad=False` and eval mode
(no dropout, fixed batch-norm statistics) whatever the model's mode. With a partly frozen text tower autograd
records nothing for the frozen prefix (embeddings and the first `N` layers); the later layers are trained.

The towers, projections, locking and the loss live in the contrastive core (`modeling_ecg_contrastive`,
[`ECGDualEncoderModel`]); this module names the text partner, its inputs and the output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_ecg_encoder import ECGEncoderConfig
from .configuration_ecg_text import ECGTextDualEncoderConfig
from .modeling_ecg_contrastive import ECGDualEncoderModel
from .modeling_ecg_encoder import ECGEncoderModel, ECGEncoderOutput


@dataclass
class ECGTextOutput(ModelOutput):
    """
    Output of [`ECGTextDualEncoder`].

    Args:
        loss (`torch.FloatTensor` of shape (), *optional*, returned when `return_loss=True`):
            `contrastive_loss + uma_weight * unimodal_alignment_loss` (the UMA term only when enabled).
        contrastive_loss (`torch.FloatTensor` of shape (), *optional*):
            ECG–report CLIP or ConVIRT loss (over the batch of every process when distributed).
        unimodal_alignment_loss (`torch.FloatTensor` of shape (), *optional*):
            MERL's UMA loss between two dropout views of the ECG latent; `None` when UMA is disabled.
        logits_per_ecg (`torch.FloatTensor` of shape (batch, batch)):
            `logit_scale.exp()` times the cosine similarity of each ECG (rows) with each report (columns) of the
            local batch.
        logits_per_text (`torch.FloatTensor` of shape (batch, batch)):
            Transpose of `logits_per_ecg`: reports (rows) against ECGs (columns).
        ecg_embeds (`torch.FloatTensor` of shape (batch, projection_dim)):
            L2-normalised projected ECG embeddings.
        text_embeds (`torch.FloatTensor` of shape (batch, projection_dim)):
            L2-normalised projected report embeddings.
        ecg_model_output (`ECGEncoderOutput`): Output of the ECG tower.
        text_model_output (`ModelOutput`): Output of the text tower.
    """

    loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    unimodal_alignment_loss: torch.FloatTensor | None = None
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


class ECGTextDualEncoder(ECGDualEncoderModel):
    """ECG–report contrastive dual encoder (MERL; ECG-Text of Lalam et al.).

    Args:
        config: the model configuration.
        ecg_model: an existing ECG tower to use instead of building one from `config.ecg_config`.
        text_model: an existing text tower to use instead of building one from `config.text_config`.
    """

    config_class = ECGTextDualEncoderConfig
    config: ECGTextDualEncoderConfig
    base_model_prefix = "ecg_text_dual_encoder"
    input_modalities = ("ecg", "text")

    def __init__(
        self,
        config: ECGTextDualEncoderConfig,
        ecg_model: ECGEncoderModel | None = None,
        text_model: PreTrainedModel | None = None,
    ) -> None:
        super().__init__(config, ecg_model=ecg_model, partner_model=text_model)

    @property
    def text_tower_frozen(self) -> bool:
        """Whether the whole text tower is frozen (`freeze_text_layers=-1`)."""
        return self.tower_frozen("text")

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> ModelOutput | tuple:
        """The text tower's output with `pooler_output` replaced by the projected report embedding, shape
        (batch, projection_dim), *not* L2-normalised (transformers' `get_text_features` convention).

        Args:
            input_ids: token ids, (batch, tokens).
            attention_mask: (batch, tokens), 1 for real tokens and 0 for padding.
            token_type_ids: (batch, tokens), optional segment ids.
            output_hidden_states / output_attentions: also return the text tower's hidden states / attentions.
            return_dict: return a `ModelOutput` (default) or a tuple.
        """
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.get_partner_features("text", inputs, output_hidden_states, output_attentions, return_dict)

    def forward(
        self,
        input_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        time_mask: torch.Tensor | None = None,
        return_loss: bool = True,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        text_pooler_output: torch.Tensor | None = None,
    ) -> ECGTextOutput | tuple:
        """
        Args:
            input_values (`torch.FloatTensor` of shape (batch, num_leads, time)): ECGs.
            input_ids (`torch.LongTensor` of shape (batch, tokens)): tokenised reports, row `i` paired with ECG `i`.
            attention_mask (`torch.LongTensor` of shape (batch, tokens), *optional*): 1 for real tokens.
            token_type_ids (`torch.LongTensor` of shape (batch, tokens), *optional*): segment ids.
            lead_mask (`torch.BoolTensor` of shape (batch, num_leads), *optional*): True for recorded leads.
            time_mask (`torch.LongTensor` of shape (batch, time), *optional*): 1 for recorded ECG samples, 0 for
                padding.
            return_loss (`bool`, defaults to `True`): compute the contrastive (and UMA) loss.
            output_hidden_states / output_attentions (`bool`, *optional*): also return the towers' hidden states
                (both towers) / attentions (text tower), in `ecg_model_output` / `text_model_output`.
            return_dict (`bool`, *optional*): return an [`ECGTextOutput`] instead of a tuple.
            text_pooler_output (`torch.FloatTensor` of shape (batch, text hidden size), *optional*): the text
                tower's pooled output (what `text_pooling` selects), precomputed, in place of `input_ids`: a text
                tower frozen whole (`freeze_text_layers=-1`) gives every report the same one at every step, so it
                can be computed once (cardiomm's text-feature cache). The text tower is then not run and
                `text_model_output` is `None`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (input_ids is None) == (text_pooler_output is None):
            raise ValueError("Pass exactly one of input_ids (reports) and text_pooler_output (precomputed).")
        text_inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        pair = self.forward_pair(input_values, text_inputs, lead_mask, time_mask, return_loss,
                                 output_hidden_states, output_attentions, partner_pooled=text_pooler_output)
        output = ECGTextOutput(
            loss=pair.loss,
            contrastive_loss=pair.contrastive_loss,
            unimodal_alignment_loss=pair.unimodal_alignment_loss,
            logits_per_ecg=pair.logits_per_ecg,
            logits_per_text=pair.logits_per_ecg.t(),
            ecg_embeds=pair.ecg_embeds,
            text_embeds=pair.partner_embeds,
            ecg_model_output=pair.ecg_model_output,
            text_model_output=pair.partner_model_output,
        )
        return output if return_dict else output.to_tuple()

    @classmethod
    def from_ecg_text_pretrained(
        cls,
        ecg_model_name_or_path: str | os.PathLike | ECGEncoderConfig | ECGEncoderModel,
        text_model_name_or_path: str | os.PathLike | PreTrainedConfig | PreTrainedModel,
        ecg_model_kwargs: dict[str, Any] | None = None,
        text_model_kwargs: dict[str, Any] | None = None,
        **config_kwargs: Any,
    ) -> ECGTextDualEncoder:
        """Build a dual encoder from two pretrained towers; the projections and `logit_scale` start fresh.

        Args:
            ecg_model_name_or_path: a saved ECG encoder (Hub id or folder; an `ECGEncoderForSequenceClassification`
                checkpoint works too), an `ECGEncoderModel`, or, to start from random weights, an
                `ECGEncoderConfig` or a backbone preset name (`"resnet1d_18"`, `"vit_tiny"`, ...).
            text_model_name_or_path: a pretrained text encoder (Hub id such as `"ncbi/MedCPT-Query-Encoder"`, or a
                folder), a `PreTrainedModel`, or a `PreTrainedConfig` (random weights).
            ecg_model_kwargs / text_model_kwargs: extra arguments of the towers' `from_pretrained`
                (`revision`, `local_files_only`, `dtype`, ...).
            config_kwargs: fields of [`ECGTextDualEncoderConfig`] (`projection_dim`, `loss`, ...).
        """
        ecg_model = cls.load_ecg_tower(ecg_model_name_or_path, **(ecg_model_kwargs or {}))
        text_model, text_source = cls.load_text_tower(text_model_name_or_path, **(text_model_kwargs or {}))
        config_kwargs.setdefault("text_model_name_or_path", text_source)
        # built from copies: building a composite config resets its sub-configs' attention implementation
        config = cls.config_class.from_ecg_text_configs(ecg_model.config, text_model.config, **config_kwargs)
        return cls(config, ecg_model=ecg_model, text_model=text_model)


ECGTextDualEncoder.register_for_auto_class("AutoModel")

__all__ = ["ECGTextOutput", "ECGTextDualEncoder"]
