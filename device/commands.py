# pyright: basic
"""Device commands: ``classify``, ``camera``, ``screen``, ``sessions``. Light at import (click only);
the runtime, OpenCV and the inference engines load inside the command bodies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from edgekit.cli_options import (
    MAX_THREADS,
    allow_unsigned_option,
    format_option,
    model_format_option,
    model_option,
    option,
)
from edgekit.outputs import csv_text, display_text, write_output_file, write_stdout
from edgekit.startup import loads_model, release

if TYPE_CHECKING:
    from edgekit.device.records import Session
    from edgekit.device.screening import PatientSummary

_model_option = model_option()
_model_format_option = model_format_option()
_threads_option = click.option(
    "--threads", type=click.IntRange(1, MAX_THREADS), default=None, help="Inference threads."
)
_progress_option = click.option(
    "--progress/--no-progress", default=None,
    help="Progress bar on stderr (default: when stderr is a terminal).",
)
_allow_unsigned_option = allow_unsigned_option()
_quality_option = click.option(
    "--quality/--no-quality", default=True, show_default=True,
    help="Reject too small, blank, badly exposed or blurred images, and images far outside the sizes "
         "the model was trained on, before classifying.",
)


def _live_options(f):
    """The options of a live microscope camera (``camera`` and ``screen --camera``)."""
    options = [
        click.option("--crops", "crops_mode", is_flag=True,
                     help="Each frame's center square is one pre-cut cell (the old behaviour), not a field."),
        click.option("--settle", type=click.IntRange(1), default=4, show_default=True,
                     help="Still, sharp frames in a row before a field is taken."),
        click.option("--capture-on-key", is_flag=True,
                     help="Take a field only when asked: Enter on the terminal, or space in the preview."),
        click.option("--overlay", "overlay_path", type=click.Path(path_type=Path), default=None,
                     help="Keep this PNG updated with the last field and the counts so far."),
        click.option("--show/--no-show", default=False, show_default=True,
                     help="Preview window (needs an OpenCV build with a GUI; else only --overlay)."),
    ]
    for decorate in reversed(options):
        f = decorate(f)
    return f


def _live_capture(settle: int, capture_on_key: bool, echo, rule=None):
    from edgekit.device.live import CaptureSettings, FieldCapture, requests_from_stdin

    capture = FieldCapture(CaptureSettings(settle=settle, manual=capture_on_key), rule=rule)
    if capture_on_key:
        requests_from_stdin(capture, echo)
    return capture


def _focus_rule(bundle: Path | None, fields: bool = True):
    """The bundle's focus rule, read before the model loads (the fields start segmenting meanwhile);
    a bundle that cannot be read is refused by the load itself, with its own reason. None when not
    ``fields``: a run of crops judges no focus and never imports the field package (~2 MB of RSS)."""
    if not fields:
        return None
    from edgekit.device.field.focus import DEFAULT_RULE, FocusRule
    from edgekit.errors import EdgekitError
    from edgekit.manifest import read_manifest_data
    from edgekit.paths import bundle_folder, default_bundle_dir

    try:
        data = read_manifest_data(default_bundle_dir() if bundle is None else bundle_folder(bundle))
        return FocusRule.from_dict(data.get("focus"))
    except (EdgekitError, OSError, TypeError, ValueError, AttributeError):
        return DEFAULT_RULE


def _load(bundle: Path | None, model_format: str | None, threads: int | None, allow_unsigned: bool = False):
    import os

    # Each bad file gets our one-line reason; OpenCV's own decoder warnings would only add noise.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    from edgekit.device.runtime import load_classifier

    return load_classifier(bundle, model_format, threads, allow_unsigned=allow_unsigned,
                           warn=lambda line: click.echo(line, err=True))


def _say_unrecorded_sizes(classifier, gates) -> None:
    """Once per run of crops: a bundle without ``image_sizes`` classifies an image of any size."""
    from edgekit.device.sizes import unrecorded_note

    note = unrecorded_note(classifier.manifest) if gates is not None else None
    if note:
        click.echo(note, err=True)


@loads_model
@click.command()
@click.argument("paths", nargs=-1, required=True)
@_model_option
@_model_format_option
@format_option("table", "jsonl", "csv", default="table",
               help_text="Output: aligned table, one JSON object per image, or CSV.")
@_threads_option
@_progress_option
@_quality_option
@_allow_unsigned_option
@click.pass_context
def classify(ctx: click.Context, paths: tuple[str, ...], bundle: Path | None, model_format: str | None,
             out_format: str, threads: int | None, progress: bool | None, quality: bool,
             allow_unsigned: bool) -> None:
    """Classify cell images: files, folders and glob patterns.

    Exits 1 when any input could not be read (the batch still runs to the end).
    """
    from edgekit.device.output import Progress, ResultWriter, result_columns, result_row
    from edgekit.device.pipeline import Tally, classify_items, expand_inputs, workers
    from edgekit.device.quality import DEFAULT_GATES

    items = list(expand_inputs(paths))
    classifier = _load(bundle, model_format, threads, allow_unsigned)
    writer = ResultWriter(out_format, result_columns(classifier), max((len(s) for s, _ in items), default=8))
    bar = Progress(len(items), Progress.wanted(bool(progress)) if progress is not False else False)
    tally = Tally()
    scores: list[float | None] = []  # the domain guard's distance of every crop it could measure
    gates = DEFAULT_GATES if quality else None
    _say_unrecorded_sizes(classifier, gates)
    for out in classify_items(items, classifier, gates, workers(threads)):
        tally.add(out.status)
        scores.append(out.domain_score)
        bar.clear()
        writer.write(result_row(out, classifier))
        bar.update()
    bar.close()
    click.echo(tally.line(), err=True)
    if classifier.manifest.domain is not None and tally.counts["classified"]:
        from edgekit.device.domain import NOT_VALIDATED, session_verdict

        verdict = session_verdict(scores, classifier.manifest.domain, "batch of crops")
        if not verdict["ok"]:  # the crops' results stand, but nothing vouches for them on this microscope
            click.echo(f"domain: {NOT_VALIDATED}: {verdict['why']}", err=True)
    if tally.counts["failed"]:
        ctx.exit(1)


@loads_model
@click.command()
@click.option("--source", default="auto", show_default=True,
              help="Webcam index (0), video file, stream URL, GStreamer pipeline, 'picamera', or 'auto' "
                   "(Picamera2 when installed, else webcam 0).")
@_model_option
@_model_format_option
@_threads_option
@click.option("--every", type=click.IntRange(1), default=1, show_default=True, help="Print every N-th frame.")
@click.option("--save", "save_dir", type=click.Path(path_type=Path), default=None,
              help="Save printed frames (JPEG) and their results (results.jsonl) into this folder. One that "
                   "cannot be written (a full disk) is said once, the run goes on, and the exit status is 1.")
@click.option("--max-frames", type=click.IntRange(1), default=None, help="Stop after this many frames.")
@click.option("--reconnect", type=click.IntRange(0), default=3, show_default=True,
              help="Attempts to reopen a live source that stops delivering frames.")
@_quality_option
@_live_options
@_allow_unsigned_option
def camera(source: str, bundle: Path | None, model_format: str | None, threads: int | None, every: int,
           save_dir: Path | None, max_frames: int | None, reconnect: int, quality: bool, crops_mode: bool,
           settle: int, capture_on_key: bool, overlay_path: Path | None, show: bool,
           allow_unsigned: bool) -> None:
    """Live microscope camera: count each settled, sharp field once.

    Each settled, sharp view is a field whose cells are found, classified and counted once
    (docs/field-guide.md: Camera at the microscope). Nothing is recorded: use `screen --camera` for
    a patient. Ctrl-C stops."""
    from edgekit.device.camera import run_camera, run_field_camera
    from edgekit.device.field.focus import rule_of
    from edgekit.device.quality import DEFAULT_GATES
    from edgekit.device.side_output import SideOutput
    from edgekit.errors import EdgekitError

    if save_dir is not None and not crops_mode:  # else silently ignored
        raise EdgekitError("--save keeps --crops frames; for fields, --overlay shows the last one "
                           "(and `screen --camera` records them)")
    classifier = _load(bundle, model_format, threads, allow_unsigned)
    if crops_mode:
        saves = SideOutput("saved frame")
        n = run_camera(classifier, source, every, save_dir, max_frames, click.echo, reconnect,
                       gates=DEFAULT_GATES if quality else None, saves=saves)
        click.echo(f"{n} frames processed", err=True)
        if saves.lost:  # the frames were all classified and printed; what --save should keep is not all there
            click.echo(f"error: {saves.lost} saved frame(s) or result row(s) could not be written to "
                       f"{save_dir}", err=True)
            raise SystemExit(1)
        return
    capture = _live_capture(settle, capture_on_key, lambda s: click.echo(s, err=True),
                            rule_of(classifier))
    stats = run_field_camera(classifier, source, capture, click.echo, max_frames, reconnect, overlay_path,
                             show)
    click.echo(stats.line(), err=True)


@loads_model
@click.command()
@click.argument("paths", nargs=-1)
@click.option("--patient", required=True,
              help="Patient id (a rerun with the same id, model and manifest resumes its session).")
@click.option("--site", default=None, help="Screening site.")
@click.option("--operator", default=None, help="Who ran the screening.")
@click.option("--camera", "use_camera", is_flag=True, help="Screen camera frames instead of files.")
@click.option("--fields", "fields", is_flag=True,
              help="PATHS are whole microscope fields: find, crop and classify every red cell.")
@click.option("--source", default="auto", show_default=True, help="Camera source (see `edgekit camera`).")
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="Screening database. Default: $EDGEKIT_DB or ~/.local/share/edgekit/screening.sqlite.")
@click.option("--stop-cells", type=click.IntRange(0), default=None,
              help="Stop after this many classified cells (0: never). Default: the manifest's patient rule.")
@_model_option
@_model_format_option
@_threads_option
@_progress_option
@_quality_option
@_live_options
@format_option("text", "json", default="text", old_flags={"--json": "json"},
               help_text="Print the patient summary as text or JSON.")
@_allow_unsigned_option
def screen(paths: tuple[str, ...], patient: str, site: str | None, operator: str | None, use_camera: bool,
           fields: bool, source: str, db: Path | None, stop_cells: int | None, bundle: Path | None,
           model_format: str | None, threads: int | None, progress: bool | None, quality: bool,
           crops_mode: bool, settle: int, capture_on_key: bool, overlay_path: Path | None, show: bool,
           out_format: str, allow_unsigned: bool) -> None:
    """Screen a patient: record every crop, then summarise and decide.

    Images are classified and committed to the database 32 at a time (a crash loses at most the
    batch in flight, never a reported result); rerunning the same command skips what is recorded.
    The summary is printed in any case; the exit status is then 1 when an image of this run could
    not be read, 130 when Ctrl-C stopped a batch of files (with --camera, Ctrl-C is how it ends).
    """
    from edgekit.device.output import Progress, RefusedCells
    from edgekit.device.pipeline import one_heap, workers
    from edgekit.device.quality import DEFAULT_GATES
    from edgekit.device.records import RecordStore, default_db_path
    from edgekit.device.screening import CUT_KINDS, file_source, record_crops, record_fields
    from edgekit.device.sessions import screened_with, session_summary
    from edgekit.errors import EdgekitError

    if bool(paths) == use_camera:
        raise EdgekitError("give image PATHS or --camera (one of them)")
    if fields and use_camera:
        raise EdgekitError("--fields takes field image PATHS, not --camera")
    one_heap()  # before any worker thread
    release()  # and the collector back on before them (edgekit.startup): the fields' peak RSS
    # files first (none with --camera): whole fields start decoding and segmenting while the model loads
    from_files = file_source(paths, fields, workers(threads), _focus_rule(bundle, fields))
    classifier = _load(bundle, model_format, threads, allow_unsigned)
    decision = classifier.manifest.decision
    decision.check_decides_patients()
    stop = decision.rule.stop_cells if stop_cells is None else stop_cells
    view = capture = None
    running = {"cells": 0, "parasitized": 0}
    if use_camera and not crops_mode:  # a bad --overlay is refused before a session is opened
        from edgekit.device.field.focus import rule_of
        from edgekit.device.live import LiveView

        capture = _live_capture(settle, capture_on_key, lambda s: click.echo(s, err=True),
                                rule_of(classifier))
        view = LiveView(decision, overlay_path, show, classifier.manifest.domain)
    with RecordStore(db or default_db_path()) as store:
        session = store.open_session(patient, classifier.model_sha256, site, operator, classifier.fmt,
                                     str(classifier.bundle_dir), decision, screened_with(classifier))
        crops, total, kind = _screen_items(source, capture) if use_camera else from_files
        bar = Progress(total, Progress.wanted(bool(progress)) if progress is not False else False)

        unread = _Unread()
        refused = RefusedCells(lambda line: click.echo(line, err=True))

        def report(out) -> None:
            unread.outcome(out)
            if view is not None:
                view.outcome(out)
                if out.status == "classified":
                    running["cells"] += 1
                    running["parasitized"] += decision.is_counted_positive(out.prediction.p_positive)
            if out.status in ("rejected", "failed") and not refused.take(out):
                bar.clear()
                click.echo(f"{out.status} {display_text(out.source_id)}: {out.reason}", err=True)
            bar.update()

        def on_field(name, rgb, cells, check) -> None:
            unread.field(name, rgb)
            bar.clear()
            refused.field(name, cells)
            if check is not None and not check.counted:
                click.echo(f"{name}: not counted: {check.reason}", err=True)
            elif check is not None and check.verdict == "replace":
                click.echo(f"{name}: replaces {check.duplicate_of['source_id']} (sharper)", err=True)
            if view is not None and rgb is not None:
                assert capture is not None  # set with the view (camera fields)
                view.render(_live_status(capture, running, view))
                view.field(capture.stats.fields, rgb, cells)
                focus = "" if check is None else f", focus {check.sharpness:.3f}"
                click.echo(f"{name}: {len(cells)} cells{focus}", err=True)

        gates = DEFAULT_GATES if quality else None
        try:
            # files: the other threads segment the fields (segment_paths) or decode and gate the next
            # batch of crops (the lookahead) while the caller classifies and records; pools of
            # workers on top (small arrays, holding the GIL) cost 1,000 crops ~0.3 s more CPU
            # (benchmarks/RESULTS.md, speed round 6)
            n_workers = 1 if kind in ("field", "file") else workers(threads)
            if kind in CUT_KINDS:
                from edgekit.device.field.focus import rule_of

                tally = record_fields(store, session, crops, classifier, gates, stop, kind, report, on_field,
                                      n_workers=n_workers, rule=rule_of(classifier))
            else:
                _say_unrecorded_sizes(classifier, gates)
                tally = record_crops(store, session, crops, classifier, gates, stop, kind, report,
                                     n_workers=n_workers, lookahead=kind == "file")
        except KeyboardInterrupt:
            bar.close()
            refused.flush()
            click.echo("interrupted: everything classified so far is recorded", err=True)
            tally = None
        bar.close()
        refused.flush()
        if view is not None:
            assert capture is not None  # set with the view (camera fields)
            view.render(_live_status(capture, running, view))
            click.echo(capture.stats.line(), err=True)
        if tally is not None:
            click.echo(tally.line(), err=True)
        # what the session stores decides it, here as in `sessions show` and `serve`
        # the session was opened above, in this store, with the bundle's Decision: it has a summary
        stored = cast("Session", store.session_by_id(session.id))
        summary = cast("PatientSummary", session_summary(store, stored))
        summary.stop_cells, summary.stop_reached = stop, bool(stop) and summary.crops >= stop
    as_json = out_format == "json"
    click.echo(json.dumps(summary.to_dict()) if as_json else f"session {session.id}: {summary.line()}")
    unread.exit(interrupted=tally is None and not use_camera)


def _screen_items(source: str, capture: Any) -> tuple[Any, None, str]:
    """(items, total, kind) of a camera run: whole fields as ``capture`` takes them (``--fields``
    view), else each frame's centre square as a crop (``--crops``)."""
    from edgekit.device.camera import center_square, frames

    if capture is None:
        crops = ((f"frame {i}", None, center_square(f)) for i, f in enumerate(frames(source), 1))
        return crops, None, "camera"
    from edgekit.device.live import camera_fields

    return camera_fields(
        frames(source), capture,
        lambda n: click.echo(f"frame {n}: hold still: the view shakes too much to take the field", err=True),
    ), None, "camera-field"


class _Unread:
    """The inputs of one `screen` run that could not be read (an unreadable field is recorded as
    rejected, like a blurred one; a file that cannot be read as a crop, as failed)."""

    def __init__(self) -> None:
        self.fields: set[str] = set()
        self.sources: list[str] = []

    def field(self, name: str, rgb) -> None:
        if rgb is None:
            self.fields.add(name)

    def outcome(self, out) -> None:
        if out.status == "failed" or (out.status == "rejected" and out.source_id in self.fields):
            self.sources.append(out.source_id)

    def exit(self, interrupted: bool) -> None:
        """Exit 130 when Ctrl-C stopped a batch of files before its end, 1 when an input could not
        be read; else return."""
        if interrupted:
            raise SystemExit(130)
        if self.sources:
            raise SystemExit(1)


def _live_status(capture, running: dict[str, int], view) -> str:
    from edgekit.device.domain import not_validated

    n, k = running["cells"], running["parasitized"]
    return (f"{capture.stats.fields} fields, {n} cells, parasitemia {k / n if n else 0:.1%} so far"
            f"{not_validated(view.verdict())}")


@click.group()
def sessions() -> None:
    """Read screening records back; review and confirm flagged cells."""


_db_option = click.option(
    "--db", type=click.Path(path_type=Path), default=None,
    help="Screening database (default: $EDGEKIT_DB or ~/.local/share/edgekit/screening.sqlite).",
)


def _store(db: Path | None):
    from edgekit.device.records import RecordStore, default_db_path

    # reading commands never write, not even the schema
    return RecordStore(db or default_db_path(), read_only=True)


_session_options = [
    click.option("--id", "by_id", type=click.IntRange(1), default=None, help="Choose the session by its id."),
    click.option("--patient", "by_patient", default=None, help="Choose the latest session of this patient."),
]


def _with_session_options(f):
    for session_option in reversed(_session_options):
        f = session_option(f)
    return f


def _find(store, key: str | None, by_id: int | None, by_patient: str | None):
    """The session chosen by KEY (id or patient; refused when it is both), --id or --patient."""
    from edgekit.errors import EdgekitError

    given = [x for x in (key, by_id, by_patient) if x is not None]
    if len(given) > 1:
        raise EdgekitError("give one of SESSION, --id N or --patient ID")
    if by_id is not None:
        return store.find_session(str(by_id), by="id")
    if by_patient is not None:
        return store.find_session(by_patient, by="patient")
    return None if key is None else store.find_session(key)


@sessions.command("list")
@_db_option
@click.option("--window", type=click.IntRange(1), default=5, show_default=True,
              help="Sessions in the drift view's rolling median (per site and model).")
def sessions_list(db: Path | None, window: int) -> None:
    """One line per session, then the drift view per site and model.

    Columns: id, patient, site, cells, parasitized, decision, drift, updated. The drift view asks, per
    site and model: do the recent sessions still look like the bundle's cells?"""
    import time

    from edgekit.device.drift import rolling_view, session_points
    from edgekit.device.sessions import summarized_sessions

    with _store(db) as store:
        rows = summarized_sessions(store)
    per_session, sites = rolling_view(session_points(rows), window)
    click.echo(f"{'id':>4}  {'patient':<16} {'site':<12} {'cells':>6} {'parasit.':>8} {'decision':>8}"
               f" {'drift':>11}  updated")
    for s, summary in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.updated_at))
        cells, par, dec = ("?", "?", "unknown") if summary is None else (
            summary.crops, summary.parasitized, summary.decision)
        patient, site = display_text(s.patient), display_text(s.site or "-")
        drift = per_session[s.id].short() if s.id in per_session else "-"
        click.echo(f"{s.id:>4}  {patient:<16} {site:<12} {cells:>6}"
                   f" {par:>8} {dec:>8} {drift:>11}  {when}")
    guarded = [s for s in sites if s.drift.threshold is not None]  # bundles with guard statistics
    if guarded:
        click.echo(f"drift (rolling median of the last {window} sessions' guard scores, per site and model; "
                   "the drift column: that median over the bundle's session threshold):")
    for s in guarded:
        click.echo(f"  {display_text(s.line())}")


@sessions.command("show")
@click.argument("session_id", required=False)
@_with_session_options
@_db_option
@format_option("text", "json", default="text", old_flags={"--json": "json"},
               help_text="Print the summary as text or JSON.")
def sessions_show(session_id: str | None, by_id: int | None, by_patient: str | None, db: Path | None,
                  out_format: str) -> None:
    """Summary of one session.

    SESSION is a session id or a patient id (the latest session of that patient); when it could be
    both, say which with --id or --patient."""
    from edgekit.device.drift import field_guard_line
    from edgekit.device.sessions import NO_DECISION, provenance_lines, public_session, read_session
    from edgekit.errors import EdgekitError

    with _store(db) as store:
        session = _find(store, session_id, by_id, by_patient)
        if session is None:
            raise EdgekitError("which session? give SESSION, --id N or --patient ID")
        seen = read_session(store, session)
    summary, guard = seen.summary, seen.guard_fields()
    if out_format == "json":
        click.echo(json.dumps({"session": public_session(session),
                               "summary": None if summary is None else summary.to_dict(),
                               "review": seen.review, "fields": seen.fields, "guard_fields": guard}))
        return
    click.echo(f"session {session.id}  site {session.site or '-'}  operator {session.operator or '-'}")
    for line in provenance_lines(session):
        click.echo(line)
    if summary is None:
        click.echo(f"patient {session.patient}: {NO_DECISION}")
        return
    decided = seen.decision
    assert decided is not None  # a summary is decided by a stored Decision
    click.echo(f"decided at cell cutoff {decided.cutoff:.3f} on p({decided.counted_label}), "
               f"patient rule: {decided.rule.describe()}")
    click.echo(summary.line())
    if summary.validated and summary.domain is not None:  # line() names only a verdict that refuses
        click.echo(f"domain: {summary.domain['why']}")
    if (guard_line := field_guard_line(guard)) is not None:
        click.echo(display_text(guard_line))
    for line in seen.review_lines():
        click.echo(line)


@sessions.command("export")
@click.argument("session_id", required=False)
@_with_session_options
@_db_option
@format_option("csv", "jsonl", default="csv", old_flags={"--csv": "csv"},
               help_text="CSV, or one JSON object per record.")
@option("-o", "--out", "output", aliases=("--output",), type=click.Path(path_type=Path), default=None,
        help="File (default: stdout).")
@click.option("--force", is_flag=True, help="Overwrite OUT if it is an existing file.")
def sessions_export(session_id: str | None, by_id: int | None, by_patient: str | None, db: Path | None,
                    out_format: str, output: Path | None, force: bool) -> None:
    """Export a session's records (or all) as CSV or JSON lines.

    Export the records of one session (or all sessions) as CSV or JSON lines (times in UTC, ISO 8601),
    with a reviewer's verdict on each cell where there is one (columns review, reviewer).
    CSV text cells that a spreadsheet would run as formulas are prefixed with a quote."""
    from edgekit.device.sessions import EXPORT_COLUMNS, all_sessions, export_rows
    from edgekit.safefile import check_output_target

    if output is not None:
        check_output_target(output, force)  # before any work: refuse symlinks, FIFOs, devices, folders
    with _store(db) as store:
        one = _find(store, session_id, by_id, by_patient)
        rows = export_rows(store, [one] if one is not None else all_sessions(store))
    if out_format == "jsonl":
        text = "".join(json.dumps({k: r.get(k) for k in EXPORT_COLUMNS}) + "\n" for r in rows)
    else:
        text = csv_text(rows, EXPORT_COLUMNS)
    if output is None:
        write_stdout(text)
    else:
        write_output_file(output, text, force)
        click.echo(f"wrote {output}", err=True)


def _add_review_commands() -> None:
    from edgekit.device.review_commands import confirm, review

    sessions.add_command(review)
    sessions.add_command(confirm)


_add_review_commands()
