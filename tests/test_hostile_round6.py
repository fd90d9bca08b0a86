"""Hostile inputs, session 14: a tampered manifest naming a model's sha256 as a list, a model that
gives NaN for some images, a screening database with malformed values in its rows, and a single
cell crop given as a whole field: each is one clear line and a non-zero exit (or a per-field
refusal), never a traceback or a result made of nothing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from device_helpers import CELLS, GOLDEN, golden_copy

from edgekit.cli import main

CROP = CELLS / "parasitized_a.webp"
FIELD = Path(__file__).resolve().parent / "fixtures" / "fields" / "BloodImage_00099.jpg"


def _one_line_refusal(res) -> str:
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code != 0, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    return errors[0]


@pytest.mark.parametrize("value", [[], {}, ["a" * 64]])
@pytest.mark.parametrize("command", ["verify", "classify"])
def test_a_model_sha256_that_is_not_a_string_is_one_line(tmp_path, value, command):
    """`trust verify` (and every command that loads the bundle) ended in a TypeError traceback
    (unhashable type: 'list') from the revocation check, which ran before the manifest's types."""
    bundle = golden_copy(tmp_path / "b")
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    data["artifacts"]["tflite_int8"]["sha256"] = value
    path.write_text(json.dumps(data))
    args = ["trust", "verify", str(bundle)] if command == "verify" else \
        ["classify", "-m", str(bundle), "--allow-unsigned", str(CROP)]
    line = _one_line_refusal(CliRunner().invoke(main, args))
    assert "sha256" in line or "signature" in line, line


def _nan_for_dark_crops(path, size: int = 16, floor: float = 0.45) -> None:
    """An NHWC ONNX model giving NaN for a crop whose mean of any channel is under ``floor`` (of 1):
    sqrt(mean - floor) -> MatMul -> Softmax. Random pixels (the import's probe) pass."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.array([[1.0, -1.0]] * 3, np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=0),
         helper.make_node("Sub", ["m", "c"], ["d"]),
         helper.make_node("Sqrt", ["d"], ["s"]),
         helper.make_node("MatMul", ["s", "w"], ["z"]),
         helper.make_node("Softmax", ["z"], ["p"], axis=1)],
        "nan_for_dark",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", size, size, 3])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([floor], np.float32), "c")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def test_a_model_giving_nan_for_some_crops_is_refused_not_read_as_a_label(tmp_path):
    """A bring-your-own model that passes the import's probe but gives NaN for darker crops: `classify`
    called them "Uninfected" with probability NaN (and wrote NaN into its JSON lines, which is no
    JSON), `field` counted those cells as uncertain, `bench` computed an accuracy over NaN; exit 0."""
    _nan_for_dark_crops(tmp_path / "m.onnx")
    bundle = tmp_path / "b"
    res = CliRunner().invoke(main, ["model", "import", str(tmp_path / "m.onnx"), "--labels",
                                    "Parasitized,Uninfected", "--positive-index", "0", "--scale", "1/255",
                                    "-o", str(bundle)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["classify", "-m", str(bundle), "--format", "jsonl", str(CELLS)])
    line = _one_line_refusal(res)
    assert "gave no probabilities for 2 of" in line and "NaN" not in res.stdout, res.output
    res = CliRunner().invoke(main, ["field", "-m", str(bundle), "--format", "jsonl", str(FIELD)])
    assert "gave no probabilities" in _one_line_refusal(res) and "NaN" not in res.stdout, res.output
    # a sound crop alone is classified as before
    res = CliRunner().invoke(main, ["classify", "-m", str(bundle), "--format", "jsonl", str(CROP)])
    assert res.exit_code == 0 and json.loads(res.stdout.splitlines()[0])["status"] == "classified", res.output


@pytest.mark.parametrize(("table", "column", "value"), [
    ("records", "probabilities", "'not json'"), ("records", "probability", "'abc'"),
    ("records", "source_id", "X'00ff'"), ("sessions", "decision", "'{'"), ("sessions", "created_at", "'zz'"),
])
@pytest.mark.parametrize("command", [["sessions", "list"], ["sessions", "show", "1"],
                                     ["sessions", "export", "--format", "csv"]])
def test_a_screening_row_with_a_malformed_value_is_one_line(screened, table, column, value, command):
    """SQLite keeps whatever a column is given: text JSON that is not JSON in `probabilities` ended
    `sessions list`, `show` and `export` in a JSONDecodeError traceback, a session's unreadable
    decision in another."""
    con = sqlite3.connect(screened)
    con.execute(f"UPDATE {table} SET {column} = {value} WHERE id = 1")
    con.commit()
    con.close()
    line = _one_line_refusal(CliRunner().invoke(main, command))
    assert f"{table} row 1: its {column} holds" in line, line


def test_a_screening_database_that_lost_a_column_is_refused_not_read_as_empty(screened):
    """A records table whose `label` column was renamed away was read with every label null: `export`
    wrote each classified cell without its label, exit 0."""
    con = sqlite3.connect(screened)
    con.execute("ALTER TABLE records RENAME COLUMN label TO label_old")
    con.commit()
    con.close()
    for command in (["sessions", "export", "--format", "jsonl"], ["sessions", "list"]):
        line = _one_line_refusal(CliRunner().invoke(main, command))
        assert "its records table has no label column" in line, line


def _swapping_reader(monkeypatch, path, replacement, after: bool):
    """Replace ``path``'s content with ``replacement``'s the first time its bytes are read to be
    decoded: just before (``after`` False) or just after (True), as a sync tool or camera app
    overwriting a file mid-batch would."""
    import shutil

    import edgekit.device.decoding as dec

    real, done = dec.read_file_bytes, []

    def reader(p, *args, **kwargs):
        swap = Path(p) == path and not done
        if swap and not after:
            done.append(shutil.copyfile(replacement, path))
        out = real(p, *args, **kwargs)
        if swap and after:
            done.append(shutil.copyfile(replacement, path))
        return out

    monkeypatch.setattr(dec, "read_file_bytes", reader)
    return done  # non-empty once swapped


def _records(db) -> list[tuple[str, str, str]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT source_id, content_hash, status FROM records ORDER BY id").fetchall()
    finally:
        con.close()


def test_a_crop_replaced_after_it_was_hashed_is_not_recorded_under_the_old_hash(tmp_path, monkeypatch):
    """`screen` hashed a file, then decoded it: replaced in between, the new picture was recorded under
    the old picture's hash, and a rerun classified the new picture again: one file, two cells."""
    import shutil

    from edgekit.device.pipeline import file_hash

    folder = tmp_path / "in"
    folder.mkdir()
    a, b = folder / "a.webp", folder / "b.webp"
    shutil.copyfile(CELLS / "parasitized_a.webp", a)
    shutil.copyfile(CELLS / "uninfected_a.webp", b)
    db = tmp_path / "s.sqlite"
    args = ["screen", "--patient", "P", "--db", str(db), "-m", str(GOLDEN), str(folder)]
    swapped = _swapping_reader(monkeypatch, a, CELLS / "parasitized_b.webp", after=False)
    res = CliRunner().invoke(main, args)
    assert swapped and res.exit_code == 1, res.output
    assert "a.webp: the file changed while it was read" in res.stderr, res.output
    assert [r[0] for r in _records(db)] == [str(b)]  # nothing recorded of a
    res = CliRunner().invoke(main, args)  # the rerun screens what a holds now, once
    assert res.exit_code == 0, res.output
    assert sorted(r[:2] for r in _records(db)) == sorted([(str(a), file_hash(a)), (str(b), file_hash(b))])


def test_a_field_replaced_after_it_was_read_is_recorded_under_what_was_read(tmp_path, monkeypatch):
    """`screen --fields` decoded a field, then hashed the file: replaced in between, the old picture's
    refusal (here: blank) was recorded under the hash of the new picture, a sharp field that was
    never refused."""
    import shutil

    from device_helpers import write_image

    from edgekit.device.pipeline import file_hash

    folder = tmp_path / "in"
    folder.mkdir()
    f = write_image(folder / "f.png", np.full((480, 640, 3), 128, np.uint8))
    blank = file_hash(f)
    good = shutil.copyfile(FIELD, tmp_path / "good.png")
    db = tmp_path / "s.sqlite"
    args = ["screen", "--fields", "--patient", "P", "--db", str(db), "-m", str(GOLDEN), str(folder)]
    swapped = _swapping_reader(monkeypatch, f, good, after=True)
    res = CliRunner().invoke(main, args)
    assert swapped and _records(db) == [(str(f), blank, "rejected")], res.output
    res = CliRunner().invoke(main, args)  # the new picture is another field: counted on the rerun
    assert res.exit_code == 0 and [r[2] for r in _records(db)].count("classified") > 10, res.output


def test_a_single_cell_crop_given_as_a_field_is_refused_not_counted_as_fragments(tmp_path):
    """`field` (and `screen --fields`) cut a 130-px NIH crop, one cell on black, into ~16 "cells" of
    its stain and texture and counted them (e.g. 3 of 16 parasitized); `classify` refuses the
    converse (a whole field as one crop). With the default bundle's training sizes and border."""
    crops = sorted(CELLS.iterdir())
    res = CliRunner().invoke(main, ["field", "--format", "jsonl", *map(str, crops), str(FIELD)])
    rows = [json.loads(line) for line in res.stdout.splitlines()[:-1]]
    assert res.exit_code == 0, res.output  # the whole field is still counted
    for row in rows[:-1]:
        assert row["rejected"] is not None and row["cells"] == 0, row
    single = CELLS / "uninfected_a.webp"  # cut into 2 "cells"; the finder refuses the others itself
    assert "a single cell on a black background, not a whole field" in rows[crops.index(single)]["rejected"]
    assert rows[-1]["rejected"] is None and rows[-1]["cells"] > 10, rows[-1]
    db = tmp_path / "s.sqlite"
    res = CliRunner().invoke(main, ["screen", "--fields", "--patient", "P", "--db", str(db), str(single)])
    assert "not a whole field" in res.output and [r[2] for r in _records(db)] == ["rejected"], res.output


MEM = Path("/proc/self/mem")  # a regular file whose read fails with EIO, as a failing SD card's would


@pytest.mark.skipif(not MEM.is_file(), reason="needs Linux's /proc/self/mem")
def test_an_input_that_fails_to_read_is_its_own_rejection_and_the_batch_goes_on(tmp_path):
    """An I/O error reading an input (EIO from a failing card or a dropped mount) ended `classify`
    and `field` with `error: cannot write output: Input/output error`, the rest of the batch unread;
    `screen` called the file "not a regular file"."""
    res = CliRunner().invoke(main, ["classify", "--format", "jsonl", str(MEM), str(CROP)])
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert res.exit_code == 1 and "cannot write output" not in res.output, res.output
    assert rows[0]["status"] == "failed" and rows[0]["reason"].startswith("cannot read"), rows
    assert rows[1]["status"] == "classified", rows
    res = CliRunner().invoke(main, ["field", str(MEM), str(FIELD)])
    assert res.exit_code == 1 and "rejected: cannot read" in res.output and "1/2 fields counted" in res.output
    res = CliRunner().invoke(main, ["screen", "--patient", "P", "--db", str(tmp_path / "s.sqlite"),
                                    str(MEM), str(CROP)])
    assert res.exit_code == 1 and f"failed {MEM}: cannot read it" in res.output, res.output


def test_an_empty_path_reads_nothing(tmp_path, monkeypatch):
    """`screen --patient P "$DIR"` with DIR unset: Path("") is the current folder, and every image
    under it was recorded into the patient's session."""
    import shutil

    shutil.copyfile(CROP, tmp_path / "someone_else.webp")
    monkeypatch.chdir(tmp_path)
    for args in (["classify", ""], ["screen", "--patient", "P", "--db", str(tmp_path / "s.sqlite"), " "]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 1 and "an empty path" in res.output, res.output
        assert "classified 0" in res.output, res.output


def test_a_file_named_twice_is_reported_once(tmp_path):
    """`classify *.png .` listed a broken link (or a FIFO) once per naming: two failure lines, the
    failed count doubled; a readable file named twice was classified once."""
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    gone = tmp_path / "gone.png"
    res = CliRunner().invoke(main, ["classify", str(gone), str(tmp_path), str(tmp_path / "*.png")])
    assert res.exit_code == 1 and res.output.count("gone.png") == 1 and "failed 1 " in res.output, res.output
