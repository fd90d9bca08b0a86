"""The cell finder on other stain shades, exposures and magnifications (issue 29).

The two BCCD fixture fields, transformed as another site's fields may look: hue rotated towards
blue, desaturated, a white background, scaled. The finder keys on optical density along each
field's own stain colour, not on a colour window; the earlier green-density finder
(``FieldParams.legacy()``) is run on the same fields to show the hue tests can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
from device_helpers import fixture_fields

from edgekit.benchmarks.field_detection import match
from edgekit.benchmarks.field_transforms import brighten, desaturate, fade, rescale, rotate_hue
from edgekit.device.field import FieldParams, count_cells

_fields = fixture_fields


def _recall(rgb: np.ndarray, gt: list, params: FieldParams | None = None, k: float = 1.0):
    cells, _, reason = count_cells(np.ascontiguousarray(rgb), params)
    boxes = [tuple(round(v * k) for v in b) for b in gt]
    return match([c.box for c in cells], boxes) / len(gt), reason


def test_blue_stain_is_found_where_the_colour_window_fails():
    transform = lambda x: rotate_hue(x, -80)  # noqa: E731
    for rgb, gt in _fields():
        base, _ = _recall(rgb, gt)
        recall, reason = _recall(transform(rgb), gt)
        assert reason is None
        assert recall >= base - 0.10 and recall >= 0.65, (base, recall)
    # the green-density finder on the same fields: refused or far below (this test can fail)
    legacy = [_recall(transform(rgb), gt, FieldParams.legacy()) for rgb, gt in _fields()]
    assert all(reason is not None or r < 0.5 for r, reason in legacy), legacy


def test_blue_grey_cells_on_white():
    """Like the fields of issue 29: blue-grey cells, paler, on a white background."""
    for rgb, gt in _fields():
        base, _ = _recall(rgb, gt)
        recall, reason = _recall(brighten(desaturate(rotate_hue(rgb, -80), 0.5)), gt)
        assert reason is None
        assert recall >= base - 0.15 and recall >= 0.6, (base, recall)


@pytest.mark.parametrize("name, transform, k", [
    ("hue -40", lambda x: rotate_hue(x, -40), 1.0),
    ("hue +90", lambda x: rotate_hue(x, 90), 1.0),
    ("desaturated to 30%", lambda x: desaturate(x, 0.3), 1.0),
    ("grey", lambda x: desaturate(x, 0.0), 1.0),
    ("scaled 0.7x", lambda x: rescale(x, 0.7), 0.7),
    pytest.param("scaled 1.5x", lambda x: rescale(x, 1.5), 1.5, marks=pytest.mark.xfail(
        strict=True, reason="the default focus measure (device/field/focus.py) works at pixel scale: "
                            "a BCCD field interpolated 1.5x up is refused as out of focus (below "
                            "FOCUS_FLOOR). The cell-scale measure (FocusMeasure(42, noise=True)) passes it "
                            "but lets sigma-2 blurred NIH-like fields through, so it is not the "
                            "default (issues 22, 29; benchmarks/focus_floor.py compares them)")),
])
def test_other_shades_and_magnifications(name, transform, k):
    for rgb, gt in _fields():
        base, _ = _recall(rgb, gt)
        recall, reason = _recall(transform(rgb), gt, k=k)
        assert reason is None, name
        assert recall >= base - 0.10 and recall >= 0.65, (name, base, recall)


@pytest.mark.parametrize("name, transform", [
    ("grey-pale", lambda x: brighten(fade(desaturate(x, 0.15), 0.5))),
    ("pale on white", lambda x: brighten(fade(x, 0.5))),
])
def test_pale_stain_on_a_white_background(name, transform):
    """Half the stain on a whitened background (``--combos``' ``grey-pale``): the cells' edges,
    rims and pale parts fall under a fixed density floor (``min_od``), so cells were cut small or
    lost (recall 0.62 and 0.73 on the two fields, against 0.81 and 0.93); the floor now follows the
    field's own background noise (``noise_floor``)."""
    for rgb, gt in _fields():
        base, _ = _recall(rgb, gt)
        recall, reason = _recall(transform(rgb), gt)
        assert reason is None
        assert recall >= base - 0.07, (name, base, recall)


def test_the_density_floor_follows_the_background_noise():
    """The background's level and noise (:attr:`_Density.background`) are read below its mode,
    where cells add nothing: on a field of noise and dense discs, the noise's own sigma; the floor
    follows them only on a pale field."""
    from edgekit.device.field import segment

    rng = np.random.default_rng(0)
    along = rng.normal(0.01, 0.004, (240, 320)).astype(np.float32)
    yy, xx = np.mgrid[:240, :320]
    for cy, cx in [(60, 80), (60, 200), (170, 120), (170, 250)]:
        along[(yy - cy) ** 2 + (xx - cx) ** 2 < 40**2] += 0.1
    scale = 400.0  # the discs at 0.11 OD: 44 units, the fixed floor (0.05 OD) at 20
    d = segment._Density(np.clip(along * scale, 0, 255).astype(np.uint8), scale, along)
    level, noise = d.background
    blurred = float(np.std(segment.opencv().GaussianBlur(along[:16], (5, 5), 0)[2:-2, 2:-2])) * scale
    assert level == pytest.approx(4, abs=1) and noise == pytest.approx(blurred, rel=0.25), (level, noise)
    p = FieldParams()
    quiet = max(segment.FAINTEST * scale, level + p.noise_floor * noise)
    assert quiet < d.otsu * p.threshold < p.min_od * scale
    assert segment._floor(d, p) == pytest.approx(quiet)
    assert segment._floor(d, FieldParams(noise_floor=0)) == pytest.approx(p.min_od * scale)
    # nothing stands clear of the noise (a blank field's lamp gradient): the fixed floor holds
    flat = segment._Density(np.clip(along * scale, 0, 255).astype(np.uint8), scale, along * 0 + 0.01)
    flat.__dict__["background"] = (4.0, 10.0)  # noise as wide as the threshold's distance
    assert segment._floor(flat, p) == pytest.approx(p.min_od * scale)
    # a field whose stain is plainly denser than min_od (at under pale_floor x its threshold) keeps it
    dense = segment._Density(np.where(along > 0.05, 200, 0).astype(np.uint8), 500.0, along)
    assert dense.otsu * p.threshold * p.pale_floor > p.min_od * 500
    assert segment._floor(dense, p) == pytest.approx(p.min_od * 500)


@pytest.mark.parametrize("lamp", ["gradient", "vignette"])
def test_a_blank_field_under_an_uneven_lamp_has_no_cells(lamp):
    """A cell-free field's densest tenth is a lamp's gradient or vignette (0.02 OD), so it counts as
    "pale": the noise floor must not turn the gradient into cells (with the floor at the background
    plus 4x its noise alone, 413 "cells" on the gradient, 258 on the vignette)."""
    import cv2

    rng = np.random.default_rng(1)
    h, w = 960, 1280
    yy, xx = np.mgrid[:h, :w]
    if lamp == "gradient":
        light = 0.85 + 0.15 * xx / w
    else:
        light = 1 - 0.3 * ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (h * h / 4 + w * w / 4)
    rgb = np.array([232, 228, 236], np.float32) * light[..., None] + rng.normal(0, 2, (h, w, 3))
    rgb = cv2.imdecode(cv2.imencode(".jpg", np.clip(rgb, 0, 255).astype(np.uint8),
                                    [cv2.IMWRITE_JPEG_QUALITY, 80])[1], cv2.IMREAD_UNCHANGED)
    cells, _, reason = count_cells(rgb)
    assert not cells and reason == "no red cells found", (len(cells), reason)


def test_white_background_is_not_overexposed():
    """A lamp turned up whitens the background: cells still visible are counted, not refused."""
    for rgb, gt in _fields():
        bright = brighten(rgb, 40)
        white = (bright.min(axis=2) >= 250).mean()
        assert white > 0.5  # the old gate refused any field more than half saturated white
        recall, reason = _recall(bright, gt)
        assert reason is None and recall >= 0.55, (white, recall)


def test_washed_out_field_is_overexposed():
    rgb = _fields()[0][0]
    washed = np.clip(rgb.astype(np.int32) + 120, 0, 255).astype(np.uint8)
    washed[(washed.min(axis=2) >= 235)] = 255
    _, _, reason = count_cells(washed)
    assert reason is not None and "overexposed" in reason


def test_bad_finder_settings_say_so():
    with pytest.raises(ValueError, match="density must be 'stain' or 'green'"):
        FieldParams(density="blue")
    with pytest.raises(ValueError, match="background must be"):
        FieldParams(background="median")


def _small_cells_field(radius: int = 24, seed: int = 0) -> tuple[np.ndarray, list]:
    """A 1600x1200 field of blue-grey discs on a pale background, many touching, each ``radius`` px: a
    lower magnification than the shared fields (in the 640-px working copy a disc is under the
    short side / 30 that the circles sizing the cells start at)."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = 1200, 1600
    rgb = np.empty((h, w, 3), np.float32)
    rgb[:] = (236, 238, 240)
    yy, xx = np.mgrid[:h, :w]
    boxes = []
    step = int(2.2 * radius)  # many cells touch
    for cy in range(radius + 6, h - radius - 6, step):
        for cx in range(radius + 6, w - radius - 6, step):
            j = radius // 4
            y, x = cy + rng.integers(-j, j + 1), cx + rng.integers(-j, j + 1)
            r = radius * rng.uniform(0.9, 1.1)
            win = np.s_[y - 30 : y + 31, x - 30 : x + 31]
            d2 = (yy[win] - y) ** 2 + (xx[win] - x) ** 2
            patch = rgb[win]
            patch[d2 < r**2] = (150, 162, 186)
            patch[d2 < (0.4 * r) ** 2] = (175, 184, 202)  # the pale centre
            boxes.append((int(x - r), int(y - r), int(x + r) + 1, int(y + r) + 1))
    rgb += rng.normal(0, 2.0, rgb.shape)
    return cv2.GaussianBlur(np.clip(rgb, 0, 255).astype(np.uint8), (3, 3), 0), boxes


def test_cells_smaller_than_the_first_circles_are_sized_and_found():
    """Issue 29's foreign microscope at a lower magnification: cells under the first circles'
    floor are sized by the second search (``small_circles``); without it the radius comes from
    circles twice the cells' size, and most cells are missed."""
    rgb, boxes = _small_cells_field()
    cells, radius, reason = count_cells(rgb)
    assert reason is None
    assert 0.85 * 24 <= radius <= 1.2 * 24, radius
    # before: a radius of 134 px from four large circles, 2 "cells", none matched
    assert match([c.box for c in cells], boxes) >= 0.8 * len(boxes)
    assert len(cells) <= 1.1 * len(boxes)


def _count_circle_searches(monkeypatch) -> list:
    """The floor of every circle search the finder runs from here on (appended as they run)."""
    from edgekit.device.field import segment

    floors = []
    search = segment._circle_radii

    def counted(d, floor, ceiling=4):
        floors.append(floor)
        return search(d, floor, ceiling)

    monkeypatch.setattr(segment, "_circle_radii", counted)
    return floors


def test_small_cells_are_found_on_a_finer_copy(monkeypatch):
    """Cells the smaller-circle search sized at ~10 px in the 640-px working copy are found on a
    larger copy (``fine_cells``), where the finder's pixel-sized blur and opening no longer merge
    or drop them: before, 85% of these cells matched; the radius is the same either way. The
    larger copy takes its size from the circles already measured: no circle search runs twice."""
    from edgekit.device.field import segment

    floors = _count_circle_searches(monkeypatch)
    rgb, boxes = _small_cells_field()
    cells, radius, reason = count_cells(rgb)
    assert floors == [segment.CIRCLE_FLOOR, FieldParams().small_floor], floors
    assert reason is None and 0.85 * 24 <= radius <= 1.2 * 24, radius
    assert match([c.box for c in cells], boxes) >= 0.92 * len(boxes)
    assert len(cells) <= 1.05 * len(boxes)


def _large_cells_field(seed: int = 0) -> tuple[np.ndarray, list]:
    """A 1600x1200 field of 20 large discs (radius 70-130 px, pale centres), apart: like BCCD's few
    large cells, whose circles do not agree on one size (spread over ``circle_spread``)."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = 1200, 1600
    rgb = np.empty((h, w, 3), np.float32)
    rgb[:] = (236, 238, 240)
    yy, xx = np.mgrid[:h, :w]
    boxes = []
    for cy in range(150, h - 100, 300):
        for cx in range(150, w - 100, 300):
            r = 100 * rng.uniform(0.7, 1.3)
            y, x = cy + rng.integers(-20, 21), cx + rng.integers(-20, 21)
            d2 = (yy - y) ** 2 + (xx - x) ** 2
            rgb[d2 < r**2] = (150, 162, 186)
            rgb[d2 < (0.4 * r) ** 2] = (175, 184, 202)
            boxes.append((int(x - r), int(y - r), int(x + r) + 1, int(y + r) + 1))
    rgb += rng.normal(0, 2.0, rgb.shape)
    return cv2.GaussianBlur(np.clip(rgb, 0, 255).astype(np.uint8), (3, 3), 0), boxes


def test_large_cells_skip_the_smaller_circle_search(monkeypatch):
    """The second, smaller-circle search costs as much as the first; cells a quick distance map
    already puts at twice the first circles' floor cannot be smaller circles, so it is not run
    (``small_skip``), and the cells come out as before."""
    from edgekit.device.field import segment

    floors = _count_circle_searches(monkeypatch)
    rgb, boxes = _large_cells_field()
    cells, radius, reason = count_cells(rgb)
    assert reason is None and 80 <= radius <= 125, radius
    assert match([c.box for c in cells], boxes) == len(boxes) == len(cells)
    # the first circles disagree (sizes 70-130 px), so without the skip both searches run
    assert floors == [segment.CIRCLE_FLOOR], floors


@pytest.mark.parametrize("quick, small_n, chosen", [
    (9.6, 45, "small"),  # the distance map sizes the cells near the smaller circles: theirs
    (27.0, 45, "first"),  # ... near the first circles (large cells, pale centres as small circles)
    (9.6, 9, "first"),  # under ten smaller circles: too few to scatter and still be trusted
])
def test_scattering_smaller_circles_are_taken_where_the_cells_are_that_size(
    monkeypatch, quick, small_n, chosen
):
    """Issue 29's 0.6x fields: 5 first circles of 22-40 px (wrong: a few pairs of cells) and 45
    smaller circles about the cells' 11 px, spread 0.30-0.40 (noise, JPEG): before, only circles
    spreading under ``small_spread`` were taken, so the field was cut at 2.5-3.5x its cells' radius
    (IML PA171694, PA171746, PA171750: 0-14 of 150-350 cells matched). Now a quick distance map
    arbitrates between the two searches."""
    from edgekit.device.field import segment

    rng = np.random.default_rng(0)
    first = np.array([28.0, 30.0, 25.0, 40.0, 22.0], np.float32)
    small = (11.3 * rng.uniform(0.6, 1.5, small_n)).astype(np.float32)
    assert small_n < 10 or segment._spread(small) >= FieldParams().small_spread
    monkeypatch.setattr(segment, "_circle_radii",
                        lambda d, floor, ceiling=4: first if floor == segment.CIRCLE_FLOOR else small)
    monkeypatch.setattr(segment, "_quick_radius", lambda d, p: quick)
    d = segment._Density(np.zeros((480, 640), np.uint8), 1.0, np.zeros((480, 640), np.float32))
    radius, _ = segment._circle_radius(d, 0.0, FieldParams())
    assert radius == pytest.approx(float(np.median(small if chosen == "small" else first)))
