"""MERL's released checkpoints as cardiomm models.

MERL (Liu et al., "Zero-Shot ECG Classification with Multimodal Learning and Test-time Clinical Knowledge
Enhancement", ICML 2024; code and weights under the MIT licence) released two files per ECG backbone:

* ``*_ckpt.pth``: the state dict of the whole ECG–text model. Keys ``ecg_encoder.*`` (a 1D ResNet or ViT), the ECG
  head (ResNets: ``downconv.*`` and the attention pooling ``att_pool_head.*``; ViTs: the MLP ``proj_e.*``), the
  two uni-modal alignment projections ``linear1.weight`` / ``linear2.weight``, the text tower ``lm_model.*`` (a
  BERT, Med-CPT's query encoder) and the text projection ``proj_t.*``. It becomes an [`ECGTextDualEncoder`] with an
  [`ECGTextProcessor`].
* ``*_encoder.pth``: the state dict of the ECG encoder alone. It becomes an [`ECGEncoderModel`] with an
  [`ECGFeatureExtractor`].

States saved from a ``DataParallel`` / ``DistributedDataParallel`` model (keys prefixed ``module.``) and MERL's
resume checkpoints (``{"epoch", "model_state_dict", "optimizer_state_dict"}``) are accepted too.

The conversion is strict: every tensor of the file is either mapped to exactly one cardiomm parameter or buffer,
or dropped for a stated reason (MERL's ResNet holds a 10-class classifier, ``linear.*``, that pretraining never
trains or uses; older ``transformers`` releases save BERT's ``embeddings.position_ids`` buffer); every cardiomm
tensor is filled, except ``logit_scale``, MERL's fixed temperature 0.07 (``log(1 / 0.07)``), which the files do
not hold. Anything else is a ``ValueError`` naming the file and the keys.

Two exact rewrites: the query/key/value projection of each ViT layer (one ``to_qkv`` matrix) is split into three,
and the biases of the ViT head's two linear layers, each followed by a batch norm, are folded into that batch
norm's running mean (``running_mean - bias``): batch norm subtracts the running mean in eval mode and the batch
mean in training mode, so a constant bias cancels either way.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, PreTrainedConfig
from transformers.initialization import no_init_weights

from ..modeling.configuration_ecg_encoder import MERL_LEAD_NAMES, ECGEncoderConfig
from ..modeling.configuration_ecg_text import ECGTextDualEncoderConfig
from .key_listing import dropped_key_lines, listing

#: Hub id of MERL's text tower (Med-CPT's query encoder), whose tokenizer a converted model uses.
MERL_TEXT_MODEL: str = "ncbi/MedCPT-Query-Encoder"
#: MERL's fixed inverse temperature, as a log: the logits are cosine similarities divided by 0.07.
MERL_LOGIT_SCALE: float = math.log(1 / 0.07)
#: MERL tokenises reports to 256 tokens.
MERL_MAX_TEXT_LENGTH: int = 256
#: MERL's preprocessing: 10 s at 500 Hz, min-max scaled per record.
MERL_SAMPLING_RATE: int = 500
MERL_CROP_LENGTH: int = 5000
#: MERL's dropout rate of the uni-modal alignment views.
MERL_UMA_DROPOUT: float = 0.1
#: Attention heads of MERL's attention pooling (not recoverable from the weights: the code fixes 4).
MERL_ATTENTION_POOL_HEADS: int = 4

#: (block type, blocks per stage) of MERL's ResNets -> cardiomm backbone preset.
MERL_RESNETS: dict[tuple[str, tuple[int, ...]], str] = {
    ("basic", (2, 2, 2, 2)): "resnet1d_18",
    ("basic", (3, 4, 6, 3)): "resnet1d_34",
    ("bottleneck", (3, 4, 6, 3)): "resnet1d_50",
    ("bottleneck", (3, 4, 23, 3)): "resnet1d_101",
}
#: Token width of MERL's ViTs -> cardiomm backbone preset.
MERL_VITS: dict[int, str] = {
    192: "merl_vit_tiny",
    384: "merl_vit_small",
    512: "merl_vit_middle",
    768: "merl_vit_base",
}

#: Source keys dropped on purpose, by pattern (matched against the key without ``ecg_encoder.``), with the reason.
RESNET_CLASSIFIER_REASON = (
    "MERL's ResNet classifier (10 outputs): created by the backbone class but never trained or used in pretraining"
)
POSITION_IDS_REASON = "BERT's constant position-index buffer (arange), rebuilt by transformers"

_BN_FIELDS = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_NESTED_STATE_KEYS: tuple[str, ...] = ("model_state_dict", "state_dict")


@dataclass
class MERLConversion:
    """What [`convert_merl_checkpoint`] did.

    Attributes:
        kind: ``"model"`` (whole ECG–text model -> ``ECGTextDualEncoder``) or ``"encoder"`` (ECG encoder alone ->
            ``ECGEncoderModel``).
        backbone: the cardiomm backbone preset of the ECG encoder (``"resnet1d_18"``, ``"merl_vit_tiny"``, ...).
        num_leads: input leads of the ECG encoder.
        projection_dim: dimension of the joint ECG–text space (``None`` for an encoder).
        num_converted: source tensors mapped into the cardiomm model.
        dropped: source keys left out, with the reason.
        output_dir: the folder written (``save_pretrained`` layout).
        source: the checkpoint file read.
        sha256: SHA-256 of that file.
    """

    kind: str
    backbone: str
    num_leads: int
    projection_dim: int | None
    num_converted: int
    dropped: dict[str, str] = field(default_factory=dict)
    output_dir: Path | None = None
    source: Path | None = None
    sha256: str | None = None

    def describe(self) -> str:
        """A short multi-line summary (what the ``cardiomm convert merl`` command prints)."""
        what = ("whole ECG-text model -> ECGTextDualEncoder" if self.kind == "model"
                else "ECG encoder -> ECGEncoderModel")
        lines = [
            f"MERL checkpoint {self.source} (sha256 {self.sha256})",
            f"kind: {self.kind} ({what})",
            f"backbone: {self.backbone}, {self.num_leads} leads"
            + (f", projection_dim {self.projection_dim}" if self.projection_dim is not None else ""),
            f"keys converted: {self.num_converted}",
        ]
        lines += dropped_key_lines(self.dropped)
        lines.append(f"written to {self.output_dir}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- reading

def unwrap_state_dict(checkpoint: Any, source: str) -> dict[str, torch.Tensor]:
    """The flat state dict of a loaded MERL file: nested under ``model_state_dict`` / ``state_dict`` (resume
    checkpoints) or not, with the ``module.`` prefix of ``DataParallel`` / ``DistributedDataParallel`` removed."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{source}: not a MERL checkpoint: it holds a {type(checkpoint).__name__}, not a state dict")
    for key in _NESTED_STATE_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    state: dict[str, torch.Tensor] = {}
    for key, value in checkpoint.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{source}: not a MERL checkpoint: entry {key!r} is a {type(value).__name__}, not a tensor "
                f"(top-level keys: {listing(map(str, checkpoint))})"
            )
        name = key
        while name.startswith("module."):
            name = name[len("module."):]
        if name in state:
            raise ValueError(f"{source}: key {name!r} appears both with and without the 'module.' prefix")
        state[name] = value
    if not state:
        raise ValueError(f"{source}: not a MERL checkpoint: the state dict is empty")
    return state


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_merl_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a MERL ``.pth`` file (``torch.load`` with ``weights_only=True``: no code from the file runs) and return
    its flat state dict (see [`unwrap_state_dict`])."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights-only errors all mean: not a loadable tensor file
        raise ValueError(f"{path}: cannot be read as a PyTorch checkpoint ({type(err).__name__}: {err})") from err
    return unwrap_state_dict(checkpoint, str(path))


# --------------------------------------------------------------------------------------------- detecting the layout
def _indices(keys: Iterable[str], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := regex.match(k))})


def _shape(state: Mapping[str, torch.Tensor], key: str, source: str, ndim: int, prefix: str = "") -> tuple[int, ...]:
    """Shape of ``state[key]`` (named ``prefix + key`` in errors), which must have ``ndim`` dimensions."""
    if key not in state:
        raise ValueError(f"{source}: not a MERL checkpoint: missing {prefix + key!r}")
    shape = tuple(state[key].shape)
    if len(shape) != ndim:
        raise ValueError(f"{source}: {prefix + key!r} has shape {shape}, expected a {ndim}-dimensional tensor")
    return shape


def _lead_count(num_leads: int, source: str) -> int:
    if num_leads != len(MERL_LEAD_NAMES):
        raise ValueError(
            f"{source}: the ECG encoder takes {num_leads} input leads; MERL's models take the 12 leads "
            f"{', '.join(MERL_LEAD_NAMES)}, the only lead layout this conversion knows"
        )
    return num_leads


def detect_ecg_config(ecg: Mapping[str, torch.Tensor], source: str, prefix: str = "") -> ECGEncoderConfig:
    """The cardiomm ECG encoder configuration of a MERL ECG encoder state dict (keys without ``prefix``, e.g.
    ``ecg_encoder.``)."""
    if "conv1.weight" in ecg:
        num_leads = _lead_count(_shape(ecg, "conv1.weight", source, 3, prefix)[1], source)
        block_type = "bottleneck" if "layer1.0.conv3.weight" in ecg else "basic"
        stages = _indices(ecg, r"layer(\d+)\.")
        if stages != [1, 2, 3, 4]:
            raise ValueError(f"{source}: a MERL ResNet has stages layer1..layer4, found layer{stages}")
        depths = tuple(len(_indices(ecg, rf"layer{s}\.(\d+)\.")) for s in stages)
        backbone = MERL_RESNETS.get((block_type, depths))
        if backbone is None:
            raise ValueError(
                f"{source}: ResNet with {block_type} blocks {list(depths)} per stage is none of MERL's ResNet18/34/50/"
                f"101 ({', '.join(f'{b} {list(d)}' for b, d in MERL_RESNETS)})"
            )
        return ECGEncoderConfig(backbone=backbone, num_leads=num_leads, lead_names=list(MERL_LEAD_NAMES))
    if "to_patch_embedding.weight" in ecg:
        width, num_leads, patch_size = _shape(ecg, "to_patch_embedding.weight", source, 3, prefix)
        _lead_count(num_leads, source)
        positions = _shape(ecg, "pos_embedding", source, 3, prefix)
        backbone = MERL_VITS.get(width)
        if backbone is None:
            raise ValueError(f"{source}: ViT of width {width} is none of MERL's ViTs (widths {sorted(MERL_VITS)})")
        depth = len(_indices(ecg, r"block(\d+)\."))
        overrides: dict[str, Any] = {}
        preset = ECGEncoderConfig(backbone=backbone)
        if depth != preset.num_hidden_layers:
            overrides["num_hidden_layers"] = depth
        if patch_size != preset.patch_size:
            overrides["patch_size"] = patch_size
        if positions[1] * patch_size != preset.max_length:
            overrides["max_length"] = positions[1] * patch_size
        return ECGEncoderConfig(backbone=backbone, num_leads=num_leads, lead_names=list(MERL_LEAD_NAMES), **overrides)
    raise ValueError(
        f"{source}: not a MERL checkpoint: found neither a MERL ResNet ('conv1.weight', 'layer1.*') nor a MERL ViT "
        f"('to_patch_embedding.weight', 'block0.*'); keys: {listing(prefix + k for k in ecg)}"
    )


def detect_text_config(lm: Mapping[str, torch.Tensor], source: str, prefix: str = "lm_model.") -> BertConfig:
    """The ``BertConfig`` of MERL's text tower from the shapes of its weights (keys without ``lm_model.``);
    attention heads are ``hidden_size // 64`` (BERT's head size)."""
    vocab_size, hidden_size = _shape(lm, "embeddings.word_embeddings.weight", source, 2, prefix)
    max_positions = _shape(lm, "embeddings.position_embeddings.weight", source, 2, prefix)[0]
    type_vocab_size = _shape(lm, "embeddings.token_type_embeddings.weight", source, 2, prefix)[0]
    intermediate_size = _shape(lm, "encoder.layer.0.intermediate.dense.weight", source, 2, prefix)[0]
    num_layers = len(_indices(lm, r"encoder\.layer\.(\d+)\."))
    if hidden_size % 64:
        raise ValueError(f"{source}: text tower width {hidden_size} is not a multiple of BERT's head size 64")
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // 64,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_positions,
        type_vocab_size=type_vocab_size,
    )


def detect_config(state: Mapping[str, torch.Tensor], source: str = "<state dict>") -> PreTrainedConfig:
    """The cardiomm configuration of a flat MERL state dict: an [`ECGTextDualEncoderConfig`] for a whole model
    (any ``ecg_encoder.`` key), else an [`ECGEncoderConfig`]."""
    if not any(k.startswith("ecg_encoder.") for k in state):
        return detect_ecg_config(state, source)
    ecg_config = detect_ecg_config(_sub(state, "ecg_encoder."), source, "ecg_encoder.")
    text_config = detect_text_config(_sub(state, "lm_model."), source, "lm_model.")
    hidden, _ = _shape(state, "proj_t.0.weight", source, 2)
    projection_dim, _ = _shape(state, "proj_t.2.weight", source, 2)
    fields: dict[str, Any] = {}
    if ecg_config.backbone_family == "resnet1d":
        ecg_dim = _shape(state, "downconv.weight", source, 3)[0]
        positions = _shape(state, "att_pool_head.positional_embedding", source, 3)[1] - 1
        fields.update(ecg_projection_type="attention_pool", attention_pool_positions=positions,
                      attention_pool_heads=MERL_ATTENTION_POOL_HEADS)
    else:
        ecg_hidden = _shape(state, "proj_e.0.weight", source, 2)[0]
        ecg_dim = _shape(state, "proj_e.3.weight", source, 2)[0]
        if ecg_hidden != hidden:
            raise ValueError(
                f"{source}: the ECG head's hidden width ({ecg_hidden}, proj_e.0) differs from the text head's "
                f"({hidden}, proj_t.0); cardiomm's projections share one projection_hidden_size"
            )
    if ecg_dim != projection_dim:
        raise ValueError(
            f"{source}: the ECG head projects to {ecg_dim} dimensions and the text head (proj_t.2) to "
            f"{projection_dim}; they must share the joint space"
        )
    return ECGTextDualEncoderConfig.from_ecg_text_configs(
        ecg_config,
        text_config,
        text_model_name_or_path=MERL_TEXT_MODEL,
        projection_dim=projection_dim,
        projection_hidden_size=hidden,
        projection_type="mlp",
        text_pooling="pooler",
        logit_scale_init_value=MERL_LOGIT_SCALE,
        learnable_temperature=False,
        loss="clip",
        unimodal_alignment=True,
        uma_projection=True,
        uma_dropout=MERL_UMA_DROPOUT,
        uma_weight=1.0,
        # MERL computes the text features under torch.no_grad(): its text tower is never trained
        freeze_text_layers=-1,
        **fields,
    )


def _sub(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# ------------------------------------------------------------------------------------------------------ key mapping
Rule = tuple[str, Callable[[re.Match], list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]]]


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _to(target: str) -> Callable[[re.Match], list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]]:
    """A rule target: ``target`` formatted with the match's groups (``{1}``, ``{s}`` = stage index - 1)."""

    def build(match: re.Match) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        groups = match.groups()
        stage = str(int(groups[0]) - 1) if groups and groups[0].isdigit() else ""
        return [(target.format(match.group(0), *groups, s=stage), _same)]

    return build


def _squeeze(target: str, ndim: int) -> Callable[[re.Match], list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]]:
    """A rule target taking the tensor as ``ndim`` dimensions, dropping leading dimensions of size 1 (a tensor with
    other leading sizes is kept as it is, for the shape check to report)."""

    def squeeze(tensor: torch.Tensor) -> torch.Tensor:
        leading = tensor.shape[: max(tensor.dim() - ndim, 0)]
        return tensor.reshape(tensor.shape[-ndim:]) if all(size == 1 for size in leading) else tensor

    def build(match: re.Match) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        return [(target, squeeze)]

    return build


def _split_qkv(match: re.Match) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    layer, kind = match.group(1), match.group(2)
    return [
        (f"encoder.layers.{layer}.attention.{name}_proj.{kind}", lambda t, i=i: t.chunk(3, dim=0)[i].clone())
        for i, name in enumerate(("q", "k", "v"))
    ]


RESNET_RULES: list[Rule] = [
    (r"conv1\.weight", _to("encoder.stem_conv.weight")),
    (rf"bn1\.{_BN_FIELDS}", _to("encoder.stem_bn.{1}")),
    (r"layer(\d+)\.(\d+)\.(conv[123])\.weight", _to("encoder.stages.{s}.{2}.{3}.weight")),
    (rf"layer(\d+)\.(\d+)\.(bn[123])\.{_BN_FIELDS}", _to("encoder.stages.{s}.{2}.{3}.{4}")),
    (r"layer(\d+)\.(\d+)\.shortcut\.0\.weight", _to("encoder.stages.{s}.{2}.shortcut_conv.weight")),
    (rf"layer(\d+)\.(\d+)\.shortcut\.1\.{_BN_FIELDS}", _to("encoder.stages.{s}.{2}.shortcut_bn.{3}")),
]
VIT_RULES: list[Rule] = [
    (r"to_patch_embedding\.weight", _to("encoder.patch_embedding.weight")),
    (r"pos_embedding", _squeeze("encoder.position_embeddings", 2)),
    (r"block(\d+)\.attn\.norm\.(weight|bias)", _to("encoder.layers.{1}.layernorm_before.{2}")),
    (r"block(\d+)\.attn\.fn\.to_qkv\.(weight|bias)", _split_qkv),
    (r"block(\d+)\.attn\.fn\.to_out\.0\.(weight|bias)", _to("encoder.layers.{1}.attention.out_proj.{2}")),
    (r"block(\d+)\.ff\.norm\.(weight|bias)", _to("encoder.layers.{1}.layernorm_after.{2}")),
    (r"block(\d+)\.ff\.fn\.net\.0\.(weight|bias)", _to("encoder.layers.{1}.mlp.fc1.{2}")),
    (r"block(\d+)\.ff\.fn\.net\.3\.(weight|bias)", _to("encoder.layers.{1}.mlp.fc2.{2}")),
    (r"norm\.(weight|bias)", _to("encoder.layernorm.{1}")),
]
ENCODER_DROPPED: dict[str, str] = {r"linear\.(weight|bias)": RESNET_CLASSIFIER_REASON}

ATTENTION_POOL_RULES: list[Rule] = [
    (r"downconv\.(weight|bias)", _to("ecg_projection.downconv.{1}")),
    (r"att_pool_head\.cls_token", _squeeze("ecg_projection.class_embedding", 1)),
    (r"att_pool_head\.positional_embedding", _squeeze("ecg_projection.position_embedding", 2)),
    (r"att_pool_head\.mhsa\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
     _to("ecg_projection.attention.{1}")),
    (r"att_pool_head\.c_proj\.(weight|bias)", _to("ecg_projection.c_proj.{1}")),
]
# proj_e.0.bias and proj_e.3.bias are folded into the running means of proj_e.1 and proj_e.4 (see _fold_biases)
MLP_HEAD_RULES: list[Rule] = [
    (r"proj_e\.(0|3)\.weight", _to("ecg_projection.{1}.weight")),
    (r"proj_e\.(1|4)\.(weight|bias|running_var|num_batches_tracked)", _to("ecg_projection.{1}.{2}")),
]
MODEL_RULES: list[Rule] = [
    (r"linear(1|2)\.weight", lambda m: [(f"uma_projections.{int(m.group(1)) - 1}.weight", _same)]),
    (r"lm_model\.(.+)", _to("text_model.{1}")),
    (r"proj_t\.(0|2)\.(weight|bias)", _to("text_projection.{1}.{2}")),
]
MODEL_DROPPED: dict[str, str] = {r"lm_model\.embeddings\.position_ids": POSITION_IDS_REASON}
#: (linear bias, batch norm) of the ViT head whose bias folds into the batch norm's running mean.
FOLDED_BIASES: tuple[tuple[str, str], ...] = (("proj_e.0.bias", "proj_e.1"), ("proj_e.3.bias", "proj_e.4"))


def _apply_rules(
    state: Mapping[str, torch.Tensor],
    rules: list[Rule],
    dropped_patterns: Mapping[str, str],
    out: dict[str, torch.Tensor],
    origin: dict[str, str],
    dropped: dict[str, str],
    key_prefix: str = "",
    target_prefix: str = "",
) -> set[str]:
    """Map the keys of ``state`` that the rules cover; returns the keys left unmatched."""
    compiled = [(re.compile(pattern), build) for pattern, build in rules]
    dropped_compiled = [(re.compile(pattern), reason) for pattern, reason in dropped_patterns.items()]
    unmatched: set[str] = set()
    for key, tensor in state.items():
        for regex, reason in dropped_compiled:
            if regex.fullmatch(key):
                dropped[key_prefix + key] = reason
                break
        else:
            for regex, build in compiled:
                match = regex.fullmatch(key)
                if match:
                    for target, transform in build(match):
                        target = target_prefix + target
                        if target in out:
                            raise ValueError(f"{origin[target]} and {key_prefix + key} both map to {target}")
                        out[target] = transform(tensor)
                        origin[target] = key_prefix + key
                    break
            else:
                unmatched.add(key_prefix + key)
    return unmatched


def _fold_biases(
    state: Mapping[str, torch.Tensor], out: dict[str, torch.Tensor], origin: dict[str, str]
) -> set[str]:
    """Fold each ViT-head linear bias into the running mean of the batch norm after it; returns the source keys
    consumed (the biases and running means)."""
    used: set[str] = set()
    for bias_key, norm in FOLDED_BIASES:
        mean_key = f"{norm}.running_mean"
        if bias_key in state and mean_key in state:
            bias, mean = state[bias_key], state[mean_key]
            if bias.shape != mean.shape:
                raise ValueError(f"{bias_key} has shape {tuple(bias.shape)}, {mean_key} {tuple(mean.shape)}")
            target = f"ecg_projection.{norm.rsplit('.', 1)[1]}.running_mean"
            out[target] = (mean.double() - bias.double()).to(mean.dtype)
            origin[target] = f"{mean_key} - {bias_key}"
            used |= {bias_key, mean_key}
    return used


def map_merl_keys(
    state: Mapping[str, torch.Tensor], config: PreTrainedConfig
) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, str], set[str]]:
    """Map a flat MERL state dict to cardiomm keys.

    Returns ``(new_state_dict, origin, dropped, unmatched)``: ``origin`` names the source of each new key,
    ``dropped`` the source keys left out on purpose (with the reason), ``unmatched`` the source keys no rule covers.
    """
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    dropped: dict[str, str] = {}
    is_model = isinstance(config, ECGTextDualEncoderConfig)
    ecg_config = config.ecg_config if is_model else config
    ecg_rules = RESNET_RULES if ecg_config.backbone_family == "resnet1d" else VIT_RULES
    ecg_state = _sub(state, "ecg_encoder.") if is_model else dict(state)
    unmatched = _apply_rules(
        ecg_state, ecg_rules, ENCODER_DROPPED, out, origin, dropped,
        key_prefix="ecg_encoder." if is_model else "", target_prefix="ecg_model." if is_model else "",
    )
    if is_model:
        rest = {k: v for k, v in state.items() if not k.startswith("ecg_encoder.")}
        head_rules = ATTENTION_POOL_RULES if ecg_config.backbone_family == "resnet1d" else MLP_HEAD_RULES
        if head_rules is MLP_HEAD_RULES:
            folded = _fold_biases(rest, out, origin)
            rest = {k: v for k, v in rest.items() if k not in folded}
        unmatched |= _apply_rules(rest, head_rules + MODEL_RULES, MODEL_DROPPED, out, origin, dropped)
    return out, origin, dropped, unmatched


# --------------------------------------------------------------------------------------------------- checking
def model_class(config: PreTrainedConfig) -> type:
    """The cardiomm model class a converted MERL checkpoint becomes."""
    if isinstance(config, ECGTextDualEncoderConfig):
        from ..modeling.modeling_ecg_text import ECGTextDualEncoder

        return ECGTextDualEncoder
    from ..modeling.modeling_ecg_encoder import ECGEncoderModel

    return ECGEncoderModel


def expected_shapes(config: PreTrainedConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor of the cardiomm model's state dict (the model is built on the meta device)."""
    with no_init_weights(), torch.device("meta"):
        model = model_class(config)(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def merl_state_dict_to_cardiomm(
    state_dict: Mapping[str, Any], source: str = "<state dict>"
) -> tuple[PreTrainedConfig, dict[str, torch.Tensor], dict[str, str]]:
    """Convert a MERL state dict to a cardiomm configuration and state dict.

    Args:
        state_dict: a MERL state dict: the whole ECG–text model (``*_ckpt.pth``) or the ECG encoder
            (``*_encoder.pth``); with or without the ``module.`` prefix, or a resume checkpoint holding it under
            ``model_state_dict`` / ``state_dict``.
        source: the file it came from, named in errors.

    Returns:
        ``(config, new_state_dict, dropped)``: an [`ECGTextDualEncoderConfig`] (whole model) or
        [`ECGEncoderConfig`] (encoder); the tensors under cardiomm's keys, every key of the model filled
        (``logit_scale`` set to ``log(1 / 0.07)``); the source keys left out, with the reason.

    Raises:
        ValueError: for a file that is not a MERL checkpoint, source keys that are neither mapped nor known to be
            unused, cardiomm keys left unfilled, or tensors of the wrong shape; the message names ``source`` and
            the keys.
    """
    state = unwrap_state_dict(state_dict, source)
    config = detect_config(state, source)
    new_state, origin, dropped, unmatched = map_merl_keys(state, config)
    expected = expected_shapes(config)
    if isinstance(config, ECGTextDualEncoderConfig) and "logit_scale" in expected and "logit_scale" not in new_state:
        new_state["logit_scale"] = torch.full(expected["logit_scale"], MERL_LOGIT_SCALE)
        origin["logit_scale"] = "MERL's fixed temperature 0.07"
    unexpected = unmatched | {origin[k] for k in new_state if k not in expected}
    missing = set(expected) - set(new_state)
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} key(s) of the file are not part of a MERL "
                        f"{_kind_name(config)}: {listing(unexpected)}")
        if any(k == "head.weight" or k.endswith(".head.weight") for k in unexpected):
            problems.append("('head.*' is a fine-tuned classification head; only pretrained MERL encoders convert)")
    if missing:
        problems.append(f"{len(missing)} weight(s) of the cardiomm model have no source in the file: "
                        f"{listing(missing)}")
    if problems:
        raise ValueError(f"{source}: cannot convert: " + "; ".join(problems))
    wrong = [
        f"{origin[k]} -> {k}: expected {expected[k]}, got {tuple(v.shape)}"
        for k, v in new_state.items() if tuple(v.shape) != expected[k]
    ]
    if wrong:
        raise ValueError(f"{source}: {len(wrong)} tensor(s) have the wrong shape: " + listing(wrong, "; ", sort=False))
    new_state = {k: v.contiguous() for k, v in new_state.items()}
    return config, new_state, dropped


def _kind_name(config: PreTrainedConfig) -> str:
    if isinstance(config, ECGTextDualEncoderConfig):
        return f"{config.ecg_config.backbone} ECG-text model"
    return f"{config.backbone} ECG encoder"


# ------------------------------------------------------------------------------------------------------ writing
def load_merl_tokenizer(tokenizer: str | os.PathLike | None, text_model_name: str) -> Any:
    """The report tokenizer, from a folder or Hub id (``tokenizer``, default ``text_model_name``), offline."""
    from transformers import AutoTokenizer

    name = str(tokenizer) if tokenizer is not None else text_model_name
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(
            f"cannot load the tokenizer {name!r} without network access ({type(err).__name__}: {err}). Pass "
            f"--tokenizer DIR (tokenizer=DIR), a folder holding the text tower's tokenizer, e.g. a downloaded copy "
            f"of {MERL_TEXT_MODEL}"
        ) from err


def merl_feature_extractor() -> Any:
    """The ECG feature extractor of MERL's preprocessing: MERL's lead order, 500 Hz, per-record min-max, 5000
    samples (10 s)."""
    from ..processing.feature_extraction_ecg import ECGFeatureExtractor

    return ECGFeatureExtractor(
        lead_names=list(MERL_LEAD_NAMES),
        sampling_rate=MERL_SAMPLING_RATE,
        normalization="minmax",
        crop_length=MERL_CROP_LENGTH,
    )


def check_output_dir(out_dir: Path) -> None:
    """Refuse an output path that is a file or a folder with files in it (a conversion writes a new folder)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: output path exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir}: output folder is not empty; choose a new or empty folder")


def convert_merl_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    tokenizer: str | os.PathLike | None = None,
    text_model_name: str = MERL_TEXT_MODEL,
) -> MERLConversion:
    """Convert a MERL checkpoint file into a cardiomm checkpoint folder.

    The folder holds safetensors weights, ``config.json``, the model code (loadable with ``trust_remote_code``
    without cardiomm), MERL's preprocessing as an [`ECGFeatureExtractor`] (and, for a whole model, an
    [`ECGTextProcessor`] with the report tokenizer, reports up to 256 tokens) and a model card (``README.md``).

    Args:
        checkpoint: MERL ``.pth`` file: ``*_ckpt.pth`` (whole model), ``*_encoder.pth`` (ECG encoder), or a resume
            checkpoint.
        out_dir: output folder (created; must be new or empty).
        tokenizer: folder or Hub id of the report tokenizer, loaded offline (``local_files_only``); default
            ``text_model_name``. Not used for an encoder.
        text_model_name: the text tower's Hub id, recorded as ``text_model_name_or_path``.

    Raises:
        ValueError: for an unreadable or non-MERL file (see [`merl_state_dict_to_cardiomm`]), a tokenizer that
            cannot be loaded offline or does not fit the text tower, or a non-empty ``out_dir``.
    """
    from ..hub.model_card import write_model_card
    from ..hub.remote_code import remote_code_files

    source = Path(checkpoint)
    out = Path(out_dir)
    check_output_dir(out)
    state = load_merl_state_dict(source)
    config, new_state, dropped = merl_state_dict_to_cardiomm(state, str(source))
    is_model = isinstance(config, ECGTextDualEncoderConfig)
    text_tokenizer = None
    if is_model:
        config.text_model_name_or_path = text_model_name
        text_tokenizer = load_merl_tokenizer(tokenizer, text_model_name)
        vocab_size = config.text_config.vocab_size
        if len(text_tokenizer) > vocab_size:
            raise ValueError(
                f"the tokenizer {tokenizer or text_model_name!r} has {len(text_tokenizer)} tokens but the text tower "
                f"of {source} embeds {vocab_size}; pass the tokenizer of the model MERL was trained with "
                f"({MERL_TEXT_MODEL})"
            )
    with no_init_weights():  # every weight is loaded next
        model = model_class(config)(config)
    model.load_state_dict(new_state, strict=True)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    feature_extractor = merl_feature_extractor()
    if is_model:
        from ..processing.processing_ecg_text import ECGTextProcessor

        ECGTextProcessor(feature_extractor, text_tokenizer, max_text_length=MERL_MAX_TEXT_LENGTH).save_pretrained(out)
    else:
        feature_extractor.save_pretrained(out)
    ecg_config = config.ecg_config if is_model else config
    result = MERLConversion(
        kind="model" if is_model else "encoder",
        backbone=ecg_config.backbone,
        num_leads=ecg_config.num_leads,
        projection_dim=config.projection_dim if is_model else None,
        num_converted=len(state) - len(dropped),
        dropped=dropped,
        output_dir=out,
        source=source,
        sha256=file_sha256(source),
    )
    write_model_card(out, merl_card_info(result, config), feature_extractor, template="merl.md")
    missing_code = remote_code_files(out).missing
    if missing_code:
        raise RuntimeError(f"{out}: saved without the code files {missing_code}")
    return result


def merl_card_info(result: MERLConversion, config: PreTrainedConfig) -> Any:
    """The model-card fields of a converted MERL checkpoint."""
    from ..hub.model_card import DEFAULT_LIMITATIONS, ModelCardInfo

    if result.kind == "model":
        ecg_config, head = config.ecg_config, (
            "attention pooling (1x1 convolution to the joint space, one attention query with a class token)"
            if config.ecg_config.backbone_family == "resnet1d"
            else "MLP projector (Linear-BatchNorm-ReLU-Linear-BatchNorm)"
        )
        architecture = (
            f"MERL ECG–text dual encoder: {ecg_config.backbone} ECG encoder ({ecg_config.num_leads} leads) with "
            f"{head}; BERT text encoder ({config.text_config.num_hidden_layers} layers, width "
            f"{config.text_config.hidden_size}, pooler output) with a Linear-GELU-Linear projector; joint space of "
            f"{config.projection_dim} dimensions, logits = cosine similarity / 0.07."
        )
        summary = (
            f"MERL's ECG–text model ({result.backbone}) converted to a cardiomm `ECGTextDualEncoder`: zero-shot ECG "
            "classification and ECG–report retrieval."
        )
    else:
        architecture = (
            f"MERL's {result.backbone} ECG encoder ({result.num_leads} leads); `pooler_output` is the ECG "
            "embedding MERL's downstream experiments use."
        )
        summary = (
            f"MERL's ECG encoder ({result.backbone}) converted to a cardiomm `ECGEncoderModel`: ECG features for "
            "linear probing and fine-tuning."
        )
    return ModelCardInfo(
        model_name=f"MERL {result.backbone} ({'ECG-text model' if result.kind == 'model' else 'ECG encoder'})",
        summary=summary,
        architecture=architecture,
        training_procedure=(
            "Pretrained by the MERL authors on MIMIC-IV-ECG ECG–report pairs (CLIP loss with uni-modal alignment). "
            "The weights here are theirs, converted tensor by tensor without retraining."
        ),
        limitations=list(DEFAULT_LIMITATIONS),
        license="mit",
        tags=["cardiomm", "ecg", "cardiology", "merl"],
        citation=MERL_CITATION,
        extra={
            "source_file": result.source.name if result.source else "",
            "source_sha256": result.sha256 or "",
            "dropped": result.dropped,
            "kind": result.kind,
        },
    )


MERL_CITATION: str = """```bibtex
@inproceedings{liu2024merl,
  title     = {Zero-Shot {ECG} Classification with Multimodal Learning and Test-time Clinical Knowledge Enhancement},
  author    = {Liu, Che and Wan, Zhongwei and Ouyang, Cheng and Quilodr{\\'a}n-Casas, C{\\'e}sar and
               Arcucci, Rossella},
  booktitle = {Proceedings of the 41st International Conference on Machine Learning (ICML)},
  year      = {2024}
}
```"""


__all__ = [
    "MERL_LOGIT_SCALE",
    "MERL_MAX_TEXT_LENGTH",
    "MERL_TEXT_MODEL",
    "MERLConversion",
    "convert_merl_checkpoint",
    "detect_config",
    "load_merl_state_dict",
    "map_merl_keys",
    "merl_state_dict_to_cardiomm",
    "unwrap_state_dict",
]
