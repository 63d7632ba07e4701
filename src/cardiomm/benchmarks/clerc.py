"""Speed of CLERC's encoders and of a full CLERC training step on this machine's CPU (or the device given).

``cardiomm bench clerc`` prints three tables.

**Encoders**, one row per encoder, variant and precision, at the paper's input sizes (``size="paper"``: the towers
of the default [`CLERCMultiEncoderConfig`], random weights) or at the tiny configuration's (``size="tiny"``, see
:func:`tiny_clerc_config`):

* ``ecg`` -- the ECG 1D CNN (ResNet1d-18) on (B, 12, 2500);
* ``echo/angiogram`` -- R(2+1)D-18 on (B, 3, 16, 112, 112), in four variants sharing the same weights:
  ``cardiomm`` (:class:`R2Plus1DVideoModel` with its default configuration), ``reference`` (a plain-PyTorch
  R(2+1)D-18 of ``nn.Conv3d`` / ``nn.BatchNorm3d`` / ``nn.ReLU`` modules in torchvision's layout, defined here:
  :class:`ReferenceR2Plus1D`), the other memory format (``channels_last_3d``, or ``contiguous`` when the default
  is channels-last) and ``fused_bn`` (the model after ``fuse_batch_norm()``, forward only);
* ``chest_xray`` -- CLIP's ViT-B/32 (``CLIPVisionModel``, default ``CLIPVisionConfig``) on (B, 3, 224, 224);
* ``text`` -- CLIP's text transformer (``CLIPTextModel``, default ``CLIPTextConfig``) on (B, 77) tokens.

Columns: ``forward_per_s`` (items -- ECGs, clips, images, reports -- per second in eval mode under
``torch.inference_mode``), ``train_per_s`` (forward, ``pooler_output.square().mean()`` backward and an SGD step, in
training mode), ``gflop_per_item`` (forward FLOPs of one item counted by ``torch.utils.flop_counter.FlopCounterMode``
on the meta device: 2 x multiply-accumulates of convolutions, matrix multiplies and attention; norms, activations
and additions are not counted), ``forward_gflops`` / ``train_gflops`` (achieved rates; training FLOPs counted the
same way over forward + backward), ``matmul_gflops`` (the fp32 rate of a 2048^3 ``torch.matmul``, measured right
before and right after the encoder's timings, the better kept) and ``forward_frac`` / ``train_frac`` (achieved rate
/ that fp32 matmul rate, also for bf16 rows, which can exceed 1).

**R(2+1)D ratios** of the same run: cardiomm / reference training and forward rates (the model should train at
least at half the plain-PyTorch implementation's FLOP rate), other memory format / cardiomm and fused batch norm /
cardiomm forward (and training for the memory format). The variants are timed in alternating rounds, so that a
change of load on a shared machine hits them alike.

**CLERC step**: full optimiser steps (forward with every modality present for every patient, the sum of the 28
pairwise CLIP losses, backward, AdamW) of :class:`CLERCMultiEncoder` at the paper's sizes and at the tiny
configuration's: ``step_s``, ``patients_per_s``, ``gflop_per_step`` (the towers' training FLOPs; projections and
losses are negligible and not counted), the achieved rate and its fraction of the matmul rate, the step's phases
(``forward_s``: forward with the loss, ``backward_s``, ``optimizer_s``: the AdamW update) and the share of each
tower in the forward time (``share_<tower>``: the time inside that tower's forward in the same step, measured with
forward hooks; ``share_text`` is the one call that encodes the four report types; ``share_rest`` is what the towers
leave: projections, losses). The row is the fastest of the timed steps.

Timings are the best of ``repeats`` rounds (forward passes, cheap next to training: ``2 x repeats + 1`` rounds; CLERC
steps: ``step_repeats`` steps) after ``warmup`` rounds. ``precisions``: ``fp32`` and
``bf16-autocast`` (fp32 weights under ``torch.autocast(device, dtype=torch.bfloat16)``, as mixed-precision training
runs). On a CPU whose cores other processes are using, the many small operations of the tiny models (and of the
optimiser steps) can spend most of their time with one thread waiting for another that is not running: compare such
rows with ``num_threads=1`` (``--num-threads 1``). Run ``cardiomm bench clerc --help``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModel, BertConfig, CLIPVisionConfig, CLIPVisionModel

from ..modeling.configuration_clerc import CLERC_REPORT_MODALITIES, CLERCMultiEncoderConfig
from ..modeling.configuration_ecg_encoder import ECGEncoderConfig
from ..modeling.configuration_r2plus1d import R2Plus1DConfig
from ..modeling.modeling_clerc import CLERCMultiEncoder
from ..modeling.modeling_ecg_encoder import ECGEncoderModel
from ..modeling.modeling_r2plus1d import R2Plus1DVideoModel
from .encoders import matmul_gflops

SIZES: tuple[str, ...] = ("paper", "tiny")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16-autocast")
ENCODERS: tuple[str, ...] = ("ecg", "video", "chest_xray", "text")

#: Input sizes of each configuration: ECG samples, video frames and frame side, chest X-ray side, report tokens.
INPUT_SIZES: dict[str, dict[str, int]] = {
    "paper": {"ecg_length": 2500, "frames": 16, "frame_size": 112, "image_size": 224, "text_length": 77},
    "tiny": {"ecg_length": 2500, "frames": 8, "frame_size": 56, "image_size": 112, "text_length": 77},
}
#: Items per forward / training step of each encoder, per configuration.
ENCODER_BATCH_SIZES: dict[str, dict[str, int]] = {
    "paper": {"ecg": 8, "video": 1, "chest_xray": 4, "text": 4},
    "tiny": {"ecg": 8, "video": 2, "chest_xray": 8, "text": 4},
}
_ENCODER_LABELS = {"ecg": "ecg", "video": "echo/angiogram", "chest_xray": "chest_xray", "text": "text"}

Progress = Callable[[str], None]


# ------------------------------------------------------------------------------------------------- configurations
def tiny_clerc_config() -> CLERCMultiEncoderConfig:
    """CLERC at CPU-run sizes: the ECG ResNet1d-8 (about 1M parameters), R(2+1)D towers of widths 16-128 with one
    block per stage (for 8 frames of 56 x 56), a 2-layer ViT of width 128 (112 x 112 images, 16 x 16 patches) and a
    text tower of all-MiniLM-L6-v2's BERT shape (6 layers, width 384, mean pooling), 512-d joint space."""
    video = dict(stem_width=12, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])
    return CLERCMultiEncoderConfig(
        ecg_config=ECGEncoderConfig(backbone="resnet1d_8"),
        echo_config=R2Plus1DConfig(**video),
        angiogram_config=R2Plus1DConfig(**video),
        chest_xray_config=CLIPVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=INPUT_SIZES["tiny"]["image_size"],
                                           patch_size=16),
        text_config=BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
        text_pooling="mean",
    )


def clerc_config(size: str) -> CLERCMultiEncoderConfig:
    """The CLERC configuration of ``size``: ``"paper"`` (the defaults: ResNet1d-18, R(2+1)D-18, CLIP ViT-B/32 and
    CLIP's text transformer) or ``"tiny"`` (:func:`tiny_clerc_config`)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {list(SIZES)}")
    return CLERCMultiEncoderConfig() if size == "paper" else tiny_clerc_config()


# ----------------------------------------------------------------------------------- plain-PyTorch R(2+1)D reference
class _ReferenceConv2Plus1D(nn.Sequential):
    """(2+1)D convolution: 1 x 3 x 3 spatial convolution, batch norm, ReLU, 3 x 1 x 1 temporal convolution."""

    def __init__(self, in_planes: int, out_planes: int, mid_planes: int, stride: int) -> None:
        super().__init__(
            nn.Conv3d(in_planes, mid_planes, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(mid_planes),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid_planes, out_planes, (3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0), bias=False),
        )


class _ReferenceBasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        mid_planes = (in_planes * planes * 27) // (in_planes * 9 + 3 * planes)
        self.conv1 = nn.Sequential(_ReferenceConv2Plus1D(in_planes, planes, mid_planes, stride),
                                   nn.BatchNorm3d(planes), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(_ReferenceConv2Plus1D(planes, planes, mid_planes, 1), nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv3d(in_planes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm3d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.conv1(x))
        out += residual
        return self.relu(out)


class ReferenceR2Plus1D(nn.Module):
    """R(2+1)D-18 written in plain PyTorch the way torchvision's ``r2plus1d_18`` is (same module tree and parameter
    names, no classifier): the baseline the package model is timed against.

    ``forward(pixel_values)`` returns the global average pool, (batch, widths[-1]).
    """

    def __init__(self, widths: Sequence[int] = (64, 128, 256, 512), depths: Sequence[int] = (2, 2, 2, 2),
                 strides: Sequence[int] = (1, 2, 2, 2), stem_width: int = 45) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(3, stem_width, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(stem_width),
            nn.ReLU(inplace=True),
            nn.Conv3d(stem_width, widths[0], (3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
        )
        in_planes = widths[0]
        for index, (planes, depth, stride) in enumerate(zip(widths, depths, strides), 1):
            blocks = []
            for block in range(depth):
                blocks.append(_ReferenceBasicBlock(in_planes, planes, stride if block == 0 else 1))
                in_planes = planes
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self.num_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool3d(1)

    @classmethod
    def from_config(cls, config: R2Plus1DConfig) -> ReferenceR2Plus1D:
        """The reference network of the widths, depths and strides of ``config`` (torchvision's kernel sizes)."""
        kernels = (config.stem_spatial_kernel_size, config.stem_temporal_kernel_size, config.stem_spatial_stride,
                   config.spatial_kernel_size, config.temporal_kernel_size, config.num_channels)
        if kernels != (7, 3, 2, 3, 3, 3):
            raise ValueError("the reference R(2+1)D has torchvision's kernel sizes, stem stride and 3 channels")
        return cls(config.hidden_sizes, config.depths, config.strides, config.stem_width)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.stem(pixel_values)
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.avgpool(x).flatten(1)


# -------------------------------------------------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_times(steps: Mapping[str, Callable[[], Any]], repeats: int, warmup: int, sync: Callable[[], None]
                ) -> dict[str, float]:
    """Best time of each step over ``repeats`` rounds after ``warmup`` rounds; every round runs each step once, in
    turn, so that a change of load on a shared machine hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(warmup + repeats):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


class MatmulBaseline:
    """The fp32 2048^3 matmul rate, measured between timings: each measurement serves as the "after" of the timings
    before it and the "before" of the timings after it."""

    def __init__(self, device: str | torch.device = "cpu", repeats: int = 3) -> None:
        self.device, self.repeats = torch.device(device), repeats
        self._latest: float | None = None

    def measure(self) -> float:
        """Measure the rate now (GFLOP/s)."""
        self._latest = matmul_gflops(repeats=self.repeats, device=self.device)
        return self._latest

    def latest(self) -> float:
        """The last measurement, or a new one when nothing was measured yet."""
        return self.measure() if self._latest is None else self._latest


def _pooled(output: Any) -> torch.Tensor:
    """The pooled output of a tower's output (a ``ModelOutput``) or of the reference (a tensor)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _count_flops(build: Callable[[], nn.Module], inputs: Mapping[str, torch.Tensor], train: bool) -> int:
    """FLOPs of one forward (``train=False``, eval mode) or forward + backward (``train=True``) of the module that
    ``build`` returns, run on the meta device (no computation) on meta copies of ``inputs``; an attention mask of
    ones is left out (data-dependent checks cannot run on meta tensors; with every token kept the work is the
    same)."""
    with torch.device("meta"):
        model = build()
    model.train(train)
    meta_inputs = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in inputs.items()
                   if k != "attention_mask"}
    with FlopCounterMode(display=False) as counter:
        if train:
            _pooled(model(**meta_inputs)).float().square().mean().backward()
        else:
            with torch.no_grad():
                model(**meta_inputs)
    return counter.get_total_flops()


def _report_tokens(config: CLERCMultiEncoderConfig, batch_size: int, length: int, generator: torch.Generator
                   ) -> torch.Tensor:
    """Random token ids of full-length reports that end with the end-of-text token."""
    text = config.text_config
    ids = torch.randint(3, text.vocab_size - 1, (batch_size, length), generator=generator)
    eos = getattr(text, "eos_token_id", None)
    if isinstance(eos, int) and 0 <= eos < text.vocab_size:
        ids[:, -1] = eos
    return ids


def _encoder_setup(name: str, config: CLERCMultiEncoderConfig, sizes: Mapping[str, int], batch_size: int,
                   generator: torch.Generator) -> tuple[Callable[[], nn.Module], dict[str, torch.Tensor], str]:
    """The builder of encoder ``name``'s tower, a batch of its inputs and a description of one item."""
    if name == "ecg":
        shape = (config.ecg_config.num_leads, sizes["ecg_length"])
        inputs = {"input_values": torch.randn(batch_size, *shape, generator=generator)}
        return lambda: ECGEncoderModel(config.ecg_config), inputs, "x".join(map(str, shape))
    if name == "video":
        shape = (3, sizes["frames"], sizes["frame_size"], sizes["frame_size"])
        inputs = {"pixel_values": torch.randn(batch_size, *shape, generator=generator)}
        return lambda: R2Plus1DVideoModel(config.echo_config), inputs, "x".join(map(str, shape))
    if name == "chest_xray":
        shape = (3, sizes["image_size"], sizes["image_size"])
        inputs = {"pixel_values": torch.randn(batch_size, *shape, generator=generator)}
        return lambda: CLIPVisionModel(config.chest_xray_config), inputs, "x".join(map(str, shape))
    if name == "text":
        ids = _report_tokens(config, batch_size, sizes["text_length"], generator)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        return lambda: AutoModel.from_config(config.text_config), inputs, f"{sizes['text_length']} tokens"
    raise ValueError(f"unknown encoder {name!r}; choose from {list(ENCODERS)}")


def _video_variants(config: R2Plus1DConfig) -> dict[str, Callable[[], nn.Module]]:
    """Builders of the R(2+1)D variants (all to be given the same weights): the package model with its default
    configuration, the plain-PyTorch reference, the package model in the other memory format and with fused batch
    norms (the latter built in eval mode, fused)."""
    other_format = "contiguous" if config.channels_last_3d else "channels_last_3d"
    other_config = copy.deepcopy(config)
    other_config.channels_last_3d = not config.channels_last_3d
    return {
        "cardiomm": lambda: R2Plus1DVideoModel(config),
        "reference": lambda: ReferenceR2Plus1D.from_config(config),
        other_format: lambda: R2Plus1DVideoModel(other_config),
        "fused_bn": lambda: R2Plus1DVideoModel(config).eval().fuse_batch_norm(),
    }


# ------------------------------------------------------------------------------------------------------- encoders
def benchmark_encoders(
    size: str = "paper",
    encoders: Sequence[str] = ENCODERS,
    precisions: Sequence[str] = ("fp32",),
    batch_size: int | None = None,
    repeats: int = 2,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    baseline: MatmulBaseline | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Forward and training speed of each CLERC encoder (see the module docstring).

    ``batch_size``: items per step of every encoder (default: :data:`ENCODER_BATCH_SIZES`); ``baseline``: the
    matmul rate's measurements (shared with the other timings of a run). Returns the encoder rows and the R(2+1)D
    ratio rows.
    """
    device = torch.device(device)
    baseline = baseline or MatmulBaseline(device)
    unknown = sorted(set(encoders) - set(ENCODERS)) + sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        raise ValueError(f"unknown encoder(s) or precision(s) {unknown}; encoders: {list(ENCODERS)}, precisions: "
                         f"{list(PRECISIONS)}")
    config = clerc_config(size)
    sizes = INPUT_SIZES[size]
    rows: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    for name in encoders:
        generator = torch.Generator().manual_seed(0)
        items = batch_size or ENCODER_BATCH_SIZES[size][name]
        build, inputs, item = _encoder_setup(name, config, sizes, items, generator)
        builders = _video_variants(config.echo_config) if name == "video" else {"cardiomm": build}
        inputs = {k: v.to(device) for k, v in inputs.items()}
        torch.manual_seed(0)
        first = builders["cardiomm"]()
        models = {"cardiomm": first}
        for variant, make in builders.items():  # the same weights everywhere (fused_bn: folded from them)
            if variant == "cardiomm":
                continue
            model = R2Plus1DVideoModel(config.echo_config).eval() if variant == "fused_bn" else make()
            model.load_state_dict(first.state_dict())
            models[variant] = model.fuse_batch_norm() if variant == "fused_bn" else model
        models = {variant: model.to(device) for variant, model in models.items()}
        num_parameters = sum(p.numel() for p in first.parameters())
        one = {k: v[:1] for k, v in inputs.items()}
        forward_flops = {v: _count_flops(builders[v], one, train=False) for v in models}
        train_flops = {v: _count_flops(builders[v], one, train=True) for v in models if v != "fused_bn"}
        for precision in precisions:
            if progress:
                progress(f"{_ENCODER_LABELS[name]} {precision}: {len(models)} variant(s), batch {items} of {item}")
            autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-autocast")

            def forward_step(model: nn.Module) -> Callable[[], None]:
                def step() -> None:
                    with torch.inference_mode(), autocast:
                        model(**inputs)
                return step

            def train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
                def step() -> None:
                    optimizer.zero_grad(set_to_none=True)
                    with autocast:
                        loss = _pooled(model(**inputs)).float().square().mean()
                    loss.backward()
                    optimizer.step()
                return step

            before = baseline.latest()
            for model in models.values():
                model.eval()
            forward_s = _best_times({v: forward_step(m) for v, m in models.items()}, 2 * repeats + 1, warmup,
                                    lambda: _sync(device))
            trained = {v: m for v, m in models.items() if v in train_flops}
            for model in trained.values():
                model.train()
            optimizers = {v: torch.optim.SGD(m.parameters(), lr=1e-4) for v, m in trained.items()}
            train_s = _best_times({v: train_step(m, optimizers[v]) for v, m in trained.items()}, repeats, warmup,
                                  lambda: _sync(device))
            del optimizers
            for model in trained.values():
                model.zero_grad(set_to_none=True)
            matmul = max(before, baseline.measure())
            for variant in models:
                row: dict[str, Any] = {
                    "encoder": _ENCODER_LABELS[name], "variant": variant, "precision": precision, "input": item,
                    "batch": items, "params_m": num_parameters / 1e6,
                    "gflop_per_item": forward_flops[variant] / 1e9,
                    "forward_per_s": items / forward_s[variant],
                    "train_per_s": items / train_s[variant] if variant in train_s else "",
                    "forward_gflops": forward_flops[variant] * items / forward_s[variant] / 1e9,
                    "train_gflops": train_flops[variant] * items / train_s[variant] / 1e9 if variant in train_s else "",
                    "matmul_gflops": matmul,
                }
                row["forward_frac"] = row["forward_gflops"] / matmul
                row["train_frac"] = row["train_gflops"] / matmul if variant in train_s else ""
                rows.append(row)
            if name == "video":
                ratios += _video_ratios(rows[-len(models):], precision)
    return rows, ratios


def _video_ratios(rows: Sequence[dict[str, Any]], precision: str) -> list[dict[str, Any]]:
    """The ratios of the R(2+1)D variants' GFLOP/s (see the module docstring)."""
    by_variant = {row["variant"]: row for row in rows}
    base = by_variant["cardiomm"]
    other = next(v for v in by_variant if v not in ("cardiomm", "reference", "fused_bn"))
    pairs = [
        ("cardiomm / reference", "train", by_variant["cardiomm"], by_variant["reference"]),
        ("cardiomm / reference", "forward", by_variant["cardiomm"], by_variant["reference"]),
        (f"{other} / cardiomm", "forward", by_variant[other], base),
        (f"{other} / cardiomm", "train", by_variant[other], base),
        ("fused_bn / cardiomm", "forward", by_variant["fused_bn"], base),
    ]
    ratios = []
    for label, kind, numerator, denominator in pairs:
        value = numerator[f"{kind}_gflops"] / denominator[f"{kind}_gflops"]
        if label.startswith("cardiomm / reference"):
            verdict = ("within 2x of the reference" if value >= 0.5 else "SLOWER than half the reference")
        elif abs(value - 1) < 0.05:
            verdict = "about the same (within 5 %)"
        else:
            verdict = f"{label.split(' / ')[0]} {'faster' if value > 1 else 'slower'} than the default"
        ratios.append({"precision": precision, "ratio": label, "pass": kind, "gflops_ratio": value,
                       "verdict": verdict})
    return ratios


# ---------------------------------------------------------------------------------------------------- CLERC step
def clerc_inputs(config: CLERCMultiEncoderConfig, size: str, batch_size: int, seed: int = 0
                 ) -> dict[str, torch.Tensor]:
    """A batch of ``batch_size`` patients with every modality (random values, full-length reports) at the input
    sizes of ``size``, as keyword inputs of :class:`CLERCMultiEncoder`."""
    sizes = INPUT_SIZES[size]
    generator = torch.Generator().manual_seed(seed)
    video = (batch_size, 3, sizes["frames"], sizes["frame_size"], sizes["frame_size"])
    inputs = {
        "ecg_values": torch.randn(batch_size, config.ecg_config.num_leads, sizes["ecg_length"], generator=generator),
        "echo_values": torch.randn(*video, generator=generator),
        "angiogram_values": torch.randn(*video, generator=generator),
        "chest_xray_values": torch.randn(batch_size, 3, sizes["image_size"], sizes["image_size"],
                                         generator=generator),
    }
    for report in CLERC_REPORT_MODALITIES:
        ids = _report_tokens(config, batch_size, sizes["text_length"], generator)
        inputs[f"{report}_input_ids"] = ids
        inputs[f"{report}_attention_mask"] = torch.ones_like(ids)
    return inputs


def _step_flops(config: CLERCMultiEncoderConfig, inputs: Mapping[str, torch.Tensor]) -> int:
    """Training FLOPs (forward + backward) of the towers on ``inputs``, counted on the meta device."""
    total = 0
    for key, build in (("ecg_values", lambda: ECGEncoderModel(config.ecg_config)),
                       ("echo_values", lambda: R2Plus1DVideoModel(config.echo_config)),
                       ("angiogram_values", lambda: R2Plus1DVideoModel(config.angiogram_config)),
                       ("chest_xray_values", lambda: CLIPVisionModel(config.chest_xray_config))):
        argument = "input_values" if key == "ecg_values" else "pixel_values"
        total += _count_flops(build, {argument: inputs[key]}, train=True)
    reports = torch.cat([inputs[f"{r}_input_ids"] for r in CLERC_REPORT_MODALITIES])
    total += _count_flops(lambda: AutoModel.from_config(config.text_config), {"input_ids": reports}, train=True)
    return total


class _TowerTimer:
    """Seconds spent in the forward of each tower module, summed over the calls since the last reset (forward
    hooks; the device is synchronised around each call)."""

    def __init__(self, towers: Mapping[str, nn.Module], sync: Callable[[], None]) -> None:
        self.sync = sync
        self.seconds = dict.fromkeys(towers, 0.0)
        self._started: dict[str, float] = {}
        self._handles = []
        for name, module in towers.items():
            self._handles.append(module.register_forward_pre_hook(lambda *_, name=name: self._start(name)))
            self._handles.append(module.register_forward_hook(lambda *_, name=name: self._stop(name)))

    def _start(self, name: str) -> None:
        self.sync()
        self._started[name] = time.perf_counter()

    def _stop(self, name: str) -> None:
        self.sync()
        self.seconds[name] += time.perf_counter() - self._started.pop(name)

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def benchmark_clerc_step(
    size: str = "paper",
    batch_size: int = 2,
    precisions: Sequence[str] = ("fp32",),
    repeats: int = 2,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    baseline: MatmulBaseline | None = None,
) -> list[dict[str, Any]]:
    """Full CLERC optimiser steps with every modality present (see the module docstring); one row per precision.

    Each step is timed in three phases (forward with the loss, backward, AdamW update) and each tower's forward inside
    it (forward hooks); the row is the fastest of ``repeats`` steps after ``warmup`` steps."""
    if batch_size < 2 or repeats < 1 or warmup < 0:
        raise ValueError(f"a CLERC step needs at least 2 patients (the CLIP losses), repeats >= 1 and warmup >= 0; got "
                         f"batch size {batch_size}, repeats {repeats}, warmup {warmup}")
    device = torch.device(device)
    baseline = baseline or MatmulBaseline(device)
    config = clerc_config(size)
    torch.manual_seed(0)
    model = CLERCMultiEncoder(config).to(device).train()
    inputs = {k: v.to(device) for k, v in clerc_inputs(config, size, batch_size).items()}
    flops = _step_flops(config, inputs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    towers = ("ecg", "echo", "angiogram", "chest_xray", "text")
    timer = _TowerTimer({tower: model.tower(tower) for tower in towers}, lambda: _sync(device))
    rows = []
    try:
        for precision in precisions:
            if progress:
                progress(f"CLERC step, {size} sizes, {precision}: {batch_size} patients")
            autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-autocast")
            before = baseline.latest()
            best: dict[str, float] = {}
            for index in range(warmup + repeats):
                timer.reset()
                optimizer.zero_grad(set_to_none=True)
                _sync(device)
                start = time.perf_counter()
                with autocast:
                    loss = model(**inputs, return_loss=True).loss
                _sync(device)
                forward_end = time.perf_counter()
                loss.backward()
                _sync(device)
                backward_end = time.perf_counter()
                optimizer.step()
                _sync(device)
                end = time.perf_counter()
                phases = {"step_s": end - start, "forward_s": forward_end - start,
                          "backward_s": backward_end - forward_end, "optimizer_s": end - backward_end,
                          **{f"share_{tower}": timer.seconds[tower] / (forward_end - start) for tower in towers}}
                if index >= warmup and (not best or phases["step_s"] < best["step_s"]):
                    best = phases
            matmul = max(before, baseline.measure())
            row: dict[str, Any] = {
                "config": size, "precision": precision, "patients": batch_size,
                "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "gflop_per_step": flops / 1e9,
                "step_s": best["step_s"], "patients_per_s": batch_size / best["step_s"],
                "step_gflops": flops / best["step_s"] / 1e9, "matmul_gflops": matmul,
                "step_frac": flops / best["step_s"] / 1e9 / matmul,
                **{k: best[k] for k in ("forward_s", "backward_s", "optimizer_s")},
                **{f"share_{tower}": best[f"share_{tower}"] for tower in towers},
            }
            row["share_rest"] = 1 - sum(row[f"share_{tower}"] for tower in towers)
            rows.append(row)
    finally:
        timer.remove()
        optimizer.zero_grad(set_to_none=True)
    return rows


def benchmark_clerc(
    size: str = "paper",
    encoders: Sequence[str] = ENCODERS,
    step_sizes: Sequence[str] | None = None,
    precisions: Sequence[str] = ("fp32",),
    encoder_batch_size: int | None = None,
    batch_size: int = 2,
    repeats: int = 2,
    step_repeats: int = 2,
    warmup: int = 1,
    num_threads: int | None = None,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Every table of ``cardiomm bench clerc``: ``{"encoders": ..., "ratios": ..., "step": ...}``.

    ``step_sizes``: configurations of the full CLERC step (default: paper and tiny for ``size="paper"``, tiny for
    ``size="tiny"``); ``batch_size``: patients per CLERC step; ``encoder_batch_size``: items per encoder step
    (default: :data:`ENCODER_BATCH_SIZES`).
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {list(SIZES)}")
    if step_sizes is None:
        step_sizes = SIZES if size == "paper" else ("tiny",)
    if sorted(set(step_sizes) - set(SIZES)):
        raise ValueError(f"unknown step size(s) {sorted(set(step_sizes) - set(SIZES))}; choose from {list(SIZES)}")
    if batch_size < 2:
        raise ValueError(f"a CLERC step needs at least 2 patients (the CLIP losses), got batch size {batch_size}")
    if repeats < 1 or step_repeats < 1 or warmup < 0:
        raise ValueError("repeats must be at least 1 and warmup at least 0")
    if encoder_batch_size is not None and encoder_batch_size < 1:
        raise ValueError(f"the encoder batch size must be at least 1, got {encoder_batch_size}")
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    baseline = MatmulBaseline(device)
    encoder_rows, ratios = benchmark_encoders(size, encoders, precisions, encoder_batch_size, repeats, warmup,
                                              device, progress, baseline) if encoders else ([], [])
    step_rows = []
    for step_size in step_sizes:
        step_rows += benchmark_clerc_step(step_size, batch_size, precisions, step_repeats, warmup, device, progress,
                                          baseline)
    return {"encoders": encoder_rows, "ratios": ratios, "step": step_rows}


__all__ = [
    "ENCODERS",
    "INPUT_SIZES",
    "MatmulBaseline",
    "PRECISIONS",
    "SIZES",
    "ReferenceR2Plus1D",
    "benchmark_clerc",
    "benchmark_clerc_step",
    "benchmark_encoders",
    "clerc_config",
    "clerc_inputs",
    "tiny_clerc_config",
]
