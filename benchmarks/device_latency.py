"""Device latency benchmark: cold start, per-image time (decode + resize + invoke) vs the
interpreter's own invoke time, for every device format of a bundle at 1 and 2 threads.

    python benchmarks/device_latency.py BUNDLE [--images DIR] [--n 200] [--out results.json]

Cold start = spawning ``edgekit classify ONE.png --model BUNDLE`` until its first result line is
printed (includes Python start-up, imports, bundle load + sha256 check, model load, one image).
Rows are printed as a table and written as JSON (one object per format x threads).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgekit.paths import shared_data

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = [shared_data("malaria_cells"), ROOT / "tests" / "fixtures" / "cells"]


def pick_images(folder: Path | None, n: int, seed: int = 0) -> list[Path]:
    from edgekit.device.preprocess import is_image_file

    folders = [folder] if folder else [f for f in DEFAULT_IMAGES if f.is_dir()]
    files = sorted(p for p in folders[0].rglob("*") if p.is_file() and is_image_file(p))
    random.Random(seed).shuffle(files)
    return files[:n]


def cold_start(bundle: Path, image: Path, fmt: str, threads: int, repeats: int) -> list[float]:
    """Seconds from process start to the first printed result of `edgekit classify`."""
    cmd = [sys.executable, "-c", "from edgekit.cli import main; main()", "classify", str(image),
           "--model", str(bundle), "--model-format", fmt, "--threads", str(threads), "--format", "jsonl",
           "--no-progress"]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = proc.stdout.readline()
        times.append(time.perf_counter() - t0)
        proc.communicate()
        if not line.startswith("{"):
            raise SystemExit(f"classify printed no result for {fmt}: {line!r}")
    return times


def load_any(bundle: Path, fmt: str, threads: int):
    """Like ``load_classifier`` but also loads a format marked failed_validation: its speed is
    still worth knowing (the row carries the status)."""
    from edgekit.device.backends import open_backend
    from edgekit.device.runtime import Classifier, load_classifier
    from edgekit.manifest import load_manifest, verify_artifact

    manifest = load_manifest(bundle)
    art = manifest.artifacts[fmt]
    if art.status == "ok":
        return load_classifier(bundle, fmt, threads, allow_unsigned=True)  # measuring, not screening
    return Classifier(manifest, art, bundle, open_backend(art.runtime, verify_artifact(bundle, art), threads))


def per_image(bundle: Path, fmt: str, threads: int, images: list[Path], warmup: int = 5) -> dict:
    from edgekit.device.preprocess import read_image

    t0 = time.perf_counter()
    clf = load_any(bundle, fmt, threads)
    load_s = time.perf_counter() - t0
    for p in images[:warmup]:
        clf.classify(read_image(p))
    total, invoke = [], []
    for p in images:
        t = time.perf_counter()
        clf.classify(read_image(p))
        total.append(time.perf_counter() - t)
        invoke.append(clf.backend.last_invoke_s)
    ms = lambda xs, q: float(np.percentile(xs, q) * 1000)  # noqa: E731
    return {
        "load_s": load_s, "n": len(images),
        "image_p50_ms": ms(total, 50), "image_p95_ms": ms(total, 95),
        "invoke_p50_ms": ms(invoke, 50), "invoke_p95_ms": ms(invoke, 95),
        "images_per_s": len(total) / sum(total),
        "model_bytes": clf.artifact.bytes, "status": clf.artifact.status,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--images", type=Path, default=None, help="Folder of images (default: shared NIH crops).")
    ap.add_argument("--n", type=int, default=200, help="Images per (format, threads).")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--formats", default=None, help="Comma-separated formats (default: all device formats).")
    ap.add_argument("--cold-repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from edgekit.device.backends import runtime_available
    from edgekit.device.runtime import FORMAT_ORDER
    from edgekit.manifest import load_manifest

    manifest = load_manifest(args.bundle)
    formats = args.formats.split(",") if args.formats else [
        f for f in FORMAT_ORDER
        if f in manifest.artifacts and manifest.artifacts[f].status in ("ok", "failed_validation")
        and runtime_available(manifest.artifacts[f].runtime)
    ]
    images = pick_images(args.images, args.n)
    rows = []
    for fmt in formats:
        for threads in [int(t) for t in args.threads.split(",")]:
            row = {"format": fmt, "threads": threads, **per_image(args.bundle, fmt, threads, images)}
            row["cold_start_s"] = None  # `edgekit classify` refuses a format that failed validation
            if row["status"] == "ok":
                row["cold_start_s"] = statistics.median(
                    cold_start(args.bundle, images[0], fmt, threads, args.cold_repeats))
            rows.append(row)
            cold = "-" if row["cold_start_s"] is None else f"{row['cold_start_s']:.2f} s"
            print(f"{fmt:<15} threads={threads}  cold {cold}"
                  f"  load {row['load_s'] * 1000:.0f} ms"
                  f"  image p50 {row['image_p50_ms']:.2f} ms (p95 {row['image_p95_ms']:.2f})"
                  f"  invoke p50 {row['invoke_p50_ms']:.3f} ms  {row['images_per_s']:.0f} img/s"
                  f"  [{row['status']}]", flush=True)
    result = {
        "bundle": str(args.bundle), "model": manifest.name, "images": len(images),
        "input_size": list(manifest.preprocessing.input_size),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "rows": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
