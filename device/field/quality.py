"""The field quality gate: fields that cannot be counted, and why."""

from __future__ import annotations

import numpy as np

from edgekit.device.field.segment import _segment
from edgekit.device.field.types import CellBox, FieldParams
from edgekit.device.preprocess import _cv2

MIN_SIDE = 64
MAX_RADIUS_FRACTION = 4  # a typical "cell" wider than a quarter of the field's short side is a pile
MIN_SHARPNESS = 0.15  # Laplacian var per grey std, 640 px wide: BCCD >= 0.28, blurred (sigma 2) <= 0.10


def field_quality(rgb: np.ndarray) -> str | None:
    """The reason this field cannot be counted (blank, overexposed, dark, out of focus), or None."""
    cv2 = _cv2()
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        return f"image too small for a microscope field ({w}x{h})"
    small = rgb if max(h, w) <= 1024 else cv2.resize(rgb, None, fx=1024 / max(h, w), fy=1024 / max(h, w),
                                                     interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    if (small.min(axis=2) >= 250).mean() > 0.5:
        return "overexposed (more than half the field is saturated white)"
    if float(gray.mean()) < 40:
        return "too dark (underexposed or no light)"
    if float(gray.std()) < 3:
        return "blank field (no contrast)"
    if _sharpness(gray, small.shape[1]) < MIN_SHARPNESS:
        return "out of focus"
    return None


def _sharpness(gray: np.ndarray, width: int) -> float:
    """Focus measure: variance of the Laplacian at a 640-px-wide scale, per unit of contrast
    (so a pale, low-contrast but sharp smear is not mistaken for a blurred one)."""
    cv2 = _cv2()
    g = gray
    if width != 640:
        g = cv2.resize(gray, None, fx=640 / width, fy=640 / width, interpolation=cv2.INTER_AREA)
    g = g.astype(np.float32)
    lap = cv2.Laplacian(g, cv2.CV_32F).var()
    return float(lap) / max(float(g.std()), 1.0)


def count_cells(
    rgb: np.ndarray, params: FieldParams | None = None
) -> tuple[list[CellBox], float, str | None]:
    """Quality check, then :func:`find_cells`: (cells, typical radius in pixels, reason or None).
    A reason means the field is not to be counted, and the cell list is then empty."""
    reason = field_quality(rgb)
    if reason:
        return [], 0.0, reason
    cells, radius = _segment(rgb, params or FieldParams())
    if radius > min(rgb.shape[:2]) / MAX_RADIUS_FRACTION:
        # the "cells" are one mass wider than a quarter of the field: cells are piled up
        return [], radius, "cells overlap into one mass (a thick part of the smear); move to a thinner area"
    if not cells:
        return [], radius, "no red cells found"
    return cells, radius, None

