# pyright: basic
"""Burned-in marks: scale bars, labels, timestamps, rulers a camera or its software draws on a field.

They are drawn after the optics, so they stay sharp whatever the focus, and their step edges are
far sharper than any edge the microscope passes: a focus measure that reads them judges the mark,
not the smear (IML's "50 um" bar carried most of its fields' focus scores). They are found by what
makes them marks, not by where or what colour they are: pixels of a flat extreme colour (every
channel near 0 or near 255: black, white, pure red, yellow, ...) with a step of at least STEP grey
levels to a pixel at most 2 px away, in small clusters (a bar, a word). A stained field has no
such pixels: its darkest stain passes some light, and its edges are spread over a few pixels by
the optics. A cluster too large to be a label (an overexposed background meeting dark cells) is
the field's own content and is not a mark.
"""

from __future__ import annotations

import numpy as np

from edgekit.device.preprocess import opencv

LOW, HIGH = 40, 245  # black: no channel above LOW; white: none below HIGH
# a pure colour: its strongest channel at least COLOUR, its weakest at most TINT (JPEG halves a thin
# stroke's colour resolution and mixes the field's in)
COLOUR, TINT = 240, 120
STEP = 60  # grey levels (any channel) within 2 px: a step no optical edge of a field makes
STEP_WHITE = 45  # the same from white (a label on a bright background has less contrast)
MIN_PIXELS = 30  # step pixels a cluster needs to be a mark (a few stray ones are noise)
JOIN = 15  # px: step pixels this close are one cluster (the glyphs of a word, a bar and its ticks)
MAX_SHARE = 0.02  # a cluster whose bounding box covers more of the field than this is no label
MAX_TOTAL = 0.05  # marks covering more of the field than this are its own content: none is masked


def burned_marks(rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The bounding boxes (x0, y0, x1, y1; exclusive ends) of the burned-in marks in RGB field
    ``rgb``; [] when there are none (most fields: they are then decided on their extreme pixels
    alone)."""
    cv2 = opencv()
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 8:
        return []
    hi, lo = _channel_max_min(rgb)
    # black; white; or a pure colour (JPEG bleeds a thin stroke's other channels in, up to TINT)
    white = lo >= HIGH
    extreme = (hi <= LOW) | white | ((hi >= COLOUR) & (lo <= TINT))
    ext8 = extreme.view(np.uint8)  # OpenCV counts and boxes them in a fraction of np.nonzero's time
    if cv2.countNonZero(ext8) < MIN_PIXELS:
        return []
    # the rest on the box around the extreme pixels (a mark's corner), wide enough that every
    # window below sees what it would on the whole field
    h, w = rgb.shape[:2]
    m = JOIN // 2 + 3
    bx, by, bw, bh = cv2.boundingRect(ext8)
    y0, y1 = max(0, by - m), min(h, by + bh + m)
    x0, x1 = max(0, bx - m), min(w, bx + bw + m)
    part, extreme, white = rgb[y0:y1, x0:x1], extreme[y0:y1, x0:x1], white[y0:y1, x0:x1]
    k = np.ones((5, 5), np.uint8)
    spread = _channel_max_min(cv2.subtract(cv2.dilate(part, k), cv2.erode(part, k)))[0]
    step = ((extreme & (spread >= STEP)) | (white & (spread >= STEP_WHITE))).view(np.uint8)
    if int(np.count_nonzero(step)) < MIN_PIXELS:
        return []
    joined = cv2.dilate(step, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (JOIN, JOIN)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    counts = np.bincount(labels[step.view(bool)], minlength=n)
    boxes = []
    for i in range(1, n):
        x, y, bw, bh = (int(v) for v in stats[i, :4])
        if counts[i] >= MIN_PIXELS and bw * bh <= MAX_SHARE * h * w:
            boxes.append((x0 + x, y0 + y, x0 + x + bw, y0 + y + bh))
    if sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes) > MAX_TOTAL * h * w:
        return []
    return boxes


def _channel_max_min(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's largest and smallest channel (OpenCV's: numpy's reduction over 3 channels is
    several times slower)."""
    cv2 = opencv()
    a, b, c = cv2.split(rgb)
    return cv2.max(cv2.max(a, b), c), cv2.min(cv2.min(a, b), c)


def marks_mask(boxes: list[tuple[int, int, int, int]], shape: tuple[int, int], scale: float,
               grow: int) -> np.ndarray:
    """The boxes (found at the field's own pixels) at ``scale`` x its size, as a bool mask of
    ``shape``, each grown by ``grow`` px there: the reach of a mark's edges into the gradients
    (the blur pair, Sobel, JPEG's 8-px blocks)."""
    mask = np.zeros(shape, bool)
    h, w = shape
    for x0, y0, x1, y1 in boxes:
        ya, yb = max(0, int(y0 * scale) - grow), min(h, int(np.ceil(y1 * scale)) + grow)
        xa, xb = max(0, int(x0 * scale) - grow), min(w, int(np.ceil(x1 * scale)) + grow)
        mask[ya:yb, xa:xb] = True
    return mask
