"""The combined transforms of benchmarks/field_transforms.py (``--combos``): the boxes follow the
cells through a change of magnification and size, and every camera step is deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.benchmarks.field_transforms import COMBOS, camera, fade, to_size, transformed, zoom


def _disks(h: int = 240, w: int = 320) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Dark disks of radius 10 on white, and their boxes (max exclusive); some touch the border."""
    rgb = np.full((h, w, 3), 235, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    boxes = []
    for cy, cx in [(30, 40), (120, 160), (200, 280), (5, 150), (120, 315), (230, 8)]:
        rgb[(yy - cy) ** 2 + (xx - cx) ** 2 <= 100] = 60
        boxes.append((cx - 10, cy - 10, cx + 11, cy + 11))
    return rgb, boxes


def _dark_inside(rgb: np.ndarray, boxes: list) -> float:
    """The fraction of boxes whose centre pixel is dark (a disk)."""
    return float(np.mean([rgb[(b[1] + b[3]) // 2, (b[0] + b[2]) // 2, 0] < 150 for b in boxes]))


@pytest.mark.parametrize("factor", [0.6, 0.8, 1.25])
def test_zoom_moves_the_boxes_with_the_cells(factor):
    rgb, boxes = _disks()
    out, (moved,) = zoom(rgb, [boxes], factor)
    assert out.shape == rgb.shape
    assert _dark_inside(out, moved) == 1.0
    # the cells' size follows the factor (mirror images included when zoomed out)
    h, w = rgb.shape[:2]
    sizes = [b[2] - b[0] for b in moved if b[0] > 0 and b[2] < w and b[1] > 0 and b[3] < h]
    assert np.median(sizes) == pytest.approx(21 * factor, abs=1.5)
    if factor < 1:  # the mirror images are boxed too: more cells in the same pixels
        assert len(moved) > len(boxes)


def test_to_size_and_camera():
    rgb, boxes = _disks()
    out, (moved,) = to_size(rgb, [boxes], 800)
    assert out.shape[:2] == (600, 800) and _dark_inside(out, moved) == 1.0
    cam = camera(75)
    assert np.array_equal(cam(rgb), cam(rgb))  # seeded by the field: the same noise each run
    assert not np.array_equal(cam(rgb), rgb)


def test_fade_keeps_the_background_and_pales_the_cells():
    rgb, _ = _disks()
    pale = fade(rgb, 0.5)
    assert pale[0, 300, 0] == 235  # background
    assert 60 < pale[120, 160, 0] < 150  # a disk: sqrt(60/235) x 235 ~ 119


def test_every_combination_runs():
    rgb, boxes = _disks()
    for name in COMBOS:
        out, gt, ignore = transformed(name, rgb, boxes, [])
        assert out.shape == (1200, 1600, 3) and out.dtype == np.uint8 and gt and ignore == [], name
