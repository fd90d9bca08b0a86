"""What the trust checks cost (issue 13): signature verification per bundle load, the first-load model
probe, and bounded strict decoding against a plain ``cv2.imdecode``.

    python benchmarks/trust_costs.py [--images DIR_OR_FILES...] [--repeat 20]
        [--corrupt-jpegs ../shared/data/malaria_cells/Parasitized --n 86]

``--corrupt-jpegs`` re-encodes N images as JPEG (q90), damages each scan four ways and counts how
many ``read_image`` refuses (the rest decode with no decoder warning at all).

Prints one JSON object. Timings are medians over ``--repeat`` runs on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times), 3)


def _plain_decode(path: Path) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)


def corrupt_jpeg_detection(folder: Path, n: int, seed: int = 0) -> dict:
    """Per damage kind: how many of ``n`` damaged JPEGs ``read_image`` refuses."""
    import cv2

    from edgekit.device.preprocess import is_image_file, read_image
    from edgekit.errors import ImageError

    files = sorted(f for f in folder.iterdir() if is_image_file(f))[:n]
    rng = np.random.default_rng(seed)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("cut_scan", "overwrite_40_bytes", "zero_32_bytes", "bit_flip"):
            refused = 0
            for i, f in enumerate(files):
                ok, buf = cv2.imencode(".jpg", cv2.imread(str(f)), [cv2.IMWRITE_JPEG_QUALITY, 90])
                d = bytearray(buf.tobytes())
                pos = int(rng.integers(d.find(b"\xff\xda") + 20, len(d) - 43))
                if kind == "cut_scan":  # the scan stops early; the end marker follows (grey fill)
                    d = d[:pos] + b"\xff\xd9"
                elif kind == "overwrite_40_bytes":
                    d[pos:pos + 40] = rng.integers(0, 256, 40, dtype=np.uint8).tobytes()
                elif kind == "zero_32_bytes":
                    d[pos:pos + 32] = bytes(32)
                else:
                    d[pos] ^= 1 << int(rng.integers(0, 8))
                path = Path(tmp) / f"{kind}_{i}.jpg"
                path.write_bytes(bytes(d))
                try:
                    read_image(path)
                except ImageError:
                    refused += 1
            out[kind] = {"n": len(files), "refused": refused}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", nargs="*", default=None, help="Images to decode (default: examples/cells).")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--corrupt-jpegs", type=Path, default=None, help="Folder of images to damage.")
    ap.add_argument("--n", type=int, default=86)
    args = ap.parse_args()
    if args.corrupt_jpegs is not None:
        print(json.dumps(corrupt_jpeg_detection(args.corrupt_jpegs, args.n), indent=2))
        return

    from edgekit.device.decoding import decode_bounded
    from edgekit.device.pipeline import expand_inputs
    from edgekit.device.preprocess import DEFAULT_MAX_PIXELS, is_image_file
    from edgekit.device.runtime import default_bundle_dir, load_classifier
    from edgekit.manifest import read_manifest_data
    from edgekit.signing import check_bundle

    bundle = default_bundle_dir()
    data = read_manifest_data(bundle)
    out: dict = {"signature_check_ms": _median_ms(lambda: check_bundle(bundle, data), args.repeat)}

    with tempfile.TemporaryDirectory() as cache:
        os.environ["EDGEKIT_CACHE"] = cache
        t0 = time.perf_counter()
        load_classifier(bundle)
        out["load_first_time_with_probe_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        out["load_cached_ms"] = _median_ms(lambda: load_classifier(bundle), max(3, args.repeat // 4))

    root = Path(__file__).resolve().parents[1]
    sources = [Path(p) for p in (args.images or [str(root / "examples" / "cells")])]
    files = [f for _, f in expand_inputs(sources) if f is not None and is_image_file(f)]
    rows = []
    for f in files:
        plain = _median_ms(lambda f=f: _plain_decode(f), args.repeat)
        bounded = _median_ms(lambda f=f: decode_bounded(f, DEFAULT_MAX_PIXELS), args.repeat)
        img = _plain_decode(f)
        rows.append({"file": f.name, "size": f"{img.shape[1]}x{img.shape[0]}", "plain_ms": plain,
                     "bounded_ms": bounded, "overhead_ms": round(bounded - plain, 3)})
    out["decode"] = rows
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
