# pyright: basic
"""The microscope's field of view: what lies outside it is no smear.

A phone held to the eyepiece, or a camera whose sensor is larger than the eyepiece's field stop,
photographs a disc of smear in a black surround. The surround is one huge, very dark object to the
cell finder ("cells overlap into one mass", or "no red cells found" when its background estimate
falls on the black) and its sharp rim is the strongest edge the focus measure sees (the field
stop lies in the eyepiece's image plane: it stays sharp while the smear is out of focus). So the
surround is found and painted with the field's own background colour before the field is judged
or counted: dark in every colour channel (a stained cell or a white cell's nucleus still passes
light in at least one), joined to the image border, grown by its soft rim.

A field without such a surround is returned as it is (the same array): only its border pixels are
looked at.
"""

from __future__ import annotations

from types import EllipsisType

import numpy as np

from edgekit.device.field.segment import background_colour, working_copy
from edgekit.device.field.types import FieldParams
from edgekit.device.order import percentile
from edgekit.device.preprocess import opencv

DARK_FRACTION = 0.25  # darker in every channel than this fraction of the field's bright level: no light
MIN_BORDER_DARK = 0.05  # share of the border's pixels that must be dark before a surround is looked for
MIN_SURROUND = 0.005  # a dark region joined to the border smaller than this share of the field is not one
RIM = 0.015  # x the short side: the surround is grown by this much (its soft rim, vignetting)
VIEW_SIDE = 400  # the surround is found on a copy at most this large
SEAM = 0.01  # x the short side: the Gaussian sigma of the seam between the painted surround and the field


def within_view(rgb: np.ndarray, params: FieldParams | None = None, outside: Outside = ...) -> np.ndarray:
    """``rgb`` with any dark surround outside the microscope's field of view painted in the field's
    background colour (a copy); ``rgb`` itself when it has none. ``outside``: as for :func:`surround`."""
    outside = surround(rgb, outside)
    return rgb if outside is None else paint_outside(rgb, outside, params)


def outside_view(rgb: np.ndarray) -> np.ndarray | None:
    """Where ``rgb`` lies outside the microscope's field of view (bool, ``rgb``'s size): dark in
    every channel, joined to the image border, grown by the rim; None when there is no such
    surround, or when nothing but surround is left (the quality gate then says the field is too
    dark)."""
    h, w = rgb.shape[:2]
    if min(h, w) < 8 or rgb.ndim != 3:
        return None
    # the brightest channel of each pixel: on every 200th row and column, and on the border
    bright = float(percentile(rgb[:: max(1, h // 200), :: max(1, w // 200)].max(axis=2), 99))
    dark_level = DARK_FRACTION * bright
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).max(axis=1)
    if bright <= 0 or float((border < dark_level).mean()) < MIN_BORDER_DARK:
        return None
    outside = _surround(rgb, dark_level)
    return None if outside is None or outside.mean() > 0.9 else outside


# ``outside`` as the callers of :func:`surround` pass it: the surround's mask, None (no surround) or
# ``...`` (not looked for yet: found there)
Outside = np.ndarray | None | EllipsisType


def surround(rgb: np.ndarray, outside: Outside = ...) -> np.ndarray | None:
    """:func:`outside_view` of ``rgb``, unless the caller found it already (``outside`` not ``...``):
    a field's surround is looked for once, for its focus, its cells and its signature."""
    return outside_view(rgb) if outside is ... else outside


def inside_crop(rgb: np.ndarray, outside: np.ndarray | None = None) -> np.ndarray:
    """The largest centred rectangle of ``rgb`` within the field of view (a slice): ``rgb`` itself
    without a surround. Focus is measured there, on the smear's own pixels only: a painted surround
    is flat, and the measure reads its noise on the flattest blocks (blurred fields then passed)."""
    if outside is None:
        outside = outside_view(rgb)
        if outside is None:
            return rgb
    ys, xs = np.nonzero(~outside[::4, ::4])
    if not ys.size:
        return rgb
    y0, y1, x0, x1 = 4 * ys.min(), 4 * ys.max() + 1, 4 * xs.min(), 4 * xs.max() + 1
    for _ in range(40):  # shrink the box until the surround has left it (a disc: its inscribed square)
        if y1 - y0 < 16 or x1 - x0 < 16 or float(outside[y0:y1:4, x0:x1:4].mean()) <= 0.001:
            break
        dy, dx = max(1, (y1 - y0) // 50), max(1, (x1 - x0) // 50)
        y0, y1, x0, x1 = y0 + dy, y1 - dy, x0 + dx, x1 - dx
    return rgb[y0:y1, x0:x1]


def paint_outside(rgb: np.ndarray, outside: np.ndarray, params: FieldParams | None = None) -> np.ndarray:
    """A copy of ``rgb`` with the ``outside`` pixels in the background colour of the others, blended
    into the field over a soft seam (``SEAM`` x the short side): a sharp seam would be the strongest
    edge a blurred field has, and read as focus."""
    cv2 = opencv()
    fill = background_colour(rgb[~outside][:, None, :], params or FieldParams()).astype(np.float32)
    weight = outside.astype(np.float32)
    sigma = SEAM * min(rgb.shape[:2])
    weight = np.maximum(weight, cv2.GaussianBlur(weight, (0, 0), sigma))[..., None]
    out = rgb.astype(np.float32) * (1.0 - weight) + fill * weight
    return np.clip(out.round(), 0, 255).astype(rgb.dtype)


def _surround(rgb: np.ndarray, dark_level: float) -> np.ndarray | None:
    """The dark region(s) joined to the image border, grown by the rim, at ``rgb``'s size (bool),
    or None when there is none large enough."""
    cv2 = opencv()
    small, _ = working_copy(rgb, VIEW_SIDE)
    dark = (small.max(axis=2) < dark_level).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    # a lookup by label, not np.unique / np.isin (np.unique imports numpy.ma)
    edge = np.zeros(len(stats), bool)
    edge[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    edge[0] = False
    big = edge & (stats[:, cv2.CC_STAT_AREA] >= MIN_SURROUND * dark.size)
    if not big.any():
        return None
    mask = big[labels].astype(np.uint8)
    k = max(3, int(round(RIM * min(small.shape[:2]))) | 1)
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    h, w = rgb.shape[:2]
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
