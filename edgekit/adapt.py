"""``edgekit adapt``: fine-tune a run or bundle on one site's labelled cells and ship a site bundle.

The site's cells (from ``edgekit cells``: ``SITE/<class>/<field>__<i>.png``) are split by field, in
blocks of consecutive frames (:func:`edgekit.cells.block_split`), into train / validation / test.
The base model's Keras file is fine-tuned on the site's training cells mixed with a share of its
own original training data (its split's train part, by patient as it was trained), so it learns
the site without forgetting the original microscope. Each source's classes are weighted equally
(a site at 1% parasitemia would otherwise teach "never parasitized"). The epoch with the best
validation AUC on the site's validation cells is kept. The cutoff, uncertain band and field rule
are then chosen again on the site's validation fields (:mod:`edgekit.thresholds`), the model is
exported and validated like ``edgekit export`` (same code, the site's training cells calibrate
int8), measured on the site's test fields through the device runtime, and the manifest records
the provenance: base model sha256, site data hash, fields and cells used.

Everything is built in a temporary folder beside the output and renamed into place at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import BundleError, DataError
from edgekit.safefile import replace_dir

SITE_SPLIT = "site_split.json"
FIELDS_SPLIT = "site_fields.json"
Log = Callable[[str], None]


@dataclass
class AdaptConfig:
    """Fine-tuning settings (stored in the manifest)."""

    epochs: int = 6
    lr: float = 0.01
    batch_size: int = 64
    base_share: float = 0.5  # fraction of the training crops taken from the base model's own data
    train_fields: int | None = None  # use only this many training fields (learning curves)
    block: int = 6  # consecutive frames per split block
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    cutoff: str = "count"  # count: called = labelled positives on validation; youden
    stain: float = 0.1  # colour jitter while fine-tuning
    negatives_per_field: int | None = None  # cap on negative training cells per field (all positives kept)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.lr <= 0 or self.batch_size < 1:
            raise DataError("epochs, lr and batch size must be positive")
        if not 0.0 <= self.base_share < 1.0:
            raise DataError("--base-share must be in [0, 1)")
        if self.cutoff not in ("count", "youden"):
            raise DataError(f"unknown cutoff method {self.cutoff!r}: count or youden")
        if self.train_fields is not None and self.train_fields < 1:
            raise DataError("--train-fields must be at least 1")


# --------------------------------------------------------------------------- inputs


def trainable_model(source: Path) -> tuple[Any, Path, str]:
    """(manifest, keras path, keras sha256) of a run folder or bundle holding a Keras model."""
    from edgekit.manifest import load_manifest, verify_artifact

    source = Path(source)
    if not source.is_dir():
        raise BundleError(f"{source}: not a run folder or bundle")
    manifest = load_manifest(source)
    art = manifest.artifacts.get("keras")
    if art is None or not (source / art.path).is_file():
        raise BundleError(
            f"{source} has no trainable model (no Keras file in its manifest; device bundles carry only "
            "int8/fp32 files): adapt a training run folder or a bundle exported with its model.keras"
        )
    verify_artifact(source, art)
    return manifest, source / art.path, art.sha256


def site_data_hash(root: Path, paths: list[str]) -> str:
    """sha256 over every site crop's relative path and content: the exact data a site bundle saw."""
    h = hashlib.sha256()
    for rel in sorted(paths):
        h.update(rel.encode() + b"\0" + hashlib.sha256((root / rel).read_bytes()).digest())
    return h.hexdigest()


def field_split(fields: list[str], cfg: AdaptConfig, split_file: Path | None) -> dict[str, list[str]]:
    """train/val/test field stems: from ``split_file`` (JSON of field names per part), else blocks."""
    from edgekit.cells import block_split

    if split_file is None:
        parts = block_split(fields, cfg.fractions, cfg.block, seed=cfg.seed)
    else:
        try:
            raw = json.loads(Path(split_file).read_text())
            parts = {k: sorted({Path(n).stem for n in raw[k]}) for k in ("train", "val", "test")}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"bad field split file {split_file}: {exc} (want train/val/test lists)") from None
        named = set().union(*parts.values())
        if not named & set(fields):
            raise DataError(f"the field split {split_file} names none of the site's fields")
        # fields whose labelled cells the cell finder never found have no crops: nothing to split
        parts = {k: [f for f in v if f in set(fields)] for k, v in parts.items()}
        tr, va, te = (set(parts[k]) for k in ("train", "val", "test"))
        if tr & (va | te) or va & te:
            raise DataError("the field split puts one field in two parts")
    if cfg.train_fields is not None:
        if cfg.train_fields > len(parts["train"]):
            raise DataError(f"--train-fields {cfg.train_fields}, but there are only "
                            f"{len(parts['train'])} training fields")
        parts["train"] = sorted(random.Random(cfg.seed).sample(parts["train"], cfg.train_fields))
    for name in ("train", "val"):
        if not parts[name]:
            raise DataError(f"no {name} fields: label more fields (a site needs train and validation fields)")
    return parts


def _site_split(site: Path, labels: list[str], positive: str, fields: dict[str, list[str]],
                cfg: AdaptConfig) -> Any:
    """A :class:`edgekit.splits.Split` of the site crops, grouped by field."""
    from edgekit.cells import GROUP_REGEX, field_of
    from edgekit.data import scan_dataset
    from edgekit.splits import PARTS, Split, check_no_leakage

    ds = scan_dataset(site, group_mode=GROUP_REGEX)  # DataError for one class, empty folders...
    if sorted(ds.classes) != sorted(labels):
        raise DataError(f"the site's classes {ds.classes} are not the model's labels {labels}")
    where = {f: part for part, names in fields.items() for f in names}
    parts: dict[str, list] = {p: [] for p in PARTS}
    for item in ds.items:
        part = where.get(field_of(item.path))
        if part is not None:
            parts[part].append(item)
    if cfg.negatives_per_field is not None:
        rng = random.Random(cfg.seed)
        by_field: dict[str, list] = {}
        for item in parts["train"]:
            by_field.setdefault(item.group, []).append(item)
        kept = []
        for group in sorted(by_field):
            neg = [i for i in by_field[group] if ds.classes[i.label] != positive]
            kept += [i for i in by_field[group] if ds.classes[i.label] == positive]
            kept += rng.sample(neg, min(len(neg), cfg.negatives_per_field))
        parts["train"] = sorted(kept, key=lambda i: i.path)
    check_no_leakage(parts)
    for name in ("train", "val"):
        present = {ds.classes[i.label] for i in parts[name]}
        if len(present) < 2:
            raise DataError(f"the site's {name} fields hold only {', '.join(present) or 'no'} cells: "
                            "both classes are needed (label more fields or choose other ones)")
    return Split(classes=ds.classes, parts=parts, group_mode=GROUP_REGEX, seed=0,
                 data_root=str(site.resolve()))


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


def _base_sample(manifest: Any, base_data: Path | None, n: int, seed: int, cache_dir: Path | None,
                 log: Log) -> tuple[np.ndarray, np.ndarray]:
    """``n`` crops (stratified) from the train part of the base model's own split."""
    from edgekit.export.calibration import stratified_sample
    from edgekit.splits import load_split

    split_file = manifest.training.get("split_file")
    if not split_file or not Path(split_file).is_file():
        raise DataError(
            f"the base model's training split ({split_file or 'not recorded'}) is not here: pass "
            "--base-split SPLIT.json (its original data, by patient) or --base-share 0 to fine-tune on "
            "site data alone (it then forgets the original microscope)"
        )
    split, _ = load_split(split_file, data_root=base_data)
    labels = manifest.labels
    y_all = np.array([labels.index(split.classes[i.label]) for i in split.parts["train"]])
    keep = stratified_sample(y_all, n, seed)
    x, y, _, _ = _arrays(split, "train", labels, manifest.preprocessing, cache_dir, keep)
    log(f"base data: {len(y)} crops from the train part of {split_file}")
    return x, y


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


def _device_probs(bundle: Path, manifest: Any, x: np.ndarray, fmt: str = "tflite_int8") -> np.ndarray:
    """Positive-class probabilities of ``x`` through the device runtime of the exported format."""
    from edgekit.export.bundle import load_runner
    from edgekit.formats import get

    art = manifest.artifacts[fmt]
    runner = load_runner(get(fmt), bundle / art.path, output=art.output, activation=art.activation)
    probs = runner.predict(x)
    return probs[:, manifest.positive_index]


def adapt_model(
    model: Path, site: Path, out: Path, cfg: AdaptConfig, split_file: Path | None = None,
    base_split: Path | None = None, base_data: Path | None = None, formats: str = "tflite_int8",
    replace: bool = False, cache_dir: Path | None = None, allow_drop: bool = False, log: Log = print,
) -> Any:
    """Fine-tune ``model`` on ``site`` and write the validated site bundle ``out``; returns its manifest."""
    from edgekit.cells import GROUP_REGEX
    from edgekit.data import scan_dataset
    from edgekit.export.options import ExportOptions, parse_formats
    from edgekit.manifest import Manifest, load_manifest

    out = Path(out)
    if out.exists() and not replace:
        raise DataError(f"{out} already exists; pass --replace to overwrite it")
    base_manifest, keras_path, base_sha = trainable_model(Path(model))
    if len(base_manifest.labels) != 2 or base_manifest.positive_label is None:
        raise BundleError("adapt needs a two-class model with a positive label")
    labels = base_manifest.labels
    pos = base_manifest.positive_index
    site = Path(site)
    all_fields = sorted({i.group for i in scan_dataset(site, group_mode=GROUP_REGEX).items})
    fields = field_split(all_fields, cfg, split_file)
    split = _site_split(site, labels, base_manifest.positive_label, fields, cfg)
    if base_split is not None:
        base_manifest.training = {**base_manifest.training, "split_file": str(base_split)}
    try:
        fmts = parse_formats(formats)
    except ValueError as exc:
        raise DataError(str(exc)) from None

    pre = base_manifest.preprocessing
    xs, ys, gs, _ = _arrays(split, "train", labels, pre, cache_dir)
    xv, yv, gv, _ = _arrays(split, "val", labels, pre, cache_dir)
    xt, yt, gt, _ = _arrays(split, "test", labels, pre, cache_dir)
    log(f"site: {len(ys)} train cells ({int((ys == pos).sum())} {labels[pos]}) from {len(fields['train'])} "
        f"fields, {len(yv)} val cells from {len(fields['val'])}, "
        f"{len(yt)} test cells from {len(fields['test'])}")
    n_base = round(cfg.base_share / (1 - cfg.base_share) * len(ys)) if cfg.base_share > 0 else 0
    if n_base:
        xb, yb = _base_sample(base_manifest, base_data, n_base, cfg.seed, cache_dir, log)
    else:
        xb, yb = xs[:0], ys[:0]
    x = np.concatenate([xs, xb])
    y = np.concatenate([ys, yb])
    w = np.concatenate([_weights(ys, 2, (1 - cfg.base_share) * len(y)),
                        _weights(yb, 2, cfg.base_share * len(y)) if len(yb) else np.zeros(0, np.float32)])

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        best = _fine_tune(keras_path, x, y, w, xv, yv, pos, cfg, tmp / "model.keras", log)
        manifest = Manifest.from_dict(base_manifest.to_dict())
        manifest.name = out.name
        p_val = best["p_val"]
        _choose_decision(manifest, yv == pos, p_val, gv, cfg, fields)
        manifest.domain = _site_domain(split, site, log)
        _write_run(tmp, manifest, split, cfg, base_sha, keras_path, model, site, fields, best, len(yb))
        from edgekit.export.bundle import export_bundle

        options = ExportOptions(formats=fmts, calibration_samples=300, seed=cfg.seed, allow_drop=allow_drop)
        manifest = export_bundle(tmp, None, options, log=log)
        eval_fmt = "tflite_int8" if "tflite_int8" in manifest.artifacts else next(
            k for k in manifest.artifacts if k != "keras")
        cutoff = float(manifest.thresholds.cutoff)
        evaluation = {"format": eval_fmt,
                      "val": site_metrics(yv == pos, _device_probs(tmp, manifest, xv, eval_fmt), gv, cutoff)}
        if len(yt):
            p_test = _device_probs(tmp, manifest, xt, eval_fmt)
            evaluation["test"] = site_metrics(yt == pos, p_test, gt, cutoff)
        manifest.evaluation = {"site": evaluation}  # the base model's numbers are not this model's
        manifest.training["split_file"] = str((out / SITE_SPLIT).resolve())
        manifest.save(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_manifest(out)


def _site_domain(split: Any, site: Path, log: Callable[[str], None]) -> Any:
    """The guard's statistics of the site's own cells (training fields; thresholds on validation
    fields), so the guard vouches for the site's microscope, not NIH's. None, said plainly, when
    there are too few cells to fit them."""
    from edgekit.domain_fit import crop_table, fit_domain

    root = Path(split.data_root)
    train, lit, _ = crop_table(root / i.path for i in split.parts.get("train", []))
    val_items = split.parts.get("val", [])
    val, _, kept = crop_table(root / i.path for i in val_items)
    if len(train) < 50 or len(val) < 5:
        log(f"only {len(train)} training and {len(val)} validation site cells: the site bundle carries no "
            "domain statistics (its results will say nothing vouches for them)")
        return None
    domain, _ = fit_domain(train, lit, val, [val_items[k].group for k in kept],
                           source=f"site cells of {site.name}: {len(train)} training, {len(val)} validation")
    return domain


def _fine_tune(keras_path: Path, x: np.ndarray, y: np.ndarray, w: np.ndarray, xv: np.ndarray, yv: np.ndarray,
               pos: int, cfg: AdaptConfig, save_to: Path, log: Log) -> dict[str, Any]:
    """Fine-tune, keep the epoch with the best validation AUC, save it; returns its numbers."""
    import keras

    from edgekit.export.bundle import load_keras
    from edgekit.metrics import roc_auc
    from edgekit.parts import predict_arrays
    from edgekit.train import TrainConfig, compile_model, make_dataset, save_keras_atomic

    keras.utils.set_random_seed(cfg.seed)
    model = load_keras(keras_path)
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, stain=cfg.stain,
                       input_size=int(x.shape[1]), seed=cfg.seed)
    steps = math.ceil(len(y) / cfg.batch_size)
    compile_model(model, tcfg, steps * cfg.epochs)
    ds = make_dataset(x, y, tcfg, training=True, sample_weight=w)
    p0 = predict_arrays(model, xv)[:, pos]
    best = {"epoch": 0, "val_auc": roc_auc(yv == pos, p0), "p_val": p0}
    log(f"before fine-tuning: site val AUC {best['val_auc']:.4f}")
    save_keras_atomic(model, save_to)
    history = []
    for epoch in range(cfg.epochs):
        h = model.fit(ds, epochs=epoch + 1, initial_epoch=epoch, verbose=0, shuffle=False)
        p = predict_arrays(model, xv)[:, pos]
        auc = roc_auc(yv == pos, p)
        history.append({"epoch": epoch + 1, "loss": float(h.history["loss"][-1]), "val_auc": auc})
        flag = ""
        if auc > best["val_auc"]:
            best = {"epoch": epoch + 1, "val_auc": auc, "p_val": p}
            save_keras_atomic(model, save_to)
            flag = "  *best"
        log(f"epoch {epoch + 1}/{cfg.epochs}  loss {history[-1]['loss']:.4f}  site val AUC {auc:.4f}{flag}")
    best["history"] = history
    return best


def _choose_decision(manifest: Any, y_val: np.ndarray, p_val: np.ndarray, g_val: np.ndarray, cfg: AdaptConfig,
                     fields: dict[str, list[str]]) -> None:
    """Cutoff, uncertain band (validation cells) and field rule (validation fields) for this site."""
    from edgekit.thresholds import choose_patient_rule, choose_thresholds

    manifest.thresholds = choose_thresholds(y_val, p_val, method=cfg.cutoff)
    manifest.thresholds.source = "site " + manifest.thresholds.source
    controls, infected = [], []
    for g in np.unique(g_val):
        sel = g_val == g
        called = float((p_val[sel] >= manifest.thresholds.cutoff).mean())
        (infected if y_val[sel].any() else controls).append(called)
    rule = choose_patient_rule(controls, infected, stop_cells=manifest.patient_rule.stop_cells)
    rule.source = f"site validation fields ({len(fields['val'])}): " + rule.source.replace(
        "validation patients: ", "").replace("controls", "fields without labelled parasites").replace(
        "infected", "with")
    manifest.patient_rule = rule


def _write_run(tmp: Path, manifest: Any, split: Any, cfg: AdaptConfig, base_sha: str, keras_path: Path,
               model: Path, site: Path, fields: dict[str, list[str]], best: dict[str, Any],
               n_base: int) -> None:
    """The adapted model as a run folder (model.keras, manifest, site split), ready for export."""
    from edgekit.manifest import Artifact, sha256_file
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
        "split_file": str(tmp / SITE_SPLIT),
        "split_sha256": split_sha,
        "data_root": str(site.resolve()),
        "group_mode": split.group_mode,
        "model": base_training.get("model"),
        "adaptation": {
            "base_model": str(model),
            "base_keras_sha256": base_sha,
            "base_training": {k: base_training.get(k) for k in ("split_file", "split_sha256", "model",
                                                                  "epochs") if k in base_training},
            "site_data": str(site.resolve()),
            "site_data_sha256": site_data_hash(site, site_paths),
            "site_fields": {k: len(v) for k, v in fields.items()},
            "site_cells": counts,
            "base_cells_mixed_in": n_base,
            "best_epoch": best["epoch"],
            "best_val_auc": best["val_auc"],
            "history": best["history"],
            "config": json.loads(json.dumps(asdict(cfg), default=list)),
            "command": " ".join(sys.argv),
        },
    }
    manifest.save(tmp)
