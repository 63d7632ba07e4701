"""Embed ECG records with the ECG encoder of any cardiomm checkpoint and write them to a Parquet file.

The input is a cardiomm dataset folder (every split but the training fractions train_<p>pct, which repeat rows
of train, or the splits named with --split; record id: the ecg_id column) or a folder of raw records, searched
recursively: WFDB (.hea + .dat) and PhysioNet/CinC challenge (.hea + .mat) records (record id: the record's path
relative to the folder, without extension). Each record is read, preprocessed by the checkpoint's feature
extractor (resampling, lead order, normalisation, the center crop or, with --crop windows, the median over the
test-time windows) and embedded batch by batch: the input never has to fit in memory.

Output: FILE, a Parquet file with the columns record_id, split (dataset input only) and embedding (float32; L2
normalised unless --no-normalize), and FILE's report of the records that could not be used,
<FILE without .parquet>.unreadable.csv (record_id, path, error). While it runs, the work is saved in numbered
parts under FILE.parts/; a killed run continues where it stopped when the same command is run again, and the
final file equals that of an uninterrupted run. At the end the throughput is printed: records per second and the
time spent reading and preprocessing the records against the time spent in the model.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CROPS = ("center", "windows")
PROGRESS_FILE = "progress.json"
DATASET_SPLIT_ORDER = ("train", "validation", "test")


# --------------------------------------------------------------------------------------------------- records


@dataclass
class ECGItem:
    """One record of the input: its signal (leads, time) in mV, or the reason it could not be read."""

    record_id: str
    path: str
    split: str = ""
    signal: np.ndarray | None = None
    sampling_rate: float = 0.0
    lead_names: list[str] = field(default_factory=list)
    recorded: np.ndarray | None = None  # the dataset's lead_mask column (leads recorded), in lead_names order
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class RecordSource:
    """The records of a dataset folder (``kind="dataset"``) or of a folder of raw records (``kind="records"``),
    in a fixed order; :meth:`items` reads them lazily from any position."""

    root: Path
    kind: str
    count: int
    splits: list[str] = field(default_factory=list)
    record_paths: list[Path] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)
    info: Any = None

    def items(self, start: int = 0) -> Iterator[ECGItem]:
        """The records from position ``start`` on, each read when it is reached."""
        if self.kind == "records":
            yield from self._raw_items(start)
        else:
            yield from self._dataset_items(start)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the input: its folder and kind, and its files (names, sizes, modification times)."""
        digest = hashlib.sha256()
        files = self.record_paths if self.kind == "records" else [
            p for split in self.splits for p in _split_files(self.root, split)]
        for path in files:
            stat = path.stat()
            digest.update(f"{path.relative_to(self.root).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return {"input": str(self.root.resolve()), "kind": self.kind, "count": self.count, "splits": self.splits,
                "files": digest.hexdigest()}

    def _raw_items(self, start: int) -> Iterator[ECGItem]:
        from ..processing.ecg_records import read_ecg_record

        for path in self.record_paths[start:]:
            record_id = path.relative_to(self.root).with_suffix("").as_posix()
            try:
                record = read_ecg_record(path)
            except (ValueError, OSError) as err:
                yield ECGItem(record_id, str(path), error=str(err))
                continue
            yield ECGItem(record_id, str(path), signal=record.signal, sampling_rate=record.sampling_rate,
                          lead_names=list(record.lead_names))

    def _dataset_items(self, start: int) -> Iterator[ECGItem]:
        import pyarrow.parquet as pq

        info = self.info
        shape = (len(info.lead_names), info.num_samples)
        columns = ["ecg_id", "ecg", "lead_mask", *self.extra_columns]
        position = 0
        for split in self.splits:
            for path in _split_files(self.root, split):
                parquet = pq.ParquetFile(path)
                rows = parquet.metadata.num_rows
                if position + rows <= start:
                    position += rows
                    continue
                groups, skip = [], start - position
                for g in range(parquet.metadata.num_row_groups):  # whole row groups before start are not read
                    group_rows = parquet.metadata.row_group(g).num_rows
                    if not groups and skip >= group_rows:
                        skip -= group_rows
                        position += group_rows
                        continue
                    groups.append(g)
                missing = [c for c in columns if c not in parquet.schema_arrow.names]
                if missing:
                    raise ValueError(f"{path}: no column {', '.join(missing)}")
                for batch in parquet.iter_batches(batch_size=64, row_groups=groups, columns=columns):
                    ecgs = _ecg_arrays(batch.column("ecg"), shape)
                    ids = batch.column("ecg_id").to_pylist()
                    masks = batch.column("lead_mask").to_pylist()
                    extra = {c: batch.column(c).to_pylist() for c in self.extra_columns}
                    for i, record_id in enumerate(ids):
                        if position >= start:
                            yield _dataset_item(str(record_id), str(path), split, ecgs[i], masks[i], info,
                                                {c: values[i] for c, values in extra.items()})
                        position += 1


def _dataset_item(record_id: str, path: str, split: str, ecg: np.ndarray | None, mask: Any, info: Any,
                  extra: dict[str, Any]) -> ECGItem:
    if ecg is None:
        return ECGItem(record_id, path, split, extra=extra, error=f"{path}: row {record_id!r} has no ECG")
    recorded = None if mask is None else np.asarray(mask, dtype=bool)
    return ECGItem(record_id, path, split, signal=ecg, sampling_rate=float(info.sampling_rate),
                   lead_names=list(info.lead_names), recorded=recorded, extra=extra)


def _ecg_arrays(column: Any, shape: tuple[int, int]) -> list[np.ndarray | None]:
    """The ``ecg`` cells of a Parquet batch as float32 (leads, time) arrays (``None`` for a missing cell)."""
    import pyarrow as pa

    if isinstance(column.type, pa.ExtensionType):
        column = column.storage
    n = len(column)
    if column.null_count == 0:
        values = column.flatten().flatten().to_numpy(zero_copy_only=False)
        if values.size == n * shape[0] * shape[1]:
            return list(values.astype(np.float32, copy=False).reshape(n, *shape))
    return [None if cell is None else np.asarray(cell, dtype=np.float32) for cell in column.to_pylist()]


def _split_files(root: Path, split: str) -> list[Path]:
    data = root / "data"
    return sorted(p for p in data.glob("*.parquet") if p.stem.split("-")[0] == split)


def find_records(folder: str | os.PathLike) -> list[Path]:
    """The records under ``folder`` (recursive), sorted by path: every ``.hea`` header (WFDB and challenge records),
    and every ``.mat`` file without a header (reported as unreadable when embedded)."""
    root = Path(folder)
    headers = sorted(p for p in root.rglob("*.hea") if p.is_file())
    have_header = {p.with_suffix("") for p in headers}
    orphans = [p for p in root.rglob("*.mat") if p.is_file() and p.with_suffix("") not in have_header]
    return sorted(headers + orphans, key=lambda p: p.relative_to(root).as_posix())


def open_records(
    path: str | os.PathLike, splits: Sequence[str] | None = None, extra_columns: Sequence[str] = ()
) -> RecordSource:
    """The records to embed at ``path``: a cardiomm dataset folder (the rows of ``splits``, default all splits in
    the order train, validation, test, others, but for the training fractions ``train_<p>pct``, which repeat rows
    of ``train``) or a folder of raw WFDB / challenge records.

    ``extra_columns`` (dataset folders only) are read along with each row into :attr:`ECGItem.extra`.
    ``ValueError`` naming ``path`` when it is neither, or names a split or column the dataset lacks.
    """
    import pyarrow.parquet as pq

    from ..data.ecg_dataset import METADATA_FILE, read_dataset_info

    root = Path(path)
    if not root.exists():
        raise ValueError(f"{root}: no such folder")
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder (expected a cardiomm dataset folder or a folder of ECG records)")
    if (root / METADATA_FILE).is_file():
        info = read_dataset_info(root)
        found = sorted({p.stem.split("-")[0] for p in (root / "data").glob("*.parquet")},
                       key=lambda s: (DATASET_SPLIT_ORDER.index(s) if s in DATASET_SPLIT_ORDER else 99, s))
        if not found:
            raise ValueError(f"{root}: no Parquet splits under data/")
        subsets = set(info.extra.get("train_fractions") or ()) | {s for s in found if re.fullmatch(r"train_.+pct", s)}
        chosen = list(dict.fromkeys(splits) if splits else [s for s in found if s not in subsets])
        unknown = [s for s in chosen if s not in found]
        if unknown:
            raise ValueError(f"{root}: no split {', '.join(map(repr, unknown))}; splits: {', '.join(found)}")
        count = 0
        for split in chosen:
            for file in _split_files(root, split):
                try:
                    parquet = pq.ParquetFile(file)
                except Exception as err:  # pyarrow raises several types for a damaged file
                    raise ValueError(f"{file}: unreadable Parquet file ({err})") from err
                missing = [c for c in ("ecg_id", "ecg", "lead_mask", *extra_columns)
                           if c not in parquet.schema_arrow.names]
                if missing:
                    raise ValueError(f"{file}: no column {', '.join(missing)}")
                count += parquet.metadata.num_rows
        return RecordSource(root, "dataset", count, splits=chosen, extra_columns=list(extra_columns), info=info)
    if splits:
        raise ValueError(f"{root}: --split applies to a cardiomm dataset folder; this is a folder of records")
    if extra_columns:
        raise ValueError(f"{root}: not a cardiomm dataset folder (no {METADATA_FILE}), so it has no column "
                         f"{', '.join(extra_columns)}")
    records = find_records(root)
    if not records:
        raise ValueError(f"{root}: neither a cardiomm dataset folder (no {METADATA_FILE}) nor a folder of ECG "
                         "records (no .hea or .mat file found, searched recursively)")
    return RecordSource(root, "records", len(records), record_paths=records)


# ------------------------------------------------------------------------------------------------- embedding


@dataclass
class EmbeddedBatch:
    """The embeddings of the usable records of a batch, and the records that could not be used."""

    items: list[ECGItem]
    embeddings: np.ndarray
    failed: list[ECGItem]


class RecordEmbedder:
    """Preprocesses records with a feature extractor and embeds them with an ECG encoder, timing both parts.

    ``crop="center"`` embeds the center crop of each record; ``crop="windows"`` the median over the feature
    extractor's test-time windows (as :func:`~cardiomm.evaluation.embeddings.embed_ecgs`). ``normalize`` L2
    normalises each embedding (each window's, then the median).
    """

    def __init__(self, encoder: Any, feature_extractor: Any, crop: str = "center", normalize: bool = True) -> None:
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        self.encoder = encoder.eval()
        self.feature_extractor = feature_extractor
        self.crop = crop
        self.normalize = normalize
        self.seconds_preprocessing = 0.0
        self.seconds_model = 0.0
        self.flat_lead_warnings = 0

    def preprocess(self, items: list[ECGItem]) -> tuple[list[ECGItem], dict[str, Any] | None, list[ECGItem]]:
        """``(usable items, model inputs, failed items)``: a record the feature extractor rejects is failed with
        its message; the others are preprocessed exactly as in a batch without it."""
        started = time.perf_counter()
        ok, failed = [], []
        inputs = None
        try:
            if items:
                inputs = self._features(items)
                ok = list(items)
        except ValueError:  # find the records at fault; the others are preprocessed one by one
            parts = []
            for item in items:
                try:
                    parts.append(self._features([item]))
                    ok.append(item)
                except ValueError as err:
                    item.error = str(err).replace("record 0 of the batch", item.path)
                    failed.append(item)
            if parts:
                inputs = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        self.seconds_preprocessing += time.perf_counter() - started
        return ok, inputs, failed

    def _features(self, items: list[ECGItem]) -> dict[str, np.ndarray]:
        from ..processing.ecg_records import canonical_lead_name
        from ..processing.feature_extraction_ecg import LeadOffWarning

        fe = self.feature_extractor
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LeadOffWarning)
            out = fe(ecg=[item.signal for item in items], sampling_rate=[item.sampling_rate for item in items],
                     lead_names=[item.lead_names for item in items], crop=self.crop, return_tensors="np")
        self.flat_lead_warnings += sum(issubclass(w.category, LeadOffWarning) for w in caught)
        for w in caught:
            if not issubclass(w.category, LeadOffWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        inputs = {key: np.asarray(out[key]) for key in ("input_values", "lead_mask", "time_mask")}
        for b, item in enumerate(items):  # a dataset's lead_mask: leads it did not record are absent
            if item.recorded is not None:
                position = {canonical_lead_name(n): i for i, n in enumerate(item.lead_names)}
                recorded = np.array([position.get(n) is not None and bool(item.recorded[position[n]])
                                     for n in fe.lead_names])
                inputs["lead_mask"][b] &= recorded
        return inputs

    def embed(self, items: list[ECGItem]) -> EmbeddedBatch:
        """Preprocess and embed ``items`` (records already read; items with an error are passed through as
        failed)."""
        import torch

        from .aggregation import aggregate_windows

        ok, inputs, rejected = self.preprocess([item for item in items if item.error is None])
        failed_ids = {id(item) for item in rejected}
        failed = [item for item in items if item.error is not None or id(item) in failed_ids]  # input order
        if not ok:
            return EmbeddedBatch([], np.zeros((0, 0), np.float32), failed)
        started = time.perf_counter()
        device = next(self.encoder.parameters()).device
        x = torch.from_numpy(inputs["input_values"]).to(device)
        lead_mask = torch.from_numpy(inputs["lead_mask"]).to(device)
        time_mask = torch.from_numpy(inputs["time_mask"]).to(device)
        windows = x.ndim == 4
        if windows:  # (B, W, L, T): every window is embedded, the median over windows is the record's embedding
            b, w = x.shape[:2]
            x, lead_mask, time_mask = x.flatten(0, 1), lead_mask.flatten(0, 1), time_mask.flatten(0, 1)
        with torch.inference_mode():
            emb = self.encoder(input_values=x, lead_mask=lead_mask, time_mask=time_mask).pooler_output.float()
            if self.normalize:
                emb = torch.nn.functional.normalize(emb, dim=-1)
        out = emb.cpu().numpy()
        if windows:
            out = aggregate_windows(out.reshape(b, w, -1), method="median")
        out = out.astype(np.float32)
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        self.seconds_model += time.perf_counter() - started
        return EmbeddedBatch(ok, out, failed)


def iter_embeddings(
    source: RecordSource, embedder: RecordEmbedder, batch_size: int = 64, start: int = 0, stop: int | None = None,
    timer: dict[str, float] | None = None,
) -> Iterator[EmbeddedBatch]:
    """Embed the records ``start:stop`` of ``source`` in batches of ``batch_size`` records (read lazily).

    The seconds spent reading records are added to ``timer["reading"]`` when given.
    """
    items = source.items(start)
    remaining = (source.count if stop is None else stop) - start
    while remaining > 0:
        started = time.perf_counter()
        batch = []
        for item in items:
            batch.append(item)
            if len(batch) == min(batch_size, remaining):
                break
        if timer is not None:
            timer["reading"] = timer.get("reading", 0.0) + time.perf_counter() - started
        if not batch:
            return
        remaining -= len(batch)
        yield embedder.embed(batch)


def embed_source(
    source: RecordSource, embedder: RecordEmbedder, batch_size: int = 64, progress: bool = True, desc: str = "",
) -> tuple[list[ECGItem], np.ndarray, list[ECGItem]]:
    """Every record of ``source`` embedded in memory: ``(embedded items, (N, D) embeddings, failed items)``."""
    from tqdm.auto import tqdm

    done, chunks, failed = [], [], []
    with tqdm(total=source.count, desc=desc or f"embedding {source.root.name}", unit="record",
              disable=not progress, leave=False) as bar:
        for batch in iter_embeddings(source, embedder, batch_size):
            done += batch.items
            failed += batch.failed
            if len(batch.items):
                chunks.append(batch.embeddings)
            bar.update(len(batch.items) + len(batch.failed))
    dim = chunks[0].shape[1] if chunks else 0
    return done, (np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)), failed


# ------------------------------------------------------------------------------------------- output, resume


@dataclass
class EmbeddingRun:
    """What :func:`embed_records` did."""

    out: Path
    report: Path
    num_records: int
    num_embedded: int
    num_unreadable: int
    resumed_at: int
    records_this_run: int
    seconds: float
    seconds_reading: float
    seconds_preprocessing: float
    seconds_model: float
    flat_lead_warnings: int = 0

    @property
    def records_per_second(self) -> float:
        """Records read and embedded (or reported unreadable) per second of this run."""
        return self.records_this_run / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        """The lines printed at the end of ``cardiomm embed``."""
        spent = self.seconds_reading + self.seconds_preprocessing + self.seconds_model
        share = (lambda s: f"{100 * s / spent:.0f} %") if spent > 0 else (lambda s: "-")
        resumed = f" (resumed at record {self.resumed_at})" if self.resumed_at else ""
        lines = [
            f"embedded {self.num_embedded} of {self.num_records} records; {self.num_unreadable} unreadable "
            f"(listed in {self.report})",
            f"this run{resumed}: {self.records_this_run} records in {self.seconds:.1f} s = "
            f"{self.records_per_second:.1f} records/s; reading files {self.seconds_reading:.2f} s "
            f"({share(self.seconds_reading)}), preprocessing {self.seconds_preprocessing:.2f} s "
            f"({share(self.seconds_preprocessing)}), model {self.seconds_model:.2f} s ({share(self.seconds_model)})",
            f"wrote {self.out}",
        ]
        if self.flat_lead_warnings:
            lines.insert(1, f"{self.flat_lead_warnings} records had flat leads (lead off?), marked absent")
        return "\n".join(lines)


def report_path(out: str | os.PathLike) -> Path:
    """The report of unreadable records written next to ``out``: ``<out without .parquet>.unreadable.csv``."""
    out = Path(out)
    stem = out.name[: -len(".parquet")] if out.name.endswith(".parquet") else out.name
    return out.with_name(f"{stem}.unreadable.csv")


def parts_dir(out: str | os.PathLike) -> Path:
    """The folder of the numbered part files that make a run resumable: ``<out>.parts``."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def _model_fingerprint(folder: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return {"model": str(folder.resolve()), "model_files": digest.hexdigest()}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _save_progress(folder: Path, progress: dict[str, Any]) -> None:
    _write_atomic(folder / PROGRESS_FILE, json.dumps(progress, indent=1) + "\n")


def _part_table(batches: list[EmbeddedBatch], with_split: bool, dim: int | None) -> Any:
    import pyarrow as pa

    items = [item for b in batches for item in b.items]
    chunks = [b.embeddings for b in batches if len(b.items)]
    if chunks:
        dim = chunks[0].shape[1]
    emb = np.concatenate(chunks) if chunks else np.zeros((0, dim or 0), np.float32)
    columns = {"record_id": pa.array([i.record_id for i in items], pa.string())}
    if with_split:
        columns["split"] = pa.array([i.split for i in items], pa.string())
    if dim:
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), dim)
    else:  # no record of the part (nor of an earlier one) could be embedded: the size is not known yet
        columns["embedding"] = pa.array([], pa.list_(pa.float32()))
    return pa.table(columns)


def _write_part(folder: Path, index: int, table: Any, failed: list[ECGItem]) -> None:
    import pyarrow.parquet as pq

    name = folder / f"part-{index:06d}.parquet"
    tmp = name.with_name(name.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, name)
    rows = [{"record_id": i.record_id, "path": i.path, "error": i.error} for i in failed]
    _write_atomic(folder / f"part-{index:06d}.unreadable.json", json.dumps(rows) + "\n")


def _assemble(folder: Path, parts: int, out: Path, report: Path, metadata: dict[str, Any]) -> tuple[int, int]:
    """Join the part files into ``out`` (one row group per non-empty part) and the report; returns the counts."""
    import pyarrow.parquet as pq

    tables = [pq.read_table(folder / f"part-{k:06d}.parquet") for k in range(parts)]
    filled = [t for t in tables if t.num_rows]
    if len({t.schema.field("embedding").type for t in filled}) > 1:
        raise ValueError(f"{folder}: the parts hold embeddings of different sizes; pass --overwrite to start afresh")
    schema = (filled or tables)[0].schema.with_metadata({"cardiomm": json.dumps(metadata)})
    failed: list[dict[str, str]] = []
    for k in range(parts):
        failed += json.loads((folder / f"part-{k:06d}.unreadable.json").read_text(encoding="utf-8"))
    tmp_out = out.with_name(out.name + ".tmp")
    with pq.ParquetWriter(tmp_out, schema) as writer:
        for table in filled or tables[:1]:  # one row group per part
            writer.write_table(table.replace_schema_metadata(schema.metadata))
    tmp_report = report.with_name(report.name + ".tmp")
    with open(tmp_report, "w", newline="", encoding="utf-8") as handle:
        writer_csv = csv.DictWriter(handle, fieldnames=["record_id", "path", "error"])
        writer_csv.writeheader()
        writer_csv.writerows(failed)
    os.replace(tmp_report, report)
    os.replace(tmp_out, out)
    return sum(t.num_rows for t in tables), len(failed)


def embed_records(
    model: str | os.PathLike,
    input: str | os.PathLike,
    out: str | os.PathLike,
    crop: str = "center",
    batch_size: int = 64,
    normalize: bool = True,
    splits: Sequence[str] | None = None,
    records_per_part: int = 1024,
    overwrite: bool = False,
    device: str = "cpu",
    trust_remote_code: bool = False,
    progress: bool = True,
) -> EmbeddingRun:
    """Embed every record of ``input`` (a dataset folder or a folder of raw records, see :func:`open_records`)
    with the ECG encoder of the checkpoint ``model`` and write ``out`` (Parquet: ``record_id``, ``split`` for a
    dataset, ``embedding``) and the report of unreadable records (:func:`report_path`).

    The records are embedded ``batch_size`` at a time; every ``records_per_part`` records a numbered part is
    saved under :func:`parts_dir`, with a progress file. Called again with the same arguments after being killed,
    it continues after the last saved part; the parts are then joined into ``out`` (with ``pyarrow``'s
    ``ParquetWriter``) and removed, so the file equals that of an uninterrupted run. ``ValueError`` naming the
    path for a bad model, input or output, an ``out`` that exists (unless ``overwrite``), or saved parts of a
    run with other arguments (unless ``overwrite``, which starts afresh).
    """
    from tqdm.auto import tqdm

    from .checkpoint import load_ecg_encoder

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
    if not isinstance(records_per_part, int) or records_per_part < 1:
        raise ValueError(f"records per part must be a positive integer, got {records_per_part!r}")
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{out}: is a folder; give the Parquet file to write")
    if not out.parent.is_dir():
        raise ValueError(f"{out.parent}: no such folder for the output file {out.name}")
    model_dir = Path(model)
    source = open_records(input, splits)
    folder, report = parts_dir(out), report_path(out)
    encoder, feature_extractor = load_ecg_encoder(model_dir, trust_remote_code=trust_remote_code)
    encoder.to(device)
    settings = {**_model_fingerprint(model_dir), **source.fingerprint(), "crop": crop, "normalize": normalize,
                "batch_size": batch_size, "records_per_part": records_per_part}
    parts_total = -(-source.count // records_per_part)
    done = 0
    if overwrite:
        shutil.rmtree(folder, ignore_errors=True)
    elif (folder / PROGRESS_FILE).is_file():
        try:
            saved = json.loads((folder / PROGRESS_FILE).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{folder / PROGRESS_FILE}: damaged ({err}); pass --overwrite to start afresh") from err
        if saved.get("settings") != settings:
            changed = sorted(k for k in settings if saved.get("settings", {}).get(k) != settings[k])
            raise ValueError(
                f"{folder}: holds the saved parts of a run with other {', '.join(changed)}; rerun the same command "
                "to continue it, or pass --overwrite to start afresh"
            )
        done = int(saved["parts_done"])
    elif out.exists():
        raise ValueError(f"{out}: already exists; pass --overwrite to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("part-*"):  # parts after the last recorded one are rewritten
        if not stale.name[5:11].isdigit() or int(stale.name[5:11]) >= done:
            stale.unlink()
    _save_progress(folder, {"settings": settings, "parts_done": done, "parts_total": parts_total})

    embedder = RecordEmbedder(encoder, feature_extractor, crop=crop, normalize=normalize)
    timer: dict[str, float] = {}
    resumed_at = min(done * records_per_part, source.count)
    started = time.perf_counter()
    dim = None
    with tqdm(total=source.count, initial=resumed_at, desc="embedding records", unit="record",
              disable=not progress) as bar:
        for part in range(done, parts_total):
            start = part * records_per_part
            stop = min(start + records_per_part, source.count)
            batches = []
            for batch in iter_embeddings(source, embedder, batch_size, start, stop, timer):
                batches.append(batch)
                bar.update(len(batch.items) + len(batch.failed))
            table = _part_table(batches, source.kind == "dataset", dim)
            dim = getattr(table.schema.field("embedding").type, "list_size", None) or dim
            _write_part(folder, part, table, [item for b in batches for item in b.failed])
            _save_progress(folder, {"settings": settings, "parts_done": part + 1, "parts_total": parts_total})
    metadata = {"model": str(model_dir), "input": str(source.root), "crop": crop, "normalize": normalize,
                "records": source.count}
    num_embedded, num_unreadable = _assemble(folder, parts_total, out, report, metadata)
    shutil.rmtree(folder, ignore_errors=True)
    return EmbeddingRun(
        out=out, report=report, num_records=source.count, num_embedded=num_embedded, num_unreadable=num_unreadable,
        resumed_at=resumed_at, records_this_run=source.count - resumed_at, seconds=time.perf_counter() - started,
        seconds_reading=timer.get("reading", 0.0), seconds_preprocessing=embedder.seconds_preprocessing,
        seconds_model=embedder.seconds_model, flat_lead_warnings=embedder.flat_lead_warnings,
    )


# ------------------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cardiomm embed``."""
    parser.add_argument("--model", required=True, metavar="CKPT",
                        help="checkpoint folder of any cardiomm model with an ECG encoder")
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="cardiomm dataset folder, or folder of WFDB / challenge .mat records (recursive)")
    parser.add_argument("--out", required=True, metavar="FILE", help="Parquet file to write")
    parser.add_argument("--crop", choices=CROPS, default="center",
                        help="center crop (default) or the median over the feature extractor's test-time windows")
    parser.add_argument("--batch-size", type=int, default=64, help="records per forward pass (default 64)")
    parser.add_argument("--split", action="append", default=None, metavar="NAME",
                        help="dataset input: embed this split (repeatable; default: every split but the training "
                             "fractions train_<p>pct)")
    parser.add_argument("--no-normalize", action="store_true", help="keep the raw (not L2-normalised) embeddings")
    parser.add_argument("--records-per-part", type=int, default=1024,
                        help="records per saved part, i.e. how much a killed run redoes (default 1024)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace FILE, and start afresh instead of continuing the saved parts of a killed run")
    parser.add_argument("--device", default="cpu", help="torch device of the model (default cpu)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a checkpoint whose model type needs the Python files shipped with it")


def run(args: argparse.Namespace) -> int:
    """``cardiomm embed``."""
    result = embed_records(
        args.model, args.input, args.out, crop=args.crop, batch_size=args.batch_size,
        normalize=not args.no_normalize, splits=args.split, records_per_part=args.records_per_part,
        overwrite=args.overwrite, device=args.device, trust_remote_code=args.trust_remote_code,
    )
    print(result.summary())
    sys.stdout.flush()
    return 0
