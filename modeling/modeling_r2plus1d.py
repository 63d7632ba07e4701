"""R(2+1)D video encoder (Tran et al., CVPR 2018), the echocardiogram and angiogram encoder of CLERC.

Every 3D convolution of a ResNet is factorised into a spatial convolution (1 x k x k) and a temporal one (k x 1 x 1)
with a batch norm and a ReLU between them. The module layout and parameter names are those of torchvision's
`r2plus1d_18` without its Kinetics-400 classifier `fc`, so its weights load tensor by tensor (`cardiomm convert
r2plus1d`):

* `stem.0` spatial convolution, `stem.1` batch norm, `stem.3` temporal convolution, `stem.4` batch norm;
* `layer{i}.{j}.conv1.0.0` / `.0.1` / `.0.3`: the first (2+1)D convolution of block `j` of stage `i` (spatial
  convolution, its batch norm, temporal convolution), `conv1.1` the batch norm after it; `conv2.*` the same for the
  second convolution; `downsample.0` / `.1` the strided 1x1x1 shortcut convolution and its batch norm.

Input `pixel_values` (batch, channels, frames, height, width); `last_hidden_state` is the final feature map (batch,
channels, frames', height', width') and `pooler_output` its global average (batch, channels).

For inference, [`R2Plus1DVideoModel.fuse_batch_norm`] folds every batch norm into the convolution before it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .configuration_r2plus1d import R2Plus1DConfig
from .modeling_ecg_encoder import _recomputing


def factorised_width(in_channels: int, out_channels: int, temporal_kernel_size: int, spatial_kernel_size: int) -> int:
    """Channels between the spatial and the temporal convolution of a (2+1)D convolution: the width that gives it
    about as many parameters as the full `t x k x k` 3D convolution (torchvision's `midplanes`)."""
    full = in_channels * out_channels * temporal_kernel_size * spatial_kernel_size**2
    return full // (in_channels * spatial_kernel_size**2 + temporal_kernel_size * out_channels)


class R2Plus1DConv(nn.Sequential):
    """(2+1)D convolution: spatial convolution (1 x k x k, spatial stride) -> batch norm -> ReLU -> temporal
    convolution (t x 1 x 1, temporal stride); no bias (a batch norm follows)."""

    def __init__(
        self, in_channels: int, out_channels: int, mid_channels: int, stride: int, spatial_kernel_size: int,
        temporal_kernel_size: int,
    ) -> None:
        k, t = spatial_kernel_size, temporal_kernel_size
        super().__init__(
            nn.Conv3d(in_channels, mid_channels, (1, k, k), stride=(1, stride, stride), padding=(0, k // 2, k // 2),
                      bias=False),
            nn.BatchNorm3d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid_channels, out_channels, (t, 1, 1), stride=(stride, 1, 1), padding=(t // 2, 0, 0),
                      bias=False),
        )


class R2Plus1DStem(nn.Sequential):
    """Stem: spatial convolution (1 x 7 x 7, stride 1 x 2 x 2) to `stem_width` channels -> batch norm -> ReLU ->
    temporal convolution (3 x 1 x 1) to `hidden_sizes[0]` channels -> batch norm -> ReLU."""

    def __init__(self, config: R2Plus1DConfig) -> None:
        k, t, s = config.stem_spatial_kernel_size, config.stem_temporal_kernel_size, config.stem_spatial_stride
        super().__init__(
            nn.Conv3d(config.num_channels, config.stem_width, (1, k, k), stride=(1, s, s), padding=(0, k // 2, k // 2),
                      bias=False),
            nn.BatchNorm3d(config.stem_width),
            nn.ReLU(inplace=True),
            nn.Conv3d(config.stem_width, config.hidden_sizes[0], (t, 1, 1), padding=(t // 2, 0, 0), bias=False),
            nn.BatchNorm3d(config.hidden_sizes[0]),
            nn.ReLU(inplace=True),
        )


@contextlib.contextmanager
def _running_statistics_frozen(module: nn.Module) -> Iterator[None]:
    """Batch norms of `module` normalise with the batch statistics as usual but leave their running statistics
    unchanged (momentum 0) inside the block: for gradient checkpointing's recomputation of a block, whose first pass
    already updated them."""
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm3d)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum


class R2Plus1DBasicBlock(GradientCheckpointingLayer):
    """Residual basic block: two (2+1)D convolutions (`conv1`: with batch norm and ReLU; `conv2`: with batch norm),
    plus the input (through the strided 1x1x1 `downsample` convolution and batch norm when the shape changes), ReLU.

    Both (2+1)D convolutions use the factorised width of the block's first one (as torchvision does).
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, spatial_kernel_size: int, temporal_kernel_size: int
    ) -> None:
        super().__init__()
        mid = factorised_width(in_channels, out_channels, temporal_kernel_size, spatial_kernel_size)
        kernels = (spatial_kernel_size, temporal_kernel_size)
        self.conv1 = nn.Sequential(
            R2Plus1DConv(in_channels, out_channels, mid, stride, *kernels),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.conv2 = nn.Sequential(
            R2Plus1DConv(out_channels, out_channels, mid, 1, *kernels), nn.BatchNorm3d(out_channels)
        )
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm3d(out_channels)
            )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        recomputing = self.training and _recomputing()
        with _running_statistics_frozen(self) if recomputing else contextlib.nullcontext():
            residual = hidden_states if self.downsample is None else self.downsample(hidden_states)
            out = self.conv2(self.conv1(hidden_states))
        return F.relu(out.add_(residual), inplace=True)


class R2Plus1DPreTrainedModel(PreTrainedModel):
    """Base class: configuration class, input name and the weight initialisation of the R(2+1)D modules."""

    config_class = R2Plus1DConfig
    config: R2Plus1DConfig
    base_model_prefix = "r2plus1d"
    main_input_name = "pixel_values"
    input_modalities = ("video",)
    supports_gradient_checkpointing = True  # the blocks are GradientCheckpointingLayers
    _no_split_modules = ["R2Plus1DBasicBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """torchvision's initialisation: convolutions Kaiming-normal (fan-out, ReLU), biases 0; batch norms weight
        1, bias 0, running statistics 0 / 1 / 0."""
        if isinstance(module, nn.Conv3d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm3d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)


class R2Plus1DVideoModel(R2Plus1DPreTrainedModel):
    """R(2+1)D video encoder: stem, stages `layer1` ... `layerN` of basic blocks, global average pooling.

    `hidden_states` (with `output_hidden_states`) holds the stem's output and each stage's, each (batch, channels,
    frames, height, width).
    """

    def __init__(self, config: R2Plus1DConfig) -> None:
        super().__init__(config)
        self.stem = R2Plus1DStem(config)
        channels = config.hidden_sizes[0]
        for index, (width, depth, stride) in enumerate(zip(config.hidden_sizes, config.depths, config.strides), 1):
            blocks = []
            for block in range(depth):
                blocks.append(R2Plus1DBasicBlock(channels, width, stride if block == 0 else 1,
                                                 config.spatial_kernel_size, config.temporal_kernel_size))
                channels = width
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self.batch_norm_fused = False
        self.post_init()

    @property
    def stages(self) -> list[nn.Sequential]:
        """The stages `layer1` ... `layerN`, in order."""
        return [getattr(self, f"layer{i}") for i in range(1, len(self.config.hidden_sizes) + 1)]

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape (batch, num_channels, frames, height, width)): video clips.
            output_hidden_states (`bool`, *optional*): also return the stem's and every stage's feature map.
            return_dict (`bool`, *optional*): return a `BaseModelOutputWithPooling` instead of a tuple.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if pixel_values.dim() != 5 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must have shape (batch, {self.config.num_channels}, frames, height, width); got "
                f"{tuple(pixel_values.shape)}."
            )
        if self.config.channels_last_3d:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last_3d)
        hidden_states = self.stem(pixel_values)
        all_hidden_states = [hidden_states] if output_hidden_states else []
        for stage in self.stages:
            hidden_states = stage(hidden_states)
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
        pooled = hidden_states.mean(dim=(2, 3, 4))
        outputs = BaseModelOutputWithPooling(
            last_hidden_state=hidden_states,
            pooler_output=pooled,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
        )
        return outputs if return_dict else outputs.to_tuple()

    # --------------------------------------------------------------------------------------------- inference
    def _convolutions_with_batch_norms(self) -> list[tuple[nn.Conv3d, nn.Module, str, nn.BatchNorm3d]]:
        """Every (convolution, parent of its batch norm, name of the batch norm in it, batch norm) pair: the batch
        norm that directly follows the convolution."""
        pairs = [(self.stem[0], self.stem, "1", self.stem[1]), (self.stem[3], self.stem, "4", self.stem[4])]
        for stage in self.stages:
            for block in stage:
                for conv in (block.conv1, block.conv2):
                    factorised = conv[0]
                    pairs.append((factorised[0], factorised, "1", factorised[1]))
                    pairs.append((factorised[3], conv, "1", conv[1]))
                if block.downsample is not None:
                    pairs.append((block.downsample[0], block.downsample, "1", block.downsample[1]))
        return pairs

    @torch.no_grad()
    def fuse_batch_norm(self) -> R2Plus1DVideoModel:
        """Fold every batch norm into the convolution before it, for inference; returns the model itself.

        With running mean `m`, variance `v`, weight `g`, bias `b` and epsilon `e`, the convolution's weight becomes
        `w * g / sqrt(v + e)` (per output channel) and it gains the bias `b - m * g / sqrt(v + e)`; the batch norm
        becomes an identity. The eval-mode outputs are unchanged (up to float rounding) and each convolution runs
        with its bias in one kernel. The model must be in eval mode, and afterwards it is for inference only: its
        parameters no longer match the checkpoint layout, so it cannot be saved and training it would train a
        network without batch norms. Calling it again does nothing.
        """
        if self.batch_norm_fused:
            return self
        if self.training:
            raise ValueError("fuse_batch_norm() folds the running statistics: call model.eval() first.")
        for conv, parent, name, norm in self._convolutions_with_batch_norms():
            scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
            bias = norm.bias - norm.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1, 1))
            conv.bias = nn.Parameter(bias, requires_grad=conv.weight.requires_grad)
            parent._modules[name] = nn.Identity()
        self.batch_norm_fused = True
        return self

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """`PreTrainedModel.save_pretrained`; refused after [`fuse_batch_norm`] (the layout no longer matches)."""
        if self.batch_norm_fused:
            raise ValueError(
                "this R2Plus1DVideoModel has its batch norms fused for inference (fuse_batch_norm()); save the model "
                "before fusing, or load it again"
            )
        return super().save_pretrained(save_directory, *args, **kwargs)


R2Plus1DVideoModel.register_for_auto_class("AutoModel")

__all__ = [
    "factorised_width",
    "R2Plus1DPreTrainedModel",
    "R2Plus1DVideoModel",
]
