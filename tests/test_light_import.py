"""The light-import guard: the device runtime and `edgekit classify` never load a training
framework (click's tests/test_imports.py pattern: a fresh interpreter, then look at sys.modules)."""

from __future__ import annotations

import json
import subprocess
import sys

from device_helpers import BANNED, CELLS, GOLDEN

SCRIPT = """
import json, sys
import edgekit.device, edgekit.device.runtime, edgekit.device.commands
from edgekit.device.runtime import load_classifier
from edgekit.device.preprocess import read_image
clf = load_classifier({golden!r})
pred = clf.classify(read_image({image!r}))
from edgekit.cli import main
try:
    main(["classify", {image!r}, "--model", {golden!r}, "--format", "jsonl"])
except SystemExit as e:
    assert e.code in (0, None), e.code
print(json.dumps({{"label": pred.label, "modules": sorted(sys.modules)}}))
"""


def _loaded_roots(script: str) -> tuple[dict, set[str]]:
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result, {m.split(".")[0] for m in result["modules"]}


def test_classify_loads_no_training_framework():
    image = str(sorted(CELLS.iterdir())[0])
    result, roots = _loaded_roots(SCRIPT.format(golden=str(GOLDEN), image=image))
    assert result["label"] in ("Parasitized", "Uninfected")
    assert "ai_edge_litert" in roots  # it really ran a model
    assert not roots & set(BANNED), roots & set(BANNED)


def test_onnx_runtime_path_loads_no_onnx_package():
    script = f"""
import json, sys
from edgekit.device.runtime import load_classifier
import numpy as np
clf = load_classifier({str(GOLDEN)!r}, "onnx_fp32")
clf.predict(np.zeros((1, 32, 32, 3), np.uint8))
print(json.dumps({{"modules": sorted(sys.modules)}}))
"""
    _, roots = _loaded_roots(script)
    assert "onnxruntime" in roots
    assert not roots & set(BANNED), roots & set(BANNED)


def test_device_commands_import_is_light():
    _, roots = _loaded_roots(
        "import json, sys; import edgekit.device.commands;"
        " print(json.dumps({'modules': sorted(sys.modules)}))"
    )
    heavy = {"tensorflow", "keras", "cv2", "onnxruntime", "ai_edge_litert", "matplotlib", "sklearn"}
    assert not roots & heavy, roots & heavy


def test_screen_of_crops_loads_no_field_package(tmp_path):
    """`screen` of crops never imports the whole-field package (~2 MB of its peak RSS); with
    --fields it does (the check sees the package when it is there)."""
    image = str(sorted(CELLS.iterdir())[0])
    script = """
import json, sys
from edgekit.cli import main
try:
    main(["screen", {image!r}, "--model", {golden!r}, "--patient", "P", "--db", {db!r}, "--no-progress"
          {more}])
except SystemExit as e:
    assert e.code in (0, 1, None), e.code
print(json.dumps({{"modules": sorted(sys.modules)}}))
"""
    for more, loaded in (("", False), (', "--fields"', True)):
        result, _ = _loaded_roots(script.format(image=image, golden=str(GOLDEN), db=str(tmp_path / "r.db"),
                                                more=more))
        assert any(m.startswith("edgekit.device.field") for m in result["modules"]) is loaded, more


def test_classify_and_screen_never_load_openssl(tmp_path):
    """Content hashes, the model's and the manifest's sha256 come from CPython's own SHA-2
    (``edgekit.digest``): `classify`, `screen` and `screen --fields` never import ``hashlib``'s
    OpenSSL module (libcrypto: ~3.4 MB of resident pages and ~12 ms of a cold start), and hash as it does."""
    import hashlib

    from edgekit.digest import sha256

    assert sha256(b"edgekit").hexdigest() == hashlib.sha256(b"edgekit").hexdigest()
    image = str(sorted(CELLS.iterdir())[0])
    fields = str(GOLDEN.parent / "fields")
    script = """
import json, sys
from edgekit.cli import main
for args in (["classify", {image!r}, "--model", {golden!r}, "--format", "jsonl"],
             ["screen", {image!r}, "--model", {golden!r}, "--patient", "P", "--db", {db!r}, "--no-progress"],
             ["screen", {fields!r}, "--fields", "--model", {golden!r}, "--patient", "F", "--db", {db!r},
              "--no-progress"]):
    try:
        main(args)
    except SystemExit as e:
        assert e.code in (0, None), (args, e.code)
print(json.dumps({{"modules": sorted(sys.modules)}}))
"""
    result, _ = _loaded_roots(script.format(image=image, golden=str(GOLDEN), fields=fields,
                                            db=str(tmp_path / "r.db")))
    assert "edgekit.device.field" in result["modules"]  # the fields really ran
    assert "_hashlib" not in result["modules"]
    # nor the review pages' html (~0.3 MB of Python objects with its entities): screen writes no page;
    # nor concurrent.futures with its logging (~0.8 MB of RSS): edgekit.device.threads runs the threads
    assert not {"html", "html.entities", "concurrent.futures", "logging"} & set(result["modules"])


def test_field_path_never_imports_numpy_ma(tmp_path):
    """`screen --fields`, an eyepiece's dark surround and a dim corner's lighting take their percentiles
    and medians from ``edgekit.device.order``: ``numpy.ma`` (1.3 MB, ~16 ms of import, pulled in by
    numpy's own ``np.percentile`` and ``np.median``) is never imported."""
    fields = str(GOLDEN.parent / "fields")
    script = """
import json, sys
import numpy as np
from edgekit.cli import main
from edgekit.device.field.illumination import lighting
from edgekit.device.field.view import outside_view
try:
    main(["screen", {fields!r}, "--fields", "--model", {golden!r}, "--patient", "F", "--db", {db!r},
          "--no-progress"])
except SystemExit as e:
    assert e.code in (0, None), e.code
yy, xx = np.mgrid[0:240, 0:320]
field = np.full((240, 320, 3), 200, np.uint8)
field[(yy - 120) ** 2 + (xx - 160) ** 2 > 110 ** 2] = 5  # a dark disc round the view
assert outside_view(field) is not None
dim = (200 * (1 - 0.5 * xx / 320)).astype(np.uint8)  # a lamp off to one side
assert lighting(np.dstack([dim] * 3), 0.1) is not None
print(json.dumps({{"modules": sorted(sys.modules)}}))
"""
    result, _ = _loaded_roots(script.format(golden=str(GOLDEN), fields=fields, db=str(tmp_path / "r.db")))
    assert "edgekit.device.field" in result["modules"]  # the fields really ran
    assert "numpy.ma" not in result["modules"]
