# pyright: basic
"""Screening records in a local SQLite database (WAL, rows committed a batch at a time).

A session is one patient screened with one model file under one manifest (unique on patient + model
sha256 + the canonical manifest's sha256), so a rerun after a crash resumes it and a run under
another manifest opens its own session; a record is unique on (session, content hash), so no image
is recorded twice. A session stores everything that decided it (:class:`ScreenedWith`: the
Decision, the domain guard's statistics and thresholds, the manifest's sha256 and its signer), so
reading it back never needs the bundle. ``synchronous=FULL`` makes each committed batch survive a
power loss, not only a crash; a crash loses at most the batch in flight (its results were not
reported yet).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import RecordsError
from edgekit.manifest import Decision, Domain
from edgekit.safefile import is_regular

# 2: sessions.decision; 3: crop_images and reviews; 4: sessions keyed on their manifest, with the
# guard, manifest sha256 and signer they were decided with (version-1/2/3 files keep working);
# 5: fields (each counted whole field's identity signature and focus) and records.field_id;
# 6: session_phones (which phones of `edgekit serve` opened a session: a phone lists only its own)
SCHEMA_VERSION = 6
# manifest_sha256 '': a session recorded before sessions were keyed on their manifest
_SESSIONS = """
CREATE TABLE IF NOT EXISTS {name} (
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
    manifest_sha256 TEXT NOT NULL DEFAULT '',
    signer_key_id TEXT,
    trust TEXT,
    guard TEXT,{extra}
    UNIQUE (patient, model_sha256, manifest_sha256)
);
"""
_SCHEMA = _SESSIONS.format(name="sessions", extra="") + """
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
CREATE TABLE IF NOT EXISTS crop_images (
    record_id INTEGER PRIMARY KEY REFERENCES records(id),
    png BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS fields (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    source_id TEXT NOT NULL,
    signature BLOB NOT NULL,
    sharpness REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'counted' CHECK (status IN ('counted', 'replaced')),
    replaced_by INTEGER REFERENCES fields(id),
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS session_phones (
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    phone TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (session_id, phone)
);
CREATE TABLE IF NOT EXISTS reviews (
    record_id INTEGER PRIMARY KEY REFERENCES records(id),
    verdict TEXT NOT NULL CHECK (verdict IN ('parasitized', 'not parasitized')),
    reviewer TEXT,
    note TEXT,
    created_at REAL NOT NULL
);
"""
# SQLite's page cache of a writing store, KiB: appends and one scan per summary need no 2 MB one (the
# kept PNGs pass through it). 512: ~1.6 MB less peak RSS screening 1,000 crops than 2 MB; 128: 0.7 MB
# less than 512 on 8 IML fields (its pages no longer pin the heap's top), same CPU (RESULTS.md)
PAGE_CACHE_KIB = 128
REVIEW_VERDICTS = ("parasitized", "not parasitized")
_SAVE_CROP = ("INSERT OR IGNORE INTO crop_images (record_id, png) SELECT id, ? FROM records"
              " WHERE session_id = ? AND content_hash = ?")


_COLUMNS = {
    "sessions": ("id", "patient", "site", "operator", "model_sha256", "model_format", "bundle", "created_at",
                 "updated_at", "decision", "manifest_sha256", "signer_key_id", "trust", "guard"),
    "records": ("id", "session_id", "source_id", "source_kind", "content_hash", "status", "reason", "label",
                "probability", "p_positive", "decision", "probabilities", "model_sha256", "created_at",
                "domain_score", "field_id"),
}


# what every edgekit database has had since schema 1 (later columns are added on opening to write)
_BASE_COLUMNS = {"sessions": _COLUMNS["sessions"][:9],
                 "records": tuple(c for c in _COLUMNS["records"] if c not in ("domain_score", "field_id"))}
# what edgekit writes in each column it knows, beyond text (SQLite stores whatever it is given)
_INTEGERS = {"sessions": ("id",), "records": ("id", "session_id", "field_id")}
_NUMBERS = {"sessions": ("created_at", "updated_at"), "records": ("probability", "p_positive", "domain_score",
                                                                   "created_at")}
_JSON = {"sessions": ("decision", "guard"), "records": ()}  # records' probabilities: parsed by _record

# columns added after a database may have been created: (table, name, SQL type)
_ADDED_COLUMNS = (
    ("sessions", "decision", "TEXT"),  # the Decision the session was screened with
    ("records", "domain_score", "REAL"),  # the domain guard's per-crop distance (edgekit.device.domain)
    ("records", "field_id", "INTEGER"),  # schema 5: the whole field (fields.id) a cell was cut from
)


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring a database made by an older edgekit up to date (new columns are nullable)."""
    for table, name, sql_type in _ADDED_COLUMNS:
        if name not in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")


def _rekey_sessions(conn: sqlite3.Connection) -> None:
    """Schema 4: a sessions table made before it was keyed on the manifest (UNIQUE on patient + model
    sha256 only) is rebuilt with the new key, in the caller's transaction: every row, id and column
    is kept (columns another program added too), old sessions get manifest_sha256 '' (unknown)."""
    cols = conn.execute("PRAGMA table_info(sessions)").fetchall()
    names = [c[1] for c in cols]
    if "manifest_sha256" in names:
        return
    extra = ""
    for c in cols:  # (cid, name, type, notnull, default, pk)
        if c[1] not in _COLUMNS["sessions"]:
            default = "" if c[4] is None else f" DEFAULT {c[4]}"
            extra += f'\n    "{c[1]}" {c[2]}{" NOT NULL" if c[3] else ""}{default},'
    conn.execute(_SESSIONS.format(name="sessions_v4", extra=extra))
    keep = ", ".join(f'"{n}"' for n in names)
    conn.execute(f"INSERT INTO sessions_v4 ({keep}) SELECT {keep} FROM sessions")
    conn.execute("DROP TABLE sessions")
    conn.execute("ALTER TABLE sessions_v4 RENAME TO sessions")


def default_db_path() -> Path:
    """``$EDGEKIT_DB``, else ``~/.local/share/edgekit/screening.sqlite``."""
    env = os.environ.get("EDGEKIT_DB")
    return Path(env) if env else Path.home() / ".local" / "share" / "edgekit" / "screening.sqlite"


@contextlib.contextmanager
def db_errors(path: Path) -> Iterator[None]:
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


def _typed(table: str, row: sqlite3.Row | Mapping[str, Any]) -> dict[str, Any]:
    """A row as its dict, refused (``sqlite3.DatabaseError``, which :func:`db_errors` words) when a
    column edgekit knows holds what edgekit never writes there: text in a number, a blob, bad JSON."""
    d = dict(row)
    for k in _COLUMNS[table]:
        v = d.get(k)
        if v is None:
            continue
        if k in _INTEGERS[table]:
            ok = type(v) is int
        elif k in _NUMBERS[table]:
            ok = type(v) in (int, float)
        else:
            ok = isinstance(v, str) and (k not in _JSON[table] or _is_json(v))
        if not ok:
            raise _malformed(table, d, k)
    return d


def _malformed(table: str, d: dict[str, Any], column: str) -> sqlite3.DatabaseError:
    """The error for a value edgekit never writes (:func:`db_errors` words it, with the path)."""
    return sqlite3.DatabaseError(f"{table} row {d.get('id')}: its {column} holds {str(d[column])[:40]!r}, "
                                 "which edgekit never writes there")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _record(row: sqlite3.Row) -> dict[str, Any]:
    d = _typed("records", row)
    if d.get("probabilities"):
        try:
            d["probabilities"] = json.loads(d["probabilities"])
        except (ValueError, RecursionError) as exc:
            raise _malformed("records", d, "probabilities") from exc
    elif "probabilities" in d:
        d["probabilities"] = None
    return d


def _connect_read_only(path: Path, timeout: float) -> sqlite3.Connection:
    """A read-only connection that writes nothing, even in a read-only folder or on a full disk
    (where SQLite cannot create the WAL index: the file is then opened as immutable)."""
    uri = path.resolve().as_uri()
    conn = None
    try:
        conn = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=timeout)
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as exc:
        if conn is not None:
            conn.close()
        if "unable to open" not in str(exc) and "readonly" not in str(exc):
            raise
    return sqlite3.connect(uri + "?mode=ro&immutable=1", uri=True, timeout=timeout)


@dataclass
class Session:
    """One patient's screening session as recorded: who, where, with which model, and when."""

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
    manifest_sha256: str | None = None  # the canonical manifest's sha256 (None: recorded before schema 4)
    signer_key_id: str | None = None  # the key that signed the bundle (None: unsigned or not recorded)
    trust: str | None = None  # "signed by NAME (key ID)" or "untrusted: why", as checked at screening
    guard: str | None = None  # JSON {"domain": the guard's statistics and thresholds, or null}

    @property
    def decided_with(self) -> Decision | None:
        """The stored Decision; None for sessions recorded before it was stored."""
        return Decision.from_dict(json.loads(self.decision)) if self.decision else None

    @property
    def guard_stored(self) -> bool:
        """Whether the domain guard the session was screened with is stored (schema 4 sessions)."""
        return self.guard is not None

    @property
    def guarded_with(self) -> Domain | None:
        """The stored domain guard (None: the bundle had none, or it was not stored: see
        :attr:`guard_stored`)."""
        if self.guard is None:
            return None
        d = json.loads(self.guard).get("domain")
        return None if d is None else Domain(**d)

    @classmethod
    def from_row(cls, row: sqlite3.Row | Mapping[str, Any]) -> Session:
        """From a ``sessions`` row; columns this edgekit does not know are ignored."""
        d = _typed("sessions", row)
        values: dict[str, Any] = {k: d.get(k) for k in _COLUMNS["sessions"]}
        out = cls(**values)
        out.manifest_sha256 = out.manifest_sha256 or None  # '': recorded before sessions were keyed on it
        return out


@dataclass(frozen=True)
class ScreenedWith:
    """What decides a session besides its records, stored with it: the canonical manifest's sha256 (the
    session's key with the patient and the model file), the bundle's signer and trust as checked
    when it was loaded, and the domain guard's statistics and thresholds (None: the bundle has none)."""

    manifest_sha256: str
    signer_key_id: str | None
    trust: str
    domain: Domain | None

    def guard_json(self) -> str:
        return json.dumps({"domain": None if self.domain is None else asdict(self.domain)})


MAX_NAME_CHARS = 128


def check_name(what: str, value: str | None) -> None:
    """Patient ids, sites and operators are shown on screens and in CSV exports: one printable line."""
    from edgekit.outputs import control_character

    if value is None:
        return
    if len(value) > MAX_NAME_CHARS:
        raise RecordsError(f"the {what} is {len(value)} characters long (at most {MAX_NAME_CHARS})")
    if (bad := control_character(value)) is not None:
        raise RecordsError(f"the {what} contains a control character ({bad!r}); use one printable line")


@dataclass
class FieldEntry:
    """A whole field to record with its cells (:meth:`RecordStore.add_records`): its identity
    signature (:mod:`edgekit.device.field.identity`), focus score, and the counted field it replaces."""

    source_id: str
    signature: bytes
    sharpness: float
    replaces: int | None = None
    id: int | None = None  # set once written
    # the session's newest field id when the field was checked, and whether a signature is this
    # field: a field another process counted in between is found when this one is written
    checked_up_to: int = 0
    same_field: Callable[[bytes], bool] | None = None


class FieldCountedMeanwhile(RecordsError):
    """The same field was counted (by another process on the database) after this one was checked;
    ``other``: that field's row. Nothing of this field was written."""

    def __init__(self, other: dict[str, Any]) -> None:
        super().__init__(f"this field is already counted ({other['source_id']})")
        self.other = other


class RecordStore:
    """The screening database. Every write is one committed transaction."""

    def __init__(self, path: str | os.PathLike, timeout: float = 5.0, read_only: bool = False,
                 create: bool = True) -> None:
        """Open (``read_only``: never write, not even the schema; else create if needed and
        ``create``). A database written by a newer edgekit is refused before anything in it is changed."""
        self.path = Path(path).expanduser()
        if self.path.exists() and not is_regular(self.path):
            raise RecordsError(f"database {self.path} is not a regular file")
        if (read_only or not create) and not self.path.is_file():
            raise RecordsError(f"no screening database at {self.path}")
        with db_errors(self.path):
            if read_only:
                self.conn = _connect_read_only(self.path, timeout)
            else:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise RecordsError(f"cannot create the folder of database {self.path}: {exc}") from exc
                self.conn = sqlite3.connect(self.path, timeout=timeout)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # fails fast on a non-database
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                self.conn.close()
                raise RecordsError(
                    f"database {self.path} was written by a newer edgekit (schema {version}, this edgekit "
                    f"reads up to {SCHEMA_VERSION}); upgrade edgekit to use it (it was not changed)"
                )
            self._check_ours(version, read_only)
            if not read_only:
                self._check_columns()
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
                self.conn.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
                self._upgrade()

    def _check_ours(self, version: int, read_only: bool) -> None:
        """Refuse, before anything in it is changed, a database another program made (tables but no
        edgekit schema version, and no sessions table of edgekit's); reading needs the sessions table."""
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        ours = "sessions" in tables and {"id", "patient"} <= self._columns("sessions") and (
            "records" not in tables or {"id", "session_id"} <= self._columns("records"))
        if (version == 0 and tables and not ours) or (read_only and not ours):
            self.conn.close()
            raise RecordsError(f"database {self.path} is not an edgekit screening database (no sessions of "
                               "edgekit's in it; it was not changed); use --db to choose another file")
        for table in ("sessions", "records") if ours else ():
            have = self._columns(table) if table in tables else set(_BASE_COLUMNS[table])
            lost = [c for c in _BASE_COLUMNS[table] if c not in have]
            if lost:  # read as null, every label or probability would be silently empty
                self.conn.close()
                raise RecordsError(f"database {self.path} is damaged: its {table} table has no {lost[0]} "
                                   "column (it was not changed); restore it from a backup or use --db to "
                                   "choose another file")
        if version > 0 and "records" not in tables:  # every schema version has it: creating it anew
            self.conn.close()  # would leave the sessions without their cells (0 cells, refer)
            raise RecordsError(f"database {self.path} is damaged: its sessions are there but its records "
                               "table is gone (it was not changed); restore it from a backup or use --db "
                               "to choose another file")

    def _columns(self, table: str) -> set[str]:
        return {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}

    def _upgrade(self) -> None:
        """Create the tables, or bring an older database up to date, in one transaction (a crash
        leaves the old schema or the new one, never half of it)."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if self._has("sessions"):
                _rekey_sessions(conn)  # a version-1/2/3 database: every row kept, under the new key
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            _add_missing_columns(conn)  # a version-1 database: old rows keep NULL
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    def _check_columns(self) -> None:
        """Extra columns are fine unless they must be filled (NOT NULL without a default): then no row
        could be written, so say so now instead of calling the database corrupt later."""
        for table in ("sessions", "records"):
            known = set(_COLUMNS[table])
            for col in self.conn.execute(f"PRAGMA table_info({table})").fetchall():
                name, notnull, default, pk = col[1], col[3], col[4], col[5]
                if name not in known and notnull and default is None and not pk:
                    self.conn.close()
                    raise RecordsError(
                        f"database {self.path} has a column {table}.{name} this edgekit does not know and "
                        "must fill (NOT NULL, no default): it was written by another program or a newer "
                        "edgekit; use --db to choose another file"
                    )

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open_session(
        self, patient: str, model_sha256: str, site: str | None = None, operator: str | None = None,
        model_format: str | None = None, bundle: str | None = None, decision: Decision | None = None,
        screened_with: ScreenedWith | None = None,
    ) -> Session:
        """The session of ``patient`` with this model file under this manifest
        (``screened_with.manifest_sha256``), created if new: a rerun resumes it, a run under another
        manifest opens another session. The ``decision`` and ``screened_with`` (guard, signer) are
        stored with a new session; a resumed one keeps what it has (the same manifest decides it)."""
        if not patient or not patient.strip():
            raise RecordsError("a patient id is required")
        for what, value in (("patient id", patient), ("site", site), ("operator", operator)):
            check_name(what, value)
        now = time.time()
        stored = None if decision is None else json.dumps(decision.to_dict())
        w = screened_with
        manifest_sha = "" if w is None else w.manifest_sha256
        provenance = (None, None, None) if w is None else (w.signer_key_id, w.trust, w.guard_json())
        with db_errors(self.path), self.conn:
            self.conn.execute(
                "INSERT INTO sessions (patient, site, operator, model_sha256, model_format, bundle, decision,"
                " created_at, updated_at, manifest_sha256, signer_key_id, trust, guard)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (patient, model_sha256, manifest_sha256) DO UPDATE SET"
                " updated_at = excluded.updated_at,"
                " site = COALESCE(excluded.site, site), operator = COALESCE(excluded.operator, operator),"
                " decision = COALESCE(decision, excluded.decision), guard = COALESCE(guard, excluded.guard),"
                " signer_key_id = COALESCE(signer_key_id, excluded.signer_key_id),"
                " trust = COALESCE(trust, excluded.trust)",
                (patient, site, operator, model_sha256, model_format, bundle, stored, now, now, manifest_sha,
                 *provenance),
            )
            row = self.conn.execute(
                "SELECT * FROM sessions WHERE patient = ? AND model_sha256 = ? AND manifest_sha256 = ?",
                (patient, model_sha256, manifest_sha),
            ).fetchone()
            return Session.from_row(row)

    def recorded_hashes(self, session_id: int) -> set[str]:
        with db_errors(self.path):
            rows = self.conn.execute("SELECT content_hash FROM records WHERE session_id = ?", (session_id,))
            return {r[0] for r in rows}

    def add_record(self, session: Session, row: dict[str, Any]) -> bool:
        """Commit one record; False when this content hash is already recorded in the session."""
        return self.add_records(session, [row]) == 1

    def add_records(self, session: Session, rows: list[dict[str, Any]],
                    crops: Mapping[str, bytes] | None = None, field: FieldEntry | None = None) -> int:
        """Commit ``rows`` in one transaction (all or none); returns how many were new (a content
        hash already recorded in the session is left as it is). ``crops`` (content hash -> PNG): the
        crops of cells kept for review, committed in the same transaction as their records.
        ``field``: the whole field the rows were cut from; its row in ``fields`` is written in the
        same transaction (first call; ``field.id`` is set), and when it ``replaces`` a counted field,
        that field and its cells are marked ``replaced`` in the same transaction too."""
        now = time.time()
        with db_errors(self.path), self.conn:
            if field is not None and field.id is None:
                field.id = self._add_field(session, field, now)
            fid = None if field is None else field.id
            values = [
                (
                    session.id, row["source_id"], row.get("source_kind", "file"), row["content_hash"],
                    row["status"], row.get("reason"), row.get("label"), row.get("probability"),
                    row.get("p_positive"), row.get("decision"),
                    None if row.get("probabilities") is None else json.dumps(row["probabilities"]),
                    row.get("domain_score"), session.model_sha256, now, fid,
                )
                for row in rows
            ]
            before = self.conn.total_changes
            self.conn.executemany(
                "INSERT INTO records (session_id, source_id, source_kind, content_hash, status, reason,"
                " label, probability, p_positive, decision, probabilities, domain_score, model_sha256,"
                " created_at, field_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                values,
            )
            added = self.conn.total_changes - before
            if crops:
                self.conn.executemany(_SAVE_CROP, [(png, session.id, h) for h, png in crops.items()])
            return added

    def _add_field(self, session: Session, field: FieldEntry, now: float) -> int:
        """Insert a counted field (in the caller's transaction), replacing ``field.replaces``."""
        cur = self.conn.execute(
            "INSERT INTO fields (session_id, source_id, signature, sharpness, status, created_at)"
            " VALUES (?, ?, ?, ?, 'counted', ?)",
            (session.id, field.source_id, field.signature, field.sharpness, now))
        fid = int(cur.lastrowid or 0)
        if field.same_field is not None:  # this transaction holds the write lock: no one can add one now
            for row in self.conn.execute("SELECT * FROM fields WHERE session_id = ? AND status = 'counted'"
                                         " AND id > ? AND id != ? ORDER BY id",
                                         (session.id, field.checked_up_to, fid)).fetchall():
                if field.same_field(row["signature"]):
                    raise FieldCountedMeanwhile(dict(row))
        if field.replaces is not None:
            old = self.conn.execute("UPDATE fields SET status = 'replaced', replaced_by = ? WHERE id = ?"
                                    " AND session_id = ? AND status = 'counted'",
                                    (fid, field.replaces, session.id))
            if old.rowcount != 1:
                raise RecordsError(f"field {field.replaces} of session {session.id} is not counted: "
                                   "nothing to replace")
            self.conn.execute(
                "UPDATE records SET status = 'replaced', reason = ? WHERE session_id = ? AND field_id = ?",
                (f"replaced by a sharper take of the same field ({field.source_id})", session.id,
                 field.replaces))
        return fid

    def fields(self, session_id: int, counted_only: bool = True) -> list[dict[str, Any]]:
        """The session's whole fields (id, source_id, signature, sharpness, status), oldest first."""
        with db_errors(self.path):
            if not self._has("fields"):
                return []
            where = " AND status = 'counted'" if counted_only else ""
            rows = self.conn.execute(
                f"SELECT * FROM fields WHERE session_id = ?{where} ORDER BY id", (session_id,)).fetchall()
        return [dict(r) for r in rows]

    def count_classified(self, session_id: int) -> int:
        """Classified records of a session (what the stop rule counts)."""
        with db_errors(self.path):
            row = self.conn.execute(
                "SELECT COUNT(*) FROM records WHERE session_id = ? AND status = 'classified'", (session_id,)
            ).fetchone()
        return int(row[0])

    def sessions(self) -> list[dict[str, Any]]:
        """All sessions with their record counts, newest first."""
        with db_errors(self.path):
            rows = self.conn.execute(
                "SELECT s.*, COUNT(r.id) AS records,"
                " SUM(r.status = 'classified') AS classified, SUM(r.decision = 'positive') AS positive"
                " FROM sessions s LEFT JOIN records r ON r.session_id = s.id"
                " GROUP BY s.id ORDER BY s.updated_at DESC"
            ).fetchall()
            return [_typed("sessions", r) for r in rows]

    def add_session_phone(self, session_id: int, phone: str) -> None:
        """Note that ``phone`` (an opaque key of one phone of ``edgekit serve``) opened the session."""
        with db_errors(self.path), self.conn:
            self.conn.execute("INSERT OR IGNORE INTO session_phones (session_id, phone, created_at)"
                              " VALUES (?, ?, ?)", (int(session_id), phone, time.time()))

    def phone_sessions(self, phone: str) -> set[int]:
        """The ids of the sessions ``phone`` opened (none in a database older than schema 6)."""
        with db_errors(self.path):
            if not self._has("session_phones"):
                return set()
            rows = self.conn.execute("SELECT session_id FROM session_phones WHERE phone = ?", (phone,))
            return {r[0] for r in rows}

    def session_by_id(self, session_id: int) -> Session | None:
        """The session with this id; None when there is none."""
        if not _fits_sqlite(session_id):
            return None
        with db_errors(self.path):
            row = self.conn.execute("SELECT * FROM sessions WHERE id = ?", (int(session_id),)).fetchone()
            return None if row is None else Session.from_row(row)

    def find_session(self, key: str, by: str | None = None) -> Session:
        """A session by numeric id (``by="id"``), the most recent one of a patient id
        (``by="patient"``), or either (``by=None``); a key that is both a session id and a patient
        id is refused as ambiguous rather than guessed."""
        with db_errors(self.path):
            by_id = by_patient = None
            if by in (None, "id") and key.isdigit() and _fits_sqlite(int(key)):
                by_id = self.conn.execute("SELECT * FROM sessions WHERE id = ?", (int(key),)).fetchone()
            if by in (None, "patient"):
                by_patient = self.conn.execute(
                    "SELECT * FROM sessions WHERE patient = ? ORDER BY updated_at DESC LIMIT 1", (key,)
                ).fetchone()
        if by_id is not None and by_patient is not None and by_id["id"] != by_patient["id"]:
            raise RecordsError(
                f"{key!r} is both session {key} (patient {by_id['patient']!r}) and patient {key!r}: "
                f"use --id {key} or --patient {key}"
            )
        row = by_id if by_id is not None else by_patient
        if row is None:
            what = {"id": "session id", "patient": "patient"}.get(by or "", "session or patient")
            raise RecordsError(f"no {what} {key!r} in {self.path}")
        with db_errors(self.path):
            return Session.from_row(row)

    def records(self, session_id: int, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """A session's records in order; ``columns``: only these of each, those the file has (all by
        default). Each row becomes its dict as it is read: the rows are never all held twice."""
        unknown = set(columns or ()) - set(_COLUMNS["records"])
        if unknown:
            raise ValueError(f"no record column {sorted(unknown)[0]!r}")
        with db_errors(self.path):
            have = self._columns("records") if columns else set()
            chosen = ", ".join(c for c in columns if c in have) if columns else "*"
            rows = self.conn.execute(
                f"SELECT {chosen} FROM records WHERE session_id = ? ORDER BY id", (session_id,))
            return [_record(r) for r in rows]

    def records_by_session(self) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """Every session's records (as :meth:`records` gives them), one session at a time, from one
        query: listing many sessions costs one read, and only one session's records are held at once."""
        from itertools import groupby

        with db_errors(self.path):
            rows = self.conn.execute("SELECT * FROM records ORDER BY session_id, id")
            for session_id, group in groupby(rows, key=lambda r: r["session_id"]):
                yield int(session_id), [_record(r) for r in group]

    # ------------------------------------------------------------------ review (schema 2)

    def _has(self, table: str) -> bool:
        """Whether the table exists (a version-1 file opened read-only has no review tables)."""
        row = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
        return row.fetchone() is not None

    def crop_images(self, session_id: int) -> dict[int, bytes]:
        """record id -> PNG of the kept crops of a session."""
        with db_errors(self.path):
            if not self._has("crop_images"):
                return {}
            rows = self.conn.execute(
                "SELECT c.record_id, c.png FROM crop_images c JOIN records r ON r.id = c.record_id"
                " WHERE r.session_id = ?", (session_id,)).fetchall()
        return {int(r[0]): bytes(r[1]) for r in rows}

    def crop_image(self, session_id: int, record_id: int) -> bytes | None:
        """The kept crop (PNG) of one cell of a session; None when none was kept."""
        with db_errors(self.path):
            if not self._has("crop_images"):
                return None
            row = self.conn.execute(
                "SELECT c.png FROM crop_images c JOIN records r ON r.id = c.record_id"
                " WHERE r.session_id = ? AND c.record_id = ?", (session_id, record_id)).fetchone()
        return None if row is None else bytes(row[0])

    def set_review(self, session_id: int, record_id: int, verdict: str, reviewer: str | None = None,
                   note: str | None = None) -> None:
        """A reviewer's verdict on one cell of this session (a later verdict replaces an earlier one)."""
        self.set_reviews(session_id, [(record_id, verdict)], reviewer, note)

    def set_reviews(self, session_id: int, verdicts: list[tuple[int, str]], reviewer: str | None = None,
                    note: str | None = None) -> None:
        """A reviewer's verdicts ``(record id, verdict)`` on cells of this session, in one transaction:
        all are recorded or none (a later verdict on a cell replaces an earlier one)."""
        for _, verdict in verdicts:
            if verdict not in REVIEW_VERDICTS:
                raise RecordsError(f"verdict must be one of {', '.join(REVIEW_VERDICTS)}, not {verdict!r}")
        now = time.time()
        with db_errors(self.path), self.conn:
            for record_id, verdict in verdicts:
                row = self.conn.execute("SELECT status FROM records WHERE id = ? AND session_id = ?",
                                        (record_id, session_id)).fetchone()
                if row is None:
                    raise RecordsError(f"no cell {record_id} in session {session_id}")
                if row[0] != "classified":
                    raise RecordsError(f"record {record_id} was {row[0]}, not classified: nothing to review")
                self.conn.execute(
                    "INSERT INTO reviews (record_id, verdict, reviewer, note, created_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (record_id)"
                    " DO UPDATE SET verdict = excluded.verdict, reviewer = excluded.reviewer,"
                    " note = excluded.note, created_at = excluded.created_at",
                    (record_id, verdict, reviewer, note, now))

    def reviews(self, session_id: int) -> dict[int, dict[str, Any]]:
        """record id -> {verdict, reviewer, note, created_at} for the reviewed cells of a session."""
        with db_errors(self.path):
            if not self._has("reviews"):
                return {}
            rows = self.conn.execute(
                "SELECT v.* FROM reviews v JOIN records r ON r.id = v.record_id WHERE r.session_id = ?",
                (session_id,)).fetchall()
        return {int(r["record_id"]): dict(r) for r in rows}


def _fits_sqlite(n: int) -> bool:
    """Whether ``n`` is a SQLite integer (a larger one cannot be an id; binding it is an OverflowError)."""
    return -(1 << 63) <= int(n) < 1 << 63
