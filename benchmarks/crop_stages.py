"""Where one crop's time goes: N NIH crops through ``classify_one`` (decode, gates, guard, stain,
model at batch 1), CPU ms per crop without a profiler (best of 3), then per stage under cProfile.

    PYTHONPATH=TREE python benchmarks/crop_stages.py [--n 300]

``TREE``: the source tree to measure (``.``, or an older checkout from ``git archive``, which need
not have this file); the crops are the speed benchmark's (``benchmarks/speed.py``).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from typing import Any

# cProfile function name -> stage
STAGES = {
    "decode_bounded": "bounded decoding",
    "check_quality": "quality gates (with check_cell)",
    "crop_features": "domain guard features",
    "normalize_stain": "stain normalization",
    "predict": "model (batch 1)",
    "classify_one": "total",
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args(argv)

    from edgekit.benchmarks.speed import CACHE, patient_crops
    from edgekit.device.pipeline import classify_one
    from edgekit.device.quality import DEFAULT_GATES
    from edgekit.device.runtime import load_classifier

    clf = load_classifier(None, threads=1)
    files = sorted(patient_crops(CACHE).iterdir())[: args.n]
    for f in files[:20]:  # warm-up: imports, OpenCV's tables
        classify_one(f.name, f, clf, DEFAULT_GATES)
    runs = []
    for _ in range(3):
        t0 = time.process_time()
        for f in files:
            classify_one(f.name, f, clf, DEFAULT_GATES)
        runs.append(time.process_time() - t0)
    result: dict[str, Any] = {"crops": len(files), "cpu_ms_per_crop": min(runs) / len(files) * 1000}
    prof = cProfile.Profile()
    prof.enable()
    for f in files:
        classify_one(f.name, f, clf, DEFAULT_GATES)
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    result["cprofile_ms_per_crop"] = {
        STAGES[fn]: round(ct / len(files) * 1000, 3)
        for (_, _, fn), (_, _, _, ct, _) in stats.items() if fn in STAGES
    }
    print(f"{result['cpu_ms_per_crop']:.2f} ms CPU per crop without a profiler ({len(files)} crops)")
    for stage, ms in sorted(result["cprofile_ms_per_crop"].items(), key=lambda kv: -kv[1]):
        print(f"  {stage:34s} {ms:.2f} ms under cProfile")
    return result


if __name__ == "__main__":
    main()
