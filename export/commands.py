"""``edgekit export``: the click command. Light at import; the work happens in ``edgekit.export.bundle``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from edgekit import formats as format_table
from edgekit.cli_options import (
    FormatNames,
    bundle_from,
    data_root_option,
    labels_value,
    model_option,
    require_modules,
    sign_key_option,
    sign_note,
)
from edgekit.export.options import ExportOptions
from edgekit.trust_commands import resign_option


def _labels(value: str | None) -> list[str] | None:
    return labels_value(value) if value else None


def _check_source(source: Path | None, key: Path | None,
                  resign_reason: str | None) -> tuple[str | None, list[str]]:
    """Before any work: when the result will be signed, the bundle it is made from must verify (its
    signature and model files), unless the user names a reason. (What the source was, its problems)."""
    from edgekit.signing import check_signable, signing_key_from

    if signing_key_from(key) is None or source is None or not (source / "manifest.json").is_file():
        return None, []
    return check_signable(source, resign_reason)


@click.command()
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option("--keras", "keras_model", type=click.Path(path_type=Path),
              help="Bring your own Keras model (.keras) instead of a run folder.")
@click.option("--labels", help="Class names, comma-separated or a labels.txt file (for --keras).")
@click.option("--calibration", type=click.Path(path_type=Path),
              help="Calibration data: image folder (<class>/<images> or flat), .csv or .npy. "
                   "Default: a stratified sample of the run's training split.")
@click.option("--validation", type=click.Path(path_type=Path),
              help="Validation data (same kinds). Default: the run's val split (test if val is empty).")
@click.option("-o", "--out", type=click.Path(path_type=Path),
              help="Bundle folder to write. Default: in place (run folder) or MODEL_bundle/ (--keras).")
@click.option("--formats", type=FormatNames(), default="all", show_default=True,
              help=f"Comma-separated: {format_table.names()}.")
@click.option("--calibration-samples", default=300, show_default=True, type=click.IntRange(1),
              help="Images (stratified by class) used to calibrate int8.")
@click.option("--max-validation", type=click.IntRange(1), help="Cap on validation inputs (stratified).")
@click.option("--allow-drop", is_flag=True,
              help="Keep formats that miss their accuracy bound, marked failed in the manifest.")
@data_root_option()
@click.option("--opset", default=13, show_default=True, type=int, help="ONNX opset.")
@sign_key_option
@resign_option
def export(source: Path | None, keras_model: Path | None, labels: str | None, calibration: Path | None,
           validation: Path | None, out: Path | None, formats: tuple[format_table.FormatSpec, ...],
           calibration_samples: int,
           max_validation: int | None, allow_drop: bool, data_root: Path | None, opset: int,
           sign_key: Path | None, resign_reason: str | None) -> None:
    """Export to TFLite and ONNX, validate, write one bundle.

    Export a run folder or bundle (or --keras MODEL) to TFLite and ONNX, validate every format
    against Keras on real images, and write one verified bundle."""
    if (source is None) == (keras_model is None):
        raise click.UsageError("give either RUN_OR_BUNDLE or --keras MODEL.keras")
    options = ExportOptions(
        formats=formats, calibration_samples=calibration_samples, max_validation=max_validation,
        allow_drop=allow_drop, opset=opset, labels=_labels(labels), calibration=calibration,
        validation=validation, data_root=data_root,
    )
    require_modules("export", "export", "tensorflow", "keras", "tf2onnx", "onnx")
    source_was = _check_source(source, sign_key, resign_reason)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info/warning lines
    from edgekit.export.bundle import export_bundle

    manifest = export_bundle(source or keras_model, out, options, log=lambda m: click.echo(m, err=True))
    target = out or (source if source is not None else keras_model.parent / f"{keras_model.stem}_bundle")
    ok = sum(a.status == "ok" for k, a in manifest.artifacts.items() if k != "keras")
    click.echo(f"wrote {target}: {ok}/{len(manifest.artifacts) - 1} formats ok"
               f"{sign_note(target, sign_key, source_was, resign_reason)}")


@click.command()
@click.argument("positional_bundle", metavar="[BUNDLE]", required=False, type=click.Path(path_type=Path))
@model_option("The bundle to pack (the same as BUNDLE; one of them is required).")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True,
              help="Device bundle folder to write.")
@click.option("--formats", type=FormatNames(), default=",".join(format_table.PACKED), show_default=True,
              help="Comma-separated formats to keep; each must have passed validation.")
@click.option("--replace", is_flag=True, help="Overwrite OUT if it is a bundle (or empty).")
@click.option("--replay", type=click.IntRange(0), default=0, show_default=True,
              help="Also keep the Keras model and this many of its training crops (from the run's split), "
                   "so `edgekit site adapt` can start from the packed bundle.")
@sign_key_option
@resign_option
def pack(positional_bundle: Path | None, bundle: Path | None, out: Path,
         formats: tuple[format_table.FormatSpec, ...], replace: bool,
         replay: int, sign_key: Path | None, resign_reason: str | None) -> None:
    """Copy a bundle's device formats into a folder for a device.

    Copy a bundle's validated device formats, manifest and labels (no Keras model) into a small
    folder to put on a device."""
    from edgekit.export.pack import pack_bundle

    bundle = bundle_from(positional_bundle, bundle)
    if bundle is None:
        raise click.UsageError("give the bundle to pack: BUNDLE or --model BUNDLE")
    fmts = tuple(f.name for f in formats)
    source_was = _check_source(bundle, sign_key, resign_reason)
    copied = pack_bundle(bundle, out, fmts, replace=replace, replay=replay)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    click.echo(f"wrote {out}: {', '.join(copied)} ({size / 1024:.1f} KB)"
               f"{sign_note(out, sign_key, source_was, resign_reason)}")
