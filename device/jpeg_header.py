# pyright: basic
"""A plain JPEG's size and EXIF orientation from its markers, without Pillow.

Pillow's import and lazy open cost a whole-field run ~5 MB of peak RSS (its modules and shared
libraries) and a few ms per file, only to read two numbers from the header. :func:`simple_jpeg_header`
reads them for the JPEGs cameras and microscopes write (JFIF or one EXIF block, 8-bit baseline,
extended or progressive), accepting only what Pillow opens the same way: anything else (XMP, ICC
or MPF blocks, odd markers, padding, a damaged EXIF block, 12-bit or arithmetic coding) returns
None, and the caller asks Pillow as before. :func:`unsupported_kind` names the kinds no decoder here
reads (12-bit, lossless, hierarchical), for the one-line refusal of such a file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_SOF = (0xC0, 0xC1, 0xC2)  # baseline, extended sequential, progressive Huffman DCT
_SKIPPED = (0xC4, 0xDD, 0xFE)  # Huffman tables, restart interval, comment: nothing Pillow checks
_ORIENTATION = 0x0112
# bytes per value of each TIFF field type Pillow's EXIF reader loads (others it ignores)
_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8}


def simple_jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, EXIF orientation as stored: 1 without one) of a plain JPEG; None for anything
    this reader does not take (the caller then opens it with Pillow)."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    header, pos = _Header(), 2
    while True:
        segment = _segment_at(data, pos)
        if segment is None:
            return None
        marker, body = segment
        if marker == 0xDA:  # start of scan: the header is over
            return None if header.size is None else (*header.size, header.orientation)
        if not header.take(marker, body):
            return None
        pos += 4 + len(body)


def jpeg_coding(data: bytes) -> tuple[int, int] | None:
    """(start-of-frame marker, sample precision in bits) of a JPEG's first frame, whatever its kind
    (12-bit, lossless, arithmetic-coded...); None when no frame header is found before the scan."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    pos = 2
    while (segment := _segment_at(data, pos)) is not None:
        marker, body = segment
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and body:
            return marker, body[0]
        if marker == 0xDA:
            return None
        pos += 4 + len(body)
    return None


def unsupported_kind(data: bytes) -> str | None:
    """Why a JPEG that could not be decoded is of a kind the decoder does not take (None: not known
    to be one): a precision other than 8 bits, lossless or hierarchical coding, arithmetic coding."""
    coding = jpeg_coding(data)
    if coding is None:
        return None
    marker, bits = coding
    if bits != 8:
        return (f"a {bits}-bit JPEG: edgekit reads 8-bit JPEGs (save it as an 8-bit JPEG, or a 16-bit PNG "
                "or TIFF)")
    if marker in (0xC3, 0xC7, 0xCB, 0xCF):
        return "a lossless JPEG, which edgekit does not read (save it as PNG or TIFF)"
    if marker in (0xC5, 0xC6, 0xCD, 0xCE):
        return "a hierarchical JPEG, which edgekit does not read (save it as an ordinary JPEG or PNG)"
    if marker >= 0xC9:
        return "an arithmetic-coded JPEG this build cannot decode (save it as an ordinary JPEG or PNG)"
    return None


def _segment_at(data: bytes, pos: int) -> tuple[int, bytes] | None:
    """(marker, body) of the segment at ``pos``; None when it is cut or no segment starts there."""
    if pos + 4 > len(data) or data[pos] != 0xFF:
        return None
    length = int.from_bytes(data[pos + 2 : pos + 4], "big")
    body = data[pos + 4 : pos + 2 + length]
    if length < 2 or len(body) != length - 2:
        return None
    return data[pos + 1], body


@dataclass
class _Header:
    """What the segments before the scan said."""

    size: tuple[int, int] | None = None
    orientation: int = 1
    exif_seen: bool = False

    def take(self, marker: int, body: bytes) -> bool:
        """Whether this reader takes the segment (recording what it says); False: leave it to Pillow."""
        if marker in _SOF:
            if self.size is not None or len(body) < 6 or body[0] != 8 or body[5] not in (1, 3, 4):
                return False
            self.size = (int.from_bytes(body[3:5], "big"), int.from_bytes(body[1:3], "big"))
            return True
        if marker == 0xDB:
            return _tables_whole(body)
        if marker == 0xE0:
            return not (body.startswith(b"JFIF") and len(body) < 7)  # Pillow fails on a cut JFIF version
        if marker == 0xE1:
            return self._exif(body)
        return marker in _SKIPPED

    def _exif(self, body: bytes) -> bool:
        if self.exif_seen or not body.startswith(b"Exif\0\0"):  # XMP may hold an orientation too
            return False
        self.exif_seen = True
        found = _exif_orientation(body[6:])
        if found is None:
            return False
        self.orientation = found
        return True


def _tables_whole(body: bytes) -> bool:
    """Every quantization table of a DQT segment is whole (Pillow refuses the file otherwise)."""
    while body:
        n = 1 + 64 * (1 if body[0] < 16 else 2)
        if len(body) < n:
            return False
        body = body[n:]
    return True


def _exif_orientation(tiff: bytes) -> int | None:
    """The orientation tag of IFD0 of an EXIF block's TIFF data (1 when absent), when every IFD0
    entry lies inside the block, as Pillow reads it; None when anything is off."""
    if tiff[:4] == b"II*\x00":
        end = "<"
    elif tiff[:4] == b"MM\x00*":
        end = ">"
    else:
        return None
    try:
        (ifd,) = struct.unpack_from(end + "L", tiff, 4)
        (count,) = struct.unpack_from(end + "H", tiff, ifd)
        if ifd + 2 + 12 * count + 4 > len(tiff):
            return None
        orientation, seen, total = 1, set(), 0
        for i in range(count):
            tag, typ, n, value = struct.unpack_from(end + "HHL4s", tiff, ifd + 2 + 12 * i)
            if tag in seen or typ not in _TYPE_SIZE:
                return None  # duplicates and unknown types: Pillow's own rules
            seen.add(tag)
            size = n * _TYPE_SIZE[typ]
            if size > 4:
                total += size
                (offset,) = struct.unpack_from(end + "L", value)
                if offset + size > len(tiff) or total > len(tiff):
                    return None
            if tag == _ORIENTATION:
                if typ != 3 or n != 1:
                    return None
                (orientation,) = struct.unpack_from(end + "H", value)
        return orientation
    except struct.error:
        return None
