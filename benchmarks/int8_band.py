"""How bundles call one split part through the device runtime: cell metrics at the cutoff and the
uncertain band (how many single cells are called positive, at what precision), per format.

    python -m edgekit.benchmarks.int8_band old=OLD_BUNDLE new=NEW_BUNDLE \
        --split runs/split.json --part test -o results/int8_band.json

Made for issue 11's int8 output fix (the default's int8 probabilities stopped at 255/256, below the
band's positive edge); NIH crops are evaluated by patient (the split's groups), never by random crop.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def evaluate(bundle: Path, fmt: str, x: np.ndarray, y_label: np.ndarray,
             groups: np.ndarray) -> dict[str, Any]:
    """Metrics of one bundle's format on crops ``x`` (uint8, prepared) with label indices ``y_label``."""
    from edgekit.benchmarks.accuracy import patient_summary
    from edgekit.device.backends import predict_in_batches
    from edgekit.device.runtime import load_classifier
    from edgekit.metrics import binary_metrics
    from edgekit.thresholds import band_report

    clf = load_classifier(bundle, fmt, allow_unsigned=True, warn=lambda _line: None)
    decision = clf.manifest.decision
    pos = decision.positive_index
    p = predict_in_batches(clf.predict, x, 256)[:, pos]
    y = y_label == pos
    m = binary_metrics(y, p, decision.cutoff, groups=groups, n_boot=1000)
    return {
        "bundle": str(bundle), "format": fmt, "output": clf.artifact.output,
        "thresholds": {"cutoff": decision.cutoff, "negative": decision.thresholds.negative,
                       "positive": decision.thresholds.positive, "source": decision.thresholds.source},
        "distinct_p": int(len(np.unique(p))), "max_p": float(p.max()),
        "metrics": {k: m[k] for k in ("n", "accuracy", "sensitivity", "specificity", "precision", "auc",
                                      "confusion")},
        "band": band_report(y, p, decision.thresholds),
        "patients": patient_summary(y, decision.counted(p), groups, decision.rule),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", help="NAME=BUNDLE_DIR")
    ap.add_argument("--split", required=True, type=Path, help="split file (by patient)")
    ap.add_argument("--part", default="test")
    ap.add_argument("--formats", default="tflite_int8,onnx_int8")
    ap.add_argument("-o", "--out", type=Path)
    args = ap.parse_args(argv)
    from edgekit.data import load_images
    from edgekit.manifest import load_manifest
    from edgekit.splits import load_split

    named = dict(b.split("=", 1) for b in args.bundles)
    split, _ = load_split(args.split)
    items = split.parts[args.part]
    first = load_manifest(next(iter(named.values())))
    x, bad = load_images(Path(split.data_root), [i.path for i in items], first.preprocessing)
    bad_set = {b for b, _ in bad}
    items = [i for i in items if i.path not in bad_set]
    y = np.array([first.labels.index(split.classes[i.label]) for i in items])
    groups = np.array([i.group for i in items])
    out: dict[str, Any] = {"split": str(args.split), "part": args.part, "crops": len(items),
                           "patients": len(set(groups.tolist())), "results": {}}
    for name, folder in named.items():
        if load_manifest(folder).preprocessing != first.preprocessing:
            raise SystemExit(f"error: {name} preprocesses differently from the first bundle")
        for fmt in args.formats.split(","):
            r = evaluate(Path(folder), fmt, x, y, groups)
            out["results"][f"{name}/{fmt}"] = r
            m, b = r["metrics"], r["band"]
            print(f"{name}/{fmt}: acc {m['accuracy']['value']:.4f} sens {m['sensitivity']['value']:.4f} "
                  f"spec {m['specificity']['value']:.4f} AUC {m['auc']['value']:.4f}; band "
                  f"[{b['negative_edge']:.4f}, {b['positive_edge']:.4f}): positive {b['called_positive']} "
                  f"(precision {b['precision']}), negative {b['called_negative']} (NPV {b['npv']}), "
                  f"uncertain {b['uncertain']}; max p {r['max_p']:.5f}", flush=True)
    text = json.dumps(out, indent=1, default=float) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
