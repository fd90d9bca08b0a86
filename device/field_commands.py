# pyright: basic
"""``edgekit field``: count and classify every red cell of whole microscope fields. Light at import
(click only); OpenCV and the inference engine load inside the command body."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit.cli_options import (
    MAX_THREADS,
    allow_unsigned_option,
    format_option,
    model_format_option,
    model_option,
)
from edgekit.startup import loads_model, release


def _classifier(bundle: Path | None, model_format: str | None, threads: int | None, allow_unsigned: bool):
    """The bundle's classifier; None where the default model is missing (cells are then only counted)."""
    from edgekit.device.runtime import load_classifier
    from edgekit.errors import BundleError, SignatureError

    try:
        return load_classifier(bundle, model_format, threads, allow_unsigned=allow_unsigned,
                               warn=lambda line: click.echo(line, err=True))
    except BundleError as exc:
        # a named bundle or format, or a tampered default model, is an error; else count only
        if bundle is not None or model_format is not None or isinstance(exc, SignatureError):
            raise
        click.echo(f"note: {exc}; counting cells without classifying them", err=True)
        return None


@loads_model
@click.command()
@click.argument("images", nargs=-1, required=True)
@model_option("Bundle folder (from `edgekit model export`). Default: the model shipped with edgekit; "
              "without any model, cells are found and counted but not classified.")
@click.option("--overlay-dir", type=click.Path(path_type=Path), default=None,
              help="Write FIELD_overlay.png here: each cell outlined and boxed, coloured by result.")
@model_format_option()
@format_option("table", "jsonl", default="table",
               help_text="jsonl: one JSON object per field with every cell, then a total.")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None, help="Inference threads.")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=64, show_default=True,
              help="Cell crops per inference call.")
@click.option("--count-only", is_flag=True, help="Find and count cells without classifying them.")
@allow_unsigned_option()
def field(images: tuple[str, ...], bundle: Path | None, model_format: str | None, overlay_dir: Path | None,
          out_format: str, threads: int | None, batch_size: int, count_only: bool,
          allow_unsigned: bool) -> None:
    """Find, classify and count every red cell of whole fields.

    Every red cell in whole microscope fields is found and classified, and parasitemia reported.

    IMAGES may be field images, folders (searched recursively) or glob patterns. A field that
    cannot be read or used (not an image, too large, blank, over/under-exposed, out of focus, no
    cells, not found) is reported as rejected
    with the reason and the others carry on; the exit status is 1 when any field could not be
    read or an overlay written (a full disk: the field is counted all the same), or none was
    counted. Parasitemia = cells called parasitized at the model's cutoff / cells found, with a
    Wilson 95% interval; "unc" counts cells in the uncertain band (worth a look at the overlay).
    """
    import os

    from edgekit.device.field import FieldReport
    from edgekit.device.field.classify import classify_field, segment_field
    from edgekit.device.field.overlay import write_overlay
    from edgekit.device.field.totals import FieldTotals
    from edgekit.device.output import FIELD_HEADER, field_json, field_line, field_total_lines
    from edgekit.device.pipeline import expand_inputs, missing_reason, prefetch, workers

    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")  # our one-line reasons replace OpenCV's warnings
    classifier = None if count_only else _classifier(bundle, model_format, threads, allow_unsigned)
    release()  # no model to wait for with --count-only, or without the default one (edgekit.startup)
    if overlay_dir is not None:
        overlay_dir.mkdir(parents=True, exist_ok=True)
    items = list(expand_inputs(images))  # files, folders (recursive) and globs, as `screen --fields`
    if not any(path is not None for _, path in items):
        raise click.UsageError("no image files found in the given paths")

    totals = FieldTotals(len(items))
    unreadable = 0  # fields not found or not decodable (a blurred or blank one is only rejected)
    overlays: set[str] = set()  # overlay names written: a/f.jpg and b/f.jpg get one each
    lost = 0  # overlays that could not be written
    if out_format == "table":
        click.echo(FIELD_HEADER)

    def segment(item: tuple[str, Path | None]):
        shown, path = item
        if path is None:
            return FieldReport(source=shown, rejected=missing_reason(shown)), None
        return segment_field(path, classifier)

    # the next fields are decoded and segmented in threads while the current one is classified
    for rep, rgb in prefetch(segment, items, workers(threads)):
        unreadable += rgb is None
        rep = classify_field(rep, rgb, classifier, batch_size, keep_image=overlay_dir is not None)
        try:
            overlay = write_overlay(rep, overlay_dir, overlays) if overlay_dir is not None else None
        except OSError as exc:  # a full or failing disk: the field's result is still reported
            overlay, lost = None, lost + 1
            click.echo(f"{rep.source}: overlay not written: {exc.strerror or exc}", err=True)
        totals.add(rep)
        click.echo(field_json(rep, overlay) if out_format == "jsonl" else field_line(rep))

    total = totals.to_dict(classifier is not None, None if classifier is None else classifier.manifest.domain)
    if out_format == "jsonl":
        click.echo(json.dumps({"total": total}))
    else:
        for line in field_total_lines(total):
            click.echo(line)
        if overlay_dir is not None:
            click.echo(f"wrote {len(overlays)} overlay PNG(s) (FIELD_overlay.png) to {overlay_dir}", err=True)
    if totals.counted == 0 or unreadable or lost:
        raise SystemExit(1)
