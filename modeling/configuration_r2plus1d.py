"""Configuration of the R(2+1)D video encoder (Tran et al., "A Closer Look at Spatiotemporal Convolutions for Action
Recognition", CVPR 2018), the echocardiogram and angiogram encoder of CLERC.

The defaults are torchvision's `r2plus1d_18`: a (2+1)D stem (a 1x7x7 spatial convolution of stride 2 to 45
channels, then a 3x1x1 temporal one to 64), four stages of two basic blocks with widths 64, 128, 256, 512 (stride 1,
2, 2, 2 in space and time), each 3x3x3 convolution factorised into a 1x3x3 spatial and a 3x1x1 temporal convolution
through `midplanes = (in * out * 27) // (in * 9 + 3 * out)` channels, and global average pooling (512 features).
Every width, depth, kernel size and stride is a field, so tests can build tiny networks.
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import PreTrainedConfig


class R2Plus1DConfig(PreTrainedConfig):
    r"""
    Configuration of [`R2Plus1DVideoModel`].

    Args:
        num_channels (`int`, defaults to 3): Channels of `pixel_values` (batch, channels, frames, height, width).
        stem_width (`int`, defaults to 45): Channels between the stem's spatial and temporal convolutions.
        stem_spatial_kernel_size (`int`, defaults to 7): Spatial kernel of the stem (1 x k x k).
        stem_temporal_kernel_size (`int`, defaults to 3): Temporal kernel of the stem (k x 1 x 1).
        stem_spatial_stride (`int`, defaults to 2): Spatial stride of the stem (its temporal stride is 1).
        hidden_sizes (`list[int]`, defaults to `[64, 128, 256, 512]`): Width of each stage; the stem outputs
            `hidden_sizes[0]` channels and `pooler_output` has `hidden_sizes[-1]` features.
        depths (`list[int]`, defaults to `[2, 2, 2, 2]`): Basic blocks per stage.
        strides (`list[int]`, defaults to `[1, 2, 2, 2]`): Stride (in time, height and width) of the first block of
            each stage.
        spatial_kernel_size (`int`, defaults to 3): Spatial kernel of the blocks' (2+1)D convolutions (1 x k x k).
        temporal_kernel_size (`int`, defaults to 3): Temporal kernel of the blocks' (2+1)D convolutions (k x 1 x 1).
        channels_last_3d (`bool`, defaults to `False`): Run the convolutions on `torch.channels_last_3d` tensors
            (faster with cuDNN on recent GPUs, and on CPU for some shapes); the outputs are the same.

    Example:

    ```python
    >>> config = R2Plus1DConfig(hidden_sizes=[8, 16], depths=[1, 1], strides=[1, 2], stem_width=4)
    >>> model = R2Plus1DVideoModel(config)
    ```
    """

    model_type: ClassVar[str] = "r2plus1d_video"

    num_channels: int = 3
    stem_width: int = 45
    stem_spatial_kernel_size: int = 7
    stem_temporal_kernel_size: int = 3
    stem_spatial_stride: int = 2
    hidden_sizes: list[int] | tuple[int, ...] = (64, 128, 256, 512)
    depths: list[int] | tuple[int, ...] = (2, 2, 2, 2)
    strides: list[int] | tuple[int, ...] = (1, 2, 2, 2)
    spatial_kernel_size: int = 3
    temporal_kernel_size: int = 3
    channels_last_3d: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        for key in ("hidden_sizes", "depths", "strides"):
            setattr(self, key, [int(v) for v in getattr(self, key)])
        super().__post_init__(**kwargs)
        self.validate_architecture()

    @property
    def hidden_size(self) -> int:
        """Features of `pooler_output`: the last stage's width."""
        return self.hidden_sizes[-1]

    def validate_architecture(self) -> None:
        """Check that the fields describe a buildable network."""
        num_stages = len(self.hidden_sizes)
        if num_stages == 0 or len(self.depths) != num_stages or len(self.strides) != num_stages:
            raise ValueError(
                f"hidden_sizes, depths and strides need one entry per stage, got {len(self.hidden_sizes)}, "
                f"{len(self.depths)} and {len(self.strides)}."
            )
        positive = {"num_channels": [self.num_channels], "stem_width": [self.stem_width],
                    "stem_spatial_stride": [self.stem_spatial_stride], "hidden_sizes": self.hidden_sizes,
                    "depths": self.depths, "strides": self.strides}
        for name, values in positive.items():
            if any(v < 1 for v in values):
                raise ValueError(f"{name} must be positive, got {values if len(values) > 1 else values[0]}.")
        for name in ("stem_spatial_kernel_size", "stem_temporal_kernel_size", "spatial_kernel_size",
                     "temporal_kernel_size"):
            size = getattr(self, name)
            if size < 1 or size % 2 == 0:
                raise ValueError(f"{name} must be a positive odd number (same padding), got {size}.")


__all__ = ["R2Plus1DConfig"]

R2Plus1DConfig.register_for_auto_class()
