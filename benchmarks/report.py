"""Benchmark outputs: JSON, CSV, a Markdown table, and plots (matplotlib imported only to draw)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit.manifest import atomic_write_text

COLUMNS = (
    "format", "runtime", "threads", "profile", "status", "message", "file", "size_mb", "import_ms", "load_ms",
    "model_rss_mb", "first_inference_ms", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
    "latency_mean_ms", "batch", "throughput_ips", "peak_rss_mb", "peak_rss_batch_mb", "n",
    "accuracy", "accuracy_lo", "accuracy_hi", "sensitivity", "sensitivity_lo", "sensitivity_hi",
    "specificity", "specificity_lo", "specificity_hi", "f1", "auc", "auc_lo", "auc_hi", "top1_accuracy",
    "agreement", "mean_abs_dp", "patients", "patient_fraction_mae_pts", "patient_sensitivity",
    "patient_sensitivity_lo", "patient_sensitivity_hi", "patient_specificity", "patient_specificity_lo",
    "patient_specificity_hi", "patients_referred",
    "threads_effective", "cpu_per_wall", "delegate", "delegated_ops", "intra_op_threads",
)
FILES = {"json": "bench.json", "csv": "bench.csv", "markdown": "bench.md", "tradeoff": "bench_tradeoff.png",
         "roc": "bench_roc.png", "patients": "bench_patients.png"}


def _clean(value: Any) -> Any:
    """NaN -> None, so the JSON is standard."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def to_csv(rows: list[dict[str, Any]], columns: tuple[str, ...] | list[str] = COLUMNS) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if _clean(row.get(k)) is None else row.get(k)) for k in columns})
    return buf.getvalue()


def num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def pct_ci(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    lo, hi = row.get(f"{key}_lo"), row.get(f"{key}_hi")
    if lo is None or hi is None or any(math.isnan(v) for v in (lo, hi)):
        return f"{100 * value:.1f}"
    return f"{100 * value:.1f} ({100 * lo:.1f}–{100 * hi:.1f})"


def auc_ci(row: dict[str, Any]) -> str:
    """AUC with its 95% interval, 4 digits."""
    if row.get("auc") is None:
        return "–"
    return f"{num(row['auc'], 4)} ({num(row.get('auc_lo'), 4)}–{num(row.get('auc_hi'), 4)})"


def threads_cell(row: dict[str, Any]) -> str:
    """Requested threads, and in brackets what the process really ran with when it differs or was seen."""
    eff = row.get("threads_effective")
    return str(row["threads"]) if eff is None else f"{row['threads']} ({eff})"


def delegate_cell(row: dict[str, Any]) -> str:
    delegate = row.get("delegate") or "–"
    return f"{delegate} {row['delegated_ops']} ops" if row.get("delegated_ops") else delegate


def md_table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out)


def markdown_tables(rows: list[dict[str, Any]]) -> str:
    """Speed/memory table, then cell-level and patient-level accuracy (95% CIs in brackets)."""
    speed = md_table(
        ["format", "runtime", "threads (effective)", "delegate", "status", "size MB", "load ms", "first ms",
         "p50 ms", "p95 ms", "p99 ms", "img/s @batch", "peak RSS MB"],
        [[r["format"], r.get("runtime") or "–", threads_cell(r), delegate_cell(r), r["status"],
          num(r.get("size_mb"), 3),
          num(r.get("load_ms")), num(r.get("first_inference_ms")), num(r.get("latency_p50_ms"), 2),
          num(r.get("latency_p95_ms"), 2), num(r.get("latency_p99_ms"), 2),
          (f"{num(r.get('throughput_ips'), 0)} @{r['batch']}" if r.get("throughput_ips") else "–"),
          num(r.get("peak_rss_mb"), 0)]
         for r in rows],
    )
    measured = [r for r in rows if r.get("agreement") is not None or r.get("accuracy") is not None]
    accuracy = md_table(
        ["format", "threads", "accuracy %", "sensitivity %", "specificity %", "F1", "AUC", "agree w/ Keras %",
         "patient frac. MAE pts", "patient sens. %", "patient spec. %"],
        [[r["format"], str(r["threads"]), pct_ci(r, "accuracy"), pct_ci(r, "sensitivity"),
          pct_ci(r, "specificity"), num(r.get("f1"), 3),
          auc_ci(r),
          num(100 * r["agreement"], 2) if r.get("agreement") is not None else "–",
          num(r.get("patient_fraction_mae_pts"), 2), pct_ci(r, "patient_sensitivity"),
          pct_ci(r, "patient_specificity")] for r in measured],
    )
    problems = [f"- {r['format']} @{r['threads']}: **{r['status']}** — {r.get('message', '')}"
                for r in rows if r["status"] != "ok"]
    parts = [speed, "", accuracy]
    if problems:
        parts += ["", "Rows not ok:", *problems]
    return "\n".join(parts) + "\n"


def markdown_report(result: dict[str, Any], comparisons: list[dict[str, Any]] | None = None) -> str:
    m = result["meta"]
    prof, host = m["profile"], m["host"]
    lines = [
        f"# Benchmark: {m['model']} ({m['bundle']})", "",
        f"- data: {m['data']}: {m['images']} images ({m['images_with_known_label']} with a model label), "
        f"{m['groups']} patients/groups; positive label {m['positive_label']}, cell cutoff {m['cutoff']:.3f}",
        f"- host: {host['cpu']} ({host['machine']}), {host['cores_available']} cores available"
        + (f"; board: {host['board']}" if host.get("board") else ""),
        f"- profile: {prof['name']} ({prof['description']}), pinned to cores {prof['cores_used']}; "
        + ("measured on the detected board" if host.get("board_profile") == prof["name"] and
           host["machine"] in ("aarch64", "arm64")
           else "profiles approximate a board with fewer of the same x86 cores, not its ARM speed"),
        f"- latency: batch 1 after {m['warmup']} warm-up runs, {m['runs']} timed runs; throughput at batch "
        f"{m['batch']} over the whole set; each row in its own process; peak RSS = VmHWM after load and the "
        "batch-1 runs (the batch pass also pages in the memory-mapped image set)",
        f"- {m['date']}", "", markdown_tables(result["rows"]),
    ]
    if comparisons:
        lines += ["", "Against the reference:", "",
                  md_table(["format", "threads", "metric", "measured", "reference", "band ±", "verdict"],
                         [[c["format"], str(c["threads"]), c["metric"], num(c["measured"], 3),
                           num(c["reference"], 3), num(c["band"], 3), c["verdict"]] for c in comparisons])]
    return "\n".join(lines) + "\n"


PLOTS_SKIPPED = ("plots skipped: matplotlib is not installed (a device install has no plotting; "
                 "pip install matplotlib for the PNGs); the results are written")


def write_outputs(result: dict[str, Any], out_dir: str | Path, plots: bool = True,
                  comparisons: list[dict[str, Any]] | None = None,
                  log: Callable[[str], None] | None = None) -> dict[str, Path]:
    """bench.json, bench.csv, bench.md and (with ``plots``) the PNGs; returns their paths. Without
    matplotlib (a device install) the plots are skipped with one line through ``log``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in FILES.items()}
    payload = _clean({**result, "reference": comparisons or []})
    atomic_write_text(paths["json"], json.dumps(payload, indent=1) + "\n")
    atomic_write_text(paths["csv"], to_csv(result["rows"]))
    atomic_write_text(paths["markdown"], markdown_report(result, comparisons))
    written = {k: paths[k] for k in ("json", "csv", "markdown")}
    if plots:
        try:
            written.update(write_plots(result, out))
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] != "matplotlib":
                raise
            (log or print)(PLOTS_SKIPPED)
    return written


def write_plots(result: dict[str, Any], out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r.get("latency_p50_ms") is not None]
    written: dict[str, Path] = {}
    if rows:
        written["tradeoff"] = _plot_tradeoff(plt, rows, out / FILES["tradeoff"])
    details = result.get("details", {})
    if any(d.get("roc") for d in details.values()):
        written["roc"] = _plot_roc(plt, details, out / FILES["roc"])
    if any(d.get("patient") for d in details.values()):
        written["patients"] = _plot_patients(plt, details, out / FILES["patients"])
    return written


def _colours(plt, names: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {name: cmap(i % 10) for i, name in enumerate(dict.fromkeys(names))}


def _plot_tradeoff(plt, rows: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy vs latency (marker area = file size) and latency vs file size; colour = format,
    marker shape = thread count; log axes when values span more than 10x."""
    colours = _colours(plt, [r["format"] for r in rows])
    shapes = dict(zip(sorted({r["threads"] for r in rows}), "osD^v<>p*h", strict=False))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.5))
    sizes = [r.get("size_mb") or 0.0 for r in rows]
    biggest = max(sizes) or 1.0
    for r, size in zip(rows, sizes, strict=True):
        style = {"color": colours[r["format"]], "marker": shapes.get(r["threads"], "o"), "edgecolors": "k"}
        acc = r.get("accuracy")
        if acc is not None and not math.isnan(acc):
            ax1.scatter(r["latency_p50_ms"], 100 * acc, s=40 + 600 * size / biggest, alpha=0.6, **style)
            if r.get("accuracy_lo") is not None and r.get("accuracy_hi") is not None:
                err = [[100 * (acc - r["accuracy_lo"])], [100 * (r["accuracy_hi"] - acc)]]
                ax1.errorbar(r["latency_p50_ms"], 100 * acc, yerr=err, fmt="none", ecolor=style["color"],
                             alpha=0.5, capsize=3)
        ax2.scatter(size, r["latency_p50_ms"], s=60, alpha=0.8, **style)
    handles = [plt.Line2D([], [], ls="", marker="o", color=c, markeredgecolor="k", label=f)
               for f, c in colours.items()]
    handles += [plt.Line2D([], [], ls="", marker=m, color="grey", label=f"{t} thread{'s' * (t > 1)}")
                for t, m in shapes.items()]
    ax2.legend(handles=handles, fontsize=8, loc="best")
    latencies = [r["latency_p50_ms"] for r in rows if r["latency_p50_ms"]]
    if latencies and max(latencies) > 10 * min(latencies):
        ax1.set_xscale("log")
        ax2.set_yscale("log")
    if sizes and min(sizes) > 0 and max(sizes) > 10 * min(sizes):
        ax2.set_xscale("log")
    ax1.set_xlabel("latency p50 at batch 1 (ms)")
    ax1.set_ylabel("cell accuracy (%)")
    ax1.set_title("accuracy (95% CI) vs latency; marker area ∝ file size")
    ax2.set_xlabel("file size (MB)")
    ax2.set_ylabel("latency p50 at batch 1 (ms)")
    ax2.set_title("latency vs file size")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _one_per_format(details: dict[str, Any], key: str) -> dict[str, Any]:
    """The first thread count's result for each format (predictions do not depend on threads)."""
    chosen: dict[str, Any] = {}
    for name, d in details.items():
        fmt = name.rsplit("@", 1)[0]
        if d.get(key) and fmt not in chosen:
            chosen[fmt] = d
    return chosen


def _plot_roc(plt, details: dict[str, Any], path: Path) -> Path:
    per_format = _one_per_format(details, "roc")
    colours = _colours(plt, list(per_format))
    fig, ax = plt.subplots(figsize=(6, 6))
    for fmt, d in per_format.items():
        auc = (d.get("cell") or {}).get("auc", {}).get("value")
        ax.plot(d["roc"]["fpr"], d["roc"]["tpr"], color=colours[fmt], lw=1.5,
                label=f"{fmt} (AUC {auc:.4f})" if auc is not None else fmt)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    return _finish(plt, fig, ax, path, "false-positive rate (1 − specificity)",
                   "true-positive rate (sensitivity)", "cell-level ROC per format", "lower right")


def _finish(plt, fig, ax, path: Path, xlabel: str, ylabel: str, title: str, legend: str) -> Path:
    """Labels, legend and grid of a square diagonal-reference plot; save and close it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc=legend, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_patients(plt, details: dict[str, Any], path: Path) -> Path:
    per_format = _one_per_format(details, "patient")
    colours = _colours(plt, list(per_format))
    fig, ax = plt.subplots(figsize=(6, 6))
    for (fmt, d), marker in zip(per_format.items(), "os^Dv<>ph*", strict=False):
        pats = d["patient"]["per_patient"]
        ax.scatter([100 * p["labelled_fraction"] for p in pats],
                   [100 * p["predicted_fraction"] for p in pats], color=colours[fmt], marker=marker,
                   alpha=0.5, s=30,
                   label=f"{fmt} (MAE {d['patient']['fraction_mae_points']:.2f} pts)")
    ax.plot([0, 100], [0, 100], "k:", lw=0.8)
    return _finish(plt, fig, ax, path, "labelled parasitized cells per patient (%)",
                   "predicted parasitized cells per patient (%)",
                   "patient-level: predicted vs labelled fraction", "upper left")
