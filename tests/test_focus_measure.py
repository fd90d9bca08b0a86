"""The focus measure itself (issue 22): sensor noise does not make a blurred field look sharp, and
the cells' radius it can work at follows the field's scale, not its blur."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.benchmarks.field_transforms import rescale
from edgekit.device.field.focus import FOCUS_FLOOR, FocusMeasure, focus_reason, focus_score
from edgekit.device.preprocess import read_image

FIELDS = sorted((Path(__file__).parent / "fixtures" / "fields").glob("*.jpg"))


def _blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(rgb, (0, 0), sigma)


def _noisy(rgb: np.ndarray, std: float = 4.0) -> np.ndarray:
    noise = np.random.default_rng(0).normal(0, std, rgb.shape)
    return np.clip(rgb + noise, 0, 255).astype(np.uint8)


def test_noisy_blurred_field_is_refused_and_noisy_sharp_one_is_not():
    for path in FIELDS:
        rgb = read_image(path)
        assert focus_reason(focus_score(_noisy(rgb))) is None, path.name
        for sigma in (2.0, 3.0, 4.0):
            score = focus_score(_noisy(_blur(rgb, sigma)))
            assert score < FOCUS_FLOOR, (path.name, sigma, score)
            # without the noise correction, the noise lifts the blurred field's score
            assert focus_score(_noisy(_blur(rgb, sigma)), measure=FocusMeasure()) > score


def test_cell_radius_follows_scale_not_blur():
    from edgekit.device.field.segment import cell_radius

    rgb = read_image(FIELDS[0])
    r = cell_radius(rgb)
    assert r > 10
    assert abs(cell_radius(rescale(rgb, 1.5)) / (1.5 * r) - 1) < 0.1
    assert abs(cell_radius(_blur(rgb, 3.0)) / r - 1) < 0.35  # a blurred clump can read as one circle


def test_cell_scale_measure_judges_a_zoomed_field_closer_to_the_original():
    m = FocusMeasure(42.0, noise=True)
    for path in FIELDS:
        rgb = read_image(path)
        zoomed = rescale(rgb, 1.5)
        # at pixel scale the zoomed field looks much softer; at the cell scale much less so
        assert focus_score(zoomed) < 0.75 * focus_score(rgb), path.name
        assert focus_score(zoomed, measure=m) > 1.2 * focus_score(zoomed), path.name
