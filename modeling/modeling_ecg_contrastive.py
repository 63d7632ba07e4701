"""The contrastive core every cardiomm ECG model builds on: towers, projections, pooling, temperature, locking.

An ECG tower ([`ECGEncoderModel`]) and one or more *partner towers* named by modality (`partner_modalities`:
`("text",)` for the ECG–report dual encoder, `("ehr",)` for the ECG–sEHR one, `("ehr", "text")` for the
tri-modal model) are mapped by projection heads into a joint space, where paired samples are pulled together by a
contrastive loss over the batch (gathered across processes when training distributed). For each partner `m` the
configuration ([`ECGContrastiveConfig`]) holds `m_config`, `m_pooling` and `freeze_m_layers`; the model holds
`m_model` and `m_projection`. A partner tower is built from the class `tower_classes[m]` names (a sibling class,
so a checkpoint rebuilds it without cardiomm) or, when none is named, with `AutoModel.from_config`.

* [`ECGContrastivePreTrainedModel`]: the one `PreTrainedModel` of the family (configuration class, weight
  initialisation of the projections and `logit_scale`).
* [`ECGContrastiveModel`]: building the towers, [`~ECGContrastiveModel.lock`]ing what the configuration freezes,
  encoding and pooling, the temperature.
* [`ECGDualEncoderModel`]: one ECG–partner pair: logits built once ([`contrastive_logits`]), CLIP or ConVIRT loss
  on them, MERL's optional uni-modal alignment. `ECGTextDualEncoder` and `ECGSEHRDualEncoder` name the partner,
  its inputs and their output class.

Locking (`freeze_ecg`, `freeze_<m>_layers`, and a tower pooler the loss does not use) is one mechanism, in the
spirit of open_clip's `lock()`: the locked modules get `requires_grad=False` and stay in eval mode (no dropout,
fixed batch-norm statistics). With no locked parameter and no input that needs a gradient, autograd records
nothing for a locked prefix: it costs no activation memory, and training starts at the first unlocked layer.
[`~ECGContrastiveModel.train`] (hence `eval()`, and `from_pretrained`, which ends in `eval()`) re-applies the lock,
so a loaded model is locked as its configuration says.
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

from .configuration_ecg_contrastive import ECGContrastiveConfig
from .configuration_ecg_encoder import ECG_ENCODER_PRESETS, ECGEncoderConfig
from .contrastive_losses import contrastive_logits, local_logits, paired_contrastive_loss, unimodal_alignment_loss
from .configuration_sehr_bert import SEHRBertConfig
from .modeling_ecg_encoder import ECGEncoderModel, ECGEncoderOutput, masked_mean
from .modeling_sehr_bert import SEHRBertModel

# CLIP caps the learnable inverse temperature at 100 (log 100 = 4.6052).
MAX_LOGIT_SCALE: float = 4.605170185988092


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


class ECGAttentionPoolProjection(nn.Module):
    """MERL's ECG head for ResNets: a 1x1 convolution (`downconv`) of the feature map to `projection_dim` channels,
    then attention pooling (CLIP's `AttentionPool2d` in 1D): a class token attends, as the only query, to itself and
    every position, with learned position embeddings; `c_proj` maps the result to the ECG embedding.

    As in MERL, the class token receives the first position embedding twice (once on its own, once with the
    sequence). The position embeddings cover `num_positions` feature-map positions (313 for MERL's ResNets on 5000
    samples); a feature map of another length gets them interpolated linearly, which is exact only at that length.
    Positions marked absent in `position_mask` (padding) are not attended to and not averaged.

    Returns the ECG embedding (batch, projection_dim), not normalised, and the UMA latent: the (masked) time average
    of the `downconv` features.
    """

    def __init__(self, in_channels: int, projection_dim: int, num_heads: int, num_positions: int) -> None:
        super().__init__()
        self.num_positions = num_positions
        self.downconv = nn.Conv1d(in_channels, projection_dim, kernel_size=1)
        self.class_embedding = nn.Parameter(torch.empty(projection_dim))
        self.position_embedding = nn.Parameter(torch.empty(num_positions + 1, projection_dim))
        self.attention = nn.MultiheadAttention(projection_dim, num_heads, batch_first=True)
        self.c_proj = nn.Linear(projection_dim, projection_dim)

    def position_embeddings_for(self, length: int) -> torch.Tensor:
        """The class position embedding followed by `length` sequence position embeddings."""
        if length == self.num_positions:
            return self.position_embedding
        sequence = F.interpolate(
            self.position_embedding[1:].T[None], size=length, mode="linear", align_corners=False
        )[0].T
        return torch.cat([self.position_embedding[:1], sequence], dim=0)

    def forward(
        self, features: torch.Tensor, position_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`features`: the tower's feature map as a sequence (batch, time', channels); `position_mask`: (batch,
        time') bool, True where a position sees a recorded sample."""
        hidden = self.downconv(features.transpose(1, 2)).transpose(1, 2)  # (batch, time', projection_dim)
        latent = hidden.mean(dim=1) if position_mask is None else masked_mean(hidden, position_mask[:, :, None], 1)
        positions = self.position_embeddings_for(hidden.shape[1]).to(hidden.dtype)
        class_token = (self.class_embedding + positions[0]).expand(hidden.shape[0], 1, -1)
        tokens = torch.cat([class_token, hidden], dim=1) + positions
        key_padding_mask = None
        if position_mask is not None and not bool(position_mask.all()):
            key_padding_mask = torch.cat([position_mask.new_ones(position_mask.shape[0], 1), position_mask], dim=1)
            key_padding_mask = ~key_padding_mask
        pooled, _ = self.attention(tokens[:, :1], tokens, tokens, key_padding_mask=key_padding_mask,
                                   need_weights=False)
        return self.c_proj(pooled[:, 0]), latent


def build_ecg_head(config: PreTrainedConfig) -> nn.Module:
    """The ECG head of a dual encoder: [`ECGAttentionPoolProjection`] for `ecg_projection_type="attention_pool"`,
    else [`build_projection`] of the tower's pooled output."""
    ecg_config = config.ecg_config
    if getattr(config, "resolved_ecg_projection_type", config.projection_type) == "attention_pool":
        return ECGAttentionPoolProjection(
            ecg_config.hidden_size, config.projection_dim, config.attention_pool_heads, config.attention_pool_positions
        )
    return build_projection(ecg_config.hidden_size, config, "ecg")


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


class ECGContrastivePreTrainedModel(PreTrainedModel):
    """The `PreTrainedModel` of the ECG contrastive family: configuration class and the initialisation of the
    projections and `logit_scale`.

    The towers are `PreTrainedModel`s and initialise themselves with their own `_init_weights`.
    """

    config_class = ECGContrastiveConfig
    config: ECGContrastiveConfig
    base_model_prefix = "ecg_contrastive"
    main_input_name = "input_values"
    input_modalities = ("ecg",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Projection linears: normal with std `in_features ** -0.5` (CLIP's projection init), biases 0;
        batch norms: weight 1, bias 0, running statistics 0 / 1 / 0; attention pooling: `downconv` and the
        embeddings normal with std `channels ** -0.5`, attention input projection Xavier-uniform (torch's),
        biases 0; `logit_scale`: `logit_scale_init_value`."""
        if isinstance(module, ECGAttentionPoolProjection):
            width = module.class_embedding.shape[0]
            init.normal_(module.downconv.weight, std=module.downconv.in_channels**-0.5)
            init.zeros_(module.downconv.bias)
            init.normal_(module.class_embedding, std=width**-0.5)
            init.normal_(module.position_embedding, std=width**-0.5)
        elif isinstance(module, nn.MultiheadAttention):
            init.xavier_uniform_(module.in_proj_weight)
            init.zeros_(module.in_proj_bias)
        elif isinstance(module, nn.Linear):
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
    """An ECG tower and the partner towers of `config.partner_modalities`, with the building, locking, pooling and
    temperature every cardiomm ECG contrastive model shares (see the module docstring).

    Subclasses optionally set `tower_classes`, build their projection heads after calling `super().__init__`, then
    call `self.init_logit_scale()` and finish with `self.post_init()`.

    Args:
        config: the model configuration ([`ECGContrastiveConfig`] or a subclass).
        ecg_model: an existing ECG tower to use instead of building one from `config.ecg_config`.
        partner_models: existing partner towers by modality, instead of building them from their configs.
    """

    tower_classes: ClassVar[dict[str, type[PreTrainedModel]]] = {}

    def __init__(
        self,
        config: ECGContrastiveConfig,
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

    @property
    def partner_modalities(self) -> tuple[str, ...]:
        """The modalities of the partner towers, as the configuration names them."""
        return tuple(self.config.partner_modalities)

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

    def post_init(self) -> None:
        """transformers' `post_init` (weight initialisation), then [`lock`]."""
        super().post_init()
        self.lock()

    def tower(self, modality: str) -> nn.Module:
        """The tower of `modality` (`"ecg"` or a partner modality)."""
        return getattr(self, f"{modality}_model")

    # ------------------------------------------------------------------------------------------------- locking
    def tower_frozen(self, modality: str) -> bool:
        """Whether the whole tower of `modality` is locked."""
        if modality == "ecg":
            return bool(self.config.freeze_ecg)
        return getattr(self.config, f"freeze_{modality}_layers") == -1

    def locked_modules(self) -> list[nn.Module]:
        """The modules the configuration locks: the ECG tower with `freeze_ecg`; for each partner `m` the whole
        tower (`freeze_m_layers=-1`) or its embeddings and first `N` layers (BERT-like towers); and a tower pooler
        the loss does not use (`m_pooling` other than `"pooler"`: trainable parameters that never get a gradient
        would stall `DistributedDataParallel`)."""
        modules: list[nn.Module] = [self.ecg_model] if self.config.freeze_ecg else []
        for modality in self.partner_modalities:
            tower = self.tower(modality)
            num_frozen = getattr(self.config, f"freeze_{modality}_layers")
            pooler = getattr(tower, "pooler", None)
            if getattr(self.config, f"{modality}_pooling") != "pooler" and isinstance(pooler, nn.Module):
                modules.append(pooler)
            if num_frozen == -1:
                modules.append(tower)
            elif num_frozen > 0:
                embeddings = getattr(tower, "embeddings", None)
                layers = getattr(getattr(tower, "encoder", None), "layer", None)
                if not isinstance(embeddings, nn.Module) or not isinstance(layers, nn.ModuleList):
                    raise ValueError(
                        f"freeze_{modality}_layers={num_frozen} needs a BERT-like {modality} tower with `embeddings` "
                        f"and `encoder.layer`; {type(tower).__name__} has none. Use freeze_{modality}_layers=-1 "
                        "(whole tower) or 0."
                    )
                if num_frozen > len(layers):
                    raise ValueError(
                        f"freeze_{modality}_layers={num_frozen} exceeds the {modality} tower's {len(layers)} layers."
                    )
                modules.extend([embeddings, *layers[:num_frozen]])
        return modules

    def lock(self) -> None:
        """Lock what the configuration freezes ([`locked_modules`]): `requires_grad=False` and eval mode.

        Called on construction and by [`train`] / `eval()` (so also at the end of `from_pretrained`, whose loading
        replaces the parameters). To train a locked part, change the configuration field (e.g.
        `config.freeze_text_layers = 0`) and set `requires_grad` on its parameters again.
        """
        for module in self.locked_modules():
            module.requires_grad_(False)
            module.eval()

    def train(self, mode: bool = True) -> ECGContrastiveModel:
        """Set train/eval mode; locked modules stay locked (eval mode, no gradients)."""
        super().train(mode)
        self.lock()
        return self

    # ------------------------------------------------------------------------------------------------ encoders
    def encode_ecg(
        self,
        input_values: torch.Tensor,
        lead_mask: torch.Tensor | None = None,
        time_mask: torch.Tensor | None = None,
        **tower_kwargs: Any,
    ) -> ECGEncoderOutput:
        """Output of the ECG tower; its `pooler_output` (batch, ecg hidden) is the ECG latent fed to the
        projection."""
        return self.ecg_model(input_values, lead_mask=lead_mask, time_mask=time_mask, return_dict=True, **tower_kwargs)

    def encode_partner(
        self, modality: str, inputs: Mapping[str, torch.Tensor | None], **tower_kwargs: Any
    ) -> tuple[torch.Tensor, ModelOutput]:
        """Pooled representation of a partner tower ((batch, hidden), before projection) and the tower output.

        `inputs` are the tower's keyword inputs (`input_ids`, `attention_mask`, ...); `None` values are left out.
        `tower_kwargs` (`output_hidden_states`, `output_attentions`) are passed to the tower.
        """
        inputs = {k: v for k, v in inputs.items() if v is not None}
        tower = self.tower(modality)
        outputs = None
        needs_grad = torch.is_grad_enabled() and not self.tower_frozen(modality)
        if not needs_grad and not any(tower_kwargs.values()):
            outputs = forward_without_padding(tower, inputs)  # None: not applicable
        if outputs is None:
            outputs = tower(**inputs, **tower_kwargs, return_dict=True)
        pooling = getattr(self.config, f"{modality}_pooling")
        return pool_token_states(outputs, inputs.get("attention_mask"), pooling, modality), outputs

    def scale(self) -> torch.Tensor:
        """The inverse temperature `exp(logit_scale)`, with `logit_scale` capped at log 100, shape (1,)."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def get_ecg_features(
        self,
        input_values: torch.Tensor,
        lead_mask: torch.Tensor | None = None,
        time_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ECGEncoderOutput | tuple:
        """The ECG tower's output with `pooler_output` replaced by the projected ECG embedding, shape
        (batch, projection_dim), *not* L2-normalised (transformers' `get_image_features` convention: normalise it
        for cosine similarity).

        Args:
            input_values: ECGs, (batch, num_leads, time).
            lead_mask: (batch, num_leads) bool, True for recorded leads.
            time_mask: (batch, time), 1 for recorded samples, 0 for padding.
            output_hidden_states: also return the tower's hidden states.
            return_dict: return a `ModelOutput` (default) or a tuple.
        """
        outputs = self.encode_ecg(input_values, lead_mask, time_mask, output_hidden_states=output_hidden_states)
        outputs.pooler_output = self.project_ecg_output(outputs, time_mask)[0]
        return outputs if return_dict_of(self.config, return_dict) else outputs.to_tuple()

    def project_ecg_output(
        self, ecg_outputs: ECGEncoderOutput, time_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ECG tower's output in the model's ECG embedding space (the joint space for a dual encoder), not
        normalised, and the ECG latent MERL's uni-modal alignment contrasts: the tower's `pooler_output` through
        `ecg_projection` and that `pooler_output`; with MERL's attention-pooling head, the head's embedding of the
        feature map and the time average of its `downconv` features."""
        if isinstance(self.ecg_projection, ECGAttentionPoolProjection):
            features = ecg_outputs.last_hidden_state
            position_mask = None
            if time_mask is not None:
                position_mask = self.ecg_model.encoder.downsample_time_mask(time_mask, features.shape[1])
            return self.ecg_projection(features, position_mask)
        return self.ecg_projection(ecg_outputs.pooler_output), ecg_outputs.pooler_output

    def get_partner_features(
        self,
        modality: str,
        inputs: Mapping[str, torch.Tensor | None],
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> ModelOutput | tuple:
        """A partner tower's output with `pooler_output` replaced by its projected, *not* L2-normalised,
        embedding (through `<modality>_projection`)."""
        tower_kwargs = tower_options(output_hidden_states, output_attentions)
        pooled, outputs = self.encode_partner(modality, inputs, **tower_kwargs)
        outputs.pooler_output = getattr(self, f"{modality}_projection")(pooled)
        return outputs if return_dict_of(self.config, return_dict) else outputs.to_tuple()

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

    @staticmethod
    def load_text_tower(
        source: str | os.PathLike | PreTrainedConfig | PreTrainedModel, **kwargs: Any
    ) -> tuple[PreTrainedModel, str | None]:
        """A text tower and where its weights come from: a pretrained text encoder (Hub id or folder), a
        `PreTrainedModel`, or a `PreTrainedConfig` (random weights, no source)."""
        if isinstance(source, PreTrainedModel):
            return source, source.config.name_or_path or None
        if isinstance(source, PreTrainedConfig):
            return AutoModel.from_config(source), None
        return AutoModel.from_pretrained(source, **kwargs), str(source)

    @staticmethod
    def load_ehr_tower(
        source: str | os.PathLike | SEHRBertConfig | PreTrainedModel, **kwargs: Any
    ) -> tuple[SEHRBertModel, str | None]:
        """An sEHR-BERT tower and where its weights come from: a saved sEHR-BERT (an `SEHRBertForMaskedLM`
        checkpoint from MLM pre-training works: its encoder is loaded), an `SEHRBertModel` (or
        `SEHRBertForMaskedLM`, whose encoder is used), or an `SEHRBertConfig` (random weights, no source)."""
        if isinstance(source, SEHRBertConfig):
            return SEHRBertModel(source), None
        if isinstance(source, PreTrainedModel):
            return getattr(source, "sehr_bert", source), source.config.name_or_path or None
        return SEHRBertModel.from_pretrained(source, **kwargs), str(source)


class ECGDualEncoderModel(ECGContrastiveModel):
    """ECG–partner contrastive dual encoder with one partner tower (`config.partner_modalities = (m,)`):
    projections `ecg_projection` and `m_projection` into one space of `projection_dim` dimensions, logits built
    once, CLIP or ConVIRT loss on them and MERL's optional uni-modal alignment. Subclasses name the partner's
    inputs and build their output class from [`forward_pair`]'s pieces."""

    def __init__(
        self,
        config: ECGContrastiveConfig,
        ecg_model: ECGEncoderModel | None = None,
        partner_model: PreTrainedModel | None = None,
    ) -> None:
        partner = config.partner_modalities[0]
        super().__init__(config, ecg_model=ecg_model, partner_models={partner: partner_model})
        self.ecg_projection = build_ecg_head(config)
        partner_hidden = getattr(config, f"{partner}_config").hidden_size
        setattr(self, f"{partner}_projection", build_projection(partner_hidden, config, partner))
        if config.unimodal_alignment and config.uma_projection:
            latent_size = (
                config.projection_dim if isinstance(self.ecg_projection, ECGAttentionPoolProjection)
                else config.ecg_config.hidden_size
            )
            self.uma_projections = nn.ModuleList(
                [nn.Linear(latent_size, config.projection_dim, bias=False) for _ in range(2)]
            )
        self.init_logit_scale()
        self.post_init()

    def uma_view_projections(self) -> nn.ModuleList | None:
        """MERL's per-view UMA linear layers (`uma_projection=True`), else `None`."""
        return getattr(self, "uma_projections", None)

    @property
    def partner_modality(self) -> str:
        """The modality of the one partner tower."""
        return self.partner_modalities[0]

    def get_input_embeddings(self) -> nn.Module:
        """The token embeddings of the partner tower."""
        return self.tower(self.partner_modality).get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.tower(self.partner_modality).set_input_embeddings(value)

    def forward_pair(
        self,
        input_values: torch.Tensor,
        partner_inputs: Mapping[str, torch.Tensor | None],
        lead_mask: torch.Tensor | None = None,
        time_mask: torch.Tensor | None = None,
        return_loss: bool = True,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        partner_pooled: torch.Tensor | None = None,
        ecg_tower_kwargs: Mapping[str, Any] | None = None,
    ) -> DualEncoderPass:
        """Embeddings, logits (built once) and losses of a batch of ECG–partner pairs.

        `partner_pooled` (batch, partner hidden): the partner tower's pooled output, precomputed (a tower frozen
        whole always gives the same one); when given, the partner tower is not run and `partner_inputs` are
        ignored. `ecg_tower_kwargs` replace the ECG tower's options (default: `output_hidden_states`), e.g. with a
        `token_index` of the tokens to keep.
        """
        if ecg_tower_kwargs is None:
            ecg_tower_kwargs = tower_options(output_hidden_states)
        ecg_outputs = self.encode_ecg(input_values, lead_mask, time_mask, **ecg_tower_kwargs)
        partner_outputs = None
        if partner_pooled is None:
            partner_pooled, partner_outputs = self.encode_partner(
                self.partner_modality, partner_inputs, **tower_options(output_hidden_states, output_attentions)
            )
        ecg_projected, ecg_latent = self.project_ecg_output(ecg_outputs, time_mask)
        ecg_embeds = F.normalize(ecg_projected, dim=-1)
        partner_embeds = F.normalize(getattr(self, f"{self.partner_modality}_projection")(partner_pooled), dim=-1)

        logit_scale = self.scale()
        logits_per_ecg, logits_per_partner = contrastive_logits(ecg_embeds, partner_embeds, logit_scale)
        loss = contrastive = uma = None
        if return_loss:
            contrastive = paired_contrastive_loss(
                logits_per_ecg, logits_per_partner, self.config.loss, self.config.convirt_lambda
            )
            loss = contrastive
            if self.config.unimodal_alignment:
                uma = unimodal_alignment_loss(
                    ecg_latent, dropout_p=self.config.uma_dropout, logit_scale=logit_scale, training=self.training,
                    gather=True, view_projections=self.uma_view_projections(),
                )
                loss = loss + self.config.uma_weight * uma
        return DualEncoderPass(
            loss=loss,
            contrastive_loss=contrastive,
            unimodal_alignment_loss=uma,
            logits_per_ecg=local_logits(logits_per_ecg),
            ecg_embeds=ecg_embeds,
            partner_embeds=partner_embeds,
            ecg_model_output=ecg_outputs,
            partner_model_output=partner_outputs,
        )


@dataclass
class DualEncoderPass(ModelOutput):
    """What one forward pass of an ECG dual encoder computes, before the model names the partner's fields.

    `logits_per_ecg` is the local (batch, batch) block; the partner's logits are its transpose.
    """

    loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    unimodal_alignment_loss: torch.FloatTensor | None = None
    logits_per_ecg: torch.FloatTensor | None = None
    ecg_embeds: torch.FloatTensor | None = None
    partner_embeds: torch.FloatTensor | None = None
    ecg_model_output: ECGEncoderOutput | None = None
    partner_model_output: ModelOutput | None = None


def ehr_tower_inputs(
    ehr_input_ids: torch.Tensor,
    ehr_attention_mask: torch.Tensor | None = None,
    ehr_time_ids: torch.Tensor | None = None,
    ehr_type_ids: torch.Tensor | None = None,
) -> dict[str, torch.Tensor | None]:
    """The `ehr_*` code inputs of a composite model under sEHR-BERT's own input names."""
    return {"input_ids": ehr_input_ids, "attention_mask": ehr_attention_mask, "time_ids": ehr_time_ids,
            "type_ids": ehr_type_ids}


def tower_options(output_hidden_states: bool | None, output_attentions: bool | None = None) -> dict[str, bool]:
    """The output options a caller set, as tower keyword arguments (unset ones left to the tower's config)."""
    options = {"output_hidden_states": output_hidden_states, "output_attentions": output_attentions}
    return {k: v for k, v in options.items() if v is not None}


def return_dict_of(config: PreTrainedConfig, return_dict: bool | None) -> bool:
    return return_dict if return_dict is not None else config.return_dict


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
        groups.append(order[start_of[end]:end])
        end = start_of[end]
    return groups[::-1]


def forward_without_padding(
    tower: nn.Module, inputs: Mapping[str, torch.Tensor], overhead: int = 128, min_saving: float = 0.1
) -> ModelOutput | None:
    """Run a tower that needs no gradient on groups of similar-length rows, each padded only to its own longest row.

    Token-wise work (every linear layer) then scales with the real tokens of the batch instead of batch x longest
    row. Only for right-padded 2-D inputs, a tower in eval mode or without autograd, and when at least `min_saving`
    of the token positions are saved; returns `None` otherwise (the caller runs the tower on the whole batch). Rows
    are computed independently, so `pooler_output` and the `last_hidden_state` of real tokens equal those of the
    whole-batch call up to floating-point rounding; states of padding positions are zero.
    """
    mask = inputs.get("attention_mask")
    if mask is None or mask.dim() != 2 or mask.shape[0] < 2:
        return None
    if torch.is_grad_enabled() and tower.training:  # dropout draws must match the whole-batch call
        return None
    if torch.compiler.is_compiling():  # traced graphs (torch.export) take the whole-batch path, free of data branches
        return None
    if any(not isinstance(v, torch.Tensor) or v.shape != mask.shape or v.requires_grad for v in inputs.values()):
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


__all__ = [
    "MAX_LOGIT_SCALE",
    "build_projection",
    "build_ecg_head",
    "ECGAttentionPoolProjection",
    "pool_token_states",
    "forward_without_padding",
    "ECGContrastivePreTrainedModel",
    "ECGContrastiveModel",
    "ECGDualEncoderModel",
    "DualEncoderPass",
    "ehr_tower_inputs",
    "tower_options",
    "return_dict_of",
]
