# pyright: basic
"""Site commands: ``edgekit cells`` (labelled cells from annotated fields), ``edgekit adapt`` and
``edgekit site check`` (does a site bundle still hold on new labelled fields). Light at import (click
only); OpenCV and the runtimes load inside the command bodies."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.adapt_config import AdaptConfig
from edgekit.cli_options import (
    FINITE_FLOAT,
    FiniteFloatRange,
    FormatNames,
    allow_unsigned_option,
    format_option,
    model_format_option,
    option,
    sign_key_option,
    sign_note,
)
from edgekit.formats import FormatSpec
from edgekit.manifest import DEFAULT_GATE_BOUNDS, SITE_CUTOFFS


@click.command()
@click.argument("fields", nargs=-1, required=False, type=click.Path(path_type=Path))
@click.option("--annotations", "-a", type=click.Path(path_type=Path),
              help="IML JSON, COCO JSON, or Pascal VOC XML (a file or a folder of them).")
@click.option("--from-sessions", "sessions_db", type=click.Path(path_type=Path),
              help="Instead of boxed fields: the reviewers' verdicts on the cells screening kept, from this "
                   "screening database (`sessions confirm`, the review gallery, the phone page).")
@click.option("--session", "session_keys", multiple=True,
              help="With --from-sessions: only this session id or patient (repeatable; default: all).")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Dataset folder to write: Parasitized/, Uninfected/, cells.json.")
@click.option("--classes", "class_map", multiple=True, metavar="LABEL=CLASS",
              help="Map a source label to Parasitized, Uninfected or skip (repeatable), on top of the "
                   "built-in IML/BCCD names.")
@click.option("--min-iou", type=FiniteFloatRange(0.05, 1.0), default=0.4, show_default=True,
              help="Overlap a found cell needs with a labelled box to take its label.")
@click.option("--allow-one-class", is_flag=True, help="Write even if one class has no cells (healthy blood).")
@click.option("--replace", is_flag=True, help="Overwrite OUT if it is a cells dataset (or empty).")
def cells(fields: tuple[Path, ...], annotations: Path | None, sessions_db: Path | None,
          session_keys: tuple[str, ...], out: Path, class_map: tuple[str, ...], min_iou: float,
          allow_one_class: bool, replace: bool) -> None:
    """Cut labelled cells into a folder-per-class dataset.

    Cut every labelled cell of annotated FIELDS into a folder-per-class dataset (or, with
    --from-sessions DB, every reviewed cell whose crop screening kept).

    FIELDS are field images or a folder of them. Cells are found and cropped by the device's own
    field pipeline (the crop screening classifies: the cell's box, black outside its mask); each
    labelled box names the found cell it overlaps most. Parasite boxes (ring, trophozoite,
    schizont, gametocyte) -> Parasitized; red blood cell / RBC -> Uninfected; difficult, WBC and
    platelets are left out. Crops are named FIELD__INDEX.png, so splits can group by field
    (`edgekit model split OUT --groups 'regex:^(.+)__'`). Focus is judged by the site's own rule, set
    on FIELDS as `site adapt` sets a site bundle's (the shared floor under 5 fields or where they look
    blurred); cells.json records it. A field image that cannot be read is reported and left out; the
    others are cut, and the exit status is then 1.
    """
    import os

    from edgekit.cells import annotated_fields, write_cells
    from edgekit.device.annotations import parse_class_map

    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    if sessions_db is not None:
        if fields or annotations:
            raise click.UsageError("--from-sessions takes no FIELDS or --annotations")
        from edgekit.session_cells import write_session_cells

        summary = write_session_cells(sessions_db, out, list(session_keys) or None, replace=replace,
                                      allow_one_class=allow_one_class)
        click.echo(f"wrote {out} from {summary['fields']} fields: "
                   + ", ".join(f"{n} {c}" for c, n in summary["cells"].items())
                   + f" reviewed cells ({summary['source']})")
        return
    if not fields or annotations is None:
        raise click.UsageError("give FIELDS and --annotations (or --from-sessions DB)")
    chosen = annotated_fields(fields, annotations, parse_class_map(list(class_map)),
                              log=lambda line: click.echo(line, err=True))
    done = [0]

    def progress(cut) -> None:
        done[0] += 1
        note = f" rejected: {cut.rejected}" if cut.rejected else ""
        click.echo(f"[{done[0]}/{len(chosen)}] {cut.field}: {len(cut.crops)} cells cut of "
                   f"{sum(cut.labelled.values())} labelled{note}", err=True)

    summary = write_cells(chosen, out, min_iou=min_iou, replace=replace, allow_one_class=allow_one_class,
                          progress=progress, log=lambda line: click.echo(line, err=True))
    for c, n in summary["cells"].items():
        frac = summary["cut_fraction"][c]
        click.echo(f"{c:12s} {n:6d} cells ({'-' if frac is None else f'{100 * frac:.0f}%'} of "
                   f"{summary['labelled'][c]} labelled; the rest were not found by the cell finder)")
    click.echo(f"wrote {out} from {summary['fields']} fields ({summary['fields_rejected']} rejected)")
    sparse = summary["incompletely_labelled"]
    if sparse["fields"]:
        n = len(sparse["fields"])
        click.echo(f"warning: {n} of {summary['fields']} fields look incompletely labelled "
                   f"(fewer labelled cells than {sparse['floor']:.0%} of the cells found: "
                   f"{', '.join(sparse['fields'][:5])}{' ...' if n > 5 else ''}); "
                   "adaptation holds whole-field counts to their boxes: check or complete those labels first "
                   "(cells.json: label_coverage)", err=True)
    bad = summary["fields_unreadable"]
    if bad:
        click.echo(f"error: {len(bad)} of {summary['fields']} fields could not be read and were left out "
                   f"(first: {bad[0]})", err=True)
        raise SystemExit(1)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@option("--dataset", "site", aliases=("--data",), required=True, type=click.Path(path_type=Path),
        help="The site's labelled cells (from `edgekit site cells`).")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Site bundle folder to write.")
@click.option("--fields-split", type=click.Path(path_type=Path),
              help="JSON {train: [...], val: [...], test: [...]} of field names. Default: blocks of "
                   "consecutive fields (--block) dealt 60/20/20.")
@click.option("--block", type=click.IntRange(1), default=AdaptConfig.block, show_default=True,
              help="Consecutive fields per block of the default split.")
@click.option("--train-fields", type=click.IntRange(1), help="Use only this many training fields.")
@click.option("--negatives-per-field", type=click.IntRange(0), default=AdaptConfig.negatives_per_field or 0,
              show_default=True,
              help="At most this many uninfected training cells per field (all parasitized ones are kept); "
                   "0: every one.")
@click.option("--hard-negatives", type=click.IntRange(0), default=AdaptConfig.hard_negatives,
              show_default=True,
              help="Of --negatives-per-field, this many per fully labelled training field are the uninfected "
                   "cells the base model scores highest; the rest at random.")
@click.option("--objects-per-field", type=click.IntRange(0), default=AdaptConfig.objects_per_field,
              show_default=True,
              help="At most this many found objects that are no labelled cell (white cells, clumps; kept by "
                   "`edgekit site cells`) per fully labelled training field, learnt as not parasitized; "
                   "0: none.")
@click.option("--hard-objects", type=click.IntRange(0), default=AdaptConfig.hard_objects, show_default=True,
              help="Of --objects-per-field, this many per training field are the found objects the base "
                   "model scores highest; the rest at random.")
@click.option("--epochs", type=click.IntRange(1), default=AdaptConfig.epochs, show_default=True,
              help="At most this many epochs (see --patience).")
@click.option("--patience", type=click.IntRange(0), default=AdaptConfig.patience or 0, show_default=True,
              help="Stop after this many epochs without a better validation-field AUC (of the int8 model "
                   "when int8 is exported; 0: never stop early).")
@click.option("--average-epochs", type=FiniteFloatRange(0), default=AdaptConfig.average_epochs,
              show_default=True,
              help="Judge and keep an exponential average of the weights over about this many epochs "
                   "(0: the last step's weights).")
@click.option("--members", type=click.IntRange(1), default=AdaptConfig.members, show_default=True,
              help="Fine-tune this many times, each run with its own seed, and keep the average of their "
                   "weights (one model, same device cost); takes this many times as long.")
@click.option("--lr", type=FINITE_FLOAT, default=AdaptConfig.lr,
              show_default=True, help="Initial lr; decays to 0.")
@click.option("--batch-size", type=click.IntRange(1), default=AdaptConfig.batch_size, show_default=True)
@click.option("--base-share", type=FiniteFloatRange(0, 0.95), default=AdaptConfig.base_share,
              show_default=True,
              help="Share of the training crops taken from the base model's own training data.")
@click.option("--base-split", type=click.Path(path_type=Path),
              help="The base model's split file, if the manifest's path is not on this machine.")
@click.option("--base-data", type=click.Path(path_type=Path),
              help="The base split's data folder, if it moved.")
@click.option("--cutoff", type=click.Choice(list(SITE_CUTOFFS)), default=AdaptConfig.cutoff,
              show_default=True,
              help="count: call as many validation cells positive as are labelled (unbiased parasitemia on "
                   "labelled cells); field-count: as many over every cell the finder returns on whole "
                   "validation fields (needs the field images); field-error: the highest cutoff within one "
                   "standard error of the smallest mean per-field parasitemia error on those whole fields, "
                   "the number the gate holds (needs the field images); youden: maximise sensitivity + "
                   "specificity; auto: field-error when the field images are here, else count.")
@option("--field-images", "fields_dir", aliases=("--fields",), type=click.Path(path_type=Path),
        help="The folder of the site's field images. Default: the folder `edgekit site cells` cut the cells "
             "from, when it is still there.")
@click.option("--gate-error", type=FiniteFloatRange(0, 100, min_open=True),
              default=DEFAULT_GATE_BOUNDS["parasitemia_error"], show_default=True,
              help="Largest whole-field parasitemia error (points) on test fields for the bundle to vouch.")
@click.option("--gate-auc", type=FiniteFloatRange(0.0, 1.0), default=DEFAULT_GATE_BOUNDS["auc"],
              show_default=True,
              help="Smallest cell AUC on the test fields for the bundle to vouch (held by the lower end of "
                   "its 95% interval over the fields; 0: no AUC bound).")
@click.option("--formats", type=FormatNames(), default="tflite_int8", show_default=True,
              help="Formats to export and validate.")
@click.option("--seed", type=int, default=AdaptConfig.seed, show_default=True)
@click.option("--replace", is_flag=True, help="Overwrite OUT if it is a bundle (or empty).")
@click.option("--allow-drop", is_flag=True,
              help="Keep formats that miss their validation bound, marked failed (as in export).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Where decoded image arrays are cached.")
@sign_key_option
def adapt(model: Path, site: Path, out: Path, fields_split: Path | None, block: int, train_fields: int | None,
          negatives_per_field: int | None, hard_negatives: int, objects_per_field: int, hard_objects: int,
          epochs: int,
          patience: int, average_epochs: float, members: int, lr: float, batch_size: int,
          base_share: float, base_split: Path | None, base_data: Path | None, cutoff: str,
          fields_dir: Path | None, gate_error: float, gate_auc: float, formats: tuple[FormatSpec, ...],
          seed: int,
          replace: bool, allow_drop: bool, cache_dir: Path | None, sign_key: Path | None) -> None:
    """Fine-tune a model on a site's labelled cells.

    Fine-tune MODEL (a run folder or a bundle with its model.keras) on a site's labelled cells
    and write a validated site bundle.

    The site's fields are split into train/validation/test by blocks of consecutive fields; the
    model learns the site's training cells mixed with its own original data; the cutoff, uncertain
    band and field rule are chosen on the site's validation fields; int8 is exported and validated
    as by `edgekit model export`, measured on the test fields, and the manifest records the base model,
    the site data's hash and the fields and cells used. The bundle vouches for results only when its
    test fields meet the gate (--gate-error, --gate-auc); otherwise it is written, every result it
    gives says NOT VALIDATED, and adapt exits 1.
    """
    import os

    from edgekit.cli_options import require_modules

    require_modules("adapt", "train", "tensorflow", "keras")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from edgekit.adapt import adapt_model

    gate = {"parasitemia_error": gate_error, **({"auc": gate_auc} if gate_auc > 0 else {})}
    cfg = AdaptConfig(epochs=epochs, patience=patience or None, lr=lr, batch_size=batch_size,
                      base_share=base_share,
                      train_fields=train_fields, negatives_per_field=negatives_per_field or None, block=block,
                      objects_per_field=objects_per_field, average_epochs=average_epochs, members=members,
                      hard_negatives=hard_negatives, hard_objects=hard_objects,
                      cutoff=cutoff, seed=seed, gate=gate)
    m = adapt_model(model, site, out, cfg, split_file=fields_split, base_split=base_split,
                    base_data=base_data, formats=",".join(f.name for f in formats), replace=replace,
                    cache_dir=cache_dir,
                    allow_drop=allow_drop, log=lambda s: click.echo(s, err=True), fields_dir=fields_dir)
    site_eval = m.evaluation.get("site", {})
    for part in ("val", "test"):
        e = site_eval.get(part)
        if e:
            at = e["at_specificity_0.995"]
            click.echo(f"site {part:4s}: {e['fields']} fields, {e['cells']} cells "
                       f"({e['positive_cells']} positive): AUC {e['auc']['value']:.4f}, "
                       f"sensitivity {at['sensitivity']:.3f} at specificity >= 99.5%, "
                       f"parasitemia MAE {e['parasitemia']['mae_points']:.2f} points")
    t = m.thresholds
    click.echo(f"cutoff {t.cutoff:.3f}, uncertain band {t.negative:.3f}-{t.positive:.3f}; "
               f"field rule: {m.patient_rule.describe()}")
    gate = m.domain.gate if m.domain is not None else None
    click.echo(f"wrote {out}{sign_note(out, sign_key)}")
    if sign_key is None:
        click.echo("unsigned: devices refuse it until a key they trust signs it. Once: `edgekit trust "
                   "keygen site-key --trust` (copy site-key.pub into each device's keyring); then "
                   f"`edgekit trust sign {out} --key site-key.key`, or set $EDGEKIT_SIGNING_KEY before adapt")
    if gate is None or not gate.passed:
        from edgekit.site_gate import gate_advice

        for line in gate_advice(m):
            click.echo(line, err=True)
        why = gate.summary() if gate else "no guard statistics: nothing vouches for its results"
        raise click.ClickException(f"{why}; the bundle says NOT VALIDATED on every result "
                                   "(label more fields, or check the labels, and adapt again)")
    click.echo(gate.summary())


@click.command("check")
@click.argument("bundle", type=click.Path(path_type=Path))
@option("--dataset", "data", aliases=("--data",), required=True, type=click.Path(path_type=Path),
        help="Newly labelled cells of the site (a folder from `edgekit site cells`).")
@option("--field-images", "fields_dir", aliases=("--fields",), type=click.Path(path_type=Path), default=None,
        help="Their field images (the folder given to `edgekit site cells`): the guard's verdict and the "
             "parasitemia of each whole field, as `edgekit field` reports them.")
@option("--review", "review", type=click.Path(path_type=Path), default=None,
        help="Write an HTML page of the labelled cells the bundle contradicts most confidently (the labels "
             "most worth checking), with their field and box.")
@option("--include-fitted", is_flag=True,
        help="Also measure the fields the bundle was fitted on (its training and validation fields, left "
             "out by default: they cannot show whether it holds), e.g. to review their labels.")
@model_format_option()
@allow_unsigned_option()
@format_option("text", "json", default="text", old_flags={"--json": "json"},
               help_text="Print the measurements and the verdict as text or JSON.")
def site_check(bundle: Path, data: Path, fields_dir: Path | None, review: Path | None, include_fitted: bool,
               model_format: str | None, allow_unsigned: bool, out_format: str) -> None:
    """Check that a site bundle still holds on newly labelled fields.

    Measure SITE BUNDLE on newly labelled fields of its site through the device runtime (cell AUC,
    sensitivity at specificity 0.995, per-field parasitemia error, the guard's verdicts) and say whether
    it still holds against the bounds in its manifest (`gate.bounds`; default: parasitemia error <= 1.0
    point, AUC >= 0.97). Exit status 0: it holds; 1: it does not (re-adapt, or refer to microscopy)."""
    import json
    import sys

    from edgekit.errors import EdgekitError
    from edgekit.manifest import atomic_write_text
    from edgekit.safefile import check_output_target
    from edgekit.site_check import check_site, report_lines, review_page

    if review is not None:  # refused before the measuring, not after (a folder, a link, no such folder)
        check_output_target(review, force=True)
    result = check_site(bundle, data, fields_dir, model_format, allow_unsigned or None,
                        log=lambda s: click.echo(s, err=True), include_fitted=include_fitted)
    if out_format == "json":
        click.echo(json.dumps(result.to_dict(), default=float))
    else:
        for line in report_lines(result):
            click.echo(line)
    if review is not None:  # after the report: a page that cannot be written loses no measurement
        try:
            atomic_write_text(review, review_page(result, data))
        except OSError as exc:
            raise EdgekitError(f"cannot write the review page {review}: {exc.strerror or exc}") from exc
        click.echo(f"labels to check: {review}", err=True)
    if not result.holds:
        sys.exit(1)
