"""Device profiles, board detection, and comparison with per-board reference results.

A profile pins the benchmark worker to a number of this machine's cores (``os.sched_setaffinity``)
and picks the thread counts to try. That is an approximation of a Raspberry Pi or a phone: the
same x86 cores, fewer of them. It shows how a format scales with cores, not how fast an ARM board
is; for that, run ``edgekit bench`` on the board itself and compare with ``reference/<board>.csv``.
Standard library only.
"""

from __future__ import annotations

import csv
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
DEVICE_TREE_ENV = "EDGEKIT_DEVICE_TREE_MODEL"  # another file to read the board from (tests, containers)
REFERENCE_FIELDS = (
    "model", "format", "threads", "latency_p50_ms", "throughput_ips", "peak_rss_mb", "accuracy",
    "tolerance", "accuracy_tolerance",
)
# (metric, larger is better); timings/memory are compared relatively, accuracy absolutely
COMPARED = (("latency_p50_ms", False), ("throughput_ips", True), ("peak_rss_mb", False), ("accuracy", True))


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    cores: int | None  # None: every core this process may use
    threads: tuple[int, ...]
    description: str


PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile("host", None, (1, 2, 4), "this machine, all its cores"),
        DeviceProfile("rpi4", 4, (1, 2, 4), "Raspberry Pi 4 approximation: 4 cores (Pi 4: 4x Cortex-A72)"),
        DeviceProfile("rpi5", 4, (1, 2, 4), "Raspberry Pi 5 approximation: 4 cores (Pi 5: 4x Cortex-A76)"),
        DeviceProfile("phone", 2, (1, 2), "phone approximation: 2 cores (the big cores of a mid-range SoC)"),
    )
}


def get_profile(name: str) -> DeviceProfile:
    """A profile by name; ``auto`` is the detected board's profile, else ``host``."""
    if name == "auto":
        name = detect_board() or "host"
    try:
        return PROFILES[name]
    except KeyError:
        choices = ", ".join(PROFILES)
        raise EdgekitError(f"unknown device profile {name!r}; use auto or one of {choices}") from None


def available_cores() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def profile_cores(profile: DeviceProfile) -> tuple[list[int], str | None]:
    """The cores to pin workers to, and a warning when this machine has fewer than the profile wants."""
    cores = available_cores()
    if profile.cores is None:
        return cores, None
    if profile.cores > len(cores):
        return cores, (
            f"profile {profile.name} wants {profile.cores} cores but only {len(cores)} are available;"
            f" using {len(cores)}"
        )
    return cores[: profile.cores], None


def pin_to_cores(cores: list[int]) -> bool:
    """Pin this process (and the threads it starts later) to ``cores``; False where unsupported."""
    if not hasattr(os, "sched_setaffinity") or not cores:
        return False
    os.sched_setaffinity(0, cores)
    return True


def device_tree_model() -> Path:
    """Where the board's model string is read: ``$EDGEKIT_DEVICE_TREE_MODEL`` or the device tree."""
    return Path(os.environ.get(DEVICE_TREE_ENV) or DEVICE_TREE_MODEL)


def board_text(model_file: Path | None = None) -> str | None:
    """The board's model string, e.g. ``Raspberry Pi 4 Model B Rev 1.4``; None off a device-tree board."""
    from edgekit.safefile import NotRegularFile, read_regular_bytes

    try:  # bounded, regular files only: $EDGEKIT_DEVICE_TREE_MODEL set to /dev/zero or a FIFO
        raw = read_regular_bytes(model_file or device_tree_model(), 4096, "device tree model")
    except (NotRegularFile, OSError):
        return None
    return raw.decode("ascii", "replace").strip("\x00 \n")


def detect_board(model_file: Path | None = None) -> str | None:
    """``rpi4`` / ``rpi5`` from the device tree on a Raspberry Pi, else None."""
    text = board_text(model_file)
    if text is None:
        return None
    for board, marker in (("rpi5", "Raspberry Pi 5"), ("rpi4", "Raspberry Pi 4")):
        if marker in text:
            return board
    return None


def host_description() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "machine": platform.machine(),
        "cpu": cpu,
        "cores_available": len(available_cores()),
        "board": board_text(),
        "board_profile": detect_board(),
        "python": platform.python_version(),
    }


def reference_path(board: str) -> Path:
    return REFERENCE_DIR / f"{board}.csv"


def load_reference(source: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a reference CSV (a path, or a board name under ``reference/``); ``#`` lines are comments."""
    path = Path(source)
    if not path.suffix:
        path = reference_path(str(source))
    if not path.is_file():
        raise EdgekitError(f"no reference file {path}")
    from edgekit.safefile import read_regular_bytes

    try:
        text = read_regular_bytes(path, 16 << 20, "reference file", EdgekitError).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EdgekitError(f"reference file {path} is not a UTF-8 CSV ({exc.reason} at byte {exc.start})"
                           ) from exc
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    try:
        rows = list(csv.DictReader(lines))
    except csv.Error as exc:
        raise EdgekitError(f"reference file {path} is not a CSV: {exc}") from exc
    for r in rows:
        missing = [f for f in ("format", "threads") if not r.get(f)]
        if missing:
            raise EdgekitError(f"reference file {path} has a row without {', '.join(missing)}")
        if not str(r["threads"]).strip().isdigit():
            raise EdgekitError(f"reference file {path} has a row whose threads is {r['threads']!r},"
                               " not a count")
    return rows


def _num(value: Any) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def compare_to_reference(
    rows: list[dict[str, Any]], reference: list[dict[str, Any]], model: str | None = None,
    tolerance: float = 0.25, accuracy_tolerance: float = 0.02,
) -> list[dict[str, Any]]:
    """One verdict per (row, metric) that has a reference value: ``within`` the band, ``better``
    or ``worse``. Latency, throughput and memory bands are relative (``tolerance`` = ±25% unless the
    reference row sets its own); accuracy is absolute (± points)."""
    out = []
    for row in rows:
        if row.get("status") != "ok":
            continue
        for ref in reference:
            if ref["format"] != row["format"] or int(ref["threads"]) != int(row["threads"]):
                continue
            if ref.get("model") not in (None, "", "*", model):
                continue
            tol = _num(ref.get("tolerance")) or tolerance
            acc_tol = _num(ref.get("accuracy_tolerance")) or accuracy_tolerance
            for metric, higher_better in COMPARED:
                expected, measured = _num(ref.get(metric)), _num(row.get(metric))
                if expected is None or measured is None:
                    continue
                band = acc_tol if metric == "accuracy" else abs(expected) * tol
                delta = measured - expected
                if abs(delta) <= band:
                    verdict = "within"
                else:
                    verdict = "better" if (delta > 0) == higher_better else "worse"
                out.append({
                    "format": row["format"], "threads": int(row["threads"]), "metric": metric,
                    "measured": measured, "reference": expected, "band": band, "verdict": verdict,
                })
    return out


def reference_rows(rows: list[dict[str, Any]], model: str, tolerance: float = 0.25,
                   accuracy_tolerance: float = 0.02) -> list[dict[str, Any]]:
    """Reference rows from this run's ok rows (to commit after a run on a real board)."""
    return [
        {
            "model": model, "format": r["format"], "threads": r["threads"],
            **{m: r.get(m) for m, _ in COMPARED},
            "tolerance": tolerance, "accuracy_tolerance": accuracy_tolerance,
        }
        for r in rows if r.get("status") == "ok"
    ]
