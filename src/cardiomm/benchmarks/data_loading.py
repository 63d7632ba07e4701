"""How fast a dataset converts, and how fast the converted dataset feeds training compared with reading WFDB files.

Measurements in one run on the same records:

- conversion: source records per second through ``convert("ptbxl", ...)`` (read, resample, write Parquet);
- ``DataLoader`` (shuffled, ``batch_size`` 64, 2 workers) over the converted dataset loaded with
  ``load_ecg_dataset``, read two ways: :class:`ArrowECGBatches` (one gather per batch from the memory-mapped
  Arrow buffers) and plain ``with_format("numpy")`` (``datasets``' row-by-row random access): ECGs per second;
- the same ``DataLoader`` settings over a dataset that calls ``wfdb.rdsamp`` per record: ECGs per second.

Loader throughput is measured over whole passes for at least ``min_seconds`` after one warm-up pass (persistent
workers), so worker start-up is not counted for either. Default records: the PTB-XL sample in ``$CARDIOMM_TEST_DATA`` / ``../shared/data``
(500 Hz files), else ``num_records`` random 12-lead records written with ``wfdb.wrsamp`` in the PTB-XL layout.

Run: ``python -m cardiomm.benchmarks.data_loading [--data DIR] [--num-proc 2] [--min-seconds 4]``.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[3]


def default_ptbxl_source() -> Path | None:
    """The PTB-XL sample of ``$CARDIOMM_TEST_DATA`` (default ``<repo>/../shared/data``), if present."""
    root = Path(os.environ.get("CARDIOMM_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))
    src = root / "ptbxl"
    return src if (src / "ptbxl_database.csv").is_file() else None


def write_random_ptbxl(directory: str | os.PathLike, num_records: int = 300, seed: int = 0) -> Path:
    """Write ``num_records`` random 12-lead 10-s 500 Hz records in the PTB-XL layout (CSV tables + records500)."""
    import pandas as pd
    import wfdb

    root = Path(directory)
    folder = root / "records500" / "00000"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    leads = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    rows = []
    for i in range(1, num_records + 1):
        name = f"{i:05d}_hr"
        signal = np.round(rng.standard_normal((5000, 12)) * 0.2, 3)
        wfdb.wrsamp(name, fs=500, units=["mV"] * 12, sig_name=leads, p_signal=signal, fmt=["16"] * 12,
                    adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(folder))
        codes = [{"NORM": 100.0, "SR": 0.0}, {"IMI": 50.0, "LVOLT": 0.0, "SR": 0.0}, {"SBRAD": 0.0}][i % 3]
        rows.append({
            "ecg_id": i, "patient_id": float(i), "age": 60.0, "sex": i % 2, "recording_date": "1990-01-01 00:00:00",
            "report": "sinusrhythmus", "scp_codes": repr(codes), "strat_fold": i % 10 + 1,
            "filename_lr": f"records100/00000/{i:05d}_lr", "filename_hr": f"records500/00000/{name}",
        })
    pd.DataFrame(rows).to_csv(root / "ptbxl_database.csv", index=False)
    statements = pd.DataFrame(
        [
            ("NORM", "normal ECG", 1.0, None, None, "NORM", "NORM"),
            ("IMI", "inferior myocardial infarction", 1.0, None, None, "MI", "IMI"),
            ("SR", "sinus rhythm", None, None, 1.0, None, None),
            ("SBRAD", "sinus bradycardia", None, None, 1.0, None, None),
            ("LVOLT", "low QRS voltages in the frontal and horizontal leads", None, 1.0, None, None, None),
        ],
        columns=["code", "description", "diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass"],
    )
    statements.to_csv(root / "scp_statements.csv", index=False)
    return root


class ArrowECGBatches:
    """Map-style dataset over a converted split that gathers a whole batch from the memory-mapped Arrow buffers.

    ``datasets``' own random access slices one row at a time and converts each slice separately; for the
    ``Array2D`` waveform that per-row cost dominates. Here each row's samples are located once (they are one
    contiguous run of the Arrow values buffer) and a batch is a single copy per row into one (batch, leads, time)
    array. ``__getitems__`` returns the finished batch of tensors, so use it with ``collate_fn=batch_as_is``.
    """

    def __init__(self, dataset, label_columns: tuple[str, ...] = ()):
        self.dataset = dataset.flatten_indices() if dataset._indices is not None else dataset
        self.label_columns = label_columns
        self._index = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_index": None}  # buffers are re-mapped in each worker

    def _build(self) -> None:
        table = self.dataset.data.table
        values, chunk_of, start_of = [], [], []
        for k, chunk in enumerate(table.column("ecg").chunks):
            storage = chunk.storage  # list<list<float>>
            outer = storage.offsets.to_numpy()
            inner = storage.values.offsets.to_numpy()
            values.append(storage.values.values.to_numpy(zero_copy_only=True))
            chunk_of.append(np.full(len(outer) - 1, k))
            start_of.append(inner[outer[:-1]])
        shape = self.dataset.features["ecg"].shape
        labels = {
            c: np.asarray(table.column(c).combine_chunks().flatten().to_numpy(zero_copy_only=False)).reshape(
                table.num_rows, -1
            )
            for c in ("lead_mask", *self.label_columns)
        }
        self._index = (values, np.concatenate(chunk_of), np.concatenate(start_of), shape, labels)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        import torch

        if self._index is None:
            self._build()
        values, chunk_of, start_of, shape, labels = self._index
        size = shape[0] * shape[1]
        ecg = np.empty((len(indices), size), dtype=np.float32)
        for row, i in enumerate(indices):
            ecg[row] = values[chunk_of[i]][start_of[i]:start_of[i] + size]
        batch = {"ecg": torch.from_numpy(ecg.reshape(len(indices), *shape))}
        batch.update({c: torch.from_numpy(v[indices]) for c, v in labels.items()})
        return batch

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


def batch_as_is(batch: Any) -> Any:
    """``collate_fn`` for datasets whose ``__getitems__`` already returns a finished batch."""
    return batch


class WFDBRecords:
    """A map-style dataset that reads each record with ``wfdb.rdsamp`` ((leads, time) float32 tensor)."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        import torch
        import wfdb

        signal, _ = wfdb.rdsamp(self.paths[index])
        return torch.from_numpy(np.ascontiguousarray(signal.T, dtype=np.float32))


def _loader_throughput(
    dataset, batch_size: int, num_workers: int, min_seconds: float, collate_fn=None
) -> tuple[float, int]:
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                        persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(0),
                        collate_fn=collate_fn)
    for _ in loader:  # warm-up pass: starts the workers
        pass
    count = 0
    start = time.perf_counter()
    while count == 0 or time.perf_counter() - start < min_seconds:  # whole epochs
        for batch in loader:
            ecg = batch["ecg"] if isinstance(batch, dict) else batch
            count += int(ecg.shape[0])
    return time.perf_counter() - start, count


def benchmark_data_loading(
    src: str | os.PathLike | None = None,
    *,
    num_records: int = 300,
    num_proc: int = 1,
    batch_size: int = 64,
    num_workers: int = 2,
    min_seconds: float = 4.0,
    workdir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Measure conversion speed and DataLoader throughput (converted dataset vs ``wfdb.rdsamp``); returns rows."""
    from datasets import concatenate_datasets

    from cardiomm.data.conversion import convert
    from cardiomm.data.ecg_dataset import load_ecg_dataset

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        source = Path(src) if src is not None else default_ptbxl_source()
        label = "PTB-XL sample" if source is not None else f"{num_records} random records"
        if source is None:
            source = write_random_ptbxl(Path(tmp) / "source", num_records)
        out = Path(tmp) / "converted"
        summary = convert("ptbxl", source, out, sampling_rate=500, num_proc=num_proc, fractions=(), progress=False)
        dataset_dict, _ = load_ecg_dataset(out)
        converted = concatenate_datasets([dataset_dict[s] for s in dataset_dict])
        ecg_ids = converted["ecg_id"]
        columns = ["ecg", "lead_mask", "labels_super"]
        standard = converted.with_format("numpy", columns=columns)
        seconds_standard, n_standard = _loader_throughput(standard, batch_size, num_workers, min_seconds)
        batches = ArrowECGBatches(converted, label_columns=("labels_super",))
        seconds_arrow, n_arrow = _loader_throughput(batches, batch_size, num_workers, min_seconds, batch_as_is)

        import pandas as pd

        database = pd.read_csv(source / "ptbxl_database.csv", index_col="ecg_id")
        paths = [str(source / database.loc[int(i), "filename_hr"]) for i in ecg_ids]
        seconds_wfdb, n_wfdb = _loader_throughput(WFDBRecords(paths), batch_size, num_workers, min_seconds)

    wfdb_rate = n_wfdb / seconds_wfdb
    settings = f"batch {batch_size}, {num_workers} workers"

    def row(step: str, items: int, seconds: float, speedup: Any = "") -> dict[str, Any]:
        rate = items / seconds if seconds > 0 else float("nan")
        return {"step": step, "data": label, "items": items, "seconds": seconds, "per_second": rate,
                "vs_wfdb": speedup if speedup != "auto" else rate / wfdb_rate}

    return [
        row(f"convert ptbxl -> Parquet (num_proc={num_proc}), records", summary.num_converted, summary.seconds),
        row(f"DataLoader <- converted, ArrowECGBatches ({settings})", n_arrow, seconds_arrow, "auto"),
        row(f"DataLoader <- converted, with_format('numpy') ({settings})", n_standard, seconds_standard, "auto"),
        row(f"DataLoader <- wfdb.rdsamp ({settings})", n_wfdb, seconds_wfdb, 1.0),
    ]

if __name__ == "__main__":
    import argparse

    from cardiomm.tables import format_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="PTB-XL folder (default: the shared sample, else random)")
    parser.add_argument("--num-records", type=int, default=300)
    parser.add_argument("--num-proc", type=int, default=1)
    parser.add_argument("--min-seconds", type=float, default=4.0, help="measure each loader for at least this long")
    args = parser.parse_args()
    rows = benchmark_data_loading(args.data, num_records=args.num_records, num_proc=args.num_proc,
                                  min_seconds=args.min_seconds)
    print(format_table(rows, floatfmt=".4g"))
