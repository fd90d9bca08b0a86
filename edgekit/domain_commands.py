# pyright: basic
"""``edgekit domain``: fit and show the domain guard's statistics of a bundle. Light at import."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgekit.cli_options import option


@click.group()
def domain() -> None:
    """The domain guard: what a model's training cells looked like.

    Stored in the manifest under 'domain'."""


def _offsite_paths(paths: tuple[Path, ...], lists: tuple[Path, ...]) -> list[Path]:
    from edgekit.device.pipeline import image_files
    from edgekit.errors import DataError
    from edgekit.paths import shared_data
    from edgekit.safefile import read_text_argument

    out = image_files(paths, "off-site field")
    for lst in lists:
        if not lst.exists():
            raise DataError(f"field list not found: {lst}")
        for line in read_text_argument(lst, 16 << 20, "field list").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                f = Path(line) if Path(line).is_absolute() else shared_data() / line
                if not f.is_file():
                    raise DataError(f"{lst}: listed field not found: {f}")
                out.append(f)
    return out


@domain.command("fit")
@click.argument("bundle", type=click.Path(path_type=Path))
@option("--dataset", "data", aliases=("--data",), required=True, type=click.Path(path_type=Path),
        help="Split file (`edgekit model split`) or folder-per-class crops (split by patient, seed 42): "
                   "statistics from the training groups, thresholds from the validation groups.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Where the split's images are, if not where the split file says.")
@click.option("--offsite", multiple=True, type=click.Path(path_type=Path),
              help="Off-site dev fields (files or folders; repeatable): thresholds are placed to catch them.")
@click.option("--offsite-list", multiple=True, type=click.Path(path_type=Path),
              help="Text file listing off-site dev fields, one per line (relative to $EDGEKIT_DATA).")
@click.option("--max-train-crops", type=click.IntRange(50), default=3000, show_default=True,
              help="Random training crops measured (seed 0): a 9-feature mean and covariance need no more.")
@click.option("--site", "site", is_flag=True,
              help="DATASET is a site's labelled cells (`edgekit site cells`): statistics from blocks of "
                   "consecutive fields, thresholds from the other blocks (the site guard that "
                   "`edgekit site adapt` fits).")
@click.option("--block", type=click.IntRange(1), default=6, show_default=True,
              help="With --site: consecutive fields per block; 4 blocks in 5 fit the statistics.")
@click.option("--dry-run", is_flag=True,
              help="Report the statistics and thresholds; do not write the manifest.")
def domain_fit(bundle: Path, data: Path, data_root: Path | None, offsite: tuple[Path, ...],
               offsite_list: tuple[Path, ...], max_train_crops: int, site: bool, block: int,
               dry_run: bool) -> None:
    """Fit the domain guard's statistics and thresholds into a bundle.

    Compute the training cells' statistics and the guard's thresholds, and store them in BUNDLE's
    manifest under 'domain' (rerun it whenever the bundle's training data changes; with --site, when a
    site has checked its bundle on new fields, `edgekit site check`, and the guard should vouch for them)."""
    from edgekit.errors import DataError
    from edgekit.manifest import load_manifest

    manifest = load_manifest(bundle)
    if site:
        if offsite or offsite_list:
            raise DataError("--site fits on the site's own fields only: drop --offsite")
        dom, report = _site_fit(data, block, max_train_crops)
    else:
        dom, report = _split_fit(data, data_root, offsite, offsite_list, max_train_crops)
    brief = {k: v for k, v in report.items() if k not in ("val_sessions", "offsite_dev_fields", "val_fields")}
    click.echo(json.dumps(brief, indent=1))
    if dry_run:
        return
    manifest.domain = dom
    manifest.save(bundle)
    click.echo(f"wrote the domain statistics into {bundle}/manifest.json", err=True)


def _site_fit(data: Path, block: int, max_train_crops: int) -> tuple[Any, dict[str, Any]]:
    """The site guard from an `edgekit cells` folder: blocks of fields, 80% statistics, 20% thresholds."""
    import numpy as np

    from edgekit.cells import block_split, field_of
    from edgekit.device.pipeline import image_files
    from edgekit.domain_fit import fit_site_domain
    from edgekit.errors import DataError

    if not data.is_dir():
        raise DataError(f"site cells not found: {data} (a folder from `edgekit site cells`)")
    files = image_files([data], "site cell")
    fields = sorted({field_of(f) for f in files})
    if len(fields) < 2:
        raise DataError(f"{data} holds cells of {len(fields)} field(s): the site guard needs at least 2 "
                        "(statistics and thresholds come from different fields)")
    parts = block_split(fields, (0.8, 0.2, 0.0), block)
    if not parts["val"]:  # fewer than 3 blocks: the last block sets the thresholds
        last = sorted(fields)[-block:] if len(fields) > block else sorted(fields)[-1:]
        parts = {"train": [f for f in fields if f not in last], "val": last}
    train = [f for f in files if field_of(f) in set(parts["train"])]
    val = [f for f in files if field_of(f) in set(parts["val"])]
    if len(train) > max_train_crops:
        pick = np.random.default_rng(0).choice(len(train), max_train_crops, replace=False)
        train = [train[k] for k in sorted(pick)]
    click.echo(f"site guard: {len(train)} crops of {len(parts['train'])} fields for the statistics, "
               f"{len(val)} crops of {len(parts['val'])} fields for the thresholds…", err=True)
    return fit_site_domain(train, val, [field_of(f) for f in val],
                           source=f"site cells of {data.name} (`edgekit domain fit --site`, blocks of "
                                  f"{block})")


def _split_fit(data: Path, data_root: Path | None, offsite: tuple[Path, ...], offsite_list: tuple[Path, ...],
               max_train_crops: int) -> tuple[Any, dict[str, Any]]:
    """The guard from a split (or a folder split by patient) and optional off-site dev fields."""
    from edgekit.domain_fit import crop_table, field_table, fit_domain
    from edgekit.errors import DataError

    if data.is_dir():
        from edgekit.data import scan_dataset
        from edgekit.splits import make_split

        split = make_split(scan_dataset(data))
        root = Path(split.data_root)
    else:
        from edgekit.splits import load_split

        split, _ = load_split(data, data_root)
        root = Path(split.data_root)
    parts = {k: v for k, v in split.parts.items() if v}
    if "train" not in parts or "val" not in parts:
        raise DataError("the split needs training and validation groups (val fraction > 0)")
    click.echo(f"measuring {min(len(parts['train']), max_train_crops)} of {len(parts['train'])} training and"
               f" {len(parts['val'])} validation crops…", err=True)
    train_items = parts["train"]
    if len(train_items) > max_train_crops:
        import numpy as np

        pick = np.random.default_rng(0).choice(len(train_items), max_train_crops, replace=False)
        train_items = [train_items[k] for k in sorted(pick)]
    train, train_lit, _ = crop_table(root / i.path for i in train_items)
    val_items = parts["val"]
    val, _, kept = crop_table(root / i.path for i in val_items)
    fields = _offsite_paths(offsite, offsite_list)
    off, off_names = None, []
    if fields:
        click.echo(f"finding cells in {len(fields)} off-site dev fields…", err=True)
        off, off_names, _ = field_table(fields)
    return fit_domain(train, train_lit, val, [val_items[k].group for k in kept], off, off_names,
                      source=f"{len(train)} training crops of {data.name}; {len(fields)} off-site dev fields")
