"""Test helper (needs TensorFlow): a tiny real bundle from a tiny Keras ResNet.

Writes fp32 and full-int8 (uint8 input) TFLite files with the export's own converter settings
(``edgekit.export.tflite``), optionally an fp32 ONNX file, and a manifest whose TensorSpecs are
read back from the converted models and whose quantization records come from the format table. Stands in for
``edgekit export`` in tests; device tests use the committed golden bundle instead, so they run
without TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit import formats
from edgekit.export.tflite import convert_tflite
from edgekit.manifest import Artifact, Manifest, Preprocessing, Thresholds, sha256_file

LABELS = ["Parasitized", "Uninfected"]
# A key for tests only: its public half is trusted in the tests' own keyring (conftest.py), nowhere else.
TEST_KEY = Path(__file__).resolve().parent / "fixtures" / "test_signing.key"


def sign_for_tests(folder: str | Path) -> None:
    """Sign a test bundle with the test key (trusted only inside the test run)."""
    from edgekit.signing import sign_bundle

    sign_bundle(folder, TEST_KEY)


def tiny_model(input_size: tuple[int, int] = (32, 32), num_classes: int = 2, seed: int = 0):
    import keras

    from edgekit.model import build_resnet

    keras.utils.set_random_seed(seed)
    return build_resnet((*input_size, 3), num_classes, stages=(1, 1, 1), filters=(4, 8, 8, 8), l2=0.0)


def _tflite_artifact(folder: Path, fmt: str, name: str) -> Artifact:
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.device.backends import tflite_spec

    path = folder / name
    interp = Interpreter(model_path=str(path))
    return Artifact(
        format=fmt, path=name, sha256=sha256_file(path), bytes=path.stat().st_size, runtime="litert",
        inputs=[tflite_spec(d) for d in interp.get_input_details()],
        outputs=[tflite_spec(d) for d in interp.get_output_details()],
        quantization=dict(formats.get(fmt).quantization),
    )


def _onnx_artifact(model, folder: Path) -> Artifact | None:
    """fp32 ONNX via tf2onnx; None when the converter cannot handle this Keras version."""
    try:
        import tensorflow as tf
        import tf2onnx

        spec = (tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="image"),)
        path = folder / "model_fp32.onnx"
        tf2onnx.convert.from_function(
            tf.function(lambda x: model(x, training=False)), input_signature=spec, opset=13,
            output_path=str(path),
        )
        from edgekit.device.backends import open_onnx

        backend = open_onnx(path)
    except Exception as exc:  # noqa: BLE001 - optional format in a test helper
        print(f"onnx export skipped: {exc}")
        return None
    return Artifact(
        format="onnx_fp32", path=path.name, sha256=sha256_file(path), bytes=path.stat().st_size,
        runtime="onnxruntime", inputs=backend.inputs, outputs=backend.outputs,
    )


def make_bundle(
    folder: str | Path,
    train_x: np.ndarray | None = None,
    train_y: np.ndarray | None = None,
    input_size: tuple[int, int] = (32, 32),
    epochs: int = 0,
    onnx: bool = False,
    thresholds: Thresholds | None = None,
    seed: int = 0,
    sign: bool = True,
) -> Manifest:
    """Build, optionally train, convert and write a tiny bundle into ``folder``.

    ``train_x`` is uint8 (N, h, w, 3) from ``prepare()``; it is also the int8 calibration set
    (random pixels when absent). ``train_y`` holds label indices into :data:`LABELS`. The bundle is
    signed with the test key unless ``sign`` is False.
    """
    import keras

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_model(input_size, len(LABELS), seed)
    rng = np.random.default_rng(seed)
    if train_x is None:
        train_x = rng.integers(0, 256, (8, *input_size, 3), dtype=np.uint8)
    if epochs and train_y is not None:
        model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
        model.fit(train_x.astype(np.float32), train_y, epochs=epochs, batch_size=32, verbose=0)
    # the export's own converter settings, so the bundle is what `edgekit export` would write
    convert_tflite(model, formats.get("tflite_fp32"), folder / "model_fp32.tflite", None, True)
    convert_tflite(model, formats.get("tflite_int8"), folder / "model_int8.tflite",
                   train_x[:64].astype(np.float32), True)
    artifacts = {
        "tflite_int8": _tflite_artifact(folder, "tflite_int8", "model_int8.tflite"),
        "tflite_fp32": _tflite_artifact(folder, "tflite_fp32", "model_fp32.tflite"),
    }
    if onnx and (art := _onnx_artifact(model, folder)) is not None:
        artifacts["onnx_fp32"] = art
    manifest = Manifest(
        labels=list(LABELS),
        preprocessing=Preprocessing(input_size=input_size),
        positive_label="Parasitized",
        thresholds=thresholds or Thresholds(positive=0.7, negative=0.3, cutoff=0.5, source="test"),
        artifacts=artifacts,
        name="tiny-test",
    )
    manifest.save(folder)
    if sign:
        sign_for_tests(folder)
    return manifest


def make_tiny_run(root: Path, cells: Path, size: int = 32, epochs: int = 3, **manifest_fields) -> Path:
    """A tiny trained run folder (model.keras, manifest, split) as `edgekit train` leaves one, from a
    small folder-per-class set; ``manifest_fields`` adds to the manifest (``name``, ``training`` keys)."""
    import keras

    from edgekit.data import load_images, scan_dataset
    from edgekit.model import build_resnet
    from edgekit.splits import make_split, save_split

    sp = make_split(scan_dataset(cells), test_fraction=0.2, val_fraction=0.2, seed=1)
    split_file = root / "split.json"
    digest = save_split(sp, split_file)
    pre = Preprocessing(input_size=(size, size))
    keras.utils.set_random_seed(0)
    model = build_resnet((size, size, 3), 2, stages=(1, 1, 1), filters=(4, 8, 8, 8))
    x, _ = load_images(cells, [i.path for i in sp.parts["train"]], pre)
    y = np.array([i.label for i in sp.parts["train"]])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x.astype("float32"), y, epochs=epochs, batch_size=16, verbose=0)
    run = root / "run"
    run.mkdir()
    keras_file = run / "model.keras"
    model.save(keras_file)
    training = {"split_file": str(split_file), "split_sha256": digest, "data_root": str(cells),
                **manifest_fields.pop("training", {})}
    Manifest(labels=sp.classes, preprocessing=pre, positive_label="Parasitized",
             artifacts={"keras": Artifact("keras", "model.keras", sha256_file(keras_file),
                                          keras_file.stat().st_size, "keras")},
             training=training, **manifest_fields).save(run)
    return run
