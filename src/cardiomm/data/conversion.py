"""The engine every real-dataset converter runs on: parallel, incremental, never stopped by one bad record.

A converter turns a raw corpus into a list of :class:`ConversionJob` (one per source record, each already
assigned to a patient-level split) and a *record converter*, a top-level function ``(job, info) -> rows``
that reads one record and returns the dataset rows it yields (one row per ECG; several for a long record cut
into segments). :func:`convert_records` then

- marks the output folder as holding a conversion in progress (``conversion_report.json`` with
  ``"status": "in progress"``) before anything else, then removes what an earlier conversion left there (its
  Parquet files and ``cardiomm_dataset.json``) and says so. A conversion that was killed is thus recognised on
  the next run and redone from the first record (a Parquet file cut off mid-write cannot be resumed). An output
  folder whose ``data/`` holds Parquet files that no cardiomm conversion wrote is refused, never emptied;
- runs the record converter over the jobs in ``num_proc`` worker processes
  (``concurrent.futures.ProcessPoolExecutor``, results kept in job order so the output does not depend on
  ``num_proc``), with a tqdm progress bar. A worker process that dies (killed by the out-of-memory killer, a
  crash in native code) stops the conversion with a :class:`ConversionError` naming the process and the record
  it was converting, instead of waiting for it forever;
- catches every error of a record (unreadable file, bad header, missing leads, wrong shape...) and skips the
  record, listing it with its split and the reason;
- writes each split incrementally to ``data/<split>.parquet`` with a ``pyarrow`` ``ParquetWriter`` in row groups
  of about 64 MB, so memory stays bounded by a few row groups whatever the corpus size (MIMIC-IV-ECG's ~800k
  records convert in constant memory; read them back lazily with ``load_ecg_dataset(out, streaming=True)``);
- adds the training fractions as extra splits ``train_1pct`` / ``train_10pct`` (prevalence-keeping
  :func:`~cardiomm.data.splits.stratified_fraction` over the label columns of ``train``, reproducible from
  ``seed``; the full ``train`` split is the 100 % fraction);
- writes ``cardiomm_dataset.json`` through :func:`~cardiomm.data.ecg_dataset.save_ecg_dataset`, then the final
  ``conversion_report.json`` (``"status": "complete"``): records found, converted and skipped, in total and per
  split (converted + skipped == found; records rejected before a split was chosen count under
  ``"unassigned"``), rows per split, and every skipped record with its split and reason. The printed summary
  holds the same counts and lists the skipped records.

A conversion in which no record at all could be converted fails with a ``ValueError`` (its report, status
``"failed"``, lists every record and why); one stopped by a dead worker or an interruption removes its partial
Parquet files and records the error in the report. In both cases no ``cardiomm_dataset.json`` is written, so no
half-made dataset can be loaded.

:func:`convert` is the single entry point: ``convert("ptbxl", src, out, sampling_rate=500, num_proc=4)``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from datetime import datetime
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
REPORT_WRITER = "cardiomm data convert"  # the report's "written_by": how a conversion output folder is recognised
UNASSIGNED = "unassigned"  # records_by_split key of the records rejected before a split was chosen
DEFAULT_FRACTIONS: tuple[float, ...] = (0.01, 0.1)
ROW_GROUP_BYTES = 64 * 2**20
MAX_LISTED_SKIPPED = 50  # skipped records the printed summary lists one by one (the report lists them all)
_SPLIT_ORDER = ("train", "validation", "test")

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
    """A record left out of the dataset, and why; ``split`` is ``""`` when it was rejected before a split."""

    record: str
    reason: str
    split: str = ""


class ConversionError(RuntimeError):
    """A conversion that could not finish (a worker process died); its output folder holds no dataset."""


def _split_sort_key(split: str) -> tuple[int, str]:
    if split == UNASSIGNED:
        return (len(_SPLIT_ORDER) + 1, split)
    return (_SPLIT_ORDER.index(split) if split in _SPLIT_ORDER else len(_SPLIT_ORDER), split)


def _reason_group(reason: str) -> str:
    """A skip reason without its file paths, to count records skipped for the same reason."""
    return re.sub(r"'?[^\s']*[/\\][^\s']*'?", "<path>", reason)[:100]


@dataclass
class ConversionSummary:
    """What a conversion produced: records found, converted and skipped (in total and per split), rows, timing.

    ``splits`` counts the rows (ECGs) of every written split, training fractions included;
    ``records_by_split`` counts source records per split as ``{"found", "converted", "skipped"}``
    (``"unassigned"``: records rejected before a split was chosen).
    """

    name: str
    output_dir: str
    num_converted: int
    num_skipped: int
    num_rows: int
    splits: dict[str, int]
    skipped: list[SkippedRecord]
    seconds: float
    num_found: int = 0
    records_by_split: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def records_per_second(self) -> float:
        """Source records converted per second of wall time."""
        return self.num_converted / self.seconds if self.seconds > 0 else float("nan")

    def __str__(self) -> str:
        lines = [
            f"{self.name}: {self.num_found} records found, {self.num_converted} converted ({self.num_rows} ECGs), "
            f"{self.num_skipped} skipped, in {self.seconds:.1f} s ({self.records_per_second:.1f} records/s)"
        ]
        table: list[tuple[Any, ...]] = [("split", "records", "converted", "skipped", "ECGs")]
        for split, counts in self.records_by_split.items():
            table.append((split, counts["found"], counts["converted"], counts["skipped"], self.splits.get(split, 0)))
        table.append(("total", self.num_found, self.num_converted, self.num_skipped, self.num_rows))
        widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
        for row in table:
            cells = [str(v).ljust(widths[0]) if i == 0 else str(v).rjust(widths[i]) for i, v in enumerate(row)]
            lines.append("  " + "  ".join(cells))
        fractions = {k: v for k, v in self.splits.items() if k not in self.records_by_split}
        if fractions:
            lines.append("  training fractions: " + ", ".join(f"{k} = {v} ECGs" for k, v in fractions.items()))
        if self.skipped:
            shown = self.skipped[:MAX_LISTED_SKIPPED]
            lines.append(f"  skipped records (all of them, with their reasons, in {REPORT_FILE}):")
            width = max(len(s.record) for s in shown)
            split_width = max(len(s.split or UNASSIGNED) for s in shown) + 2
            lines.extend(
                f"    {s.record.ljust(width)}  {('[' + (s.split or UNASSIGNED) + ']').ljust(split_width)}  {s.reason}"
                for s in shown
            )
            if len(self.skipped) > len(shown):
                lines.append(f"    ... and {len(self.skipped) - len(shown)} more; the most common reasons:")
                reasons: dict[str, int] = {}
                for s in self.skipped:
                    reasons[_reason_group(s.reason)] = reasons.get(_reason_group(s.reason), 0) + 1
                for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]:
                    lines.append(f"    {n} x {reason}")
        lines.append(f"  {'written to' if self.num_converted else 'no dataset written to'} {self.output_dir}")
        return "\n".join(lines)


def convert_single_ecg_record(job: ConversionJob, info: ECGDatasetInfo) -> list[dict[str, Any]]:
    """Record converter for one file = one ECG: reads ``job.data["path"]`` and fills ``job.data["row"]``.

    ``job.data["nan_policy"]`` (default ``"repair"``) goes to :func:`to_standard_leads`. With
    ``job.data["source_sampling_rate"]`` set, a record whose header gives another sampling frequency is
    rejected (for datasets recorded at one rate, a different rate means a damaged header).
    """
    from cardiomm.processing.ecg_records import read_ecg_record

    record = read_ecg_record(job.data["path"])
    expected = job.data.get("source_sampling_rate")
    if expected is not None and not math.isclose(float(record.sampling_rate), float(expected)):
        raise ValueError(
            f"{job.data['path']}: sampling frequency {float(record.sampling_rate):g} Hz in its header, but the "
            f"records of this dataset are {float(expected):g} Hz"
        )
    ecg, mask = to_standard_leads(
        record, info.sampling_rate, info.num_samples, info.lead_names, job.data.get("nan_policy", "repair")
    )
    row = dict(job.data["row"])
    row["ecg"], row["lead_mask"] = ecg, mask
    return [row]


# --------------------------------------------------------------------------------------------------- workers
_WORKER_STATE: tuple[RecordConverter, ECGDatasetInfo] | None = None
_WORKER_SLOT: tuple[Any, int] | None = None  # (shared (pid, job number) pairs, index of this worker's job number)


def _init_worker(record_converter: RecordConverter, info: ECGDatasetInfo, slots: Any = None,
                 next_slot: Any = None) -> None:
    global _WORKER_STATE, _WORKER_SLOT
    _WORKER_STATE = (record_converter, info)
    _WORKER_SLOT = None
    if slots is None:
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which then stops its workers
    with next_slot.get_lock():
        slot = next_slot.value
        next_slot.value += 1
    if 2 * slot + 1 < len(slots):
        slots[2 * slot] = os.getpid()
        _WORKER_SLOT = (slots, 2 * slot + 1)


def _convert_job(
    job: ConversionJob, number: int = 0
) -> tuple[ConversionJob, list[dict[str, Any]] | None, str | None]:
    assert _WORKER_STATE is not None
    record_converter, info = _WORKER_STATE
    if _WORKER_SLOT is not None:
        _WORKER_SLOT[0][_WORKER_SLOT[1]] = number  # the record this process is on, read if it dies
    try:
        return job, record_converter(job, info), None
    except Exception as err:  # one bad record must never stop a conversion
        return job, None, f"{type(err).__name__}: {err}"
    finally:
        if _WORKER_SLOT is not None:
            _WORKER_SLOT[0][_WORKER_SLOT[1]] = 0


def _serial_results(jobs: Iterable[ConversionJob]) -> Iterator[tuple[ConversionJob, Any, str | None]]:
    for job in jobs:
        yield _convert_job(job)


def _exit_description(exitcode: int) -> str:
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        if -exitcode == signal.SIGKILL:
            return f"killed by {name}, as the out-of-memory killer does"
        return f"killed by {name}"
    return f"exit code {exitcode}"


class _WorkerPool:
    """``num_proc`` worker processes converting jobs, results in job order, a bounded number in flight.

    Each worker notes in shared memory which job it is converting, so that a worker that dies is reported with
    the record it was on; the pool then raises :class:`ConversionError` instead of waiting for it.
    """

    def __init__(self, record_converter: RecordConverter, info: ECGDatasetInfo, num_proc: int):
        context = multiprocessing.get_context()
        self.slots = context.Array("q", 2 * num_proc, lock=False)
        self.executor = ProcessPoolExecutor(
            num_proc, mp_context=context, initializer=_init_worker,
            initargs=(record_converter, info, self.slots, context.Value("i", 0)),
        )
        self.executor.submit(os.getpid)  # starts the workers now, before this process runs any other thread
        self.processes = getattr(self.executor, "_processes", None)  # pid -> Process, to read exit codes
        self.window = 8 * num_proc

    def results(self, jobs: Iterable[ConversionJob]) -> Iterator[tuple[ConversionJob, Any, str | None]]:
        pending: deque = deque()
        numbered = enumerate(jobs, start=1)
        try:
            while True:
                while len(pending) < self.window and (item := next(numbered, None)) is not None:
                    number, job = item
                    pending.append((number, job, self.executor.submit(_convert_job, job, number)))
                if not pending:
                    return
                result = pending[0][2].result()
                pending.popleft()
                yield result
        except BrokenProcessPool:
            self.executor.shutdown(wait=True)  # the pool has stopped its other workers; their exit codes are final
            raise ConversionError(self._death_message({n: job.record for n, job, _ in pending})) from None

    def _death_message(self, in_flight: dict[int, str]) -> str:
        on_job = {int(self.slots[i]): int(self.slots[i + 1]) for i in range(0, len(self.slots), 2) if self.slots[i]}
        exitcodes = {pid: p.exitcode for pid, p in dict(self.processes or {}).items()}
        dead = [pid for pid, code in exitcodes.items() if code not in (None, 0, -signal.SIGTERM)]
        parts = []
        for pid in dead:
            record = in_flight.get(on_job.get(pid, 0))
            where = f"while converting record {record!r}" if record is not None else "between two records"
            parts.append(f"a conversion worker process (pid {pid}) died ({_exit_description(exitcodes[pid])}) {where}")
        if parts:
            return "; ".join(parts)
        candidates = [in_flight[n] for n in on_job.values() if n in in_flight]
        return "a conversion worker process died abruptly (killed, e.g. by the out-of-memory killer, or crashed)" + (
            f" while converting one of the records {', '.join(map(repr, candidates))}" if candidates else ""
        )

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


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

    def close(self, flush: bool = True) -> None:
        """Write what is buffered (unless ``flush`` is False) and finish the file; closing twice is harmless."""
        if flush:
            self.flush()
        self.buffer = []
        if self._writer is not None:
            self._writer.close()
            self._writer = None


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


# --------------------------------------------------------------------------------------------------- output
def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically: a reader (or the next run) never sees half a report."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def earlier_conversion(out: str | os.PathLike) -> dict[str, Any] | None:
    """The report of the cardiomm conversion whose output is in ``out`` (finished or not), or ``None``.

    A conversion writes its report (``"status": "in progress"``) before any other file, so a folder it was
    writing when killed is recognised too. Folders of earlier cardiomm versions (a report without a status, or
    ``cardiomm_dataset.json`` describing a conversion) count as finished conversions.
    """
    out = Path(out)
    report = _read_json(out / REPORT_FILE) if (out / REPORT_FILE).is_file() else None
    if report is not None and (report.get("written_by") == REPORT_WRITER or "num_converted" in report):
        return {"status": "complete", **report}
    metadata = _read_json(out / METADATA_FILE) if (out / METADATA_FILE).is_file() else None
    if metadata is not None and "conversion" in (metadata.get("extra") or {}):
        return {"status": "complete", "name": metadata.get("name", "")}
    return None


def _rerun_message(out: Path, earlier: dict[str, Any], removed: list[str]) -> str:
    name = earlier.get("name") or "dataset"
    files = ", ".join(removed)
    if earlier["status"] == "complete":
        return f"replacing the finished {name} conversion in {out}: removed {files}"
    if earlier["status"] == "failed":
        why = f"it failed: {earlier.get('error', 'unknown error')}"
    else:
        why = "the process was killed or crashed before it could finish"
    return (
        f"{out} holds a {name} conversion that did not finish (started {earlier.get('started', '?')}; {why}). "
        f"Its Parquet files may be cut off mid-write and cannot be resumed, so the conversion starts again from "
        f"the first record: removed {files}"
    )


def _prepare_output(out: Path, report: dict[str, Any], log: Callable[[str], None]) -> tuple[Path, list[str]]:
    """Mark ``out`` as holding this conversion, then remove what an earlier conversion left; returns ``data/``."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: the output path exists and is not a folder")
    data_dir = out / "data"
    parquet = sorted(data_dir.glob("*.parquet")) if data_dir.is_dir() else []
    metadata = out / METADATA_FILE
    earlier = earlier_conversion(out)
    if earlier is None and (parquet or metadata.is_file()):
        found = f"{len(parquet)} Parquet file(s) under data/" if parquet else METADATA_FILE
        raise ValueError(
            f"{out}: holds {found} not written by `cardiomm data convert` (no {REPORT_FILE} of a conversion); "
            "refusing to delete them. Choose a new or empty output folder, or remove them yourself."
        )
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / REPORT_FILE, report)  # first: from now on the folder is recognisably this conversion's
    removed = []
    for path in parquet + ([metadata] if metadata.is_file() else []):
        path.unlink()
        removed.append(str(path.relative_to(out)))
    if earlier is not None and removed:
        log(_rerun_message(out, earlier, removed))
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir, removed


def _counts_by_split(counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {k: dict(counts[k]) for k in sorted(counts, key=_split_sort_key)}


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

    ``skipped`` lists records a converter already rejected from its metadata (e.g. an empty report); they are
    counted among the records found and appear in the report with the records that fail here. ``fractions`` of
    ``train`` become extra splits, stratified on the labels of ``fraction_tasks`` (default: all tasks).
    ``num_jobs`` sizes the progress bar when ``jobs`` is a generator. With ``progress``, shows a progress bar,
    says on stderr what an earlier conversion in ``out_dir`` left and was removed, and prints the summary.

    Returns the :class:`ConversionSummary`. Raises ``ValueError`` when ``out_dir`` holds Parquet files that no
    conversion wrote or when no record could be converted, and :class:`ConversionError` when a worker process
    died; then no ``cardiomm_dataset.json`` is written and the report's status is ``"failed"``.
    """
    from datasets import DatasetDict
    from tqdm.auto import tqdm

    empty = [task for task, names in info.tasks.items() if not names]
    if empty:
        raise ValueError(f"tasks without label names: {empty}")
    start = time.perf_counter()
    out = Path(out_dir)

    def log(message: str) -> None:
        if progress:
            print(f"cardiomm: {message}", file=sys.stderr, flush=True)

    report: dict[str, Any] = {
        "written_by": REPORT_WRITER,
        "status": "in progress",
        "name": info.name,
        "output_dir": str(out),
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    data_dir, removed = _prepare_output(out, report, log)
    report["removed_before_start"] = removed
    features = ecg_features(info, extra_features)
    row_bytes = len(info.lead_names) * info.num_samples * 4
    skipped = list(skipped)
    counts: dict[str, dict[str, int]] = {}

    def tally(split: str, outcome: str) -> None:
        c = counts.setdefault(split or UNASSIGNED, {"found": 0, "converted": 0, "skipped": 0})
        c["found"] += 1
        c[outcome] += 1

    for s in skipped:
        tally(s.split, "skipped")
    writers: dict[str, _SplitWriter] = {}
    num_converted = 0
    if num_jobs is None and hasattr(jobs, "__len__"):
        num_jobs = len(jobs)  # type: ignore[arg-type]
    pool: _WorkerPool | None = None
    results: Iterator[tuple[ConversionJob, Any, str | None]] | None = None
    bar = None

    def summary() -> ConversionSummary:
        rows = {name: w.num_rows for name, w in writers.items() if w.num_rows > 0}
        return ConversionSummary(
            name=info.name,
            output_dir=str(out),
            num_converted=num_converted,
            num_skipped=len(skipped),
            num_rows=sum(rows.values()),
            splits={k: rows[k] for k in sorted(rows, key=_split_sort_key)},
            skipped=skipped,
            seconds=time.perf_counter() - start,
            num_found=num_converted + len(skipped),
            records_by_split=_counts_by_split(counts),
        )

    def fail(error: str) -> None:
        """Leave no partial dataset behind, and say in the report why the conversion stopped."""
        for w in writers.values():
            w.close(flush=False)
        for path in data_dir.glob("*.parquet"):
            path.unlink()
        report.update(_report_counts(summary()), status="failed", error=error)
        _write_json(out / REPORT_FILE, report)

    try:
        # workers are started before any other thread (progress bar, Arrow writers) exists in this process
        if num_proc > 1:
            pool = _WorkerPool(record_converter, info, num_proc)
            results = pool.results(jobs)
        else:
            _init_worker(record_converter, info)
            results = _serial_results(jobs)
        bar = tqdm(  # counts every record found: those rejected from their metadata are done from the start
            total=None if num_jobs is None else num_jobs + len(skipped), initial=len(skipped),
            desc=f"converting {info.name}", unit="record", disable=not progress,
        )
        if skipped:
            bar.set_postfix(skipped=len(skipped), refresh=False)
        for job, rows, reason in results:
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
                skipped.append(SkippedRecord(job.record, reason, job.split))
                tally(job.split, "skipped")
                bar.set_postfix(skipped=len(skipped), refresh=False)
                continue
            if job.split not in writers:
                writers[job.split] = _SplitWriter(data_dir / f"{job.split}.parquet", features, row_bytes)
            writers[job.split].add(rows)
            tally(job.split, "converted")
            num_converted += 1
        for w in writers.values():
            w.close()
    except ConversionError as err:
        if bar is not None:
            bar.close()
        hint = " (with a smaller --num-proc if memory ran out)" if pool is not None else ""
        message = (
            f"{err}. The {info.name} conversion stopped and {out} holds no dataset (partial files removed; "
            f"{REPORT_FILE} has the details); run the command again to start over{hint}"
        )
        fail(message)
        raise ConversionError(message) from None
    except BaseException as err:  # interrupted, or a bug: the report must not claim the conversion is running
        if bar is not None:
            bar.close()
        fail(f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)
        raise
    finally:
        if results is not None:
            results.close()
        if pool is not None:
            pool.close()
        if bar is not None:
            bar.close()

    result = summary()
    if result.num_found == 0:
        fail("no records found")
        raise ValueError(f"{info.name}: no records found to convert")
    if num_converted == 0:
        reasons: dict[str, int] = {}
        for s in skipped:
            reasons[_reason_group(s.reason)] = reasons.get(_reason_group(s.reason), 0) + 1
        common = "; ".join(f"{n} x {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
        message = (
            f"{info.name}: none of the {result.num_found} records found could be converted ({common}); every "
            f"record and its reason is listed in {out / REPORT_FILE}"
        )
        fail(message)
        if progress:
            print(result)
        raise ValueError(message)
    tasks = list(info.tasks) if fraction_tasks is None else list(fraction_tasks)
    fraction_info = write_training_fractions(data_dir, fractions, [label_column(t) for t in tasks], seed=seed)
    result.splits.update({name: meta["num_rows"] for name, meta in fraction_info.items()})
    result.seconds = time.perf_counter() - start
    info.extra["splits"] = dict(result.splits)
    info.extra["train_fractions"] = fraction_info
    info.extra["conversion"] = {
        "num_found": result.num_found,
        "num_converted": result.num_converted,
        "num_skipped": result.num_skipped,
        "num_rows": result.num_rows,
        "report": REPORT_FILE,
    }
    save_ecg_dataset(DatasetDict(), out, info)  # Parquet splits are already written; this writes the metadata
    report.update(_report_counts(result), status="complete", finished=datetime.now().isoformat(timespec="seconds"))
    _write_json(out / REPORT_FILE, report)
    if progress:
        print(result)
    return result


def _report_counts(summary: ConversionSummary) -> dict[str, Any]:
    return {
        "num_found": summary.num_found,
        "num_converted": summary.num_converted,
        "num_skipped": summary.num_skipped,
        "num_rows": summary.num_rows,
        "records_by_split": summary.records_by_split,
        "splits": summary.splits,
        "seconds": round(summary.seconds, 3),
        "records_per_second": summary.records_per_second,
        "skipped": [asdict(s) for s in summary.skipped],
    }


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
    dataset's converter (e.g. ``fractions``, ``seed``, ``max_records``, ``progress``). See
    :func:`convert_records` for what is written, reported and raised.
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
