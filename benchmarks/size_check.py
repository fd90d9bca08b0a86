"""The size check (:mod:`edgekit.device.sizes`) on real data: what it refuses and what it lets by.

    python -m edgekit.benchmarks.size_check  # -> benchmarks/results/size_check.json

- malaria: the default bundle's split rebuilt from the NIH crops (seed 42, by patient; its data
  and split sha256 compared with the manifest's), the sizes fitted on its **train** part, then
  counted: test-part crops refused (want 0), whole IML (1280x960) and BCCD (640x480) fields
  refused (want all);
- x-rays (the second task, classified whole): sizes fitted on ``TRAIN/``, counted on ``VAL/`` and
  ``TEST/`` (want 0), and the whole NIH test part given to the x-ray model (a crop is far smaller).

Sizes come from each file's header (what the device decodes has the same size; EXIF rotation
swaps height and width, which the rule does not look at).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from edgekit.device.sizes import FAR, fit_sizes, measure_files, outside


def _refused(shapes: list[tuple[int, int]], sizes: Any) -> int:
    return sum(outside(h, w, sizes) is not None for h, w in shapes)


def _nih_split(data: Path, manifest: dict[str, Any]) -> tuple[Any, dict[str, bool]]:
    from edgekit.data import scan_dataset
    from edgekit.paths import data_sha256
    from edgekit.splits import make_split, save_split

    ds = scan_dataset(data)
    split = make_split(ds, seed=manifest["training"]["split"]["seed"])
    with tempfile.TemporaryDirectory() as tmp:
        split_sha = save_split(split, Path(tmp) / "split.json")
    paths = [i.path for items in split.parts.values() for i in items]
    # the split file's sha256 differs from the manifest's (its text records where it was made); the
    # patients of each part are what matter
    shipped = json.loads((Path(__file__).resolve().parent / "results" / "malaria_split_patients.json")
                         .read_text())
    same = {"split_sha256": split_sha == manifest["training"]["split_sha256"],
            "data_sha256": data_sha256(data, paths) == manifest["training"]["data_sha256"],
            "patients_per_part": all(sorted({i.group for i in split.parts[k]}) == sorted(v)
                                     for k, v in shipped["patients"].items())}
    return split, same


def run(data: Path, bundle: Path) -> dict[str, Any]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    split, same = _nih_split(data / "malaria_cells", manifest)
    root = data / "malaria_cells"
    nih = fit_sizes(measure_files([root / i.path for i in split.parts["train"]]), "the train part")
    test = measure_files([root / i.path for i in split.parts["test"]])
    iml = measure_files(sorted((data / "malaria_fields_iml" / "images").glob("*")))
    bccd = measure_files(sorted((data / "blood_smear_fields_bccd" / "JPEGImages").glob("*.jpg")))
    xr = data / "xray_abd_vs_chest"
    x_sizes = fit_sizes(measure_files(sorted(xr.glob("TRAIN/*/*.png"))), "TRAIN/")
    x_held = measure_files(sorted([*xr.glob("VAL/*/*.png"), *xr.glob("TEST/*.png")]))
    return {
        "far": FAR,
        "default_split_rebuilt": same,
        "nih_sizes": vars(nih), "xray_sizes": vars(x_sizes),
        "nih_test_crops": {"n": len(test), "refused": _refused(test, nih)},
        "iml_fields_as_crops": {"n": len(iml), "refused": _refused(iml, nih)},
        "bccd_fields_as_crops": {"n": len(bccd), "refused": _refused(bccd, nih)},
        "xray_val_test": {"n": len(x_held), "refused": _refused(x_held, x_sizes)},
        "nih_test_crops_to_xray_model": {"n": len(test), "refused": _refused(test, x_sizes)},
        "largest_nih_test_long_side_over_max_side": max(max(s) for s in test) / nih.max_side,
        "smallest_field_long_side_over_max_side": min(max(s) for s in [*iml, *bccd]) / nih.max_side,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent
    ap.add_argument("--data", type=Path, default=here.parent.parent / "shared" / "data")
    ap.add_argument("--bundle", type=Path, default=here.parent / "edgekit" / "models" / "default")
    ap.add_argument("--out", type=Path, default=here / "results" / "size_check.json")
    a = ap.parse_args()
    res = run(a.data, a.bundle)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
