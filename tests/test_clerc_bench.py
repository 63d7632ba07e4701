"""``cardiomm bench clerc`` as the user runs it (tiny sizes, in a subprocess), and the parts of the benchmark its
figures rest on: the plain-PyTorch R(2+1)D-18 baseline computes what the package model computes, and FLOPs counted
on the meta device are those of a real run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cli_process import describe, run_cardiomm

from cardiomm.benchmarks.clerc import ReferenceR2Plus1D, _count_flops
from cardiomm.modeling.configuration_r2plus1d import R2Plus1DConfig
from cardiomm.modeling.modeling_r2plus1d import R2Plus1DVideoModel

TINY_VIDEO = dict(stem_width=6, hidden_sizes=[8, 16, 16, 32], depths=[1, 2, 1, 1])


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """The Markdown tables printed in ``text``: one list of {column: cell} rows per table."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        if len(block) >= 2:
            tables.append([dict(zip(block[0], row)) for row in block[2:]])
        block = []
    return tables


def positive(value: str) -> bool:
    try:
        number = float(value)
    except ValueError:
        return False
    return math.isfinite(number) and number > 0


def test_bench_clerc_tiny_prints_encoders_ratios_and_step(tmp_path: Path) -> None:
    run = run_cardiomm("bench", "clerc", "--size", "tiny", "--repeats", "1", cwd=tmp_path, timeout=600)
    assert run.returncode == 0, describe(run)
    assert "Traceback" not in run.stderr
    encoders, ratios, step = markdown_tables(run.stdout)

    assert [(row["encoder"], row["variant"]) for row in encoders] == [
        ("ecg", "cardiomm"), ("echo/angiogram", "cardiomm"), ("echo/angiogram", "reference"),
        ("echo/angiogram", "channels_last_3d"), ("echo/angiogram", "fused_bn"), ("chest_xray", "cardiomm"),
        ("text", "cardiomm"),
    ]
    for row in encoders:
        assert row["precision"] == "fp32"
        for column in ("batch", "params_m", "gflop_per_item", "forward_per_s", "forward_gflops", "matmul_gflops",
                       "forward_frac"):
            assert positive(row[column]), (column, row)
        trains = row["variant"] != "fused_bn"  # fused batch norms are for inference only
        for column in ("train_per_s", "train_gflops", "train_frac"):
            assert positive(row[column]) if trains else row[column] == "", (column, row)
        # the achieved rate is the FLOPs of the items per second
        rate = float(row["gflop_per_item"]) * float(row["forward_per_s"])
        assert math.isclose(float(row["forward_gflops"]), rate, rel_tol=0.02), row
    video = {row["variant"]: row for row in encoders if row["encoder"] == "echo/angiogram"}
    assert len({row["gflop_per_item"] for row in video.values()}) == 1  # one architecture, four ways to run it
    assert video["cardiomm"]["input"] == "3x8x56x56"

    assert [(row["ratio"], row["pass"]) for row in ratios] == [
        ("cardiomm / reference", "train"), ("cardiomm / reference", "forward"),
        ("channels_last_3d / cardiomm", "forward"), ("channels_last_3d / cardiomm", "train"),
        ("fused_bn / cardiomm", "forward"),
    ]
    train_ratio = float(video["cardiomm"]["train_gflops"]) / float(video["reference"]["train_gflops"])
    assert math.isclose(float(ratios[0]["gflops_ratio"]), train_ratio, rel_tol=0.05)
    assert all(positive(row["gflops_ratio"]) and row["verdict"] for row in ratios)

    (row,) = step
    assert row["config"] == "tiny" and row["patients"] == "2"
    for column in ("gflop_per_step", "step_s", "patients_per_s", "step_gflops", "forward_s", "backward_s",
                   "optimizer_s"):
        assert positive(row[column]), (column, row)
    assert math.isclose(float(row["patients_per_s"]) * float(row["step_s"]), 2, rel_tol=0.02)
    phases = sum(float(row[column]) for column in ("forward_s", "backward_s", "optimizer_s"))
    assert math.isclose(phases, float(row["step_s"]), rel_tol=0.02)
    # every tower runs inside the model's forward, once: the towers' shares are positive and leave some of it over
    towers = ("ecg", "echo", "angiogram", "chest_xray", "text")
    assert all(positive(row[f"share_{tower}"]) for tower in towers), row
    assert sum(float(row[f"share_{tower}"]) for tower in towers) < 1
    assert positive(row["share_rest"])


def test_bench_clerc_refuses_a_step_of_one_patient(tmp_path: Path) -> None:
    run = run_cardiomm("bench", "clerc", "--size", "tiny", "--encoders", "--batch-size", "1", cwd=tmp_path,
                       timeout=300)
    assert run.returncode == 2, describe(run)
    assert "cardiomm: error:" in run.stderr and "at least 2 patients" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("train", [False, True])
def test_reference_r2plus1d_computes_what_the_package_model_computes(train: bool) -> None:
    config = R2Plus1DConfig(**TINY_VIDEO)
    torch.manual_seed(0)
    model = R2Plus1DVideoModel(config)
    reference = ReferenceR2Plus1D.from_config(config)
    reference.load_state_dict(model.state_dict())  # strict: the same parameter names and shapes
    assert sum(p.numel() for p in reference.parameters()) == sum(p.numel() for p in model.parameters())
    model.train(train)
    reference.train(train)
    clips = torch.randn(3, 3, 4, 24, 24, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(reference(clips), model(clips).pooler_output, rtol=1e-5, atol=1e-5)


def test_reference_r2plus1d_refuses_other_kernel_sizes() -> None:
    with pytest.raises(ValueError, match="kernel sizes"):
        ReferenceR2Plus1D.from_config(R2Plus1DConfig(**TINY_VIDEO, temporal_kernel_size=5))


@pytest.mark.parametrize("train", [False, True])
def test_meta_device_flop_count_matches_a_real_run(train: bool) -> None:
    config = R2Plus1DConfig(**TINY_VIDEO)
    clips = torch.randn(2, 3, 4, 24, 24)
    counted = _count_flops(lambda: R2Plus1DVideoModel(config), {"pixel_values": clips}, train=train)
    model = R2Plus1DVideoModel(config).train(train)
    with FlopCounterMode(display=False) as counter:
        if train:
            model(clips).pooler_output.square().mean().backward()
        else:
            with torch.no_grad():
                model(clips)
    assert counted == counter.get_total_flops() > 0
