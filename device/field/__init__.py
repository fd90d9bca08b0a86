# pyright: basic
"""Whole microscope fields: find every red cell, crop it like the NIH crops, classify, count.

A thin-smear field is segmented classically (no model), with no stain-colour window, on a working
copy 640 px long (larger fields shrunk, smaller ones enlarged): the background is the brightest
mode of the field's grey levels and is divided out (optical density); the density
used is each field's own stain colour (the channels weighted by how much its cells absorb them,
measured on pixels above Otsu's threshold, so a sparse field's background does not set it), so
pink, grey-green, blue or grey smears are treated alike; stained cells are thresholded (a fraction
of Otsu, never under a least density: a fixed one, or on a field stained about that pale, its
background's noise) together with the thin rims of pale cells (a local threshold); pale centres
are filled, but not clear background enclosed by a ring of touching cells; a cell-sized outline
(a ring or a "C": a cell whose centre reads as background, clipped white or off the stain colour) is
filled to its convex hull; touching cells are split on the distance transform: one seed per
distance peak (plus Hough-circle centres inside clumps too dense for peaks), each pixel going to
the seed minimizing distance minus the seed's radius (capped at one cell
radius), which for overlapping discs is the watershed of the distance map; two cells that overlap so
much that their union has one distance peak can be cut apart (``split_circles``, off by default)
where the region holds two Hough circles at least half a radius apart and is longer along their line
than across it (each keeps its own disc). Debris, platelets and white cells are rejected by size and
by nuclei (pixels denser than the field's cells, of another colour than theirs); regions still
holding several cells' area are split by area (k-means on pixel coordinates). Each kept cell is
cropped the way the NIH crops were made: a tight box around the cell (its convex hull, grown a
little to take back the pale edge the threshold cuts off; with ``own_pixels``, off by default,
neither reaching into the pixels of the cells around it), everything outside black. Sizes are in
units of the typical cell radius, estimated per field (the distance map's local maxima, one per cell
even in clumps, blended with Hough circle radii; on a crowded field, where the maxima sit in solid
clumps far deeper than the circles and the circles agree on one size, or where the maxima are
under half the circles' because the cells read as rings, the circles alone), so the
same settings work at other magnifications.

Measured in benchmarks/RESULTS.md at IoU 0.5: on the 364 BCCD fields recall about 0.83, short of
the 0.9 target; on the 172 IML fields recall 0.93, precision 0.82 (targets 0.95 / 0.85). The rest
is mostly dense, heavily overlapping fields (over- or under-split clumps), very pale cells, and
labels that skip or misplace cells.

Parasitemia is the fraction of found cells called parasitized at the manifest's cutoff (the same
call the patient rule was set with), with a Wilson 95% interval. The uncertain band only flags
single cells for a human look; it does not change the count.

Light: numpy at import, OpenCV inside functions, the classifier is injected (anything with
``.manifest`` and ``.predict``), so tests run with a fake one.
"""

from edgekit.device.field.classify import analyze_field, classify_crops, iter_field_crops
from edgekit.device.field.count import MAX_RADIUS_FRACTION, count_cells
from edgekit.device.field.crop import crop_cell
from edgekit.device.field.overlay import COLORS, draw_overlay
from edgekit.device.field.quality import MIN_SHARPNESS, MIN_SIDE, field_quality
from edgekit.device.field.segment import find_cells, segment_cells
from edgekit.device.field.types import CellBox, ClassifierLike, FieldParams, FieldReport, cell_id

__all__ = [
    "COLORS", "MAX_RADIUS_FRACTION", "MIN_SHARPNESS", "MIN_SIDE", "CellBox", "ClassifierLike",
    "FieldParams", "FieldReport", "analyze_field", "cell_id", "classify_crops", "count_cells",
    "crop_cell", "draw_overlay", "field_quality", "find_cells", "iter_field_crops", "segment_cells",
]
