"""Hostile inputs (issue 13, cases 3, 4, 5, 6-corrupt JPEG): size bounded from the header, FIFOs never
opened for reading, partly decoded images refused, a model that crashes the runtime is one line."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from device_helpers import CELLS, GOLDEN, cell_image, golden_copy, write_image

from edgekit.cli import main
from edgekit.device import probe
from edgekit.device.preprocess import read_image
from edgekit.errors import BundleError, ImageError

ROOT = Path(__file__).resolve().parents[1]


def _png(width: int, height: int, idat: bytes, extra_after_idat: bytes = b"") -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + extra_after_idat
            + chunk(b"IEND", b""))


def _exif_chunk() -> bytes:
    exif = b"MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00"
    return struct.pack(">I", len(exif)) + b"eXIf" + exif + struct.pack(">I", zlib.crc32(b"eXIf" + exif))


def _run_limited(code: str, mem_mb: int = 2048) -> subprocess.CompletedProcess:
    """Run ``code`` in a child with an address-space limit (what a Pi's memory would be)."""
    prelude = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({mem_mb} << 20, {mem_mb} << 20))\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=120,
                          env=env)


def test_huge_declared_png_is_refused_from_its_header(tmp_path):
    """Case 4: 60000x60000 declared, ~100 KB of data, an eXIf chunk after the pixel data (which made
    Pillow decode the whole image to find it). Refused quickly, under a 2 GB memory limit."""
    idat = zlib.compress(b"\x00" * (1 + 60000 * 3) * 30)
    path = tmp_path / "bomb.png"
    path.write_bytes(_png(60000, 60000, idat, _exif_chunk()))
    code = ("import time; from edgekit.device.preprocess import read_image\n"
            "t = time.perf_counter()\n"
            f"try:\n    read_image({str(path)!r})\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
            "print(round(time.perf_counter() - t, 2))\n"
            # VmHWM: this process's peak RSS (ru_maxrss would include the parent's, from before exec)
            "print([int(ln.split()[1]) // 1024 for ln in open('/proc/self/status')\n"
            "       if ln.startswith('VmHWM')][0])")
    res = _run_limited(code)
    lines = res.stdout.split("\n")
    assert lines[0].startswith("ImageError image too large (60000x60000"), res.stdout + res.stderr
    assert float(lines[1]) < 2.0
    assert int(lines[2]) < 400  # MB of peak RSS: nothing near the 10.8 GB the pixels would take


def test_png_exif_after_pixel_data_is_not_read(tmp_path):
    rgb = cell_image(1, 40)
    import cv2

    ok, buf = cv2.imencode(".png", rgb[:, :, ::-1])
    data = buf.tobytes()
    iend = data.rindex(b"IEND") - 4
    path = tmp_path / "late_exif.png"
    path.write_bytes(data[:iend] + _exif_chunk() + data[iend:])
    assert read_image(path).shape == rgb.shape  # orientation 6 (rotate) ignored: never decoded for it


@pytest.mark.parametrize("cmd", ["screen", "classify", "field"])
def test_fifo_is_reported_not_opened(tmp_path, cmd):
    """Case 5: `screen` used to hash (open) a FIFO before checking it and hung forever."""
    fifo = tmp_path / "cell.png"
    os.mkfifo(fifo)
    args = [cmd, str(fifo), str(sorted(CELLS.iterdir())[0])]
    if cmd == "screen":
        args += ["--patient", "P", "--db", str(tmp_path / "s.sqlite"), "-m", str(GOLDEN)]
    elif cmd == "classify":
        args += ["-m", str(GOLDEN)]
    else:
        args += ["--count-only"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, timeout=60,
                         env=env)
    assert "not a regular file" in res.stdout + res.stderr
    assert "Traceback" not in res.stderr


def _jpeg(tmp_path: Path, name: str = "c.jpg") -> bytes:
    rng = np.random.default_rng(3)
    rgb = np.clip(cell_image(2, 96).astype(int) + rng.integers(-20, 20, (96, 96, 3)), 0, 255).astype(np.uint8)
    return write_image(tmp_path / name, rgb, ".jpg").read_bytes()


@pytest.mark.parametrize("damage", ["cut_scan", "garbage"])
def test_jpeg_with_corrupt_data_is_refused(tmp_path, damage):
    """Case 6: libjpeg grey-fills what it cannot decode (or decodes garbage) and only warns; such files
    were classified. ``cut_scan``: the scan ends early but the end marker is there (grey fill);
    ``garbage``: random bytes replace part of the scan so the decoder finishes early."""
    data = _jpeg(tmp_path)
    mid = len(data) // 2
    if damage == "cut_scan":
        data = data[:mid] + b"\xff\xd9"
    else:
        end = data.rindex(b"\xff\xd9")
        data = data[:mid] + bytes([0xA5, 0x5A] * 200) + data[mid:end] + data[end:]
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageError, match="corrupt"):
        read_image(path)
    res = CliRunner().invoke(main, ["classify", str(path), "-m", str(GOLDEN), "--format", "jsonl"])
    assert '"status": "failed"' in res.stdout and "corrupt" in res.stdout


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".bmp", ".tif"])
def test_truncated_images_are_refused(tmp_path, ext):
    path = write_image(tmp_path / f"t{ext}", cell_image(4, 80), ext)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageError):
        read_image(path)


def test_jpeg_padding_before_the_end_marker_is_accepted(tmp_path):
    data = _jpeg(tmp_path)
    path = tmp_path / "padded.jpg"
    path.write_bytes(data[:-2] + b"\x00" * 16 + b"\xff\xd9")
    assert read_image(path).shape == (96, 96, 3)


def test_unidentified_format_is_not_handed_to_another_decoder(tmp_path):
    import cv2

    ok, buf = cv2.imencode(".ppm", cell_image(5, 32))  # Pillow reads PPM; make one it cannot: a .hdr
    ok, buf = cv2.imencode(".hdr", cell_image(5, 32).astype(np.float32))
    path = tmp_path / "x.hdr"
    path.write_bytes(buf.tobytes())
    with pytest.raises(ImageError, match="format"):
        read_image(path)


def test_a_model_that_crashes_the_runtime_is_one_line(tmp_path, monkeypatch):
    """Case 3: the runtime aborting while loading the model (exit 134, nothing printed) becomes one
    line. The child is replaced by one that aborts the way LiteRT does on a bad flatbuffer."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'F tflite: check failed: buffer' >&2\nkill -ABRT $$\n")
    fake.chmod(0o755)
    monkeypatch.setattr(probe.sys, "executable", str(fake))
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    bundle = golden_copy(tmp_path / "b")
    with pytest.raises(BundleError, match=r"crashed \(SIGABRT\).*check failed"):
        from edgekit.device.runtime import load_classifier

        load_classifier(bundle, "tflite_int8")
    res = CliRunner().invoke(main, ["classify", str(sorted(CELLS.iterdir())[0]), "-m", str(bundle)])
    assert res.exit_code == 2 and res.stderr.startswith("error: the litert runtime crashed")


def test_probe_runs_once_per_model(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    art = GOLDEN / "model_int8.tflite"
    from edgekit.manifest import sha256_file

    sha = sha256_file(art)
    probe.probe_model("litert", art, sha)
    assert (tmp_path / "cache" / "probed" / f"{sha}.litert").is_file()
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("probed twice"))
    probe.probe_model("litert", art, sha)


def test_probe_reports_a_model_the_runtime_refuses(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"TFL3" + b"\x00" * 64)
    with pytest.raises(BundleError, match="cannot"):
        probe.probe_model("litert", bad, "0" * 64)
    assert not (tmp_path / "cache" / "probed").exists()


def test_crop_path_refuses_a_large_image_before_decoding(tmp_path):
    """Case 4, second half: a few-KB PNG just under the 50 MP field limit took 1.15 GB as a crop; the
    crop path's limit is 16 MP (a cell crop is ~100x100 px), checked from the header."""
    from edgekit.device.pipeline import MAX_CROP_PIXELS, classify_one
    from edgekit.device.runtime import load_classifier

    path = tmp_path / "wide.png"
    path.write_bytes(_png(7000, 7000, zlib.compress(b"\x00" * 1000)))
    out = classify_one("wide.png", path, load_classifier(GOLDEN), gates=None)
    assert out.status == "failed" and "too large (7000x7000" in out.reason
    assert MAX_CROP_PIXELS < 7000 * 7000


def test_a_real_byte_flip_that_segfaults_litert_is_one_line(tmp_path, monkeypatch):
    """Case 3 with a real model: byte 10569 of the golden int8 model flipped (sha256 and size updated, so
    only the signature would catch it) segfaults LiteRT 1.x while allocating tensors. Without the
    child-process probe this test process itself would die."""
    import json

    from edgekit.device.runtime import load_classifier
    from edgekit.manifest import sha256_file

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    bundle = golden_copy(tmp_path / "b")
    model = bundle / "model_int8.tflite"
    data = bytearray(model.read_bytes())
    data[10569] ^= 0xFF
    model.write_bytes(bytes(data))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["artifacts"]["tflite_int8"]["sha256"] = sha256_file(model)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    try:
        load_classifier(bundle, "tflite_int8", allow_unsigned=True, warn=lambda _line: None)
    except BundleError as exc:  # a runtime that no longer crashes on it may still refuse it
        assert "crashed (SIGSEGV)" in str(exc) or "cannot" in str(exc), exc


def test_a_model_file_or_image_given_as_bundle_is_one_line(tmp_path):
    model = tmp_path / "model.tflite"
    model.write_bytes(os.urandom(2000))
    for bundle in (model, CELLS / sorted(p.name for p in CELLS.iterdir())[0]):
        res = CliRunner().invoke(main, ["classify", str(CELLS), "--model", str(bundle)])
        assert res.exit_code == 2 and "is not a bundle" in res.output and "edgekit model import" in res.output
        assert "Traceback" not in res.output


def test_a_video_source_that_gives_no_frame_is_an_error(tmp_path):
    fake = tmp_path / "frame.png"  # OpenCV opens it as an image sequence, then reads nothing
    fake.write_text("not an image\n")
    res = CliRunner().invoke(main, ["camera", "--source", str(fake), "--max-frames", "2"])
    assert res.exit_code == 2 and "gave no frame" in res.output, res.output


def test_a_model_swapped_after_its_check_is_not_what_runs(tmp_path, monkeypatch):
    """The runtime loads the bytes that were hashed, not the path again: a file replaced between the
    sha256 check and the load (here: by garbage, right after the check) changes nothing."""
    import json

    from edgekit.device import runtime

    bundle = golden_copy(tmp_path / "b")
    model = bundle / "model_int8.tflite"

    def swap_after_check(rt, path, sha, content=None):
        assert content is not None and Path(path) == model
        model.write_bytes(os.urandom(len(content)))

    monkeypatch.setattr(runtime, "probe_model", swap_after_check)
    clf = runtime.load_classifier(bundle, "tflite_int8")
    expected = json.loads((GOLDEN / "expected.json").read_text())
    from edgekit.device.preprocess import load_for_model

    batch = np.stack([load_for_model(CELLS / name, clf.manifest.preprocessing) for name in expected["crops"]])
    assert np.allclose(clf.predict(batch), expected["probabilities"]["tflite_int8"], atol=1e-6)


def test_reading_a_small_file_does_not_allocate_the_bound(tmp_path):
    """read(n) allocates n bytes first: a 4 kB photo must not cost the 256 MB read bound (an address
    space a small board's ulimit may not have)."""
    import tracemalloc

    from edgekit.safefile import read_regular_bytes

    f = tmp_path / "small.jpg"
    f.write_bytes(os.urandom(4096))
    tracemalloc.start()
    try:
        data = read_regular_bytes(f, 256 << 20, "image")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data == f.read_bytes() and peak < 1 << 20


@pytest.mark.parametrize("mode", [[], ["--fields"]])
def test_screen_exits_1_when_an_input_cannot_be_read(tmp_path, mode):
    """The batch carries on past the bad file, prints the summary, then exits 1; the rerun, which
    reads nothing new, exits 0. (Both exited 0 before.)"""
    folder = tmp_path / "in"
    shutil.copytree(CELLS, folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    db = tmp_path / "s.sqlite"
    args = ["screen", str(folder), *mode, "--patient", "P", "--db", str(db), "-m", str(GOLDEN)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "broken.jpg" in res.stderr and "session 1:" in res.stdout, res.output
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0 and "skipped" in res.stderr, res.output


def test_ctrl_c_in_a_screen_batch_exits_130_with_every_record_once(tmp_path, monkeypatch):
    """Ctrl-C (here: raised by the file source at its 81st image) ends with the summary of what is
    recorded and exit 130, not 0; the rerun records the rest, each image once."""
    from edgekit.device import screening

    folder = tmp_path / "in"
    for i in range(100):
        write_image(folder / f"c{i:02d}.png", cell_image(i, 40))
    real = screening.file_source

    def interrupted_source(*args, **kwargs):
        crops, total, kind = real(*args, **kwargs)

        def gen():
            for i, crop in enumerate(crops):
                if i == 80:
                    raise KeyboardInterrupt
                yield crop
        return gen(), total, kind

    db = tmp_path / "s.sqlite"
    args = ["screen", str(folder), "--patient", "P", "--db", str(db), "-m", str(GOLDEN), "--stop-cells", "0"]
    with monkeypatch.context() as m:
        m.setattr(screening, "file_source", interrupted_source)
        res = CliRunner().invoke(main, args)
    assert res.exit_code == 130 and "interrupted" in res.stderr and "session 1:" in res.stdout, res.output
    with sqlite3.connect(db) as con:
        n, distinct = con.execute("SELECT COUNT(*), COUNT(DISTINCT content_hash) FROM records").fetchone()
    assert 0 < n == distinct <= 80  # the batch in flight is lost, nothing reported
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0 and f"skipped {n} already recorded" in res.stderr, res.output
    with sqlite3.connect(db) as con:
        counts = con.execute("SELECT COUNT(*), COUNT(DISTINCT content_hash) FROM records").fetchone()
    assert counts == (100, 100)


def _as_a_user(cmd: list[str]) -> list[str]:
    """``cmd`` run without the power to ignore file permissions (root keeps its uid but drops it)."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", "--bounding-set", caps, "--inh-caps", caps, *cmd]


def test_unreadable_folders_are_reported_and_the_batch_goes_on(tmp_path):
    """A file in a folder that cannot be searched ended the whole batch ("error: Permission denied",
    exit 2); an unreadable subfolder was skipped in silence, an unreadable folder called empty."""
    tree = tmp_path / "tree"
    write_image(tree / "a" / "good.png", cell_image(1, 48))
    write_image(tree / "b" / "hidden.png", cell_image(2, 48))
    write_image(tmp_path / "locked" / "x.png", cell_image(3, 48))
    (tree / "b").chmod(0)
    (tmp_path / "locked").chmod(0)
    locked = tmp_path / "locked"
    cmd = [sys.executable, "-m", "edgekit", "classify", str(locked / "x.png"), str(locked), str(tree),
           "-m", str(GOLDEN), "--format", "jsonl"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        res = subprocess.run(_as_a_user(cmd), capture_output=True, text=True, timeout=120, env=env)
    finally:
        (tree / "b").chmod(0o755)
        locked.chmod(0o755)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    rows = {Path(r["path"]).relative_to(tmp_path).as_posix(): r
            for r in map(json.loads, res.stdout.splitlines())}
    assert rows["tree/a/good.png"]["status"] == "classified"
    assert rows["tree/b"]["reason"] == "cannot read this folder: Permission denied"
    assert rows["locked"]["reason"] == "cannot read this folder: Permission denied"
    assert rows["locked/x.png"]["reason"] == "cannot reach it: Permission denied"


def test_a_session_id_beyond_sqlite_integers_is_no_session(tmp_path):
    db = tmp_path / "s.sqlite"
    assert CliRunner().invoke(main, ["screen", str(CELLS), "--patient", "P", "--db", str(db),
                                     "-m", str(GOLDEN)]).exit_code == 0
    huge = "9" * 25  # binding it was an OverflowError traceback
    for args in (["show", huge], ["show", "--id", huge], ["export", "--id", huge],
                 ["confirm", huge, "1", "--verdict", "confirm"]):
        res = CliRunner().invoke(main, ["sessions", *args, "--db", str(db)])
        assert res.exit_code == 2 and f"'{huge}' in" in res.stderr, (args, res.output)


@pytest.mark.parametrize("args", [
    ["serve", "--max-upload-mb", "nan"], ["model", "bench", "--timeout", "nan"],
    ["model", "import", "x.onnx", "--labels", "a,b", "--threshold", "nan", "-o", "b"],
    ["model", "split", "d", "--test-fraction", "inf"]])
def test_nan_and_inf_are_refused_by_float_options(args):
    """nan compares false, so it passed every click.FloatRange (`serve --max-upload-mb nan`: a traceback)."""
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "is not a finite number" in res.stderr, res.output


def test_camera_options_that_would_be_ignored_or_fail_late_are_refused_at_once(tmp_path):
    """`camera --save` was silently ignored without --crops (nothing saved, exit 0); an --overlay that
    is a folder failed only after the first field, naming a temporary file."""
    from edgekit.device.live import LiveView
    from edgekit.errors import EdgekitError

    res = CliRunner().invoke(main, ["camera", "--source", "none.avi", "--save", str(tmp_path / "s")])
    assert res.exit_code == 2 and "--save keeps --crops frames" in res.stderr, res.output
    with pytest.raises(EdgekitError, match="it is a folder"):
        LiveView(None, tmp_path)


def test_ctrl_c_while_the_cli_loads_is_one_line(monkeypatch, capsys):
    """The CLI's own imports take a few tenths of a second on a small board; Ctrl-C then was a traceback."""
    class InterruptedImport:
        def find_spec(self, name, path=None, target=None):
            if name == "edgekit.cli":
                raise KeyboardInterrupt

    monkeypatch.delitem(sys.modules, "edgekit.cli")
    monkeypatch.setattr(sys, "meta_path", [InterruptedImport(), *sys.meta_path])
    from edgekit.entry import main as entry

    with pytest.raises(SystemExit) as stopped:
        entry()
    assert stopped.value.code == 130 and capsys.readouterr().err == "interrupted\n"


@pytest.mark.parametrize("name, array", [
    ("nan.npy", np.full((5, 4), np.nan)), ("inf.npy", np.full((5, 4), np.inf)),
    ("scalar.npy", np.array(3.0)), ("text.npy", np.array(["a", "b"]))])
def test_feature_tables_with_nan_inf_or_no_numbers_are_refused(tmp_path, name, array):
    """Calibration/validation tables (`model export --calibration x.npy`) took nan and inf as data (the
    int8 range, the accuracy); a 0-d or text array was an IndexError or ValueError traceback."""
    from types import SimpleNamespace

    from edgekit.errors import DataError
    from edgekit.export.calibration import from_path

    np.save(tmp_path / name, array)
    with pytest.raises(DataError, match="nan or infinite|not a table of numbers"):
        from_path(tmp_path / name, SimpleNamespace(labels=["R", "M"]), (None, 4), None, 0, "calibration")


def test_screen_camera_with_a_bad_overlay_opens_no_session(tmp_path):
    """`screen --camera --overlay FOLDER` is refused before a session row is written (it opened an
    empty session, then refused)."""
    db = tmp_path / "s.sqlite"
    res = CliRunner().invoke(main, ["screen", "--camera", "--source", "none.avi", "--patient", "P1",
                                    "--overlay", str(tmp_path), "--db", str(db)])
    assert res.exit_code != 0 and "it is a folder" in res.output, res.output
    if db.exists():
        with sqlite3.connect(db) as con:
            assert con.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 0
