"""Run a test's computation in several CPU processes joined by a gloo process group, as data-parallel training
runs, and collect what each process returned: the cross-process tests of the losses and models compare these with
one process on the whole batch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _worker(body: Callable[[int], Any], rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.save(body(rank), Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def run_in_gloo_processes(body: Callable[[int], Any], out_dir: Path, world_size: int = 2,
                          timeout: float = 180) -> list[Any]:
    """``body(rank)`` in ``world_size`` spawned processes of one gloo group; returns each rank's result, in rank
    order. ``body`` must be a module-level function (spawned processes import it by name)."""
    ctx = torch.multiprocessing.get_context("spawn")
    init_file = str(Path(out_dir) / "rendezvous")
    processes = [ctx.Process(target=_worker, args=(body, rank, world_size, init_file, str(out_dir)))
                 for rank in range(world_size)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=timeout)
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]
    return [torch.load(Path(out_dir) / f"rank{rank}.pt") for rank in range(world_size)]
