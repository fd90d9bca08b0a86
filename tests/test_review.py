"""Parasitemia a person can check: kept crops of flagged cells, the review gallery (HTML, PNG),
reviewer verdicts, model vs confirmed counts, per-field intervals, and old databases."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner
from device_helpers import GOLDEN

from edgekit.cli import main
from edgekit.device.records import RecordsError, RecordStore
from edgekit.device.review import per_field, review_summary, sampled_negative
from edgekit.metrics import wilson_interval


def _records(db):
    with RecordStore(db) as store:
        s = store.find_session("P7")
        return s, store.records(s.id), store.crop_images(s.id)


def test_flagged_crops_are_kept_as_classified(screened):
    from edgekit.device.preprocess import read_image

    session, records, images = _records(screened)
    cutoff = json.loads((GOLDEN / "manifest.json").read_text())["thresholds"]["cutoff"]
    flagged = {r["id"] for r in records if r["p_positive"] >= cutoff or r["decision"] == "uncertain"}
    sampled = {r["id"] for r in records if r["id"] not in flagged and sampled_negative(r["content_hash"])}
    assert flagged and set(images) == flagged | sampled  # the flagged cells' crops and the negative sample
    rid = next(iter(flagged))
    source = next(r["source_id"] for r in records if r["id"] == rid)
    import cv2

    kept = cv2.imdecode(np.frombuffer(images[rid], np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert np.array_equal(kept, read_image(source))  # exactly the pixels that were classified


def test_review_gallery_confirm_and_counts(screened, tmp_path):
    runner = CliRunner()
    page = tmp_path / "review.html"
    res = runner.invoke(main, ["sessions", "review", "P7", "-o", str(page)])
    assert res.exit_code == 0, res.output
    text = page.read_text()
    session, records, images = _records(screened)
    assert text.count("<figure") == len(images) and "data:image/png;base64," in text
    assert "edgekit sessions confirm" in text
    sheet = tmp_path / "review.png"
    assert runner.invoke(main, ["sessions", "review", "P7", "-o", str(sheet)]).exit_code == 0
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the reviewer overrules the model's parasitized call
    top = max(records, key=lambda r: r["p_positive"])
    res = runner.invoke(main, ["sessions", "confirm", "P7", str(top["id"]), "--verdict", "overrule",
                               "--reviewer", "amina"])
    assert res.exit_code == 0, res.output
    assert "confirmed count: 0" in res.output and "1 overruled" in res.output
    res = runner.invoke(main, ["sessions", "show", "P7", "--json"])
    review = json.loads(res.stdout)["review"]
    assert review["model"]["parasitized"] == 1 and review["confirmed"]["parasitized"] == 0
    assert review["confirmed"]["ci95"] == list(wilson_interval(0, 4))
    res = runner.invoke(main, ["sessions", "show", "P7"])
    assert "model count:     1 (25.00%" in res.stdout and "confirmed count: 0" in res.stdout
    # CSV verdicts; unknown ids or verdicts change nothing and are one clear line
    csv_file = tmp_path / "v.csv"
    csv_file.write_text(f"record_id,verdict\n{top['id']},confirm\n")
    assert runner.invoke(main, ["sessions", "confirm", "P7", "--csv", str(csv_file)]).exit_code == 0
    bad = tmp_path / "bad.csv"
    bad.write_text(f"record_id,verdict\n{top['id']},maybe\n")
    res = runner.invoke(main, ["sessions", "confirm", "P7", "--csv", str(bad)])
    assert res.exit_code == 2 and "verdict" in res.stderr and "Traceback" not in res.output
    res = runner.invoke(main, ["sessions", "confirm", "P7", "9999", "--verdict", "parasitized"])
    assert res.exit_code == 2 and "no cell 9999" in res.stderr
    with RecordStore(screened) as store:
        assert store.reviews(session.id)[top["id"]]["verdict"] == "parasitized"


def test_review_summary_and_per_field_arithmetic():
    calls = [(0.9, "positive"), (0.6, "uncertain"), (0.4, "uncertain"), (0.1, "negative"), (0.05, "negative"),
             (0.95, "positive")]
    recs = [{"id": i, "status": "classified", "source_id": f"f{i % 2}.jpg#{i}", "p_positive": p,
             "decision": d} for i, (p, d) in enumerate(calls)]
    recs.append({"id": 9, "status": "rejected", "source_id": "f0.jpg", "p_positive": None, "decision": None})
    s = review_summary(recs, {2: {"verdict": "parasitized"}, 5: {"verdict": "not parasitized"}}, cutoff=0.5)
    assert s["cells"] == 6 and s["model"]["parasitized"] == 3 and s["flagged"] == 4
    assert s["confirmed"]["parasitized"] == 3 and s["agreed"] == 0 and s["overruled"] == 2
    assert s["reviewed"] == 2 and s["pending"] == 2
    fields = {f["field"]: f for f in per_field(recs, 0.5)}
    assert fields["f0.jpg"]["cells"] == 3 and fields["f0.jpg"]["parasitized"] == 1
    assert fields["f1.jpg"]["parasitized"] == 2 and fields["f1.jpg"]["ci95"] == list(wilson_interval(2, 3))


_V1 = """
CREATE TABLE sessions (id INTEGER PRIMARY KEY, patient TEXT NOT NULL, site TEXT, operator TEXT,
    model_sha256 TEXT NOT NULL, model_format TEXT, bundle TEXT, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, UNIQUE (patient, model_sha256));
CREATE TABLE records (id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL REFERENCES sessions(id),
    source_id TEXT NOT NULL, source_kind TEXT NOT NULL, content_hash TEXT NOT NULL, status TEXT NOT NULL,
    reason TEXT, label TEXT, probability REAL, p_positive REAL, decision TEXT, probabilities TEXT,
    model_sha256 TEXT NOT NULL, created_at REAL NOT NULL, UNIQUE (session_id, content_hash));
"""


def test_version_1_database_still_opens(tmp_path):
    """A database written before review tables existed: read-only use works (no reviews), and
    opening it for writing adds the tables without touching its rows."""
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.executescript(_V1)  # the version-1 tables: no sessions.decision, no review tables
    con.execute("INSERT INTO sessions VALUES (1, 'P1', NULL, NULL, 'abc', NULL, NULL, 0, 0)")
    con.execute("INSERT INTO records (session_id, source_id, source_kind, content_hash, status, p_positive,"
                " decision, model_sha256, created_at) VALUES (1, 'a.png', 'file', 'h', 'classified', 0.9,"
                " 'positive', 'abc', 0)")
    con.execute("PRAGMA user_version=1")
    con.commit()
    con.close()
    with RecordStore(db, read_only=True) as store:
        assert store.reviews(1) == {} and store.crop_images(1) == {}
    with RecordStore(db) as store:
        assert store.find_session("1").decided_with is None
        store.set_review(1, 1, "not parasitized", "amina")
        assert store.reviews(1)[1]["reviewer"] == "amina" and len(store.records(1)) == 1
        with pytest.raises(RecordsError, match="verdict must be"):
            store.set_review(1, 1, "maybe")


def test_verdicts_are_all_or_none_and_never_twice(screened):
    from edgekit.device.review import ReviewError, record_verdicts

    with RecordStore(screened) as store:
        session = store.find_session("P7")
        ids = [int(r["id"]) for r in store.records(session.id)]
        with pytest.raises(RecordsError, match="no cell 9999"):  # one transaction: the first is not kept
            store.set_reviews(session.id, [(ids[0], "parasitized"), (9999, "parasitized")])
        assert store.reviews(session.id) == {}
        with pytest.raises(ReviewError, match="verdict must be"):
            record_verdicts(store, session, [(ids[0], "parasitized"), (ids[1], "maybe")])
        assert store.reviews(session.id) == {}
        pairs = [(ids[0], "parasitized"), (ids[1], "overrule")]
        assert record_verdicts(store, session, pairs, "amina") == {"new": 2, "changed": 0, "unchanged": 0}
        first = store.reviews(session.id)
        assert record_verdicts(store, session, pairs, "amina") == {"new": 0, "changed": 0, "unchanged": 2}
        assert store.reviews(session.id) == first  # not rewritten: same time, same reviewer
        out = record_verdicts(store, session, [(ids[0], "not parasitized"), (ids[0], "parasitized")], "amina")
        assert out == {"new": 0, "changed": 0, "unchanged": 1}  # the last verdict given for a cell counts
        assert len(store.reviews(session.id)) == 2


def test_reviewed_cells_become_site_cells_from_both_sides(tmp_path):
    """Screening keeps one negative in NEGATIVE_SAMPLE_EVERY (by content hash); the reviewers' verdicts
    on kept crops, flagged or sampled, become labelled site cells grouped by field, in the layout
    `edgekit adapt` reads; unreviewed cells and cells without a crop are not."""
    from edgekit.data import scan_dataset
    from edgekit.device.review import NEGATIVE_SAMPLE_EVERY, encode_png, gallery_items, record_verdicts
    from edgekit.manifest import load_manifest

    decision = load_manifest(GOLDEN).decision
    sampled, plain = "0" * 64, "1" * 64
    assert sampled_negative(sampled) and not sampled_negative(plain) and not sampled_negative(None)
    assert sum(sampled_negative(f"{k:08x}") for k in range(2000)) == 2000 // NEGATIVE_SAMPLE_EVERY
    db = tmp_path / "s.sqlite"
    crop = np.zeros((40, 40, 3), np.uint8)
    crop[10:30, 10:30] = (200, 120, 160)
    with RecordStore(db) as store:
        s = store.open_session("P1", "m" * 64, decision=decision)
        rows = [{"source_id": f"fields/A.jpg#{k}", "content_hash": h, "status": "classified", "p_positive": p,
                 "decision": d} for k, (h, p, d) in enumerate([
                     ("a" * 64, 0.999, "positive"), (sampled, 0.01, "negative"), (plain, 0.02, "negative"),
                     ("b" * 64, 0.99, "positive")])]
        kept = {"a" * 64: encode_png(crop), sampled: encode_png(crop), "b" * 64: encode_png(crop)}
        store.add_records(s, rows, kept)
        ids = {r["content_hash"]: int(r["id"]) for r in store.records(s.id)}
        items = gallery_items(store, s, decision.cutoff)
        assert [it["negative_sample"] for it in items] == [False, False, True]  # flagged first
        record_verdicts(store, s, [(ids["a" * 64], "parasitized"), (ids[sampled], "not parasitized"),
                                   (ids[plain], "not parasitized")], reviewer="amina")
    out = tmp_path / "site"
    res = CliRunner().invoke(main, ["cells", "--from-sessions", str(db), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (out / "Parasitized").iterdir()) == [f"S1-A__r{ids['a' * 64]}.png"]
    assert sorted(p.name for p in (out / "Uninfected").iterdir()) == [f"S1-A__r{ids[sampled]}.png"]
    index = json.loads((out / "cells.json").read_text())
    assert index["per_field"][0]["screened"] == 4 and index["per_field"][0]["kept"] == 3
    assert [c["negative_sample"] for c in index["cells"]] == [False, True]
    assert scan_dataset(out, group_mode="regex:^(.+)__").classes == ["Parasitized", "Uninfected"]
    res = CliRunner().invoke(main, ["cells", "--from-sessions", str(tmp_path / "none.sqlite"), "-o",
                                    str(tmp_path / "x")])
    assert res.exit_code != 0 and "no screening database" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("text", ["", "record_id,verdict\n"])
def test_a_verdict_csv_without_verdicts_is_an_error(tmp_path, text):
    """An empty verdict file "succeeded" silently (exit 0, nothing recorded)."""
    from edgekit.device.review import read_verdicts
    from edgekit.errors import EdgekitError

    path = tmp_path / "v.csv"
    path.write_text(text)
    with pytest.raises(EdgekitError, match="holds no verdicts"):
        read_verdicts(path)


def test_review_says_how_many_cells_are_flagged_and_how_many_are_sampled_negatives(screened, tmp_path):
    """The gallery holds the flagged cells and the kept sample of negatives: the message and the
    page's title count each, not one number that matches neither the summary nor the page."""
    session, records, images = _records(screened)
    cutoff = json.loads((GOLDEN / "manifest.json").read_text())["thresholds"]["cutoff"]
    flagged = sum(r["p_positive"] >= cutoff or r["decision"] == "uncertain" for r in records)
    sampled = len(images) - flagged
    res = CliRunner().invoke(main, ["sessions", "review", "P7", "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    counts = f"({flagged} flagged, {sampled} sampled negative"
    assert counts in res.output and counts in (tmp_path / "r.html").read_text(), res.output


def test_the_summary_does_not_count_a_negative_samples_verdict_as_a_reviewed_flagged_cell():
    """A verdict on a sampled negative agrees or overrules, but leaves every flagged cell pending."""
    from edgekit.device.review import summary_lines

    recs = [{"id": i, "status": "classified", "source_id": f"c{i}.png", "p_positive": p, "decision": d}
            for i, (p, d) in enumerate([(0.9, "positive"), (0.6, "uncertain"), (0.05, "negative")])]
    s = review_summary(recs, {2: {"verdict": "not parasitized"}}, cutoff=0.5)
    line = summary_lines(s, [])[-1]
    assert "reviewed 0 of 2 flagged cells (2 pending)" in line and "1 agreed, 0 overruled" in line, line
