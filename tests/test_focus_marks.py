"""Burned-in marks (scale bars, labels, timestamps) left out of the focus measure (issue 22,
``FocusMeasure.marks``; measured, not the default: see device/field/focus.py): they stay sharp
whatever the focus, so with the option a blurred field with one is refused, and a field without one
scores exactly as without the option."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgekit.benchmarks.focus_floor import blur, burn_overlay, iml_overlay_pixels, jpeg, reburn
from edgekit.device.field.focus import FOCUS_FLOOR, FOCUS_MEASURE, edge_ratios, focus_score
from edgekit.device.field.marks import burned_marks, marks_mask
from tests.device_helpers import fixture_fields

WITHOUT = replace(FOCUS_MEASURE, marks=False)  # the default measure
WITH = replace(FOCUS_MEASURE, marks=True)  # marks left out


def _fields() -> list[np.ndarray]:
    return [rgb for rgb, _ in fixture_fields()]


def test_a_mark_does_not_carry_a_blurred_field():
    """Each kind of mark (bar or timestamp; black, white or yellow; aliased or not; any corner)
    burned on a blurred field: the field is refused, as without the mark. Read on the whole field,
    the mark's step edges made blurred fields pass."""
    carried = 0
    for rgb in _fields():
        for sigma in (2.0, 3.0):
            blurred = blur(rgb, sigma)
            for k in range(24):
                marked = jpeg(burn_overlay(blurred, k), 90) if k % 4 == 3 else burn_overlay(blurred, k)
                assert focus_score(marked, measure=WITH) < FOCUS_FLOOR, (sigma, k)
                carried += focus_score(marked, measure=WITHOUT) >= FOCUS_FLOOR
    assert carried >= 20  # most marks lifted a blurred field over the floor before


def test_a_mark_on_a_sharp_field_changes_its_score_little():
    for rgb in _fields():
        plain = focus_score(rgb, measure=WITH)
        for k in range(6):
            marked = burn_overlay(rgb, k)
            assert burned_marks(marked), k
            score = focus_score(marked, measure=WITH)
            assert abs(score - plain) < 0.1 * plain, (k, plain, score)


def test_marks_are_found_where_they_were_drawn():
    for rgb in _fields():
        for k in range(24):
            marked = burn_overlay(rgb, k)
            drawn = np.any(marked != rgb, axis=2)
            found = marks_mask(burned_marks(marked), drawn.shape, 1.0, 0)
            assert found[drawn].mean() > 0.95, k
            assert found.mean() < 0.03, k  # the box of the mark, not the field


def test_fields_without_marks_score_bit_for_bit_as_before():
    """No mark found on fields without one (sharp, blurred, noisy, re-encoded, a soft synthetic
    one, a dark-stained one), and their edge ratios are exactly those of the measure without marks."""
    import cv2

    rng = np.random.default_rng(1)
    dark = _fields()[0].copy()
    for _ in range(40):  # deep-stained nuclei: dark, but they pass some light; optical edges
        cv2.circle(dark, (int(rng.integers(20, 620)), int(rng.integers(20, 460))), 9, (70, 45, 90), -1)
    copies = []
    for rgb in [*_fields(), blur(dark, 1.0)]:
        noisy = np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
        copies += [rgb, blur(rgb, 2.0), noisy, jpeg(noisy, 70), jpeg(blur(rgb, 1.0), 60)]
    for i, rgb in enumerate(copies):
        assert burned_marks(rgb) == [], i
        assert edge_ratios(rgb, measure=WITH) == edge_ratios(rgb, measure=WITHOUT), i


def test_an_overexposed_field_is_not_a_mark():
    """A saturated white background meeting sharp dark cells all over the field has the colours and
    steps of marks, but covers too much of the field to be a label: nothing is left out."""
    import cv2

    rng = np.random.default_rng(2)
    field = np.full((480, 640, 3), 255, np.uint8)
    for _ in range(120):
        cv2.circle(field, (int(rng.integers(0, 640)), int(rng.integers(0, 480))), 14, (30, 20, 35), -1)
    assert burned_marks(field) == []
    assert edge_ratios(field, measure=WITH) == edge_ratios(field, measure=WITHOUT)


def test_odd_images_do_not_break_the_search():
    assert burned_marks(np.zeros((4, 4, 3), np.uint8)) == []
    assert burned_marks(np.zeros((64, 64), np.uint8)) == []
    assert burned_marks(np.zeros((64, 64, 3), np.uint16)) == []
    assert burned_marks(np.zeros((64, 64, 3), np.uint8)) == []  # all black: no step
    rgba = np.dstack([burn_overlay(_fields()[0], 0), np.full((480, 640), 255, np.uint8)])
    assert burned_marks(rgba) == []  # four channels: not looked at (the score is as before)
    assert focus_score(rgba, measure=WITH) == focus_score(rgba, measure=WITHOUT)


def test_iml_scale_bar_does_not_carry_a_blurred_iml_field():
    """IML's own "50 um" bar and label, kept sharp on a blurred copy (they are drawn after the
    optics): refused; the sharp field scores about as it does cut above the bar."""
    from edgekit.paths import shared_data

    paths = sorted((shared_data("malaria_fields_iml") / "images").glob("*.JPG"))
    if not paths:
        pytest.skip("IML fields not present")
    from edgekit.benchmarks.focus_floor import IML_OVERLAY, _load

    for path in (paths[10], paths[-10]):
        rgb = _load(path)
        ink = iml_overlay_pixels(rgb)
        for sigma in (2.0, 3.0):
            copy = jpeg(reburn(rgb, blur(rgb, sigma), ink), 90)
            assert focus_score(copy, measure=WITHOUT) >= FOCUS_FLOOR  # before: carried by the bar
            assert focus_score(copy, measure=WITH) < FOCUS_FLOOR, (path.name, sigma)
        whole, cut = focus_score(rgb, measure=WITH), focus_score(rgb[:IML_OVERLAY[0]], measure=WITH)
        assert abs(whole - cut) < 0.1 * cut, (path.name, whole, cut)
