# pyright: basic
"""Validation of a manifest's parsed JSON before anything in it is used.

Checks types, shapes and ranges of every field edgekit reads, that the label count agrees with the
models' declared outputs, and that artifact paths are plain relative paths inside the bundle folder.
Unknown keys are allowed (newer fields; the signature covers them all). Each problem is one line
naming the field, e.g. ``manifest: preprocessing.input_size must be [height, width] ...``.
Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from edgekit.errors import BundleError

MAX_INPUT_SIDE = 4096
_HEX64 = re.compile(r"[0-9a-f]{64}")
# a release version: dotted integers (edgekit sign stamps the UTC date, e.g. 2026.12.05)
RELEASE_PATTERN = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6}){0,3}")
# What an artifact's output tensor holds: class probabilities, or the logits (the input of the
# model's final activation, which the device then applies in float after dequantizing: an int8
# probability stops at 255/256, an int8 logit does not). device/activation.py implements them.
OUTPUTS = ("probabilities", "logits")
ACTIVATIONS = ("softmax", "sigmoid")


def _fail(field: str, msg: str) -> BundleError:
    return BundleError(f"malformed manifest: {field} {msg}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and v == v and abs(v) != float("inf")


def _obj(d: dict[str, Any], key: str, field: str) -> dict[str, Any]:
    v = d.get(key, {})
    if not isinstance(v, dict):
        raise _fail(field, f"must be an object, not {type(v).__name__}")
    return v


def _str(d: dict[str, Any], key: str, field: str, optional: bool = True) -> None:
    if key not in d and optional:
        return
    v = d.get(key)
    if not (isinstance(v, str) or (optional and v is None)):
        raise _fail(field, f"must be a string, not {type(v).__name__}")


def _prob(d: dict[str, Any], key: str, field: str) -> None:
    if key in d and d[key] is not None and not (_is_num(d[key]) and 0.0 <= d[key] <= 1.0):
        raise _fail(field, f"must be a number in [0, 1], not {d[key]!r}")


def check_artifact_path(rel: Any, field: str = "artifact path") -> str:
    """A relative path that stays inside the bundle folder (no ``..``, no absolute path, no drive)."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel:
        raise _fail(field, f"must be a plain relative path, not {rel!r}")
    p = PurePosixPath(rel)
    if not p.parts:  # "." or "./": the folder itself
        raise _fail(field, f"must name a file in the bundle folder, not {rel!r}")
    if p.is_absolute() or ".." in p.parts or ":" in p.parts[0] or rel.startswith("~"):
        raise _fail(field, f"{rel!r} points outside the bundle folder")
    return rel


def _tensors(v: Any, field: str) -> Sequence[dict[str, Any]]:
    if not isinstance(v, (list, tuple)):
        raise _fail(field, f"must be a list, not {type(v).__name__}")
    for i, t in enumerate(v):
        f = f"{field}[{i}]"
        if not isinstance(t, dict):
            raise _fail(f, "must be an object")
        _str(t, "name", f"{f}.name", optional=False)
        _str(t, "dtype", f"{f}.dtype", optional=False)
        shape = t.get("shape")
        if not isinstance(shape, (list, tuple)) or not all(_is_int(s) and s >= -1 for s in shape):
            raise _fail(f"{f}.shape", f"must be a list of integers (-1 for any), not {shape!r}")
        if t.get("scale") is not None and not _is_num(t["scale"]):
            raise _fail(f"{f}.scale", f"must be a number or null, not {t['scale']!r}")
        if t.get("zero_point") is not None and not _is_int(t["zero_point"]):
            raise _fail(f"{f}.zero_point", f"must be an integer or null, not {t['zero_point']!r}")
    return v


def _output(a: dict[str, Any], f: str) -> None:
    """``output`` (probabilities, the default, or logits) and, with logits, the ``activation``."""
    output, activation = a.get("output", "probabilities"), a.get("activation")
    if output not in OUTPUTS:
        raise _fail(f"{f}.output", f"must be one of {', '.join(OUTPUTS)}, not {output!r}")
    if output == "logits" and activation not in ACTIVATIONS:
        raise _fail(f"{f}.activation",
                    f"must be one of {', '.join(ACTIVATIONS)} for logits, not {activation!r}")
    if output == "probabilities" and activation is not None:
        raise _fail(f"{f}.activation", f"must be absent for an output of probabilities, not {activation!r}")


def _artifact(key: str, a: Any, n_labels: int) -> None:
    f = f"artifacts.{key}"
    if not isinstance(a, dict):
        raise _fail(f, f"must be an object, not {type(a).__name__}")
    for k in ("format", "path", "sha256", "runtime"):
        _str(a, k, f"{f}.{k}", optional=False)
    if a["format"] != key:
        raise _fail(f"{f}.format", f"is {a['format']!r} but the entry is named {key!r}")
    check_artifact_path(a["path"], f"{f}.path")
    if not (_HEX64.fullmatch(a["sha256"]) or (a["sha256"] == "" and a.get("status") == "export_failed")):
        raise _fail(f"{f}.sha256", "must be 64 lowercase hex digits")
    if not _is_int(a.get("bytes")) or a["bytes"] < 0:
        raise _fail(f"{f}.bytes", f"must be a non-negative integer, not {a.get('bytes')!r}")
    extra = a.get("extra_files", {})
    if not isinstance(extra, dict):
        raise _fail(f"{f}.extra_files", "must be an object (path -> sha256)")
    for rel, sha in extra.items():
        check_artifact_path(rel, f"{f}.extra_files")
        if not (isinstance(sha, str) and _HEX64.fullmatch(sha)):
            raise _fail(f"{f}.extra_files", f"sha256 of {rel!r} must be 64 lowercase hex digits")
    if not isinstance(a.get("quantization", {}), dict):
        raise _fail(f"{f}.quantization", "must be an object")
    _str(a, "status", f"{f}.status")
    if not isinstance(a.get("validation", {}), dict):
        raise _fail(f"{f}.validation", "must be an object")
    _output(a, f)
    _tensors(a.get("inputs", []), f"{f}.inputs")
    outputs = _tensors(a.get("outputs", []), f"{f}.outputs")
    n_out = outputs[0]["shape"][-1] if outputs and outputs[0]["shape"] else -1
    if n_out not in (-1, n_labels) and not (n_out == 1 and n_labels == 2):  # 1: a sigmoid for two labels
        raise _fail(f"{f}.outputs", f"declare {n_out} classes but there are {n_labels} labels")


def validate_manifest_data(d: Any) -> None:
    """Raise :class:`BundleError` with the first problem found in a parsed manifest."""
    if not isinstance(d, dict):
        raise BundleError(f"malformed manifest: must be a JSON object, not {type(d).__name__}")
    labels = _labels(d)
    for k in ("positive_label", "name", "schema"):
        _str(d, k, k)
    rel = d.get("release")
    if rel is not None and not (isinstance(rel, str) and RELEASE_PATTERN.fullmatch(rel)):
        raise _fail("release", f"must be dotted integers such as 2026.12.05, not {rel!r}")
    _preprocessing(_obj(d, "preprocessing", "preprocessing"))
    thr = _obj(d, "thresholds", "thresholds")
    for k in ("positive", "negative", "cutoff"):
        _prob(thr, k, f"thresholds.{k}")
    _patient_rule(_obj(d, "patient_rule", "patient_rule"))
    for k in ("training", "evaluation", "versions"):
        _obj(d, k, k)
    _focus(d.get("focus"))
    _image_sizes(d.get("image_sizes"))

    arts = _obj(d, "artifacts", "artifacts")
    for key, a in arts.items():
        _artifact(key, a, len(labels))


def _focus(f: Any) -> None:
    """``focus`` (a site bundle's focus rule, or absent/null): a floor in (0, 1), marks a boolean,
    radius (the site's cell radius, px) and reference (the cell radius fields are judged at, px) numbers
    >= 0."""
    if f is None:
        return
    if not isinstance(f, dict):
        raise _fail("focus", f"must be an object, not {type(f).__name__}")
    if not (_is_num(f.get("floor")) and 0 < f["floor"] < 1):
        raise _fail("focus.floor", f"must be a number in (0, 1), not {f.get('floor')!r}")
    if "marks" in f and not isinstance(f["marks"], bool):
        raise _fail("focus.marks", f"must be true or false, not {f['marks']!r}")
    _str(f, "source", "focus.source")
    for key in ("radius", "reference"):
        if key in f and not (_is_num(f[key]) and 0 <= f[key] < 1e4):
            raise _fail(f"focus.{key}", f"must be a number in [0, 10000), not {f[key]!r}")


def _image_sizes(v: Any) -> None:
    """``image_sizes`` (absent/null, or an object): min_side, max_side, max_aspect numbers, n an
    integer, source a string; their order is :class:`edgekit.manifest.ImageSizes`'s to check."""
    if v is None:
        return
    if not isinstance(v, dict):
        raise _fail("image_sizes", f"must be an object, not {type(v).__name__}")
    unknown = set(v) - {"min_side", "max_side", "max_aspect", "n", "source"}
    if unknown:
        raise _fail("image_sizes", f"has unknown key(s) {sorted(unknown)}")
    for k in ("min_side", "max_side", "max_aspect"):
        if not (_is_num(v.get(k)) and 0 < v[k] <= 1e6):
            raise _fail(f"image_sizes.{k}", f"must be a number in (0, 1e6], not {v.get(k)!r}")
    if "n" in v and not (_is_int(v["n"]) and v["n"] >= 0):
        raise _fail("image_sizes.n", f"must be a non-negative integer, not {v['n']!r}")
    _str(v, "source", "image_sizes.source")


def _labels(d: dict[str, Any]) -> list[str]:
    """``labels``: at least two distinct non-empty names, each one printable line (a newline in a
    label would forge a row of every table that prints it)."""
    labels = d.get("labels")
    if not isinstance(labels, (list, tuple)) or not all(isinstance(x, str) and x.strip() and x.isprintable()
                                                         for x in labels):
        raise _fail("labels", "must be a list of non-empty strings, each one printable line")
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise _fail("labels", f"must hold at least two distinct names, not {labels!r}")
    return list(labels)


def _preprocessing(pre: dict[str, Any]) -> None:
    """``preprocessing``: input size and range, channels, and its string fields."""
    size = pre.get("input_size", [64, 64])
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(_is_int(s) and 0 < s <= MAX_INPUT_SIDE for s in size)):
        raise _fail("preprocessing.input_size", f"must be [height, width] in 1..{MAX_INPUT_SIDE}, "
                                                f"not {size!r}")
    if "channels" in pre and not _is_int(pre["channels"]):
        raise _fail("preprocessing.channels", f"must be an integer, not {pre['channels']!r}")
    for k in ("color_order", "resize", "scaling"):
        _str(pre, k, f"preprocessing.{k}")
    rng = pre.get("input_range", [0.0, 255.0])
    if rng is not None and not (isinstance(rng, (list, tuple)) and len(rng) == 2
                                and all(_is_num(v) for v in rng)):
        raise _fail("preprocessing.input_range", f"must be [low, high], not {rng!r}")


def _patient_rule(rule: dict[str, Any]) -> None:
    """``patient_rule``: fractions in [0, 1], its string fields, a non-negative ``stop_cells``."""
    for k in ("positive_fraction", "negative_fraction"):
        _prob(rule, k, f"patient_rule.{k}")
    for k in ("positive_evidence", "refused_crops"):
        _str(rule, k, f"patient_rule.{k}")
    if "stop_cells" in rule and not (_is_int(rule["stop_cells"]) and rule["stop_cells"] >= 0):
        raise _fail("patient_rule.stop_cells", f"must be a non-negative integer, not {rule['stop_cells']!r}")
