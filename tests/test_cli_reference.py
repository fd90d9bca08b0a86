"""docs/cli.md and the README's command table are generated from the click tree and kept current."""

from __future__ import annotations

from edgekit import cli_reference


def test_generated_reference_is_current():
    stale = cli_reference.stale()
    assert not stale, (f"{', '.join(str(p.relative_to(cli_reference.ROOT)) for p in stale)} out of date: "
                       f"run `{cli_reference.COMMAND}`")


def test_reference_lists_no_hidden_spelling():
    text = cli_reference.cli_markdown()
    assert "## `edgekit model train`" in text and "## `edgekit site domain fit`" in text
    body = text.split("\n## ", 1)[1]  # after the page's opening note, which names the old spellings
    assert "## `edgekit train`" not in text and "`--json`" not in body and "`--data`" not in body
    table = cli_reference.cli_table()
    assert len(table.splitlines()) == 2 + 11  # header, rule, one line per top-level verb or group
