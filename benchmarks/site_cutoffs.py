"""One adapted bundle, two cutoffs: chosen on its Keras outputs or on its int8 outputs (what the device
decides on), each on the fully labelled validation fields with the smallest mean per-field error, and
the test fields' whole-field error of the int8 model at each. The same trained model on both sides,
so training noise does not enter the comparison.

    python -m edgekit.benchmarks.site_cutoffs seed0=WORK/seed0 ... --site IML_CELLS --fields IML_IMAGES \\
        [-o out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def compare(bundle: Path, site: Path, fields_dir: Path, cache: dict[str, Any]) -> dict[str, Any]:
    """Cutoff and test-field error (points: mean, on fully labelled fields, bias) per choice."""
    import numpy as np

    from edgekit.adapt import (
        device_probs,
        field_error_cutoff,
        incompletely_labelled_fields,
        labelled_parasitemia,
        whole_field_inputs,
    )
    from edgekit.export.bundle import load_keras
    from edgekit.manifest import load_manifest
    from edgekit.parts import predict_arrays

    truth, sparse = labelled_parasitemia(site), incompletely_labelled_fields(site)
    m = load_manifest(bundle)
    split = json.loads((bundle / "site_fields.json").read_text())
    pos = m.positive_index
    for f in split["val"] + split["test"]:
        if f not in cache:
            image = next(iter(sorted(fields_dir.glob(f"{f}.*"))), None)
            cache[f] = None if image is None else whole_field_inputs(image, m.preprocessing)
    cells = {f: cache[f] for f in split["val"] + split["test"] if cache.get(f) is not None}
    device = device_probs(bundle, m)
    keras = load_keras(bundle / m.artifacts["keras"].path)
    chosen_on = [f for f in split["val"] if f in cells and f not in sparse]
    row: dict[str, Any] = {"recorded_cutoff": m.thresholds.cutoff}
    for name, predict in (("keras", lambda x: predict_arrays(keras, x)[:, pos]), ("int8", device)):
        cut = field_error_cutoff([predict(cells[f]) for f in chosen_on],
                                 [truth.get(f, 0.0) for f in chosen_on])
        err = {f: 100 * (float(np.mean(device(cells[f]) >= cut)) - truth.get(f, 0.0))
               for f in split["test"] if f in cells}
        full = [e for f, e in err.items() if f not in sparse]
        row[name] = {"cutoff": round(cut, 4), "mae_points": round(statistics.mean(map(abs, err.values())), 3),
                     "fully_labelled_mae_points": round(statistics.mean(map(abs, full)), 3),
                     "bias_points": round(statistics.mean(err.values()), 3)}
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", help="NAME=PATH of adapted bundles")
    ap.add_argument("--site", type=Path, required=True, help="the site cells folder (cells.json)")
    ap.add_argument("--fields", type=Path, required=True, help="the field images")
    ap.add_argument("-o", "--output", type=Path)
    args = ap.parse_args(argv)
    cache: dict[str, Any] = {}
    rows = {}
    for spec in args.bundles:
        name, _, path = spec.partition("=")
        rows[name] = compare(Path(path), args.site, args.fields, cache)
        print(name, json.dumps(rows[name]), flush=True)
    diff = [r["int8"]["mae_points"] - r["keras"]["mae_points"] for r in rows.values()]
    summary: dict[str, Any] = {k: round(statistics.mean(r[k]["mae_points"] for r in rows.values()), 3)
                               for k in ("keras", "int8")}
    summary.update(lower_with_int8=sum(d < 0 for d in diff), higher_with_int8=sum(d > 0 for d in diff),
                   bundles=len(diff))
    print(json.dumps(summary))
    if args.output:
        args.output.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
