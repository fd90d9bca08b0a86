"""Side-by-side table of several ``edgekit bench`` runs (one per model), for choosing a model.

    python -m edgekit.benchmarks.compare w8=runs/bench-w8 w16=runs/bench-w16 [--formats tflite_int8,onnx_int8]
        [--threads 1] [--untrained seed]

Reads each run's ``bench.json``; prints Markdown. Models named in ``--untrained`` have their
accuracy columns blanked (random weights: only size, speed and memory mean anything).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgekit.benchmarks.report import auc_ci, md_table, pct_ci
from edgekit.manifest import load_manifest


def _params(bundle: str) -> str:
    try:
        n = load_manifest(bundle).training.get("parameters")
        return f"{n:,}" if n else "?"
    except Exception:  # the bundle is not here any more: the table still shows the measured rows
        return "?"


def table(runs: dict[str, Path], formats: list[str], threads: int, untrained: set[str]) -> str:
    cols = ["model", "params", "format", "status", "size kB", "p50 ms", "peak RSS MB", "accuracy %",
            "sensitivity %", "specificity %", "AUC", "infected patients positive", "controls not positive",
            "patients referred"]
    lines = []
    for name, folder in runs.items():
        data = json.loads((Path(folder) / "bench.json").read_text())
        params = _params(data["meta"]["bundle"])
        for r in data["rows"]:
            if r["format"] not in formats or r["threads"] != threads:
                continue
            patient = (data.get("details", {}).get(f"{r['format']}@{threads}") or {}).get("patient")
            if name in untrained:
                cells = ["untrained"] * 4 + ["-"] * 3
            else:
                cells = [pct_ci(r, "accuracy"), pct_ci(r, "sensitivity"), pct_ci(r, "specificity"), auc_ci(r)]
                if patient:
                    sens, spec = patient["sensitivity"], patient["specificity"]
                    cells += [f"{sens['k']}/{sens['n']}", f"{spec['k']}/{spec['n']}",
                              str(patient["referred"])]
                else:
                    cells += ["-"] * 3
            p50, rss = r.get("latency_p50_ms"), r.get("peak_rss_mb")
            lines.append([name, params, r["format"], r["status"], f"{1000 * r['size_mb']:.0f}",
                          f"{p50:.2f}" if p50 else "-", f"{rss:.0f}" if rss else "-", *cells])
    return md_table(cols, lines)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="NAME=BENCH_FOLDER")
    ap.add_argument("--formats", default="keras,tflite_int8,onnx_int8")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--untrained", default="", help="comma-separated model names with random weights")
    args = ap.parse_args(argv)
    runs = dict(item.split("=", 1) for item in args.runs)
    text = table({k: Path(v) for k, v in runs.items()}, args.formats.split(","), args.threads,
                 set(filter(None, args.untrained.split(","))))
    print(text)
    return text


if __name__ == "__main__":
    main()
