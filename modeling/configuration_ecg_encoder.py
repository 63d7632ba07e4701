"""Configuration of the ECG encoders: 1D ResNets (EHR-paper 8-conv ResNet, MERL ResNet18/34/50/101), MERL's ViT
and the lead-aware ViT of K-MERL.

The architecture is chosen by one field, ``backbone``, naming an entry of :data:`ECG_ENCODER_PRESETS`. The
preset supplies every architecture field the caller leaves unset; any field passed to the constructor overrides
the preset. All resolved fields are stored on the config, so ``config.json`` spells out the full architecture.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from transformers import PreTrainedConfig

STANDARD_12_LEAD_NAMES: list[str] = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
# The lead order of MIMIC-IV-ECG, in which MERL was pretrained (aVF before aVL).
MERL_LEAD_NAMES: list[str] = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]

# Architecture presets as data. ``backbone_family`` selects the network type ("resnet1d" or "vit"); the other
# keys are config fields. Fields of the other family stay ``None``.
#
# resnet1d_8 -- the ECG encoder of the EHR paper (Table 9): eight stages with output channels
#   32, 32, 64, 64, 128, 128, 256, 256 and kernels 5, 5, 5, 3, 3, 3, 3, 3, every one with stride 2, BN + ReLU.
#   Each row of Table 9 is read as one ResNet basic block (two convolutions of that kernel size plus a
#   1x1-conv + BN shortcut, as the paper says "based on the basic block of ResNet"); this is the reading that
#   gives the stated ~1M parameters (1,068,928 with 12 input leads; the literal eight single convolutions
#   would hold ~0.4M). No stem: the first block takes the 12 leads directly. Output: 256 channels,
#   length / 256 time steps.
# resnet1d_18/34/50/101 -- MERL's 1D ResNets: torchvision's ResNet with Conv1d, stem conv k7 s2 (64 channels)
#   without max-pool, basic blocks (18/34) or bottleneck blocks with expansion 4 (50/101), kernel 3.
# merl_vit_tiny/small/middle/base -- MERL's ViT (not lead-aware): one Conv1d patch embedding (no bias) of
#   patch_size 50 over all leads at once, learned position embeddings, pre-norm transformer layers (head size 64,
#   MLP 4x, LayerNorm eps 1e-5), mean over the patch tokens followed by a LayerNorm.
# vit_tiny/small/base -- K-MERL's lead-aware ViT: per-lead patches of 100 samples, shared linear patch
#   projection, learnable lead embeddings + lead-agnostic temporal embeddings, pre-norm transformer layers,
#   mean pooling over the tokens of present leads.
ECG_ENCODER_PRESETS: dict[str, dict[str, Any]] = {
    "resnet1d_8": {
        "backbone_family": "resnet1d",
        "block_type": "basic",
        "stem_channels": 0,
        "stem_kernel_size": 0,
        "stem_stride": 1,
        "stage_channels": [32, 32, 64, 64, 128, 128, 256, 256],
        "stage_depths": [1, 1, 1, 1, 1, 1, 1, 1],
        "stage_kernel_sizes": [5, 5, 5, 3, 3, 3, 3, 3],
        "stage_strides": [2, 2, 2, 2, 2, 2, 2, 2],
    },
    "resnet1d_18": {
        "backbone_family": "resnet1d",
        "block_type": "basic",
        "stem_channels": 64,
        "stem_kernel_size": 7,
        "stem_stride": 2,
        "stage_channels": [64, 128, 256, 512],
        "stage_depths": [2, 2, 2, 2],
        "stage_kernel_sizes": [3, 3, 3, 3],
        "stage_strides": [1, 2, 2, 2],
    },
    "resnet1d_34": {
        "backbone_family": "resnet1d",
        "block_type": "basic",
        "stem_channels": 64,
        "stem_kernel_size": 7,
        "stem_stride": 2,
        "stage_channels": [64, 128, 256, 512],
        "stage_depths": [3, 4, 6, 3],
        "stage_kernel_sizes": [3, 3, 3, 3],
        "stage_strides": [1, 2, 2, 2],
    },
    "resnet1d_50": {
        "backbone_family": "resnet1d",
        "block_type": "bottleneck",
        "stem_channels": 64,
        "stem_kernel_size": 7,
        "stem_stride": 2,
        "stage_channels": [64, 128, 256, 512],
        "stage_depths": [3, 4, 6, 3],
        "stage_kernel_sizes": [3, 3, 3, 3],
        "stage_strides": [1, 2, 2, 2],
    },
    "resnet1d_101": {
        "backbone_family": "resnet1d",
        "block_type": "bottleneck",
        "stem_channels": 64,
        "stem_kernel_size": 7,
        "stem_stride": 2,
        "stage_channels": [64, 128, 256, 512],
        "stage_depths": [3, 4, 23, 3],
        "stage_kernel_sizes": [3, 3, 3, 3],
        "stage_strides": [1, 2, 2, 2],
    },
    "vit_tiny": {
        "backbone_family": "vit",
        "patch_size": 100,
        "max_length": 5000,
        "hidden_size": 192,
        "num_hidden_layers": 12,
        "num_attention_heads": 3,
        "mlp_ratio": 4.0,
    },
    "vit_small": {
        "backbone_family": "vit",
        "patch_size": 100,
        "max_length": 5000,
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 6,
        "mlp_ratio": 4.0,
    },
    "vit_base": {
        "backbone_family": "vit",
        "patch_size": 100,
        "max_length": 5000,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "mlp_ratio": 4.0,
    },
    "merl_vit_tiny": {
        "backbone_family": "merl_vit",
        "patch_size": 50,
        "max_length": 5000,
        "hidden_size": 192,
        "num_hidden_layers": 12,
        "num_attention_heads": 3,
        "mlp_ratio": 4.0,
        "layer_norm_eps": 1e-5,
    },
    "merl_vit_small": {
        "backbone_family": "merl_vit",
        "patch_size": 50,
        "max_length": 5000,
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 6,
        "mlp_ratio": 4.0,
        "layer_norm_eps": 1e-5,
    },
    "merl_vit_middle": {
        "backbone_family": "merl_vit",
        "patch_size": 50,
        "max_length": 5000,
        "hidden_size": 512,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "mlp_ratio": 4.0,
        "layer_norm_eps": 1e-5,
    },
    "merl_vit_base": {
        "backbone_family": "merl_vit",
        "patch_size": 50,
        "max_length": 5000,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "mlp_ratio": 4.0,
        "layer_norm_eps": 1e-5,
    },
}

BACKBONE_FAMILIES: tuple[str, ...] = ("resnet1d", "vit", "merl_vit")
BLOCK_EXPANSION: dict[str, int] = {"basic": 1, "bottleneck": 4}

# Names of the Conv1d / Linear modules LoRA can adapt, per backbone family (suffixes of module names, as
# ``peft.LoraConfig(target_modules=...)`` matches them). The ResNet list covers every convolution of the
# residual blocks and the stem; the ViT list covers the attention projections and the MLP.
LORA_TARGET_MODULES: dict[str, list[str]] = {
    "resnet1d": ["stem_conv", "conv1", "conv2", "conv3", "shortcut_conv"],
    "vit": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "merl_vit": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}
# Modules to train and save whole with a LoRA adapter (``LoraConfig(modules_to_save=...)``): the ResNets' batch
# norms, whose running statistics move whenever the model trains (add "classifier" for a classification head).
LORA_MODULES_TO_SAVE: dict[str, list[str]] = {
    "resnet1d": ["stem_bn", "bn1", "bn2", "bn3", "shortcut_bn"],
    "vit": [],
    "merl_vit": [],
}


class ECGEncoderConfig(PreTrainedConfig):
    r"""
    Configuration of [`ECGEncoderModel`] and [`ECGEncoderForSequenceClassification`].

    Args:
        backbone (`str`, defaults to `"resnet1d_18"`):
            Name of an entry of `ECG_ENCODER_PRESETS` (`resnet1d_8`, `resnet1d_18`, `resnet1d_34`, `resnet1d_50`,
            `resnet1d_101`, `vit_tiny`, `vit_small`, `vit_base` (K-MERL's lead-aware ViT), `merl_vit_tiny`,
            `merl_vit_small`, `merl_vit_middle`, `merl_vit_base` (MERL's ViT)). Architecture fields left unset are
            taken from it.
        backbone_family (`str`, *optional*): `"resnet1d"`, `"vit"` (lead-aware) or `"merl_vit"` (from the preset).
        num_leads (`int`, defaults to 12): Number of lead slots of `input_values` (batch, num_leads, time).
        lead_names (`list[str]`, *optional*): Name of each lead slot; defaults to the standard 12-lead order
            I, II, III, aVR, aVL, aVF, V1-V6.
        hidden_size (`int`, *optional*): Dimension of `pooler_output`. For the ResNets it is derived from the
            block layout (last stage channels x block expansion); for the ViT it is the token width.
        block_type (`str`, *optional*): ResNet block, `"basic"` (two k-convs) or `"bottleneck"` (1x1, k, 1x1;
            expansion 4).
        stem_channels (`int`, *optional*): Output channels of the stem convolution; 0 means no stem.
        stem_kernel_size (`int`, *optional*), stem_stride (`int`, *optional*): Stem convolution geometry.
        stage_channels (`list[int]`, *optional*): Width of each ResNet stage (bottleneck: inner width).
        stage_depths (`list[int]`, *optional*): Number of residual blocks per stage.
        stage_kernel_sizes (`list[int]`, *optional*): Kernel size of the main convolutions of each stage.
        stage_strides (`list[int]`, *optional*): Stride of the first block of each stage.
        patch_size (`int`, *optional*): ViT patch length in samples (100 in K-MERL, 50 in MERL).
        max_length (`int`, *optional*): Longest input the ViT accepts, in samples (a multiple of `patch_size`).
        num_hidden_layers (`int`, *optional*), num_attention_heads (`int`, *optional*),
        mlp_ratio (`float`, *optional*): ViT depth, heads and MLP width / hidden size.
        dropout (`float`, defaults to 0.0): ViT dropout on embeddings, attention output and MLP.
        attention_dropout (`float`, defaults to 0.0): ViT dropout on attention probabilities.
        layer_norm_eps (`float`, *optional*): ViT LayerNorm epsilon (the preset's; 1e-6 when it names none).
        initializer_range (`float`, defaults to 0.02): Std of the truncated normal init of linear layers and
            embeddings.
        classifier_head (`str`, defaults to `"linear"`): `"linear"` (one linear layer, linear probing) or `"mlp"`
            (the EHR paper's head: `classifier_hidden_sizes` fully connected layers with ReLU and dropout).
        classifier_hidden_sizes (`list[int]`, defaults to `[128, 64]`): Hidden sizes of the MLP head.
        classifier_dropout (`float`, defaults to 0.2): Dropout after each hidden layer of the MLP head.

    `num_labels`, `id2label`, `label2id` and `problem_type` (`"multi_label_classification"`,
    `"single_label_classification"`, `"regression"`) are the usual [`PreTrainedConfig`] fields.

    Example:

    ```python
    >>> config = ECGEncoderConfig(backbone="vit_tiny", num_hidden_layers=4)  # preset, then overrides
    >>> model = ECGEncoderModel(config)
    ```
    """

    model_type: ClassVar[str] = "ecg_encoder"
    attribute_map: ClassVar[dict[str, str]] = {
        "num_layers": "num_hidden_layers",
        "num_heads": "num_attention_heads",
    }

    backbone: str = "resnet1d_18"
    backbone_family: str | None = None
    num_leads: int = 12
    lead_names: list[str] | tuple[str, ...] | None = None
    hidden_size: int | None = None
    # 1D ResNet
    block_type: str | None = None
    stem_channels: int | None = None
    stem_kernel_size: int | None = None
    stem_stride: int | None = None
    stage_channels: list[int] | tuple[int, ...] | None = None
    stage_depths: list[int] | tuple[int, ...] | None = None
    stage_kernel_sizes: list[int] | tuple[int, ...] | None = None
    stage_strides: list[int] | tuple[int, ...] | None = None
    # lead-aware ViT
    patch_size: int | None = None
    max_length: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    mlp_ratio: int | float | None = None
    dropout: int | float = 0.0
    attention_dropout: int | float = 0.0
    layer_norm_eps: float | None = None
    initializer_range: float = 0.02
    # classification head
    classifier_head: str = "linear"
    classifier_hidden_sizes: list[int] | tuple[int, ...] = (128, 64)
    classifier_dropout: int | float = 0.2

    def __post_init__(self, **kwargs: Any) -> None:
        if self.backbone not in ECG_ENCODER_PRESETS:
            raise ValueError(f"Unknown backbone {self.backbone!r}; choose one of {sorted(ECG_ENCODER_PRESETS)}.")
        for key, value in ECG_ENCODER_PRESETS[self.backbone].items():
            if getattr(self, key) is None:
                setattr(self, key, copy.deepcopy(value))
        for key in ("lead_names", "stage_channels", "stage_depths", "stage_kernel_sizes", "stage_strides",
                    "classifier_hidden_sizes"):
            value = getattr(self, key)
            if value is not None:
                setattr(self, key, list(value))
        if self.layer_norm_eps is None:
            self.layer_norm_eps = 1e-6
        if self.lead_names is None:
            self.lead_names = (
                list(STANDARD_12_LEAD_NAMES) if self.num_leads == 12 else [f"lead_{i}" for i in range(self.num_leads)]
            )
        if self.backbone_family == "resnet1d" and self.hidden_size is None:
            self.hidden_size = self.resnet_output_channels
        super().__post_init__(**kwargs)
        self.validate_architecture()

    @property
    def resnet_output_channels(self) -> int:
        """Channels of the last ResNet stage (the pooled feature size)."""
        return self.stage_channels[-1] * BLOCK_EXPANSION[self.block_type]

    def validate_architecture(self) -> None:
        """Check that the resolved fields describe a buildable network."""
        if self.backbone_family not in BACKBONE_FAMILIES:
            raise ValueError(f"backbone_family must be one of {BACKBONE_FAMILIES}, got {self.backbone_family!r}.")
        if len(self.lead_names) != self.num_leads:
            raise ValueError(f"lead_names has {len(self.lead_names)} names for num_leads={self.num_leads}.")
        if self.classifier_head not in ("linear", "mlp"):
            raise ValueError(f"classifier_head must be 'linear' or 'mlp', got {self.classifier_head!r}.")
        if self.backbone_family == "resnet1d":
            if self.block_type not in BLOCK_EXPANSION:
                raise ValueError(f"block_type must be one of {sorted(BLOCK_EXPANSION)}, got {self.block_type!r}.")
            lengths = {len(self.stage_channels), len(self.stage_depths), len(self.stage_kernel_sizes),
                       len(self.stage_strides)}
            if len(lengths) != 1:
                raise ValueError("stage_channels, stage_depths, stage_kernel_sizes and stage_strides must have "
                                 "the same length (one entry per stage).")
            if self.hidden_size != self.resnet_output_channels:
                raise ValueError(
                    f"For ResNet backbones hidden_size is the last stage's output channels "
                    f"({self.resnet_output_channels}), got {self.hidden_size}."
                )
        else:
            if self.hidden_size % self.num_attention_heads != 0:
                raise ValueError(
                    f"hidden_size ({self.hidden_size}) is not a multiple of num_attention_heads "
                    f"({self.num_attention_heads})."
                )
            if self.max_length % self.patch_size != 0:
                raise ValueError(f"max_length ({self.max_length}) must be a multiple of patch_size "
                                 f"({self.patch_size}).")


__all__ = [
    "ECGEncoderConfig",
    "ECG_ENCODER_PRESETS",
    "LORA_MODULES_TO_SAVE",
    "LORA_TARGET_MODULES",
    "MERL_LEAD_NAMES",
    "STANDARD_12_LEAD_NAMES",
]

ECGEncoderConfig.register_for_auto_class()
