"""The emulated Raspberry Pi check: edgekit's device path on arm64, compared with this x86 machine.

    python benchmarks/pi_emulation.py [--cpus cortex-a72,cortex-a76] [--build] [-o DIR]

An arm64 Debian bookworm userland (Python 3.11, glibc 2.36: what Raspberry Pi OS Bookworm ships) is
built with ``debootstrap`` and run under ``qemu-user-static`` through binfmt_misc, in a private
mount namespace (``unshare``) so nothing stays mounted. The checkout is copied in, the ``device``
extra installed from wheels downloaded on this host for aarch64 (so pip in the rootfs needs no
network), and then, for each emulated CPU (``cortex-a72`` = Pi 4, ``cortex-a76`` = Pi 5):

- with ``--suite``, the device test suite (every test that does not need TensorFlow) under pytest;
- ``classify`` (int8 TFLite and int8 ONNX), ``field``, ``screen --fields`` and ``bench`` on the
  committed sample cells and fields, the same commands as on this machine.

Every output is compared with the x86 run: TFLite probabilities must be identical, ONNX within
``ONNX_BOUND`` (onnxruntime's arm64 int8 kernels round differently), and every decision equal.
A run that merely finishes proves nothing: qemu 7.2's default CPU advertises SME and LiteRT's int8
results then come out wrong with exit 0, which is why ``QEMU_CPU`` is always set, and why a
Raspberry Pi 4 ``/proc/cpuinfo`` is bind-mounted (qemu 7.2 shows the host's x86 one, on which the
runtimes' CPU detection crashes). Emulated timings are not Pi timings.

When it runs (the choice CI lives with): the emulated device test suite takes over 30 minutes per
CPU model on a 2-core machine, so it runs only with ``--suite`` or ``EDGEKIT_PI_SUITE=1``; the
probe comparison (about 10 minutes per CPU model) always runs. Building the rootfs takes 11-15
minutes, too long for every CI run, so the check runs when a cached rootfs exists
(``$EDGEKIT_PI_CACHE``, default ``~/.cache/edgekit-pi``) or when ``EDGEKIT_PI_CHECK=1`` (or
``--build``) allows building it;
``EDGEKIT_PI_CHECK=0`` skips it. A machine that cannot emulate (not Linux x86_64, not root, no
qemu-user-static/binfmt_misc, no debootstrap to build with) is skipped with the reason, exit 0:
the lack of qemu never fails CI; a parity or test failure does (exit 1).

Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("EDGEKIT_PI_CACHE") or Path.home() / ".cache" / "edgekit-pi")
SUITE = "bookworm"
MIRROR = os.environ.get("EDGEKIT_PI_MIRROR", "http://deb.debian.org/debian")
VENV = "/opt/edgekit-venv"  # inside the rootfs
QEMU = Path("/usr/bin/qemu-aarch64-static")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
CPUS = {"cortex-a72": "Raspberry Pi 4 Model B Rev 1.5", "cortex-a76": "Raspberry Pi 5 Model B Rev 1.0"}


def output_bounds() -> tuple[float, float]:
    """(TFLite, ONNX) max |Δp| allowed between x86 and arm64 on the default bundle: LiteRT int8 on
    arm64 (NEON kernels) may round the uint8 output one step away from x86's (measured when the
    output held probabilities: 1/256 on 2 of 12 crops, QEMU cortex-a72/a76, LiteRT 2.3.0), and
    onnxruntime's arm64 int8 kernels up to four (4/255). One step in probability is
    ``edgekit.device.activation.output_step`` of the artifact (larger when it outputs logits);
    never below the measured 1/255 and 4/255. Decisions must agree whatever the bound."""
    from edgekit.device.activation import output_step
    from edgekit.device.runtime import default_bundle_dir
    from edgekit.errors import BundleError
    from edgekit.manifest import load_manifest

    try:
        arts = load_manifest(default_bundle_dir()).artifacts
    except BundleError:
        arts = {}
    tflite = output_step(arts["tflite_int8"]) if "tflite_int8" in arts else 0.0
    onnx = output_step(arts["onnx_int8"]) if "onnx_int8" in arts else 0.0
    return max(1 / 255, tflite), max(4 / 255, 4 * onnx)


TFLITE_BOUND, ONNX_BOUND = output_bounds()
SUITE_TIMEOUT = 1800
PI4_CPUINFO = (
    "".join(
        f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
        "CPU implementer\t: 0x41\n"
        f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n"
        for i in range(4)
    )
    + "Hardware\t: BCM2835\nRevision\t: d03115\nModel\t\t: Raspberry Pi 4 Model B Rev 1.5\n"
)
# pip matches --platform tags literally: list every glibc up to bookworm's 2.36
WHEEL_PLATFORMS = (*(f"manylinux_2_{minor}_aarch64" for minor in range(36, 16, -1)), "manylinux2014_aarch64")
COPY_IGNORE = (
    ".git",
    ".venv",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".ruff_cache",
    "runs",
    "*.egg-info",
    "build",
    "dist",
)


class Skip(Exception):
    """This machine cannot run the check; the message says why."""


def _shown(path: Path) -> str:
    """``path`` with the home folder as ``~``."""
    home = Path.home()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)


def log(msg: str) -> None:
    print(f"[pi-emulation] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- setup


def emulation_problem() -> str | None:
    """Why this machine cannot emulate an arm64 userland, or None when it can."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return f"needs a Linux x86_64 host (this is {platform.system()} {platform.machine()})"
    if os.geteuid() != 0:
        return "needs root (chroot, mount namespaces, debootstrap)"
    for tool in ("unshare", "chroot", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not QEMU.is_file():
        return "qemu-user-static is not installed (apt-get install qemu-user-static binfmt-support)"
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True)
    entry = BINFMT / "qemu-aarch64"
    if not entry.is_file():
        if shutil.which("update-binfmts"):
            subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True)
        if not entry.is_file():
            return "binfmt_misc has no qemu-aarch64 entry (a container may forbid mounting binfmt_misc)"
    text = entry.read_text()
    if not text.startswith("enabled"):
        return "the qemu-aarch64 binfmt entry is disabled"
    if "F" not in text.split("flags:")[-1].split("\n")[0]:
        return "the qemu-aarch64 binfmt entry lacks the F flag (needed to run inside a chroot)"
    return None


def qemu_version() -> str:
    out = subprocess.run([str(QEMU), "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "unknown"


def sh_in_rootfs(
    rootfs: Path,
    script: str,
    env: dict[str, str] | None = None,
    timeout: float = 3600,
    cpuinfo: Path | None = None,
    binds: tuple[tuple[Path, str], ...] = (),
) -> subprocess.CompletedProcess:
    """Run ``script`` with /bin/sh inside the rootfs, in a private mount namespace: /proc, /sys,
    /dev and the Pi cpuinfo are mounted for the duration only."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        **(env or {}),
    }
    # /sys matters: without it the runtimes' cpuinfo cannot list the CPUs, LiteRT silently drops
    # XNNPACK (0/52 operators delegated) and its int8 results move by up to 14/256 (measured)
    mounts = [
        f"mount -t proc proc {rootfs}/proc",
        f"mount -t sysfs sysfs {rootfs}/sys",
        f"mount --rbind /dev {rootfs}/dev",
    ]
    if cpuinfo is not None:
        mounts.append(f"mount --bind {cpuinfo} {rootfs}/proc/cpuinfo")
    for src, dest in binds:
        mounts.append(f"mkdir -p {rootfs}{dest} && mount --bind {src} {rootfs}{dest}")
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    outer = " && ".join(
        [*mounts, f"exec chroot {rootfs} /usr/bin/env -i {exports} /bin/sh -c {shlex.quote(script)}"]
    )
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", outer],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ensure_rootfs(cache: Path, allow_build: bool) -> Path:
    rootfs = cache / "rootfs"
    if (rootfs / "usr/bin/python3").exists():
        return rootfs
    if not allow_build:
        raise Skip(
            f"no cached arm64 rootfs at {rootfs}; set EDGEKIT_PI_CHECK=1 (or pass --build) to build "
            "one (11-15 min, ~700 MB)"
        )
    if shutil.which("debootstrap") is None:
        raise Skip("debootstrap is not installed (apt-get install debootstrap), so no rootfs can be built")
    building = cache / "rootfs.building"
    shutil.rmtree(building, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    log(f"building an arm64 Debian {SUITE} rootfs in {building} (11-15 min)")
    t = time.time()
    cmd = [
        "debootstrap",
        "--arch=arm64",
        "--variant=minbase",
        "--include=python3,python3-venv,python3-pip,ca-certificates",
        SUITE,
        str(building),
        MIRROR,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise RuntimeError(f"debootstrap failed:\n{tail}")
    building.rename(rootfs)
    log(f"rootfs built in {time.time() - t:.0f} s")
    return rootfs


def requirements() -> list[str]:
    """The base dependencies and the ``device`` extra, from pyproject.toml (the one place they live)."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["device"], "pytest>=7.4"]


def ensure_venv(rootfs: Path, cache: Path) -> str:
    """A venv in the rootfs with the device requirements, installed offline from aarch64 wheels that
    pip downloads here; redone only when the requirements change. Returns the wheels' list."""
    reqs = requirements()
    key = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:16]
    stamp = rootfs / VENV.lstrip("/") / ".edgekit-requirements"
    wheels = cache / "wheels"
    if stamp.is_file() and stamp.read_text().strip() == key:
        return "cached"
    wheels.mkdir(parents=True, exist_ok=True)
    log("downloading aarch64 wheels for: " + ", ".join(reqs))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--dest",
        str(wheels),
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--abi",
        "cp311",
        "--abi",
        "abi3",
        "--abi",
        "none",
        *[arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)],
        "--platform",
        "any",
        *reqs,
        "setuptools>=68",
        "wheel",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            "pip download (aarch64 wheels) failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
        )
    cert = Path("/etc/ssl/certs/ca-certificates.crt")  # the host's extra CAs, should pip ever go online
    if cert.is_file():
        shutil.copy(cert, rootfs / "etc/ssl/certs/ca-certificates.crt")
    script = (
        f"rm -rf {VENV} && python3 -m venv {VENV} && {VENV}/bin/pip install -q --no-index "
        f"--find-links /wheels {' '.join(shlex.quote(r) for r in reqs)} && "
        f"echo {key} > {VENV}/.edgekit-requirements"
    )
    log("installing the device requirements in the rootfs venv (emulated pip)")
    proc = sh_in_rootfs(rootfs, script, binds=((wheels, "/wheels"),), cpuinfo=_cpuinfo_file(cache))
    if proc.returncode != 0:
        raise RuntimeError(
            "pip install in the rootfs failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
        )
    return "installed"


def _cpuinfo_file(cache: Path) -> Path:
    path = cache / "cpuinfo-rpi4"
    if not path.is_file() or path.read_text() != PI4_CPUINFO:
        cache.mkdir(parents=True, exist_ok=True)
        path.write_text(PI4_CPUINFO)
    return path


def install_checkout(rootfs: Path, cache: Path) -> dict[str, Any]:
    """Copy the working tree as it is (committed or not) to /src/edgekit and ``pip install
    '/src/edgekit[device]'`` there, offline, as a user would on the board."""
    dest = rootfs / "src" / "edgekit"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(REPO, dest, symlinks=True, ignore=shutil.ignore_patterns(*COPY_IGNORE))
    t = time.time()
    script = (
        f"cd /tmp && {VENV}/bin/pip install -q --no-index --find-links /wheels '/src/edgekit[device]' && "
        f"{VENV}/bin/edgekit --version"
    )
    proc = sh_in_rootfs(
        rootfs,
        script,
        binds=((cache / "wheels", "/wheels"),),
        cpuinfo=_cpuinfo_file(cache),
        env={"QEMU_CPU": "cortex-a72"},
    )
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return {
        "ok": proc.returncode == 0,
        "seconds": round(time.time() - t),
        "last_line": lines[-1] if lines else "",
    }


# ---------------------------------------------------------------------------------------------- probe

KERAS = "keras"  # the bench's reference format (TensorFlow): measured on x86 only
FIELDS = (
    "tests/fixtures/fields/BloodImage_00014.jpg",
    "tests/fixtures/fields/BloodImage_00099.jpg",
    "tests/fixtures/fields_scaled/BloodImage_00014_x1.7.jpg",  # shrunk by a ratio not a whole number
)


def probe_commands(out: str) -> list[tuple[str, list[str]]]:
    """(name, edgekit arguments) run identically on x86 and in the rootfs; stdout goes to out/name."""
    return [
        (
            "classify_tflite_int8.jsonl",
            [
                "classify",
                "--format",
                "jsonl",
                "--no-progress",
                "--model-format",
                "tflite_int8",
                "examples/cells",
            ],
        ),
        (
            "classify_onnx_int8.jsonl",
            [
                "classify",
                "--format",
                "jsonl",
                "--no-progress",
                "--model-format",
                "onnx_int8",
                "examples/cells",
            ],
        ),
        ("field.jsonl", ["field", "--format", "jsonl", *FIELDS]),
        (
            "screen.json",
            [
                "screen",
                "--patient",
                "PI-CHECK",
                "--fields",
                "--json",
                "--no-progress",
                "--db",
                f"{out}/screen.sqlite",
                "tests/fixtures/fields",
            ],
        ),
        (
            "bench.log",
            [
                "bench",
                "edgekit/models/default",
                "--data",
                "examples/cells",
                "--threads",
                "1,4",
                "--runs",
                "20",
                "--warmup",
                "2",
                "--no-plots",
                "-o",
                f"{out}/bench",
            ],
        ),
    ]


def probe_script(python: str, out: str) -> str:
    lines = [
        f"mkdir -p {out}",
        "cd /src/edgekit" if python.startswith(VENV) else f"cd {shlex.quote(str(REPO))}",
        "export PYTHONPATH=$PWD EDGEKIT_DB=" + f"{out}/default.sqlite",
    ]
    for name, args in probe_commands(out):
        cmd = " ".join(shlex.quote(a) for a in args)
        lines.append(
            f"{python} -m edgekit {cmd} > {out}/{name} 2> {out}/{name}.err; echo $? > {out}/{name}.rc"
        )
    return "\n".join(lines)


def run_host_probe(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["sh", "-c", probe_script(sys.executable, str(out))],
        capture_output=True,
        text=True,
        env={**os.environ, "EDGEKIT_DEVICE_TREE_MODEL": "/nonexistent"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"x86 probe failed: {proc.stderr.strip()}")


def _arm_env(cpu: str) -> tuple[str, dict[str, str]]:
    board = f"/tmp/device-tree-model-{cpu}"
    return board, {"QEMU_CPU": cpu, "EDGEKIT_DEVICE_TREE_MODEL": board, "OMP_NUM_THREADS": "1"}


def run_arm_probe(rootfs: Path, cpu: str, cache: Path) -> tuple[Path, dict[str, Any]]:
    """The probe commands under QEMU_CPU=cpu, with a faked Pi device-tree model; returns the output
    folder (seen from this host) and what the arm64 Python reported."""
    out = f"/tmp/probe-{cpu}"
    board, env = _arm_env(cpu)
    script = "\n".join(
        [
            f"rm -rf {out} && mkdir -p {out}",
            f"printf '%s\\0' {shlex.quote(CPUS[cpu])} > {board}",
            f"{VENV}/bin/python -c 'import platform, sys; print(platform.machine(), sys.version.split()[0])' "
            f"> {out}/platform.txt",
            probe_script(f"{VENV}/bin/python", out),
        ]
    )
    t = time.time()
    proc = sh_in_rootfs(rootfs, script, env=env, cpuinfo=_cpuinfo_file(cache), timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"arm64 probe ({cpu}) failed: {proc.stderr.strip()[-500:]}")
    host_out = rootfs / out.lstrip("/")
    return host_out, {
        "platform": (host_out / "platform.txt").read_text().strip(),
        "seconds": round(time.time() - t),
    }


def run_arm_suite(rootfs: Path, cpu: str, cache: Path) -> dict[str, Any]:
    """The test suite (every test that needs no TensorFlow; those skip themselves) under QEMU_CPU=cpu."""
    out = f"/tmp/suite-{cpu}"
    board, env = _arm_env(cpu)
    script = (
        f"rm -rf {out} && mkdir -p {out} && printf '%s\\0' {shlex.quote(CPUS[cpu])} > {board} && "
        f"cd /src/edgekit && PYTHONPATH=$PWD timeout {SUITE_TIMEOUT} {VENV}/bin/python -m pytest -q "
        f"-p no:cacheprovider tests > {out}/pytest.txt 2>&1; echo $? > {out}/pytest.rc"
    )
    t = time.time()
    proc = sh_in_rootfs(rootfs, script, env=env, cpuinfo=_cpuinfo_file(cache), timeout=SUITE_TIMEOUT + 300)
    host_out = rootfs / out.lstrip("/")
    text = (host_out / "pytest.txt").read_text() if (host_out / "pytest.txt").is_file() else proc.stderr
    summary = next(
        (ln for ln in reversed(text.splitlines()) if " in " in ln and ("passed" in ln or "failed" in ln)),
        "no pytest summary",
    )
    rc = (host_out / "pytest.rc").read_text().strip() if (host_out / "pytest.rc").is_file() else ""
    return {
        "suite_rc": int(rc) if rc.lstrip("-").isdigit() else 1,
        "suite_summary": summary.strip("= "),
        "suite_seconds": round(time.time() - t),
        "failures": [ln for ln in text.splitlines() if ln.startswith(("FAILED", "ERROR"))][:20],
    }


# ---------------------------------------------------------------------------------------------- compare


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.startswith("{")]


def _check(name: str, ok: bool, detail: str, **numbers: Any) -> dict[str, Any]:
    return {"check": name, "ok": bool(ok), "detail": detail, **numbers}


def _exit_code_checks(x86: Path, arm: Path) -> list[dict[str, Any]]:
    """Every probe command exits as on x86 (the arm64 error's last line when it fails)."""
    checks = []
    for name, _ in probe_commands(""):
        rc_x, rc_a = (int((d / f"{name}.rc").read_text().strip()) for d in (x86, arm))
        err = (arm / f"{name}.err").read_text().strip().splitlines()
        checks.append(
            _check(
                f"{name}: exit code",
                rc_x == rc_a,
                f"x86 {rc_x}, arm64 {rc_a}" + (f" ({err[-1]})" if rc_a and err else ""),
            )
        )
    return checks


def _max_abs_diff(pairs: Iterable[tuple[dict[str, Any], dict[str, Any]]], key: str) -> float | None:
    """The largest |x86 - arm64| of ``key`` over the pairs where both have it; None when none do."""
    return max(
        (abs(p[key] - q[key]) for p, q in pairs if p.get(key) is not None and q.get(key) is not None),
        default=None,
    )


def _classify_check(x86: Path, arm: Path, fmt: str, bound: float) -> dict[str, Any]:
    """``classify`` with one format: the same crops, p within ``bound``, the same decisions."""
    a, b = _jsonl(x86 / f"classify_{fmt}.jsonl"), _jsonl(arm / f"classify_{fmt}.jsonl")
    pairs = list(zip(a, b, strict=False))
    same = len(a) == len(b) and len(a) > 0 and all(p["path"] == q["path"] for p, q in pairs)
    diff = _max_abs_diff(pairs, "p_parasitized")
    flips = sum(p["decision"] != q["decision"] for p, q in pairs)
    return _check(
        f"classify {fmt}: max |Δp| <= {bound:.4f}, decisions equal",
        same and diff is not None and diff <= bound and flips == 0,
        f"{len(b)} crops, max |Δp| {diff}, {flips} decisions differ",
        max_abs_dp=diff,
        decisions_differ=flips,
        n=len(b),
    )


_FIELD_SUMMARY_KEYS = ("cells", "parasitized", "positive", "negative", "uncertain", "parasitemia")


def _field_summaries_equal(fx: list[dict[str, Any]], fa: list[dict[str, Any]]) -> bool:
    """The same per-field counts (``fx``, ``fa``: the fields' lines) and totals (``total`` lines)."""
    totals_equal = [f["total"] for f in fx if "total" in f] == [f["total"] for f in fa if "total" in f]
    fx, fa = [f for f in fx if "field" in f], [f for f in fa if "field" in f]
    return [{k: f.get(k) for k in _FIELD_SUMMARY_KEYS} for f in fx] == [
        {k: f.get(k) for k in _FIELD_SUMMARY_KEYS} for f in fa
    ] and totals_equal


def _field_check(x86: Path, arm: Path) -> dict[str, Any]:
    """``field`` with tflite_int8: the same cells, boxes, decisions and counts, p within one step."""
    lines_x, lines_a = _jsonl(x86 / "field.jsonl"), _jsonl(arm / "field.jsonl")
    fx, fa = [f for f in lines_x if "field" in f], [f for f in lines_a if "field" in f]
    cells_x = [c for f in fx for c in f.get("cell_list", [])]
    cells_a = [c for f in fa for c in f.get("cell_list", [])]
    boxes_equal = [c["box"] for c in cells_x] == [c["box"] for c in cells_a]
    pairs = list(zip(cells_x, cells_a, strict=False))
    dp = _max_abs_diff(pairs, "p")
    flips = sum(c.get("decision") != d.get("decision") for c, d in pairs)
    sums_equal = _field_summaries_equal(lines_x, lines_a)
    ok = len(fx) == len(fa) > 0 and boxes_equal and dp is not None and dp <= TFLITE_BOUND
    return _check(
        "field (tflite_int8): same cells, boxes, decisions and counts; p within one output step",
        ok and flips == 0 and sums_equal,
        f"{len(cells_a)} cells in {len(fa)} fields (x86 {len(cells_x)}), boxes equal {boxes_equal}, "
        f"max |Δp| {dp}, {flips} decisions differ, summaries equal {sums_equal}",
        max_abs_dp=dp,
        decisions_differ=flips,
        n=len(cells_a),
    )


_SCREEN_SUMMARY_KEYS = (
    "decision", "crops", "classified", "parasitized", "fraction", "rejected", "positive", "negative",
    "uncertain",
)


def _screen_check(x86: Path, arm: Path) -> dict[str, Any]:
    """``screen --fields``: the same patient summary."""
    sx, sa = (json.loads((d / "screen.json").read_text() or "{}") for d in (x86, arm))
    vx, va = ({k: v for k, v in s.items() if k in _SCREEN_SUMMARY_KEYS} for s in (sx, sa))
    return _check(
        "screen --fields: same patient summary",
        bool(vx) and vx == va,
        f"x86 {vx} | arm64 {va}" if vx != va else f"{va}",
    )


def _bench_row_check(key: tuple[str, int], rx: dict[str, Any], ra: dict[str, Any]) -> dict[str, Any]:
    """One ``bench`` row (format, threads): accuracy columns identical for LiteRT (equal
    otherwise), and the same delegate as on x86."""
    fields = ("accuracy", "sensitivity", "specificity", "auc")
    exact = key[0].startswith("tflite")
    worst = max(abs((rx.get(f) or 0) - (ra.get(f) or 0)) for f in fields)
    ok = (
        worst == 0
        if exact
        else all(rx.get(f) == ra.get(f) for f in ("accuracy", "sensitivity", "specificity"))
    )
    # the same delegate as on x86: a silently dropped XNNPACK changes LiteRT's int8 results
    same_delegate = (rx.get("delegate"), rx.get("delegated_ops")) == (
        ra.get("delegate"),
        ra.get("delegated_ops"),
    )
    return _check(
        f"bench {key[0]}@{key[1]}: accuracy columns "
        + ("identical" if exact else "equal")
        + ", same delegate as x86",
        ok and same_delegate,
        f"max difference {worst:.6f}; arm64 threads effective {ra.get('threads_effective')}, "
        f"delegate {ra.get('delegate')} {ra.get('delegated_ops') or ''} (x86: {rx.get('delegate')} "
        f"{rx.get('delegated_ops') or ''})",
        threads_effective=ra.get("threads_effective"),
        delegate=ra.get("delegate"),
        latency_p50_ms_emulated=ra.get("latency_p50_ms"),
        latency_p50_ms_x86=rx.get("latency_p50_ms"),
    )


def _bench_checks(bx: dict[str, Any], ba: dict[str, Any]) -> list[dict[str, Any]]:
    """Every ``bench`` row that ran on either side, against the other side's."""
    rows_x = {(r["format"], r["threads"]): r for r in bx["rows"] if r.get("status") == "ok"}
    rows_a = {(r["format"], r["threads"]): r for r in ba["rows"] if r.get("status") == "ok"}
    # Keras is the workstation's reference, never a device format: the device install has no
    # TensorFlow, so the emulated Pi must have no Keras row (one would mean TensorFlow got in)
    keras_a = sorted(k for k in rows_a if k[0] == KERAS)
    checks = [_check("bench: no Keras row on arm64 (the device install has no TensorFlow)", not keras_a,
                     f"arm64 Keras rows {keras_a}" if keras_a else
                     f"x86 measured Keras as its reference ({sum(k[0] == KERAS for k in rows_x)} rows)")]
    rows_x = {k: r for k, r in rows_x.items() if k[0] != KERAS}
    rows_a = {k: r for k, r in rows_a.items() if k[0] != KERAS}
    for key in sorted(rows_x.keys() | rows_a.keys()):
        rx, ra = rows_x.get(key), rows_a.get(key)
        if rx is None or ra is None:
            checks.append(_check(f"bench {key[0]}@{key[1]}", False, "row missing on one side"))
        else:
            checks.append(_bench_row_check(key, rx, ra))
    profile = ba["meta"]["profile"]["name"]
    checks.append(
        _check(
            "bench detects the (faked) board",
            profile in ("rpi4", "rpi5"),
            f"profile {profile}, board {ba['meta']['host'].get('board')!r}",
        )
    )
    return checks


def compare_outputs(x86: Path, arm: Path) -> list[dict[str, Any]]:
    """Every probe output of the arm64 run against the x86 one."""
    checks = _exit_code_checks(x86, arm)
    checks += [
        _classify_check(x86, arm, fmt, bound)
        for fmt, bound in (("tflite_int8", TFLITE_BOUND), ("onnx_int8", ONNX_BOUND))
    ]
    checks.append(_field_check(x86, arm))
    checks.append(_screen_check(x86, arm))
    bx, ba = (json.loads((d / "bench" / "bench.json").read_text()) for d in (x86, arm))
    return checks + _bench_checks(bx, ba)


# ---------------------------------------------------------------------------------------------- main


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def write_report(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "pi_emulation.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# Emulated Raspberry Pi check ({result['date']})",
        "",
        f"- host: {result['host']}; {result['qemu']}; rootfs Debian {SUITE} arm64 ({result['rootfs']})",
        f"- verdict: **{'pass' if result['ok'] else 'FAIL'}**; "
        f"bounds: TFLite |Δp| <= {TFLITE_BOUND:.4f} (one output step), "
        f"ONNX |Δp| <= {ONNX_BOUND:.4f} (four output steps), decisions equal",
        "",
    ]
    for cpu, run in result["cpus"].items():
        lines += [
            f"## QEMU_CPU={cpu} ({CPUS[cpu]})",
            "",
            f"- arm64 Python: {run['info'].get('platform')}; "
            f"device test suite: {run['info'].get('suite_summary')}"
            f" (exit {run['info'].get('suite_rc')}, {run['info'].get('suite_seconds')} s emulated)",
            "",
        ]
        lines += ["| check | ok | detail |", "|---|---|---|"]
        lines += [
            f"| {_cell(c['check'])} | {'yes' if c['ok'] else '**NO**'} | {_cell(c['detail'])} |"
            for c in run["checks"]
        ]
        if run["info"].get("failures"):
            lines += ["", "Failed tests:", *[f"- {f}" for f in run["info"]["failures"]]]
        lines.append("")
    (out / "pi_emulation.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpus", default=",".join(CPUS), help="QEMU CPU models to run (cortex-a72, cortex-a76)")
    ap.add_argument("--build", action="store_true", help="Build the rootfs when none is cached (11-15 min).")
    ap.add_argument(
        "--suite",
        action="store_true",
        help="Also run the device test suite under emulation (30+ min per CPU model).",
    )
    ap.add_argument(
        "-o",
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results" / "pi_emulation",
        help="Where the JSON and Markdown results go.",
    )
    args = ap.parse_args(argv)
    wanted = os.environ.get("EDGEKIT_PI_CHECK", "")
    if wanted == "0":
        log("skipped: EDGEKIT_PI_CHECK=0")
        return 0
    cpus = [c.strip() for c in args.cpus.split(",") if c.strip()]
    unknown = [c for c in cpus if c not in CPUS]
    if unknown:
        log(f"error: unknown CPU model(s) {unknown}; use {', '.join(CPUS)}")
        return 2
    try:
        problem = emulation_problem()
        if problem:
            raise Skip(problem)
        t0 = time.time()
        rootfs = ensure_rootfs(CACHE, allow_build=args.build or wanted == "1")
        venv = ensure_venv(rootfs, CACHE)
    except Skip as exc:
        log(f"skipped: this machine cannot run the emulated Pi check: {exc}")
        return 0
    install = install_checkout(rootfs, CACHE)
    log(
        f"pip install '.[device]' in the rootfs: {'ok' if install['ok'] else 'FAILED'} "
        f"({install['last_line']})"
    )
    with tempfile.TemporaryDirectory(prefix="edgekit-pi-x86-") as tmp:
        x86 = Path(tmp)
        log("x86 reference run")
        run_host_probe(x86)
        result: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "host": f"{platform.machine()} Python {platform.python_version()}",
            "qemu": qemu_version(),
            "rootfs": f"{_shown(rootfs)} (venv {venv})",  # no machine path in the results
            "bounds": {"tflite_max_abs_dp": TFLITE_BOUND, "onnx_max_abs_dp": ONNX_BOUND},
            "cpus": {},
        }
        for cpu in cpus:  # the parity evidence first, for both CPUs; the slower test suites after
            log(f"arm64 probe, QEMU_CPU={cpu} ({CPUS[cpu]}): classify, field, screen, bench")
            arm, info = run_arm_probe(rootfs, cpu, CACHE)
            checks = compare_outputs(x86, arm)
            checks.insert(
                0,
                _check(
                    "pip install '.[device]' from the checkout (offline, aarch64 wheels)",
                    install["ok"],
                    install["last_line"],
                ),
            )
            result["cpus"][cpu] = {"info": info, "checks": checks}
            bad = [c["check"] for c in checks if not c["ok"]]
            log(
                f"{cpu}: {len(checks) - len(bad)}/{len(checks)} checks ok ({info['seconds']} s)"
                + (f"; failed: {bad}" if bad else "")
            )
            _finish(result, args.out, t0)
    if not (args.suite or os.environ.get("EDGEKIT_PI_SUITE") == "1"):
        log(
            "the emulated device test suite is skipped (30+ min per CPU model): "
            "pass --suite or EDGEKIT_PI_SUITE=1"
        )
        cpus = []
    for cpu in cpus:
        log(f"arm64 device test suite, QEMU_CPU={cpu}")
        suite = run_arm_suite(rootfs, cpu, CACHE)
        run = result["cpus"][cpu]
        run["info"].update(suite)
        run["checks"].append(
            _check("device test suite passes", suite["suite_rc"] == 0, suite["suite_summary"])
        )
        log(f"{cpu}: suite {suite['suite_summary']} ({suite['suite_seconds']} s)")
        _finish(result, args.out, t0)
    log(f"{'pass' if result['ok'] else 'FAIL'} in {result['seconds']} s; wrote {args.out}/pi_emulation.md")
    return 0 if result["ok"] else 1


def _finish(result: dict[str, Any], out: Path, t0: float) -> None:
    """Verdict so far, written after every step so a cut-short run still leaves its evidence."""
    result["ok"] = all(c["ok"] for run in result["cpus"].values() for c in run["checks"])
    result["seconds"] = round(time.time() - t0)
    write_report(result, out)


if __name__ == "__main__":
    sys.exit(main())
