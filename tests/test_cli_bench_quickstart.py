"""``cardiomm bench`` and ``cardiomm quickstart`` as the user runs them (the ``cardiomm`` command in a subprocess,
small settings), and how the command reports errors and interruptions."""

from __future__ import annotations

import json
import math
import os
import selectors
import signal
import subprocess
from pathlib import Path

import pytest

from cli_process import CARDIOMM, cardiomm_env, describe, run_cardiomm

from cardiomm.cli import main as cli_main


def cardiomm(args: list[str], cwd: Path, *, timeout: float = 300) -> subprocess.CompletedProcess:
    """``cardiomm ARGS`` in a subprocess, without the real-data folder: the benchmarks write their own records."""
    return run_cardiomm(*args, cwd=cwd, env={"CARDIOMM_TEST_DATA": str(cwd / "no-shared-data")}, timeout=timeout)


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """The Markdown tables printed in ``text``: one list of {column: cell} rows per table."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        if len(block) >= 2:
            header, rows = block[0], block[2:]
            tables.append([dict(zip(header, row)) for row in rows])
        block = []
    return tables


def _positive_finite(value: str) -> bool:
    try:
        number = float(value)
    except ValueError:
        return False
    return math.isfinite(number) and number > 0


# --------------------------------------------------------------------------------------------------- bench
def test_bench_encoders_prints_a_row_per_backbone(tmp_path: Path) -> None:
    run = cardiomm(["bench", "encoders", "--backbones", "resnet1d_8", "vit_tiny", "--lengths", "2500",
                    "--batch-size", "2", "--repeats", "1", "--warmup", "0", "--n-records", "4"], tmp_path)
    assert run.returncode == 0, describe(run)
    assert "Traceback" not in run.stderr
    encoders, extractor = markdown_tables(run.stdout)
    assert [row["backbone"] for row in encoders] == ["resnet1d_8", "vit_tiny"]
    for row in encoders:
        assert row["length"] == "2500" and row["batch_size"] == "2"
        for column in ("params_m", "gflop_per_ecg", "forward_ecg_per_s", "train_ecg_per_s", "forward_gflops",
                       "train_gflops", "matmul_gflops"):
            assert _positive_finite(row[column]), (column, row)
    assert [row["pipeline"].split(" ")[0] for row in extractor[:2]] == ["wfdb.rdsamp", "ECGFeatureExtractor"]
    batches = [(row["dataset"], row["pipeline"].split(" (", 1)[1].rsplit(",", 1)[0]) for row in extractor[2:]]
    assert batches == [(f"arrays {rate} Hz -> 500 Hz, 10 s", path) for rate in (500, 250)
                       for path in ("list of records", "one (batch, leads, time) array")]
    assert all(_positive_finite(row["vs_list"]) for row in extractor[2:])
    assert all(row["records"] == "4" and _positive_finite(row["records_per_s"]) for row in extractor)


def test_bench_kmerl_compares_the_variants_in_one_table(tmp_path: Path) -> None:
    run = cardiomm(["bench", "kmerl", "--variants", "merl_lead_vit_tiny", "kmerl_vit_tiny", "--precisions", "fp32",
                    "--batch-size", "2", "--length", "1000", "--entities", "5", "--steps", "1", "--warmup", "1",
                    "--rounds", "1"], tmp_path)
    assert run.returncode == 0, describe(run)
    (table,) = markdown_tables(run.stdout)
    rows = {row["variant"]: row for row in table}
    assert set(rows) == {"merl_lead_vit_tiny", "kmerl_vit_tiny"}
    # every token of 12 leads x 10 patches, against at most 3 kept leads x 8 kept patches after masking
    assert float(rows["merl_lead_vit_tiny"]["ecg_tokens"]) == 120
    assert 8 <= float(rows["kmerl_vit_tiny"]["ecg_tokens"]) <= 24
    for name, row in rows.items():
        assert _positive_finite(row["pairs_per_s"]) and float(row[f"vs_{name}"]) == 1.0
    ratio = float(rows["kmerl_vit_tiny"]["vs_merl_lead_vit_tiny"])
    expected = float(rows["kmerl_vit_tiny"]["pairs_per_s"]) / float(rows["merl_lead_vit_tiny"]["pairs_per_s"])
    assert abs(ratio - expected) <= 0.02 * expected + 0.01  # both rounded in the table


def test_bench_synthetic_prints_a_row_per_stage(tmp_path: Path) -> None:
    run = cardiomm(["bench", "synthetic", "--n-ecgs", "8", "--n-patients", "12", "--n-delineate", "2",
                    "--repeats", "1"], tmp_path)
    assert run.returncode == 0, describe(run)
    (rows,) = markdown_tables(run.stdout)
    stages = [row["stage"].split(" ")[0] for row in rows]
    assert stages == ["render_ecgs", "simulate_ecgs", "generate_cohort", "measure_wave_attributes", "build_dataset"]
    assert all(_positive_finite(row["ecg_per_s"]) for row in rows), rows
    assert [row["ecgs"] for row in rows[:2]] == ["8", "8"]


def test_bench_data_loading_prints_conversion_and_loader_rows(tmp_path: Path) -> None:
    run = cardiomm(["bench", "data-loading", "--num-records", "8", "--num-workers", "0", "--min-seconds", "0",
                    "--batch-size", "4"], tmp_path)
    assert run.returncode == 0, describe(run)
    (rows,) = markdown_tables(run.stdout)
    assert rows[0]["step"].startswith("convert ptbxl") and rows[0]["items"] == "8"
    assert [row["step"].split(" (")[0] for row in rows[1:]] == [
        "DataLoader <- converted, ArrowECGBatches", "DataLoader <- converted, with_format('numpy')",
        "DataLoader <- wfdb.rdsamp",
    ]
    assert all(_positive_finite(row["per_second"]) for row in rows), rows
    assert all(int(row["items"]) >= 8 for row in rows[1:])


# ---------------------------------------------------------------------------------------------- quickstart
def test_quickstart_trains_evaluates_saves_and_reloads(tmp_path: Path) -> None:
    run = cardiomm(["quickstart", "--n-patients", "40", "--max-steps", "2", "--tasks", "rhythm",
                    "--probe-seeds", "0"], tmp_path, timeout=400)
    assert run.returncode == 0, describe(run)
    out = tmp_path / "outputs" / "quickstart"  # the README's default folder
    ckpt = out / "merl_tiny"
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer_config.json", "README.md",
                 "modeling_ecg_text.py", "training_config.yaml"):
        assert (ckpt / name).is_file(), name
    assert "zero-shot rhythm" in (ckpt / "README.md").read_text()  # the card carries the evaluation
    results = json.loads((out / "evaluation" / "results.json").read_text())
    assert list(results["tasks"]) == ["rhythm"]
    assert (out / "evaluation" / "results.md").is_file()

    results_table, summary = markdown_tables(run.stdout.split("[4/4] results", 1)[1])
    protocols = {(row["encoder"], row["protocol"]) for row in results_table}
    expected = {("pretrained", "zero-shot"), ("pretrained", "linear probe"), ("baseline: random init", "linear probe")}
    assert expected <= protocols
    values = {row["item"]: row["value"] for row in summary}
    assert values["training steps"] == "2" and Path(values["checkpoint"]) == Path("outputs/quickstart/merl_tiny")
    assert float(values["reloaded model: largest embedding difference"]) <= 1e-5

    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(ckpt)
    processor = AutoProcessor.from_pretrained(ckpt)
    assert type(model).__name__ == "ECGTextDualEncoder" and model.config.ecg_config.backbone == "resnet1d_8"
    assert type(processor).__name__ == "ECGTextProcessor"


# -------------------------------------------------------------------------------------------------- errors
def test_user_error_is_one_line_on_stderr_with_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-checkpoint"
    run = cardiomm(["evaluate", "--model", str(missing), "--data", str(tmp_path / "no-such-data")], tmp_path)
    assert run.returncode == 2, describe(run)
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("cardiomm: error: ")]
    assert len(errors) == 1 and str(missing) in errors[0], run.stderr


@pytest.mark.parametrize("debug", ["--verbose", "CARDIOMM_DEBUG=1"])
def test_verbose_and_debug_show_the_traceback(debug: str, tmp_path: Path, monkeypatch, capsys) -> None:
    missing = tmp_path / "no-such-checkpoint"
    argv = ["evaluate", "--model", str(missing), "--data", str(tmp_path / "no-such-data")]
    if debug == "--verbose":
        argv = ["--verbose", *argv]
        monkeypatch.delenv("CARDIOMM_DEBUG", raising=False)
    else:
        monkeypatch.setenv("CARDIOMM_DEBUG", "1")
    assert cli_main(argv) == 2
    stderr = capsys.readouterr().err
    assert "Traceback (most recent call last)" in stderr
    assert stderr.rstrip().splitlines()[-1].startswith("cardiomm: error: ") and str(missing) in stderr


def test_interrupt_exits_130_with_one_line(tmp_path: Path) -> None:
    # the command starts with Ctrl-C's default disposition, as from a terminal, whatever this test process inherited
    # or an earlier test set (a child keeps an ignored SIGINT, and Python then installs no KeyboardInterrupt handler)
    proc = subprocess.Popen([*CARDIOMM, "bench", "encoders"], cwd=tmp_path, env=cardiomm_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # the benchmark announces itself before it starts: interrupt it there, as Ctrl-C would
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            ready = selector.select(timeout=240)
        first = proc.stdout.readline() if ready else ""
        assert first.startswith("cardiomm bench encoders: torch "), f"no start line, got {first!r}"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # never leave the full benchmark running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "cardiomm: interrupted", stderr[-3000:]
