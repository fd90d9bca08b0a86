# pyright: basic
"""The field pipeline's data types: segmentation settings, found cells, one field's report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from edgekit.manifest import Decision, Manifest


@dataclass(frozen=True)
class FieldParams:
    """Segmentation settings, in units of the typical cell radius so they hold at any magnification.

    Defaults were tuned on half of the BCCD fields (benchmarks/field_detection.py). The steps that
    split merged masses (hole_*, seed_cap, radius_peaks, radius_cap) were designed on IML dev fields
    but their values are round numbers in cell units, not swept on them.
    """

    # segment on a copy at most this large; crops come from the full image. 640 finds the same cells
    # as 1024 on BCCD and IML within a point or two of recall at a third of the time (RESULTS.md)
    max_side: int = 640
    # a smaller field is enlarged to max_side: the finder's pixel-sized steps (blurs, openings, the
    # Hough transforms) were set at that size (BCCD at 0.7x, 448 px: recall 0.79 -> 0.84, held out)
    enlarge: bool = True
    # the background: "mode" (the brightest mode of the grey levels) or "percentile" (bg_percentile
    # of each channel)
    background: str = "mode"
    bg_percentile: float = 95.0  # the brightest stained-free pixels are the background
    bg_spread: int = 12  # grey levels either side of the brightest mode that are its pixels
    # what "stained" means: "stain" (optical density along the field's own stain colour, any shade)
    # or "green" (green optical density: pink Giemsa only); also how white-cell nuclei are found
    density: str = "stain"
    stain_power: float = 2.0  # density "stain": each channel weighted by its own density to this power
    # the stain colour is measured on pixels whose total density is above the field's 70th
    # percentile and above stain_floor x its 97th (fields with few cells: not the background).
    # Off by default: 0.25 lowered recall on hue-rotated BCCD fields (hue -40: 0.826 -> 0.732)
    stain_floor: float = 0.0
    # ... and above Otsu's threshold on the total density (clipped at its 90th percentile, so a
    # white cell's nucleus is no class of its own): on a sparse field the colour is the cells', not
    # the background noise's (a synthetic field of 24 cells lost 10 to the white-cell rule at any
    # size but one before), with BCCD's hue-rotated fields unchanged
    stain_otsu: bool = True
    threshold: float = 0.65  # x Otsu's threshold on green optical density
    min_od: float = 0.05  # green optical density below which nothing is a cell (BCCD cells: 0.2-0.4)
    # on a pale field, where min_od reaches pale_floor x the foreground threshold (Otsu's x threshold:
    # its stain is hardly denser than min_od), the floor is lowered to the field's background plus
    # noise_floor x its noise (the spread below the background's mode) where that is less: a pale
    # stain (faded, or a whitened background) puts cells' edges, rims and pale parts under any fixed
    # density, while its noise is as low as any field's. noise_floor 0: min_od alone. min_od reaches
    # 0.08-0.63x the threshold on the 172 IML fields, 0.42-1.0x on the 364 BCCD fields (whose noise
    # floor is above min_od), 0.83-1.73x on field_transforms.py --combos' pale BCCD fields: 0.75
    # leaves every plain field's floor as it was. noise_floor chosen on the even half of --combos
    # (3, 4, 6 alike on BCCD grey-pale, 0.702 -> 0.813; 3 and 4 a cell better on foreign-pale;
    # RESULTS.md)
    noise_floor: float = 4.0
    pale_floor: float = 0.75
    min_area: float = 0.30  # x typical cell area; smaller regions are debris or platelets
    min_edge_area: float = 0.50  # x typical cell area, for cells cut by the field border
    max_area: float = 3.0  # x typical cell area; larger regions are unsplit clumps
    peak_height: float = 0.50  # distance-transform peaks lower than this x radius are no cell centre
    peak_window: float = 1.0  # x radius: peaks closer than this are one cell
    # a nucleus pixel: density along the stain colour above nucleus_od and its density off that colour
    # above nucleus_contrast (density "green": red-channel density above nucleus_od, exceeding the
    # blue channel's by nucleus_contrast)
    nucleus_od: float = 0.20
    nucleus_contrast: float = 0.12
    nucleus_off: float = 0.7  # density "stain": density off the stain colour, x the cells' density ...
    nucleus_dense: float = 1.0  # ... and density along it above this x the cells' (90th percentile)
    min_nucleus_area: float = 0.12  # x cell area: smaller purple blobs are platelets
    reach: float = 0.5  # x radius: pixels farther than this beyond a seed's own radius are not its cell
    seed_cap: float = 1.0  # x radius: the most a seed's own radius counts when sharing out a clump; 0: no cap
    hough_votes: float = 20.0  # Hough accumulator threshold for extra seeds in dense clumps; 0: off
    hough_edge: float = 30.0  # Canny upper threshold of the Hough transform
    # enclosed holes are filled (pale centres) when stained at least this x threshold on average, or
    # when convex (solidity) and at most hole_area x the circles' cell area; other holes are
    # background enclosed by touching cells. hole_density 0: fill every hole
    hole_density: float = 0.4
    hole_area: float = 1.0
    hole_solidity: float = 0.9
    rim: float = 8.0  # local-contrast threshold (density units, cells ~200) for pale cells' rims; 0: off
    max_wbc_overlap: float = 0.2  # a region this much inside a white cell's zone is rejected
    split_area: float = 1.8  # x typical cell area: larger regions are split by area (k-means); 0: off
    # regions above split_min_area x typical cell area that are oblong (axis ratio above
    # split_elongation) are split too, in at least two (overlapping cells); 0: off
    split_elongation: float = 0.0
    split_min_area: float = 1.2
    # regions above split_min_area x typical cell area that hold two cell circles (Hough) whose
    # centres are at least split_circles x radius apart are cut between them (overlapping cells),
    # unless a part would be smaller than min_area; 0: off. Off by default: 0.5 finds fewer
    # objects across two cells (IML 251 -> 205) but cuts some large oblong single cells in two
    # (RESULTS.md, "Overlapping red cells found as one object")
    split_circles: float = 0.0
    grow: float = 0.12  # x radius: each cell's mask grows this much into its pale edge (cut by the threshold)
    # a cell's mask (its region's convex hull and the growth) leaves out the pixels of every other
    # region the finder cut (a touching neighbour's edge, the other cell of an overlapping pair beyond
    # their shared lens), keeping the part joined to its own region; False: hull and growth as they fall
    own_pixels: bool = False
    grow_threshold: float = 0.5  # x threshold: the faint stain the growth may reach into
    radius_peaks: bool = True  # radius from the distance map's local maxima (one per cell), not one per blob
    hough_radius: bool = True  # blend the distance-transform radius estimate with circles' radii
    radius_gain: float = 1.1  # x the blended estimate (circle radii run a little small)
    # crowded fields: a distance-map radius above radius_cap x the circles' is dropped for the
    # circles' when their radii agree (interquartile range below circle_spread x median); 0: off
    radius_cap: float = 1.3
    circle_spread: float = 0.2
    # cells read as rings (pale centres as clear as the background): a distance-map radius below
    # radius_floor x the circles' is dropped for the circles'; 0: off
    radius_floor: float = 0.5
    # a region whose convex hull is min_area to ring_area x a cell's area and that fills less than
    # ring_solidity of it (a ring, a "C": a cell's outline) is filled to its hull; 0: off.
    # enlarge, hole_area, radius_floor and ring_* were chosen on every 16th BCCD field (the even
    # half of benchmarks/field_transforms.py's sample) and checked on the other half (RESULTS.md)
    ring_solidity: float = 0.9
    ring_area: float = 2.0
    cell_radius: float | None = None  # in full-resolution pixels; None: estimated per field
    # cells smaller than the circles sought to size them (radius under the working copy's short side
    # / 30: a lower magnification, a wider camera): when the circles found do not agree (fewer than
    # 10, or spread over circle_spread), circles down to the short side / small_floor are sought
    # too, and their radius is the field's when they outnumber the first by small_circles x and
    # agree (interquartile range under small_spread x median), or, scattering more, when a quick
    # distance map puts the cells nearer their median than the first circles' (IML at 0.6x: 3 of 43
    # fields whose 29-45 smaller circles spread 0.30-0.40); small_circles 0: off. Pale centres
    # of large cells give small circles too, but few more than the first search's and of scattered
    # sizes. Chosen on the even half of field_transforms.py --combos and a synthetic field of
    # touching cells (RESULTS.md)
    small_circles: float = 3.0
    small_floor: float = 60.0
    small_spread: float = 0.3
    # ... and skipped when a quick distance map already sizes the cells at small_skip x the first
    # circles' floor or more (:func:`.segment._smaller_circles`; BCCD: the second search ran on 44
    # of 46 fields for nothing); 0: never skipped. On --combos the fields whose second search won
    # measured at most 1.51x, BCCD's own fields 1.63-3.8x: 2 leaves a margin on the side that
    # costs only time (RESULTS.md)
    small_skip: float = 2.0
    # cells whose circles measure under fine_cells x the first circles' floor (sized by the smaller
    # search: a few pixels across in the working copy) are found on a larger copy, where they measure
    # fine_target x that floor, at most the field's own size (:func:`.segment._finer_side`); 0: off.
    # Chosen on the even half of field_transforms.py --combos' IML fields, checked on the odd half
    # (RESULTS.md: 0.6x 0.832 -> 0.890, 0.8x 0.883 -> 0.908; one of the 536 plain fields moves)
    fine_cells: float = 0.9
    fine_target: float = 1.25
    # a field whose background dims by more than this fraction of its brightest (a vignette, a lamp off
    # centre) is found on a copy divided by its lighting (:mod:`.illumination`); None: never. Chosen
    # among 0.1/0.15/0.2 on the even half of benchmarks/field_transforms.py's sample: vignetted fields
    # (0.8-0.5x at the corners) found alike, BCCD's own fields (their lamps dim by 0.10-0.20) best at
    # 0.1, IML's (at most 0.11) unchanged; checked on the odd half (RESULTS.md)
    max_falloff: float | None = 0.1

    def __post_init__(self) -> None:
        if self.density not in ("stain", "green"):
            raise ValueError(f"FieldParams.density must be 'stain' or 'green', not {self.density!r}")
        if self.background not in ("mode", "percentile"):
            raise ValueError(
                f"FieldParams.background must be 'mode' or 'percentile', not {self.background!r}")

    @classmethod
    def legacy(cls, **changes: Any) -> FieldParams:
        """The finder before issue 29 (green density, percentile background, purple nuclei): pink
        Giemsa only. Kept to measure against."""
        return cls(**{"density": "green", "background": "percentile", **changes})


SEPARATIONS = ("alone", "touching", "overlapping")  # a lone blob; split from touching cells at a waist;
# cut out of a clump of overlapping cells (part of its outline is a cut, and a neighbour's rim may be inside)


@dataclass
class CellBox:
    """One found cell, in full-resolution pixel coordinates of the field."""

    id: int
    x: int
    y: int
    w: int
    h: int
    area: int
    mask: np.ndarray  # bool (h, w): True inside the cell
    edge: bool = False  # touches the field border (a cut cell)
    separation: str = "alone"  # how the finder separated it from its neighbours (SEPARATIONS)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(xmin, ymin, xmax, ymax), exclusive max."""
        return (self.x, self.y, self.x + self.w, self.y + self.h)


class ClassifierLike(Protocol):
    manifest: Manifest

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass
class FieldReport:
    """The result for one field. ``rejected`` holds the reason when the field was not counted."""

    source: str
    shape: tuple[int, int] = (0, 0)
    cells: list[CellBox] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)  # positive-class probability per cell
    decisions: list[str] = field(default_factory=list)  # positive | negative | uncertain per cell
    decision: Decision | None = None  # the manifest's: what counts as parasitized; None unclassified
    rejected: str | None = None
    cell_radius: float = 0.0
    timing: dict[str, float] = field(default_factory=dict)  # seconds: decode, segment, classify
    domain_scores: list[float | None] = field(default_factory=list)  # per cell (edgekit.device.domain)
    domain: dict[str, Any] | None = None  # the guard's verdict on this field; None without a model
    image: np.ndarray | None = field(default=None, repr=False)  # the decoded field, when asked to keep it

    @property
    def n_cells(self) -> int:
        return len(self.cells)

    def count(self, decision: str) -> int:
        return sum(d == decision for d in self.decisions)

    @property
    def positive_label(self) -> str | None:
        return None if self.decision is None else self.decision.counted_label

    @property
    def cutoff(self) -> float | None:
        """p at which a cell counts as parasitized (the manifest's cutoff); None when unclassified."""
        return None if self.decision is None else self.decision.cutoff

    def counted(self, i: int) -> bool:
        """Whether cell ``i`` counts as parasitized (False when the field was not classified)."""
        return self.decision is not None and self.decision.is_counted_positive(self.probabilities[i])

    @property
    def n_parasitized(self) -> int:
        """Cells called parasitized at the manifest's cutoff (including uncertain ones above it)."""
        return sum(self.counted(i) for i in range(len(self.probabilities)))

    @property
    def parasitemia(self) -> float | None:
        """Fraction of found cells called parasitized; None without a classifier or cells."""
        if not self.decisions or not self.cells:
            return None
        return self.n_parasitized / len(self.cells)

    @property
    def ci95(self) -> tuple[float, float] | None:
        from edgekit.metrics import wilson_interval

        if not self.decisions or not self.cells:
            return None
        return wilson_interval(self.n_parasitized, len(self.cells))

    def to_dict(self, per_cell: bool = False) -> dict[str, Any]:
        """A JSON-ready summary (one line of ``--format jsonl``)."""
        d: dict[str, Any] = {"field": self.source, "rejected": self.rejected, "cells": self.n_cells}
        if self.decisions:
            d.update(
                positive_label=self.positive_label,
                parasitized=self.n_parasitized,
                positive=self.count("positive"),
                negative=self.count("negative"),
                uncertain=self.count("uncertain"),
                parasitemia=self.parasitemia,
                ci95=list(self.ci95) if self.ci95 else None,
            )
        if self.domain is not None:
            d["domain"] = self.domain
        d["timing_ms"] = {k: round(v * 1000, 1) for k, v in self.timing.items()}
        if per_cell:
            d["cell_list"] = [
                {
                    "id": cell_id(self.source, c.id),
                    "box": list(c.box),
                    "area": c.area,
                    "edge": c.edge,
                    "separation": c.separation,
                    **(
                        {"p": round(self.probabilities[i], 4), "decision": self.decisions[i]}
                        if self.decisions
                        else {}
                    ),
                }
                for i, c in enumerate(self.cells)
            ]
        return d


def cell_id(source: str, index: int) -> str:
    """Stable id of a cell within a field, e.g. ``field.jpg#12``."""
    return f"{Path(source).name}#{index}"

