"""One hardened input layer for every command (issue 30.4): `sessions confirm --csv`, `cells -a`,
`import` and `sessions review -o` use the same regular-file, bounded, non-blocking readers and safe
writers as `classify`; malformed annotations are one line; a missing extra is named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from device_helpers import CELLS, GOLDEN

from edgekit.cli import main

ROOT = Path(__file__).resolve().parents[1]
FIELD = ROOT / "tests" / "fixtures" / "fields" / "BloodImage_00014.jpg"


def _cli(*args: str, timeout: int = 60, prelude: str = "") -> subprocess.CompletedProcess:
    """The CLI in a child process with a timeout: a hang fails the test instead of the run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = (f"{prelude}\nimport sys\nfrom edgekit.cli import main\n"
            "sys.argv = ['edgekit', *sys.argv[1:]]\nmain()")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _one_line(res, *words) -> None:
    err = res.stderr
    assert res.returncode == 2, (res.returncode, res.stdout, err)
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for w in words:
        assert w in err, err


# ------------------------------------------------------------------ file arguments that are not files


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "folder", "huge"])
def test_confirm_csv_reads_only_a_bounded_regular_file(screened, tmp_path, kind):
    path = tmp_path / "v.csv"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        path = Path("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    else:
        with open(path, "wb") as f:
            f.truncate(17 << 20)  # sparse: past the 16 MB bound
    res = _cli("sessions", "confirm", "P7", "--csv", str(path), "--db", str(screened))
    _one_line(res, {"fifo": "FIFO", "dev_zero": "device", "folder": "folder", "huge": "too large"}[kind])


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_cells_annotations_read_only_a_bounded_regular_file(tmp_path, kind):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(FIELD, images)
    ann = tmp_path / "ann.json"
    if kind == "fifo":
        os.mkfifo(ann)
    else:
        ann = Path("/dev/zero")
    res = _cli("cells", str(images), "-a", str(ann), "-o", str(tmp_path / "out"))
    _one_line(res, "not a regular file")


@pytest.mark.parametrize("kind", ["existing", "symlink", "fifo", "device"])
def test_review_output_never_overwrites_or_replaces_special_files(screened, tmp_path, kind):
    target = tmp_path / "review.html"
    victim = tmp_path / "victim.html"
    victim.write_text("keep me")
    if kind == "existing":
        target.write_text("keep me")
    elif kind == "symlink":
        target.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target = Path("/dev/null")
    res = _cli("sessions", "review", "P7", "-o", str(target) if kind != "device" else "/dev/null",
               "--db", str(screened))
    _one_line(res)
    assert victim.read_text() == "keep me"
    if kind == "existing":
        assert target.read_text() == "keep me" and "--force" in res.stderr
        res = CliRunner().invoke(main, ["sessions", "review", "P7", "-o", str(target), "--force"])
        assert res.exit_code == 0 and "<figure" in target.read_text(), res.output
    elif kind == "symlink":
        assert target.is_symlink()
    elif kind == "fifo":
        assert target.is_fifo()


# ------------------------------------------------------------------ imported models


def test_import_of_a_crashing_model_is_one_line(tmp_path):
    """The crash probe runs before this process loads the model: the child aborts, the CLI says so."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'F tflite: check failed: buffer' >&2\nkill -SEGV $$\n")
    fake.chmod(0o755)
    model = tmp_path / "m.tflite"
    shutil.copy(GOLDEN / "model_int8.tflite", model)
    prelude = (f"import os; os.environ['EDGEKIT_CACHE'] = {str(tmp_path / 'cache')!r}\n"
               f"from edgekit.device import probe; probe.sys.executable = {str(fake)!r}")
    res = _cli("import", str(model), "--labels", "Parasitized,Uninfected", "--scale", "1",
               "-o", str(tmp_path / "b"), prelude=prelude)
    _one_line(res, "crashed (SIGSEGV)")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_import_reads_only_a_regular_model_file(tmp_path, kind):
    if kind == "fifo":
        model = tmp_path / "m.tflite"
        os.mkfifo(model)
    else:
        model = tmp_path / "zero.tflite"
        model.symlink_to("/dev/zero")
    res = _cli("import", str(model), "--labels", "a,b", "--scale", "1", "-o", str(tmp_path / "b"))
    _one_line(res, "not a regular file")


# ------------------------------------------------------------------ malformed annotations

_IML = [{"image_name": FIELD.name, "objects": [{"type": "ring", "bbox": {"x": 1, "y": 1, "w": 9, "h": 9}}]}]


def _iml(**change):
    data = json.loads(json.dumps(_IML))
    obj = data[0]["objects"][0]
    for k, v in change.items():
        if k in obj["bbox"]:
            obj["bbox"][k] = v
        else:
            data[0][k] = v
    return json.dumps(data)


def _coco(**change):
    data = {"images": [{"id": 1, "file_name": FIELD.name, "width": 640, "height": 480}],
            "categories": [{"id": 1, "name": "rbc"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]}]}
    data.update(change)
    return json.dumps(data)


MALFORMED = {
    "width_1e999": (_iml(w="1e999"), "not a pixel value"),
    "width_raw_1e999": (_iml(w=1).replace('"w": 1', '"w": 1e999'), "not a pixel value"),
    "width_text": (_iml(w="wide"), "not a number"),
    "width_nan": (_iml(w=1).replace('"w": 1', '"w": NaN'), "not a pixel value"),
    "width_list": (_iml(w=[1]), "not a number"),
    "objects_5": (_iml(objects=5), "objects must be a list"),
    "coco_annotations_ints": (_coco(annotations=[1, 2, 3]), "annotations[0] must be an object"),
    "coco_images_dict": (_coco(images={"a": 1}), "images must be a list"),
    "coco_width_text": (_coco(images=[{"id": 1, "file_name": FIELD.name, "width": "x", "height": 4}]),
                        "width 'x' is not a number"),
    "coco_image_id_list": (_coco(images=[{"id": [1], "file_name": FIELD.name}]), "not a COCO file"),
    "coco_categories_ints": (_coco(categories=[7]), "categories[0] must be an object"),
    "deeply_nested": ("[" * 100000 + "]" * 100000, "nested"),
    "nested_20": (json.dumps([{"image_name": FIELD.name, "objects": [],
                                "x": json.loads("[" * 20 + "]" * 20)}]), "nested deeper"),
    "not_utf8": ("\udcff", "unreadable"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_annotations_are_one_line(tmp_path, case):
    text, message = MALFORMED[case]
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(FIELD, images)
    ann = tmp_path / "ann.json"
    ann.write_bytes(text.encode("utf-8", "surrogateescape"))
    res = CliRunner().invoke(main, ["cells", str(images), "-a", str(ann), "-o", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    err = res.stderr
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["size_text", "size_inf", "entities"])
def test_malformed_voc_is_one_line(tmp_path, case):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(FIELD, images)
    size = {"size_text": "<width>wide</width><height>4</height>",
            "size_inf": "<width>1e999</width><height>4</height>"}.get(case, "")
    head = ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
            if case == "entities" else "")
    (tmp_path / "a.xml").write_text(f"{head}<annotation><filename>{FIELD.name}</filename><size>{size}</size>"
                                    "</annotation>")
    res = CliRunner().invoke(main, ["cells", str(images), "-a", str(tmp_path / "a.xml"), "-o",
                                    str(tmp_path / "out")])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.output, res.output


# ------------------------------------------------------------------ commands that need an extra


@pytest.mark.parametrize(("args", "extra"), [
    (["train", "data", "-o", "run"], "train"),
    (["adapt", "run", "--data", "cells", "-o", "out"], "train"),
    (["export", "run"], "export"),
])
def test_a_missing_extra_is_named_in_one_line(args, extra):
    """A device install: TensorFlow (and keras) cannot be imported."""
    res = _cli(*args, prelude="import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None")
    _one_line(res, f"pip install 'edgekit[{extra}]'")


def test_any_other_missing_module_is_named_not_a_traceback(monkeypatch):
    def boom(*a, **k):
        raise ModuleNotFoundError("No module named 'tf2onnx'", name="tf2onnx")

    from edgekit import trust_commands

    monkeypatch.setattr(trust_commands, "key_table", boom, raising=False)
    monkeypatch.setattr("edgekit.signing.key_table", boom)
    res = CliRunner().invoke(main, ["verify", "--show-keys"])
    assert res.exit_code == 2 and "edgekit[export]" in res.stderr and "Traceback" not in res.output


# ------------------------------------------------------------------ damaged or ambiguous images (30.6)


def _cell_rgb():
    from edgekit.device.preprocess import read_image

    return read_image(sorted(CELLS.iterdir())[0])


def test_float_rgb_tiff_is_accepted_with_its_pixels(tmp_path):
    import cv2
    import numpy as np

    from edgekit.device.preprocess import read_image

    rgb = _cell_rgb()
    ok, buf = cv2.imencode(".tiff", (rgb.astype(np.float32) / 255)[:, :, ::-1].copy())
    path = tmp_path / "cell.tiff"
    path.write_bytes(buf.tobytes())
    assert np.array_equal(read_image(path), rgb)
    res = CliRunner().invoke(main, ["classify", str(path), "-m", str(GOLDEN), "--format", "jsonl"])
    assert res.exit_code == 0 and json.loads(res.stdout.splitlines()[0])["status"] == "classified", res.output


@pytest.mark.parametrize("ext", ["gif", "webp", "tiff", "png"])
def test_multi_frame_images_are_refused_with_one_line(tmp_path, ext):
    from PIL import Image

    from edgekit.device.preprocess import read_image
    from edgekit.errors import ImageError

    rgb = _cell_rgb()
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    path = tmp_path / f"cell.{ext}"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match=r"\(2 frames\).*save that frame as its own file"):
        read_image(path)
    single = tmp_path / f"one.{ext}"
    frames[0].save(single)
    assert read_image(single).shape == rgb.shape  # one frame: read as before
    res = CliRunner().invoke(main, ["classify", str(path), str(single), "-m", str(GOLDEN),
                                    "--format", "jsonl"])
    rows = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert rows[0]["status"] == "failed" and "frames" in rows[0]["reason"], res.output
    assert rows[1]["status"] != "failed", res.output  # classified, or rejected by a quality gate


def _webp(lossless: bool = False) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_cell_rgb()).save(buf, "WEBP", quality=80, lossless=lossless)
    return buf.getvalue()


@pytest.mark.parametrize("damage", ["appended", "riff_size", "metadata_cut", "vp8_start_code",
                                    "vp8_partition", "vp8l_signature"])
def test_damaged_webp_containers_are_refused(tmp_path, damage):
    import struct

    from edgekit.device.preprocess import read_image
    from edgekit.errors import ImageError

    data = bytearray(_webp(lossless=damage == "vp8l_signature"))
    if damage == "appended":
        data += b"\x00" * 64
    elif damage == "riff_size":
        data[4:8] = struct.pack("<I", len(data) + 100)
    elif damage == "metadata_cut":  # a trailing chunk whose size runs past the end
        data += b"EXIF" + struct.pack("<I", 400) + b"\x00" * 20
        data[4:8] = struct.pack("<I", len(data) - 8)
    elif damage == "vp8_start_code":
        data[20 + 3] ^= 0xFF
    elif damage == "vp8_partition":
        data[20:23] = (int.from_bytes(data[20:23], "little") | (0x7FFFF << 5)).to_bytes(3, "little")
    else:
        data[20] = 0x00
    path = tmp_path / "cell.webp"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="corrupt|unreadable") as exc:
        read_image(path)
    assert str(exc.value).count("\n") == 0


def test_an_intact_webp_is_read(tmp_path):
    from edgekit.device.preprocess import read_image

    for lossless in (False, True):
        path = tmp_path / f"cell{int(lossless)}.webp"
        path.write_bytes(_webp(lossless))
        assert read_image(path).shape == _cell_rgb().shape


@pytest.mark.parametrize("arg", ["labels_txt_fifo", "split_fifo", "offsite_list_dev_zero"])
def test_other_file_arguments_use_the_same_reader(tmp_path, arg):
    if arg == "labels_txt_fifo":
        labels = tmp_path / "labels.txt"
        os.mkfifo(labels)
        res = _cli("import", str(GOLDEN / "model_int8.tflite"), "--labels", str(labels), "--scale", "1",
                   "-o", str(tmp_path / "b"))
        _one_line(res, "FIFO")
    elif arg == "split_fifo":
        split = tmp_path / "split.json"
        os.mkfifo(split)
        from edgekit.errors import EdgekitError
        from edgekit.splits import load_split

        with pytest.raises(EdgekitError, match="FIFO"):
            load_split(split)
    else:
        lst = tmp_path / "fields.txt"
        lst.symlink_to("/dev/zero")
        res = _cli("domain", "fit", str(tmp_path / "nobundle"), "--data", str(CELLS),
                   "--offsite-list", str(lst))
        assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
