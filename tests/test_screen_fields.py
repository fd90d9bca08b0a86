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
    assert first.exit_code == 0, first.output
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
