"""``cardiomm plot``: the clinical 12-lead layout on ECG paper, true to scale, with a classifier's predictions and
saliency; checked on the written PNG (size, grid colour and spacing, where the shading lies)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from cli_process import describe, run_cardiomm

from cardiomm.evaluation.ecg_plot import (
    COLUMN_SECONDS,
    MAJOR_GRID_COLOR,
    PAPER_SPEED,
    ECGPaperLayout,
    load_record,
    plot_ecg,
    plot_record,
    save_figure,
)
from cardiomm.modeling.configuration_ecg_encoder import STANDARD_12_LEAD_NAMES, ECGEncoderConfig
from cardiomm.modeling.modeling_ecg_encoder import ECGEncoderForSequenceClassification
from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor
from cardiomm.synthetic import simulate_ecgs, synthesize

PTBXL = Path(os.environ.get("CARDIOMM_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "ptbxl"
LABELS = {0: "NORM", 1: "MI", 2: "STTC", 3: "CD", 4: "HYP"}
LAYOUT = ECGPaperLayout()
DPI = 254  # 10 pixels per millimetre


def write_synthetic_record(folder: Path, drop: tuple[str, ...] = ("V3",)) -> Path:
    """A simulated 10-s 12-lead ECG at 500 Hz as a WFDB record, without the leads in ``drop``."""
    import wfdb

    signal = simulate_ecgs([[]], seed=3)[0]
    keep = [i for i, name in enumerate(STANDARD_12_LEAD_NAMES) if name not in drop]
    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp("synthetic", fs=500, units=["mV"] * len(keep), sig_name=[STANDARD_12_LEAD_NAMES[i] for i in keep],
                p_signal=np.ascontiguousarray(signal[keep].T.astype(np.float64)), fmt=["16"] * len(keep),
                write_dir=str(folder))
    return folder / "synthetic"


def save_classifier(folder: Path, backbone: str) -> Path:
    """A tiny fine-tuned-style classifier folder (model + feature extractor at 100 Hz)."""
    torch.manual_seed(0)
    common = dict(num_labels=len(LABELS), id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
                  problem_type="multi_label_classification")
    if backbone == "resnet":
        config = ECGEncoderConfig(backbone="resnet1d_18", stem_channels=8, stage_channels=[8, 16],
                                  stage_depths=[1, 1], stage_kernel_sizes=[3, 3], stage_strides=[1, 2], **common)
    else:
        config = ECGEncoderConfig(backbone="vit_tiny", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  patch_size=50, max_length=500, **common)
    model = ECGEncoderForSequenceClassification(config)
    if backbone == "vit":  # attention that is not evenly spread, so that the rollout map is not empty
        with torch.no_grad():
            model.ecg_encoder.encoder.layers[0].attention.q_proj.weight.normal_(0, 2.0)
            model.ecg_encoder.encoder.layers[0].attention.k_proj.weight.normal_(0, 2.0)
    model.save_pretrained(folder)
    ECGFeatureExtractor(sampling_rate=100, crop_length=250 if backbone == "resnet" else 500).save_pretrained(folder)
    return folder


def pixels(path: Path) -> np.ndarray:
    """(height, width, 3) colours in 0..255 of a PNG."""
    image = imread(path)
    assert image.ndim == 3
    return np.rint(image[..., :3] * 255).astype(int)


def grid_area(image: np.ndarray) -> np.ndarray:
    """The part of the image that holds the grid (below the header), from the layout's millimetres."""
    scale = image.shape[1] / LAYOUT.figure_size_mm[0]
    top = int(np.ceil((LAYOUT.margin + LAYOUT.header_height) * scale))
    left = int(LAYOUT.margin * scale) - 1
    return image[top:, left:int(np.ceil((LAYOUT.margin + LAYOUT.grid_width) * scale)) + 2]


def major_grid_mask(image: np.ndarray) -> np.ndarray:
    return (np.abs(image - np.array(to_rgb(MAJOR_GRID_COLOR)) * 255) <= 3).all(axis=-1)


def saliency_mask(image: np.ndarray) -> np.ndarray:
    """Pixels of the blue saliency shading (over white or the pink grid)."""
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    return (blue - red > 50) & (blue > 150) & (green < blue)


def check_paper(path: Path, dpi: float) -> np.ndarray:
    """The PNG opens, has the layout's pixel size at ``dpi``, and shows the major grid every 5 mm."""
    image = pixels(path)
    width_mm, height_mm = LAYOUT.figure_size_mm
    assert (image.shape[1], image.shape[0]) == LAYOUT.pixel_size(dpi)
    assert abs(image.shape[1] - width_mm / 25.4 * dpi) < 1 and abs(image.shape[0] - height_mm / 25.4 * dpi) < 1
    area = grid_area(image)
    grid = major_grid_mask(area)
    assert grid.mean() > 0.01  # the grid colour is there
    # pixel rows that shading never covers: the top 3 mm of every row (the shading spans 90 % of a row around
    # its zero line, which lies 55 % of a row below the row's top)
    scale = image.shape[1] / width_mm
    strips = [np.arange(int((row * LAYOUT.row_height + 0.5) * scale), int((row * LAYOUT.row_height + 2.5) * scale))
              for row in range(4)]
    clean = grid[np.concatenate(strips)]
    columns = np.flatnonzero(clean.mean(axis=0) > 0.5)  # vertical major lines (traces hide a few pixels)
    centres = [group.mean() for group in np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)]
    spacing = np.diff(centres)
    assert len(centres) == round(LAYOUT.grid_width / 5) + 1
    assert np.allclose(spacing, 5 * dpi / 25.4, atol=1.01)  # 5 mm at this dpi
    return image


def test_layout_is_the_clinical_one() -> None:
    assert LAYOUT.column_width == COLUMN_SECONDS * PAPER_SPEED == 62.5  # 2.5 s at 25 mm/s
    assert LAYOUT.grid_width == LAYOUT.calibration_width + 250.0  # 10 s
    assert LAYOUT.grid_height == 4 * LAYOUT.row_height
    assert LAYOUT.pixel_size(DPI) == (int(LAYOUT.figure_size_mm[0] * 10), int(LAYOUT.figure_size_mm[1] * 10))


def test_plot_command_draws_a_synthetic_record_true_to_scale(tmp_path: Path) -> None:
    record = write_synthetic_record(tmp_path / "wfdb")
    out = tmp_path / "plots" / "ecg.png"
    run = run_cardiomm("plot", record, "--out", out, "--dpi", str(DPI), cwd=tmp_path)
    assert run.returncode == 0, describe(run)
    image = check_paper(out, DPI)
    assert not saliency_mask(grid_area(image)).any()  # no model: no shading
    assert f"wrote {out}" in run.stdout and "px at 254 dpi" in run.stdout
    # a lower dpi: the same millimetres
    drawn = plot_record(record, tmp_path / "small.png", dpi=100)
    assert drawn["pixels"] == LAYOUT.pixel_size(100) and drawn["predictions"] == []
    check_paper(tmp_path / "small.png", 100)


def test_missing_leads_are_drawn_empty_with_their_label() -> None:
    signal = simulate_ecgs([[]], seed=1)[0]
    names = list(STANDARD_12_LEAD_NAMES)
    recorded = [name not in ("V3", "aVF") for name in names]
    signal[names.index("V3")] = np.nan
    fig = plot_ecg(signal[:, :], 500, [n.upper() for n in names], recorded=recorded)
    texts = [text.get_text() for text in fig.axes[0].texts]
    assert all(name in texts for name in names)  # every lead label, in its canonical spelling
    assert texts.count("not recorded") == 2
    traces = [line for line in fig.axes[0].lines if len(line.get_xdata()) > 10]
    assert len(traces) == 10 + 1  # 10 recorded leads and the rhythm strip


def test_saliency_is_drawn_where_it_is_on_paper(tmp_path: Path) -> None:
    signal = simulate_ecgs([[]], seed=2)[0]
    names = list(STANDARD_12_LEAD_NAMES)
    saliency = np.zeros_like(signal)
    saliency[names.index("V1"), 2750:3000] = 1.0  # V1 from 5.5 to 6.0 s: first row, third column (5 to 7.5 s)
    path = save_figure(plot_ecg(signal, 500, names, saliency=saliency, saliency_description="test", dpi=DPI),
                       tmp_path / "s.png", DPI)
    image = check_paper(path, DPI)
    area = grid_area(image)
    rows, columns = np.nonzero(saliency_mask(area))
    x0 = LAYOUT.calibration_width + 2 * LAYOUT.column_width + 0.5 * PAPER_SPEED  # mm from the grid's left edge
    assert abs(columns.min() / 10 - x0) < 0.3 and abs(columns.max() / 10 - (x0 + 0.5 * PAPER_SPEED)) < 0.3
    assert rows.max() / 10 < LAYOUT.row_height  # within the first row
    with pytest.raises(ValueError, match="saliency must have the signal's shape"):
        plot_ecg(signal, 500, names, saliency=saliency[:, :100])


@pytest.mark.parametrize("backbone", ["resnet", "vit"])
def test_plot_command_with_a_classifier_shows_predictions_and_saliency(tmp_path: Path, backbone: str) -> None:
    record = write_synthetic_record(tmp_path / "wfdb")
    model = save_classifier(tmp_path / "classifier", backbone)
    out = tmp_path / "ecg.png"
    run = run_cardiomm("plot", record, "--model", model, "--out", out, "--dpi", "150", "--top-k", "3",
                       "--label", "MI", cwd=tmp_path)
    assert run.returncode == 0, describe(run)
    image = check_paper(out, 150)
    shaded = saliency_mask(grid_area(image))
    assert shaded.mean() > 0.005
    listed = [line.split(":")[0].strip() for line in run.stdout.splitlines() if line.startswith("  ")]
    assert len(listed) == 3 and set(listed) <= set(LABELS.values())
    method = "Grad-CAM" if backbone == "resnet" else "attention rollout"
    assert f"saliency: {method}" in run.stdout and "'MI'" in run.stdout
    if backbone == "vit":
        return
    # a class the model does not have: a clear error naming its classes
    run = run_cardiomm("plot", record, "--model", model, "--out", out, "--label", "AFIB", cwd=tmp_path)
    assert run.returncode == 2 and "no class 'AFIB'" in run.stderr and "NORM" in run.stderr, describe(run)


def test_plot_command_reads_a_dataset_record_by_id(tmp_path: Path) -> None:
    dataset = synthesize(3, tmp_path / "synth", seed=0, write_wfdb_files=False, include_ehr=False, progress=False)
    import pyarrow.parquet as pq

    split = sorted((dataset / "data").glob("*.parquet"))[-1]
    ecg_id = pq.read_table(split, columns=["ecg_id"]).column(0)[0].as_py()
    out = tmp_path / "record.png"
    run = run_cardiomm("plot", dataset, "--record-id", ecg_id, "--out", out, "--dpi", "100", cwd=tmp_path)
    assert run.returncode == 0, describe(run)
    check_paper(out, 100)
    signal, rate, names, recorded, _ = load_record(dataset, ecg_id)
    assert signal.shape == (12, 5000) and rate == 500 and names == list(STANDARD_12_LEAD_NAMES) and all(recorded)
    with pytest.raises(ValueError, match="needs --record-id"):
        load_record(dataset)
    with pytest.raises(ValueError, match="no ECG with ecg_id 'no-such-ecg'"):
        load_record(dataset, "no-such-ecg")
    with pytest.raises(ValueError, match="not a cardiomm dataset"):
        load_record(tmp_path)
    with pytest.raises(ValueError, match="--record-id needs a cardiomm dataset folder"):
        load_record(dataset / "data" / "train.parquet", "x")


@pytest.mark.skipif(not (PTBXL / "records500").is_dir(), reason="PTB-XL sample not available")
def test_plot_command_draws_a_ptbxl_record_with_a_classifier(tmp_path: Path) -> None:
    record = sorted((PTBXL / "records500").rglob("*.hea"))[0].with_suffix("")
    model = save_classifier(tmp_path / "classifier", "resnet")
    out = tmp_path / "ptbxl.png"
    run = run_cardiomm("plot", record, "--model", model, "--out", out, "--dpi", "120", cwd=tmp_path)
    assert run.returncode == 0, describe(run)
    image = check_paper(out, 120)
    assert saliency_mask(grid_area(image)).mean() > 0.005


def test_embedding_map_colours_each_ecg_by_one_label(tmp_path: Path) -> None:
    from cardiomm.evaluation.plots import embedding_map_coordinates, map_labels, plot_embedding_map

    y = np.zeros((40, 3), dtype=int)
    y[:15, 0] = 1
    y[15:30, 1] = 1
    y[25:30, 0] = 1  # both A and B: A is the more frequent label
    assert map_labels(y, ["A", "B", "C"])[24:31] == ["B"] + ["A"] * 5 + ["no label"]
    assert map_labels(np.array([2, 0]), ["A", "B", "C"]) == ["C", "A"]  # class indices (single-label)
    x = np.random.default_rng(0).standard_normal((40, 8))
    x[:15] += 4
    coords, rows, method = embedding_map_coordinates(x)
    assert coords.shape == (40, 2) and method in ("t-SNE", "UMAP") and rows.tolist() == list(range(40))
    # the map keeps the clusters apart: each ECG's nearest neighbour on the map shares its cluster
    distances = np.linalg.norm(coords[:, None] - coords[None], axis=-1) + np.eye(40) * 1e9
    assert ((distances.argmin(axis=1) < 15) == (np.arange(40) < 15)).all()
    assert embedding_map_coordinates(x[:3])[2] == "PCA"  # too few ECGs for t-SNE
    path = plot_embedding_map(x, y, tmp_path / "map.png", ["A", "B", "C"], coordinates=(coords, rows, method))
    assert path.read_bytes().startswith(b"\x89PNG") and pixels(path).std() > 0
    with pytest.raises(ValueError, match="method must be one of"):
        embedding_map_coordinates(x, method="pca")
