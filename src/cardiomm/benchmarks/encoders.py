"""Speed of the ECG encoders on this machine's CPU (or the device given).

For every backbone and input length the benchmark reports, at a fixed batch size:

* ``forward_ecg_per_s`` -- eval mode under ``torch.inference_mode``;
* ``train_ecg_per_s`` -- one training step: forward, ``pooler_output.square().mean()`` backward, AdamW step;
* ``gflop_per_ecg`` -- analytic forward FLOPs of one ECG, counted by ``torch.utils.flop_counter.FlopCounterMode``
  (2 x multiply-accumulates of convolutions, matrix multiplies and scaled-dot-product attention; norms,
  activations and additions are not counted);
* ``forward_gflops`` / ``train_gflops`` -- achieved rates (training FLOPs counted the same way over forward +
  backward);
* ``matmul_gflops`` -- the fp32 rate of a 2048 x 2048 ``torch.matmul`` measured right before each backbone's
  timings, and ``forward_fraction_of_matmul`` = forward_gflops / matmul_gflops.

Timings are the best of ``repeats`` runs after ``warmup`` runs, so that a shared machine's interruptions inflate
them as little as possible. Run ``python -m cardiomm.benchmarks.encoders --help``.

:func:`benchmark_vit` (``cardiomm bench vit``) sets the transformer encoders against the matrix-multiply rate of
the same run, per precision: fp32, bf16 autocast (``torch.autocast(device, dtype=torch.bfloat16)``, what mixed
precision training runs, for forward and training) and a model cast to bf16 (inference). Two baselines, each
measured right before and right after the model's timings (the better of the two is kept): a 2048^3 matmul, and
the four linear-layer matmuls of one transformer layer at the model's own shapes (batch x tokens rows).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from cardiomm.modeling.configuration_ecg_encoder import ECG_ENCODER_PRESETS, ECGEncoderConfig
from cardiomm.modeling.modeling_ecg_encoder import ECGEncoderModel

DEFAULT_BACKBONES: tuple[str, ...] = tuple(ECG_ENCODER_PRESETS)


def _best_time(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(
    size: int = 2048, repeats: int = 5, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> float:
    """GFLOP/s of a ``size`` x ``size`` ``torch.matmul`` in ``dtype`` (fp32 by default; best of ``repeats``)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def run() -> None:
        torch.matmul(a, b)
        if a.device.type == "cuda":
            torch.cuda.synchronize()

    return 2 * size**3 / _best_time(run, repeats, warmup=1) / 1e9


def count_flops(model: ECGEncoderModel, input_values: torch.Tensor, train: bool = False) -> int:
    """FLOPs of one forward (``train=False``) or forward + backward (``train=True``) of ``model`` on the input."""
    with FlopCounterMode(display=False) as counter:
        if train:
            model(input_values).pooler_output.square().mean().backward()
        else:
            with torch.no_grad():
                model(input_values)
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def benchmark_encoders(
    backbones: Sequence[str] = DEFAULT_BACKBONES,
    lengths: Sequence[int] = (2500, 5000),
    batch_size: int = 64,
    repeats: int = 3,
    warmup: int = 1,
    train: bool = True,
    num_threads: int | None = None,
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """Time forward and training steps of each preset backbone on (batch_size, 12, length) inputs.

    Returns one row per (backbone, length) with the keys described in the module docstring.
    """
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    device = torch.device(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    rows: list[dict[str, Any]] = []
    for backbone in backbones:
        torch.manual_seed(0)
        model = ECGEncoderModel(ECGEncoderConfig(backbone=backbone)).to(device)
        num_parameters = sum(p.numel() for p in model.parameters())
        for length in lengths:
            inputs = torch.randn(batch_size, model.config.num_leads, length, device=device)
            model.eval()
            forward_flops = count_flops(model, inputs[:1])
            reference = matmul_gflops(device=device)

            def forward() -> None:
                with torch.inference_mode():
                    model(inputs)
                sync()

            forward_time = _best_time(forward, repeats, warmup)
            row: dict[str, Any] = {
                "backbone": backbone,
                "length": length,
                "batch_size": batch_size,
                "params_m": num_parameters / 1e6,
                "gflop_per_ecg": forward_flops / 1e9,
                "forward_ecg_per_s": batch_size / forward_time,
                "forward_gflops": forward_flops * batch_size / forward_time / 1e9,
            }
            if train:
                model.train()
                train_flops = count_flops(model, inputs[:2], train=True) / 2
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

                def train_step() -> None:
                    optimizer.zero_grad(set_to_none=True)
                    model(inputs).pooler_output.square().mean().backward()
                    optimizer.step()
                    sync()

                train_time = _best_time(train_step, repeats, warmup)
                row["train_ecg_per_s"] = batch_size / train_time
                row["train_gflops"] = train_flops * batch_size / train_time / 1e9
                del optimizer
            row["matmul_gflops"] = reference
            row["forward_fraction_of_matmul"] = row["forward_gflops"] / reference
            rows.append(row)
    return rows


def layer_matmul_gflops(
    rows: int, hidden_size: int, intermediate_size: int, repeats: int = 3, device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> float:
    """GFLOP/s of the matmuls of one transformer layer's linear layers at the model's shapes: (rows, hidden) x
    (hidden, 3 hidden) [fused q/k/v], (rows, hidden) x (hidden, hidden) [output], (rows, hidden) x (hidden,
    intermediate) [fc1] and (rows, intermediate) x (intermediate, hidden) [fc2], run back to back without bias."""
    tokens = torch.randn(rows, hidden_size, device=device, dtype=dtype)
    wide = torch.randn(rows, intermediate_size, device=device, dtype=dtype)
    weights = [torch.randn(hidden_size, n, device=device, dtype=dtype)
               for n in (3 * hidden_size, hidden_size, intermediate_size)]
    fc2 = torch.randn(intermediate_size, hidden_size, device=device, dtype=dtype)

    def run() -> None:
        for weight in weights:
            torch.matmul(tokens, weight)
        torch.matmul(wide, fc2)
        if tokens.device.type == "cuda":
            torch.cuda.synchronize()

    flops = 2 * rows * hidden_size * (4 * hidden_size + 2 * intermediate_size)
    return flops / _best_time(run, repeats, warmup=1) / 1e9


VIT_PRECISIONS: tuple[str, ...] = ("fp32", "bf16-autocast", "bf16-model")


def benchmark_vit(
    backbones: Sequence[str] = ("vit_tiny", "merl_vit_tiny"),
    length: int = 5000,
    batch_size: int = 32,
    precisions: Sequence[str] = VIT_PRECISIONS,
    repeats: int = 3,
    warmup: int = 1,
    train: bool = True,
    num_threads: int | None = None,
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """Forward and training GFLOP/s of transformer encoders against the same run's matrix-multiply rates.

    ``precisions``: ``fp32``; ``bf16-autocast`` (fp32 weights under ``torch.autocast(dtype=torch.bfloat16)``,
    forward and training); ``bf16-model`` (the model cast to bf16, forward only: inference). One row per
    (backbone, precision, pass) with ``gflops``, ``matmul_2048_gflops`` / ``matmul_model_shape_gflops`` (the
    baselines in the matching dtype, the better of a measurement right before and one right after the model's
    timing) and ``fraction_2048`` / ``fraction_model_shape``.
    """
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    device = torch.device(device)
    unknown = sorted(set(precisions) - set(VIT_PRECISIONS))
    if unknown:
        raise ValueError(f"unknown precision(s) {unknown}; choose from {list(VIT_PRECISIONS)}")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    rows: list[dict[str, Any]] = []
    for backbone in backbones:
        config = ECGEncoderConfig(backbone=backbone)
        if config.backbone_family not in ("vit", "merl_vit"):
            raise ValueError(f"{backbone!r} is not a transformer encoder")
        intermediate_size = int(config.hidden_size * config.mlp_ratio)
        num_tokens = (length // config.patch_size) * (config.num_leads if config.backbone_family == "vit" else 1)
        inputs = torch.randn(batch_size, config.num_leads, length, device=device)
        for precision in precisions:
            torch.manual_seed(0)
            model = ECGEncoderModel(config).to(device)
            dtype = torch.float32 if precision == "fp32" else torch.bfloat16
            if precision == "bf16-model":
                model = model.to(dtype)
            model_inputs = inputs.to(dtype) if precision == "bf16-model" else inputs
            autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-autocast")
            passes = ["forward"] + (["train"] if train and precision != "bf16-model" else [])
            for kind in passes:
                model.train(kind == "train")
                with autocast:
                    flops = count_flops(model, model_inputs[:2], train=kind == "train") / 2
                if kind == "train":
                    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

                    def step() -> None:
                        optimizer.zero_grad(set_to_none=True)
                        with autocast:
                            loss = model(model_inputs).pooler_output.float().square().mean()
                        loss.backward()
                        optimizer.step()
                        sync()
                else:
                    def step() -> None:
                        with torch.inference_mode(), autocast:
                            model(model_inputs)
                        sync()

                def baselines() -> tuple[float, float]:
                    return (
                        matmul_gflops(device=device, dtype=dtype),
                        layer_matmul_gflops(batch_size * num_tokens, config.hidden_size, intermediate_size,
                                            device=device, dtype=dtype),
                    )

                before = baselines()
                seconds = _best_time(step, repeats, warmup)
                after = baselines()
                square, shaped = max(before[0], after[0]), max(before[1], after[1])
                gflops = flops * batch_size / seconds / 1e9
                rows.append({
                    "backbone": backbone,
                    "precision": precision,
                    "pass": kind,
                    "batch_size": batch_size,
                    "tokens": num_tokens,
                    "gflop_per_ecg": flops / 1e9,
                    "ecg_per_s": batch_size / seconds,
                    "gflops": gflops,
                    "matmul_2048_gflops": square,
                    "matmul_model_shape_gflops": shaped,
                    "fraction_2048": gflops / square,
                    "fraction_model_shape": gflops / shaped,
                })
                if kind == "train":
                    del optimizer
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: print the benchmark table."""
    from cardiomm.tables import format_table

    parser = argparse.ArgumentParser(description="Speed of the cardiomm ECG encoders.")
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES), choices=list(ECG_ENCODER_PRESETS))
    parser.add_argument("--lengths", nargs="+", type=int, default=[2500, 5000])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-train", action="store_true", help="time the forward pass only")
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    rows = benchmark_encoders(
        backbones=args.backbones,
        lengths=args.lengths,
        batch_size=args.batch_size,
        repeats=args.repeats,
        warmup=args.warmup,
        train=not args.no_train,
        num_threads=args.num_threads,
        device=args.device,
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
