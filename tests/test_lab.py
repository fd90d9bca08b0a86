"""The numpy Lab conversion equals OpenCV's on every 8-bit colour, and the domain guard gives the
same features whichever of the two it uses."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from device_helpers import CELLS, GOLDEN

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


def test_guard_features_as_with_opencvs_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    crop = np.zeros((90, 80, 3), np.uint8)
    cv2.ellipse(crop, (40, 45), (30, 35), 0, 0, 360, (200, 120, 170), -1)
    crop = np.clip(crop.astype(int) + rng.integers(-20, 20, crop.shape) * (crop > 0), 0, 255).astype(np.uint8)
    ours = domain.crop_features(crop)
    monkeypatch.setattr(domain, "rgb_to_lab",
                        lambda rgb: cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2LAB))
    np.testing.assert_array_equal(ours, domain.crop_features(crop))


def test_large_images_are_converted_in_chunks_alike() -> None:
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)  # 150,000 pixels: many chunks
    np.testing.assert_array_equal(rgb_to_lab(img), cv2.cvtColor(img, cv2.COLOR_RGB2LAB))


WATCHED = """
import json, sys
import cv2
asked = []
convert = cv2.cvtColor
def watched(src, code, *args, **kwargs):
    asked.append(code)
    return convert(src, code, *args, **kwargs)
cv2.cvtColor = watched
from edgekit.cli import main
for args in json.loads(sys.argv[1]):
    try:
        main(args)
    except SystemExit as e:
        assert e.code in (0, None), (args, e.code)
lab = {getattr(cv2, n) for n in dir(cv2) if n.startswith("COLOR_") and ("LAB" in n or "LUV" in n.upper())}
print(json.dumps({"asked": len(asked), "lab": sorted(set(asked) & lab)}))
"""


def test_classify_and_screen_never_build_opencvs_colour_tables(tmp_path) -> None:
    """OpenCV's first Lab conversion builds its colour tables (~3.4 MB resident for the rest of the
    process, 50-100 ms of CPU); the guard's Lab comes from :mod:`edgekit.device.lab`, so `classify`,
    `screen` and `screen --fields` never ask OpenCV for a Lab (or Luv) conversion (the shipped
    default bundle: it has a domain guard)."""
    model, db = [], ["--db", str(tmp_path / "r.db"), "--no-progress"]
    runs = [["classify", str(sorted(CELLS.iterdir())[0]), *model, "--format", "jsonl"],
            ["classify", str(CELLS), *model, "--format", "jsonl"],
            ["screen", str(CELLS), *model, "--patient", "P", *db],
            ["screen", str(GOLDEN.parent / "fields"), "--fields", *model, "--patient", "F", *db]]
    out = subprocess.run([sys.executable, "-c", WATCHED, json.dumps(runs)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["asked"] > 0  # the watch saw OpenCV's colour conversions
    assert result["lab"] == []


def test_threads_convert_alike() -> None:
    """Each thread has its own working arrays: conversions running at once do not mix."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (60 + 7 * k, 90, 3), dtype=np.uint8) for k in range(16)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda im: [rgb_to_lab(im) for _ in range(20)], images))
    for im, labs in zip(images, results, strict=True):
        expected = cv2.cvtColor(im, cv2.COLOR_RGB2LAB)
        assert all(np.array_equal(lab, expected) for lab in labs)
