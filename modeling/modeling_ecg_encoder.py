"""ECG encoders: 1D ResNets (EHR-paper 8-conv ResNet, MERL ResNet18/34/50/101), MERL's ViT and K-MERL's lead-aware
ViT.

Inputs are ``input_values`` of shape (batch, num_leads, time) in the lead order of ``config.lead_names``, an
optional ``lead_mask`` (batch, num_leads), True where the lead was recorded, and an optional ``time_mask``
(batch, time), 1 for recorded samples and 0 for padding (as ``ECGFeatureExtractor`` returns it for records shorter
than the crop).

* ResNets zero the samples of absent leads before the first convolution (a zero lead is what an unrecorded lead
  looks like to a CNN trained with lead dropout). ``last_hidden_state`` is the final feature map as a sequence,
  (batch, time', channels); ``pooler_output`` is its global average over time — over the positions that see a
  recorded sample when ``time_mask`` is given (padding enters the convolutions as zeros).
* The ViT cuts every lead into patches of ``patch_size`` samples, projects them with one shared linear layer
  and adds a learnable lead embedding and a lead-agnostic temporal (patch position) embedding. Tokens are
  ordered lead-major: token ``l * num_patches + m`` is patch ``m`` of lead ``l``. Tokens of absent leads are
  excluded as attention keys, and ``pooler_output`` is the mean of the final tokens of the present leads (the
  average pooling K-MERL feeds to its projector; there is no CLS token). Outputs therefore do not depend on the
  values of absent leads. Patches without any recorded sample (``time_mask``) are excluded in the same way. Any
  input length that is a multiple of ``patch_size`` up to ``max_length`` works.
* MERL's ViT (``merl_vit_*``) is not lead-aware: one Conv1d patch embedding reads all leads of a patch at once
  (absent leads enter as zeros, as for the ResNets), learned position embeddings are added, and ``pooler_output``
  is a LayerNorm of the mean of the final patch tokens. MERL trained it on 5000 samples; shorter inputs (a
  multiple of ``patch_size``) use the first position embeddings. Patches without a recorded sample are excluded
  from attention and pooling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from .configuration_ecg_encoder import LORA_MODULES_TO_SAVE, LORA_TARGET_MODULES, ECGEncoderConfig


@dataclass
class ECGEncoderOutput(ModelOutput):
    """
    Output of [`ECGEncoderModel`].

    Args:
        last_hidden_state (`torch.FloatTensor`):
            ResNet: final feature map as a sequence, shape (batch, time', channels) with time' = time / total
            stride. ViT: final token states after the last LayerNorm, shape (batch, num_leads * num_patches,
            hidden_size), lead-major order. MERL ViT: final patch-token states (before the LayerNorm, which MERL
            applies to their mean), shape (batch, num_patches, hidden_size).
        pooler_output (`torch.FloatTensor` of shape (batch, hidden_size)):
            ECG embedding: global average over time (ResNet), mean over the tokens of present leads (ViT) or
            LayerNorm of the mean patch token (MERL ViT).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            ResNet: output of the stem (if any) and of each stage, each (batch, time_i, channels_i).
            ViT: the embeddings and the output of each layer, each (batch, num_tokens, hidden_size).
        token_mask (`torch.BoolTensor` of shape (batch, num_tokens), *optional*):
            ViTs only, returned when `lead_mask` or `time_mask` is given (MERL ViT: `time_mask`; without them every
            token is attended): True for tokens of present leads and recorded samples (use as key padding mask over
            `last_hidden_state`).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    token_mask: torch.BoolTensor | None = None


@dataclass
class ECGSequenceClassifierOutput(ModelOutput):
    """
    Output of [`ECGEncoderForSequenceClassification`].

    Args:
        loss (`torch.FloatTensor` of shape (), *optional*, returned when `labels` is given):
            BCE-with-logits (multi-label), cross-entropy (single-label) or MSE (regression) loss.
        logits (`torch.FloatTensor` of shape (batch, num_labels)):
            Scores before sigmoid / softmax (or regression outputs).
        pooler_output (`torch.FloatTensor` of shape (batch, hidden_size)):
            The ECG embedding the head was applied to.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): As in [`ECGEncoderOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


def _recomputing() -> bool:
    """Whether this forward pass is gradient checkpointing's recomputation of a layer in the backward pass (torch
    replays the layer inside the backward graph task; the first pass runs outside it)."""
    if torch.compiler.is_compiling():
        return False
    graph_task_id = getattr(torch._C, "_current_graph_task_id", None)
    return graph_task_id is not None and graph_task_id() != -1


def _batch_norm(bn: nn.BatchNorm2d, hidden_states: torch.Tensor, update_statistics: bool) -> torch.Tensor:
    """`bn(hidden_states)`; in training mode without `update_statistics`, normalised with the batch statistics as
    usual but leaving the running statistics as they are."""
    if update_statistics or not bn.training or not bn.track_running_stats or type(bn) is not nn.BatchNorm2d:
        return bn(hidden_states)
    # the kernel of the first pass (checkpointing compares the tensors both passes save), updating copies
    momentum = 0.0 if bn.momentum is None else bn.momentum
    return F.batch_norm(hidden_states, bn.running_mean.clone(), bn.running_var.clone(), bn.weight, bn.bias, True,
                        momentum, bn.eps)


def _conv_bn(
    conv: nn.Module, bn: nn.BatchNorm2d, hidden_states: torch.Tensor, update_statistics: bool = True
) -> torch.Tensor:
    """Conv1d followed by batch norm on features of shape (batch, channels, 1, time); keeps their memory format.

    A plain ``nn.Conv1d`` is applied as the equivalent 2-D convolution (what ``conv1d`` does internally); in eval
    mode the batch norm is folded into its weights on the fly (computed from the stored parameters at every call,
    so the state dict, save/load and PEFT are untouched). Wrapped or hooked convolutions (e.g. LoRA layers) are
    called as modules on the 3-D view.
    """
    if type(conv) is not nn.Conv1d or conv._forward_hooks or conv._forward_pre_hooks:
        channels_last = hidden_states.stride(1) == 1
        hidden_states = conv(hidden_states.squeeze(2)).unsqueeze(2)
        if channels_last:
            hidden_states = hidden_states.contiguous(memory_format=torch.channels_last)
        return _batch_norm(bn, hidden_states, update_statistics)
    weight, bias = conv.weight, conv.bias
    fold = (
        type(bn) is nn.BatchNorm2d
        and not bn.training
        and bn.running_var is not None
        and not (bn._forward_hooks or bn._forward_pre_hooks)
    )
    if fold:
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = weight * scale[:, None, None]
        bias = bn.bias - bn.running_mean * scale if bias is None else bn.bias + (bias - bn.running_mean) * scale
    hidden_states = F.conv2d(
        hidden_states, weight.unsqueeze(2), bias, (1, conv.stride[0]), (0, conv.padding[0]), (1, conv.dilation[0]),
        conv.groups,
    )
    return hidden_states if fold else _batch_norm(bn, hidden_states, update_statistics)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of `values` over `dim` counting only where `mask` (broadcastable to `values`) is true; an all-false
    slice gives 0."""
    weights = mask.to(values.dtype)
    return (values * weights).sum(dim=dim) / weights.sum(dim=dim).clamp(min=1.0)


def check_patch_length(length: int, patch_size: int, max_length: int, network: str) -> int:
    """The number of patches of an input of `length` samples; a `ValueError` naming `network` when `length` is not
    a multiple of `patch_size` or exceeds `max_length`."""
    if length % patch_size != 0 or length > max_length:
        raise ValueError(
            f"{network} input length must be a multiple of patch_size={patch_size} and at most "
            f"max_length={max_length} samples; got {length}."
        )
    return length // patch_size


def recorded_patches(time_mask: torch.Tensor, num_patches: int) -> torch.Tensor:
    """(batch, num_patches) bool: whether each patch of a (batch, time) `time_mask` holds a recorded sample (a
    patch without any is padding)."""
    return time_mask.bool().reshape(time_mask.shape[0], num_patches, -1).any(dim=-1)


def run_transformer_layers(
    layers: nn.ModuleList, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, output_hidden_states: bool
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """`hidden_states` through `layers`; with `output_hidden_states` also the input and every layer's output."""
    all_hidden_states = [hidden_states] if output_hidden_states else []
    for layer in layers:
        hidden_states = layer(hidden_states, attention_mask)
        if output_hidden_states:
            all_hidden_states.append(hidden_states)
    return hidden_states, tuple(all_hidden_states) if output_hidden_states else None


class ECGResNetBasicBlock(GradientCheckpointingLayer):
    """Residual basic block: k-conv (stride) -> BN -> ReLU -> k-conv -> BN, + shortcut, ReLU.

    With gradient checkpointing the block is recomputed in the backward pass; its batch norms then normalise with
    the batch statistics again without updating their running statistics a second time.
    """

    expansion = 1

    def __init__(self, in_channels: int, width: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv1d(in_channels, width, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv1d(width, out_channels, kernel_size, 1, kernel_size // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut_conv = self.shortcut_bn = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut_conv = nn.Conv1d(in_channels, out_channels, 1, stride, bias=False)
            self.shortcut_bn = nn.BatchNorm2d(out_channels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        update = not (self.training and _recomputing())
        residual = hidden_states
        if self.shortcut_conv is not None:
            residual = _conv_bn(self.shortcut_conv, self.shortcut_bn, hidden_states, update)
        hidden_states = F.relu(_conv_bn(self.conv1, self.bn1, hidden_states, update), inplace=True)
        hidden_states = _conv_bn(self.conv2, self.bn2, hidden_states, update)
        return F.relu(hidden_states.add_(residual), inplace=True)


class ECGResNetBottleneckBlock(GradientCheckpointingLayer):
    """Residual bottleneck block (torchvision v1.5): 1x1 -> k-conv (stride) -> 1x1 (x4 channels), + shortcut;
    checkpointed as [`ECGResNetBasicBlock`]."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv1d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv1d(width, width, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv1d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut_conv = self.shortcut_bn = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut_conv = nn.Conv1d(in_channels, out_channels, 1, stride, bias=False)
            self.shortcut_bn = nn.BatchNorm2d(out_channels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        update = not (self.training and _recomputing())
        residual = hidden_states
        if self.shortcut_conv is not None:
            residual = _conv_bn(self.shortcut_conv, self.shortcut_bn, hidden_states, update)
        hidden_states = F.relu(_conv_bn(self.conv1, self.bn1, hidden_states, update), inplace=True)
        hidden_states = F.relu(_conv_bn(self.conv2, self.bn2, hidden_states, update), inplace=True)
        hidden_states = _conv_bn(self.conv3, self.bn3, hidden_states, update)
        return F.relu(hidden_states.add_(residual), inplace=True)


RESNET_BLOCKS: dict[str, type[nn.Module]] = {"basic": ECGResNetBasicBlock, "bottleneck": ECGResNetBottleneckBlock}


def _record_hidden_state(hidden_states: torch.Tensor, all_hidden_states: list[torch.Tensor]) -> torch.Tensor:
    """Append the (batch, time, channels) view of ResNet features to `all_hidden_states` and return the features
    as a view of that recorded tensor, so that the next layers read it (its gradient is that of the features)."""
    sequence = hidden_states.squeeze(2).transpose(1, 2)
    all_hidden_states.append(sequence)
    return sequence.transpose(1, 2).unsqueeze(2)


class ECGResNet1d(nn.Module):
    """1D ResNet: optional stem conv (no max-pool), stages of residual blocks, global average pooling.

    Convolution weights are ``nn.Conv1d``; the batch norms are ``nn.BatchNorm2d`` because the features travel as
    (batch, channels, 1, time) tensors, with the same statistics as a BatchNorm1d over (batch, time). Without
    autograd (``torch.no_grad`` / ``torch.inference_mode``) those tensors are channels-last (time-major, channels
    contiguous): oneDNN's convolutions run several times faster in that layout when channel counts are small.
    With autograd the layers that read the leads (the stem, or every layer of a ResNet without stem) keep the
    default layout, because oneDNN's channels-last weight-gradient kernel of strided 1x1 convolutions corrupts
    memory for some shapes (e.g. 12 input channels) in this torch release; after a stem the features are
    channels-last again (its wider convolutions train faster that way).
    """

    def __init__(self, config: ECGEncoderConfig) -> None:
        super().__init__()
        block = RESNET_BLOCKS[config.block_type]
        channels = config.num_leads
        self.stem_conv = self.stem_bn = None
        if config.stem_channels:
            k = config.stem_kernel_size
            self.stem_conv = nn.Conv1d(channels, config.stem_channels, k, config.stem_stride, k // 2, bias=False)
            self.stem_bn = nn.BatchNorm2d(config.stem_channels)
            channels = config.stem_channels
        self.stages = nn.ModuleList()
        for width, depth, kernel_size, stride in zip(
            config.stage_channels, config.stage_depths, config.stage_kernel_sizes, config.stage_strides
        ):
            blocks = []
            for index in range(depth):
                blocks.append(block(channels, width, kernel_size, stride if index == 0 else 1))
                channels = width * block.expansion
            self.stages.append(nn.Sequential(*blocks))
        self.strides = ([config.stem_stride] if config.stem_channels else []) + list(config.stage_strides)

    def forward(
        self,
        input_values: torch.Tensor,
        lead_mask: torch.Tensor | None,
        output_hidden_states: bool,
        time_mask: torch.Tensor | None = None,
    ) -> ECGEncoderOutput:
        if lead_mask is not None:
            input_values = torch.where(lead_mask[:, :, None], input_values, 0.0)
        if time_mask is not None:  # padded samples enter the convolutions as zeros
            input_values = input_values * time_mask[:, None, :].to(input_values.dtype)
        memory_format = torch.contiguous_format if torch.is_grad_enabled() else torch.channels_last
        hidden_states = input_values.unsqueeze(2).contiguous(memory_format=memory_format)
        if self.training and torch.is_grad_enabled() and not hidden_states.requires_grad and any(
            getattr(block, "gradient_checkpointing", False) for block in self.stages[0]
        ):
            # reentrant checkpointing gives a block's weights gradients only when its input requires one; without a
            # stem the first block reads the signal itself (transformers does the same for token embeddings)
            hidden_states = hidden_states.detach().requires_grad_()
        all_hidden_states: list[torch.Tensor] = []
        if self.stem_conv is not None:
            hidden_states = F.relu(_conv_bn(self.stem_conv, self.stem_bn, hidden_states), inplace=True)
            hidden_states = hidden_states.contiguous(memory_format=torch.channels_last)
            if output_hidden_states:
                hidden_states = _record_hidden_state(hidden_states, all_hidden_states)
        for stage in self.stages:
            hidden_states = stage(hidden_states)
            if output_hidden_states:
                hidden_states = _record_hidden_state(hidden_states, all_hidden_states)
        features = hidden_states.squeeze(2)  # (batch, channels, time')
        if time_mask is None:
            pooled = features.mean(dim=-1)
        else:  # average over the output positions whose stride window holds a recorded sample
            pooled = masked_mean(features, self.downsample_time_mask(time_mask, features.shape[-1])[:, None, :], -1)
        return ECGEncoderOutput(
            last_hidden_state=features.transpose(1, 2),
            pooler_output=pooled,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
        )

    def downsample_time_mask(self, time_mask: torch.Tensor, length: int) -> torch.Tensor:
        """`time_mask` (batch, time) at the resolution of the final feature map (batch, `length`): a position counts
        when its stride window holds a recorded sample."""
        mask = time_mask.to(torch.float32)[:, None, :]
        for stride in self.strides:
            if stride > 1:
                mask = F.max_pool1d(mask, kernel_size=stride, stride=stride, ceil_mode=True)
        mask = mask[:, 0]
        if mask.shape[-1] != length:  # other padding arithmetic: nearest-neighbour resampling
            mask = F.interpolate(mask[:, None], size=length, mode="nearest")[:, 0]
        return mask > 0


class ECGViTEmbeddings(nn.Module):
    """Per-lead patch projection + learnable lead embeddings + lead-agnostic temporal embeddings."""

    def __init__(self, config: ECGEncoderConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.max_length = config.max_length
        self.patch_projection = nn.Linear(config.patch_size, config.hidden_size)
        self.lead_embeddings = nn.Parameter(torch.empty(config.num_leads, config.hidden_size))
        self.temporal_embeddings = nn.Parameter(torch.empty(config.max_length // config.patch_size, config.hidden_size))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_values: torch.Tensor, token_index: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings, lead-major; with `token_index` (batch, kept) only those tokens (grid indices
        `lead * num_patches + patch`; negative entries are padding and embed patch 0 of lead 0)."""
        batch_size, num_leads, length = input_values.shape
        num_patches = check_patch_length(length, self.patch_size, self.max_length, "ViT")
        if token_index is not None:
            index = token_index.clamp(min=0)
            patches = input_values.reshape(batch_size, num_leads * num_patches, self.patch_size)
            patches = patches.gather(1, index[:, :, None].expand(-1, -1, self.patch_size))
            embeddings = (
                self.patch_projection(patches)
                + self.lead_embeddings[index // num_patches]
                + self.temporal_embeddings[index % num_patches]
            )
            return self.dropout(embeddings)
        patches = input_values.reshape(batch_size, num_leads, num_patches, self.patch_size)
        embeddings = (
            self.patch_projection(patches)
            + self.lead_embeddings[None, :, None, :]
            + self.temporal_embeddings[None, None, :num_patches, :]
        )
        return self.dropout(embeddings.reshape(batch_size, num_leads * num_patches, -1))


def _plain_linear(module: nn.Module) -> bool:
    """Whether `module` is an unhooked `nn.Linear` with a bias, whose weights can be used directly (a LoRA-wrapped or
    hooked layer must run as a module)."""
    return (
        type(module) is nn.Linear
        and module.bias is not None
        and not (module._forward_hooks or module._forward_pre_hooks)
    )


class ECGViTAttention(nn.Module):
    """Multi-head self-attention (scaled_dot_product_attention) with a key padding mask.

    The query, key and value projections are separate `nn.Linear` modules (the names checkpoints, MERL conversion
    and LoRA use); when all three are plain linear layers they run as one matrix multiply with their weights
    concatenated at call time, which reads the hidden states once and keeps the parameters and their gradients as
    they are.
    """

    def __init__(self, config: ECGEncoderConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.attention_dropout = config.attention_dropout
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def project_qkv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key and value of shape (batch, heads, tokens, head_dim) (strided views, no copies)."""
        batch_size, num_tokens, _ = hidden_states.shape
        projections = (self.q_proj, self.k_proj, self.v_proj)
        if all(_plain_linear(projection) for projection in projections):
            weight = torch.cat([projection.weight for projection in projections])
            bias = torch.cat([projection.bias for projection in projections])
            fused = F.linear(hidden_states, weight, bias)
            query, key, value = fused.view(batch_size, num_tokens, 3, self.num_heads, self.head_dim).unbind(2)
        else:
            shape = (batch_size, num_tokens, self.num_heads, self.head_dim)
            query, key, value = (projection(hidden_states).view(shape) for projection in projections)
        return query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        batch_size, num_tokens, _ = hidden_states.shape
        query, key, value = self.project_qkv(hidden_states)
        attended = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=self.attention_dropout if self.training else 0.0
        )
        return self.out_proj(attended.transpose(1, 2).reshape(batch_size, num_tokens, -1))


class ECGViTMLP(nn.Module):
    """Transformer feed-forward: fc1 -> GELU -> dropout -> fc2."""

    def __init__(self, config: ECGEncoderConfig) -> None:
        super().__init__()
        intermediate_size = int(config.hidden_size * config.mlp_ratio)
        self.fc1 = nn.Linear(config.hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.gelu(self.fc1(hidden_states))))


class ECGViTLayer(GradientCheckpointingLayer):
    """Pre-norm transformer layer (checkpointable)."""

    def __init__(self, config: ECGEncoderConfig) -> None:
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = ECGViTAttention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ECGViTMLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        attended = self.attention(self.layernorm_before(hidden_states), attention_mask)
        hidden_states = hidden_states + self.dropout(attended)
        return hidden_states + self.dropout(self.mlp(self.layernorm_after(hidden_states)))


class ECGLeadViT(nn.Module):
    """K-MERL's lead-aware ViT: per-lead tokens, key padding of absent leads, mean pooling over present tokens."""

    def __init__(self, config: ECGEncoderConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.embeddings = ECGViTEmbeddings(config)
        self.layers = nn.ModuleList([ECGViTLayer(config) for _ in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        input_values: torch.Tensor,
        lead_mask: torch.Tensor | None,
        output_hidden_states: bool,
        time_mask: torch.Tensor | None = None,
        token_index: torch.Tensor | None = None,
    ) -> ECGEncoderOutput:
        batch_size, num_leads, length = input_values.shape
        masked = lead_mask is not None or time_mask is not None or token_index is not None
        if lead_mask is None:
            lead_mask = torch.ones(batch_size, num_leads, dtype=torch.bool, device=input_values.device)
        else:
            if not bool(lead_mask.any(dim=1).all()):
                raise ValueError("Every ECG needs at least one present lead in lead_mask.")
            input_values = torch.where(lead_mask[:, :, None], input_values, 0.0)  # NaN-safe: absent leads read 0
        num_patches = check_patch_length(length, self.patch_size, self.embeddings.max_length, "ViT")
        patch_mask = lead_mask[:, :, None].expand(batch_size, num_leads, num_patches)
        if time_mask is not None:
            patch_mask = patch_mask & recorded_patches(time_mask, num_patches)[:, None, :]
        token_mask = patch_mask.reshape(batch_size, -1)
        if token_index is not None:
            token_mask = token_mask.gather(1, token_index.clamp(min=0)) & (token_index >= 0)
            if not bool(token_mask.any(dim=1).all()):
                raise ValueError("token_index keeps no token of a present lead for some ECG.")
        hidden_states = self.embeddings(input_values, token_index)
        attention_mask = None
        if masked:  # without masks every token is attended to, with no data-dependent branch (torch.export)
            attention_mask = None if bool(token_mask.all()) else token_mask[:, None, None, :]
        hidden_states, all_hidden_states = run_transformer_layers(
            self.layers, hidden_states, attention_mask, output_hidden_states
        )
        hidden_states = self.layernorm(hidden_states)
        return ECGEncoderOutput(
            last_hidden_state=hidden_states,
            pooler_output=masked_mean(hidden_states, token_mask[:, :, None], 1),
            hidden_states=all_hidden_states,
            token_mask=token_mask if masked else None,
        )


class ECGConvPatchViT(nn.Module):
    """MERL's ViT: Conv1d patch embedding over all leads, learned position embeddings, pre-norm transformer layers,
    LayerNorm of the mean patch token (the order MERL uses: mean first, then the norm)."""

    def __init__(self, config: ECGEncoderConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.max_length = config.max_length
        self.patch_embedding = nn.Conv1d(
            config.num_leads, config.hidden_size, config.patch_size, stride=config.patch_size, bias=False
        )
        self.position_embeddings = nn.Parameter(torch.empty(config.max_length // config.patch_size, config.hidden_size))
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([ECGViTLayer(config) for _ in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        input_values: torch.Tensor,
        lead_mask: torch.Tensor | None,
        output_hidden_states: bool,
        time_mask: torch.Tensor | None = None,
    ) -> ECGEncoderOutput:
        num_patches = check_patch_length(input_values.shape[-1], self.patch_size, self.max_length, "MERL ViT")
        if lead_mask is not None:
            input_values = torch.where(lead_mask[:, :, None], input_values, 0.0)
        if time_mask is not None:  # padded samples enter the patch embedding as zeros
            input_values = input_values * time_mask[:, None, :].to(input_values.dtype)
        hidden_states = self.patch_embedding(input_values).transpose(1, 2) + self.position_embeddings[:num_patches]
        hidden_states = self.dropout(hidden_states)
        token_mask = attention_mask = None
        if time_mask is not None:
            token_mask = recorded_patches(time_mask, num_patches)
            attention_mask = None if bool(token_mask.all()) else token_mask[:, None, None, :]
        hidden_states, all_hidden_states = run_transformer_layers(
            self.layers, hidden_states, attention_mask, output_hidden_states
        )
        if token_mask is None:
            pooled = hidden_states.mean(dim=1)
        else:
            pooled = masked_mean(hidden_states, token_mask[:, :, None], 1)
        return ECGEncoderOutput(
            last_hidden_state=hidden_states,
            pooler_output=self.layernorm(pooled),
            hidden_states=all_hidden_states,
            token_mask=token_mask,
        )


ECG_ENCODER_NETWORKS: dict[str, type[nn.Module]] = {
    "resnet1d": ECGResNet1d,
    "vit": ECGLeadViT,
    "merl_vit": ECGConvPatchViT,
}


def mlp_hidden_layers(in_features: int, hidden_sizes: list[int], dropout: float) -> nn.Sequential:
    """`Linear -> ReLU -> Dropout` per hidden size (empty for none): the hidden part of an MLP head."""
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [nn.Linear(in_features, size), nn.ReLU(), nn.Dropout(dropout)]
        in_features = size
    return nn.Sequential(*layers)


class ECGClassificationHead(nn.Module):
    """Linear probe, or the EHR paper's MLP (hidden sizes 128, 64; ReLU; dropout 0.2) followed by a linear layer."""

    def __init__(self, config: ECGEncoderConfig) -> None:
        super().__init__()
        hidden_sizes = list(config.classifier_hidden_sizes) if config.classifier_head == "mlp" else []
        self.hidden_layers = mlp_hidden_layers(config.hidden_size, hidden_sizes, config.classifier_dropout)
        self.out_proj = nn.Linear(hidden_sizes[-1] if hidden_sizes else config.hidden_size, config.num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.hidden_layers(pooled))


class ECGEncoderPreTrainedModel(PreTrainedModel):
    """Base class: config class, prefixes and the one weight initialisation of every ECG encoder module."""

    config_class = ECGEncoderConfig
    config: ECGEncoderConfig
    base_model_prefix = "ecg_encoder"
    main_input_name = "input_values"
    supports_gradient_checkpointing = True  # ViT layers and ResNet blocks are GradientCheckpointingLayers
    _no_split_modules = ["ECGViTLayer", "ECGResNetBasicBlock", "ECGResNetBottleneckBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialise every parameter and buffer: convs (Kaiming, fan-out), BN (1, 0; running stats 0, 1, 0),
        last BN of each residual branch weight 0, linear layers and embeddings (truncated normal,
        `initializer_range`), LayerNorm (1, 0), MLP-head hidden layers (Kaiming, fan-in)."""
        std = self.config.initializer_range
        if isinstance(module, nn.Conv1d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, ECGResNetBasicBlock):
            init.zeros_(module.bn2.weight)  # each residual branch starts as zero (identity-like blocks)
        elif isinstance(module, ECGResNetBottleneckBlock):
            init.zeros_(module.bn3.weight)
        elif isinstance(module, ECGViTEmbeddings):
            init.trunc_normal_(module.lead_embeddings, std=std, a=-2 * std, b=2 * std)
            init.trunc_normal_(module.temporal_embeddings, std=std, a=-2 * std, b=2 * std)
        elif isinstance(module, ECGConvPatchViT):
            init.trunc_normal_(module.position_embeddings, std=std, a=-2 * std, b=2 * std)
        elif isinstance(module, ECGClassificationHead):
            for layer in module.hidden_layers:
                if isinstance(layer, nn.Linear):
                    init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
                    init.zeros_(layer.bias)

    def _check_inputs(self, input_values: torch.Tensor, lead_mask: torch.Tensor | None) -> torch.Tensor | None:
        if input_values.dim() != 3 or input_values.shape[1] != self.config.num_leads:
            raise ValueError(
                f"input_values must have shape (batch, {self.config.num_leads}, time); got {tuple(input_values.shape)}."
            )
        if lead_mask is None:
            return None
        if lead_mask.shape != input_values.shape[:2]:
            raise ValueError(
                f"lead_mask must have shape {tuple(input_values.shape[:2])}; got {tuple(lead_mask.shape)}."
            )
        return lead_mask.to(device=input_values.device, dtype=torch.bool)

    @property
    def lora_target_modules(self) -> list[str]:
        """Module-name suffixes of the Conv1d/Linear layers LoRA adapts (see `LORA_TARGET_MODULES`)."""
        return list(LORA_TARGET_MODULES[self.config.backbone_family])

    @property
    def lora_modules_to_save(self) -> list[str]:
        """Modules trained and saved whole next to LoRA weights: the batch norms of the ResNets (their running
        statistics change whenever the model trains, so they belong to the adapter) and the classifier head."""
        names = list(LORA_MODULES_TO_SAVE[self.config.backbone_family])
        if isinstance(getattr(self, "classifier", None), nn.Module):
            names.append("classifier")
        return names


class ECGEncoderModel(ECGEncoderPreTrainedModel):
    """ECG encoder returning a feature sequence and a pooled ECG embedding of size `config.hidden_size`."""

    def __init__(self, config: ECGEncoderConfig) -> None:
        super().__init__(config)
        self.encoder = ECG_ENCODER_NETWORKS[config.backbone_family](config)
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor,
        lead_mask: torch.Tensor | None = None,
        time_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        token_index: torch.Tensor | None = None,
    ) -> ECGEncoderOutput | tuple:
        """
        Args:
            input_values (`torch.FloatTensor` of shape (batch, num_leads, time)): ECG samples.
            lead_mask (`torch.BoolTensor` of shape (batch, num_leads), *optional*): True for recorded leads.
            time_mask (`torch.LongTensor` or `torch.BoolTensor` of shape (batch, time), *optional*): 1 for recorded
                samples, 0 for padding (as the feature extractor returns it). The ViT drops patches without recorded
                samples from attention and pooling; the ResNets see padding as zeros and pool over the positions
                that see a recorded sample.
            output_hidden_states (`bool`, *optional*): Return the per-stage / per-layer hidden states.
            return_dict (`bool`, *optional*): Return an [`ECGEncoderOutput`] instead of a tuple.
            token_index (`torch.LongTensor` of shape (batch, kept), *optional*): lead-aware ViT only: run only these
                tokens, given as lead-major grid indices `lead * num_patches + patch`, negative entries for padding
                (K-MERL's lead and segment masking drops the masked tokens before the encoder). The outputs then
                cover the kept tokens in the given order, and `token_mask` marks the real ones.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        lead_mask = self._check_inputs(input_values, lead_mask)
        if time_mask is not None and time_mask.shape != (input_values.shape[0], input_values.shape[-1]):
            raise ValueError(
                f"time_mask must have shape (batch, time) = {(input_values.shape[0], input_values.shape[-1])}, "
                f"got {tuple(time_mask.shape)}"
            )
        extra = {}
        if token_index is not None:
            if self.config.backbone_family != "vit":
                raise ValueError(f"token_index needs the lead-aware ViT; this encoder is {self.config.backbone!r}.")
            extra["token_index"] = token_index.to(input_values.device)
        outputs = self.encoder(input_values, lead_mask, bool(output_hidden_states), time_mask, **extra)
        return outputs if return_dict else outputs.to_tuple()


class ECGEncoderForSequenceClassification(ECGEncoderPreTrainedModel):
    """ECG encoder with a classification / regression head on the pooled embedding.

    The loss follows `config.problem_type`; when unset it is inferred from `num_labels` and the labels' dtype
    (1 label: regression; integer labels: single-label; otherwise multi-label).
    """

    def __init__(self, config: ECGEncoderConfig) -> None:
        super().__init__(config)
        self.ecg_encoder = ECGEncoderModel(config)
        self.classifier = ECGClassificationHead(config)
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor,
        lead_mask: torch.Tensor | None = None,
        time_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ECGSequenceClassifierOutput | tuple:
        """
        Args:
            input_values (`torch.FloatTensor` of shape (batch, num_leads, time)): ECG samples.
            lead_mask (`torch.BoolTensor` of shape (batch, num_leads), *optional*): True for recorded leads.
            time_mask (`torch.LongTensor` of shape (batch, time), *optional*): 1 for recorded samples, 0 for padding.
            labels (`torch.Tensor`, *optional*): (batch, num_labels) multi-hot floats (multi-label), (batch,)
                class indices (single-label) or (batch,) / (batch, num_labels) targets (regression).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.ecg_encoder(
            input_values, lead_mask=lead_mask, time_mask=time_mask,
            output_hidden_states=output_hidden_states, return_dict=True,
        )
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            loss = self.compute_loss(logits, labels)
        result = ECGSequenceClassifierOutput(
            loss=loss, logits=logits, pooler_output=outputs.pooler_output, hidden_states=outputs.hidden_states
        )
        return result if return_dict else result.to_tuple()

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of `logits` against `labels` for `config.problem_type`."""
        problem_type = self.config.problem_type
        if problem_type is None:
            if self.config.num_labels == 1:
                problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem_type = "single_label_classification"
            else:
                problem_type = "multi_label_classification"
        labels = labels.to(logits.device)
        if problem_type == "regression":
            if self.config.num_labels == 1:
                return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
            return F.mse_loss(logits, labels.to(logits.dtype))
        if problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.config.num_labels), labels.view(-1).long())
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


ECGEncoderModel.register_for_auto_class("AutoModel")
ECGEncoderForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "ECGEncoderOutput",
    "ECGSequenceClassifierOutput",
    "ECGEncoderPreTrainedModel",
    "ECGEncoderModel",
    "ECGEncoderForSequenceClassification",
]
