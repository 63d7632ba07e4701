"""sEHR–ECG–Text tri-modal contrastive model (Lalam et al., Section 3.2; after MMV, Alayrac et al. 2020).

Three towers on the ECG contrastive core ([`ECGContrastiveModel`], `modeling_ecg_contrastive`): the ECG encoder,
sEHR-BERT ([`SEHRBertModel`]) and a text encoder (any transformers model; GatorTron in the paper). Two joint spaces:

* fine, Ω_es: `ecg_projection` (P_e→es) and `ehr_projection` (P_s→es); ECG and sEHR are contrasted here (L_es);
* coarse, Ω_set: `text_projection` (P_t→set) maps the text there, and `fine_to_coarse_projection` (P_es→set) maps
  fine-space embeddings there (the ECG's, and the sEHR's with `space="coarse"`); ECG and text are contrasted
  here (L_et).

`loss = ecg_ehr_loss_weight · L_es + ecg_text_loss_weight · L_et`, both ConVIRT at τ = 1 / exp(logit_scale)
(λ_es, λ_et). P_es→set takes the fine-space features before L2 normalisation; every embedding is L2-normalised
before it is compared; the logits of each pair are built once and the loss takes them. Each partner tower has its own
locking (`freeze_ehr_layers`, `freeze_text_layers`).

Zero-shot text→ECG retrieval happens in the coarse space: `get_text_features` against
`get_ecg_features(..., space="coarse")` (the default, so that evaluation code pairing `get_ecg_features` with
`get_text_features` compares like with like), by cosine similarity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_ecg_encoder import ECGEncoderConfig
from .configuration_sehr_bert import SEHRBertConfig
from .configuration_sehr_ecg_text import SEHRECGTextConfig
from .contrastive_losses import contrastive_logits, local_logits, paired_contrastive_loss
from .modeling_ecg_contrastive import (
    ECGContrastiveModel,
    build_projection,
    ehr_tower_inputs,
    return_dict_of,
    tower_options,
)
from .modeling_ecg_encoder import ECGEncoderModel, ECGEncoderOutput
from .modeling_sehr_bert import SEHRBertModel

EMBEDDING_SPACES: tuple[str, ...] = ("fine", "coarse")


@dataclass
class SEHRECGTextOutput(ModelOutput):
    """
    Output of [`SEHRECGTextModel`].

    Args:
        loss (`torch.FloatTensor` of shape (), *optional*, returned when `return_loss=True`):
            `ecg_ehr_loss_weight * ecg_ehr_loss + ecg_text_loss_weight * ecg_text_loss`.
        ecg_ehr_loss (`torch.FloatTensor` of shape (), *optional*): L_es, ECG–sEHR ConVIRT loss in the fine space.
        ecg_text_loss (`torch.FloatTensor` of shape (), *optional*): L_et, ECG–text ConVIRT loss in the coarse space.
        logits_per_ecg_ehr (`torch.FloatTensor` of shape (batch, batch)):
            `logit_scale.exp()` times the cosine similarity of each ECG (rows) with each code sequence (columns), Ω_es.
        logits_per_ecg_text (`torch.FloatTensor` of shape (batch, batch)):
            The same for ECGs (rows) against texts (columns), Ω_set.
        ecg_embeds (`torch.FloatTensor` of shape (batch, projection_dim)): L2-normalised ECG embeddings in Ω_es.
        ehr_embeds (`torch.FloatTensor` of shape (batch, projection_dim)): L2-normalised sEHR embeddings in Ω_es.
        ecg_coarse_embeds (`torch.FloatTensor` of shape (batch, coarse_projection_dim)):
            L2-normalised ECG embeddings in Ω_set (through P_es→set).
        text_embeds (`torch.FloatTensor` of shape (batch, coarse_projection_dim)): L2-normalised text embeddings in
            Ω_set.
        ecg_model_output (`ECGEncoderOutput`), ehr_model_output (`ModelOutput`), text_model_output (`ModelOutput`):
            Outputs of the three towers.
    """

    loss: torch.FloatTensor | None = None
    ecg_ehr_loss: torch.FloatTensor | None = None
    ecg_text_loss: torch.FloatTensor | None = None
    logits_per_ecg_ehr: torch.FloatTensor | None = None
    logits_per_ecg_text: torch.FloatTensor | None = None
    ecg_embeds: torch.FloatTensor | None = None
    ehr_embeds: torch.FloatTensor | None = None
    ecg_coarse_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    ecg_model_output: ECGEncoderOutput | None = None
    ehr_model_output: ModelOutput | None = None
    text_model_output: ModelOutput | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(
            self[k] if not k.endswith("_model_output") else getattr(self, k).to_tuple() for k in self.keys()
        )


class SEHRECGTextModel(ECGContrastiveModel):
    """sEHR–ECG–Text tri-modal contrastive model (MMV-style fine and coarse joint spaces).

    Args:
        config: the model configuration.
        ecg_model / ehr_model / text_model: existing towers to use instead of building them from the sub-configs.
    """

    config_class = SEHRECGTextConfig
    config: SEHRECGTextConfig
    base_model_prefix = "sehr_ecg_text"
    input_modalities = ("ecg", "ehr", "text")
    tower_classes: ClassVar[dict[str, type[PreTrainedModel]]] = {"ehr": SEHRBertModel}

    def __init__(
        self,
        config: SEHRECGTextConfig,
        ecg_model: ECGEncoderModel | None = None,
        ehr_model: SEHRBertModel | None = None,
        text_model: PreTrainedModel | None = None,
    ) -> None:
        super().__init__(config, ecg_model=ecg_model, partner_models={"ehr": ehr_model, "text": text_model})
        coarse = config.coarse_projection_dim
        self.ecg_projection = build_projection(config.ecg_config.hidden_size, config, "ecg")
        self.ehr_projection = build_projection(config.ehr_config.hidden_size, config, "ehr")
        self.text_projection = build_projection(config.text_config.hidden_size, config, "text", out_features=coarse)
        self.fine_to_coarse_projection = build_projection(config.projection_dim, config, "fine", out_features=coarse)
        self.init_logit_scale()
        self.post_init()

    # ------------------------------------------------------------------------------------------------ features
    def _to_space(self, fine_features: torch.Tensor, space: str) -> torch.Tensor:
        return fine_features if space == "fine" else self.fine_to_coarse_projection(fine_features)

    def get_ecg_features(
        self,
        input_values: torch.Tensor,
        lead_mask: torch.Tensor | None = None,
        time_mask: torch.Tensor | None = None,
        space: str = "coarse",
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ECGEncoderOutput | tuple:
        """The ECG tower's output with `pooler_output` replaced by the projected ECG embedding, *not*
        L2-normalised: in the coarse space Ω_set (default; comparable with `get_text_features`), shape
        (batch, coarse_projection_dim), or in the fine space Ω_es (`space="fine"`; comparable with
        `get_ehr_features`), shape (batch, projection_dim).

        Args:
            input_values: ECGs, (batch, num_leads, time).
            lead_mask: (batch, num_leads) bool, True for recorded leads.
            time_mask: (batch, time), 1 for recorded samples, 0 for padding.
            space: `"coarse"` or `"fine"`.
            output_hidden_states: also return the tower's hidden states.
            return_dict: return a `ModelOutput` (default) or a tuple.
        """
        _check_space(space)
        outputs = self.encode_ecg(input_values, lead_mask, time_mask, output_hidden_states=output_hidden_states)
        outputs.pooler_output = self._to_space(self.ecg_projection(outputs.pooler_output), space)
        return outputs if return_dict_of(self.config, return_dict) else outputs.to_tuple()

    def get_ehr_features(
        self,
        ehr_input_ids: torch.Tensor,
        ehr_attention_mask: torch.Tensor | None = None,
        ehr_time_ids: torch.Tensor | None = None,
        ehr_type_ids: torch.Tensor | None = None,
        space: str = "fine",
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> ModelOutput | tuple:
        """sEHR-BERT's output with `pooler_output` replaced by the projected sEHR embedding, *not* L2-normalised, in
        the fine space Ω_es (default) or, through P_es→set, the coarse space Ω_set.

        Args:
            ehr_input_ids / ehr_attention_mask / ehr_time_ids / ehr_type_ids: `MedicalCodeTokenizer` outputs,
                (batch, codes).
            space: `"fine"` or `"coarse"`.
            output_hidden_states / output_attentions: also return sEHR-BERT's hidden states / attentions.
            return_dict: return a `ModelOutput` (default) or a tuple.
        """
        _check_space(space)
        inputs = ehr_tower_inputs(ehr_input_ids, ehr_attention_mask, ehr_time_ids, ehr_type_ids)
        outputs = self.get_partner_features("ehr", inputs, output_hidden_states, output_attentions, return_dict=True)
        outputs.pooler_output = self._to_space(outputs.pooler_output, space)
        return outputs if return_dict_of(self.config, return_dict) else outputs.to_tuple()

    def get_input_embeddings(self) -> torch.nn.Module:
        """The token embeddings of the text tower (the tower that reads `input_ids`)."""
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.text_model.set_input_embeddings(value)

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> ModelOutput | tuple:
        """The text tower's output with `pooler_output` replaced by the projected text embedding in the coarse
        space Ω_set, shape (batch, coarse_projection_dim), *not* L2-normalised.

        Args:
            input_ids: token ids, (batch, tokens).
            attention_mask: (batch, tokens), 1 for real tokens and 0 for padding.
            token_type_ids: (batch, tokens), optional segment ids.
            output_hidden_states / output_attentions: also return the text tower's hidden states / attentions.
            return_dict: return a `ModelOutput` (default) or a tuple.
        """
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.get_partner_features("text", inputs, output_hidden_states, output_attentions, return_dict)

    # ------------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        input_values: torch.Tensor,
        ehr_input_ids: torch.Tensor,
        input_ids: torch.Tensor,
        ehr_attention_mask: torch.Tensor | None = None,
        ehr_time_ids: torch.Tensor | None = None,
        ehr_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        time_mask: torch.Tensor | None = None,
        return_loss: bool = True,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> SEHRECGTextOutput | tuple:
        """
        Args:
            input_values (`torch.FloatTensor` of shape (batch, num_leads, time)): ECGs.
            ehr_input_ids (`torch.LongTensor` of shape (batch, codes)): code sequences paired with the ECGs.
            input_ids (`torch.LongTensor` of shape (batch, tokens)): tokenised texts paired with the ECGs.
            ehr_attention_mask / ehr_time_ids / ehr_type_ids (`torch.LongTensor` of shape (batch, codes), *optional*):
                the rest of the `MedicalCodeTokenizer` output.
            attention_mask (`torch.LongTensor` of shape (batch, tokens), *optional*): 1 for real text tokens.
            token_type_ids (`torch.LongTensor` of shape (batch, tokens), *optional*): text segment ids.
            lead_mask (`torch.BoolTensor` of shape (batch, num_leads), *optional*): True for recorded leads.
            time_mask (`torch.LongTensor` of shape (batch, time), *optional*): 1 for recorded ECG samples.
            return_loss (`bool`, defaults to `True`): compute L_es and L_et.
            output_hidden_states / output_attentions (`bool`, *optional*): also return the towers' hidden states /
                attentions (sEHR-BERT and text tower) in their `*_model_output`.
            return_dict (`bool`, *optional*): return a [`SEHRECGTextOutput`] instead of a tuple.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        config = self.config
        tower_kwargs = tower_options(output_hidden_states, output_attentions)
        ecg_outputs = self.encode_ecg(input_values, lead_mask, time_mask, **tower_options(output_hidden_states))
        ehr_pooled, ehr_outputs = self.encode_partner(
            "ehr", ehr_tower_inputs(ehr_input_ids, ehr_attention_mask, ehr_time_ids, ehr_type_ids), **tower_kwargs
        )
        text_pooled, text_outputs = self.encode_partner(
            "text", {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids},
            **tower_kwargs,
        )
        ecg_fine = self.ecg_projection(ecg_outputs.pooler_output)
        ecg_embeds = F.normalize(ecg_fine, dim=-1)
        ehr_embeds = F.normalize(self.ehr_projection(ehr_pooled), dim=-1)
        ecg_coarse_embeds = F.normalize(self.fine_to_coarse_projection(ecg_fine), dim=-1)
        text_embeds = F.normalize(self.text_projection(text_pooled), dim=-1)

        logit_scale = self.scale()
        logits_ecg_ehr, logits_ehr_ecg = contrastive_logits(ecg_embeds, ehr_embeds, logit_scale)
        logits_ecg_text, logits_text_ecg = contrastive_logits(ecg_coarse_embeds, text_embeds, logit_scale)
        loss = ecg_ehr_loss = ecg_text_loss = None
        if return_loss:
            ecg_ehr_loss = paired_contrastive_loss(logits_ecg_ehr, logits_ehr_ecg, config.loss, config.lambda_es)
            ecg_text_loss = paired_contrastive_loss(logits_ecg_text, logits_text_ecg, config.loss, config.lambda_et)
            loss = config.ecg_ehr_loss_weight * ecg_ehr_loss + config.ecg_text_loss_weight * ecg_text_loss

        output = SEHRECGTextOutput(
            loss=loss,
            ecg_ehr_loss=ecg_ehr_loss,
            ecg_text_loss=ecg_text_loss,
            logits_per_ecg_ehr=local_logits(logits_ecg_ehr),
            logits_per_ecg_text=local_logits(logits_ecg_text),
            ecg_embeds=ecg_embeds,
            ehr_embeds=ehr_embeds,
            ecg_coarse_embeds=ecg_coarse_embeds,
            text_embeds=text_embeds,
            ecg_model_output=ecg_outputs,
            ehr_model_output=ehr_outputs,
            text_model_output=text_outputs,
        )
        return output if return_dict else output.to_tuple()

    # ------------------------------------------------------------------------------------------------ building
    @classmethod
    def from_towers_pretrained(
        cls,
        ecg_model_name_or_path: str | os.PathLike | ECGEncoderConfig | ECGEncoderModel,
        ehr_model_name_or_path: str | os.PathLike | SEHRBertConfig | PreTrainedModel,
        text_model_name_or_path: str | os.PathLike | PreTrainedConfig | PreTrainedModel,
        ecg_model_kwargs: dict[str, Any] | None = None,
        ehr_model_kwargs: dict[str, Any] | None = None,
        text_model_kwargs: dict[str, Any] | None = None,
        **config_kwargs: Any,
    ) -> SEHRECGTextModel:
        """Build the tri-modal model from three towers; projections and `logit_scale` start fresh.

        Args:
            ecg_model_name_or_path: a saved ECG encoder, an `ECGEncoderModel`, an `ECGEncoderConfig` or a preset name.
            ehr_model_name_or_path: a saved sEHR-BERT (an MLM checkpoint works), an `SEHRBertModel` /
                `SEHRBertForMaskedLM`, or an `SEHRBertConfig` (random weights).
            text_model_name_or_path: a pretrained text encoder (Hub id or folder), a `PreTrainedModel`, or a
                `PreTrainedConfig` (random weights).
            ecg_model_kwargs / ehr_model_kwargs / text_model_kwargs: extra arguments of the towers' `from_pretrained`.
            config_kwargs: fields of [`SEHRECGTextConfig`].
        """
        ecg_model = cls.load_ecg_tower(ecg_model_name_or_path, **(ecg_model_kwargs or {}))
        ehr_model, ehr_source = cls.load_ehr_tower(ehr_model_name_or_path, **(ehr_model_kwargs or {}))
        text_model, text_source = cls.load_text_tower(text_model_name_or_path, **(text_model_kwargs or {}))
        config_kwargs.setdefault("ehr_model_name_or_path", ehr_source)
        config_kwargs.setdefault("text_model_name_or_path", text_source)
        config = SEHRECGTextConfig.from_tower_configs(ecg_model.config, ehr_model.config, text_model.config,
                                                      **config_kwargs)
        return cls(config, ecg_model=ecg_model, ehr_model=ehr_model, text_model=text_model)


def _check_space(space: str) -> None:
    if space not in EMBEDDING_SPACES:
        raise ValueError(f"space must be one of {EMBEDDING_SPACES}, got {space!r}")


SEHRECGTextModel.register_for_auto_class("AutoModel")

__all__ = ["EMBEDDING_SPACES", "SEHRECGTextOutput", "SEHRECGTextModel"]
