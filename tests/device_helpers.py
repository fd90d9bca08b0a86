"""Shared helpers for the device tests: the committed golden bundle and awkward input files."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GOLDEN = FIXTURES / "golden_bundle"
CELLS = FIXTURES / "cells"
BANNED = ("tensorflow", "keras", "tf2onnx", "onnx")


def golden_copy(dest: Path) -> Path:
    """A writable copy of the golden bundle (to tamper with)."""
    shutil.copytree(GOLDEN, dest)
    return dest


def write_image(path: Path, img: np.ndarray, ext: str | None = None) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if img.ndim == 3 and img.shape[2] == 3:
        img = img[:, :, ::-1]
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, [2, 1, 0, 3]]
    ok, buf = cv2.imencode(ext or path.suffix, img)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` but holds no pixels (tests the size refusal
    without allocating the image)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def cell_image(seed: int, size: int = 48) -> np.ndarray:
    """A pink disc on black with some texture (passes the quality gates); distinct per seed."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.42) ** 2
    tex = rng.integers(-25, 25, (size, size, 3))
    img[disc] = np.clip(np.array([200, 140, 170]) + tex[disc], 0, 255).astype(np.uint8)
    return img


def awkward_inputs(folder: Path) -> dict[str, str]:
    """Files that must each fail (or succeed) with one clear reason: name -> expected status."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    good = cell_image(1, 64)
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image at all\n")
    (folder / "notes.txt").write_text("ignored in folders: not an image suffix\n")
    data = write_image(folder / "full.png", good).read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "full.png").unlink()
    corrupt = bytearray(data)
    corrupt[8:40] = b"\x00" * 32
    (folder / "corrupt.png").write_bytes(bytes(corrupt))
    png_header_only(folder / "huge.png", 20000, 20000)
    write_image(folder / "gray.png", good.mean(axis=2).astype(np.uint8))
    rgba = np.dstack([good, np.full(good.shape[:2], 255, np.uint8)])
    write_image(folder / "rgba.png", rgba)
    write_image(folder / "deep16.png", good.astype(np.uint16) * 257)
    Image.fromarray(good).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(cell_image(2, 64)[:, 8:]).save(folder / "rotated.jpg", exif=exif, quality=95)
    return {
        "zero.png": "failed", "text.png": "failed", "truncated.png": "failed", "corrupt.png": "failed",
        "huge.png": "failed", "gray.png": "classified", "rgba.png": "classified", "deep16.png": "classified",
        "palette.png": "classified", "rotated.jpg": "classified",
    }


def fixture_fields() -> list[tuple[np.ndarray, list]]:
    """The BCCD fixture fields (tests/fixtures/fields) with their red-cell boxes; skips without them."""
    import pytest

    from edgekit.benchmarks.field_detection import load_voc
    from edgekit.device.preprocess import read_image

    paths = sorted((FIXTURES / "fields").glob("*.jpg"))
    if not paths:
        pytest.skip("no BCCD fixture fields")
    return [(read_image(p), load_voc(p.with_suffix(".xml"))) for p in paths]


def smear_field(seed: int, sigma: float = 0.0) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """A smear-like field: ~45 stained cells with a pale centre on a pale background, seen through
    slightly soft optics (sigma 0.8), then blurred by ``sigma`` (out of focus), with sensor noise
    and JPEG q90; (the field, its cells' (x, y, radius))."""
    import cv2

    from edgekit.benchmarks.focus_floor import jpeg

    rng = np.random.default_rng(seed)
    img = np.full((480, 640, 3), (228, 214, 222), np.uint8)
    cells = []
    for _ in range(45):
        x, y, r = int(rng.integers(30, 610)), int(rng.integers(30, 450)), int(rng.integers(24, 33))
        cells.append((x, y, r))
        cv2.circle(img, (x, y), r, (196, 120, 150), -1, cv2.LINE_AA)
        cv2.circle(img, (x, y), r // 3, (212, 160, 180), -1, cv2.LINE_AA)
    img = cv2.GaussianBlur(img, (0, 0), float(np.hypot(0.8, sigma)))
    return jpeg(np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8), 90), cells
