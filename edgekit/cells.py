# pyright: basic
"""Cut labelled cells out of annotated fields into a folder-per-class dataset, as the device sees them.

A labelled box only says *which* cell; the pixels come from the device's own field pipeline: the
field is segmented with :func:`edgekit.device.field.count_cells` (quality check included, so a
field screening would reject is not used either), each labelled box is matched one-to-one to the
found cell it overlaps most (IoU at least ``min_iou``, greedy from the best pair), and the crop is
:func:`edgekit.device.field.crop_cell` of that found cell: its tight box, everything outside its
mask black. Training therefore sees exactly the crops screening classifies. Labelled cells the
segmentation does not find are not cut (screening never sees them either); found cells that
match an ignored box (``difficult``, white cell, platelet) are not cut.

Output: ``OUT/Parasitized/<field-stem>__<box-index>.png``, ``OUT/Uninfected/...`` and
``OUT/cells.json`` (one record per crop plus per-field counts), written to a temporary folder
beside ``OUT`` and renamed into place only when complete. Group any split by field with
``--groups 'regex:^(.+)__'``; :func:`block_split` splits fields by blocks of consecutive frames.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import statistics
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.device.annotations import CLASSES, PARASITIZED, AnnotatedField, Box
from edgekit.errors import DataError
from edgekit.safefile import check_replaceable, read_regular_bytes, replace_dir

if TYPE_CHECKING:
    from edgekit.device.field.focus import FocusRule

CELLS_INDEX = "cells.json"
MAX_INDEX_BYTES = 256 << 20  # cells.json of ~20,000 IML cells is ~5 MB
OBJECTS_DIR = ".objects"  # found objects that are no labelled red cell (hidden: not a class folder)
# a found object that overlaps a parasitized cell's box this much (two overlapping cells found as one,
# a parasite's cell cut badly) is kept out of the objects: teaching it "not parasitized" would be wrong
OBJECT_OVERLAP = 0.1
AMBIGUOUS = ("difficult",)  # boxes whose object is neither a red cell nor surely something else
FIELD_SEPARATOR = "__"
# labelled cells / cells found on a field: a fully boxed field sits near 0.9 (IML median 0.91: the finder
# also finds edge cells, white cells and platelets); well below it, the boxes miss cells (a data check)
LABEL_COVERAGE_FLOOR = 0.8
GROUP_REGEX = f"regex:^(.+){FIELD_SEPARATOR}"  # scan_dataset grouping: one group per field


def crop_name(field_image: str | os.PathLike, index: int) -> str:
    """``<field-stem>__<index>.png``: the field stays recoverable from every crop's name."""
    return f"{Path(field_image).stem}{FIELD_SEPARATOR}{index}.png"


def read_cells_index(folder: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``cells.json`` of a cells dataset folder: a bounded regular file (a FIFO would hang the
    read) holding a JSON object; :class:`DataError` otherwise."""
    path = Path(folder) / CELLS_INDEX
    raw = read_regular_bytes(path, MAX_INDEX_BYTES, "cells index", error=DataError)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise DataError(f"unreadable {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a JSON object")
    return data


def labelled_parasitemia(folder: str | os.PathLike, positive: str = PARASITIZED) -> dict[str, float]:
    """Labelled parasitemia per field stem (``positive`` boxes / all labelled cells) from ``cells.json``'s
    per-field counts: the truth a whole-field count is held to. :class:`DataError` when the index is
    missing or unreadable, or an entry is not a field name with counts that are non-negative integers
    (a hand-edited -5 or "12" would hold every field to a wrong truth)."""
    rows = read_cells_index(folder).get("per_field")
    if not isinstance(rows, list):
        raise DataError(f"{Path(folder) / CELLS_INDEX}: per_field must be a list")
    out = {}
    for r in rows:
        counts = r.get("labelled") if isinstance(r, dict) else None
        if not (isinstance(counts, dict) and isinstance(r.get("field"), str) and all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts.values())):
            raise DataError(f"{Path(folder) / CELLS_INDEX}: per_field entry {str(r)[:80]} is not a field "
                            "name with labelled counts (non-negative integers)")
        out[Path(r["field"]).stem] = counts.get(positive, 0) / max(1, sum(counts.values()))
    return out


def field_of(crop_file: str | os.PathLike) -> str:
    """The field stem a crop came from (inverse of :func:`crop_name`)."""
    return Path(crop_file).name.rsplit(FIELD_SEPARATOR, 1)[0]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes (N, 4) x (M, 4), each (x0, y0, x1, y1) with exclusive max."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match_boxes(labelled: Sequence[Box], found: Sequence[tuple[int, int, int, int]],
                min_iou: float) -> list[tuple[int, int, float]]:
    """One-to-one (box index, found index, IoU) pairs, greedy from the highest IoU, IoU >= min_iou."""
    if not labelled or not found:
        return []
    iou = box_iou(np.array([(b.x0, b.y0, b.x1, b.y1) for b in labelled]), np.array(found))
    pairs = []
    used_b: set[int] = set()
    used_f: set[int] = set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = divmod(int(flat), iou.shape[1])
        if iou[i, j] < min_iou:
            break
        if i in used_b or j in used_f:
            continue
        used_b.add(i)
        used_f.add(j)
        pairs.append((i, j, float(iou[i, j])))
    return sorted(pairs)


def _near_boxes(labelled: Sequence[Box], found: Sequence[tuple[int, int, int, int]], label: str,
                min_iou: float = OBJECT_OVERLAP) -> set[int]:
    """Found indices overlapping a ``label`` box by at least ``min_iou``."""
    boxes = [(b.x0, b.y0, b.x1, b.y1) for b in labelled if b.label == label]
    if not boxes or not found:
        return set()
    return {int(j) for j in np.nonzero((box_iou(np.array(boxes), np.array(found)) >= min_iou).any(axis=0))[0]}


def _object_indices(boxes: Sequence[Box], cells: Sequence[Any],
                    pairs: list[tuple[int, int, float]]) -> list[int]:
    """Found cells that are no labelled red cell and no ``difficult`` one, and overlap no parasitized box."""
    taken = {j for i, j, _ in pairs if boxes[i].label is not None or boxes[i].source_label in AMBIGUOUS}
    taken |= _near_boxes(boxes, [c.box for c in cells], PARASITIZED)
    return [j for j in range(len(cells)) if j not in taken]


@dataclass
class FieldCut:
    """The labelled crops of one field, and what could not be cut."""

    field: str
    # (class, box index, crop, info) per cut cell
    crops: list[tuple[str, int, np.ndarray, dict[str, Any]]] = dataclasses.field(default_factory=list)
    labelled: dict[str, int] = dataclasses.field(default_factory=dict)  # labelled boxes per class
    # labelled boxes no found cell matched
    unmatched: dict[str, int] = dataclasses.field(default_factory=dict)
    found: int = 0
    rejected: str | None = None
    unreadable: bool = False  # rejected because the image could not be read at all
    # (found index, crop) of found objects that are no labelled red cell: no box, or a white cell's or
    # platelet's box. Screening counts them; adaptation learns that they are not parasitized cells.
    objects: list[tuple[int, np.ndarray]] = dataclasses.field(default_factory=list)


def _annotated_pixels(af: AnnotatedField) -> np.ndarray:
    """The field's pixels in the frame its boxes were drawn in: upright as its EXIF orientation says,
    or as the file stores them (:meth:`AnnotatedField.drawn_on`); :class:`ImageError` when unreadable
    or when nothing tells which (a turned field's cells would be cut from the wrong places)."""
    from edgekit.device.preprocess import apply_orientation, read_image_as_stored
    from edgekit.errors import ImageError

    stored, orientation = read_image_as_stored(af.image)
    upright = apply_orientation(stored, orientation)
    if orientation == 1:
        return upright
    size = (stored.shape[1], stored.shape[0])
    frame = af.drawn_on(size, (upright.shape[1], upright.shape[0]))
    if frame is None:
        raise ImageError(f"its EXIF orientation ({orientation}) turns the picture, and neither the "
                         "annotation's size nor its boxes tell whether they were drawn on the turned "
                         "picture or the stored one: save the field upright without the EXIF orientation")
    return stored if frame == "stored" else upright


def cut_field(af: AnnotatedField, min_iou: float = 0.4, params: Any = None,
              rule: FocusRule | None = None) -> FieldCut:
    """Segment one annotated field with the device pipeline and crop every labelled cell it finds;
    ``rule``: the focus rule the field is judged by (:func:`fields_rule`; None: the shared one)."""
    from edgekit.device.field import count_cells, crop_cell
    from edgekit.errors import ImageError

    out = FieldCut(af.name)
    for b in af.boxes:
        if b.label:
            out.labelled[b.label] = out.labelled.get(b.label, 0) + 1
    try:
        rgb = _annotated_pixels(af)
    except ImageError as exc:
        # one bad field is reported and left out; the batch goes on (the command then exits 1)
        out.rejected, out.unreadable, out.unmatched = f"cannot be read: {exc}", True, dict(out.labelled)
        return out
    af = af.fitted(rgb.shape[1], rgb.shape[0])
    cells, _, reason = count_cells(rgb, params, rule=rule)
    out.found = len(cells)
    if reason:
        out.rejected = reason
        out.unmatched = dict(out.labelled)
        return out
    pairs = match_boxes(af.boxes, [c.box for c in cells], min_iou)
    matched = set()
    out.objects = [(j, crop_cell(rgb, cells[j])) for j in _object_indices(af.boxes, cells, pairs)]
    for i, j, iou in pairs:
        b = af.boxes[i]
        if b.label is None:
            continue
        matched.add(i)
        c = cells[j]
        info = {"box": [b.x0, b.y0, b.x1, b.y1], "cell": list(c.box), "iou": round(iou, 3),
                "source_label": b.source_label, "edge": c.edge,
                "separation": c.separation}
        out.crops.append((b.label, i, crop_cell(rgb, c), info))
    for i, b in enumerate(af.boxes):
        if b.label and i not in matched:
            out.unmatched[b.label] = out.unmatched.get(b.label, 0) + 1
    return out


def _encode_png(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise DataError("could not encode a crop as PNG")
    return buf.tobytes()


def write_cells(
    fields: Iterable[AnnotatedField], out: str | os.PathLike, min_iou: float = 0.4, replace: bool = False,
    allow_one_class: bool = False, params: Any = None, progress: Callable[[FieldCut], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Cut every field into ``out/<class>/`` plus ``out/cells.json``; returns the summary.

    Focus is judged by the site's own rule, set on these fields (:func:`fields_rule`; ``log`` gets
    how), and the summary's ``focus`` records it.

    All or nothing: crops go to a temporary folder beside ``out``, renamed into place at the end.
    Raises :class:`DataError` when ``out`` exists (unless ``replace``), or a class ends up empty
    (unless ``allow_one_class``; healthy-blood fields only have uninfected cells).
    """
    out = Path(out)
    check_replaceable(out, replace, CELLS_INDEX, "a cells dataset", DataError)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        records: list[dict[str, Any]] = []
        per_field: list[dict[str, Any]] = []
        counts: dict[str, int] = dict.fromkeys(CLASSES, 0)
        folders: set[str] = set()
        fields = list(fields)
        rule, focus = fields_rule(fields, log or (lambda _: None))
        for af in fields:
            folders.add(str(Path(af.image).resolve().parent))
            cut = cut_field(af, min_iou, params, rule)
            records += _write_cut(tmp, af, cut, counts)
            per_field.append(_field_entry(af, cut))
            if progress:
                progress(cut)
        check_classes(counts, allow_one_class,
                      "no labelled cell could be cut (no found cell matched a labelled box)")
        summary = {**_cells_summary(per_field, counts, min_iou, folders), "focus": focus}
        index = {"summary": summary, "per_field": per_field, "cells": records}
        (tmp / CELLS_INDEX).write_text(json.dumps(index, indent=1) + "\n")
        os.chmod(tmp, 0o755)
        replace_dir(tmp, out)
        return summary
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fields_rule(fields: Sequence[AnnotatedField], log: Callable[[str], None]
                ) -> tuple[FocusRule | None, dict[str, Any]]:
    """(the focus rule the fields are judged by, its record for ``cells.json``): the rule a site bundle
    adapted on them would carry (:func:`edgekit.site_focus.fields_focus`: a share of their own median
    score, so a microscope with more pixels per cell is not judged blurred), or the shared one (None,
    recorded as the default's) where that falls back to it: too few fields, no edges. The record's
    ``from_fields`` says which (a rule from fields that look blurred is the shared floor with marks left
    out: its ``source`` says so), ``how`` the line logged."""
    from edgekit.device.field.focus import DEFAULT_RULE, FocusRule
    from edgekit.site_focus import fields_focus

    lines: list[str] = []

    def logged(line: str) -> None:
        lines.append(line)
        log(line)

    focus = fields_focus([Path(af.image) for af in fields], logged)
    rule = None if focus is None else FocusRule.from_dict(focus)
    record = dataclasses.asdict(rule or DEFAULT_RULE)
    return rule, {**record, "from_fields": focus is not None, "how": lines[-1] if lines else ""}


def _write_cut(tmp: Path, af: AnnotatedField, cut: FieldCut, counts: dict[str, int]) -> list[dict[str, Any]]:
    """Write one field's crops (``<class>/``) and found objects (:data:`OBJECTS_DIR`) into ``tmp``,
    adding its crops to ``counts``; returns the crops' records."""
    records = []
    for label, index, crop, info in cut.crops:
        name = crop_name(af.image, index)
        (tmp / label).mkdir(exist_ok=True)
        (tmp / label / name).write_bytes(_encode_png(crop))
        counts[label] += 1
        records.append({"file": f"{label}/{name}", "field": af.name, "class": label, **info})
    for j, crop in cut.objects:
        (tmp / OBJECTS_DIR).mkdir(exist_ok=True)
        name = f"{Path(af.image).stem}{FIELD_SEPARATOR}o{j}.png"
        (tmp / OBJECTS_DIR / name).write_bytes(_encode_png(crop))
    return records


def _field_entry(af: AnnotatedField, cut: FieldCut) -> dict[str, Any]:
    """One field's line of ``cells.json``'s ``per_field``."""
    entry = {"field": af.name, "found": cut.found, "labelled": cut.labelled,
             "cut": {c: sum(x[0] == c for x in cut.crops) for c in CLASSES},
             "unmatched": cut.unmatched, "objects": len(cut.objects), "rejected": cut.rejected,
             "unreadable": cut.unreadable}
    coverage = label_coverage(entry)
    return {**entry, "label_coverage": None if coverage is None else round(coverage, 4)}


def label_coverage(entry: dict[str, Any]) -> float | None:
    """A ``per_field`` entry's labelled cells / cells found (None when none was found); computed from
    its counts, so a ``cells.json`` written before the field was recorded reads the same."""
    return sum(entry["labelled"].values()) / entry["found"] if entry["found"] else None


def incompletely_labelled(per_field: list[dict[str, Any]],
                          floor: float = LABEL_COVERAGE_FLOOR) -> list[dict[str, Any]]:
    """The fields whose labelled cells number fewer than ``floor`` x the cells the finder found there:
    their boxes likely miss cells (parasitized ones too), so their labelled parasitemia is not a
    truth to hold a count to."""
    return [f for f in per_field if (label_coverage(f) or 0.0) < floor and f["found"]]


def split_errors(per_field: dict[str, dict[str, Any]], coverage: dict[str, float | None],
                 floor: float = LABEL_COVERAGE_FLOOR) -> dict[str, Any]:
    """Mean absolute whole-field error (points) over all fields of ``per_field`` (called and labelled
    fraction per field stem), over the fully labelled ones and the incompletely labelled ones (label
    coverage per stem below ``floor``, or unknown), with the latter named."""
    err = {f: 100 * abs(v["called"] - v["labelled"]) for f, v in per_field.items()}
    low = sorted(f for f in err if (coverage.get(f) or 0.0) < floor)
    full = [f for f in err if f not in low]

    def mean(fields: list[str]) -> float | None:
        return statistics.fmean(err[f] for f in fields) if fields else None

    return {"fields": len(err), "mae_points": mean(list(err)), "fully_labelled_fields": len(full),
            "fully_labelled_mae_points": mean(full), "incompletely_labelled": low,
            "incompletely_labelled_mae_points": mean(low)}


def check_classes(counts: dict[str, int], allow_one_class: bool, none_why: str) -> None:
    """The rule for every cells dataset written (from boxed fields or from reviewed sessions):
    DataError ``none_why`` when it holds no cell, or when a class has none (unless ``allow_one_class``)."""
    if not sum(counts.values()):
        raise DataError(none_why)
    empty = [c for c in CLASSES if counts[c] == 0]
    if empty and not allow_one_class:
        raise DataError(
            f"no {empty[0]} cells: a dataset needs both classes "
            "(pass --allow-one-class for fields with one class only, e.g. healthy blood)"
        )


def _cells_summary(
    per_field: list[dict[str, Any]], counts: dict[str, int], min_iou: float, folders: set[str]
) -> dict[str, Any]:
    """``cells.json``'s summary; ``folders``: the folders the field images came from."""
    labelled = {c: sum(f["labelled"].get(c, 0) for f in per_field) for c in CLASSES}
    return {
        "fields": len(per_field),
        "fields_rejected": sum(f["rejected"] is not None for f in per_field),
        "fields_unreadable": [f["field"] for f in per_field if f.get("unreadable")],
        "cells": counts,
        "labelled": labelled,
        "cut_fraction": {c: (counts[c] / labelled[c] if labelled[c] else None) for c in CLASSES},
        "min_iou": min_iou,
        "crop": "edgekit.device.field.crop_cell of the matched found cell",
        # where the field images are on this machine, so `edgekit adapt` can count whole fields
        "fields_dir": folders.pop() if len(folders) == 1 else None,
        "incompletely_labelled": {"floor": LABEL_COVERAGE_FLOOR,
                                  "fields": [f["field"] for f in incompletely_labelled(per_field)]},
        "objects": {"folder": OBJECTS_DIR, "count": sum(f["objects"] for f in per_field),
                    "what": "found objects matching no labelled red cell (no box, or a white cell's or "
                            "platelet's box; 'difficult' ones left out)"},
    }


# --------------------------------------------------------------------------- splits by field

IML_STAIN_BREAK = "PA171809"  # IML fields up to this frame are grey-green, later ones magenta


def iml_stain_group(field_name: str) -> str:
    """IML_Malaria's two stain looks: ``grey-green`` up to PA171809, ``magenta`` after."""
    return "grey-green" if Path(field_name).stem <= IML_STAIN_BREAK else "magenta"


def block_split(
    fields: Sequence[str], fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), block: int = 6,
    group_of: Callable[[str], str] | None = None, seed: int = 0,
) -> dict[str, list[str]]:
    """Split field names into ``train``/``val``/``test`` by blocks of ``block`` consecutive frames
    (sorted by name), within each group of ``group_of`` (e.g. :func:`iml_stain_group`), so
    neighbouring frames (often one slide) never straddle parts and each part sees every stain.

    Blocks of a group are shuffled with ``seed`` and dealt to the parts in proportion to
    ``fractions``; each part gets at least one block of a group when it has enough blocks.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise DataError(f"bad split fractions {fractions}: three non-negative numbers")
    if block < 1:
        raise DataError("block size must be at least 1")
    total = sum(fractions)
    fr = [f / total for f in fractions]
    groups: dict[str, list[str]] = {}
    for name in sorted(set(fields)):
        groups.setdefault(group_of(name) if group_of else "", []).append(name)
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    rng = random.Random(seed)
    for g in sorted(groups):
        names = groups[g]
        blocks = [names[i : i + block] for i in range(0, len(names), block)]
        order = list(range(len(blocks)))
        rng.shuffle(order)
        n = len(blocks)
        n_test = round(fr[2] * n) if n >= 3 else 0
        n_val = round(fr[1] * n) if n >= 3 else 0
        if n >= 3:
            n_test = max(n_test, 1 if fr[2] > 0 else 0)
            n_val = max(n_val, 1 if fr[1] > 0 else 0)
        for k, bi in enumerate(order):
            part = "test" if k < n_test else "val" if k < n_test + n_val else "train"
            parts[part].extend(blocks[bi])
    return {k: sorted(v) for k, v in parts.items()}


def annotated_fields(paths: Sequence[Path], annotations: Path, class_map: dict[str, str | None] | None = None,
                     log: Callable[[str], None] | None = None) -> list[AnnotatedField]:
    """The annotated fields of ``paths`` (field images or folders of them, all in one folder), in
    the order given; DataError when a field has no annotation in ``annotations``, or when none of the
    annotated images is in the folder. Annotated images that are not there (a site cutting a subset)
    are said in one line to ``log``."""
    from edgekit.device.annotations import absent_images, annotations_in
    from edgekit.device.pipeline import image_files

    files = image_files(paths, "field")
    if not files:
        raise DataError("no field images given")
    folders = {f.resolve().parent for f in files}
    if len(folders) > 1:
        raise DataError(f"the fields are in {len(folders)} folders; give fields from one folder per run")
    folder = folders.pop()
    present, absent = annotations_in(annotations, folder, class_map)
    if absent and not present:
        raise DataError(absent_images(absent, len(absent), folder))
    if absent and log:
        log(f"{len(absent)} of {len(present) + len(absent)} annotated fields are not in {folder} (first: "
            f"{absent[0]}): left out")
    annotated = {af.name: af for af in present}
    missing = [f.name for f in files if f.name not in annotated]
    if missing:
        raise DataError(
            f"annotation file does not match the images: {len(missing)} of {len(files)} fields have no "
            f"annotation in {annotations} (first: {missing[0]})"
        )
    return [annotated[f.name] for f in files]
