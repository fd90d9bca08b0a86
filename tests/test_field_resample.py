"""The field path's resampling and distances in exact arithmetic, so a Raspberry Pi draws the same cells as
the workstation (OpenCV's float area resize, float bilinear resize and 3x3/5x5 distance masks differ in
the last bits between its x86 and arm64 builds; benchmarks/pi_emulation.py compares the two)."""

from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest

from edgekit.device.field.illumination import LIGHT_STEPS, lighting
from edgekit.device.field.resample import resize_exact, shrink_area
from edgekit.device.field.segment import distance_map, working_copy


def _exact_area_mean(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Each output pixel's area-weighted mean in rational arithmetic, rounded half up."""
    h, w = img.shape[:2]
    out_w, out_h = size

    def weights(n_in: int, n_out: int) -> list[list[Fraction]]:
        rows = []
        for j in range(n_out):
            a, b = Fraction(j * n_in, n_out), Fraction((j + 1) * n_in, n_out)
            rows.append([max(Fraction(0), min(b, i + 1) - max(a, Fraction(i))) for i in range(n_in)])
        return rows

    wy, wx = weights(h, out_h), weights(w, out_w)
    out = np.zeros((out_h, out_w), np.uint8)
    for y in range(out_h):
        for x in range(out_w):
            s = sum(wy[y][i] * wx[x][k] * int(img[i, k]) for i in range(h) for k in range(w)
                    if wy[y][i] and wx[x][k])
            mean = s / (Fraction(h, out_h) * Fraction(w, out_w))
            out[y, x] = int(mean + Fraction(1, 2))  # half up
    return out


@pytest.mark.parametrize(("shape", "size"), [((13, 17), (5, 7)), ((9, 20), (20, 4)), ((11, 11), (3, 3))])
def test_shrink_area_is_the_exact_area_mean(shape: tuple[int, int], size: tuple[int, int]) -> None:
    img = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    assert np.array_equal(shrink_area(img, size), _exact_area_mean(img, size))


def test_shrink_area_stays_within_half_a_level_of_opencv_on_a_field() -> None:
    rng = np.random.default_rng(1)
    img = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 2)
    for size in ((250, 187), (320, 240), (192, 144)):
        ours, theirs = shrink_area(img, size), cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        assert ours.shape == theirs.shape
        assert np.abs(ours.astype(int) - theirs).max() <= 1
    # whole-number ratios are OpenCV's own integer path, byte for byte
    half = cv2.resize(img, (320, 240), interpolation=cv2.INTER_AREA)
    assert np.array_equal(shrink_area(img, (320, 240)), half)


def test_shrink_area_sums_in_strips_exactly_as_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.device.field import resample

    img = np.random.default_rng(2).integers(0, 256, (97, 131, 3), dtype=np.uint8)
    whole = shrink_area(img, (50, 37))
    monkeypatch.setattr(resample, "STRIP_ELEMENTS", 1)  # a row or column at a time
    assert np.array_equal(shrink_area(img, (50, 37)), whole)


def test_shrink_area_of_a_wide_image() -> None:
    # 255 x 3000 x 2999 is over 2**31: the int32 running sums times the width wrap, their differences not
    img = np.random.default_rng(5).integers(0, 256, (3, 3000, 3), dtype=np.uint8)
    ours, theirs = shrink_area(img, (2999, 2)), cv2.resize(img, (2999, 2), interpolation=cv2.INTER_AREA)
    assert np.abs(ours.astype(int) - theirs).max() <= 1


def test_resize_exact_enlarges_with_opencvs_bit_exact_bilinear() -> None:
    img = np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    assert np.array_equal(resize_exact(img, (60, 45)),
                          cv2.resize(img, (60, 45), interpolation=cv2.INTER_LINEAR_EXACT))
    with pytest.raises(ValueError, match="cannot shrink"):
        shrink_area(img, (41, 30))


def test_working_copy_shrinks_and_enlarges_exactly() -> None:
    img = np.random.default_rng(4).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    small, scale = working_copy(img, 320)
    assert scale == pytest.approx(0.64) and np.array_equal(small, shrink_area(img, (320, 192)))
    big, scale = working_copy(img, 640, enlarge=True)
    assert np.array_equal(big, resize_exact(img, (640, 384)))


def test_distance_map_is_opencvs_own_fixed_point_on_every_cpu() -> None:
    """OpenCV's own code gives distances in steps of 2**-16 px (Intel IPP's float ones differ from the
    arm64 build's in the last bits); IPP stays on for everything else on the thread."""
    ipp = cv2.ipp.useIPP()
    yy, xx = np.mgrid[:60, :80]
    mask = ((np.hypot(yy - 30, xx - 25) < 20) | (np.hypot(yy - 28, xx - 52) < 18)).astype(np.uint8)
    for size in (3, 5):
        d = distance_map(mask, size)
        steps = d.astype(np.float64) * 65536
        assert np.array_equal(steps, np.rint(steps)), size
        assert np.abs(d - cv2.distanceTransform(mask, cv2.DIST_L2, size)).max() < 1e-3
    assert cv2.ipp.useIPP() == ipp  # switched back


def test_lighting_is_in_fixed_point_steps() -> None:
    yy, xx = np.mgrid[:240, :320]
    lamp = 1.0 - 0.4 * ((xx / 320.0) ** 2)  # dims to 0.6 at the right edge
    rgb = np.clip(np.dstack([220 * lamp] * 3), 0, 255).astype(np.uint8)
    light = lighting(rgb, 0.1)
    assert light is not None and light.dtype == np.float32
    steps = light * LIGHT_STEPS
    assert np.array_equal(steps, np.rint(steps))  # exact multiples of 1/LIGHT_STEPS
    assert 0.5 < float(light.min()) < 0.7 and float(light.max()) == 1.0
