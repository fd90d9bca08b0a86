# pyright: basic
"""Native-crash guard: the first time a model file (by sha256) is seen, load it and run one input in
a child process. A model that crashes the runtime (abort, segfault) then ends the child, not the
command, and the user gets one line instead of exit 134 and silence. Models that passed are
remembered in ``$EDGEKIT_CACHE`` (default ``$XDG_CACHE_HOME/edgekit``, ``~/.cache/edgekit``), so the
cost (about a second: a Python start plus the runtime import) is paid once per model and runtime.

Run as ``python -m edgekit.device.probe RUNTIME PATH [--stdin]`` (what the parent does; with
``--stdin`` the model's verified bytes come on standard input, so the child checks exactly what the
parent will load).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from edgekit.errors import BundleError

PROBE_TIMEOUT_S = 120.0


def cache_dir() -> Path:
    env = os.environ.get("EDGEKIT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgekit"


def _marker(sha256: str, runtime: str) -> Path:
    return cache_dir() / "probed" / f"{sha256}.{runtime}"


def _tail(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "XNNPACK delegate" not in ln]
    return lines[-1][:300] if lines else ""


def probe_model(runtime: str, path: str | os.PathLike, sha256: str, content: bytes | None = None) -> None:
    """Raise :class:`BundleError` when loading ``path`` (or its verified bytes ``content``) and running
    one input crashes or fails in a child process; return quietly when it works (or worked before for
    this sha256 and runtime)."""
    marker = _marker(sha256, runtime)
    if marker.is_file():
        return
    import signal
    import subprocess  # only for a model not seen before (cold start)

    import edgekit

    env = dict(os.environ)
    root = str(Path(edgekit.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    try:
        args = [sys.executable, "-m", "edgekit.device.probe", runtime, str(path)]
        proc = subprocess.run(
            args + (["--stdin"] if content else []),
            input=content or b"", capture_output=True, timeout=PROBE_TIMEOUT_S, env=env,
        )
    except subprocess.TimeoutExpired as exc:
        raise BundleError(f"{runtime} did not finish loading {path} within {PROBE_TIMEOUT_S:.0f} s; "
                          "refusing to use it") from exc
    except OSError as exc:
        raise BundleError(f"cannot start the model check for {path}: {exc}") from exc
    err = proc.stderr.decode(errors="replace")
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        detail = _tail(err)
        raise BundleError(f"the {runtime} runtime crashed ({name}) loading {path}: the model file is corrupt "
                          f"or not supported by this runtime version{': ' + detail if detail else ''}")
    if proc.returncode != 0:
        detail = _tail(err) or _tail(proc.stdout.decode(errors="replace")) or f"exit {proc.returncode}"
        raise BundleError(detail.removeprefix("error: "))
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:
        pass  # a read-only cache only costs a probe per load


def _child(runtime: str, path: str, content: bytes | None = None) -> int:
    import numpy as np

    from edgekit.device.backends import open_backend

    try:
        backend = open_backend(runtime, path, 1, content)
        spec = backend.inputs[0]
        shape = [1 if d in (-1, 0) else int(d) for d in spec.shape]
        backend.run(np.zeros(shape, np.uint8))
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - any runtime failure is reported as one line
        print(f"error: {runtime} cannot run {path}: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2], sys.stdin.buffer.read() if "--stdin" in sys.argv[3:] else None))
