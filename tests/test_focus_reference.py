"""Focus judged at a reference cell radius (issues 22, 29): a site whose microscope enlarges its cells
has its fields judged shrunk so its cells measure REFERENCE_RADIUS, the scale the floor's share was set
at, so a field blurred as much for its cells as sigma 2 is on BCCD is refused there; the scale is
recorded in the manifest's ``focus.reference`` and every capture path judges by it; a manifest without
it is judged at the fields' own pixels, as before."""

from __future__ import annotations

import json
import shutil
import sqlite3
from types import SimpleNamespace

import numpy as np
import pytest

from edgekit.benchmarks.field_transforms import rescale
from edgekit.device.field.focus import REFERENCE_RADIUS, FocusRule, focus_score, rule_of
from edgekit.device.field.quality import field_focus
from edgekit.device.preprocess import read_image
from edgekit.errors import BundleError
from edgekit.manifest import Manifest
from edgekit.manifest_schema import validate_manifest_data
from edgekit.paths import shared_data
from tests.device_helpers import FIXTURES, GOLDEN, write_image

BCCD = shared_data("blood_smear_fields_bccd") / "JPEGImages"
SITE = range(0, 96, 16)  # BCCD fields (sorted) a site enlarging 2.5x with another camera adapts on
TRIED = (24, 77, 97)  # other BCCD fields, sharp and blurred with sigma 2 at BCCD's own scale


def _bccd(k: int) -> np.ndarray:
    if not BCCD.is_dir():
        pytest.skip("BCCD fields not in ../shared/data")
    return read_image(sorted(BCCD.glob("*.jpg"))[k])


def _enlarged_site(k: int, source_sigma: float = 0.0) -> np.ndarray:
    """BCCD field ``k`` through another microscope (2.5x the pixels per cell, another stain, camera
    noise and JPEG: ``foreign``), blurred with ``source_sigma`` before it (at BCCD's own scale)."""
    from edgekit.benchmarks.site_cells_focus import looked

    return looked("foreign", _bccd(k), source_sigma=source_sigma)


def test_an_enlarged_sites_blurred_field_is_refused_at_its_cells_scale(tmp_path):
    """Judged at its own pixels, a site enlarging 2.5x sets its floor on wide edges, and fields blurred
    with sigma 2 for their cells pass it (the miss: a blurred field counted). The site bundle now
    records the reference scale and refuses them, while its sharp fields are still kept."""
    from edgekit.site_focus import site_focus

    for k in SITE:
        write_image(tmp_path / f"f{k}.png", _enlarged_site(k))
    lines: list[str] = []
    got = site_focus(tmp_path, [f"f{k}" for k in SITE], lines.append)
    assert got is not None
    rule = FocusRule.from_dict(Manifest.from_dict({"labels": ["A", "B"], "focus": got}).focus)
    blurred = [_enlarged_site(k, 2.0) for k in TRIED]
    assert all(rule.reason(field_focus(x, rule)) for x in blurred)
    assert not any(rule.reason(field_focus(_enlarged_site(k), rule)) for k in TRIED)
    assert got["reference"] == REFERENCE_RADIUS and got["radius"] > 2 * REFERENCE_RADIUS
    assert f"cells judged at {REFERENCE_RADIUS:g} px radius" in lines[-1]

    from edgekit.site_focus import images_focus

    fields = [_enlarged_site(k) for k in SITE]
    at_pixels = FocusRule.from_dict(images_focus(fields, lambda x: x, [].append, reference=0.0))
    assert not any(at_pixels.reason(field_focus(x, at_pixels)) for x in blurred)  # the miss, as before


def test_a_manifest_without_the_reference_is_judged_at_the_fields_pixels():
    """A site bundle adapted before the reference was recorded: its fields are scored at their own
    pixels (enlarged or not), exactly as then."""
    old = {"floor": 0.03, "marks": True, "source": "site", "radius": 90.0}
    validate_manifest_data({"labels": ["A", "B"], "focus": old})
    rule = FocusRule.from_dict(Manifest.from_dict({"labels": ["A", "B"], "focus": old}).focus)
    assert rule.reference == 0.0
    big = rescale(read_image(FIXTURES / "fields" / "BloodImage_00014.jpg"), 2.5)
    assert rule.score(big) == focus_score(big, measure=rule.measure) < rule.floor
    assert FocusRule.from_dict({**old, "reference": REFERENCE_RADIUS}).score(big) > rule.floor


def test_a_focus_reference_is_checked_in_the_manifest():
    def manifest(reference: object) -> dict:
        return {"labels": ["A", "B"], "focus": {"floor": 0.03, "marks": True, "reference": reference}}

    validate_manifest_data(manifest(40.0))
    for bad in (-1, "40", float("nan"), 1e9, True):
        with pytest.raises(BundleError, match="focus.reference"):
            validate_manifest_data(manifest(bad))
        with pytest.raises(ValueError):
            FocusRule(reference=bad)  # type: ignore[arg-type]


def _focus(reference: float) -> dict:
    """A site rule whose floor lies between an enlarged sharp BCCD field's score at its own pixels
    (0.017) and at the reference scale (0.055)."""
    return {"floor": 0.03, "marks": True, "source": "test", "radius": 90.0, "reference": reference}


@pytest.fixture(scope="module")
def enlarged_field(tmp_path_factory):
    path = tmp_path_factory.mktemp("enlarged") / "big.png"
    return write_image(path, rescale(read_image(FIXTURES / "fields" / "BloodImage_00014.jpg"), 2.5))


def _bundle(tmp_path, reference: float):
    bundle = tmp_path / f"ref{reference:g}"
    shutil.copytree(GOLDEN, bundle)
    (bundle / "signature.json").unlink()
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "focus": _focus(reference)}))
    return bundle


def test_files_and_folders_judge_at_the_manifests_reference(tmp_path, enlarged_field):
    """`field` and `screen --fields` refuse the enlarged sharp field as out of focus at its own pixels
    and count it at the reference scale the manifest records."""
    from click.testing import CliRunner

    from edgekit.cli import main

    for reference, refused in ((0.0, True), (REFERENCE_RADIUS, False)):
        bundle = _bundle(tmp_path, reference)
        res = CliRunner().invoke(main, ["field", str(enlarged_field), "--model", str(bundle)])
        assert ("out of focus (sharpness" in res.output) == refused, res.output
        db = tmp_path / f"{bundle.name}.sqlite"
        res = CliRunner().invoke(main, ["screen", "--patient", "P", "--fields", str(enlarged_field),
                                        "--model", str(bundle), "--db", str(db), "--stop-cells", "0"])
        assert res.exit_code == 0, res.output
        rejected = "select reason from records where status='rejected'"
        reasons = [r for (r,) in sqlite3.connect(db).execute(rejected)]
        assert any("out of focus" in r for r in reasons) == refused, reasons


def test_the_camera_and_the_phone_judge_at_the_manifests_reference(tmp_path, enlarged_field):
    """The camera (its cells' radius remembered across frames) and a phone upload to `serve` judge by
    the loaded bundle's reference scale."""
    from edgekit.device.live import CaptureSettings, FieldCapture, RadiusMemory
    from edgekit.device.runtime import load_classifier
    from edgekit.device.serve.station import Station
    from tests.test_serve import TOKEN, _client, _session, _upload

    frame = read_image(enlarged_field)
    for reference, refused in ((0.0, True), (REFERENCE_RADIUS, False)):
        rule = rule_of(SimpleNamespace(manifest=Manifest.from_dict({"labels": ["A", "B"],
                                                                    "focus": _focus(reference)})))
        cap = FieldCapture(CaptureSettings(settle=2), rule=rule)
        taken = sum(cap.offer(frame) is not None for _ in range(3))
        assert (taken, cap.stats.blurred) == ((0, 3) if refused else (1, 0))
        station = Station(load_classifier(_bundle(tmp_path, reference)), tmp_path / f"{reference:g}.sqlite",
                          tmp_path / f"overlays{reference:g}")
        try:
            client = _client(station, token=TOKEN)
            out = _upload(client, _session(client), enlarged_field.read_bytes(), "field", "big.png").json()
        finally:
            station.close()
        assert ("out of focus" in (out["result"]["rejected"] or "")) == refused, out["result"]["rejected"]
    memory = RadiusMemory(every=2, kept=3)
    radii = [memory.update(frame) for _ in range(4)]
    assert radii[0] > 2 * REFERENCE_RADIUS and len(set(radii)) == 1
    blank = RadiusMemory(every=2)  # no cells found: 0.0, and the rule takes the site's radius
    assert [blank.update(np.full_like(frame, 200)) for _ in range(2)] == [0.0, 0.0]


def test_a_field_at_the_sites_magnification_is_shrunk_by_the_sites_factor():
    """One microscope, one scale: a field whose cells read within SITE_ZOOM of the site's radius is
    shrunk by the site's factor (a field's own read varies by 10-15%, and its score with it); a
    zoomed field by its own; an unread or far-off radius (over SITE_ZOOM_MAX x the site's) by the site's."""
    from edgekit.device.field.focus import SITE_ZOOM, SITE_ZOOM_MAX

    rule = FocusRule(**_focus(REFERENCE_RADIUS))
    field = np.zeros((8, 8, 3), np.uint8)  # not read: each radius is given
    site = rule.radius
    cases = ((site, site), (0.0, site), (0.8 * site, site), (1.3 * site, site), (1.5 * site, 1.5 * site),
             (0.7 * site, 0.7 * site), (1.01 * SITE_ZOOM_MAX * site, site))
    for own, judged in cases:
        assert rule.judged_radius(field, own) == pytest.approx(judged), own
    assert 1.3 < SITE_ZOOM < 1.5
