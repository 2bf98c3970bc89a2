"""Fine crops around each delivered disc and vertebra, for the level classifier.

The segmentation model sees a whole sagittal slice at about 2 mm a pixel, and its finding features come
from a decoder at a quarter of that. A protrusion reaches 3.5-6.5 mm behind the disc and a bulge
2.5-4.5 mm, so at that scale they are one or two pixels. The level classifier instead reads a square of
``CropSpec.size_mm`` around each structure at a fraction of a millimetre a pixel, on the few sagittal
slices nearest the structure's centre.

Crops are taken in patient directions, not pixel directions: columns run towards the patient's back
and rows towards the feet, whatever the acquisition's in-plane orientation, so the classifier always
sees the canal on the same side. Training calls :func:`crop_slices` with a small random rotation, scale
and shift (the difference between a true centre and a delivered one); serving calls it with none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from service.ontology import Ontology

POSTERIOR = np.array([0.0, 1.0, 0.0])
INFERIOR = np.array([0.0, 0.0, -1.0])
"""LPS patient directions of the crop's columns and rows."""


@dataclass(frozen=True)
class CropSpec:
    """What the level classifier reads: ``slices`` sagittal slices nearest the centre, each a square of
    ``size_mm`` sampled on ``pixels`` x ``pixels``."""

    size_mm: float = 64.0
    pixels: int = 80
    slices: int = 3

    @classmethod
    def from_card(cls, data: dict[str, Any]) -> CropSpec:
        spec = cls(float(data["size_mm"]), int(data["pixels"]), int(data["slices"]))
        if spec.size_mm <= 0 or not 8 <= spec.pixels <= 512 or not 1 <= spec.slices <= 15:
            raise ValueError(f"level classifier crop {data} is out of range")
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {"size_mm": self.size_mm, "pixels": self.pixels, "slices": self.slices}


def scored_labels(ontology: Ontology) -> list[int]:
    """The structures the classifier reads: discs and vertebrae (the sacrum has no findings)."""
    return [s.label for s in ontology.structures if s.kind in ("disc", "vertebra")]


def structure_centres(labels: np.ndarray, wanted: list[int]) -> dict[int, np.ndarray]:
    """label -> (slice, row, col) centre of mass of its voxels, for the wanted labels present."""
    in_volume = set(np.unique(labels).tolist())
    present = [label for label in wanted if label and label in in_volume]
    if not present:
        return {}
    centres = ndimage.center_of_mass(np.ones(labels.shape, np.float32), labels, present)
    return {label: np.asarray(c, dtype=np.float64) for label, c in zip(present, centres, strict=True)}


def in_plane_steps(grid: Any) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) index change for one millimetre towards the patient's back and towards the feet, within
    the slice plane of ``grid`` (a ``SeriesVolume``)."""
    ps_row, ps_col = float(grid.pixel_spacing[0]), float(grid.pixel_spacing[1])

    def index_step(direction: np.ndarray) -> np.ndarray:
        step = np.array([direction @ grid.col_dir / ps_row, direction @ grid.row_dir / ps_col])
        length_mm = np.hypot(step[0] * ps_row, step[1] * ps_col)
        return step / max(length_mm, 1e-6)

    return index_step(POSTERIOR), index_step(INFERIOR)


def crop_slices(channels: np.ndarray, grid: Any, centre: np.ndarray, spec: CropSpec, angle_deg: float = 0.0,
                scale: float = 1.0, shift_mm: tuple[float, float] = (0.0, 0.0), slice_shift: int = 0
                ) -> np.ndarray:
    """(spec.slices, 2, pixels, pixels) around ``centre`` (slice, row, col indices); zeros off the volume.

    ``grid`` is the reference series' geometry (``SeriesVolume``): its direction cosines and spacing place
    the crop's posterior and inferior axes on the slice. ``angle_deg``, ``scale``, ``shift_mm`` (posterior,
    inferior) and ``slice_shift`` move the crop for augmentation.
    """
    n = channels.shape[1]
    back, down = in_plane_steps(grid)
    a = np.deg2rad(angle_deg)
    across = np.cos(a) * back + np.sin(a) * down
    along = -np.sin(a) * back + np.cos(a) * down
    offsets = (np.arange(spec.pixels) - (spec.pixels - 1) / 2) * spec.size_mm * scale / spec.pixels
    rows_mm, cols_mm = np.meshgrid(offsets, offsets, indexing="ij")
    origin = centre[1:] + shift_mm[0] * back + shift_mm[1] * down
    row_idx = origin[0] + cols_mm * across[0] + rows_mm * along[0]
    col_idx = origin[1] + cols_mm * across[1] + rows_mm * along[1]
    first = int(round(centre[0])) + slice_shift - spec.slices // 2
    out = np.zeros((spec.slices, 2, spec.pixels, spec.pixels), np.float32)
    for k in range(spec.slices):
        s = first + k
        if 0 <= s < n:
            for c in range(2):
                out[k, c] = ndimage.map_coordinates(channels[c, s], [row_idx, col_idx], order=1, cval=0.0)
    return out


def level_crops(channels: np.ndarray, labels: np.ndarray, grid: Any, wanted: list[int], spec: CropSpec
                ) -> tuple[list[int], np.ndarray]:
    """The wanted labels present in ``labels`` and their crops, (L, spec.slices, 2, pixels, pixels)."""
    centres = structure_centres(labels, wanted)
    found = sorted(centres)
    crops = np.zeros((len(found), spec.slices, 2, spec.pixels, spec.pixels), np.float32)
    for i, label in enumerate(found):
        crops[i] = crop_slices(channels, grid, centres[label], spec)
    return found, crops


class CroppedLevels:
    """The level classifier bound to one study: finding logits for each delivered disc and vertebra.

    It answers ``pool(labels)`` like ``FindingMaps`` does, so post-processing scores the structures it
    delivers the same way whichever of the two a model has. ``classify`` runs the classifier (ONNX
    Runtime in the worker, torch in evaluation) on (N, slices, 2, pixels, pixels) crops and returns
    (N, findings) logits.
    """

    def __init__(self, channels: np.ndarray, grid: Any, spec: CropSpec, wanted: list[int],
                 classify: Callable[[np.ndarray], np.ndarray], batch: int = 8) -> None:
        self.channels = channels
        self.grid = grid
        self.spec = spec
        self.wanted = wanted
        self.classify = classify
        self.batch = max(1, batch)

    def pool(self, labels: np.ndarray) -> dict[int, np.ndarray]:
        found, crops = level_crops(self.channels, labels, self.grid, self.wanted, self.spec)
        logits = [self.classify(crops[i:i + self.batch]) for i in range(0, len(found), self.batch)]
        if not logits:
            return {}
        return dict(zip(found, np.concatenate(logits).astype(np.float64), strict=True))
