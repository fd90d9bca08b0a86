"""Uneven lighting: a vignette (a phone at the eyepiece, a lamp off centre) must not hide the cells of
the field's dim parts, and an evenly lit field is found exactly as before. Light: no TensorFlow."""

from __future__ import annotations

import numpy as np

from edgekit.benchmarks.field_transforms import score_cells, vignette
from edgekit.device.field import FieldParams, count_cells
from edgekit.device.field.illumination import falloff, flatten, lighting
from tests.device_helpers import fixture_fields


def test_a_vignetted_field_keeps_its_cells():
    for rgb, boxes in fixture_fields():
        _, found = score_cells(count_cells(rgb)[0], boxes, [])
        dim = vignette(rgb, 0.5)  # half the brightness at the corners
        _, kept = score_cells(count_cells(dim)[0], boxes, [])
        _, unflattened = score_cells(count_cells(dim, FieldParams(max_falloff=None))[0], boxes, [])
        assert kept >= found - 1, (kept, found)
        assert unflattened < found / 2  # what the finder did before: the dim parts were lost


def test_the_lighting_estimate_follows_the_vignette():
    for rgb, _ in fixture_fields():
        base = falloff(rgb)
        for corner in (0.7, 0.5):
            assert abs(falloff(vignette(rgb, corner)) - (1 - corner)) < 0.1 + base


def test_an_evenly_lit_field_is_found_bit_for_bit_as_before():
    rgb, _ = fixture_fields()[0]
    light = lighting(rgb)
    assert light is not None
    rgb = flatten(rgb, light)  # the fixture's own lamp dims it by 0.13: evenly lit once divided out
    assert lighting(rgb, FieldParams().max_falloff or 0.0) is None
    a, ra, why_a = count_cells(rgb)
    b, rb, why_b = count_cells(rgb, FieldParams(max_falloff=None))
    assert (why_a, ra, [c.box for c in a]) == (why_b, rb, [c.box for c in b])
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a, b, strict=True))


def test_flatten_undoes_a_known_lighting():
    rng = np.random.default_rng(0)
    flat = rng.integers(150, 200, (60, 80, 3)).astype(np.uint8)
    light = np.linspace(0.5, 1.0, 80, dtype=np.float32)[None, :].repeat(60, axis=0)
    dim = (flat * light[..., None]).astype(np.uint8)
    assert np.abs(flatten(dim, light).astype(int) - flat.astype(int)).max() <= 2


def test_tiny_or_blank_fields_have_no_lighting():
    assert lighting(np.zeros((10, 10, 3), np.uint8)) is None
    assert lighting(np.full((480, 640, 3), 200, np.uint8)) is None


def test_a_field_with_no_background_pixel_is_refused_in_one_line(monkeypatch):
    """Everything above the stain line (a strong vignette before flattening, a thick smear): the
    distance map is undefined there; the finder crashed on it (radius infinite)."""
    import edgekit.device.field.segment as segment

    rgb, _ = fixture_fields()[0]
    monkeypatch.setattr(segment, "_foreground", lambda d, *a, **k: np.full(d.blur5.shape, 255, np.uint8))
    cells, _, why = count_cells(rgb)
    assert cells == [] and why is not None and why.startswith("cells overlap into one mass")
