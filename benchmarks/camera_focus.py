"""The camera on focus pulls and a shaking hand (issue 22): each field taken once, none mid-focus.

    python -m edgekit.benchmarks.camera_focus [--fields 8] [--no-write]

Videos built from held-out IML fields (1280x960; the odd blocks of 10 frames of each stain
group, as in ``focus_floor``): for each field the view arrives out of focus and focus is pulled
(Gaussian sigma 3 -> 0 over 0.8 s), held 0.8 s, then the stage pans (motion-blurred) to the next
field. Every frame has +-1 px of hand jitter and sensor noise (std 1.5). At 15 and 25 fps, each
written lossless (FFV1) and as MJPG (what many USB cameras send). Each video goes through
:class:`edgekit.device.live.FieldCapture` with its default settings; a taken frame is traced back to
the frame written (field and blur). Reported per video: fields taken, distinct fields, fields taken
twice, fields taken mid-focus (a pan frame or blur sigma >= 0.5), taken at sigma 0, and the
milliseconds per frame (load-dependent).
Writes ``benchmarks/results/camera_focus.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PULL_S, HOLD_S, PAN_S = 0.8, 0.8, 0.27
MID_FOCUS_SIGMA = 0.5  # a taken frame this blurred or more was taken mid-focus


def held_out_fields(n: int) -> list[np.ndarray]:
    """``n`` held-out IML fields, spread over both stain groups."""
    from edgekit.benchmarks.focus_floor import iml_items
    from edgekit.device.preprocess import read_image

    held = [path for _, path, h in iml_items(1) if h]
    return [read_image(held[i * len(held) // n]) for i in range(n)]


def write_video(fields: list[np.ndarray], path: Path, fps: float, codec: str, shake: int = 1) -> list[tuple]:
    """The video (see the module docstring); returns (field index, blur sigma or None for a pan
    frame) per frame written."""
    import cv2

    h, w = fields[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
    if not out.isOpened():
        raise RuntimeError(f"no {codec} video writer in this OpenCV build")
    rng = np.random.default_rng(0)
    labels: list[tuple] = []

    def write(rgb: np.ndarray, label: tuple) -> None:
        dx, dy = rng.integers(-shake, shake + 1, 2)
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        frame = cv2.warpAffine(rgb, m, (w, h), borderMode=cv2.BORDER_REFLECT)
        frame = np.clip(frame + rng.normal(0, 1.5, frame.shape), 0, 255).astype(np.uint8)
        out.write(np.ascontiguousarray(frame[:, :, ::-1]))
        labels.append(label)

    n_pull, n_hold, n_pan = (max(1, round(s * fps)) for s in (PULL_S, HOLD_S, PAN_S))
    for i, rgb in enumerate(fields):
        for sigma in np.linspace(3, 0, n_pull):
            blurred = cv2.GaussianBlur(rgb, (0, 0), float(sigma)) if sigma > 0.05 else rgb
            write(blurred, (i, round(float(sigma), 2)))
        for _ in range(n_hold):
            write(rgb, (i, 0.0))
        if i + 1 < len(fields):
            for k in range(1, n_pan + 1):
                cut = k * w // (n_pan + 1)
                strip = np.concatenate([rgb[:, cut:], fields[i + 1][:, :cut]], axis=1)
                write(cv2.blur(strip, (41, 1)), (i, None))
    out.release()
    return labels


def run_video(path: Path, labels: list[tuple]) -> dict:
    """Feed the video to the capture; trace each taken frame to its label."""
    from edgekit.device.camera import frames
    from edgekit.device.live import CaptureSettings, FieldCapture

    cap = FieldCapture(CaptureSettings())
    index: dict[str, tuple] = {}
    taken: list[tuple] = []
    t = time.perf_counter()
    for k, fr in enumerate(frames(str(path))):
        index[hashlib.sha1(fr.tobytes()).hexdigest()] = labels[k]
        if (got := cap.offer(fr)) is not None:
            taken.append(index[hashlib.sha1(got.tobytes()).hexdigest()])
    seconds = time.perf_counter() - t
    return {"frames": cap.stats.frames, **summary(taken), "stats": cap.stats.line(),
            "ms_per_frame": round(1000 * seconds / max(1, cap.stats.frames), 1)}


def summary(taken: list[tuple]) -> dict:
    """Counts from the (field, blur sigma) of each taken frame: mid-focus is a pan frame or a
    blur of MID_FOCUS_SIGMA or more (the last step of a pull, sigma 0.16-0.27, looks in focus)."""
    ids = [i for i, _ in taken]
    return {"taken": len(taken), "distinct_fields": len(set(ids)), "taken_twice": len(ids) - len(set(ids)),
            "mid_focus": sum(1 for _, s in taken if s is None or s >= MID_FOCUS_SIGMA),
            "taken_sharp": sum(1 for _, s in taken if s == 0), "taken_blur_sigmas": [s for _, s in taken]}


def run(n_fields: int = 8) -> dict:
    fields = held_out_fields(n_fields)
    videos = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fps in (15, 25):
            for codec, ext in (("FFV1", "avi"), ("MJPG", "avi")):
                path = Path(tmp) / f"v{fps}_{codec}.{ext}"
                labels = write_video(fields, path, fps, codec)
                videos[f"{fps}fps_{codec}"] = run_video(path, labels)
    return {"fields": n_fields, "shake_px": 1, "pull_s": PULL_S, "hold_s": HOLD_S, "videos": videos,
            "all_taken_once": all(v["distinct_fields"] == v["taken"] == n_fields for v in videos.values()),
            "none_mid_focus": all(v["mid_focus"] == 0 for v in videos.values())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fields", type=int, default=8)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    result = run(args.fields)
    print(json.dumps(result, indent=1))
    if not args.no_write:
        (HERE / "results" / "camera_focus.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
