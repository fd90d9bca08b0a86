# pyright: basic
"""Cutting one found cell out of its field the way the NIH crops were made."""

from __future__ import annotations

import numpy as np

from edgekit.device.field.types import CellBox
from edgekit.device.preprocess import opencv


def crop_cell(rgb: np.ndarray, cell: CellBox) -> np.ndarray:
    """The cell as NIH cropped it: its tight bounding box, everything outside its mask black. Copied
    through the mask by OpenCV in one pass (a copy, then black set by a boolean index: 4.5x the CPU,
    ~4 ms of a 1280x960 field's 140 cells)."""
    box = rgb[cell.y : cell.y + cell.h, cell.x : cell.x + cell.w]
    if not box.size or box.shape[:2] != cell.mask.shape:
        crop = box.copy()
        crop[~cell.mask] = 0
        return crop
    cv2 = opencv()
    return cv2.copyTo(box, cell.mask.view(np.uint8), np.zeros_like(box))
