"""A sync whose network dies mid-transfer, for ``test_programme``: run as root in a network namespace of its
own (``unshare -n python netdrop_sync.py TMPDIR``), so taking its loopback down touches nothing else.

A throwaway PostgreSQL on a Unix socket, reached over 127.0.0.1 through a proxy that takes the loopback
down once the station has sent ``DROP_AFTER`` bytes: from then on the station's packets go nowhere, as
on a mobile link that drops, and no reset ever arrives. Prints one JSON line: the dropped sync's exit
code, output and seconds; then the counts of a re-run with the loopback up again."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from click.testing import CliRunner
from programme_helpers import make_station

from edgekit.cli import main
from edgekit.programme import server
from edgekit.programme.pgtemp import NoPostgres, PgServer

DROP_AFTER = 150_000
GIVE_UP_S = 40  # far past the shortened timeouts below; the kernel's own would be ~15 min


def _loopback(state: str) -> None:
    subprocess.run(["ip", "link", "set", "lo", state], check=True)


class DroppingProxy:
    """127.0.0.1:port -> the server's Unix socket; the loopback goes down after DROP_AFTER bytes sent."""

    def __init__(self, unix_path: str) -> None:
        self.unix_path, self.sent, self.dropped = unix_path, 0, threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.unix_path)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if counted:
                    self.sent += len(data)
                    if self.sent > DROP_AFTER and not self.dropped.is_set():
                        self.dropped.set()
                        _loopback("down")
        except OSError:
            pass


def main_(tmp: Path) -> dict:
    _loopback("up")
    try:
        pg = PgServer().start()
    except NoPostgres as exc:
        return {"skip": f"no PostgreSQL here: {exc}"}
    try:
        admin = pg.url()
        assert CliRunner().invoke(main, ["programme", "migrate", "--to", admin]).exit_code == 0
        db = make_station(tmp / "station.sqlite", [f"P{i}" for i in range(12)], "Kisumu", cells=200)
        proxy = DroppingProxy(f"{pg.root}/.s.PGSQL.{pg.port}")
        # shortened for the test (the defaults wait 30-45 s), the same mechanism
        server.CONNECTION_DEFAULTS = {**getattr(server, "CONNECTION_DEFAULTS", {}), "keepalives_idle": "1",
                                      "keepalives_interval": "1", "keepalives_count": "2",
                                      "tcp_user_timeout": "2000"}
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
        box: dict = {}

        def dropped_sync() -> None:
            box["out"] = CliRunner().invoke(main, ["sync", str(db), "--to", url, "--json"])

        started = time.monotonic()
        worker = threading.Thread(target=dropped_sync, daemon=True)
        worker.start()
        worker.join(GIVE_UP_S)
        result = {"dropped": proxy.dropped.is_set(), "seconds": round(time.monotonic() - started, 1)}
        if worker.is_alive():
            result.update(exit_code=None, output="still waiting")
            return result
        result.update(exit_code=box["out"].exit_code, output=box["out"].output)
        _loopback("up")
        rerun = CliRunner().invoke(main, ["sync", str(db), "--to", url, "--json"])
        result.update(rerun_code=rerun.exit_code, rerun=rerun.output.strip().splitlines()[-1:])
        return result
    finally:
        _loopback("up")
        pg.stop()


if __name__ == "__main__":
    # to descriptor 1 itself: a sync still running holds CliRunner's stand-in for sys.stdout
    os.write(1, (json.dumps(main_(Path(sys.argv[1]))) + "\n").encode())
    os._exit(0)  # daemon threads blocked on dead sockets
