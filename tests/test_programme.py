"""`edgekit sync` and `edgekit programme` against a real PostgreSQL started here (initdb + pg_ctl on a
Unix socket; skipped with the reason where PostgreSQL cannot be installed or started)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from programme_helpers import make_station

from edgekit.cli import main
from edgekit.programme.pgtemp import NoPostgres, PgServer

psycopg = pytest.importorskip("psycopg", reason="the sync extra (psycopg) is not installed")


@pytest.fixture(scope="module")
def pg():
    try:
        server = PgServer().start()
    except NoPostgres as exc:
        pytest.skip(f"no PostgreSQL here: {exc}")
    yield server
    server.stop()


class Programme:
    """A fresh database on the test server, migrated, with station and reader login roles."""

    def __init__(self, pg: PgServer) -> None:
        self.pg = pg
        self.db = pg.create_db()
        tag = uuid.uuid4().hex[:6]
        self.roles = {"a": f"st_a_{tag}", "b": f"st_b_{tag}", "reader": f"rd_{tag}", "none": f"no_{tag}"}
        out = run("programme", "migrate", "--to", pg.url(self.db))
        assert out.exit_code == 0, out.output
        pg.create_role(self.roles["a"], "edgekit_station")
        pg.create_role(self.roles["b"], "edgekit_station")
        pg.create_role(self.roles["reader"], "edgekit_reader")
        with pg.admin() as conn:
            conn.execute(f"CREATE ROLE {self.roles['none']} LOGIN")

    def url(self, who: str | None = None) -> str:
        return self.pg.url(self.db, None if who is None else self.roles[who])

    def query(self, sql: str, who: str | None = None, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.url(who), autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()


@pytest.fixture
def prog(pg) -> Programme:
    return Programme(pg)


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def sync_json(db: Path, url: str, *extra: str) -> dict:
    out = run("sync", str(db), "--to", url, "--json", *extra)
    assert out.exit_code == 0, out.output
    return json.loads(out.output.strip().splitlines()[-1])


def local_counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("sessions", "records", "crop_images", "reviews")}
    finally:
        conn.close()


def server_counts(prog: Programme, station: str) -> dict[str, int]:
    return {t: prog.query(f"SELECT COUNT(*) FROM {t} WHERE station_id = %s", params=(station,))[0][0]
            for t in ("sessions", "records", "crop_refs", "reviews")}


def station_of(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT id FROM station").fetchone()[0]
    finally:
        conn.close()


def one_error_line(out) -> str:
    text = out.output.strip()
    assert out.exit_code != 0 and "Traceback" not in text and len(text.splitlines()) == 1, text
    return text


def test_two_stations_same_patient_id(prog, tmp_path):
    a = make_station(tmp_path / "a.sqlite", ["P1", "P2"], "Kisumu", positive_every=4, reviews=3, crops=2)
    b = make_station(tmp_path / "b.sqlite", ["P1", "P3"], "Siaya", far=True, reviews=2)
    total_a = sum(local_counts(a).values())
    assert sync_json(a, prog.url("a")) == {"sent": total_a, "already": 0}
    assert sync_json(b, prog.url("b"))["already"] == 0
    assert sync_json(a, prog.url("a")) == {"sent": 0, "already": total_a}  # a re-run sends nothing

    sa, sb = station_of(a), station_of(b)
    assert sa != sb
    for db, st in ((a, sa), (b, sb)):
        c = local_counts(db)
        assert server_counts(prog, st) == {"sessions": c["sessions"], "records": c["records"],
                                           "crop_refs": c["crop_images"], "reviews": c["reviews"]}
    # the same patient id at two stations: two sessions, each kept with its own station and sender
    rows = prog.query("SELECT station_id::text, sent_by, site FROM sessions WHERE patient = 'P1'"
                      " ORDER BY site")
    assert rows == [(sa, prog.roles["a"], "Kisumu"), (sb, prog.roles["b"], "Siaya")]
    assert prog.query("SELECT count(*) FROM syncs")[0][0] == 3

    # each station reads only its own rows; the reader reads all
    assert prog.query("SELECT DISTINCT station_id::text FROM records", "a") == [(sa,)]
    assert prog.query("SELECT count(*) FROM sessions", "b")[0][0] == 2
    assert prog.query("SELECT count(*) FROM sessions", "reader")[0][0] == 4

    out = run("programme", "report", "--from", prog.url("reader"), "--format", "json")
    assert out.exit_code == 0, out.output
    rows = {r["site"]: r for r in json.loads(out.output)["rows"]}
    k, s = rows["Kisumu"], rows["Siaya"]
    assert (k["patients"], k["positive"], k["negative"], k["refer"]) == (2, 2, 0, 0)
    assert k["fields"] == 4 and k["fields_not_validated"] == 0 and k["not_validated_share"] == 0
    assert (s["patients"], s["refer"], s["fields_not_validated"], s["not_validated_share"]) == (2, 2, 4, 1.0)
    assert k["reviewed_cells"] == 6 and k["agreement"] == pytest.approx(4 / 6)  # 2 of 6 were called positive
    assert s["reviewed_cells"] == 4 and s["agreement"] == 1.0
    lo, hi = k["positive_ci95"]
    assert 0 < lo < 1 and hi == 1.0
    csv_out = run("programme", "report", "--from", prog.url("reader"), "--format", "csv")
    assert csv_out.exit_code == 0 and csv_out.output.splitlines()[0].startswith("site,week,")
    assert len(csv_out.output.splitlines()) == 3
    html = tmp_path / "r.html"
    out = run("programme", "report", "--from", prog.url("reader"), "--format", "html", "-o", str(html),
              "--since", "2000-01-01")
    assert out.exit_code == 0, out.output
    page = html.read_text()
    assert "<svg" in page and "Siaya" in page and "4 of 4 fields NOT VALIDATED" in page
    out = run("programme", "report", "--from", prog.url("reader"), "--since", "2999-01-01")
    assert out.exit_code == 0 and json.loads(out.output) == {"rows": []}


def test_new_rows_after_a_sync_are_sent_once(prog, tmp_path):
    from edgekit.device.records import RecordStore

    a = make_station(tmp_path / "a.sqlite", ["P1"], "Kisumu", reviews=1)
    first = sync_json(a, prog.url("a"))
    make_station(a, ["P9"], "Kisumu", cells=5, fields=1, reviews=1)  # a new session: 1 + 5 + 1 review
    with RecordStore(a) as store:  # a verdict changed on a synced cell
        s = store.find_session("P1")
        store.set_review(s.id, int(store.records(s.id)[0]["id"]), "parasitized", reviewer="X")
    second = sync_json(a, prog.url("a"))
    # P9's session, its 5 records and 1 review, and P1's changed verdict; the rest was there
    assert second == {"sent": 1 + 5 + 1 + 1, "already": first["sent"] - 1}
    assert prog.query("SELECT v.verdict FROM reviews v JOIN records r ON r.station_id = v.station_id"
                      " AND r.local_id = v.record_id JOIN sessions s ON s.station_id = r.station_id"
                      " AND s.local_id = r.session_id WHERE s.patient = 'P1'") == [("parasitized",)]


def interrupt_at_random(url: str, db: Path, rng: random.Random, drop: Programme | None = None,
                        batch: int = 100) -> str:
    """Run `edgekit sync` and, after a random number of its progress lines (0: at once), kill -9 it
    or (``drop``) have the server end its connection. Returns killed, dropped or done."""
    cmd = [sys.executable, "-m", "edgekit", "sync", str(db), "--to", url, "--batch", str(batch)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    n_lines = 2 + -(-local_counts(db)["records"] // batch)
    k = rng.randint(0, n_lines)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    if k == 0:
        time.sleep(rng.uniform(0.0, 1.0))
    for _ in range(k):
        if not proc.stderr.readline():
            break
    if proc.poll() is not None:
        proc.communicate()
        return "done"
    if drop is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        return "killed"
    drop.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
               params=(drop.roles["a"],))
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        return "done"
    text = err.decode().strip().splitlines()[-1]
    assert "Traceback" not in err.decode() and text.startswith("error: lost the connection"), err.decode()
    return "dropped"


def check_exactly_once(prog: Programme, db: Path) -> dict:
    """Re-run the sync to completion; then the server holds every local row once, as it is."""
    final = sync_json(db, prog.url("a"))
    c, st = local_counts(db), station_of(db)
    assert server_counts(prog, st) == {"sessions": c["sessions"], "records": c["records"],
                                       "crop_refs": c["crop_images"], "reviews": c["reviews"]}
    assert final["sent"] + final["already"] == sum(c.values())
    conn = sqlite3.connect(db)
    local = sorted(conn.execute("SELECT id, content_hash FROM records"))
    conn.close()
    assert sorted(prog.query("SELECT local_id, content_hash FROM records")) == local
    assert sync_json(db, prog.url("a"), "--full") == {"sent": 0, "already": sum(c.values())}
    return final


def test_interrupted_syncs_store_each_row_once(pg, tmp_path):
    db = make_station(tmp_path / "a.sqlite", [f"P{i}" for i in range(20)], "Kisumu", cells=60, fields=2,
                      positive_every=7, reviews=2, crops=3)
    rng = random.Random(25)
    trials = int(os.environ.get("EDGEKIT_KILL_TRIALS", "6"))
    outcomes = []
    for i in range(trials):  # each trial: a fresh server, one interruption, then a re-run
        prog = Programme(pg)
        outcomes.append(interrupt_at_random(prog.url("a"), db, rng, drop=prog if i % 3 == 2 else None))
        check_exactly_once(prog, db)
    # one server, interrupted again and again before it completes
    prog = Programme(pg)
    for _ in range(4):
        outcomes.append(interrupt_at_random(prog.url("a"), db, rng))
    check_exactly_once(prog, db)
    assert outcomes.count("killed") >= 3 and "dropped" in outcomes, outcomes
    counts = ", ".join(f"{o} {outcomes.count(o)}" for o in sorted(set(outcomes)))
    print(f"interrupt trials: {len(outcomes)}: {counts}")


def test_station_cannot_write_or_read_another_stations_rows(prog, tmp_path):
    a = make_station(tmp_path / "a.sqlite", ["P1"], "Kisumu")
    sync_json(a, prog.url("a"))
    sa = station_of(a)
    with psycopg.connect(prog.url("b")) as conn:  # station b writes a row under a's station id
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO sessions (station_id, local_id, patient, model_sha256, created_at,"
                         " updated_at) VALUES (%s, 999, 'X', 'm', 0, 0)", (sa,))
    with psycopg.connect(prog.url("b"), autocommit=True) as conn:
        assert conn.execute("UPDATE sessions SET site = 'forged'").rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM records")
        assert conn.execute("SELECT count(*) FROM records").fetchone()[0] == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # nor claim a's station id
            conn.execute("UPDATE stations SET role = current_user")
    # a copy of a's database synced by b's role: refused before anything is sent
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(a.read_bytes())
    out = run("sync", str(copy), "--to", prog.url("b"))
    assert "registered to another role" in one_error_line(out)
    assert prog.query("SELECT DISTINCT site, sent_by FROM sessions") == [("Kisumu", prog.roles["a"])]
    # a role that is neither a station nor a reader is refused with one line
    out = run("sync", str(a), "--to", prog.url("none"))
    assert "refused" in one_error_line(out)
    out = run("programme", "report", "--from", prog.url("none"))
    assert "refused" in one_error_line(out)
    # a station role cannot read the programme's report
    out = run("programme", "report", "--from", prog.url("b"))
    assert out.exit_code == 0 and json.loads(out.output) == {"rows": []}


def test_newer_server_schema_refused(prog, tmp_path):
    from edgekit.programme.server import schema_version

    a = make_station(tmp_path / "a.sqlite", ["P1"], "Kisumu")
    prog.query("INSERT INTO schema_version (version, name) VALUES (99, '099_future.sql') RETURNING 1")
    for args in (("sync", str(a), "--to", prog.url("a")),
                 ("programme", "report", "--from", prog.url("reader")),
                 ("programme", "migrate", "--to", prog.url())):
        line = one_error_line(run(*args))
        assert f"schema 99, newer than this edgekit knows ({schema_version()})" in line, line
    assert prog.query("SELECT count(*) FROM sessions")[0][0] == 0
    assert prog.query("SELECT max(version) FROM schema_version")[0][0] == 99


def test_server_without_schema_and_bad_urls(pg, tmp_path):
    a = make_station(tmp_path / "a.sqlite", ["P1"], "Kisumu")
    empty = pg.create_db()
    assert "edgekit programme migrate" in one_error_line(run("sync", str(a), "--to", pg.url(empty)))
    assert "postgresql:// URL" in one_error_line(run("sync", str(a), "--to", "http://example.org/x"))
    line = one_error_line(run("sync", str(a), "--to", "postgresql://u:secret@/db?host=/nonexistent&port=1"))
    assert "cannot connect" in line and "secret" not in line
    assert "bad PostgreSQL URL" in one_error_line(run("sync", str(a), "--to", "postgresql://x/db?bogus=1"))
    assert "no screening database" in one_error_line(run("sync", str(tmp_path / "no.sqlite"), "--to",
                                                         pg.url(empty)))
    again = run("programme", "migrate", "--to", pg.url(empty))
    assert again.exit_code == 0 and "001_programme_records.sql" in again.output
    again = run("programme", "migrate", "--to", pg.url(empty))
    assert again.exit_code == 0 and "nothing to apply" in again.output


def test_a_field_replaced_after_a_sync_is_replaced_on_the_server(prog, tmp_path):
    """A sharper retake replaces a counted field (its cells become 'replaced' on the station): the next
    sync carries the new status, once, so the programme never counts the old field's cells."""
    import sqlite3

    a = make_station(tmp_path / "a.sqlite", ["P1"], "Kisumu")
    sync_json(a, prog.url("a"))
    conn = sqlite3.connect(a)
    with conn:
        rid = conn.execute("SELECT min(id) FROM records").fetchone()[0]
        conn.execute("UPDATE records SET status = 'replaced', reason = 'replaced by a sharper retake'"
                     " WHERE id = ?", (rid,))
    conn.close()
    again = sync_json(a, prog.url("a"))
    assert again["sent"] == 1
    assert prog.query("SELECT status FROM records WHERE local_id = %s", params=(rid,)) == [("replaced",)]
    assert sync_json(a, prog.url("a"))["sent"] == 0


def test_a_table_locked_on_the_server_is_one_line_not_a_hang(prog, tmp_path, monkeypatch):
    """Hostile inputs, session 14, second round. Before: while another transaction held a lock on
    `records` (an admin's LOCK TABLE, a long migration) `edgekit sync` waited for ever (still waiting
    after 40 s). Now it waits LOCK_WAIT_S, says so in one line and exits 2; the re-run sends each row
    once. Here the locker lets go after 8 s, so without the lock wait the sync succeeds late."""
    import threading

    from edgekit.programme import server

    monkeypatch.setattr(server, "LOCK_WAIT_S", 1, raising=False)  # raising: also runs without the fix
    a = make_station(tmp_path / "a.sqlite", ["P1"], "Kisumu")
    locker = psycopg.connect(prog.url())
    locker.execute("LOCK TABLE records IN ACCESS EXCLUSIVE MODE")
    release = threading.Timer(8, locker.rollback)
    release.start()
    try:
        out = run("sync", str(a), "--to", prog.url("a"))
    finally:
        release.join()
        locker.close()
    line = out.output.strip().splitlines()[-1]  # after the sessions' progress line (sent before records)
    assert out.exit_code == 2 and "Traceback" not in out.output, out.output
    assert "is busy: a table stayed locked by another transaction for 1 s" in line, line
    total = sum(local_counts(a).values())
    rerun = sync_json(a, prog.url("a"))
    assert rerun["sent"] + rerun["already"] == total and rerun["sent"] > 0, rerun
    assert sync_json(a, prog.url("a")) == {"sent": 0, "already": total}
    assert server_counts(prog, station_of(a))["records"] == local_counts(a)["records"]


def test_sync_reads_the_database_screening_writes_by_default(prog, tmp_path, monkeypatch):
    """`edgekit sync --to URL` without DB sends the station's own database ($EDGEKIT_DB, as `screen`
    and `serve` record into it), not an error asking for a path."""
    a = make_station(tmp_path / "a.sqlite", ["P1"], "A", cells=5, reviews=1)
    monkeypatch.setenv("EDGEKIT_DB", str(a))
    out = run("sync", "--to", prog.url("a"), "--format", "json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.output.strip().splitlines()[-1])["sent"] == sum(local_counts(a).values())
