"""Which part of each sagittal slice the model sees, and at what size.

The spine runs the whole height of a lumbar sagittal field of view but fills only about two fifths of
its width (front to back; median 0.39 over the generated test studies). A square input over the whole
slice spends most of its pixels on abdomen and back muscles. A model with a *spine band* view therefore
looks twice:

1. the survey: the whole slice, zero-padded to a square and resized to ``survey_size``, as before;
2. the band: a box of the band's aspect ratio around the front-to-back extent of what the survey
   labelled, with a margin, resized to ``band_size`` (taller than wide), where the same network sees
   the spine at a finer scale for about the same number of pixels.

Training shows the network both views (the band box comes from the true labels there), so one set of
weights serves both passes. Models without a band view (``band_size`` None) keep the single square pass.
A :class:`SliceBox` may reach beyond the slice; what lies outside is zeros, as the square padding is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

SURVEY_SLICE_STEP = 2
"""The survey reads every second slice: the band is as wide as the spine on the middle slices, and a
survey of every slice would cost as much as the band pass itself."""


def survey_slices(volume: np.ndarray | None) -> np.ndarray | None:
    """The slices the survey pass of a band view reads."""
    return None if volume is None else volume[::SURVEY_SLICE_STEP]


COLUMN_PIECE_FRACTION = 0.25
"""A labelled piece belongs to the spinal column when it holds this share of the largest piece's voxels."""


@dataclass(frozen=True)
class SliceBox:
    """A rectangle on the acquisition grid, in pixels: rows row0.., cols col0.. (may extend past it)."""

    row0: int
    col0: int
    rows: int
    cols: int

    @classmethod
    def square(cls, rows: int, cols: int) -> SliceBox:
        """The square over the whole slice, padded at the bottom and right (the survey view)."""
        side = max(rows, cols)
        return cls(0, 0, side, side)

    def to_dict(self) -> dict[str, int]:
        return {"row0": self.row0, "col0": self.col0, "rows": self.rows, "cols": self.cols}


def crop_to_box(volume: np.ndarray, box: SliceBox) -> np.ndarray:
    """(n, rows, cols) -> (n, box.rows, box.cols): the box's pixels, zeros where it leaves the slice."""
    n, rows, cols = volume.shape
    if box == SliceBox(0, 0, rows, cols):
        return volume
    out = np.zeros((n, box.rows, box.cols), dtype=volume.dtype)
    in_slice, in_box = _overlap(box, rows, cols)
    out[(slice(None), *in_box)] = volume[(slice(None), *in_slice)]
    return out


def paste_from_box(target: np.ndarray, boxed: np.ndarray, box: SliceBox) -> None:
    """Write ``boxed`` (n, box.rows, box.cols) into ``target`` (n, rows, cols) where the box overlaps it."""
    in_slice, in_box = _overlap(box, target.shape[1], target.shape[2])
    target[(slice(None), *in_slice)] = boxed[(slice(None), *in_box)]


def _overlap(box: SliceBox, rows: int, cols: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """(rows, cols) slices of the part of the box that lies on the slice: in slice, then in box coordinates."""
    r_lo, r_hi = max(box.row0, 0), max(min(box.row0 + box.rows, rows), max(box.row0, 0))
    c_lo, c_hi = max(box.col0, 0), max(min(box.col0 + box.cols, cols), max(box.col0, 0))
    return ((slice(r_lo, r_hi), slice(c_lo, c_hi)),
            (slice(r_lo - box.row0, r_hi - box.row0), slice(c_lo - box.col0, c_hi - box.col0)))


def spine_band_box(labels: np.ndarray, band_size: tuple[int, int], margin: float, trim: float = 0.001
                   ) -> SliceBox:
    """The box of ``band_size``'s aspect ratio around the front-to-back extent of the labelled voxels.

    The extent is that of the :func:`spine_column`, between the ``trim`` and ``1 - trim`` quantiles of
    its voxels' columns, so that neither stray survey labels nor a few stray voxels widen it; ``margin``
    (a fraction of the slice height) is added on both sides. The box keeps the slice's full height unless the band is too wide for the aspect ratio, in
    which case it grows taller (centred, zero-padded). It is moved inside the slice where the slice is
    wide enough, so that it holds as much image as it can. No labels: the box holds the whole slice.
    """
    _, rows, cols = labels.shape
    profile = spine_column(labels > 0).sum(axis=(0, 1)).astype(np.float64)
    total = profile.sum()
    if total == 0:  # nothing to centre on: the whole slice, undistorted
        first, last, margin = 0, cols - 1, 0.0
    else:
        cumulative = np.cumsum(profile)
        first = int(np.searchsorted(cumulative, trim * total, side="right"))
        last = int(np.searchsorted(cumulative, (1.0 - trim) * total, side="left"))
    needed = (last + 1 - first) + 2 * margin * rows
    height, width = band_size
    box_rows = max(rows, math.ceil(needed * height / width))
    box_cols = max(1, round(box_rows * width / height))
    col0 = round((first + last + 1) / 2 - box_cols / 2)
    col0 = int(np.clip(col0, min(0, cols - box_cols), max(0, cols - box_cols)))
    return SliceBox((rows - box_rows) // 2, col0, box_rows, box_cols)


def spine_column(mask: np.ndarray) -> np.ndarray:
    """The connected pieces of ``mask`` holding at least a quarter of the voxels of the largest one.

    Vertebrae and discs touch, so the column is one large piece (two if the model broke it); what a
    survey labels in front of the spine (bowel, presacral tissue) is separate and smaller. Measured on
    12 validation studies at step 1500, the quantiles of all labelled voxels put the front of the band
    up to 100 pixels too far forward; those of the column, within about 25.
    """
    pieces, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(pieces.ravel())[1:]
    return np.isin(pieces, 1 + np.flatnonzero(sizes >= COLUMN_PIECE_FRACTION * sizes.max()))


@dataclass(frozen=True)
class InputView:
    """How slices become model inputs; stored in the model card's ``input`` and in checkpoints."""

    survey_size: tuple[int, int]
    band_size: tuple[int, int] | None = None
    band_margin: float = 0.06

    @property
    def has_band(self) -> bool:
        return self.band_size is not None

    def band_box(self, survey_labels: np.ndarray) -> SliceBox:
        if self.band_size is None:
            raise ValueError("this view has no spine band")
        return spine_band_box(survey_labels, self.band_size, self.band_margin)

    def to_card(self) -> dict[str, Any]:
        """The model card's ``input`` keys: ``size`` is the survey's, as in cards from before the band."""
        card: dict[str, Any] = {"size": list(self.survey_size)}
        if self.band_size is not None:
            card["spine_band"] = {"size": list(self.band_size), "margin": self.band_margin}
        return card

    @classmethod
    def from_card(cls, card_input: dict[str, Any]) -> InputView:
        """Raises KeyError or ValueError on a malformed ``input`` (the loader reports the card as such)."""
        band = card_input.get("spine_band")
        if band is None:
            return cls(_input_size(card_input["size"]))
        return cls(_input_size(card_input["size"]), _input_size(band["size"]), float(band["margin"]))


def _input_size(values: Any) -> tuple[int, int]:
    size = tuple(int(v) for v in values)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"an input size is (height, width) in pixels, got {list(values)}")
    return size  # type: ignore[return-value]
