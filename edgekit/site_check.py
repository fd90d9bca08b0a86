# pyright: basic
"""``edgekit site check``: does a site bundle still hold on newly labelled fields of its site?

A gate measured once at adaptation time cannot protect the months after it. A site labels a sample
of new fields, cuts their cells with ``edgekit cells`` and runs this check: every crop goes through
the bundle **as the device runs it** (signature and file checks, the device runtime, the manifest's
preprocessing and cutoff), and the numbers are held to the bounds the bundle records.

Measured on the labelled cells (``NEW_SITE_CELLS/<class>/<field>__<i>.png``):
- cell AUC and sensitivity at specificity >= 99.5%;
- per-field parasitemia error: cells called parasitized at the manifest's cutoff vs labelled, in
  percentage points, averaged over fields;
- the domain guard's verdict per field (the share of fields it vouches for).
With ``--fields`` (the field images given to ``edgekit cells``): each field is also analysed whole, as
``edgekit field`` does (every cell the finder returns, labelled or not): the guard's verdict then
comes from the whole field, and the whole-field parasitemia error against the labelled fraction is
reported.

Bounds: the site gate's (``manifest.domain.gate.bounds``, recorded by ``edgekit adapt``:
``parasitemia_error``, the largest mean per-field error in points, on whole fields when ``--fields``
is given; ``auc`` and ``sensitivity_at_specificity`` (0.995), the lowest values), else
``edgekit.manifest.DEFAULT_GATE_BOUNDS``. A bound that cannot be measured (a sample without
parasitized cells has no AUC) does not hold, nor does a bundle that failed its own test fields when
it was adapted (its results say NOT VALIDATED whatever later fields measure). Light: numpy and the
device runtime.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import BundleError, DataError

# the gate's bounds (edgekit.manifest.GATE_BOUNDS, recorded by `edgekit adapt`) -> the measurement each
# holds here, and how: "max" must not exceed, "min" must reach. The parasitemia error is the whole-field
# one when --fields gives the field images (as adapt measured it), else the labelled cells' one.
BOUNDS = {
    "parasitemia_error": ("parasitemia_error_upper95_points", "max"),  # as adapt's gate: the upper bound
    "auc": ("auc_lower95", "min"),  # as adapt's gate: the lower end of its interval over the fields
    "sensitivity_at_specificity": ("sensitivity_at_specificity_0.995", "min"),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
REVIEW_TOP = 48  # disagreements kept per side, most confident first (the labels most worth checking)
CHUNK = 256  # crops decoded and classified at a time (bounded memory on a small device)


@dataclass
class CheckResult:
    """What ``site check`` measured and whether the bundle holds."""

    bundle: str
    model_format: str
    cells: int
    positive_cells: int
    fields: int
    measured: dict[str, float | None]
    bounds: dict[str, float]
    bounds_from: str
    failures: list[str] = field(default_factory=list)
    per_field: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    disagreements: dict[str, Any] = field(default_factory=dict)

    @property
    def holds(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"holds": self.holds, **{k: v for k, v in vars(self).items()}}


def gate_bounds(manifest: Any) -> tuple[dict[str, float], str]:
    """The bounds to hold (the site gate's, recorded by ``edgekit adapt``, else the defaults) and where
    they came from."""
    from edgekit.manifest import DEFAULT_GATE_BOUNDS

    gate = manifest.domain.gate if manifest.domain is not None else None
    if gate is None or not gate.bounds:
        return dict(DEFAULT_GATE_BOUNDS), "defaults: the bundle records no site gate"
    return dict(gate.bounds), "the bundle's site gate (edgekit adapt)"


def labelled_crops(data: Path, labels: Sequence[str]) -> list[tuple[Path, str, str]]:
    """(crop file, class, field) of every crop of an ``edgekit cells`` folder whose class is a label."""
    from edgekit.cells import field_of

    if not data.is_dir():
        raise DataError(f"site cells not found: {data} (a folder from `edgekit site cells`)")
    classes = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [c for c in classes if c not in labels]
    if unknown:
        raise DataError(f"{data}: class folder(s) {', '.join(unknown)} are not labels of the bundle "
                        f"({', '.join(labels)})")
    out = [(f, c, field_of(f)) for c in classes for f in sorted((data / c).iterdir())
           if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if not out:
        raise DataError(f"{data} holds no labelled cell images (want <class>/<field>__<i>.png from "
                        "`edgekit site cells`)")
    return out


def unfitted_crops(items: list[tuple[Path, str, str]], bundle_dir: Path,
                   include_fitted: bool = False) -> tuple[list[tuple[Path, str, str]], list[str]]:
    """``items`` without the crops of the fields ``bundle_dir`` was fitted on (its ``site adapt``
    training and validation fields), and those fields' names; everything when ``include_fitted``.
    A bundle measured on what it learnt from looks better than it is."""
    from edgekit.site_fields import fitted_fields

    fitted = set() if include_fitted else fitted_fields(bundle_dir)
    left_out = sorted({fld for _f, _c, fld in items if Path(fld).stem in fitted})
    if not left_out:
        return items, []
    kept = [i for i in items if Path(i[2]).stem not in fitted]
    if not kept:
        raise DataError(f"every field of these cells ({len(left_out)}) is one the bundle was fitted on (its "
                        "training and validation fields): label new fields to check it, or pass "
                        "--include-fitted to measure them anyway")
    return kept, left_out


def _whole_field_inputs(fields_dir: Path, data: Path, positive: str, fields: set[str]
                        ) -> tuple[dict[str, Path], dict[str, float]]:
    """The labelled fields' images in ``fields_dir`` and ``cells.json``'s labelled parasitemia per field
    (none without a ``cells.json``: then each field's labelled crops), checked before the measuring."""
    from edgekit.cells import CELLS_INDEX, labelled_parasitemia
    from edgekit.device.pipeline import image_files

    if not fields_dir.is_dir():
        raise DataError(f"--field-images: not a folder of field images: {fields_dir}")
    by_stem = {f.stem: f for f in image_files([fields_dir], "field") if f.stem in fields}
    if not by_stem:
        raise DataError(f"--field-images {fields_dir} holds none of the labelled fields "
                        f"(first: {min(fields)}); give the folder given to `edgekit site cells`")
    labelled = labelled_parasitemia(data, positive) if (data / CELLS_INDEX).exists() else {}
    return by_stem, labelled


def _bound_failures(measured: dict[str, float | None], bounds: dict[str, float]) -> list[str]:
    out = []
    for name, limit in bounds.items():
        key, kind = BOUNDS[name]
        v = measured.get(key)
        if v is None or not np.isfinite(v):
            out.append(f"{key} could not be measured on this sample (bound {name} {limit:g})")
        elif kind == "max" and v > limit:
            out.append(f"{key} {v:.3f} > {limit:g}")
        elif kind == "min" and v < limit:
            out.append(f"{key} {v:.3f} < {limit:g}")
    return out


def check_site(bundle: str | os.PathLike, data: str | os.PathLike,
               fields_dir: str | os.PathLike | None = None, model_format: str | None = None,
               allow_unsigned: bool | None = None, log: Callable[[str], None] | None = None,
               include_fitted: bool = False) -> CheckResult:
    """Measure ``bundle`` on the labelled cells ``data`` (and whole fields in ``fields_dir``) through
    the device runtime, against its manifest's gate bounds; see the module doc. Cells of the fields
    the bundle was fitted on are left out unless ``include_fitted``."""
    from edgekit.device.runtime import load_classifier

    say = log or (lambda _s: None)
    clf = load_classifier(bundle, model_format, allow_unsigned=allow_unsigned)
    manifest, decision = clf.manifest, clf.manifest.decision
    if manifest.positive_label is None:
        raise BundleError("site check needs a bundle with a positive label (manifest positive_label)")
    bounds, bounds_from = gate_bounds(manifest)
    items, fitted = unfitted_crops(labelled_crops(Path(data), manifest.labels), clf.bundle_dir,
                                   include_fitted)
    whole = None if fields_dir is None else _whole_field_inputs(  # refused before the measuring
        Path(fields_dir), Path(data), decision.counted_label, {i[2] for i in items})
    say(f"measuring {len(items)} labelled cells of {len(set(i[2] for i in items))} fields through "
        f"{clf.fmt}…")
    probs, scores, keep, skipped = _classify_items(items, clf)
    if not keep:
        raise DataError(f"none of the {len(items)} cell images in {data} could be read")
    p = np.asarray(probs, np.float64)
    y = np.array([items[k][1] == decision.counted_label for k in keep])
    g = np.array([items[k][2] for k in keep])
    fields = sorted(set(g.tolist()))
    called = decision.counted(p)
    measured = _cell_measures(y, p, g, called)
    per_field = _per_field(fields, g, y, called, scores, manifest.domain)
    notes = [f"{skipped} unreadable cell image(s) skipped"] if skipped else []
    if fitted:
        shown = ", ".join(fitted[:4]) + (" ..." if len(fitted) > 4 else "")
        notes.append(f"{len(fitted)} field(s) the bundle was fitted on (its training and validation fields: "
                     f"{shown}) left out: they cannot show whether it holds (--include-fitted keeps them, "
                     "e.g. to review their labels)")
    if whole is not None:
        _whole_fields(*whole, per_field, clf, y, g, measured, notes, say)
    _guard_share(per_field, manifest.domain, measured, notes)
    return CheckResult(
        bundle=str(clf.bundle_dir), model_format=clf.fmt, cells=int(len(y)), positive_cells=int(y.sum()),
        fields=len(fields), measured=measured, bounds=bounds, bounds_from=bounds_from,
        failures=_bound_failures(_held(measured), bounds) + _own_gate(manifest), per_field=per_field,
        notes=notes,
        disagreements=disagreements(Path(data), [items[k] for k in keep], p, y, called, decision),
    )


def disagreements(data: Path, items: list[tuple[Path, str, str]], p: np.ndarray, y: np.ndarray,
                  called: np.ndarray, decision: Any) -> dict[str, Any]:
    """The labelled cells the bundle contradicts: labelled negative but called (most confident
    first) and labelled positive but not called (least confident first), the first
    :data:`REVIEW_TOP` of each with their field and box (``cells.json``). On IML most of the
    confident ones are the labels' errors (rings and stippling boxed as plain red cells), which cap
    what a site's test can measure: they are the labels to check before adapting again."""
    from edgekit.cells import read_cells_index

    try:
        boxes = {c["file"]: c.get("box") for c in read_cells_index(data)["cells"]}
    except (DataError, KeyError, TypeError, AttributeError):
        boxes = {}
    sides = {"labelled_negative_called": np.flatnonzero(~y & called),
             "labelled_positive_not_called": np.flatnonzero(y & ~called)}
    out: dict[str, Any] = {"cutoff": decision.cutoff}
    for side, idx in sides.items():
        order = idx[np.argsort(-p[idx] if side == "labelled_negative_called" else p[idx], kind="stable")]
        out[side] = int(len(idx))
        cells = []
        for k in order[:REVIEW_TOP]:
            f, label, fld = items[int(k)]
            rel = f.relative_to(data).as_posix() if f.is_relative_to(data) else str(f)
            cells.append({"file": rel, "field": fld, "label": label, "p": round(float(p[k]), 4),
                          "box": boxes.get(rel)})
        out[f"{side}_cells"] = cells
    return out


def review_page(r: CheckResult, data: Path) -> str:
    """The disagreements of ``r`` as a self-contained HTML page (crops inline): the labels to check."""
    import html

    from edgekit.device.preprocess import read_image
    from edgekit.device.review import encode_png, gallery_page
    from edgekit.errors import ImageError

    d = r.disagreements
    cards = []
    sides = (("labelled_negative_called", (230, 30, 30)), ("labelled_positive_not_called", (240, 150, 0)))
    for side, colour in sides:
        for c in d.get(f"{side}_cells", []):
            try:
                png = encode_png(read_image(data / c["file"]))
            except ImageError:
                png = None
            box = "" if c["box"] is None else f" box {c['box']}"
            caption = (f"labelled <b>{html.escape(c['label'])}</b>, p={c['p']:.3f}<br>"
                       f"{html.escape(c['field'])}{html.escape(box)}<br>{html.escape(c['file'])}")
            cards.append((png, c["file"], caption, colour))
    summary = [f"{d.get('labelled_negative_called', 0)} cells labelled negative are called parasitized at "
               f"the cutoff {d.get('cutoff', 0):.3f}; {d.get('labelled_positive_not_called', 0)} labelled "
               "parasitized are not.",
               f"Bundle {r.bundle} ({r.model_format}), {r.cells} labelled cells of {r.fields} fields."]
    legend = ("Red frames: labelled negative, called parasitized (most confident first). Orange: labelled "
              "parasitized, not called (least confident first). A confident disagreement is often a label "
              "error: a ring, stippling or pigment boxed as a plain red cell.")
    hint = ("Check each against its field; correct the annotation file, cut the cells again "
            "(<code>edgekit site cells</code>) and adapt again. Do not edit only the test fields' labels: "
            "a test held to labels chosen by the model measures nothing.")
    return gallery_page(cards, "Labels to check", summary, legend, hint,
                        "The bundle agrees with every label.")


def _classify_items(
    items: list[tuple[Path, str, str]], clf: Any
) -> tuple[list[float], list[float | None], list[int], int]:
    """Each readable cell's probability and guard score (None without the bundle's domain), in
    chunks of :data:`CHUNK`: (probabilities, scores, indices of the read items, unreadable count)."""
    from edgekit.device.domain import cell_scores
    from edgekit.device.field.classify import classify_crops
    from edgekit.device.preprocess import read_image
    from edgekit.errors import ImageError

    probs: list[float] = []
    scores: list[float | None] = []
    keep: list[int] = []
    skipped = 0
    for start in range(0, len(items), CHUNK):
        crops = []
        for k in range(start, min(start + CHUNK, len(items))):
            try:
                crops.append(read_image(items[k][0]))
                keep.append(k)
            except ImageError:
                skipped += 1
        if crops:
            probs += classify_crops(crops, clf)
            dom = clf.manifest.domain
            scores += cell_scores(crops, dom) if dom is not None else [None] * len(crops)
    return probs, scores, keep, skipped


def _cell_measures(
    y: np.ndarray, p: np.ndarray, g: np.ndarray, called: np.ndarray
) -> dict[str, float | None]:
    """The labelled cells' AUC and sensitivity at specificity 99.5% (None with one class only), and
    the per-field parasitemia error of their calls (``called``; ``g``: each cell's field)."""
    from edgekit.metrics import (
        auc_lower_bound,
        binary_metrics,
        field_parasitemia_error,
        sensitivity_at_specificity,
    )

    measured: dict[str, float | None] = {}
    both = bool(y.any() and (~y).any())
    auc = binary_metrics(y, p, groups=g, n_boot=200)["auc"] if both else {}
    measured["auc"] = auc.get("value")
    measured["auc_lower95"] = auc_lower_bound(auc, int(y.sum()), int((~y).sum())) if both else None
    measured["sensitivity_at_specificity_0.995"] = (
        sensitivity_at_specificity(y, p, 0.995)["sensitivity"] if both else None)
    pe = field_parasitemia_error(g, y, called)
    measured["parasitemia_error_points"] = pe["mae_points"]
    measured["parasitemia_error_upper95_points"] = pe["mae_upper95_points"]
    measured["parasitemia_bias_points"] = pe["bias_points"]
    return measured


def _per_field(fields: list[str], g: np.ndarray, y: np.ndarray, called: np.ndarray,
               scores: list[float | None], domain: Any) -> list[dict[str, Any]]:
    """Each field's cells, labelled and called parasitemia, and the guard's verdict on its cells."""
    from edgekit.device.domain import field_verdict

    s = np.array([np.nan if v is None else v for v in scores], np.float64)
    per_field = []
    for f in fields:
        m = g == f
        per_field.append({
            "field": f, "cells": int(m.sum()), "labelled_parasitemia": float(y[m].mean()),
            "called_parasitemia": float(called[m].mean()),
            "guard": field_verdict([float(v) for v in s[m] if np.isfinite(v)], domain),
        })
    return per_field


def _guard_share(per_field: list[dict[str, Any]], domain: Any, measured: dict[str, float | None],
                 notes: list[str]) -> None:
    """The share of fields the guard vouches for (None without the bundle's domain), and a note
    when it does not vouch for every field."""
    vouched = [r["guard"]["ok"] for r in per_field]
    measured["guard_ok_share"] = float(np.mean(vouched)) if domain is not None else None
    if domain is None:
        notes.append("the bundle has no domain guard statistics: no field can be vouched for")
    elif measured["guard_ok_share"] is not None and measured["guard_ok_share"] < 1.0:
        notes.append(f"the guard does not vouch for {vouched.count(False)} of {len(vouched)} fields: "
                     "screening there is marked NOT VALIDATED and referred")


def _own_gate(manifest: Any) -> list[str]:
    """A failure when the bundle failed its own test fields at adaptation: every result it gives says
    NOT VALIDATED whatever later fields measure, so it cannot be said to hold."""
    gate = manifest.domain.gate if manifest.domain is not None else None
    if gate is None or gate.passed:
        return []
    return [f"the bundle failed its own test fields when it was adapted ({gate.summary()}): every result "
            "it gives says NOT VALIDATED"]


def _held(measured: dict[str, float | None]) -> dict[str, float | None]:
    """The measurements the bounds hold: whole-field parasitemia error where whole fields were counted."""
    whole = measured.get("whole_field_parasitemia_error_upper95_points")
    return measured if whole is None else {**measured, "parasitemia_error_upper95_points": whole}


def _whole_fields(by_stem: dict[str, Path], labelled: dict[str, float], per_field: list[dict[str, Any]],
                  clf: Any, y: np.ndarray, g: np.ndarray, measured: dict[str, float | None], notes: list[str],
                  say: Callable[[str], None]) -> None:
    """Each labelled field analysed whole (``edgekit field``): its guard verdict replaces the one from
    the labelled crops, and the whole-field parasitemia error is measured against ``labelled`` (else
    the field's labelled crops)."""
    from edgekit.device.field.classify import analyze_field
    from edgekit.metrics import mean_upper_bound

    truth = {f: labelled.get(f, float(np.mean(y[g == f]))) for f in (r["field"] for r in per_field)}
    missing = [r["field"] for r in per_field if r["field"] not in by_stem]
    if missing:
        notes.append(f"{len(missing)} labelled field(s) have no image in --field-images: judged on their "
                     "crops")
    errors = []
    say(f"analysing {len(per_field) - len(missing)} whole fields…")
    for r in per_field:
        if r["field"] in missing:
            continue
        rep = analyze_field(by_stem[r["field"]], clf)
        if rep.rejected:
            r["whole_field"] = {"rejected": rep.rejected}
            continue
        called = rep.n_parasitized / rep.n_cells if rep.n_cells else 0.0
        r["whole_field"] = {"cells": rep.n_cells, "called_parasitemia": called,
                            "labelled_parasitemia": truth[r["field"]]}
        r["guard"] = rep.domain
        errors.append(100.0 * (called - truth[r["field"]]))
    measured["whole_field_parasitemia_error_points"] = float(np.mean(np.abs(errors))) if errors else None
    measured["whole_field_parasitemia_error_upper95_points"] = (
        mean_upper_bound(np.abs(errors)) if errors else None)
    measured["whole_field_parasitemia_bias_points"] = float(np.mean(errors)) if errors else None


def report_lines(r: CheckResult) -> list[str]:
    """The human-readable report."""
    m = r.measured

    def num(key: str, fmt: str = ".4f") -> str:
        v = m.get(key)
        return "-" if v is None else format(v, fmt)

    lines = [
        f"site check of {r.bundle} ({r.model_format}): {r.cells} labelled cells "
        f"({r.positive_cells} parasitized) from {r.fields} fields",
        f"  cell AUC {num('auc')} (lower 95% bound {num('auc_lower95')}); sensitivity "
        f"{num('sensitivity_at_specificity_0.995', '.3f')} at "
        "specificity >= 99.5%",
        f"  per-field parasitemia error {num('parasitemia_error_points', '.2f')} points (upper 95% bound "
        f"{num('parasitemia_error_upper95_points', '.2f')}, bias {num('parasitemia_bias_points', '+.2f')})",
    ]
    if "whole_field_parasitemia_error_points" in m:
        lines.append(f"  whole-field parasitemia error {num('whole_field_parasitemia_error_points', '.2f')} "
                     f"points (upper 95% bound {num('whole_field_parasitemia_error_upper95_points', '.2f')}, "
                     f"bias {num('whole_field_parasitemia_bias_points', '+.2f')})")
    share = m.get("guard_ok_share")
    lines.append("  domain guard: " + ("no statistics in the bundle" if share is None else
                                        f"vouches for {share:.0%} of the fields"))
    d = r.disagreements
    if d:
        lines.append(f"  labels the bundle contradicts: {d['labelled_negative_called']} labelled negative "
                     f"called parasitized, {d['labelled_positive_not_called']} labelled parasitized not "
                     "called (--review PAGE shows the most confident: often label errors worth checking)")
    lines += [f"  note: {n}" for n in r.notes]
    bounds = ", ".join(f"{k} {'<=' if BOUNDS[k][1] == 'max' else '>='} {v:g}" for k, v in r.bounds.items())
    lines.append(f"  bounds ({r.bounds_from}): {bounds}")
    lines.append("HOLDS: every bound is met" if r.holds else "DOES NOT HOLD: " + "; ".join(r.failures)
                 + ": re-adapt the site or refer its results to microscopy")
    return lines
