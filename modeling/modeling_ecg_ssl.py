"""ECG-only self-supervised contrastive learning with several positives per anchor ("good views" of ECGs, SimCLR,
CLOCS, PCLR, 3KG).

An ECG encoder ([`ECGEncoderModel`]) pools each ECG (view) of the batch; a projection head (SimCLR's
`Linear -> ReLU -> Linear`, or one linear layer) maps it to `projection_dim` dimensions, L2-normalised. The
positives of each anchor come from up to three sources, combined with OR:

* `positive_ids` (batch,): ECGs with the same id are positives (two views of one ECG, one patient, one
  demographic group, one rhythm);
* `positive_attributes` (batch, A): ECGs whose attribute vectors lie within `config.attribute_threshold`
  (Euclidean distance) are positives; a row with a NaN (or an infinite value) is nobody's positive;
* `positive_mask`: an explicit boolean mask, (batch, batch) over the local batch or (batch, world_size * batch)
  over the gathered one.

The loss is `multi_positive_contrastive_loss` over the batch of every process (ids and attributes are gathered,
the embeddings are gathered with their gradients): on each process the loss of its local anchors, whose mean over
processes is the loss of one process on the whole batch (and so are the data-parallel averaged gradients).

[`ECGSelfSupervisedModel.save_encoder`] writes the encoder alone as an `ECGEncoderModel` checkpoint: what linear
evaluation and fine-tuning load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

from .configuration_ecg_encoder import ECGEncoderConfig
from .configuration_ecg_ssl import ECGSelfSupervisedConfig
from .contrastive_losses import _gather_no_grad, _world, multi_positive_contrastive_loss
from .modeling_ecg_contrastive import ECGContrastiveModel, return_dict_of, tower_options
from .modeling_ecg_encoder import ECGEncoderModel, ECGEncoderOutput


@dataclass
class ECGSelfSupervisedOutput(ModelOutput):
    """
    Output of [`ECGSelfSupervisedModel`].

    Args:
        loss (`torch.FloatTensor` of shape (), *optional*, returned when `return_loss` is on):
            Multi-positive contrastive loss of the local anchors against the (gathered) batch; its mean over
            processes is the loss of the whole batch. 0 when no anchor has a positive.
        embeds (`torch.FloatTensor` of shape (batch, projection_dim)):
            L2-normalised output of the projection head, what the loss compares.
        pooler_output (`torch.FloatTensor` of shape (batch, hidden_size)):
            The encoder's pooled representation (what linear evaluation uses).
        positive_pairs (`torch.FloatTensor` of shape (), *optional*, returned when positives are given):
            Mean number of positives (self excluded) per local anchor among the gathered batch, detached (for
            logging; its mean over processes is that of the whole batch).
        ecg_model_output (`ECGEncoderOutput`): Output of the encoder (hidden states when asked for).
    """

    loss: torch.FloatTensor | None = None
    embeds: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    positive_pairs: torch.FloatTensor | None = None
    ecg_model_output: ECGEncoderOutput | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(
            self[k] if not k.endswith("_model_output") else getattr(self, k).to_tuple() for k in self.keys()
        )


def build_ssl_projection(in_features: int, config: ECGSelfSupervisedConfig) -> nn.Sequential:
    """SimCLR's projection head into `config.projection_dim` dimensions: `Linear -> activation -> Linear` with
    `config.resolved_projection_hidden_size` hidden units (the encoder's pooled size by default), or one linear
    layer when `projection_hidden_size=0`."""
    hidden = config.resolved_projection_hidden_size
    if hidden == 0:
        return nn.Sequential(nn.Linear(in_features, config.projection_dim))
    return nn.Sequential(
        nn.Linear(in_features, hidden), ACT2FN[config.projection_activation], nn.Linear(hidden, config.projection_dim)
    )


def build_positive_mask(
    batch_size: int,
    positive_ids: torch.Tensor | None = None,
    positive_attributes: torch.Tensor | None = None,
    positive_mask: torch.Tensor | None = None,
    attribute_threshold: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Positives of the local anchors among the gathered batch, (batch_size, world_size * batch_size) bool, columns
    ordered by rank (the layout `multi_positive_contrastive_loss` takes); the OR of every source given.

    Args:
        batch_size: local batch size `B`.
        positive_ids: (B,) integer ids; equal ids are positives. Gathered from every process.
        positive_attributes: (B, A) floats; rows within `attribute_threshold` (Euclidean distance) are positives,
            rows with a non-finite value are never positive. Gathered from every process.
        positive_mask: (B, B) over the local batch (placed on this process's block, the rest False) or
            (B, world_size * B) over the gathered batch.
        attribute_threshold: the cut-off `h` of the attributes.
        device: device of the mask (default: that of the first source given).

    Self-pairs (the diagonal of this process's block) are left as computed; the loss ignores them.
    """
    sources = [s for s in (positive_ids, positive_attributes, positive_mask) if s is not None]
    if not sources:
        raise ValueError("build_positive_mask needs positive_ids, positive_attributes or positive_mask.")
    rank, world_size = _world()
    # every check before the first collective: a bad input raises its own error rather than in a gather
    if positive_ids is not None and (
        positive_ids.shape != (batch_size,) or positive_ids.is_floating_point() or positive_ids.is_complex()
    ):
        raise ValueError(f"positive_ids must be an integer tensor of shape ({batch_size},) (one id per ECG), got "
                         f"{positive_ids.dtype} of shape {tuple(positive_ids.shape)}.")
    if positive_attributes is not None:
        if positive_attributes.dim() != 2 or positive_attributes.shape[0] != batch_size:
            raise ValueError(f"positive_attributes must have shape ({batch_size}, num_attributes) (one row per ECG), "
                             f"got {tuple(positive_attributes.shape)}.")
        if positive_attributes.is_complex() or positive_attributes.dtype == torch.bool:
            raise ValueError(f"positive_attributes must be real numbers, got {positive_attributes.dtype}.")
    if positive_mask is not None:
        if positive_mask.is_floating_point() or positive_mask.is_complex():
            raise ValueError(f"positive_mask must be boolean (or 0/1 integers), got {positive_mask.dtype}.")
        if positive_mask.shape not in ((batch_size, batch_size), (batch_size, world_size * batch_size)):
            raise ValueError(
                f"positive_mask must have shape ({batch_size}, {batch_size}) (local batch) or ({batch_size}, "
                f"{world_size * batch_size}) (local anchors x gathered batch), got {tuple(positive_mask.shape)}."
            )
    device = torch.device(device) if device is not None else sources[0].device
    mask = torch.zeros(batch_size, world_size * batch_size, dtype=torch.bool, device=device)

    if positive_ids is not None:
        ids = positive_ids.to(device=device, dtype=torch.long)
        all_ids = _gather_no_grad(ids) if world_size > 1 else ids
        mask |= ids[:, None] == all_ids[None, :]

    if positive_attributes is not None:
        attributes = positive_attributes.detach().to(device=device)
        attributes = attributes.to(torch.float64 if attributes.dtype == torch.float64 else torch.float32)
        all_attributes = _gather_no_grad(attributes) if world_size > 1 else attributes
        valid = torch.isfinite(attributes).all(dim=1)
        all_valid = torch.isfinite(all_attributes).all(dim=1)
        # exact pairwise distances (no matrix-product shortcut), with invalid rows zeroed and masked out afterwards
        distances = torch.cdist(attributes.nan_to_num(0.0, 0.0, 0.0), all_attributes.nan_to_num(0.0, 0.0, 0.0),
                                compute_mode="donot_use_mm_for_euclid_dist")
        mask |= (distances <= attribute_threshold) & valid[:, None] & all_valid[None, :]

    if positive_mask is not None:
        given = positive_mask.to(device=device, dtype=torch.bool)
        if given.shape == (batch_size, world_size * batch_size):
            mask |= given
        else:  # (B, B): this process's block
            mask[:, rank * batch_size:(rank + 1) * batch_size] |= given
    return mask


class ECGSelfSupervisedModel(PreTrainedModel):
    """ECG encoder + projection head trained with the multi-positive contrastive loss (see the module docstring).

    Args:
        config: the model configuration.
        ecg_model: an existing encoder to use instead of building one from `config.ecg_config`.
    """

    config_class = ECGSelfSupervisedConfig
    config: ECGSelfSupervisedConfig
    base_model_prefix = "ecg_self_supervised"
    main_input_name = "input_values"
    input_modalities = ("ecg",)
    supports_gradient_checkpointing = True  # the encoder's blocks / layers are GradientCheckpointingLayers

    def __init__(self, config: ECGSelfSupervisedConfig, ecg_model: ECGEncoderModel | None = None) -> None:
        super().__init__(config)
        if ecg_model is not None and ecg_model.config.hidden_size != config.ecg_config.hidden_size:
            raise ValueError(f"ecg_model pools {ecg_model.config.hidden_size} features, config.ecg_config says "
                             f"{config.ecg_config.hidden_size}.")
        self.ecg_model = ecg_model if ecg_model is not None else ECGEncoderModel(config.ecg_config)
        # the encoder uses the composite configuration's sub-config, keeping its attention implementation
        config.ecg_config._attn_implementation = self.ecg_model.config._attn_implementation
        self.ecg_model.config = config.ecg_config
        self.projection = build_ssl_projection(config.ecg_config.hidden_size, config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Projection head: weights normal with std `in_features ** -0.5`, biases 0 (the encoder initialises
        itself)."""
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=module.in_features**-0.5)
            if module.bias is not None:
                init.zeros_(module.bias)

    @property
    def lora_target_modules(self) -> list[str]:
        """Module-name suffixes of the encoder layers LoRA adapts (the encoder's `lora_target_modules`)."""
        return self.ecg_model.lora_target_modules

    @property
    def lora_modules_to_save(self) -> list[str]:
        """Modules trained whole next to LoRA weights: the encoder's (its batch norms) and the projection head."""
        return [*self.ecg_model.lora_modules_to_save, "projection"]

    def forward(
        self,
        input_values: torch.Tensor,
        lead_mask: torch.Tensor | None = None,
        time_mask: torch.Tensor | None = None,
        positive_ids: torch.Tensor | None = None,
        positive_attributes: torch.Tensor | None = None,
        positive_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> ECGSelfSupervisedOutput | tuple:
        """
        Args:
            input_values (`torch.FloatTensor` of shape (batch, num_leads, time)): ECGs (views).
            lead_mask (`torch.BoolTensor` of shape (batch, num_leads), *optional*): True for recorded leads.
            time_mask (`torch.LongTensor` of shape (batch, time), *optional*): 1 for recorded samples, 0 for padding.
            positive_ids (`torch.LongTensor` of shape (batch,), *optional*): ECGs with the same id are positives
                (over the batch of every process).
            positive_attributes (`torch.FloatTensor` of shape (batch, num_attributes), *optional*): ECGs within
                `config.attribute_threshold` of each other (Euclidean distance) are positives; a row with a NaN is
                nobody's positive.
            positive_mask (`torch.BoolTensor` of shape (batch, batch) or (batch, world_size * batch), *optional*):
                explicit positives over the local batch or over the gathered batch (columns ordered by rank).
            return_loss (`bool`, *optional*): compute the loss; defaults to True when any positive input is given
                (it needs one).
            output_hidden_states (`bool`, *optional*): return the encoder's hidden states in `ecg_model_output`.
            output_attentions (`bool`, *optional*): accepted for API compatibility; the ECG encoders return no
                attention weights.
            return_dict (`bool`, *optional*): return an [`ECGSelfSupervisedOutput`] instead of a tuple.
        """
        return_dict = return_dict_of(self.config, return_dict)
        has_positives = any(s is not None for s in (positive_ids, positive_attributes, positive_mask))
        return_loss = has_positives if return_loss is None else return_loss
        if return_loss and not has_positives:
            raise ValueError("return_loss=True needs positives: pass positive_ids, positive_attributes or "
                             "positive_mask.")
        ecg_outputs = self.ecg_model(input_values, lead_mask=lead_mask, time_mask=time_mask, return_dict=True,
                                     **tower_options(output_hidden_states))
        pooled = ecg_outputs.pooler_output
        embeds = F.normalize(self.projection(pooled), dim=-1)

        loss = positive_pairs = None
        if has_positives:
            batch_size = embeds.shape[0]
            mask = build_positive_mask(batch_size, positive_ids, positive_attributes, positive_mask,
                                       self.config.attribute_threshold, device=embeds.device)
            rank = _world()[0]
            rows = torch.arange(batch_size, device=embeds.device)
            others = mask.clone()
            others[rows, rows + rank * batch_size] = False
            positive_pairs = others.sum(dim=1).to(embeds.dtype).mean()
            if return_loss:
                loss = multi_positive_contrastive_loss(
                    embeds, positive_mask=mask, temperature=self.config.temperature,
                    positive_aggregation=self.config.positive_aggregation,
                )
        output = ECGSelfSupervisedOutput(
            loss=loss, embeds=embeds, pooler_output=pooled, positive_pairs=positive_pairs,
            ecg_model_output=ecg_outputs,
        )
        return output if return_dict else output.to_tuple()

    def save_encoder(
        self, save_directory: str | os.PathLike, feature_extractor: Any | None = None, **kwargs: Any
    ) -> None:
        """Save the encoder alone as an [`ECGEncoderModel`] checkpoint (loads with `AutoModel`, with or without
        cardiomm installed) and, when given, the feature extractor next to it.

        Args:
            save_directory: the folder to write.
            feature_extractor: an `ECGFeatureExtractor` (or any object with `save_pretrained`) to save with it.
            kwargs: passed to `ECGEncoderModel.save_pretrained` (`safe_serialization`, `push_to_hub`, ...).
        """
        self.ecg_model.save_pretrained(save_directory, **kwargs)
        if feature_extractor is not None:
            feature_extractor.save_pretrained(save_directory)

    @classmethod
    def from_encoder_pretrained(
        cls,
        ecg_model_name_or_path: str | os.PathLike | ECGEncoderConfig | ECGEncoderModel,
        ecg_model_kwargs: dict[str, Any] | None = None,
        **config_kwargs: Any,
    ) -> ECGSelfSupervisedModel:
        """A model around an existing encoder; the projection head starts fresh.

        Args:
            ecg_model_name_or_path: a saved ECG encoder (folder or Hub id), an `ECGEncoderModel`, or an
                `ECGEncoderConfig` / backbone preset name (random weights).
            ecg_model_kwargs: extra arguments of the encoder's `from_pretrained`.
            config_kwargs: other fields of [`ECGSelfSupervisedConfig`] (`projection_dim`, `temperature`, ...).
        """
        ecg_model = ECGContrastiveModel.load_ecg_tower(ecg_model_name_or_path, **(ecg_model_kwargs or {}))
        config = cls.config_class(ecg_config=ecg_model.config.to_dict(), **config_kwargs)
        return cls(config, ecg_model=ecg_model)


ECGSelfSupervisedModel.register_for_auto_class("AutoModel")

__all__ = [
    "ECGSelfSupervisedOutput",
    "ECGSelfSupervisedModel",
    "build_ssl_projection",
    "build_positive_mask",
]
