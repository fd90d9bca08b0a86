"""Quality gates: each failure mode is caught, real NIH crops pass."""

from __future__ import annotations

import random

import numpy as np
import pytest
from device_helpers import CELLS, cell_image

from edgekit.device.preprocess import read_image
from edgekit.device.quality import DEFAULT_GATES, QualityGates, calibrate, check_quality, measure


@pytest.fixture(scope="module")
def real_crops() -> list[np.ndarray]:
    return [read_image(p) for p in sorted(CELLS.iterdir())]


def test_fixture_crops_pass(real_crops):
    assert [check_quality(im) for im in real_crops] == [None] * len(real_crops)


def test_too_small():
    assert check_quality(cell_image(0, 12)).startswith("too small (12x12")


def test_blank_and_uniform():
    assert check_quality(np.zeros((64, 64, 3), np.uint8)).startswith("blank")
    assert check_quality(np.full((64, 64, 3), 128, np.uint8)).startswith("blank")


def test_under_exposed(real_crops):
    dark = (real_crops[0].astype(np.float32) * 0.15).astype(np.uint8)
    assert check_quality(dark).startswith("under-exposed")


def test_over_exposed(real_crops):
    bright = np.clip(real_crops[0].astype(np.int32) * 4, 0, 255).astype(np.uint8)
    assert check_quality(bright).startswith("over-exposed")


def test_blurred(real_crops):
    import cv2

    for crop in real_crops:
        blurred = cv2.GaussianBlur(crop, (0, 0), 2)
        assert measure(blurred)["sharpness"] < measure(crop)["sharpness"]
        assert check_quality(blurred).startswith("blurred")
        ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 75])  # JPEG is not blur
        assert check_quality(cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)) is None
    # a camera frame without black background: the whole image is foreground
    frame = np.full((120, 160, 3), 150, np.uint8)
    cv2.rectangle(frame, (10, 10), (70, 60), (60, 60, 90), -1)
    for x in range(90, 160, 20):
        cv2.circle(frame, (x, 80), 8, (220, 180, 200), -1)
    assert check_quality(frame) is None
    assert check_quality(cv2.GaussianBlur(frame, (0, 0), 4)).startswith("blurred")


def test_gates_are_configurable(real_crops):
    strict = QualityGates(min_side=10_000)
    assert check_quality(real_crops[0], strict).startswith("too small")
    assert DEFAULT_GATES.to_dict()["min_side"] == 16


@pytest.mark.realdata
def test_real_nih_crops_essentially_all_pass(shared_malaria):
    files = sorted(shared_malaria.glob("*/*.webp")) + sorted(shared_malaria.glob("*/*.png"))
    random.Random(0).shuffle(files)
    report = calibrate([read_image(f) for f in files[:2000]])
    assert report["n"] == min(2000, len(files))
    assert report["pass_rate"] >= 0.995, report
