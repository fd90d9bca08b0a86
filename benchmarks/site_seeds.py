"""Site adaptation across seeds: what each adapted bundle measured on its own test fields, side by side.

    edgekit adapt edgekit/models/default --data IML_CELLS -o WORK/seed0 --seed 0   # and 1, 2, ...
    python -m edgekit.benchmarks.site_seeds seed0=WORK/seed0 seed1=WORK/seed1 ... [-o results.json]

Every number is the bundle's own record (``manifest.evaluation.site`` and its gate,
``manifest.domain.gate``), measured by ``edgekit adapt`` through the exported int8 model on test
fields that no training, threshold or guard saw. A seed changes the block split (which fields are
test fields) and the fine-tuning, so the spread is the spread a site would meet. Adapted bundles
stay outside the repository (site data such as IML has no licence to ship); this writes numbers only.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def row(name: str, bundle: Path) -> dict[str, Any]:
    """One adapted bundle's test-field numbers, its gate, and what it was adapted from."""
    from edgekit.manifest import load_manifest

    m = load_manifest(bundle)
    site = m.evaluation.get("site", {})
    test = site.get("test") or {}
    whole = test.get("whole_fields") or {}
    ad = m.training.get("adaptation", {})
    gate = m.domain.gate if m.domain is not None else None
    return {
        "name": name, "train_fields": (ad.get("site_fields") or {}).get("train"),
        "test_fields": test.get("fields"), "test_cells": test.get("cells"),
        "test_positive_cells": test.get("positive_cells"),
        "auc": (test.get("auc") or {}).get("value"),
        "sensitivity_at_specificity_0.995": (test.get("at_specificity_0.995") or {}).get("sensitivity"),
        "whole_field_mae_points": whole.get("mae_points"),
        "whole_field_median_points": whole.get("median_points"),
        "whole_field_bias_points": whole.get("bias_points"),
        "labelled_cells_mae_points": (test.get("parasitemia") or {}).get("mae_points"),
        "val_auc": ((site.get("val") or {}).get("auc") or {}).get("value"),
        "best_epoch": ad.get("best_epoch"), "base_cells_mixed_in": ad.get("base_cells_mixed_in"),
        "int8_agreement_min": min((h.get("int8_agreement", 1.0) for h in ad.get("history", [])),
                                  default=None),
        "gate": None if gate is None else {"passed": gate.passed, "summary": gate.summary()},
        "seed": (ad.get("config") or {}).get("seed"),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table, with the spread of the rows adapted on all their training fields."""
    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    head = ("| run | train fields | test cell AUC | sens. @ spec >= 99.5% | whole-field error, mean (median) "
            "| labelled-cell error | lowest epoch int8 agreement | gate |\n"
            "|---|---:|---:|---:|---:|---:|---:|---|\n")
    lines = [f"| {r['name']} | {f(r['train_fields'], 'd')} | {f(r['auc'], '.4f')} | "
             f"{f(r['sensitivity_at_specificity_0.995'], '.3f')} | {f(r['whole_field_mae_points'], '.2f')} "
             f"({f(r['whole_field_median_points'], '.2f')}) | {f(r['labelled_cells_mae_points'], '.2f')} | "
             f"{f(r['int8_agreement_min'], '.2%')} | "
             f"{'passed' if r['gate'] and r['gate']['passed'] else 'FAILED: NOT VALIDATED'} |" for r in rows]
    return head + "\n".join(lines) + "\n"


def spread(rows: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    vals = [r[key] for r in rows if r[key] is not None]
    if not vals:
        return None
    return {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals),
            "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="+", metavar="NAME=BUNDLE")
    ap.add_argument("--spread-of", default="", help="comma-separated names the spread is taken over "
                                                    "(default: every bundle)")
    ap.add_argument("-o", "--out", type=Path)
    args = ap.parse_args(argv)
    rows = []
    for item in args.bundles:
        name, _, path = item.partition("=")
        if not path:
            ap.error(f"{item}: want NAME=BUNDLE")
        rows.append(row(name, Path(path)))
    chosen = set(args.spread_of.split(",")) if args.spread_of else {r["name"] for r in rows}
    keys = ("auc", "sensitivity_at_specificity_0.995", "whole_field_mae_points", "labelled_cells_mae_points")
    result = {"rows": rows, "spread_over": sorted(chosen),
              "spread": {k: spread([r for r in rows if r["name"] in chosen], k) for k in keys}}
    print(table(rows))
    for k, v in result["spread"].items():
        if v:
            print(f"{k}: mean {v['mean']:.4f}, range {v['min']:.4f}-{v['max']:.4f}, sd {v['sd']:.4f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
