"""A patient result that cannot change after the fact (issues 27.1 and 30.3): a session stores
everything that decided it (Decision, domain guard, manifest sha256, signer), read-back recomputes
nothing from the bundle's path, sessions are keyed on the manifest, and older databases migrate."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from device_helpers import CELLS, GOLDEN

from edgekit.cli import main
from edgekit.device.records import SCHEMA_VERSION, RecordStore
from edgekit.device.runtime import default_bundle_dir
from edgekit.device.sessions import GUARD_NOT_STORED

FIELD = Path(__file__).resolve().parent / "fixtures" / "fields" / "BloodImage_00014.jpg"


def _run(*args: str) -> str:
    res = CliRunner().invoke(main, list(args))
    assert res.exit_code == 0, res.output
    return res.stdout


def _show(db: Path, patient: str) -> dict:
    return json.loads(_run("sessions", "show", patient, "--db", str(db), "--json"))


def test_moving_or_deleting_the_bundle_changes_no_stored_or_shown_verdict(tmp_path):
    """The issue's case: an off-site field screened with a copy of the default is REFER (the guard);
    it stays REFER in `sessions show/list` and on the phone page after the copy is edited, moved and
    deleted."""
    copy = tmp_path / "COPY"
    shutil.copytree(default_bundle_dir(), copy)
    db = tmp_path / "s.sqlite"
    screened = json.loads(_run("screen", "--model", str(copy), "--patient", "P3", "--fields", str(FIELD),
                               "--db", str(db), "--json", "--no-progress").strip().splitlines()[-1])
    assert screened["decision"] == "refer" and screened["domain"]["ok"] is False
    first = _show(db, "P3")
    assert first["summary"] == screened
    stored = first["session"]
    assert stored["guard"]["domain"]["session_threshold"] > 0 and len(stored["manifest_sha256"]) == 64
    assert stored["signer_key_id"] and stored["trust"].startswith("signed by")

    # an edited domain section (issue 30: it flipped REFER to POSITIVE at read-back) ...
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["domain"]["session_threshold"] = 1e9
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert _show(db, "P3") == first
    # ... a moved bundle ...
    copy.rename(tmp_path / "COPY_moved")
    assert _show(db, "P3") == first
    text = _run("sessions", "show", "P3", "--db", str(db))
    assert "REFER" in text and "records no statistics" not in text and "(stored with the session)" in text
    # ... and a deleted one
    shutil.rmtree(tmp_path / "COPY_moved")
    assert _show(db, "P3") == first
    listed = _run("sessions", "list", "--db", str(db))
    assert "refer" in listed and "positive" not in listed

    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from edgekit.device.runtime import load_classifier
    from edgekit.device.serve.station import Station

    station = Station(load_classifier(GOLDEN), db, tmp_path / "overlays")
    try:
        page = station.submit(station.session, first["session"]["id"], False).result()
    finally:
        station.close()
    assert json.loads(json.dumps(page["summary"])) == screened


def _edited_copy(tmp_path: Path, name: str, **rule) -> Path:
    bundle = tmp_path / name
    shutil.copytree(GOLDEN, bundle)
    (bundle / "signature.json").unlink(missing_ok=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["patient_rule"].update(rule)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def test_another_manifest_over_the_same_model_opens_its_own_session(tmp_path):
    """Issue 30.3: the same model file under another manifest (another patient rule) is another
    session; the first keeps its records and its decision rule."""
    a = _edited_copy(tmp_path, "a", positive_fraction=0.05)
    b = _edited_copy(tmp_path, "b", positive_fraction=0.9)
    db = tmp_path / "s.sqlite"
    first = json.loads(_run("screen", str(CELLS), "--patient", "P", "-m", str(a), "--db", str(db), "--json"))
    assert first["decision"] == "positive"
    second = json.loads(_run("screen", str(CELLS), "--patient", "P", "-m", str(b), "--db", str(db), "--json"))
    assert second["crops"] == 4 and second["decision"] != "positive"  # classified again, in its own session
    with RecordStore(db, read_only=True) as store:
        sessions = store.sessions()
        assert len(sessions) == 2 and len({s["model_sha256"] for s in sessions}) == 1
        assert len({s["manifest_sha256"] for s in sessions}) == 2
        by_rule = {store.find_session(str(s["id"]), by="id").decided_with.rule.positive_fraction: s
                   for s in sessions}
    assert set(by_rule) == {0.05, 0.9} and by_rule[0.05]["records"] == by_rule[0.9]["records"] == 4
    assert _show(db, str(by_rule[0.05]["id"]))["summary"] == first  # by session id
    again = json.loads(_run("screen", str(CELLS), "--patient", "P", "-m", str(a), "--db", str(db), "--json"))
    assert again == first  # the same manifest resumes its own session


def test_serve_adds_cells_only_to_a_session_of_its_own_manifest(tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from edgekit.device.runtime import load_classifier
    from edgekit.device.serve.station import ServeError, Station

    db = tmp_path / "s.sqlite"
    other = _edited_copy(tmp_path, "a", positive_fraction=0.9)
    _run("screen", str(CELLS), "--patient", "P", "-m", str(other), "--db", str(db))
    station = Station(load_classifier(GOLDEN), db, tmp_path / "overlays")
    try:
        png = (CELLS / "parasitized_a.webp").read_bytes()
        with pytest.raises(ServeError, match="another model or manifest") as err:
            station.submit(station.add_image, 1, "crop", "x.webp", png).result()
        assert err.value.status == 409
        own = station.submit(station.open_session, "P", None, None).result()["session"]["id"]
        assert own != 1
        station.submit(station.add_image, own, "crop", "x.webp", png).result()
    finally:
        station.close()
    with RecordStore(db, read_only=True) as store:
        assert {s["id"]: s["records"] for s in store.sessions()} == {1: 4, own: 1}


_V3_SESSIONS = """CREATE TABLE sessions (id INTEGER PRIMARY KEY, patient TEXT NOT NULL, site TEXT,
    operator TEXT, model_sha256 TEXT NOT NULL, model_format TEXT, bundle TEXT, decision TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, ward TEXT DEFAULT 'w',
    UNIQUE (patient, model_sha256))"""


def _schema3_database(tmp_path: Path) -> Path:
    """A database as edgekit wrote it at schema 3 (plus a column another program added), with one
    session screened with the golden bundle, whose bundle then went away."""
    db = tmp_path / "new.sqlite"
    _run("screen", str(CELLS), "--patient", "OLD", "-m", str(GOLDEN), "--db", str(db))
    old = tmp_path / "old.sqlite"
    src, dst = sqlite3.connect(db), sqlite3.connect(old)
    for (sql,) in src.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name != 'sessions'"):
        dst.execute(sql)
    dst.execute(_V3_SESSIONS)
    cols = "id, patient, site, operator, model_sha256, model_format, bundle, decision, created_at, updated_at"
    dst.executemany(f"INSERT INTO sessions ({cols}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    src.execute(f"SELECT {cols} FROM sessions").fetchall())
    for table in ("records", "crop_images", "reviews"):
        rows = src.execute(f"SELECT * FROM {table}").fetchall()
        if rows:
            dst.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
    dst.execute("PRAGMA user_version=3")
    dst.commit()
    src.close()
    dst.close()
    return old


def test_a_schema_3_database_reads_as_recorded_and_migrates_keeping_every_row(tmp_path):
    old = _schema3_database(tmp_path)
    shown = _show(old, "OLD")  # read-only: nothing migrated, nothing re-read from a bundle
    assert shown["summary"]["note"] == GUARD_NOT_STORED and shown["summary"]["domain"] is None
    assert shown["summary"]["decision"] == "positive" and shown["session"]["manifest_sha256"] is None
    assert GUARD_NOT_STORED in _run("sessions", "show", "OLD", "--db", str(old))
    assert sqlite3.connect(old).execute("PRAGMA user_version").fetchone()[0] == 3

    with RecordStore(old) as store:  # a writer migrates, in one transaction
        migrated = store.find_session("OLD")
        assert migrated.id == 1 and migrated.manifest_sha256 is None and not migrated.guard_stored
        assert len(store.records(1)) == 4
    con = sqlite3.connect(old)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert con.execute("SELECT ward FROM sessions").fetchone()[0] == "w"  # another program's column kept
    sql = con.execute("SELECT sql FROM sqlite_master WHERE name = 'sessions'").fetchone()[0]
    assert "UNIQUE (patient, model_sha256, manifest_sha256)" in sql
    con.close()
    assert _show(old, "OLD")["summary"] == shown["summary"]
    # a new run with the same model file opens a session keyed on its manifest, with its guard
    _run("screen", str(CELLS), "--patient", "OLD", "-m", str(GOLDEN), "--db", str(old))
    with RecordStore(old, read_only=True) as store:
        assert [s["records"] for s in store.sessions()] == [4, 4]
        assert store.find_session("OLD").guard_stored


def test_a_session_stored_without_its_guard_says_so_on_the_page(tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from edgekit.device.runtime import load_classifier
    from edgekit.device.serve.station import Station

    old = _schema3_database(tmp_path)
    station = Station(load_classifier(GOLDEN), old, tmp_path / "overlays")
    try:
        view = station.submit(station.session, 1, False).result()
    finally:
        station.close()
    assert view["summary"]["note"] == GUARD_NOT_STORED and view["summary"]["decision"] == "positive"


def test_cli_and_serve_share_one_summary_use_case():
    """`sessions show` and the phone page call the same non-CLI function; serve imports nothing of the
    command module (no private cross-module imports)."""
    root = Path(__file__).resolve().parents[1] / "device"
    for name in ("serve/station.py", "serve/app.py", "sessions.py"):
        assert "device.commands" not in (root / name).read_text(), name
    assert "read_session(" in (root / "commands.py").read_text()
    assert "read_session(" in (root / "serve" / "station.py").read_text()
