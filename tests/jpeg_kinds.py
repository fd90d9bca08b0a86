"""JPEG files of the kinds phones, scanners and archives write, built from given pixels (for the
hostile-input tests): each is (file, what the device must do with it: ``None`` read it as the same
picture, else a word its one-line refusal names)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

# no writer for arithmetic-coded JPEGs here: Pillow and OpenCV write Huffman coding only, and an
# arithmetic coder by hand needs the QM coder's 113-state table
ARITHMETIC_SKIP = "no writer for arithmetic-coded JPEGs (Pillow and OpenCV write only Huffman coding)"


def _seg(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def flat_block_jpeg(levels: np.ndarray, precision: int = 8) -> bytes:
    """A greyscale sequential Huffman JPEG of flat 8x8 blocks (``levels``: a block value each,
    0..2**precision - 1): DC-only coding, written by hand (no library writes 12-bit JPEGs)."""
    rows, cols = levels.shape
    sof = bytes([precision]) + struct.pack(">HH", rows * 8, cols * 8) + bytes([1, 1, 0x11, 0])
    header = (_seg(0xDB, bytes(1) + bytes([1] * 64)) + _seg(0xC0 if precision == 8 else 0xC1, sof)
              + _seg(0xC4, bytes([0x00, 0, 0, 0, 0, 16] + [0] * 11) + bytes(range(16)))  # DC: 5-bit codes
              + _seg(0xC4, bytes([0x10, 1] + [0] * 15) + bytes(1))  # AC: end of block only, code '0'
              + _seg(0xDA, bytes([1, 1, 0x00, 0, 63, 0])))
    bits, prev, shift = [], 0, 1 << (precision - 1)
    for v in levels.ravel():
        dc = 8 * (int(v) - shift)
        diff, prev = dc - prev, dc
        cat = abs(diff).bit_length()
        extra = format(diff if diff > 0 else diff + (1 << cat) - 1, f"0{cat}b") if cat else ""
        bits += format(cat, "05b") + extra
        bits += "0"
    bits += "1" * (-len(bits) % 8)
    data = bytearray()
    for i in range(0, len(bits), 8):
        data.append(int("".join(bits[i:i + 8]), 2))
        if data[-1] == 0xFF:
            data.append(0)
    return b"\xff\xd8" + header + bytes(data) + b"\xff\xd9"


def _ycck(rgb: np.ndarray, path: Path) -> None:
    """An Adobe YCCK JPEG (what Photoshop writes for CMYK): Pillow's CMYK writer given the YCC
    channels, its Adobe marker's transform flag set to 2."""
    import cv2
    from PIL import Image

    ycc = cv2.cvtColor(np.ascontiguousarray(255 - rgb), cv2.COLOR_RGB2YCrCb)[:, :, [0, 2, 1]]
    cmyk = np.dstack([255 - ycc, np.zeros(rgb.shape[:2], np.uint8)]).astype(np.uint8)
    Image.fromarray(cmyk, "CMYK").save(path, format="JPEG", quality=100)
    data = bytearray(path.read_bytes())
    at = data.find(b"Adobe")
    data[at + 11] = 2
    path.write_bytes(bytes(data))


def jpeg_kinds(rgb: np.ndarray, folder: Path) -> dict[str, tuple[Path, str | None]]:
    """Every kind, of the picture ``rgb`` (uint8 RGB) where the kind can hold it."""
    import cv2
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(rgb)
    out: dict[str, tuple[Path, str | None]] = {}

    def put(name: str, expect: str | None = None) -> Path:
        out[name] = (folder / f"{name}.jpg", expect)
        return folder / f"{name}.jpg"

    im.save(put("plain"), format="JPEG", quality=95)
    im.convert("CMYK").save(put("cmyk"), format="JPEG", quality=95)
    _ycck(rgb, put("ycck"))
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [
        cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_RST_INTERVAL, 1, cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    put("progressive_restarts").write_bytes(buf.tobytes())
    im.save(put("avif_named_jpg"), format="AVIF", quality=90)
    put("heic_named_jpg", "HEIC").write_bytes(
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00\x00\x01\x00mdat" + bytes(248))
    im.save(put("huge_icc"), format="JPEG", quality=95, icc_profile=bytes(4 * 1024 * 1024))
    exif = Image.Exif()
    exif[0x010E] = "x" * 60000  # ImageDescription: a 60 kB EXIF block (one APP1 segment holds 64 kB)
    im.save(put("huge_exif"), format="JPEG", quality=95, exif=exif.tobytes())
    # a phone photo held sideways: stored turned 90 degrees anticlockwise, EXIF orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1))).save(put("exif_rotated"), format="JPEG",
                                                                 quality=95, exif=exif.tobytes())
    levels = (cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (max(1, rgb.shape[1] // 8),
                                                                 max(1, rgb.shape[0] // 8)),
                         interpolation=cv2.INTER_AREA).astype(int) * 16)
    put("twelve_bit", "12-bit").write_bytes(flat_block_jpeg(levels, 12))
    return out
