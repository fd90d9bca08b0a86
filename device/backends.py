# pyright: basic
"""Inference adapters over an injectable interpreter: LiteRT / tflite-runtime and onnxruntime.

The adapters are thin and testable with a fake interpreter (pycoral's ``adapters/common.py``
pattern): they quantize the uint8 input when the model asks for it, run, and dequantize the
output with its scale and zero point. Runtime packages are imported only inside ``open_*``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from edgekit.errors import BundleError
from edgekit.formats import RUNTIMES
from edgekit.manifest import TensorSpec

_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
}


_NOISE = (b"INFO: Created TensorFlow Lite XNNPACK delegate",)


def predict_in_batches(predict: Callable[[Any], Any], items: Sequence[Any], batch_size: int,
                       stack: Callable[[Sequence[Any]], Any] | None = None) -> np.ndarray:
    """``predict`` over ``items`` (at least one), ``batch_size`` at a time in order, each batch made
    by ``stack`` (default: the slice itself, for an array); the outputs concatenated. One loop for
    export's validation, `field`, `classify`/`screen` and the benchmarks: the same batches, the same
    bits. Batches bound the model's activations and the stacked input (peak memory)."""
    def batch(i: int) -> Any:
        chunk = items[i : i + batch_size]
        return chunk if stack is None else stack(chunk)

    return np.concatenate([predict(batch(i)) for i in range(0, len(items), batch_size)])


def scratch_file() -> IO[bytes]:
    """An anonymous temporary file: in memory on Linux (``memfd``), else ``tempfile`` (which pulls
    in shutil, random, bz2 and lzma: not worth it on every model load, for cold start)."""
    if hasattr(os, "memfd_create"):
        try:
            return os.fdopen(os.memfd_create("edgekit-stderr"), "w+b")
        except OSError:
            pass
    import tempfile

    return tempfile.TemporaryFile()


@contextlib.contextmanager
def _quiet_native_info() -> Iterator[None]:
    """Drop LiteRT's native "INFO: Created ... delegate" line from stderr (written by C++, so it
    bypasses Python's logging); every other line written meanwhile is passed through. Borrowed under
    :mod:`~edgekit.device.native_stderr`'s lock, as a decoding thread borrows it."""
    from edgekit.device.native_stderr import borrowed_stderr

    with scratch_file() as tmp:
        with borrowed_stderr(tmp) as borrowed:
            yield
        if borrowed:
            tmp.seek(0)
            kept = [ln for ln in tmp.read().splitlines(keepends=True) if not ln.startswith(_NOISE)]
            if kept:
                os.write(2, b"".join(kept))


class Backend(Protocol):
    """What the runtime needs from an inference engine."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    last_invoke_s: float

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def execution(self) -> dict[str, Any]: ...


ARM32 = ("armv6l", "armv7l", "armv8l", "arm")


def platform_hint(machine: str | None = None) -> str:
    """Why no runtime can be installed here, on 32-bit ARM; empty elsewhere."""
    import platform

    machine = machine or platform.machine()
    if machine.lower() not in ARM32:
        return ""
    return (f" (this is {machine}, 32-bit ARM: LiteRT and onnxruntime have no wheels for it; install 64-bit "
            "Raspberry Pi OS, where `uname -m` prints aarch64)")


def runtime_available(runtime: str) -> bool:
    """Whether a Python package for the device runtime ``runtime`` (``litert`` or ``onnxruntime``) is
    installed (the packages are listed in :data:`edgekit.formats.RUNTIMES`)."""
    spec = RUNTIMES.get(runtime)
    return spec is not None and spec.device and spec.available()


def quantize_input(x: np.ndarray, dtype: str, scale: float | None, zero_point: int | None) -> np.ndarray:
    """Cast raw pixels to the model's input type, quantizing when the input is int8/uint8 with a
    scale other than 1 (or a zero point other than 0)."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return x.astype(dt, copy=False)
    scale = 1.0 if not scale else float(scale)
    zero_point = int(zero_point or 0)
    if x.dtype == dt and scale == 1.0 and zero_point == 0:
        return x
    info = np.iinfo(dt)
    q = np.round(x.astype(np.float32) / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dt)


def dequantize(y: np.ndarray, scale: float | None, zero_point: int | None) -> np.ndarray:
    """Integer output -> float32 with the output's scale and zero point; floats pass through."""
    if np.dtype(y.dtype).kind in "iu":
        return ((y.astype(np.float32) - float(zero_point or 0)) * float(scale or 1.0)).astype(np.float32)
    return y.astype(np.float32, copy=False)


def tflite_spec(detail: dict[str, Any]) -> TensorSpec:
    """A TensorSpec from one entry of ``interpreter.get_input_details()`` / ``get_output_details()``."""
    scale, zero_point = detail.get("quantization", (0.0, 0))
    dtype = np.dtype(detail["dtype"])
    quantized = dtype.kind in "iu" and scale != 0.0
    shape = detail.get("shape_signature", detail["shape"])
    return TensorSpec(
        name=str(detail["name"]),
        shape=[int(v) for v in shape],
        dtype=dtype.name,
        scale=float(scale) if quantized else None,
        zero_point=int(zero_point) if quantized else None,
    )


class TFLiteBackend:
    """Runs a LiteRT / tflite-runtime interpreter (or anything with the same five methods)."""

    def __init__(self, interpreter: Any) -> None:
        self.interpreter = interpreter
        with _quiet_native_info():
            self.interpreter.allocate_tensors()
        self._in = interpreter.get_input_details()[0]
        self._out = interpreter.get_output_details()[0]
        self.inputs = [tflite_spec(d) for d in interpreter.get_input_details()]
        self.outputs = [tflite_spec(d) for d in interpreter.get_output_details()]
        self._batch = int(self._in["shape"][0])
        self._resizable = True
        self.last_invoke_s = 0.0

    def _set_batch(self, n: int) -> bool:
        """Resize the input to batch ``n``; False when the model has a fixed batch size."""
        if n == self._batch:
            return True
        if not self._resizable:
            return False
        try:
            self.interpreter.resize_tensor_input(self._in["index"], [n, *self._in["shape"][1:]])
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError):
            self._resizable = False
            return False
        self._batch = n
        return True

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        spec = self.inputs[0]
        x = quantize_input(x, spec.dtype, spec.scale, spec.zero_point)
        self.interpreter.set_tensor(self._in["index"], x)
        t0 = time.perf_counter()
        self.interpreter.invoke()
        self.last_invoke_s += time.perf_counter() - t0
        out = self.outputs[0]
        y = np.array(self.interpreter.get_tensor(self._out["index"]))
        return dequantize(y, out.scale, out.zero_point)

    def execution(self) -> dict[str, Any]:
        """Which delegate runs the graph and how many of its operators it took over, read from the
        interpreter's node list (LiteRT appends one DELEGATE node per partition it delegated)."""
        try:
            ops = self.interpreter._get_ops_details()
        except (AttributeError, RuntimeError, ValueError):
            return {"delegate": "unknown"}
        partitions = [o for o in ops if o["op_name"] == "DELEGATE"]
        plain = [o for o in ops if o["op_name"] != "DELEGATE"]
        available = {int(t) for o in partitions for t in o["inputs"]}
        taken = 0
        for op in plain:  # an operator whose inputs all reach a delegate partition ran inside it
            if partitions and all(int(t) < 0 or int(t) in available for t in op["inputs"]):
                available.update(int(t) for t in op["outputs"])
                taken += 1
        return {"delegate": "XNNPACK" if partitions else "none", "delegated_ops": f"{taken}/{len(plain)}"}

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.last_invoke_s = 0.0
        if self._set_batch(len(batch)):
            return self._invoke(batch)
        if not self._set_batch(1) and self._batch != 1:
            raise BundleError(f"model has a fixed batch size of {self._batch}; cannot run {len(batch)}")
        return np.concatenate([self._invoke(batch[i : i + 1]) for i in range(len(batch))])


class OnnxBackend:
    """Runs an onnxruntime InferenceSession (or anything with ``get_inputs/get_outputs/run``)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self._in = session.get_inputs()[0]
        self._out_names = [o.name for o in session.get_outputs()]
        self.inputs = [self._spec(t) for t in session.get_inputs()]
        self.outputs = [self._spec(t) for t in session.get_outputs()]
        self.last_invoke_s = 0.0

    @staticmethod
    def _spec(t: Any) -> TensorSpec:
        shape = [d if isinstance(d, int) else -1 for d in t.shape]
        kind: str = t.type
        return TensorSpec(name=t.name, shape=shape, dtype=_ONNX_DTYPES.get(kind, kind))

    def execution(self) -> dict[str, Any]:
        """The execution provider onnxruntime actually uses and its intra-op thread setting."""
        try:
            providers = self.session.get_providers()
            intra = self.session.get_session_options().intra_op_num_threads
        except AttributeError:
            return {"delegate": "unknown"}
        return {"delegate": providers[0] if providers else "none", "intra_op_threads": int(intra)}

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            y = self.session.run(self._out_names[:1], {self._in.name: x})[0]
        except Exception as exc:  # onnxruntime's own exception types (InvalidArgument, Fail, ...)
            raise BundleError(f"onnxruntime cannot run the model: {_first_line(exc)}") from exc
        self.last_invoke_s += time.perf_counter() - t0
        return np.asarray(y)

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.last_invoke_s = 0.0
        x = quantize_input(batch, self.inputs[0].dtype, None, None)
        fixed = self.inputs[0].shape[0] if self.inputs[0].shape else -1
        if fixed <= 0 or fixed == len(x):
            return dequantize(self._invoke(x), None, None)
        # a fixed batch size (often 1): run it that many at a time, the last chunk padded
        parts = []
        for i in range(0, len(x), fixed):
            chunk = x[i : i + fixed]
            pad = np.repeat(chunk[-1:], fixed - len(chunk), axis=0)
            parts.append(self._invoke(np.concatenate([chunk, pad]))[: len(chunk)])
        return dequantize(np.concatenate(parts), None, None)


def open_tflite(path: str | Path, threads: int | None = None, content: bytes | None = None) -> TFLiteBackend:
    """LiteRT (``ai-edge-litert``) first; ``tflite-runtime`` as a fallback for older boards. ``content``:
    the model's already-verified bytes, loaded instead of reading ``path`` again."""
    source = {"model_path": str(path)} if content is None else {"model_content": content}
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = None
    if Interpreter is not None:
        try:
            return TFLiteBackend(Interpreter(**source, num_threads=threads))
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"LiteRT cannot load {path}: {_first_line(exc)}") from exc
    try:
        from tflite_runtime.interpreter import Interpreter as LegacyInterpreter  # optional # pyright: ignore[reportMissingImports]
    except ImportError as exc:
        raise BundleError(
            "no TFLite runtime installed: pip install ai-edge-litert (or tflite-runtime on older boards)"
            + platform_hint()
        ) from exc
    try:
        return TFLiteBackend(LegacyInterpreter(**source, num_threads=threads))
    except (ValueError, RuntimeError) as exc:
        raise BundleError(
            f"tflite-runtime cannot load {path} ({_first_line(exc)}); it is probably older than the "
            "converter that wrote the model: install ai-edge-litert, or use the bundle's ONNX model"
        ) from exc


def open_onnx(path: str | Path, threads: int | None = None, content: bytes | None = None) -> OnnxBackend:
    """onnxruntime on the CPU; ``content`` as for :func:`open_tflite`."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BundleError("onnxruntime is not installed: pip install onnxruntime" + platform_hint()) from exc
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path) if content is None else content, sess_options=opts,
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise BundleError(f"onnxruntime cannot load {path}: {_first_line(exc)}") from exc
    return OnnxBackend(session)


OPENERS = {"litert": open_tflite, "onnxruntime": open_onnx}


def open_backend(
    runtime: str, path: str | Path, threads: int | None = None, content: bytes | None = None
) -> Backend:
    """Open ``path`` (or its verified bytes ``content``) with the named runtime (``litert`` or
    ``onnxruntime``)."""
    if runtime not in OPENERS:
        raise BundleError(f"runtime {runtime!r} is not available on the device (use litert or onnxruntime)")
    return OPENERS[runtime](path, threads, content)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
