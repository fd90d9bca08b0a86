"""Learning curve of ``edgekit adapt`` on IML_Malaria: how many labelled fields a site needs.

    python -m edgekit.benchmarks.site_adaptation --base RUN --cells IML_CELLS --work DIR \\
        [--sizes 10,25,50,all] [--epochs 4] [--negatives-per-field 30] [--no-write]

IML_CELLS comes from ``edgekit cells ../shared/data/malaria_fields_iml/images --annotations
.../annotations.json -o IML_CELLS``. The 172 dev fields are split by blocks of 6 consecutive
frames within each stain group (grey-green up to PA171809, magenta after) into train / val /
test (60/20/20, seed 0; the split is saved with the results). For each size N the base run is
adapted on N training fields (``edgekit adapt``, same validation fields for the decision) and
written to ``DIR/iml-N`` (outside the repository: a model trained on IML is never committed).

Reported on the IML test fields, for the shipped default bundle (unadapted) and each adapted
bundle, all through the device runtime (int8 TFLite):
- matched cells (labelled boxes matched to found cells, as ``edgekit cells`` cuts them): cell
  AUC, sensitivity at specificity >= 99.5%, sensitivity/specificity at the bundle's cutoff;
- per-field parasitemia error on those cells (called vs labelled fraction), and on WHOLE fields
  (``edgekit field``: every found cell counted, labelled or not, against the labelled fraction
  parasite boxes / all red-cell and parasite boxes);
- NIH test patients' cell AUC (forgetting check; the site cutoff is not meant for NIH).

Writes ``benchmarks/results/site_adaptation_iml.json`` and the ``## Site adaptation`` section of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.paths import shared_data

HERE = Path(__file__).resolve().parent
SECTION = "## Site adaptation: learning curve on IML_Malaria"
IML = shared_data("malaria_fields_iml")


def _field_truth(annotations: Path, images: Path) -> dict[str, float]:
    """Labelled parasitemia per field stem: parasite boxes / all usable boxes."""
    from edgekit.device.annotations import PARASITIZED, read_annotations

    out = {}
    for af in read_annotations(annotations, images):
        labelled = [b for b in af.boxes if b.label]
        out[af.image.stem] = sum(b.label == PARASITIZED for b in labelled) / max(1, len(labelled))
    return out


def _test_cells(cells: Path, test_fields: list[str], pre: Any, cache: Path) -> tuple[np.ndarray, ...]:
    from edgekit.cells import field_of
    from edgekit.data import load_images

    paths = sorted(p.relative_to(cells).as_posix() for c in ("Parasitized", "Uninfected")
                   for p in (cells / c).glob("*.png") if field_of(p) in set(test_fields))
    x, bad = load_images(cells, paths, pre, cache_dir=cache)
    assert not bad, bad[:3]
    y = np.array([p.startswith("Parasitized/") for p in paths])
    return x, y, np.array([field_of(p) for p in paths])


def _probs(clf: Any, x: np.ndarray) -> np.ndarray:
    pos = clf.manifest.positive_index
    return np.concatenate([np.asarray(clf.predict(x[i : i + 256]))[:, pos] for i in range(0, len(x), 256)])


_FIELD_CROPS: dict[tuple[str, str], list[np.ndarray] | None] = {}


def _field_inputs(stem: str, pre: Any) -> np.ndarray | None:
    """Every cell the device finds on a field, prepared as model input (segmented once, reused for
    every bundle with this preprocessing); None when the field is rejected."""
    from edgekit.adapt import whole_field_inputs

    key = (stem, repr(sorted(vars(pre).items())))
    if key not in _FIELD_CROPS:
        _FIELD_CROPS[key] = whole_field_inputs(IML / "images" / f"{stem}.JPG", pre)
    return _FIELD_CROPS[key]


def _whole_fields(clf: Any, fields: list[str], truth: dict[str, float], cutoff: float) -> dict[str, Any]:
    """Parasitemia as `edgekit field` counts it (every found cell, called at the cutoff) vs labelled."""
    rows = []
    for stem in fields:
        x = _field_inputs(stem, clf.manifest.preprocessing)
        if x is not None:
            rows.append((stem, 100 * float((_probs(clf, x) >= cutoff).mean()), 100 * truth[stem], len(x)))
    d = np.array([r[1] - r[2] for r in rows])
    return {"fields": len(rows), "rejected": len(fields) - len(rows),
            "mae_points": float(np.abs(d).mean()), "bias_points": float(d.mean()),
            "max_abs_points": float(np.abs(d).max()),
            "per_field": [{"field": s, "called": round(c, 2), "labelled": round(t, 2), "cells": n}
                          for s, c, t, n in rows]}


def _nih_auc(clf: Any, cache: Path) -> float:
    from edgekit.data import load_images
    from edgekit.metrics import roc_auc
    from edgekit.splits import load_split

    split, _ = load_split(Path(ARGS.nih_split))
    items = split.parts["test"]
    pre = clf.manifest.preprocessing
    x, _ = load_images(Path(split.data_root), [i.path for i in items], pre, cache_dir=cache)
    y = np.array([split.classes[i.label] == clf.manifest.positive_label for i in items])
    return roc_auc(y, _probs(clf, x))


def field_count_cutoff_int8(clf: Any, val_fields: list[str], truth: dict[str, float]) -> float:
    """The whole-field count cutoff (:func:`edgekit.adapt.field_count_cutoff`) of the int8 model on
    the VALIDATION fields: what `edgekit adapt --cutoff field-count` chooses, on the deployed outputs."""
    from edgekit.adapt import field_count_cutoff

    probs, t = [], []
    for stem in val_fields:
        x = _field_inputs(stem, clf.manifest.preprocessing)
        if x is not None:
            probs.append(_probs(clf, x))
            t.append(truth[stem])
    return field_count_cutoff(probs, t)


def evaluate_bundle(bundle: Path | None, name: str, cells: Path, test_fields: list[str],
                    truth: dict[str, float], cache: Path,
                    val_fields: list[str] | None = None) -> dict[str, Any]:
    """One row on the test fields at the bundle's cutoff, or (``val_fields`` given) at the whole-field
    count cutoff chosen on those validation fields."""
    from edgekit.adapt import site_metrics
    from edgekit.device.runtime import load_classifier

    # its int8 status is in the row; adapted bundles were just made here and are not signed
    clf = load_classifier(bundle, fmt="tflite_int8", allow_failed=True, allow_unsigned=bundle is not None)
    x, y, g = _test_cells(cells, test_fields, clf.manifest.preprocessing, cache)
    t0 = time.perf_counter()
    cutoff = float(clf.manifest.thresholds.cutoff)
    if val_fields is not None:
        cutoff = field_count_cutoff_int8(clf, val_fields, truth)
    row = {"name": name, "bundle": str(bundle) if bundle else "default (shipped)",
           "cutoff": cutoff, "cutoff_from": "whole validation fields (int8)" if val_fields else "manifest",
           "int8_status": clf.manifest.artifacts["tflite_int8"].status,
           "cells": site_metrics(y, _probs(clf, x), g, cutoff),
           "whole_fields": _whole_fields(clf, test_fields, truth, cutoff)}
    if ARGS.nih_split:
        row["nih_test_auc"] = _nih_auc(clf, cache)
    row["eval_seconds"] = round(time.perf_counter() - t0, 1)
    if bundle is not None:
        ad = clf.manifest.training.get("adaptation", {})
        row["adaptation"] = {k: ad.get(k) for k in ("site_fields", "site_cells", "base_cells_mixed_in",
                                                     "best_epoch", "best_val_auc", "base_keras_sha256",
                                                     "site_data_sha256")}
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | train fields | train cells (par.) | cell AUC | sens. @ spec >= 99.5% "
            "| sens. / spec. at cutoff | parasitemia MAE, matched cells "
            "| parasitemia MAE, whole fields (bias) | NIH test AUC |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for r in rows:
        c = r["cells"]
        ad = r.get("adaptation") or {}
        tr = (ad.get("site_cells") or {}).get("train") or {}
        nfields = (ad.get("site_fields") or {}).get("train", "-")
        ncells = f"{sum(tr.values())} ({tr.get('Parasitized', 0)})" if tr else "-"
        wf = r["whole_fields"]
        nih = f"{r['nih_test_auc']:.4f}" if "nih_test_auc" in r else "-"
        name = r["name"] + ("" if r.get("int8_status", "ok") == "ok" else " (int8 failed)")
        lines.append(
            f"| {name} | {nfields} | {ncells} | {c['auc']['value']:.4f} | "
            f"{c['at_specificity_0.995']['sensitivity']:.3f} | {c['sensitivity']['value']:.3f} / "
            f"{c['specificity']['value']:.4f} | {c['parasitemia']['mae_points']:.2f} | "
            f"{wf['mae_points']:.2f} ({wf['bias_points']:+.2f}) | {nih} |")
    return head + "\n".join(lines) + "\n"


ARGS: Any = None

NOTES = """
How to read it:
- *Matched cells* are the labelled cells the device's cell finder found (`edgekit cells`, IoU >=
  0.4; with the finder merged into main (a08516d, splitting merged masses): 96% of labelled uninfected and
  93% of parasitized cells, 102 of 102 training fields with cells); *whole fields* count every cell the finder
  returns, labelled or not, as `edgekit field` does, against the labelled fraction (parasite boxes /
  all boxes). Probabilities are the int8 TFLite model's (logits outputs, softmax on the device).
- The base is the shipped default's own Keras model (`fast16-mod`, NIH only). "NIH test AUC" is
  each model on the 39 NIH test patients' crops (forgetting check; the site cutoff is not for NIH).
- Rows "field-count cutoff": the same bundle with the cutoff that makes the called count over
  every found cell of the VALIDATION fields match their labelled parasitemia (what `edgekit adapt
  --cutoff field-count --fields IMAGES` chooses; here on the int8 outputs). It trades sensitivity
  at the cutoff for unbiased whole-field counts; the uncertain band still flags the cells between.
- "int8 failed" marks an adapted bundle whose int8 file missed the export bound (kept with
  --allow-drop for the curve; `adapt` refuses it by default).

What changed since the previous curve (every setting chosen on the 34 validation fields):
- Fine-tuning fed stain-normalized crops with colour jitter on top; the base learnt raw crops
  augmented in optical density, then normalized. `adapt` now reads training crops raw and runs the
  base run's own augmentation and the manifest's stain normalization in the training pipeline, as
  `edgekit train` does. From the default, 10 fields, 8 epochs: best validation AUC 0.93 -> 0.98
  (after one epoch 0.90 -> 0.94).
- At most 30 uninfected training cells per field (every one was tried: the class weights of 15
  positives, x40, made fine-tuning unstable; 10 fields: best validation AUC 0.91 vs 0.98).
- `--train-fields N` takes fields spread evenly over the consecutive training fields (a random 10
  were all from IML's first stain batch).
- Early stopping (`--patience 5`, at most 10-12 epochs) on the validation fields' AUC of the int8
  model, quantized every epoch as the export will; epochs within the export's int8 bounds are
  preferred. Chosen on Keras AUC alone, the fine-tuned models reached validation AUC 0.98-0.99 but their
  int8 files did not keep it (all fields: agreement 96.8%, accuracy drop 2.7 points; test AUC 0.963;
  `benchmarks/results/site_adaptation_iml_keras_select.json`, the previous cell cut).
- Learning rate 0.01 vs 0.003 vs 0.001: no difference beyond epoch-to-epoch noise (10 fields).

What still misses the targets:
- Whole-field parasitemia: the field-count cutoff removes most of the bias (all fields: +1.29 ->
  +0.31 points) but the per-field error stays ~1.1-1.3 points: the finder's objects that are no
  labelled cell (fragments, white cells, platelets, clumps; 16% of found objects on IML) are
  counted, and a field of ~100 cells moves 1 point per call.
- Sensitivity at specificity >= 99.5% stops at 0.686 from 25 fields on: the few most confident
  "uninfected" test cells (strongly stained cells with neighbours' edges, cells with
  parasite-like chromatin the labels call uninfected) sit above most parasitized ones.
- int8 costs accuracy on IML after fine-tuning (Keras validation AUC up to 0.993; int8 epochs
  outside the export bounds are common), so the epochs kept are those int8 holds.
"""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="run folder (or bundle with its Keras model)")
    ap.add_argument("--cells", type=Path, required=True, help="IML cells from `edgekit cells`")
    ap.add_argument("--work", type=Path, required=True, help="where adapted bundles go (outside the repo)")
    ap.add_argument("--sizes", default="10,25,50,all")
    ap.add_argument("--epochs", type=int, default=12, help="at most (see --patience)")
    ap.add_argument("--patience", type=int, default=0, help="0: never stop early, as adapt")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--negatives-per-field", type=int, default=30, help="0: every one")
    ap.add_argument("--base-split", type=Path, default=None)
    ap.add_argument("--nih-split", default=None, help="NIH split file: also measure NIH test-patient AUC")
    ap.add_argument("--skip-existing", action="store_true", help="reuse adapted bundles already in --work")
    ap.add_argument("--allow-drop", action="store_true", help="keep an int8 file that misses its bound")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unadapted default bundle")
    ap.add_argument("--raw", default="site_adaptation_iml.json", help="raw JSON name in benchmarks/results")
    ap.add_argument("--field-cutoff", action="store_true",
                    help="also report each adapted bundle at the whole-field count cutoff of the "
                         "validation fields")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--render", action="store_true", help="only rewrite RESULTS.md from the raw JSON")
    ARGS = args = ap.parse_args(argv)
    if args.render:
        from edgekit.benchmarks.field_detection import update_results_md

        result = json.loads((HERE / "results" / args.raw).read_text())
        update_results_md(HERE / "RESULTS.md", _section(result), SECTION)
        return result

    from edgekit.adapt import AdaptConfig, adapt_model
    from edgekit.cells import block_split, iml_stain_group

    cache = args.work / "cache"
    index = json.loads((args.cells / "cells.json").read_text())
    fields = sorted(Path(f["field"]).stem for f in index["per_field"])
    parts = block_split(fields, (0.6, 0.2, 0.2), block=6, group_of=iml_stain_group, seed=0)
    split_file = args.work / "iml_fields_split.json"
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text(json.dumps(parts, indent=1) + "\n")
    truth = _field_truth(IML / "annotations.json", IML / "images")
    rows = [] if args.no_baseline else [
        evaluate_bundle(None, "default, not adapted", args.cells, parts["test"], truth, cache)]
    result = {"base": str(args.base), "cells": str(args.cells), "split": parts,
              "split_counts": {k: len(v) for k, v in parts.items()}, "epochs": args.epochs,
              "negatives_per_field": args.negatives_per_field, "patience": args.patience, "lr": args.lr,
              "host": platform.node(), "rows": rows}
    raw = HERE / "results" / args.raw
    for size in args.sizes.split(","):
        n = None if size == "all" else int(size)
        out = args.work / f"iml-{size}"
        if not (args.skip_existing and (out / "manifest.json").is_file()):
            cfg = AdaptConfig(epochs=args.epochs, patience=args.patience or None, lr=args.lr,
                              train_fields=n, negatives_per_field=args.negatives_per_field or None)
            t0 = time.perf_counter()
            adapt_model(args.base, args.cells, out, cfg, split_file=split_file, base_split=args.base_split,
                        replace=True, cache_dir=cache, allow_drop=args.allow_drop,
                        log=lambda s: print(s, flush=True))
            print(f"adapted {out} in {time.perf_counter() - t0:.0f} s", flush=True)
        rows.append(evaluate_bundle(out, f"adapted, {size} fields", args.cells, parts["test"], truth, cache))
        if args.field_cutoff:
            rows.append(evaluate_bundle(out, f"adapted, {size} fields, field-count cutoff", args.cells,
                                        parts["test"], truth, cache, val_fields=parts["val"]))
        print(_table(rows), flush=True)
        if not args.no_write:  # every row as soon as it is measured
            raw.write_text(json.dumps(result, indent=1) + "\n")
    if not args.no_write:  # the raw JSON is already written, after the last row
        from edgekit.benchmarks.field_detection import update_results_md

        update_results_md(HERE / "RESULTS.md", _section(result), SECTION)
    return result


def _targets(rows: list[dict[str, Any]]) -> str:
    """The issue's targets against the best adapted row of each measure (from the rows above)."""
    ad = [r for r in rows if r.get("adaptation")]
    if not ad:
        return ""
    auc = max(r["cells"]["auc"]["value"] for r in ad)
    sens = max(r["cells"]["at_specificity_0.995"]["sensitivity"] for r in ad)
    whole = min(r["whole_fields"]["mae_points"] for r in ad)
    matched = min(r["cells"]["parasitemia"]["mae_points"] for r in ad)
    met = auc >= 0.99 and sens >= 0.9 and whole <= 0.5
    return (f"\nTargets after adaptation (AUC >= 0.99, sensitivity >= 90% at specificity >= 99.5%, "
            f"parasitemia MAE <= 0.5 points): {'met' if met else '**not met**'}; best adapted row: AUC "
            f"{auc:.4f}, sensitivity {sens:.3f} at specificity >= 99.5%, MAE {whole:.2f} points on whole "
            f"fields ({matched:.2f} on matched cells).\n")


def _section(result: dict[str, Any]) -> str:
    sc = result["split_counts"]
    previous = HERE / "results" / "site_adaptation_iml_w8e3.json"
    before = ""
    if previous.is_file():
        old = json.loads(previous.read_text())
        before = (
            "\nPrevious curve (session 1: an NIH run stopped after 3 epochs as base, 4 epochs, at most 20 "
            "uninfected cells per field, random training fields, int8 ending at the softmax, the finder "
            "of that day; `benchmarks/results/site_adaptation_iml_w8e3.json`):\n\n" + _table(old["rows"]))
    return (
        f"{SECTION}\n\n"
        "IML dev fields split by blocks of 6 consecutive frames within each stain group: "
        f"{sc['train']} train, {sc['val']} validation, {sc['test']} test fields "
        "(`benchmarks/results/site_adaptation_iml.json` holds the split and every number). Adapted with "
        f"`edgekit adapt` ({result['epochs']} epochs, at most {result['negatives_per_field']} uninfected "
        "cells per training field, all parasitized ones, as many NIH training crops mixed in, early "
        f"stopping after {result.get('patience')} epochs without a better int8 validation AUC), cutoff "
        "chosen on the validation fields so the called count matches the labelled one. All numbers on "
        "the test fields through the int8 TFLite model.\n\n"
        + _table(result["rows"])
        + before
        + _targets(result["rows"])
        + "\nCommands: `edgekit cells ../shared/data/malaria_fields_iml/images --annotations "
        "../shared/data/malaria_fields_iml/annotations.json -o IML_CELLS`, then `python -m "
        "edgekit.benchmarks.site_adaptation --base RUNS/fast16-mod --cells IML_CELLS --work DIR "
        f"--nih-split RUNS/malaria_split.json --epochs {result['epochs']} --allow-drop --field-cutoff` "
        "(2 shared CPU cores; each size adapts in 2-4 minutes).\n"
        + NOTES
    )


if __name__ == "__main__":
    main()
