"""Hostile inputs, round 2: command groups beyond screen/field (pack, site cells, adapt, serve, sync),
repeats and concurrency. Each case here was a traceback, a silent success or lost data before its fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from device_helpers import GOLDEN

from edgekit.cli import main
from edgekit.errors import DataError
from edgekit.manifest import load_manifest


@pytest.mark.parametrize("kind", ["user_files", "file", "symlink"])
def test_replace_never_deletes_a_folder_that_is_not_a_bundle(tmp_path, kind):
    """`model pack -o ~/Documents --replace` removed the whole folder and put the bundle there."""
    out = tmp_path / "out"
    if kind == "user_files":
        (out / "sub").mkdir(parents=True)
        (out / "thesis.txt").write_text("precious")
        (out / "sub" / "a.txt").write_text("precious")
    elif kind == "file":
        out.write_text("precious")
    else:
        (tmp_path / "real").mkdir()
        (tmp_path / "real" / "thesis.txt").write_text("precious")
        out.symlink_to(tmp_path / "real")
    res = CliRunner().invoke(main, ["model", "pack", str(GOLDEN), "-o", str(out), "--formats", "tflite_int8",
                                    "--replace"])
    assert res.exit_code != 0 and "refusing to replace" in res.output and "Traceback" not in res.output
    kept = {"user_files": out / "sub" / "a.txt", "file": out,
            "symlink": tmp_path / "real" / "thesis.txt"}[kind]
    assert kept.read_text() == "precious"


def test_replace_still_replaces_a_bundle_or_an_empty_folder(tmp_path):
    for out in (tmp_path / "bundle", tmp_path / "empty"):
        out.mkdir()
        if out.name == "bundle":
            (out / "manifest.json").write_text("{}")
            (out / "old.tflite").write_text("x")
        res = CliRunner().invoke(main, ["model", "pack", str(GOLDEN), "-o", str(out), "--formats",
                                        "tflite_int8", "--replace"])
        assert res.exit_code == 0, res.output
        assert sorted(load_manifest(out).artifacts) == ["tflite_int8"] and not (out / "old.tflite").exists()


def test_cells_replace_refuses_a_folder_that_is_not_a_cells_dataset(tmp_path):
    from edgekit.cells import write_cells

    out = tmp_path / "data"
    out.mkdir()
    (out / "thesis.txt").write_text("precious")
    with pytest.raises(DataError, match="refusing to replace"):
        write_cells([], out, replace=True)
    assert (out / "thesis.txt").read_text() == "precious"


def test_two_processes_counting_the_same_field_record_it_once(tmp_path, monkeypatch):
    """Two `screen --fields` of one folder into one --db at once: both checked a field before either
    had recorded it, and both counted it (two field rows, the programme's field counts doubled)."""
    import sqlite3
    import subprocess
    import sys

    from edgekit.device.records import RecordStore

    field = GOLDEN.parent / "fields" / "BloodImage_00014.jpg"
    db = tmp_path / "s.sqlite"
    args = ["screen", "--patient", "P", "--fields", str(field), "--model", str(GOLDEN), "--db", str(db)]
    real_add = RecordStore.add_records

    def other_process_counts_it_first(self, *a, **k):  # after this process's checks, before its commit
        other = subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True,
                               timeout=120)
        assert other.returncode == 0, other.stderr
        monkeypatch.setattr(RecordStore, "add_records", real_add)
        return real_add(self, *a, **k)

    monkeypatch.setattr(RecordStore, "add_records", other_process_counts_it_first)
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "BloodImage_00014.jpg: not counted: this field is already counted" in res.output
    con = sqlite3.connect(db)
    assert con.execute("select count(*) from fields").fetchone()[0] == 1
    assert con.execute("select count(*) from records where field_id is null").fetchone()[0] == 0


def test_a_full_disk_for_overlays_still_reports_every_field(tmp_path, monkeypatch):
    """`field --overlay-dir` on a disk that fills up half way: the batch stopped at the first overlay
    that could not be written, and that field's result (computed) was never printed."""
    import errno
    import json

    import edgekit.manifest

    real_write = edgekit.manifest.atomic_write_bytes
    calls = []

    def fills_up(path, data):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(edgekit.manifest, "atomic_write_bytes", fills_up)
    fields = GOLDEN.parent / "fields"
    res = CliRunner().invoke(main, ["field", str(fields), "--model", str(GOLDEN), "--overlay-dir",
                                    str(tmp_path / "ov"), "--format", "jsonl"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "BloodImage_00099.jpg: overlay not written: No space left on device" in res.output
    rows = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
    assert [Path(r["field"]).name for r in rows[:2]] == ["BloodImage_00014.jpg", "BloodImage_00099.jpg"]
    assert rows[2]["total"]["counted"] == 2
    assert sorted(p.name for p in (tmp_path / "ov").iterdir()) == ["BloodImage_00014_overlay.png"]


@pytest.mark.parametrize("args, message", [
    (["--threads", "100000"], "positive integers, at most 64"),  # ran for minutes, never ended
    (["-o", "ref.csv"], "exists and is not a folder"),  # said only once every row was measured
    (["--reference", "ref.csv"], "has a row without format, threads"),
    (["--save-reference", "DIR"], "refusing to write"),
])
def test_bench_refuses_what_would_fail_before_measuring(tmp_path, monkeypatch, args, message):
    import edgekit.benchmarks.bench as bench

    def measured(*a, **k):
        raise AssertionError("measured before the bad option was refused")

    monkeypatch.setattr(bench, "run_bench", measured)
    (tmp_path / "ref.csv").write_text("a,b\n1,2\n")
    (tmp_path / "DIR").mkdir()
    args = [str(tmp_path / a) if a in ("ref.csv", "DIR") else a for a in args]
    res = CliRunner().invoke(main, ["model", "bench", str(GOLDEN), "--no-plots", *args])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output


@pytest.mark.parametrize("args, message", [
    (["-o", "DIR"], "refusing to write"),  # was "Is a directory: /.tmp.x.tmp", after decoding every file
    (["--test-fraction", "1.5"], "fractions must be in (0, 1)"),
])
def test_split_refuses_bad_options_before_decoding_the_dataset(tmp_path, monkeypatch, args, message):
    import edgekit.data

    def decoded(*a, **k):
        raise AssertionError("the dataset was decoded before the bad option was refused")

    monkeypatch.setattr(edgekit.data, "drop_unreadable", decoded)
    (tmp_path / "DIR").mkdir()
    for c in ("A", "B"):
        (tmp_path / "data" / c).mkdir(parents=True)
        (tmp_path / "data" / c / "x.png").write_bytes(b"")
    args = [str(tmp_path / a) if a == "DIR" else a for a in args]
    res = CliRunner().invoke(main, ["model", "split", str(tmp_path / "data"), *args])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output


def test_import_refuses_a_label_that_is_not_one_printable_line(tmp_path):
    """A label with a newline was written into a bundle that no command could then load."""
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")  # never read: the labels are refused first
    res = CliRunner().invoke(main, ["model", "import", str(model), "--labels", "a\nb,c", "--scale", "1/255",
                                    "-o", str(tmp_path / "out")])
    assert res.exit_code == 2 and "label 'a\\nb' is not one printable line" in res.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("cmd", [["screen", "--patient", "P", "CELLS"], ["serve", "--port", "1"]])
def test_a_bundle_without_a_positive_class_decides_no_patient(tmp_path, monkeypatch, cmd):
    """`model import` without --positive-index: screen decided the patient NEGATIVE on p(last label)."""
    import json

    from device_helpers import CELLS, golden_copy

    if cmd[0] == "serve":
        uvicorn = pytest.importorskip("uvicorn")

        def served(*a, **k):
            raise AssertionError("the station was served")

        monkeypatch.setattr(uvicorn, "run", served)

    bundle = golden_copy(tmp_path / "b")
    (bundle / "signature.json").unlink()
    data = json.loads((bundle / "manifest.json").read_text())
    data["positive_label"] = None
    (bundle / "manifest.json").write_text(json.dumps(data))
    db = tmp_path / "s.sqlite"
    cmd = [str(CELLS) if a == "CELLS" else a for a in cmd]
    res = CliRunner().invoke(main, [*cmd, "--model", str(bundle), "--db", str(db)])
    assert res.exit_code == 2 and "names no positive class, so it cannot decide a patient" in res.output
    assert not db.exists()
    assert CliRunner().invoke(main, ["classify", str(CELLS), "--model", str(bundle)]).exit_code == 0


def test_keygen_trust_with_a_keyring_that_is_a_file_writes_nothing(tmp_path, monkeypatch):
    """It wrote the key pair, then failed with 'File exists: <keyring>'."""
    ring = tmp_path / "ring"
    ring.write_text("not a folder")
    monkeypatch.setenv("EDGEKIT_KEYRING", str(ring))
    res = CliRunner().invoke(main, ["trust", "keygen", str(tmp_path / "site"), "--trust"])
    assert res.exit_code == 2 and f"the keyring {ring} is not a folder: nothing written" in res.output
    assert not (tmp_path / "site.key").exists() and not (tmp_path / "site.pub").exists()


def test_a_live_overlay_that_cannot_be_written_does_not_stop_the_count(tmp_path, monkeypatch, capsys):
    """`camera`/`screen --camera --overlay` on a disk that fills up or fails: the camera stopped with
    'No such file or directory: .ov.png.tmp.png' (a patient's session cut half way)."""
    import errno
    import os

    import numpy as np

    from edgekit.device.live import LiveView
    from edgekit.manifest import load_manifest

    view = LiveView(load_manifest(GOLDEN).decision, tmp_path / "ov.png")
    real_replace = os.replace

    def failing(src, dst):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", failing)
    for _ in range(2):
        view.field(1, np.full((120, 160, 3), 200, np.uint8), [])
        assert view.render("status") is not None
    err = capsys.readouterr().err
    assert err.count("not written (Input/output error); counting goes on") == 1
    assert not list(tmp_path.iterdir())  # no temporary file left behind
    monkeypatch.setattr(os, "replace", real_replace)
    view.render("status")
    assert (tmp_path / "ov.png").is_file() and not view.overlay_out.failing


@pytest.mark.parametrize("change, message", [
    ({"l2": -1.0}, "--l2 must be 0 or more"),  # a Keras ValueError traceback once the model was built
    ({"input_size": 100000}, "the input size must be at most 4096"),  # ran out of memory
    ({"weights": "imagenet"}, "--weights is for the transfer backbones"),  # silently ignored
    ({"weights": "/nonexistent.h5"}, "--weights is for the transfer backbones"),
])
def test_train_options_that_failed_late_or_were_ignored_are_refused(change, message):
    from edgekit.errors import EdgekitError
    from edgekit.train import TrainConfig

    with pytest.raises(EdgekitError, match=message):
        TrainConfig(**change)
    TrainConfig(backbone="mobilenetv3small", weights="imagenet")  # where --weights means something
