# pyright: basic
"""OpenCV's 8-bit RGB -> CIE Lab (``cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)`` of uint8), bit for bit, in numpy.

OpenCV's first Lab conversion in a process builds all of its colour tables (float and 16-bit ones
included): 50-100 ms of CPU, most of a cold start's first result. Its uint8 path itself needs only
three small tables: the sRGB gamma (256 entries, 3 fractional bits), the fixed-point XYZ matrix
(12 bits, white point divided out) and the cube root (3072 entries, 15 bits). Built here in
under a millisecond with OpenCV's own float32 arithmetic; equal to ``cvtColor`` on all 2**24
colours (tests/test_lab.py). About 5x slower per pixel than OpenCV once its tables exist, so
:mod:`edgekit.device.domain` uses it only until they do.
"""

from __future__ import annotations

import numpy as np

_GAMMA_SHIFT, _XYZ_SHIFT = 3, 12
_LAB_SHIFT = _XYZ_SHIFT + _GAMMA_SHIFT  # OpenCV's lab_shift2
_SRGB_TO_XYZ = ((0.412453, 0.357580, 0.180423),
                (0.212671, 0.715160, 0.072169),
                (0.019334, 0.119193, 0.950227))
_D65 = (0.950456, 1.0, 1.088754)
_L_SCALE = (116 * 255 + 50) // 100
_L_SHIFT = -((16 * 255 * (1 << _LAB_SHIFT) + 50) // 100)
_HALF = 1 << (_LAB_SHIFT - 1)

_tables: tuple[np.ndarray, np.ndarray] | None = None


def _build() -> tuple[np.ndarray, np.ndarray]:
    """(per XYZ row and RGB channel, the fixed-point product of each 8-bit value: (3, 3, 256) int32,
    the rounding half folded into the first channel; the cube-root table: (3072,) int32)."""
    x = np.arange(256) / 255.0
    linear = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    gamma = np.rint(255.0 * (1 << _GAMMA_SHIFT) * linear).astype(np.int32)
    coeffs = np.rint((1 << _XYZ_SHIFT) * np.array(_SRGB_TO_XYZ) / np.array(_D65)[:, None]).astype(np.int32)
    products = gamma[None, None, :] * coeffs[:, :, None]
    products[:, 0, :] += 1 << (_XYZ_SHIFT - 1)
    f32 = np.float32
    t = np.arange(256 * 3 // 2 * (1 << _GAMMA_SHIFT)).astype(f32) * (f32(1) / f32(255 * (1 << _GAMMA_SHIFT)))
    f = np.where(t < f32(0.008856), t * f32(7.787) + f32(0.13793103448275862), np.cbrt(t))
    cbrt = np.rint(f32(1 << _LAB_SHIFT) * f).astype(np.int32)
    return products, cbrt


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """``cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)`` of an RGB uint8 array (..., 3), same shape and values."""
    global _tables
    if _tables is None:
        _tables = _build()
    products, cbrt = _tables
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    fx, fy, fz = (cbrt[(products[k, 0][r] + products[k, 1][g] + products[k, 2][b]) >> _XYZ_SHIFT]
                  for k in range(3))
    out = np.empty(rgb.shape, np.uint8)
    ab = (128 << _LAB_SHIFT) + _HALF
    lab = (_L_SCALE * fy + (_L_SHIFT + _HALF), 500 * (fx - fy) + ab, 200 * (fy - fz) + ab)
    for c, value in enumerate(lab):
        np.clip(value >> _LAB_SHIFT, 0, 255, out=out[..., c], casting="unsafe")
    return out
