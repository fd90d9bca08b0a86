"""`edgekit cells`: annotation readers (IML JSON, COCO, VOC), cutting labelled cells with the
device's own crop, bad input, and splitting fields by blocks of consecutive frames.

Synthetic fields: pink discs on a light background at known places, parasitized ones with a purple
dot; the VOC reader also runs on the two real BCCD fields in tests/fixtures/fields/.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.benchmarks.synthetic import SMEAR_BACKGROUND
from edgekit.cells import block_split, crop_name, field_of, iml_stain_group, match_boxes, write_cells
from edgekit.device.annotations import (
    PARASITIZED,
    UNINFECTED,
    AnnotatedField,
    Box,
    parse_class_map,
    read_annotations,
)
from edgekit.errors import DataError

FIXTURE_FIELDS = Path(__file__).resolve().parent / "fixtures" / "fields"


def make_field(path: Path, rows: int = 3, cols: int = 4, parasitized: tuple[int, ...] = (1, 6),
               seed: int = 0) -> list[tuple[int, int, int, int]]:
    """A field of rows x cols discs; returns their boxes (x0, y0, x1, y1) in grid order."""
    import cv2

    rng = np.random.default_rng(seed)
    r, step = 22, 64
    h, w = rows * step + 24, cols * step + 24
    canvas = np.empty((h, w, 3), np.float32)
    canvas[:] = SMEAR_BACKGROUND
    canvas += rng.normal(0, 2.0, canvas.shape)
    boxes = []
    for k in range(rows * cols):
        cy = 12 + step // 2 + (k // cols) * step + int(rng.integers(-4, 5))
        cx = 12 + step // 2 + (k % cols) * step + int(rng.integers(-4, 5))
        colour = tuple(float(v) for v in rng.integers((190, 120, 150), (230, 160, 190)))
        cv2.circle(canvas, (cx, cy), r, colour, -1)
        if k in parasitized:
            cv2.circle(canvas, (cx + 5, cy - 4), 5, (90, 30, 120), -1)
        boxes.append((cx - r, cy - r, cx + r + 1, cy + r + 1))
    img = cv2.GaussianBlur(np.clip(canvas, 0, 255).astype(np.uint8), (3, 3), 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img[:, :, ::-1])
    return boxes


def _iml_objects(boxes, parasitized=(1, 6), difficult=(11,)):
    objs = []
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        kind = "ring" if k in parasitized else "difficult" if k in difficult else "red blood cell"
        bbox = {"x": str(x0), "y": str(y0), "w": str(x1 - x0), "h": str(y1 - y0)}
        objs.append({"type": kind, "bbox": bbox})
    return objs


@pytest.fixture()
def iml_site(tmp_path) -> tuple[Path, Path, dict[str, list]]:
    images = tmp_path / "images"
    names = ["PA000001.JPG", "PA000002.JPG"]
    boxes = {name: make_field(images / name, seed=i) for i, name in enumerate(names)}
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps([{"image_name": n, "objects": _iml_objects(b)} for n, b in boxes.items()]))
    return images, ann, boxes


def _run(*args: str):
    from edgekit.cli import main

    return CliRunner().invoke(main, list(args))


# ---------------------------------------------------------------- readers


def test_read_iml_json(iml_site):
    images, ann, boxes = iml_site
    fields = read_annotations(ann, images)
    assert [f.name for f in fields] == ["PA000001.JPG", "PA000002.JPG"]
    f = fields[0]
    assert f.image == images / "PA000001.JPG"
    assert f.counts() == {UNINFECTED: 9, PARASITIZED: 2, "ignored": 1}
    x0, y0, x1, y1 = boxes["PA000001.JPG"][1]
    assert (f.boxes[1].x0, f.boxes[1].y0, f.boxes[1].x1, f.boxes[1].y1) == (x0, y0, x1, y1)
    assert f.boxes[1].source_label == "ring" and f.boxes[11].label is None


def test_read_coco_with_class_map(iml_site, tmp_path):
    images, _, boxes = iml_site
    cats = [{"id": 1, "name": "infected cell"}, {"id": 2, "name": "healthy cell"}]
    coco = {"images": [{"id": 7, "file_name": "PA000001.JPG", "width": 280, "height": 216}],
            "categories": cats,
            "annotations": [{"id": k, "image_id": 7, "category_id": 1 if k in (1, 6) else 2,
                             "bbox": [x0, y0, x1 - x0, y1 - y0]}
                            for k, (x0, y0, x1, y1) in enumerate(boxes["PA000001.JPG"])]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(DataError, match="unknown class label '(infected|healthy) cell'"):
        read_annotations(path, images)
    cmap = parse_class_map(["infected cell=Parasitized", "healthy cell=Uninfected"])
    (f,) = read_annotations(path, images, cmap)
    assert f.size == (280, 216) and f.counts() == {PARASITIZED: 2, UNINFECTED: 10}


def test_read_voc_on_real_bccd_fields():
    fields = read_annotations(FIXTURE_FIELDS, FIXTURE_FIELDS)
    assert len(fields) == len(list(FIXTURE_FIELDS.glob("*.xml"))) >= 1
    for f in fields:
        c = f.counts()
        assert c[UNINFECTED] >= 5 and PARASITIZED not in c
        assert c.get("ignored", 0) >= 1  # the white cell (and any platelets) are kept, unlabelled
        assert f.size is not None


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[0]["objects"][0].update(type=""), "empty class label"),
    (lambda d: d[0]["objects"][0].update(type="blob"), "unknown class label 'blob'"),
    (lambda d: d[0].update(image_name="nope.jpg"), "does not match the images"),
    (lambda d: d.append(dict(d[0])), "annotated twice"),
    (lambda d: d[0]["objects"][0]["bbox"].update(x="abc"), "not a number"),
])
def test_bad_annotations_raise_one_clear_error(iml_site, mutate, message):
    images, ann, _ = iml_site
    data = json.loads(ann.read_text())
    mutate(data)
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=message):
        read_annotations(ann, images)


def test_boxes_are_clipped_at_the_border_but_not_far_outside():
    f = AnnotatedField(Path("f.jpg"), [Box(-3, 10, 105, 50, "rbc", UNINFECTED)])
    g = f.fitted(100, 80)
    assert (g.boxes[0].x0, g.boxes[0].x1) == (0, 100)
    far = AnnotatedField(Path("f.jpg"), [Box(10, 10, 160, 50, "rbc", UNINFECTED)])
    with pytest.raises(DataError, match="outside the 100x80 image"):
        far.fitted(100, 80)


def test_match_boxes_one_to_one():
    lab = [Box(0, 0, 10, 10, "a", UNINFECTED), Box(1, 1, 11, 11, "b", UNINFECTED)]
    pairs = match_boxes(lab, [(0, 0, 10, 10)], 0.4)
    assert pairs == [(0, 0, 1.0)]
    assert match_boxes(lab, [(50, 50, 60, 60)], 0.4) == []


# ---------------------------------------------------------------- cutting


def test_cells_cli_cuts_with_the_device_crop(iml_site, tmp_path):
    from edgekit.device.field import count_cells, crop_cell
    from edgekit.device.preprocess import read_image

    images, ann, boxes = iml_site
    out = tmp_path / "site"
    res = _run("cells", str(images), "--annotations", str(ann), "-o", str(out))
    assert res.exit_code == 0, res.output
    para = sorted(p.name for p in (out / "Parasitized").iterdir())
    assert para == ["PA000001__1.png", "PA000001__6.png", "PA000002__1.png", "PA000002__6.png"]
    unin = sorted(p.name for p in (out / "Uninfected").iterdir())
    assert len(unin) == 18 and "PA000001__11.png" not in unin  # the "difficult" cell is left out
    index = json.loads((out / "cells.json").read_text())
    assert index["summary"]["cells"] == {"Parasitized": 4, "Uninfected": 18}
    # each crop is byte-for-byte the device's crop of the found cell the box matched
    rgb = read_image(images / "PA000001.JPG")
    cells, _, reason = count_cells(rgb)
    assert reason is None
    rec = next(r for r in index["cells"] if r["file"] == "Parasitized/PA000001__6.png")
    cell = next(c for c in cells if list(c.box) == rec["cell"])
    assert np.array_equal(read_image(out / rec["file"]), crop_cell(rgb, cell))
    assert field_of(rec["file"]) == "PA000001" and crop_name("a/PA000001.JPG", 6) == "PA000001__6.png"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_cells_cli_bad_input_leaves_nothing(iml_site, tmp_path):
    images, ann, _ = iml_site
    data = json.loads(ann.read_text())
    data[1]["objects"][0]["bbox"]["x"] = "900"
    ann.write_text(json.dumps(data))
    out = tmp_path / "site"
    res = _run("cells", str(images), "--annotations", str(ann), "-o", str(out))
    assert res.exit_code != 0
    assert res.output.strip().splitlines()[-1].startswith("error: PA000002.JPG: box (900")
    assert "Traceback" not in res.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".site")]


def test_cells_cli_goes_on_past_an_unreadable_field(iml_site, tmp_path):
    """One corrupt field image stopped the whole dataset; now it is reported and left out, exit 1."""
    images, ann, _ = iml_site
    (images / "PA000001.JPG").write_bytes(np.random.default_rng(0).bytes(3000))
    out = tmp_path / "site"
    res = _run("cells", str(images), "--annotations", str(ann), "-o", str(out), "--allow-one-class")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "PA000001.JPG: 0 cells cut of 11 labelled rejected: cannot be read" in res.output
    assert res.output.strip().splitlines()[-1] == ("error: 1 of 2 fields could not be read and were left out "
                                                   "(first: PA000001.JPG)")
    index = json.loads((out / "cells.json").read_text())
    assert index["summary"]["cells"] == {"Parasitized": 2, "Uninfected": 9}
    assert index["summary"]["fields_unreadable"] == ["PA000001.JPG"]


def test_cells_cli_field_without_annotation(iml_site, tmp_path):
    images, ann, _ = iml_site
    make_field(images / "PA000003.JPG")
    data = json.loads(ann.read_text())
    ann.write_text(json.dumps(data))
    res = _run("cells", str(images), "-a", str(ann), "-o", str(tmp_path / "x"))
    assert res.exit_code != 0 and "1 of 3 fields have no annotation" in res.output


def test_one_class_is_refused_unless_allowed(iml_site, tmp_path):
    images, ann, _ = iml_site
    fields = read_annotations(ann, images, parse_class_map(["ring=Uninfected"]))
    with pytest.raises(DataError, match="no Parasitized cells"):
        write_cells(fields, tmp_path / "one")
    assert not (tmp_path / "one").exists()
    summary = write_cells(fields, tmp_path / "one", allow_one_class=True)
    assert summary["cells"] == {"Parasitized": 0, "Uninfected": 22}
    assert not (tmp_path / "one" / "Parasitized").exists()
    with pytest.raises(DataError, match="already exists"):
        write_cells(fields, tmp_path / "one", allow_one_class=True)


# ---------------------------------------------------------------- splits by field blocks


def test_block_split_keeps_blocks_and_stain_groups():
    names = [f"PA17{n}.JPG" for n in range(1690, 1862)]
    parts = block_split(names, (0.6, 0.2, 0.2), block=6, group_of=iml_stain_group, seed=1)
    assert sorted(sum(parts.values(), [])) == sorted(names)
    index = {n: i for i, n in enumerate(names)}
    where = {n: p for p, ns in parts.items() for n in ns}
    for g in ("grey-green", "magenta"):
        members = [n for n in names if iml_stain_group(n) == g]
        # blocks of 6 consecutive frames of one stain group stay in one part
        for k in range(0, len(members), 6):
            assert len({where[n] for n in members[k : k + 6]}) == 1
        assert {where[n] for n in members} == {"train", "val", "test"}  # every part sees every stain
    assert iml_stain_group("PA171809.JPG") == "grey-green" and iml_stain_group("PA171810.JPG") == "magenta"
    assert 0.5 < len(parts["train"]) / len(names) < 0.7
    assert parts == block_split(names, (0.6, 0.2, 0.2), block=6, group_of=iml_stain_group, seed=1)
    assert index  # names are consecutive frames


@pytest.mark.realdata
def test_cells_on_real_iml_fields(tmp_path):
    from edgekit.paths import shared_data

    iml = shared_data() / "malaria_fields_iml"
    if not (iml / "annotations.json").is_file():
        pytest.skip("IML fields not present")
    fields = [f for f in read_annotations(iml / "annotations.json", iml / "images")
              if f.name in ("PA171690.JPG", "PA171691.JPG")]
    summary = write_cells(fields, tmp_path / "iml")
    # measured: 3 + 4 parasitized of 7, 288 of 292 uninfected cut
    assert summary["cells"]["Parasitized"] >= 6
    assert summary["cut_fraction"]["Uninfected"] >= 0.9


def test_found_objects_without_a_labelled_cell_are_kept_apart(iml_site, tmp_path):
    """A found cell no box names (here: box 3 of the first field deleted) is kept in .objects, hidden
    from the class folders, for adaptation to learn that whole-field counts include such objects;
    the 'difficult' cell is neither a class crop nor an object."""
    images, ann, boxes = iml_site
    data = json.loads(ann.read_text())
    del data[0]["objects"][3]
    ann.write_text(json.dumps(data))
    out = tmp_path / "site"
    res = _run("cells", str(images), "--annotations", str(ann), "-o", str(out))
    assert res.exit_code == 0, res.output
    objects = sorted(p.name for p in (out / ".objects").iterdir())
    assert objects and all(field_of(o) == "PA000001" for o in objects)  # the second field is fully boxed
    index = json.loads((out / "cells.json").read_text())
    assert index["summary"]["objects"]["count"] == len(objects) == 1
    assert [f["objects"] for f in index["per_field"]] == [1, 0]
    from edgekit.data import scan_dataset

    assert scan_dataset(out).classes == ["Parasitized", "Uninfected"]  # not a class


def test_a_found_object_overlapping_a_parasitized_box_is_not_kept(iml_site, tmp_path):
    """An unlabelled found object that overlaps a parasitized cell's box (two overlapping cells found
    as one, a badly cut parasite) is not kept as an object: adaptation would learn it as negative."""
    images, ann, boxes = iml_site
    data = json.loads(ann.read_text())
    x0, y0, x1, y1 = boxes["PA000001.JPG"][3]
    shift = round(0.6 * (x1 - x0))  # IoU with the cell ~0.25: too little to match it, enough to touch it
    data[0]["objects"][3] = {"type": "ring", "bbox": {"x": str(x0 - shift), "y": str(y0),
                                                       "w": str(x1 - x0), "h": str(y1 - y0)}}
    ann.write_text(json.dumps(data))
    res = _run("cells", str(images), "--annotations", str(ann), "-o", str(tmp_path / "site"))
    assert res.exit_code == 0, res.output
    index = json.loads((tmp_path / "site" / "cells.json").read_text())
    assert [f["objects"] for f in index["per_field"]] == [0, 0]
    assert index["per_field"][0]["unmatched"] == {"Parasitized": 1}  # the shifted box matched no cell


def test_a_field_whose_boxes_miss_cells_is_named_incompletely_labelled(iml_site, tmp_path):
    """A field whose labelled cells fall well short of the cells found there (boxes missing) is
    listed in cells.json and named in a warning; a fully boxed field is not."""
    images, ann, _ = iml_site
    fields = json.loads(ann.read_text())
    sparse = fields[1]
    sparse["objects"] = [o for i, o in enumerate(sparse["objects"]) if o["type"] != "red blood cell" or i % 2]
    ann.write_text(json.dumps(fields))
    res = _run("cells", str(images), "--annotations", str(ann), "-o", str(tmp_path / "site"))
    assert res.exit_code == 0, res.output
    index = json.loads((tmp_path / "site" / "cells.json").read_text())
    coverage = {f["field"]: f["label_coverage"] for f in index["per_field"]}
    assert coverage["PA000001.JPG"] >= 0.8 > coverage["PA000002.JPG"], coverage
    assert index["summary"]["incompletely_labelled"]["fields"] == ["PA000002.JPG"]
    assert "1 of 2 fields look incompletely labelled" in res.output and "PA000002.JPG" in res.output
