"""Image processor of chest X-rays: PNG/JPEG/DICOM files or arrays in, ``pixel_values`` for a CLIP ViT out.

Per image, in this order (CLERC: radiographs cropped to 256 x 256, random 224 x 224 crops in training):

1. **Reading.** Arrays and tensors are taken as they are. Image files (PNG, JPEG, ... through Pillow) keep their
   8-bit values; 16-bit images are scaled to [0, 255]. DICOM files (pydicom) get the modality LUT (rescale slope
   and intercept) and the first VOI LUT or window when the file has one, then are stretched to [0, 255] by
   their own minimum and maximum; MONOCHROME1 images are inverted, so bone is bright as in MONOCHROME2.
2. **Resize** of the shorter side to ``resize_size`` (bicubic, antialiased, kept within the image's own range),
   then a centre ``resize_size`` x ``resize_size`` crop.
3. **Crop** of ``crop_size`` x ``crop_size``: random in training, centred at evaluation.
4. **Normalisation**: grey images are repeated to three channels; values become
   ``(x * rescale_factor - image_mean[c]) / image_std[c]``. The defaults are CLIP's statistics (the encoder is
   CLIP's ViT-B/32) in [0, 1] units.

Random crops draw from torch's global generator (``torch.manual_seed`` makes them reproducible).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, TypedDict, Union

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from .video_processing_cardiac import (
    ARRAY_EXTENSIONS,
    DICOM_EXTENSIONS,
    SERIALIZATION_KEYS,
    check_channel_statistics,
    check_readable_file,
    draw_offset,
    file_extension,
    read_array_file,
    to_array,
    to_float_tensor,
)

# CLIP's image statistics (openai/clip-vit-base-patch32), in [0, 1] units.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
SIXTEEN_BIT_MODES: tuple[str, ...] = ("I;16", "I;16B", "I;16L", "I;16N", "I")

ArrayLike = Union[np.ndarray, torch.Tensor]
ImageInput = Union[ArrayLike, str, os.PathLike, Any, Sequence[Any]]


class ChestXrayImageProcessorKwargs(TypedDict, total=False):
    """Parameters of [`ChestXrayImageProcessor`] (what ``from_pretrained`` lets a caller override)."""

    resize_size: int
    crop_size: int
    rescale_factor: float
    image_mean: Sequence[float]
    image_std: Sequence[float]


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def _is_pil_image(value: Any) -> bool:
    return type(value).__module__.startswith("PIL.") and hasattr(value, "getbands")


def pil_to_array(image: Any) -> np.ndarray:
    """A Pillow image as (H, W) (grey) or (H, W, 3) (colour) values on the [0, 255] scale."""
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        return np.asarray(image, dtype=np.float32) * (255.0 / 65535.0)
    if mode == "F":
        return np.asarray(image, dtype=np.float32)
    if mode in ("1", "LA", "La"):
        image = image.convert("L")
    elif mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return np.asarray(image)


def read_image_file(path: str) -> np.ndarray:
    """Pixels of a PNG/JPEG/... file through Pillow (see :func:`pil_to_array`)."""
    try:
        from PIL import Image
    except ImportError as err:
        raise ValueError(f"cannot read image file {path}: Pillow (`pip install pillow`) is not installed") from err
    try:
        with Image.open(path) as image:
            image.load()
            return pil_to_array(image)
    except Exception as err:  # UnidentifiedImageError, truncated files, decoder errors ...
        raise ValueError(f"cannot read image file {path}: {err}") from err


def read_dicom_image(path: str) -> np.ndarray:
    """A single-frame DICOM radiograph on the [0, 255] scale: (H, W) for monochrome (modality LUT, VOI LUT or
    window, stretch to [0, 255], MONOCHROME1 inverted), (H, W, 3) for colour (as pydicom returns it)."""
    try:
        import pydicom

        dataset = pydicom.dcmread(path)
        pixels = np.asarray(dataset.pixel_array)
    except ImportError as err:
        raise ValueError(f"cannot read DICOM file {path}: pydicom (`pip install pydicom`) is not installed") from err
    except Exception as err:  # InvalidDicomError, missing pixel data, unsupported transfer syntax ...
        raise ValueError(f"cannot read DICOM file {path}: {err}") from err
    n_frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if n_frames > 1:
        raise ValueError(f"DICOM file {path} has {n_frames} frames; a chest X-ray is a single image")
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if not photometric.startswith("MONOCHROME"):
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            return np.asarray(apply_color_lut(pixels, dataset), dtype=np.float32) * (255.0 / 65535.0)
        bits = int(dataset.get("BitsStored", 8) or 8)
        return pixels.astype(np.float32) * (255.0 / (2.0**bits - 1.0)) if bits > 8 else pixels
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)
        if "VOILUTSequence" in dataset or "WindowCenter" in dataset:
            values = np.asarray(apply_voi_lut(values, dataset), dtype=np.float64)
    except Exception as err:  # malformed LUT or window attributes
        raise ValueError(f"cannot apply the LUTs of DICOM file {path}: {err}") from err
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    if photometric == "MONOCHROME1":
        scaled = 255.0 - scaled
    return scaled.astype(np.float32)


def read_chest_xray(path: Any) -> np.ndarray:
    """Raw pixels of an image file of any supported kind; ``ValueError`` naming the file when it is missing, of an
    unsupported kind or unreadable."""
    path = check_readable_file(path, "image")
    extension = file_extension(path)
    if extension in DICOM_EXTENSIONS:
        return read_dicom_image(path)
    if extension in ARRAY_EXTENSIONS:
        return read_array_file(path)
    if extension in IMAGE_EXTENSIONS:
        return read_image_file(path)
    supported = ", ".join(IMAGE_EXTENSIONS + DICOM_EXTENSIONS + ARRAY_EXTENSIONS)
    raise ValueError(f"image file {path} has an unsupported extension {extension!r}; expected one of {supported}")


class ChestXrayImageProcessor(BaseImageProcessor):
    r"""Turns chest X-rays (arrays, tensors, Pillow images, PNG/JPEG/DICOM/NumPy files) into ``pixel_values``.

    Args:
        resize_size (`int`, defaults to 256): the shorter side is resized to this, then the centre square kept.
        crop_size (`int`, defaults to 224): side of the crop given to the model (random in training, centred at
            evaluation); at most `resize_size`.
        rescale_factor (`float`, defaults to 1/255): factor applied to the [0, 255] pixel values before
            normalisation.
        image_mean, image_std (3 floats, default CLIP's): per-channel normalisation, in rescaled units.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = ChestXrayImageProcessorKwargs

    def __init__(
        self,
        resize_size: int = 256,
        crop_size: int = 224,
        rescale_factor: float = 1 / 255,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - set(SERIALIZATION_KEYS))
        if unknown:
            raise TypeError(f"ChestXrayImageProcessor got unexpected arguments {unknown}")
        super().__init__(**{k: v for k, v in kwargs.items() if k == "auto_map"})
        for field_name, value in (("resize_size", resize_size), ("crop_size", crop_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field_name} must be a positive integer, got {value!r}")
        if crop_size > resize_size:
            raise ValueError(f"crop_size ({crop_size}) must not exceed resize_size ({resize_size})")
        if isinstance(rescale_factor, bool) or not isinstance(rescale_factor, (int, float)) or not (
            math.isfinite(rescale_factor) and rescale_factor > 0
        ):
            raise ValueError(f"rescale_factor must be a positive number, got {rescale_factor!r}")
        self.resize_size = resize_size
        self.crop_size = crop_size
        self.rescale_factor = float(rescale_factor)
        self.image_mean = check_channel_statistics(image_mean, "image_mean")
        self.image_std = check_channel_statistics(image_std, "image_std", positive=True)

    def __call__(self, images: ImageInput, training: bool = False, return_tensors: str | None = "pt") -> BatchFeature:
        """Preprocess one chest X-ray or a batch.

        Args:
            images: one image or a list of them: an array or tensor (H, W), (H, W, C) or (C, H, W) with C = 1, 3 or
                4 (alpha dropped), a Pillow image, or a path to a PNG/JPEG/... , DICOM (`.dcm`) or `.npy`/`.npz`
                file. A 4-D array or tensor is a batch (N, H, W, C) or (N, C, H, W).
            training: random `crop_size` crop (training) instead of the centre crop.
            return_tensors: `"pt"` (torch), `"np"` or `None` (NumPy arrays).

        Returns:
            `BatchFeature` with `pixel_values` float32 of shape (batch, 3, crop_size, crop_size).

        Raises:
            ValueError: naming the file (or `image i of the batch`) for a missing, unreadable or corrupt file, an
                unsupported extension, a multi-frame DICOM, a wrong number of dimensions or channels, or
                non-finite values.
        """
        items = self._batch_items(images)
        out = []
        for index, item in enumerate(items):
            name = os.fspath(item) if _is_path(item) else f"image {index} of the batch"
            if _is_path(item):
                raw = read_chest_xray(item)
            elif _is_pil_image(item):
                raw = pil_to_array(item)
            else:
                raw = item
            out.append(self._process_image(self._channels_first(raw, name), name, training))
        pixel_values = torch.stack(out)
        if return_tensors != "pt":
            pixel_values = pixel_values.numpy()
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)

    def preprocess(self, images: ImageInput, **kwargs: Any) -> BatchFeature:
        """Same as calling the processor."""
        return self(images, **kwargs)

    @staticmethod
    def _batch_items(images: Any) -> list[Any]:
        if isinstance(images, (np.ndarray, torch.Tensor)):
            if images.ndim == 4:
                return list(images)
            if images.ndim in (2, 3):
                return [images]
            raise ValueError(
                f"image 0 of the batch has {images.ndim} dimensions (shape {tuple(images.shape)}); expected 2 "
                "(H, W), 3 (H, W, C) or (C, H, W), or 4 for a batch"
            )
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError("got an empty list of images")
            return list(images)
        return [images]

    @staticmethod
    def _channels_first(raw: Any, name: str) -> torch.Tensor:
        """(C, H, W) float32 with C in {1, 3}."""
        array = to_array(raw, name)
        shape = tuple(array.shape)
        if array.ndim == 2:
            array = array[None]
        elif array.ndim == 3:
            if shape[-1] in (1, 3, 4):
                array = array.transpose(2, 0, 1)
            elif shape[0] not in (1, 3, 4):
                raise ValueError(f"{name} has shape {shape}: expected (H, W), (H, W, C) or (C, H, W), C = 1, 3 or 4")
            array = array[:3]
        else:
            raise ValueError(f"{name} has {array.ndim} dimensions (shape {shape}); expected (H, W), (H, W, C) or "
                             "(C, H, W)")
        if min(array.shape[-2:]) < 1:
            raise ValueError(f"{name} is empty (shape {shape})")
        return to_float_tensor(array, name)

    def _process_image(self, image: torch.Tensor, name: str, training: bool) -> torch.Tensor:
        """(3, crop_size, crop_size) of a (C, H, W) image."""
        height, width = image.shape[-2:]
        scale = self.resize_size / min(height, width)
        new_h = self.resize_size if height <= width else max(self.resize_size, round(height * scale))
        new_w = self.resize_size if width <= height else max(self.resize_size, round(width * scale))
        if (new_h, new_w) != (height, width):
            low, high = image.amin(), image.amax()
            image = F.interpolate(image[None], size=(new_h, new_w), mode="bicubic", align_corners=False,
                                  antialias=True)[0].clamp(low, high)
        top, left = (new_h - self.resize_size) // 2, (new_w - self.resize_size) // 2
        image = image[:, top:top + self.resize_size, left:left + self.resize_size]
        margin = self.resize_size - self.crop_size
        if training:
            top, left = draw_offset(margin), draw_offset(margin)
        else:
            top = left = margin // 2
        image = image[:, top:top + self.crop_size, left:left + self.crop_size]
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        mean = torch.tensor(self.image_mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32).view(3, 1, 1)
        return ((image * self.rescale_factor - mean) / std).contiguous()


__all__ = ["ChestXrayImageProcessor", "CLIP_MEAN", "CLIP_STD", "read_chest_xray"]

ChestXrayImageProcessor.register_for_auto_class("AutoImageProcessor")
