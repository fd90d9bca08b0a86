"""The benchmark orchestrator: one worker process per (format, threads) row, Keras as reference.

The labelled images are decoded once here with the manifest's preprocessing and saved as one
``.npy`` that every worker memory-maps, so every format sees identical inputs. Rows that cannot
run (export failed, artifact missing, runtime not installed, worker crashed) keep a status and a
message; the rest of the benchmark carries on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.benchmarks.accuracy import flat_accuracy, row_accuracy
from edgekit.benchmarks.profiles import DeviceProfile, get_profile, host_description, profile_cores
from edgekit.errors import DataError
from edgekit.formats import RUNTIMES
from edgekit.manifest import Manifest, load_manifest

STATUS_LABELS = {"export_failed": "export failed", "failed_validation": "failed validation"}
Log = Callable[[str], None]


@dataclass
class LabelledData:
    """Prepared images and what is known about each: label index into the model's labels (-1 for a
    class the model does not know) and patient/group id."""

    images: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unknown: dict[str, int] = field(default_factory=dict)  # data class -> images left out of accuracy


def load_labelled(data: str | os.PathLike, manifest: Manifest, part: str = "test") -> LabelledData:
    """A split file (its ``part``; patients are the items' groups) or a folder-per-class dataset
    (groups from :func:`edgekit.data.scan_dataset`), prepared exactly as the device prepares it."""
    from edgekit.data import load_images, scan_dataset
    from edgekit.splits import load_split

    data = Path(data)
    if data.is_file():
        split, _ = load_split(data)
        if part not in split.parts or not split.parts[part]:
            raise DataError(f"split {data} has no {part!r} images (parts: {', '.join(split.parts)})")
        items, classes, root = split.parts[part], split.classes, Path(split.data_root)
        source = f"{data} ({part} part)"
    else:
        ds = scan_dataset(data, group_mode="auto")
        items, classes, root, source = ds.items, ds.classes, ds.root, str(data)
    lookup = {lbl.casefold(): i for i, lbl in enumerate(manifest.labels)}
    to_model = [lookup.get(c.casefold(), -1) for c in classes]
    x, bad = load_images(root, [i.path for i in items], manifest.preprocessing)
    bad_paths = {p for p, _ in bad}
    kept = [i for i in items if i.path not in bad_paths]
    if not kept:
        raise DataError(f"none of the {len(items)} images in {source} could be read")
    y = np.array([to_model[i.label] for i in kept], dtype=np.int64)
    unknown: dict[str, int] = {}
    for i in kept:
        if to_model[i.label] < 0:
            unknown[classes[i.label]] = unknown.get(classes[i.label], 0) + 1
    return LabelledData(x, y, np.array([i.group for i in kept]), source, sorted(bad), unknown)


def runtime_installed(runtime: str) -> bool:
    spec = RUNTIMES.get(runtime)
    return spec is not None and spec.available()


def _missing_runtime(runtime: str) -> str:
    """Which runtime is missing and the extra that installs it (Keras on a device install: the train
    extra, so the reference row is skipped there)."""
    from edgekit.cli_options import EXTRA_OF_MODULE

    spec = RUNTIMES.get(runtime)
    extra = EXTRA_OF_MODULE.get(spec.modules[0].split(".")[0]) if spec is not None else None
    hint = f" (the {extra} extra: pip install 'edgekit[{extra}]')" if extra else ""
    return f"runtime {runtime!r} is not installed{hint}"


def plan_rows(manifest: Manifest, bundle: Path, formats: list[str] | None, threads: list[int],
              profile: DeviceProfile) -> list[dict[str, Any]]:
    """The rows to measure, Keras first; rows that cannot run get their status now."""
    names = list(dict.fromkeys(["keras", *(formats or manifest.artifacts)]))
    rows = []
    for fmt in names:
        art = manifest.artifacts.get(fmt)
        base: dict[str, Any] = {"format": fmt, "runtime": art.runtime if art else "", "profile": profile.name,
                                "status": "ok", "message": ""}
        if art is None:
            base.update(status="not in bundle", message=f"the bundle has no {fmt} artifact")
        else:
            path = bundle / art.path
            base["file"] = art.path
            if path.is_file():
                base["size_mb"] = round(path.stat().st_size / 1e6, 4)
            if art.status == "export_failed":
                reason = art.validation.get("reason") or art.validation.get("error") or "export failed"
                base.update(status="export failed", message=f"export: {reason}")
            elif not path.is_file():
                base.update(status="missing artifact", message=f"{art.path} is not in the bundle folder")
            elif not runtime_installed(art.runtime):
                base.update(status="runtime missing", message=_missing_runtime(art.runtime))
            elif art.status != "ok":
                # still measured (speed and accuracy of a failed int8 file are worth seeing), but marked
                reason = art.validation.get("reason") or art.status
                base.update(status=STATUS_LABELS.get(art.status, art.status), message=f"export: {reason}")
        for t in threads:
            rows.append({**base, "threads": t})
    return rows


def _run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    spec_path = Path(spec["result"]).with_suffix(".spec.json")
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        proc = subprocess.run([sys.executable, "-m", "edgekit.benchmarks.worker", str(spec_path)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "message": f"timed out after {timeout:.0f} s"}
    result_path = Path(spec["result"])
    if result_path.is_file():
        return json.loads(result_path.read_text())
    tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return {"status": "failed", "message": f"worker died: {tail}"}


def default_data(manifest: Manifest, bundle: Path) -> Path:
    """The split file the model was trained from (its test part is never seen in training)."""
    from edgekit.paths import resolve_recorded

    split_file = manifest.training.get("split_file")
    path = resolve_recorded(split_file, bundle) if split_file else None
    if path is None or not path.is_file():
        raise DataError("no labelled data: pass --dataset (a split file or a folder-per-class dataset);"
                        " the manifest names no split file that exists here")
    return path


def run_bench(
    bundle: str | os.PathLike,
    data: str | os.PathLike | None,
    threads: list[int] | None = None,
    formats: list[str] | None = None,
    profile: str = "host",
    part: str = "test",
    batch: int = 32,
    runs: int = 100,
    warmup: int = 10,
    timeout: float = 600.0,
    n_boot: int = 1000,
    log: Log | None = None,
) -> dict[str, Any]:
    """Measure every format of ``bundle``; returns ``{"meta", "rows", "details"}`` where ``rows`` are
    flat (CSV-ready) and ``details`` holds per-row ROC curves and per-patient results."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    trust = bundle_trust(bundle)
    log(f"trust: {trust['line']}")
    prof = get_profile(profile)
    cores, warning = profile_cores(prof)
    if warning:
        log(f"warning: {warning}")
    threads = threads or list(prof.threads)
    labelled = load_labelled(data if data is not None else default_data(manifest, bundle), manifest, part)
    for path, reason in labelled.skipped:
        log(f"skipped {path}: {reason}")
    for cls, count in labelled.unknown.items():
        log(f"warning: data class {cls!r} ({count} images) is not a label of the model "
            f"({', '.join(manifest.labels)}); left out of accuracy")
    n_known = int((labelled.y >= 0).sum())
    if n_known == 0:
        log("warning: no data class matches a model label: speed is measured, accuracy is not")
    log(f"data: {len(labelled.y)} images from {labelled.source}; "
        f"{len(set(labelled.groups.tolist()))} groups; profile {prof.name}: {prof.description}, "
        f"cores {cores}")

    rows = plan_rows(manifest, bundle, formats, threads, prof)
    details: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        images_path = Path(tmp) / "images.npy"
        np.save(images_path, labelled.images)
        probs: dict[tuple[str, int], np.ndarray] = {}
        for i, row in enumerate(rows):
            key = f"{row['format']}@{row['threads']}"
            if row["status"] not in ("ok", "failed validation"):
                log(f"{key}: {row['status']}: {row['message']}")
                continue
            spec = {
                "bundle": str(bundle.resolve()), "format": row["format"], "runtime": row["runtime"],
                "threads": row["threads"], "cores": cores, "images": str(images_path), "batch": batch,
                "runs": runs, "warmup": warmup, "result": str(Path(tmp) / f"row{i}.json"),
                "probs": str(Path(tmp) / f"row{i}.npy"),
            }
            t = time.perf_counter()
            result = _run_worker(spec, timeout)
            ok = result.get("status") == "ok"
            if row["status"] != "ok":  # measured or not, the row keeps the artifact's own verdict
                result["message"] = row["message"] if ok else f"{row['message']}; {result.get('message', '')}"
                result["status"] = row["status"]
            row.update(result)
            if ok:
                probs[(row["format"], row["threads"])] = np.load(spec["probs"])
                log(f"{key}: p50 {row['latency_p50_ms']:.2f} ms, {row['throughput_ips']:.0f} img/s, "
                    f"peak RSS {row['peak_rss_mb']:.0f} MB ({time.perf_counter() - t:.1f} s)")
            else:
                log(f"{key}: {row['status']}: {row['message']}")
    keras_ref = next((p for (fmt, _), p in probs.items() if fmt == "keras"), None)
    for row in rows:
        p = probs.get((row["format"], row["threads"]))
        if p is None:
            continue
        # Keras is the reference: its own row has nothing to agree with
        ref = None if row["format"] == "keras" else probs.get(("keras", row["threads"]), keras_ref)
        acc = row_accuracy(p, labelled.y, labelled.groups, manifest, reference=ref, n_boot=n_boot)
        row.update(flat_accuracy(acc))
        details[f"{row['format']}@{row['threads']}"] = {
            "roc": acc.get("roc"), "cell": acc.get("cell"), "patient": acc.get("patient"),
        }
    meta = {
        "bundle": str(bundle), "model": manifest.name, "labels": manifest.labels,
        "positive_label": manifest.decision.positive_label, "cutoff": manifest.decision.cutoff,
        "patient_rule": vars(manifest.decision.rule), "data": labelled.source, "images": int(len(labelled.y)),
        "images_with_known_label": n_known, "groups": int(len(set(labelled.groups.tolist()))),
        "unknown_classes": labelled.unknown, "skipped": [list(s) for s in labelled.skipped],
        "profile": {**vars(prof), "threads": list(prof.threads), "cores_used": cores, "warning": warning},
        "host": host_description(), "batch": batch, "runs": runs, "warmup": warmup,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "trust": trust,
    }
    return {"meta": meta, "rows": rows, "details": details}


def bundle_trust(bundle: Path) -> dict[str, Any]:
    """Whether the benchmarked bundle is trusted, said once (a tampered or unsigned bundle is measured,
    as a development bundle is, but never without saying so); a revoked or rolled-back one is refused."""
    from edgekit.errors import SignatureError
    from edgekit.manifest import read_manifest_data
    from edgekit.signing import check_bundle

    trust = check_bundle(bundle, read_manifest_data(bundle))
    if trust.refused:
        raise SignatureError(f"refusing to benchmark {bundle}: {trust.reason}")
    line = trust.reason if trust.trusted else f"UNTRUSTED bundle (measured anyway): {trust.reason}"
    return {"trusted": trust.trusted, "reason": trust.reason, "line": line}
