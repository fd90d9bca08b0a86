# pyright: basic
"""Bounded, strict decoding of image files from untrusted sources.

Order of work for every file: refuse anything but a regular file (before a byte is read: a FIFO
cannot hang us), refuse files over ``max_bytes``, read the header with Pillow's lazy open (no pixel
or metadata block decoded; a plain single-image WebP's few header bytes directly, as libwebp reads
them, and a plain JPEG's markers (:mod:`~edgekit.device.jpeg_header`): no Pillow import) and refuse
images over ``max_pixels``; only then read the EXIF orientation (from the header: for PNG only an
eXIf chunk met before the pixel data) and decode.
Formats Pillow cannot identify are refused rather than handed to another decoder.

Partly decoded images are refused: OpenCV returns nothing for truncated PNG/JPEG/WebP/BMP/TIFF
files, and the size it decodes must match the header's. JPEGs whose entropy-coded data is corrupt
are decoded by libjpeg with grey fill and only a warning, which OpenCV sends to its log: the log is
captured while decoding and such JPEGs are refused. TIFFs are also decoded by Pillow as a strict
check (libtiff reports errors OpenCV ignores); float RGB TIFFs, which Pillow cannot identify, are
sized from their own first IFD and decoded by OpenCV (libtiff reports their damage there).

A WebP's RIFF container must be consistent (its size, every chunk inside the file, a VP8/VP8L
bitstream header) and libwebp must decode it without an error. WebP has no checksum: a bit flipped
inside lossy VP8 data that libwebp decodes without complaint cannot be told from a real image (such
pixels are left to the quality and domain gates). Images with more than one frame (animated GIF,
WebP or PNG, multi-page TIFF) are refused: which frame was meant cannot be guessed.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from edgekit.device.jpeg_header import simple_jpeg_header, unsupported_kind
from edgekit.digest import sha256 as digest_of
from edgekit.errors import FileChanged, ImageError

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
CHANGED_WHILE_READ = ("the file changed while it was read (replaced during the batch): not recorded; run the "
                      "command again to screen what it holds now")
_EXIF_ORIENTATION = 0x0112
# libjpeg's warnings for data it had to skip or invent (JWRN_HIT_MARKER, JWRN_HUFF_BAD_CODE,
# JWRN_MUST_RESYNC, JWRN_EXTRANEOUS_DATA, JWRN_JPEG_EOF, JWRN_BOGUS_PROGRESSION...). Zero or 0xFF
# padding before the end marker (some cameras write it; nothing is lost) is let through.
_JPEG_WARNINGS = (b"Corrupt JPEG data", b"Premature end of JPEG", b"Inconsistent progression")
_PADDING = re.compile(rb"Corrupt JPEG data: (\d+) extraneous bytes before marker 0xd9")


def _is_end_padding(line: bytes, data: bytes) -> bool:
    m = _PADDING.search(line)
    end = data.rfind(b"\xff\xd9")
    if not m or end < 0:
        return False
    n = int(m.group(1))
    return 0 < n <= end and set(data[end - n : end]) <= {0x00, 0xFF}
_capture_file: IO[bytes] | None = None


@contextlib.contextmanager
def captured_native_stderr() -> Iterator[io.BytesIO]:
    """Capture what native code writes to file descriptor 2 while the block runs (the bytes are in
    the yielded buffer afterwards), borrowed under :mod:`~edgekit.device.native_stderr`'s lock, so
    the program's own lines printed meanwhile by another thread are not captured. One temporary file
    is reused, so a capture costs a few system calls."""
    global _capture_file
    from edgekit.device.native_stderr import STDERR_LOCK, borrowed_stderr

    out = io.BytesIO()
    with STDERR_LOCK:
        if _capture_file is None:
            from edgekit.device.backends import scratch_file  # memfd: no tempfile import (cold start)

            _capture_file = scratch_file()
        tmp = _capture_file
        tmp.seek(0)
        tmp.truncate()
        with borrowed_stderr(tmp) as borrowed:
            yield out
        if borrowed:
            tmp.seek(0)
            out.write(tmp.read(64 * 1024))


@contextlib.contextmanager
def _quiet_pillow() -> Iterator[None]:
    """Pillow's "corrupt EXIF" and similar warnings: the one-line reason is ours."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def read_file_bytes(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """A regular file's bytes (FIFOs, devices, folders refused before reading), size-bounded."""
    from edgekit.safefile import NotRegularFile, read_regular_bytes

    try:
        data = read_regular_bytes(path, max_bytes, "image")
    except NotRegularFile as exc:
        reason = exc.reason
        if reason.startswith(("a ", "not a regular")):
            reason = f"not a regular file ({reason})" if reason.startswith("a ") else reason
        elif reason.startswith("too large"):
            reason = f"file {reason}"
        raise ImageError(reason) from exc
    if not data:
        raise ImageError("empty file (0 bytes)")
    return data


def _orientation(im) -> int:
    """EXIF orientation without decoding pixels (1 when absent, unknown or unreadable)."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1  # Pillow would decode the whole image looking for an eXIf chunk after the pixel data
    try:
        value = int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block must not stop a readable image
        return 1
    return value if 1 <= value <= 8 else 1


def probe_header(data: bytes, max_pixels: int) -> tuple[int, int, str, int]:
    """(width, height, format, EXIF orientation) from the header; ImageError when too large,
    zero-sized or not an image Pillow can identify."""
    simple = simple_webp_size(data)
    if simple is not None:  # most crops: no Pillow (its import is ~15 ms of a cold start)
        _check_size(*simple, max_pixels)
        return *simple, "WEBP", 1
    jpeg = simple_jpeg_header(data)
    if jpeg is not None:  # most camera fields: no Pillow either (its modules and libraries: ~5 MB of RSS)
        w, h, orientation = jpeg
        _check_size(w, h, max_pixels)
        return w, h, "JPEG", orientation if 1 <= orientation <= 8 else 1
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # our own limit below, from the header alone
    try:
        with _quiet_pillow(), _open_header(data) as im:
            w, h = im.size
            fmt = im.format or "?"
            _check_size(w, h, max_pixels)
            if fmt == "WEBP":
                _check_webp(data)
            if fmt in _MULTI_FRAME and getattr(im, "is_animated", False):
                raise ImageError(_multi_frame(fmt, getattr(im, "n_frames", 0)))
            return w, h, fmt, _orientation(im)
    except UnidentifiedImageError as exc:
        if data[:4] in (b"II*\x00", b"MM\x00*"):  # a TIFF Pillow cannot open: float RGB, say
            w, h, pages = _tiff_header(data)
            _check_size(w, h, max_pixels)
            if pages > 1:
                raise ImageError(_multi_frame("TIFF", pages)) from exc
            return w, h, _TIFF_FOR_OPENCV, 1
        raise ImageError(_unreadable(data, "corrupt, not an image, or a format edgekit does not read")
                         ) from exc
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as exc:
        raise ImageError(f"unreadable image header ({exc})") from exc


# ISO-BMFF brands of HEIF images coded with HEVC (AVIF, the same container with AV1, is read)
_HEIC_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1")


def _unreadable(data: bytes, fallback: str) -> str:
    """The reason a file no decoder here reads is refused: its kind when known (a HEIC photo, whatever
    its name; a 12-bit, lossless or arithmetic-coded JPEG), else ``fallback``."""
    if data[4:8] == b"ftyp" and data[8:12] in _HEIC_BRANDS:
        return ("a HEIC (HEIF/HEVC) image, whatever its name: edgekit does not read HEIC; save it as "
                "JPEG or PNG (on a phone camera: the 'most compatible' format)")
    return unsupported_kind(data) or fallback


_MULTI_FRAME = ("GIF", "WEBP", "TIFF", "PNG")  # formats whose files may hold frames or pages (APNG)
_TIFF_FOR_OPENCV = "TIFF (decoded by OpenCV)"  # a TIFF Pillow cannot identify (float RGB)


def _check_size(w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise ImageError(f"image too large ({w}x{h} = {w * h / 1e6:.0f} MP > {max_pixels / 1e6:.0f} MP)")
    if w <= 0 or h <= 0:
        raise ImageError("image has zero size")


def _multi_frame(fmt: str, n: int) -> str:
    kind = "a multi-page TIFF" if fmt == "TIFF" else f"an animated {fmt.replace('WEBP', 'WebP')}"
    count = f"{n} frames" if n > 1 else "more than one frame"
    return (f"{kind} ({count}): edgekit classifies single images and cannot tell which frame is meant; "
            "save that frame as its own file")


def _tiff_header(data: bytes) -> tuple[int, int, int]:
    """(width, height, pages) from a TIFF's first IFD, read with bounds checks (Pillow cannot
    identify some valid TIFFs, float RGB ones among them); pages counts at most 2."""
    order = "<" if data[:2] == b"II" else ">"
    try:
        off = struct.unpack(order + "I", data[4:8])[0]
        n = struct.unpack(order + "H", data[off : off + 2])[0]
        if n == 0 or off + 2 + 12 * n + 4 > len(data):
            raise ImageError("corrupt TIFF (its first directory lies outside the file)")
        tags = {}
        for i in range(n):
            tag, typ, count = struct.unpack(order + "HHI", data[off + 2 + 12 * i : off + 10 + 12 * i])
            raw = data[off + 10 + 12 * i : off + 14 + 12 * i]
            if count == 1 and typ in (3, 4):  # SHORT or LONG value held in the entry
                tags[tag] = struct.unpack(order + ("H" if typ == 3 else "I"), raw[: 2 if typ == 3 else 4])[0]
        nxt = struct.unpack(order + "I", data[off + 2 + 12 * n : off + 6 + 12 * n])[0]
    except struct.error as exc:
        raise ImageError("corrupt TIFF header") from exc
    if 256 not in tags or 257 not in tags:
        raise ImageError("corrupt TIFF (no image width or height)")
    return int(tags[256]), int(tags[257]), 2 if nxt else 1


def _check_webp(data: bytes) -> None:
    """The RIFF container of a WebP is consistent: its declared size is the file's, every chunk lies
    inside it, and the VP8 / VP8L bitstream header is sound. (What the decoder cannot see: see the
    module docstring.)"""
    if len(data) < 20 or struct.unpack("<I", data[4:8])[0] + 8 != len(data):
        raise ImageError("corrupt WebP: the RIFF size does not match the file (truncated or padded)")
    pos = 12
    while pos < len(data):
        if pos + 8 > len(data):
            raise ImageError("corrupt WebP: a chunk header is cut off")
        tag, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if len(body) != size:
            raise ImageError(f"corrupt WebP: chunk {tag.decode('latin-1')!r} runs past the end of the file")
        if tag == b"VP8 ":
            bits = int.from_bytes(body[:3], "little") if size >= 10 else 1
            if bits & 1 or body[3:6] != b"\x9d\x01\x2a" or 10 + (bits >> 5) > size:
                raise ImageError("corrupt WebP: damaged VP8 frame header")
        elif tag == b"VP8L" and (size < 5 or body[0] != 0x2F or body[4] >> 5):
            raise ImageError("corrupt WebP: damaged VP8L header")
        pos += 8 + size + (size & 1)


def simple_webp_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a single-image WebP in the simple format (a VP8 or VP8L bitstream and
    nothing else: no animation, no EXIF), read as libwebp reads it for Pillow, when the file passes
    every check that libwebp's header parser and :func:`_check_webp` make; None for anything else,
    which Pillow then opens (and refuses) as before."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    try:
        _check_webp(data)
    except ImageError:
        return None
    tag, size, body = data[12:16], struct.unpack("<I", data[16:20])[0], data[20:30]
    if 20 + size + (size & 1) != len(data):  # one bitstream chunk, the whole file
        return None
    if tag == b"VP8 ":  # libwebp's VP8GetInfo: a shown key frame of a known profile, sized inside the chunk
        bits = int.from_bytes(body[:3], "little")
        if bits & 1 or (bits >> 1) & 7 > 3 or not (bits >> 4) & 1 or bits >> 5 >= size:
            return None
        w, h = (int.from_bytes(body[6:8], "little") & 0x3FFF, int.from_bytes(body[8:10], "little") & 0x3FFF)
    elif tag == b"VP8L":  # VP8LGetInfo: signature, then 14-bit sizes, alpha bit, 3 version bits of 0
        bits = int.from_bytes(body[1:5], "little")
        if body[0] != 0x2F or bits >> 29:
            return None
        w, h = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    else:
        return None
    return (w, h) if w and h else None


# file signatures -> (Pillow format, plugin module): the one plugin tried first for such a file
_SIGNATURES = (
    (0, b"\x89PNG\r\n\x1a\n", "PNG", "PngImagePlugin"),
    (0, b"\xff\xd8\xff", "JPEG", "JpegImagePlugin"),
    (8, b"WEBP", "WEBP", "WebPImagePlugin"),
)


def _open_header(data: bytes):
    """``PIL.Image.open`` of ``data``, but first with only the plugin its signature names, opened as
    ``Image.open`` would open it (the plugin's own accept test, then its image class; a header it
    cannot parse is left to Pillow's full search, as before). Pillow itself picks a plugin by file
    extension; without a name it imports its 5 common plugins (GIF's pulls in ``subprocess``), and
    for a WebP all ~45: 30-50 ms of a cold start."""
    import importlib

    from PIL import Image

    for at, magic, fmt, plugin in _SIGNATURES:
        if data[at : at + len(magic)] != magic:
            continue
        try:
            importlib.import_module(f"PIL.{plugin}")
            factory, accept = Image.OPEN[fmt]
        except (ImportError, KeyError):
            break
        if accept is None or accept(data[:16]) is True:
            try:
                return factory(io.BytesIO(data), "")
            except (SyntaxError, IndexError, TypeError, struct.error):
                pass  # what Image.open does with a plugin that does not take the file: try the others
        break
    return Image.open(io.BytesIO(data))


def strict_check(data: bytes, fmt: str) -> None:
    """Refuse TIFFs that libtiff cannot fully decode (OpenCV returns what it got)."""
    if fmt == "TIFF":
        from PIL import Image

        try:
            with captured_native_stderr(), _quiet_pillow(), Image.open(io.BytesIO(data)) as im:
                im.load()
        except Exception as exc:  # noqa: BLE001 - Pillow raises OSError/ValueError/SyntaxError...
            raise ImageError(f"corrupt or truncated TIFF ({str(exc)[:120]})") from exc


def _imdecode(data: bytes, fmt: str) -> np.ndarray | None:
    """``cv2.imdecode`` with OpenCV's warnings captured; a JPEG whose decoder warned about corrupt or
    missing data (it fills the gap with grey) is refused."""
    import cv2

    # libwebp reports a damaged stream by failing (None), never on stderr, and its log is not read:
    # no capture for WebP, whose process-wide lock would serialise decoding across the worker
    # threads (NIH crops come as WebP)
    quiet = fmt == "WEBP"
    log = cv2.utils.logging
    old = log.getLogLevel()
    if not quiet:
        log.setLogLevel(max(old, log.LOG_LEVEL_WARNING))  # libjpeg's warnings come through OpenCV's log
    try:
        with contextlib.nullcontext(io.BytesIO()) if quiet else captured_native_stderr() as err:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageError(f"unreadable image ({str(exc).strip().splitlines()[-1][:120]})") from exc
    finally:
        if not quiet:
            log.setLogLevel(old)
    if fmt in ("JPEG", "MPO"):
        bad = [ln for ln in err.getvalue().splitlines()
               if any(w in ln for w in _JPEG_WARNINGS) and not _is_end_padding(ln, data)]
        if bad:
            first = bad[0].decode("utf-8", "replace").strip()
            first = first[first.find("Corrupt") if "Corrupt" in first else 0 :][:100]
            raise ImageError(f"corrupt JPEG data, the decoder would fill the gap with grey ({first})")
    return img


def decode_bounded(path: str | os.PathLike, max_pixels: int, max_bytes: int = DEFAULT_MAX_BYTES,
                   sha256: str | None = None) -> tuple[np.ndarray, int]:
    """OpenCV's ``IMREAD_UNCHANGED`` array of ``path`` and its EXIF orientation, after the checks in
    the module docstring. ``sha256``: the content hash the caller took of the file (what a screening
    record is keyed on); bytes that differ from it are refused, never decoded under that hash."""
    data = read_file_bytes(Path(path), max_bytes)
    if sha256 is not None and digest_of(data).hexdigest() != sha256:
        raise FileChanged(CHANGED_WHILE_READ)
    return decode_data(data, max_pixels)


def decode_data(data: bytes, max_pixels: int) -> tuple[np.ndarray, int]:
    """:func:`decode_bounded` of a file's bytes already read (:func:`read_file_bytes`): for a caller
    that hashes the very bytes it decodes, one read for both."""
    w, h, fmt, orientation = probe_header(data, max_pixels)
    strict_check(data, fmt)
    img = _imdecode(data, fmt)  # libpng/libtiff/libjpeg complaints captured: our one-line reason instead
    if img is None or img.size == 0:
        raise ImageError(_unreadable(data, f"corrupt, truncated or unsupported {fmt} image"))
    if img.shape[:2] != (h, w):
        raise ImageError(f"decoded size {img.shape[1]}x{img.shape[0]} differs from the header's {w}x{h}")
    if fmt == "TIFF" and img.ndim == 3 and img.shape[2] == 4 and not _tiff_has_alpha(data):
        img = img[:, :, :3]  # a 4th sample that is padding (RGBX, a camera's BGRX): not transparency
    return img, orientation


def _tiff_has_alpha(data: bytes) -> bool:
    """Whether a TIFF's extra sample is transparency (ExtraSamples 2, unassociated alpha), as Pillow
    reads it; OpenCV hands any 4th sample on as alpha, so an unspecified one (0) would black it out."""
    from PIL import Image

    with _quiet_pillow(), Image.open(io.BytesIO(data)) as im:
        return tuple(getattr(im, "tag_v2", {}).get(338, ()))[:1] == (2,)
