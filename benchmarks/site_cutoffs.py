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
    from edgekit.adapt import (
        device_probs,
        field_error_cutoff,
        find_field_images,
        incompletely_labelled_fields,
        labelled_parasitemia,
        whole_field_inputs,
    )
    from edgekit.export.bundle import load_keras
    from edgekit.manifest import load_manifest
    from edgekit.metrics import parasitemia_error
    from edgekit.parts import predict_arrays

    truth, sparse = labelled_parasitemia(site), incompletely_labelled_fields(site)
    m = load_manifest(bundle)
    split = json.loads((bundle / "site_fields.json").read_text())
    pos = m.positive_index
    for f, image in find_field_images(fields_dir, split["val"] + split["test"]).items():
        if f not in cache:
            cache[f] = whole_field_inputs(image, m.preprocessing)
    cells = {f: cache[f] for f in split["val"] + split["test"] if cache[f] is not None}
    device = device_probs(bundle, m)
    int8 = {f: device(x) for f, x in cells.items()}  # the int8 model is what counts on the test fields
    keras = load_keras(bundle / m.artifacts["keras"].path)
    chosen_on = [f for f in split["val"] if f in cells and f not in sparse]
    tested = [f for f in split["test"] if f in cells]
    row: dict[str, Any] = {"recorded_cutoff": m.thresholds.cutoff}
    for name, predict in (("keras", lambda f: predict_arrays(keras, cells[f])[:, pos]), ("int8", int8.get)):
        cut = field_error_cutoff([predict(f) for f in chosen_on], [truth.get(f, 0.0) for f in chosen_on])
        called = {f: float((int8[f] >= cut).mean()) for f in tested}
        every = parasitemia_error(called, truth)
        full = parasitemia_error({f: c for f, c in called.items() if f not in sparse}, truth)
        row[name] = {"cutoff": round(cut, 4), "mae_points": round(every["mae_points"], 3),
                     "fully_labelled_mae_points": round(full["mae_points"], 3),
                     "bias_points": round(every["bias_points"], 3)}
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
