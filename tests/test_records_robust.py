"""Screening database robustness (issue 13, cases 9 and 10): newer schemas untouched, extra columns
tolerated, reading commands never write, `sessions show` never guesses between id and patient."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from device_helpers import GOLDEN, cell_image, write_image

from edgekit.cli import main
from edgekit.device.records import RecordsError, RecordStore


def _screen(tmp_path: Path, db: Path, patient: str, seed: int = 0) -> None:
    folder = tmp_path / f"in-{patient}-{seed}"
    write_image(folder / "c.png", cell_image(seed, 48))
    res = CliRunner().invoke(main, ["screen", str(folder), "--patient", patient, "--db", str(db),
                                    "-m", str(GOLDEN)])
    assert res.exit_code == 0, res.output


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def test_newer_schema_is_refused_and_left_untouched(tmp_path):
    db = tmp_path / "s.sqlite"
    _screen(tmp_path, db, "P1")
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version=7")
    con.close()
    before = _digest(tmp_path)
    screen = ["screen", str(tmp_path / "in-P1-0"), "--patient", "P2", "--db", str(db), "-m", str(GOLDEN)]
    for args in (["sessions", "list", "--db", str(db)], screen):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2 and "newer edgekit (schema 7" in res.stderr, res.output
    assert _digest(tmp_path) == before
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == 7


def test_extra_columns_are_tolerated(tmp_path):
    db = tmp_path / "s.sqlite"
    _screen(tmp_path, db, "P1")
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE sessions ADD COLUMN note TEXT DEFAULT 'x'")
    con.execute("ALTER TABLE records ADD COLUMN reviewer TEXT")
    con.commit()
    con.close()
    runner = CliRunner()
    for args in (["sessions", "list"], ["sessions", "show", "P1"],
                 ["sessions", "show", "--id", "1", "--json"], ["sessions", "export"]):
        res = runner.invoke(main, [*args, "--db", str(db)])
        assert res.exit_code == 0 and "Traceback" not in res.output, (args, res.output)
    _screen(tmp_path, db, "P2", seed=1)  # and writing still works


def test_unknown_not_null_column_is_named(tmp_path):
    db = tmp_path / "s.sqlite"
    _screen(tmp_path, db, "P1")
    con = sqlite3.connect(db)  # rebuild sessions with an extra NOT NULL column and no default
    cols = ", ".join(r[1] for r in con.execute("PRAGMA table_info(sessions)"))
    sql = con.execute("SELECT sql FROM sqlite_master WHERE name = 'sessions'").fetchone()[0]
    sql = sql.replace("patient TEXT NOT NULL,", "patient TEXT NOT NULL, ward TEXT NOT NULL,")
    con.executescript(f"ALTER TABLE sessions RENAME TO old; {sql};"
                      f"INSERT INTO sessions ({cols}, ward) SELECT {cols}, 'w' FROM old; DROP TABLE old;")
    con.close()
    with pytest.raises(RecordsError, match=r"column sessions\.ward .*NOT NULL") as err:
        RecordStore(db)
    assert "corrupt" not in str(err.value)
    res = CliRunner().invoke(main, ["sessions", "list", "--db", str(db)])  # reading still works
    assert res.exit_code == 0 and "P1" in res.stdout


def test_reading_commands_write_nothing(tmp_path):
    db = tmp_path / "s.sqlite"
    _screen(tmp_path, db, "P1")
    before = _digest(tmp_path)
    for args in (["sessions", "list"], ["sessions", "show", "P1"], ["sessions", "export"]):
        assert CliRunner().invoke(main, [*args, "--db", str(db)]).exit_code == 0
    after = _digest(tmp_path)
    assert after["s.sqlite"] == before["s.sqlite"]  # no schema write
    # SQLite may add its WAL index for readers; the log itself stays empty
    assert set(after) - set(before) <= {"s.sqlite-shm", "s.sqlite-wal"}
    assert not (tmp_path / "s.sqlite-wal").exists() or (tmp_path / "s.sqlite-wal").stat().st_size == 0


def test_read_only_open_needs_no_writable_folder(tmp_path):
    """A read-only folder (or a full disk, where SQLite cannot create its WAL index) still reads."""
    db = tmp_path / "s.sqlite"
    _screen(tmp_path, db, "P1")
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    from edgekit.device import records

    real = sqlite3.connect

    def no_wal_index(database, *a, **k):  # what SQLite says when it cannot create -shm in the folder
        if "immutable" not in str(database):
            raise sqlite3.OperationalError("unable to open database file")
        return real(database, *a, **k)

    import unittest.mock

    with unittest.mock.patch.object(records.sqlite3, "connect", no_wal_index):
        store = RecordStore(db, read_only=True)
        assert [s["patient"] for s in store.sessions()] == ["P1"]
        store.close()


def test_sessions_show_is_unambiguous(tmp_path):
    db = tmp_path / "s.sqlite"
    _screen(tmp_path, db, "A")  # session 1, patient "A"
    _screen(tmp_path, db, "1", seed=1)  # session 2, patient "1"
    runner = CliRunner()
    res = runner.invoke(main, ["sessions", "show", "1", "--db", str(db)])
    assert res.exit_code == 2 and "use --id 1 or --patient 1" in res.stderr
    res = runner.invoke(main, ["sessions", "show", "--id", "1", "--db", str(db)])
    assert res.exit_code == 0 and "patient A:" in res.stdout
    res = runner.invoke(main, ["sessions", "show", "--patient", "1", "--db", str(db)])
    assert res.exit_code == 0 and "patient 1:" in res.stdout
    res = runner.invoke(main, ["sessions", "show", "2", "--db", str(db)])  # only an id: no ambiguity
    assert res.exit_code == 0 and "patient 1:" in res.stdout
    res = runner.invoke(main, ["sessions", "export", "--patient", "A", "--db", str(db)])
    assert res.exit_code == 0 and res.stdout.count("\n") == 2
    res = runner.invoke(main, ["sessions", "show", "--id", "9", "--db", str(db)])
    assert res.exit_code == 2 and "no session id '9'" in res.stderr


def test_db_path_that_is_a_fifo_is_refused(tmp_path):
    import os

    fifo = tmp_path / "db"
    os.mkfifo(fifo)
    with pytest.raises(RecordsError, match="not a regular file"):
        RecordStore(fifo)


@pytest.mark.parametrize(("field", "value", "why"), [
    ("patient", "=cmd\nX", "control character"),
    ("patient", "A" * 129, "at most 128"),
    ("site", "lab\u202e3", "control character"),  # right-to-left override: displays reversed
    ("operator", "x\x00y", "control character"),
])
def test_names_are_one_printable_line(tmp_path, field, value, why):
    names = {"patient": "P1", field: value}
    with RecordStore(tmp_path / "n.sqlite") as store, pytest.raises(RecordsError, match=why):
        store.open_session(names["patient"], "0" * 64, site=names.get("site"), operator=names.get("operator"))


def test_unicode_names_are_kept(tmp_path):
    with RecordStore(tmp_path / "u.sqlite") as store:
        assert store.open_session("Ünï 12/α", "0" * 64, site="Lab-3").patient == "Ünï 12/α"
