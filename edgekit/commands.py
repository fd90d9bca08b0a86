# pyright: basic
"""Training-side commands: split, train, evaluate, info. Heavy imports stay inside the bodies."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, cast

import click

from edgekit.cli_options import (
    FINITE_FLOAT,
    FiniteFloatRange,
    bundle_from,
    data_root_option,
    format_option,
    model_option,
    part_option,
    require_modules,
)

_cache_dir_option = click.option(
    "--cache-dir", type=click.Path(path_type=Path), default=Path("~/.cache/edgekit").expanduser(),
    show_default="~/.cache/edgekit", help="Where decoded image arrays are cached.")

@click.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("split.json"),
              show_default=True, help="Split file to write.")
@click.option("--groups", default="auto", show_default=True,
              help="Patient grouping: auto (NIH names -> nih, else none), a rule named in "
                   "edgekit.data.GROUPERS (nih, none, ...), or regex:PATTERN.")
@click.option("--test-fraction", default=0.2, show_default=True, type=FINITE_FLOAT)
@click.option("--val-fraction", default=0.1, show_default=True, type=FINITE_FLOAT,
              help="Fraction of what remains after the test part.")
@click.option("--seed", default=42, show_default=True, type=int)
def split(data: Path, out: Path, groups: str, test_fraction: float, val_fraction: float, seed: int) -> None:
    """Split a dataset into train/val/test, grouped by patient.

    DATA is a folder-per-class dataset; the same seed writes the same split."""
    from edgekit.data import drop_unreadable, scan_dataset
    from edgekit.safefile import check_output_target
    from edgekit.splits import check_fractions, make_split, save_split

    # refused before every file of the dataset is decoded
    check_output_target(out, force=True)
    check_fractions(test_fraction, val_fraction)
    ds = scan_dataset(data, group_mode=groups)
    # group_mode: an attribute scan_dataset sets, not a Dataset field
    click.echo(f"found {len(ds.items)} images in {len(ds.classes)} classes {ds.classes}; "
               f"grouping: {ds.group_mode}; checking every file decodes…", err=True)  # pyright: ignore[reportAttributeAccessIssue]
    ds = drop_unreadable(ds)
    for path, reason in ds.skipped[:20]:
        click.echo(f"skipped {path}: {reason}", err=True)
    if len(ds.skipped) > 20:
        click.echo(f"… and {len(ds.skipped) - 20} more skipped (all listed in the split file)", err=True)
    sp = make_split(ds, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)
    digest = save_split(sp, out)
    for part, s in sp.summary().items():
        per_class = ", ".join(f"{c} {s[c]}" for c in sp.classes)
        click.echo(f"{part:5s} {s['images']:6d} images  {s['groups']:4d} groups  ({per_class})")
    click.echo(f"skipped {len(ds.skipped)} unreadable file(s); no group in two parts")
    click.echo(f"wrote {out} (sha256 {digest[:12]})")


@click.command()
@click.argument("run", required=False, type=click.Path(path_type=Path))
@model_option("Bundle or run folder (the same as RUN). Default: the model shipped with edgekit.")
@format_option("text", "json", default="text", old_flags={"--json": "json"},
               help_text="text: the manifest readably; json: the raw manifest JSON.")
def info(run: Path | None, bundle: Path | None, out_format: str) -> None:
    """Print a run folder's or bundle's manifest readably."""
    from edgekit.device.runtime import default_bundle_dir
    from edgekit.manifest import Manifest, read_manifest_data
    from edgekit.signing import check_bundle

    folder = bundle_from(run, bundle) or default_bundle_dir()
    data = read_manifest_data(folder)
    m = Manifest.from_dict(data)
    trust = check_bundle(folder, data)
    if out_format == "json":
        click.echo(json.dumps({**m.to_dict(), "trust": {"trusted": trust.trusted, "reason": trust.reason}},
                              indent=2))
        return
    p = m.preprocessing
    lo, hi = cast("tuple[float, float]", p.input_range)  # derived in Preprocessing.__post_init__
    click.echo(f"trust:         {'trusted' if trust.trusted else 'NOT TRUSTED'}: {trust.reason}")
    click.echo(f"name:          {m.name}")
    click.echo(f"labels:        {', '.join(m.labels)} (positive: {m.positive_label or '-'})")
    click.echo(f"input:         {p.input_size[0]}x{p.input_size[1]}x{p.channels} {p.color_order}, "
               f"resize {p.resize}, stain {p.stain}, pixels {lo:g}..{hi:g}, "
               f"scaling {p.scaling}")
    t = m.thresholds
    click.echo(f"thresholds:    counted positive at p >= {m.decision.cutoff:.4f}; positive >= "
               f"{t.positive:.4f}, negative < {t.negative:.4f}, uncertain between ({t.source})")
    r = m.patient_rule
    click.echo(f"patient rule:  {r.describe()}; stop at {r.stop_cells} cells ({r.source})")
    tr = m.training
    if tr:
        arch = tr.get("model", {})
        click.echo(f"model:         {arch}")
        if "split_sha256" in tr:
            click.echo(f"split:         {tr.get('split_file', '?')} (sha256 {tr['split_sha256'][:12]})")
        if "best_epoch" in tr:
            click.echo(f"best epoch:    {tr['best_epoch']} ({tr.get('monitor', '')})")
    for part, ev in m.evaluation.items():
        if isinstance(ev, dict) and "accuracy" in ev:
            keys = [k for k in ("accuracy", "sensitivity", "specificity", "auc") if k in ev]
            click.echo(f"eval {part + ':':9s}" + "  ".join(f"{k} {_fmt(ev[k])}" for k in keys))
    if m.artifacts:
        click.echo("artifacts:")
        for key, a in m.artifacts.items():
            out = f"  logits, {a.activation} on device" if a.output == "logits" else ""
            click.echo(f"  {key:16s} {a.path:28s} {a.bytes / 1e6:8.3f} MB  {a.status:18s} "
                       f"{a.sha256[:12]}{out}")
    if m.versions:
        click.echo("versions:      " + ", ".join(f"{k} {v}" for k, v in m.versions.items()))


def _fmt(v) -> str:
    if isinstance(v, dict):
        lo, hi = v.get("ci95", (None, None))
        ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
        return f"{v['value']:.4f}{ci}"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from exc


@click.command()
@click.argument("split_or_data", type=click.Path(path_type=Path))
@click.option("-o", "--out", "run", required=True, type=click.Path(path_type=Path),
              help="Run folder to write.")
@data_root_option()
@click.option("--backbone", default="resnet", show_default=True,
              type=click.Choice(["resnet", "mobilenetv3small", "inceptionv3"]))
@click.option("--weights", default="none", show_default=True,
              help="Backbone weights for mobilenetv3small and inceptionv3: none, imagenet or a PATH.")
@click.option("--recipe", default=None,
              help="A named ResNet (edgekit.model.RECIPES: seed, w8, fast16, fast32, ...); sets stages, "
                   "filters and the stem, overriding --stages/--filters.")
@click.option("--stages", default="3,4,6", show_default=True, help="Residual modules per stage (resnet).")
@click.option("--filters", default="64,128,256,512", show_default=True,
              help="Stem filters then one per stage (resnet).")
@click.option("--l2", default=5e-4, show_default=True, type=FINITE_FLOAT)
@click.option("--epochs", default=50, show_default=True, type=int)
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--lr", default=0.1, show_default=True, type=FINITE_FLOAT,
              help="Initial lr; polynomial decay to 0.")
@click.option("--input-size", default=64, show_default=True, type=int)
@click.option("--channels", default=3, show_default=True, type=click.Choice(["1", "3"]))
@click.option("--no-augment", is_flag=True, help="Train without augmentation.")
@click.option("--stain", default=0.0, show_default=True, type=FiniteFloatRange(0.0, 0.5),
              help="Colour jitter of the cells (brightness +-S, each channel +-S/2); 0: off.")
@click.option("--od-jitter", default=0.0, show_default=True, type=FiniteFloatRange(0.0, 1.5),
              help="Stain jitter in optical density (OD x exp(+-J), lamp tint +-J/4); 0: off.")
@click.option("--blur", default=0.0, show_default=True, type=FiniteFloatRange(0.0, 1.0),
              help="Probability of re-sampling a crop at 40-100%% resolution, plus pixel noise; 0: off.")
@click.option("--zoom", default=0.05, show_default=True, type=FiniteFloatRange(0.0, 0.5),
              help="Random zoom range (+-).")
@click.option("--stain-norm", default="none", show_default=True, type=click.Choice(["none", "od_standard"]),
              help="Stain normalization of every crop (recorded as preprocessing.stain; device/stain.py).")
@click.option("--class-weight", type=click.Choice(["none", "balanced"]), default="none", show_default=True)
@click.option("--positive-label", default=None, help="Default: Parasitized if present, else the last label.")
@click.option("--seed", default=42, show_default=True, type=int,
              help="Seeds the split made from a data folder, the initial weights and the augmentation.")
@click.option("--mixed-precision", type=click.Choice(["auto", "on", "off", "float16", "bfloat16"]),
              default="auto", show_default=True,
              help="auto: on when a GPU is present; on: float16 on GPUs, bfloat16 on CPUs.")
@click.option("--strategy", default="auto", show_default=True,
              type=click.Choice(["auto", "default", "mirrored", "multiworker"]),
              help="tf.distribute strategy (docs/training.md: Training on several devices or hosts).")
@click.option("--cpu-replicas", default=1, show_default=True, type=click.IntRange(1, 64),
              help="mirrored without GPUs: N logical CPU devices (tests the multi-replica path).")
@click.option("--workers", default=None, metavar="HOST:PORT,...",
              help="multiworker: every worker's address, the chief (index 0) first; or set TF_CONFIG.")
@click.option("--worker-index", default=None, type=int, help="multiworker: this host's index in --workers.")
@click.option("--lr-scaling", default="none", show_default=True, type=click.Choice(["none", "linear"]),
              help="linear: lr x batch/32 (--batch-size is the global batch over all replicas).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoint.")
@_cache_dir_option
def train(split_or_data: Path, run: Path, data_root: Path | None, backbone: str, weights: str, stages: str,
          filters: str, l2: float, epochs: int, batch_size: int, lr: float, input_size: int, channels: str,
          no_augment: bool, stain: float, od_jitter: float, blur: float, zoom: float, stain_norm: str,
          recipe: str | None, class_weight: str, positive_label: str | None, seed: int,
          mixed_precision: str, strategy: str, cpu_replicas: int, workers: str | None,
          worker_index: int | None, lr_scaling: str, resume: bool, cache_dir: Path) -> None:
    """Train a classifier from a split file (or a data folder) into RUN.

    Checkpoints every epoch; the best epoch by validation AUC (accuracy for >2 classes) becomes
    RUN/model.keras; the test part is evaluated at the end. With --resume the stored configuration
    is used and training continues at the next epoch.
    """
    require_modules("train", "train", "tensorflow", "keras")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from edgekit.train import TrainConfig, train_run

    arch: dict[str, Any] = {"stages": _ints(stages), "filters": _ints(filters)}
    if recipe:
        from edgekit.model import RECIPES

        if recipe not in RECIPES:
            raise click.BadParameter(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
        arch = RECIPES[recipe]
    cfg = TrainConfig(backbone=backbone, **arch, l2=l2, weights=weights,
                      epochs=epochs, batch_size=batch_size, lr=lr, input_size=input_size,
                      channels=int(channels), augment=not no_augment, stain=stain, od_jitter=od_jitter,
                      blur=blur, zoom=zoom, stain_norm=stain_norm, class_weight=class_weight,
                      positive_label=positive_label, seed=seed, mixed_precision=mixed_precision,
                      strategy=strategy, cpu_replicas=cpu_replicas, lr_scaling=lr_scaling)
    try:
        train_run(split_or_data, run, cfg, data_root=data_root, resume=resume, cache_dir=cache_dir,
                  log=lambda s: click.echo(s, err=True), workers=workers, worker_index=worker_index)
    except KeyboardInterrupt:
        if (run / "checkpoints" / "state.json").is_file():
            click.echo(f"continue with: edgekit model train {split_or_data} --out {run} --resume", err=True)
        raise


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@part_option()
@click.option("--split-file", type=click.Path(path_type=Path), help="Default: the run's own split file.")
@data_root_option()
@_cache_dir_option
def evaluate(run: Path, part: str, split_file: Path | None, data_root: Path | None, cache_dir: Path) -> None:
    """Evaluate a run's Keras model on a part of its split.

    Writes eval_, report_ and roc_ files into the run folder."""
    from edgekit.evaluate import evaluate_run

    evaluate_run(run, part, split_file=split_file, data_root=data_root, cache_dir=cache_dir,
                 log=lambda s: click.echo(s))
