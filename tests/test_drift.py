"""Site drift: the site guard's fit (thresholds from validation fields only), the rolling view over a
site's sessions, and ``sessions list`` showing it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from device_helpers import GOLDEN

from edgekit.cli import main
from edgekit.device.domain import FEATURES, field_verdict
from edgekit.device.drift import SessionPoint, rolling_view, status_of
from edgekit.domain_fit import SITE_MARGIN, consecutive_sessions, fit_site_domain, fit_site_features
from edgekit.errors import BundleError, DataError
from edgekit.manifest import Domain, load_manifest


def _disc_crop(rng: np.random.Generator, colour: tuple[int, int, int], side: int = 60) -> np.ndarray:
    """A stained-looking cell on black: a disc of ``colour`` with a little texture."""
    yy, xx = np.mgrid[:side, :side]
    r = side / 2 - rng.uniform(2, 6)
    disc = (yy - side / 2) ** 2 + (xx - side / 2) ** 2 <= r * r
    img = np.zeros((side, side, 3), np.uint8)
    noise = rng.normal(0, 6, (side, side, 3))
    base = np.array(colour, np.float64) + rng.normal(0, 4, 3)
    img[disc] = np.clip(base + noise[disc], 20, 255).astype(np.uint8)
    return img


GREY, MAGENTA = (170, 165, 160), (170, 60, 150)


def _site(rng, colour, fields: int, per_field: int = 12) -> tuple[list[np.ndarray], list[str]]:
    crops, names = [], []
    for f in range(fields):
        tint = rng.normal(0, 3, 3)  # each field a little different, as slides are
        for _ in range(per_field):
            crops.append(_disc_crop(rng, tuple(np.clip(np.array(colour) + tint, 30, 250).astype(int))))
            names.append(f"F{f:03d}")
    return crops, names


def test_site_guard_flags_another_stain_and_passes_its_own():
    rng = np.random.default_rng(0)
    train, _ = _site(rng, GREY, 10)
    val, val_fields = _site(rng, GREY, 4)
    domain, report = fit_site_domain(train, val, val_fields, source="generated grey site")
    assert domain.field_threshold == pytest.approx(SITE_MARGIN * max(report["val_fields"].values()), rel=1e-3)
    assert domain.session_warn == pytest.approx(max(report["val_sessions"].values()), rel=1e-3)
    assert domain.session_warn < domain.session_threshold and "no off-site data" in domain.source
    from edgekit.device.domain import cell_scores

    for colour, ok in ((GREY, True), (MAGENTA, False)):
        new, names = _site(rng, colour, 5)
        scores = np.array(cell_scores(new, domain), dtype=float)
        g = np.array(names)
        verdicts = [field_verdict(scores[g == f].tolist(), domain)["ok"] for f in sorted(set(names))]
        assert all(v == ok for v in verdicts), (colour, verdicts)


def test_site_guard_refuses_too_little_data():
    rng = np.random.default_rng(1)
    train, _ = _site(rng, GREY, 2, per_field=10)
    val, fields = _site(rng, GREY, 1, per_field=10)
    with pytest.raises(DataError, match="at least 50"):
        fit_site_domain(train, val, fields)
    k = len(FEATURES)
    with pytest.raises(DataError, match="validation crops"):
        fit_site_features(rng.normal(0, 1, (80, k)), np.zeros(80), rng.normal(0, 1, (3, k)), ["a"] * 3)
    with pytest.raises(ValueError, match="margin"):
        fit_site_features(rng.normal(0, 1, (80, k)), np.zeros(80), rng.normal(0, 1, (9, k)), ["a"] * 9,
                          margin=0.5)


def test_consecutive_sessions_keep_runs_of_fields():
    runs = consecutive_sessions([f"F{i:02d}" for i in range(14)][::-1], 6)
    assert list(runs.values()) == [[f"F{i:02d}" for i in range(6)], [f"F{i:02d}" for i in range(6, 14)]]
    assert list(consecutive_sessions(["b", "a"], 6)) == ["a..b"]


def test_session_warn_is_optional_and_checked(tmp_path):
    k = len(FEATURES)
    base = dict(features=list(FEATURES), mean=[0.0] * k, inv_cov=np.eye(k).tolist(), field_threshold=3.0,
                session_threshold=2.5)
    assert Domain(**base).session_warn is None  # a bundle fitted before the drift view
    assert Domain(**base, session_warn=1.2).session_warn == 1.2
    with pytest.raises(BundleError, match="session_warn"):
        Domain(**base, session_warn=3.0)


def _pts(scores, threshold=4.0, warn=2.0, site="Kisumu", sha="a" * 64):
    return [SessionPoint(i + 1, site, sha, 1000.0 + i, s, threshold, warn) for i, s in enumerate(scores)]


def test_rolling_view_moves_from_ok_to_watch_to_drift():
    per, sites = rolling_view(_pts([1, 1, 1, 1, 1, 3, 3, 3, 5, 5, 5]), window=5)
    states = [per[i].status for i in range(1, 12)]
    assert states[:7] == ["ok"] * 7  # one or two odd sessions do not move a median of five
    assert states[7] == "watch" and states[-1] == "drift"
    assert per[11].rolling == 5.0 and per[11].ratio == pytest.approx(1.25) and per[11].short() == "1.25 DRIFT"
    (site,) = sites
    assert site.drift.status == "drift" and "re-validate this site" in site.line() and site.sessions == 11
    assert site.recent_scores == [3, 3, 5, 5, 5]


def test_rolling_view_keeps_sites_and_models_apart_and_skips_unscored():
    pts = _pts([5, 5, 5]) + _pts([1, None, 1], site="Kitale")
    pts += [SessionPoint(9, "Kisumu", "b" * 64, 5000.0, None, None, None)]  # a bundle without a guard
    per, sites = rolling_view(pts)
    assert [s.site for s in sites] == ["Kisumu", "Kitale", "Kisumu"]
    assert [s.drift.status for s in sites] == ["drift", "ok", "unknown"]
    assert per[9].short() == "-" and sites[1].drift.sessions == 2
    assert status_of(None, 4.0, None) == "unknown" and status_of(3.0, 4.0, None) == "ok"
    with pytest.raises(ValueError):
        rolling_view(pts, window=0)


def _guarded_bundle(tmp_path, threshold=4.0, warn=2.0):
    bundle = tmp_path / "site_bundle"
    shutil.copytree(GOLDEN, bundle)
    m = json.loads((bundle / "manifest.json").read_text())
    k = len(FEATURES)
    m["domain"] = dict(features=list(FEATURES), mean=[0.0] * k, inv_cov=np.eye(k).tolist(),
                       field_threshold=threshold + 1, session_threshold=threshold, session_warn=warn)
    (bundle / "manifest.json").write_text(json.dumps(m))
    return bundle


def _record_sessions(store, bundle, sha: str, scores, site: str = "Kisumu") -> None:
    """Sessions screened with ``bundle``: each stores its Decision and guard, as screening does."""
    from edgekit.device.records import ScreenedWith

    manifest = load_manifest(bundle)
    decision = manifest.decision
    with_guard = ScreenedWith("m" * 64, None, "signature not checked", manifest.domain)
    for i, score in enumerate(scores):
        s = store.open_session(f"P{i}", sha, site=site, bundle=str(bundle), decision=decision,
                               screened_with=with_guard)
        store.add_records(s, [{"source_id": f"f{i}.jpg#{j}", "content_hash": f"{i}-{j}",
                               "status": "classified", "p_positive": 0.01, "decision": "negative",
                               "domain_score": score + 0.01 * j} for j in range(10)])


def test_sessions_list_shows_a_site_drifting(tmp_path):
    from edgekit.device.records import RecordStore

    bundle = _guarded_bundle(tmp_path)
    db = tmp_path / "s.sqlite"
    with RecordStore(db) as store:
        _record_sessions(store, bundle, "c" * 64, [1, 1, 1, 6, 6, 6, 6])
    res = CliRunner().invoke(main, ["sessions", "list", "--db", str(db)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert "drift" in lines[0]
    row = {ln.split()[1]: ln for ln in lines[1:8]}
    assert "ok" in row["P0"] and "DRIFT" in row["P6"] and "DRIFT" not in row["P3"]
    assert any("site Kisumu" in ln and "DRIFT" in ln and "edgekit site check" in ln for ln in lines[8:])
    narrow = CliRunner().invoke(main, ["sessions", "list", "--db", str(db), "--window", "1"])
    assert "DRIFT" in {ln.split()[1]: ln for ln in narrow.stdout.splitlines()[1:8]}["P3"]



def test_station_page_shows_site_drift(tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient

    from edgekit.device.runtime import load_classifier
    from edgekit.device.serve.app import ServeConfig, create_app
    from edgekit.device.serve.station import Station

    bundle = _guarded_bundle(tmp_path)
    station = Station(load_classifier(GOLDEN), tmp_path / "s.sqlite", tmp_path / "overlays")
    try:
        sha = station.classifier.model_sha256
        station.submit(_record_sessions, station.store, bundle, sha, [1, 1, 6, 6, 6]).result()
        station.submit(_record_sessions, station.store, bundle, "d" * 64, [1, 1], "Kitale").result()
        client = TestClient(create_app(station, ServeConfig()), base_url="http://127.0.0.1:8000")
        r = client.get("/api/drift")
        assert r.status_code == 200, r.text
        sites = r.json()["sites"]
        assert [(s["site"], s["drift"]["status"], s["current"]) for s in sites] == [
            ("Kisumu", "drift", True), ("Kitale", "ok", False)]
        assert "re-validate this site" in sites[0]["line"]
        assert sites[0]["drift"]["ratio"] == pytest.approx(1.51, abs=0.01)
        assert client.get("/api/drift", params={"window": 0}).status_code == 422
        page, js = client.get("/").text, client.get("/static/app.js").text
        assert 'id="drift-alert"' in page and 'id="drift"' in page and "api/drift" in js
    finally:
        station.close()


def test_domain_fit_site_refits_a_site_guard(tmp_path):
    """`edgekit domain fit --site` on `edgekit cells`-style folders: the guard a site refits after
    checking its bundle on new fields; thresholds from other fields than the statistics."""
    import cv2

    rng = np.random.default_rng(4)
    crops, names = _site(rng, GREY, 12, per_field=10)
    for i, (c, f) in enumerate(zip(crops, names, strict=True)):
        (tmp_path / "cells" / "Uninfected").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "cells" / "Uninfected" / f"{f}__{i}.png"), c[:, :, ::-1])
    bundle = tmp_path / "b"
    shutil.copytree(GOLDEN, bundle)
    cells = str(tmp_path / "cells")
    res = CliRunner().invoke(main, ["domain", "fit", str(bundle), "--data", cells, "--site", "--block", "2"])
    assert res.exit_code == 0, res.output
    dom = load_manifest(bundle).domain
    assert dom is not None and dom.session_warn is not None and "domain fit --site" in dom.source
    assert dom.n == 100 and "of 2 validation fields" in dom.source  # 2 of 12 fields set the thresholds
    bad = CliRunner().invoke(main, ["domain", "fit", str(bundle), "--data", cells, "--site", "--offsite",
                                    str(GOLDEN)])
    assert bad.exit_code == 2 and "drop --offsite" in bad.stderr


def test_sessions_show_says_where_in_a_session_the_guard_stopped_vouching(tmp_path):
    from edgekit.device.records import RecordStore

    bundle = _guarded_bundle(tmp_path, threshold=4.0)  # field threshold 5.0
    db = tmp_path / "s.sqlite"
    with RecordStore(db) as store:
        from edgekit.device.records import ScreenedWith

        manifest = load_manifest(bundle)
        s = store.open_session("P1", "c" * 64, site="Kisumu", bundle=str(bundle), decision=manifest.decision,
                               screened_with=ScreenedWith("m" * 64, None, "not checked", manifest.domain))
        store.add_records(s, [{"source_id": f"f{f}.jpg#{j}", "content_hash": f"{f}-{j}",
                               "status": "classified", "p_positive": 0.01, "decision": "negative",
                               "domain_score": 1.0 if f < 3 else 7.0} for f in range(1, 5) for j in range(8)])
    res = CliRunner().invoke(main, ["sessions", "show", "P1", "--db", str(db)])
    assert res.exit_code == 0, res.output
    assert ("guard by field: 2 of 4 fields vouched for; not: f3.jpg, f4.jpg; first at field 3 of 4"
            in res.stdout)
    shown = json.loads(CliRunner().invoke(main, ["sessions", "show", "P1", "--db", str(db), "--json"]).stdout)
    assert [f["ok"] for f in shown["guard_fields"]] == [True, True, False, False]


def test_a_site_gate_survives_a_guard_refit(tmp_path):
    """`edgekit domain fit --site` rewriting a site bundle's guard keeps the gate adapt recorded."""
    from edgekit.manifest import Gate, Manifest

    m = Manifest(labels=["Parasitized", "Uninfected"], positive_label="Parasitized")
    m.save(tmp_path)
    back = load_manifest(tmp_path)
    assert back.domain is None
    d = json.loads((tmp_path / "manifest.json").read_text())
    d["domain"] = {"features": ["a"], "mean": [0.0], "inv_cov": [[1.0]], "field_threshold": 1.0,
                   "session_threshold": 1.0, "gate": {"bounds": {"auc": 0.95}, "measured": {"auc": 0.9}}}
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    back = load_manifest(tmp_path)
    assert back.domain.gate == Gate(bounds={"auc": 0.95}, measured={"auc": 0.9})
    assert not back.domain.gate.passed
    d["domain"]["gate"] = {"bounds": {"auc": "high"}, "measured": {}}
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match="gate"):
        load_manifest(tmp_path)
