"""The domain guard: statistics in the manifest, verdicts on crops, fields and sessions, crops that
are plainly not cells rejected, and out-of-domain sessions referred.

Real in-domain crops: the NIH sample crops in examples/cells and tests/fixtures/cells. Real
out-of-domain cells: cut by the device from the two BCCD fields in tests/fixtures/fields (MIT).
The verdicts use the shipped default bundle's fitted ``domain``.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from device_helpers import GOLDEN, write_image

from edgekit.device.domain import (
    FEATURES,
    NO_DOMAIN,
    cell_scores,
    crop_verdict,
    field_verdict,
    session_verdict,
)
from edgekit.device.field import count_cells, crop_cell
from edgekit.device.preprocess import read_image
from edgekit.device.quality import check_quality
from edgekit.device.runtime import default_bundle_dir
from edgekit.domain_fit import choose_threshold, fit_domain
from edgekit.errors import BundleError
from edgekit.manifest import Decision, Domain, Manifest, PatientRule, Thresholds, load_manifest

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ROOT / "tests" / "fixtures" / "fields"
NIH_CROPS = sorted((ROOT / "examples" / "cells").rglob("*.webp")) + sorted(
    (ROOT / "tests" / "fixtures" / "cells").glob("*.webp")
)


@pytest.fixture(scope="module")
def domain() -> Domain:
    dom = load_manifest(default_bundle_dir()).domain
    assert dom is not None, "the shipped default bundle must carry its domain statistics"
    return dom


@pytest.fixture(scope="module")
def bccd_cells() -> list[np.ndarray]:
    crops = []
    for f in sorted(FIELDS.glob("*.jpg")):
        rgb = read_image(f)
        cells, _, reason = count_cells(rgb)
        assert reason is None
        crops.extend(crop_cell(rgb, c) for c in cells)
    return crops


def test_nih_crops_are_in_domain(domain):
    crops = [read_image(p) for p in NIH_CROPS]
    assert len(crops) >= 14
    assert all(check_quality(c, domain=domain) is None for c in crops)
    scores = cell_scores(crops, domain)
    v = session_verdict(scores, domain)
    assert v["ok"] and v["score"] <= domain.session_threshold and "look like" in v["why"]
    assert field_verdict(scores, domain)["ok"]


def test_bccd_cells_are_out_of_domain(domain, bccd_cells):
    assert len(bccd_cells) >= 20
    scores = cell_scores(bccd_cells, domain)
    for v in (field_verdict(scores, domain), session_verdict(scores, domain)):
        assert v["ok"] is False and v["score"] > domain.field_threshold
        assert "do not look like" in v["why"]
    # but each is a real cell: not rejected as "not a cell" one by one
    assert sum(check_quality(c, domain=domain) is None for c in bccd_cells) >= 0.8 * len(bccd_cells)


def test_plainly_not_cells_are_rejected(domain):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
    assert "not a single cell" in check_quality(noise, domain=domain)
    smooth = np.clip(rng.normal(128, 40, (120, 120, 3)), 0, 255).astype(np.uint8)
    assert check_quality(smooth, domain=domain) is not None
    field = read_image(FIELDS / "BloodImage_00014.jpg")
    assert "edgekit field" in check_quality(field, domain=domain)
    for p in NIH_CROPS[:6]:
        rgb = read_image(p)
        gray = np.repeat(rgb.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
        assert "grayscale" in check_quality(gray, domain=domain)
    assert crop_verdict(noise, domain)["ok"] is False
    assert crop_verdict(read_image(NIH_CROPS[0]), domain)["ok"] is True
    blank = np.zeros((80, 80, 3), np.uint8)
    assert check_quality(blank, domain=domain) is not None
    # without a domain (bring-your-own bundle) only the generic gates apply
    assert check_quality(noise) is None


def test_no_domain_cannot_vouch():
    assert field_verdict([1.0, 2.0], None) == NO_DOMAIN
    assert session_verdict([], None)["ok"] is False
    assert "cannot vouch" in NO_DOMAIN["why"] or "nothing can vouch" in NO_DOMAIN["why"]


def test_too_few_cells_are_not_vouched_for(domain):
    v = field_verdict([0.5, 0.5], domain)
    assert v["ok"] is False and "too few cells" in v["why"]


def _domain(**kw) -> Domain:
    k = len(FEATURES)
    base = dict(
        features=list(FEATURES),
        mean=[0.0] * k,
        inv_cov=np.eye(k).tolist(),
        field_threshold=3.0,
        session_threshold=2.5,
    )
    return Domain(**{**base, **kw})


def test_manifest_round_trip_and_validation(tmp_path):
    m = Manifest(labels=["Parasitized", "Uninfected"], positive_label="Parasitized", domain=_domain())
    m.save(tmp_path)
    back = load_manifest(tmp_path)
    assert back.domain == m.domain
    d = json.loads((tmp_path / "manifest.json").read_text())
    d["domain"]["mean"] = [0.0]
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match="domain"):
        load_manifest(tmp_path)
    d["domain"] = None  # an older bundle
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    assert load_manifest(tmp_path).domain is None


def test_out_of_domain_session_is_referred():
    from edgekit.device.screening import summarize

    rule = Decision(labels=("Parasitized", "Uninfected"), positive_label="Parasitized",
                    thresholds=Thresholds(positive=0.9, negative=0.1, cutoff=0.5), rule=PatientRule())
    rows = [
        {"status": "classified", "p_positive": 0.99, "decision": "positive", "domain_score": s}
        for s in [0.5] * 40
    ]
    ok = summarize("P1", rows, rule, domain=_domain())
    assert ok.decision == "positive" and ok.domain["ok"] and ok.validated
    far = [{**r, "domain_score": 9.0} for r in rows]
    bad = summarize("P1", far, rule, domain=_domain())
    assert bad.decision == "refer" and not bad.domain["ok"]
    assert "not validated for this microscope" in bad.line() and "do not look like" in bad.line()
    legacy = summarize("P1", rows, rule, domain=None)  # a bundle without statistics
    assert legacy.decision == "positive" and legacy.domain == NO_DOMAIN


def test_choose_threshold_between_in_and_out():
    t, why = choose_threshold([1.0, 1.2, 1.5], [4.0, 5.0, 6.0, 7.0])
    assert 1.5 < t < 4.0 and "midpoint" in why
    t2, why2 = choose_threshold(list(np.linspace(1, 3, 40)), [2.0, 2.5, 6.0])
    assert t2 == pytest.approx(np.quantile(np.linspace(1, 3, 40), 0.95)) and "overlap" in why2
    t3, why3 = choose_threshold([1.0, 2.0])
    assert t3 == pytest.approx(2.2) and "no off-site" in why3


def test_fit_domain_separates_generated_sets(domain):
    rng = np.random.default_rng(0)
    k = len(FEATURES)
    train = rng.normal(0, 1, (400, k))
    val = rng.normal(0, 1, (200, k))
    groups = [f"P{i % 10}" for i in range(200)]
    off = rng.normal(4, 1, (300, k))
    names = [f"F{i // 20}" for i in range(300)]
    dom, rep = fit_domain(train, np.full(400, 0.2), val, groups, off, names)
    assert rep["offsite_dev_fields_caught"] == 1.0 and rep["val_pseudo_fields_flagged"] <= 0.05
    assert dom.min_cells == 5 and dom.n == 400 and dom.max_crop_distance > dom.field_threshold


def test_records_gain_the_domain_column(tmp_path):
    from edgekit.device.records import RecordStore

    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)  # a database made before the guard existed
    con.executescript("""
        CREATE TABLE sessions (id INTEGER PRIMARY KEY, patient TEXT NOT NULL, site TEXT, operator TEXT,
            model_sha256 TEXT NOT NULL, model_format TEXT, bundle TEXT, created_at REAL NOT NULL,
            updated_at REAL NOT NULL, UNIQUE (patient, model_sha256));
        CREATE TABLE records (id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL, source_id TEXT NOT NULL,
            source_kind TEXT NOT NULL, content_hash TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
            label TEXT, probability REAL, p_positive REAL, decision TEXT, probabilities TEXT,
            model_sha256 TEXT NOT NULL, created_at REAL NOT NULL, UNIQUE (session_id, content_hash));
    """)
    con.close()
    with RecordStore(db) as store:
        s = store.open_session("P1", "abc")
        store.add_record(
            s, {"source_id": "a", "content_hash": "h", "status": "classified", "domain_score": 1.5}
        )
        assert store.records(s.id)[0]["domain_score"] == 1.5


def test_field_jsonl_and_overlay_carry_the_verdict(tmp_path):
    from edgekit.cli import main

    out = tmp_path / "ov"
    res = CliRunner().invoke(
        main, ["field", str(FIELDS / "BloodImage_00014.jpg"), "--format", "jsonl", "--overlay-dir", str(out)]
    )
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.output.strip().splitlines()]
    assert lines[0]["domain"]["ok"] is False and set(lines[0]["domain"]) == {"ok", "score", "why", "kind"}
    assert lines[-1]["total"]["domain"]["ok"] is False
    assert (out / "BloodImage_00014_overlay.png").is_file()
    table = CliRunner().invoke(main, ["field", str(FIELDS / "BloodImage_00014.jpg")])
    assert "NOT VALIDATED" in table.output


def _screen_summary(db: Path, patient: str, *inputs: str) -> dict:
    """``edgekit screen --json`` into ``db``; the session summary (its last line)."""
    from edgekit.cli import main

    res = CliRunner().invoke(main, ["screen", "--patient", patient, *inputs, "--db", str(db), "--json",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output.strip().splitlines()[-1])


def test_screen_refers_an_off_site_session_and_rejects_noise(tmp_path):
    from edgekit.cli import main

    db = tmp_path / "s.sqlite"
    summary = _screen_summary(db, "B1", "--fields", str(FIELDS / "BloodImage_00099.jpg"))
    assert summary["decision"] == "refer" and summary["domain"]["ok"] is False
    shown = CliRunner().invoke(main, ["sessions", "show", "B1", "--db", str(db), "--json"])
    assert json.loads(shown.output)["summary"]["domain"]["ok"] is False
    # the export carries the verdict as stored, so a spreadsheet cannot show these counts as valid
    import csv
    import io

    exported = CliRunner().invoke(main, ["sessions", "export", "--db", str(db)])
    rows = list(csv.DictReader(io.StringIO(exported.stdout, newline="")))
    assert rows and {(r["session_result"], r["session_validated"]) for r in rows} == {("refer", "no")}
    assert all(r["domain_score"] for r in rows if r["status"] == "classified")
    noise = write_image(
        tmp_path / "noise.png", np.random.default_rng(1).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    )
    res = CliRunner().invoke(main, ["classify", str(noise), "--format", "jsonl"])
    row = json.loads(res.output.strip().splitlines()[0])
    assert row["status"] == "rejected" and "not a single cell" in row["reason"]


def test_sessions_show_says_when_the_guard_vouches_for_a_session(tmp_path):
    """`sessions show` printed the guard's rule and, for a session it vouched for, no verdict at all."""
    from edgekit.cli import main

    db = tmp_path / "s.sqlite"
    summary = _screen_summary(db, "N1", *map(str, NIH_CROPS))
    assert summary["domain"]["ok"] is True
    shown = CliRunner().invoke(main, ["sessions", "show", "N1", "--db", str(db)])
    assert shown.exit_code == 0, shown.output
    vouched = "domain: the cells of this session look like the model's training cells"
    assert vouched in shown.output, shown.output


def test_classify_says_when_a_batch_of_crops_is_not_validated(tmp_path, bccd_cells):
    """classify keeps each crop's result but says once, on stderr, when the batch does not look like
    the training cells (here: BCCD cells cut as the device cuts them); NIH crops get no such line."""
    from edgekit.cli import main

    for i, crop in enumerate(bccd_cells[:40]):
        write_image(tmp_path / f"bccd_{i}.png", crop)
    off = CliRunner().invoke(main, ["classify", str(tmp_path), "--format", "jsonl"])
    assert "domain: NOT VALIDATED for this microscope" in off.stderr and "another microscope" in off.stderr
    assert "NOT VALIDATED" not in off.stdout
    nih = CliRunner().invoke(main, ["classify", *map(str, NIH_CROPS), "--format", "jsonl"])
    assert nih.exit_code == 0 and "NOT VALIDATED" not in nih.output


def test_golden_bundle_without_domain_still_decides(tmp_path):
    cells = str(ROOT / "tests" / "fixtures" / "cells")
    summary = _screen_summary(tmp_path / "g.sqlite", "G", cells, "--model", str(GOLDEN))
    assert summary["domain"] == NO_DOMAIN and summary["decision"] in ("positive", "negative", "refer")


# ---------------------------------------------------------------- rates on the shared data


@pytest.mark.realdata
def test_rates_on_real_data(shared_malaria, domain):
    """NIH test patients (30 crops each: a noisier median than a whole session, so a stricter test)
    are not flagged; IML and BCCD test-block fields are caught. Full numbers: benchmarks/domain_guard.py."""
    import csv

    from edgekit.benchmarks.domain_guard import offsite_split
    from edgekit.paths import shared_data

    split = json.loads((ROOT / "benchmarks" / "results" / "malaria_split_patients.json").read_text())
    by_patient: dict[str, list[Path]] = {}
    for r in csv.DictReader(open(shared_malaria / "manifest.csv")):
        if r["patient"] in split["patients"]["test"]:
            by_patient.setdefault(r["patient"], []).append(shared_malaria / r["class"] / r["file"])
    flagged = 0
    for files in by_patient.values():
        chosen = [files[i] for i in np.random.default_rng(0).permutation(len(files))[:30]]
        flagged += not session_verdict(cell_scores([read_image(f) for f in chosen], domain), domain)["ok"]
    assert len(by_patient) == 39 and flagged / len(by_patient) <= 0.05
    off = offsite_split()
    if not (shared_data("malaria_fields_iml") / "images").is_dir():
        pytest.skip("IML fields not present")
    fields = off["iml"]["test"][::14] + off["bccd"]["test"][::18]
    caught = soft = 0
    for rel in fields:
        rgb = read_image(shared_data() / rel)
        cells, _, reason = count_cells(rgb)
        if reason is not None and reason.startswith("out of focus"):
            soft += 1  # KNOWN: the focus floor refuses 2 of these ~15 real fields (issue 22 report)
            continue
        assert reason is None
        caught += not field_verdict(cell_scores([crop_cell(rgb, c) for c in cells], domain), domain)["ok"]
    assert soft <= 2 and len(fields) >= 15 and caught / (len(fields) - soft) >= 0.95


def test_domain_fit_command_writes_the_manifest(tmp_path):
    from conftest import make_cell_folder
    from device_helpers import golden_copy

    from edgekit.cli import main

    data = make_cell_folder(tmp_path / "cells", patients=20, per_patient=8, seed=5)
    bundle = golden_copy(tmp_path / "bundle")
    assert load_manifest(bundle).domain is None
    res = CliRunner().invoke(main, ["domain", "fit", str(bundle), "--data", str(data),
                                    "--offsite", str(FIELDS / "BloodImage_00014.jpg")])
    assert res.exit_code == 0, res.output
    dom = load_manifest(bundle).domain
    assert dom is not None and dom.features == list(FEATURES) and dom.n >= 50
    assert "1 off-site dev fields" in dom.source
    bad = CliRunner().invoke(main, ["domain", "fit", str(bundle), "--data", str(tmp_path / "nope")])
    assert bad.exit_code != 0 and "error:" in bad.output and "Traceback" not in bad.output


def test_aggregate_is_numpys_median_of_the_finite_scores():
    """The session/field score is np.median's value, computed without numpy's median (whose NaN
    check imports numpy.ma, ~8 ms of a cold start)."""
    from edgekit.device.domain import aggregate

    rng = np.random.default_rng(0)
    for n in range(1, 60):
        scores = rng.normal(3.0, 1.0, size=n).tolist() + [None, float("nan"), float("inf")][: n % 4]
        finite = [s for s in scores if s is not None and np.isfinite(s)]
        assert aggregate(scores) == float(np.median(finite))
    assert aggregate([None, float("nan")]) is None


def test_a_crops_distance_given_by_the_caller_decides_as_the_one_computed(domain, bccd_cells):
    """The crop path computes each crop's features and distance once (its domain score) and hands
    both to the gates: the same reasons as computing them again, and the given distance is the one
    judged."""
    from edgekit.device.domain import crop_features, distances

    assert domain.max_crop_distance is not None
    crops = [read_image(p) for p in NIH_CROPS] + bccd_cells
    for c in crops:
        f = crop_features(c)
        d = None if f is None else float(distances(f, domain)[0])
        assert check_quality(c, domain=domain, features=f, distance=d) == check_quality(c, domain=domain)
    f = crop_features(crops[0])
    far = check_quality(crops[0], domain=domain, features=f, distance=domain.max_crop_distance + 1)
    assert far is not None and "does not look like a cell" in far
