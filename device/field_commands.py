# pyright: basic
"""``edgekit field``: count and classify every red cell of whole microscope fields. Light at import
(click only); OpenCV and the inference engine load inside the command body."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgekit.cli_options import allow_unsigned_option, model_option


def _write_overlay(report: Any, overlay_dir: Path) -> Path | None:
    import cv2

    from edgekit.device.field import draw_overlay
    from edgekit.manifest import atomic_write_bytes

    if report.image is None:
        return None
    ok, buf = cv2.imencode(".png", draw_overlay(report.image, report)[:, :, ::-1])
    if not ok:
        return None
    path = overlay_dir / f"{Path(report.source).stem}_overlay.png"
    atomic_write_bytes(path, buf.tobytes())
    return path


@click.command()
@click.argument("images", nargs=-1, required=True)
@model_option("Bundle folder (from `edgekit export`). Default: the model shipped with edgekit; "
              "without any model, cells are found and counted but not classified.")
@click.option("--overlay-dir", type=click.Path(path_type=Path), default=None,
              help="Write FIELD_overlay.png here: each cell outlined and boxed, coloured by result.")
@click.option("--format", "out_format", type=click.Choice(["table", "jsonl"]), default="table",
              show_default=True, help="jsonl: one JSON object per field with every cell, then a total.")
@click.option("--threads", type=click.IntRange(1, 64), default=None, help="Inference threads.")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=64, show_default=True,
              help="Cell crops per inference call.")
@click.option("--count-only", is_flag=True, help="Find and count cells without classifying them.")
@allow_unsigned_option()
def field(images: tuple[str, ...], bundle: Path | None, overlay_dir: Path | None, out_format: str,
          threads: int | None, batch_size: int, count_only: bool, allow_unsigned: bool) -> None:
    """Find every red cell in whole microscope fields, classify each, and report parasitemia.

    IMAGES may be field images, folders (searched recursively) or glob patterns. A field that
    cannot be read or used (not an image, too large, blank, over/under-exposed, out of focus, no
    cells, not found) is reported as rejected
    with the reason and the others carry on. Parasitemia = cells called parasitized at the model's
    cutoff / cells found, with a Wilson 95% interval; "unc" counts cells in the uncertain band
    (worth a look at the overlay).
    """
    import os

    from edgekit.device.domain import NOT_VALIDATED, not_validated
    from edgekit.device.field import FieldReport
    from edgekit.device.field.classify import classify_field, segment_field
    from edgekit.device.output import ci_text, pct
    from edgekit.device.pipeline import expand_inputs, missing_reason, prefetch, workers
    from edgekit.errors import BundleError, SignatureError
    from edgekit.metrics import wilson_interval

    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")  # our one-line reasons replace OpenCV's warnings
    classifier = None
    if not count_only:
        from edgekit.device.runtime import load_classifier

        try:
            classifier = load_classifier(bundle, threads=threads, allow_unsigned=allow_unsigned,
                                         warn=lambda line: click.echo(line, err=True))
        except BundleError as exc:
            if bundle is not None or isinstance(exc, SignatureError):  # a tampered default model is an error
                raise
            click.echo(f"note: {exc}; counting cells without classifying them", err=True)
    if overlay_dir is not None:
        overlay_dir.mkdir(parents=True, exist_ok=True)
    items = list(expand_inputs(images))  # files, folders (recursive) and globs, as `screen --fields`
    if not any(path is not None for _, path in items):
        raise click.UsageError("no image files found in the given paths")

    total_cells = total_par = total_unc = counted = 0
    all_scores: list[float | None] = []  # every counted cell's domain score, for the total's verdict
    if out_format == "table":
        click.echo(f"{'field':32s} {'cells':>5s} {'par':>4s} {'unc':>4s} {'parasitemia':>11s} "
                   f"{'95% CI':>13s} {'ms':>6s}  status")

    def segment(item: tuple[str, Path | None]):
        shown, path = item
        if path is None:
            return FieldReport(source=shown, rejected=missing_reason(shown)), None
        return segment_field(path, classifier)

    # the next fields are decoded and segmented in threads while the current one is classified
    for rep, rgb in prefetch(segment, items, workers(threads)):
        rep = classify_field(rep, rgb, classifier, batch_size, keep_image=overlay_dir is not None)
        overlay = _write_overlay(rep, overlay_dir) if overlay_dir is not None else None
        ms = 1000 * sum(v for k, v in rep.timing.items() if k != "decode")
        if rep.rejected is None:
            counted += 1
            total_cells += rep.n_cells
            total_par += rep.n_parasitized
            total_unc += rep.count("uncertain")
            all_scores.extend(rep.domain_scores)
        if out_format == "jsonl":
            d = rep.to_dict(per_cell=True)
            if overlay:
                d["overlay"] = str(overlay)
            click.echo(json.dumps(d))
            continue
        name = Path(rep.source).name[:32]
        if rep.rejected:
            click.echo(f"{name:32s} {'-':>5s} {'-':>4s} {'-':>4s} {'-':>11s} {'-':>13s} {ms:6.0f}  "
                       f"rejected: {rep.rejected}")
            continue
        classified = bool(rep.decisions)
        status = not_validated(rep.domain).strip() or "ok"
        click.echo(
            f"{name:32s} {rep.n_cells:5d} {rep.n_parasitized if classified else '-':>4} "
            f"{rep.count('uncertain') if classified else '-':>4} {pct(rep.parasitemia):>11s} "
            f"{ci_text(rep.ci95):>13s} {ms:6.0f}  {status}"
        )

    total: dict[str, Any] = {"fields": len(items), "counted": counted, "rejected": len(items) - counted,
                             "cells": total_cells}
    if classifier is not None and total_cells:
        total.update(parasitized=total_par, uncertain=total_unc, parasitemia=total_par / total_cells,
                     ci95=list(wilson_interval(total_par, total_cells)))
    if classifier is not None:
        from edgekit.device.domain import session_verdict

        total["domain"] = session_verdict(all_scores, classifier.manifest.domain, "set of fields")
    if out_format == "jsonl":
        click.echo(json.dumps({"total": total}))
    else:
        line = f"total: {counted}/{len(items)} fields counted, {total_cells} cells"
        if "parasitemia" in total:
            line += (f", {total_par} parasitized ({total_unc} uncertain); parasitemia "
                     f"{pct(total['parasitemia'])} (95% CI {ci_text(total['ci95'])})")
        click.echo(line)
        if "domain" in total and not total["domain"]["ok"]:
            click.echo(f"parasitemia {NOT_VALIDATED}: {total['domain']['why']}")
        if overlay_dir is not None:
            click.echo(f"overlays in {overlay_dir}", err=True)
    if counted == 0:
        raise SystemExit(1)
