# pyright: basic
"""The programme's PostgreSQL server: connecting (one clear line on any failure), its versioned schema
(numbered SQL files in ``migrations/``, applied in order and recorded in ``schema_version``), and
the refusal of a server whose schema is newer than this edgekit knows.

TLS is whatever the URL asks for: libpq's ``sslmode`` (``?sslmode=verify-full&sslrootcert=...``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from importlib import resources
from typing import TYPE_CHECKING, Any

from edgekit.errors import EdgekitError

if TYPE_CHECKING:
    import psycopg

MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
# how long a statement waits for a lock another transaction holds (an admin's open LOCK TABLE, a
# migration): then one line and a non-zero exit, never a station waiting for ever
LOCK_WAIT_S = 30
# libpq's connection parameters for a network that dies mid-sync (a mobile link dropping): without them a
# station waits on the kernel's TCP timeouts (minutes to hours) for a server that is gone. Keepalives
# find a silent server while a reply is awaited (15 + 3 x 5 s), tcp_user_timeout data sent but never
# acknowledged (30 s). A URL's own (``?keepalives_idle=60``) or $PGCONNECT_TIMEOUT wins over these.
CONNECTION_DEFAULTS = {"connect_timeout": "15", "keepalives": "1", "keepalives_idle": "15",
                       "keepalives_interval": "5", "keepalives_count": "3", "tcp_user_timeout": "30000"}
_FROM_ENVIRONMENT = {"connect_timeout": "PGCONNECT_TIMEOUT"}


class ProgrammeError(EdgekitError):
    """The programme server cannot be used (bad URL, unreachable, refused role, other schema)."""


def migrations() -> list[tuple[int, str, str]]:
    """``(version, file name, SQL)`` of every migration shipped with this edgekit, in order."""
    out = []
    for f in resources.files("edgekit.programme").joinpath("migrations").iterdir():
        m = MIGRATION_NAME.match(f.name)
        if m:
            out.append((int(m.group(1)), f.name, f.read_text(encoding="utf-8")))
    out.sort()
    return out


def schema_version() -> int:
    """The newest server schema this edgekit knows."""
    return migrations()[-1][0]


def where(url: str) -> str:
    """The URL's server and database for messages, never its password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        d = conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 - only for a message
        return "the server"
    host = d.get("host") or "localhost"
    if str(host).startswith("/"):
        host = f"socket {host}"
    port = f":{d['port']}" if d.get("port") else ""
    user = d.get("user")
    return f"{f'{user}@' if user else ''}{host}{port}/{d.get('dbname', '')}"


def _check_url(url: str) -> None:
    if not re.match(r"^postgres(ql)?://", url or ""):
        raise ProgrammeError(f"not a PostgreSQL URL: {url.split('@')[-1]!r} (use postgresql://USER@HOST/DB)")


def connection_defaults(url: str) -> dict[str, str]:
    """:data:`CONNECTION_DEFAULTS` that neither the URL nor libpq's environment sets."""
    import os

    from psycopg.conninfo import conninfo_to_dict

    given = conninfo_to_dict(url)
    in_env = {k for k, name in _FROM_ENVIRONMENT.items() if os.environ.get(name)}
    return {k: v for k, v in CONNECTION_DEFAULTS.items() if k not in given and k not in in_env}


def connect(url: str) -> psycopg.Connection:
    """A connection to the programme server (autocommit off), or one line saying why not."""
    _check_url(url)
    import psycopg
    from psycopg.conninfo import make_conninfo

    try:
        conn = psycopg.connect(make_conninfo(url, application_name="edgekit", **connection_defaults(url)))
    except psycopg.ProgrammingError as exc:
        raise ProgrammeError(f"bad PostgreSQL URL: {_one_line(exc)}") from exc
    except psycopg.OperationalError as exc:
        raise ProgrammeError(f"cannot connect to {where(url)}: {_one_line(exc)}") from exc
    with server_errors(url):
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(LOCK_WAIT_S * 1000)}ms",))
        conn.commit()
    return conn


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text.removeprefix("connection failed: ")


@contextlib.contextmanager
def server_errors(url: str) -> Iterator[None]:
    """Turn a server's refusals and a dropped connection into one line."""
    import psycopg
    from psycopg import errors as e

    try:
        yield
    except e.LockNotAvailable as exc:
        raise ProgrammeError(f"{where(url)} is busy: a table stayed locked by another transaction for"
                             f" {LOCK_WAIT_S} s; nothing half-sent is kept, run it again") from exc
    except (e.InsufficientPrivilege, e.UndefinedTable) as exc:
        raise ProgrammeError(f"{where(url)} refused: {_one_line(exc)} (is this role granted "
                             "edgekit_station or edgekit_reader, and the schema installed with "
                             "`edgekit programme migrate`?)") from exc
    except psycopg.OperationalError as exc:
        raise ProgrammeError(f"lost the connection to {where(url)}: {_one_line(exc)}; nothing "
                             "half-sent is kept, run it again") from exc
    except psycopg.Error as exc:
        raise ProgrammeError(f"{where(url)}: {_one_line(exc)}") from exc


def server_version(conn: psycopg.Connection) -> int:
    """The server's schema version (0: no edgekit schema there)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('public.schema_version') IS NOT NULL")
        row = cur.fetchone()
        if not (row and row[0]):
            conn.rollback()
            return 0
        cur.execute("SELECT COALESCE(max(version), 0) FROM schema_version")
        row = cur.fetchone()
    conn.rollback()
    return int(row[0]) if row else 0


def check_schema(conn: psycopg.Connection, url: str) -> int:
    """Refuse (one line) a server without the schema, with an older one or with a newer one."""
    have, know = server_version(conn), schema_version()
    if have > know:
        raise ProgrammeError(f"{where(url)} has programme schema {have}, newer than this edgekit knows "
                             f"({know}); upgrade edgekit (nothing was sent or changed)")
    if have < know:
        what = "no programme schema" if have == 0 else f"programme schema {have}"
        raise ProgrammeError(f"{where(url)} has {what} (this edgekit needs {know}); an administrator "
                             "runs `edgekit programme migrate --to URL` first")
    return have


def migrate(url: str) -> dict[str, Any]:
    """Bring the server's schema up to this edgekit's (each file in its own transaction, recorded in
    ``schema_version``; concurrent runs wait for each other). A newer schema is refused untouched."""
    conn = connect(url)
    applied = []
    try:
        with server_errors(url):
            have, know = server_version(conn), schema_version()
            if have > know:
                raise ProgrammeError(f"{where(url)} has programme schema {have}, newer than this edgekit "
                                     f"knows ({know}); upgrade edgekit (the server was not changed)")
            for version, name, sql in migrations():
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_xact_lock(hashtext('edgekit schema'))")
                    cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY,"
                                " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
                    cur.execute("SELECT 1 FROM schema_version WHERE version = %s", (version,))
                    if cur.fetchone():
                        continue
                    cur.execute(sql.encode())
                    cur.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)", (version, name))
                    applied.append(name)
            conn.commit()
    finally:
        conn.close()
    return {"schema": schema_version(), "applied": applied}
