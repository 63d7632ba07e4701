"""Throughput of ECG preprocessing: plain ``wfdb.rdsamp`` against file path → ``input_values``, and a uniform
batch (one (batch, leads, time) array, as the collators stack it) against the same records given as a list.

Run ``python -m cardiomm.benchmarks.feature_extraction`` to print the table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cardiomm.processing.ecg_records import STANDARD_12_LEADS
from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor


def default_data_dir() -> Path | None:
    """The shared real-data folder: ``$CARDIOMM_TEST_DATA``, else ``<repo>/../shared/data`` if it exists."""
    env = os.environ.get("CARDIOMM_TEST_DATA")
    candidates = [Path(env)] if env else [Path(__file__).resolve().parents[3].parent / "shared" / "data"]
    return next((p for p in candidates if p.is_dir()), None)


def write_synthetic_records(directory: str | os.PathLike, n_records: int, seconds: float = 10.0,
                            sampling_rate: int = 500, seed: int = 0) -> list[str]:
    """Write ``n_records`` 12-lead WFDB records (16-bit, mV) of ECG-like noise; returns their paths."""
    import wfdb

    rng = np.random.default_rng(seed)
    n_time = int(seconds * sampling_rate)
    t = np.arange(n_time) / sampling_rate
    paths = []
    for i in range(n_records):
        beat = np.sin(2 * np.pi * rng.uniform(0.8, 1.8) * t) ** 15  # spiky, heart-rate-like
        signal = beat[:, None] * rng.uniform(0.3, 1.5, 12) + 0.02 * rng.standard_normal((n_time, 12))
        name = f"synthetic_{i:05d}"
        wfdb.wrsamp(name, fs=sampling_rate, units=["mV"] * 12, sig_name=list(STANDARD_12_LEADS),
                    p_signal=signal, fmt=["16"] * 12, write_dir=os.fspath(directory))
        paths.append(os.path.join(os.fspath(directory), name))
    return paths


def find_records(directory: str | os.PathLike, n_records: int) -> list[str]:
    """Up to ``n_records`` record paths (``.hea`` without extension) under ``directory``, sorted."""
    headers = sorted(Path(directory).rglob("*.hea"))[:n_records]
    return [os.fspath(h.with_suffix("")) for h in headers]


def _best_times(runs: Sequence[Callable[[], Any]], repeats: int) -> list[float]:
    """Fastest wall time of each run over ``repeats`` interleaved passes, after one warm-up pass each."""
    for run in runs:
        run()  # warm-up: page cache, lazy imports
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        for k, run in enumerate(runs):
            start = time.perf_counter()
            run()
            best[k] = min(best[k], time.perf_counter() - start)
    return best


def _measure(dataset: str, paths: Sequence[str], extractor: ECGFeatureExtractor, batch_size: int,
             repeats: int) -> list[dict[str, Any]]:
    import wfdb

    def rdsamp() -> None:
        for path in paths:
            wfdb.rdsamp(path)

    def extract() -> None:
        for i in range(0, len(paths), batch_size):
            extractor(list(paths[i : i + batch_size]), crop="center")["input_values"]

    base, ours = _best_times([rdsamp, extract], repeats)
    n = len(paths)
    return [
        {"dataset": dataset, "pipeline": "wfdb.rdsamp", "records": n, "seconds": base,
         "records_per_s": n / base, "vs_rdsamp": 1.0},
        {"dataset": dataset, "pipeline": f"ECGFeatureExtractor (files, batch {batch_size})", "records": n,
         "seconds": ours, "records_per_s": n / ours, "vs_rdsamp": base / ours},
    ]


def _measure_uniform_batch(input_rate: float, n_records: int, extractor: ECGFeatureExtractor, batch_size: int,
                           repeats: int, seconds: float = 10.0, seed: int = 0) -> list[dict[str, Any]]:
    """Records/s of ``n_records`` random 12-lead records at ``input_rate`` Hz given in batches of ``batch_size``
    as one array each (processed over the batch axis at once) and as lists of records (one by one), in one run."""
    rng = np.random.default_rng(seed)
    records = rng.standard_normal((n_records, len(STANDARD_12_LEADS), int(seconds * input_rate))).astype(np.float32)
    batches = [records[i : i + batch_size] for i in range(0, n_records, batch_size)]

    def uniform() -> None:
        for batch in batches:
            extractor(batch, sampling_rate=input_rate, crop="random", seed=0, return_tensors="np")

    def one_by_one() -> None:
        for batch in batches:
            extractor(list(batch), sampling_rate=input_rate, crop="random", seed=0, return_tensors="np")

    listed, stacked = _best_times([one_by_one, uniform], repeats)
    dataset = f"arrays {input_rate:g} Hz -> {extractor.sampling_rate:g} Hz, {seconds:g} s"
    return [
        {"dataset": dataset, "pipeline": f"ECGFeatureExtractor (list of records, batch {batch_size})",
         "records": n_records, "seconds": listed, "records_per_s": n_records / listed, "vs_list": 1.0},
        {"dataset": dataset, "pipeline": f"ECGFeatureExtractor (one (batch, leads, time) array, batch {batch_size})",
         "records": n_records, "seconds": stacked, "records_per_s": n_records / stacked, "vs_list": listed / stacked},
    ]


def benchmark_feature_extractor(
    data_dir: str | None = None,
    n_records: int = 200,
    batch_size: int = 32,
    repeats: int = 5,
    extractor: ECGFeatureExtractor | None = None,
) -> list[dict[str, Any]]:
    """Measure records/s of plain ``wfdb.rdsamp`` and of file path → ``input_values`` in the same run, and of
    array batches processed as one (batch, leads, time) array against the same records as a list (random crops,
    the training path; at the extractor's rate and at half of it, resampled).

    Args:
        data_dir: a folder of WFDB/challenge records (searched recursively). Without it, ``n_records`` synthetic
            10-s 12-lead 500 Hz records are written to a temporary folder, and the PTB-XL sample (100 Hz and
            500 Hz) of :func:`default_data_dir` is measured too when present.
        n_records: records per dataset.
        batch_size: records per extractor call.
        repeats: timed passes (the two pipelines alternate) after one warm-up pass; the fastest is reported.
        extractor: the extractor to time (default: ``ECGFeatureExtractor()``, z-score, centre 5-s crop).

    Returns:
        One row per dataset and pipeline: dataset, pipeline, records, seconds, records_per_s, and vs_rdsamp
        (throughput relative to ``wfdb.rdsamp`` on the same files) or vs_list (throughput of array batches
        relative to the same records given as lists).
    """
    extractor = extractor if extractor is not None else ECGFeatureExtractor()
    rows: list[dict[str, Any]] = []
    arrays = [row for rate in (extractor.sampling_rate, extractor.sampling_rate / 2)
              for row in _measure_uniform_batch(rate, n_records, extractor, batch_size, repeats)]
    if data_dir is not None:
        paths = find_records(data_dir, n_records)
        if not paths:
            raise ValueError(f"{data_dir}: no WFDB records (.hea files) found")
        return _measure(os.fspath(data_dir), paths, extractor, batch_size, repeats) + arrays

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_synthetic_records(tmp, n_records)
        rows += _measure("synthetic 500 Hz, 10 s", paths, extractor, batch_size, repeats)

    shared = default_data_dir()
    if shared is not None:
        for folder, label in (("ptbxl/records500", "PTB-XL 500 Hz"), ("ptbxl/records100", "PTB-XL 100 Hz -> 500 Hz")):
            paths = find_records(shared / folder, n_records) if (shared / folder).is_dir() else []
            if paths:
                rows += _measure(label, paths, extractor, batch_size, repeats)
    return rows + arrays


def main(argv: Sequence[str] | None = None) -> None:
    """Print the benchmark table."""
    from cardiomm.tables import format_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder of WFDB records (default: synthetic + PTB-XL)")
    parser.add_argument("--n-records", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rows = benchmark_feature_extractor(args.data_dir, args.n_records, args.batch_size, args.repeats)
    print(format_table(rows))


if __name__ == "__main__":
    main()
