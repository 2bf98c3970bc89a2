"""Hand-made spine label maps whose structures and order are known by construction."""

from __future__ import annotations

import numpy as np

from service.ontology import DEFAULT_ONTOLOGY as ONT

VERTEBRA_ROWS, DISC_ROWS = 14, 5
CANONICAL = [s.label for s in ONT.caudal_to_cranial()][:11]
"""Sacrum, L5/S1 disc, L5 ... L1/L2 disc, L1 vertebra: the lumbar spine caudal to cranial."""


def spine(
    labels_caudal_to_cranial: list[int],
    shape: tuple[int, int, int] = (5, 200, 48),
    head_at_top: bool = True,
    slices: slice = slice(1, 4),
    cols: slice = slice(10, 40),
) -> np.ndarray:
    """Stacked boxes, one per label, caudal first (at the bottom rows when head_at_top); discs thinner."""
    out = np.zeros(shape, np.uint8)
    rows_total = shape[1]
    row = rows_total - 2
    for label in labels_caudal_to_cranial:
        height = DISC_ROWS if ONT.by_label(label).kind == "disc" else VERTEBRA_ROWS
        top = row - height
        rows = slice(top, row) if head_at_top else slice(rows_total - row, rows_total - top)
        out[slices, rows, cols] = label
        row = top
    return out
