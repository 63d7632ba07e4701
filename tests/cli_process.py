"""Run the ``cardiomm`` command as a user does: in a fresh process, with what it printed and its exit status.

Every command runs in a process group of its own, so that on a time-out the command and any worker processes it
started are killed together and the test fails instead of hanging the suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence

import pytest

#: ``python -c KILLED_AFTER_STEP STEP ARGS...``: ``cardiomm ARGS...`` in a process that dies (``os._exit(17)``, as a
#: crashed job) right after optimiser step STEP, to test resuming.
KILLED_AFTER_STEP = """
import os, sys
from cardiomm.training import loop
step = int(sys.argv[1])
original = loop.TrainingLoop.__init__
def init(self, *args, **kwargs):
    original(self, *args, **kwargs)
    self.on_step_end = lambda state: os._exit(17) if state.global_step == step else False
loop.TrainingLoop.__init__ = init
from cardiomm.cli import main
sys.exit(main(sys.argv[2:]))
"""

#: ``python -m cardiomm.cli``: the ``cardiomm`` console script's entry point, in this interpreter.
CARDIOMM = (sys.executable, "-m", "cardiomm.cli")


def cardiomm_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment for a ``cardiomm`` subprocess: one thread, CPU only, no progress bars,
    nothing fetched from the Hub; ``extra`` is added last."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        "MPLBACKEND": "Agg",
    }
    env.update(extra or {})
    return env


def run_cardiomm(
    *args: str | os.PathLike,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    command: Sequence[str] = CARDIOMM,
) -> subprocess.CompletedProcess:
    """``cardiomm ARGS`` (or ``COMMAND ARGS``) in a fresh process group; ``env`` is added to :func:`cardiomm_env`.

    On a time-out the whole group is killed and the test fails with what the command printed.
    """
    argv = [*command, *map(str, args)]
    proc = subprocess.Popen(argv, cwd=cwd, env=cardiomm_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"`{' '.join(argv)}` still running after {timeout} s\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def describe(run: subprocess.CompletedProcess) -> str:
    """Exit status, stdout and the end of stderr of a finished command, for assertion messages."""
    return f"exit {run.returncode}\nstdout:\n{run.stdout[-4000:]}\nstderr:\n{run.stderr[-4000:]}"
