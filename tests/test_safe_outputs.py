"""Safe outputs (issue 13, cases 7, 8, 9): CSV that spreadsheets cannot misread, `-o` that never
replaces what it should not, and output errors as one line in every classify format."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from device_helpers import CELLS, GOLDEN, cell_image, write_image

from edgekit.cli import main
from edgekit.outputs import SafeCsvWriter, csv_text, safe_cell

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value, expected", [
    ("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"), ("+1", "'+1"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"),
    ("\tx", "'\tx"), ("\rx", "'\rx"), ("P-12", "P-12"), (0.5, 0.5), (None, None), (-1.5, -1.5),
])
def test_formula_cells_are_neutralized(value, expected):
    assert safe_cell(value) == expected


def test_cr_and_lf_are_quoted_so_rows_never_split():
    text = csv_text([{"a": "one\rtwo", "b": "three\nfour", "c": 1}, {"a": "x", "b": None, "c": 2.5}],
                    ["a", "b", "c"])
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows == [["a", "b", "c"], ["one\rtwo", "three\nfour", "1"], ["x", "", "2.5"]]
    assert text.count('"') == 4 and text.endswith("2.5\n")


def test_writer_streams_rows():
    buf = io.StringIO()
    w = SafeCsvWriter(buf, ["path", "p"])
    w.writeheader()
    w.writerow({"path": "=cmd|' /C calc'!A0", "p": 0.25, "ignored": 1})
    assert buf.getvalue() == "path,p\n'=cmd|' /C calc'!A0,0.25\n"


def _screened_db(tmp_path: Path, patient: str = "=1+1", name: str = "cell\r1.png") -> Path:
    db = tmp_path / "s.sqlite"
    write_image(tmp_path / "in" / name, cell_image(0, 48))
    res = CliRunner().invoke(main, ["screen", str(tmp_path / "in"), "--patient", patient, "--db", str(db),
                                    "-m", str(GOLDEN)])
    assert res.exit_code == 0, res.output
    return db


def test_sessions_export_csv_is_safe(tmp_path):
    db = _screened_db(tmp_path)
    res = CliRunner().invoke(main, ["sessions", "export", "--db", str(db)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout, newline="")))
    assert len(rows) == 1
    assert rows[0]["patient"] == "'=1+1"
    assert rows[0]["source_id"].endswith("cell\r1.png")


@pytest.mark.parametrize("target", ["existing", "folder", "fifo", "symlink", "device", "missing_dir"])
def test_export_output_target_is_refused(tmp_path, target):
    db = _screened_db(tmp_path)
    out = tmp_path / "out.csv"
    if target == "existing":
        out.write_text("keep me")
    elif target == "folder":
        out.mkdir()
    elif target == "fifo":
        os.mkfifo(out)
    elif target == "symlink":
        (tmp_path / "victim.txt").write_text("keep me")
        out.symlink_to(tmp_path / "victim.txt")
    elif target == "device":
        out = Path("/dev/null")
    else:
        out = tmp_path / "no" / "such" / "out.csv"
    res = CliRunner().invoke(main, ["sessions", "export", "--db", str(db), "-o", str(out)])
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.output
    if target == "existing":
        assert out.read_text() == "keep me"
        res = CliRunner().invoke(main, ["sessions", "export", "--db", str(db), "-o", str(out), "--force"])
        assert res.exit_code == 0 and out.read_text().startswith("session_id,")
    if target == "symlink":
        assert (tmp_path / "victim.txt").read_text() == "keep me" and out.is_symlink()
    if target == "fifo":
        assert out.exists() and not out.is_file()


def _cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "edgekit", *args], env=env, timeout=120, **kw)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("fmt", ["table", "jsonl", "csv"])
def test_full_disk_on_stdout_is_one_line(fmt):
    with open("/dev/full", "w") as full:
        res = _cli(["classify", str(CELLS), "-m", str(GOLDEN), "--format", fmt], stdout=full,
                   stderr=subprocess.PIPE, text=True)
    assert res.returncode == 2
    # GOLDEN records no training image sizes: classify says so in one "note:" line before it starts
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("note: the bundle does not")]
    assert lines == ["error: cannot write output: No space left on device"], res.stderr


@pytest.mark.parametrize("fmt", ["table", "jsonl", "csv"])
def test_closed_pipe_is_one_line(fmt):
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "classify", str(CELLS), str(CELLS / "*"), "-m",
                             str(GOLDEN), "--format", fmt], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    proc.stdout.close()  # like `| head -0`: the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "Exception ignored" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert errors == ["error: output closed early (broken pipe)"]
