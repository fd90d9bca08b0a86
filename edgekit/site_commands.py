"""Site commands: ``edgekit cells`` (labelled cells from annotated fields). Light at import (click
only); OpenCV loads inside the command body."""

from __future__ import annotations

from pathlib import Path

import click


def _field_images(paths: tuple[Path, ...]) -> tuple[Path, list[Path]]:
    """The one folder the fields are in, and the field files (folders expanded)."""
    from edgekit.device.preprocess import is_image_file
    from edgekit.errors import DataError

    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.is_file() and is_image_file(f)))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"field image not found: {p}")
    if not files:
        raise DataError("no field images given")
    folders = {f.resolve().parent for f in files}
    if len(folders) > 1:
        raise DataError(f"the fields are in {len(folders)} folders; give fields from one folder per run")
    return folders.pop(), files


@click.command()
@click.argument("fields", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--annotations", "-a", required=True, type=click.Path(path_type=Path),
              help="IML JSON, COCO JSON, or Pascal VOC XML (a file or a folder of them).")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Dataset folder to write: Parasitized/, Uninfected/, cells.json.")
@click.option("--classes", "class_map", multiple=True, metavar="LABEL=CLASS",
              help="Map a source label to Parasitized, Uninfected or skip (repeatable), on top of the "
                   "built-in IML/BCCD names.")
@click.option("--min-iou", type=click.FloatRange(0.05, 1.0), default=0.4, show_default=True,
              help="Overlap a found cell needs with a labelled box to take its label.")
@click.option("--allow-one-class", is_flag=True, help="Write even if one class has no cells (healthy blood).")
@click.option("--replace", is_flag=True, help="Overwrite OUT if it exists.")
def cells(fields: tuple[Path, ...], annotations: Path, out: Path, class_map: tuple[str, ...], min_iou: float,
          allow_one_class: bool, replace: bool) -> None:
    """Cut every labelled cell of annotated FIELDS into a folder-per-class dataset.

    FIELDS are field images or a folder of them. Cells are found and cropped by the device's own
    field pipeline (the crop screening classifies: the cell's box, black outside its mask); each
    labelled box names the found cell it overlaps most. Parasite boxes (ring, trophozoite,
    schizont, gametocyte) -> Parasitized; red blood cell / RBC -> Uninfected; difficult, WBC and
    platelets are left out. Crops are named FIELD__INDEX.png, so splits can group by field
    (`edgekit split OUT --groups 'regex:^(.+)__'`).
    """
    import os

    from edgekit.cells import write_cells
    from edgekit.device.annotations import parse_class_map, read_annotations
    from edgekit.errors import DataError

    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    folder, files = _field_images(fields)
    fields_read = read_annotations(annotations, folder, parse_class_map(list(class_map)))
    annotated = {af.name: af for af in fields_read}
    missing = [f.name for f in files if f.name not in annotated]
    if missing:
        raise DataError(
            f"annotation file does not match the images: {len(missing)} of {len(files)} fields have no "
            f"annotation in {annotations} (first: {missing[0]})"
        )
    chosen = [annotated[f.name] for f in files]
    done = [0]

    def progress(cut) -> None:
        done[0] += 1
        note = f" rejected: {cut.rejected}" if cut.rejected else ""
        click.echo(f"[{done[0]}/{len(chosen)}] {cut.field}: {len(cut.crops)} cells cut of "
                   f"{sum(cut.labelled.values())} labelled{note}", err=True)

    summary = write_cells(chosen, out, min_iou=min_iou, replace=replace, allow_one_class=allow_one_class,
                          progress=progress)
    for c, n in summary["cells"].items():
        frac = summary["cut_fraction"][c]
        click.echo(f"{c:12s} {n:6d} cells ({'-' if frac is None else f'{100 * frac:.0f}%'} of "
                   f"{summary['labelled'][c]} labelled; the rest were not found by the cell finder)")
    click.echo(f"wrote {out} from {summary['fields']} fields ({summary['fields_rejected']} rejected)")
