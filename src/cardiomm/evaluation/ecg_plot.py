"""Draw an ECG record as a clinician reads it: the standard 12-lead layout on ECG paper, true to scale.

Layout: three rows of four columns of 2.5 s (I aVR V1 V4 / II aVL V2 V5 / III aVF V3 V6; each column shows its
own 2.5 s of the record, as a 12-lead printout does), then a 10-s rhythm strip of lead II; 25 mm/s and 10 mm/mV on
a 1-mm (minor) / 5-mm (major) grid, a 1-mV calibration pulse (10 mm high, 0.2 s wide) at the start of every row.
The figure is sized in millimetres, so the grid is true to scale when the PNG is shown or printed at its dpi.
Each trace is the recorded signal in mV, centred on its median over the 10 s shown. A lead the record does not
have (or that holds no finite sample, or is marked not recorded in the dataset) is drawn empty with its label.

RECORD is a WFDB (.hea/.dat) or challenge (.hea/.mat) record, or a cardiomm dataset folder with --record-id
(its ecg_id). With --model (a fine-tuned ECG classifier folder with its feature extractor) the header lists the
top predictions (probabilities: sigmoid for multi-label, softmax for single-label models, averaged over the
windows the model read) and the traces get a blue shading where the model looks for the top class (or --label):
Grad-CAM on the last convolutional feature map times each lead's gradient x input share for ResNets, attention
rollout over the lead x patch tokens for the lead-aware ViT (attention does not depend on the class). The model
reads the 10 s shown, prepared by its feature extractor (resampling, normalisation) in windows of its input
length; the shading is mapped back onto the record's time axis and scaled so its largest value is darkest.

Example: cardiomm plot records500/00000/00001_hr --model my-classifier --out ecg.png
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Paper speed (mm per second) and gain (mm per mV) of the clinical layout.
PAPER_SPEED = 25.0
PAPER_GAIN = 10.0
#: The leads of the three rows of the 12-lead layout (each column shows 2.5 s) and the rhythm strip's lead.
STANDARD_ROWS: tuple[tuple[str, ...], ...] = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"),
                                              ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"
#: Seconds per column of the 12-lead rows (four columns: 10 s).
COLUMN_SECONDS = 2.5
#: Grid colours: minor (1 mm) and major (5 mm) lines.
MINOR_GRID_COLOR = "#f6c1c1"
MAJOR_GRID_COLOR = "#e05a5a"
#: Colour of the saliency shading (drawn with an opacity that grows with the saliency).
SALIENCY_COLOR = "#1f5fe0"
SALIENCY_MAX_ALPHA = 0.55
DEFAULT_DPI = 200


@dataclass(frozen=True)
class ECGPaperLayout:
    """Sizes (millimetres) of the printed layout: a calibration area then four columns per row, three 12-lead rows
    and a rhythm strip, a header above and a margin around."""

    row_height: float = 30.0
    calibration_width: float = 10.0
    margin: float = 5.0
    header_height: float = 20.0

    @property
    def column_width(self) -> float:
        """Millimetres of one 2.5-s column."""
        return COLUMN_SECONDS * PAPER_SPEED

    @property
    def grid_width(self) -> float:
        """Width of the grid: the calibration area plus 10 s at the paper speed."""
        return self.calibration_width + 4 * self.column_width

    @property
    def grid_height(self) -> float:
        """Height of the grid: three 12-lead rows and the rhythm strip."""
        return (len(STANDARD_ROWS) + 1) * self.row_height

    @property
    def figure_size_mm(self) -> tuple[float, float]:
        """(width, height) of the whole figure."""
        return (self.grid_width + 2 * self.margin, self.grid_height + self.header_height + 2 * self.margin)

    def pixel_size(self, dpi: float) -> tuple[int, int]:
        """(width, height) in pixels of the PNG at ``dpi`` (whole pixels, rounded down)."""
        width, height = self.figure_size_mm
        return int(width / 25.4 * dpi), int(height / 25.4 * dpi)  # as matplotlib sizes the canvas

    def baseline(self, row: int) -> float:
        """Height (mm above the grid's bottom) of the zero line of ``row`` (0 = top row, 3 = rhythm strip)."""
        return self.grid_height - (row + 0.55) * self.row_height


def _canonical(name: str) -> str:
    from ..processing.ecg_records import canonical_lead_name

    return canonical_lead_name(name)


def _draw_grid(ax: Any, layout: ECGPaperLayout) -> None:
    from matplotlib.collections import LineCollection

    width, height = layout.grid_width, layout.grid_height
    for step, colour, line_width, order in ((1.0, MINOR_GRID_COLOR, 0.3, 0), (5.0, MAJOR_GRID_COLOR, 0.7, 0.5)):
        xs = np.arange(0.0, width + 1e-9, step)
        ys = np.arange(0.0, height + 1e-9, step)
        if step == 1.0:  # minor lines only where no major line lies
            xs, ys = xs[np.round(xs) % 5 != 0], ys[np.round(ys) % 5 != 0]
        segments = [[(x, 0.0), (x, height)] for x in xs] + [[(0.0, y), (width, y)] for y in ys]
        ax.add_collection(LineCollection(segments, colors=colour, linewidths=line_width, zorder=order,
                                         antialiased=False, clip_on=False))  # the edge lines drawn whole


def _draw_saliency(ax: Any, x0: float, x1: float, baseline: float, values: np.ndarray, layout: ECGPaperLayout) -> None:
    from matplotlib.colors import to_rgb

    rgba = np.zeros((1, len(values), 4), dtype=np.float32)
    rgba[..., :3] = to_rgb(SALIENCY_COLOR)
    rgba[0, :, 3] = SALIENCY_MAX_ALPHA * np.clip(np.nan_to_num(values), 0.0, 1.0)
    half = 0.45 * layout.row_height
    ax.imshow(rgba, extent=(x0, x1, baseline - half, baseline + half), aspect="auto", interpolation="nearest",
              origin="lower", zorder=1)


def _lead_row(name: str, index: dict[str, int]) -> int | None:
    return index.get(_canonical(name))


def plot_ecg(
    signal: Any,
    sampling_rate: float,
    lead_names: Sequence[str],
    title: str | None = None,
    start: float = 0.0,
    recorded: Sequence[bool] | None = None,
    saliency: Any = None,
    saliency_description: str | None = None,
    predictions: Sequence[tuple[str, float]] | None = None,
    layout: ECGPaperLayout = ECGPaperLayout(),
    dpi: float = DEFAULT_DPI,
):
    """The standard 12-lead layout of ``signal`` (leads, samples) in mV, from ``start`` seconds, as a matplotlib
    ``Figure`` (Agg canvas) sized in millimetres (:class:`ECGPaperLayout`).

    ``lead_names`` name the rows of ``signal`` (any spelling, e.g. ``"AVR"``); a standard lead not among them, one
    with ``recorded`` False, or one without a finite sample is drawn empty with its label. ``saliency``: an array
    shaped like ``signal`` with values in [0, 1], drawn as a shading behind each trace (``saliency_description``
    says what it is, in the header); ``predictions``: (label, probability) pairs listed in the header.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 2 or signal.shape[0] != len(lead_names):
        raise ValueError(f"signal must have shape (leads, samples) with one row per lead name ({len(lead_names)}); "
                         f"got {signal.shape}")
    if not sampling_rate > 0:
        raise ValueError(f"sampling_rate must be positive, got {sampling_rate!r}")
    if saliency is not None:
        saliency = np.asarray(saliency, dtype=np.float64)
        if saliency.shape != signal.shape:
            raise ValueError(f"saliency must have the signal's shape {signal.shape}; got {saliency.shape}")
    present = [True] * len(lead_names) if recorded is None else [bool(flag) for flag in recorded]
    index = {}
    for row, name in enumerate(lead_names):
        if present[row] and np.isfinite(signal[row]).any():
            index.setdefault(_canonical(name), row)
    first = int(round(start * sampling_rate))
    if start < 0 or (signal.shape[1] and first >= signal.shape[1]):
        raise ValueError(f"start {start} s is outside the record ({signal.shape[1] / sampling_rate:g} s)")
    shown = signal[:, first:first + int(round(4 * COLUMN_SECONDS * sampling_rate))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a lead without a finite sample has no median
        centre = np.nan_to_num(np.nanmedian(np.where(np.isfinite(shown), shown, np.nan), axis=1)) if shown.size \
            else np.zeros(len(signal))

    width_mm, height_mm = layout.figure_size_mm
    fig = Figure(figsize=(width_mm / 25.4, height_mm / 25.4), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((layout.margin / width_mm, layout.margin / height_mm, layout.grid_width / width_mm,
                       layout.grid_height / height_mm))
    ax.set_xlim(0, layout.grid_width)
    ax.set_ylim(0, layout.grid_height)
    ax.set_axis_off()
    _draw_grid(ax, layout)

    def draw_lead(name: str, row: int, x0: float, seconds: float, offset: float) -> None:
        baseline = layout.baseline(row)
        label_y = baseline + 0.4 * layout.row_height
        lead = _lead_row(name, index)
        ax.text(x0 + 1.5, label_y, name, fontsize=8, fontweight="bold", va="top", ha="left", zorder=4)
        if lead is None:
            ax.text(x0 + 1.5, label_y - 4.5, "not recorded", fontsize=6, color="0.35", va="top", ha="left", zorder=4)
            return
        lo = first + int(round(offset * sampling_rate))
        hi = min(first + int(round((offset + seconds) * sampling_rate)), signal.shape[1])
        if hi <= lo:
            return
        x = x0 + (np.arange(lo, hi) - lo) / sampling_rate * PAPER_SPEED
        if saliency is not None:
            _draw_saliency(ax, x[0], x[-1] + PAPER_SPEED / sampling_rate, baseline, saliency[lead, lo:hi], layout)
        y = baseline + (signal[lead, lo:hi] - centre[lead]) * PAPER_GAIN
        ax.plot(x, y, color="black", linewidth=0.6, zorder=3, solid_joinstyle="round")

    for row, leads in enumerate(STANDARD_ROWS + ((RHYTHM_LEAD,),)):
        baseline = layout.baseline(row)
        c = layout.calibration_width
        pulse_x = [0.1 * c, 0.25 * c, 0.25 * c, 0.25 * c + 0.2 * PAPER_SPEED, 0.25 * c + 0.2 * PAPER_SPEED, 0.9 * c]
        pulse_y = [baseline, baseline, baseline + PAPER_GAIN, baseline + PAPER_GAIN, baseline, baseline]
        ax.plot(pulse_x, pulse_y, color="black", linewidth=0.6, zorder=3)
        seconds = COLUMN_SECONDS if len(leads) > 1 else 4 * COLUMN_SECONDS
        for column, name in enumerate(leads):
            x0 = c + column * layout.column_width
            if column:  # the column boundary, as a printout marks it
                ax.plot([x0, x0], [baseline - 2.5, baseline + 2.5], color="black", linewidth=0.6, zorder=3)
            draw_lead(name, row, x0, seconds, column * COLUMN_SECONDS)

    top = 1 - layout.margin / height_mm
    line = layout.header_height / 4 / height_mm
    x_text = layout.margin / width_mm
    speed = f"{PAPER_SPEED:g} mm/s, {PAPER_GAIN:g} mm/mV, {sampling_rate:g} Hz, from {start:g} s"
    fig.text(x_text, top, f"{title}    {speed}" if title else speed, fontsize=9, fontweight="bold", va="top")
    if predictions:
        listed = "   ".join(f"{label} {probability:.2f}" for label, probability in predictions)
        fig.text(x_text, top - line, f"Predictions: {listed}", fontsize=8, va="top")
    if saliency is not None and saliency_description:
        fig.text(x_text, top - 2 * line, f"Blue shading: {saliency_description}", fontsize=7, va="top",
                 color=SALIENCY_COLOR)
    return fig


def save_figure(fig: Any, path: str | os.PathLike, dpi: float = DEFAULT_DPI) -> Path:
    """Write ``fig`` as a PNG at ``dpi`` (no cropping: the millimetre layout stays true to scale)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi, facecolor="white")
    return path


def load_ecg_classifier(folder: str | os.PathLike, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """``(classifier, feature_extractor)`` of a fine-tuned ``ECGEncoderForSequenceClassification`` folder (eval
    mode); ``ValueError`` naming the folder when it is not one, is a regression model or lacks the feature
    extractor."""
    from transformers import AutoFeatureExtractor, AutoModelForSequenceClassification

    from .checkpoint import check_loadable_model_type

    root = Path(folder)
    try:
        check_loadable_model_type(root, trust_remote_code)
    except FileNotFoundError as err:
        raise ValueError(str(err)) from err
    try:
        model = AutoModelForSequenceClassification.from_pretrained(root, trust_remote_code=trust_remote_code)
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{root}: cannot load an ECG classifier: {err}") from err
    if not (hasattr(model, "ecg_encoder") and hasattr(model, "classifier")
            and getattr(model.config, "backbone_family", None) is not None):
        raise ValueError(f"{root}: --model needs a fine-tuned ECG classifier (ECGEncoderForSequenceClassification); "
                         f"this folder holds {type(model).__name__}")
    if model.config.problem_type == "regression" or (model.config.num_labels < 2 and not model.config.problem_type):
        raise ValueError(f"{root}: the model is a regression model; --model needs a classifier")
    try:
        feature_extractor = AutoFeatureExtractor.from_pretrained(root, trust_remote_code=trust_remote_code)
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{root}: no ECG feature extractor (preprocessor_config.json) saved with the model: "
                         f"{err}") from err
    return model.eval(), feature_extractor


def _dataset_record(folder: Path, record_id: str) -> tuple[np.ndarray, float, list[str], list[bool]]:
    """(signal, sampling rate, lead names, recorded) of the ECG ``record_id`` of a cardiomm dataset folder."""
    import pyarrow.parquet as pq

    from ..data.ecg_dataset import read_dataset_info

    info = read_dataset_info(folder)
    files = sorted((folder / "data").glob("*.parquet"))
    if not files:
        raise ValueError(f"{folder}: no Parquet splits under data/")
    for file in files:
        table = pq.read_table(file, columns=["ecg_id", "ecg", "lead_mask"], filters=[("ecg_id", "=", record_id)])
        if table.num_rows:
            row = table.slice(0, 1).to_pylist()[0]
            signal = np.asarray(row["ecg"], dtype=np.float32)
            mask = row.get("lead_mask") or [True] * len(info.lead_names)
            return signal, float(info.sampling_rate), list(info.lead_names), [bool(flag) for flag in mask]
    raise ValueError(f"{folder}: no ECG with ecg_id {record_id!r} in {', '.join(f.name for f in files)}")


def load_record(
    record: str | os.PathLike, record_id: str | None = None
) -> tuple[np.ndarray, float, list[str], list[bool], str]:
    """``(signal in mV (leads, samples), sampling rate, lead names, recorded, name)`` of a WFDB / challenge record
    path, or of the ECG ``record_id`` of a cardiomm dataset folder. ``ValueError`` naming the path otherwise."""
    from ..data.ecg_dataset import METADATA_FILE

    path = Path(record)
    if path.is_dir():
        if not (path / METADATA_FILE).is_file():
            raise ValueError(f"{path}: a folder, but not a cardiomm dataset (no {METADATA_FILE}); give a WFDB or "
                             "challenge record path, or a dataset folder with --record-id")
        if record_id is None:
            raise ValueError(f"{path}: a dataset folder needs --record-id (the ecg_id of the ECG to draw)")
        signal, rate, names, recorded = _dataset_record(path, str(record_id))
        return signal, rate, names, recorded, f"{path.name} {record_id}"
    if record_id is not None:
        raise ValueError(f"{path}: --record-id needs a cardiomm dataset folder; this is not a folder")
    from ..processing.ecg_records import read_ecg_record

    loaded = read_ecg_record(path)
    return loaded.signal, float(loaded.sampling_rate), list(loaded.lead_names), [True] * len(loaded.lead_names), \
        Path(loaded.record_name).name


def _target_index(label: str | None, id2label: dict[int, str], folder: Any) -> int | None:
    if label is None:
        return None
    names = {str(name): int(i) for i, name in id2label.items()}
    if label in names:
        return names[label]
    if label.isdigit() and int(label) in {int(i) for i in id2label}:
        return int(label)
    raise ValueError(f"{folder}: the model has no class {label!r}; its classes: {', '.join(names)}")


def plot_record(
    record: str | os.PathLike,
    out: str | os.PathLike,
    record_id: str | None = None,
    model: str | os.PathLike | None = None,
    label: str | None = None,
    top_k: int = 5,
    start: float = 0.0,
    dpi: float = DEFAULT_DPI,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Draw ``record`` (a record path, or a dataset folder with ``record_id``) in the 12-lead layout to the PNG
    ``out``; with ``model`` (a fine-tuned classifier folder) its ``top_k`` predictions and the saliency of
    ``label`` (a class name or index; default: the most probable class). Returns what was drawn: ``path``,
    ``pixels``, ``predictions``, ``explained`` (class label), ``method``."""
    signal, rate, names, recorded, name = load_record(record, record_id)
    first = int(round(start * rate))
    if start < 0 or first >= signal.shape[1]:
        raise ValueError(f"{record}: start {start} s is outside the record ({signal.shape[1] / rate:g} s)")
    last = min(first + int(round(4 * COLUMN_SECONDS * rate)), signal.shape[1])
    result: dict[str, Any] = {"predictions": [], "explained": None, "method": None}
    saliency = description = predictions = None
    if model is not None:
        from ..processing.ecg_records import FRANK_LEADS, STANDARD_12_LEADS
        from .saliency import record_saliency

        classifier, feature_extractor = load_ecg_classifier(model, trust_remote_code)
        id2label = {int(i): str(n) for i, n in classifier.config.id2label.items()}
        target = _target_index(label, id2label, model)
        known = set(STANDARD_12_LEADS) | set(FRANK_LEADS)
        usable = [i for i, flag in enumerate(recorded)
                  if flag and _canonical(names[i]) in known and np.isfinite(signal[i, first:last]).any()]
        if not usable:
            raise ValueError(f"{record}: no recorded ECG lead for the model to read")
        explained = record_saliency(classifier, feature_extractor, signal[usable, first:last], rate,
                                    [names[i] for i in usable], target=target)
        saliency = np.zeros(signal.shape, dtype=np.float32)
        saliency[usable, first:last] = explained.values
        order = np.argsort(-explained.probabilities)[:max(int(top_k), 1)]
        predictions = [(id2label.get(int(i), str(int(i))), float(explained.probabilities[i])) for i in order]
        explained_label = id2label.get(explained.target, str(explained.target))
        which = f"for {explained_label!r}" if explained.class_specific else "(the same for every class)"
        description = f"{explained.method} {which}; {explained.windows} window(s) of the model's input"
        result.update(predictions=predictions, explained=explained_label, method=explained.method)
    fig = plot_ecg(signal, rate, names, title=name, start=start, recorded=recorded, saliency=saliency,
                   saliency_description=description, predictions=predictions, dpi=dpi)
    path = save_figure(fig, out, dpi)
    result.update(path=path, pixels=ECGPaperLayout().pixel_size(dpi))
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cardiomm plot``."""
    parser.add_argument("record", help="WFDB / challenge record path, or a cardiomm dataset folder (with --record-id)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--record-id", default=None, help="ecg_id of the ECG to draw when RECORD is a dataset folder")
    parser.add_argument("--model", default=None,
                        help="fine-tuned ECG classifier folder (with its feature extractor): predictions and saliency")
    parser.add_argument("--label", default=None,
                        help="class (name or index) whose saliency is drawn (default: the most probable one)")
    parser.add_argument("--top-k", type=int, default=5, help="predictions listed in the header (default 5)")
    parser.add_argument("--start", type=float, default=0.0, help="first second of the record drawn (default 0)")
    parser.add_argument("--dpi", type=float, default=DEFAULT_DPI,
                        help=f"resolution; the grid is true to scale at this dpi (default {DEFAULT_DPI})")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a model type that is not cardiomm's or transformers' (runs code in the folder)")


def run(args: argparse.Namespace) -> int:
    """Draw the record and print what was written."""
    if args.dpi <= 0:
        raise ValueError(f"--dpi must be positive, got {args.dpi}")
    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    result = plot_record(args.record, args.out, record_id=args.record_id, model=args.model, label=args.label,
                         top_k=args.top_k, start=args.start, dpi=args.dpi, trust_remote_code=args.trust_remote_code)
    width, height = result["pixels"]
    print(f"wrote {result['path']} ({width} x {height} px at {args.dpi:g} dpi: 25 mm/s, 10 mm/mV true to scale)")
    for label, probability in result["predictions"]:
        print(f"  {label}: {probability:.3f}")
    if result["method"]:
        print(f"saliency: {result['method']} for {result['explained']!r}")
    return 0
