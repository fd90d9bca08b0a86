"""Screening records in a local SQLite database (WAL, rows committed a batch at a time).

A session is one patient screened with one model (unique on patient + model sha256), so a rerun
after a crash resumes it; a record is unique on (session, content hash), so no image is recorded
twice. ``synchronous=FULL`` makes each committed batch survive a power loss, not only a crash;
a crash loses at most the batch in flight (its results were not reported yet).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import RecordsError
from edgekit.manifest import Decision

SCHEMA_VERSION = 2  # 2: sessions.decision (the rule and cutoff a session is decided with)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    patient TEXT NOT NULL,
    site TEXT,
    operator TEXT,
    model_sha256 TEXT NOT NULL,
    model_format TEXT,
    bundle TEXT,
    decision TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (patient, model_sha256)
);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    source_id TEXT NOT NULL,
    source_kind TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    label TEXT,
    probability REAL,
    p_positive REAL,
    decision TEXT,
    probabilities TEXT,
    domain_score REAL,
    model_sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (session_id, content_hash)
);
"""


# columns added after a database may have been created: (table, name, SQL type)
_ADDED_COLUMNS = (
    ("sessions", "decision", "TEXT"),  # the Decision the session was screened with
    ("records", "domain_score", "REAL"),  # the domain guard's per-crop distance (edgekit.device.domain)
)


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring a database made by an older edgekit up to date (new columns are nullable)."""
    for table, name, sql_type in _ADDED_COLUMNS:
        if name not in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")


def default_db_path() -> Path:
    """``$EDGEKIT_DB``, else ``~/.local/share/edgekit/screening.sqlite``."""
    env = os.environ.get("EDGEKIT_DB")
    return Path(env) if env else Path.home() / ".local" / "share" / "edgekit" / "screening.sqlite"


@contextlib.contextmanager
def _db_errors(path: Path) -> Iterator[None]:
    """Turn sqlite3 errors into one clear sentence."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        msg = str(exc)
        if "locked" in msg or "busy" in msg:
            raise RecordsError(f"database {path} is locked by another process; wait or close it") from exc
        if "readonly" in msg or "read-only" in msg:
            raise RecordsError(f"database {path} is read-only; use --db to choose a writable file") from exc
        if "unable to open" in msg:
            raise RecordsError(f"cannot open database {path}: is its folder writable?") from exc
        if "disk" in msg and ("full" in msg or "I/O" in msg):
            raise RecordsError(f"cannot write database {path}: {msg}") from exc
        raise RecordsError(f"database {path}: {msg}") from exc
    except sqlite3.DatabaseError as exc:
        raise RecordsError(
            f"database {path} is corrupt or not an edgekit database ({exc}); move it away to start a new one"
        ) from exc


@dataclass
class Session:
    id: int
    patient: str
    site: str | None
    operator: str | None
    model_sha256: str
    model_format: str | None
    bundle: str | None
    created_at: float
    updated_at: float
    decision: str | None = None  # JSON of the manifest Decision the session is decided with

    @property
    def decided_with(self) -> Decision | None:
        """The stored Decision; None for sessions recorded before it was stored."""
        return Decision.from_dict(json.loads(self.decision)) if self.decision else None


class RecordStore:
    """The screening database. Every write is one committed transaction."""

    def __init__(self, path: str | os.PathLike, timeout: float = 5.0, read_only: bool = False) -> None:
        self.path = Path(path).expanduser()
        if read_only and not self.path.is_file():
            raise RecordsError(f"no screening database at {self.path}")
        with _db_errors(self.path):
            if read_only:
                uri = self.path.resolve().as_uri() + "?mode=ro"
                self.conn = sqlite3.connect(uri, uri=True, timeout=timeout)
            else:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise RecordsError(f"cannot create the folder of database {self.path}: {exc}") from exc
                self.conn = sqlite3.connect(self.path, timeout=timeout)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # fails fast on a non-database
            if not read_only:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
                with self.conn:
                    self.conn.executescript(_SCHEMA)
                    _add_missing_columns(self.conn)  # a version-1 database: old rows keep NULL
                    self.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open_session(
        self, patient: str, model_sha256: str, site: str | None = None, operator: str | None = None,
        model_format: str | None = None, bundle: str | None = None, decision: Decision | None = None,
    ) -> Session:
        """The session of ``patient`` with this model, created if new (a rerun resumes it). The
        ``decision`` (rule and cutoff) is stored with it; a rerun stores the one it now runs with."""
        if not patient or not patient.strip():
            raise RecordsError("a patient id is required")
        now = time.time()
        stored = None if decision is None else json.dumps(decision.to_dict())
        with _db_errors(self.path), self.conn:
            self.conn.execute(
                "INSERT INTO sessions (patient, site, operator, model_sha256, model_format, bundle, decision,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (patient, model_sha256) DO UPDATE SET updated_at = excluded.updated_at,"
                " site = COALESCE(excluded.site, site), operator = COALESCE(excluded.operator, operator),"
                " decision = COALESCE(excluded.decision, decision)",
                (patient, site, operator, model_sha256, model_format, bundle, stored, now, now),
            )
            row = self.conn.execute(
                "SELECT * FROM sessions WHERE patient = ? AND model_sha256 = ?", (patient, model_sha256)
            ).fetchone()
        return Session(**dict(row))

    def recorded_hashes(self, session_id: int) -> set[str]:
        with _db_errors(self.path):
            rows = self.conn.execute("SELECT content_hash FROM records WHERE session_id = ?", (session_id,))
            return {r[0] for r in rows}

    def add_record(self, session: Session, row: dict[str, Any]) -> bool:
        """Commit one record; False when this content hash is already recorded in the session."""
        return self.add_records(session, [row]) == 1

    def add_records(self, session: Session, rows: list[dict[str, Any]]) -> int:
        """Commit ``rows`` in one transaction (all or none); returns how many were new (a content
        hash already recorded in the session is left as it is)."""
        now = time.time()
        values = [
            (
                session.id, row["source_id"], row.get("source_kind", "file"), row["content_hash"],
                row["status"], row.get("reason"), row.get("label"), row.get("probability"),
                row.get("p_positive"), row.get("decision"),
                None if row.get("probabilities") is None else json.dumps(row["probabilities"]),
                row.get("domain_score"), session.model_sha256, now,
            )
            for row in rows
        ]
        with _db_errors(self.path), self.conn:
            before = self.conn.total_changes
            self.conn.executemany(
                "INSERT INTO records (session_id, source_id, source_kind, content_hash, status, reason,"
                " label, probability, p_positive, decision, probabilities, domain_score, model_sha256,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                values,
            )
            return self.conn.total_changes - before

    def count_classified(self, session_id: int) -> int:
        """Classified records of a session (what the stop rule counts)."""
        with _db_errors(self.path):
            row = self.conn.execute(
                "SELECT COUNT(*) FROM records WHERE session_id = ? AND status = 'classified'", (session_id,)
            ).fetchone()
        return int(row[0])

    def sessions(self) -> list[dict[str, Any]]:
        """All sessions with their record counts, newest first."""
        with _db_errors(self.path):
            rows = self.conn.execute(
                "SELECT s.*, COUNT(r.id) AS records,"
                " SUM(r.status = 'classified') AS classified, SUM(r.decision = 'positive') AS positive"
                " FROM sessions s LEFT JOIN records r ON r.session_id = s.id"
                " GROUP BY s.id ORDER BY s.updated_at DESC"
            ).fetchall()
        return [dict(r) for r in rows]

    def find_session(self, key: str) -> Session:
        """A session by numeric id, or the most recent one of a patient id."""
        with _db_errors(self.path):
            row = None
            if key.isdigit():
                row = self.conn.execute("SELECT * FROM sessions WHERE id = ?", (int(key),)).fetchone()
            if row is None:
                row = self.conn.execute(
                    "SELECT * FROM sessions WHERE patient = ? ORDER BY updated_at DESC LIMIT 1", (key,)
                ).fetchone()
        if row is None:
            raise RecordsError(f"no session {key!r} in {self.path}")
        return Session(**dict(row))

    def records(self, session_id: int) -> list[dict[str, Any]]:
        with _db_errors(self.path):
            rows = self.conn.execute(
                "SELECT * FROM records WHERE session_id = ? ORDER BY id", (session_id,)
            ).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["probabilities"] = json.loads(d["probabilities"]) if d["probabilities"] else None
            out.append(d)
        return out
