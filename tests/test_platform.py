"""32-bit ARM: the source install stops with one clear line, and a wheel install explains itself at
first run; the Picamera2 camera path with a fake ``picamera2`` module."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from device_helpers import GOLDEN

from edgekit.device.backends import platform_hint
from edgekit.errors import BundleError

ROOT = Path(__file__).resolve().parents[1]


def _backend_module():
    pytest.importorskip("setuptools")
    spec = importlib.util.spec_from_file_location("edgekit_backend", ROOT / "_build" / "edgekit_backend.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("machine", ["armv7l", "armv6l", "armv8l"])
def test_build_backend_refuses_32_bit_arm(machine: str) -> None:
    backend = _backend_module()
    with pytest.raises(SystemExit, match=f"edgekit needs a 64-bit OS: this machine reports {machine}"):
        backend.check_platform(machine)


@pytest.mark.parametrize("machine", ["aarch64", "x86_64", "arm64"])
def test_build_backend_accepts_64_bit(machine: str) -> None:
    _backend_module().check_platform(machine)
    assert platform_hint(machine) == ""


def test_first_run_on_32_bit_arm_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    from edgekit.device import runtime

    assert "armv7l, 32-bit ARM" in platform_hint("armv7l")
    monkeypatch.setattr(platform, "machine", lambda: "armv7l")
    monkeypatch.setattr(runtime, "runtime_available", lambda name: False)
    with pytest.raises(BundleError, match="runtime is not installed.*armv7l, 32-bit ARM.*aarch64"):
        runtime.load_classifier(GOLDEN)


class FakePicamera2:
    """What edgekit uses of Picamera2: configure/start/capture_array/stop/close; frames are BGR
    in memory for the "RGB888" format, as libcamera names it."""

    fail = False

    def __init__(self) -> None:
        if self.fail:
            raise RuntimeError("Camera __init__ sequence did not complete.")
        self.started = False
        self.frame = np.zeros((48, 64, 3), np.uint8)
        self.frame[:, :, 0] = 200  # blue, in BGR memory order

    def create_still_configuration(self, main: dict) -> dict:
        assert main == {"format": "RGB888"}
        return {"main": main}

    def configure(self, config: dict) -> None:
        self.config = config

    def start(self) -> None:
        self.started = True

    def capture_array(self) -> np.ndarray:
        return self.frame.copy()

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        pass


@pytest.fixture
def fake_picamera2(monkeypatch: pytest.MonkeyPatch) -> type[FakePicamera2]:
    module = types.ModuleType("picamera2")
    module.__spec__ = importlib.machinery.ModuleSpec("picamera2", None)
    module.Picamera2 = FakePicamera2
    monkeypatch.setitem(sys.modules, "picamera2", module)
    FakePicamera2.fail = False
    return FakePicamera2


def test_auto_source_uses_picamera2_when_present(fake_picamera2) -> None:
    from edgekit.device.camera import PicameraSource, frames, open_source

    src = open_source("auto")
    assert isinstance(src, PicameraSource) and src.cam.started
    rgb = src.read()
    assert rgb.shape == (48, 64, 3) and rgb[0, 0].tolist() == [0, 0, 200]  # BGR memory -> RGB
    src.close()
    got = []
    for frame in frames("picamera"):
        got.append(frame)
        if len(got) == 3:
            break
    assert len(got) == 3


def test_picamera2_without_a_camera_is_one_clear_error(fake_picamera2) -> None:
    from edgekit.device.camera import CameraError, open_source

    fake_picamera2.fail = True
    with pytest.raises(CameraError, match="Picamera2 cannot open the camera: Camera __init__ sequence"):
        open_source("picamera")
