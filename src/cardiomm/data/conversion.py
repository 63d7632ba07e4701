"""The engine every real-dataset converter runs on: parallel, incremental, never stopped by one bad record.

A converter turns a raw corpus into a list of :class:`ConversionJob` (one per source record, each already
assigned to a patient-level split) and a *record converter*, a top-level function ``(job, info) -> rows``
that reads one record and returns the dataset rows it yields (one row per ECG; several for a long record cut
into segments). :func:`convert_records` then

- runs the record converter over the jobs in ``num_proc`` worker processes (``multiprocessing.Pool``, results
  kept in job order so the output does not depend on ``num_proc``), with a tqdm progress bar;
- catches every error of a record (unreadable file, missing leads, wrong shape...) and skips the record,
  listing it with the reason;
- writes each split incrementally to ``data/<split>.parquet`` with a ``pyarrow`` ``ParquetWriter`` in row groups
  of about 64 MB, so memory stays bounded by a few row groups whatever the corpus size (MIMIC-IV-ECG's ~800k
  records convert in constant memory; read them back lazily with ``load_ecg_dataset(out, streaming=True)``);
- adds the training fractions as extra splits ``train_1pct`` / ``train_10pct`` (prevalence-keeping
  :func:`~cardiomm.data.splits.stratified_fraction` over the label columns of ``train``, reproducible from
  ``seed``; the full ``train`` split is the 100 % fraction);
- writes ``cardiomm_dataset.json`` through :func:`~cardiomm.data.ecg_dataset.save_ecg_dataset` and a
  ``conversion_report.json`` that lists every skipped record with its reason.

:func:`convert` is the single entry point: ``convert("ptbxl", src, out, sampling_rate=500, num_proc=4)``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from cardiomm.data.ecg_dataset import (
    METADATA_FILE,
    ECGDatasetInfo,
    ecg_features,
    label_column,
    save_ecg_dataset,
)
from cardiomm.data.splits import stratified_fraction
from cardiomm.processing.ecg_records import STANDARD_12_LEADS, ECGRecord, canonical_lead_name, resample_signal

REPORT_FILE = "conversion_report.json"
DEFAULT_FRACTIONS: tuple[float, ...] = (0.01, 0.1)
ROW_GROUP_BYTES = 64 * 2**20

RecordConverter = Callable[["ConversionJob", ECGDatasetInfo], list[dict[str, Any]]]


# --------------------------------------------------------------------------------------------------- signals
def to_standard_leads(
    record: ECGRecord,
    sampling_rate: float,
    num_samples: int,
    lead_names: Sequence[str] = STANDARD_12_LEADS,
    nan_policy: str = "repair",
) -> tuple[np.ndarray, np.ndarray]:
    """Put ``record`` into the dataset layout: ``(ecg (len(lead_names), num_samples) float32 mV, lead_mask)``.

    Leads are matched by canonical name into ``lead_names`` order; absent leads (and leads with no finite
    sample) are zeros with ``lead_mask`` False; extra leads are dropped. Isolated non-finite samples are
    repaired by linear interpolation along time (``nan_policy="repair"``) or make the record fail
    (``"skip"``). The signal is then resampled (polyphase) to ``sampling_rate`` and cropped (from the start) or
    zero-padded (at the end) to ``num_samples``. Raises ``ValueError`` when no requested lead is present.
    """
    if nan_policy not in ("repair", "skip"):
        raise ValueError(f"nan_policy must be 'repair' or 'skip', got {nan_policy!r}")
    position: dict[str, int] = {}
    for i, name in enumerate(record.lead_names):
        position.setdefault(canonical_lead_name(name), i)
    signal = np.asarray(record.signal, dtype=np.float32)
    if signal.ndim != 2 or signal.shape[0] != len(record.lead_names):
        raise ValueError(f"signal shape {signal.shape} does not match {len(record.lead_names)} lead names")
    length = signal.shape[1]
    if length < 2:
        raise ValueError(f"record holds {length} sample(s)")
    selected = np.zeros((len(lead_names), length), dtype=np.float32)
    mask = np.zeros(len(lead_names), dtype=bool)
    for row, name in enumerate(lead_names):
        i = position.get(canonical_lead_name(name))
        if i is None:
            continue
        lead = signal[i]
        finite = np.isfinite(lead)
        if not finite.any():
            continue
        if not finite.all():
            if nan_policy == "skip":
                raise ValueError(f"lead {name} has {int((~finite).sum())} non-finite samples")
            t = np.arange(length)
            lead = np.interp(t, t[finite], lead[finite]).astype(np.float32)  # along time, per lead
        selected[row] = lead
        mask[row] = True
    if not mask.any():
        raise ValueError(f"none of the leads {list(lead_names)} found in {record.lead_names}")
    resampled = resample_signal(selected, float(record.sampling_rate), float(sampling_rate))
    ecg = np.zeros((len(lead_names), num_samples), dtype=np.float32)
    keep = min(num_samples, resampled.shape[1])
    ecg[:, :keep] = resampled[:, :keep]
    ecg[~mask] = 0.0
    return ecg, mask


# --------------------------------------------------------------------------------------------------- records
@dataclass
class ConversionJob:
    """One source record to convert: ``record`` names it in the skip report, ``split`` is where its rows go."""

    record: str
    split: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class SkippedRecord:
    """A record left out of the dataset, and why."""

    record: str
    reason: str


@dataclass
class ConversionSummary:
    """What a conversion produced: counts of records converted and skipped, rows per split, timing."""

    name: str
    output_dir: str
    num_converted: int
    num_skipped: int
    num_rows: int
    splits: dict[str, int]
    skipped: list[SkippedRecord]
    seconds: float

    @property
    def records_per_second(self) -> float:
        """Source records converted per second of wall time."""
        return self.num_converted / self.seconds if self.seconds > 0 else float("nan")

    def __str__(self) -> str:
        splits = ", ".join(f"{k}={v}" for k, v in self.splits.items())
        lines = [
            f"{self.name}: converted {self.num_converted} records ({self.num_rows} ECGs), skipped "
            f"{self.num_skipped}, in {self.seconds:.1f} s ({self.records_per_second:.1f} records/s) -> "
            f"{self.output_dir}",
            f"  splits: {splits}",
        ]
        if self.skipped:
            reasons: dict[str, int] = {}
            for s in self.skipped:
                key = re.sub(r"'?[^\s']*[/\\][^\s']*'?", "<path>", s.reason)[:100]  # group by reason, not file
                reasons[key] = reasons.get(key, 0) + 1
            top = sorted(reasons.items(), key=lambda kv: -kv[1])[:5]
            lines.append("  skipped: " + "; ".join(f"{n} x {r}" for r, n in top) + f" (all listed in {REPORT_FILE})")
        return "\n".join(lines)


def convert_single_ecg_record(job: ConversionJob, info: ECGDatasetInfo) -> list[dict[str, Any]]:
    """Record converter for one file = one ECG: reads ``job.data["path"]`` and fills ``job.data["row"]``.

    ``job.data["nan_policy"]`` (default ``"repair"``) goes to :func:`to_standard_leads`.
    """
    from cardiomm.processing.ecg_records import read_ecg_record

    record = read_ecg_record(job.data["path"])
    ecg, mask = to_standard_leads(
        record, info.sampling_rate, info.num_samples, info.lead_names, job.data.get("nan_policy", "repair")
    )
    row = dict(job.data["row"])
    row["ecg"], row["lead_mask"] = ecg, mask
    return [row]


# --------------------------------------------------------------------------------------------------- workers
_WORKER_STATE: tuple[RecordConverter, ECGDatasetInfo] | None = None


def _init_worker(record_converter: RecordConverter, info: ECGDatasetInfo) -> None:
    global _WORKER_STATE
    _WORKER_STATE = (record_converter, info)


def _convert_job(job: ConversionJob) -> tuple[ConversionJob, list[dict[str, Any]] | None, str | None]:
    assert _WORKER_STATE is not None
    record_converter, info = _WORKER_STATE
    try:
        return job, record_converter(job, info), None
    except Exception as err:  # one bad record must never stop a conversion
        return job, None, f"{type(err).__name__}: {err}"


def _run_jobs(
    jobs: Iterable[ConversionJob], pool, num_proc: int
) -> Iterator[tuple[ConversionJob, list[dict[str, Any]] | None, str | None]]:
    if pool is None:
        for job in jobs:
            yield _convert_job(job)
        return
    chunksize = 4
    window = num_proc * chunksize * 4  # bounds the results held in memory
    iterator = iter(jobs)
    while batch := list(islice(iterator, window)):
        yield from pool.imap(_convert_job, batch, chunksize=chunksize)


# --------------------------------------------------------------------------------------------------- parquet
def _rows_to_table(rows: list[dict[str, Any]], features, schema):
    import pyarrow as pa
    from datasets import Array2D

    arrays = []
    for name, feature in features.items():
        values = [row.get(name) for row in rows]
        arrow_type = schema.field(name).type
        if isinstance(feature, Array2D):
            stacked = np.ascontiguousarray(np.stack(values), dtype=feature.dtype)
            n, height, width = stacked.shape
            inner = pa.ListArray.from_arrays(
                pa.array(np.arange(0, n * height * width + 1, width, dtype=np.int32)), pa.array(stacked.reshape(-1))
            )
            outer = pa.ListArray.from_arrays(pa.array(np.arange(0, n * height + 1, height, dtype=np.int32)), inner)
            arrays.append(pa.ExtensionArray.from_storage(arrow_type, outer))
        else:
            values = [v.tolist() if isinstance(v, np.ndarray) else v for v in values]
            arrays.append(pa.array(values, type=arrow_type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _dictionary_columns(schema) -> list[str]:
    """String columns (categorical metadata compresses well); never the waveform or the ids."""
    import pyarrow as pa

    return [f.name for f in schema if pa.types.is_string(f.type) and f.name not in ("ecg_id", "report")]


class _SplitWriter:
    """Appends rows to ``data/<split>.parquet`` in row groups of about :data:`ROW_GROUP_BYTES`."""

    def __init__(self, path: Path, features, row_bytes: int):
        self.path = path
        self.features = features
        self.schema = features.arrow_schema
        self.rows_per_group = max(8, ROW_GROUP_BYTES // max(row_bytes, 1))
        self.buffer: list[dict[str, Any]] = []
        self.num_rows = 0
        self._writer = None

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.buffer.extend(rows)
        if len(self.buffer) >= self.rows_per_group:
            self.flush()

    def write_table(self, table) -> None:
        import pyarrow.parquet as pq

        if self._writer is None:
            self._writer = pq.ParquetWriter(
                str(self.path), schema=self.schema, use_dictionary=_dictionary_columns(self.schema)
            )
        self._writer.write_table(table)
        self.num_rows += table.num_rows

    def flush(self) -> None:
        if self.buffer:
            self.write_table(_rows_to_table(self.buffer, self.features, self.schema))
            self.buffer = []

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.close()


def _check_row(row: dict[str, Any], info: ECGDatasetInfo) -> None:
    shape = (len(info.lead_names), info.num_samples)
    ecg = row.get("ecg")
    if not isinstance(ecg, np.ndarray) or ecg.shape != shape:
        raise ValueError(f"ecg of shape {getattr(ecg, 'shape', None)}, expected {shape}")
    if not np.isfinite(ecg).all():
        raise ValueError("ecg holds non-finite values")
    if len(row.get("lead_mask", ())) != shape[0]:
        raise ValueError("lead_mask length does not match the leads")
    for task, names in info.tasks.items():
        if len(row.get(label_column(task), ())) != len(names):
            raise ValueError(f"{label_column(task)} has the wrong length (expected {len(names)})")
    if not row.get("ecg_id"):
        raise ValueError("row without ecg_id")


def fraction_split_name(fraction: float) -> str:
    """Name of the training-fraction split: ``0.01`` → ``"train_1pct"``, ``0.005`` → ``"train_0.5pct"``."""
    pct = fraction * 100
    text = f"{pct:.0f}" if math.isclose(pct, round(pct)) else f"{pct:g}"
    return f"train_{text}pct"


def write_training_fractions(
    data_dir: str | os.PathLike,
    fractions: Sequence[float],
    label_columns: Sequence[str],
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Write ``train_<p>pct.parquet`` splits drawn from ``data/train.parquet`` keeping label prevalence.

    The records of each fraction are chosen by :func:`~cardiomm.data.splits.stratified_fraction` over the
    concatenated ``label_columns`` (random when there are none), reproducibly from ``seed``. Returns
    ``{split: {"fraction", "num_rows", "seed", "stratified_on"}}``.
    """
    import pyarrow.parquet as pq

    data_dir = Path(data_dir)
    train = data_dir / "train.parquet"
    fractions = [f for f in fractions if 0 < f < 1]
    if not train.is_file() or not fractions:
        return {}
    parquet = pq.ParquetFile(str(train))
    n = parquet.metadata.num_rows
    if label_columns:
        table = parquet.read(columns=list(label_columns))
        labels = np.concatenate(
            [np.asarray(table.column(c).to_pylist(), dtype=np.int8).reshape(n, -1) for c in label_columns], axis=1
        )
    else:
        labels = np.zeros((n, 0), dtype=np.int8)
    chosen = {fraction_split_name(f): (f, stratified_fraction(labels, f, seed=seed)) for f in fractions}
    writers = {}
    for name in chosen:
        writers[name] = pq.ParquetWriter(
            str(data_dir / f"{name}.parquet"), schema=parquet.schema_arrow,
            use_dictionary=_dictionary_columns(parquet.schema_arrow),
        )
    offset = 0
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group)
        for name, (_, idx) in chosen.items():
            local = idx[(idx >= offset) & (idx < offset + table.num_rows)] - offset
            if len(local):
                writers[name].write_table(table.take(local))
        offset += table.num_rows
    for w in writers.values():
        w.close()
    return {
        name: {"fraction": f, "num_rows": int(len(idx)), "seed": seed, "stratified_on": list(label_columns)}
        for name, (f, idx) in chosen.items()
    }


def _prepare_output(out: Path) -> Path:
    data_dir = out / "data"
    stale = sorted(data_dir.glob("*.parquet")) if data_dir.is_dir() else []
    if stale and not ((out / METADATA_FILE).is_file() or (out / REPORT_FILE).is_file()):
        raise FileExistsError(f"{out}: data/ holds Parquet files that are not from a cardiomm conversion")
    for p in stale:
        p.unlink()
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir


def convert_records(
    jobs: Iterable[ConversionJob],
    record_converter: RecordConverter,
    info: ECGDatasetInfo,
    out_dir: str | os.PathLike,
    *,
    extra_features: dict[str, Any] | None = None,
    num_proc: int = 1,
    skipped: Iterable[SkippedRecord] = (),
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    fraction_tasks: Sequence[str] | None = None,
    seed: int = 0,
    num_jobs: int | None = None,
    progress: bool = True,
) -> ConversionSummary:
    """Convert ``jobs`` with ``record_converter`` into a cardiomm dataset folder at ``out_dir``.

    ``skipped`` lists records a converter already rejected from its metadata (e.g. an empty report); they
    appear in the report with the records that fail here. ``fractions`` of ``train`` become extra splits,
    stratified on the labels of ``fraction_tasks`` (default: all tasks). ``num_jobs`` sizes the progress bar
    when ``jobs`` is a generator. Returns (and, with ``progress``, prints) the :class:`ConversionSummary`.
    """
    from datasets import DatasetDict
    from tqdm.auto import tqdm

    empty = [task for task, names in info.tasks.items() if not names]
    if empty:
        raise ValueError(f"tasks without label names: {empty}")
    start = time.perf_counter()
    out = Path(out_dir)
    data_dir = _prepare_output(out)
    features = ecg_features(info, extra_features)
    row_bytes = len(info.lead_names) * info.num_samples * 4
    skipped = list(skipped)
    writers: dict[str, _SplitWriter] = {}
    num_converted = 0
    if num_jobs is None and hasattr(jobs, "__len__"):
        num_jobs = len(jobs)  # type: ignore[arg-type]
    # workers are started before any other thread (progress bar, Arrow writers) exists in this process
    pool = None
    if num_proc > 1:
        pool = multiprocessing.Pool(num_proc, initializer=_init_worker, initargs=(record_converter, info))
    else:
        _init_worker(record_converter, info)
    bar = tqdm(total=num_jobs, desc=f"converting {info.name}", unit="rec", disable=not progress)
    try:
        for job, rows, reason in _run_jobs(jobs, pool, num_proc):
            bar.update(1)
            if reason is None and not rows:
                reason = "record produced no ECG"
            if reason is None:
                try:
                    for row in rows:
                        _check_row(row, info)
                except ValueError as err:
                    reason = f"inconsistent record: {err}"
            if reason is not None:
                skipped.append(SkippedRecord(job.record, reason))
                bar.set_postfix(skipped=len(skipped), refresh=False)
                continue
            if job.split not in writers:
                writers[job.split] = _SplitWriter(data_dir / f"{job.split}.parquet", features, row_bytes)
            writers[job.split].add(rows)
            num_converted += 1
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        bar.close()
        for w in writers.values():
            w.close()
    splits = {name: w.num_rows for name, w in writers.items() if w.num_rows > 0}
    order = ["train", "validation", "test"]
    splits = {k: splits[k] for k in sorted(splits, key=lambda s: (order.index(s) if s in order else 3, s))}
    tasks = list(info.tasks) if fraction_tasks is None else list(fraction_tasks)
    fraction_info = write_training_fractions(data_dir, fractions, [label_column(t) for t in tasks], seed=seed)
    splits.update({name: meta["num_rows"] for name, meta in fraction_info.items()})
    summary = ConversionSummary(
        name=info.name,
        output_dir=str(out),
        num_converted=num_converted,
        num_skipped=len(skipped),
        num_rows=sum(w.num_rows for w in writers.values()),
        splits=splits,
        skipped=skipped,
        seconds=time.perf_counter() - start,
    )
    info.extra["splits"] = dict(splits)
    info.extra["train_fractions"] = fraction_info
    info.extra["conversion"] = {
        "num_converted": summary.num_converted,
        "num_skipped": summary.num_skipped,
        "num_rows": summary.num_rows,
        "report": REPORT_FILE,
    }
    save_ecg_dataset(DatasetDict(), out, info)  # Parquet splits are already written; this writes the metadata
    report = {k: v for k, v in asdict(summary).items() if k != "skipped"}
    report["records_per_second"] = summary.records_per_second
    report["skipped"] = [asdict(s) for s in skipped]
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    if progress:
        print(summary)
    return summary


# --------------------------------------------------------------------------------------------------- entry
_CONVERTERS: dict[str, tuple[str, str]] = {
    "ptbxl": ("cardiomm.data.ptbxl", "convert_ptbxl"),
    "challenge": ("cardiomm.data.challenge", "convert_challenge"),
    "cinc2020": ("cardiomm.data.challenge", "convert_challenge"),
    "cinc2021": ("cardiomm.data.challenge", "convert_challenge"),
    "physionet2020": ("cardiomm.data.challenge", "convert_challenge"),
    "physionet2021": ("cardiomm.data.challenge", "convert_challenge"),
    "mimic_iv_ecg": ("cardiomm.data.mimic_iv_ecg", "convert_mimic_iv_ecg"),
    "incart": ("cardiomm.data.incart", "convert_incart"),
    "incartdb": ("cardiomm.data.incart", "convert_incart"),
}


def available_converters() -> list[str]:
    """Names accepted by :func:`convert`."""
    return sorted(_CONVERTERS)


def convert(
    name: str,
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    sampling_rate: int = 500,
    num_proc: int | None = None,
    **options: Any,
) -> ConversionSummary:
    """Convert the raw dataset ``name`` found at ``src`` into a cardiomm dataset folder at ``out``.

    ``name`` is one of :func:`available_converters` (``ptbxl``, ``cinc2021``/``challenge``, ``mimic_iv_ecg``,
    ``incart``; dashes allowed). ``num_proc`` defaults to the number of CPUs (at most 8). ``options`` go to the
    dataset's converter (e.g. ``fractions``, ``seed``, ``max_records``, ``progress``).
    """
    import importlib

    key = name.strip().lower().replace("-", "_")
    if key == "ptb_xl":
        key = "ptbxl"
    if key not in _CONVERTERS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available_converters())}")
    module, function = _CONVERTERS[key]
    if num_proc is None:
        num_proc = min(os.cpu_count() or 1, 8)
    converter = getattr(importlib.import_module(module), function)
    return converter(src, out, sampling_rate=sampling_rate, num_proc=num_proc, **options)
