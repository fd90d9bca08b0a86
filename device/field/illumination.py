# pyright: basic
"""Uneven lighting (a lamp off centre, a phone's vignette at the eyepiece): the background's brightness
across the field, and the field with it flattened for the cell finder.

The finder draws one stained/unstained line for the whole field; where the lamp is dimmer the
background crosses it and cells merge or grow. A field whose background dims by more than
``FieldParams.max_falloff`` towards any part is divided by its lighting, estimated from its own
background (the brightest pixels of each block, a smooth quadratic surface fitted to them); a field lit
more evenly is left untouched, bit for bit."""

from __future__ import annotations

import numpy as np

from edgekit.device.field.resample import resize_exact, scaled_size
from edgekit.device.order import median, percentile
from edgekit.device.preprocess import opencv

GRID = 12  # blocks along the field's longer side where the background is read
BLOCK = 16  # pixels a block, on the copy the lighting is read from (GRID x BLOCK on its longer side)
BACKGROUND_PERCENTILE = 90  # a block's background: its brightest pixels (cells are darker)
FIT_ROUNDS = 3  # refits, each dropping the blocks far darker than the surface (crowded blocks)
LIGHT_STEPS = 1 << 15  # the lighting's fixed-point steps (a 255 level moves by at most 0.004 of a level)


def _design(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(x), x, y, x * x, y * y, x * y], axis=-1)


def lighting(rgb: np.ndarray, max_falloff: float = 0.0) -> np.ndarray | None:
    """The field's relative lighting (H, W) float32, 1 at its brightest, or None when it stays within
    ``max_falloff`` of that everywhere (evenly lit) or the field is too small to tell."""
    cv2 = opencv()
    h, w = rgb.shape[:2]
    side = GRID * BLOCK
    scale = side / max(h, w)
    sw, sh = scaled_size(rgb.shape, scale)
    if sh < 2 * BLOCK or sw < 2 * BLOCK:
        return None
    grey = resize_exact(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (sw, sh))
    ny, nx = sh // BLOCK, sw // BLOCK
    blocks = grey[: ny * BLOCK, : nx * BLOCK].reshape(ny, BLOCK, nx, BLOCK).transpose(0, 2, 1, 3)
    level = percentile(blocks.reshape(ny, nx, -1), BACKGROUND_PERCENTILE, axis=2).ravel()
    cy, cx = np.mgrid[0:ny, 0:nx]
    a = _design(((cx.ravel() + 0.5) * BLOCK) / sw * 2 - 1, ((cy.ravel() + 0.5) * BLOCK) / sh * 2 - 1)
    # start from the brighter half of the blocks: a stained mass or a crowded part is darker, never brighter
    keep = (level > 0) & (level >= median(level))
    coef = np.zeros(a.shape[1])
    for _ in range(FIT_ROUNDS):
        if keep.sum() < a.shape[1] * 2:
            return None
        coef, *_ = np.linalg.lstsq(a[keep], level[keep], rcond=None)
        resid = level - a @ coef
        spread = 1.4826 * float(median(np.abs(resid[keep]))) + 1.0
        keep = resid > -2.5 * spread  # blocks without background read darker than the lamp
    xx, yy = np.meshgrid(np.linspace(-1, 1, sw), np.linspace(-1, 1, sh))
    surface = _design(xx, yy) @ coef
    top = float(surface.max())
    if top <= 0 or 1 - float(surface.min()) / top <= max_falloff + 1e-6:  # (+ rounding of the fit)
        return None
    # in fixed point, enlarged by OpenCV's bit-exact bilinear resize: the same lighting on every CPU
    # (its float resize differs in the last bit between x86 and arm64, and so did the flattened field)
    fixed = np.rint(np.clip(surface / top, 0.2, 1.0) * LIGHT_STEPS).astype(np.uint16)
    light = cv2.resize(fixed, (w, h), interpolation=cv2.INTER_LINEAR_EXACT)
    return light.astype(np.float32) / np.float32(LIGHT_STEPS)


def falloff(rgb: np.ndarray) -> float:
    """How far the field's lighting dims from its brightest point (0: even)."""
    light = lighting(rgb)
    return 0.0 if light is None else float(1 - light.min())


def flatten(rgb: np.ndarray, light: np.ndarray) -> np.ndarray:
    """``rgb`` divided by its relative lighting (a new uint8 array)."""
    return np.clip(rgb.astype(np.float32) / light[..., None] + 0.5, 0, 255).astype(np.uint8)
