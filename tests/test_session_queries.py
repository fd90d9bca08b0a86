"""`sessions show` reads a session once; `sessions list` runs a fixed number of queries, however many
sessions the database holds (counted with sqlite3's trace callback). Before device/sessions.py's
read_session: `show` read the records 3 times, the reviews twice and decoded the Decision 4 times
(8 statements, now 4); `list` ran 1 + 2 queries per session."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from device_helpers import CELLS, GOLDEN

from edgekit.cli import main
from edgekit.device.records import RecordStore
from edgekit.manifest import Decision


@pytest.fixture()
def traced(monkeypatch):
    """Every SQL statement run by a RecordStore, and every Decision decoded from JSON."""
    seen: dict[str, list] = {"sql": [], "decisions": []}
    enter = RecordStore.__enter__

    def traced_enter(self):
        self.conn.set_trace_callback(seen["sql"].append)
        return enter(self)

    decode = Decision.from_dict.__func__

    def counted_decode(cls, d):
        seen["decisions"].append(d)
        return decode(cls, d)

    monkeypatch.setattr(RecordStore, "__enter__", traced_enter)
    monkeypatch.setattr(Decision, "from_dict", classmethod(counted_decode))
    return seen


def _screen(*patients: str) -> None:
    for p in patients:
        res = CliRunner().invoke(main, ["screen", str(CELLS), "--patient", p, "-m", str(GOLDEN), "--json"])
        assert res.exit_code == 0, res.output


def _selects(sql: list[str], table: str) -> int:
    return sum(s.lstrip().upper().startswith("SELECT") and f"FROM {table}" in s for s in sql)


def test_sessions_show_reads_records_and_reviews_once_and_decodes_once(screened, traced):
    res = CliRunner().invoke(main, ["sessions", "show", "P7"])
    assert res.exit_code == 0, res.output
    assert _selects(traced["sql"], "records WHERE") == 1
    assert _selects(traced["sql"], "reviews") == 1
    assert len(traced["decisions"]) == 1


def test_sessions_list_runs_a_fixed_number_of_queries(tmp_path, monkeypatch, traced):
    monkeypatch.setenv("EDGEKIT_DB", str(tmp_path / "s.sqlite"))
    counts = []
    for patients in (("A",), ("B", "C", "D")):
        _screen(*patients)
        traced["sql"].clear()
        res = CliRunner().invoke(main, ["sessions", "list"])
        assert res.exit_code == 0, res.output
        counts.append(sum(s.lstrip().upper().startswith("SELECT") for s in traced["sql"]))
    assert counts[0] == counts[1] == 2  # the sessions, then all records (was 1 + 2 per session)
