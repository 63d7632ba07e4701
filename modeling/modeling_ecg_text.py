"""ECG–report dual encoder: MERL (CLIP loss + uni-modal alignment) and the ECG-Text model of Lalam et al.
(ConVIRT loss), on the machinery every cardiomm ECG contrastive model shares.

An ECG tower ([`ECGEncoderModel`]) and a text tower (any transformers text encoder) are mapped by two projection
heads into a shared space of `projection_dim` dimensions, where paired ECGs and reports are pulled together by a
contrastive loss over the batch (gathered across processes when training distributed). With
`unimodal_alignment=True`, MERL's UMA loss contrasts two dropout views of each ECG latent (the pooled ECG tower
output, before projection) with each other.

Frozen parts of the towers (`freeze_ecg`, `freeze_text_layers`) have `requires_grad=False`, run under
`torch.no_grad()` and stay in eval mode (no dropout, fixed batch-norm statistics) when the model is put in train
mode. With a partly frozen text tower only the frozen prefix (embeddings and the first `N` layers) runs without
autograd; the later layers are trained.

Shared machinery ([`ECGContrastiveModel`]): an ECG tower plus one or more *partner towers* named by modality
(`partner_modalities`, e.g. `("text",)` here, `("ehr",)` for the ECG–sEHR model, `("ehr", "text")` for the
sEHR–ECG–Text model). For each partner `m` the configuration holds `m_config`, `m_pooling` and
`freeze_m_layers`; the model holds `m_model` and `m_projection`. A partner tower is built from the class that
`tower_classes[m]` names (a sibling class, so a checkpoint rebuilds it without cardiomm) or, when none is named, with
`AutoModel.from_config`. Building, freezing, pooling, the temperature and the bidirectional loss of one ECG–partner
pair live here once; [`ECGDualEncoderModel`] adds the forward pass of an ECG–partner dual encoder, which
[`ECGTextDualEncoder`] and `ECGSEHRDualEncoder` only wrap in their output classes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

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
            self[k] if not k.endswith("_model_output") else getattr(self, k).to_tuple() for k in self.keys()
        )


def build_projection(
    in_features: int, config: PreTrainedConfig, modality: str, out_features: int | None = None
) -> nn.Sequential:
    """Projection head of one modality, into a space of `out_features` (default `config.projection_dim`) dimensions.

    `projection_type="linear"`: one bias-free linear layer (CLIP). `"mlp"`: MERL's projectors, for ECGs
    `Linear-BN-ReLU-Linear-BN` (the linear layers feeding a batch norm carry no bias, which the batch norm would
    cancel) and for every other modality (text, sEHR, a projection between two joint spaces) `Linear-GELU-Linear`.
    """
    hidden = config.projection_hidden_size
    out = config.projection_dim if out_features is None else out_features
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


def pool_token_states(
    outputs: ModelOutput, attention_mask: torch.Tensor | None, pooling: str, tower: str
) -> torch.Tensor:
    """Sequence embedding of a BERT-like tower output: `"pooler"` (its `pooler_output`), `"cls"` (final state of the
    first token) or `"mean"` (mean of the final states of the non-padding tokens)."""
    if pooling == "pooler":
        pooled = outputs.pooler_output
        if pooled is None:
            raise ValueError(
                f"{tower}_pooling='pooler' but the {tower} tower returns no pooler_output; use 'cls' or 'mean'."
            )
        return pooled
    hidden = outputs.last_hidden_state
    if pooling == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.to(hidden.dtype).unsqueeze(1)  # (batch, 1, tokens)
    return torch.bmm(weights, hidden).squeeze(1) / weights.sum(dim=-1).clamp(min=1.0)


def pair_contrastive_loss(
    a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor, loss: str = "convirt", convirt_lambda: float = 0.5
) -> torch.Tensor:
    """Bidirectional contrastive loss of paired L2-normalised embeddings `a` (anchor, e.g. the ECG) and `b`:
    `"clip"` (symmetric InfoNCE at `logit_scale`) or `"convirt"` (`λ·ℓ(a→b) + (1−λ)·ℓ(b→a)` at
    τ = 1 / logit_scale, Eq. 1–2 of Lalam et al.). Negatives are gathered across processes when training
    distributed."""
    if loss == "clip":
        return clip_loss(a, b, logit_scale, gather=True)
    return convirt_loss(a, b, temperature=1.0 / logit_scale, lambda_=convirt_lambda, gather=True)


class ECGContrastivePreTrainedModel(PreTrainedModel):
    """Base class of the ECG contrastive models: the initialisation of the projections and `logit_scale`.

    The towers are `PreTrainedModel`s and initialise themselves with their own `_init_weights`.
    """

    main_input_name = "input_values"
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
        elif isinstance(module, ECGContrastiveModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class ECGContrastiveModel(ECGContrastivePreTrainedModel):
    """An ECG tower and the partner towers of `partner_modalities`, with building, freezing, pooling and the
    temperature shared by every cardiomm ECG contrastive model (see the module docstring).

    Subclasses set `partner_modalities`, optionally `tower_classes`, build their projection heads after calling
    `super().__init__` and finish with `self.post_init()`.

    Args:
        config: the model configuration (fields `ecg_config`, `freeze_ecg`, `logit_scale_init_value`,
            `learnable_temperature` and, per partner `m`, `m_config`, `m_pooling`, `freeze_m_layers`).
        ecg_model: an existing ECG tower to use instead of building one from `config.ecg_config`.
        partner_models: existing partner towers by modality, instead of building them from their configs.
    """

    partner_modalities: ClassVar[tuple[str, ...]] = ()
    tower_classes: ClassVar[dict[str, type[PreTrainedModel]]] = {}

    def __init__(
        self,
        config: PreTrainedConfig,
        ecg_model: ECGEncoderModel | None = None,
        partner_models: Mapping[str, PreTrainedModel | None] | None = None,
    ) -> None:
        super().__init__(config)
        partner_models = dict(partner_models or {})
        self.ecg_model = ecg_model if ecg_model is not None else ECGEncoderModel(config.ecg_config)
        self.ecg_model.config = config.ecg_config
        for modality in self.partner_modalities:
            tower_config = getattr(config, f"{modality}_config")
            tower = partner_models.get(modality)
            if tower is None:
                tower = self.build_tower(modality, tower_config)
            # the towers use the composite configuration's sub-configs (so that changes to them reach the towers),
            # keeping the attention implementation each tower was built or loaded with
            tower_config._attn_implementation = tower.config._attn_implementation
            tower.config = tower_config
            setattr(self, f"{modality}_model", tower)

    @classmethod
    def build_tower(cls, modality: str, tower_config: PreTrainedConfig) -> PreTrainedModel:
        """A randomly initialised partner tower: `tower_classes[modality](tower_config)`, else
        `AutoModel.from_config(tower_config)`."""
        tower_class = cls.tower_classes.get(modality)
        return tower_class(tower_config) if tower_class is not None else AutoModel.from_config(tower_config)

    def init_logit_scale(self) -> None:
        """Create `logit_scale` (shape (1,)): a parameter with `learnable_temperature`, else a buffer."""
        logit_scale = torch.tensor([float(self.config.logit_scale_init_value)])  # (1,): DeepSpeed needs >0-dim
        if self.config.learnable_temperature:
            self.logit_scale = nn.Parameter(logit_scale)
        else:
            self.register_buffer("logit_scale", logit_scale)

    def tower(self, modality: str) -> nn.Module:
        """The tower of `modality` (`"ecg"` or a partner modality)."""
        return getattr(self, f"{modality}_model")

    # ------------------------------------------------------------------------------------------------ freezing
    def _frozen_prefix(self, modality: str) -> list[nn.Module]:
        """The modules of a partner tower frozen by `freeze_<modality>_layers`: the whole tower (-1), nothing (0), or
        the embeddings and the first `N` layers of a BERT-like tower."""
        num_frozen = getattr(self.config, f"freeze_{modality}_layers")
        tower = self.tower(modality)
        if num_frozen == -1:
            return [tower]
        if num_frozen == 0:
            return []
        embeddings = getattr(tower, "embeddings", None)
        layers = getattr(getattr(tower, "encoder", None), "layer", None)
        if not isinstance(embeddings, nn.Module) or not isinstance(layers, nn.ModuleList):
            raise ValueError(
                f"freeze_{modality}_layers={num_frozen} needs a BERT-like {modality} tower with `embeddings` and "
                f"`encoder.layer`; {type(tower).__name__} has none. Use freeze_{modality}_layers=-1 (whole tower) "
                "or 0."
            )
        if num_frozen > len(layers):
            raise ValueError(
                f"freeze_{modality}_layers={num_frozen} exceeds the {modality} tower's {len(layers)} layers."
            )
        return [embeddings, *layers[:num_frozen]]

    def _install_freezing(self) -> None:
        """Freeze the configured tower parts and make each frozen prefix run under `torch.no_grad()`.

        The prefix modules get forward hooks that switch autograd off on entry and back to the caller's mode on
        exit, so the rest of the tower's own forward runs with gradients.
        """
        self._frozen_modules: dict[str, list[nn.Module]] = {}
        for modality in self.partner_modalities:
            frozen = self._frozen_prefix(modality)
            if getattr(self.config, f"freeze_{modality}_layers") > 0:
                for module in frozen:
                    module.register_forward_pre_hook(_disable_grad)
                    module.register_forward_hook(_restore_grad, always_call=True)
            self._frozen_modules[modality] = frozen
        self.apply_freezing()

    def apply_freezing(self) -> None:
        """Set `requires_grad=False` on the frozen parts (`freeze_ecg`, `freeze_<modality>_layers`) and on a tower
        pooler the loss does not use (`<modality>_pooling` other than `"pooler"`; unused trainable parameters would
        stall `DistributedDataParallel`). Called on construction and after `from_pretrained`, whose loading
        replaces the parameters."""
        if self.config.freeze_ecg:
            self.ecg_model.requires_grad_(False)
        for modality in self.partner_modalities:
            pooler = getattr(self.tower(modality), "pooler", None)
            if getattr(self.config, f"{modality}_pooling") != "pooler" and isinstance(pooler, nn.Module):
                pooler.requires_grad_(False)
            for module in self._frozen_modules.get(modality, ()):
                module.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """[`PreTrainedModel.from_pretrained`], then re-freezes the frozen parts (loading creates new parameters,
        all with `requires_grad=True`)."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if isinstance(model, ECGContrastiveModel):
            model.apply_freezing()
        return loaded

    def train(self, mode: bool = True) -> ECGContrastiveModel:
        """Set train/eval mode; frozen tower parts always stay in eval mode."""
        super().train(mode)
        if mode:
            if self.config.freeze_ecg:
                self.ecg_model.eval()
            for modules in getattr(self, "_frozen_modules", {}).values():
                for module in modules:
                    module.eval()
        return self

    def tower_frozen(self, modality: str) -> bool:
        """Whether the whole tower of `modality` is frozen."""
        if modality == "ecg":
            return bool(self.config.freeze_ecg)
        return getattr(self.config, f"freeze_{modality}_layers") == -1

    # ------------------------------------------------------------------------------------------------ encoders
    def _encode_ecg(
        self, input_values: torch.Tensor, lead_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, ECGEncoderOutput]:
        """ECG latent (pooled tower output, (batch, ecg hidden)) and the tower output."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_ecg):
            outputs = self.ecg_model(input_values, lead_mask=lead_mask, return_dict=True)
        return outputs.pooler_output, outputs

    def _encode_partner(
        self, modality: str, inputs: Mapping[str, torch.Tensor | None]
    ) -> tuple[torch.Tensor, ModelOutput]:
        """Pooled representation of a partner tower ((batch, hidden), before projection) and the tower output.

        `inputs` are the tower's keyword inputs (`input_ids`, `attention_mask`, ...); `None` values are left out.
        """
        inputs = {k: v for k, v in inputs.items() if v is not None}
        grad_enabled = torch.is_grad_enabled()
        try:
            with torch.set_grad_enabled(grad_enabled and not self.tower_frozen(modality)):
                tower = self.tower(modality)
                outputs = _forward_without_padding(tower, inputs)  # None: not applicable
                if outputs is None:
                    outputs = tower(**inputs, return_dict=True)
        finally:
            torch.set_grad_enabled(grad_enabled)
        pooling = getattr(self.config, f"{modality}_pooling")
        return pool_token_states(outputs, inputs.get("attention_mask"), pooling, modality), outputs

    def get_ecg_features(self, input_values: torch.Tensor, lead_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projected ECG embeddings, shape (batch, projection_dim), *not* L2-normalised (as CLIP's
        `get_image_features`); normalise them for cosine similarity.

        Args:
            input_values: ECGs, (batch, num_leads, time).
            lead_mask: (batch, num_leads) bool, True for recorded leads.
        """
        latent, _ = self._encode_ecg(input_values, lead_mask)
        return self.ecg_projection(latent)

    def scale(self) -> torch.Tensor:
        """The inverse temperature `exp(logit_scale)`, with `logit_scale` capped at log 100, shape (1,)."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    # ------------------------------------------------------------------------------------------------ building
    @staticmethod
    def load_ecg_tower(
        source: str | os.PathLike | ECGEncoderConfig | ECGEncoderModel, **kwargs: Any
    ) -> ECGEncoderModel:
        """An ECG tower from a saved encoder (Hub id or folder), an `ECGEncoderModel`, an `ECGEncoderConfig` or a
        backbone preset name (random weights)."""
        if isinstance(source, ECGEncoderModel):
            return source
        if isinstance(source, ECGEncoderConfig):
            return ECGEncoderModel(source)
        if isinstance(source, str) and source in ECG_ENCODER_PRESETS:
            return ECGEncoderModel(ECGEncoderConfig(backbone=source))
        return ECGEncoderModel.from_pretrained(source, **kwargs)


class ECGDualEncoderModel(ECGContrastiveModel):
    """ECG–partner contrastive dual encoder with one partner tower (`partner_modalities = (m,)`): projections
    `ecg_projection` and `m_projection` into one space of `projection_dim` dimensions, CLIP or ConVIRT loss and
    MERL's optional uni-modal alignment. Subclasses name the partner, its inputs and their output class."""

    def __init__(
        self,
        config: PreTrainedConfig,
        ecg_model: ECGEncoderModel | None = None,
        partner_model: PreTrainedModel | None = None,
    ) -> None:
        partner = self.partner_modality
        super().__init__(config, ecg_model=ecg_model, partner_models={partner: partner_model})
        self.ecg_projection = build_projection(config.ecg_config.hidden_size, config, "ecg")
        partner_hidden = getattr(config, f"{partner}_config").hidden_size
        setattr(self, f"{partner}_projection", build_projection(partner_hidden, config, partner))
        self.init_logit_scale()
        self._install_freezing()
        self.post_init()

    @property
    def partner_modality(self) -> str:
        """The modality of the one partner tower."""
        return self.partner_modalities[0]

    def get_input_embeddings(self) -> nn.Module:
        """The token embeddings of the partner tower (the tower that reads `input_ids`)."""
        return self.tower(self.partner_modality).get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.tower(self.partner_modality).set_input_embeddings(value)

    def get_partner_features(self, **inputs: torch.Tensor | None) -> torch.Tensor:
        """Projected partner embeddings, shape (batch, projection_dim), not L2-normalised."""
        pooled, _ = self._encode_partner(self.partner_modality, inputs)
        return getattr(self, f"{self.partner_modality}_projection")(pooled)

    def dual_encoder_forward(
        self,
        input_values: torch.Tensor,
        partner_inputs: Mapping[str, torch.Tensor | None],
        lead_mask: torch.Tensor | None = None,
        return_loss: bool = True,
    ) -> dict[str, Any]:
        """Embeddings, logits and losses of a batch of ECG–partner pairs, as the fields of the output class
        (`logits_per_<m>`, `<m>_embeds`, `<m>_model_output` for partner modality `m`)."""
        partner = self.partner_modality
        ecg_latent, ecg_outputs = self._encode_ecg(input_values, lead_mask)
        partner_pooled, partner_outputs = self._encode_partner(partner, partner_inputs)
        ecg_features = self.ecg_projection(ecg_latent)
        partner_features = getattr(self, f"{partner}_projection")(partner_pooled)

        ecg_embeds = F.normalize(ecg_features, dim=-1)
        partner_embeds = F.normalize(partner_features, dim=-1)
        logit_scale = self.scale()
        logits_per_ecg = logit_scale * ecg_embeds @ partner_embeds.t()

        loss = contrastive = uma = None
        if return_loss:
            contrastive = pair_contrastive_loss(
                ecg_embeds, partner_embeds, logit_scale, self.config.loss, self.config.convirt_lambda
            )
            loss = contrastive
            if self.config.unimodal_alignment:
                uma = unimodal_alignment_loss(
                    ecg_latent, dropout_p=self.config.uma_dropout, logit_scale=logit_scale, training=self.training,
                    gather=True,
                )
                loss = loss + self.config.uma_weight * uma
        return {
            "loss": loss,
            "contrastive_loss": contrastive,
            "unimodal_alignment_loss": uma,
            "logits_per_ecg": logits_per_ecg,
            f"logits_per_{partner}": logits_per_ecg.t(),
            "ecg_embeds": ecg_embeds,
            f"{partner}_embeds": partner_embeds,
            "ecg_model_output": ecg_outputs,
            f"{partner}_model_output": partner_outputs,
        }


class ECGTextPreTrainedModel(ECGContrastivePreTrainedModel):
    """Base class of the ECG–report dual encoder: configuration class and prefixes."""

    config_class = ECGTextDualEncoderConfig
    config: ECGTextDualEncoderConfig
    base_model_prefix = "ecg_text_dual_encoder"
    input_modalities = ("ecg", "text")


class ECGTextDualEncoder(ECGDualEncoderModel, ECGTextPreTrainedModel):
    """ECG–report contrastive dual encoder (MERL; ECG-Text of Lalam et al.).

    Args:
        config: the model configuration.
        ecg_model: an existing ECG tower to use instead of building one from `config.ecg_config`.
        text_model: an existing text tower to use instead of building one from `config.text_config`.
    """

    partner_modalities: ClassVar[tuple[str, ...]] = ("text",)

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
    ) -> torch.Tensor:
        """Projected report embeddings, shape (batch, projection_dim), *not* L2-normalised.

        Args:
            input_ids: token ids, (batch, tokens).
            attention_mask: (batch, tokens), 1 for real tokens and 0 for padding.
            token_type_ids: (batch, tokens), optional segment ids.
        """
        return self.get_partner_features(input_ids=input_ids, attention_mask=attention_mask,
                                         token_type_ids=token_type_ids)

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
        text_inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        output = ECGTextOutput(**self.dual_encoder_forward(input_values, text_inputs, lead_mask, return_loss))
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
        if isinstance(text_model_name_or_path, PreTrainedModel):
            text_model = text_model_name_or_path
            text_source = text_model.config.name_or_path
        elif isinstance(text_model_name_or_path, PreTrainedConfig):
            text_model = AutoModel.from_config(text_model_name_or_path)
            text_source = None
        else:
            text_model = AutoModel.from_pretrained(text_model_name_or_path, **(text_model_kwargs or {}))
            text_source = str(text_model_name_or_path)

        config_kwargs.setdefault("text_model_name_or_path", text_source)
        # built from copies: building a composite config resets its sub-configs' attention implementation
        config = ECGTextDualEncoderConfig.from_ecg_text_configs(ecg_model.config, text_model.config, **config_kwargs)
        return cls(config, ecg_model=ecg_model, text_model=text_model)


def _disable_grad(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Forward pre-hook of a frozen tower module: run it without autograd, remembering the previous mode."""
    module._grad_enabled_before = torch.is_grad_enabled()
    torch.set_grad_enabled(False)


def _restore_grad(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    """Forward hook of a frozen tower module: restore the autograd mode of the caller."""
    torch.set_grad_enabled(getattr(module, "_grad_enabled_before", True))


def _length_groups(lengths: list[int], overhead: int) -> list[list[int]]:
    """Rows grouped by length so that padding each group to its longest row plus `overhead` tokens per group costs
    the fewest tokens (dynamic programming over the rows sorted by length)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    sorted_lengths = [lengths[i] for i in order]
    cuts = [i for i in range(1, len(order)) if sorted_lengths[i] != sorted_lengths[i - 1]] + [len(order)]
    best, start_of = {0: 0}, {}
    for end in cuts:
        cost, start = min(
            (best[start] + (end - start) * sorted_lengths[end - 1] + overhead, start) for start in best
        )
        best[end], start_of[end] = cost, start
    groups, end = [], len(order)
    while end:
        groups.append(order[start_of[end] : end])
        end = start_of[end]
    return groups[::-1]


def _forward_without_padding(
    tower: nn.Module, inputs: Mapping[str, torch.Tensor], overhead: int = 128, min_saving: float = 0.1
) -> ModelOutput | None:
    """Run a tower without autograd on groups of similar-length rows, each padded only to its own longest row.

    Token-wise work (every linear layer) then scales with the real tokens of the batch instead of batch x longest
    row. Only for right-padded 2-D inputs and when at least `min_saving` of the token positions are saved; returns
    `None` otherwise (the caller runs the tower on the whole batch). Rows are computed independently by a tower
    without autograd (dropout aside), so `pooler_output` and the `last_hidden_state` of real tokens equal those of
    the whole-batch call up to floating-point rounding; states of padding positions are zero.
    """
    mask = inputs.get("attention_mask")
    if torch.is_grad_enabled() or mask is None or mask.dim() != 2 or mask.shape[0] < 2:
        return None
    if torch.compiler.is_compiling():  # traced graphs (torch.export) take the whole-batch path, free of data branches
        return None
    if any(not isinstance(v, torch.Tensor) or v.shape != mask.shape for v in inputs.values()):
        return None
    config = getattr(tower, "config", None)
    if getattr(config, "output_hidden_states", False) or getattr(config, "output_attentions", False):
        return None
    lengths = mask.sum(dim=1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    if not torch.equal(mask.bool(), positions < lengths[:, None]):
        return None  # left padding, or holes in the mask
    lengths = lengths.clamp(min=1).tolist()
    groups = _length_groups(lengths, overhead)
    padded = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    if padded > (1.0 - min_saving) * mask.numel():
        return None
    batch, tokens = mask.shape
    last_hidden_state = pooler_output = output_class = None
    for group in groups:
        length = max(lengths[i] for i in group)
        index = torch.tensor(group, device=mask.device)
        outputs = tower(**{k: v[index, :length] for k, v in inputs.items()}, return_dict=True)
        extra = [k for k, v in outputs.items() if v is not None and k not in ("last_hidden_state", "pooler_output")]
        if extra:
            return None
        states = outputs.last_hidden_state
        if last_hidden_state is None:
            output_class = type(outputs)
            last_hidden_state = states.new_zeros(batch, tokens, states.shape[-1])
            if outputs.get("pooler_output") is not None:
                pooler_output = outputs.pooler_output.new_empty(batch, outputs.pooler_output.shape[-1])
        last_hidden_state[index, :length] = states
        if pooler_output is not None:
            pooler_output[index] = outputs.pooler_output
    fields = {"last_hidden_state": last_hidden_state}
    if pooler_output is not None:
        fields["pooler_output"] = pooler_output
    return output_class(**fields)


ECGTextDualEncoder.register_for_auto_class("AutoModel")

__all__ = [
    "ECGTextOutput",
    "ECGContrastivePreTrainedModel",
    "ECGContrastiveModel",
    "ECGDualEncoderModel",
    "ECGTextPreTrainedModel",
    "ECGTextDualEncoder",
    "build_projection",
    "pool_token_states",
    "pair_contrastive_loss",
    "MAX_LOGIT_SCALE",
]
