# pyright: basic
"""Image decoding and the one preprocessing function shared by training, export and the device.

Every path that turns a file into a model input (training cache, int8 calibration, validation,
``edgekit classify``) goes through :func:`load_for_model`, so a crop is resized identically
everywhere; its output is uint8 pixels. :func:`model_input` then applies the manifest's scaling
(none for edgekit's own models, whose graph scales; ``(pixel * scale - mean) / std`` for imported
ones) just before the model runs, so caches and quality checks stay in pixels.

Decoding handles what field images come as: 8/16-bit, grayscale, RGBA (composited over black,
like the NIH crops' background), palette, EXIF-rotated JPEGs, and optional DICOM. Files are read
through :mod:`edgekit.device.decoding`: regular files only, oversized images refused from their
header before any pixel or metadata block is decoded, truncated or corrupt images refused.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit.errors import ImageError

if TYPE_CHECKING:
    from edgekit.manifest import Preprocessing

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".dcm")
DEFAULT_MAX_PIXELS = 50_000_000  # ~50 MP: a phone photo passes, a 20000x20000 scan does not



def opencv():
    """OpenCV, imported on first use."""
    import cv2  # deferred: importing OpenCV costs ~0.1 s and `--help` needs none of it

    return cv2


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """``img`` turned upright as EXIF ``orientation`` (1-8) says."""
    cv2 = opencv()
    if orientation == 2:
        return cv2.flip(img, 1)
    if orientation == 3:
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(img, 0)
    if orientation == 5:
        return cv2.flip(cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE), 1)
    if orientation == 6:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE), 1)
    if orientation == 8:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img


def _to_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    floating = np.issubdtype(img.dtype, np.floating)
    img = np.nan_to_num(img.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(img.min()), float(img.max())
    if floating and 0.0 <= lo and hi <= 1.0:
        return np.round(img * 255.0).astype(np.uint8)  # float pixels in 0..1 (a float TIFF): as they are
    if hi <= lo:
        return np.zeros(img.shape, np.uint8)
    return np.clip((img - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def _read_dicom(path: Path, max_pixels: int, data: bytes | None = None) -> np.ndarray | None:
    """A DICOM file's pixels (``data``: its bytes, already read); None when the file is no DICOM,
    whatever its name (no ``DICM`` after the 128-byte preamble, which pydicom needs too): it is then
    decoded as the image it is."""
    from edgekit.device.decoding import read_file_bytes

    data = read_file_bytes(path) if data is None else data
    if data[128:132] != b"DICM":
        return None
    try:
        import pydicom
    except ImportError as exc:
        raise ImageError("DICOM needs pydicom: pip install 'edgekit[dicom]'") from exc
    try:
        head = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        rows, cols = int(head.Rows), int(head.Columns)
        if rows * cols > max_pixels:
            raise ImageError(f"image too large ({cols}x{rows})")
        ds = pydicom.dcmread(io.BytesIO(data))
        arr = ds.pixel_array
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"unreadable DICOM ({exc})") from exc
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        arr = arr.max() - arr
    arr = _to_uint8(np.asarray(arr))
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
               sha256: str | None = None) -> np.ndarray:
    """Decode an image file into an RGB uint8 array of shape (H, W, 3), turned upright as its EXIF
    orientation says. ``sha256``: refuse the file unless its bytes still have this hash (the one a
    screening record of it is keyed on).

    Raises :class:`ImageError` with a short reason for anything unusable.
    """
    return apply_orientation(*read_image_as_stored(path, max_pixels, sha256))


def read_image_as_stored(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
                         sha256: str | None = None, data: bytes | None = None) -> tuple[np.ndarray, int]:
    """:func:`read_image` before the turn: (the RGB pixels as the file stores them, its EXIF
    orientation 1-8), for boxes that may have been drawn on either picture. ``data``: the file's
    bytes, already read (:func:`image_from_bytes`)."""
    from edgekit.device.decoding import decode_bounded, decode_data

    path = Path(path)
    if path.suffix.lower() == ".dcm" and (dicom := _read_dicom(path, max_pixels, data)) is not None:
        return dicom, 1
    # a regular file, strict and bounded, read here or by the caller
    img, orientation = (decode_bounded(path, max_pixels, sha256=sha256) if data is None
                        else decode_data(data, max_pixels))
    return _stored_rgb(img), orientation


def image_from_bytes(path: str | os.PathLike, data: bytes,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """:func:`read_image` of the bytes already read from ``path`` (by
    :func:`~edgekit.device.decoding.read_file_bytes`; ``path`` names the format and the file): a
    caller that hashes the bytes too reads the file once, and its hash is of exactly the pixels
    decoded."""
    return apply_orientation(*read_image_as_stored(path, max_pixels, data=data))


def _stored_rgb(img: np.ndarray) -> np.ndarray:
    """A decoded ``IMREAD_UNCHANGED`` array as RGB uint8 (H, W, 3)."""
    cv2 = opencv()
    img = _to_uint8(img)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        if not img[:, :, 3].any():  # else refused as "too dark" or "blank": the pixels were never seen
            raise ImageError("fully transparent (alpha 0 everywhere): nothing in it can be seen")
        alpha = img[:, :, 3:4].astype(np.uint16)
        bgr = (img[:, :, :3].astype(np.uint16) * alpha + 127) // 255  # over black
        img = cv2.cvtColor(bgr.astype(np.uint8), cv2.COLOR_BGR2RGB)
    elif img.shape[2] == 3:  # in place where it may: a whole field's copy less at its peak
        own = img.flags.writeable and img.flags.c_contiguous
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img if own else None)
    else:
        img = cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(img)


def _interpolation(method: str) -> int:
    cv2 = opencv()
    return {
        "area": cv2.INTER_AREA,
        "bilinear": cv2.INTER_LINEAR,
        "nearest": cv2.INTER_NEAREST,
        "bicubic": cv2.INTER_CUBIC,
    }[method]


def prepare(rgb: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Turn a decoded RGB uint8 image into the model's uint8 input (H, W, C), without batch axis:
    resize, the manifest's stain normalization (device/stain.py), then the colour order."""
    cv2 = opencv()
    h, w = pre.input_size
    if rgb.shape[:2] != (h, w):
        rgb = cv2.resize(rgb, (w, h), interpolation=_interpolation(pre.resize))
    if pre.stain != "none":
        from edgekit.device.stain import normalize_stain

        rgb = normalize_stain(rgb, pre.stain)
    if pre.channels == 1 or pre.color_order == "GRAY":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]
    if pre.color_order == "BGR":
        return np.ascontiguousarray(rgb[:, :, ::-1])
    return rgb


def model_input(batch: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """uint8 pixels from :func:`prepare` (..., C) -> what the model takes: unchanged when the model
    scales itself (``scaling == "in_model"``), else float32 ``(pixel * scale - mean) / std``."""
    if pre.scaling == "in_model":
        return batch
    mean = np.asarray(pre.mean, np.float32)
    std = np.asarray(pre.std, np.float32)
    return ((batch.astype(np.float32) * np.float32(pre.scale) - mean) / std).astype(np.float32)


def load_for_model(
    path: str | os.PathLike, pre: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode ``path`` and prepare it for the model described by ``pre``."""
    return prepare(read_image(path, max_pixels), pre)
