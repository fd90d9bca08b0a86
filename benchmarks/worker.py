"""Measure one format in its own process: ``python -m edgekit.benchmarks.worker SPEC.json``.

Running each (format, threads) row in a fresh process keeps peak memory honest (one runtime and
one model per process) and lets the process be pinned to a profile's cores before any runtime
starts its thread pool. The spec names the bundle, format, threads, cores and the memory-mapped
``.npy`` of prepared images shared by every row; the worker writes a result JSON and the
predicted probabilities as ``.npy``. It never raises: failures become ``status`` + ``message``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.benchmarks.profiles import pin_to_cores
from edgekit.device.backends import predict_in_batches
from edgekit.errors import EdgekitError
from edgekit.formats import RUNTIMES
from edgekit.manifest import load_manifest, verify_artifact


def memory_kb(field: str) -> int | None:
    """A ``/proc/self/status`` field in kB (``VmHWM`` = peak resident set, ``VmRSS`` = current)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    kb = memory_kb("VmHWM")
    if kb is None:  # not Linux: ru_maxrss is kB on Linux, bytes on macOS
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":
            kb //= 1024
    return kb / 1024


def import_runtime(runtime: str) -> None:
    """Import the runtime up front so its import cost is reported apart from the model load."""
    import importlib

    errors = []
    spec = RUNTIMES.get(runtime)
    for name in spec.modules if spec else ():
        try:
            importlib.import_module(name)
            return
        except ImportError as exc:
            errors.append(str(exc))
    raise ImportError(f"runtime {runtime!r} is not installed ({'; '.join(errors) or 'unknown runtime'})")


def load_keras(bundle: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """The Keras reference model (float32 pixels in [0, 255]; scaling is in the graph)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    path = verify_artifact(bundle, load_manifest(bundle).artifacts["keras"])
    model = keras.models.load_model(path, compile=False)

    def predict(batch: np.ndarray) -> np.ndarray:
        # predict_on_batch runs the compiled graph: the fair reference, not layer-by-layer eager calls
        return np.asarray(model.predict_on_batch(batch.astype(np.float32)), dtype=np.float32)

    return predict


def load_device(bundle: Path, fmt: str, threads: int) -> Any:
    """Any exported format, through the device runtime exactly as ``edgekit classify`` loads it.

    The runtime refuses an artifact that failed validation unless asked; the benchmark still measures
    it (its row stays marked), with the same sha256 check. Benchmarks measure freshly exported,
    possibly unsigned bundles: the signature is not required here (the device commands require it).
    """
    from edgekit.device.runtime import load_classifier

    return load_classifier(bundle, fmt, threads, allow_failed=True, allow_unsigned=True,
                           warn=lambda _line: None)


def os_threads() -> int | None:
    """Threads of this process now (Linux); the runtime's pool shows up as new ones after loading."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 4)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Load, first inference, batch-1 latency percentiles, throughput at batch N, predictions."""
    out: dict[str, Any] = {"pinned": pin_to_cores(spec.get("cores") or [])}
    bundle, fmt, threads = Path(spec["bundle"]), spec["format"], int(spec["threads"])
    images = np.load(spec["images"], mmap_mode="r")
    n = len(images)
    t = time.perf_counter()
    import_runtime(spec["runtime"])
    out["import_ms"] = _ms(time.perf_counter() - t)
    rss_before = memory_kb("VmRSS")
    threads_before = os_threads()
    t = time.perf_counter()
    if fmt == "keras":
        predict = load_keras(bundle, threads)
    else:
        classifier = load_device(bundle, fmt, threads)
        predict = classifier.predict
        execution = getattr(classifier.backend, "execution", None)
        out.update(execution() if execution else {})
    out["load_ms"] = _ms(time.perf_counter() - t)
    rss_after = memory_kb("VmRSS")
    if rss_before is not None and rss_after is not None:
        out["model_rss_mb"] = round((rss_after - rss_before) / 1024, 3)

    one = [np.ascontiguousarray(images[i : i + 1]) for i in range(min(n, 64))]
    t = time.perf_counter()
    predict(one[0])
    out["first_inference_ms"] = _ms(time.perf_counter() - t)
    threads_after = os_threads()
    if fmt != "keras" and threads_before is not None and threads_after is not None:
        # the inference pool's threads plus the calling thread, as the OS sees them: a thread
        # setting the runtime ignores shows up here, not in the option that was passed
        out["threads_effective"] = threads_after - threads_before + 1
    for i in range(int(spec.get("warmup", 10))):
        predict(one[i % len(one)])
    latencies = np.empty(int(spec.get("runs", 100)))
    for i in range(len(latencies)):
        x = one[i % len(one)]
        t = time.perf_counter()
        predict(x)
        latencies[i] = time.perf_counter() - t
    for q in (50, 95, 99):
        out[f"latency_p{q}_ms"] = _ms(float(np.percentile(latencies, q)))
    out["latency_mean_ms"] = _ms(float(latencies.mean()))
    # what a device classifying one crop at a time holds: before the pass that pages in the whole set
    out["peak_rss_mb"] = round(peak_rss_mb(), 3)

    batch = min(max(1, int(spec.get("batch", 32))), n)
    predict(np.ascontiguousarray(images[:batch]))  # untimed: a graph runtime traces this shape once
    out["batch"] = batch
    full = n - n % batch  # throughput over whole batches; the remainder is predicted untimed
    t, cpu = time.perf_counter(), cpu_seconds()
    probs = [predict_in_batches(predict, images[:full], batch, np.ascontiguousarray)]
    elapsed = time.perf_counter() - t
    if elapsed > 0:  # cores kept busy during the batch pass (spinning pool threads count too)
        out["cpu_per_wall"] = round((cpu_seconds() - cpu) / elapsed, 2)
    out["throughput_ips"] = round(full / elapsed, 3) if elapsed > 0 else None
    if full < n:
        probs.append(predict(np.ascontiguousarray(images[full:])))
    p = np.concatenate(probs).astype(np.float32)
    if p.shape[0] != n:
        raise EdgekitError(f"{fmt} returned {p.shape[0]} predictions for {n} images")
    np.save(spec["probs"], p)
    out["peak_rss_batch_mb"] = round(peak_rss_mb(), 3)  # includes the memory-mapped image set
    out["status"] = "ok"
    return out


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """:func:`measure`, with any failure turned into a status and a one-line message."""
    try:
        return measure(spec)
    except ImportError as exc:
        return {"status": "runtime missing", "message": str(exc).splitlines()[0]}
    except EdgekitError as exc:
        return {"status": "failed", "message": str(exc)}
    except Exception as exc:  # a benchmark row records the crash and the others still run
        last = traceback.extract_tb(exc.__traceback__)[-1]
        return {"status": "failed", "message": f"{type(exc).__name__}: {exc} ({Path(last.filename).name}:"
                                               f"{last.lineno})".replace("\n", " ")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    usage = "usage: python -m edgekit.benchmarks.worker SPEC.json  (one row of `edgekit bench`)"
    if argv in (["-h"], ["--help"]):
        print(usage)
        return 0
    if len(argv) != 1:
        print(usage, file=sys.stderr)
        return 2
    try:
        spec = json.loads(Path(argv[0]).read_text())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read the spec {argv[0]}: {exc}", file=sys.stderr)
        return 2
    result = run(spec)
    tmp = Path(spec["result"]).with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, spec["result"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
