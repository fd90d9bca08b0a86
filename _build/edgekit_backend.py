"""PEP 517 build backend: setuptools', after refusing 32-bit ARM with one clear message.

LiteRT and onnxruntime publish no wheels for 32-bit ARM (armv7l/armv6l, e.g. 32-bit Raspberry Pi
OS), so without this check ``pip install ".[device]"`` there ends in a wall of failed source builds.
It also holds ``BuildPy`` (``[tool.setuptools.cmdclass]``): the wheel ships only what runs.
"""

from __future__ import annotations

import platform

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (every hook not wrapped below)
from setuptools.command.build_py import build_py

# Packages that ship only the modules named here. benchmarks/ also holds the research and measurement
# scripts behind benchmarks/RESULTS.md: they stay in the repository (and in editable installs), not in
# the wheel. tests/test_packaging.py checks this list against what the installed commands import.
SHIP_ONLY = {
    "edgekit.benchmarks": {"__init__", "accuracy", "bench", "commands", "profiles", "report", "worker"},
}

UNSUPPORTED = ("armv6l", "armv7l", "armv8l", "arm")  # armv8l: a 32-bit userland on a 64-bit CPU
MESSAGE = (
    "edgekit needs a 64-bit OS: this machine reports {machine} (32-bit ARM), for which LiteRT and "
    "onnxruntime publish no wheels. On a Raspberry Pi install 64-bit Raspberry Pi OS (Bookworm or "
    "later; `uname -m` prints aarch64) and Python >= 3.10."
)


def check_platform(machine: str | None = None) -> None:
    """Stop the build with one clear line on 32-bit ARM."""
    machine = machine or platform.machine()
    if machine.lower() in UNSUPPORTED:
        raise SystemExit(MESSAGE.format(machine=machine))


class BuildPy(build_py):
    """setuptools' build_py, leaving out the modules ``SHIP_ONLY`` does not name. Python files ship
    only as modules, never as package data (include-package-data would take any listed in the
    manifest, e.g. a stale SOURCES.txt's)."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        keep = SHIP_ONLY.get(package)
        return modules if keep is None else [m for m in modules if m[1] in keep]

    def find_data_files(self, package, src_dir):
        return [f for f in super().find_data_files(package, src_dir) if not f.endswith(".py")]


def get_requires_for_build_wheel(config_settings=None):
    check_platform()
    return _setuptools.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_editable(config_settings=None):
    check_platform()
    return _setuptools.get_requires_for_build_editable(config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    check_platform()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    check_platform()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
