"""How much of a site's whole-field error is the labels' own: adapted bundles' test-field errors split
by the fields' label coverage (labelled cells / cells found, ``cells.json``; `edgekit site cells` warns
below ``LABEL_COVERAGE_FLOOR``).

    python -m edgekit.benchmarks.label_coverage SITE_CELLS seed0=WORK/seed0 seed1=WORK/seed1 ... [-o out.json]

Numbers only, from each bundle's own record (``manifest.evaluation.site.test.whole_fields``); nothing
is re-run. Coverage is a property of the labels and the finder, never of the model, so the split
cannot favour a model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> None:
    from edgekit.cells import CELLS_INDEX, LABEL_COVERAGE_FLOOR, label_coverage, split_errors
    from edgekit.manifest import load_manifest

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("site", type=Path, help="the site's cells folder (`edgekit site cells`)")
    ap.add_argument("runs", nargs="+", help="NAME=BUNDLE of adapted bundles")
    ap.add_argument("--floor", type=float, default=LABEL_COVERAGE_FLOOR)
    ap.add_argument("-o", "--out", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = json.loads((args.site / CELLS_INDEX).read_text())["per_field"]
    coverage = {Path(r["field"]).stem: label_coverage(r) for r in rows}
    result: dict[str, Any] = {"floor": args.floor, "site_fields": len(coverage),
                              "incompletely_labelled_site_fields": sum((c or 0) < args.floor
                                                                       for c in coverage.values()),
                              "runs": {}}
    for spec in args.runs:
        name, _, path = spec.partition("=")
        whole = load_manifest(Path(path)).evaluation["site"]["test"]["whole_fields"]
        result["runs"][name] = split_errors(whole["per_field"], coverage, args.floor)
        r = result["runs"][name]
        print(f"{name}: all {r['fields']} test fields {r['mae_points']:.2f} points; "
              f"{r['fully_labelled_fields']} fully labelled {r['fully_labelled_mae_points']:.2f}; "
              f"{len(r['incompletely_labelled'])} incompletely labelled "
              f"{r['incompletely_labelled_mae_points'] or 0:.2f} ({', '.join(r['incompletely_labelled'])})")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
