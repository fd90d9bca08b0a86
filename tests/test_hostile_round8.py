"""Hostile inputs, session 15: what session 14 left open (a pipe closed mid-export, a network that
dies mid-sync, a re-signing reason with control characters, a field split naming an unknown part)
and the phone station as a hostile client uses it. Each is one clear line and a non-zero exit (or a
4xx answer), never a traceback, a hang, a silent wrong result, or a record lost or recorded twice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from device_helpers import golden_copy

from edgekit.cli import main
from edgekit.device.records import RecordStore

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _big_station(path: Path, n: int = 20_000) -> Path:
    with RecordStore(path) as store:
        s = store.open_session("P1", "ab" * 32)
        store.add_records(s, [{"source_id": f"f{i}.png", "content_hash": f"h{i}", "status": "classified",
                               "label": "Uninfected", "probability": 0.9, "p_positive": 0.1,
                               "decision": "negative"} for i in range(n)])
    return path


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_pipe_closed_mid_export_is_exit_141(tmp_path, fmt):
    """Before: `sessions export | head -1` of a 4 MB export exited 0: the kernel hands back a short
    count when the reader leaves mid-write, Python's buffered writer passes it on as success and the
    rest of the export was dropped without a word. Now the rest is written again and fails (EPIPE)."""
    db = _big_station(tmp_path / "big.sqlite")
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "sessions", "export", "--db", str(db),
                             "--format", fmt], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`: the reader leaves after its first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert first and "Traceback" not in err and "Exception ignored" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert errors == ["error: output closed early (broken pipe)"]


def test_a_whole_export_still_arrives(tmp_path):
    db = _big_station(tmp_path / "big.sqlite", 3000)
    res = subprocess.run([sys.executable, "-m", "edgekit", "sessions", "export", "--db", str(db), "--format",
                          "jsonl"], capture_output=True, env=ENV, timeout=120)
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 3000, res.stderr


# --------------------------------------------------------------------------- sync on a dying network


def test_sync_connects_with_timeouts_a_url_can_override(monkeypatch):
    """Before: the connection had no keepalives nor tcp_user_timeout: a station whose network died
    mid-sync waited on the kernel's TCP timeouts (~15 min). Now libpq gets them, unless the URL or
    $PGCONNECT_TIMEOUT says otherwise."""
    psycopg = pytest.importorskip("psycopg", reason="the sync extra (psycopg) is not installed")
    from psycopg.conninfo import conninfo_to_dict

    from edgekit.programme import server

    seen: list[dict] = []

    def refuse(conninfo, **kw):
        seen.append({**conninfo_to_dict(conninfo), **kw})
        raise psycopg.OperationalError("no server here")

    monkeypatch.setattr(psycopg, "connect", refuse)
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    for url in ("postgresql://st@host/db", "postgresql://st@host/db?keepalives_idle=60&tcp_user_timeout=0"):
        with pytest.raises(server.ProgrammeError, match="cannot connect"):
            server.connect(url)
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "4")
    with pytest.raises(server.ProgrammeError):
        server.connect("postgresql://st@host/db")
    plain, overridden, env = seen
    assert {k: plain[k] for k in ("keepalives", "tcp_user_timeout", "connect_timeout")} == {
        "keepalives": "1", "tcp_user_timeout": "30000", "connect_timeout": "15"}
    idle, every, count = (int(plain[f"keepalives_{k}"]) for k in ("idle", "interval", "count"))
    assert idle + every * count <= 60
    assert (overridden["keepalives_idle"], overridden["tcp_user_timeout"]) == ("60", "0")  # the URL's own
    assert overridden["keepalives_interval"] == plain["keepalives_interval"]
    assert "connect_timeout" not in env and env["keepalives"] == "1"


def _can_drop_a_network() -> str | None:
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("ip")):
        return "needs root, unshare and ip (a network namespace of its own)"
    if subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True).returncode:
        return "cannot make a network namespace here"
    return None


def test_a_network_dying_mid_sync_is_one_line_then_the_rerun_sends_each_row_once(tmp_path):
    """The real thing: the loopback of a network namespace of its own goes down after 150 KB of the
    sync (`netdrop_sync.py`). Before: still waiting after 40 s. Now one line within seconds (the
    timeouts shortened for the test), exit 2; the re-run sends what was not sent, nothing twice."""
    pytest.importorskip("psycopg", reason="the sync extra (psycopg) is not installed")
    if (why := _can_drop_a_network()) is not None:
        pytest.skip(why)
    env = {**ENV, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    res = subprocess.run(["unshare", "-n", sys.executable, str(ROOT / "tests" / "netdrop_sync.py"),
                          str(tmp_path)], capture_output=True, text=True, env=env, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(out["skip"])
    assert out["dropped"] and out["exit_code"] == 2, out
    assert out["output"].count("\n") == 1 and "lost the connection" in out["output"], out["output"]
    assert out["seconds"] < 20, out
    rerun = json.loads(out["rerun"][0])
    assert out["rerun_code"] == 0 and rerun["sent"] > 0
    assert rerun["sent"] + rerun["already"] == 12 + 12 * 2 * 200  # sessions + records, each once


# --------------------------------------------------------------------------- the engineer's commands


@pytest.mark.parametrize("reason", ["ticket 41\x1b[2J\x1b[Hall fine", "moved\nsigned: trusted",
                                    "ok\u202eevil", "   ", "x" * 501])
def test_a_resigning_reason_is_one_printable_line(tmp_path, reason):
    """Before: `trust sign --resign-unverified` kept escapes, newlines and right-to-left overrides in
    signature.json, shown by every later check of the bundle (a forged "signed: trusted" line). Now
    refused in one line, the old signature kept."""
    from edgekit.signing import SIGNATURE_NAME, generate_keypair

    key, _ = generate_keypair(tmp_path / "k")
    bundle = golden_copy(tmp_path / "b")
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    data["thresholds"].update(positive=0.5, cutoff=0.5, negative=0.5)
    path.write_text(json.dumps(data, indent=2))
    before = (bundle / SIGNATURE_NAME).read_bytes()
    res = CliRunner().invoke(main, ["trust", "sign", str(bundle), "--key", str(key),
                                    "--resign-unverified", reason])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.output, res.output
    assert "re-signing reason" in res.stderr or "needs a reason" in res.stderr, res.stderr
    assert (bundle / SIGNATURE_NAME).read_bytes() == before


@pytest.mark.parametrize("parts", [{"train": ["A"], "val": ["B"], "test": ["C"], "extra": ["D"]},
                                   {"train": ["A"], "val": ["B"], "tset": ["C"], "test": []}])
def test_a_field_split_with_an_unknown_part_is_refused(tmp_path, parts):
    """Before: a --fields-split part named `extra` (or `tset`, a typo of test) was left out without a
    word: its fields were neither trained on nor measured."""
    from edgekit.adapt import field_split
    from edgekit.adapt_config import AdaptConfig
    from edgekit.errors import DataError

    split = tmp_path / "split.json"
    split.write_text(json.dumps(parts))
    with pytest.raises(DataError, match="unknown part"):
        field_split(["A", "B", "C", "D"], AdaptConfig(), split)


# --------------------------------------------------------------------------- the phone station


def test_the_station_answers_head_as_get_without_a_body(tmp_path):
    """Before: HEAD on every page and API call (a monitor's check, `curl -I`) got 405: the routes
    name GET only. Now the GET's status and headers, no body; a POST-only route still 405."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'edgekit[serve]')")
    from test_serve import AUTH, FIELD, TOKEN, _client, _session, _station, _upload

    station = _station(tmp_path)
    try:
        client = _client(station, token=TOKEN)
        sid = _session(client)
        overlay = _upload(client, sid, FIELD.read_bytes(), "field", FIELD.name).json()["overlay"]
        for path in ("/api/status", f"/api/sessions/{sid}", "/api/export.csv", f"/{overlay}", "/"):
            got, head = client.get(path, headers=AUTH), client.head(path, headers=AUTH)
            assert head.status_code == got.status_code == 200, (path, head.status_code)
            assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"]
            assert head.headers["content-length"] == got.headers["content-length"], path
        assert client.head(f"/api/sessions/{sid}/images", headers=AUTH).status_code == 405
        assert client.head("/api/status").status_code == 401  # still needs the token
    finally:
        station.close()


# --------------------------------------------------------------------------- images


def _transparent(path: Path, source: Path, alpha: int, depth=np.uint8) -> Path:
    import cv2

    bgr = cv2.imread(str(source), cv2.IMREAD_COLOR)
    scale = 257 if depth == np.uint16 else 1
    bgra = np.dstack([bgr, np.full(bgr.shape[:2], alpha, np.uint8)]).astype(depth) * scale
    assert cv2.imwrite(str(path), bgra)
    return path


def test_a_fully_transparent_image_is_refused_as_such(tmp_path):
    """Before: a PNG whose alpha is 0 everywhere (a picture hidden behind a transparent layer) was
    refused as "too dark" (a field) or "blank or nearly uniform" (a crop): its pixels, composited over
    black, were never what anyone saw, and the reason sent the worker to the lamp. Now it says so."""
    from device_helpers import GOLDEN

    from edgekit.device.preprocess import read_image
    from edgekit.errors import ImageError

    field = ROOT / "tests" / "fixtures" / "fields" / "BloodImage_00099.jpg"
    crop = ROOT / "tests" / "fixtures" / "cells" / "parasitized_a.webp"
    hidden = [_transparent(tmp_path / "field.png", field, 0), _transparent(tmp_path / "crop.png", crop, 0),
              _transparent(tmp_path / "f16.png", field, 0, np.uint16)]
    for path in hidden:
        with pytest.raises(ImageError, match="fully transparent"):
            read_image(path)
    half = read_image(_transparent(tmp_path / "half.png", crop, 128))  # a cut-out cell: over black, as before
    assert 0 < int(half.max()) <= 128
    res = CliRunner().invoke(main, ["field", str(hidden[0]), "-m", str(GOLDEN)])
    assert "rejected: fully transparent" in res.stdout, res.output
    res = CliRunner().invoke(main, ["classify", str(hidden[1]), "-m", str(GOLDEN), "--format", "jsonl"])
    row = json.loads(res.stdout.splitlines()[0])
    assert row["status"] == "failed" and row["reason"].startswith("fully transparent"), row


def test_a_tiffs_padding_sample_is_not_taken_for_transparency(tmp_path):
    """Before: a TIFF whose 4th sample is padding (ExtraSamples 0: RGBX, as camera SDKs write BGRX
    frames) was composited over black as if it were alpha 0: a sharp crop refused as blank (and since
    the transparency check, as transparent). Now only an alpha the file names is transparency."""
    from PIL import Image

    from edgekit.device.preprocess import read_image
    from edgekit.errors import ImageError

    rgb = np.asarray(Image.open(ROOT / "tests" / "fixtures" / "cells" / "parasitized_a.webp").convert("RGB"))
    padded = np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])
    Image.fromarray(padded, "RGBX").save(tmp_path / "rgbx.tif")
    Image.fromarray(padded, "RGBA").save(tmp_path / "rgba.tif")  # ExtraSamples 2: a real alpha, 0
    assert np.array_equal(read_image(tmp_path / "rgbx.tif"), rgb)
    with pytest.raises(ImageError, match="fully transparent"):
        read_image(tmp_path / "rgba.tif")


# --------------------------------------------------------------------------- videos


def _fields_video(path: Path) -> Path:
    import cv2
    from microscope_video import write_pan_video

    fields = [cv2.imread(str(ROOT / "tests" / "fixtures" / "fields" / f))[:, :, ::-1]
              for f in ("BloodImage_00099.jpg", "BloodImage_00014.jpg")]
    write_pan_video(fields, path, dwell=8, pan=3, codec="MJPG")
    return path


def _camera(source: Path, *extra: str) -> subprocess.CompletedProcess:
    from device_helpers import GOLDEN

    env = {**ENV, "EDGEKIT_ALLOW_UNSIGNED": "1"}
    env.pop("OPENCV_FFMPEG_LOGLEVEL", None)
    return subprocess.run([sys.executable, "-m", "edgekit", "camera", "--source", str(source), "-m",
                           str(GOLDEN), *extra], capture_output=True, text=True, errors="replace", env=env,
                          timeout=300)


def test_a_truncated_video_says_so_after_counting_what_it_holds(tmp_path):
    """Before: a recording cut off part way (a full card, a copy interrupted) ended with exit 0 as if
    complete, and FFmpeg printed "[mjpeg @ 0x..] overread 8" for the cut frame; a file cut inside its
    header printed OpenCV's "Unexpected element. Expected: LIST. Got: <raw bytes>." Now the fields
    before the cut are counted, then one line says the video ended early, exit 2; no library lines."""
    whole = _fields_video(tmp_path / "whole.avi")
    data = whole.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 6 // 10])
    head = tmp_path / "head.avi"
    head.write_bytes(data[:3000])
    ok = _camera(whole)
    assert ok.returncode == 0 and "2 fields captured" in ok.stderr, ok.stderr
    res = _camera(cut)
    assert res.returncode == 2, res.stderr
    assert "field 1:" in res.stdout  # what came before the cut was counted
    lines = [ln for ln in res.stderr.splitlines() if not ln.startswith(("note:", "warning:"))]
    assert len(lines) == 1 and lines[0].startswith(f"error: video '{cut}' ended after "), res.stderr
    assert "of the 19 frames its header declares" in lines[0]
    res = _camera(head)
    lines = [ln for ln in res.stderr.splitlines() if not ln.startswith(("note:", "warning:"))]
    assert res.returncode == 2 and lines == [f"error: cannot open video source '{head}'"], res.stderr


def test_a_file_named_dcm_is_read_as_what_it_holds(tmp_path):
    """Before: the .dcm name alone chose the DICOM reader: a PNG named .dcm (any other image named
    for another format is read by its content) failed as "unreadable DICOM (... Use force=True to
    force reading.)", pydicom's hint to a programmer. Now a file without DICOM's marker is decoded
    as the image it is; a real DICOM file as before."""
    import cv2

    from edgekit.device.preprocess import read_image
    from edgekit.errors import ImageError

    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    assert cv2.imwrite(str(tmp_path / "x.png"), rgb[:, :, ::-1])
    shutil.copy(tmp_path / "x.png", tmp_path / "png.dcm")
    assert np.array_equal(read_image(tmp_path / "png.dcm"), rgb)
    (tmp_path / "text.dcm").write_text("not an image\n")
    with pytest.raises(ImageError, match="corrupt, not an image"):
        read_image(tmp_path / "text.dcm")
    pydicom = pytest.importorskip("pydicom", reason="the dicom extra is not installed")
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL whole slide microscopy
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.set_pixel_data(rgb, "RGB", 8)
    ds.save_as(tmp_path / "real.dcm", enforce_file_format=True)
    assert np.array_equal(read_image(tmp_path / "real.dcm"), rgb)


def test_the_upload_limit_is_told_in_the_unit_it_was_set_in(tmp_path):
    """Before: `serve --max-upload-mb 20` (MiB, as the option reads) refused a larger upload as
    "upload larger than 21 MB" (bytes / 10^6): the worker was told another limit than the one set."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'edgekit[serve]')")
    from test_serve import TOKEN, _client, _session, _station, _upload

    station = _station(tmp_path)
    try:
        for mb in (20, 0.5):
            client = _client(station, token=TOKEN, max_bytes=int(mb * 1024 * 1024))
            r = _upload(client, _session(client), b"\0" * (int(mb * 1024 * 1024) + 70 * 1024))
            assert r.status_code == 413 and f"upload larger than {mb:g} MB" in r.json()["detail"], r.text
    finally:
        station.close()
