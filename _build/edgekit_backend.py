"""PEP 517 build backend: setuptools', after refusing 32-bit ARM with one clear message.

LiteRT and onnxruntime publish no wheels for 32-bit ARM (armv7l/armv6l, e.g. 32-bit Raspberry Pi
OS), so without this check ``pip install ".[device]"`` there ends in a wall of failed source builds.
"""

from __future__ import annotations

import platform

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (every hook not wrapped below)

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
