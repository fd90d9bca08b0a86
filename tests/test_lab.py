"""The numpy Lab conversion equals OpenCV's on every 8-bit colour, and the domain guard gives the
same features whichever of the two it uses."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgekit.device import domain
from edgekit.device.lab import rgb_to_lab


@pytest.mark.parametrize("red", range(0, 256, 32))
def test_every_colour_as_opencv(red: int) -> None:
    g, b = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8), indexing="ij")
    img = np.empty((32, 256, 256, 3), np.uint8)
    img[..., 0] = np.arange(red, red + 32, dtype=np.uint8)[:, None, None]
    img[..., 1], img[..., 2] = g, b
    img = img.reshape(32 * 256, 256, 3)  # 2**21 colours: every one with these 32 reds
    np.testing.assert_array_equal(rgb_to_lab(img), cv2.cvtColor(img, cv2.COLOR_RGB2LAB))


def test_shapes_and_views() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(rgb_to_lab(img), cv2.cvtColor(img, cv2.COLOR_RGB2LAB))
    view = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)[2:15, 3:27, :3]  # strided, not contiguous
    expected = cv2.cvtColor(np.ascontiguousarray(view), cv2.COLOR_RGB2LAB)
    np.testing.assert_array_equal(rgb_to_lab(view), expected)


def test_guard_features_same_before_and_after_opencv_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    crop = np.zeros((90, 80, 3), np.uint8)
    cv2.ellipse(crop, (40, 45), (30, 35), 0, 0, 360, (200, 120, 170), -1)
    crop = np.clip(crop.astype(int) + rng.integers(-20, 20, crop.shape) * (crop > 0), 0, 255).astype(np.uint8)
    calls = []
    monkeypatch.setattr(domain, "rgb_to_lab", lambda rgb: calls.append(1) or rgb_to_lab(rgb))
    monkeypatch.setattr(domain, "_lab_ready", False)
    before = domain.crop_features(crop)
    monkeypatch.setattr(domain, "_lab_ready", True)
    after = domain.crop_features(crop)
    assert calls == [1]  # the numpy route was taken once, OpenCV's the second time
    np.testing.assert_array_equal(before, after)
