"""A found cell's crop: its box, black outside its mask, as NIH cut its crops (cut by OpenCV in one
pass): the same pixels as the plain copy-then-blacken cut, on real fields' cells and odd masks."""

from __future__ import annotations

import numpy as np
from device_helpers import fixture_fields

from edgekit.device.field import count_cells, crop_cell
from edgekit.device.field.types import CellBox


def _plain(rgb: np.ndarray, cell: CellBox) -> np.ndarray:
    crop = rgb[cell.y : cell.y + cell.h, cell.x : cell.x + cell.w].copy()
    crop[~cell.mask] = 0
    return crop


def _cell(x: int, y: int, mask: np.ndarray) -> CellBox:
    return CellBox(id=0, x=x, y=y, w=mask.shape[1], h=mask.shape[0], area=int(mask.sum()), mask=mask)


def test_a_cells_crop_is_its_box_black_outside_its_mask():
    rng = np.random.default_rng(0)
    for rgb, _ in fixture_fields():
        cells, _, _ = count_cells(rgb)
        assert cells
        for cell in cells:
            crop = crop_cell(rgb, cell)
            assert crop.dtype == np.uint8 and np.array_equal(crop, _plain(rgb, cell))
        big = rng.random((41, 57)) > 0.5
        odd = [np.zeros((9, 7), bool), np.ones((1, 1), bool), big[::2, ::3], big.T[:20]]
        for mask in odd:  # none, one pixel, masks that are views of others
            cell = _cell(5, 11, mask)
            crop = crop_cell(rgb, cell)
            assert crop.shape == (*mask.shape, 3) and np.array_equal(crop, _plain(rgb, cell))
        assert not np.shares_memory(crop_cell(rgb, _cell(0, 0, np.ones((4, 4), bool))), rgb)
