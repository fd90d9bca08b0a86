"""The camera on focus pulls and a shaking hand (issue 22): each field taken once, none mid-focus.

    python -m edgekit.benchmarks.camera_focus [--fields 8] [--quick] [--no-write]

Videos built from held-out IML fields (1280x960; the odd blocks of 10 frames of each stain
group, as in ``focus_floor``): for each field the view arrives out of focus and focus is pulled
(Gaussian sigma 3 -> 0 over 0.8 s), held 0.8 s, then the stage pans (motion-blurred) to the next
field. Every frame has +-1 px of hand jitter and sensor noise (std 1.5). At 15 and 25 fps, each
written lossless (FFV1) and as MJPG (what many USB cameras send). Each video goes through
:class:`edgekit.device.live.FieldCapture` with its default settings; a taken frame is traced back to
the frame written (field and blur). Reported per video: fields taken, distinct fields, fields taken
twice, fields taken mid-focus (a pan frame or blur sigma >= 0.5), taken at sigma 0, and the
milliseconds per frame (load-dependent).
Each video twice: IML's burned-in bar blurred with the field (as before) and kept sharp on every
frame (``mark_sharp``: a camera draws it after the optics); each through two focus rules
(:class:`edgekit.device.field.focus.FocusRule`): the shared one (marks read, FOCUS_FLOOR) and IML's
site rule (marks left out, its floor set on IML's calibration fields, never these). Field 2 of the
8 (PA171740) is plainly blurred as photographed: refusing it is right.
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


def write_video(fields: list[np.ndarray], path: Path, fps: float, codec: str, shake: int = 1,
                sharp_mark: bool = False) -> list[tuple]:
    """The video (see the module docstring); returns (field index, blur sigma or None for a pan
    frame) per frame written. ``sharp_mark``: IML's burned-in bar and label are put back sharp on
    every blurred frame, as a camera that draws them after the optics sends them."""
    import cv2

    from edgekit.benchmarks.focus_floor import iml_overlay_pixels, reburn

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
        ink = iml_overlay_pixels(rgb) if sharp_mark else None
        for sigma in np.linspace(3, 0, n_pull):
            blurred = cv2.GaussianBlur(rgb, (0, 0), float(sigma)) if sigma > 0.05 else rgb
            blurred = blurred if ink is None else reburn(rgb, blurred, ink)
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


def run_video(path: Path, labels: list[tuple], rule=None) -> dict:
    """Feed the video to the capture; trace each taken frame to its label."""
    from edgekit.device.camera import frames
    from edgekit.device.live import CaptureSettings, FieldCapture

    cap = FieldCapture(CaptureSettings(), rule=rule)
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
    return {"taken": len(taken), "fields_taken": sorted(set(ids)), "distinct_fields": len(set(ids)),
            "taken_twice": len(ids) - len(set(ids)),
            "mid_focus": sum(1 for _, s in taken if s is None or s >= MID_FOCUS_SIGMA),
            "taken_sharp": sum(1 for _, s in taken if s == 0), "taken_blur_sigmas": [s for _, s in taken]}


def rules() -> dict:
    """The focus rules compared: the shared one (marks read, FOCUS_FLOOR) and IML's site rule
    (marks left out, the floor :func:`site_rule` sets on IML's calibration fields: never these)."""
    from edgekit.benchmarks.focus_floor import iml_items
    from edgekit.device.field.focus import DEFAULT_RULE, SITE_MARKS, FocusRule, site_rule
    from edgekit.device.field.quality import field_focus
    from edgekit.device.preprocess import read_image

    measure = FocusRule(marks=SITE_MARKS)
    cal = [field_focus(read_image(path), measure) for _, path, held in iml_items(1) if not held]
    return {"shared": DEFAULT_RULE, "iml_site": site_rule([s for s in cal if s is not None])}


VIDEOS = ((15, "FFV1"), (15, "MJPG"), (25, "FFV1"), (25, "MJPG"))


def run(n_fields: int = 8, fps_codecs: tuple = VIDEOS) -> dict:
    fields = held_out_fields(n_fields)
    compared = rules()
    out: dict = {"fields": n_fields, "shake_px": 1, "pull_s": PULL_S, "hold_s": HOLD_S,
                 "rules": {k: {"floor": r.floor, "marks_left_out": r.marks} for k, r in compared.items()}}
    with tempfile.TemporaryDirectory() as tmp:
        for mark in ("blurred", "sharp"):
            for fps, codec in fps_codecs:
                path = Path(tmp) / f"v{fps}_{codec}.avi"
                labels = write_video(fields, path, fps, codec, sharp_mark=mark == "sharp")
                for name, rule in compared.items():
                    out.setdefault(f"mark_{mark}", {}).setdefault(name, {})[f"{fps}fps_{codec}"] = \
                        run_video(path, labels, rule)
    for mark in ("blurred", "sharp"):
        for name in compared:
            videos = out[f"mark_{mark}"][name]
            once = all(v["distinct_fields"] == v["taken"] == n_fields for v in videos.values())
            sharp = all(v["mid_focus"] == 0 for v in videos.values())
            videos |= {"all_taken_once": once, "none_mid_focus": sharp}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fields", type=int, default=8)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--quick", action="store_true", help="only the 15 fps FFV1 and 25 fps MJPG videos")
    args = ap.parse_args(argv)
    result = run(args.fields, (VIDEOS[0], VIDEOS[3]) if args.quick else VIDEOS)
    print(json.dumps(result, indent=1))
    if not args.no_write:
        (HERE / "results" / "camera_focus.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
