# pyright: basic
"""A throwaway PostgreSQL for tests and benchmarks (not for production): Debian's ``initdb`` +
``pg_ctl`` in a temporary folder, on a Unix socket only (as ``postgres`` when run as root)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path


class NoPostgres(Exception):
    """PostgreSQL cannot be installed or started here (the reason is the message)."""


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise NoPostgres(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return path


class PgServer:
    """``start()``; ``url(db, user)``; ``create_db()``; ``stop()``."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="edgekit-pg-"))
        self.data = self.root / "data"
        self.port = 40000 + os.getpid() % 20000
        self.as_postgres = os.geteuid() == 0
        self.superuser = "postgres" if self.as_postgres else os.environ.get("USER", "postgres")

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = list(args)
        if self.as_postgres:
            runuser = shutil.which("runuser")
            cmd = [runuser, "-u", "postgres", "--", *cmd] if runuser else ["su", "postgres", "-s", "/bin/sh",
                                                                          "-c", " ".join(cmd)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def start(self) -> PgServer:
        try:
            initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
            if self.as_postgres:
                shutil.chown(self.root, "postgres")
            r = self._run(initdb, "-D", str(self.data), "-U", self.superuser, "--auth=trust", "-E", "UTF8",
                          "--no-sync")
            if r.returncode:
                raise NoPostgres(f"initdb failed: {r.stderr.strip().splitlines()[-1:]}")
            opts = (f"-c listen_addresses='' -c unix_socket_directories={self.root} -p {self.port}"
                    " -c fsync=off -c max_connections=50")
            r = self._run(pg_ctl, "-D", str(self.data), "-l", str(self.root / "log"), "-o", opts, "-w",
                          "start")
            if r.returncode:
                log = (self.root / "log").read_text(errors="replace") if (self.root / "log").exists() else ""
                raise NoPostgres(f"pg_ctl start failed: {(r.stderr + log).strip().splitlines()[-1:]}")
        except (OSError, subprocess.SubprocessError, LookupError) as exc:
            self.stop()
            raise NoPostgres(f"cannot start PostgreSQL: {exc}") from exc
        except NoPostgres:
            self.stop()
            raise
        return self

    def url(self, db: str = "postgres", user: str | None = None) -> str:
        return f"postgresql://{user or self.superuser}@/{db}?host={self.root}&port={self.port}"

    def admin(self, db: str = "postgres"):
        import psycopg

        return psycopg.connect(self.url(db), autocommit=True)

    def create_db(self) -> str:
        name = "t_" + uuid.uuid4().hex[:10]
        with self.admin() as conn:
            # DDL names cannot be query parameters; psycopg's stub wants a literal string
            conn.execute(f"CREATE DATABASE {name}")  # pyright: ignore[reportCallIssue, reportArgumentType]
        return name

    def create_role(self, name: str, group: str) -> None:
        with self.admin() as conn:
            conn.execute(f"CREATE ROLE {name} LOGIN IN ROLE {group}")  # as above # pyright: ignore[reportCallIssue, reportArgumentType]

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
            except (OSError, subprocess.SubprocessError, NoPostgres):
                pass
        shutil.rmtree(self.root, ignore_errors=True)
