"""A microscope video made from still fields: dwell on each field, then a blurred pan to the next,
as a health worker moves the stage. Shared by the live-camera tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def variants(rgb: np.ndarray) -> list[np.ndarray]:
    """Four distinct views of one field (as itself, mirrored, flipped, turned), for a test that
    needs more fields than the few committed ones."""
    return [rgb, rgb[:, ::-1], rgb[::-1], rgb[::-1, ::-1]]


def write_pan_video(fields: list[np.ndarray], path: Path, dwell: int = 10, pan: int = 6,
                    fps: float = 10.0, codec: str = "FFV1") -> dict[str, int]:
    """Write a video that dwells ``dwell`` frames on each field and pans between fields over
    ``pan`` frames (the view slides and is motion-blurred). Returns frame counts.

    Lossless (FFV1) by default, so a test compares the counting, not the codec: with MJPG (what
    many USB cameras send) the same 8 BCCD fields gave 133 cells instead of 141, the cell finder
    splitting a few overlapping cells differently on re-compressed pixels."""
    import cv2

    h, w = fields[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
    if not out.isOpened():
        raise RuntimeError(f"no {codec} video writer in this OpenCV build")
    counts = {"still": 0, "pan": 0}
    for i, rgb in enumerate(fields):
        for _ in range(dwell):
            out.write(np.ascontiguousarray(rgb[:, :, ::-1]))
            counts["still"] += 1
        if i + 1 == len(fields):
            break
        nxt = fields[i + 1]
        for k in range(1, pan + 1):
            t = k / (pan + 1)
            shift = int(t * w)
            strip = np.concatenate([rgb[:, shift:], nxt[:, : shift]], axis=1)  # the stage slides left
            kernel = np.zeros((1, 41), np.float32)
            kernel[0, :] = 1 / 41  # horizontal motion blur of a moving stage
            frame = cv2.filter2D(strip, -1, kernel)
            out.write(np.ascontiguousarray(frame[:, :, ::-1]))
            counts["pan"] += 1
    out.release()
    return counts
