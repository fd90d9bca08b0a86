"""Screening: records in SQLite, resume without duplicates, summaries, the patient decision,
the stop rule, database failures, and `edgekit screen` / `edgekit sessions`."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from device_helpers import CELLS, GOLDEN, awkward_inputs, cell_image, write_image

from edgekit.cli import main
from edgekit.device.pipeline import array_hash, expand_inputs, file_hash
from edgekit.device.records import RecordStore
from edgekit.device.runtime import load_classifier
from edgekit.device.screening import path_crops, patient_decision, record_crops, summarize
from edgekit.errors import RecordsError
from edgekit.manifest import Decision, Manifest, PatientRule, Thresholds
from edgekit.metrics import wilson_interval


@pytest.fixture(scope="module")
def clf():
    return load_classifier(GOLDEN, "tflite_fp32")


def _count(db) -> tuple[int, int]:
    con = sqlite3.connect(db)
    n, distinct = con.execute("SELECT COUNT(*), COUNT(DISTINCT content_hash) FROM records").fetchone()
    con.close()
    return n, distinct


def test_record_and_resume_without_duplicates(tmp_path, clf):
    db = tmp_path / "s.sqlite"
    with RecordStore(db) as store:
        session = store.open_session("P1", clf.model_sha256, site="lab", operator="ann")
        tally = record_crops(store, session, path_crops(expand_inputs([str(CELLS)])), clf)
        assert tally.counts["classified"] == 4
        again = store.open_session("P1", clf.model_sha256)
        assert again.id == session.id and again.site == "lab"  # a rerun resumes the session
        tally = record_crops(store, again, path_crops(expand_inputs([str(CELLS)])), clf)
        assert tally.counts["skipped"] == 4 and tally.counts["classified"] == 0
        rows = store.records(session.id)
    assert _count(db) == (4, 4)
    assert {r["content_hash"] for r in rows} == {file_hash(p) for p in CELLS.iterdir()}
    assert all(r["model_sha256"] == clf.model_sha256 for r in rows)
    assert all(r["probabilities"] and abs(sum(r["probabilities"]) - 1) < 1e-4 for r in rows)
    assert con_mode(db) == "wal"


def con_mode(db) -> str:
    con = sqlite3.connect(db)
    mode = con.execute("PRAGMA journal_mode").fetchone()[0]
    con.close()
    return mode


def test_same_content_under_another_name_is_skipped_and_other_model_is_new(tmp_path, clf):
    shutil.copytree(CELLS, tmp_path / "a")
    shutil.copy(CELLS / "parasitized_a.webp", tmp_path / "a" / "copy.webp")
    with RecordStore(tmp_path / "s.sqlite") as store:
        s = store.open_session("P1", clf.model_sha256)
        tally = record_crops(store, s, path_crops(expand_inputs([str(tmp_path / "a")])), clf)
        assert (tally.counts["classified"], tally.counts["skipped"]) == (4, 1)
        other = store.open_session("P1", "f" * 64)
        assert other.id != s.id


def test_array_crops_from_another_source(tmp_path, clf):
    """A second source (e.g. crops cut from microscope fields) feeds the same recorder."""
    crops = [(f"field1.jpg#cell{i}", None, cell_image(i)) for i in range(5)]
    crops.append(("field1.jpg#cell0-again", array_hash(crops[0][2]), crops[0][2]))
    crops.append(("field1.jpg#tiny", None, cell_image(9, size=8)))
    with RecordStore(tmp_path / "s.sqlite") as store:
        s = store.open_session("P2", clf.model_sha256)
        tally = record_crops(store, s, crops, clf, source_kind="field")
        rows = store.records(s.id)
    assert (tally.counts["classified"], tally.counts["skipped"], tally.counts["rejected"]) == (5, 1, 1)
    assert [r["status"] for r in rows].count("rejected") == 1
    assert rows[-1]["reason"].startswith("too small") and rows[0]["source_kind"] == "field"


def test_bad_files_are_recorded_with_their_reason(tmp_path, clf):
    awkward_inputs(tmp_path / "in")
    with RecordStore(tmp_path / "s.sqlite") as store:
        s = store.open_session("P3", clf.model_sha256)
        items = list(expand_inputs([str(tmp_path / "in"), str(tmp_path / "missing.png")]))
        tally = record_crops(store, s, path_crops(items), clf)
        rows = {r["source_id"].split("/")[-1]: r for r in store.records(s.id)}
    assert tally.counts["failed"] == 6  # five bad files + the missing path (reported, not recorded)
    assert "missing.png" not in rows
    assert rows["zero.png"]["status"] == "failed" and rows["zero.png"]["reason"].startswith("empty")
    assert rows["rotated.jpg"]["status"] == "classified"


def test_stop_rule(tmp_path, clf):
    crops = [(f"c{i}", None, cell_image(i)) for i in range(10)]
    with RecordStore(tmp_path / "s.sqlite") as store:
        s = store.open_session("P4", clf.model_sha256)
        assert record_crops(store, s, crops, clf, stop_cells=3).counts["classified"] == 3
        assert record_crops(store, s, crops, clf, stop_cells=5).counts["classified"] == 2  # resumes to 5
        summary = summarize("P4", store.records(s.id), _decision(0.5, PatientRule(stop_cells=5)))
    assert summary.crops == 5 and summary.stop_reached


def _decision(cutoff: float, rule: PatientRule) -> Decision:
    return Manifest(["Parasitized", "Uninfected"], positive_label="Parasitized",
                    thresholds=Thresholds(0.9, 0.1, cutoff=cutoff), patient_rule=rule).decision


def test_patient_decision_and_summary():
    rule = PatientRule(positive_fraction=0.05, negative_fraction=0.05)
    assert rule.decide(0, 0) == "refer"
    assert rule.decide(10, 100) == "positive"
    assert rule.decide(0, 200) == "negative"  # Wilson upper bound ~1.9%
    assert rule.decide(0, 30) == "refer"  # too few cells to exclude 5%
    assert rule.decide(3, 100) == "refer"
    assert patient_decision(3, 100, rule) == "refer"  # the old name still answers
    # cells count as parasitized at the cutoff (0.6), uncertain-band cells included when above it
    records = ([{"status": "classified", "decision": "positive", "p_positive": 0.99}] * 2
               + [{"status": "classified", "decision": "uncertain", "p_positive": 0.7}]
               + [{"status": "classified", "decision": "uncertain", "p_positive": 0.4}] * 2
               + [{"status": "classified", "decision": "negative", "p_positive": 0.01}] * 95
               + [{"status": "rejected"}, {"status": "failed"}])
    s = summarize("P", records, _decision(0.6, rule))
    assert (s.crops, s.parasitized, s.uncertain, s.rejected, s.failed) == (100, 3, 3, 1, 1)
    assert s.fraction == 0.03 and s.ci95 == wilson_interval(3, 100) and s.decision == "refer"
    assert not s.stop_reached and "3 parasitized (3.0%" in s.line()
    assert summarize("P", records, _decision(0.3, rule)).decision == "positive"  # 5/100 reach the rule


def test_the_summary_line_says_how_far_the_stop_rule_is():
    """"stop rule 100/1000 cells" read as a score; the line says what it counts and what is left."""
    rule = PatientRule(positive_fraction=0.05, negative_fraction=0.05)
    records = [{"status": "classified", "decision": "negative", "p_positive": 0.01}] * 100
    line = summarize("P", records, _decision(0.6, rule)).line()
    assert "stop rule: 100 of 1000 cells, 900 more to go" in line, line
    assert "; stop rule reached" in summarize("P", records, _decision(0.6, rule), stop_cells=100).line()
    assert "; no stop rule" in summarize("P", records, _decision(0.6, rule), stop_cells=0).line()


def test_locked_database(tmp_path):
    db = tmp_path / "s.sqlite"
    RecordStore(db).close()
    blocker = sqlite3.connect(db)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(RecordsError, match="locked"):
            with RecordStore(db, timeout=0.1) as store:
                store.open_session("P", "a" * 64)
    finally:
        blocker.rollback()
        blocker.close()


def test_read_only_database(tmp_path):
    db = tmp_path / "s.sqlite"
    RecordStore(db).close()
    store = RecordStore(db, read_only=True)
    with pytest.raises(RecordsError, match="read-only"):
        store.open_session("P", "a" * 64)
    store.close()
    if os.geteuid() != 0:  # root ignores file permissions
        db.chmod(0o444)
        with pytest.raises(RecordsError, match="read-only"):
            RecordStore(db).open_session("P", "a" * 64)


def test_corrupt_database_is_one_clear_error(tmp_path):
    db = tmp_path / "s.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(RecordsError, match="corrupt"):
        RecordStore(db)
    args = ["screen", str(CELLS), "--patient", "P", "--db", str(db), "-m", str(GOLDEN)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and res.stderr.startswith("error: database") and "Traceback" not in res.output


def test_screen_and_sessions_cli(tmp_path, monkeypatch):
    db = tmp_path / "s.sqlite"
    monkeypatch.setenv("EDGEKIT_DB", str(db))
    runner = CliRunner()
    res = runner.invoke(main, ["screen", str(CELLS), "--patient", "P7", "--site", "Kisumu", "-m", str(GOLDEN),
                               "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["crops"] == 4 and summary["parasitized"] == 1  # parasitized_a: p = 0.996
    assert summary["decision"] == "positive"  # 1/4 >= the default 5%
    assert summary["stop_cells"] == 1000 and "classified 4" in res.stderr
    res = runner.invoke(main, ["screen", str(CELLS), "--patient", "P7", "-m", str(GOLDEN)])
    assert "skipped 4 already recorded" in res.stderr and "4 cells" in res.stdout
    res = runner.invoke(main, ["sessions", "list"])
    assert res.exit_code == 0 and "P7" in res.stdout and "Kisumu" in res.stdout
    res = runner.invoke(main, ["sessions", "show", "P7", "--json"])
    assert json.loads(res.stdout)["summary"]["crops"] == 4
    res = runner.invoke(main, ["sessions", "export", "--csv"])
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 4 and {r["patient"] for r in rows} == {"P7"} and rows[0]["site"] == "Kisumu"
    res = runner.invoke(main, ["sessions", "show", "nobody"])
    assert res.exit_code == 2 and "no session" in res.stderr
    res = runner.invoke(main, ["sessions", "list", "--db", str(tmp_path / "none.sqlite")])
    assert res.exit_code == 2 and "no screening database" in res.stderr


def test_sessions_use_the_stored_decision_after_the_bundle_is_gone(tmp_path):
    """A session is summarised with the cutoff and rule it was screened with, even when its bundle
    moved; a session with none stored says so instead of substituting defaults."""
    bundle = tmp_path / "bundle"
    shutil.copytree(GOLDEN, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["thresholds"].update(cutoff=0.001, negative=0.001)  # every cell counts: not a default
    manifest["patient_rule"]["positive_fraction"] = 0.9
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    db = tmp_path / "s.sqlite"
    runner = CliRunner()
    res = runner.invoke(main, ["screen", str(CELLS), "--patient", "P8", "-m", str(bundle), "--db", str(db),
                               "--json"])
    assert res.exit_code == 0, res.output
    screened = json.loads(res.stdout)
    assert screened["parasitized"] == 4 and screened["decision"] == "positive"
    shutil.rmtree(bundle)
    res = runner.invoke(main, ["sessions", "show", "P8", "--db", str(db), "--json"])
    shown = json.loads(res.stdout)
    assert shown["summary"] == screened
    assert shown["session"]["decision"]["thresholds"]["cutoff"] == 0.001
    with sqlite3.connect(db) as conn:  # what an older edgekit left: no decision stored
        conn.execute("UPDATE sessions SET decision = NULL")
    res = runner.invoke(main, ["sessions", "show", "P8", "--db", str(db)])
    assert res.exit_code == 0 and "no decision rule is stored" in res.stdout
    res = runner.invoke(main, ["sessions", "list", "--db", str(db)])
    assert "unknown" in res.stdout and "positive" not in res.stdout


def test_screen_needs_paths_or_camera(tmp_path):
    res = CliRunner().invoke(main, ["screen", "--patient", "P", "--db", str(tmp_path / "s.sqlite")])
    assert res.exit_code == 2 and "PATHS or --camera" in res.stderr


def test_killed_batch_resumes_without_loss_or_duplicates(tmp_path):
    """Kill -9 a 1,000-image screening after some rows are committed, rerun, check the records."""
    folder = tmp_path / "imgs"
    for i in range(1000):
        write_image(folder / f"c{i:04d}.png", cell_image(i, 40))
    db = tmp_path / "s.sqlite"
    cmd = [sys.executable, "-c", "from edgekit.cli import main; main()", "screen", str(folder),
           "--patient", "PK", "--db", str(db), "-m", str(GOLDEN), "--stop-cells", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists() and _safe_count(db) >= 150:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the batch finished before it could be killed"
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = _count(db)[0]
    assert 150 <= killed_at < 1000
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"skipped {killed_at} already recorded" in done.stderr
    assert _count(db) == (1000, 1000)


def _safe_count(db) -> int:
    try:
        return _count(db)[0]
    except sqlite3.Error:
        return 0


def test_a_batchs_decoded_crops_are_freed_before_the_next_batch_is_decoded(tmp_path, clf, monkeypatch):
    """``record_crops`` lets go of a classified batch's decoded crops before the next batch is
    decoded (the lookahead's next batch aside): one batch of crops in memory, not two."""
    import weakref

    import edgekit.device.screening as screening

    load = screening.load_batch
    held: list = []
    alive: list[int] = []

    def traced(*args, **kwargs):
        alive.append(sum(r() is not None for r in held))
        loaded = load(*args, **kwargs)
        held[:] = [weakref.ref(rgb) for _, rgb in loaded if rgb is not None]
        return loaded

    monkeypatch.setattr(screening, "load_batch", traced)
    with RecordStore(tmp_path / "s.sqlite") as store:
        session = store.open_session("F", clf.model_sha256)
        tally = record_crops(store, session, path_crops(expand_inputs([str(CELLS)])), clf, batch_size=1)
    assert tally.counts["classified"] == 4 and len(alive) == 4
    assert alive == [0, 0, 0, 0]


@pytest.mark.parametrize("stop", [0, 4, 7, 100])
def test_lookahead_records_the_same_batches(tmp_path, clf, stop):
    """Decoding the next batch while this one is committed (``lookahead``, as `screen` does for
    files) records and reports exactly what the batch-by-batch loop does, stop rule included."""
    import numpy as np

    folder = tmp_path / "in"
    folder.mkdir()
    for i, p in enumerate(sorted(CELLS.iterdir())):
        shutil.copy(p, folder / p.name)
        shutil.copy(p, folder / f"dup{i}{p.suffix}")  # same content: skipped
    for seed in range(6):
        write_image(folder / f"disc{seed}.png", cell_image(seed, 64))
    write_image(folder / "blank.png", np.zeros((64, 64, 3), np.uint8))  # rejected
    (folder / "junk.png").write_bytes(b"not an image")  # failed

    def run(lookahead: bool):
        reported = []
        with RecordStore(tmp_path / f"{lookahead}-{stop}.sqlite") as store:
            s = store.open_session("LA", clf.model_sha256)
            tally = record_crops(store, s, path_crops(expand_inputs([str(folder)])), clf, stop_cells=stop,
                                 on_outcome=lambda o: reported.append((o.source_id, o.status, o.reason)),
                                 batch_size=3, n_workers=2, lookahead=lookahead)
            rows = [(r["source_id"], r["status"], r["reason"], r["p_positive"], r["decision"])
                    for r in store.records(s.id)]
        return tally.counts, reported, rows

    plain = run(False)
    assert plain[0]["classified"] == (min(stop, 10) if stop else 10) and len(plain[2]) >= 4
    assert run(True) == plain


def test_the_tally_line_gives_a_rate_only_for_classified_images():
    """One missing file ended with "(11235.8 images/s)": the rate counted files that never reached the
    model."""
    from edgekit.device.pipeline import Tally

    tally = Tally(started=time.perf_counter() - 2.0)
    tally.add("failed")
    assert "images/s" not in tally.line(), tally.line()
    for _ in range(4):
        tally.add("classified")
    rate = float(tally.line().split("(")[1].split()[0])
    assert 1.0 < rate <= 2.0, tally.line()  # 4 classified in just over 2 s, not the 5 files
