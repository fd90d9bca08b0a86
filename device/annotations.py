# pyright: basic
"""Read labelled microscope fields: IML JSON, Pascal VOC XML and COCO JSON, one common shape.

Every reader returns a list of :class:`AnnotatedField`: the field image's path and its boxes, each
box with the source's own label and the class it maps to (``Parasitized``, ``Uninfected``, or
``None`` for objects that are no usable red cell: ambiguous ``difficult`` cells, white cells,
platelets). Boxes mapped to ``None`` are kept, so a cutter can refuse to label a found cell that
sits on one of them.

Formats, detected from the path:
- IML_Malaria JSON (a list of ``{"image_name", "objects": [{"type", "bbox": {x, y, w, h}}]}``;
  x, y = top-left, strings of pixels);
- Pascal VOC XML (one ``.xml`` file, or a folder of them, as BCCD's ``Annotations/``);
- COCO JSON (a dict with ``images``, ``annotations``, ``categories``; bbox = [x, y, w, h]).

Light: standard library only.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgekit.errors import DataError

PARASITIZED = "Parasitized"
UNINFECTED = "Uninfected"
CLASSES = (PARASITIZED, UNINFECTED)

# source label (lower case) -> class; None: not a usable red cell (kept to block matches)
DEFAULT_CLASSES: dict[str, str | None] = {
    # IML_Malaria: every parasite box is an infected red cell
    "ring": PARASITIZED, "trophozoite": PARASITIZED, "schizont": PARASITIZED, "gametocyte": PARASITIZED,
    "parasitized": PARASITIZED, "infected": PARASITIZED,
    "red blood cell": UNINFECTED, "rbc": UNINFECTED, "uninfected": UNINFECTED,
    "difficult": None,  # ambiguous: left out
    # BCCD and other blood-cell sets: not red cells
    "wbc": None, "white blood cell": None, "platelets": None, "platelet": None,
}

# a box may overshoot the image by this much (IML boxes reach 5 px past the border) and is clipped
EDGE_TOLERANCE_PX = 8
MAX_ANNOTATION_BYTES = 64 << 20  # one annotation file (IML's is 1.4 MB, a large COCO file ~50 MB)
MAX_DEPTH = 12  # nesting of an annotation JSON (COCO needs 4: {annotations: [{bbox: [..]}]})
MAX_COORD = 1 << 20  # a box coordinate beyond a million pixels is no microscope field


@dataclass(frozen=True)
class Box:
    """One labelled object, (x0, y0) inclusive, (x1, y1) exclusive, in image pixels."""

    x0: int
    y0: int
    x1: int
    y1: int
    source_label: str
    label: str | None  # Parasitized | Uninfected | None (not to be labelled)

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


@dataclass
class AnnotatedField:
    """A field image and its labelled boxes."""

    image: Path
    boxes: list[Box] = field(default_factory=list)
    size: tuple[int, int] | None = None  # (width, height) when the annotation states it
    dropped: int = 0  # degenerate (zero-area) boxes left out when reading

    @property
    def name(self) -> str:
        return self.image.name

    def counts(self) -> dict[str, int]:
        """Boxes per class (``None`` counted as ``ignored``)."""
        out: dict[str, int] = {}
        for b in self.boxes:
            key = b.label or "ignored"
            out[key] = out.get(key, 0) + 1
        return out

    def drawn_on(self, stored: tuple[int, int], upright: tuple[int, int]) -> str | None:
        """Which picture of a field with an EXIF orientation its boxes were drawn on (tools differ):
        ``"stored"`` (the file's pixels, ``stored`` = their width, height) or ``"upright"`` (turned as
        the EXIF says), by the size the annotation states, else by which picture holds every box;
        None when that does not tell them apart (a half turn or a mirror keeps the size)."""
        fits = [name for name, (w, h) in (("upright", upright), ("stored", stored))
                if (self.size == (w, h) if self.size is not None else self._inside(w, h))]
        return fits[0] if len(fits) == 1 and stored != upright else None

    def _inside(self, width: int, height: int) -> bool:
        return all(_inside(b, width, height) for b in self.boxes)

    def fitted(self, width: int, height: int) -> AnnotatedField:
        """The boxes checked against the decoded image size: a box overshooting the border by at
        most ``EDGE_TOLERANCE_PX`` is clipped; one further out raises :class:`DataError`."""
        if self.size is not None and self.size != (width, height):
            raise DataError(
                f"{self.name}: the annotation says {self.size[0]}x{self.size[1]} but the image is "
                f"{width}x{height}: annotation file and images do not match"
            )
        boxes = []
        for b in self.boxes:
            if not _inside(b, width, height):
                raise DataError(
                    f"{self.name}: box ({b.x0}, {b.y0})-({b.x1}, {b.y1}) '{b.source_label}' lies outside "
                    f"the {width}x{height} image: annotation file and images do not match"
                )
            boxes.append(replace(b, x0=max(0, b.x0), y0=max(0, b.y0),
                                 x1=min(width, b.x1), y1=min(height, b.y1)))
        return replace(self, boxes=boxes, size=(width, height))


def _inside(b: Box, width: int, height: int) -> bool:
    """The box lies in a ``width`` x ``height`` image, give or take ``EDGE_TOLERANCE_PX``."""
    tol = EDGE_TOLERANCE_PX
    return b.x0 >= -tol and b.y0 >= -tol and b.x1 <= width + tol and b.y1 <= height + tol


def parse_class_map(entries: list[str] | tuple[str, ...]) -> dict[str, str | None]:
    """``["ring=Parasitized", "wbc=skip"]`` -> a class map on top of :data:`DEFAULT_CLASSES`."""
    out: dict[str, str | None] = dict(DEFAULT_CLASSES)
    for entry in entries:
        name, sep, cls = entry.rpartition("=")
        if not sep or not name.strip():
            raise DataError(f"bad class mapping {entry!r}: use SOURCE_LABEL=Parasitized|Uninfected|skip")
        cls = cls.strip()
        if cls.lower() == "skip":
            out[name.strip().lower()] = None
        elif cls in CLASSES:
            out[name.strip().lower()] = cls
        else:
            raise DataError(f"bad class {cls!r} in {entry!r}: use Parasitized, Uninfected or skip")
    return out


def _label(raw: Any, where: str, classes: Mapping[str, str | None]) -> tuple[str, str | None]:
    name = "" if raw is None else str(raw).strip()
    if not name:
        raise DataError(f"{where}: an object has an empty class label")
    key = name.lower()
    if key not in classes:
        raise DataError(
            f"{where}: unknown class label {name!r}; "
            f"map it with --classes '{name}=Parasitized|Uninfected|skip'"
        )
    return name, classes[key]


def _int(value: Any, where: str, what: str = "box coordinate") -> int:
    """A pixel coordinate or size: a finite number (or numeric text) within +-MAX_COORD."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DataError(f"{where}: {what} {_short(value)} is not a number")
    try:
        v = float(value)
    except ValueError:
        raise DataError(f"{where}: {what} {_short(value)} is not a number") from None
    if not abs(v) <= MAX_COORD:  # also NaN and infinity (1e999)
        raise DataError(f"{where}: {what} {_short(value)} is not a pixel value (beyond +-{MAX_COORD})")
    return int(round(v))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _list(value: Any, where: str, what: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise DataError(f"{where}: {what} must be a list, not {type(value).__name__}")
    return value


def _dicts(value: Any, where: str, what: str) -> list[dict]:
    items = _list(value, where, what)
    for i, v in enumerate(items):
        if not isinstance(v, dict):
            raise DataError(f"{where}: {what}[{i}] must be an object, not {type(v).__name__}")
    return items


def _depth_ok(data: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``data`` nests at most ``limit`` lists/objects deep (iterative: no recursion)."""
    stack = [(data, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            if d > limit:
                return False
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return True


def _box(x0: Any, y0: Any, x1: Any, y1: Any, label: tuple[str, str | None], where: str) -> Box | None:
    b = Box(_int(x0, where), _int(y0, where), _int(x1, where), _int(y1, where), *label)
    return b if b.width > 0 and b.height > 0 else None


def _image_path(images_dir: Path, name: Any, where: str) -> Path:
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{where}: missing image file name")
    return images_dir / Path(name).name


ClassMap = Mapping[str, str | None]


def _read_iml(data: list, images_dir: Path, classes: ClassMap, src: str) -> list[AnnotatedField]:
    fields = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or "image_name" not in entry:
            raise DataError(f"{src}: entry {i} has no image_name (not an IML annotation file?)")
        af = AnnotatedField(_image_path(images_dir, entry["image_name"], f"{src} entry {i}"))
        for obj in _list(entry.get("objects"), f"{src}: {af.name}", "objects"):
            where = f"{src}: {af.name}"
            bb = obj.get("bbox") if isinstance(obj, dict) else None
            if not isinstance(bb, dict) or not {"x", "y", "w", "h"} <= set(bb):
                raise DataError(f"{where}: object without bbox x, y, w, h")
            x, y = _int(bb["x"], where), _int(bb["y"], where)
            label = _label(obj.get("type"), where, classes)
            b = _box(x, y, x + _int(bb["w"], where), y + _int(bb["h"], where), label, where)
            if b is None:
                af.dropped += 1
            else:
                af.boxes.append(b)
        fields.append(af)
    return fields


def _by_id(entries: Any, src: str, what: str) -> dict[Any, dict]:
    """COCO ``images`` or ``categories`` by id; an id given twice is refused (the later entry would
    silently take the earlier one's boxes or labels)."""
    out: dict[Any, dict] = {}
    for e in _dicts(entries, src, what):
        if e["id"] in out:
            raise DataError(f"{src}: two {what} have the id {_short(e['id'])}")
        out[e["id"]] = e
    return out


def _read_coco(data: dict, images_dir: Path, classes: ClassMap, src: str) -> list[AnnotatedField]:
    for key in ("categories", "images", "annotations"):
        if key not in data:
            raise DataError(f"{src}: not a COCO file (missing {key!r})")
    try:
        cats = {k: c["name"] for k, c in _by_id(data["categories"], src, "categories").items()}
        images = _by_id(data["images"], src, "images")
    except KeyError as exc:
        raise DataError(f"{src}: not a COCO file (an entry has no {exc})") from None
    except TypeError as exc:  # an id that is a list or object
        raise DataError(f"{src}: not a COCO file ({exc})") from None
    anns = _dicts(data["annotations"], src, "annotations")
    fields: dict[Any, AnnotatedField] = {}
    for iid, im in images.items():
        where = f"{src} image {_short(iid)}"
        size = ((_int(im["width"], where, "width"), _int(im["height"], where, "height"))
                if "width" in im and "height" in im else None)
        image = _image_path(images_dir, im.get("file_name"), f"{src} image {iid}")
        fields[iid] = AnnotatedField(image, size=size)
    for a in anns:
        if isinstance(a.get("image_id"), (list, dict)) or isinstance(a.get("category_id"), (list, dict)):
            raise DataError(f"{src}: annotation {_short(a.get('id'))}: image_id and category_id must be ids")
        af = fields.get(a.get("image_id"))
        if af is None:
            raise DataError(f"{src}: annotation {a.get('id')} refers to unknown image {a.get('image_id')!r}")
        where = f"{src}: {af.name}"
        if a.get("category_id") not in cats:
            raise DataError(f"{where}: annotation {a.get('id')}: unknown category {a.get('category_id')!r}")
        bb = a.get("bbox")
        if not isinstance(bb, list) or len(bb) != 4:
            raise DataError(f"{where}: annotation {a.get('id')} has no [x, y, w, h] bbox")
        x, y = _int(bb[0], where), _int(bb[1], where)
        label = _label(cats[a["category_id"]], where, classes)
        b = _box(x, y, x + _int(bb[2], where), y + _int(bb[3], where), label, where)
        if b is None:
            af.dropped += 1
        else:
            af.boxes.append(b)
    return list(fields.values())


def _read_voc_file(path: Path, images_dir: Path, classes: Mapping[str, str | None]) -> AnnotatedField:
    raw = _read_bounded(path)
    if b"<!ENTITY" in raw or b"<!DOCTYPE" in raw:  # entity expansion ("billion laughs"): no VOC needs one
        raise DataError(f"{path}: VOC XML with a DTD or entities is not read")
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise DataError(f"{path}: unreadable VOC XML ({exc})") from None
    name = root.findtext("filename") or (Path(root.findtext("path") or "").name or None)
    af = AnnotatedField(_image_path(images_dir, name, str(path)))
    w, h = root.findtext("size/width"), root.findtext("size/height")
    if w and h:
        size = (_int(w, str(path), "size/width"), _int(h, str(path), "size/height"))
        if min(size) > 0:
            af.size = size
    for obj in root.findall("object"):
        bb = obj.find("bndbox")
        if bb is None:
            raise DataError(f"{path}: object without bndbox")
        label = _label(obj.findtext("name"), str(path), classes)
        if obj.findtext("difficult", "0").strip() == "1":
            label = (label[0], None)  # VOC's own "difficult" flag: ambiguous, left out
        x0, y0, x1, y1 = (bb.findtext(k) for k in ("xmin", "ymin", "xmax", "ymax"))
        b = _box(x0, y0, x1, y1, label, str(path))
        if b is None:
            af.dropped += 1
        else:
            af.boxes.append(b)
    return af


def _read_bounded(path: Path) -> bytes:
    """An annotation file's bytes: a regular file of at most MAX_ANNOTATION_BYTES, never blocking."""
    from edgekit.safefile import read_regular_bytes

    return read_regular_bytes(path, MAX_ANNOTATION_BYTES, "annotation file", DataError)


def _read_fields(path: Path, images_dir: Path, cmap: ClassMap) -> list[AnnotatedField]:
    if path.is_dir() or path.suffix.lower() == ".xml":
        files = sorted(path.glob("*.xml")) if path.is_dir() else [path]
        if not files:
            raise DataError(f"no VOC .xml files in {path}")
        return [_read_voc_file(f, images_dir, cmap) for f in files]
    try:
        data = json.loads(_read_bounded(path).decode("utf-8"))
    except ValueError as exc:  # bad UTF-8, bad JSON, a 5000-digit number
        raise DataError(f"{path}: unreadable annotation JSON ({exc})") from None
    except RecursionError:
        raise DataError(f"{path}: annotation JSON nested too deeply") from None
    if not _depth_ok(data):
        raise DataError(f"{path}: annotation JSON nested deeper than {MAX_DEPTH} levels")
    if isinstance(data, list):
        return _read_iml(data, images_dir, cmap, path.name)
    if isinstance(data, dict) and "annotations" in data:
        return _read_coco(data, images_dir, cmap, path.name)
    raise DataError(f"{path}: neither an IML list of fields nor a COCO dict with 'annotations'")


def read_annotations(
    path: str | os.PathLike, images_dir: str | os.PathLike, classes: Mapping[str, str | None] | None = None
) -> list[AnnotatedField]:
    """Read an IML JSON, COCO JSON or Pascal VOC (file or folder) annotation into fields whose
    images are in ``images_dir``. ``classes`` maps source labels (case-insensitive) to
    ``Parasitized``/``Uninfected``/``None``; default :data:`DEFAULT_CLASSES`.

    Raises :class:`DataError` when the file is unreadable or of no known format, an object has an
    empty or unknown label, a field is listed twice, or an annotated image is not in ``images_dir``
    (:func:`annotations_in` leaves those out instead).
    """
    fields, absent = annotations_in(path, images_dir, classes)
    if absent:
        raise DataError(absent_images(absent, len(fields) + len(absent), images_dir))
    return fields


def absent_images(absent: list[str], annotated: int, images_dir: str | os.PathLike) -> str:
    """The line naming annotated images that are not in ``images_dir``."""
    return (f"annotation file does not match the images: {len(absent)} of {annotated} annotated images are "
            f"not in {images_dir} (first: {absent[0]})")


def annotations_in(
    path: str | os.PathLike, images_dir: str | os.PathLike, classes: Mapping[str, str | None] | None = None
) -> tuple[list[AnnotatedField], list[str]]:
    """:func:`read_annotations` of the annotated images that are in ``images_dir`` (a folder holding
    some of the fields a file annotates), and the names of those that are not."""
    path, images_dir = Path(path), Path(images_dir)
    cmap = {k.lower(): v for k, v in (classes or DEFAULT_CLASSES).items()}
    if not path.exists():
        raise DataError(f"annotation file not found: {path}")
    if not images_dir.is_dir():
        raise DataError(f"images folder not found: {images_dir}")
    try:
        fields = _read_fields(path, images_dir, cmap)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError,
            RecursionError) as exc:
        # the checks above name each malformed case; this is the last guard: one line, never a traceback
        raise DataError(f"{path}: malformed annotation ({type(exc).__name__}: {_short(str(exc))})") from None
    seen: set[str] = set()
    for af in fields:
        if af.name in seen:
            raise DataError(f"{path}: image {af.name} is annotated twice")
        seen.add(af.name)
    present = [af for af in fields if af.image.is_file()]
    absent = sorted({af.name for af in fields} - {af.name for af in present})
    return sorted(present, key=lambda af: af.name), absent
