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
    records (sharpness included) are those of measuring it twice, as before."""
    import edgekit.device.field.focus as focus
    import edgekit.device.field.quality as quality
    import edgekit.device.screening as screening

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

    def counted(rgb):
        calls.append(1)
        return measure(rgb)

    for module in (focus, quality):
        monkeypatch.setattr(module, "focus_score", counted)
    once = run(tmp_path / "once.sqlite")
    n_fields = len(once[1])
    assert n_fields >= 2 and len(calls) == n_fields

    real_check = screening.check_field  # as before: the session's check measures the field again
    monkeypatch.setattr(screening, "check_field", lambda *a, **k: real_check(*a[:5]))
    assert run(tmp_path / "twice.sqlite") == once
