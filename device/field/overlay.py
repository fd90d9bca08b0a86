# pyright: basic
"""The overlay a health worker checks: each cell outlined and coloured as counted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.device.field.types import FieldReport
from edgekit.device.preprocess import opencv

COLORS = {
    "parasitized": (230, 30, 30),  # counted in the parasitemia (p >= the manifest's cutoff)
    "not parasitized": (30, 170, 60),
    None: (0, 150, 255),  # found, not classified
}
# px an outline sent to a page may stray from the cell's mask: a fifth of the points of the exact
# one (the masks are upscaled from segmentation's copy, so their edges are staircases), no visible
# change on a phone's screen
OUTLINE_TOLERANCE = 2.0


def draw_overlay(rgb: np.ndarray, report: FieldReport) -> np.ndarray:
    """A copy of the field with each cell's outline and box coloured as counted (red: parasitized,
    green: not), uncertain cells' numbers marked "?", and a header line with the counts, for a
    health worker to check the machine's work."""
    cv2 = opencv()
    out = rgb.copy()
    thick = _thickness(out.shape)
    for c, key, label in zip(report.cells, cell_calls(report), cell_labels(report), strict=True):
        color = COLORS[key]
        contours, _ = cv2.findContours(c.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, color, thick, offset=(c.x, c.y))
        cv2.rectangle(out, (c.x, c.y), (c.x + c.w - 1, c.y + c.h - 1), color, thick)
        org = (c.x + 3, c.y + 12 * thick)
        cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, color, thick)
    banner = banner_text(report)
    if banner:
        _banner(out, banner, thick)
    text = header_text(report)
    scale = 0.5 * thick
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    cv2.rectangle(out, (0, 0), (min(out.shape[1] - 1, tw + 8), th + base + 8), (0, 0, 0), -1)
    cv2.putText(out, text, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def _thickness(shape: tuple[int, ...]) -> int:
    """Line width (px) of the overlay's outlines and text on a field of this shape."""
    return max(1, round(max(shape[:2]) / 640))


def cell_calls(report: FieldReport) -> list[str | None]:
    """Each cell's call as the overlay colours it: a key of :data:`COLORS`."""
    if not report.decisions:
        return [None] * len(report.cells)
    return ["parasitized" if report.counted(i) else "not parasitized" for i in range(len(report.cells))]


def cell_labels(report: FieldReport) -> list[str]:
    """Each cell's number on the overlay, "?" after it when the call is uncertain."""
    unsure = report.decisions or [None] * len(report.cells)
    return [f"{c.id}{'?' if d == 'uncertain' else ''}" for c, d in zip(report.cells, unsure, strict=True)]


def banner_text(report: FieldReport) -> str | None:
    """The red bar along the overlay's bottom (why the result is not vouched for), or None."""
    from edgekit.device.domain import banner

    if report.domain is not None and not report.domain["ok"] and not report.rejected:
        return banner(report.domain)
    return None


def header_text(report: FieldReport) -> str:
    """The overlay's header line: the field's counts, or why it was rejected."""
    if report.rejected:
        return f"REJECTED: {report.rejected}"
    if report.decisions:
        lo, hi = report.ci95 or (0.0, 0.0)
        return (
            f"{report.n_cells} cells, {report.n_parasitized} {report.positive_label}"
            f" ({report.count('uncertain')} uncertain: ?); parasitemia {100 * (report.parasitemia or 0):.1f}%"
            f" (95% CI {100 * lo:.1f}-{100 * hi:.1f}%)"
        )
    return f"{report.n_cells} cells (not classified)"


def overlay_marks(report: FieldReport) -> dict[str, Any]:
    """What :func:`draw_overlay` draws, as JSON for a page to draw on its own copy of the field:
    the field's size, line width, colours (by call; "" for unclassified), header and banner, and per
    cell its box ``[x, y, w, h]``, call, label and outline (``[dx0, dy0, dx1, dy1, ...]`` from the
    box's corner, simplified to :data:`OUTLINE_TOLERANCE`)."""
    cv2 = opencv()
    cells = []
    for c, key, label in zip(report.cells, cell_calls(report), cell_labels(report), strict=True):
        contours, _ = cv2.findContours(c.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outline = max(contours, key=len) if contours else np.zeros((0, 1, 2), np.int32)
        outline = cv2.approxPolyDP(outline, OUTLINE_TOLERANCE, True) if len(outline) > 2 else outline
        cells.append({"box": [c.x, c.y, c.w, c.h], "call": key, "label": label,
                      "outline": [int(v) for v in outline.reshape(-1)]})
    h, w = report.shape
    return {"size": [int(w), int(h)], "thick": _thickness((h, w)),
            "colors": {k or "": "#{:02x}{:02x}{:02x}".format(*v) for k, v in COLORS.items()},
            "header": header_text(report), "banner": banner_text(report), "cells": cells}


def _banner(out: np.ndarray, text: str, thick: int) -> None:
    """A red bar with white text along the bottom of the overlay."""
    cv2 = opencv()
    (_, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thick, thick)
    h, w = out.shape[:2]
    cv2.rectangle(out, (0, h - th - base - 8), (w - 1, h - 1), (160, 0, 0), -1)
    cv2.putText(out, text, (4, h - base - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thick, (255, 255, 255), thick,
                cv2.LINE_AA)


def write_overlay(report: FieldReport, folder: Path, taken: set[str] | None = None) -> Path | None:
    """``FIELD_overlay.png`` in ``folder`` (None: the report kept no image, or PNG encoding failed).
    ``taken``: the names written so far in this run; a field whose name is taken (``a/f.jpg`` then
    ``b/f.jpg``) gets ``FIELD-2_overlay.png`` instead of replacing the first one's."""
    from edgekit.manifest import atomic_write_bytes

    if report.image is None:
        return None
    ok, buf = opencv().imencode(".png", draw_overlay(report.image, report)[:, :, ::-1])
    if not ok:
        return None
    stem = name = Path(report.source).stem
    k = 1
    while taken is not None and name in taken:
        k += 1
        name = f"{stem}-{k}"
    if taken is not None:
        taken.add(name)
    path = folder / f"{name}_overlay.png"
    atomic_write_bytes(path, buf.tobytes())
    return path
