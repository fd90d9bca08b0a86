"""A site's own focus floor (issue 22, ``FocusRule`` / ``site_rule``, ``edgekit.site_focus``): a site
bundle leaves burned-in marks out and sets its floor on its own fields, so IML's soft optics keep their
usable fields while a blurred field whose camera drew its bar sharp is refused; every capture path
judges by the rule the bundle's manifest carries."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from edgekit.benchmarks.focus_floor import blur, iml_overlay_pixels, jpeg, reburn
from edgekit.device.field.focus import (
    DEFAULT_RULE,
    FOCUS_FLOOR,
    SITE_FLOOR_SHARE,
    FocusRule,
    rule_of,
    site_rule,
)
from edgekit.device.field.quality import field_focus, field_quality
from edgekit.device.preprocess import read_image
from edgekit.errors import BundleError
from edgekit.manifest import Manifest
from edgekit.manifest_schema import validate_manifest_data
from edgekit.paths import shared_data

IML = shared_data("malaria_fields_iml") / "images"
# calibration-half IML fields (even blocks of focus_floor's split) that set the site floor here, and
# held-out ones it is tried on; PA171829 and PA171841 are among the soft ones the shared floor refused
SITE_FIELDS = ("PA171690", "PA171712", "PA171733", "PA171752", "PA171773", "PA171793", "PA171812")
TRIED = ("PA171700", "PA171760", "PA171801", "PA171841")


needs_iml = pytest.mark.skipif(not IML.is_dir(), reason="IML fields not in ../shared/data")


def _iml(stem: str) -> np.ndarray:
    if not IML.is_dir():
        pytest.skip("IML fields not in ../shared/data")
    return read_image(IML / f"{stem}.JPG")


@pytest.fixture(scope="module")
def iml_rule() -> FocusRule:
    measure = FocusRule(marks=True)
    return site_rule([field_focus(_iml(s), measure) for s in SITE_FIELDS])


def test_site_rule_is_a_share_of_the_median_with_marks_left_out():
    rule = site_rule([0.02, 0.05, 0.04, 0.9])
    assert rule.marks and rule.floor == round(SITE_FLOOR_SHARE * 0.045, 4)
    assert "4 site fields" in rule.source
    for empty in ([], [0.0, 0.0]):  # no fields, or fields without edges: no floor
        with pytest.raises(ValueError):
            site_rule(empty)
    assert DEFAULT_RULE.floor == FOCUS_FLOOR and not DEFAULT_RULE.marks


def test_iml_site_rule_refuses_blur_behind_a_sharp_bar_and_keeps_soft_fields(iml_rule):
    """The shared rule reads IML's burned-in bar: a copy blurred with sigma 2 whose bar the camera
    drew sharp passes it. The site rule refuses every such copy and passes the sharp fields, the
    soft PA171841 included (the marks-free measure at the shared floor refuses it)."""
    assert iml_rule.floor < FOCUS_FLOOR
    shared_passed = 0
    for stem in TRIED:
        rgb = _iml(stem)
        assert field_quality(rgb, rule=iml_rule) is None, stem
        bar = iml_overlay_pixels(rgb)
        blurred = jpeg(reburn(rgb, blur(rgb, 2.0), bar), 90)
        assert (field_quality(blurred, rule=iml_rule) or "").startswith("out of focus"), stem
        shared_passed += field_quality(blurred) is None
    assert shared_passed == len(TRIED)  # the miss the site rule fixes
    assert field_focus(_iml("PA171841"), FocusRule(marks=True)) < FOCUS_FLOOR


def test_manifest_carries_the_rule_and_refuses_a_bad_one():
    m = Manifest.from_dict({"labels": ["Parasitized", "Uninfected"],
                            "focus": {"floor": 0.0281, "marks": True, "source": "site"}})
    clf = SimpleNamespace(manifest=m)
    assert rule_of(clf) == FocusRule(floor=0.0281, marks=True, source="site")
    assert rule_of(SimpleNamespace(manifest=Manifest.from_dict(m.to_dict()))) == rule_of(clf)
    assert rule_of(SimpleNamespace(manifest=Manifest.from_dict({"labels": ["A", "B"]}))) is DEFAULT_RULE
    assert rule_of(None) is DEFAULT_RULE
    for bad, field in (({"floor": 2}, "focus.floor"), ({"floor": 0.03, "marks": "yes"}, "focus.marks"),
                       ([0.03], "focus")):
        with pytest.raises(BundleError, match=field):
            validate_manifest_data({"labels": ["A", "B"], "focus": bad})


def test_camera_capture_takes_the_bundles_floor(iml_rule):
    from edgekit.device.live import CaptureSettings, FieldCapture

    cap = FieldCapture(CaptureSettings(settle=2), rule=iml_rule)
    rgb = _iml("PA171841")  # under the shared floor with marks left out, over IML's own
    assert sum(cap.offer(rgb) is not None for _ in range(3)) == 1
    shared = FieldCapture(CaptureSettings(settle=2), rule=FocusRule(marks=True))
    assert all(shared.offer(rgb) is None for _ in range(3)) and shared.stats.blurred == 3


@needs_iml
def test_site_focus_needs_enough_readable_fields(tmp_path):
    import shutil

    from edgekit.site_focus import MIN_FIELDS, site_focus

    lines: list[str] = []
    assert site_focus(None, [], lines.append) is None
    for stem in SITE_FIELDS[:MIN_FIELDS - 1]:
        shutil.copy(IML / f"{stem}.JPG", tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    stems = [*SITE_FIELDS, "broken"]
    assert site_focus(tmp_path, stems, lines.append) is None and "shared focus floor" in lines[-1]
    shutil.copy(IML / f"{SITE_FIELDS[-1]}.JPG", tmp_path)
    got = site_focus(tmp_path, stems, lines.append)
    assert got is not None and got["marks"] and 0 < got["floor"] < FOCUS_FLOOR
    manifest = Manifest.from_dict({"labels": ["A", "B"], "focus": got})
    assert FocusRule.from_dict(manifest.focus).floor == got["floor"]


def test_every_path_judges_by_the_bundles_floor(tmp_path):
    """A bundle whose manifest carries a focus floor above every field's score: `screen --fields`
    (whose fields start segmenting before the model loads) and `field` refuse every field as out
    of focus at that floor; the same bundle without it counts them."""
    import json
    import shutil
    import sqlite3

    from click.testing import CliRunner

    from edgekit.cli import main
    from tests.device_helpers import FIXTURES

    strict = tmp_path / "strict"
    shutil.copytree(FIXTURES / "golden_bundle", strict)
    (strict / "signature.json").unlink()
    manifest = json.loads((strict / "manifest.json").read_text())
    (strict / "manifest.json").write_text(json.dumps({**manifest, "focus": {"floor": 0.9, "marks": True}}))
    field = str(FIXTURES / "fields" / "BloodImage_00014.jpg")
    rejected = "select reason from records where status='rejected'"
    for bundle, refused in ((FIXTURES / "golden_bundle", False), (strict, True)):
        db = tmp_path / f"{bundle.name}.sqlite"
        res = CliRunner().invoke(main, ["screen", "--patient", "P", "--fields", field, "--model", str(bundle),
                                        "--db", str(db), "--stop-cells", "0"])
        assert res.exit_code == 0, res.output
        reasons = [r for (r,) in sqlite3.connect(db).execute(rejected)]
        assert bool(reasons) == refused and all("< 0.9)" in r for r in reasons)
        res = CliRunner().invoke(main, ["field", field, "--model", str(bundle)])
        assert ("out of focus (sharpness" in res.output) == refused, res.output


def test_the_camera_remembers_marks_so_a_pull_rises_to_its_peak():
    """A bar blurred with the view is found as a mark at some blurs and not at others: scored frame
    by frame, the marks-free score of a focus pull jumped above the focused field's at sigma 1.1
    (a capture mid-focus). With the marks the camera remembers (:class:`MarkMemory`), it rises to
    the focused field."""
    from edgekit.device.live import MarkMemory

    rgb = _iml("PA171781")
    rule = FocusRule(marks=True)
    memory = MarkMemory(frames=5)
    memory.update(rgb)  # the focused view seen before, its bar found
    pull = [jpeg(blur(rgb, s), 95) for s in (2.0, 1.6, 1.4, 1.1, 0.8, 0.5, 0.0)]
    fresh = [rule.score(f) for f in pull]
    remembered = [rule.score(f, memory.update(f)) for f in pull]
    assert max(fresh[:-1]) > fresh[-1]  # the jump, scored frame by frame
    assert remembered == sorted(remembered)
    blank = np.full_like(rgb, 200)  # no marks: the remembered ones are kept 5 frames, then forgotten
    assert [bool(memory.update(blank)) for _ in range(6)] == [True] * 4 + [False] * 2


def test_adapt_measures_whole_fields_by_the_rule_the_bundle_will_carry(tmp_path):
    """The site's validation and test fields are judged as a device running the bundle judges them: a
    field its focus rule refuses gives no cells to the cutoff or the gate."""
    import cv2

    from edgekit.adapt import whole_field_inputs
    from edgekit.benchmarks.synthetic import compose_field
    from edgekit.manifest import Preprocessing

    cells = sorted((shared_data("malaria_cells") / "Uninfected").glob("*"))[:40]
    if not cells:
        pytest.skip("NIH cells not in ../shared/data")
    rgb, _ = compose_field([read_image(p) for p in cells], seed=0, gap=30, background=(225, 222, 215))
    image = tmp_path / "F001.png"
    cv2.imwrite(str(image), rgb[:, :, ::-1])
    pre = Preprocessing(input_size=(32, 32))
    assert whole_field_inputs(image, pre) is not None
    score = field_focus(rgb, FocusRule(marks=True))
    assert score is not None
    strict = {"floor": min(0.99, 1.5 * score), "marks": True, "source": "test"}
    assert whole_field_inputs(image, pre, strict) is None
    assert whole_field_inputs(image, pre, {**strict, "floor": 0.5 * score}) is not None


def _synthetic_field(seed: int, sigma: float = 0.0) -> np.ndarray:
    """:func:`tests.device_helpers.smear_field` without its cells."""
    from tests.device_helpers import smear_field

    return smear_field(seed, sigma)[0]


def _site_dir(tmp_path, blurred_seeds: set[int], n: int = 8) -> list[str]:
    """``n`` synthetic training fields written to ``tmp_path``, those of ``blurred_seeds`` blurred
    with sigma 2; their stems."""
    import cv2

    for seed in range(n):
        rgb = _synthetic_field(seed, 2.0 if seed in blurred_seeds else 0.0)
        cv2.imwrite(str(tmp_path / f"f{seed}.png"), rgb[:, :, ::-1])
    return [f"f{seed}" for seed in range(n)]


def test_site_rule_leaves_out_fields_that_barely_respond_to_blur():
    """A field that keeps most of its score when blurred again was blurred already: left out of the
    median when many are; where most fields are like it, the floor is the shared one, marks left out."""
    from edgekit.device.field.focus import SITE_BLURRED_RESPONSE, looks_blurred

    sharp, soft = [0.05, 0.06, 0.055, 0.045], [0.02, 0.018, 0.022, 0.019]
    response = [0.4 * s for s in sharp] + [(SITE_BLURRED_RESPONSE + 0.1) * s for s in soft]
    rule = site_rule(sharp + soft, response)
    assert rule.floor == round(SITE_FLOOR_SHARE * float(np.median(sharp)), 4) and "4 left out" in rule.source
    assert site_rule(sharp + soft).floor < rule.floor / 1.5  # without the responses: set on blur
    mostly = site_rule(sharp[:1] + soft, response[:1] + response[4:])
    assert looks_blurred(sharp[:1] + soft, response[:1] + response[4:])
    assert mostly.floor == FOCUS_FLOOR and mostly.marks
    # a few fields that respond as blurred ones move a median little: every field sets it
    few = site_rule(sharp * 2 + soft[:1], response[:4] * 2 + response[4:5])
    assert few.floor == round(SITE_FLOOR_SHARE * float(np.median(sharp * 2 + soft[:1])), 4)


@pytest.mark.parametrize("n_blurred", [5, 8])
def test_site_focus_on_blurred_training_fields_still_refuses_blur(tmp_path, n_blurred):
    """Training fields mostly (5 of 8) or wholly blurred with sigma 2 (synthetic) do not lower the
    site's floor to blur: other fields blurred with sigma 2 are refused and sharp ones kept; wholly
    blurred ones give the shared floor with a warning."""
    from edgekit.site_focus import site_focus

    n = 8
    blurred = set(range(n_blurred))
    lines: list[str] = []
    got = site_focus(tmp_path, _site_dir(tmp_path, blurred, n), lines.append)
    assert got is not None
    rule = FocusRule.from_dict(got)
    assert rule.marks
    for seed in (100, 101, 102):  # fields the floor was not set on
        assert rule.reason(field_focus(_synthetic_field(seed), rule)) is None
        assert "out of focus" in (rule.reason(field_focus(_synthetic_field(seed, 2.0), rule)) or "")
    if n_blurred == n:
        assert rule.floor == FOCUS_FLOOR and "WARNING" in lines[-1] and "out of focus" in lines[-1]
    else:
        assert "left out as blurred" in rule.source


@needs_iml
def test_iml_fields_respond_to_blur_as_sharp_ones_with_their_bar_left_out():
    """The blurred copy is scored without the marks found on the field itself: blurred, IML's bar can
    escape the mark finder and read as edges, and its sharp fields then looked blurred (5 of these 7)."""
    from edgekit.device.field.focus import sharp_scores
    from edgekit.site_focus import field_scores

    pairs = [field_scores(_iml(s), FocusRule(marks=True)) for s in SITE_FIELDS]
    scores, blurred = [p[0] for p in pairs if p], [p[1] for p in pairs if p]
    assert len(sharp_scores(scores, blurred)) == len(SITE_FIELDS)
    assert site_rule(scores, blurred) == site_rule(scores)


def test_a_site_rule_judges_an_enlarged_field_at_the_sites_scale(tmp_path):
    """A site bundle records its fields' cell radius: a sharp field enlarged 1.5x (a phone zoom) is
    judged shrunk back to it and kept, while fields blurred with sigma 2 at the site's scale (their
    cells as large as the site's) stay refused; without the radius the enlarged field is refused."""
    from edgekit.benchmarks.field_transforms import rescale
    from edgekit.site_focus import site_focus

    got = site_focus(tmp_path, _site_dir(tmp_path, set()), [].append)
    assert got is not None and got["radius"] > 0
    rule = FocusRule.from_dict(got)
    without = FocusRule.from_dict({**got, "radius": 0.0})
    for seed in (100, 101):
        zoomed = rescale(_synthetic_field(seed), 1.5)
        assert without.reason(field_focus(zoomed, without)) is not None
        assert rule.reason(field_focus(zoomed, rule)) is None
        assert rule.reason(field_focus(_synthetic_field(seed, 2.0), rule)) is not None
        assert rule.reason(field_focus(rescale(_synthetic_field(seed, 3.0), 1.5), rule)) is not None


def test_a_focus_radius_is_checked_in_the_manifest():
    def manifest(radius: object) -> dict:
        return {"labels": ["A", "B"], "focus": {"floor": 0.03, "marks": True, "radius": radius}}

    validate_manifest_data(manifest(31.5))
    assert FocusRule.from_dict(manifest(31.5)["focus"]).radius == 31.5
    for bad in (-1, "31", float("nan"), 1e9):
        with pytest.raises(BundleError, match="focus.radius"):
            validate_manifest_data(manifest(bad))


def test_a_site_radius_far_from_the_fields_does_not_rescue_a_blurred_one():
    """A field shrunk far enough looks sharp whatever its focus: cells over SITE_ZOOM_MAX x the
    site's radius (a misread, other optics) are judged as they are; a bad radius is refused."""
    from edgekit.device.field.focus import focus_score

    blurred = _synthetic_field(5, 3.0)
    far = FocusRule(floor=0.5, marks=True, radius=3.0)  # the field's cells read ~9x this
    assert far.score(blurred) == focus_score(blurred, measure=far.measure) < 0.05
    for bad in (-1.0, "31", float("nan")):
        with pytest.raises(ValueError):
            FocusRule(radius=bad)  # type: ignore[arg-type]
