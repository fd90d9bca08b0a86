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


def test_screen_reads_only_what_its_summary_needs_of_the_records(tmp_path, monkeypatch, traced):
    """At the end of `screen` (its RSS peak on a long run) the summary reads 4 columns of each record,
    not all 16 (1,097 records of 8 IML fields: 1.5 MB of dicts); the summary is the full records' one."""
    import json
    import re

    from edgekit.device.sessions import session_summary

    db = tmp_path / "s.sqlite"
    monkeypatch.setenv("EDGEKIT_DB", str(db))
    res = CliRunner().invoke(main, ["screen", str(CELLS), "--patient", "Q", "-m", str(GOLDEN), "--json"])
    assert res.exit_code == 0, res.output
    query = re.compile(r"\s*SELECT .* FROM records WHERE session_id = \S+ ORDER BY id")
    reads = [s for s in traced["sql"] if query.match(s)]
    assert reads and all("*" not in s.split("FROM")[0] for s in reads), reads
    with RecordStore(db) as store:
        session = store.session_by_id(1)
        assert session is not None
        full = store.records(session.id)
        assert len(full[0]) > 4 and full[0]["probabilities"]
        whole = session_summary(store, session, full)
    assert whole is not None
    assert json.loads(res.output.strip().splitlines()[-1]) == json.loads(json.dumps(whole.to_dict()))


def test_records_refuses_an_unknown_column(screened):
    with RecordStore(screened) as store, pytest.raises(ValueError, match="no record column"):
        store.records(1, ("status", "x; DROP TABLE records"))
    with RecordStore(screened) as store:
        assert set(store.records(1, ("status", "p_positive"))[0]) == {"status", "p_positive"}


def test_a_writing_store_keeps_a_small_page_cache(tmp_path):
    """Screening appends and reads each session once: SQLite's page cache stays at PAGE_CACHE_KIB
    (128 KiB; 2 MB by default, 512 KiB before: 8 IML fields' peak RSS 0.7 MB lower)."""
    from edgekit.device.records import PAGE_CACHE_KIB

    assert PAGE_CACHE_KIB <= 128
    with RecordStore(tmp_path / "s.sqlite") as store:
        assert store.conn.execute("PRAGMA cache_size").fetchone()[0] == -PAGE_CACHE_KIB
