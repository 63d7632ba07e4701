"""Video processor of echocardiogram and angiogram clips: files or arrays in, ``pixel_values`` out.

Per video, in this order (CLERC's preprocessing of both video modalities):

1. **Reading.** Arrays and tensors are taken as they are; files are read by extension: ``.npy`` / ``.npz``
   (NumPy), video files (``.avi``, ``.mp4``, ... through PyAV, with imageio as fallback) and multi-frame DICOM
   (``.dcm``, through pydicom: MONOCHROME1 inverted, RGB/YBR colour as pydicom converts it to RGB, more than
   8 bits stored scaled down to [0, 255]).
2. **Layout.** Frames become a float (frames, channels, H, W) stack with one (grey) or three (RGB) channels; an
   alpha channel is dropped.
3. **Sector crop** (``crop_to_sector``, echocardiograms): the ultrasound sector is the set of pixels whose
   maximum over time (and channels) exceeds ``sector_threshold`` (after ``rescale_factor``): its largest
   8-connected component, with every other component at least a tenth its size (small text and trace overlays
   drop out). The frames are cut to the square around that region's bounding box (centred on it, its side the
   longer side of the box; parts outside the frame are black).
4. **Temporal sampling**: ``num_frames`` frames ``frame_stride`` apart, from frame 0 at evaluation and from a
   random start in training (a video needs ``(num_frames - 1) * frame_stride + 1`` frames).
5. **Resize** to ``size`` x ``size`` (bilinear, antialiased when shrinking).
6. **Augmentation** (training only): ``pad`` black pixels on every side, then a random ``size`` x ``size`` crop.
7. **Normalisation**: grey frames are repeated to three channels; values become
   ``(x * rescale_factor - image_mean[c]) / image_std[c]`` per channel ``c``.

Pixel values of every input are taken on the 8-bit scale [0, 255] (what the readers return); pass
``rescale_factor=1`` for arrays already in [0, 1]. The default ``image_mean`` / ``image_std`` are those of the
Kinetics-400 video models R(2+1)D is initialised from, in [0, 1] units.

Random draws (the clip's start, the crop's offsets) come from torch's global generator, so
``torch.manual_seed`` (and a training loop that seeds it per batch) makes them reproducible.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from typing import Any, TypedDict, Union

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BatchFeature
from transformers.video_processing_utils import VideoProcessorMixin

# R(2+1)D-18 Kinetics-400 weights expect frames normalised with these statistics (in [0, 1] units).
KINETICS_MEAN: tuple[float, float, float] = (0.43216, 0.394666, 0.37645)
KINETICS_STD: tuple[float, float, float] = (0.22803, 0.22145, 0.216989)

VIDEO_EXTENSIONS: tuple[str, ...] = (".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv",
                                     ".gif")
DICOM_EXTENSIONS: tuple[str, ...] = (".dcm", ".dicom")
ARRAY_EXTENSIONS: tuple[str, ...] = (".npy", ".npz")
DATA_FORMATS: tuple[str, ...] = ("channels_last", "channels_first")

# Connected components of the thresholded sector image at least this fraction of the largest one belong to it.
SECTOR_COMPONENT_FRACTION: float = 0.1
# Keys a saved configuration may carry besides the processor's own parameters.
SERIALIZATION_KEYS: tuple[str, ...] = ("auto_map", "processor_class", "_processor_class", "video_processor_type",
                                       "image_processor_type", "feature_extractor_type")

ArrayLike = Union[np.ndarray, torch.Tensor]
PathLike = Union[str, os.PathLike]
VideoInput = Union[ArrayLike, PathLike, Sequence[Union[ArrayLike, PathLike]]]


class CardiacVideoProcessorKwargs(TypedDict, total=False):
    """Parameters of [`CardiacVideoProcessor`] (what ``from_pretrained`` lets a caller override)."""

    crop_to_sector: bool
    size: int
    num_frames: int
    frame_stride: int
    pad: int
    sector_threshold: float
    rescale_factor: float
    image_mean: Sequence[float]
    image_std: Sequence[float]


# ------------------------------------------------------------------------------------------------------- readers


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def file_extension(path: PathLike) -> str:
    """Lower-case extension of ``path`` (``".avi"``)."""
    return os.path.splitext(os.fspath(path))[1].lower()


def check_readable_file(path: PathLike, what: str) -> str:
    """``path`` as a string; ``ValueError`` naming it when it is not an existing file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{what} file {path} does not exist" if not os.path.exists(path)
                         else f"{what} path {path} is not a file")
    return path


def read_array_file(path: PathLike) -> np.ndarray:
    """The array of a ``.npy`` file, or of a ``.npz`` file holding one array (or one named ``video``/``image``)."""
    path = os.fspath(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises ValueError, OSError, EOFError, zipfile errors ... on bad files
        raise ValueError(f"cannot read array file {path}: {err}") from err
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        names = list(loaded.files)
        for preferred in ("video", "image", "pixel_values"):
            if preferred in names:
                return loaded[preferred]
        if len(names) != 1:
            raise ValueError(f"array file {path} holds arrays {names}; expected one array, or one named 'video'")
        return loaded[names[0]]


def read_video_file(path: PathLike) -> np.ndarray:
    """Decoded frames of a video file, uint8 (frames, H, W) for grey video and (frames, H, W, 3) RGB otherwise,
    with PyAV, or imageio when PyAV fails."""
    path = os.fspath(path)
    reasons: list[str] = []
    try:
        import av
        from av.video.reformatter import VideoReformatter

        reformatter = VideoReformatter()  # one converter for all frames (a new one per frame is ~10x slower)
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError("it has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = [
                frame.to_ndarray() if frame.format.name in ("gray", "gray8")
                else reformatter.reformat(frame, format="rgb24").to_ndarray()
                for frame in container.decode(stream)
            ]
        if frames:
            return np.stack(frames)
        reasons.append("PyAV decoded no frame")
    except ImportError:
        reasons.append("PyAV (`pip install av`) is not installed")
    except Exception as err:  # av.error.* and decoding errors
        reasons.append(f"PyAV: {err}")
    try:
        import imageio.v3 as iio

        with warnings.catch_warnings():  # imageio announces deprecations of plugins it tries on the way
            warnings.simplefilter("ignore", DeprecationWarning)
            frames = np.asarray(iio.imread(path, index=None))
        if frames.ndim == 3:  # one grey frame per index
            frames = frames[..., None]
        if frames.ndim == 4 and frames.shape[0] > 0:
            return frames
        reasons.append(f"imageio returned an array of shape {frames.shape}")
    except ImportError:
        reasons.append("imageio is not installed")
    except Exception as err:
        reasons.append(f"imageio: {err}")
    raise ValueError(f"cannot read video file {path}: " + "; ".join(reasons))


def read_dicom_frames(path: PathLike) -> np.ndarray:
    """Frames of a (multi-frame) DICOM file as float32 on the [0, 255] scale: (frames, H, W) for monochrome,
    (frames, H, W, 3) for colour. MONOCHROME1 is inverted (so bright is dense in both), palette colour is expanded,
    YBR colour arrives as RGB (pydicom's default), and more than 8 stored bits are scaled down to [0, 255]."""
    path = os.fspath(path)
    try:
        import pydicom

        dataset = pydicom.dcmread(path)
        pixels = np.asarray(dataset.pixel_array)
    except ImportError as err:
        raise ValueError(f"cannot read DICOM file {path}: pydicom (`pip install pydicom`) is not installed") from err
    except Exception as err:  # InvalidDicomError, missing pixel data, unsupported transfer syntax ...
        raise ValueError(f"cannot read DICOM file {path}: {err}") from err
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    n_frames = int(dataset.get("NumberOfFrames", 1) or 1)
    bits = int(dataset.get("BitsStored", 8) or 8)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        pixels = np.asarray(apply_color_lut(pixels, dataset), dtype=np.float32) * (255.0 / 65535.0)
        samples, bits = 3, 8
    else:
        pixels = pixels.astype(np.float32)
        if int(dataset.get("PixelRepresentation", 0) or 0) == 1:  # signed: shift to unsigned
            pixels = pixels + 2.0 ** (bits - 1)
        if photometric == "MONOCHROME1":
            pixels = (2.0**bits - 1.0) - pixels
        if bits > 8:
            pixels = pixels * (255.0 / (2.0**bits - 1.0))
    single_frame_ndim = 3 if samples > 1 else 2
    if n_frames == 1 and pixels.ndim == single_frame_ndim:
        pixels = pixels[None]
    return pixels


def read_video(path: PathLike) -> np.ndarray:
    """Raw frames of a video file of any supported kind (see the module docstring); ``ValueError`` naming the file
    when it is missing, of an unsupported kind, or unreadable."""
    path = check_readable_file(path, "video")
    extension = file_extension(path)
    if extension in ARRAY_EXTENSIONS:
        return read_array_file(path)
    if extension in DICOM_EXTENSIONS:
        return read_dicom_frames(path)
    if extension in VIDEO_EXTENSIONS:
        return read_video_file(path)
    supported = ", ".join(ARRAY_EXTENSIONS + VIDEO_EXTENSIONS + DICOM_EXTENSIONS)
    raise ValueError(f"video file {path} has an unsupported extension {extension!r}; expected one of {supported}")


# ------------------------------------------------------------------------------------------------- tensor ops


def to_array(value: Any, name: str) -> np.ndarray:
    """``value`` (array or tensor of real numbers) as a NumPy array in its own dtype (bfloat16 becomes float32);
    ``ValueError`` naming it for other inputs."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.is_complex():
            raise ValueError(f"{name} has complex values; expected real numbers")
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        return tensor.numpy()
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{name} is a {type(value).__name__}; expected an array, a tensor or a file path")
    if not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)
            or value.dtype == bool):
        raise ValueError(f"{name} has values of type {value.dtype}; expected real numbers")
    return value


def to_float_tensor(array: np.ndarray, name: str) -> torch.Tensor:
    """``array`` as a float32 tensor; ``ValueError`` naming ``name`` when it holds NaN or infinite values."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} has NaN or infinite values")
    return tensor


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of a (n, channels, H, W) stack to (n, channels, height, width), antialiased when shrinking
    (so a downscaled frame averages its pixels rather than sampling them)."""
    if frames.shape[-2:] == (height, width):
        return frames
    shrink = frames.shape[-2] > height or frames.shape[-1] > width
    return F.interpolate(frames, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)


def crop_with_padding(frames: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """The (height, width) window at (``top``, ``left``) of a (..., H, W) stack; outside the stack it is zeros."""
    full_h, full_w = frames.shape[-2:]
    if top >= 0 and left >= 0 and top + height <= full_h and left + width <= full_w:
        return frames[..., top:top + height, left:left + width]
    out = frames.new_zeros(frames.shape[:-2] + (height, width))
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom, src_right = min(top + height, full_h), min(left + width, full_w)
    if src_bottom > src_top and src_right > src_left:
        out[..., src_top - top:src_bottom - top, src_left - left:src_right - left] = (
            frames[..., src_top:src_bottom, src_left:src_right]
        )
    return out


def sector_bounding_box(intensity: torch.Tensor, threshold: float, name: str) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` (bottom/right exclusive) of the ultrasound sector in a (H, W) image of the
    maximum intensity over time: the largest 8-connected component above ``threshold`` together with the
    components at least ``SECTOR_COMPONENT_FRACTION`` of its size. ``ValueError`` naming ``name`` when no pixel
    exceeds the threshold."""
    from scipy import ndimage

    mask = (intensity > threshold).numpy()
    if not mask.any():
        raise ValueError(
            f"{name}: no ultrasound sector found (no pixel brighter than sector_threshold={threshold:g} in any frame); "
            "is the video black, or should crop_to_sector be False?"
        )
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= SECTOR_COMPONENT_FRACTION * sizes.max()) + 1
    region = np.isin(labels, keep) if count > 1 else mask
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def square_around(box: tuple[int, int, int, int]) -> tuple[int, int, int]:
    """``(top, left, side)`` of the square centred on ``box`` whose side is the box's longer side."""
    top, left, bottom, right = box
    height, width = bottom - top, right - left
    side = max(height, width)
    return top - (side - height) // 2, left - (side - width) // 2, side


def draw_offset(high: int) -> int:
    """Uniform integer in [0, ``high``] from torch's global generator."""
    return int(torch.randint(0, high + 1, (1,)).item()) if high > 0 else 0


# -------------------------------------------------------------------------------------------------- processor


class CardiacVideoProcessor(VideoProcessorMixin):
    r"""Turns echocardiogram or angiogram videos (arrays, tensors, video/DICOM/NumPy files) into ``pixel_values``.

    A [`~transformers.video_processing_utils.VideoProcessorMixin`]: it saves to / loads from
    ``video_preprocessor_config.json`` alone, and a processor holding two of them (echo and angiogram) stores each
    under its own key of ``processor_config.json``.

    Args:
        crop_to_sector (`bool`, defaults to `True`): cut the frames to the square around the ultrasound sector
            (echocardiograms); `False` keeps the whole frame (angiograms).
        size (`int`, defaults to 112): output height and width.
        num_frames (`int`, defaults to 16): frames per clip.
        frame_stride (`int`, defaults to 2): distance between sampled frames (2: every other frame).
        pad (`int`, defaults to 12): training augmentation: black pixels added on each side before a random
            `size` x `size` crop (0 disables it).
        sector_threshold (`float`, defaults to 10/255): intensity (after `rescale_factor`) above which a pixel's
            maximum over time belongs to the sector.
        rescale_factor (`float`, defaults to 1/255): factor applied to the pixel values before normalisation.
        image_mean, image_std (3 floats, default Kinetics-400 statistics): per-channel normalisation, in the units
            of the rescaled values.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = CardiacVideoProcessorKwargs

    def __init__(
        self,
        crop_to_sector: bool = True,
        size: int = 112,
        num_frames: int = 16,
        frame_stride: int = 2,
        pad: int = 12,
        sector_threshold: float = 10 / 255,
        rescale_factor: float = 1 / 255,
        image_mean: Sequence[float] = KINETICS_MEAN,
        image_std: Sequence[float] = KINETICS_STD,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - set(SERIALIZATION_KEYS))
        if unknown:
            raise TypeError(f"CardiacVideoProcessor got unexpected arguments {unknown}")
        kwargs = {k: v for k, v in kwargs.items() if k in ("auto_map",)}
        super().__init__(**kwargs)
        if not isinstance(crop_to_sector, bool):
            raise ValueError(f"crop_to_sector must be True or False, got {crop_to_sector!r}")
        for field_name, value, low in (("size", size, 1), ("num_frames", num_frames, 1),
                                       ("frame_stride", frame_stride, 1), ("pad", pad, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{field_name} must be an integer >= {low}, got {value!r}")
        for field_name, value in (("sector_threshold", sector_threshold), ("rescale_factor", rescale_factor)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{field_name} must be a finite number, got {value!r}")
        if not rescale_factor > 0:
            raise ValueError(f"rescale_factor must be > 0, got {rescale_factor!r}")
        self.crop_to_sector = crop_to_sector
        self.size = size
        self.num_frames = num_frames
        self.frame_stride = frame_stride
        self.pad = pad
        self.sector_threshold = float(sector_threshold)
        self.rescale_factor = float(rescale_factor)
        self.image_mean = check_channel_statistics(image_mean, "image_mean")
        self.image_std = check_channel_statistics(image_std, "image_std", positive=True)

    @property
    def clip_span(self) -> int:
        """Frames a video needs: ``(num_frames - 1) * frame_stride + 1``."""
        return (self.num_frames - 1) * self.frame_stride + 1

    def __call__(
        self,
        videos: VideoInput,
        training: bool = False,
        return_tensors: str | None = "pt",
        data_format: str | None = None,
    ) -> BatchFeature:
        """Preprocess one video or a batch.

        Args:
            videos: one video or a list of them. A video is an array or tensor of shape (frames, H, W) (grey),
                (frames, H, W, C) or (C, frames, H, W) with C = 1 (grey), 3 (RGB) or 4 (RGBA, alpha dropped),
                or a path to a `.npy`/`.npz`, video (`.avi`, `.mp4`, ...) or DICOM (`.dcm`) file. A 5-D array or
                tensor is a batch of videos of one shape.
            training: random clip start and random pad-and-crop (training); `False` gives the first clip, uncropped
                (deterministic).
            return_tensors: `"pt"` (torch), `"np"` or `None` (NumPy arrays).
            data_format: layout of 4-D videos: `"channels_last"` (frames, H, W, C), `"channels_first"`
                (C, frames, H, W), or `None` to infer it (channels last when the last axis has 1, 3 or 4 entries).

        Returns:
            `BatchFeature` with `pixel_values` float32 of shape (batch, 3, num_frames, size, size).

        Raises:
            ValueError: naming the file (or `video i of the batch`) for a missing, unreadable or corrupt file, an
                unsupported extension, a wrong number of dimensions or channels, non-finite values, too few frames
                for `num_frames` at `frame_stride`, or no ultrasound sector found.
        """
        if data_format is not None and data_format not in DATA_FORMATS:
            raise ValueError(f"data_format must be one of {DATA_FORMATS} or None, got {data_format!r}")
        items = self._batch_items(videos)
        clips = []
        for index, item in enumerate(items):
            name = os.fspath(item) if _is_path(item) else f"video {index} of the batch"
            raw = read_video(item) if _is_path(item) else item
            frames = self._frames(raw, name, data_format)
            clips.append(self._process_frames(frames, name, training))
        pixel_values = torch.stack(clips)
        if return_tensors != "pt":
            pixel_values = pixel_values.numpy()
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)

    def preprocess(self, videos: VideoInput, **kwargs: Any) -> BatchFeature:
        """Same as calling the processor."""
        return self(videos, **kwargs)

    # ------------------------------------------------------------------------------------------------ steps

    @staticmethod
    def _batch_items(videos: Any) -> list[Any]:
        if _is_path(videos):
            return [videos]
        if isinstance(videos, (np.ndarray, torch.Tensor)):
            if videos.ndim == 5:
                return list(videos)
            if videos.ndim in (3, 4):
                return [videos]
            raise ValueError(
                f"video 0 of the batch has {videos.ndim} dimensions (shape {tuple(videos.shape)}); expected 3 "
                "(frames, H, W), 4 (frames, H, W, C) or (C, frames, H, W), or 5 for a batch"
            )
        if isinstance(videos, (list, tuple)):
            if not videos:
                raise ValueError("got an empty list of videos")
            return list(videos)
        raise ValueError(
            f"videos must be an array, a tensor, a file path or a list of them, got {type(videos).__name__}"
        )

    def _frames(self, raw: Any, name: str, data_format: str | None) -> np.ndarray:
        """(frames, C, H, W) view of a video with C in {1, 3}, in its own dtype, from any supported layout."""
        array = to_array(raw, name)
        shape = tuple(array.shape)
        if array.ndim == 3:
            frames = array[:, None]
        elif array.ndim == 4:
            layout = data_format
            if layout is None:
                if shape[-1] in (1, 3, 4):
                    layout = "channels_last"
                elif shape[0] in (1, 3, 4):
                    layout = "channels_first"
                else:
                    raise ValueError(
                        f"{name} has shape {shape}: a 4-D video must be (frames, H, W, C) or (C, frames, H, W) "
                        "with C = 1, 3 or 4 (for a batch of grey videos pass a list, or a 5-D array)"
                    )
            frames = array.transpose(0, 3, 1, 2) if layout == "channels_last" else array.transpose(1, 0, 2, 3)
            if frames.shape[1] == 4:
                frames = frames[:, :3]
            if frames.shape[1] not in (1, 3):
                raise ValueError(f"{name} has shape {shape}: {frames.shape[1]} channels, expected 1, 3 or 4")
        else:
            raise ValueError(
                f"{name} has {array.ndim} dimensions (shape {shape}); expected 3 (frames, H, W) or 4 "
                "(frames, H, W, C) / (C, frames, H, W)"
            )
        if min(frames.shape[-2:]) < 1:
            raise ValueError(f"{name} has empty frames (shape {shape})")
        n_frames = frames.shape[0]
        if n_frames < self.clip_span:
            raise ValueError(
                f"{name} has {n_frames} frames; num_frames={self.num_frames} at frame_stride={self.frame_stride} "
                f"needs at least {self.clip_span}"
            )
        return frames

    def _process_frames(self, frames: np.ndarray, name: str, training: bool) -> torch.Tensor:
        """(3, num_frames, size, size) clip of a (frames, C, H, W) video."""
        if self.crop_to_sector:
            intensity = to_float_tensor(frames.max(axis=(0, 1)), name) * self.rescale_factor
            top, left, side = square_around(sector_bounding_box(intensity, self.sector_threshold, name))
        start = draw_offset(frames.shape[0] - self.clip_span) if training else 0
        clip = to_float_tensor(frames[start:start + self.clip_span:self.frame_stride], name)
        if self.crop_to_sector:
            clip = crop_with_padding(clip, top, left, side, side)
        clip = resize_frames(clip, self.size, self.size)
        if training and self.pad > 0:
            top, left = draw_offset(2 * self.pad), draw_offset(2 * self.pad)
            clip = crop_with_padding(clip, top - self.pad, left - self.pad, self.size, self.size)
        if clip.shape[1] == 1:
            clip = clip.expand(-1, 3, -1, -1)
        mean = torch.tensor(self.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        clip = (clip * self.rescale_factor - mean) / std
        return clip.permute(1, 0, 2, 3).contiguous()


def check_channel_statistics(values: Any, name: str, positive: bool = False) -> list[float]:
    """Three finite per-channel numbers (one number is repeated); ``ValueError`` otherwise."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values] * 3
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be 3 numbers (one per channel), got {values!r}") from err
    if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers) or (positive and min(numbers) <= 0):
        qualifier = "positive " if positive else ""
        raise ValueError(f"{name} must be 3 finite {qualifier}numbers (one per channel), got {values!r}")
    return numbers


__all__ = ["CardiacVideoProcessor", "KINETICS_MEAN", "KINETICS_STD", "read_video"]

CardiacVideoProcessor.register_for_auto_class("AutoVideoProcessor")
