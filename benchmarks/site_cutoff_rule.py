"""Two rules for a site bundle's whole-field cutoff, side by side on kept site bundles (issue 21).

    python -m edgekit.benchmarks.site_cutoff_rule --data IML_CELLS WORK/seed0 WORK/seed1 ... [-o out.json]

Every field is found and cut as ``edgekit field`` does (:func:`site_error_sources.found_objects`);
for each bundle, on its fully labelled validation fields, the cutoff with the smallest mean per-field
error and the one ``site adapt`` chooses (:func:`edgekit.adapt.field_error_cutoff`: the highest within
one standard error of it), and the whole-field error each gives on the bundle's own test fields (all,
and the fully labelled ones), with the share of parasitized boxes' objects each calls. The bundles are
not retrained. Writes numbers only: site data such as IML has no licence to ship.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def smallest_error_cutoff(probs: list[np.ndarray], truth: list[float]) -> float:
    """The cutoff with the smallest mean per-field error (ties to the higher)."""
    from edgekit.adapt import field_error_curves

    candidates, error = field_error_curves(probs, truth)
    mean = error.mean(axis=0)
    return float(candidates[np.flatnonzero(mean <= mean.min() + 1e-12)[-1]])


def bundle_row(k: int, bundle: Path, by_field: dict[str, list[dict[str, Any]]], truth: dict[str, float],
               site: Path) -> dict[str, Any]:
    """Bundle ``k``'s two cutoffs and what each gives on its own test fields."""
    from edgekit.adapt import field_error_cutoff, incompletely_labelled_fields

    parts = json.loads((bundle / "site_fields.json").read_text())
    sparse = incompletely_labelled_fields(site)
    test = [f for f in sorted(set(parts["test"])) if by_field[f]]
    val = [f for f in parts["val"] if f not in sparse and by_field[f]]
    full = [f for f in test if f not in sparse]
    p = {f: np.array([o["p"][k] for o in by_field[f]]) for f in set(test) | set(val)}

    def error(cut: float, fields: list[str]) -> float:
        return round(100 * float(np.mean([abs(np.mean(p[f] >= cut) - truth[f]) for f in fields])), 3)

    def called(cut: float) -> float:
        q = np.array([o["p"][k] for f in test for o in by_field[f] if o["category"] == "Parasitized"])
        return round(float((q >= cut).mean()), 3) if len(q) else float("nan")

    row: dict[str, Any] = {"bundle": bundle.name, "test_fields": len(test),
                           "fully_labelled_test_fields": len(full)}
    for name, rule in (("smallest", smallest_error_cutoff), ("one_se", field_error_cutoff)):
        cut = rule([p[f] for f in val], [truth[f] for f in val])
        row[name] = {"cutoff": round(cut, 4), "test_mae_points": error(cut, test),
                     "fully_labelled_test_mae_points": error(cut, full), "parasitized_called": called(cut)}
    return row


def main(argv: list[str] | None = None) -> None:
    from edgekit.benchmarks.site_error_sources import found_objects, objects_by_field, site_bundles_parser

    ap = site_bundles_parser(__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--out", type=Path)
    a = ap.parse_args(argv)
    objects, truth = found_objects(a.fields, a.annotations, a.bundles, 0.4)
    by_field = objects_by_field(objects)
    rows = [bundle_row(k, b, by_field, truth, a.data) for k, b in enumerate(a.bundles)]
    for r in rows:
        s, o = r["smallest"], r["one_se"]
        print(f"{r['bundle']}: cutoff {s['cutoff']} -> {o['cutoff']}, "
              f"test error {s['test_mae_points']:.2f} -> "
              f"{o['test_mae_points']:.2f} (fully labelled {s['fully_labelled_test_mae_points']:.2f} -> "
              f"{o['fully_labelled_test_mae_points']:.2f}), parasitized called {s['parasitized_called']} -> "
              f"{o['parasitized_called']}")
    if a.out:
        a.out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
