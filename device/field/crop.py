# pyright: basic
"""Cutting one found cell out of its field the way the NIH crops were made."""

from __future__ import annotations

import numpy as np

from edgekit.device.field.types import CellBox


def crop_cell(rgb: np.ndarray, cell: CellBox) -> np.ndarray:
    """The cell as NIH cropped it: its tight bounding box, everything outside its mask black."""
    crop = rgb[cell.y : cell.y + cell.h, cell.x : cell.x + cell.w].copy()
    crop[~cell.mask] = 0
    return crop

