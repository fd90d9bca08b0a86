# pyright: basic
"""``edgekit domain``: fit and show the domain guard's statistics of a bundle. Light at import."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit.cli_options import option


@click.group()
def domain() -> None:
    """The domain guard: what a model's training cells looked like.

    Stored in the manifest under 'domain'."""


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
    site has checked its bundle on new fields, `edgekit site check`, and the guard should vouch for them).
    A crop that cannot be read is named and left out, and the exit status is then 1."""
    from edgekit.domain_fit import fit_site_guard, fit_split_guard, unreadable_line
    from edgekit.errors import DataError
    from edgekit.manifest import load_manifest

    def log(line: str) -> None:
        click.echo(line, err=True)

    manifest = load_manifest(bundle)
    if site:
        if offsite or offsite_list:
            raise DataError("--site fits on the site's own fields only: drop --offsite")
        dom, report = fit_site_guard(data, block, max_train_crops, log)
    else:
        dom, report = fit_split_guard(data, data_root, offsite, offsite_list, max_train_crops, log)
    unreadable = report.pop("unreadable")
    brief = {k: v for k, v in report.items() if k not in ("val_sessions", "offsite_dev_fields", "val_fields")}
    click.echo(json.dumps({**brief, "unreadable_crops": len(unreadable)}, indent=1))
    if not dry_run:
        manifest.domain = dom
        manifest.save(bundle)
        click.echo(f"wrote the domain statistics into {bundle}/manifest.json", err=True)
    if unreadable:  # fitted on the others, as `site cells` cuts the fields it can read, and exits 1
        click.echo(f"error: {unreadable_line(unreadable)}", err=True)
        raise SystemExit(1)
