"""``cardiomm pretrain`` under hostile conditions, through the command in subprocesses.

The run is the shipped ``sehr_bert_mlm`` experiment made tiny (a 1-layer sEHR-BERT with dropout, random MLM masks
drawn while collating, the plateau schedule fed by evaluations) on a synthetic cohort of 24 patients: 4 optimiser
steps per epoch, 12 steps, an evaluation and a checkpoint every 3 steps, so that every checkpoint but the last lies
in the middle of an epoch.

- two runs of the same file give bit-identical weights, and so does a run with another number of DataLoader
  workers;
- a run killed with SIGKILL mid-epoch (with and without DataLoader workers) and resumed with
  ``--resume-from latest`` ends with the weights of the uninterrupted run, bit for bit;
- a truncated newest checkpoint is skipped with a warning naming it, and the run resumes from the previous one;
  a damaged ``trainer_state.json`` of a named checkpoint, or no intact checkpoint at all, is an error naming the
  files (exit 2, no traceback);
- resuming never unpickles anything from the checkpoint folder;
- :func:`~cardiomm.training.pretrain.pretrain` does not depend on the state the process-wide random generators
  were left in (by an earlier test, say).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from cli_process import CARDIOMM, cardiomm_env, run_cardiomm
from safetensors.torch import load_file

from cardiomm.training.config import resolve_config_path

SHIPPED = "sehr_bert_mlm"
STEPS_PER_EPOCH = 4  # the training patients of the cohort in batches of 4, the last partial batch dropped


def tiny_experiment(folder: Path, data: Path, num_workers: int, **training) -> Path:
    """The shipped ``sehr_bert_mlm`` experiment, made tiny, written to ``folder/experiment.yaml``."""
    document = yaml.safe_load(resolve_config_path(SHIPPED).read_text())
    document["model"].update(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64)
    document["data"].update(path=str(data), synthetic={"n_patients": 24, "seed": 0}, min_code_patients=2,
                            max_length=64)
    document["training"].update(
        output_dir=str(folder / "run"), max_steps=12, per_device_batch_size=4, save_every_steps=3, keep_last=2,
        eval_every_steps=3, log_every_steps=1, warmup_steps=2, log_with=[], num_workers=num_workers,
    )
    document["training"].update(training)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def cli_env() -> dict[str, str]:
    return cardiomm_env({"ACCELERATE_USE_CPU": "true"})


def cardiomm(*args: str) -> subprocess.CompletedProcess:
    """``cardiomm ARGS`` in a fresh Python process."""
    return run_cardiomm(*args, env={"ACCELERATE_USE_CPU": "true"})


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"tensors differ: {different}"


def kill_when_checkpoint_appears(config: Path, checkpoint: Path, log: Path) -> int:
    """Start ``cardiomm pretrain --config CONFIG``, SIGKILL it (and its DataLoader workers) as soon as the checkpoint
    folder ``checkpoint`` exists, and return its exit status."""
    with open(log, "w") as stderr:
        process = subprocess.Popen([*CARDIOMM, "pretrain", "--config", str(config)],
                                   stdout=subprocess.DEVNULL, stderr=stderr, env=cli_env(), start_new_session=True)
        try:
            deadline = time.monotonic() + 600  # a guard against a hung run, not a timing assertion
            while process.poll() is None and not checkpoint.is_dir() and time.monotonic() < deadline:
                time.sleep(0.02)
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        finally:
            process.wait(timeout=60)
    return process.returncode


def resumed_step(stdout: str) -> int:
    line = next(line for line in stdout.splitlines() if line.startswith("resumed from "))
    return int(Path(line.removeprefix("resumed from ").strip()).name.removeprefix("step_"))


class Payload:
    """Pickles to a call that creates ``marker``: what a booby-trapped state file would do when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic cohort, written once as the experiment's ``data.synthetic`` would write it."""
    from cardiomm.training.experiment_data import prepare_dataset_folder

    folder = tmp_path_factory.mktemp("cohort") / "data"
    prepare_dataset_folder({"path": str(folder), "synthetic": {"n_patients": 24, "seed": 0}}, paired=True)
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """An uninterrupted run with 2 DataLoader workers: the output folder."""
    folder = tmp_path_factory.mktemp("reference")
    done = cardiomm("pretrain", "--config", str(tiny_experiment(folder, data, num_workers=2)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained 12 steps" in done.stdout
    return folder / "run"


def test_two_runs_of_one_experiment_give_identical_weights(tmp_path: Path, data: Path, reference: Path) -> None:
    again = cardiomm("pretrain", "--config", str(tiny_experiment(tmp_path, data, num_workers=2)))
    assert again.returncode == 0, again.stderr[-3000:]
    assert_bit_identical(weights(tmp_path / "run"), weights(reference))
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n") == 13  # 12 steps logged


@pytest.mark.parametrize(("num_workers", "kill_after"), [(0, 3), (2, 6)])
def test_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, data: Path, reference: Path, num_workers: int, kill_after: int
) -> None:
    config = tiny_experiment(tmp_path, data, num_workers=num_workers)
    checkpoints = tmp_path / "run" / "checkpoints"
    status = kill_when_checkpoint_appears(config, checkpoints / f"step_{kill_after:06d}", tmp_path / "killed.log")
    assert status == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert not (tmp_path / "run" / "model.safetensors").exists()  # killed before the end

    resumed = cardiomm("pretrain", "--config", str(config), "--resume-from", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "trained 12 steps" in resumed.stdout
    assert_bit_identical(weights(tmp_path / "run"), weights(reference))  # workers 0 or 2: the same weights
    step = resumed_step(resumed.stdout)
    assert json.loads((tmp_path / "run" / "run_info.json").read_text())["steps_per_epoch"] == STEPS_PER_EPOCH
    assert step >= kill_after and step % STEPS_PER_EPOCH != 0  # resumed in the middle of an epoch
    steps = [int(row.split(",")[0]) for row in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 13))


def copy_of_run(reference: Path, folder: Path) -> tuple[Path, Path]:
    """A copy of the finished reference run in ``folder/run`` and its experiment file pointing there."""
    run = folder / "run"
    shutil.copytree(reference, run)
    config = folder / "experiment.yaml"
    document = yaml.safe_load((reference / "training_config.yaml").read_text())
    document["training"]["output_dir"] = str(run)
    config.write_text(yaml.safe_dump(document))
    return run, config


def test_truncated_latest_checkpoint_is_skipped_with_a_warning(tmp_path: Path, reference: Path) -> None:
    run, config = copy_of_run(reference, tmp_path)
    for name in ("model.safetensors", "config.json"):
        (run / name).unlink()  # the final model: the resumed run writes it again
    latest = run / "checkpoints" / "step_000012" / "model.safetensors"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])

    resumed = cardiomm("pretrain", "--config", str(config), "--resume-from", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step_000012" in resumed.stderr and "model.safetensors" in resumed.stderr and "bytes" in resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert resumed_step(resumed.stdout) == 9
    assert_bit_identical(weights(run), weights(reference))


def test_damaged_checkpoints_are_errors_naming_the_file(tmp_path: Path, reference: Path) -> None:
    run, config = copy_of_run(reference, tmp_path)
    state = run / "checkpoints" / "step_000009" / "trainer_state.json"
    state.write_text(state.read_text()[:100])  # cut short: not valid JSON

    named = cardiomm("pretrain", "--config", str(config), "--resume-from", str(state.parent))
    assert named.returncode == 2, named.stderr[-3000:]
    assert named.stderr.startswith("cardiomm: error: ") and "Traceback" not in named.stderr
    assert str(state) in named.stderr and "not valid JSON" in named.stderr

    latest = run / "checkpoints" / "step_000012" / "optimizer.safetensors"
    latest.write_bytes(latest.read_bytes()[:-1])  # now no checkpoint is intact
    none_intact = cardiomm("pretrain", "--config", str(config), "--resume-from", "latest")
    assert none_intact.returncode == 2, none_intact.stderr[-3000:]
    assert none_intact.stderr.startswith("cardiomm: error: no usable checkpoint in ")
    assert str(state) in none_intact.stderr and str(latest) in none_intact.stderr
    assert "Traceback" not in none_intact.stderr


def test_resume_never_unpickles_files_of_the_checkpoint_folder(tmp_path: Path, reference: Path) -> None:
    run, config = copy_of_run(reference, tmp_path)
    checkpoint = run / "checkpoints" / "step_000009"
    marker = tmp_path / "code-ran"
    payload = pickle.dumps(Payload(marker))
    # pickles under the names of the state files Accelerate's save_state writes, and the optimiser state replaced by
    # a pickle whose size and hash were written into trainer_state.json, as a deliberate edit of the folder would do
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.safetensors"):
        (checkpoint / name).write_bytes(payload)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    digest = hashlib.sha256(payload).hexdigest()
    state.setdefault("files", {})["optimizer.safetensors"] = {"bytes": len(payload), "sha256": digest}
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))

    refused = cardiomm("pretrain", "--config", str(config), "--resume-from", str(checkpoint))
    assert not marker.exists()
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.startswith("cardiomm: error: ") and "Traceback" not in refused.stderr
    assert str(checkpoint / "optimizer.safetensors") in refused.stderr


def test_pretrain_does_not_depend_on_the_global_random_state(tmp_path: Path, data: Path) -> None:
    """What the process-wide generators hold before :func:`pretrain` (left there by earlier work in the same
    process) changes nothing: the model is built after seeding from ``training.seed``."""
    from cardiomm.training.pretrain import pretrain

    results = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        config = tiny_experiment(tmp_path / f"after_seed_{seed}", data, num_workers=0, max_steps=2,
                                 save_every_steps=None, eval_every_steps=None)
        _, run = pretrain(config)
        results.append({k: v.detach().clone() for k, v in run.model.state_dict().items()})
    assert_bit_identical(*results)
