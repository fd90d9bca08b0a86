"""``edgekit import``: the click command (light at import; the work is in ``edgekit.export.foreign``)."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli_options import FiniteFloatRange, labels_value
from edgekit.manifest import RESIZE_METHODS


def _number(text: str) -> float:
    """``0.5``, ``255`` or a fraction such as ``1/255``."""
    num, _, den = text.strip().partition("/")
    value = float(num) / float(den) if den else float(num)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return value


def _scale(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return _number(value)
    except (ValueError, ZeroDivisionError):
        raise click.BadParameter(f"expected a number or fraction such as 1/255, got {value!r}") from None


def _floats(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [_number(v) for v in value.split(",") if v.strip()]
    except (ValueError, ZeroDivisionError):
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = value.lower().replace(",", "x").split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims *= 2
    if len(dims) != 2 or min(dims) < 1:
        raise click.BadParameter(f"expected SIZE or HxW, e.g. 44 or 44x44, got {value!r}")
    return dims[0], dims[1]


def _sizes_of(images: Path):
    """The recorded sizes (:func:`edgekit.device.sizes.fit_sizes`) of the images in ``images``."""
    from edgekit.device.pipeline import image_files
    from edgekit.device.sizes import fit_sizes, measure_files
    from edgekit.errors import DataError

    sizes = fit_sizes(measure_files(image_files([images], "--trained-on")), f"--trained-on {images.name}")
    if sizes is None:
        raise DataError(f"--trained-on {images}: no readable images to take the training sizes from")
    return sizes


@click.command("import")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--labels", required=True,
              help="Class names in the model's output order, comma-separated or a labels.txt file.")
@click.option("--input-size", callback=_size, help="HxW (default: the model's input shape).")
@click.option("--scale", callback=_scale,
              help="Pixel multiplier before mean/std, e.g. 1/255 (needed unless the model takes raw uint8).")
@click.option("--mean", callback=_floats, help="Subtracted after scaling: one value or one per channel.")
@click.option("--std", callback=_floats, help="Divisor after the mean: one value or one per channel.")
@click.option("--resize", type=click.Choice(RESIZE_METHODS), default="area", show_default=True,
              help="Interpolation for resizing crops to the input size.")
@click.option("--color-order", type=click.Choice(["RGB", "BGR", "GRAY"]),
              help="Channel order the model expects (default RGB, GRAY for 1 channel).")
@click.option("--positive-index", type=int,
              help="Output index of the positive class (e.g. 0 = infected); enables screening decisions.")
@click.option("--threshold", type=FiniteFloatRange(0, 1), default=0.5, show_default=True,
              help="Cell cut on the positive probability (not calibrated by edgekit).")
@click.option("--logits", type=click.Choice(["softmax", "sigmoid"]),
              help="The model outputs logits: the device applies this activation in float (default: the "
                   "outputs are probabilities already).")
@click.option("--name", help="Model name in the manifest (default: the file name).")
@click.option("--trained-on", "trained_on", type=click.Path(path_type=Path),
              help="Images like the model's training images (files, folders, globs): their sizes are "
                   "recorded, so that an image far outside them (a whole field given as one cell) is "
                   "refused. Default: images of any size are classified.")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Bundle folder to write.")
@click.option("--force", is_flag=True, help="Overwrite a bundle already in OUT.")
def import_model(model: Path, labels: str, input_size: tuple[int, int] | None, scale: float | None,
                 mean: list[float] | None, std: list[float] | None, resize: str, color_order: str | None,
                 positive_index: int | None, threshold: float, logits: str | None, name: str | None,
                 trained_on: Path | None, out: Path, force: bool) -> None:
    """Wrap a TFLite or ONNX model from elsewhere into a bundle.

    The stated preprocessing and labels are checked against the model's tensors; `classify`,
    `screen`, `field` and `bench` then run it."""
    from edgekit.export.foreign import ImportOptions
    from edgekit.export.foreign import import_model as run_import

    opts = ImportOptions(labels=labels_value(labels), input_size=input_size, scale=scale, mean=mean or [0.0],
                         std=std or [1.0], resize=resize, color_order=color_order,
                         positive_index=positive_index, threshold=threshold, name=name, logits=logits,
                         image_sizes=None if trained_on is None else _sizes_of(trained_on))
    manifest = run_import(model, out, opts, force=force)
    (fmt, art), = manifest.artifacts.items()
    p = manifest.preprocessing
    lo, hi = p.input_range
    click.echo(f"wrote {out}: {fmt} ({art.bytes / 1e6:.2f} MB, {art.runtime}), input {p.input_size[0]}x"
               f"{p.input_size[1]}x{p.channels} {p.color_order}, values {lo:g}..{hi:g}, "
               f"labels {', '.join(manifest.labels)}; unsigned, not validated by edgekit")


# edgekit.cli registers each command by its name; `import` is a Python keyword, so it is set by name
globals()["import"] = import_model
