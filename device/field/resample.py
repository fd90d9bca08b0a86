# pyright: basic
"""Shrinking an 8-bit image by pixel area in integer arithmetic: the same bytes on every CPU.

OpenCV's area interpolation weighs pixels in float when the ratio is not a whole number, and its
arm64 build rounds some pixels otherwise than its x86 one; the cell masks of a field followed, so a
Raspberry Pi drew other cells than the workstation. Here every output pixel is the exact
area-weighted mean of the input pixels it covers (integer weights in units of 1/out of an input
pixel), rounded half up: within one level of OpenCV's result (on about 0.1% of pixels), and
identical everywhere."""

from __future__ import annotations

import numpy as np

from edgekit.device.preprocess import opencv

STRIP_ELEMENTS = 1 << 16  # running sums held at once (a strip of the image at a time: faster in cache)


def _weights(size: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For ``n`` outputs over ``size`` inputs: at each output edge (in units of 1/n input pixel),
    the whole input pixels below it, the units of the next one, and that next one's index."""
    whole, part = np.divmod(np.arange(n + 1, dtype=np.int64) * size, n)
    return whole, part, np.minimum(whole, size - 1)


def _across(img: np.ndarray, n: int) -> np.ndarray:
    """Area sums along the columns of ``img`` (H x W x C uint8) onto ``n`` columns, in units of
    1/n input column (at most 255 x W each: int32), a strip of rows at a time. The running sums
    times n may pass 2**31 on a wide image; they wrap, and their differences, which fit, do not."""
    h, w, c = img.shape
    whole, part, nxt = _weights(w, n)
    part = part[:, None]
    out = np.empty((h, n, c), np.int32)
    step = max(1, STRIP_ELEMENTS // ((w + 1) * c))
    for r in range(0, h, step):
        strip = img[r : r + step].astype(np.int32)
        prefix = np.zeros((len(strip), w + 1, c), np.int32)
        np.cumsum(strip, axis=1, out=prefix[:, 1:])
        integral = prefix[:, whole] * n + part * strip[:, nxt]  # whole columns, then part of the next
        out[r : r + step] = integral[:, 1:] - integral[:, :-1]
    return out


def _down(sums: np.ndarray, n: int) -> np.ndarray:
    """Area sums along the rows of ``sums`` (H x n' x C) onto ``n`` rows, in units of 1/n input
    row, int64, a strip of columns at a time."""
    h, w, c = sums.shape
    whole, part, nxt = _weights(h, n)
    part = part[:, None, None]
    out = np.empty((n, w, c), np.int64)
    step = max(1, STRIP_ELEMENTS // ((h + 1) * c))
    for k in range(0, w, step):
        strip = sums[:, k : k + step].astype(np.int64)
        prefix = np.zeros((h + 1, strip.shape[1], c), np.int64)
        np.cumsum(strip, axis=0, out=prefix[1:])
        integral = prefix[whole] * n + part * strip[nxt]
        out[:, k : k + step] = integral[1:] - integral[:-1]
    return out


def shrink_area(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``img`` (uint8, H x W or H x W x C) shrunk to ``size`` = (width, height) by pixel area, as
    ``cv2.resize(img, size, interpolation=cv2.INTER_AREA)`` but the same on every CPU. Sizes at
    least the input's are not shrinking: callers enlarge otherwise."""
    h, w = img.shape[:2]
    out_w, out_h = size
    if not (0 < out_w <= w and 0 < out_h <= h):
        raise ValueError(f"shrink_area: {w}x{h} cannot shrink to {out_w}x{out_h}")
    if w % out_w == 0 and h % out_h == 0:
        # whole-number ratios: OpenCV's integer path, exact on every CPU (and much faster)
        cv2 = opencv()
        return cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    planes = img if img.ndim == 3 else img[..., None]
    sums = _down(_across(planes, out_w), out_h)  # w x h units per output pixel
    total = w * h
    out = ((sums * 2 + total) // (2 * total)).astype(np.uint8)
    return out if img.ndim == 3 else out[..., 0]


def resize_exact(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``img`` (uint8) at ``size`` = (width, height), the same bytes on every CPU: shrunk by pixel
    area (:func:`shrink_area`), otherwise by OpenCV's bit-exact bilinear interpolation."""
    h, w = img.shape[:2]
    if size[0] <= w and size[1] <= h:
        return shrink_area(img, size)
    cv2 = opencv()
    return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR_EXACT)


def scaled_size(shape: tuple[int, ...], f: float) -> tuple[int, int]:
    """(width, height) of an image of ``shape`` scaled by ``f``, rounded as OpenCV's ``fx``/``fy``."""
    return max(1, round(shape[1] * f)), max(1, round(shape[0] * f))
