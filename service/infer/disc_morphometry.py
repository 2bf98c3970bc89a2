"""How far each disc reaches behind the vertebral bodies around it: the measurement a radiologist makes
to tell a bulge, protrusion or extrusion from a normal disc.

Disc material beyond the posterior margins of the adjacent vertebral bodies is what those findings are
(a bulge: a few mm over a broad front; a protrusion: a focal bump; an extrusion: material that migrates
up or down behind a body). A model that outlines discs and bodies well measures this better than it
learns the finding from pooled features, so the measurements are handed to the finding decision
(finding_combiner.py) next to the model's own score.

Per sagittal slice near the disc's centre, the posterior margin of the bodies is read next to their
endplates: the end of the first unbroken run of bone from the front along the disc's front-to-back
direction (behind it lies the spinal canal, then the arch, which carries the same label). The disc's
back is its deepest voxel on that slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from service.infer.disc_finding import depth_direction, disc_normal
from service.ontology import Ontology

ENDPLATE_BAND_MM = 12.0
"""Bone within this distance of the disc's plane, above or below it, sets the posterior margin."""
CENTRAL_MM = 15.0
"""Only slices this close to the disc's centre are measured (the canal lies behind the middle)."""
CANAL_GAP_MM = 2.0
"""A gap at least this wide along the front-to-back line ends the vertebral body (the spinal canal)."""
BEHIND_MM = 1.0
"""Disc voxels this far behind the margin count as displaced material for the migration."""
COLUMN_MM = 2.0
"""The disc's thickness profile is read in front-to-back steps of this size."""
MIN_SLICE_VOXELS = 10
"""A slice with fewer disc or bone voxels than this says nothing about the margin."""
FEATURES = ("posterior_extent_mm", "migration_mm", "endplate_intrusion_mm")
HEAD = np.array([0.0, 0.0, 1.0])
"""The patient's head direction (+z in LPS); disc_normal takes only its sign from it."""


@dataclass(frozen=True)
class DiscMorphometry:
    posterior_extent_mm: float
    """Greatest distance, over the central slices, from the bodies' posterior margin to the disc's back
    (negative when the disc stays in front of the margin)."""
    migration_mm: float
    """How far disc material behind the margin reaches up or down from the disc's plane (0 when none)."""
    endplate_intrusion_mm: float
    """How far the disc reaches into a body beyond its usual surface there, in front of the margin (a
    Schmorl's node): the greatest excess over the median of its upper or lower surface along the disc."""

    def features(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in FEATURES}


def measure_discs(labels: np.ndarray, ontology: Ontology, grid) -> dict[int, DiscMorphometry]:
    """Disc label -> its measurements, for every disc of ``labels`` with a vertebral body (or the sacrum)
    next to it. ``labels`` is a delivered label map: levels in order, one structure per label."""
    order = ontology.caudal_to_cranial()
    boxes = ndimage.find_objects(labels)  # one pass; each structure is then read inside its own box
    out = {}
    for i, structure in enumerate(order):
        if structure.kind != "disc":
            continue
        bones = [(order[j].label, side) for j, side in ((i - 1, -1.0), (i + 1, 1.0)) if 0 <= j < len(order)]
        measured = measure_disc(labels, structure.label, bones, grid, boxes)
        if measured is not None:
            out[structure.label] = measured
    return out


def measure_disc(labels: np.ndarray, disc_label: int, bones: list[tuple[int, float]], grid,
                 boxes: list | None = None) -> DiscMorphometry | None:
    """``bones``: (label, side) of the structures below (-1) and above (+1) the disc; ``boxes``: the
    label map's ndimage.find_objects, when the caller has it."""
    boxes = ndimage.find_objects(labels) if boxes is None else boxes
    index = _voxels(labels, disc_label, boxes)
    if len(index) < MIN_SLICE_VOXELS:
        return None
    points = grid.index_to_patient(index)
    centre = np.median(points, axis=0)  # migrated material would pull a mean up or down
    bone = [(_voxels(labels, label, boxes), side) for label, side in bones]
    bone = [(where, grid.index_to_patient(where), side) for where, side in bone if len(where)]
    if not bone:
        return None
    normal = _plane_normal(points, bone, grid)
    depth_dir = depth_direction(normal, grid)
    near = [side * ((where_mm - centre) @ normal) for _, where_mm, side in bone]
    near = [(h > 0) & (h <= ENDPLATE_BAND_MM) for h in near]
    bone_index = np.concatenate([where[keep] for (where, _, _), keep in zip(bone, near, strict=True)])
    bone_depth = np.concatenate([(mm[keep] - centre) @ depth_dir for (_, mm, _), keep in zip(bone, near, strict=True)])
    central = np.abs((points - centre) @ np.asarray(grid.normal, float)) <= CENTRAL_MM
    disc_depth, disc_height = (points - centre) @ depth_dir, (points - centre) @ normal
    extents, migrations, intrusions = [], [], []
    for s in np.unique(index[central, 0]):
        on_slice = central & (index[:, 0] == s)
        bone_on_slice = bone_depth[bone_index[:, 0] == s]
        if on_slice.sum() < MIN_SLICE_VOXELS or len(bone_on_slice) < MIN_SLICE_VOXELS:
            continue
        margin = _front_run_end(bone_on_slice)
        extents.append(float(disc_depth[on_slice].max()) - margin)
        behind = on_slice & (disc_depth > margin + BEHIND_MM)
        migrations.append(float(np.abs(disc_height[behind]).max()) if behind.any() else 0.0)
        intrusions.append(_intrusion(disc_depth[on_slice & ~behind], disc_height[on_slice & ~behind]))
    if not extents:
        return None
    return DiscMorphometry(round(max(extents), 2), round(max(migrations), 2), round(max(intrusions), 2))


def _intrusion(depth: np.ndarray, height: np.ndarray) -> float:
    """Greatest excess of the disc's upper or lower surface over that surface's median, along the disc."""
    steps = np.round(depth / COLUMN_MM)
    columns = np.unique(steps)
    if len(columns) < 3:
        return 0.0
    tops = np.array([height[steps == c].max() for c in columns])
    bottoms = np.array([height[steps == c].min() for c in columns])
    return max(float(tops.max() - np.median(tops)), float(np.median(bottoms) - bottoms.min()))


def _plane_normal(disc_points: np.ndarray, bone: list[tuple[np.ndarray, np.ndarray, float]], grid) -> np.ndarray:
    """The disc's normal: from the body below to the body above where both are there (displaced disc
    material would tilt a fit to the disc's own voxels), else the disc's thin direction."""
    if len(bone) == 2:
        (_, below, _), (_, above, _) = bone
        direction = above.mean(axis=0) - below.mean(axis=0)
        lateral = np.asarray(grid.normal, float)
        direction = direction - (direction @ lateral) * lateral  # within the sagittal plane
        if np.linalg.norm(direction) > 0:
            return direction / np.linalg.norm(direction)
    return disc_normal(disc_points, grid, HEAD)


def _voxels(labels: np.ndarray, label: int, boxes: list) -> np.ndarray:
    """Indices of the label's voxels, found inside its bounding box."""
    box = boxes[label - 1] if 0 < label <= len(boxes) else None
    if box is None:
        return np.zeros((0, labels.ndim), int)
    return np.argwhere(labels[box] == label) + np.array([s.start for s in box])


def _front_run_end(depths: np.ndarray) -> float:
    """Back end of the first unbroken run of values from the front (the smallest depth)."""
    ordered = np.sort(depths)
    gaps = np.flatnonzero(np.diff(ordered) >= CANAL_GAP_MM)
    return float(ordered[gaps[0]]) if gaps.size else float(ordered[-1])


def local_axis(below: np.ndarray | None, above: np.ndarray | None, axis: np.ndarray) -> np.ndarray:
    """Through the neighbouring vertebrae when both are known (lordosis tilts discs), else the spine axis."""
    if below is not None and above is not None and np.linalg.norm(above - below) > 1e-6:
        direction = above - below
        return direction / np.linalg.norm(direction)
    return axis


def disc_height_mm(mask: np.ndarray, grid: Any, below: np.ndarray | None, above: np.ndarray | None,
                   axis: np.ndarray) -> float | None:
    """Mean height on the sagittal slice with most disc: its area over its depth across the local axis
    (``below`` and ``above`` are the neighbouring vertebrae's centroids in patient mm, or None)."""
    axis = local_axis(below, above, axis)
    per_slice = mask.reshape(mask.shape[0], -1).sum(axis=1)
    k = int(np.argmax(per_slice))
    rows, cols = np.nonzero(mask[k])
    if rows.size == 0:
        return None
    in_plane = axis - float(axis @ grid.normal) * grid.normal
    if np.linalg.norm(in_plane) < 1e-6:
        return None
    in_plane /= np.linalg.norm(in_plane)
    across = np.cross(grid.normal, in_plane)
    # Pixel centres in slice-plane millimetres, then their coordinate across the spine axis.
    row_mm, col_mm = grid.pixel_spacing
    points = np.outer(rows * row_mm, grid.col_dir) + np.outer(cols * col_mm, grid.row_dir)
    t = points @ across
    pixel_extent = abs(row_mm * float(grid.col_dir @ across)) + abs(col_mm * float(grid.row_dir @ across))
    depth = float(t.max() - t.min()) + pixel_extent
    area = rows.size * row_mm * col_mm
    return area / depth if depth > 0 else None
