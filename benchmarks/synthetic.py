"""Synthetic whole fields from single-cell crops (NIH has crops only, no fields): the in-domain
fields that the domain-guard benchmark and the field tests run through the device's own
segmentation and cropping."""

from __future__ import annotations

import numpy as np

SMEAR_BACKGROUND = (214, 208, 220)  # a light, slightly blue smear background, like BCCD's


def compose_field(
    crops: list[np.ndarray], seed: int = 0, gap: int = 30, background: tuple[int, int, int] = SMEAR_BACKGROUND
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Paste cells-on-black crops in a jittered grid onto a noisy background; returns the RGB field
    and each pasted cell's tight box (x0, y0, x1, y1), in crop order."""
    import cv2

    rng = np.random.default_rng(seed)
    cols = int(np.ceil(np.sqrt(len(crops))))
    cell = max(max(c.shape[:2]) for c in crops) + gap
    rows = int(np.ceil(len(crops) / cols))
    canvas = np.empty((rows * cell + gap, cols * cell + gap, 3), np.float32)
    canvas[:] = background
    canvas += rng.normal(0, 2.0, canvas.shape)
    boxes = []
    for i, crop in enumerate(crops):
        r, c = divmod(i, cols)
        y0 = gap + r * cell + int(rng.integers(0, cell - gap - crop.shape[0] + 1))
        x0 = gap + c * cell + int(rng.integers(0, cell - gap - crop.shape[1] + 1))
        fg = crop.max(axis=2) > 0
        canvas[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]][fg] = crop[fg]
        ys, xs = np.nonzero(fg)  # the cell's own box (crops have a black margin)
        boxes.append((x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1))
    field = cv2.GaussianBlur(np.clip(canvas, 0, 255).astype(np.uint8), (3, 3), 0)
    return field, boxes
