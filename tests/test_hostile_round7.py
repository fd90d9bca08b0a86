"""Hostile inputs, session 14, second round: the engineer's commands (an edited split file, a
binary reference CSV) and the environment (standard descriptors closed at start): each is one clear
line and a non-zero exit, never a traceback, a result written nowhere, or a test image trained on."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from device_helpers import GOLDEN

from edgekit.cli import main
from edgekit.data import drop_unreadable, scan_dataset
from edgekit.errors import DataError
from edgekit.splits import load_split, make_split, save_split

ROOT = Path(__file__).resolve().parents[1]
CROP = ROOT / "tests" / "fixtures" / "cells" / "parasitized_a.webp"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _edited(split: Path, edit) -> Path:
    d = json.loads(split.read_text())
    edit(d)
    out = split.with_name("edited.json")
    out.write_text(json.dumps(d))
    return out


def _first_row(d: dict) -> list:
    return d["parts"]["train"][0]


EDITS = {
    "a list, not an object": (lambda d: d.clear(), "is not an edgekit split file"),
    "parts a list": (lambda d: d.update(parts=[]), "parts must be an object"),
    "data_root a number": (lambda d: d.update(data_root=5), "data_root is not a path"),
    "a test image also in train": (lambda d: d["parts"]["test"].append(_first_row(d)[:2] + ["OTHER"]),
                                   "listed twice (in train and test)"),
    "a row twice": (lambda d: d["parts"]["train"].append(_first_row(d)), "listed twice (in train and train)"),
    "a label 0.7": (lambda d: _first_row(d).__setitem__(1, 0.7), "not [path, label index, group]"),
    "val renamed": (lambda d: d["parts"].update(extra=d["parts"].pop("val")), "parts must be an object"),
    "a path outside the data": (lambda d: _first_row(d).__setitem__(0, _first_row(d)[0].split("/")[0]
                                                                   + "/../../outside.png"),
                                "is not a path inside the data folder"),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_an_edited_split_file_is_refused(cell_folder, tmp_path, name):
    """Before: a list or a number in the wrong place ended in a traceback; a test image also listed in
    train, a row twice, a label 0.7 (read as 0), a renamed part (dropped) or a `..` path out of the data
    folder were trained on without a word."""
    split = tmp_path / "split.json"
    save_split(make_split(drop_unreadable(scan_dataset(cell_folder)), 0.25, 0.2, seed=1), split)
    edit, message = EDITS[name]
    if name == "a list, not an object":
        edited = split.with_name("edited.json")
        edited.write_text("[1, 2]")
    else:
        edited = _edited(split, edit)
    (cell_folder.parent / "outside.png").write_bytes(CROP.read_bytes())
    with pytest.raises(DataError, match=re.escape(message)):
        load_split(edited)
    load_split(split)  # the file as written still loads


def _closing(fd: int):
    return lambda: os.close(fd)


def test_stdout_closed_fails_instead_of_dropping_the_results():
    """Before: `edgekit classify CROP >&-` printed nothing and exited 0 (click drops what is echoed to
    a None sys.stdout): the results went nowhere."""
    res = subprocess.run([sys.executable, "-m", "edgekit", "classify", "-m", str(GOLDEN), str(CROP)],
                         stderr=subprocess.PIPE, text=True, timeout=120, env=ENV, preexec_fn=_closing(1))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last == "error: cannot write output: Bad file descriptor", res.stderr


def test_stderr_closed_still_classifies():
    """Before: `edgekit classify CROP 2>&-` printed the table header and exited 1 (an AttributeError on
    the None sys.stderr, told to nobody): no result."""
    res = subprocess.run([sys.executable, "-m", "edgekit", "classify", "-m", str(GOLDEN), str(CROP)],
                         stdout=subprocess.PIPE, text=True, timeout=120, env=ENV, preexec_fn=_closing(2))
    assert res.returncode == 0 and CROP.name in res.stdout, res.stdout


@pytest.mark.parametrize(("content", "message"), [
    (b"format,threads\n\x9d\xff\x00binary", "is not a UTF-8 CSV"),
    (b"format,threads,latency_p50_ms\ntflite_int8,two,3.0\n", "whose threads is 'two', not a count"),
])
def test_a_malformed_bench_reference_is_one_line(tmp_path, content, message):
    """Before: `model bench --reference` of a binary file ended in a UnicodeDecodeError traceback; a
    row whose threads is not a number passed, to end the run in a ValueError after measuring."""
    from edgekit.benchmarks.profiles import load_reference
    from edgekit.errors import EdgekitError

    ref = tmp_path / "ref.csv"
    ref.write_bytes(content)
    with pytest.raises(EdgekitError, match=re.escape(message)):
        load_reference(ref)
    ref.write_bytes(b"\xef\xbb\xbfformat,threads\ntflite_int8,2\n")  # a BOM from a spreadsheet still loads
    assert load_reference(ref)[0]["format"] == "tflite_int8"


def test_export_refuses_a_garbage_truncated_or_non_classifier_keras_file(tmp_path):
    """Before: garbage or a truncated .keras was "File not found: filepath=..." (the file was there);
    a model whose output is a map ([batch, 32, 32, 2], a segmenter) was exported as a classifier,
    every format "ok"."""
    pytest.importorskip("tensorflow")
    import keras

    from edgekit.export.bundle import BundleError, load_keras

    inp = keras.Input((32, 32, 3))
    keras.Model(inp, keras.layers.Conv2D(2, 1, activation="softmax")(inp)).save(tmp_path / "seg.keras")
    pooled = keras.layers.GlobalAveragePooling2D()(inp)
    keras.Model(inp, keras.layers.Dense(2, activation="softmax")(pooled)).save(tmp_path / "ok.keras")
    whole = (tmp_path / "ok.keras").read_bytes()
    (tmp_path / "trunc.keras").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "text.keras").write_text("not a model\n")
    for name in ("trunc.keras", "text.keras"):
        with pytest.raises(BundleError, match="is not a Keras model file"):
            load_keras(tmp_path / name)
    with pytest.raises(BundleError, match=re.escape("output [None, 32, 32, 2] is not one score per class")):
        load_keras(tmp_path / "seg.keras")
    assert load_keras(tmp_path / "ok.keras").outputs[0].shape[-1] == 2


@pytest.mark.parametrize("where", ["two classes", "two patients"])
def test_one_picture_under_two_labels_or_patients_is_refused(tmp_path, where):
    """Before: `model split` (and `model train DATA`) took the same crop filed under Parasitized and
    Uninfected, or under two patients' names (so in train and test at once), without a word."""
    import shutil

    from conftest import make_cell_folder

    data = make_cell_folder(tmp_path / "cells")
    src = sorted((data / "Parasitized").iterdir())[0]
    folder = "Uninfected" if where == "two classes" else "Parasitized"
    shutil.copy(src, data / folder / src.name.replace(src.name.split("_")[0], "C999P999ThinF"))
    res = CliRunner().invoke(main, ["model", "split", str(data), "-o", str(tmp_path / "s.json")])
    assert res.exit_code == 2 and f"are the same picture under {where}" in res.output, res.output
    assert not (tmp_path / "s.json").exists()


def test_a_device_tree_override_that_is_no_file_is_no_board(tmp_path, monkeypatch, watchdog):
    """Before: `$EDGEKIT_DEVICE_TREE_MODEL` naming a FIFO hung `model bench` (still waiting after 60 s),
    and /dev/zero read until the kernel killed it; now either is "no board", as off a Pi."""
    from edgekit.benchmarks.profiles import DEVICE_TREE_ENV, board_text, detect_board

    fifo = tmp_path / "model"
    os.mkfifo(fifo)
    monkeypatch.setenv(DEVICE_TREE_ENV, str(fifo))
    assert board_text() is None
    monkeypatch.setenv(DEVICE_TREE_ENV, "/dev/zero")
    assert board_text() is None
    (tmp_path / "pi").write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\x00")
    monkeypatch.setenv(DEVICE_TREE_ENV, str(tmp_path / "pi"))
    assert detect_board() == "rpi5"


def test_a_keyring_that_is_a_file_is_refused(tmp_path, monkeypatch):
    """Before: `$EDGEKIT_KEYRING` naming a file was skipped without a word, and with it the site's
    trust.json (its revocations): a bundle the site withdrew would still run."""
    ring = tmp_path / "keys"
    ring.write_text("not a folder\n")
    monkeypatch.setenv("EDGEKIT_KEYRING", str(ring))
    res = CliRunner().invoke(main, ["trust", "verify", str(GOLDEN)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert f"the keyring {ring} is not a folder" in res.output


def test_pack_onto_its_own_bundle_is_refused(tmp_path):
    """Before: `model pack B -o B --replace` put the packed copy in B's place: exit 0, and B's signature
    (and any Keras model and replay crops) gone, so the device refused the bundle it had trusted."""
    from device_helpers import golden_copy

    bundle = golden_copy(tmp_path / "b")
    before = sorted(p.name for p in bundle.iterdir())
    res = CliRunner().invoke(main, ["model", "pack", str(bundle), "-o", str(bundle), "--replace",
                                    "--formats", "tflite_int8"])
    assert res.exit_code == 2 and "the folder it is made from" in res.output, res.output
    assert sorted(p.name for p in bundle.iterdir()) == before
    res = CliRunner().invoke(main, ["model", "pack", str(bundle), "-o", str(tmp_path / "p"),
                                    "--formats", "tflite_int8"])
    assert res.exit_code == 0, res.output


def test_a_bench_whose_every_row_failed_exits_non_zero(tmp_path, cell_folder):
    """Before: `model bench --formats tflite_int8` of a bundle whose int8 model was corrupt (or whose
    rows all timed out) wrote its tables and exited 0: a CI job took it for a benchmark."""
    from device_helpers import golden_copy

    bundle = golden_copy(tmp_path / "b")
    (bundle / "model_int8.tflite").write_bytes(b"\0" * 5000)
    args = ["model", "bench", str(bundle), "--dataset", str(cell_folder), "--threads", "1", "--runs", "2",
            "--warmup", "0", "--no-plots", "--profile", "host"]
    res = CliRunner().invoke(main, [*args, "--formats", "tflite_int8", "-o", str(tmp_path / "o1")])
    assert res.exit_code == 2 and "nothing was measured: every row of tflite_int8 failed" in res.output
    assert "Traceback" not in res.output and (tmp_path / "o1" / "bench.json").is_file()
    res = CliRunner().invoke(main, [*args, "--formats", "tflite_fp32", "-o", str(tmp_path / "o2")])
    assert res.exit_code == 0, res.output
