"""Decision-for-decision check of the device pipeline against another source tree (e.g. ``main``
unpacked with ``git archive``): the same ``edgekit screen`` runs with each tree, and every record
must agree.

    python -m edgekit.benchmarks.pipeline_equality --ref DIR [--crops N] [--fields N] [--tol 1e-6]

Runs ``screen`` of N NIH crops (the speed benchmark's set) and ``screen --fields`` of N IML fields
(every 21st, 2 threads) into a fresh database per tree, then compares, record by record (keyed by
source id): status, reason, label, decision, content hash, p_positive / probability / domain score
within ``--tol``; the fields' sharpness and signature; the crops kept for review (decoded pixels,
not PNG bytes); and the patient summaries. Exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECORD_KEYS = ("status", "reason", "label", "decision", "content_hash")
FLOAT_KEYS = ("p_positive", "probability", "domain_score")


def screen(src: Path, db: Path, args: list[str]) -> dict[str, Any]:
    """``edgekit screen ARGS --db DB --json`` with ``src`` first on the path; its summary."""
    env = {**os.environ, "PYTHONPATH": str(src), "OPENCV_LOG_LEVEL": "OFF"}
    out = subprocess.run([sys.executable, "-m", "edgekit", "screen", *args, "--db", str(db), "--json",
                          "--no-progress", "--stop-cells", "0"], cwd=src, env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def records(db: Path) -> dict[str, dict[str, Any]]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    rows = {r["source_id"]: dict(r) for r in con.execute("SELECT * FROM records")}
    for r in con.execute("SELECT r.source_id, c.png FROM crop_images c JOIN records r ON r.id = c.record_id"):
        rows[r[0]]["png"] = r[1]
    rows.update({f"field:{r['source_id']}": {"sharpness": r["sharpness"], "signature": r["signature"],
                                             "status": r["status"]}
                 for r in con.execute("SELECT * FROM fields")})
    con.close()
    return rows


def compare(ref: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]], tol: float) -> list[str]:
    """Every difference, as one line each."""
    import cv2
    import numpy as np

    diffs = [f"{k}: only in {'ref' if k in ref else 'new'}" for k in sorted(set(ref) ^ set(new))]
    for key in sorted(set(ref) & set(new)):
        a, b = ref[key], new[key]
        for k in (*RECORD_KEYS, "status", "signature"):
            if a.get(k) != b.get(k):
                diffs.append(f"{key}: {k} {a.get(k)!r} != {b.get(k)!r}")
        for k in (*FLOAT_KEYS, "sharpness"):
            x, y = a.get(k), b.get(k)
            if (x is None) != (y is None) or (x is not None and abs(x - y) > tol):
                diffs.append(f"{key}: {k} {x!r} != {y!r}")
        if ("png" in a) != ("png" in b):
            diffs.append(f"{key}: review crop kept in one run only")
        elif "png" in a and a["png"] != b["png"]:
            pa, pb = (cv2.imdecode(np.frombuffer(v["png"], np.uint8), cv2.IMREAD_UNCHANGED) for v in (a, b))
            if pa.shape != pb.shape or not np.array_equal(pa, pb):
                diffs.append(f"{key}: review crop pixels differ")
    return diffs


def main(argv: list[str] | None = None) -> int:
    from edgekit.benchmarks.speed import CACHE, iml_fields, patient_crops

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", type=Path, required=True, help="The source tree to compare against.")
    ap.add_argument("--new", type=Path, default=ROOT, help="Default: this tree.")
    ap.add_argument("--crops", type=int, default=1000)
    ap.add_argument("--fields", type=int, default=8)
    ap.add_argument("--tol", type=float, default=1e-6)
    args = ap.parse_args(argv)
    crops = patient_crops(CACHE, args.crops) if args.crops else None
    fields = iml_fields()[: args.fields]
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for what, run_args in (("crops", [str(crops), "--patient", "EQ"] if crops else None),
                               ("fields", [*map(str, fields), "--fields", "--threads", "2",
                                           "--patient", "EQF"] if fields else None)):
            if run_args is None:
                continue
            dbs, sums = {}, {}
            for name, src in (("ref", args.ref.resolve()), ("new", args.new.resolve())):
                dbs[name] = Path(tmp) / f"{what}-{name}.sqlite"
                sums[name] = screen(src, dbs[name], run_args)
            ref, new = records(dbs["ref"]), records(dbs["new"])
            diffs = compare(ref, new, args.tol)
            if sums["ref"] != sums["new"]:
                diffs.append(f"summary {sums['ref']} != {sums['new']}")
            n_rec = sum(1 for k in ref if not k.startswith("field:"))
            kept = sum(1 for v in ref.values() if "png" in v)
            print(f"{what}: {n_rec} records, {kept} review crops, summary {sums['new'].get('crops')} cells"
                  f" / {sums['new'].get('parasitized')} parasitized / decision {sums['new'].get('decision')}:"
                  f" {'IDENTICAL' if not diffs else f'{len(diffs)} differences'}")
            if diffs:
                changed = sum(1 for k in set(ref) & set(new) if not k.startswith("field:")
                              and ref[k].get("decision") != new[k].get("decision"))
                was = sums["ref"]
                print(f"    decisions changed on {changed} records; ref summary {was.get('crops')} cells"
                      f" / {was.get('parasitized')} parasitized / decision {was.get('decision')}")
            for line in diffs[:20]:
                print("   ", line)
            bad += len(diffs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
