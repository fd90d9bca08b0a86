"""`edgekit screen --fields`: whole microscope fields feed the screening records."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from click.testing import CliRunner

from edgekit.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


def test_screen_fields_records_cells_and_rejected_fields(tmp_path):
    bad = tmp_path / "not_a_field.jpg"
    bad.write_bytes(b"junk")
    db = tmp_path / "s.sqlite"
    args = ["screen", "--patient", "F1", "--fields", str(FIXTURES / "fields"), str(bad),
            "--model", str(FIXTURES / "golden_bundle"), "--db", str(db), "--json"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 1, first.output  # recorded as rejected, and the unreadable file said so
    query = "select source_id, source_kind, status, reason from records"
    rows = sqlite3.connect(db).execute(query).fetchall()
    cells = [r for r in rows if r[2] == "classified"]
    rejected = [r for r in rows if r[2] == "rejected"]
    assert len(cells) >= 20  # two real BCCD fields hold dozens of red cells
    assert all("#" in r[0] and r[1] == "field" for r in cells)
    assert len(rejected) == 1 and "not_a_field.jpg" in rejected[0][0] and rejected[0][3]

    again = CliRunner().invoke(main, args)  # a rerun records nothing twice
    assert again.exit_code == 0
    assert sqlite3.connect(db).execute("select count(*) from records").fetchone()[0] == len(rows)


def test_screen_fields_stop_rule_counts_cells_across_fields(tmp_path):
    db = tmp_path / "s.sqlite"
    result = CliRunner().invoke(main, ["screen", "--patient", "F2", "--fields", str(FIXTURES / "fields"),
                                       "--model", str(FIXTURES / "golden_bundle"), "--db", str(db),
                                       "--stop-cells", "5"])
    assert result.exit_code == 0, result.output
    n = sqlite3.connect(db).execute("select count(*) from records where status='classified'").fetchone()[0]
    assert n == 5


def test_each_field_is_measured_for_focus_once_with_the_same_records(tmp_path, monkeypatch):
    """The field gate and the session's check share one focus measurement per field, and the
    sharpness recorded is the field's own score, as when the session's check measured it again."""
    import edgekit.device.field.focus as focus
    from edgekit.device.field.focus import DEFAULT_RULE
    from edgekit.device.preprocess import read_image

    def run(db):
        args = ["screen", "--patient", "F3", "--fields", str(FIXTURES / "fields"), "--model",
                str(FIXTURES / "golden_bundle"), "--db", str(db), "--threads", "2", "--stop-cells", "0"]
        assert CliRunner().invoke(main, args).exit_code == 0
        con = sqlite3.connect(db)
        cells = "select source_id, status, p_positive, decision from records order by source_id"
        fields = "select source_id, sharpness from fields order by source_id"
        return con.execute(cells).fetchall(), con.execute(fields).fetchall()

    calls = []
    measure = focus.focus_score

    def counted(rgb, *args, **kwargs):
        calls.append(1)
        return measure(rgb, *args, **kwargs)

    monkeypatch.setattr(focus, "focus_score", counted)  # every path scores through it (FocusRule.score)
    once = run(tmp_path / "once.sqlite")
    n_fields = len(once[1])
    assert n_fields >= 2 and len(calls) == n_fields

    # as when the session's check measured the field again: each field's own score (the fixtures
    # have no eyepiece surround, so the gate's measure is of the whole field)
    monkeypatch.setattr(focus, "focus_score", measure)
    assert once[1] == [(name, DEFAULT_RULE.score(read_image(name))) for name, _ in once[1]]


def test_prefetch_takes_at_most_ahead_items_before_the_caller_needs_them():
    """``prefetch(..., ahead=k)``: results in input order, computed in worker threads, and no more
    than k items taken from the input beyond the one the caller holds (what bounds the whole fields
    in memory); the default keeps ``n_workers`` ahead, and one worker alone runs in the caller."""
    import threading

    from edgekit.device.pipeline import prefetch

    for n_workers, ahead, expect_ahead in ((1, 1, 1), (3, 1, 1), (2, None, 2), (1, None, 0)):
        taken: list[int] = []
        threads: set[str] = set()

        def items(taken=taken):
            for i in range(8):
                taken.append(i)
                yield i

        def fn(i, threads=threads):
            threads.add(threading.current_thread().name)
            return i * 10

        out = []
        for i, r in enumerate(prefetch(fn, items(), n_workers, ahead=ahead)):
            assert max(taken) <= i + expect_ahead, (n_workers, ahead, i, taken)
            out.append(r)
        assert out == [i * 10 for i in range(8)]
        in_caller = threads == {threading.current_thread().name}
        assert in_caller == (expect_ahead == 0), (n_workers, ahead, threads)


def test_fields_segment_in_a_background_thread_with_the_same_records(tmp_path, monkeypatch):
    """With 2 threads, whole fields are decoded and segmented in one other thread while the cells of
    the field before are recorded in the caller's: the records are those of one thread."""
    import threading

    import edgekit.device.screening as screening

    where: list[str] = []
    segment = screening._segment_one

    def traced(item, **kwargs):
        where.append(threading.current_thread().name)
        return segment(item, **kwargs)

    monkeypatch.setattr(screening, "_segment_one", traced)

    def run(db, threads):
        where.clear()
        args = ["screen", "--patient", "F4", "--fields", str(FIXTURES / "fields"), "--model",
                str(FIXTURES / "golden_bundle"), "--db", str(db), "--threads", str(threads),
                "--stop-cells", "0"]
        assert CliRunner().invoke(main, args).exit_code == 0
        con = sqlite3.connect(db)
        rows = con.execute("select source_id, status, reason, content_hash, p_positive, probability,"
                           " domain_score, decision from records order by source_id").fetchall()
        fields = con.execute("select source_id, sharpness, signature from fields"
                             " order by source_id").fetchall()
        crops = con.execute("select r.source_id, c.png from crop_images c"
                            " join records r on r.id = c.record_id order by r.source_id").fetchall()
        return rows, fields, crops, list(where)

    *one, where_one = run(tmp_path / "one.sqlite", 1)
    *two, where_two = run(tmp_path / "two.sqlite", 2)
    main_thread = threading.main_thread().name
    assert len(where_one) >= 2 and set(where_one) == {main_thread}
    assert len(where_two) == len(where_one) and main_thread not in where_two and len(set(where_two)) == 1
    assert two == one and len(one[0]) >= 20


def test_one_heap_is_set_on_glibc_and_left_to_the_user_when_named(monkeypatch):
    import platform
    import sys

    from edgekit.device.pipeline import one_heap

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert one_heap() is False  # the user's setting stands
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert one_heap() is glibc


def test_a_fields_crops_are_freed_before_the_next_field_is_taken(tmp_path):
    """``record_fields`` lets go of a recorded field's crops before it asks for the next field (which
    the segmenting thread may still be cutting): one field's crops fewer at the path's peak."""
    import weakref

    from edgekit.device.pipeline import expand_inputs
    from edgekit.device.records import RecordStore
    from edgekit.device.runtime import load_classifier
    from edgekit.device.screening import record_fields, segment_paths

    clf = load_classifier(FIXTURES / "golden_bundle", "tflite_fp32")
    held: list = []
    seen: list[int] = []

    def fields():
        for seg in segment_paths(list(expand_inputs([str(FIXTURES / "fields")]))):
            seen.append(sum(r() is not None for r in held))  # the field before's crops still alive
            held[:] = [weakref.ref(c) for c in seg[2].crops]
            yield seg

    with RecordStore(tmp_path / "s.sqlite") as store:
        session = store.open_session("F5", clf.model_sha256)
        tally = record_fields(store, session, fields(), clf, stop_cells=0)
    assert tally.counts["classified"] >= 20 and len(seen) == 2
    assert seen == [0, 0]


def test_a_grayscale_field_is_refused_whole_as_edgekit_field_refuses_it(tmp_path):
    """`screen --fields` cut a grayscale field into crops, refused each one ("no stain colour") and
    marked the field counted, while `edgekit field` refused the field: one rejected record now, with
    the crop gate's reason, and no field counted."""
    import cv2
    import numpy as np

    src = sorted((FIXTURES / "fields").iterdir())[0]
    grey = cv2.cvtColor(cv2.imread(str(src)), cv2.COLOR_BGR2GRAY)
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "grey.png"), np.repeat(grey[:, :, None], 3, axis=2))
    db = tmp_path / "s.sqlite"
    res = CliRunner().invoke(main, ["screen", "--patient", "G", "--fields", str(folder), "--db", str(db)])
    assert res.exit_code == 0, res.output
    con = sqlite3.connect(db)
    rows = con.execute("select source_id, status, reason from records").fetchall()
    assert len(rows) == 1 and rows[0][1] == "rejected" and rows[0][2].startswith("no stain colour"), rows
    assert con.execute("select count(*) from fields where status = 'counted'").fetchone()[0] == 0


def test_each_field_file_is_read_once_and_recorded_under_the_hash_of_what_was_decoded(tmp_path, monkeypatch):
    """`screen --fields` hashed each field's file, then read it again to decode it (and hashed those
    bytes again, to catch a replacement in between): two reads and two hashes of every field. One
    read now serves both; a file the bounded read refuses (empty) keeps its record as before."""
    import os
    import shutil

    from edgekit.device.pipeline import file_hash

    folder = tmp_path / "in"
    folder.mkdir()
    field = Path(shutil.copyfile(FIXTURES / "fields" / "BloodImage_00099.jpg", folder / "f.jpg"))
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    opened: list[str] = []
    real_open = os.open

    def counting_open(path, *args, **kwargs):
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    db = tmp_path / "s.sqlite"
    res = CliRunner().invoke(main, ["screen", "--fields", "--patient", "P", "--db", str(db), "--model",
                                    str(FIXTURES / "golden_bundle"), "--threads", "2", str(folder)])
    monkeypatch.setattr(os, "open", real_open)
    assert opened.count(str(field)) == 1, opened
    rows = sqlite3.connect(db).execute("select source_id, content_hash, status from records").fetchall()
    assert (str(empty), file_hash(empty), "rejected") in rows, rows
    cells = [r for r in rows if r[0].startswith("f.jpg#")]
    assert len(cells) > 10 and all(r[2] in ("classified", "rejected") for r in cells), res.output
