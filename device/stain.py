# pyright: basic
"""Stain normalization of a cell crop: one function, named in the manifest (``preprocessing.stain``).

Training (after augmentation), int8 calibration, export validation and the device all call
:func:`normalize_stain` on the resized uint8 crop, so every path sees the same pixels.

``"none"``: the crop unchanged (every bundle made before this existed).

``"od_standard"``: a per-crop standardization in optical density (OD = -ln((I + 1) / 256)), on the
cell's own pixels only (a crop's background is black and stays black). Each channel's OD is
centred on the cell's median and divided by one robust spread shared by the channels (the mean of
the channels' interquartile ranges), then mapped onto NIH's typical red cell::

    OD' = TARGET_OD[c] + TARGET_SPREAD * (OD[c] - median[c]) / max(spread, MIN_SPREAD)

Why this form: a tinted lamp or camera white balance multiplies intensities per channel, i.e. adds
a constant per channel in OD; the median removes it, together with the hue of the red cell body
(pink Giemsa, grey-green, magenta all become the same red cell). A stronger or weaker stain
multiplies every pixel's OD (Beer-Lambert); the shared spread removes that. What survives is each
pixel's contrast against its own cell, channel by channel, so dark purple chromatin stays darker
and bluer than the cell around it. The spread is shared so that a channel's relative contrast
(the parasite's hue) is kept, and it is floored so a flat, empty cell is not blown up into texture.
"""

from __future__ import annotations

import numpy as np

from edgekit.manifest import STAIN_METHODS

# NIH's typical red cell, from 400 training crops at 64x64: median cell OD ~ RGB (195, 151, 153),
# and the median of the spread (10th-90th percentile of crops: 0.02-0.08); IML cells: 0.11-0.24.
TARGET_OD = np.array([0.27, 0.52, 0.51], np.float32)
TARGET_SPREAD = np.float32(0.04)
MIN_SPREAD = np.float32(0.02)  # a flat cell's contrast is raised at most 2x
FOREGROUND = 20  # a pixel whose brightest channel exceeds this is cell, not the black background
MIN_PIXELS = 16  # fewer cell pixels than this: nothing to normalize, the crop is returned as is

_OD_LUT = -np.log((np.arange(256, dtype=np.float32) + 1.0) / 256.0)


def normalize_stain(images: np.ndarray, method: str) -> np.ndarray:
    """Normalize uint8 crops (H, W, C) or (N, H, W, C) with ``method``; returns uint8, same shape."""
    if method == "none":
        return images
    if method != "od_standard":
        raise ValueError(f"unknown stain normalization {method!r}; use one of {STAIN_METHODS}")
    if images.dtype != np.uint8:
        raise ValueError(f"stain normalization takes uint8 crops, not {images.dtype}")
    single = images.ndim == 3
    batch = images[None] if single else images
    out = np.stack([_od_standard(img) for img in batch])
    return out[0] if single else out


def _od_standard(img: np.ndarray) -> np.ndarray:
    """One crop. The mapping is a function of each channel's intensity alone, so it is computed once
    per intensity (a 256-entry table per channel, the same float32 arithmetic as pixel by pixel) and
    applied to the cell's pixels with OpenCV; the background is left as it is."""
    import cv2

    h, w, c = img.shape
    if c != 3 or not img.flags.c_contiguous or h * w >= 1 << 24:  # calcHist counts in float32
        return _od_standard_numpy(img)
    bg = cv2.inRange(img, (0, 0, 0), (FOREGROUND,) * 3)  # 255 where no channel is above FOREGROUND
    n = h * w - cv2.countNonZero(bg)
    if n < MIN_PIXELS:
        return img
    cell = cv2.compare(bg, 0, cv2.CMP_EQ)  # scalar operand: cv2 stub too strict # pyright: ignore[reportCallIssue, reportArgumentType]
    ranks = np.array([n // 4, n // 2, (3 * n) // 4])
    q = np.empty((3, c), np.float32)
    for k in range(c):
        cdf = np.cumsum(cv2.calcHist([img], [k], cell, [256], [0, 256]).ravel().astype(np.int64))
        q[:, k] = _OD_LUT[np.searchsorted(cdf, ranks, side="right")]
    return cv2.copyTo(cv2.LUT(img, _mapping(q, c).reshape(1, 256, c)), cell, img.copy())


def _mapping(q: np.ndarray, c: int) -> np.ndarray:
    """(256, C) uint8: what each intensity of each channel becomes, given the cell's OD quartiles
    ``q`` (rows: 25th, 50th, 75th percentile of intensity)."""
    spread = max(float((q[0] - q[2]).mean()), float(MIN_SPREAD))
    target = TARGET_OD[:c] if c == 3 else TARGET_OD.mean(keepdims=True)
    od = target + (_OD_LUT[:, None] - q[1]) * (TARGET_SPREAD / spread)
    return np.clip(np.rint(256.0 * np.exp(-od) - 1.0), 0, 255).astype(np.uint8)


def _od_standard_numpy(img: np.ndarray) -> np.ndarray:
    """:func:`_od_standard` for crops OpenCV's 3-channel route does not take (1 or 4 channels)."""
    c = img.shape[-1]
    cell = img[..., 0] > FOREGROUND
    for k in range(1, c):
        cell |= img[..., k] > FOREGROUND
    pixels = img[cell]  # (n, C) uint8
    n = len(pixels)
    if n < MIN_PIXELS:
        return img
    # quantiles of uint8 values from their histograms (exact order statistics, no sort); OD falls
    # as intensity rises, so the OD median is the intensity median's OD and the IQR is the same
    ranks = np.array([n // 4, n // 2, (3 * n) // 4])
    q = np.empty((3, c), np.float32)
    for k in range(c):
        cdf = np.cumsum(np.bincount(pixels[:, k], minlength=256))
        q[:, k] = _OD_LUT[np.searchsorted(cdf, ranks, side="right")]
    out = img.copy()
    out[cell] = _mapping(q, c)[pixels, np.arange(c)]
    return out
