"""Labels from review work against labels from boxes: a reviewer simulated from a site's boxes.

    edgekit screen --patient SITE --fields FIELD_IMAGES... --db DB --stop-cells 0
    python -m edgekit.benchmarks.reviewed_adaptation --db DB --cells SITE_CELLS --fields FIELD_DIR

Every cell screening kept for review (flagged, or in the 1-in-20 sample of negatives) gets the
verdict its labelled box gives (``edgekit cells`` recorded which found cell each box matched: the
same finder, so the same cell boxes); kept cells that match no labelled box (fragments, white cells,
clumps) get no verdict, as a reviewer would skip them. The verdicts are recorded with the review
code a person's go through (``record_verdicts``); then ``edgekit cells --from-sessions DB`` makes
site cells from them, and ``edgekit adapt`` and ``edgekit site check`` measure the result on
boxed test fields, beside a bundle adapted on the boxes (RESULTS.md says how it was run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def simulate_reviews(db: Path, cells: Path, fields: Path, session_key: str | None = None,
                     reviewer: str = "boxes") -> dict:
    """Record the boxes' verdict on every kept crop of the session(s) whose cell a box matched."""
    from edgekit.cells import CELLS_INDEX
    from edgekit.device.annotations import PARASITIZED
    from edgekit.device.field import count_cells
    from edgekit.device.preprocess import read_image
    from edgekit.device.records import RecordStore
    from edgekit.device.review import record_verdicts

    index = json.loads((cells / CELLS_INDEX).read_text())
    by_box: dict[tuple[str, tuple[int, ...]], str] = {
        (c["field"], tuple(c["cell"])): c["class"] for c in index["cells"]}
    tally = {"kept": 0, "reviewed": 0, "parasitized": 0, "no_box": 0}
    with RecordStore(db) as store:
        sessions = [store.find_session(session_key)] if session_key else [
            store.session_by_id(r["id"]) for r in store.sessions()]
        for session in sessions:
            images = store.crop_images(session.id)
            by_field: dict[str, list[dict[str, Any]]] = {}
            for r in store.records(session.id):
                if int(r["id"]) in images and "#" in r["source_id"]:
                    by_field.setdefault(r["source_id"].rsplit("#", 1)[0], []).append(r)
            pairs = []
            for name, records in sorted(by_field.items()):
                found, _, _ = count_cells(read_image(fields / name))
                boxes = {str(c.id): tuple(int(v) for v in c.box) for c in found}
                for r in records:
                    tally["kept"] += 1
                    box = boxes.get(r["source_id"].rsplit("#", 1)[1])
                    label = by_box.get((name, box)) if box else None
                    if label is None:
                        tally["no_box"] += 1
                        continue
                    verdict = "parasitized" if label == PARASITIZED else "not parasitized"
                    tally["parasitized"] += verdict == "parasitized"
                    pairs.append((int(r["id"]), verdict))
            if pairs:
                record_verdicts(store, session, pairs, reviewer=reviewer)
            tally["reviewed"] += len(pairs)
    return tally


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, required=True, help="screening database of the site's fields")
    ap.add_argument("--cells", type=Path, required=True, help="the same fields' boxed cells (edgekit cells)")
    ap.add_argument("--fields", type=Path, required=True, help="the folder of the field images")
    ap.add_argument("--session", default=None, help="session id or patient (default: every session)")
    args = ap.parse_args(argv)
    tally = simulate_reviews(args.db, args.cells, args.fields, args.session)
    print(json.dumps(tally))
    return tally


if __name__ == "__main__":
    main()
