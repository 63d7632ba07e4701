"""ECG–report dual encoder: MERL (CLIP loss + uni-modal alignment) and the ECG-Text model of Lalam et al.
(ConVIRT loss).

An ECG tower ([`ECGEncoderModel`]) and a text tower (any transformers text encoder) are mapped by two projection
heads into a shared space of `projection_dim` dimensions, where paired ECGs and reports are pulled together by a
contrastive loss over the batch (gathered across processes when training distributed). With
`unimodal_alignment=True`, MERL's UMA loss contrasts two dropout views of each ECG latent (the pooled ECG tower
output, before projection) with each other.

Frozen parts of the towers (`freeze_ecg`, `freeze_text_layers`) have `requires_grad=False`, run under
`torch.no_grad()` and stay in eval mode (no dropout, fixed batch-norm statistics) when the model is put in train
mode. With a partly frozen text tower only the frozen prefix (embeddings and the first `N` layers) runs without
autograd; the later layers are trained.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_ecg_encoder import ECG_ENCODER_PRESETS, ECGEncoderConfig
from .configuration_ecg_text import ECGTextDualEncoderConfig
from .contrastive_losses import clip_loss, convirt_loss, unimodal_alignment_loss
from .modeling_ecg_encoder import ECGEncoderModel, ECGEncoderOutput

# CLIP caps the learnable inverse temperature at 100 (log 100 = 4.6052).
MAX_LOGIT_SCALE: float = 4.605170185988092


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
            self[k] if k not in ("ecg_model_output", "text_model_output") else getattr(self, k).to_tuple()
            for k in self.keys()
        )


def build_projection(in_features: int, config: ECGTextDualEncoderConfig, modality: str) -> nn.Sequential:
    """Projection head of one modality.

    `projection_type="linear"`: one bias-free linear layer (CLIP). `"mlp"`: MERL's projectors, for ECGs
    `Linear-BN-ReLU-Linear-BN` (the linear layers feeding a batch norm carry no bias, which the batch norm would
    cancel) and for text `Linear-GELU-Linear`.
    """
    hidden, out = config.projection_hidden_size, config.projection_dim
    if config.projection_type == "linear":
        return nn.Sequential(nn.Linear(in_features, out, bias=False))
    if modality == "ecg":
        return nn.Sequential(
            nn.Linear(in_features, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out, bias=False),
            nn.BatchNorm1d(out),
        )
    return nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, out))


class ECGTextPreTrainedModel(PreTrainedModel):
    """Base class: configuration class, prefixes and the initialisation of the projections and `logit_scale`.

    The towers are `PreTrainedModel`s and initialise themselves with their own `_init_weights`.
    """

    config_class = ECGTextDualEncoderConfig
    config: ECGTextDualEncoderConfig
    base_model_prefix = "ecg_text_dual_encoder"
    main_input_name = "input_values"
    input_modalities = ("ecg", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Projection linears: normal with std `in_features ** -0.5` (CLIP's projection init), biases 0;
        batch norms: weight 1, bias 0, running statistics 0 / 1 / 0; `logit_scale`: `logit_scale_init_value`."""
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=module.in_features**-0.5)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm1d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, ECGTextDualEncoder):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class ECGTextDualEncoder(ECGTextPreTrainedModel):
    """ECG–report contrastive dual encoder (MERL; ECG-Text of Lalam et al.).

    Args:
        config: the model configuration.
        ecg_model: an existing ECG tower to use instead of building one from `config.ecg_config`.
        text_model: an existing text tower to use instead of building one from `config.text_config`.
    """

    def __init__(
        self,
        config: ECGTextDualEncoderConfig,
        ecg_model: ECGEncoderModel | None = None,
        text_model: PreTrainedModel | None = None,
    ) -> None:
        super().__init__(config)
        self.ecg_model = ecg_model if ecg_model is not None else ECGEncoderModel(config.ecg_config)
        self.text_model = text_model if text_model is not None else AutoModel.from_config(config.text_config)
        # the towers use the composite configuration's sub-configs (so that changes to them reach the towers),
        # keeping the attention implementation each tower was built or loaded with
        self.config.text_config._attn_implementation = self.text_model.config._attn_implementation
        self.ecg_model.config = self.config.ecg_config
        self.text_model.config = self.config.text_config

        self.ecg_projection = build_projection(config.ecg_config.hidden_size, config, "ecg")
        self.text_projection = build_projection(config.text_config.hidden_size, config, "text")
        logit_scale = torch.tensor([float(config.logit_scale_init_value)])  # (1,): DeepSpeed cannot hold 0-dim params
        if config.learnable_temperature:
            self.logit_scale = nn.Parameter(logit_scale)
        else:
            self.register_buffer("logit_scale", logit_scale)

        self._install_freezing()
        self.post_init()

    # ------------------------------------------------------------------------------------------------ freezing
    def _frozen_text_prefix(self) -> list[nn.Module]:
        """The text modules frozen by `freeze_text_layers`: the whole tower (-1), nothing (0), or the embeddings
        and the first `N` layers of a BERT-like tower."""
        num_frozen = self.config.freeze_text_layers
        if num_frozen == -1:
            return [self.text_model]
        if num_frozen == 0:
            return []
        embeddings = getattr(self.text_model, "embeddings", None)
        layers = getattr(getattr(self.text_model, "encoder", None), "layer", None)
        if not isinstance(embeddings, nn.Module) or not isinstance(layers, nn.ModuleList):
            raise ValueError(
                f"freeze_text_layers={num_frozen} needs a BERT-like text tower with `embeddings` and `encoder.layer`; "
                f"{type(self.text_model).__name__} has none. Use freeze_text_layers=-1 (whole tower) or 0."
            )
        if num_frozen > len(layers):
            raise ValueError(f"freeze_text_layers={num_frozen} exceeds the text tower's {len(layers)} layers.")
        return [embeddings, *layers[:num_frozen]]

    def _install_freezing(self) -> None:
        """Freeze the configured tower parts and make the frozen text prefix run under `torch.no_grad()`.

        The prefix modules get forward hooks that switch autograd off on entry and back to the caller's mode on
        exit, so the rest of the tower's own forward runs with gradients.
        """
        frozen = self._frozen_text_prefix()
        if self.config.freeze_text_layers > 0:
            for module in frozen:
                module.register_forward_pre_hook(_disable_grad)
                module.register_forward_hook(_restore_grad, always_call=True)
        self._frozen_text_modules = frozen
        self.apply_freezing()

    def apply_freezing(self) -> None:
        """Set `requires_grad=False` on the frozen parts (`freeze_ecg`, `freeze_text_layers`) and on a text pooler
        the loss does not use (`text_pooling` other than `"pooler"`; unused trainable parameters would stall
        `DistributedDataParallel`). Called on construction and after `from_pretrained`, whose loading replaces
        the parameters."""
        if self.config.freeze_ecg:
            self.ecg_model.requires_grad_(False)
        pooler = getattr(self.text_model, "pooler", None)
        if self.config.text_pooling != "pooler" and isinstance(pooler, nn.Module):
            pooler.requires_grad_(False)
        for module in self._frozen_text_modules:
            module.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """[`PreTrainedModel.from_pretrained`], then re-freezes the frozen parts (loading creates new parameters,
        all with `requires_grad=True`)."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if isinstance(model, ECGTextDualEncoder):
            model.apply_freezing()
        return loaded

    def train(self, mode: bool = True) -> ECGTextDualEncoder:
        """Set train/eval mode; frozen tower parts always stay in eval mode."""
        super().train(mode)
        if mode:
            if self.config.freeze_ecg:
                self.ecg_model.eval()
            for module in getattr(self, "_frozen_text_modules", ()):
                module.eval()
        return self

    @property
    def text_tower_frozen(self) -> bool:
        """Whether the whole text tower is frozen (`freeze_text_layers=-1`)."""
        return self.config.freeze_text_layers == -1

    # ------------------------------------------------------------------------------------------------ encoders
    def _encode_ecg(
        self, input_values: torch.Tensor, lead_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, ECGEncoderOutput]:
        """ECG latent (pooled tower output, (batch, ecg hidden)) and the tower output."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_ecg):
            outputs = self.ecg_model(input_values, lead_mask=lead_mask, return_dict=True)
        return outputs.pooler_output, outputs

    def _encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, ModelOutput]:
        """Pooled report representation ((batch, text hidden), before projection) and the tower output."""
        inputs: dict[str, torch.Tensor] = {"input_ids": input_ids}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        grad_enabled = torch.is_grad_enabled()
        try:
            with torch.set_grad_enabled(grad_enabled and not self.text_tower_frozen):
                outputs = self.text_model(**inputs, return_dict=True)
        finally:
            torch.set_grad_enabled(grad_enabled)
        pooling = self.config.text_pooling
        if pooling == "pooler":
            pooled = outputs.pooler_output
            if pooled is None:
                raise ValueError(
                    f"text_pooling='pooler' but {type(self.text_model).__name__} returns no pooler_output; "
                    "use text_pooling='cls' or 'mean'."
                )
        elif pooling == "cls":
            pooled = outputs.last_hidden_state[:, 0]
        else:
            hidden = outputs.last_hidden_state
            if attention_mask is None:
                pooled = hidden.mean(dim=1)
            else:
                weights = attention_mask.to(hidden.dtype).unsqueeze(1)  # (batch, 1, tokens)
                pooled = torch.bmm(weights, hidden).squeeze(1) / weights.sum(dim=-1).clamp(min=1.0)
        return pooled, outputs

    def get_ecg_features(self, input_values: torch.Tensor, lead_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projected ECG embeddings, shape (batch, projection_dim), *not* L2-normalised (as CLIP's
        `get_image_features`); normalise them for cosine similarity.

        Args:
            input_values: ECGs, (batch, num_leads, time).
            lead_mask: (batch, num_leads) bool, True for recorded leads.
        """
        latent, _ = self._encode_ecg(input_values, lead_mask)
        return self.ecg_projection(latent)

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Projected report embeddings, shape (batch, projection_dim), *not* L2-normalised.

        Args:
            input_ids: token ids, (batch, tokens).
            attention_mask: (batch, tokens), 1 for real tokens and 0 for padding.
            token_type_ids: (batch, tokens), optional segment ids.
        """
        pooled, _ = self._encode_text(input_ids, attention_mask, token_type_ids)
        return self.text_projection(pooled)

    def forward(
        self,
        input_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_loss: bool = True,
        return_dict: bool | None = None,
    ) -> ECGTextOutput | tuple:
        """
        Args:
            input_values (`torch.FloatTensor` of shape (batch, num_leads, time)): ECGs.
            input_ids (`torch.LongTensor` of shape (batch, tokens)): tokenised reports, row `i` paired with ECG `i`.
            attention_mask (`torch.LongTensor` of shape (batch, tokens), *optional*): 1 for real tokens.
            lead_mask (`torch.BoolTensor` of shape (batch, num_leads), *optional*): True for recorded leads.
            token_type_ids (`torch.LongTensor` of shape (batch, tokens), *optional*): segment ids.
            return_loss (`bool`, defaults to `True`): compute the contrastive (and UMA) loss.
            return_dict (`bool`, *optional*): return an [`ECGTextOutput`] instead of a tuple.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        ecg_latent, ecg_outputs = self._encode_ecg(input_values, lead_mask)
        text_pooled, text_outputs = self._encode_text(input_ids, attention_mask, token_type_ids)
        ecg_features = self.ecg_projection(ecg_latent)
        text_features = self.text_projection(text_pooled)

        ecg_embeds = F.normalize(ecg_features, dim=-1)
        text_embeds = F.normalize(text_features, dim=-1)
        logit_scale = self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        logits_per_ecg = logit_scale * ecg_embeds @ text_embeds.t()
        logits_per_text = logits_per_ecg.t()

        loss = contrastive = uma = None
        if return_loss:
            if self.config.loss == "clip":
                contrastive = clip_loss(ecg_embeds, text_embeds, logit_scale, gather=True)
            else:
                contrastive = convirt_loss(
                    ecg_embeds, text_embeds, temperature=1.0 / logit_scale, lambda_=self.config.convirt_lambda,
                    gather=True,
                )
            loss = contrastive
            if self.config.unimodal_alignment:
                uma = unimodal_alignment_loss(
                    ecg_latent, dropout_p=self.config.uma_dropout, logit_scale=logit_scale, training=self.training,
                    gather=True,
                )
                loss = loss + self.config.uma_weight * uma

        output = ECGTextOutput(
            loss=loss,
            contrastive_loss=contrastive,
            unimodal_alignment_loss=uma,
            logits_per_ecg=logits_per_ecg,
            logits_per_text=logits_per_text,
            ecg_embeds=ecg_embeds,
            text_embeds=text_embeds,
            ecg_model_output=ecg_outputs,
            text_model_output=text_outputs,
        )
        return output if return_dict else output.to_tuple()

    # ------------------------------------------------------------------------------------------------ building
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
        ecg_model_kwargs = ecg_model_kwargs or {}
        text_model_kwargs = text_model_kwargs or {}
        if isinstance(ecg_model_name_or_path, ECGEncoderModel):
            ecg_model = ecg_model_name_or_path
        elif isinstance(ecg_model_name_or_path, ECGEncoderConfig):
            ecg_model = ECGEncoderModel(ecg_model_name_or_path)
        elif isinstance(ecg_model_name_or_path, str) and ecg_model_name_or_path in ECG_ENCODER_PRESETS:
            ecg_model = ECGEncoderModel(ECGEncoderConfig(backbone=ecg_model_name_or_path))
        else:
            ecg_model = ECGEncoderModel.from_pretrained(ecg_model_name_or_path, **ecg_model_kwargs)

        if isinstance(text_model_name_or_path, PreTrainedModel):
            text_model = text_model_name_or_path
            text_source = text_model.config.name_or_path
        elif isinstance(text_model_name_or_path, PreTrainedConfig):
            text_model = AutoModel.from_config(text_model_name_or_path)
            text_source = None
        else:
            text_model = AutoModel.from_pretrained(text_model_name_or_path, **text_model_kwargs)
            text_source = str(text_model_name_or_path)

        config_kwargs.setdefault("text_model_name_or_path", text_source)
        # built from copies: building a composite config resets its sub-configs' attention implementation
        config = ECGTextDualEncoderConfig.from_ecg_text_configs(ecg_model.config, text_model.config, **config_kwargs)
        return cls(config, ecg_model=ecg_model, text_model=text_model)


def _disable_grad(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Forward pre-hook of a frozen text module: run it without autograd, remembering the previous mode."""
    module._grad_enabled_before = torch.is_grad_enabled()
    torch.set_grad_enabled(False)


def _restore_grad(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    """Forward hook of a frozen text module: restore the autograd mode of the caller."""
    torch.set_grad_enabled(getattr(module, "_grad_enabled_before", True))


ECGTextDualEncoder.register_for_auto_class("AutoModel")

__all__ = ["ECGTextOutput", "ECGTextPreTrainedModel", "ECGTextDualEncoder", "build_projection", "MAX_LOGIT_SCALE"]
