"""ECG–sEHR dual encoder (the ECG-sEHR model of Lalam et al., Section 3.3).

The shared ECG dual encoder ([`ECGDualEncoderModel`]) with sEHR-BERT ([`SEHRBertModel`]) as partner tower: an ECG
and the medical codes of its patient within a year before and after it (`cardiomm.data.pairing`) are mapped into
one joint space Ω_es and aligned with the ConVIRT loss (λ_es = 0.5, τ = 0.1). sEHR-BERT's embeddings and first
`freeze_ehr_layers` layers are locked (no gradients, no autograd graph, eval mode), as the text tower of the
ECG–report model. The code inputs are those of `MedicalCodeTokenizer` with the `ehr_` prefix of the composite
models: `ehr_input_ids`, `ehr_attention_mask`, `ehr_time_ids`, `ehr_type_ids` (time ids relative to the ECG
acquisition, `reference_time`), as `ECGSEHRProcessor` returns them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_ecg_encoder import ECGEncoderConfig
from .configuration_ecg_sehr import ECGSEHRDualEncoderConfig
from .configuration_sehr_bert import SEHRBertConfig
from .modeling_ecg_contrastive import ECGDualEncoderModel, ehr_tower_inputs
from .modeling_ecg_encoder import ECGEncoderModel, ECGEncoderOutput
from .modeling_sehr_bert import SEHRBertModel


@dataclass
class ECGSEHROutput(ModelOutput):
    """
    Output of [`ECGSEHRDualEncoder`].

    Args:
        loss (`torch.FloatTensor` of shape (), *optional*, returned when `return_loss=True`):
            `contrastive_loss` (plus `uma_weight * unimodal_alignment_loss` when UMA is enabled).
        contrastive_loss (`torch.FloatTensor` of shape (), *optional*): ECG–sEHR ConVIRT (or CLIP) loss L_es.
        unimodal_alignment_loss (`torch.FloatTensor` of shape (), *optional*): UMA loss; `None` when disabled.
        logits_per_ecg (`torch.FloatTensor` of shape (batch, batch)):
            `logit_scale.exp()` times the cosine similarity of each ECG (rows) with each code sequence (columns).
        logits_per_ehr (`torch.FloatTensor` of shape (batch, batch)): Transpose of `logits_per_ecg`.
        ecg_embeds (`torch.FloatTensor` of shape (batch, projection_dim)): L2-normalised ECG embeddings in Ω_es.
        ehr_embeds (`torch.FloatTensor` of shape (batch, projection_dim)): L2-normalised sEHR embeddings in Ω_es.
        ecg_model_output (`ECGEncoderOutput`): Output of the ECG tower.
        ehr_model_output (`ModelOutput`): Output of sEHR-BERT.
    """

    loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    unimodal_alignment_loss: torch.FloatTensor | None = None
    logits_per_ecg: torch.FloatTensor | None = None
    logits_per_ehr: torch.FloatTensor | None = None
    ecg_embeds: torch.FloatTensor | None = None
    ehr_embeds: torch.FloatTensor | None = None
    ecg_model_output: ECGEncoderOutput | None = None
    ehr_model_output: ModelOutput | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(
            self[k] if not k.endswith("_model_output") else getattr(self, k).to_tuple() for k in self.keys()
        )


class ECGSEHRDualEncoder(ECGDualEncoderModel):
    """ECG–sEHR contrastive dual encoder.

    Args:
        config: the model configuration.
        ecg_model: an existing ECG tower to use instead of building one from `config.ecg_config`.
        ehr_model: an existing sEHR-BERT to use instead of building one from `config.ehr_config`.
    """

    config_class = ECGSEHRDualEncoderConfig
    config: ECGSEHRDualEncoderConfig
    base_model_prefix = "ecg_sehr_dual_encoder"
    input_modalities = ("ecg", "ehr")
    tower_classes: ClassVar[dict[str, type[PreTrainedModel]]] = {"ehr": SEHRBertModel}

    def __init__(
        self,
        config: ECGSEHRDualEncoderConfig,
        ecg_model: ECGEncoderModel | None = None,
        ehr_model: SEHRBertModel | None = None,
    ) -> None:
        super().__init__(config, ecg_model=ecg_model, partner_model=ehr_model)

    def get_ehr_features(
        self,
        ehr_input_ids: torch.Tensor,
        ehr_attention_mask: torch.Tensor | None = None,
        ehr_time_ids: torch.Tensor | None = None,
        ehr_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> ModelOutput | tuple:
        """sEHR-BERT's output with `pooler_output` replaced by the projected sEHR embedding in Ω_es, shape
        (batch, projection_dim), *not* L2-normalised.

        Args:
            ehr_input_ids: code token ids, (batch, codes).
            ehr_attention_mask: (batch, codes), 1 for codes and 0 for padding.
            ehr_time_ids: (batch, codes) weekly time ids.
            ehr_type_ids: (batch, codes) code-type ids.
            output_hidden_states / output_attentions: also return sEHR-BERT's hidden states / attentions.
            return_dict: return a `ModelOutput` (default) or a tuple.
        """
        inputs = ehr_tower_inputs(ehr_input_ids, ehr_attention_mask, ehr_time_ids, ehr_type_ids)
        return self.get_partner_features("ehr", inputs, output_hidden_states, output_attentions, return_dict)

    def forward(
        self,
        input_values: torch.Tensor,
        ehr_input_ids: torch.Tensor,
        ehr_attention_mask: torch.Tensor | None = None,
        ehr_time_ids: torch.Tensor | None = None,
        ehr_type_ids: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        time_mask: torch.Tensor | None = None,
        return_loss: bool = True,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> ECGSEHROutput | tuple:
        """
        Args:
            input_values (`torch.FloatTensor` of shape (batch, num_leads, time)): ECGs.
            ehr_input_ids (`torch.LongTensor` of shape (batch, codes)): code sequences, row `i` paired with ECG `i`.
            ehr_attention_mask (`torch.LongTensor` of shape (batch, codes), *optional*): 1 for codes, 0 for padding.
            ehr_time_ids (`torch.LongTensor` of shape (batch, codes), *optional*): weekly time ids.
            ehr_type_ids (`torch.LongTensor` of shape (batch, codes), *optional*): code-type ids.
            lead_mask (`torch.BoolTensor` of shape (batch, num_leads), *optional*): True for recorded leads.
            time_mask (`torch.LongTensor` of shape (batch, time), *optional*): 1 for recorded ECG samples.
            return_loss (`bool`, defaults to `True`): compute the contrastive loss.
            output_hidden_states / output_attentions (`bool`, *optional*): also return the towers' hidden states
                (both towers) / attentions (sEHR-BERT), in `ecg_model_output` / `ehr_model_output`.
            return_dict (`bool`, *optional*): return an [`ECGSEHROutput`] instead of a tuple.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        ehr_inputs = ehr_tower_inputs(ehr_input_ids, ehr_attention_mask, ehr_time_ids, ehr_type_ids)
        pair = self.forward_pair(input_values, ehr_inputs, lead_mask, time_mask, return_loss,
                                 output_hidden_states, output_attentions)
        output = ECGSEHROutput(
            loss=pair.loss,
            contrastive_loss=pair.contrastive_loss,
            unimodal_alignment_loss=pair.unimodal_alignment_loss,
            logits_per_ecg=pair.logits_per_ecg,
            logits_per_ehr=pair.logits_per_ecg.t(),
            ecg_embeds=pair.ecg_embeds,
            ehr_embeds=pair.partner_embeds,
            ecg_model_output=pair.ecg_model_output,
            ehr_model_output=pair.partner_model_output,
        )
        return output if return_dict else output.to_tuple()

    @classmethod
    def from_ecg_ehr_pretrained(
        cls,
        ecg_model_name_or_path: str | os.PathLike | ECGEncoderConfig | ECGEncoderModel,
        ehr_model_name_or_path: str | os.PathLike | SEHRBertConfig | PreTrainedModel,
        ecg_model_kwargs: dict[str, Any] | None = None,
        ehr_model_kwargs: dict[str, Any] | None = None,
        **config_kwargs: Any,
    ) -> ECGSEHRDualEncoder:
        """Build an ECG–sEHR dual encoder from two towers; the projections and `logit_scale` start fresh.

        Args:
            ecg_model_name_or_path: a saved ECG encoder, an `ECGEncoderModel`, an `ECGEncoderConfig` or a backbone
                preset name (random weights).
            ehr_model_name_or_path: a saved sEHR-BERT (an `SEHRBertForMaskedLM` checkpoint from MLM pre-training
                works: its encoder is loaded), an `SEHRBertModel` (or `SEHRBertForMaskedLM`, whose encoder is used),
                or an `SEHRBertConfig` (random weights).
            ecg_model_kwargs / ehr_model_kwargs: extra arguments of the towers' `from_pretrained`.
            config_kwargs: fields of [`ECGSEHRDualEncoderConfig`].
        """
        ecg_model = cls.load_ecg_tower(ecg_model_name_or_path, **(ecg_model_kwargs or {}))
        ehr_model, ehr_source = cls.load_ehr_tower(ehr_model_name_or_path, **(ehr_model_kwargs or {}))
        config_kwargs.setdefault("ehr_model_name_or_path", ehr_source)
        config = ECGSEHRDualEncoderConfig.from_ecg_ehr_configs(ecg_model.config, ehr_model.config, **config_kwargs)
        return cls(config, ecg_model=ecg_model, ehr_model=ehr_model)


ECGSEHRDualEncoder.register_for_auto_class("AutoModel")

__all__ = ["ECGSEHROutput", "ECGSEHRDualEncoder"]
