"""Speed of the synthetic cohort on one CPU core: waveform generation, cohort assembly, delineation.

Rows (ECGs per second, best of ``repeats`` runs so that a shared machine's interruptions count as little as
possible; BLAS / OpenMP are held to one thread):

* ``render_ecgs`` -- the vectorised waveform model alone, on parameters drawn for the cohort's own mix of
  conditions (target: at least 200 ten-second 12-lead ECGs per second);
* ``simulate_ecgs`` -- parameter sampling + rendering from condition lists;
* ``generate_cohort`` -- the whole cohort (patients, encounters, labels, waveforms, reports, labs, EHR
  events), without delineation;
* ``measure_wave_attributes`` -- delineation of the ECGs (one process);
* ``build_dataset`` -- the cohort as a ``datasets.DatasetDict`` (with EHR event lists).

Run ``python -m cardiomm.benchmarks.synthetic_cohort --help`` (or ``cardiomm bench synthetic --help``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from cardiomm.synthetic import (
    build_dataset,
    generate_cohort,
    measure_wave_attributes,
    render_ecgs,
    sample_ecg_parameters,
    simulate_ecgs,
)
from cardiomm.tables import format_table

GENERATION_TARGET_ECG_PER_S = 200.0


def _best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def benchmark_synthetic(
    n_ecgs: int = 512,
    n_patients: int = 200,
    n_delineate: int = 96,
    repeats: int = 3,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Time each stage of the synthetic cohort on one core; one row per stage."""
    from threadpoolctl import threadpool_limits

    rows: list[dict[str, Any]] = []
    with threadpool_limits(limits=1):
        seconds, cohort = _best_time(lambda: generate_cohort(n_patients=n_patients, seed=seed), 1)
        mix = list(cohort.ecgs["labels"])
        labels = [mix[i % len(mix)] for i in range(n_ecgs)]
        params = sample_ecg_parameters(labels, np.random.default_rng(seed))

        def add(stage: str, n: int, sec: float, target: float | None = None) -> None:
            row = {"stage": stage, "ecgs": n, "seconds": round(sec, 3), "ecg_per_s": round(n / sec, 1)}
            row["target_ecg_per_s"] = target if target is not None else ""
            row["meets_target"] = "" if target is None else ("yes" if n / sec >= target else "NO")
            rows.append(row)

        sec, _ = _best_time(lambda: render_ecgs(params), repeats)
        add("render_ecgs (cohort condition mix)", n_ecgs, sec, GENERATION_TARGET_ECG_PER_S)
        sec, _ = _best_time(lambda: simulate_ecgs(labels, seed=seed), repeats)
        add("simulate_ecgs (sampling + rendering)", n_ecgs, sec, GENERATION_TARGET_ECG_PER_S)
        add(f"generate_cohort ({n_patients} patients, no delineation)", len(cohort), seconds)
        subset = cohort.waveforms[:n_delineate]
        sec, _ = _best_time(lambda: measure_wave_attributes(subset, progress=False), 1)
        add("measure_wave_attributes (1 process)", len(subset), sec)
        sec, _ = _best_time(lambda: build_dataset(cohort), 1)
        add("build_dataset (with EHR events)", len(cohort), sec)
    return rows


def main(argv: list[str] | None = None) -> None:
    """Print the benchmark table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-ecgs", type=int, default=512)
    parser.add_argument("--n-patients", type=int, default=200)
    parser.add_argument("--n-delineate", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = benchmark_synthetic(args.n_ecgs, args.n_patients, args.n_delineate, args.repeats, args.seed)
    print(format_table(rows))


if __name__ == "__main__":
    main()
