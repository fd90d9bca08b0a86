# pyright: basic
"""``edgekit adapt``: fine-tune a run or bundle on one site's labelled cells and ship a site bundle.

The site's cells (from ``edgekit cells``: ``SITE/<class>/<field>__<i>.png``) are split by field, in
blocks of consecutive frames (:func:`edgekit.cells.block_split`), into train / validation / test.
The base model's Keras file is fine-tuned on the site's training cells mixed with a share of its
own original training data (its split's train part, by patient as it was trained), so it learns
the site without forgetting the original microscope. Each source's classes are weighted equally
(a site at 1% parasitemia would otherwise teach "never parasitized"); training crops are read raw
and go through the base run's own augmentation, then the stain normalization, as in ``edgekit
train``. Every epoch is quantized to int8 as the export will; the epoch with the best int8 AUC on
the site's validation cells, within the export's int8 bounds where one is, is kept (with
``patience``, training stops after that many epochs without a better one). The cutoff, uncertain
band and field rule are then chosen again on the site's validation fields, on the kept model's
int8 outputs (:mod:`edgekit.thresholds`), the model is
exported and validated like ``edgekit export`` (same code, the site's training cells calibrate
int8), measured on the site's test fields through the device runtime, and the manifest records
the provenance: base model sha256, site data hash, fields and cells used.

Everything is built in a temporary folder beside the output and renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import random
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from edgekit.adapt_config import AdaptConfig
from edgekit.cells import read_cells_index
from edgekit.errors import BundleError, DataError
from edgekit.manifest import MANIFEST_NAME
from edgekit.safefile import check_replaceable, replace_dir
from edgekit.site_fields import FIELDS_SPLIT
from edgekit.site_focus import site_focus

if TYPE_CHECKING:
    from edgekit.formats import FormatSpec

FIELD_CUTOFFS = ("field-count", "field-error")  # chosen on whole validation fields: need the images
SITE_SPLIT = "site_split.json"
MIN_SE_FIELDS = 10  # fewer validation fields than this: field_error_cutoff takes the smallest error
Log = Callable[[str], None]


# --------------------------------------------------------------------------- inputs


def trainable_model(source: Path) -> tuple[Any, Path, str]:
    """(manifest, keras path, keras sha256) of a run folder or bundle holding a Keras model."""
    from edgekit.manifest import load_manifest, verify_artifact

    source = Path(source)
    if not source.is_dir():
        raise BundleError(f"{source}: not a run folder or bundle")
    _check_base_trust(source)
    manifest = load_manifest(source)
    art = manifest.artifacts.get("keras")
    if art is None or not (source / art.path).is_file():
        raise BundleError(
            f"{source} has no trainable model (no Keras file in its manifest; device bundles carry only "
            "int8/fp32 files): adapt a training run folder or a bundle exported with its model.keras"
        )
    verify_artifact(source, art)
    return manifest, source / art.path, art.sha256


def _check_base_trust(source: Path) -> None:
    """A signed base must verify (a site bundle inherits what it vouches for), and a revoked or
    rolled-back one is refused; an unsigned training run folder is adapted as it is."""
    from edgekit.manifest import read_manifest_data
    from edgekit.signing import SIGNATURE_NAME, check_bundle

    trust = check_bundle(source, read_manifest_data(source))
    if trust.refused or (not trust.trusted and (source / SIGNATURE_NAME).exists()):
        raise BundleError(f"refusing to adapt {source}: {trust.reason}")


def recorded_fields_dir(site: Path) -> Path | None:
    """The folder of field images ``edgekit cells`` cut the site's cells from, when it is still here."""
    try:
        folder = read_cells_index(site)["summary"].get("fields_dir")
    except (DataError, KeyError, TypeError, AttributeError):
        return None
    return Path(folder) if folder and Path(folder).is_dir() else None


def labelled_parasitemia(site: Path) -> dict[str, float]:
    """Labelled parasitemia per field stem (parasite boxes / all labelled cells) from the site's
    ``cells.json`` (written by ``edgekit cells``); the truth a whole-field count is held to."""
    from edgekit.cells import labelled_parasitemia as from_index

    try:
        return from_index(site)
    except DataError as exc:
        raise DataError(f"{site}/cells.json (from `edgekit site cells`) is missing or unreadable: "
                        f"{exc}") from None


def _field_rows(site: Path) -> list[dict[str, Any]]:
    """``cells.json``'s per-field entries (none when it is missing or unreadable)."""
    try:
        rows = read_cells_index(site)["per_field"]
    except (DataError, KeyError):
        return []
    return [r for r in rows if isinstance(r, dict) and "field" in r] if isinstance(rows, list) else []


def incompletely_labelled_fields(site: Path) -> set[str]:
    """Field stems whose boxes likely miss cells (:func:`edgekit.cells.incompletely_labelled`): their
    labelled parasitemia is no truth to choose a cutoff by, and their unboxed objects may be parasites."""
    from edgekit.cells import incompletely_labelled

    try:
        return {Path(r["field"]).stem for r in incompletely_labelled(_field_rows(site))}
    except (KeyError, TypeError, AttributeError):
        return set()


def label_coverage_note(whole: dict[str, Any], site: Path) -> str | None:
    """One line when some of these whole fields look incompletely labelled: their error apart from
    the rest's, so a site knows which boxes to complete (``whole`` from :func:`whole_field_error`,
    which gains the split as ``label_coverage``)."""
    from edgekit.cells import label_coverage, split_errors

    try:
        coverage = {Path(r["field"]).stem: label_coverage(r) for r in _field_rows(site)}
    except (KeyError, TypeError, AttributeError):
        return None
    split = split_errors(whole["per_field"], coverage)
    whole["label_coverage"] = split
    low = split["incompletely_labelled"]
    if not low or not coverage:
        return None
    rest, there = split["fully_labelled_mae_points"], split["incompletely_labelled_mae_points"]
    return (f"{len(low)} of {split['fields']} test fields look incompletely labelled ({', '.join(low[:4])}"
            f"{' ...' if len(low) > 4 else ''}): whole-field error {there:.2f} points there, "
            f"{'-' if rest is None else f'{rest:.2f}'} on the rest; complete their boxes "
            "(cells.json: label_coverage) and adapt again")


def whole_field_inputs(image: Path, pre: Any, focus: dict[str, Any] | None = None) -> np.ndarray | None:
    """Every cell the device finds on a field image, cropped and prepared as the device does;
    None when the field is refused (``focus``: the bundle's focus rule, a manifest's ``focus``) or
    holds no cell."""
    from edgekit.device.field import count_cells, crop_cell
    from edgekit.device.field.focus import FocusRule
    from edgekit.device.preprocess import prepare, read_image

    rgb = read_image(image)
    cells, _, reason = count_cells(rgb, rule=FocusRule.from_dict(focus))
    if reason or not cells:
        return None
    return np.stack([prepare(crop_cell(rgb, c), pre) for c in cells])


def field_count_cutoff(probs: list[np.ndarray], truth: list[float]) -> float:
    """The cutoff at which the cells called over whole fields (every found cell, labelled or not)
    add up to the labelled parasitemia: the k-th highest probability, k = sum of labelled fraction
    x found cells. Objects the finder returns that are no labelled cell count as they will on the
    device, so the whole-field count is unbiased on these fields."""
    p = np.sort(np.concatenate(probs).astype(np.float64))[::-1]
    k = int(round(sum(t * len(q) for q, t in zip(probs, truth, strict=True))))
    if k == 0 or not len(p):
        return 1.0
    return float(np.clip(p[min(k, len(p)) - 1], 0.0, 1.0))


def field_error_cutoff(probs: list[np.ndarray], truth: list[float]) -> float:
    """The cutoff for whole-field counts (every found cell counts, as on the device), judged by the
    mean per-field error |called - labelled|: the number the site gate holds. Matching the total count
    (:func:`field_count_cutoff`) spreads a few confident false calls over fields without parasites;
    this weighs each field as the gate does.

    The highest cutoff whose mean error is within one standard error (over the fields) of the
    smallest (the one-standard-error rule), below 1.0 unless the smallest is at 1.0; with fewer than
    MIN_SE_FIELDS fields, the smallest (ties to the higher cutoff). A field's error curve is flat over
    a wide range of cutoffs and its minimum is noise: on 41 IML site bundles (sessions 8-12, their
    own test fields) the smallest-error cutoff gave a mean whole-field error of 1.18 points, this rule
    0.97 (lower on 37; 0.83 -> 0.76 on the fully labelled fields, lower on 29;
    benchmarks/results/site_cutoff_rule_iml.json)."""
    if not probs or not any(len(q) for q in probs):
        return 1.0
    candidates, error = field_error_curves(probs, truth)
    mean = error.mean(axis=0)
    best = int(np.flatnonzero(mean <= mean.min() + 1e-12)[-1])
    if len(error) >= MIN_SE_FIELDS and candidates[best] < 1.0:
        within = mean <= mean[best] + error[:, best].std(ddof=1) / np.sqrt(len(error)) + 1e-12
        best = int(np.flatnonzero(within & (candidates < 1.0))[-1])
    return float(np.clip(candidates[best], 0.0, 1.0))


def field_error_curves(probs: list[np.ndarray], truth: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(candidate cutoffs: every probability and 1.0, ascending; per field with cells x candidate:
    |called fraction - labelled fraction|)."""
    candidates = np.unique(np.concatenate([np.concatenate(probs).astype(np.float64), [1.0]]))
    rows = []
    for q, t in zip(probs, truth, strict=True):
        if len(q):
            q = np.sort(np.asarray(q, np.float64))
            rows.append(np.abs((len(q) - np.searchsorted(q, candidates, side="left")) / len(q) - t))
    return candidates, np.stack(rows)


def find_field_images(fields_dir: Path, stems: list[str]) -> dict[str, Path]:
    """Field image path per stem in ``fields_dir`` (DataError naming the missing ones)."""
    from edgekit.device.preprocess import is_image_file

    if not Path(fields_dir).is_dir():
        raise DataError(f"--field-images: not a folder of field images: {fields_dir}")
    found = {p.stem: p for p in Path(fields_dir).iterdir() if is_image_file(p)}
    missing = [s for s in stems if s not in found]
    if missing:
        raise DataError(f"{len(missing)} validation fields are not in {fields_dir} (e.g. {missing[0]}): "
                        "--field-images must be the folder given to `edgekit site cells`")
    return {s: found[s] for s in stems}


def spread(fields: list[str], n: int) -> list[str]:
    """``n`` fields evenly spaced over the sorted (consecutive) fields, as a site would label a few
    fields from each of its slides and stain batches (a random 10 of IML's 102 training fields were
    all from its first stain batch: the model and its int8 calibration never saw the second)."""
    ordered = sorted(fields)
    return [ordered[(2 * k + 1) * len(ordered) // (2 * n)] for k in range(n)]


def _read_field_split(split_file: Path) -> dict[str, list[str]]:
    """The field stems of each part of a --fields-split file; a part it does not know (``tset``,
    ``extra``) is refused, never left out without a word."""
    from edgekit.safefile import read_text_argument
    from edgekit.splits import PARTS

    try:
        raw = json.loads(read_text_argument(split_file, 16 << 20, "field split file"))
        if isinstance(raw, dict) and (unknown := sorted(set(raw) - set(PARTS))):
            raise DataError(f"bad field split file {split_file}: unknown part(s) "
                            f"{', '.join(map(repr, unknown))} (want only train/val/test lists)")
        return {k: sorted({Path(n).stem for n in raw[k]}) for k in PARTS}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"bad field split file {split_file}: {exc} (want train/val/test lists)") from None


def field_split(fields: list[str], cfg: AdaptConfig, split_file: Path | None,
                log: Log | None = None) -> dict[str, list[str]]:
    """train/val/test field stems: from ``split_file`` (JSON of field names per part), else blocks.
    Fields the split file names that have no cells here are left out, and ``log`` names them."""
    from edgekit.cells import block_split

    if split_file is None:
        parts = block_split(fields, cfg.fractions, cfg.block, seed=cfg.seed)
    else:
        parts = _read_field_split(split_file)
        named = set().union(*parts.values())
        if not named & set(fields):
            raise DataError(f"the field split {split_file} names none of the site's fields")
        # fields whose labelled cells the cell finder never found have no crops: nothing to split
        absent = sorted(named - set(fields))
        if absent and log is not None:
            log(f"field split: {len(absent)} field(s) it names have no cells here, left out "
                f"({', '.join(absent[:4])}{' ...' if len(absent) > 4 else ''})")
        parts = {k: [f for f in v if f in set(fields)] for k, v in parts.items()}
        tr, va, te = (set(parts[k]) for k in ("train", "val", "test"))
        if tr & (va | te) or va & te:
            raise DataError("the field split puts one field in two parts")
    if cfg.train_fields is not None:
        if cfg.train_fields > len(parts["train"]):
            raise DataError(f"--train-fields {cfg.train_fields}, but there are only "
                            f"{len(parts['train'])} training fields")
        parts["train"] = spread(parts["train"], cfg.train_fields)
    for name in ("train", "val"):
        if not parts[name]:
            raise DataError(f"no {name} fields: label more fields (a site needs train and validation fields)")
    return parts


def _site_split(site: Path, ds: Any, labels: list[str], positive: str, fields: dict[str, list[str]],
                cfg: AdaptConfig, hard: set[str] | None = None) -> Any:
    """A :class:`edgekit.splits.Split` of the site crops ``ds`` (scanned grouped by field); ``hard``:
    training negatives kept before the random ones (:func:`hard_negatives`)."""
    from edgekit.cells import GROUP_REGEX, field_of
    from edgekit.splits import PARTS, Split, check_no_leakage

    if sorted(ds.classes) != sorted(labels):
        raise DataError(f"the site's classes {ds.classes} are not the model's labels {labels}")
    where = {f: part for part, names in fields.items() for f in names}
    parts: dict[str, list] = {p: [] for p in PARTS}
    for item in ds.items:
        part = where.get(field_of(item.path))
        if part is not None:
            parts[part].append(item)
    if cfg.negatives_per_field is not None:
        parts["train"] = _capped_negatives(parts["train"], ds.classes, positive, cfg.negatives_per_field,
                                           cfg.seed, hard or set())
    check_no_leakage(parts)
    for name in ("train", "val"):
        present = {ds.classes[i.label] for i in parts[name]}
        if len(present) < 2:
            raise DataError(f"the site's {name} fields hold only {', '.join(present) or 'no'} cells: "
                            "both classes are needed (label more fields or choose other ones)")
    return Split(classes=ds.classes, parts=parts, group_mode=GROUP_REGEX, seed=0,
                 data_root=str(site.resolve()))


def _capped_negatives(items: list, classes: list[str], positive: str, cap: int, seed: int,
                      hard: set[str]) -> list:
    """Every positive item, and at most ``cap`` negatives per field: those in ``hard`` first, the rest
    drawn at random."""
    rng = random.Random(seed)
    by_field: dict[str, list] = {}
    for item in items:
        by_field.setdefault(item.group, []).append(item)
    kept = []
    for group in sorted(by_field):
        neg = [i for i in by_field[group] if classes[i.label] != positive]
        kept += [i for i in by_field[group] if classes[i.label] == positive]
        first = [i for i in neg if i.path in hard][:cap]
        rest = [i for i in neg if i not in first]
        kept += first + rng.sample(rest, min(len(rest), cap - len(first)))
    return sorted(kept, key=lambda i: i.path)


def hard_negatives(split: Any, keras_path: Path, labels: list[str], positive: str, site: Path, pre: Any,
                   per_field: int, cache_dir: Path | None) -> set[str]:
    """The ``per_field`` training negatives of each fully labelled field that the model in
    ``keras_path`` scores most positive (paths); a field whose boxes miss cells gives none (its
    "uninfected" cells that look parasitized may be parasitized)."""
    from edgekit.export.bundle import load_keras
    from edgekit.parts import predict_arrays

    skip = incompletely_labelled_fields(site)
    items = [i for i in split.parts["train"] if split.classes[i.label] != positive and i.group not in skip]
    if per_field <= 0 or not items:
        return set()
    sub = dataclasses.replace(split, parts={**split.parts, "train": items})
    x, _, groups, paths = _arrays(sub, "train", labels, pre, cache_dir)
    scores = predict_arrays(load_keras(keras_path), x)[:, labels.index(positive)]
    return top_per_group(list(paths), list(groups), scores, per_field)


def top_per_group(paths: list[str], groups: list[str], scores: np.ndarray, k: int) -> set[str]:
    """The ``k`` paths of each group that score highest (ties: the earlier first)."""
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    top: set[str] = set()
    for idx in by_group.values():
        top.update(paths[i] for i in sorted(idx, key=lambda i: -scores[i])[:k])
    return top


def _arrays(split: Any, part: str, labels: list[str], pre: Any, cache_dir: Path | None,
            keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(x uint8, y as the model's label index, groups, paths) of one split part."""
    from edgekit.data import load_images

    items = split.parts.get(part, [])
    if keep is not None:
        items = [items[i] for i in keep]
    paths = [i.path for i in items]
    if not paths:
        h, w = pre.input_size
        return np.zeros((0, h, w, pre.channels), np.uint8), np.zeros(0, np.int32), np.zeros(0, str), []
    x, bad = load_images(Path(split.data_root), paths, pre, cache_dir=cache_dir)
    bad_set = {p for p, _ in bad}
    items = [i for i in items if i.path not in bad_set]
    y = np.array([labels.index(split.classes[i.label]) for i in items], np.int32)
    return x, y, np.array([i.group for i in items]), [i.path for i in items]


def _base_sample(manifest: Any, source: Path, base_data: Path | None, n: int, seed: int,
                 cache_dir: Path | None, log: Log, pre: Any) -> tuple[np.ndarray, np.ndarray]:
    """About ``n`` of the base model's own training crops (raw, stratified): from the base run's split
    when it is on this machine (or ``--base-split``), else from the replay sample its bundle carries
    (:mod:`edgekit.replay`; all of it when it holds fewer than ``n``)."""
    from edgekit.export.calibration import stratified_sample
    from edgekit.replay import REPLAY_FILE, read_replay
    from edgekit.splits import load_split

    split_file = _base_source(manifest, source)
    if split_file is not None:
        split, _ = load_split(split_file, data_root=base_data)
        labels = manifest.labels
        y_all = np.array([labels.index(split.classes[i.label]) for i in split.parts["train"]])
        keep = stratified_sample(y_all, n, seed)
        x, y, _, _ = _arrays(split, "train", labels, pre, cache_dir, keep)
        log(f"base data: {len(y)} crops from the train part of {split_file}")
        return x, y
    x, y = read_replay(source / REPLAY_FILE)  # verified with the Keras artifact
    keep = stratified_sample(y, n, seed)
    log(f"base data: {len(keep)} crops of the replay sample the bundle carries ({len(y)} in all)")
    return x[keep], y[keep]


def _base_source(manifest: Any, source: Path) -> Path | None:
    """Where the base model's own crops come from: its run's split file when it is on this machine (or
    ``--base-split``), None for the replay sample its bundle carries; DataError when neither is here."""
    from edgekit.paths import resolve_recorded
    from edgekit.replay import REPLAY_FILE

    recorded = manifest.training.get("split_file")
    split_file = resolve_recorded(recorded, source) if recorded else None
    if split_file is not None and split_file.is_file():
        return split_file
    if REPLAY_FILE in manifest.artifacts["keras"].extra_files:
        return None
    raise DataError(
        f"the base model's training data is not here (no split {recorded or 'recorded'}, no replay sample in "
        "its bundle): pass --base-split SPLIT.json (its original data, by patient) or --base-share 0 to "
        "fine-tune on site data alone (it then forgets the original microscope)"
    )


def _found_objects(site: Path, train_fields: list[str], cfg: AdaptConfig, pre: Any, cache_dir: Path | None,
                   scores: Callable[[list[str]], np.ndarray] | None = None) -> np.ndarray:
    """Up to ``cfg.objects_per_field`` crops per training field of the objects the finder returned
    there that are no labelled cell (``SITE/.objects`` from ``edgekit cells``); none when absent. Of
    those, ``cfg.hard_objects`` per field are the ones ``scores`` (the base model's positive
    probability of each path) ranks highest, the rest drawn at random."""
    from edgekit.cells import OBJECTS_DIR, field_of
    from edgekit.data import load_images

    folder = Path(site) / OBJECTS_DIR
    if cfg.objects_per_field <= 0 or not folder.is_dir():
        return np.zeros((0, *pre.input_size, pre.channels), np.uint8)
    wanted = set(train_fields) - incompletely_labelled_fields(site)
    by_field: dict[str, list[str]] = {}
    for f in sorted(folder.iterdir()):
        if f.suffix == ".png" and field_of(f) in wanted:
            by_field.setdefault(field_of(f), []).append(f"{OBJECTS_DIR}/{f.name}")
    hard: set[str] = set()
    if cfg.hard_objects and scores is not None and by_field:
        every = [p for fld in sorted(by_field) for p in by_field[fld]]
        hard = top_per_group(every, [field_of(p) for p in every], scores(every),
                             min(cfg.hard_objects, cfg.objects_per_field))
    rng = random.Random(cfg.seed)
    paths = []
    for fld in sorted(by_field):
        first = [p for p in by_field[fld] if p in hard]
        rest = [p for p in by_field[fld] if p not in hard]
        paths += first + rng.sample(rest, min(len(rest), cfg.objects_per_field - len(first)))
    if not paths:
        return np.zeros((0, *pre.input_size, pre.channels), np.uint8)
    x, _ = load_images(Path(site), paths, pre, cache_dir=cache_dir)
    return x


def base_scores(keras_path: Path, site: Path, pre: Any, positive: int,
                cache_dir: Path | None) -> Callable[[list[str]], np.ndarray]:
    """The base model's positive probability of crops of ``site`` (paths relative to it), prepared
    with ``pre`` as the device prepares them; -inf for a crop that cannot be read."""
    def scores(paths: list[str]) -> np.ndarray:
        from edgekit.data import load_images
        from edgekit.export.bundle import load_keras
        from edgekit.parts import predict_arrays

        x, bad = load_images(Path(site), paths, pre, cache_dir=cache_dir)
        unread = {p for p, _ in bad}
        out = np.full(len(paths), -np.inf)
        read = [k for k, p in enumerate(paths) if p not in unread]
        if read:
            out[read] = predict_arrays(load_keras(keras_path), x)[:, positive]
        return out

    return scores


def _weights(y: np.ndarray, n_classes: int, total: float) -> np.ndarray:
    """Per-sample weights: each class of this source gets an equal share of ``total``."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = int((counts > 0).sum())
    return np.array([total / (present * counts[k]) for k in y], np.float32)


# --------------------------------------------------------------------------- outputs


def site_metrics(y: np.ndarray, p: np.ndarray, fields: np.ndarray, cutoff: float) -> dict[str, Any]:
    """Cell AUC, sensitivity at specificity >= 99.5%, the call at the cutoff, and per-field
    parasitemia error, on matched labelled cells (``y`` True = positive)."""
    from edgekit.metrics import binary_metrics, field_parasitemia_error, sensitivity_at_specificity

    m = binary_metrics(y, p, cutoff, groups=fields, n_boot=200)
    return {
        "cells": int(len(y)), "positive_cells": int(np.sum(y)), "fields": int(len(np.unique(fields))),
        "auc": m["auc"], "cutoff": cutoff,
        "sensitivity": m["sensitivity"], "specificity": m["specificity"], "confusion": m["confusion"],
        "at_specificity_0.995": sensitivity_at_specificity(y, p, 0.995),
        "parasitemia": field_parasitemia_error(fields, y, p >= cutoff),
    }


def device_probs(bundle: Path, manifest: Any,
                  fmt: str = "tflite_int8") -> Callable[[np.ndarray], np.ndarray]:
    """Positive-class probabilities through the device runtime of the exported format (loaded once)."""
    from edgekit.export.bundle import load_runner
    from edgekit.formats import get

    art = manifest.artifacts[fmt]
    runner = load_runner(get(fmt), bundle / art.path, output=art.output, activation=art.activation)
    return lambda x: runner.predict(x)[:, manifest.positive_index]


def adapt_model(
    model: Path, site: Path, out: Path, cfg: AdaptConfig, split_file: Path | None = None,
    base_split: Path | None = None, base_data: Path | None = None, formats: str = "tflite_int8",
    replace: bool = False, cache_dir: Path | None = None, allow_drop: bool = False, log: Log = print,
    fields_dir: Path | None = None,
) -> Any:
    """Fine-tune ``model`` on ``site`` and write the validated site bundle ``out``; returns its manifest.

    The bundle's guard carries the gate (:class:`edgekit.manifest.Gate`): the test fields measured
    through the exported model against ``cfg.gate``; when it fails, the bundle is written but
    vouches for nothing (the caller decides the exit status)."""
    from edgekit.cells import GROUP_REGEX
    from edgekit.data import scan_dataset
    from edgekit.export.options import ExportOptions
    from edgekit.manifest import Manifest, load_manifest

    out = Path(out)
    check_replaceable(out, replace, MANIFEST_NAME, "a bundle", DataError, source=Path(model))
    base_manifest, keras_path, base_sha = trainable_model(Path(model))
    if len(base_manifest.labels) != 2 or base_manifest.positive_label is None:
        raise BundleError("adapt needs a two-class model with a positive label")
    labels = base_manifest.labels
    pos = base_manifest.positive_index
    site = Path(site)
    ds = scan_dataset(site, group_mode=GROUP_REGEX)  # DataError for one class, empty folders...
    fields = field_split(sorted({i.group for i in ds.items}), cfg, split_file, log)
    fmts = _export_formats(formats)
    if base_split is not None:
        base_manifest.training = {**base_manifest.training, "split_file": str(Path(base_split).resolve())}
    if cfg.base_share > 0:
        _base_source(base_manifest, Path(model))  # refused now, not after the site's cells are scored
    fields_dir = Path(fields_dir) if fields_dir is not None else recorded_fields_dir(site)
    cfg = _resolved_cutoff(cfg, fields_dir, log)
    images, truth = _field_images_and_truth(site, fields_dir, fields, cfg)
    hard = None
    if cfg.hard_negatives and cfg.negatives_per_field is not None:
        every = _site_split(site, ds, labels, base_manifest.positive_label, fields,
                            dataclasses.replace(cfg, negatives_per_field=None))
        hard = hard_negatives(every, keras_path, labels, base_manifest.positive_label, site,
                              base_manifest.preprocessing, cfg.hard_negatives, cache_dir)
        log(f"site: {len(hard)} hard negatives (the base model's highest-scoring uninfected cells of each "
            "fully labelled training field) kept first")
    pre = base_manifest.preprocessing
    # training crops are read raw and go through augmentation, then the stain normalization, in the
    # training pipeline (as `edgekit train` does); validation and test crops get the device's prepare()
    raw = dataclasses.replace(pre, stain="none")
    scores = base_scores(keras_path, site, pre, pos, cache_dir)

    def training_set(member_cfg: AdaptConfig) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, int]:
        """(split, crops, labels, weights, base crops) of one fine-tuning run: its seed draws the
        capped negatives, the found objects and the replay sample."""
        msplit = _site_split(site, ds, labels, base_manifest.positive_label, fields, member_cfg, hard)
        xs, ys = _site_training_cells(msplit, site, fields["train"], labels, pos, raw, member_cfg, cache_dir,
                                      log, scores)
        return (msplit, *_with_base_cells(xs, ys, base_manifest, Path(model), base_data, member_cfg,
                                          cache_dir, log, raw))

    split, x, y, w, n_base = training_set(cfg)
    xv, yv, gv, _ = _arrays(split, "val", labels, pre, cache_dir)
    xt, yt, gt, _ = _arrays(split, "test", labels, pre, cache_dir)
    log(f"site: {len(y) - n_base} train cells ({int((y[:len(y) - n_base] == pos).sum())} {labels[pos]}) "
        f"from {len(fields['train'])} fields, {len(yv)} val cells from {len(fields['val'])}, "
        f"{len(yt)} test cells from {len(fields['test'])}")
    # the site's focus floor (issue 22) first: the validation and test fields are judged by the rule
    # the bundle will carry, as a device running it judges them
    focus = site_focus(fields_dir, fields["train"], log)
    # every cell the finder returns on each validation and test field, prepared once
    whole = {stem: whole_field_inputs(path, pre, focus) for stem, path in sorted(images.items())}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        x_cal = _calibration_crops(fmts, split, labels, pre, cfg, cache_dir)
        tune = functools.partial(_fine_tune, keras_path, xv=xv, yv=yv, pos=pos, log=log,
                                 base_config=base_manifest.training.get("config") or {},
                                 stain_norm=pre.stain, x_cal=x_cal)
        with deterministic_ops():
            if cfg.members == 1:
                best = tune(x, y, w, cfg=cfg, save_to=tmp / "model.keras")
            else:
                best = _fine_tune_members(tune, training_set, (x, y, w), cfg, tmp, log)
        manifest = Manifest.from_dict(base_manifest.to_dict())
        manifest.name = out.name
        # int8 outputs only when the kept epoch's int8 kept the export's bounds: otherwise the export
        # fails it and the device runs a float format, whose outputs are Keras's
        decide_on = x_cal if best.get("int8_within_bounds") else None
        predict, outputs, cleanup = _deployed_probs(tmp / "model.keras", decide_on, pos, tmp)
        try:
            p_val = predict(xv)
            field_cut = None
            if cfg.cutoff in FIELD_CUTOFFS:
                chosen_on = cutoff_fields(whole, fields["val"], site, log)
                field_cut = _whole_field_cutoff(predict, chosen_on, truth, cfg.cutoff, outputs, log)
        finally:
            cleanup()
        _choose_decision(manifest, yv == pos, p_val, gv, cfg, fields, field_cut, outputs)
        manifest.domain = _site_domain(ds, fields, site, log)
        manifest.image_sizes = _site_sizes(ds, fields, site, manifest.image_sizes)
        manifest.focus = focus
        _write_run(tmp, manifest, split, cfg, base_sha, keras_path, model, site, fields, best, n_base)
        from edgekit.export.bundle import export_bundle

        options = ExportOptions(formats=fmts, calibration_samples=300, seed=cfg.seed, allow_drop=allow_drop)
        manifest = export_bundle(tmp, None, options, log=log)
        parts = {"val": (xv, yv, gv), "test": (xt, yt, gt)}
        evaluation = _site_evaluation(tmp, manifest, parts, whole, fields, truth, pos)
        manifest.evaluation = {"site": evaluation}  # the base model's numbers are not this model's
        test_whole = (evaluation.get("test") or {}).get("whole_fields")
        note = label_coverage_note(test_whole, site) if test_whole else None
        if note:
            log(note)
        gate = site_gate(evaluation.get("test"), fields["test"], cfg.gate, evaluation["format"])
        if manifest.domain is not None:
            manifest.domain.gate = gate
        log(gate.summary())
        manifest.training["split_file"] = SITE_SPLIT
        manifest.save(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_manifest(out)


def _resolved_cutoff(cfg: AdaptConfig, fields_dir: Path | None, log: Log) -> AdaptConfig:
    """``cfg`` with ``cutoff="auto"`` made concrete: ``field-error`` with field images, else ``count``."""
    if cfg.cutoff != "auto":
        return cfg
    cfg = dataclasses.replace(cfg, cutoff="field-error" if fields_dir is not None else "count")
    log(f"cutoff: {cfg.cutoff} ({f'field images in {fields_dir}' if fields_dir else 'no field images'})")
    return cfg


def _field_images_and_truth(
    site: Path, fields_dir: Path | None, fields: dict[str, list[str]], cfg: AdaptConfig
) -> tuple[dict[str, Path], dict[str, float]]:
    """The validation and test fields' images and every field's labelled parasitemia; both empty
    without field images, where a cutoff chosen on whole fields cannot be (DataError)."""
    if fields_dir is not None:
        images = find_field_images(fields_dir, fields["val"] + fields["test"])
        return images, labelled_parasitemia(site)
    if cfg.cutoff in FIELD_CUTOFFS:
        raise DataError(f"--cutoff {cfg.cutoff} needs --field-images: the folder of field images given to "
                        "`edgekit site cells`")
    return {}, {}


def _export_formats(formats: str) -> tuple[FormatSpec, ...]:
    """The ``--formats`` list through the format table (DataError for an unknown one)."""
    from edgekit.export.options import parse_formats

    try:
        return parse_formats(formats)
    except ValueError as exc:
        raise DataError(str(exc)) from None


def _site_training_cells(
    split: Any, site: Path, train_fields: list[str], labels: list[str], pos: int, raw: Any, cfg: AdaptConfig,
    cache_dir: Path | None, log: Log, scores: Callable[[list[str]], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The site's training crops (``raw``: no stain normalization) and labels, with the objects the
    finder returns on the training fields that are no labelled cell, learnt as negatives (``scores``:
    the base model's, for the hard ones)."""
    xs, ys, _, _ = _arrays(split, "train", labels, raw, cache_dir)
    xo = _found_objects(site, train_fields, cfg, raw, cache_dir, scores)
    if len(xo):
        hard = (f", the {cfg.hard_objects} per field the base model scores highest first"
                if cfg.hard_objects else "")
        log(f"site: {len(xo)} found objects that are no labelled cell, from the training fields{hard}, "
            f"learnt as {labels[1 - pos]}")
        xs, ys = np.concatenate([xs, xo]), np.concatenate([ys, np.full(len(xo), 1 - pos, ys.dtype)])
    return xs, ys


def _with_base_cells(
    xs: np.ndarray, ys: np.ndarray, base_manifest: Any, model: Path, base_data: Path | None, cfg: AdaptConfig,
    cache_dir: Path | None, log: Log, raw: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The training set: the site's cells mixed with base cells (``cfg.base_share`` of the whole),
    their sample weights (each side weighted to its share), and the number of base cells."""
    n_base = round(cfg.base_share / (1 - cfg.base_share) * len(ys)) if cfg.base_share > 0 else 0
    if n_base:
        xb, yb = _base_sample(base_manifest, model, base_data, n_base, cfg.seed, cache_dir, log, raw)
    else:
        xb, yb = xs[:0], ys[:0]
    x = np.concatenate([xs, xb])
    y = np.concatenate([ys, yb])
    w = np.concatenate([_weights(ys, 2, (1 - cfg.base_share) * len(y)),
                        _weights(yb, 2, cfg.base_share * len(y)) if len(yb) else np.zeros(0, np.float32)])
    return x, y, w, len(yb)


def _calibration_crops(
    fmts: tuple[FormatSpec, ...], split: Any, labels: list[str], pre: Any, cfg: AdaptConfig,
    cache_dir: Path | None,
) -> np.ndarray | None:
    """The int8 calibration sample export will use (stratified training crops); None without int8."""
    if "tflite_int8" not in [f.name for f in fmts]:
        return None
    from edgekit.export.calibration import stratified_sample

    y_train = np.array([i.label for i in split.parts["train"]])
    keep = stratified_sample(y_train, 300, cfg.seed)
    x_cal, _, _, _ = _arrays(split, "train", labels, pre, cache_dir, keep)
    return x_cal


def _site_evaluation(
    bundle: Path, manifest: Any, parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    whole: dict[str, np.ndarray | None], fields: dict[str, list[str]], truth: dict[str, float], pos: int,
) -> dict[str, Any]:
    """The exported bundle's site numbers through the format a device runs (int8 when exported):
    per part (validation, test) on its labelled cells and, with field images, on whole fields."""
    eval_fmt = device_format(manifest)
    cutoff = float(manifest.thresholds.cutoff)
    predict = device_probs(bundle, manifest, eval_fmt)
    evaluation: dict[str, Any] = {"format": eval_fmt}
    for part, (xp, yp, gp) in parts.items():
        if len(yp):
            evaluation[part] = site_metrics(yp == pos, predict(xp), gp, cutoff)
            counted = cast("dict[str, np.ndarray]",
                           {f: whole[f] for f in fields[part] if whole.get(f) is not None})
            if counted:
                evaluation[part]["whole_fields"] = whole_field_error(
                    {f: predict(v) for f, v in counted.items()}, truth, cutoff)
    return evaluation


def device_format(manifest: Any) -> str:
    """The format a device runs and the site is measured through: int8 TFLite when it passed its
    validation, else the first other format that did; BundleError when none did (a device could run
    nothing from the bundle)."""
    usable = [k for k, a in manifest.artifacts.items() if a.runtime != "keras" and a.status == "ok"]
    if not usable:
        failed = "; ".join(f"{k}: {a.status}" for k, a in manifest.artifacts.items() if a.runtime != "keras")
        raise BundleError(f"no exported format passed its validation ({failed}): a device could run nothing "
                          "from this bundle; add a float format (--formats tflite_int8,tflite_fp32)")
    return "tflite_int8" if "tflite_int8" in usable else usable[0]


def whole_field_error(probs: dict[str, np.ndarray], truth: dict[str, float], cutoff: float) -> dict[str, Any]:
    """Per-field parasitemia over every cell the finder returns (as ``edgekit field`` counts it)
    against the labelled parasitemia (:func:`edgekit.metrics.parasitemia_error`), and per field."""
    from edgekit.metrics import parasitemia_error

    called = {f: float((p >= cutoff).mean()) for f, p in probs.items()}
    return {**parasitemia_error(called, truth),
            "per_field": {f: {"called": round(called[f], 4), "labelled": round(truth.get(f, 0.0), 4),
                              "cells": len(probs[f])} for f in sorted(probs)}}


def site_gate(test: dict[str, Any] | None, test_fields: list[str], bounds: dict[str, float],
              fmt: str) -> Any:
    """The :class:`edgekit.manifest.Gate` of a site bundle from its test-field evaluation."""
    from edgekit.manifest import Gate
    from edgekit.metrics import auc_lower_bound

    test = test or {}
    whole = test.get("whole_fields")
    counted = ("whole-field parasitemia error over every cell the finder returns" if whole else
               "parasitemia error over the labelled cells only (no field images: whole fields not counted)")
    error = whole or test.get("parasitemia") or {}
    measured = {
        # held by its upper 95% bound over the test fields: the mean of 36 fields varies a point
        # between seeds, and a bundle must not vouch because its test fields were kind
        "parasitemia_error": error.get("mae_upper95_points"),
        "parasitemia_error_mean": error.get("mae_points"),
        # held by the lower end of its 95% interval over the test fields (None: too few cells to bound)
        "auc": auc_lower_bound(test.get("auc") or {}, int(test.get("positive_cells") or 0),
                               int(test.get("cells") or 0) - int(test.get("positive_cells") or 0)),
        "auc_estimate": (test.get("auc") or {}).get("value"),
        "sensitivity_at_specificity": (test.get("at_specificity_0.995") or {}).get("sensitivity"),
    }
    return Gate(bounds=dict(bounds), measured={k: v for k, v in measured.items() if v is not None},
                test_fields=sorted(test_fields),
                source=(f"{len(test_fields)} site test fields (not used for training, thresholds or guard), "
                        f"through {fmt}: {counted} (held by the upper 95% bound of its mean over the "
                        "fields, bootstrap), cell AUC (held by the lower end of its 95% interval over "
                        "the fields) and sensitivity at specificity >= 99.5% on the labelled cells"))


def _site_sizes(ds: Any, fields: dict[str, list[str]], site: Path, base: Any) -> Any:
    """The site bundle's training image sizes (:mod:`edgekit.device.sizes`): its training fields' cells,
    widened to cover the base model's (the fine-tuned model learnt both); a site whose cells are
    smaller than the base's would otherwise have its own cells refused."""
    from edgekit.device.sizes import fit_sizes, measure_files, widened

    train_fields = set(fields["train"])
    own = fit_sizes(measure_files([site / i.path for i in ds.items if i.group in train_fields]),
                    f"site cells of {site.name} (training fields)")
    return widened(own, base)


def _site_domain(ds: Any, fields: dict[str, list[str]], site: Path, log: Log) -> Any:
    """The guard of the site's own cells (:func:`edgekit.domain_fit.fit_site_domain`): statistics of
    every cell of the training fields, thresholds on the validation fields, never the test fields; so
    it vouches for this microscope and stain and flags others. None, said plainly, when there are too
    few cells to fit it."""
    from edgekit.domain_fit import fit_site_domain

    train_fields, val_fields = set(fields["train"]), set(fields["val"])
    train = [site / i.path for i in ds.items if i.group in train_fields]
    val = [i for i in ds.items if i.group in val_fields]
    try:
        domain, _ = fit_site_domain(train, [site / i.path for i in val], [i.group for i in val],
                                    source=f"site cells of {site.name}: {len(train)} training, {len(val)} "
                                           "validation")
    except DataError as exc:
        log(f"{exc}: the site bundle carries no domain statistics (its results will say nothing vouches "
            "for them)")
        return None
    return domain


def _fine_tune(keras_path: Path, x: np.ndarray, y: np.ndarray, w: np.ndarray, *, xv: np.ndarray,
               yv: np.ndarray, pos: int, cfg: AdaptConfig, save_to: Path, log: Log,
               base_config: dict[str, Any], stain_norm: str, x_cal: np.ndarray | None = None,
               average_of: list[Path] | None = None) -> dict[str, Any]:
    """Fine-tune, keep the epoch with the best validation AUC, save it; returns its numbers.

    With ``average_of`` (fine-tuned models of this one) nothing is trained: their weights are averaged,
    the batch norms' statistics measured again on this training set (:func:`_remeasure_batch_norms`),
    and that model is judged and saved.

    With ``x_cal`` (int8 calibration crops) every epoch is also quantized to int8 as the export will
    (same calibration sample) and judged by the int8 model's validation AUC, and only epochs whose
    int8 calls keep the export's bounds against Keras on the validation cells (agreement, accuracy
    drop; at the count cutoff) are preferred: fine-tuned models can lose their int8 accuracy (IML, 10
    fields: Keras val AUC 0.98, int8 shifted by +0.14 in probability, agreement 96%) while the Keras
    AUC still rises.
    Stops early when ``cfg.patience`` epochs in a row bring no better epoch (the learning rate still
    decays over ``cfg.epochs``, so a stopped run is the same run cut short)."""
    import keras

    from edgekit.export.bundle import load_keras
    from edgekit.metrics import roc_auc
    from edgekit.parts import predict_arrays
    from edgekit.train import AUGMENTATION, TrainConfig, compile_model, make_dataset, save_keras_atomic

    keras.utils.set_random_seed(cfg.seed)
    model = load_keras(keras_path)
    # the base run's augmentation (the model learnt its invariances with it), the manifest's stain
    # normalization after it; --stain overrides the colour jitter
    aug = {k: base_config[k] for k in AUGMENTATION if k in base_config}
    if cfg.stain is not None:
        aug["stain"] = cfg.stain
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, input_size=int(x.shape[1]),
                       seed=cfg.seed, stain_norm=stain_norm, **aug)
    steps = math.ceil(len(y) / cfg.batch_size)
    compile_model(model, tcfg, steps * cfg.epochs)
    ds = make_dataset(x, y, tcfg, training=True, sample_weight=w)
    def judge(p: np.ndarray) -> tuple[float, dict[str, float]]:
        """(score, record) of one epoch: the validation AUC of the deployed int8 model when it keeps
        the export's agreement bound (else -1), or of Keras without calibration crops."""
        rec = {"val_auc": roc_auc(yv == pos, p)}
        if x_cal is None:
            return rec["val_auc"], rec
        from edgekit.export.options import Bounds
        from edgekit.thresholds import count_cutoff

        pi = _int8_probs(model, x_cal, xv, pos, save_to.parent)
        cut, bounds = count_cutoff(yv == pos, p), Bounds()
        rec.update(int8_val_auc=roc_auc(yv == pos, pi),
                   int8_agreement=float(((pi >= cut) == (p >= cut)).mean()),
                   int8_accuracy_drop=float(((p >= cut) == (yv == pos)).mean()
                                            - ((pi >= cut) == (yv == pos)).mean()))
        ok = (rec["int8_agreement"] >= bounds.int8_min_agreement
              and rec["int8_accuracy_drop"] <= bounds.int8_max_accuracy_drop)
        rec["int8_within_bounds"] = float(ok)
        # an epoch within the bounds beats every epoch outside them; among those, the better int8 AUC
        return rec["int8_val_auc"] - (0.0 if ok else 1.0), rec

    def show(rec: dict[str, float]) -> str:
        int8 = (f", int8 {rec['int8_val_auc']:.4f} (agreement {rec['int8_agreement']:.2%}, accuracy drop "
                f"{100 * rec['int8_accuracy_drop']:.2f} points)"
                if "int8_val_auc" in rec else "")
        return f"site val AUC {rec['val_auc']:.4f}{int8}"

    if average_of:
        _average_weights(model, [load_keras(p) for p in average_of])
        _remeasure_batch_norms(model, ds, steps)
        score, rec = judge(predict_arrays(model, xv)[:, pos])
        log(f"the {len(average_of)} runs' weights averaged: {show(rec)}")
        save_keras_atomic(model, save_to)
        return {"epoch": 0, "score": score, **rec, "history": []}
    averaged = WeightAverage.for_steps(cfg.average_epochs * steps) if cfg.average_epochs else None
    p0 = predict_arrays(model, xv)[:, pos]
    score, rec = judge(p0)
    best = {"epoch": 0, "score": score, **rec}
    log(f"before fine-tuning: {show(rec)}")
    save_keras_atomic(model, save_to)
    history = []
    for epoch in range(cfg.epochs):
        h = model.fit(ds, epochs=epoch + 1, initial_epoch=epoch, verbose=0, shuffle=False,
                      callbacks=[averaged.callback] if averaged else None)
        loss = float(h.history["loss"][-1])
        if not math.isfinite(loss):
            # weights that went to inf/NaN never come back: every later epoch would be wasted time
            kept = "the base model" if best["epoch"] == 0 else f"epoch {best['epoch']}"
            log(f"epoch {epoch + 1}/{cfg.epochs}: fine-tuning diverged (loss {loss}): stopped; {kept} is "
                f"kept (try a lower --lr than {cfg.lr:g})")
            best["diverged_at_epoch"] = epoch + 1
            break
        with averaged.swapped_in() if averaged else contextlib.nullcontext():
            p = predict_arrays(model, xv)[:, pos]
            score, rec = judge(p)
            history.append({"epoch": epoch + 1, "loss": loss, **rec})
            flag = ""
            if score > best["score"]:
                best = {"epoch": epoch + 1, "score": score, **rec}
                save_keras_atomic(model, save_to)
                flag = "  *best"
        log(f"epoch {epoch + 1}/{cfg.epochs}  loss {history[-1]['loss']:.4f}  {show(rec)}{flag}")
        if cfg.patience is not None and epoch + 1 - best["epoch"] >= cfg.patience:
            log(f"no better epoch for {cfg.patience} epochs: stopped after epoch {epoch + 1}")
            break
    best["history"] = history
    return best


@contextlib.contextmanager
def deterministic_ops() -> Iterator[None]:
    """TensorFlow's ops deterministic inside (the previous setting restored after): the same data,
    seed and machine give the same site bundle. Without it the parallel augmentation and threaded
    reductions moved one seed's test error by about 0.5 point between runs of the same code."""
    from tensorflow.python.framework import config

    was = config.is_op_determinism_enabled()
    config.enable_op_determinism()
    try:
        yield
    finally:
        if not was:
            config.disable_op_determinism()


def member_seed(seed: int, k: int) -> int:
    """The seed of the ``k``-th fine-tuning run of ``--members`` (run 0 is ``--seed`` itself)."""
    return seed + 1000 * k


TrainingSet = Callable[[AdaptConfig], tuple[Any, np.ndarray, np.ndarray, np.ndarray, int]]


def _fine_tune_members(tune: Callable[..., dict[str, Any]], training_set: TrainingSet,
                       first: tuple[np.ndarray, np.ndarray, np.ndarray], cfg: AdaptConfig, tmp: Path,
                       log: Log) -> dict[str, Any]:
    """``cfg.members`` fine-tuning runs from the same base, each with its own seed (its own sample of
    negatives, found objects and replay crops, its own augmentation and order), their weights
    averaged into ``tmp/model.keras``; returns the average's numbers, each run's under ``members``.
    ``first``: the training set of run 0 (``cfg.seed``), on which the average's batch norms are
    measured again."""
    runs, paths = [], []
    for k in range(cfg.members):
        run_cfg = dataclasses.replace(cfg, seed=member_seed(cfg.seed, k))
        log(f"run {k + 1} of {cfg.members} (seed {run_cfg.seed})")
        x, y, w = first if k == 0 else training_set(run_cfg)[1:4]
        paths.append(tmp / f"run{k}.keras")
        res = tune(x, y, w, cfg=run_cfg, save_to=paths[-1])
        res.pop("score")
        runs.append({"seed": run_cfg.seed, **res})
    best = tune(*first, cfg=cfg, save_to=tmp / "model.keras", average_of=paths)
    for p in paths:
        p.unlink()
    best["members"] = runs
    return best


def _average_weights(model: Any, runs: list[Any]) -> None:
    """``model``'s every variable set to the mean of the same variable in ``runs`` (same architecture)."""
    for var, *same in zip(model.weights, *[r.weights for r in runs], strict=True):
        var.assign(np.mean([np.asarray(v.numpy(), np.float64) for v in same], axis=0).astype(var.dtype))


def _remeasure_batch_norms(model: Any, ds: Any, steps: int) -> None:
    """The batch norms' moving statistics measured again as the mean over one pass of ``ds``: averaged
    weights make activations whose statistics no run's batch norms hold (IML, three runs averaged:
    site validation AUC 0.994 per run, 0.981 averaged, 0.986 once measured again)."""
    import keras

    norms = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    kept = [b.momentum for b in norms]
    try:
        for i, batch in enumerate(ds.take(steps)):
            for b in norms:
                b.momentum = i / (i + 1)  # the running value becomes the mean over the batches so far
            model(batch[0], training=True)
    finally:
        for b, m in zip(norms, kept, strict=True):
            b.momentum = m


class WeightAverage:
    """An exponential moving average of a model's weights (every variable, batch-norm statistics
    included), updated after each training batch by its Keras callback (``.callback``, for ``fit``)."""

    def __init__(self, decay: float) -> None:
        import keras

        self.decay = decay
        self.shadow: list[np.ndarray] | None = None
        self.callback = keras.callbacks.LambdaCallback(on_train_batch_end=lambda *_, **__: self.update())

    @classmethod
    def for_steps(cls, steps: float) -> WeightAverage:
        """An average whose memory is about ``steps`` training steps."""
        return cls(1.0 - 1.0 / max(1.0, steps))

    def update(self) -> None:
        """Fold the current weights into the average."""
        weights = self.callback.model.get_weights()
        if self.shadow is None:
            self.shadow = [w.astype(np.float64) for w in weights]
            return
        for s, w in zip(self.shadow, weights, strict=True):
            s *= self.decay
            s += (1.0 - self.decay) * w

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own weights again after it."""
        if self.shadow is None:
            yield
            return
        model = self.callback.model
        own = model.get_weights()
        model.set_weights([s.astype(w.dtype) for s, w in zip(self.shadow, own, strict=True)])
        try:
            yield
        finally:
            model.set_weights(own)


def _int8_runner(model: Any, x_cal: np.ndarray, path: Path) -> Any:
    """``model`` quantized to int8 as export does (same calibration crops, same converter), written
    to ``path`` and loaded in the device runtime."""
    from edgekit.export.bundle import load_runner
    from edgekit.export.logits import export_graph
    from edgekit.export.tflite import convert_tflite
    from edgekit.formats import get

    graph, activation = export_graph(model)
    convert_tflite(graph, get("tflite_int8"), path, x_cal.astype(np.float32), len(model.inputs[0].shape) == 4)
    return load_runner(get("tflite_int8"), path, output="probabilities" if activation is None else "logits",
                       activation=activation)


def _int8_probs(model: Any, x_cal: np.ndarray, xv: np.ndarray, pos: int, tmp: Path) -> np.ndarray:
    """Positive-class probabilities of ``xv`` through ``model`` quantized to int8 as export does."""
    path = tmp / ".epoch_int8.tflite"
    probs = _int8_runner(model, x_cal, path).predict(xv)[:, pos]
    path.unlink()
    return probs


def _deployed_probs(keras_path: Path, x_cal: np.ndarray | None, pos: int,
                    tmp: Path) -> tuple[Callable[[np.ndarray], np.ndarray], str, Callable[[], None]]:
    """(positive-class probabilities, whose outputs, cleanup) of the kept model as the device will run
    it: int8 quantized as export does when int8 is exported (``x_cal``), else Keras. The site's
    cutoff, band and field rule are chosen on these outputs, the ones the device decides on: near a
    cutoff of 0.9 an int8 model's probabilities differ from Keras's enough to move whole-field counts
    (IML, 18 adapted bundles, the same model each: test-field error 1.68 -> 1.57 points on average,
    lower on 9 of 18; within the spread, so this rests on consistency, not on that gain:
    ``benchmarks/site_cutoffs.py``)."""
    from edgekit.export.bundle import load_keras
    from edgekit.parts import predict_arrays

    model = load_keras(keras_path)
    if x_cal is None:
        return (lambda x: predict_arrays(model, x)[:, pos]), "Keras", lambda: None
    path = tmp / ".kept_int8.tflite"
    runner = _int8_runner(model, x_cal, path)
    return (lambda x: runner.predict(x)[:, pos]), "tflite_int8", lambda: path.unlink(missing_ok=True)


def _whole_field_cutoff(predict: Callable[[np.ndarray], np.ndarray], inputs: dict[str, np.ndarray | None],
                        truth: dict[str, float], method: str, outputs: str, log: Log) -> float:
    """:func:`field_error_cutoff` (``method="field-error"``) or :func:`field_count_cutoff` of the
    kept model (``predict``, on ``outputs``) on whole validation fields (their prepared cells, from
    :func:`whole_field_inputs`)."""
    probs, t = [], []
    for stem, x in sorted(inputs.items()):
        if x is not None:
            probs.append(predict(x))
            t.append(truth.get(stem, 0.0))
    if not probs:
        raise DataError(f"the cell finder found no cells on any validation field: no {method} cutoff")
    cut = (field_error_cutoff if method == "field-error" else field_count_cutoff)(probs, t)
    log(f"whole validation fields: {len(probs)} fields, {sum(map(len, probs))} found cells, "
        f"labelled parasitemia {100 * float(np.mean(t)):.2f}%: {method} cutoff {cut:.4f} on {outputs} "
        "outputs")
    return cut


def cutoff_fields(whole: dict[str, np.ndarray | None], val_fields: list[str], site: Path,
                   log: Log) -> dict[str, np.ndarray | None]:
    """The validation fields a whole-field cutoff is chosen on: those whose boxes cover their cells
    (all of them when none does)."""
    sparse = incompletely_labelled_fields(site) & set(val_fields)
    kept = [f for f in val_fields if f not in sparse] or list(val_fields)
    if len(kept) < len(val_fields):
        log(f"cutoff: {len(val_fields) - len(kept)} incompletely labelled validation fields left out")
    return {f: whole.get(f) for f in kept}


def _choose_decision(manifest: Any, y_val: np.ndarray, p_val: np.ndarray, g_val: np.ndarray, cfg: AdaptConfig,
                     fields: dict[str, list[str]], field_cut: float | None = None,
                     outputs: str = "Keras") -> None:
    """Cutoff, uncertain band (validation cells) and field rule (validation fields) for this site, on
    ``p_val`` (the kept model's probabilities as ``outputs`` gives them); ``field_cut`` is the cutoff
    chosen on whole validation fields (``--cutoff field-error`` or ``field-count``, ``cfg.cutoff``)."""
    from edgekit.manifest import Thresholds
    from edgekit.thresholds import band_edges, choose_thresholds, fit_patient_rule

    if field_cut is None:
        manifest.thresholds = choose_thresholds(y_val, p_val, method=cfg.cutoff, outputs=outputs)
        manifest.thresholds.source = "site " + manifest.thresholds.source
    else:
        positive, negative = band_edges(y_val, p_val, field_cut)
        manifest.thresholds = Thresholds(
            positive=positive, negative=negative, cutoff=field_cut,
            source=(f"site validation fields ({len(fields['val'])}), {outputs} outputs: cutoff "
                    + ("within one standard error of the smallest mean per-field parasitemia error"
                       if cfg.cutoff == "field-error"
                       else "by matching the labelled parasitemia")
                    + " over every cell the finder returns; band edges at 99% precision "
                    f"(positive side) and negative predictive value (negative side) on the validation cells "
                    f"(n={len(y_val)})"))
    rule = fit_patient_rule(y_val, p_val, g_val, manifest.decision, manifest.patient_rule.stop_cells)
    rule.source = f"site validation fields ({len(fields['val'])}): " + rule.source.replace(
        "validation patients: ", "").replace("controls", "fields without labelled parasites").replace(
        "infected", "with")
    manifest.patient_rule = rule


def _write_run(tmp: Path, manifest: Any, split: Any, cfg: AdaptConfig, base_sha: str, keras_path: Path,
               model: Path, site: Path, fields: dict[str, list[str]], best: dict[str, Any],
               n_base: int) -> None:
    """The adapted model as a run folder (model.keras, manifest, site split), ready for export."""
    from edgekit.manifest import Artifact, sha256_file
    from edgekit.paths import data_sha256, portable_command, portable_path
    from edgekit.splits import save_split

    split_sha = save_split(split, tmp / SITE_SPLIT)
    (tmp / FIELDS_SPLIT).write_text(json.dumps(fields, indent=1) + "\n")
    site_paths = [i.path for items in split.parts.values() for i in items]
    old = manifest.artifacts.get("keras")
    manifest.artifacts = {"keras": Artifact(
        format="keras", path="model.keras", sha256=sha256_file(tmp / "model.keras"),
        bytes=(tmp / "model.keras").stat().st_size, runtime="keras",
        inputs=old.inputs if old else [], outputs=old.outputs if old else [])}
    counts = {part: {c: sum(split.classes[i.label] == c for i in items) for c in split.classes}
              for part, items in split.parts.items()}
    base_training = {k: v for k, v in manifest.training.items() if k not in ("adaptation",)}
    manifest.training = {
        "split_file": SITE_SPLIT,
        "split_sha256": split_sha,
        "data_root": portable_path(site, tmp),
        "group_mode": split.group_mode,
        "model": base_training.get("model"),
        "adaptation": {
            "base_model": portable_path(model, tmp),
            "base_keras_sha256": base_sha,
            "base_training": {k: base_training.get(k) for k in ("split_file", "split_sha256", "model",
                                                                  "epochs") if k in base_training},
            "site_data": portable_path(site, tmp),
            "site_data_sha256": data_sha256(site, site_paths),
            "site_fields": {k: len(v) for k, v in fields.items()},
            "site_cells": counts,
            "base_cells_mixed_in": n_base,
            "best_epoch": best["epoch"],
            "best_val_auc": best["val_auc"],
            "best_int8_val_auc": best.get("int8_val_auc"),
            "best_int8_within_bounds": best.get("int8_within_bounds"),
            "history": best["history"],
            **{k: best[k] for k in ("diverged_at_epoch", "members") if k in best},
            "config": json.loads(json.dumps(asdict(cfg), default=list)),
            "command": portable_command(sys.argv),
        },
    }
    manifest.save(tmp)
