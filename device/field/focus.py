"""One focus judgement for every capture path (files, folders, ``screen --fields``, camera, phone).

The measure is the sharpness of the field's strongest edges, relative to the same edges seen
through a slightly wider blur: the ratio of the mean gradient magnitude on the 5% strongest edges
after a Gaussian of sigma 0.5 to the same after sigma 1.2, minus 1. It is a ratio of the field
with itself, so it does not depend on stain, contrast or exposure, and it is measured on the
strongest edges (cell outlines, parasites) so sensor noise and JPEG blocks move it little. A
blurred field's edges are already wide, so the extra blur changes them little and the score falls.

Thresholds (the one place they live), set with ``benchmarks/focus_floor.py`` on the calibration
blocks of real in-focus IML, BCCD and NIH-like fields and their Gaussian-blurred copies (sigma 1-4,
with JPEG re-encoding or sensor noise), and measured on held-out blocks: see
``benchmarks/results/focus_floor.json``.
"""

from __future__ import annotations

import numpy as np

from edgekit.device.preprocess import _cv2

FOCUS_FLOOR = 0.095  # below it a field is out of focus, whatever the session (focus_floor.json)
SESSION_RATIO = 0.55  # below this fraction of the session's sharpest recent field: out of focus
SESSION_RECENT = 10  # how many recently counted fields of the session set that reference
MAX_SIDE = 1600  # fields are measured at most this large (a 12 MP phone photo is shrunk first)
EDGE_QUANTILE = 95  # the strongest 5% of edges


def focus_score(rgb: np.ndarray) -> float:
    """The field's focus score (see the module docstring): about 0.10-0.30 in focus, under 0.09
    for a Gaussian blur of sigma 2 px or more."""
    cv2 = _cv2()
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    scale = MAX_SIDE / max(gray.shape[:2])
    if scale < 1:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    g = gray.astype(np.float32)
    # each full-size float32 plane is ~5 MB of a 1280x960 field: free each one once it is used
    # (the same operations as at once, ~10 MB less at the peak, per field in flight)
    fine, coarse = cv2.GaussianBlur(g, (0, 0), 0.5), cv2.GaussianBlur(g, (0, 0), 1.2)
    del g
    fine = _grad(fine)
    coarse = _grad(coarse)
    flat = coarse.ravel()
    k = int(flat.size * EDGE_QUANTILE / 100)
    level = float(np.partition(flat, k)[k]) if flat.size else 0.0
    if level <= 1e-3:  # no edges at all: a blank field (the blank check says so first)
        return 0.0
    sel = coarse >= level
    return float(fine[sel].mean() / max(float(coarse[sel].mean()), 1e-6)) - 1.0


def _grad(g: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    dx = cv2.Sobel(g, cv2.CV_32F, 1, 0)
    return cv2.magnitude(dx, cv2.Sobel(g, cv2.CV_32F, 0, 1), dx)  # into dx: one plane less


def focus_reason(score: float, session_best: float | None = None) -> str | None:
    """"out of focus (...)" when ``score`` is below the floor, or well below ``session_best`` (the
    sharpest recent field of the same session); else None."""
    if score < FOCUS_FLOOR:
        return f"out of focus (sharpness {score:.3f} < {FOCUS_FLOOR})"
    if session_best and score < SESSION_RATIO * session_best:
        return (f"out of focus (sharpness {score:.3f}, well below this session's recent fields: "
                f"{session_best:.3f}); focus and take it again")
    return None
