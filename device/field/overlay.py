# pyright: basic
"""The overlay a health worker checks: each cell outlined and coloured as counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.device.field.types import FieldReport
from edgekit.device.preprocess import opencv

COLORS = {
    "parasitized": (230, 30, 30),  # counted in the parasitemia (p >= the manifest's cutoff)
    "not parasitized": (30, 170, 60),
    None: (0, 150, 255),  # found, not classified
}


def draw_overlay(rgb: np.ndarray, report: FieldReport) -> np.ndarray:
    """A copy of the field with each cell's outline and box coloured as counted (red: parasitized,
    green: not), uncertain cells' numbers marked "?", and a header line with the counts, for a
    health worker to check the machine's work."""
    cv2 = opencv()
    out = rgb.copy()
    thick = max(1, round(max(out.shape[:2]) / 640))
    for i, c in enumerate(report.cells):
        key = None
        if report.decisions:
            key = "parasitized" if report.counted(i) else "not parasitized"
        color = COLORS[key]
        contours, _ = cv2.findContours(c.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, color, thick, offset=(c.x, c.y))
        cv2.rectangle(out, (c.x, c.y), (c.x + c.w - 1, c.y + c.h - 1), color, thick)
        org = (c.x + 3, c.y + 12 * thick)
        unsure = "?" if report.decisions and report.decisions[i] == "uncertain" else ""
        cv2.putText(out, f"{c.id}{unsure}", org, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, color, thick)
    if report.domain is not None and not report.domain["ok"] and not report.rejected:
        _banner(out, "NOT VALIDATED FOR THIS MICROSCOPE: cells unlike the model's training cells", thick)
    if report.rejected:
        text = f"REJECTED: {report.rejected}"
    elif report.decisions:
        lo, hi = report.ci95 or (0.0, 0.0)
        text = (
            f"{report.n_cells} cells, {report.n_parasitized} {report.positive_label}"
            f" ({report.count('uncertain')} uncertain: ?); parasitemia {100 * (report.parasitemia or 0):.1f}%"
            f" (95% CI {100 * lo:.1f}-{100 * hi:.1f}%)"
        )
    else:
        text = f"{report.n_cells} cells (not classified)"
    scale = 0.5 * thick
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    cv2.rectangle(out, (0, 0), (min(out.shape[1] - 1, tw + 8), th + base + 8), (0, 0, 0), -1)
    cv2.putText(out, text, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def _banner(out: np.ndarray, text: str, thick: int) -> None:
    """A red bar with white text along the bottom of the overlay."""
    cv2 = opencv()
    (_, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thick, thick)
    h, w = out.shape[:2]
    cv2.rectangle(out, (0, h - th - base - 8), (w - 1, h - 1), (160, 0, 0), -1)
    cv2.putText(out, text, (4, h - base - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thick, (255, 255, 255), thick,
                cv2.LINE_AA)


def write_overlay(report: FieldReport, folder: Path) -> Path | None:
    """``FIELD_overlay.png`` in ``folder`` (None: the report kept no image, or PNG encoding failed)."""
    from edgekit.manifest import atomic_write_bytes

    if report.image is None:
        return None
    ok, buf = opencv().imencode(".png", draw_overlay(report.image, report)[:, :, ::-1])
    if not ok:
        return None
    path = folder / f"{Path(report.source).stem}_overlay.png"
    atomic_write_bytes(path, buf.tobytes())
    return path
