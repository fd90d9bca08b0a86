"""``export_bundle``: a run folder, bundle or bare .keras file -> a validated bundle, atomically.

Every format is written into a temporary folder inside the target, run in its own runtime on real
validation data and compared with Keras; only then are the files moved in, and the manifest (the
only thing that makes them trusted, through their sha256) is written last.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgekit import formats
from edgekit.device.activation import to_probabilities
from edgekit.device.backends import Backend, open_backend, predict_in_batches
from edgekit.errors import BundleError, DataError, EdgekitError, ExportError, ValidationFailed
from edgekit.export import calibration
from edgekit.export.logits import export_graph
from edgekit.export.onnx_export import (
    export_onnx_fp32,
    onnx_metadata,
    output_scale,
    quantize_onnx_int8,
)
from edgekit.export.options import ExportOptions, Format
from edgekit.export.tflite import convert_tflite
from edgekit.export.validate import class_probabilities, compare, render_table
from edgekit.manifest import (
    Artifact,
    Manifest,
    Preprocessing,
    TensorSpec,
    default_positive_label,
    load_manifest,
    sha256_file,
    verify_artifact,
)
from edgekit.versions import tool_versions

KERAS_NAME = "model.keras"
VALIDATION_MD = "validation.md"
VALIDATION_JSON = "validation.json"
TOOL_VERSIONS = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert", "numpy")

Log = Callable[[str], None]


class Runner:
    """A device backend run over any number of inputs: validation runs the very code the device runs
    (dequantizing, then the artifact's activation when it outputs logits)."""

    def __init__(self, backend: Backend, batch_size: int = 64, output: str = "probabilities",
                 activation: str | None = None) -> None:
        self.backend, self.batch_size = backend, batch_size
        self.output, self.activation = output, activation
        self.inputs, self.outputs = backend.inputs, backend.outputs

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Inputs (raw pixels or features) -> float32 probabilities."""
        raw = predict_in_batches(self.backend.run, x, self.batch_size)
        return to_probabilities(raw, self.output, self.activation)


def load_runner(fmt: Format, path: Path, threads: int | None = None, output: str = "probabilities",
                activation: str | None = None) -> Runner:
    """Open an exported file in its device runtime (LiteRT or onnxruntime); ``output`` and
    ``activation`` as its manifest entry records them."""
    return Runner(open_backend(fmt.runtime, path, threads), output=output, activation=activation)


def load_keras(path: Path):
    """Load a .keras model, or raise one clear BundleError."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"Keras model not found: {path}")
    if not _keras_archive(path):  # Keras calls a truncated or foreign file "File not found"
        raise BundleError(f"{path} is not a Keras model file (a .keras zip or .h5): truncated, or another"
                          " kind of file")
    import keras

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # zip, h5 and deserialization errors all mean the same thing here
        raise BundleError(f"cannot load Keras model {path}: {_first_line(exc)}") from exc
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise BundleError(f"{path.name}: only single-input, single-output models can be exported")
    if len(model.outputs[0].shape) != 2:
        raise BundleError(f"{path.name}: its output {list(model.outputs[0].shape)} is not one score per"
                          " class ([batch, classes]): not an image classifier")
    return float32_model(model)


def _keras_archive(path: Path) -> bool:
    import zipfile

    with open(path, "rb") as f:
        if f.read(8) == b"\x89HDF\r\n\x1a\n":  # a legacy .h5 model
            return True
    return zipfile.is_zipfile(path)


def float32_model(model):
    """The same model computing in float32. A model trained with mixed precision keeps float32
    weights but computes in float16/bfloat16, which the TFLite converter cannot translate and
    which would make every exported format disagree with its own reference."""
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in model.layers):
        return model

    def to_float32(cfg):
        if isinstance(cfg, dict):
            if cfg.get("class_name") == "DTypePolicy" and isinstance(cfg.get("config"), dict):
                return {**cfg, "config": {**cfg["config"], "name": "float32"}}
            return {k: to_float32(v) for k, v in cfg.items()}
        if isinstance(cfg, list):
            return [to_float32(v) for v in cfg]
        return cfg

    clone = model.__class__.from_config(to_float32(model.get_config()))
    clone.set_weights(model.get_weights())
    if any(layer.dtype_policy.compute_dtype != "float32" for layer in clone.layers):
        raise BundleError("could not turn the mixed-precision model into a float32 one for export")
    return clone


def _first_line(exc: BaseException, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else type(exc).__name__)
    return text[:limit]


def _keras_specs(model) -> tuple[list[TensorSpec], list[TensorSpec]]:
    def specs(tensors, names) -> list[TensorSpec]:
        return [TensorSpec(name=n, shape=[-1 if d is None else int(d) for d in t.shape], dtype="float32")
                for t, n in zip(tensors, names, strict=True)]

    in_names = [t.name for t in model.inputs]  # the Input layer's name
    out_names = list(getattr(model, "output_names", None) or [model.layers[-1].name])  # single output
    return specs(model.inputs, in_names), specs(model.outputs, out_names)


def _manifest_for_keras(model, keras_path: Path, labels: list[str] | None) -> Manifest:
    """A fresh manifest for a bring-your-own .keras file (input size read from the model)."""
    if not labels:
        raise BundleError("a bare .keras model needs --labels (comma-separated or a labels.txt file)")
    shape = model.inputs[0].shape
    n_out = int(model.outputs[0].shape[-1])
    if n_out not in (len(labels), 1) or (n_out == 1 and len(labels) != 2):
        raise BundleError(f"the model has {n_out} output(s) but {len(labels)} labels were given")
    training: dict = {"source_model": str(keras_path), "parameters": int(model.count_params())}
    if len(shape) == 4:
        channels = int(shape[-1])
        if channels not in (1, 3) or not shape[1] or not shape[2]:
            raise BundleError(f"unsupported image input shape {list(shape)}: need (h, w, 1 or 3)")
        pre = Preprocessing(input_size=(int(shape[1]), int(shape[2])), channels=channels,
                            color_order="RGB" if channels == 3 else "GRAY")
    else:  # features, not pixels: the preprocessing block does not apply
        pre = Preprocessing()
        training["input"] = {"kind": "features", "shape": [d for d in shape[1:]]}
    return Manifest(labels=list(labels), preprocessing=pre, positive_label=default_positive_label(labels),
                    name=keras_path.stem, training=training)


def _resolve(source: Path, options: ExportOptions):
    """-> (model, manifest, keras_path, source_dir or None)."""
    source = Path(source)
    if source.is_dir():
        manifest = load_manifest(source)
        art = manifest.artifacts.get("keras")
        keras_path = source / (art.path if art else KERAS_NAME)
        if art and art.sha256:
            verify_artifact(source, art)
        model = load_keras(keras_path)
        if options.labels and list(options.labels) != manifest.labels:
            raise BundleError(f"--labels {options.labels} differ from the manifest's {manifest.labels}")
        if len(model.inputs[0].shape) == 4:
            h, w, c = (int(d) for d in model.inputs[0].shape[1:])
            p = manifest.preprocessing
            if (h, w, c) != (*p.input_size, p.channels):
                raise BundleError(f"model input {h}x{w}x{c} does not match the manifest's "
                                  f"{p.input_size[0]}x{p.input_size[1]}x{p.channels}")
        return model, manifest, keras_path, source
    if source.suffix.lower() != ".keras":
        raise BundleError(f"{source}: not a run folder, bundle or .keras model file")
    model = load_keras(source)
    return model, _manifest_for_keras(model, source, options.labels), source, None


def _data(model, manifest: Manifest, options: ExportOptions, source_dir: Path | None, log: Log):
    from_run = source_dir is not None
    shape = tuple(model.inputs[0].shape)
    if options.calibration is None and not from_run:
        raise DataError("a bare .keras model needs --calibration (image folder, .csv or .npy)")
    if options.calibration is None:
        if len(shape) != 4:
            raise DataError("the model's input is not an image; pass --calibration data.csv|.npy")
        calib, val = calibration.from_split(manifest, options.calibration_samples, options.max_validation,
                                            options.seed, options.data_root, source_dir)
    else:
        calib = calibration.from_path(options.calibration, manifest, shape, options.calibration_samples,
                                      options.seed, "calibration")
        if options.validation is not None:
            val = calibration.from_path(options.validation, manifest, shape, options.max_validation,
                                        options.seed + 1, "validation")
        elif from_run and len(shape) == 4:
            _, val = calibration.from_split(manifest, 1, options.max_validation, options.seed,
                                            options.data_root, source_dir)
        else:
            val = calibration.Samples(calib.x, calib.y, calib.source + " (no held-out set given: reused)",
                                      held_out=False)
    log(f"{calib.source}\n{val.source}")
    return calib, val


def _convert(fmt: Format, model, folder: Path, calib_x: np.ndarray, manifest: Manifest,
             options: ExportOptions, image_input: bool, output_name: str, activation: str | None) -> Path:
    """Convert ``model`` (the graph ending at the logits when ``activation`` is named) to ``fmt``."""
    path = folder / fmt.filename
    if fmt.runtime == "litert":
        convert_tflite(model, fmt, path, calib_x if fmt.needs_calibration else None, image_input)
        return path
    meta = onnx_metadata(manifest, activation)
    if not fmt.calibration:
        export_onnx_fp32(model, path, meta, options.opset, output_name)
    else:
        fp32 = folder / formats.get("onnx_fp32").filename
        if not fp32.is_file():  # int8 alone was asked for: the fp32 graph is its input
            fp32 = folder / ".int8-source.onnx"
            export_onnx_fp32(model, fp32, meta, options.opset, output_name)
        quantize_onnx_int8(fp32, path, calib_x, meta, fmt.quantization)
    return path


def _keras_artifact(manifest: Manifest, model, keras_path: Path, relpath: str) -> Artifact:
    old = manifest.artifacts.get("keras")
    ins, outs = _keras_specs(model)
    return Artifact(format="keras", path=relpath, sha256=sha256_file(keras_path),
                    bytes=keras_path.stat().st_size, runtime="keras", inputs=old.inputs if old and old.inputs
                    else ins, outputs=old.outputs if old and old.outputs else outs,
                    validation=old.validation if old else {})


def _export_formats(model, manifest: Manifest, options: ExportOptions, tmp: Path, calib, val,
                    keras_sha: str, log: Log) -> tuple[dict[str, Artifact], dict[str, np.ndarray]]:
    """Convert, run and validate each format: (artifacts, their probabilities on the validation set)."""
    image_input = len(model.inputs[0].shape) == 4
    calib_x = calib.x.astype(np.float32)
    t0 = time.perf_counter()
    reference = model.predict(val.x.astype(np.float32), batch_size=64, verbose=0)
    log(f"keras reference on {len(val)} validation inputs: {time.perf_counter() - t0:.1f} s")
    decision = manifest.decision
    graph, activation = export_graph(model, log)  # every format ends at the logits when the model allows
    output = "probabilities" if activation is None else "logits"
    output_name = "logits" if activation else _keras_specs(model)[1][0].name
    log(f"exported graphs output {output}"
        + (f" (the device applies the {activation})" if activation else ""))
    # int8 ONNX is quantized from the fp32 ONNX graph, so fp32 goes first when both are asked for
    order = sorted(options.formats, key=formats.EXPORT_FORMATS.index)
    artifacts: dict[str, Artifact] = {}
    outputs: dict[str, np.ndarray] = {}
    for fmt in order:
        t0 = time.perf_counter()
        try:
            path = _convert(fmt, graph, tmp, calib_x, manifest, options, image_input, output_name, activation)
        except EdgekitError:
            raise
        except Exception as exc:
            msg = f"{fmt.value} export failed: {_first_line(exc)}"
            if not options.allow_drop:
                raise ExportError(msg) from exc
            log(msg)
            artifacts[fmt.value] = Artifact(format=fmt.value, path=fmt.filename, sha256="", bytes=0,
                                            runtime=fmt.runtime, status="export_failed",
                                            validation={"reason": msg, "keras_sha256": keras_sha})
            continue
        seconds = time.perf_counter() - t0
        runner = load_runner(fmt, path, output=output, activation=activation)
        if fmt.raw_pixels and image_input:
            spec = runner.inputs[0]
            if (spec.dtype, spec.scale, spec.zero_point) != ("uint8", 1.0, 0):  # the device feeds raw pixels
                raise ExportError(f"{fmt.name} input is {spec.dtype} scale {spec.scale} zero point "
                                  f"{spec.zero_point}, not raw uint8 pixels (scale 1, zero point 0)")
        probs = outputs[fmt.value] = runner.predict(val.x)
        rec = compare(fmt, probs, reference, val.y, options.bounds, decision)
        rec.update(export_seconds=round(seconds, 2), keras_sha256=keras_sha,
                   output_scale=runner.outputs[0].scale if fmt.runtime == "litert" else output_scale(path))
        artifacts[fmt.value] = Artifact(
            format=fmt.value, path=fmt.filename, sha256=sha256_file(path), bytes=path.stat().st_size,
            runtime=fmt.runtime, inputs=runner.inputs, outputs=runner.outputs, status=rec["status"],
            validation=rec, quantization=dict(fmt.quantization),
            extra_files={name: sha256_file(tmp / name) for name in fmt.files[1:]},
            output=output, activation=activation,
        )
        log(f"{fmt.value:15s} {path.stat().st_size / 1024:9.1f} KB  {seconds:6.1f} s  {rec['status']}"
            + (f" ({rec['reason']})" if "reason" in rec else ""))
    return artifacts, outputs


def _band_on_deployed(manifest: Manifest, artifacts: dict[str, Artifact], outputs: dict[str, np.ndarray],
                      val, log: Log) -> None:
    """Choose the uncertain band again on the validation crops as the format the device runs first
    scores them (not as Keras does: an int8 model's top probabilities differ), keeping the cutoff;
    each format's validation record says how the band calls those crops. Only for a two-class model
    whose thresholds were chosen on validation data, with a labelled held-out validation set."""
    from edgekit.thresholds import band_report, rechoose_band

    pos = manifest.positive_index
    if (pos is None or len(manifest.labels) != 2 or manifest.thresholds.source == "default"
            or val.y is None or not val.held_out or len(set(np.asarray(val.y).tolist())) < 2):
        return
    deployed = next((f for f in formats.DEVICE_ORDER if f in artifacts and artifacts[f].status == "ok"), None)
    if deployed is None:
        return
    y = np.asarray(val.y) == pos
    before = manifest.thresholds
    manifest.thresholds = rechoose_band(before, y, class_probabilities(outputs[deployed])[:, pos], deployed)
    for key, art in artifacts.items():
        if key in outputs:
            art.validation["band"] = band_report(y, class_probabilities(outputs[key])[:, pos],
                                                 manifest.thresholds)
    t = manifest.thresholds
    log(f"uncertain band on {deployed} outputs: [{t.negative:.4f}, {t.positive:.4f}) "
        f"(was [{before.negative:.4f}, {before.positive:.4f})), cutoff {t.cutoff:.4f} kept")


def _write_report(folder: Path, artifacts: dict[str, Artifact], calib, val, options: ExportOptions) -> str:
    rows = [{"format": k, "bytes": a.bytes, "status": a.status, "validation": a.validation}
            for k, a in artifacts.items()]
    table = render_table(rows)
    head = (f"# Export validation\n\nvalidation: {val.source}\ncalibration: {calib.source}\n"
            f"bounds: {vars(options.bounds)}\n\n")
    (folder / VALIDATION_MD).write_text(head + table)
    report = {"validation_source": val.source, "calibration_source": calib.source,
              "n_validation": len(val), "n_calibration": len(calib), "bounds": vars(options.bounds),
              "formats": {k: {"bytes": a.bytes, "status": a.status, **a.validation}
                          for k, a in artifacts.items()}}
    (folder / VALIDATION_JSON).write_text(json.dumps(report, indent=2) + "\n")
    return table


def _prepare_target(target: Path) -> bool:
    """Create the target folder if needed (returns whether it was created) and check it is writable."""
    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BundleError(f"cannot create output folder {target}: {exc.strerror or exc}") from exc
    if not target.is_dir():
        raise BundleError(f"output path is not a folder: {target}")
    if not os.access(target, os.W_OK | os.X_OK):
        raise BundleError(f"output folder is not writable: {target}")
    return created


def _commit(tmp: Path, target: Path, manifest: Manifest, files: list[str]) -> None:
    """Move files in, then write the manifest last. Entries about to be replaced are first dropped from
    an existing manifest, so an interruption never pairs a new file with a trusted old checksum."""
    if (target / "manifest.json").is_file():
        try:
            current = load_manifest(target)
        except BundleError:
            current = None
        if current is not None:
            moving = set(files)
            current.artifacts = {k: a for k, a in current.artifacts.items() if a.path not in moving}
            current.save(target)
    for name in files:
        os.replace(tmp / name, target / name)
    manifest.save(target)


def export_bundle(source: Path, out: Path | None, options: ExportOptions, log: Log | None = None) -> Manifest:
    """Export ``source`` (run folder, bundle, or .keras file) to every format in ``options`` and validate
    each against Keras. Writes the bundle to ``out`` (default: in place for a folder, ``<stem>_bundle``
    next to a .keras file) and returns its manifest. Raises ValidationFailed when a format misses its
    bound (unless ``options.allow_drop``); nothing is written then."""
    log = log or (lambda _msg: None)
    source = Path(source)
    model, manifest, keras_path, source_dir = _resolve(source, options)
    calib, val = _data(model, manifest, options, source_dir, log)
    if len(calib) == 0:
        raise DataError("the calibration data is empty")
    target = Path(out) if out else (source_dir or keras_path.parent / f"{keras_path.stem}_bundle")
    created = _prepare_target(target)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=target))
    ok = False
    try:
        keras_rel, files = _place_keras(keras_path, source_dir, target, tmp)
        keras_art = _keras_artifact(manifest, model, keras_path, keras_rel)
        new, outputs = _export_formats(model, manifest, options, tmp, calib, val, keras_art.sha256, log)
        _band_on_deployed(manifest, new, outputs, val, log)
        table = _write_report(tmp, new, calib, val, options)
        log(table)
        if not options.allow_drop:
            _refuse_failed(new)
        kept = _kept_artifacts(manifest, new, keras_art.sha256, target)
        manifest.artifacts = {"keras": keras_art, **kept, **new}
        manifest.versions = {**manifest.versions, **tool_versions(TOOL_VERSIONS)}
        files += artifact_files(new) + [VALIDATION_MD, VALIDATION_JSON]
        _commit(tmp, target, manifest, files)
        ok = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not ok and created:
            shutil.rmtree(target, ignore_errors=True)
    return manifest


def artifact_files(artifacts: dict[str, Artifact]) -> list[str]:
    """Every file the exported artifacts hold (a format's extra files too), to commit into the bundle."""
    kept = [a for a in artifacts.values() if a.status != "export_failed"]
    return [path for a in kept for path in (a.path, *a.extra_files)]


def _place_keras(keras_path: Path, source_dir: Path | None, target: Path, tmp: Path) -> tuple[str, list[str]]:
    """The Keras model's path in the bundle, and the files to commit: a copy when the bundle is
    written elsewhere than its source folder (nothing to copy in place)."""
    if source_dir is None or target.resolve() != source_dir.resolve():
        shutil.copy2(keras_path, tmp / KERAS_NAME)
        return KERAS_NAME, [KERAS_NAME]
    return str(keras_path.relative_to(source_dir)), []


def _refuse_failed(new: dict[str, Artifact]) -> None:
    """ValidationFailed, naming each format's reason, when a format missed its bound."""
    failed = [k for k, a in new.items() if a.status != "ok"]
    if failed:
        reasons = "; ".join(f"{k}: {new[k].validation.get('reason', new[k].status)}" for k in failed)
        raise ValidationFailed(f"{len(failed)} format(s) missed their bound ({reasons}); nothing was "
                               "written (use --allow-drop to keep them, marked failed)")


def _kept_artifacts(
    manifest: Manifest, new: dict[str, Artifact], keras_sha: str, target: Path
) -> dict[str, Artifact]:
    """Formats not re-exported now: they stay if they belong to this same Keras model and still verify."""
    return {k: a for k, a in manifest.artifacts.items()
            if k != "keras" and k not in new and a.validation.get("keras_sha256") == keras_sha
            and (target / a.path).is_file() and a.sha256 == sha256_file(target / a.path)}
