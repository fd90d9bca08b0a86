"""Speed benchmark: per-crop model latency against MalariaScreener's model, and the device pipeline
end to end (screen 1,000 crops, screen 8 whole fields, cold start, peak RSS), in one run.

    python -m edgekit.benchmarks.speed [--bundle DIR] [--old-bundle DIR] [--src NAME=DIR[@BUNDLE] ...]
        [--rounds 3] [--out benchmarks/results/speed.json]

Per-crop latency: the default bundle's model (``--bundle``, default: the shipped one), the old
default (``--old-bundle``), the seed-sized ResNet as int8 (random weights; exported once into the
cache, needs TensorFlow) and NIH MalariaScreener's float model (``../shared/peers/malariascreener``,
44x44, pixels / 255), each at batch 1 and 64 on 1 and 2 threads. The models alternate inside every
round (the order rotating), so a noisy machine slows them alike; medians over rounds.

End to end, each ``--src`` (a source tree, e.g. an older checkout from ``git archive``; default:
this one) runs the same commands as subprocesses, alternating per round:
``edgekit screen`` of 1,000 NIH crops into a fresh database (NIH patients hold at most 687 crops:
all of P4 plus the first 313 of P60, under one patient id), ``edgekit screen --fields`` of 8 IML
fields (every 21st of the set) with 2 threads, and cold start (process start to the first printed
result of ``edgekit classify`` on one crop); each tree is byte-compiled first, as an install is.
Wall and CPU seconds (user + system of the child) and peak RSS (the child's ``ru_maxrss``) are
recorded. Ratios are printed against MalariaScreener, the old default, and the first ``--src``.

Last, the four rows of issue 26 against their targets, one column per ``--src`` (per-crop model
time: batch 1, 1 thread, against MalariaScreener; ``screen`` of 1,000 crops as a multiple of the
default model's own time for them; ``screen --fields``; cold start), with the CPU's model and its
vector flags (AVX2, AVX-512, VNNI, NEON...), since the int8 kernels and so the ratios depend on them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.paths import shared_data

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgekit" / "speed"
PEER = shared_data().parent / "peers" / "malariascreener" / "malaria_thinsmear_44.tflite"
PATIENTS = ("P4", "P60")  # the two NIH patients with the most crops (687 and 632)
N_CROPS = 1000
FIELD_STEP, N_FIELDS = 21, 8


# --------------------------------------------------------------------------- inputs


def patient_crops(cache: Path, n: int = N_CROPS) -> Path:
    """A folder of ``n`` symlinks to NIH crops (all of P4, then P60), made once in the cache."""
    folder = cache / f"nih_crops_{n}"
    if folder.is_dir() and len(list(folder.iterdir())) == n:
        return folder
    cells = shared_data("malaria_cells")
    with open(cells / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["patient"] in PATIENTS]
    rows.sort(key=lambda r: (PATIENTS.index(r["patient"]), r["file"]))
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} crops of {PATIENTS} in {cells}")
    folder.mkdir(parents=True, exist_ok=True)
    for r in rows[:n]:
        link = folder / r["file"]
        if not link.exists():
            link.symlink_to(cells / r["class"] / r["file"])
    return folder


def iml_fields() -> list[Path]:
    images = sorted((shared_data("malaria_fields_iml") / "images").iterdir())
    return images[::FIELD_STEP][:N_FIELDS]


def make_seed_model(path: Path) -> None:
    """Export the seed-sized ResNet (stages 3,4,6, filters 64-512), untrained, as int8 TFLite,
    calibrated on 100 NIH crops: for size and speed only. Needs TensorFlow (run in a subprocess)."""
    import keras

    from edgekit import formats
    from edgekit.device.preprocess import load_for_model
    from edgekit.export.tflite import convert_tflite
    from edgekit.manifest import Preprocessing
    from edgekit.model import build_resnet

    keras.utils.set_random_seed(0)
    model = build_resnet()
    pre = Preprocessing(input_size=(64, 64))
    files = sorted(patient_crops(path.parent).iterdir())[:100]
    calib = np.stack([load_for_model(f, pre) for f in files])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    convert_tflite(model, formats.get("tflite_int8"), tmp, calib, image_input=True)
    tmp.replace(path)


def seed_model(cache: Path) -> Path:
    path = cache / "seed_untrained_int8.tflite"
    if not path.is_file():
        print(f"exporting the seed-sized int8 model once into {path} (TensorFlow, ~1 min)", flush=True)
        subprocess.run([sys.executable, "-m", "edgekit.benchmarks.speed", "--make-seed", str(path)],
                       check=True, cwd=ROOT)
    return path


# --------------------------------------------------------------------------- per-crop latency


def _bundle_model(bundle: Path) -> tuple[Path, str]:
    """The model file a device would run for this bundle, and its runtime."""
    from edgekit.device.runtime import resolve_artifact
    from edgekit.manifest import load_manifest

    art = resolve_artifact(load_manifest(bundle))
    return bundle / art.path, art.runtime


def _inputs(backend: Any, crops: list[np.ndarray], batch: int) -> np.ndarray:
    """``batch`` real crops in the model's input size and type (MalariaScreener: RGB / 255,
    bicubic, as its app does; int8 bundles: uint8 pixels, area resize like ``prepare``)."""
    import cv2

    shape = backend.inputs[0].shape
    h, w = int(shape[1]), int(shape[2])
    floating = np.dtype(backend.inputs[0].dtype).kind == "f"
    interp = cv2.INTER_CUBIC if floating else cv2.INTER_AREA
    x = np.stack([cv2.resize(crops[i % len(crops)], (w, h), interpolation=interp) for i in range(batch)])
    return (x.astype(np.float32) / 255.0) if floating else x


def latency(models: dict[str, tuple[Path, str]], crops: list[np.ndarray], rounds: int,
            threads: tuple[int, ...] = (1, 2), batches: tuple[int, ...] = (1, 64)) -> list[dict[str, Any]]:
    """Per-crop milliseconds (median over rounds) for every model x threads x batch."""
    from edgekit.device.backends import open_backend

    rows = []
    for t in threads:
        backends = {name: open_backend(runtime, path, t) for name, (path, runtime) in models.items()}
        for batch in batches:
            xs = {name: _inputs(b, crops, batch) for name, b in backends.items()}
            calls = max(3, 192 // batch)
            times: dict[str, list[float]] = {name: [] for name in backends}
            names = list(backends)
            for r in range(rounds):
                for name in names[r % len(names):] + names[: r % len(names)]:
                    b, x = backends[name], xs[name]
                    b.run(x)  # warm-up (and the resize to this batch size)
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        b.run(x)
                    times[name].append((time.perf_counter() - t0) / (calls * batch) * 1000)
            for name in names:
                rows.append({"model": name, "threads": t, "batch": batch,
                             "ms_per_crop": statistics.median(times[name]), "rounds_ms": times[name]})
    return rows


# --------------------------------------------------------------------------- end to end


def _run(cmd: list[str], src: Path, first_line: bool = False) -> dict[str, Any]:
    """Run ``python -m edgekit ...`` with ``src`` first on the path: wall s (to exit, or to the
    first stdout line), CPU s (user + system) and peak RSS MB of the command.

    Peak RSS comes from GNU time when installed: a child's own ``ru_maxrss`` also counts the pages
    of the parent it was forked from (this benchmark, with its models loaded)."""
    env = {**os.environ, "PYTHONPATH": str(src), "OPENCV_LOG_LEVEL": "OFF"}
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as rss:
        wrap = ["/usr/bin/time", "-f", "%M", "-o", rss.name] if Path("/usr/bin/time").is_file() else []
        t0 = time.perf_counter()
        proc = subprocess.Popen([*wrap, sys.executable, "-m", "edgekit", *cmd], stdout=subprocess.PIPE,
                                stderr=err, env=env, cwd=src, text=True)
        first = proc.stdout.readline() if first_line else ""
        t_first = time.perf_counter() - t0
        out = first + proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
        text = rss.read().strip().splitlines()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:2])} failed ({proc.returncode}) with {src}:"
                         f" {stderr.strip()[-500:]}")
    peak_kb = int(text[-1]) if text and text[-1].isdigit() else usage.ru_maxrss
    return {"wall_s": t_first if first_line else wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": peak_kb / 1024, "stdout": out, "stderr": stderr}


def byte_compile(src: Path) -> None:
    """Write the ``.pyc`` files of a source tree, as installing a package does: a checkout run with
    ``PYTHONDONTWRITEBYTECODE`` set (as here) would otherwise compile every module it imports on
    every start, ~50 ms of each cold start that no installed device pays."""
    import compileall
    import re

    compileall.compile_dir(str(src), quiet=1, rx=re.compile(r"[/\\](\.git|_build|\.venv|node_modules)[/\\]"))


def source_ref(src: Path) -> str:
    """A source tree as results record it: its git commit (and whether it had edits), else its name
    (a tree unpacked inside another checkout, e.g. by ``git archive``, is not that checkout's commit);
    never a path of this machine."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True).stdout.strip()

    top = git("rev-parse", "--show-toplevel")
    commit = git("rev-parse", "--short", "HEAD") if top and Path(top).resolve() == src.resolve() else ""
    if not commit:
        return src.name
    edited = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit} (with uncommitted edits)" if edited else commit


def portable(path: Path) -> str:
    """A file or folder as results record it, never a path of this machine: ``$EDGEKIT_DATA/...``,
    else relative to the checkout, else its name."""
    from edgekit.paths import portable_path

    inside = ROOT in Path(path).resolve().parents
    return portable_path(path, ROOT, travels=False) if inside else portable_path(path)


def bundle_ref(bundle: Path | None) -> dict[str, str] | None:
    """A bundle as results record it: a :func:`portable` path and its manifest's sha256, which names
    the model exactly."""
    import hashlib

    if bundle is None:
        return None
    return {"path": portable(bundle),
            "manifest_sha256": hashlib.sha256((Path(bundle) / "manifest.json").read_bytes()).hexdigest()}


E2E_ROWS = ("screen", "fields", "cold")


def end_to_end(srcs: dict[str, tuple[Path, Path]], crops_dir: Path, fields: list[Path], rounds: int,
               cold_repeats: int = 3, rows: tuple[str, ...] = E2E_ROWS) -> dict[str, dict[str, Any]]:
    """The rows of :data:`E2E_ROWS` named in ``rows`` for every source, alternating per round."""
    one_crop = sorted(crops_dir.iterdir())[0]
    for src, _ in srcs.values():
        byte_compile(src)
    res: dict[str, dict[str, Any]] = {
        name: {"src": source_ref(src), "bundle": bundle_ref(bundle), "screen": [], "fields": [], "cold": []}
        for name, (src, bundle) in srcs.items()
    }
    names = list(srcs)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                src, bundle = srcs[name]
                db = Path(tmp) / f"{name}-{r}.sqlite"
                if "screen" in rows:
                    _screen_row(res[name], src, bundle, crops_dir, db)
                if "fields" in rows:
                    _fields_row(res[name], src, bundle, fields, db)
                for _ in range(cold_repeats if "cold" in rows else 0):
                    run = _run(["classify", str(one_crop), "--model", str(bundle), "--format", "jsonl",
                                "--no-progress"], src, first_line=True)
                    if not run["stdout"].startswith("{"):
                        raise SystemExit(f"{name}: classify printed no result: {run['stdout'][:200]!r}")
                    res[name]["cold"].append(_keep(run))
    return summarize_e2e(res)


def _screen_row(res: dict[str, Any], src: Path, bundle: Path, crops_dir: Path, db: Path) -> None:
    run = _run(["screen", str(crops_dir), "--patient", "SPEED", "--db", str(db), "--model", str(bundle),
                "--no-progress", "--stop-cells", "0", "--json"], src)
    summary = json.loads(run["stdout"].strip().splitlines()[-1])
    if summary["crops"] + summary["rejected"] + summary["failed"] != N_CROPS:
        raise SystemExit(f"{src}: screen recorded {summary} for {N_CROPS} crops")
    res["screen"].append({**_keep(run), "cells": summary["crops"]})


def _fields_row(res: dict[str, Any], src: Path, bundle: Path, fields: list[Path], db: Path) -> None:
    run = _run(["screen", *map(str, fields), "--fields", "--patient", "SPEEDF", "--db", str(db), "--model",
                str(bundle), "--threads", "2", "--no-progress", "--stop-cells", "0", "--json"], src)
    cells = json.loads(run["stdout"].strip().splitlines()[-1])["crops"]
    res["fields"].append({**_keep(run), "cells": cells})


def summarize_e2e(res: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Medians of the per-run numbers (wall, CPU) and the peak RSS of each kind of run."""
    for d in res.values():
        for key in ("screen", "fields", "cold"):
            runs = d.get(key) or []
            d[f"{key}_wall_s"] = statistics.median(x["wall_s"] for x in runs) if runs else None
            d[f"{key}_cpu_s"] = statistics.median(x["cpu_s"] for x in runs) if runs else None
            d[f"{key}_rss_mb"] = max((x["peak_rss_mb"] for x in runs if "peak_rss_mb" in x), default=None)
        d["fields_cells"] = d["fields"][0]["cells"] if d.get("fields") else None
    return res


def cpu_info() -> dict[str, Any]:
    """The CPU's model name and the vector flags that decide which int8 kernels run."""
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
              "amx_int8", "asimd", "asimddp", "i8mm", "sve")
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "CPU part") and model in ("", platform.machine()):
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        pass
    return {"model": model, "flags": [f for f in wanted if f in flags]}


# issue 26's rows: (label, target text, function of (e2e entry, default ms per crop, peer ms) -> (shown, ok))
TARGETS = {"per_crop_x": 8.0, "screen_x": 3.0, "screen_rss": 80.0, "fields_wall": 1.2, "fields_rss": 100.0,
           "cold_wall": 0.15}


def issue_rows(result: dict[str, Any]) -> list[str]:
    """Markdown table of issue 26's four rows, one column per source, each cell marked when it
    meets the target."""
    by = {(r["model"], r["threads"], r["batch"]): r["ms_per_crop"] for r in result.get("latency", [])}
    model_ms, peer_ms = by.get(("default", 1, 1)), by.get(("MalariaScreener", 1, 1))
    e2e = result.get("end_to_end") or {}
    names = list(e2e) or ["(no end-to-end run)"]

    per_crop = "-"
    if model_ms and peer_ms:
        x = peer_ms / model_ms
        per_crop = _mark(f"{model_ms:.3f} ms vs {peer_ms:.3f} ms: {x:.1f}x", x >= TARGETS["per_crop_x"])
    rows = {"per crop, int8, batch 1, 1 thread, vs MalariaScreener": ([per_crop] * len(names), ">= 8x"),
            f"screen {N_CROPS:,} NIH crops": ([], "<= 3x the model's time, <= 80 MB"),
            f"screen --fields of {N_FIELDS} IML fields, 2 threads": ([], "<= 1.2 s, <= 100 MB"),
            "cold start (classify of one crop)": ([], "<= 0.15 s")}
    keys = list(rows)
    for name in names:
        d = e2e.get(name)
        cells = _issue_cells(d, model_ms) if d is not None else ["-"] * 3
        for k, text in zip(keys[1:], cells, strict=True):
            rows[k][0].append(text)
    cpu = (result.get("machine") or {}).get("cpu") or {}
    lines = [f"Issue 26 (CPU: {cpu.get('model', '?')}; flags: {' '.join(cpu.get('flags', [])) or '?'}):", "",
             f"| | {' | '.join(names)} | target |", "|---|" + "---|" * (len(names) + 1)]
    lines += [f"| {k} | {' | '.join(cells)} | {target} |" for k, (cells, target) in rows.items()]
    return lines


def _mark(text: str, ok: bool | None) -> str:
    return text + ("" if ok is None else " ✓" if ok else " ✗")


def _issue_cells(d: dict[str, Any], model_ms: float | None) -> list[str]:
    """The screen, fields and cold-start cells of one source's column ("-" for a row not run)."""
    cells = ["-"] * 3
    if d.get("screen_wall_s") is not None:
        x = d["screen_wall_s"] / (N_CROPS * model_ms / 1000) if model_ms else None
        rss = d["screen_rss_mb"]
        text = f"{d['screen_wall_s']:.2f} s wall, {d['screen_cpu_s']:.2f} s CPU, {_mb(rss)} MB"
        if x is not None:
            text += f": {x:.1f}x the model's time"
        cells[0] = _mark(text, None if x is None or rss is None
                         else x <= TARGETS["screen_x"] and rss <= TARGETS["screen_rss"])
    if d.get("fields_wall_s") is not None:
        rss, wall = d["fields_rss_mb"], d["fields_wall_s"]
        cells[1] = _mark(f"{wall:.2f} s wall, {d['fields_cpu_s']:.2f} s CPU, {_mb(rss)} MB",
                         None if rss is None
                         else wall <= TARGETS["fields_wall"] and rss <= TARGETS["fields_rss"])
    if d.get("cold_wall_s") is not None:
        cells[2] = _mark(f"{d['cold_wall_s']:.3f} s, {_mb(d['cold_rss_mb'])} MB",
                         d["cold_wall_s"] <= TARGETS["cold_wall"])
    return cells


def _keep(run: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) for k, v in run.items() if k in ("wall_s", "cpu_s", "peak_rss_mb")}


# --------------------------------------------------------------------------- report


def report(result: dict[str, Any]) -> str:
    """Markdown tables with the ratios."""
    lines = ["Per-crop latency (ms, median of rounds; x = how many times faster than MalariaScreener /"
             " than the old default):", "",
             "| model | threads | batch | ms per crop | vs MalariaScreener | vs old default |",
             "|---|---|---|---|---|---|"]
    by = {(r["model"], r["threads"], r["batch"]): r["ms_per_crop"] for r in result.get("latency", [])}
    for (model, t, b), ms in by.items():
        ms_peer = by.get(("MalariaScreener", t, b))
        old = by.get(("old default", t, b))
        lines.append(f"| {model} | {t} | {b} | {ms:.3f} | {f'{ms_peer / ms:.2f}x' if ms_peer else '-'} |"
                     f" {f'{old / ms:.2f}x' if old else '-'} |")
    e2e = result.get("end_to_end") or {}
    if e2e:
        base = next(iter(e2e.values()))
        lines += ["", "End to end (median of rounds; wall on a shared machine, CPU = user + system of the"
                  " process; x = speed-up against the first source):", "",
                  "| source | screen 1,000 crops wall s | CPU s | screen 8 IML fields (2 threads) wall s |"
                  " CPU s | cells | cold start s | CPU s | peak RSS MB: screen / fields / cold |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, d in e2e.items():
            def cell(key: str, d: dict[str, Any] = d) -> str:
                if d[key] is None:
                    return "-"
                x = base[key] / d[key] if d is not base and base[key] is not None else None
                return f"{d[key]:.2f}" + (f" ({x:.1f}x)" if x else "")
            lines.append(f"| {name} | {cell('screen_wall_s')} | {cell('screen_cpu_s')} |"
                         f" {cell('fields_wall_s')} | {cell('fields_cpu_s')} | {d['fields_cells']} |"
                         f" {cell('cold_wall_s')} | {cell('cold_cpu_s')} |"
                         f" {' / '.join(_mb(d[f'{k}_rss_mb']) for k in ('screen', 'fields', 'cold'))} |")
    if result.get("latency") or e2e:
        lines += ["", *issue_rows(result)]
    return "\n".join(lines) + "\n"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _src(spec: str, bundle: Path) -> tuple[str, tuple[Path, Path]]:
    name, _, rest = spec.partition("=")
    if not rest:
        raise SystemExit(f"--src wants NAME=DIR[@BUNDLE], got {spec!r}")
    src, _, b = rest.partition("@")
    return name, (Path(src).resolve(), Path(b).resolve() if b else bundle)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=None, help="Default: the bundle shipped with edgekit.")
    ap.add_argument("--old-bundle", type=Path, default=None, help="The previous default, for ratios.")
    ap.add_argument("--src", action="append", default=[],
                    help="NAME=DIR[@BUNDLE]: a source tree to run end to end (repeat; default: this one).")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--skip", default="",
                    help="latency, seed, e2e and/or end-to-end rows (screen, fields, cold), comma-separated")
    ap.add_argument("--out", type=Path, default=None, help="JSON results (and a .md beside it).")
    ap.add_argument("--report", type=Path, default=None, help="Only print the tables of a results JSON.")
    ap.add_argument("--make-seed", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.make_seed:
        make_seed_model(args.make_seed)
        return {}
    if args.report:
        result = json.loads(args.report.read_text())
        summarize_e2e(result.get("end_to_end") or {})
        print(report(result))
        return result

    from edgekit.device.preprocess import read_image
    from edgekit.device.runtime import default_bundle_dir

    bundle = (args.bundle or default_bundle_dir()).resolve()
    crops_dir = patient_crops(args.cache)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu": cpu_info(),
                    "load_avg_start": os.getloadavg(), "python": platform.python_version()},
        "bundle": bundle_ref(bundle), "old_bundle": bundle_ref(args.old_bundle),
        "crops": f"{N_CROPS} NIH crops of patients {'+'.join(PATIENTS)}", "rounds": args.rounds,
    }
    skip = set(args.skip.split(","))
    if "latency" not in skip:
        models = {"default": _bundle_model(bundle)}
        if args.old_bundle:
            models["old default"] = _bundle_model(args.old_bundle.resolve())
        if "seed" not in skip:  # exported once with TensorFlow
            models["seed int8 (untrained)"] = (seed_model(args.cache), "litert")
        models["MalariaScreener"] = (PEER, "litert")
        crops = [read_image(p) for p in sorted(crops_dir.iterdir())[:64]]
        result["models"] = {k: {"path": portable(p), "bytes": p.stat().st_size}
                            for k, (p, _) in models.items()}
        result["latency"] = latency(models, crops, args.rounds)
    if "e2e" not in skip:
        srcs = dict(_src(s, bundle) for s in args.src) or {"current": (ROOT, bundle)}
        fields = iml_fields()
        result["fields"] = [p.name for p in fields]
        rows = tuple(r for r in E2E_ROWS if r not in skip)
        result["end_to_end"] = end_to_end(srcs, crops_dir, fields, args.rounds, rows=rows)
    result["machine"]["load_avg_end"] = os.getloadavg()
    text = report(result)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(text)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
