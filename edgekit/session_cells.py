# pyright: basic
"""Labelled site cells from normal review work: ``edgekit cells --from-sessions DB -o OUT``.

Screening keeps the crop of every cell it flags (counted parasitized or uncertain) and of a sample
of the cells it calls negative (:data:`edgekit.device.review.NEGATIVE_SAMPLE_EVERY`); reviewers give
verdicts on them (``sessions confirm``, the gallery, the phone page). Every reviewed cell whose crop
was kept becomes a labelled crop, in the same layout as ``edgekit cells`` writes from boxed fields:
``OUT/Parasitized/`` and ``OUT/Uninfected/``, named ``<field>__r<record id>.png`` so splits group by
field (a field is one image of one session: ``S<session id>-<image stem>``), plus ``cells.json``.

The crops are the pixels the model was given. What they are not is a random sample of the site's
cells: flagged cells are all there, negatives only one in ``NEGATIVE_SAMPLE_EVERY``. ``cells.json``
says so per field (cells screened, kept, reviewed), and the cells carry no whole-field truth, so
``edgekit adapt`` on them counts labelled cells only. Light: the records store and OpenCV.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgekit.device.annotations import CLASSES, PARASITIZED, UNINFECTED
from edgekit.errors import DataError
from edgekit.safefile import check_replaceable, replace_dir

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def field_name(session_id: int, source_id: str) -> str:
    """``S<session>-<image stem>``: the field a reviewed cell came from (crops of a folder of single
    cells, with no ``#index``, are grouped by their session)."""
    image = source_id.rsplit("#", 1)[0] if "#" in source_id else ""
    stem = _UNSAFE.sub("_", Path(image).stem)[:60] if image else "crops"
    return f"S{session_id}-{stem}"


def write_session_cells(db: str | os.PathLike, out: str | os.PathLike, sessions: list[str] | None = None,
                        replace: bool = False, allow_one_class: bool = False) -> dict[str, Any]:
    """Write every reviewed cell with a kept crop of ``sessions`` (ids or patients; default: all) of the
    screening database ``db`` into ``out``; returns the summary. All or nothing, and both classes
    unless ``allow_one_class``, like ``edgekit cells`` from boxed fields."""
    from edgekit.cells import CELLS_INDEX, FIELD_SEPARATOR, check_classes
    from edgekit.device.records import RecordStore
    from edgekit.device.review import NEGATIVE_SAMPLE_EVERY, sampled_negative

    out = Path(out)
    check_replaceable(out, replace, CELLS_INDEX, "a cells dataset", DataError)
    with RecordStore(db, read_only=True) as store:
        chosen = ([store.find_session(key) for key in sessions] if sessions
                  else [store.session_by_id(r["id"]) for r in store.sessions()])
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            records_out: list[dict[str, Any]] = []
            per_field: dict[str, dict[str, Any]] = {}
            counts: dict[str, int] = dict.fromkeys(CLASSES, 0)
            for session in chosen:
                if session is None:
                    continue
                images = store.crop_images(session.id)
                reviews = store.reviews(session.id)
                for r in store.records(session.id):
                    if r["status"] != "classified":
                        continue
                    rid, name = int(r["id"]), field_name(session.id, r["source_id"])
                    f = per_field.setdefault(name, {"field": name, "session": session.id, "screened": 0,
                                                    "kept": 0, "reviewed": {c: 0 for c in CLASSES},
                                                    "negative_sample_reviewed": 0})
                    f["screened"] += 1
                    f["kept"] += rid in images
                    verdict = reviews.get(rid)
                    if verdict is None or rid not in images:
                        continue
                    label = PARASITIZED if verdict["verdict"] == "parasitized" else UNINFECTED
                    file = f"{label}/{name}{FIELD_SEPARATOR}r{rid}.png"
                    (tmp / label).mkdir(exist_ok=True)
                    (tmp / file).write_bytes(images[rid])
                    counts[label] += 1
                    f["reviewed"][label] += 1
                    sample = sampled_negative(r.get("content_hash"))
                    f["negative_sample_reviewed"] += sample
                    records_out.append({"file": file, "field": name, "class": label,
                                        "session": session.id, "record": rid, "source_id": r["source_id"],
                                        "p_positive": r.get("p_positive"),
                                        "model_decision": r.get("decision"), "negative_sample": sample,
                                        "reviewer": verdict.get("reviewer")})
            check_classes(counts, allow_one_class, f"no reviewed cell with a kept crop in {db}: review cells "
                          "first (`edgekit sessions review` / `sessions confirm`, or the phone page)")
            summary = {
                "fields": len({r["field"] for r in records_out}), "cells": counts,
                "source": "reviewer verdicts on the cells screening kept (every flagged cell, and one in "
                          f"{NEGATIVE_SAMPLE_EVERY} of those called negative): not a random sample of the "
                          "site's cells, and no whole-field truth",
                "negative_sample_every": NEGATIVE_SAMPLE_EVERY, "fields_dir": None,
            }
            rows = [{**f, "labelled": f["reviewed"]} for f in per_field.values()
                    if sum(f["reviewed"].values())]
            index = {"summary": summary, "per_field": rows, "cells": records_out}
            (tmp / CELLS_INDEX).write_text(json.dumps(index, indent=1) + "\n")
            os.chmod(tmp, 0o755)
            replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return summary
