"""The edge-width focus candidate of ``benchmarks/focus_edges.py`` (issue 22): edge width in pixels
grows with blur, width per cell radius holds under an enlargement, marks do not carry it."""

from __future__ import annotations

import cv2
import numpy as np

from edgekit.benchmarks import focus_sessions as fs
from edgekit.benchmarks.focus_edges import EDGE_PERCENTILES, edge_sharpness, edge_widths, either
from edgekit.device.field.focus import FOCUS_FLOOR

RADIUS = 30


def _cells(seed: int = 0, optics: float = 1.0) -> np.ndarray:
    """A field of stained discs (radius RADIUS) on a pale background, seen through ``optics`` (px)."""
    rng = np.random.default_rng(seed)
    field = np.full((480, 640, 3), (225, 215, 225), np.uint8)
    for _ in range(40):
        x, y = int(rng.integers(40, 600)), int(rng.integers(40, 440))
        cv2.circle(field, (x, y), RADIUS, (200, 140, 170), -1)
        cv2.circle(field, (x, y), RADIUS // 3, (215, 175, 200), -1)
    return cv2.GaussianBlur(field, (0, 0), optics)


def test_blur_widens_the_edges_in_pixels():
    sharp = _cells()
    widths = [edge_widths(cv2.GaussianBlur(sharp, (0, 0), s) if s else sharp, RADIUS)[0] for s in (0, 2, 3)]
    assert widths[0] + 1.5 < widths[1] < widths[2]


def test_an_enlargement_keeps_the_width_per_radius_and_a_blur_does_not():
    field = _cells(1)
    sharp = edge_sharpness(field, radius=RADIUS)
    big = edge_sharpness(cv2.resize(field, None, fx=1.5, fy=1.5, interpolation=cv2.INTER_LINEAR),
                         radius=1.5 * RADIUS)
    blurred = edge_sharpness(cv2.GaussianBlur(field, (0, 0), 2.0), radius=RADIUS)
    key = f"edges_p{EDGE_PERCENTILES[0]}"
    assert abs(big[key] / sharp[key] - 1) < 0.2
    assert blurred[key] < 0.75 * sharp[key]


def test_a_sharp_burned_in_mark_does_not_carry_a_blurred_field():
    field = cv2.GaussianBlur(_cells(2), (0, 0), 3.0)
    cv2.rectangle(field, (420, 440), (620, 470), (0, 0, 0), -1)
    box = [(420, 440, 621, 471)]
    blurred = edge_widths(cv2.GaussianBlur(_cells(2), (0, 0), 3.0), RADIUS)[0]
    assert edge_widths(field, RADIUS)[0] < 0.8 * blurred  # the bar's crisp edges pull the low percentile
    assert abs(edge_widths(field, RADIUS, box)[0] - blurred) < 0.1 * blurred


def test_a_flat_field_has_no_edges_to_read():
    flat = np.full((200, 200, 3), 200, np.uint8)
    assert edge_sharpness(flat, radius=RADIUS)[f"edges_p{EDGE_PERCENTILES[0]}"] == 0.0


def test_the_second_opinion_refuses_when_either_refuses_each_on_its_own_session_scores():
    judge = either(6.0, 0.8)
    assert judge((0.9 * FOCUS_FLOOR, 9.0), 0.0, [])  # today refuses
    assert judge((0.2, 5.0), 0.0, [])  # the edges refuse
    assert not judge((0.2, 7.0), 0.0, [(0.2, 8.0)])
    assert judge((0.2, 7.0), 0.0, [(0.2, 9.0)])  # 7 < 0.8 x 9: under the session's sharpest edges


def test_copies_are_each_variant_at_each_blur_and_drawn_the_same_every_time():
    item = ("bccd", 3, 4, "f", None)
    rgb = _cells(3)
    first, again = list(fs.copies(item, rgb)), list(fs.copies(item, rgb))
    assert [(k, s) for k, s, _ in first] == [(k, s) for k in ("bccd", "bccd_mark") for s in fs.SIGMAS]
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(first, again, strict=True))
