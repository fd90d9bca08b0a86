"""Shared test fixtures: the real shared data when present, small generated data otherwise."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest

from edgekit.paths import shared_data

# Tests build unsigned bundles (tests/bundle_factory.py, hand-edited manifests) and run them: they are
# allowed explicitly here, for this process and the CLI subprocesses it starts. tests/test_trust.py
# removes the permission to check the refusals. The keyring and the model-probe cache are the run's own.
os.environ["EDGEKIT_ALLOW_UNSIGNED"] = "1"
os.environ["EDGEKIT_KEYRING"] = tempfile.mkdtemp(prefix="edgekit-test-keyring-")
shutil.copyfile(Path(__file__).parent / "fixtures" / "test_signing.pub",
                Path(os.environ["EDGEKIT_KEYRING"]) / "test_signing.pub")
os.environ.setdefault("EDGEKIT_CACHE", str(Path(tempfile.gettempdir()) / "edgekit-test-cache"))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = shared_data()
MALARIA = SHARED_DATA / "malaria_cells"
XRAY = SHARED_DATA / "xray_abd_vs_chest"
BCCD = SHARED_DATA / "blood_smear_fields_bccd"


def _write_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", rgb[:, :, ::-1])
    assert ok
    path.write_bytes(buf.tobytes())


def make_cell_folder(root: Path, patients: int = 12, per_patient: int = 6, seed: int = 0) -> Path:
    """A tiny NIH-named folder-per-class set: pink discs on black, parasitized ones with a dark
    purple dot. Half the patients are infected (both classes), half are controls."""
    rng = np.random.default_rng(seed)
    for p in range(patients):
        infected = p % 2 == 0
        slide = f"C{100 + p}P{p + 1}ThinF" if infected else f"C{200 + p}ThinF"
        for k in range(per_patient):
            parasitized = infected and k % 2 == 0
            size = int(rng.integers(48, 90))
            img = np.zeros((size, size, 3), np.uint8)
            yy, xx = np.mgrid[:size, :size]
            r = size * 0.42
            disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < r * r
            img[disc] = tuple(int(rng.integers(lo, lo + 40)) for lo in (190, 120, 150))
            if parasitized:
                cy, cx = rng.integers(int(size * 0.35), int(size * 0.65), 2)
                dot = (yy - cy) ** 2 + (xx - cx) ** 2 < (size * 0.1) ** 2
                img[dot] = (90, 30, 120)
            cls = "Parasitized" if parasitized else "Uninfected"
            _write_png(root / cls / f"{slide}_IMG_2015_cell_{k}.png", img)
    return root


@pytest.fixture(scope="session")
def cell_folder(tmp_path_factory) -> Path:
    return make_cell_folder(tmp_path_factory.mktemp("cells"))


@pytest.fixture(scope="session")
def shared_malaria() -> Path:
    if not (MALARIA / "Parasitized").is_dir():
        pytest.skip("shared malaria data not present")
    return MALARIA


@pytest.fixture()
def screened(tmp_path, monkeypatch):
    """A screening database (``$EDGEKIT_DB``) with one session: the sample cells, patient P7, the
    golden bundle."""
    from click.testing import CliRunner
    from device_helpers import CELLS, GOLDEN

    from edgekit.cli import main

    db = tmp_path / "s.sqlite"
    monkeypatch.setenv("EDGEKIT_DB", str(db))
    res = CliRunner().invoke(main, ["screen", str(CELLS), "--patient", "P7", "-m", str(GOLDEN), "--json"])
    assert res.exit_code == 0, res.output
    return db


@pytest.fixture
def watchdog():
    """Turns a hang into a failure after 60 s: a blocking open of a FIFO, or a regex backtracking (Python's
    regex engine checks for signals while it backtracks)."""
    def hung(*_):
        raise AssertionError("still running after 60 s")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
