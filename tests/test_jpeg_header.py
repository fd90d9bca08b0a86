"""The JPEG header reader that spares field runs Pillow's import (edgekit.device.jpeg_header): where
it answers, it answers what the Pillow path of ``probe_header`` did; otherwise it leaves the file to
Pillow."""

from __future__ import annotations

import io
import random
import subprocess
import sys

import numpy as np
import pytest

from edgekit.device import decoding
from edgekit.device.jpeg_header import simple_jpeg_header

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


def _jpeg(orientation: int | None = None, big_endian: bool = False, **save: object) -> bytes:
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8))
    buf = io.BytesIO()
    if orientation is not None and big_endian:
        save["exif"] = _big_endian_exif(orientation)
    elif orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        exif[0x010F] = "edgekit test camera"  # a value stored outside its entry
        save["exif"] = exif.tobytes()
    im.save(buf, "JPEG", **save)
    return buf.getvalue()


def _big_endian_exif(orientation: int) -> bytes:
    """An EXIF block in Motorola byte order: IFD0 with the orientation alone."""
    ifd = (1).to_bytes(2, "big") + (0x0112).to_bytes(2, "big") + (3).to_bytes(2, "big")
    ifd += (1).to_bytes(4, "big") + orientation.to_bytes(2, "big") + b"\0\0" + b"\0\0\0\0"
    return b"Exif\0\0MM\0*" + (8).to_bytes(4, "big") + ifd


def _pillow(data: bytes) -> object:
    """What probe_header's Pillow path made of ``data``: (w, h, format, orientation) or the error."""
    try:
        with decoding._open_header(data) as im:
            return im.size[0], im.size[1], im.format, decoding._orientation(im)
    except Exception as exc:  # noqa: BLE001 - any refusal is an answer to compare
        return type(exc).__name__


def _fast(data: bytes) -> object:
    found = simple_jpeg_header(data)
    if found is None:
        return None
    w, h, orientation = found
    return w, h, "JPEG", orientation if 1 <= orientation <= 8 else 1


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("orientation", [None, 1, 3, 6, 8, 9])
def test_size_and_orientation_as_pillow(orientation: int | None, big_endian: bool) -> None:
    data = _jpeg(orientation, big_endian)
    assert _fast(data) == _pillow(data) == (40, 24, "JPEG", orientation if orientation in range(1, 9) else 1)


@pytest.mark.parametrize("save", [{"progressive": True}, {"dpi": (300, 300)}, {"comment": b"slide 4"}])
def test_common_variants_taken(save: dict) -> None:
    data = _jpeg(6, **save)
    assert _fast(data) == _pillow(data) == (40, 24, "JPEG", 6)


def test_left_to_pillow() -> None:
    xmp = _jpeg(xmp=b"<x:xmpmeta><tiff:Orientation>6</tiff:Orientation></x:xmpmeta>")
    icc = _jpeg(icc_profile=b"\0" * 200)
    assert _pillow(xmp)[3] == 6  # XMP's orientation counts for Pillow: never read without it  # type: ignore[index]
    for data in (xmp, icc, b"\xff\xd8\xff", b"not a jpeg", _jpeg(3)[:300]):
        assert simple_jpeg_header(data) is None


def test_damaged_headers_agree_or_fall_back() -> None:
    """Bytes of the header changed at random: the reader either declines or agrees with Pillow."""
    seeds = [_jpeg(6), _jpeg(None), _jpeg(8, True)]
    rng = random.Random(0)
    taken = 0
    for _ in range(600):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(2, 200)] = rng.randrange(256)
        found = _fast(bytes(data))
        if found is not None:
            taken += 1
            assert found == _pillow(bytes(data))
    assert taken > 100  # most single-byte changes hit pixel tables the reader passes over


def test_field_read_without_pillow(tmp_path) -> None:
    """Decoding a plain JPEG field imports no Pillow (its RSS is what this reader saves)."""
    path = tmp_path / "field.jpg"
    path.write_bytes(_jpeg(1))
    code = ("import sys; from edgekit.device.preprocess import read_image; "
            f"print(read_image({str(path)!r}).shape, 'PIL' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(24, 40, 3) False"
