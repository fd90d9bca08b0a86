"""The focus measure itself (issue 22): sensor noise, also after JPEG, does not make a blurred field
look sharp, and the cells' radius it can work at follows the field's scale, not its blur."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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


def _reference_edge_ratios(rgb: np.ndarray, m: FocusMeasure) -> tuple[float, float | None]:
    """The measure as first written: every plane of the whole field at once (the package computes
    them in strips to hold less memory; the scores must not move by one bit)."""
    import cv2

    from edgekit.device.field.focus import MAX_SIDE, SIGMAS, flat_energy
    from edgekit.device.field.resample import scaled_size, shrink_area

    def grad2(x: np.ndarray) -> np.ndarray:
        dx, dy = cv2.Sobel(x, cv2.CV_32F, 1, 0), cv2.Sobel(x, cv2.CV_32F, 0, 1)
        return dx * dx + dy * dy

    def ratio(g: np.ndarray) -> float:
        fine2, coarse2 = (grad2(cv2.GaussianBlur(g, (0, 0), s)) for s in SIGMAS)
        sample = np.sqrt(coarse2[::2, ::2])
        if m.select:
            box = np.full(m.select, 1.0 / m.select, np.float32)
            sample = cv2.sepFilter2D(sample, -1, box, box)
        k = min(int(sample.size * (100 - m.edges) / 100), sample.size - 1)
        level = float(np.partition(sample.ravel(), k)[k]) if sample.size else 0.0
        if level <= 1e-3:
            return 0.0
        if m.select:
            chosen = (sample >= level).astype(np.uint8)
            sel = cv2.resize(chosen, g.shape[::-1], interpolation=cv2.INTER_NEAREST).astype(bool)
        else:
            sel = coarse2 >= level * level
        if m.flat:
            f_noise, c_noise = flat_energy(fine2[::2, ::2], coarse2[::2, ::2], m.flat)
        else:
            rows = g[:-2:6] - 2 * g[1:-1:6] + g[2::6]
            r = rows[:, :-2:6] - 2 * rows[:, 1:-1:6] + rows[:, 2::6]
            var = (float(np.median(np.abs(r))) / (0.6745 * 6.0)) ** 2
            f_noise, c_noise = 13.12 * var, 1.518 * var
        f2 = float(fine2[sel].mean(dtype=np.float64)) - f_noise
        c2 = float(coarse2[sel].mean(dtype=np.float64)) - c_noise
        return float(np.sqrt(max(f2, 1e-6) / max(c2, 1e-6))) - 1.0

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = MAX_SIDE / max(gray.shape)
    if scale < 1:  # the shrink both share: exact, the same on every CPU (test_field_resample)
        gray = shrink_area(gray, scaled_size(gray.shape, scale))
    g = gray.astype(np.float32)
    full = ratio(g)
    if not m.profile or full <= 0:
        return full, None
    return full, ratio(cv2.resize(g, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))


def _generated_field(h: int, w: int, seed: int) -> np.ndarray:
    """Stained disks on a light background, softened a little: cells without any data file."""
    import cv2

    rng = np.random.default_rng(seed)
    field = np.empty((h, w, 3), np.uint8)
    field[:] = (222, 205, 215)
    for _ in range(h * w // 2500 + 1):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        colour = tuple(int(c) for c in rng.integers(120, 200, 3))
        cv2.circle(field, centre, int(rng.integers(8, 30)), colour, -1)
    return cv2.GaussianBlur(field, (0, 0), 0.8)


@pytest.mark.parametrize("whole_px", [0, 1 << 40])
def test_focus_scores_are_those_of_the_whole_field_computation(monkeypatch, whole_px):
    """The gradient planes are computed in strips of rows (memory), and for a large image twice
    (``whole_px`` 0: every image; huge: none) rather than held whole; every score, on real and
    generated fields, sharp, blurred, noisy and re-encoded, of any size (odd, around the strip
    size, tiny, larger than MAX_SIDE), is exactly that of the computation on the whole field."""
    from dataclasses import replace

    from edgekit.device.field import focus
    from edgekit.device.field.focus import FOCUS_MEASURE, MAX_SIDE, STRIP_ROWS, edge_ratios

    monkeypatch.setattr(focus, "WHOLE_PLANES_PX", whole_px)

    fields = [read_image(p) for p in FIELDS] + [_generated_field(961, 1283, 0), _generated_field(387, 515, 1)]
    copies = []
    for rgb in fields:
        h, w = rgb.shape[:2]
        copies += [rgb, _blur(rgb, 2.0), _noisy(rgb, 6.0), _jpeg(_noisy(_blur(rgb, 1.0), 4.0), 70),
                   rgb[: STRIP_ROWS + 1, : w - 1], rgb[: 2 * STRIP_ROWS + 3], rgb[: 3 * STRIP_ROWS + 2, :97],
                   rgb[: h - 1, : w - 3], rgb[:70, :65], rgb[:9, :300], rgb[:1, :1]]
    copies.append(_generated_field(int(MAX_SIDE * 0.9), MAX_SIDE + 211, 2))
    measures = (FOCUS_MEASURE, replace(FOCUS_MEASURE, select=0, flat=0.0),
                replace(FOCUS_MEASURE, profile=0.0))
    for i, rgb in enumerate(copies):
        rgb = np.ascontiguousarray(rgb)
        for m in measures:
            ours, ref = edge_ratios(rgb, measure=m), _reference_edge_ratios(rgb, m)
            assert repr(ours) == repr(ref), (i, rgb.shape, m.name, ours, ref)  # repr: nan equals nan


def test_the_gradient_strips_filter_only_the_rows_they_need(monkeypatch):
    """Each strip of the focus measure blurs its rows with the coarser Gaussian's radius (5) plus
    Sobel's (1) of context each side, and takes the Sobel of its own rows and one each side only
    (8 rows of context through both before: 9% of the measure's CPU on a 1280x960 field)."""
    import cv2

    from edgekit.device.field import focus

    h, w = 960, 1280
    g = _generated_field(h, w, 3)[:, :, 0]
    rows = {"GaussianBlur": 0, "Sobel": 0}
    for name in rows:
        real = getattr(cv2, name)

        def counted(img, *a, _real=real, _name=name, **k):
            rows[_name] += img.shape[0]
            return _real(img, *a, **k)

        monkeypatch.setattr(cv2, name, counted)
    focus.gradient_planes(g, 2)
    strips = -(-h // focus.STRIP_ROWS)
    inner = 2 * (strips - 1)  # the edges between strips, each seen from both sides
    assert rows["GaussianBlur"] == len(focus.SIGMAS) * (h + 6 * inner)
    assert rows["Sobel"] == 2 * len(focus.SIGMAS) * (h + inner)
