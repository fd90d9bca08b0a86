# pyright: basic
"""What the device commands print: result rows and their table / JSON lines / CSV writer, the
progress bar, and percentage formatting. Terminal UI only; the domain work is in ``pipeline``,
``screening`` and ``field``."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import click

from edgekit.outputs import SafeCsvWriter, display_text

if TYPE_CHECKING:
    from edgekit.device.field.types import FieldReport
    from edgekit.device.pipeline import Outcome
    from edgekit.device.runtime import Classifier


def pct(x: float | None) -> str:
    """A fraction as a percentage with one decimal, ``-`` when unknown."""
    return "-" if x is None else f"{100 * x:.1f}%"


def ci_text(ci: tuple[float, float] | list[float] | None) -> str:
    """A 95% interval as ``lo-hi%``, ``-`` when unknown."""
    return "-" if not ci else f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}%"


FIELD_HEADER = (f"{'field':32s} {'cells':>5s} {'par':>4s} {'unc':>4s} {'parasitemia':>11s} "
                f"{'95% CI':>13s} {'ms':>6s}  status")


def field_line(rep: FieldReport) -> str:
    """One field's row of `edgekit field`'s table (its time: every stage but decoding)."""
    from edgekit.device.domain import not_validated

    ms = 1000 * sum(v for k, v in rep.timing.items() if k != "decode")
    name = display_text(Path(rep.source).name)[:32]
    if rep.rejected:
        return (f"{name:32s} {'-':>5s} {'-':>4s} {'-':>4s} {'-':>11s} {'-':>13s} {ms:6.0f}  "
                f"rejected: {rep.rejected}")
    classified = bool(rep.decisions)
    status = not_validated(rep.domain).strip() or "ok"
    return (f"{name:32s} {rep.n_cells:5d} {rep.n_parasitized if classified else '-':>4} "
            f"{rep.count('uncertain') if classified else '-':>4} {pct(rep.parasitemia):>11s} "
            f"{ci_text(rep.ci95):>13s} {ms:6.0f}  {status}")


def field_json(rep: FieldReport, overlay: Path | None) -> str:
    """One field as a JSON line, with every cell (and its overlay file, where one was written)."""
    d = rep.to_dict(per_cell=True)
    if overlay:
        d["overlay"] = str(overlay)
    return json.dumps(d)


def field_total_lines(total: dict[str, Any]) -> list[str]:
    """The total's lines under `edgekit field`'s table (:meth:`FieldTotals.to_dict`)."""
    from edgekit.device.domain import NOT_VALIDATED

    line = f"total: {total['counted']}/{total['fields']} fields counted, {total['cells']} cells"
    if "parasitemia" in total:
        line += (f", {total['parasitized']} parasitized ({total['uncertain']} uncertain); parasitemia "
                 f"{pct(total['parasitemia'])} (95% CI {ci_text(total['ci95'])})")
    lines = [line]
    if "domain" in total and not total["domain"]["ok"]:
        lines.append(f"parasitemia {NOT_VALIDATED}: {total['domain']['why']}")
    return lines


def result_columns(classifier: Classifier) -> list[str]:
    """The columns of a classify result row (the positive-class probability named after its label)."""
    pos = classifier.manifest.positive_label
    cols = ["path", "status", "label", "probability"]
    if pos is not None:
        cols.append(f"p_{pos.lower()}")
    return [*cols, "decision", "reason", "model_sha256", "model_format"]


def result_row(out: Outcome, classifier: Classifier) -> dict[str, Any]:
    """One outcome as a row of :func:`result_columns`."""
    p = out.prediction
    row: dict[str, Any] = {"path": out.source_id, "status": out.status, "label": None, "probability": None}
    pos = classifier.manifest.positive_label
    if pos is not None:
        # p_positive is set whenever the manifest has a positive label
        row[f"p_{pos.lower()}"] = None if p is None else round(cast(float, p.p_positive), 6)
    if p is not None:
        row["label"], row["probability"] = p.label, round(p.probability, 6)
    row["decision"] = None if p is None else p.decision
    row["reason"] = out.reason
    row["model_sha256"] = classifier.model_sha256
    row["model_format"] = classifier.fmt
    return row


class ResultWriter:
    """Streams result rows as an aligned table, JSON lines or CSV."""

    def __init__(self, fmt: str, columns: list[str], path_width: int) -> None:
        self.fmt, self.columns, self.path_width = fmt, columns, max(8, min(path_width, 60))
        self._csv = None
        if fmt == "csv":
            self._csv = SafeCsvWriter(sys.stdout, columns, flush=True)  # CR/LF quoted, formulas made inert
            self._csv.writeheader()
        elif fmt == "table":
            pcol = next((c for c in columns if c.startswith("p_")), None)
            self._pcol = pcol
            head = f"{'path':<{self.path_width}}  {'label':<14} {'prob':>6}"
            head += f" {pcol:>14}" if pcol else ""
            click.echo(head + "  decision")

    def write(self, row: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            click.echo(json.dumps(row))
        elif self.fmt == "csv":
            assert self._csv is not None  # made in __init__ for csv
            self._csv.writerow(row)
        else:
            path = display_text(row["path"])
            if len(path) > self.path_width:
                path = "…" + path[-(self.path_width - 1) :]
            if row["status"] != "classified":
                click.echo(f"{path:<{self.path_width}}  {row['status'].upper()}: {row['reason']}")
                return
            line = f"{path:<{self.path_width}}  {row['label']:<14} {row['probability']:>6.3f}"
            if self._pcol:
                line += f" {row[self._pcol]:>14.3f}"
            decision = row["decision"]
            if decision == "uncertain":
                decision = "uncertain: refer to microscopy"
            click.echo(f"{line}  {decision}")


class RefusedCells:
    """What a session tells of the cells the finder cut from a field and the crop gates refused: one
    line per field and reason, with a count, once the field's cells are in (a refused file or whole
    field keeps its own line, from the caller). ``echo`` prints a line."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.name: str | None = None
        self.ids: set[str] = set()
        self.refused: dict[str, list[tuple[str, str]]] = {}  # reason's head -> [(cell id, reason)]

    def field(self, name: str, cells: Sequence[Any]) -> None:
        """Field ``name`` is next, with these cells (``CellBox``); the last one's lines are said."""
        from edgekit.device.field.types import cell_id

        self.flush()
        self.name, self.ids = name, {cell_id(name, c.id) for c in cells}

    def take(self, out: Outcome) -> bool:
        """Keep ``out`` when it is a refused cell of the current field (said at :meth:`flush`)."""
        if out.status != "rejected" or out.source_id not in self.ids:
            return False
        reason = out.reason or ""
        self.refused.setdefault(reason.partition(" (")[0], []).append((out.source_id, reason))
        return True

    @classmethod
    def of_field(cls, name: str, cells: Sequence[Any], outcomes: Iterable[Outcome]) -> list[str]:
        """The lines of one field whose cells' ``outcomes`` are all in (the phone page's answer)."""
        lines: list[str] = []
        said = cls(lines.append)
        said.field(name, cells)
        for out in outcomes:
            said.take(out)
        said.flush()
        return lines

    def flush(self) -> None:
        """Say the current field's refused cells, one line per reason (first seen first)."""
        of = len(self.ids)
        for cells in self.refused.values():
            self.echo(f"{display_text(self.name or '')}: {len(cells)} of {of} cell{'s' * (of != 1)} not "
                      f"classified: {display_text(_one_reason(cells))}")
        self.refused = {}


def _one_reason(cells: list[tuple[str, str]]) -> str:
    """The reason of a group of refused cells: theirs when all give the same, else the first's with
    its cell named in its numbers (``no stain colour (e.g. #54: chroma 1.0 < 1.4): ...``)."""
    first_id, first = cells[0]
    head, paren, rest = first.partition(" (")
    if all(r == first for _, r in cells) or not paren:
        return first
    return f"{head} (e.g. #{first_id.rpartition('#')[2]}: {rest}"


class Progress:
    """A one-line progress bar on stderr, drawn only when enabled (a TTY or ``--progress``)."""

    def __init__(
        self, total: int | None, enabled: bool, stream: IO[str] | None = None, width: int = 30
    ) -> None:
        self.total, self.enabled, self.width = total, enabled, width
        self.stream = stream or sys.stderr
        self.done = 0
        self.started = time.perf_counter()
        self._last = 0.0
        self._drawn = 0

    @staticmethod
    def wanted(flag: bool) -> bool:
        return flag or sys.stderr.isatty()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if not self.enabled or (now - self._last < 0.1 and self.done != self.total):
            return
        self._last = now
        rate = self.done / max(now - self.started, 1e-9)
        if self.total:
            filled = int(self.width * self.done / self.total)
            bar = "#" * filled + "-" * (self.width - filled)
            text = f"\r[{bar}] {self.done}/{self.total} {rate:.1f} img/s"
        else:
            text = f"\r{self.done} images {rate:.1f} img/s"
        self.stream.write(text)
        self.stream.flush()
        self._drawn = len(text)

    def clear(self) -> None:
        """Erase the bar so a result line can be printed on a clean line (it is redrawn next update)."""
        if self.enabled and self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self.stream.flush()
            self._drawn = 0
            self._last = 0.0

    def close(self) -> None:
        if self.enabled and self.done:
            self.stream.write("\n")
            self.stream.flush()

