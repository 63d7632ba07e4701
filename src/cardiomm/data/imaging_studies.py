"""Imaging studies next to an ECG dataset: a manifest of echo, angiogram and chest X-ray samples and their files.

Layout (``cardiomm data synth --imaging`` writes it; real data can be laid out the same way)::

    <dataset>/                      the ECG dataset folder (Parquet splits + cardiomm_dataset.json)
    <dataset>/imaging/studies.parquet
    <dataset>/imaging/echo/*.avi    videos (any container PyAV reads; the synthetic cohort writes FFV1 AVI)
    <dataset>/imaging/angiogram/*.dcm   multi-frame DICOM
    <dataset>/imaging/chest_xray/*.png  images (PNG / JPEG / DICOM)

``studies.parquet`` has one row per *sample* (one video or image); a *study* (one echo, one catheterisation, one
radiograph examination) may hold several samples (clips, views, runs) that share its report and labels.

========================  =========================  =====================================================
column                    type                       meaning
========================  =========================  =====================================================
``sample_id``             string, unique             the sample
``study_id``              string                     the study it belongs to
``patient_id``            string                     the patient (the ``patient_id`` of the ECG dataset)
``split``                 string                     the patient's split in the ECG dataset (train / ...)
``modality``              string                     one of :data:`IMAGING_MODALITIES`
``time``                  timestamp                  when the study was done
``path``                  string                     the file, relative to ``imaging/`` (or absolute)
``report``                string                     the study's report (the same for all its samples)
``lvef``                  float, %                   left-ventricular ejection fraction (echo)
``pacemaker``             float 0/1                  a pacemaker / ICD is present
``lad_occlusion``         float 0/1                  LAD / RCA / LCx occluded (angiogram; the synthetic
``rca_occlusion``                                    cohort counts a total occlusion, >= 99 %)
``lcx_occlusion``
``consolidation``         float 0/1                  chest X-ray findings
``edema``
``cardiomegaly``
========================  =========================  =====================================================

The label columns (:data:`IMAGING_LABELS`) hold NaN where a label does not apply to a modality or is unknown; a
manifest may leave any of them out (they are added as NaN). Further columns (``view``, ``ecg_id``, ``age``,
``sex``, ...) are kept as they are.

:func:`write_imaging_studies` validates a table and writes it as the manifest; :func:`load_imaging_studies` reads
it back with absolute paths. :func:`write_echo_video`, :func:`write_angiogram_dicom` and
:func:`write_chest_xray_png` write sample files, :func:`read_imaging_file` reads any of them as a uint8 array.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

IMAGING_DIR = "imaging"
"""Folder of the imaging studies inside a dataset folder."""
MANIFEST_FILE = "studies.parquet"
"""The manifest file inside :data:`IMAGING_DIR`."""
IMAGING_MODALITIES: tuple[str, ...] = ("echo", "angiogram", "chest_xray")
IMAGING_LABELS: tuple[str, ...] = (
    "lvef", "pacemaker", "lad_occlusion", "rca_occlusion", "lcx_occlusion", "consolidation", "edema", "cardiomegaly"
)
"""Label columns of the manifest (NaN where not applicable); all but ``lvef`` are 0/1."""
REQUIRED_COLUMNS: tuple[str, ...] = (
    "sample_id", "study_id", "patient_id", "split", "modality", "time", "path", "report"
)
_SHOWN_MISSING = 5


def imaging_folder(dataset_dir: str | os.PathLike) -> Path:
    """The folder holding the manifest: ``dataset_dir/imaging``, or ``dataset_dir`` itself when it holds
    :data:`MANIFEST_FILE` directly."""
    folder = Path(dataset_dir)
    return folder if (folder / MANIFEST_FILE).is_file() else folder / IMAGING_DIR


def _validate(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check the columns and values of a manifest table; returns a copy with the label columns present and typed."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{source}: missing columns {missing}; a manifest needs {list(REQUIRED_COLUMNS)}")
    out = frame.copy()
    for col in ("sample_id", "study_id", "patient_id", "split", "modality", "path"):
        empty = out[col].isna() | (out[col].astype(str).str.strip() == "")
        if empty.any():
            raise ValueError(f"{source}: column {col!r} is empty in {int(empty.sum())} rows "
                             f"(first: row {int(np.flatnonzero(empty.to_numpy())[0])})")
        out[col] = out[col].astype(str)
    out["report"] = out["report"].fillna("").astype(str)
    unknown = sorted(set(out["modality"]) - set(IMAGING_MODALITIES))
    if unknown:
        raise ValueError(f"{source}: unknown modality {unknown}; known: {list(IMAGING_MODALITIES)}")
    duplicated = out["sample_id"][out["sample_id"].duplicated()]
    if len(duplicated):
        raise ValueError(f"{source}: sample_id is not unique (e.g. {duplicated.iloc[0]!r})")
    try:
        out["time"] = pd.to_datetime(out["time"])
    except (ValueError, TypeError) as err:
        raise ValueError(f"{source}: column 'time' is not a timestamp ({err})") from None
    for col in IMAGING_LABELS:
        if col not in out.columns:
            out[col] = np.nan
        values = pd.to_numeric(out[col], errors="coerce")
        bad = values.isna() & out[col].notna()
        if bad.any():
            raise ValueError(f"{source}: column {col!r} holds non-numeric values (e.g. {out[col][bad].iloc[0]!r})")
        if col != "lvef" and not values.dropna().isin([0.0, 1.0]).all():
            raise ValueError(f"{source}: label {col!r} must be 0, 1 or missing")
        out[col] = values.astype(float)
    return out


def _check_files(paths: Sequence[str], source: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:_SHOWN_MISSING])
        raise ValueError(f"{source}: {len(missing)} of {len(paths)} image files are missing (first: {shown})")


def load_imaging_studies(dataset_dir: str | os.PathLike, check_files: bool = True) -> pd.DataFrame:
    """The imaging manifest of a dataset folder (or of its ``imaging/`` folder) as a DataFrame, one row per sample,
    with ``path`` resolved to absolute paths and every label column of :data:`IMAGING_LABELS` (NaN where not
    applicable). Raises ``ValueError`` naming the file for a missing or unreadable manifest, missing columns,
    unknown modalities, and (with ``check_files``) missing image files."""
    folder = imaging_folder(dataset_dir)
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        raise ValueError(f"{manifest}: no imaging manifest; write one with "
                         "cardiomm.data.imaging_studies.write_imaging_studies or `cardiomm data synth --imaging`")
    try:
        frame = pd.read_parquet(manifest)
    except Exception as err:  # pyarrow raises several error types for a damaged file
        raise ValueError(f"{manifest}: not a readable Parquet manifest ({err})") from None
    out = _validate(frame, str(manifest))
    out["path"] = [p if os.path.isabs(p) else str((folder / p).resolve()) for p in out["path"]]
    if check_files:
        _check_files(list(out["path"]), str(manifest))
    return out.reset_index(drop=True)


def write_imaging_studies(
    studies: pd.DataFrame, dataset_dir: str | os.PathLike, check_files: bool = True
) -> Path:
    """Validate ``studies`` (the columns of the module docstring) and write it as ``dataset_dir/imaging/``
    :data:`MANIFEST_FILE` (``dataset_dir`` may also be the ``imaging`` folder itself). Paths inside the imaging
    folder are stored relative to it. Returns the manifest path."""
    folder = Path(dataset_dir)
    if folder.name != IMAGING_DIR:
        folder = folder / IMAGING_DIR
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / MANIFEST_FILE
    out = _validate(studies, str(manifest))
    root = folder.resolve()
    relative = []
    for p in out["path"]:
        path = Path(p)
        if path.is_absolute() and root in path.resolve().parents:
            path = path.resolve().relative_to(root)
        relative.append(path.as_posix())
    out["path"] = relative
    if check_files:
        _check_files([p if os.path.isabs(p) else str(folder / p) for p in relative], str(manifest))
    out.to_parquet(manifest, index=False)
    return manifest


# ------------------------------------------------------------------------------------------------------ files


def write_echo_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 30) -> Path:
    """Write (frames, H, W) uint8 as a lossless FFV1 grayscale AVI (PyAV); reads back pixel for pixel."""
    import av

    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("ffv1", rate=int(fps))
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "gray"
        stream.codec_context.thread_count = 1
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_angiogram_dicom(
    path: str | os.PathLike,
    frames: np.ndarray,
    patient_id: str,
    study_id: str,
    sample_id: str,
    time: pd.Timestamp | None = None,
    fps: int = 30,
) -> Path:
    """Write (frames, H, W) uint8 as a multi-frame X-ray angiographic DICOM (explicit VR little endian,
    uncompressed, MONOCHROME2); UIDs are derived from the identifiers, so the same input gives the same bytes."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sop_class = "1.2.840.10008.5.1.4.1.1.12.1"  # X-Ray Angiographic Image Storage
    instance = generate_uid(entropy_srcs=["cardiomm", "instance", sample_id])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = DicomDataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["cardiomm", "study", study_id])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["cardiomm", "series", sample_id])
    ds.PatientID = str(patient_id)
    ds.PatientName = str(patient_id)
    ds.StudyID = str(study_id)[-16:]
    ds.Modality = "XA"
    if time is not None:
        stamp = pd.Timestamp(time)
        ds.StudyDate = stamp.strftime("%Y%m%d")
        ds.StudyTime = stamp.strftime("%H%M%S")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = int(frames.shape[0])
    ds.Rows, ds.Columns = int(frames.shape[1]), int(frames.shape[2])
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.FrameTime = f"{1000.0 / fps:.4f}"
    ds.CineRate = int(fps)
    ds.RecommendedDisplayFrameRate = int(fps)
    ds.PixelData = frames.tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def write_chest_xray_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write (H, W) uint8 as an 8-bit grayscale PNG (Pillow)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="L").save(path, format="PNG", optimize=False)
    return path


def read_imaging_file(path: str | os.PathLike) -> np.ndarray:
    """Read an imaging sample as uint8: a video (PyAV) or multi-frame DICOM as (frames, H, W) grayscale, an image
    (Pillow) or single-frame DICOM as (H, W). Raises ``ValueError`` naming the file when it cannot be read."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".dcm", ".dicom"):
            import pydicom

            pixels = pydicom.dcmread(str(path)).pixel_array
            return np.asarray(pixels).astype(np.uint8) if pixels.dtype != np.uint8 else np.asarray(pixels)
        if suffix in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
            from PIL import Image

            with Image.open(path) as image:
                return np.asarray(image.convert("L"))
        import av

        with av.open(str(path)) as container:
            return np.stack([frame.to_ndarray(format="gray") for frame in container.decode(video=0)])
    except Exception as err:
        raise ValueError(f"{path}: cannot read the imaging file ({err})") from None
