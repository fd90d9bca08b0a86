# pyright: basic
"""`edgekit sync`: send a station's screening records to the programme's PostgreSQL.

Offline-first: the station's SQLite database is the record; a sync sends what the server does not
have yet whenever a link exists. Every row is keyed on ``(station id, local row id)``: the station's
UUID is generated once and kept in the SQLite file (table ``station``, the one thing sync adds
there), so ids never collide across stations and a re-sent row is recognised, not doubled.

Order and transactions make an interrupted sync (kill -9, a dropped link) safe to re-run: the
station registers itself, then all its sessions are upserted (one transaction), then records go in
ascending local id, ``batch`` at a time, each batch with its crop references in one transaction
(``ON CONFLICT DO NOTHING``); then the status of records whose field a sharper retake replaced after
they were sent; then reviews (a later verdict replaces an earlier one). The server
therefore always holds a prefix of the station's records, so the next sync starts after the
highest id it holds (``full=True`` offers every record again and lets the server sort them out).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.device.records import RecordStore, db_errors
from edgekit.programme.server import ProgrammeError, check_schema, connect, server_errors, where

BATCH = 5000
STATION_TABLE = "CREATE TABLE IF NOT EXISTS station (id TEXT PRIMARY KEY, created_at REAL NOT NULL)"

_SESSION_COLS = ("patient", "site", "operator", "model_sha256", "model_format", "bundle", "decision",
                 "created_at", "updated_at", "manifest_sha256", "signer_key_id", "trust", "guard")
_RECORD_COLS = ("session_id", "source_id", "source_kind", "content_hash", "status", "reason", "label",
                "probability", "p_positive", "decision", "probabilities", "domain_score", "model_sha256",
                "created_at")


@dataclass
class SyncResult:
    station: str
    sent: int = 0  # rows the server did not have (or had an older version of: sessions, reviews)
    already: int = 0  # rows the server already held as they are

    def to_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "already": self.already}


def station_id(store: RecordStore) -> str:
    """This database's station id: a UUID generated once and kept in its ``station`` table."""
    conn = store.conn
    with conn:
        conn.execute(STATION_TABLE)
        conn.execute("INSERT INTO station (id, created_at) SELECT ?, ? WHERE NOT EXISTS"
                     " (SELECT 1 FROM station)", (str(uuid.uuid4()), time.time()))
    return str(conn.execute("SELECT id FROM station ORDER BY created_at LIMIT 1").fetchone()[0])


def sync(db: str | Path, url: str, batch: int = BATCH, full: bool = False,
         progress: Callable[[str], None] | None = None) -> SyncResult:
    """Send every session, record, crop reference and review of ``db`` that the server at ``url``
    does not have yet; returns the counts. Re-running after any interruption sends each row once."""
    if batch < 1:
        raise ProgrammeError("--batch must be at least 1")
    store = RecordStore(db, create=False)
    try:
        with db_errors(store.path):  # the station's own file: a damaged table is one line too
            sid = station_id(store)
            conn = connect(url)
            try:
                with server_errors(url):
                    check_schema(conn, url)
                    return _send(store, conn, url, sid, batch, full, progress or (lambda _: None))
            finally:
                conn.close()
    finally:
        store.close()


def _register(conn: Any, url: str, sid: str) -> None:
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("INSERT INTO stations (station_id) VALUES (%s) ON CONFLICT DO NOTHING", (sid,))
        cur.execute("SELECT 1 FROM stations WHERE station_id = %s", (sid,))
        mine = cur.fetchone() is not None
    if not mine:
        raise ProgrammeError(f"station {sid} is registered to another role on {where(url)}: refused "
                             "(each station syncs with its own login role; nothing was sent)")


def _send(store: RecordStore, conn: Any, url: str, sid: str, batch: int, full: bool,
          progress: Callable[[str], None]) -> SyncResult:
    from datetime import datetime, timezone

    started = datetime.now(timezone.utc)
    out = SyncResult(sid)
    _register(conn, url, sid)
    lite = store.conn
    # one read snapshot of the station's file (WAL: screening may go on meanwhile): a record never
    # arrives before its session, and what is sent is one consistent state
    lite.execute("BEGIN")
    try:
        return _send_snapshot(lite, conn, sid, batch, full, progress, out, started)
    finally:
        lite.rollback()


def _send_snapshot(lite: Any, conn: Any, sid: str, batch: int, full: bool,
                   progress: Callable[[str], None], out: SyncResult, started: Any) -> SyncResult:

    # sessions: few, and they change (updated_at, site...): all of them, upserted in one transaction
    rows = lite.execute(f"SELECT id, {', '.join(_SESSION_COLS)} FROM sessions ORDER BY id").fetchall()
    cols = ", ".join(_SESSION_COLS)
    changed = " OR ".join(f"s.{c} IS DISTINCT FROM excluded.{c}" for c in _SESSION_COLS)
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO sessions AS s (station_id, local_id, {cols}) VALUES (%s, %s"
            f"{', %s' * len(_SESSION_COLS)}) ON CONFLICT (station_id, local_id) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in _SESSION_COLS) + f" WHERE {changed} RETURNING 1",
            [(sid, *tuple(r)) for r in rows], returning=True)
        n = _returned(cur)
    out.sent += n
    out.already += len(rows) - n
    progress(f"sessions: {n} sent, {len(rows) - n} already there")

    # records and crop references: ascending local id, a batch per transaction
    with conn.cursor() as cur:
        cur.execute("SELECT COALESCE(max(local_id), 0) FROM records WHERE station_id = %s", (sid,))
        high = 0 if full else int(cur.fetchone()[0])
    conn.commit()
    if high:  # the server holds every record up to `high` (a prefix), and their crop references
        held = lite.execute("SELECT COUNT(*) FROM records WHERE id <= ?", (high,)).fetchone()[0]
        crops = lite.execute("SELECT COUNT(*) FROM crop_images WHERE record_id <= ?", (high,)).fetchone()[0]
        out.already += int(held) + int(crops)
    after = high
    rcols = ", ".join(_RECORD_COLS)
    while True:
        chunk = lite.execute(
            f"SELECT r.id, {', '.join('r.' + c for c in _RECORD_COLS)}, c.png FROM records r"
            " LEFT JOIN crop_images c ON c.record_id = r.id WHERE r.id > ? ORDER BY r.id LIMIT ?",
            (after, batch)).fetchall()
        if not chunk:
            break
        records = [(sid, *tuple(r)[:-1]) for r in chunk]
        crop_rows = [(sid, r[0], hashlib.sha256(r[-1]).hexdigest(), len(r[-1])) for r in chunk
                     if r[-1] is not None]
        with conn.transaction(), conn.cursor() as cur:
            new = _copy_insert(cur, "records", ("station_id", "local_id", *_RECORD_COLS), records,
                               f"(station_id, local_id, {rcols})")
            new_crops = _copy_insert(cur, "crop_refs", ("station_id", "record_id", "png_sha256", "png_bytes"),
                                     crop_rows, "(station_id, record_id, png_sha256, png_bytes)")
        out.sent += new + new_crops
        out.already += len(records) - new + len(crop_rows) - new_crops
        after = int(chunk[-1][0])
        progress(f"records up to {after}: {new} sent, {len(records) - new} already there")

    # records whose field was replaced by a sharper retake after they were sent: their new status
    # (only 'replaced' ever changes a sent record, so only those are compared)
    changed_status = lite.execute("SELECT id, status, reason FROM records WHERE status = 'replaced'"
                                  " AND id <= ?", (after,)).fetchall()
    if changed_status:
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "UPDATE records SET status = %s, reason = %s WHERE station_id = %s AND local_id = %s"
                " AND (status, reason) IS DISTINCT FROM (%s, %s) RETURNING 1",
                [(r[1], r[2], sid, r[0], r[1], r[2]) for r in changed_status], returning=True)
            n = _returned(cur)
        out.sent += n
        progress(f"replaced fields: {n} records updated")

    # reviews: a later verdict replaces an earlier one
    reviews = lite.execute("SELECT record_id, verdict, reviewer, note, created_at FROM reviews"
                           " ORDER BY record_id").fetchall()
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO reviews AS v (station_id, record_id, verdict, reviewer, note, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (station_id, record_id) DO UPDATE SET"
            " verdict = excluded.verdict, reviewer = excluded.reviewer, note = excluded.note,"
            " created_at = excluded.created_at WHERE (v.verdict, v.reviewer, v.note, v.created_at)"
            " IS DISTINCT FROM (excluded.verdict, excluded.reviewer, excluded.note, excluded.created_at)"
            " RETURNING 1", [(sid, *tuple(r)) for r in reviews], returning=True)
        n = _returned(cur)
        out.sent += n
        out.already += len(reviews) - n
        cur.execute("INSERT INTO syncs (station_id, started_at, sent, already) VALUES (%s, %s, %s, %s)",
                    (sid, started, out.sent, out.already))
    progress(f"reviews: {n} sent, {len(reviews) - n} already there")
    return out


def _returned(cur: Any) -> int:
    """Rows returned over all the statements of an ``executemany(..., returning=True)``."""
    n = 0
    while True:
        n += len(cur.fetchall()) if cur.pgresult is not None and cur.description else 0
        if not cur.nextset():
            return n


def _copy_insert(cur: Any, table: str, columns: tuple[str, ...], rows: list[tuple], target: str) -> int:
    """COPY ``rows`` into a temporary table, then insert those the server does not have; returns how
    many were new."""
    if not rows:
        return 0
    tmp = f"incoming_{table}"
    cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {tmp} (LIKE {table} INCLUDING DEFAULTS)"
                " ON COMMIT DELETE ROWS")
    with cur.copy(f"COPY {tmp} ({', '.join(columns)}) FROM STDIN") as copy:
        for r in rows:
            copy.write_row(r)
    cur.execute(f"INSERT INTO {table} {target} SELECT {', '.join(columns)} FROM {tmp}"
                " ON CONFLICT DO NOTHING")
    return cur.rowcount

