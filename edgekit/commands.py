"""Training-side commands: split, train, evaluate, info. Heavy imports stay inside the bodies."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("split.json"),
              show_default=True, help="Split file to write.")
@click.option("--groups", default="auto", show_default=True,
              help="Patient grouping: auto (NIH names -> nih, else none), nih, none, or regex:PATTERN.")
@click.option("--test-fraction", default=0.2, show_default=True, type=float)
@click.option("--val-fraction", default=0.1, show_default=True, type=float,
              help="Fraction of what remains after the test part.")
@click.option("--seed", default=42, show_default=True, type=int)
def split(data: Path, out: Path, groups: str, test_fraction: float, val_fraction: float, seed: int) -> None:
    """Write a reproducible train/val/test split of a folder-per-class dataset, grouped by patient."""
    from edgekit.data import drop_unreadable, scan_dataset
    from edgekit.splits import make_split, save_split

    ds = scan_dataset(data, group_mode=groups)
    click.echo(f"found {len(ds.items)} images in {len(ds.classes)} classes {ds.classes}; "
               f"grouping: {ds.group_mode}; checking every file decodes…", err=True)
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
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the raw manifest JSON.")
def info(run: Path, as_json: bool) -> None:
    """Print a run folder's or bundle's manifest readably."""
    from edgekit.manifest import load_manifest

    m = load_manifest(run)
    if as_json:
        click.echo(json.dumps(m.to_dict(), indent=2))
        return
    p = m.preprocessing
    click.echo(f"name:          {m.name}")
    click.echo(f"labels:        {', '.join(m.labels)} (positive: {m.positive_label or '-'})")
    click.echo(f"input:         {p.input_size[0]}x{p.input_size[1]}x{p.channels} {p.color_order}, "
               f"resize {p.resize}, pixels {p.input_range[0]:g}..{p.input_range[1]:g}, scaling {p.scaling}")
    t = m.thresholds
    click.echo(f"thresholds:    positive >= {t.positive:.3f}, negative < {t.negative:.3f} ({t.source})")
    r = m.patient_rule
    click.echo(f"patient rule:  positive >= {r.positive_fraction:.1%} cells, negative if upper 95% bound "
               f"< {r.negative_fraction:.1%}; stop at {r.stop_cells} cells ({r.source})")
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
            click.echo(f"  {key:16s} {a.path:28s} {a.bytes / 1e6:8.3f} MB  {a.status:18s} {a.sha256[:12]}")
    if m.versions:
        click.echo("versions:      " + ", ".join(f"{k} {v}" for k, v in m.versions.items()))


def _fmt(v) -> str:
    if isinstance(v, dict):
        lo, hi = v.get("ci95", (None, None))
        ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
        return f"{v['value']:.4f}{ci}"
    return f"{v:.4f}" if isinstance(v, float) else str(v)
