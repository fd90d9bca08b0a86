"""Size and speed of ResNet variants against NIH MalariaScreener's cell model, before training.

    python -m edgekit.benchmarks.model_variants [--variants w8,fast16,...] [--out results.json]

Each variant is built untrained, converted to full-int8 TFLite (uint8 in/out, calibrated on random
pixels: the speed of an int8 graph does not depend on its weights' values) and timed with LiteRT,
1 thread, per crop at batch 1 and batch 64, **alternating** with MalariaScreener's float model in
one process, so the ratio holds on a loaded machine. Prints a table and writes JSON rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from edgekit.benchmarks.speed import PEER


def _interpreter(path: Path, batch: int):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    inp = it.get_input_details()[0]
    if batch != 1:
        it.resize_tensor_input(inp["index"], [batch, *inp["shape"][1:]])
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    x = np.random.default_rng(0).integers(0, 256, inp["shape"]).astype(inp["dtype"])
    if inp["dtype"] == np.float32:
        x = x / np.float32(255.0)
    it.set_tensor(inp["index"], x)
    return it


def time_alternating(paths: dict[str, Path], batch: int, rounds: int, reps: int) -> dict[str, float]:
    """Median ms per crop for each model, the models taking turns ``rounds`` times."""
    its = {k: _interpreter(p, batch) for k, p in paths.items()}
    for it in its.values():
        it.invoke()
    samples: dict[str, list[float]] = {k: [] for k in its}
    for _ in range(rounds):
        for k, it in its.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                it.invoke()
            samples[k].append((time.perf_counter() - t0) * 1000 / reps / batch)
    return {k: statistics.median(v) for k, v in samples.items()}


def convert_int8(model, path: Path) -> None:
    from edgekit import formats
    from edgekit.export.tflite import convert_tflite

    calib = np.random.default_rng(0).integers(0, 256, (32, *model.input_shape[1:])).astype(np.uint8)
    convert_tflite(model, formats.get("tflite_int8"), path, calib, image_input=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="w8,fast16,fast16x2,fast32,fast16p,fast32p,fast32px2",
                    help="comma-separated recipe names of edgekit.model.RECIPES")
    ap.add_argument("--tflite", nargs="*", default=[], metavar="NAME=FILE",
                    help="also time these int8 files (e.g. a trained bundle's model)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    from edgekit.model import RECIPES, build_resnet, count_macs

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files: dict[str, Path] = {}
        for name in [v for v in args.variants.split(",") if v]:
            model = build_resnet((64, 64, 3), 2, **RECIPES[name])
            files[name] = Path(tmp) / f"{name}.tflite"
            convert_int8(model, files[name])
            rows.append({"variant": name, "recipe": RECIPES[name], "params": int(model.count_params()),
                         "macs": count_macs(model), "int8_bytes": files[name].stat().st_size})
        for spec in args.tflite:
            name, _, file = spec.partition("=")
            files[name] = Path(file)
            rows.append({"variant": name, "file": file, "int8_bytes": Path(file).stat().st_size})
        for row in rows:
            name = row["variant"]
            for batch, reps in ((1, 50), (64, 2)):
                t = time_alternating({"m": files[name], "peer": PEER}, batch, args.rounds, reps)
                row[f"ms_b{batch}"] = round(t["m"], 4)
                row[f"peer_ms_b{batch}"] = round(t["peer"], 4)
                row[f"x_faster_b{batch}"] = round(t["peer"] / t["m"], 2)
    print("| variant | params | MACs | int8 kB | ms/crop b1 | MS b1 | x faster b1 | ms/crop b64 | MS b64 | "
          "x faster b64 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r.get('params', 0):,} | {r.get('macs', 0) / 1e6:.2f} M | "
              f"{r['int8_bytes'] / 1024:.0f} | {r['ms_b1']:.3f} | {r['peer_ms_b1']:.3f} | "
              f"{r['x_faster_b1']} | {r['ms_b64']:.3f} | {r['peer_ms_b64']:.3f} | {r['x_faster_b64']} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
