"""The CLERC preprocessing: the echo/angiogram video processor, the chest X-ray processor and the combined
processor (its keys, its reports, saving and reloading, remote code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.clip_tokenizer import tiny_clip_tokenizer
from transformers import AutoProcessor, PretrainedConfig

import cardiomm  # noqa: F401  (Auto registrations)
from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor
from cardiomm.processing.image_processing_chest_xray import ChestXrayImageProcessor
from cardiomm.processing.processing_clerc import CLERCProcessor
from cardiomm.processing.video_processing_cardiac import CardiacVideoProcessor

av = pytest.importorskip("av")
pydicom = pytest.importorskip("pydicom")
PIL_Image = pytest.importorskip("PIL.Image")

# Processors in pixel units (no rescale, no normalisation) make expected values easy to write down.
PIXELS = {"rescale_factor": 1.0, "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0]}


# --------------------------------------------------------------------------------------------------- helpers


def fan_mask(height: int, width: int) -> np.ndarray:
    """A bool ultrasound sector: apex at the top centre, radius ``height``, as wide as ``width`` allows."""
    rows, cols = np.mgrid[0:height, 0:width] + 0.5
    dx, dy = cols - width / 2, rows
    radius = np.hypot(dx, dy)
    half_angle = np.arcsin(min(1.0, (width / 2) / height))
    return (radius <= height) & (np.abs(np.arctan2(dx, dy)) <= half_angle)


def tight(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def fan_video(n_frames: int = 40, seed: int = 0) -> np.ndarray:
    """(frames, h, w) uint8 speckle inside a tight fan; the fan's leftmost columns light up in frame 7 only, so
    only the maximum over time shows the whole sector."""
    mask = tight(fan_mask(60, 84))
    rng = np.random.default_rng(seed)
    video = (rng.uniform(60, 255, (n_frames,) + mask.shape) * mask).astype(np.uint8)
    lit = video[7, :, :6].copy()
    video[:, :, :6] = 0
    video[7, :, :6] = lit
    return video


def embed(video: np.ndarray, shape: tuple[int, int], top: int, left: int) -> np.ndarray:
    out = np.zeros((video.shape[0],) + shape, dtype=video.dtype)
    out[:, top:top + video.shape[1], left:left + video.shape[2]] = video
    return out


def write_video(path: Path, frames: np.ndarray, codec: str, pix_fmt: str, options: dict | None = None) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=30)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        if options:
            stream.options = options
        for frame in frames:
            if frame.ndim == 2 and pix_fmt != "gray":
                frame = np.repeat(frame[..., None], 3, axis=-1)
            image = av.VideoFrame.from_ndarray(frame, format="gray" if frame.ndim == 2 else "rgb24")
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_dicom(path: Path, pixels: np.ndarray, photometric: str, bits_stored: int = 8, **attributes) -> None:
    """An uncompressed DICOM file written with pydicom's dataset API: (frames, H, W[, 3]) is multi-frame, (H, W)
    a single image."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    colour = photometric in ("RGB", "YBR_FULL")
    multi_frame = pixels.ndim == (4 if colour else 3)
    if multi_frame:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[1:3] if multi_frame else pixels.shape[:2]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint8 if bits_stored <= 8 else np.uint16)).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def garbage(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


# ------------------------------------------------------------------------------------------------- video


def test_video_output_shape_dtype_and_normalisation() -> None:
    video = embed(fan_video(), (96, 128), 20, 30)
    processor = CardiacVideoProcessor()
    out = processor(video)["pixel_values"]
    assert out.shape == (1, 3, 16, 112, 112) and out.dtype == torch.float32
    # (frames, H, W), (frames, H, W, 1) and (C, frames, H, W) layouts of one grey video
    batch = processor([video, video[..., None], np.stack([video] * 3, axis=0)])["pixel_values"]
    assert batch.shape == (3, 3, 16, 112, 112)
    assert torch.equal(batch[0], out[0]) and torch.equal(batch[1], out[0]) and torch.equal(batch[2], out[0])
    with pytest.raises(ValueError, match="pass a list"):  # (2, frames, H, W): ambiguous, a batch must be a list
        processor(np.stack([video, video]))
    five_d = processor(np.stack([video[..., None], video[..., None]]))["pixel_values"]
    assert five_d.shape == (2, 3, 16, 112, 112) and torch.equal(five_d[1], out[0])
    white = np.full((31, 50, 70, 3), 255, dtype=np.uint8)
    normalised = CardiacVideoProcessor(crop_to_sector=False)(white)["pixel_values"][0]
    expected = (1.0 - torch.tensor(processor.image_mean)) / torch.tensor(processor.image_std)
    assert torch.allclose(normalised.amin(dim=(1, 2, 3)), expected, atol=1e-5)
    assert torch.allclose(normalised.amax(dim=(1, 2, 3)), expected, atol=1e-5)
    assert torch.equal(processor(torch.from_numpy(video))["pixel_values"], out)  # tensors as arrays
    np_out = processor(video, return_tensors="np")["pixel_values"]
    assert isinstance(np_out, np.ndarray) and np.array_equal(np_out, out.numpy())


def test_sector_crop_finds_the_fan_off_centre() -> None:
    fan = fan_video()
    height, width = fan.shape[1:]
    side = max(height, width)
    # The tight square around the fan, the fan centred in it as the processor centres the sector's box.
    square = embed(fan, (side, side), (side - height) // 2, (side - width) // 2)
    big = embed(fan, (220, 300), 120, 190)
    big[:, 5:9, 5:15] = 250  # a text overlay far from the sector
    processor = CardiacVideoProcessor(**PIXELS)
    cropped = processor(big)["pixel_values"]
    assert torch.equal(cropped, processor(square)["pixel_values"])
    assert torch.equal(cropped, CardiacVideoProcessor(crop_to_sector=False, **PIXELS)(square)["pixel_values"])
    # the fan fills the frame's width (it is wider than tall) and is centred vertically; its left columns, lit in
    # frame 7 only (not in the clip), count for the box but stay dark in the clip
    brightest = cropped[0, 0].amax(dim=0)
    assert brightest[:, -1].max() > 50 and brightest[:, :7].max() == 0 and brightest[:, 9].max() > 50
    band = (side - height) // 2 * 112 // side  # black rows above the fan in the output
    assert band > 5 and brightest[:band - 1].max() == 0 and brightest[band + 1].max() > 50
    assert not torch.allclose(cropped, CardiacVideoProcessor(crop_to_sector=False, **PIXELS)(big)["pixel_values"])


def test_eval_is_deterministic_and_training_random_but_seedable() -> None:
    video = embed(fan_video(), (96, 128), 20, 30)
    processor = CardiacVideoProcessor()
    evaluation = processor(video)["pixel_values"]
    assert torch.equal(evaluation, processor(video, training=False)["pixel_values"])
    torch.manual_seed(0)
    first, second = processor(video, training=True)["pixel_values"], processor(video, training=True)["pixel_values"]
    assert not torch.equal(first, second) and not torch.equal(first, evaluation)
    torch.manual_seed(0)
    assert torch.equal(first, processor(video, training=True)["pixel_values"])


def test_frames_are_sampled_at_the_stride() -> None:
    n_frames = 40
    video = np.broadcast_to(np.arange(n_frames, dtype=np.float32)[:, None, None] * 5, (n_frames, 112, 112))
    processor = CardiacVideoProcessor(crop_to_sector=False, **PIXELS)
    clip = processor(video)["pixel_values"][0, 0, :, 56, 56]
    assert clip.tolist() == [5.0 * k for k in range(0, 31, 2)]
    starts = set()
    for seed in range(20):
        torch.manual_seed(seed)
        clip = processor(video, training=True)["pixel_values"][0, 0, :, 56, 56]
        assert torch.equal(clip.diff(), torch.full((15,), 10.0))
        starts.add(int(clip[0]) // 5)
    assert starts <= set(range(0, n_frames - 31 + 1)) and len(starts) > 1
    stride_three = CardiacVideoProcessor(crop_to_sector=False, num_frames=4, frame_stride=3, **PIXELS)
    assert stride_three(video)["pixel_values"][0, 0, :, 0, 0].tolist() == [0.0, 15.0, 30.0, 45.0]


def test_training_pad_and_crop_shifts_the_frame() -> None:
    video = np.full((31, 112, 112), 200, dtype=np.uint8)
    processor = CardiacVideoProcessor(crop_to_sector=False, **PIXELS)
    shifted = 0
    for seed in range(10):
        torch.manual_seed(seed)
        clip = processor(video, training=True)["pixel_values"][0, 0, 0]
        black_rows, black_cols = (clip == 0).all(1).sum(), (clip == 0).all(0).sum()
        assert black_rows <= 12 and black_cols <= 12  # at most `pad` black lines
        assert set(clip.unique().tolist()) <= {0.0, 200.0}
        shifted += int(black_rows + black_cols > 0)
    assert shifted > 0
    assert processor(video)["pixel_values"].min() == 200  # no padding at evaluation


def test_too_few_frames_and_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    processor = CardiacVideoProcessor()
    short = embed(fan_video(30), (96, 128), 20, 30)
    with pytest.raises(ValueError, match=r"video 0 of the batch has 30 frames; num_frames=16 at frame_stride=2 "
                                         r"needs at least 31"):
        processor(short)
    np.save(tmp_path / "short.npy", short)
    with pytest.raises(ValueError, match=r"short\.npy has 30 frames.*at least 31"):
        processor(str(tmp_path / "short.npy"))
    good = embed(fan_video(), (96, 128), 20, 30)
    with pytest.raises(ValueError, match="video 1 of the batch has 2 dimensions"):
        processor([good, good[0]])
    with pytest.raises(ValueError, match="has 6 dimensions"):
        processor(good[None, None, ..., None])
    with pytest.raises(ValueError, match=r"shape \(40, 96, 128, 7\)"):
        processor(np.zeros((40, 96, 128, 7), dtype=np.uint8))
    with pytest.raises(ValueError, match="video 0 of the batch: no ultrasound sector found"):
        processor(np.zeros((40, 96, 128), dtype=np.uint8))
    assert CardiacVideoProcessor(crop_to_sector=False)(np.zeros((40, 96, 128)))["pixel_values"].shape[0] == 1
    bad = good.astype(np.float32)
    bad[3, 50, 50] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        processor(bad)
    with pytest.raises(ValueError, match="unsupported extension '.txt'"):
        processor(str(garbage(tmp_path / "clip.txt")))
    with pytest.raises(ValueError, match="does not exist"):
        processor(str(tmp_path / "missing.avi"))
    with pytest.raises(ValueError, match="num_frames must be an integer >= 1"):
        CardiacVideoProcessor(num_frames=0)
    with pytest.raises(TypeError, match="unexpected arguments"):
        CardiacVideoProcessor(frame_strde=1)


@pytest.mark.parametrize("suffix", [".avi", ".mp4", ".dcm", ".npy", ".npz"])
def test_corrupt_files_name_the_path(tmp_path: Path, suffix: str) -> None:
    path = garbage(tmp_path / f"corrupt{suffix}")
    with pytest.raises(ValueError, match=f"cannot read .*{path.name}"):
        CardiacVideoProcessor()(str(path))


def test_npy_video_and_dicom_files_give_the_array_output(tmp_path: Path) -> None:
    video = embed(fan_video(), (96, 128), 20, 30)
    rgb = np.stack([video, video // 2, video // 3], axis=-1)
    processor = CardiacVideoProcessor()
    expected = processor(video)["pixel_values"]
    expected_rgb = processor(rgb)["pixel_values"]
    one_intensity = 1 / 255 / min(processor.image_std) + 1e-4  # one 8-bit step in normalised units

    np.save(tmp_path / "clip.npy", video)
    np.savez(tmp_path / "clip.npz", video=video)
    write_video(tmp_path / "clip.avi", video, "ffv1", "gray")  # lossless
    write_video(tmp_path / "clip.mp4", video, "libx264", "yuv444p", {"qp": "0"})  # near-lossless (colour rounding)
    write_video(tmp_path / "rgb.avi", rgb, "ffv1", "bgr0")
    write_dicom(tmp_path / "mono2.dcm", video, "MONOCHROME2")
    write_dicom(tmp_path / "mono1.dcm", 255 - video, "MONOCHROME1")
    write_dicom(tmp_path / "twelve_bit.dcm", np.round(video.astype(np.float64) * 4095 / 255), "MONOCHROME2",
                bits_stored=12)
    write_dicom(tmp_path / "rgb.dcm", rgb, "RGB")
    from pydicom.pixels import convert_color_space

    write_dicom(tmp_path / "ybr.dcm", convert_color_space(rgb, "RGB", "YBR_FULL"), "YBR_FULL")

    for name in ("clip.npy", "clip.npz", "clip.avi", "mono2.dcm", "mono1.dcm"):
        assert torch.equal(processor(str(tmp_path / name))["pixel_values"], expected), name
    for name, atol in (("clip.mp4", one_intensity), ("twelve_bit.dcm", 1e-3)):
        assert torch.allclose(processor(tmp_path / name)["pixel_values"], expected, atol=atol), name
    assert torch.equal(processor(str(tmp_path / "rgb.avi"))["pixel_values"], expected_rgb)
    assert torch.equal(processor(str(tmp_path / "rgb.dcm"))["pixel_values"], expected_rgb)
    assert torch.allclose(processor(str(tmp_path / "ybr.dcm"))["pixel_values"], expected_rgb, atol=2 * one_intensity)
    mixed = processor([str(tmp_path / "clip.avi"), video, tmp_path / "mono2.dcm"])["pixel_values"]
    assert mixed.shape[0] == 3 and all(torch.equal(mixed[i], expected[0]) for i in range(3))


def test_video_processor_saves_and_reloads(tmp_path: Path) -> None:
    processor = CardiacVideoProcessor(crop_to_sector=False, size=64, num_frames=8, frame_stride=3, pad=4,
                                      image_mean=[0.5] * 3, image_std=[0.25] * 3)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    assert saved["video_processor_type"] == "CardiacVideoProcessor" and saved["frame_stride"] == 3
    loaded = CardiacVideoProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    video = embed(fan_video(), (96, 128), 20, 30)
    assert torch.equal(loaded(video)["pixel_values"], processor(video)["pixel_values"])
    assert CardiacVideoProcessor.from_pretrained(tmp_path, size=32).size == 32


# ------------------------------------------------------------------------------------------- chest X-ray


def ramp_image() -> np.ndarray:
    """256 x 256, value = column index: crops show up as offsets."""
    return np.tile(np.arange(256, dtype=np.uint8), (256, 1))


def test_chest_xray_centre_crop_at_test_and_random_crop_in_training() -> None:
    processor = ChestXrayImageProcessor(**PIXELS)
    out = processor(ramp_image())["pixel_values"]
    assert out.shape == (1, 3, 224, 224) and out.dtype == torch.float32
    assert out[0, :, 0].tolist() == [list(range(16, 240))] * 3  # centre crop: 16 columns off each side
    offsets = set()
    for seed in range(8):
        torch.manual_seed(seed)
        crop = processor(ramp_image(), training=True)["pixel_values"][0, 0]
        assert torch.equal(crop[0].diff(), torch.ones(223))
        offsets.add(int(crop[0, 0]))
        torch.manual_seed(seed)
        assert torch.equal(crop, processor(ramp_image(), training=True)["pixel_values"][0, 0])
    assert len(offsets) > 1 and offsets <= set(range(33))


def test_chest_xray_resizes_the_shorter_side_and_keeps_the_centre() -> None:
    image = np.zeros((512, 768), dtype=np.uint8)
    image[:, 96:672] = 200  # the centre square, and a bit more: only the sides are dark
    processor = ChestXrayImageProcessor(**PIXELS)
    for training in (False, True):
        out = processor(image, training=training)["pixel_values"]
        assert out.shape == (1, 3, 224, 224) and torch.allclose(out, torch.full_like(out, 200.0), atol=1e-3)
    tall = np.zeros((768, 512), dtype=np.uint8)
    tall[96:672] = 200
    assert torch.allclose(processor(tall)["pixel_values"], torch.full((1, 3, 224, 224), 200.0), atol=1e-3)
    normalised = ChestXrayImageProcessor()(np.full((300, 400), 255, dtype=np.uint8))["pixel_values"][0, :, 0, 0]
    assert torch.allclose(normalised, (1 - torch.tensor(ChestXrayImageProcessor().image_mean))
                          / torch.tensor(ChestXrayImageProcessor().image_std), atol=1e-5)
    rgb = np.stack([ramp_image(), 255 - ramp_image(), np.full((256, 256), 7, np.uint8)], axis=-1)
    channels = processor([rgb, np.moveaxis(rgb, -1, 0)])["pixel_values"]
    assert torch.equal(channels[0], channels[1]) and channels[0, 2].unique().tolist() == [7.0]


def test_chest_xray_files_give_the_array_output(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 280), dtype=np.uint8)
    image[0, 0], image[0, 1] = 0, 255  # full range: the DICOM stretch to [0, 255] is the identity
    processor = ChestXrayImageProcessor(**PIXELS)
    expected = processor(image)["pixel_values"]
    PIL_Image.fromarray(image).save(tmp_path / "cxr.png")
    PIL_Image.fromarray(image.astype(np.uint16) * 257).save(tmp_path / "cxr16.png")
    smooth = np.tile(np.linspace(0, 255, 280), (300, 1)).astype(np.uint8)
    PIL_Image.fromarray(smooth).save(tmp_path / "cxr.jpg", quality=95)
    write_dicom(tmp_path / "mono2.dcm", image, "MONOCHROME2")
    write_dicom(tmp_path / "mono1.dcm", image, "MONOCHROME1")
    assert torch.equal(processor(str(tmp_path / "cxr.png"))["pixel_values"], expected)
    assert torch.allclose(processor(str(tmp_path / "cxr16.png"))["pixel_values"], expected, atol=1e-3)
    assert torch.allclose(processor(tmp_path / "cxr.jpg")["pixel_values"], processor(smooth)["pixel_values"], atol=3)
    assert torch.allclose(processor(str(tmp_path / "mono2.dcm"))["pixel_values"], expected, atol=1e-3)
    # MONOCHROME1 stores the same numbers with the opposite meaning: its image is the inverse
    inverse = processor(str(tmp_path / "mono1.dcm"))["pixel_values"]
    assert torch.allclose(inverse, 255 - expected, atol=1e-3)
    assert torch.equal(processor(PIL_Image.open(tmp_path / "cxr.png"))["pixel_values"], expected)
    assert torch.equal(processor(torch.from_numpy(image))["pixel_values"], expected)
    batch = processor([str(tmp_path / "cxr.png"), image])["pixel_values"]
    assert batch.shape == (2, 3, 224, 224) and torch.equal(batch[0], batch[1])


def test_chest_xray_dicom_applies_rescale_and_window(tmp_path: Path) -> None:
    stored = np.tile(np.arange(0, 4000, 10, dtype=np.uint16)[:, None], (1, 300))  # 400 x 300, rows 0..3990
    # Rescale slope/intercept map stored values to 2 * s - 1000; the window keeps [-200, 1800) of those.
    write_dicom(tmp_path / "windowed.dcm", stored, "MONOCHROME2", bits_stored=12, RescaleSlope=2,
                RescaleIntercept=-1000, WindowCenter=800, WindowWidth=2000)
    processor = ChestXrayImageProcessor(resize_size=300, crop_size=300, **PIXELS)
    out = processor(str(tmp_path / "windowed.dcm"))["pixel_values"][0, 0, :, 0]
    values = stored[50:350, 0].astype(np.float64) * 2 - 1000  # centre crop of 300 rows
    expected = np.clip((values - (800 - 0.5)) / (2000 - 1) + 0.5, 0, 1) * 255  # DICOM linear window
    assert np.allclose(out.numpy(), expected, atol=0.5)
    assert (expected == 255).sum() > 50 and (expected < 250).sum() > 50  # saturated above the window, linear in it


def test_chest_xray_errors_name_the_file(tmp_path: Path) -> None:
    processor = ChestXrayImageProcessor()
    for name in ("bad.png", "bad.jpg", "bad.dcm"):
        path = garbage(tmp_path / name)
        with pytest.raises(ValueError, match=f"cannot read .*{name}"):
            processor(str(path))
    write_dicom(tmp_path / "cine.dcm", np.zeros((3, 32, 32), np.uint8), "MONOCHROME2")
    with pytest.raises(ValueError, match=r"cine\.dcm has 3 frames"):
        processor(str(tmp_path / "cine.dcm"))
    with pytest.raises(ValueError, match="unsupported extension"):
        processor(str(garbage(tmp_path / "image.xyz")))
    with pytest.raises(ValueError, match="image 1 of the batch has shape"):
        processor([ramp_image(), np.zeros((8, 20, 20))])
    with pytest.raises(ValueError, match="crop_size"):
        ChestXrayImageProcessor(resize_size=200, crop_size=224)


# ------------------------------------------------------------------------------------------ CLERC processor

REPORTS = {
    "ecg_report": ["Sinus rhythm, left ventricular hypertrophy.", "Atrial fibrillation with rapid response."],
    "echo_report": ["LVEF 35%; moderate mitral regurgitation (grade 2/4)", "Normal study"],
    "angiogram_report": ["100% occlusion of the proximal LAD", "No significant CAD"],
    "chest_xray_report": ["Cardiomegaly with pulmonary edema; no consolidation.", "Clear lungs"],
}
DIAGNOSTIC_KEYS = {"ecg": {"ecg_values", "ecg_lead_mask"}, "echo": {"echo_values"},
                   "angiogram": {"angiogram_values"}, "chest_xray": {"chest_xray_values"}}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_clip_tokenizer(tmp_path_factory.mktemp("clip_tokenizer"))


def small_processor(tokenizer) -> CLERCProcessor:
    return CLERCProcessor(
        tokenizer,
        feature_extractor=ECGFeatureExtractor(sampling_rate=500, crop_length=2500),
        echo_video_processor=CardiacVideoProcessor(crop_to_sector=True, size=32, num_frames=4),
        angiogram_video_processor=CardiacVideoProcessor(crop_to_sector=False, size=24, num_frames=6, frame_stride=3,
                                                        pad=4),
        chest_xray_image_processor=ChestXrayImageProcessor(resize_size=64, crop_size=48),
    )


def patient_inputs(n: int = 2) -> dict:
    rng = np.random.default_rng(3)
    echo = [embed(fan_video(12, seed=i), (70, 90), 5 + i, 3) for i in range(n)]
    angiogram = [rng.integers(0, 256, (20, 40, 50, 3), dtype=np.uint8) for _ in range(n)]
    return {
        "ecg": rng.standard_normal((n, 12, 5000)).astype(np.float32),
        "echo": echo,
        "angiogram": angiogram,
        "chest_xray": [rng.integers(0, 256, (80, 70), dtype=np.uint8) for _ in range(n)],
        **{key: texts[:n] for key, texts in REPORTS.items()},
    }


def _assert_same(a, b) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key


@pytest.mark.parametrize("modalities", [
    ("ecg",), ("echo",), ("angiogram",), ("chest_xray",), ("ecg_report",), ("echo", "echo_report"),
    ("ecg", "angiogram", "chest_xray_report"),
    ("ecg", "echo", "angiogram", "chest_xray", "ecg_report", "echo_report", "angiogram_report", "chest_xray_report"),
])
def test_clerc_processor_returns_the_model_keys_of_the_given_modalities(tokenizer, modalities) -> None:
    processor = small_processor(tokenizer)
    inputs = {key: value for key, value in patient_inputs().items() if key in modalities}
    out = processor(**inputs, sampling_rate=500 if "ecg" in modalities else None)
    expected = set()
    for modality in modalities:
        expected |= DIAGNOSTIC_KEYS.get(modality, {f"{modality}_input_ids", f"{modality}_attention_mask"})
    assert set(out) == expected and expected <= set(processor.model_input_names)
    shapes = {"ecg_values": (2, 12, 2500), "ecg_lead_mask": (2, 12), "echo_values": (2, 3, 4, 32, 32),
              "angiogram_values": (2, 3, 6, 24, 24), "chest_xray_values": (2, 3, 48, 48)}
    for key, value in out.items():
        assert isinstance(value, torch.Tensor)
        if key in shapes:
            assert tuple(value.shape) == shapes[key], key
        else:
            assert value.shape[0] == 2 and value.ndim == 2, key


def test_clerc_processor_equals_its_parts(tokenizer) -> None:
    processor = small_processor(tokenizer)
    inputs = patient_inputs()
    out = processor(**inputs, sampling_rate=500)
    ecg = processor.feature_extractor(inputs["ecg"], sampling_rate=500, crop="center")
    assert torch.equal(out["ecg_values"], ecg["input_values"]) and torch.equal(out["ecg_lead_mask"], ecg["lead_mask"])
    assert torch.equal(out["echo_values"], processor.echo_video_processor(inputs["echo"])["pixel_values"])
    assert torch.equal(out["angiogram_values"],
                       processor.angiogram_video_processor(inputs["angiogram"])["pixel_values"])
    assert torch.equal(out["chest_xray_values"],
                       processor.chest_xray_image_processor(inputs["chest_xray"])["pixel_values"])
    # the two video processors keep their own settings: the echo one crops to the sector
    echo_as_angiogram = CardiacVideoProcessor(crop_to_sector=False, size=32, num_frames=4)(inputs["echo"])
    assert not torch.equal(out["echo_values"], echo_as_angiogram["pixel_values"])


def test_clerc_processor_tokenises_each_report_type(tokenizer) -> None:
    processor = small_processor(tokenizer)
    out = processor(**{key: REPORTS[key] for key in REPORTS})
    for report_type, texts in REPORTS.items():
        expected = tokenizer(texts, padding="longest", truncation=True, max_length=77, return_tensors="pt")
        assert torch.equal(out[f"{report_type}_input_ids"], expected["input_ids"])
        assert torch.equal(out[f"{report_type}_attention_mask"], expected["attention_mask"])
        ids = out[f"{report_type}_input_ids"][out[f"{report_type}_attention_mask"].bool()].tolist()
        assert ids.count(tokenizer.unk_token_id) == len(texts)  # only the end-of-text tokens (CLIP's unk is eot)
    lengths = {out[f"{r}_input_ids"].shape[1] for r in REPORTS}
    assert len(lengths) > 1  # each report type is padded to its own longest report
    short = processor(ecg_report=REPORTS["ecg_report"], max_text_length=8)["ecg_report_input_ids"]
    assert short.shape == (2, 8) and (short[:, -1] == tokenizer.eos_token_id).all()
    single = processor(echo_report="Normal study")
    assert single["echo_report_input_ids"].shape[0] == 1


def test_clerc_processor_training_draws_are_random_and_seedable(tokenizer) -> None:
    processor = small_processor(tokenizer)
    inputs = patient_inputs()
    evaluation = processor(**inputs, sampling_rate=500)
    _assert_same(evaluation, processor(**inputs, sampling_rate=500))
    torch.manual_seed(11)
    first = processor(**inputs, sampling_rate=500, training=True)
    second = processor(**inputs, sampling_rate=500, training=True)
    for key in ("ecg_values", "echo_values", "angiogram_values", "chest_xray_values"):
        assert not torch.equal(first[key], second[key]), key
    torch.manual_seed(11)
    _assert_same(first, processor(**inputs, sampling_rate=500, training=True))
    assert torch.equal(first["ecg_report_input_ids"], evaluation["ecg_report_input_ids"])  # no text augmentation


def test_clerc_processor_rejects_mismatched_counts_and_empty_calls(tokenizer) -> None:
    processor = small_processor(tokenizer)
    inputs = patient_inputs()
    with pytest.raises(ValueError, match="Got 2 ecg, 1 echo_report"):
        processor(ecg=inputs["ecg"], echo_report=REPORTS["echo_report"][:1], sampling_rate=500)
    with pytest.raises(ValueError, match="Pass at least one modality"):
        processor()
    with pytest.raises(ValueError, match="ecg_report must be a report"):
        processor(ecg_report=[1, 2])
    with pytest.raises(ValueError, match="tokenizer"):
        CLERCProcessor(None)
    with pytest.raises(TypeError, match="echo_video_processor"):
        CLERCProcessor(tokenizer, echo_video_processor=ChestXrayImageProcessor())


def test_clerc_processor_defaults_follow_the_paper(tokenizer) -> None:
    processor = CLERCProcessor(tokenizer)
    assert processor.echo_video_processor.crop_to_sector and not processor.angiogram_video_processor.crop_to_sector
    for video in (processor.echo_video_processor, processor.angiogram_video_processor):
        assert (video.size, video.num_frames, video.frame_stride, video.pad) == (112, 16, 2, 12)
    assert (processor.chest_xray_image_processor.resize_size, processor.chest_xray_image_processor.crop_size) == (
        256, 224)
    assert processor.feature_extractor.crop_length == 2500 and processor.feature_extractor.sampling_rate == 500
    assert processor.max_text_length == 77


class _CLERCProcessorTestConfig(PretrainedConfig):
    model_type = "clerc_processor_test"


def _register_with_auto_processor():
    """Register CLERCProcessor with AutoProcessor under the CLERC config when cardiomm does not yet; return the
    config class registered here (to unregister) or None."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    if CLERCProcessor in PROCESSOR_MAPPING._extra_content.values():
        return None
    AutoProcessor.register(_CLERCProcessorTestConfig, CLERCProcessor, exist_ok=True)
    return _CLERCProcessorTestConfig


def test_clerc_processor_round_trip_with_auto_processor(tokenizer, tmp_path: Path) -> None:
    processor = small_processor(tokenizer)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "CLERCProcessor"
    assert saved["echo_video_processor"]["crop_to_sector"] is True
    assert saved["angiogram_video_processor"]["crop_to_sector"] is False
    assert saved["angiogram_video_processor"]["frame_stride"] == 3
    assert (tmp_path / "video_processing_cardiac.py").is_file() and (tmp_path / "processing_clerc.py").is_file()
    registered = _register_with_auto_processor()
    try:
        loaded = [CLERCProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)]
    finally:
        if registered is not None:
            from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

            PROCESSOR_MAPPING._extra_content.pop(registered, None)
    inputs = patient_inputs()
    for other in loaded:
        assert type(other) is CLERCProcessor
        config, other_config = json.loads(processor.to_json_string()), json.loads(other.to_json_string())
        config.pop("auto_map", None)
        assert other_config == config
        _assert_same(other(**inputs, sampling_rate=500), processor(**inputs, sampling_rate=500))
        torch.manual_seed(5)
        expected = processor(**inputs, sampling_rate=500, training=True)
        torch.manual_seed(5)
        _assert_same(other(**inputs, sampling_rate=500, training=True), expected)


def test_saved_clerc_processor_loads_as_remote_code_without_cardiomm(tokenizer, tmp_path: Path) -> None:
    processor = small_processor(tokenizer)
    folder = tmp_path / "processor"
    processor.save_pretrained(folder)
    inputs = patient_inputs()
    np.savez(tmp_path / "inputs.npz", ecg=inputs["ecg"], echo=np.stack(inputs["echo"]),
             angiogram=np.stack(inputs["angiogram"]), chest_xray=np.stack(inputs["chest_xray"]))
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import torch
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert "cardiomm" not in sys.modules, "cardiomm was imported"
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        data = np.load({str(tmp_path / "inputs.npz")!r})
        out = processor(ecg=data["ecg"], echo=list(data["echo"]), angiogram=list(data["angiogram"]),
                        chest_xray=list(data["chest_xray"]), echo_report={REPORTS["echo_report"]!r},
                        sampling_rate=500)
        torch.save(dict(out), {str(tmp_path / "out.pt")!r})
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                            cwd=str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(tmp_path / "out.pt")
    local = processor(ecg=inputs["ecg"], echo=inputs["echo"], angiogram=inputs["angiogram"],
                      chest_xray=inputs["chest_xray"], echo_report=REPORTS["echo_report"], sampling_rate=500)
    _assert_same(remote, local)
