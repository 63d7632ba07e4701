"""The training loop under DeepSpeed ZeRO-2 and ZeRO-3 on CPU (gloo); skipped when deepspeed is not installed.

Each run happens in a fresh Python process (DeepSpeed and Accelerate keep process-wide state). Run as a script,
``python tests/test_deepspeed.py STAGE OUT [RESUME_FROM]`` trains the toy CLIP model with a ``DeepSpeedPlugin``;
``accelerate launch --config_file scripts/accelerate_zero2.yaml tests/test_deepspeed.py launch OUT`` trains it
with DeepSpeed set up by the shipped Accelerate config.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_training import PairedDataset, ToyClipModel, make_model  # noqa: E402

from cardiomm.training import TrainingConfig, TrainingLoop  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def on_cpu():
    """CPU runs also on a machine with a GPU (the comparisons are exact up to float round-off)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CUDA_VISIBLE_DEVICES", "")
        patch.setenv("ACCELERATE_USE_CPU", "true")
        yield


def _config(out: Path, batch_size: int = 16) -> TrainingConfig:
    return TrainingConfig(
        output_dir=str(out), seed=0, learning_rate=3e-3, per_device_batch_size=batch_size, num_epochs=3,
        gradient_accumulation_steps=2, warmup_steps=1, log_every_steps=1, save_every_steps=4, log_with=[],
        eval_every_steps=3,
        max_grad_norm=1.0, mixed_precision="no",
    )


def _model(dropout: float = 0.1):
    # a (1,)-shaped logit scale: DeepSpeed 0.19 fails to broadcast 0-dim parameters when its engine starts
    return make_model(scalar_logit_scale=False, dropout=dropout, uma_dropout=dropout)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "", **extra,
    }
    env.pop("ACCELERATE_USE_CPU", None)  # it would turn DeepSpeed off
    return env


def _losses(out: Path) -> list[float]:
    with open(out / "metrics.csv", newline="") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def _loop(model: torch.nn.Module, config: TrainingConfig, **kwargs) -> TrainingLoop:
    return TrainingLoop(model, config, PairedDataset(96), eval_dataset=PairedDataset(32, seed=5), **kwargs)


def _plain_run(out: Path, batch_size: int = 16, dropout: float = 0.1) -> dict[str, torch.Tensor]:
    """The same training without DeepSpeed, in this process."""
    model = _model(dropout)
    _loop(model, _config(out, batch_size)).train()
    return model.state_dict()


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stage_trains_like_plain_accelerate_and_saves_a_reloadable_model(tmp_path, stage: int) -> None:
    out = tmp_path / f"zero{stage}"
    single_process = {
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "WORLD_SIZE": "1",
        "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
    }
    run = subprocess.run(
        [sys.executable, __file__, str(stage), str(out)], capture_output=True, text=True, timeout=300,
        env=_env(**single_process),
    )
    assert run.returncode == 0, run.stderr[-4000:]
    info = json.loads((out / "run_info.json").read_text())
    assert info["distributed_type"] == "DEEPSPEED" and info["zero_stage"] == stage

    losses = _losses(out)
    assert len(losses) == 9 and sum(losses[-3:]) < 0.8 * sum(losses[:3])
    assert (out / "checkpoints" / "step_000008" / "trainer_state.json").is_file()
    with open(out / "eval_metrics.csv", newline="") as handle:
        eval_losses = [float(row["eval_loss"]) for row in csv.DictReader(handle)]
    assert len(eval_losses) == 3 and eval_losses[-1] < eval_losses[0]

    reloaded = ToyClipModel.from_pretrained(out)  # ZeRO-3: the full weights were gathered for the save

    # resumed from the mid-epoch checkpoint of step 4 (DeepSpeed's own files, read with weights_only enforced), the
    # run ends with the same weights, bit for bit
    resumed_out = tmp_path / f"zero{stage}_resumed"
    shutil.copytree(out, resumed_out)
    (resumed_out / "model.safetensors").unlink()
    resumed = subprocess.run(
        [sys.executable, __file__, str(stage), str(resumed_out), str(resumed_out / "checkpoints" / "step_000004")],
        capture_output=True, text=True, timeout=300, env=_env(**single_process),
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert json.loads((resumed_out / "run_info.json").read_text())["resumed_from"].endswith("step_000004")
    again = ToyClipModel.from_pretrained(resumed_out)
    for key, value in reloaded.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key

    expected = _plain_run(tmp_path / "plain")
    for key, value in expected.items():
        assert reloaded.state_dict()[key].shape == value.shape
        if key.startswith("regression_head"):
            # unused by the CLIP objective: torch's AdamW skips parameters without a gradient, DeepSpeed's
            # flattened partitions give them a zero gradient and still apply weight decay
            continue
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_accelerate_launch_with_the_zero2_config_on_two_cpu_processes(tmp_path) -> None:
    """``accelerate launch --config_file scripts/accelerate_zero2.yaml --num_processes 2`` (gloo on CPU), 8 samples
    per process and step, ends where one plain process with 16 samples per step ends (no dropout)."""
    out = tmp_path / "launched"
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "scripts" / "accelerate_zero2.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(_free_port()),
        __file__, "launch", str(out),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=_env())
    assert run.returncode == 0, run.stderr[-4000:]
    info = json.loads((out / "run_info.json").read_text())
    assert (info["distributed_type"], info["num_processes"], info["zero_stage"]) == ("DEEPSPEED", 2, 2)
    expected = _plain_run(tmp_path / "plain", batch_size=16, dropout=0.0)
    reloaded = ToyClipModel.from_pretrained(out)
    for key, value in expected.items():
        if key.startswith("regression_head"):  # unused: see above
            continue
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)


def _skip_shared_memory_kernel_build() -> None:
    """DeepSpeed's CPU backend JIT-compiles an optional shared-memory all-reduce kernel (minutes of C++ build on a
    fresh machine); the gloo collectives are enough here."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


if __name__ == "__main__":
    _skip_shared_memory_kernel_build()
    if sys.argv[1] == "launch":  # DeepSpeed configured by `accelerate launch`
        _loop(_model(dropout=0.0), _config(Path(sys.argv[2]), batch_size=8)).train()
    else:
        from accelerate.utils import DeepSpeedPlugin

        stage, output_dir = int(sys.argv[1]), Path(sys.argv[2])  # STAGE OUT [RESUME_FROM]
        plugin = DeepSpeedPlugin(zero_stage=stage, zero3_save_16bit_model=True)
        config = _config(output_dir)
        config.resume_from = sys.argv[3] if len(sys.argv) > 3 else None
        _loop(_model(), config, deepspeed_plugin=plugin).train()
