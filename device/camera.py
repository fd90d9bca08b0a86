# pyright: basic
"""Live classification from a camera, a video file or a network stream.

Sources: an OpenCV ``VideoCapture`` (USB webcam index, video file, URL, or a GStreamer pipeline,
recognised by its ``!``), or Picamera2 on a Raspberry Pi (imported only when used). Each frame
is center-cropped to a square and classified as one crop through the shared ``prepare()``.
A file ends cleanly at its last frame; a live source that stops delivering frames is reopened
``reconnect`` times before giving up with a clear message.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.device.quality import DEFAULT_GATES, QualityGates
from edgekit.device.side_output import SideOutput
from edgekit.errors import CameraError


def center_square(rgb: np.ndarray) -> np.ndarray:
    """The largest centered square of a frame (the crop a camera frame is classified as)."""
    h, w = rgb.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return rgb[top : top + s, left : left + s]


def is_live(source: str) -> bool:
    """Webcam indices, URLs and pipelines are live (reconnect on failure); files end."""
    return source.isdigit() or "://" in source or "!" in source or source in ("auto", "picamera")


# FFmpeg's own lines ("[mjpeg @ 0x55..] overread 8" for each damaged frame) are not the worker's to
# read: what went wrong is said once, by `frames`; read at the first capture, a user's setting wins
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


class OpenCVSource:
    def __init__(self, source: str) -> None:
        import cv2

        from edgekit.device.decoding import captured_native_stderr

        self.source = source
        if "://" not in source and "!" not in source and not source.isdigit() and not Path(source).is_file():
            raise CameraError(f"video source not found: {source}")
        # OpenCV's AVI reader prints what it met instead of a header, raw bytes and all: captured
        with captured_native_stderr():
            if source.isdigit():
                self.cap = cv2.VideoCapture(int(source))
            elif "!" in source:
                self.cap = cv2.VideoCapture(source, cv2.CAP_GSTREAMER)
            else:
                self.cap = cv2.VideoCapture(source)
        if not self.cap.isOpened():
            raise CameraError(f"cannot open video source {source!r}")
        # the frames a file's header declares (0: unknown, a stream): fewer delivered is a cut file
        declared = self.cap.get(cv2.CAP_PROP_FRAME_COUNT) if not is_live(source) else 0
        self.declared = int(declared) if 0 < declared < 2**31 else 0

    def read(self) -> np.ndarray | None:
        import cv2

        ok, frame = self.cap.read()
        if not ok or frame is None:
            return None
        if frame.ndim == 2:
            return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(frame[:, :, :3], cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self.cap.release()


class PicameraSource:
    def __init__(self) -> None:
        try:
            from picamera2 import Picamera2  # optional # pyright: ignore[reportMissingImports]
        except ImportError as exc:
            raise CameraError("Picamera2 is not installed (sudo apt install python3-picamera2)") from exc
        try:
            self.cam = Picamera2()
            self.cam.configure(self.cam.create_still_configuration(main={"format": "RGB888"}))
            self.cam.start()
        except Exception as exc:  # libcamera raises several types when no camera is attached or it is busy
            why = str(exc).strip() or type(exc).__name__
            raise CameraError(f"Picamera2 cannot open the camera: {why}") from exc

    def read(self) -> np.ndarray | None:
        frame = self.cam.capture_array()
        # Picamera2's "RGB888" is BGR in memory (libcamera naming)
        return None if frame is None else np.ascontiguousarray(frame[:, :, 2::-1])

    def close(self) -> None:
        self.cam.stop()
        self.cam.close()


def open_source(source: str) -> OpenCVSource | PicameraSource:
    """``auto``: Picamera2 when installed (a Raspberry Pi camera), else webcam 0."""
    if source == "picamera":
        return PicameraSource()
    if source == "auto":
        import importlib.util

        if importlib.util.find_spec("picamera2") is not None:
            return PicameraSource()
        source = "0"
    return OpenCVSource(source)


def frames(
    source: str, reconnect: int = 3, reconnect_delay: float = 1.0,
    opener: Callable[[str], OpenCVSource | PicameraSource] = open_source,
) -> Iterator[np.ndarray]:
    """RGB frames until the end of a file, or until a live source is gone after ``reconnect`` tries."""
    cam = opener(source)
    live = is_live(source)
    delivered = 0
    try:
        while True:
            frame = cam.read()
            if frame is not None:
                delivered += 1
                yield frame
                continue
            if not live:
                if not delivered:
                    raise CameraError(f"video source {source!r} opened but gave no frame (not a video?)")
                if delivered < (declared := getattr(cam, "declared", 0)):
                    raise CameraError(f"video {source!r} ended after {delivered} of the {declared} frames "
                                      "its header declares (a truncated or damaged file); what came before "
                                      "was counted")
                return
            cam.close()
            cam, frame = _reopen(source, reconnect, reconnect_delay, opener)
            yield frame
    finally:
        cam.close()


def _reopen(
    source: str, attempts: int, delay: float, opener: Callable[[str], OpenCVSource | PicameraSource],
) -> tuple[OpenCVSource | PicameraSource, np.ndarray]:
    """A reopened source and its first frame (proof that it is really back)."""
    for _ in range(attempts):
        time.sleep(delay)
        try:
            cam = opener(source)
        except CameraError:
            continue
        if (frame := cam.read()) is not None:
            return cam, frame
        cam.close()
    raise CameraError(
        f"camera {source!r} stopped delivering frames and did not come back after {attempts} attempts"
    )


@dataclass
class FrameRate:
    """Frames per second over a sliding window of recent frames."""

    window: int = 30

    def __post_init__(self) -> None:
        self._times: list[float] = []

    def tick(self) -> float:
        self._times.append(time.perf_counter())
        self._times = self._times[-self.window :]
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-9)


def run_camera(
    classifier, source: str, every: int = 1, save_dir: str | Path | None = None,
    max_frames: int | None = None, echo: Callable[[str], None] = print, reconnect: int = 3,
    reconnect_delay: float = 1.0, gates: QualityGates | None = DEFAULT_GATES, saves: SideOutput | None = None,
) -> int:
    """Classify frames from ``source``, printing a line every ``every`` frames; optionally save each
    printed frame with its result. Frames failing a quality gate are reported, not classified.
    A frame or row that cannot be saved (a full disk) is counted in ``saves`` and the run goes on.
    Returns the number of frames processed. Ctrl-C stops cleanly."""
    import json

    import cv2

    from edgekit.device.pipeline import classify_one

    saves = saves or SideOutput("saved frame")
    if save_dir is not None:
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
    rate = FrameRate()
    pos = classifier.manifest.positive_label
    n = 0
    try:
        for frame in frames(source, reconnect, reconnect_delay):
            fps = rate.tick()
            out = classify_one(f"frame {n + 1}", center_square(frame), classifier, gates)
            n += 1
            last = bool(max_frames) and n >= max_frames
            if (n - 1) % max(1, every) and not last:
                continue
            pred = out.prediction
            if pred is None:
                echo(f"frame {n}: {out.status}: {out.reason} ({fps:.1f} fps)")
            else:
                p_pos = "" if pred.p_positive is None else f" p_{pos}={pred.p_positive:.3f}"
                echo(f"frame {n}: {pred.label} {pred.probability:.3f}{p_pos} {pred.decision} ({fps:.1f} fps)")
            if save_dir is not None:
                name = f"frame_{n:06d}.jpg"
                ok, jpeg = cv2.imencode(".jpg", frame[:, :, ::-1])
                saved = bool(ok) and saves.replace(save_dir / name, jpeg.tobytes())
                row = {"frame": n, "file": name if saved else None, "status": out.status,
                       "reason": out.reason, "model_sha256": classifier.model_sha256}
                if pred is not None:
                    row.update(label=pred.label, probability=pred.probability, p_positive=pred.p_positive,
                               decision=pred.decision)
                saves.append(save_dir / "results.jsonl", json.dumps(row) + "\n")
            if last:
                break
    except KeyboardInterrupt:
        echo("stopped")
    return n


def run_field_camera(
    classifier, source: str, capture, echo: Callable[[str], None] = print, max_frames: int | None = None,
    reconnect: int = 3, overlay_path: str | Path | None = None, show: bool = False,
):
    """Frames are microscope fields: each new settled field (``edgekit.device.live.FieldCapture``)
    is analysed like ``edgekit field`` and printed with the running totals; the last one is drawn
    to ``overlay_path`` / the preview window. Returns the capture statistics. Ctrl-C stops."""
    from edgekit.device.domain import NOT_VALIDATED
    from edgekit.device.field import analyze_field
    from edgekit.device.live import LiveView, hold_still_began, pressed_key, show_frame

    decision = classifier.manifest.decision
    view = LiveView(decision, overlay_path, show, classifier.manifest.domain)
    rate = FrameRate()
    totals = _FieldTotals()
    shaking = False
    try:
        for n, frame in enumerate(frames(source, reconnect), 1):
            fps = rate.tick()
            if view.show and pressed_key() == ord(" "):
                capture.request()
            taken = capture.offer(frame)
            began, shaking = hold_still_began(capture, shaking)
            if began:
                echo(f"frame {n}: hold still: the view shakes too much to take the field")
            if taken is None and shaking and view._pending is not None:
                view.render(f"HOLD STILL: {capture.stats.fields} fields so far, {fps:.1f} fps")
            if taken is not None:
                report = analyze_field(taken, classifier)
                k = capture.stats.fields
                echo(totals.add(report, k, f"focus {capture.last_sharpness:.3f}", fps))
                _show_field(view, k, taken, report, totals, fps)
            elif view.show:
                view.show = show_frame(frame)
            if max_frames and n >= max_frames:
                break
    except KeyboardInterrupt:
        echo("stopped")
    if totals.cells and not (verdict := view.verdict())["ok"]:
        echo(f"parasitemia {NOT_VALIDATED}: {verdict['why']}")
    return capture.stats


@dataclass
class _FieldTotals:
    """The running totals of the fields a field camera has counted."""

    cells: int = 0
    parasitized: int = 0

    @property
    def so_far(self) -> float:
        return self.parasitized / self.cells if self.cells else 0

    def add(self, report: Any, k: int, focus: str, fps: float) -> str:
        """Count field ``k``'s report (unless rejected); returns its printed line."""
        from edgekit.device.domain import not_validated

        if report.rejected:
            return f"field {k}: rejected: {report.rejected} ({focus})"
        self.cells += report.n_cells
        self.parasitized += report.n_parasitized
        lo, hi = report.ci95 or (0.0, 0.0)
        return (f"field {k}: {report.n_cells} cells, {report.n_parasitized} parasitized "
                f"({100 * (report.parasitemia or 0):.1f}%, 95% CI {100 * lo:.1f}-{100 * hi:.1f}%)"
                f"{not_validated(report.domain)}; {_domain_word(report.domain)}{focus}; "
                f"so far {self.cells} cells, "
                f"{self.so_far:.1%} ({fps:.1f} fps)")


def _show_field(view: Any, k: int, frame: np.ndarray, report: Any, totals: _FieldTotals, fps: float) -> None:
    """Draw field ``k`` with its cells' calls and the running totals on the live view."""
    from edgekit.device.domain import not_validated

    view.field(k, frame, report.cells)
    ids = [c.id for c in report.cells]
    scores = report.domain_scores or [None] * len(ids)  # none without domain statistics
    view.probabilities(dict(zip(ids, report.probabilities, strict=True)),
                       dict(zip(ids, scores, strict=True)))
    view.render(f"{k} fields, {totals.cells} cells, parasitemia {totals.so_far:.1%} so far"
                f"{not_validated(view.verdict())}, {fps:.1f} fps")


def _domain_word(verdict: dict | None) -> str:
    """The field's domain verdict in a word or two, for its printed line ("": NOT VALIDATED is said
    beside the count already)."""
    if verdict is None:
        return "domain not checked, "
    return "domain ok, " if verdict.get("ok") else ""
