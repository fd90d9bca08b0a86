# pyright: basic
"""Screening a patient: record every crop once, summarise, decide, and stop at the stop rule.

Any source of crops feeds :func:`record_crops` (image files, camera frames, crops cut from whole
microscope fields): an iterable of ``(source_id, content_hash, uint8 crop or path)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edgekit.device.pipeline import (
    BATCH_SIZE,
    Outcome,
    Tally,
    array_hash,
    expand_inputs,
    file_hash,
    load_batch,
    missing_reason,
    predict_loaded,
    prefetch,
)
from edgekit.device.quality import DEFAULT_GATES, QualityGates
from edgekit.device.review import review_crops
from edgekit.digest import sha256
from edgekit.errors import ImageError
from edgekit.manifest import Decision, Domain, PatientRule
from edgekit.metrics import wilson_interval

if TYPE_CHECKING:
    from edgekit.device.field.view import Outside
    from edgekit.device.records import RecordStore, Session
    from edgekit.device.runtime import Classifier

Crop = tuple[str, "str | None", "np.ndarray | str | os.PathLike | ImageError"]
# the records' source kinds of cells the cell finder cut from whole fields (not files given as crops)
CUT_KINDS = ("field", "camera-field")


@dataclass
class PatientSummary:
    """A session's counts, parasitemia with its interval, and the patient decision."""

    patient: str
    crops: int  # classified crops (the cells counted)
    parasitized: int  # crops called parasitized at the cell cutoff (what the patient rule counts)
    uncertain: int  # crops in the uncertain band (a subset may be above the cutoff)
    rejected: int
    failed: int
    fraction: float
    ci95: tuple[float, float]
    decision: str  # positive | negative | refer
    stop_cells: int
    stop_reached: bool
    domain: dict[str, Any] | None = None  # the domain guard's verdict on the session's cells
    refused_count: bool = False  # the rule counts rejected crops toward refer (patient_rule.refused_crops)
    note: str | None = None  # what the reader should know about how this verdict was kept

    @property
    def validated(self) -> bool:
        """False when the guard found the cells unlike the model's training cells."""
        return self.domain is None or bool(self.domain["ok"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        lo, hi = self.ci95
        left = self.stop_cells - self.crops
        stop = ("stop rule reached" if self.stop_reached else "no stop rule" if self.stop_cells <= 0 else
                f"stop rule: {self.crops} of {self.stop_cells} cells, {left} more to go")
        valid = "" if self.validated else ", not validated for this microscope"
        counted = " (counted toward refer)" if self.refused_count and self.rejected else ""
        line = (
            f"patient {self.patient}: {self.crops} cells, {self.parasitized} parasitized "
            f"({self.fraction:.1%}, 95% CI {lo:.1%}-{hi:.1%}{valid}), {self.uncertain} uncertain, "
            f"{self.rejected} rejected{counted}, {self.failed} failed -> {self.decision.upper()}; "
            f"{stop}"
        )
        if self.note:
            line += f"\n{self.note}"
        if not self.validated:
            line += f"\ndomain: {self.domain['why']}"  # type: ignore[index]
        return line


def patient_decision(k: int, n: int, rule: PatientRule) -> str:
    """Kept for callers of the old name: :meth:`PatientRule.decide`."""
    return rule.decide(k, n)


# what :func:`summarize` reads of a record: all a summary needs read from the store
SUMMARY_COLUMNS = ("status", "p_positive", "decision", "domain_score")


def summarize(patient: str, records: Iterable[dict[str, Any]], decision: Decision, *,
              stop_cells: int | None = None,
              domain: Domain | None | Literal[False] = False) -> PatientSummary:
    """Summary of a session's records (rows of :meth:`RecordStore.records`). A cell counts as
    parasitized when ``decision`` counts its positive-class probability (at the cutoff the patient
    rule was chosen with); the patient is then decided by ``decision``'s rule.

    ``domain`` is the bundle's :class:`Domain`: a session whose cells it finds unlike the training
    cells is decided *refer*, with the reason. None (a bundle fitted before the guard existed, or a
    bring-your-own model): the verdict says the guard cannot vouch, and the decision is left as the
    patient rule makes it. False: no verdict at all."""
    from edgekit.device.domain import session_verdict

    records = list(records)
    counts = {"classified": 0, "rejected": 0, "failed": 0, "parasitized": 0, "uncertain": 0}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
        if r["status"] == "classified":
            counts["parasitized"] += decision.is_counted_positive(r.get("p_positive") or 0.0)
            counts["uncertain"] += r.get("decision") == "uncertain"
    n, k = counts["classified"], counts["parasitized"]
    stop = decision.rule.stop_cells if stop_cells is None else stop_cells
    verdict = None
    if domain is not False:
        verdict = session_verdict([r.get("domain_score") for r in records if r["status"] != "failed"],
                                  domain or None)
    call = decision.patient_decision(k, n, counts["rejected"])
    if domain and verdict is not None and not verdict["ok"] and n:
        call = "refer"
    return PatientSummary(
        patient=patient, crops=n, parasitized=k, uncertain=counts["uncertain"], rejected=counts["rejected"],
        failed=counts["failed"], fraction=k / n if n else 0.0, ci95=wilson_interval(k, n),
        decision=call, stop_cells=stop, stop_reached=bool(stop) and n >= stop, domain=verdict,
        refused_count=decision.rule.refused_crops == "unknown",
    )


def outcome_row(out: Outcome, source_kind: str = "file") -> dict[str, Any]:
    """An outcome as a record row (what :meth:`RecordStore.add_record` stores)."""
    p = out.prediction
    return {
        "source_id": out.source_id, "source_kind": source_kind, "content_hash": out.content_hash,
        "status": out.status, "reason": out.reason,
        "label": p.label if p else None, "probability": p.probability if p else None,
        "p_positive": p.p_positive if p else None, "decision": p.decision if p else None,
        "probabilities": p.probabilities if p else None, "domain_score": out.domain_score,
    }


def path_crops(paths: Iterable[tuple[str, Path | None]]) -> Iterable[Crop]:
    """(shown path, Path) from ``expand_inputs`` -> crops; the hash is computed lazily per file."""
    for shown, path in paths:
        yield shown, None, path if path is not None else shown


def file_source(paths: Sequence[str], fields: bool, n_workers: int = 1, rule: Any = None
                ) -> tuple[Iterable[Any], int | None, str]:
    """What `screen PATHS` records, as (items, how many or None, source kind): whole fields decoded and
    segmented in ``n_workers - 1`` background threads (:func:`segment_paths`; record them with
    :func:`record_fields`), or one crop per file (:func:`record_crops`)."""
    items = list(expand_inputs(paths))
    if fields:
        return segment_paths(items, n_workers, rule), None, "field"
    return path_crops(items), len(items), "file"


def field_crops(paths: Iterable[tuple[str, Path | None]], n_workers: int = 1) -> Iterable[Crop]:
    """Every red cell cut from whole microscope fields (``edgekit.device.field``), as crops; up to
    ``n_workers`` fields are decoded and segmented ahead, in threads.

    A field that cannot be used (unreadable, no cells, blurred, over-exposed...) yields one item whose
    image is the :class:`ImageError`, so it is recorded as rejected with its reason."""
    for cells in prefetch(_field_cells, paths, n_workers):
        yield from cells


def _field_cells(item: tuple[str, Path | None]) -> list[Crop]:
    from edgekit.device.field import iter_field_crops

    shown, path = item
    if path is None:
        return [(shown, None, ImageError(missing_reason(shown)))]
    try:
        cells = list(iter_field_crops(path))
    except ImageError as exc:  # the file may be gone by now (mid-batch): no hash, not a stopped batch
        return [(shown, _content_hash(path), ImageError(str(exc).removeprefix(f"{path.name}: ")))]
    # each cell's hash is of its own pixels: a field screened twice is skipped cell by cell
    return [(cell_id, array_hash(crop), crop) for cell_id, crop in cells]


def record_crops(
    store: RecordStore,
    session: Session,
    crops: Iterable[Crop],
    classifier: Classifier,
    gates: QualityGates | None = DEFAULT_GATES,
    stop_cells: int | None = None,
    source_kind: str = "file",
    on_outcome: Callable[[Outcome], None] | None = None,
    batch_size: int = BATCH_SIZE,
    n_workers: int = 1,
    field: Any = None,
    lookahead: bool = False,
    features: Mapping[str, np.ndarray | None] | None = None,
) -> Tally:
    """Classify and commit each crop not yet recorded in ``session``; stop once the session holds
    ``stop_cells`` classified crops (0 or None: never). Crops go ``batch_size`` at a time through
    one inference call and one committed transaction, and are reported (``on_outcome``) only after
    their commit: a crash loses at most the batch in flight, nothing reported is lost, and a rerun
    skips everything already recorded. Decoding and quality gates run in ``n_workers`` threads.
    ``field``: the records' ``FieldEntry`` of the whole field the crops were cut from, written (and
    any field it replaces marked replaced) in the transaction of the first batch.

    ``lookahead`` (crops that can be read ahead, such as files; never a camera): the next batch is
    taken, hashed and decoded while this one is classified and committed, whenever its size cannot
    depend on this batch's outcome (no stop, or the stop at least a batch beyond this one), so the
    same batches are recorded as without it. ``features``: crops' domain features by source id,
    where the caller measured them (a field's cells, for its colour rule)."""
    done = store.recorded_hashes(session.id)
    counted = store.count_classified(session.id) if stop_cells else 0
    tally = Tally()
    it = iter(crops)
    cut = source_kind in CUT_KINDS
    ahead = None
    if lookahead:
        from edgekit.device.threads import Pool

        ahead = Pool(1, "edgekit-lookahead")

    def room() -> int:
        return min(batch_size, stop_cells - counted) if stop_cells else batch_size

    def take(n: int) -> tuple[list[Outcome | None], list[tuple[int, str, Any, str]], Any] | None:
        """The next ``n`` crops: their outcomes so far, what is left to classify, and its decoding
        (started in the background with ``lookahead``)."""
        chunk = list(islice(it, n)) if n > 0 else []
        if not chunk:
            return None
        outs, todo = _triage(chunk, done)
        items = [t[1:] for t in todo]
        loading = ahead.submit(load_batch, items, classifier, gates, n_workers, features, cut) if ahead \
            else items
        return outs, todo, loading

    try:
        nxt = take(room())
        while nxt is not None:
            outs, todo, loading = nxt
            taken = ahead is not None and (not stop_cells or stop_cells - counted - len(todo) >= batch_size)
            nxt = take(batch_size) if taken else None  # its size is batch_size whatever this one gives
            loaded = loading.result() if ahead else load_batch(loading, classifier, gates, n_workers,
                                                                features, cut)
            found = predict_loaded(loaded, classifier)
            del loaded  # its crops, held in its outcomes until committed: not while the next batch loads
            done_outs = _commit(store, session, outs, todo, found, classifier, source_kind, field, n_workers)
            for out in done_outs:  # reported only once committed
                tally.add(out.status)
                counted += out.status == "classified"
                if on_outcome:
                    on_outcome(out)
            if not taken:
                nxt = take(room())
    finally:
        if ahead is not None:
            ahead.shutdown()
    return tally


def _commit(store: RecordStore, session: Session, outs: list[Outcome | None],
            todo: list[tuple[int, str, Any, str]], found: list[Outcome], classifier: Classifier,
            source_kind: str, field: Any, n_workers: int) -> list[Outcome]:
    """Commit one batch in one transaction: its records (the model's outcomes ``found`` for ``todo``
    in their places among ``outs``), the flagged cells' crops for review, and its ``field``; the
    batch's outcomes in order."""
    for (i, *_), out in zip(todo, found, strict=True):
        outs[i] = out
    done_outs = [o for o in outs if o is not None]
    rows = [outcome_row(o, source_kind) for o in done_outs if o.status != "skipped" and o.content_hash]
    # flagged cells' crops, for review: committed with their records
    kept = review_crops(found, [t[2] for t in todo], classifier.manifest.decision.cutoff, n_workers)
    for out in found:
        out.pixels = None
    if rows:
        store.add_records(session, rows, kept, field)
    return done_outs


def _triage(chunk: list[Crop], done: set[str]
            ) -> tuple[list[Outcome | None], list[tuple[int, str, Any, str]]]:
    """The crops of one batch: the outcomes known without the model (refused, unreadable, already
    recorded: ``done``, updated) and what is left to classify, as (position in the outcomes, source
    id, image, hash)."""
    outs: list[Outcome | None] = []
    todo: list[tuple[int, str, Any, str]] = []
    for source_id, content_hash, image in chunk:
        if isinstance(image, ImageError):  # a whole source refused before any crop (e.g. a field)
            out = Outcome(source_id, "rejected", reason=str(image),
                          content_hash=content_hash or f"rejected:{source_id}")
        else:
            content_hash = content_hash or _content_hash(image)
            out = None if content_hash else Outcome(source_id, "failed",
                                                    reason=missing_reason(str(image)))
        key = out.content_hash if out else content_hash
        if key and key in done:
            out = Outcome(source_id, "skipped", content_hash=key)
        elif out is None:
            assert content_hash is not None  # out is None only when the hash is known
            todo.append((len(outs), source_id, image, content_hash))
        if key:
            done.add(key)
        outs.append(out)
    return outs, todo


def _content_hash(image: np.ndarray | str | os.PathLike) -> str | None:
    if isinstance(image, np.ndarray):
        return array_hash(image)
    try:
        return file_hash(image)
    except OSError:
        return None


# ---------------------------------------------------------------- whole fields in a session

REPLACE_EDGE_MARGIN = 1.068  # a retake replaces the counted field only when its edges are this much sharper


def replace_margin() -> float:
    """How much higher a retake's focus score must be to replace the counted field: the score
    moves as the edge ratio to the power 1 + the profile (:func:`~edgekit.device.field.focus.combine`),
    so REPLACE_EDGE_MARGIN ** (1 + profile); 1.1 at profile 0.45, where the margin was set."""
    from edgekit.device.field.focus import FOCUS_MEASURE

    return REPLACE_EDGE_MARGIN ** (1 + FOCUS_MEASURE.profile)


def sharper_than(score: float, counted: dict[str, Any]) -> bool:
    """Whether a retake of focus ``score`` may replace the ``counted`` field (a records row)."""
    return score > replace_margin() * counted["sharpness"]


@dataclass
class FieldCheck:
    """What a session makes of one whole field before its cells are recorded (:func:`check_field`).

    ``verdict``: ``new`` (count it), ``replace`` (count it instead of the sharper-by-less counted
    field ``duplicate_of``), ``duplicate`` (already counted: record nothing) or ``out of focus``
    (well below the session's recent fields: recorded as rejected with ``reason``)."""

    verdict: str
    sharpness: float
    entry: Any = None  # the records' FieldEntry to record with the cells (new, replace)
    reason: str | None = None
    duplicate_of: dict[str, Any] | None = None

    @property
    def counted(self) -> bool:
        return self.verdict in ("new", "replace")


def check_field(store: RecordStore, session: Session, source_id: str, rgb: np.ndarray | CutField,
                replace: bool = True, focus: float | None = None, rule: Any = None) -> FieldCheck:
    """The session's judgement of a field that passed the field quality gate: is it a field already
    counted in the session (:mod:`~edgekit.device.field.identity`: re-encoded, shifted, rescaled or
    a little blurred), and is it well below the sharpness of the session's recent fields
    (:mod:`~edgekit.device.field.focus`)? With ``replace``, a retake sharper than the counted field
    by :func:`replace_margin` replaces it (atomically, when recorded). ``rgb``: the field, or its
    :class:`CutField`; ``focus``: the field's :func:`~edgekit.device.field.focus.focus_score` when the
    caller has it already (always, with a CutField); ``rule``: the bundle's
    :class:`~edgekit.device.field.focus.FocusRule` (default: the shared one)."""
    from edgekit.device.field.focus import DEFAULT_RULE, SESSION_RECENT
    from edgekit.device.field.identity import Signature, probe, same_field, signature
    from edgekit.device.records import FieldEntry

    rule = rule or DEFAULT_RULE
    if isinstance(rgb, CutField):
        if focus is None:
            raise ValueError("a CutField is checked with the focus score measured where it was cut")
        score, sig = focus, rgb.signature
    else:
        score, sig = rule.score(rgb) if focus is None else focus, signature(rgb)
    counted = store.fields(session.id)
    new = probe(sig)  # matched against every counted field: its own half of the work once
    recheck = {"checked_up_to": max((f["id"] for f in counted), default=0),
               "same_field": lambda other: same_field(new, Signature.from_bytes(other))}
    for old in reversed(counted):
        if same_field(new, Signature.from_bytes(old["signature"])):
            if replace and sharper_than(score, old):
                return FieldCheck("replace", score, FieldEntry(source_id, sig.to_bytes(), score, old["id"],
                                                               **recheck), duplicate_of=old)
            why = f"this field is already counted ({old['source_id']})"
            if sharper_than(score, old):
                why += "; this take is sharper: send it with replace to count it instead"
            return FieldCheck("duplicate", score, reason=why, duplicate_of=old)
    best = max((f["sharpness"] for f in counted[-SESSION_RECENT:]), default=None)
    reason = rule.reason(score, best)
    if reason:
        return FieldCheck("out of focus", score, reason=reason)
    return FieldCheck("new", score, FieldEntry(source_id, sig.to_bytes(), score, **recheck))


def field_items(source_id: str, rgb: np.ndarray | CutField, cells: list, check: FieldCheck,
                content_hash: str | None = None) -> list[Crop]:
    """The crops ``record_crops`` records for one checked field (``rgb``: the field or its
    :class:`CutField`): its cells when counted, one rejected item when out of focus, nothing when
    already counted."""
    from edgekit.device.field import cell_id, crop_cell

    if check.verdict == "duplicate":
        return []
    if not check.counted:
        if not content_hash:
            assert isinstance(rgb, np.ndarray)  # a CutField always comes with its file's hash
            content_hash = f"rejected:{array_hash(rgb)}"
        return [(source_id, content_hash, ImageError(check.reason or ""))]
    crops = rgb.crops if isinstance(rgb, CutField) else [crop_cell(rgb, c) for c in cells]
    return [(cell_id(source_id, c.id), None, crop) for c, crop in zip(cells, crops, strict=True)]


@dataclass
class CutField:
    """A segmented field without its pixels: what :func:`check_field` and :func:`field_items` need
    of it, made where it was segmented (a background thread, :func:`segment_paths`), so the caller
    never holds a decoded field while the next one is decoded (8 IML fields, 2 threads: ~4 MB of
    peak RSS). ``crops``: its cells' crops, in the order of its cells."""

    signature: Any  # edgekit.device.field.identity.Signature
    crops: list[np.ndarray]
    shape: tuple[int, int] = (0, 0)  # the field's height and width
    lit: float = 1.0  # its border_lit (edgekit.device.domain): a single cell crop is dark all round

    @classmethod
    def of(cls, rgb: np.ndarray, cells: list, outside: Outside = ...) -> CutField:
        """``outside``: the field's surround when the caller found it (as for
        :func:`~edgekit.device.field.view.surround`)."""
        from edgekit.device.domain import border_lit
        from edgekit.device.field import crop_cell
        from edgekit.device.field.identity import signature

        crops = [crop_cell(rgb, c) for c in cells]
        return cls(signature(rgb, outside), crops, (rgb.shape[0], rgb.shape[1]), border_lit(rgb))


# (shown name, content hash or None, decoded field, its CutField, or None, its cells, why it cannot be
# counted, its focus score when measured)
SegmentedField = tuple[str, "str | None", "np.ndarray | CutField | None", list, "str | None", "float | None"]


def segment_paths(paths: Iterable[tuple[str, Path | None]], n_workers: int = 1,
                  rule: Any = None) -> Iterable[SegmentedField]:
    """Whole-field files decoded and segmented for :func:`record_fields`: with ``n_workers`` > 1, in
    ``n_workers - 1`` background threads, as many fields ahead, while the caller records a field's
    cells in its own thread (record them with ``n_workers=1``). A field cost ~30 MB while it was
    segmented (tracemalloc, a 1280x960 field; 18 MB with the focus planes in strips, 14 MB in two passes):
    each field more in flight raised the peak RSS (3 fields, 2 segmenting: 178 MB; 2 fields, 1
    segmenting: 150 MB on 8 IML fields), and the cells' own work (small arrays, holding the GIL)
    gained nothing from a second thread. A field that can be counted comes as its :class:`CutField`."""
    return prefetch(partial(_segment_one, rule=rule), paths, n_workers - 1, ahead=n_workers - 1)


def _segment_one(item: tuple[str, Path | None], rule: Any = None) -> SegmentedField:
    from edgekit.device.field import count_cells
    from edgekit.device.field.quality import field_focus, shape_reason
    from edgekit.device.field.view import outside_view

    shown, path = item
    if path is None:
        return shown, None, None, [], missing_reason(shown), None
    content_hash, rgb = _read_field(path)
    if content_hash is None:  # gone (mid-batch): its cells could not be told apart on a rerun
        return shown, None, None, [], missing_reason(str(path)), None
    if isinstance(rgb, ImageError):  # a stopped batch never: the field is rejected, the others carry on
        return shown, content_hash, None, [], str(rgb).removeprefix(f"{path.name}: "), None
    # its surround, looked for once for its focus, its cells and its signature (not on a shape the
    # gate refuses: each then does as it did alone)
    outside = ... if shape_reason(rgb) else outside_view(rgb)
    focus = field_focus(rgb, rule, outside)  # once, for the field gate here and the session's check_field
    cells, _, reason = count_cells(rgb, focus=focus, rule=rule, outside=outside)
    # cut here (a refused field too: it was read): its pixels are freed before the next field is decoded
    return shown, content_hash, CutField.of(rgb, cells, outside), cells, reason, focus


def _read_field(path: Path) -> tuple[str | None, np.ndarray | ImageError]:
    """A field file's content hash and its pixels (or why they cannot be used) from one read: the
    hash is of exactly the bytes decoded, so a file replaced meanwhile is never recorded under
    another picture's hash. A file the bounded read refuses (too large, empty) is hashed as a file,
    as its record always was; None: gone."""
    from edgekit.device.decoding import read_file_bytes
    from edgekit.device.preprocess import image_from_bytes

    try:
        data = read_file_bytes(path)
    except ImageError as exc:
        return _content_hash(path), exc
    content_hash = sha256(data).hexdigest()
    try:
        return content_hash, image_from_bytes(path, data)
    except ImageError as exc:
        return content_hash, exc


def field_refusal(rgb: np.ndarray | CutField, cells: list, classifier: Classifier
                  ) -> tuple[str | None, list[np.ndarray | None] | None]:
    """Why a field is refused whole, as ``edgekit field`` refuses it, not cut into crops: a single
    cell crop given as a field, or cells without stain colour (a grayscale field); or None. With it,
    its cells' features (:func:`~edgekit.device.field.classify.field_features`), measured once for
    the colour rule and their domain scores (None without a domain guard)."""
    from edgekit.device.domain import border_lit, single_cell_reason
    from edgekit.device.field import crop_cell
    from edgekit.device.field.classify import colourless_reason, field_features

    (h, w), lit = (rgb.shape, rgb.lit) if isinstance(rgb, CutField) else (rgb.shape[:2], border_lit(rgb))
    reason = single_cell_reason(h, w, lit, classifier.manifest)
    if reason:
        return reason, None
    domain = classifier.manifest.domain
    # a camera frame comes whole: its cells are cut here, and again (the same pixels) to be recorded
    crops = rgb.crops if isinstance(rgb, CutField) else [crop_cell(rgb, c) for c in cells]
    feats = field_features(crops, domain)
    return colourless_reason(feats, domain), feats


def features_by_id(shown: str, cells: list, feats: list[np.ndarray | None] | None
                   ) -> dict[str, np.ndarray | None] | None:
    """A field's cells' features (:func:`field_refusal`'s) by the source id their crops are recorded
    under (``record_crops``' ``features``)."""
    from edgekit.device.field import cell_id

    return None if feats is None else {cell_id(shown, c.id): f for c, f in zip(cells, feats, strict=True)}


def record_fields(
    store: RecordStore, session: Session, fields: Iterable[SegmentedField], classifier: Classifier,
    gates: QualityGates | None = DEFAULT_GATES, stop_cells: int | None = None, source_kind: str = "field",
    on_outcome: Callable[[Outcome], None] | None = None, on_field: Callable[..., None] | None = None,
    n_workers: int = 1, replace: bool = True, rule: Any = None,
) -> Tally:
    """Record whole fields, one at a time, as ``screen --fields`` and the camera do: a field the
    quality gate refuses is recorded once as rejected; a field the session already counted
    (:func:`check_field`) records nothing (a sharper retake replaces it); the cells of the others
    are recorded with their field, in one transaction per field. ``on_field(name, rgb, cells,
    check)`` sees each field (the decoded field or its :class:`CutField`) before its cells are
    recorded (``check`` None when refused), and once more, as a duplicate, when another process on
    the database counted the same field meanwhile."""
    from edgekit.device.records import FieldCountedMeanwhile

    total = Tally()

    def seen(out: Outcome) -> None:
        total.add(out.status)
        if on_outcome:
            on_outcome(out)

    for shown, content_hash, rgb, cells, reason, focus in fields:
        if stop_cells and store.count_classified(session.id) >= stop_cells:
            break
        check, feats = None, None
        if reason is None and rgb is not None and cells:
            reason, feats = field_refusal(rgb, cells, classifier)
        if reason is not None or rgb is None:
            why = ImageError(reason or "unreadable")
            items: list[Crop] = [(shown, content_hash or f"rejected:{shown}", why)]
        else:
            check = check_field(store, session, shown, rgb, replace, focus, rule)
            items = field_items(shown, rgb, cells, check, content_hash)
        if on_field:
            on_field(shown, rgb, cells if check is not None and check.counted else [], check)
        measured = features_by_id(shown, cells, feats)
        rgb = cells = feats = None  # the crops are copies: free the field while its cells are classified
        if not items:
            continue
        try:
            record_crops(store, session, items, classifier, gates, stop_cells, source_kind, seen,
                         batch_size=max(1, len(items)), n_workers=n_workers,
                         field=check.entry if check is not None else None, features=measured)
        except FieldCountedMeanwhile as exc:  # another process on the database counted it first
            if on_field and check is not None:
                on_field(shown, None, [], FieldCheck("duplicate", check.sharpness, reason=str(exc),
                                                     duplicate_of=exc.other))
        del items  # this field's crops: not held while the next field is segmented
    return total
