# pyright: basic
"""Field identity across a session: a field that overlaps one already counted is not counted again.

Each counted field keeps a small signature: its grey thumbnail, ``SIG_WIDTH`` pixels wide (stored
with the field in the screening records). Two fields are the same stretch of smear when phase
correlation of their high-passed thumbnails, tried at a few relative scales (a retake a little
zoomed in or out), finds a strong peak at a shift that leaves most of the view shared. This
tolerates JPEG re-encoding, shifts, ~0.9x rescaling and a little blur; two different fields of
the same smear give no strong peak (rates in ``benchmarks/results/focus_floor.json``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.device.field.resample import resize_exact
from edgekit.device.field.view import Outside, within_view
from edgekit.device.preprocess import opencv

SIG_WIDTH = 160
SCALES = (1.0, 0.95, 1 / 0.95, 0.9, 1 / 0.9, 0.85, 1 / 0.85)
MIN_RESPONSE = 0.7  # phase-correlation peak over which two fields are one (retakes >= 0.77, others <= 0.62)
MIN_OVERLAP = 0.5  # shared fraction of the view over which they are the same field


@dataclass(frozen=True)
class Signature:
    """A field's grey thumbnail (uint8, ``SIG_WIDTH`` wide)."""

    thumb: np.ndarray

    def to_bytes(self) -> bytes:
        h, w = self.thumb.shape
        return bytes([h >> 8, h & 255, w >> 8, w & 255]) + self.thumb.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Signature:
        h, w = (data[0] << 8) | data[1], (data[2] << 8) | data[3]
        return cls(np.frombuffer(data[4:], np.uint8).reshape(h, w))


def signature(rgb: np.ndarray, outside: Outside = ...) -> Signature:
    """The signature of a field (any size, RGB or grey), an eyepiece's dark surround painted out
    (:func:`~edgekit.device.field.view.within_view`): the same black disc on every photo matched
    two different fields (2 of 56 pairs of IML/BCCD fields) and split a retake's match between the
    disc and the smear (2 of 16 retakes shifted by 5% caught; painted, 13 of 16 and no false match).
    ``outside``: the surround when the caller found it (:func:`~edgekit.device.field.view.surround`)."""
    cv2 = opencv()
    rgb = within_view(rgb, outside=outside)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    h, w = gray.shape[:2]
    size = (SIG_WIDTH, max(8, round(h * SIG_WIDTH / w)))
    return Signature(resize_exact(gray, size))


def _highpass(thumb: np.ndarray) -> np.ndarray:
    cv2 = opencv()
    g = thumb.astype(np.float32)
    g = g - cv2.GaussianBlur(g, (0, 0), 6)
    return g / max(float(g.std()), 1e-3)


@dataclass(frozen=True)
class Probe:
    """A signature made ready to be matched against many (:func:`probe`): its high-passed thumbnail
    with the phase correlation's window applied, and the window, computed once, not once a pair."""

    signature: Signature
    windowed: np.ndarray
    window: np.ndarray


def probe(a: Signature) -> Probe:
    """``a`` ready for :func:`match` against each field of a session (the same results, bit for bit)."""
    cv2 = opencv()
    h, w = a.thumb.shape
    window = cv2.createHanningWindow((w, h), cv2.CV_32F)
    return Probe(a, cv2.multiply(_highpass(a.thumb), window), window)


def match(a: Signature | Probe, b: Signature) -> tuple[float, float]:
    """(best phase-correlation peak over the tried scales, shared fraction of the view at it).

    The window is applied here, as ``phaseCorrelate`` would (the same product, the same results):
    OpenCV 4.x multiplies the arrays it is given by the window in place (when their size needs no
    padding, as a thumbnail's), so each scale saw both thumbnails windowed again and again, and
    matches differed from OpenCV 5's."""
    cv2 = opencv()
    pa = a if isinstance(a, Probe) else probe(a)
    ta, window = pa.windowed, pa.window
    h, w = ta.shape
    tb = b.thumb
    if tb.shape != pa.signature.thumb.shape:
        tb = cv2.resize(tb, (w, h), interpolation=cv2.INTER_AREA)
    tb = _highpass(tb)
    best = (0.0, 0.0)
    for s in SCALES:
        m = np.array([[s, 0, (1 - s) * w / 2], [0, s, (1 - s) * h / 2]], np.float32)
        warped = tb if s == 1.0 else cv2.warpAffine(tb, m, (w, h), borderMode=cv2.BORDER_REFLECT)
        (dx, dy), response = cv2.phaseCorrelate(ta, cv2.multiply(warped, window))
        overlap = max(0.0, 1 - abs(dx) / w) * max(0.0, 1 - abs(dy) / h) * min(s, 1 / s) ** 2
        if response > best[0]:
            best = (float(response), float(overlap))
    return best


def same_field(a: Signature | Probe, b: Signature) -> bool:
    """Whether two signatures show the same stretch of smear (``a`` may be :func:`probe`'s, to be
    matched against many)."""
    response, overlap = match(a, b)
    return response >= MIN_RESPONSE and overlap >= MIN_OVERLAP
