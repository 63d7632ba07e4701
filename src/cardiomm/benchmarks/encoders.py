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


def matmul_gflops(size: int = 2048, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """fp32 GFLOP/s of a ``size`` x ``size`` ``torch.matmul`` (best of ``repeats``)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)

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
