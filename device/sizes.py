# pyright: basic
"""The size check: is an image far outside the sizes of the images the model was trained on?

A classifier resizes whatever it is given to its input size, so a whole 1280x960 microscope field
given as one "cell" is called with full confidence (measured: 0.99 parasitized) and nothing says
it is not a cell. The bundle records the sizes of its training images (``manifest.image_sizes``,
:class:`edgekit.manifest.ImageSizes`, fitted here by :func:`fit_sizes`); an image whose long side
is more than :data:`FAR` times their ``max_side``, whose short side is under their ``min_side`` /
:data:`FAR`, or whose aspect ratio is more than :data:`FAR` times their ``max_aspect``, is refused
with the reason (:func:`outside`), whatever the task: it needs no assumption about what the
images show (cells on black, x-rays). This module owns the rule; a bundle without the record gets
today's behaviour, said once (:data:`NOT_RECORDED`).

Why 1st/99th percentiles and 2.5: the range of the middle 98% does not widen for one odd training
image. On the NIH crops (21,726; 99th percentile of the long side 202 px) the largest crop is
1.95x it and BCCD's 640x480 fields are 3.2x it: 2.5 sits between them with ~25% either way.

Light: standard library only (Pillow inside :func:`measure_files`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgekit.manifest import ImageSizes

FAR = 2.5  # this many times outside the training images' range: not an image like them
LOW_PCT, HIGH_PCT = 1.0, 99.0  # the range's ends: percentiles of the training images' sides
NOT_RECORDED = ("note: the bundle does not record the sizes of the images its model was trained on: "
                "an image of any size is classified as given (a whole field as one crop included)")


def outside(height: int, width: int, sizes: ImageSizes | None) -> str | None:
    """None when an image of ``height`` x ``width`` px is within :data:`FAR` of the training
    images' sizes (or the bundle records none), else the one-line reason it is refused."""
    if sizes is None or height <= 0 or width <= 0:
        return None
    short, long = min(height, width), max(height, width)
    if long > FAR * sizes.max_side:
        why = f"long side over {FAR:g}x the training images' {sizes.max_side:g} px"
    elif short < sizes.min_side / FAR:
        why = f"short side under 1/{FAR:g} of the training images' {sizes.min_side:g} px"
    elif long / short > FAR * sizes.max_aspect:
        why = f"aspect ratio {long / short:.1f} over {FAR:g}x the training images' {sizes.max_aspect:g}"
    else:
        return None
    return f"outside the image sizes the model was trained on ({width}x{height} px: {why})"


def unrecorded_note(manifest: object) -> str | None:
    """:data:`NOT_RECORDED` for a bundle that records no training sizes (said once per run), else None."""
    return NOT_RECORDED if getattr(manifest, "image_sizes", None) is None else None


def _percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (numpy's default), without numpy."""
    v = sorted(values)
    k = (len(v) - 1) * pct / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def fit_sizes(shapes: Sequence[tuple[int, int]], source: str) -> ImageSizes | None:
    """The :class:`~edgekit.manifest.ImageSizes` of training images of ``shapes`` (height, width);
    None without any."""
    from edgekit.manifest import ImageSizes

    good = [(h, w) for h, w in shapes if h > 0 and w > 0]
    if not good:
        return None
    shorts = [float(min(s)) for s in good]
    longs = [float(max(s)) for s in good]
    aspects = [a / b for a, b in zip(longs, shorts, strict=True)]
    return ImageSizes(
        min_side=round(_percentile(shorts, LOW_PCT), 1), max_side=round(_percentile(longs, HIGH_PCT), 1),
        max_aspect=round(max(1.0, _percentile(aspects, HIGH_PCT)), 3),
        n=len(good), source=f"{source}: percentile {LOW_PCT:g} of the short sides, {HIGH_PCT:g} of "
                            f"the long sides and of long/short, over {len(good)} images")


def widened(a: ImageSizes | None, b: ImageSizes | None) -> ImageSizes | None:
    """The range that covers both (a model fine-tuned on ``a``'s images still learnt ``b``'s)."""
    if a is None or b is None:
        return a or b
    from edgekit.manifest import ImageSizes

    return ImageSizes(min_side=min(a.min_side, b.min_side), max_side=max(a.max_side, b.max_side),
                      max_aspect=max(a.max_aspect, b.max_aspect), n=a.n + b.n,
                      source=f"{a.source}; widened to cover {b.source}")


def measure_files(paths: Sequence[str | os.PathLike]) -> list[tuple[int, int]]:
    """(height, width) of each file that Pillow can size from its header (no decode); files it
    cannot read are left out (training drops them on its own)."""
    from PIL import Image, UnidentifiedImageError

    shapes = []
    for p in paths:
        try:
            with Image.open(p) as im:
                w, h = im.size
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
            continue
        shapes.append((int(h), int(w)))
    return shapes
