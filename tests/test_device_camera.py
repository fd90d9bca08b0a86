"""Camera loop on a real video file (MJPG .avi written here) and on fake live sources."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from device_helpers import CELLS, GOLDEN

from edgekit.cli import main
from edgekit.device.camera import center_square, frames, run_camera
from edgekit.device.preprocess import read_image
from edgekit.device.runtime import load_classifier
from edgekit.errors import CameraError

N_FRAMES = 6


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    import cv2

    crops = [cv2.resize(read_image(p), (96, 96)) for p in sorted(CELLS.iterdir())]
    path = tmp_path_factory.mktemp("video") / "cells.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (128, 96))
    assert writer.isOpened()
    for i in range(N_FRAMES):
        frame = np.zeros((96, 128, 3), np.uint8)
        frame[:, 16:112] = crops[i % len(crops)]
        writer.write(frame[:, :, ::-1])
    writer.release()
    return path


def test_center_square():
    img = np.arange(4 * 6).reshape(4, 6)
    assert center_square(img).tolist() == img[:, 1:5].tolist()
    assert center_square(img.T).shape == (4, 4)


def test_frames_end_cleanly_at_end_of_file(video):
    got = list(frames(str(video)))
    assert len(got) == N_FRAMES and got[0].shape == (96, 128, 3) and got[0].dtype == np.uint8


def test_run_camera_prints_every_n_and_saves(video, tmp_path):
    clf = load_classifier(GOLDEN, "tflite_fp32")
    lines: list[str] = []
    n = run_camera(clf, str(video), every=2, save_dir=tmp_path / "saved", echo=lines.append)
    assert n == N_FRAMES
    assert [ln.split(":")[0] for ln in lines] == ["frame 1", "frame 3", "frame 5"]
    assert all("fps" in ln for ln in lines)
    results = [json.loads(x) for x in (tmp_path / "saved" / "results.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in results] == [1, 3, 5]
    assert all((tmp_path / "saved" / r["file"]).is_file() for r in results)
    assert results[0]["model_sha256"] == clf.model_sha256
    # the frame's center square is the crop: same probability as classifying it directly
    assert all(r["status"] == "classified" for r in results)
    first = next(iter(frames(str(video))))
    assert results[0]["p_positive"] == pytest.approx(clf.classify(center_square(first)).p_positive, abs=1e-6)


def test_max_frames(video):
    clf = load_classifier(GOLDEN)
    lines: list[str] = []
    assert run_camera(clf, str(video), every=10, max_frames=3, echo=lines.append) == 3
    assert [ln.split(":")[0] for ln in lines] == ["frame 1", "frame 3"]  # the last frame is always shown


class FakeCam:
    """A live source: yields ``n`` frames then dies; reopening fails ``fail_reopen`` times."""

    opened = 0

    def __init__(self, n: int):
        self.left = n

    def read(self):
        if self.left <= 0:
            return None
        self.left -= 1
        return np.full((8, 8, 3), 100, np.uint8)

    def close(self):
        pass


def test_live_source_that_disappears_gives_up_with_a_clear_message():
    calls = []

    def opener(source):
        calls.append(source)
        if len(calls) == 1:
            return FakeCam(3)
        raise CameraError("cannot open")

    got = []
    with pytest.raises(CameraError, match="did not come back after 2 attempts"):
        for f in frames("0", reconnect=2, reconnect_delay=0, opener=opener):
            got.append(f)
    assert len(got) == 3 and len(calls) == 3


def test_live_source_reconnects():
    cams = iter([FakeCam(2), FakeCam(0), FakeCam(3)])

    def opener(source):
        try:
            return next(cams)
        except StopIteration:
            raise CameraError("gone") from None

    got = []
    with pytest.raises(CameraError):
        for f in frames("rtsp://cam", reconnect=2, reconnect_delay=0, opener=opener):
            got.append(f)
    # 2 frames, a reopen that delivers nothing, then a camera with 3 frames, then gone for good
    assert len(got) == 5


def test_camera_cli(video, tmp_path):
    res = CliRunner().invoke(main, ["camera", "--crops", "--source", str(video), "-m", str(GOLDEN),
                                    "--every", "3"])
    assert res.exit_code == 0, res.output
    assert res.stdout.count("frame ") == 2 and f"{N_FRAMES} frames processed" in res.stderr
    res = CliRunner().invoke(main, ["camera", "--source", str(tmp_path / "none.avi"), "-m", str(GOLDEN)])
    assert res.exit_code == 2 and "video source not found" in res.stderr


def test_screen_from_camera(video, tmp_path):
    db = tmp_path / "s.sqlite"
    args = ["screen", "--camera", "--crops", "--source", str(video), "--patient", "PV", "--db", str(db),
            "-m", str(GOLDEN), "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    # 6 frames, but only 4 distinct crops (frames repeat every 4): repeats are skipped by content hash
    assert summary["crops"] + summary["rejected"] == 4


def test_a_field_line_says_not_validated_once():
    """"... NOT VALIDATED for this microscope; domain NOT VALIDATED, focus ...": said twice."""
    from types import SimpleNamespace

    from edgekit.device.camera import _FieldTotals

    def line(domain):
        report = SimpleNamespace(rejected=None, n_cells=20, n_parasitized=1, ci95=(0.01, 0.2),
                                 parasitemia=0.05, domain=domain)
        return _FieldTotals().add(report, 1, "focus 0.062", 30.0)

    off = line({"ok": False, "score": 6.0, "why": "unlike"})
    assert off.count("NOT VALIDATED") == 1 and "; focus 0.062;" in off, off
    assert "; domain ok, focus 0.062;" in line({"ok": True, "score": 1.0, "why": "like"})
    assert "; domain not checked, focus 0.062;" in line(None)
