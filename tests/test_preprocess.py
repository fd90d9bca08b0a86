"""The shared decode + preprocessing path: formats, odd images, and one function for all callers."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from edgekit.device.preprocess import load_for_model, prepare, read_image
from edgekit.errors import ImageError
from edgekit.manifest import Preprocessing


def _gradient(h: int = 40, w: int = 30) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return np.stack([yy * 6 % 256, xx * 8 % 256, (yy + xx) * 3 % 256], axis=2).astype(np.uint8)


def _encode(path: Path, img: np.ndarray) -> Path:
    import cv2

    ok, buf = cv2.imencode(path.suffix, img)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tiff", ".webp"])
def test_lossless_formats_roundtrip_rgb(tmp_path, suffix):
    rgb = _gradient()
    if suffix == ".webp":
        import cv2

        ok, buf = cv2.imencode(".webp", rgb[:, :, ::-1], [cv2.IMWRITE_WEBP_QUALITY, 101])
        (tmp_path / "a.webp").write_bytes(buf.tobytes())
        path = tmp_path / "a.webp"
    else:
        path = _encode(tmp_path / f"a{suffix}", rgb[:, :, ::-1])
    np.testing.assert_array_equal(read_image(path), rgb)


def test_gray_16bit_rgba_are_normalised(tmp_path):
    gray = _gradient()[:, :, 0]
    out = read_image(_encode(tmp_path / "g.png", gray))
    assert out.shape == (*gray.shape, 3) and (out[:, :, 0] == gray).all() and (out[:, :, 2] == gray).all()

    g16 = gray.astype(np.uint16) * 257
    out16 = read_image(_encode(tmp_path / "g16.png", g16))
    np.testing.assert_array_equal(out16[:, :, 1], gray)

    bgra = np.zeros((10, 10, 4), np.uint8)
    bgra[..., :3] = (10, 20, 200)
    bgra[:5, :, 3] = 255  # top half opaque, bottom transparent -> black like the NIH background
    out4 = read_image(_encode(tmp_path / "a.png", bgra))
    assert tuple(out4[0, 0]) == (200, 20, 10)
    assert tuple(out4[9, 9]) == (0, 0, 0)


def test_palette_and_exif_orientation(tmp_path):
    from PIL import Image

    rgb = _gradient(20, 36)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (20, 36, 3)

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(rgb).save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (36, 20, 3)


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "empty"), (b"not an image at all", "corrupt"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "")],
)
def test_bad_files_raise_image_error(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError) as err:
        read_image(path)
    assert reason in str(err.value)


def test_truncated_and_missing(tmp_path):
    path = _encode(tmp_path / "t.jpg", _gradient(200, 200))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageError):
        read_image(path)
    with pytest.raises(ImageError, match="not found"):
        read_image(tmp_path / "nope.png")


def _png_header_only(path: Path, w: int, h: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b""))
    return path


def test_huge_image_refused_from_header(tmp_path):
    with pytest.raises(ImageError, match="too large"):
        read_image(_png_header_only(tmp_path / "huge.png", 20000, 20000))


def test_prepare_resizes_and_orders_channels():
    rgb = _gradient(100, 80)
    out = prepare(rgb, Preprocessing(input_size=(64, 48)))
    assert out.shape == (64, 48, 3) and out.dtype == np.uint8
    bgr = prepare(rgb, Preprocessing(input_size=(64, 48), color_order="BGR"))
    np.testing.assert_array_equal(bgr, out[:, :, ::-1])
    gray = prepare(rgb, Preprocessing(input_size=(32, 32), channels=1, color_order="GRAY"))
    assert gray.shape == (32, 32, 1)


@pytest.mark.realdata
def test_training_cache_and_device_resize_identically(shared_malaria, tmp_path):
    """Training (load_images, parallel + cached) and the device (load_for_model) give the same bytes."""
    from edgekit.data import load_images

    pre = Preprocessing()
    files = sorted((shared_malaria / "Parasitized").glob("*.webp"))[:40]
    rels = [p.relative_to(shared_malaria).as_posix() for p in files]
    batch, bad = load_images(shared_malaria, rels, pre, cache_dir=tmp_path)
    cached, _ = load_images(shared_malaria, rels, pre, cache_dir=tmp_path)
    assert not bad and batch.shape == (40, 64, 64, 3)
    for rel, row in zip(rels, batch, strict=True):
        np.testing.assert_array_equal(load_for_model(shared_malaria / rel, pre), row)
    np.testing.assert_array_equal(batch, cached)
