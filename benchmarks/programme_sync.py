"""What `edgekit sync` and `edgekit programme report` cost at 100,000 cell records (issue 25.4).

    python benchmarks/programme_sync.py [--records 100000] [--per-session 1000] [--batch 5000] [-o FILE]

Starts a throwaway PostgreSQL (Debian's initdb + pg_ctl, Unix socket, fsync off), builds one
station database (sessions of ``--per-session`` cells cut from 10 whole fields, 2% with kept crops,
1% reviewed), then times each step as its own `edgekit` process and reads its peak RSS: the first
sync (everything new), an incremental re-sync (nothing new), a full re-sync (``--full``: every row
offered again, the server keeps one copy), and the report (json). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_station(path: Path, records: int, per_session: int) -> dict[str, int]:
    from edgekit.device.domain import FEATURES
    from edgekit.device.records import RecordStore, ScreenedWith
    from edgekit.manifest import Decision, Domain, PatientRule, Thresholds

    k = len(FEATURES)
    domain = Domain(features=list(FEATURES), mean=[0.0] * k,
                    inv_cov=[[float(i == j) for j in range(k)] for i in range(k)],
                    field_threshold=3.0, session_threshold=2.5)
    rule = Decision(labels=("Parasitized", "Uninfected"), positive_label="Parasitized",
                    thresholds=Thresholds(positive=0.999, negative=0.1, cutoff=0.5), rule=PatientRule())
    with_ = ScreenedWith("b" * 64, None, "signature not checked", domain)
    n = 0
    with RecordStore(path) as store:
        for p in range(-(-records // per_session)):
            s = store.open_session(f"P{p:05d}", "a" * 64, site=f"site{p % 4}", decision=rule,
                                   screened_with=with_)
            m = min(per_session, records - n)
            rows, crops = [], {}
            for i in range(m):
                h = hashlib.sha256(f"{p}/{i}".encode()).hexdigest()
                pos = i % 50 == 0
                rows.append({"source_id": f"f{i % 10}.jpg#{i}", "source_kind": "field", "content_hash": h,
                             "status": "classified", "label": "Parasitized" if pos else "Uninfected",
                             "probability": 0.9995 if pos else 0.98, "p_positive": 0.9995 if pos else 0.02,
                             "decision": "positive" if pos else "negative",
                             "probabilities": [0.0005, 0.9995] if pos else [0.98, 0.02],
                             "domain_score": 1.0 + (p % 4 == 3) * 8.0})
                if i % 50 == 0:
                    crops[h] = os.urandom(2000)
            store.add_records(s, rows, crops)
            ids = [int(r["id"]) for r in store.records(s.id)[: max(1, m // 100)]]
            store.set_reviews(s.id, [(i, "not parasitized") for i in ids], reviewer="bench")
            n += m
        counts = {t: store.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in ("sessions", "records", "crop_images", "reviews")}
    return counts


def timed(cmd: list[str], keep: bool = False) -> dict:
    """Run one edgekit process: its wall time and its own peak RSS (MiB, from wait4)."""
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=so, stderr=se, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        so.seek(0)
        se.seek(0)
        stdout, stderr = so.read(), se.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[3:5])} failed: {stderr.strip()[-300:]}")
    return {"seconds": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "stdout": stdout.strip() if keep else stdout.strip()[:200]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--per-session", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("-o", "--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()

    from edgekit.programme.pgtemp import NoPostgres, PgServer

    try:
        pg = PgServer().start()
    except NoPostgres as exc:
        raise SystemExit(f"error: {exc}") from None
    try:
        db = pg.create_db()
        edgekit = [sys.executable, "-m", "edgekit"]
        out: dict = {"records": args.records, "per_session": args.per_session, "batch": args.batch,
                     "cpus": os.cpu_count()}
        out["migrate"] = timed([*edgekit, "programme", "migrate", "--to", pg.url(db)])
        with pg.admin() as conn:
            for role, group in (("bench_station", "edgekit_station"), ("bench_reader", "edgekit_reader")):
                conn.execute(f"DROP ROLE IF EXISTS {role}")
                conn.execute(f"CREATE ROLE {role} LOGIN IN ROLE {group}")
        with tempfile.TemporaryDirectory() as tmp:
            station = Path(tmp) / "station.sqlite"
            t0 = time.perf_counter()
            out["local"] = build_station(station, args.records, args.per_session)
            out["build_seconds"] = round(time.perf_counter() - t0, 1)
            out["sqlite_mib"] = round(station.stat().st_size / 2**20, 1)
            url = pg.url(db, "bench_station")
            base = [*edgekit, "sync", str(station), "--to", url, "--json", "--batch", str(args.batch)]
            out["first_sync"] = timed(base)
            out["resync_nothing_new"] = timed(base)
            out["full_resync"] = timed([*base, "--full"])
            rep = timed([*edgekit, "programme", "report", "--from", pg.url(db, "bench_reader")], keep=True)
            rep["stdout"] = f"{len(json.loads(rep['stdout'])['rows'])} rows (site x week)"
            out["report_json"] = rep
        with pg.admin(db) as conn:
            out["server_records"] = conn.execute("SELECT count(*) FROM records").fetchone()[0]
            out["server_mib"] = round(conn.execute("SELECT pg_database_size(current_database())")
                                      .fetchone()[0] / 2**20, 1)
    finally:
        pg.stop()
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
