"""The focus measure itself (issue 22): sensor noise, also after JPEG, does not make a blurred field
look sharp, and the cells' radius it can work at follows the field's scale, not its blur."""

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
        for std in (4.0, 8.0):
            assert focus_reason(focus_score(_noisy(rgb, std))) is None, (path.name, std)
            for sigma in (2.0, 3.0, 4.0):
                score = focus_score(_noisy(_blur(rgb, sigma), std))
                assert score < FOCUS_FLOOR, (path.name, sigma, std, score)
                # without the noise correction, the noise lifts the blurred field's score
                assert focus_score(_noisy(_blur(rgb, sigma), std), measure=FocusMeasure()) > score


def test_noise_does_not_choose_the_edges():
    """Edges chosen on the smoothed gradient: strong sensor noise (std 8) moves a blurred field's
    score little; chosen on the gradient itself (the previous measures), it lifts the score well
    above the same field without noise."""
    from dataclasses import replace

    from edgekit.device.field.focus import FOCUS_MEASURE

    assert FOCUS_MEASURE.select > 0
    on_gradient = replace(FOCUS_MEASURE, select=0)
    for path in FIELDS:
        blurred = _blur(read_image(path), 2.0)
        clean, noisy = focus_score(blurred), focus_score(_noisy(blurred, 8.0))
        assert abs(noisy - clean) < 0.25 * clean, (path.name, clean, noisy)
        clean0, noisy0 = (focus_score(x, measure=on_gradient) for x in (blurred, _noisy(blurred, 8.0)))
        assert noisy0 > 1.5 * clean0, (path.name, clean0, noisy0)


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    import cv2

    encoded = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
    return cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)


def test_noise_that_went_through_jpeg_is_not_read_as_focus():
    """JPEG removes the finest sensor noise (what the median Laplacian sees) and keeps the coarser,
    which the edge ratio read as sharp detail: blurred noisy copies re-encoded passed the floor.
    With the noise read from the flattest blocks they are refused and the sharp copies are not;
    with the Laplacian estimate (``flat=0``) the same blurred copies score far higher."""
    from dataclasses import replace

    from edgekit.device.field.focus import FOCUS_MEASURE

    assert FOCUS_MEASURE.flat > 0
    laplacian = replace(FOCUS_MEASURE, flat=0.0)
    for path in FIELDS:
        rgb = read_image(path)
        for std in (6.0, 8.0):
            for quality in (60, 90):
                assert focus_reason(focus_score(_jpeg(_noisy(rgb, std), quality))) is None, path.name
                for sigma in (2.0, 4.0):
                    copy = _jpeg(_noisy(_blur(rgb, sigma), std), quality)
                    score = focus_score(copy)
                    assert score < FOCUS_FLOOR, (path.name, std, quality, sigma, score)
                    assert focus_score(copy, measure=laplacian) > 1.5 * score, (path.name, std, quality)


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


def test_profile_lowers_a_blurred_field_more_than_its_sharp_original():
    """The profile (the edge ratio again at half size) never raises the score, and it lowers a
    blurred copy more than the focused field it came from: blurred as a whole, its edges are clean
    and wide at half size, while a focused field keeps its fine detail."""
    from edgekit.device.field.focus import FOCUS_MEASURE, combine, edge_ratios

    assert FOCUS_MEASURE.profile > 0
    for path in FIELDS:
        rgb = read_image(path)
        full, half = edge_ratios(rgb)
        b_full, b_half = edge_ratios(_noisy(_blur(rgb, 2.0)))
        assert half is not None and b_half is not None
        assert focus_score(rgb) == combine(full, half, FOCUS_MEASURE.profile) <= full, path.name
        assert b_full / b_half < 0.9 * (full / half), (path.name, full / half, b_full / b_half)
