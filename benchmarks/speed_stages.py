"""Where `screen` spends its CPU, stage by stage and thread by thread, for one or more source trees:
the profile behind issue 26's rows (``screen`` of 1,000 NIH crops, ``screen --fields`` of 8 IML
fields with 2 threads, the speed benchmark's inputs).

    python -m edgekit.benchmarks.speed_stages [--src NAME=DIR ...] [--rounds 3]
        [--out benchmarks/results/speed_stages.json]

Each run is a fresh process (``--child``) with ``DIR`` first on the path, the trees alternating per
round. Every stage function is wrapped to add up its own thread's CPU time
(``time.thread_time``), so a stage run in worker threads is counted there, not where its result is
awaited; the process's CPU (user + system) and peak RSS come from ``getrusage``. Medians of rounds.
A stage missing from a tree is left out of its row.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# (module, function, stage): the stages of `screen`, by the functions that run them
STAGES = (
    ("edgekit.device.screening", "_segment_one", "field: decode + focus + find cells"),
    # within it (its own thread), from round 14
    ("edgekit.device.field.quality", "field_focus", "field: focus measure (within the above)"),
    ("edgekit.device.field", "count_cells", "field: gate + find cells (within the above)"),
    ("edgekit.device.screening", "CutField.of", "field: cut the cells + signature (within the above)"),
    ("edgekit.device.screening", "check_field", "field: session check (identity, focus rule)"),
    ("edgekit.device.screening", "field_items", "field: cut the cells"),
    ("edgekit.device.screening", "_triage", "hash + skip the recorded"),
    ("edgekit.device.pipeline", "_load_one", "crop: decode, domain features, gates (+ prepare < round 10)"),
    ("edgekit.device.pipeline", "predict_loaded", "model (+ prepare from round 10; caller's thread)"),
    ("edgekit.device.review", "_crop_png", "review crops: PNG"),
    ("edgekit.device.records", "RecordStore.add_records", "SQLite writes"),
)


def _child(argv: list[str]) -> None:
    """Run ``edgekit ARGV`` in this process with every stage timed; print one JSON line on stderr."""
    import importlib
    import resource

    t0 = time.perf_counter()
    spent: dict[str, float] = {}
    lock = threading.Lock()

    def timed(fn: Any, stage: str) -> Any:
        def run(*a: Any, **k: Any) -> Any:
            t = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                with lock:
                    spent[stage] = spent.get(stage, 0.0) + time.thread_time() - t
        return run

    for module, name, stage in STAGES:
        mod = importlib.import_module(module)
        owner, _, attr = name.rpartition(".")
        target = getattr(mod, owner) if owner else mod
        if hasattr(target, attr):
            setattr(target, attr, timed(getattr(target, attr), stage))
    # modules that imported a stage function by name call it through their own binding
    screening = importlib.import_module("edgekit.device.screening")
    pipeline = importlib.import_module("edgekit.device.pipeline")
    for name in ("predict_loaded", "_load_one"):
        if hasattr(screening, name) and hasattr(pipeline, name):
            setattr(screening, name, getattr(pipeline, name))
    from edgekit.cli import main

    try:
        main(argv, standalone_mode=False)
    finally:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({"wall_s": time.perf_counter() - t0, "cpu_s": ru.ru_utime + ru.ru_stime,
                          "peak_rss_mb": ru.ru_maxrss / 1024, "main_thread_cpu_s": time.thread_time(),
                          "stages": spent}), file=sys.stderr)


def run_one(src: Path, args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src), "OPENCV_LOG_LEVEL": "OFF"}
    # this file runs the child (an older tree may not have it); ``src``'s edgekit is the one timed
    code = ("import importlib.util as u, sys; s = u.spec_from_file_location('speed_stages', sys.argv[1]);"
            " m = u.module_from_spec(s); s.loader.exec_module(m); m.main(['--child', *sys.argv[2:]])")
    proc = subprocess.run([sys.executable, "-c", code, __file__, *args], cwd=src, env=env,
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"screen failed with {src}: {proc.stderr.strip()[-500:]}")
    return json.loads(lines[-1])


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds (peak RSS: the largest)."""
    stages = sorted({k for r in runs for k in r["stages"]})
    return {"wall_s": statistics.median(r["wall_s"] for r in runs),
            "cpu_s": statistics.median(r["cpu_s"] for r in runs),
            "main_thread_cpu_s": statistics.median(r["main_thread_cpu_s"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "stages": {s: statistics.median(r["stages"].get(s, 0.0) for r in runs) for s in stages},
            "rounds": len(runs)}


def report(result: dict[str, Any]) -> str:
    lines = []
    for what, by_src in result["runs"].items():
        names = list(by_src)
        lines += ["", f"{what} (CPU seconds per stage, median of {result['rounds']} rounds, each stage in"
                  " the thread that ran it):", "", f"| stage | {' | '.join(names)} |",
                  "|---|" + "---|" * len(names)]
        stages = sorted({s for d in by_src.values() for s in d["stages"]},
                        key=lambda s: -max(d["stages"].get(s, 0.0) for d in by_src.values()))
        for s in stages:
            lines.append(f"| {s} | " + " | ".join(f"{d['stages'].get(s, 0.0):.3f}" for d in by_src.values())
                         + " |")
        for key, label in (("main_thread_cpu_s", "main thread, all of it"), ("cpu_s", "process CPU"),
                           ("wall_s", "wall (shared machine)"), ("peak_rss_mb", "peak RSS MB")):
            lines.append(f"| **{label}** | " + " | ".join(f"{d[key]:.2f}" for d in by_src.values()) + " |")
    return "\n".join(lines).lstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1:])
        return {}
    from edgekit.benchmarks.speed import CACHE, N_CROPS, iml_fields, patient_crops, source_ref

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", action="append", default=[], help="NAME=DIR (repeat; default: this tree).")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="JSON results (and a .md beside it).")
    args = ap.parse_args(argv)
    srcs = {s.partition("=")[0]: Path(s.partition("=")[2]).resolve() for s in args.src} or {"current": ROOT}
    crops, fields = patient_crops(CACHE, N_CROPS), iml_fields()
    runs: dict[str, dict[str, list]] = {"screen 1,000 NIH crops": {n: [] for n in srcs},
                                        "screen --fields, 8 IML fields, 2 threads": {n: [] for n in srcs}}
    names = list(srcs)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                common = ["--no-progress", "--stop-cells", "0", "--json", "--threads", "2"]
                db = str(Path(tmp) / f"{name}-{r}.sqlite")
                runs["screen 1,000 NIH crops"][name].append(
                    run_one(srcs[name], ["screen", str(crops), "--patient", "C", "--db", db, *common]))
                runs["screen --fields, 8 IML fields, 2 threads"][name].append(
                    run_one(srcs[name], ["screen", *map(str, fields), "--fields", "--patient", "F",
                                         "--db", db, *common]))
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rounds": args.rounds,
              "load_avg": os.getloadavg(), "sources": {n: source_ref(p) for n, p in srcs.items()},
              "runs": {what: {n: summarize(v) for n, v in by.items()} for what, by in runs.items()}}
    text = report(result)
    print(text)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(text)
    return result


if __name__ == "__main__":
    main()
