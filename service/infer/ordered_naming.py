"""The model's own naming of the column, put in anatomical order, and whether it can be trusted.

Per label the largest 3D component (and parts nearly as big) is a candidate structure; ordered caudal
to cranial along the spine axis, the candidates must follow the ontology's stacking order (sacrum, L5/S1
disc, L5, L4/L5 disc, ...), kinds alternating and no label used twice. The assignment that keeps the most
of the model's labels under those rules is found by dynamic programming (``assign``).

On real scans a model trained on real bodies names its column far better than counting from patchily
found discs does (level_count.py), so post-processing delivers the model's own names where they are
consistent (``raw_naming_agreement``) and fit the column's geometry (``naming_misfit``): no whole level
skipped, and at the sacrum no level missing and no top of the sacrum taken for L5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from scipy import ndimage

from service.infer.level_count import is_top_of_sacrum
from service.ontology import Ontology, Structure

FRAGMENT_FRACTION = 0.3
"""A second component of one label is a candidate structure when at least this share of the largest."""
MIN_STRUCTURE_MM3 = 50.0
"""Below this a component is noise, whatever its label."""
KEEP_SCORE = 1.0
AGREE_SCORE = 2.0
GAP_PENALTY = 0.75
"""Per ontology position skipped between two kept neighbours (a structure the model did not find)."""
MAX_SKIPPED_POSITIONS = 1
"""Consecutive delivered structures may skip one ontology position (a disc or a vertebra the model did not
find); skipping a vertebra and a disc means a whole level is missing, and the naming is counted instead."""
SACRUM_GAP_SHARE = 0.5
"""A disc named L5/S1 whose centre lies farther above the sacrum than this share of the disc spacing has a
level missing under it."""

ChangeKind = Literal["fragment_removed", "relabelled", "dropped"]


class Grid(Protocol):
    """Geometry of the label map's grid (a SeriesVolume satisfies it)."""

    pixel_spacing: tuple[float, float]
    slice_spacing: float
    row_dir: np.ndarray
    col_dir: np.ndarray
    normal: np.ndarray

    def index_to_patient(self, ijk: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    raw_label: int
    label: int | None
    voxels: int
    reason: str


@dataclass
class Component:
    raw_label: int
    region: tuple[slice, slice, slice]
    """Bounding box in the label map."""
    mask: np.ndarray
    """The component inside its bounding box."""
    voxels: int
    centroid_mm: np.ndarray
    """Index coordinates until spine_axis turns them into patient millimetres."""


def raw_naming_agreement(ordered: list[tuple[Component, Structure]], ordered_changes: list[Change]) -> float:
    """Share of the main components' voxels that keep the model's own label when its labels are only put in
    anatomical order (ordered_components): 1.0 when the model named a consistent column itself.

    Counting from the discs and the sacrum corrects a model that outlines well and names badly, as on
    generated studies; on real scans, where discs are found patchily, it can rename or drop a column the
    model named consistently. A naming the model got consistent needs no counting."""
    kept = sum(comp.voxels for comp, structure in ordered if structure.label == comp.raw_label)
    changed = sum(c.voxels for c in ordered_changes if c.kind in ("relabelled", "dropped"))
    total = kept + changed
    return kept / total if total else 0.0


def ordered_components(
    raw_labels: np.ndarray, ontology: Ontology, grid: Grid, voxel_mm3: float, changes: list[Change]
) -> tuple[list[tuple[Component, Structure]], np.ndarray]:
    """The model's labels, per label the main component, put in anatomical order by assign."""
    components = components_of(raw_labels, voxel_mm3, changes)
    axis = spine_axis(components, grid)
    components.sort(key=lambda c: float(c.centroid_mm @ axis))
    placed = []
    for comp, structure in zip(components, assign(components, ontology), strict=True):
        if structure is None:
            changes.append(Change("dropped", comp.raw_label, None, comp.voxels, "out of anatomical order"))
            continue
        if structure.label != comp.raw_label:
            changes.append(
                Change("relabelled", comp.raw_label, structure.label, comp.voxels, "out of anatomical order")
            )
        placed.append((comp, structure))
    return placed, axis


def components_of(raw_labels: np.ndarray, voxel_mm3: float, changes: list[Change]) -> list[Component]:
    out: list[Component] = []
    full = np.ones((3, 3, 3), dtype=bool)
    boxes = ndimage.find_objects(raw_labels.astype(np.int32, copy=False))
    for value, box in enumerate(boxes, start=1):
        if box is None:
            continue
        cc, _ = ndimage.label(raw_labels[box] == value, structure=full)
        sizes = np.bincount(cc.ravel())[1:]
        largest = int(sizes.max())
        for rank, index in enumerate(np.argsort(-sizes, kind="stable")):
            size = int(sizes[index])
            big_enough = size * voxel_mm3 >= MIN_STRUCTURE_MM3
            if big_enough and (rank == 0 or size >= FRAGMENT_FRACTION * largest):
                local = cc == index + 1
                sub = ndimage.find_objects(local.astype(np.int8))[0]
                offset = np.array([box[d].start + sub[d].start for d in range(3)], dtype=np.float64)
                region = tuple(
                    slice(box[d].start + sub[d].start, box[d].start + sub[d].stop) for d in range(3)
                )
                mask = local[sub]
                centroid = np.asarray(ndimage.center_of_mass(mask), dtype=np.float64) + offset
                out.append(Component(value, region, mask, size, centroid))
            else:
                reason = "smaller than a structure" if not big_enough else "fragment of a larger component"
                changes.append(Change("fragment_removed", value, None, size, reason))
    return out


def spine_axis(components: list[Component], grid: Grid) -> np.ndarray:
    """Caudal-to-cranial unit vector in patient space: main direction of the centroids, pointing to +z."""
    for c in components:
        c.centroid_mm = grid.index_to_patient(c.centroid_mm)
    if len(components) < 3:
        axis = np.array([0.0, 0.0, 1.0])
    else:
        points = np.stack([c.centroid_mm for c in components])
        _, _, vt = np.linalg.svd(points - points.mean(axis=0), full_matrices=False)
        axis = vt[0]
    if axis[2] < 0:  # LPS: +z is superior (cranial)
        axis = -axis
    return axis / np.linalg.norm(axis)


def assign(components: list[Component], ontology: Ontology) -> list[Structure | None]:
    """Strictly increasing ontology positions with matching kinds, keeping most of the model's labels."""
    order = ontology.caudal_to_cranial()
    position = {s.label: i for i, s in enumerate(order)}
    n_pos = len(order)
    neg = -1e18
    # best[i][p + 1]: best score after the first i components with the last kept one at position p (-1: none)
    best = np.full((len(components) + 1, n_pos + 1), neg)
    best[0][0] = 0.0
    back: dict[tuple[int, int], tuple[int, int | None]] = {}
    for i, comp in enumerate(components):
        kind = ontology.by_label(comp.raw_label).kind
        wanted = position[comp.raw_label]
        for last in range(-1, n_pos):
            score = best[i][last + 1]
            if score == neg:
                continue
            if score > best[i + 1][last + 1]:  # drop this component
                best[i + 1][last + 1] = score
                back[(i + 1, last + 1)] = (last + 1, None)
            for p in range(last + 1, n_pos):
                if order[p].kind != kind:
                    continue
                gap = (p - last - 1) if last >= 0 else 0
                new = score + KEEP_SCORE + (AGREE_SCORE if p == wanted else 0.0) - GAP_PENALTY * gap
                if new > best[i + 1][p + 1] + 1e-9:
                    best[i + 1][p + 1] = new
                    back[(i + 1, p + 1)] = (last + 1, p)
    state = int(np.argmax(best[len(components)]))
    assigned: list[Structure | None] = [None] * len(components)
    for i in range(len(components), 0, -1):
        prev_state, p = back[(i, state)]
        assigned[i - 1] = order[p] if p is not None else None
        state = prev_state
    return assigned


def naming_misfit(ordered: list[tuple[Component, Structure]], axis: np.ndarray, shape: tuple[int, ...],
                  grid: Grid, ontology: Ontology) -> str | None:
    """Why the model's naming of the ordered column does not fit its geometry, or None when it does.

    A consistent naming can still be shifted as a whole: a column named one level high skips the L5/S1
    disc and L5 above the sacrum, one that missed the lowest level names the next disc L5/S1 far above
    the sacrum, and one that took the top of the sacrum for L5 has an "L5" touching the sacrum. Counting
    from the sacrum corrects each of these."""
    position = {s.label: i for i, s in enumerate(ontology.caudal_to_cranial())}
    for (_, low), (_, high) in zip(ordered, ordered[1:], strict=False):
        if position[high.label] - position[low.label] - 1 > MAX_SKIPPED_POSITIONS:
            return f"a whole level is missing between the {low.name} and the {high.name}"
    if len(ordered) < 2 or ordered[0][1].kind != "sacrum":
        return None
    sacrum, (above, structure) = ordered[0][0], ordered[1]
    if structure.kind == "vertebra":
        vertebrae = [comp for comp, s in ordered[2:] if s.kind == "vertebra"]
        upper = _full(vertebrae[0], shape) if vertebrae else np.zeros(shape, dtype=bool)
        top = is_top_of_sacrum(_full(above, shape), upper, grid, axis)
        return "the top of the sacrum taken for L5" if top else None
    discs = [(comp, s) for comp, s in ordered if s.kind == "disc"]
    if len(discs) < 2:
        return None
    heights = [float(comp.centroid_mm @ axis) for comp, _ in discs]
    levels = (position[discs[-1][1].label] - position[discs[0][1].label]) / 2
    spacing = (heights[-1] - heights[0]) / levels
    sacrum_top = float((grid.index_to_patient(np.argwhere(_full(sacrum, shape))) @ axis).max())
    if heights[0] - sacrum_top > SACRUM_GAP_SHARE * spacing:
        return f"a level is missing between the sacrum and the {discs[0][1].name}"
    return None


def naming_overlap(named: list[tuple[np.ndarray, int]], ordered: list[tuple[Component, Structure]],
                   shape: tuple[int, ...]) -> float:
    """Share of the voxels that both namings label with the same label (``named``: full-size masks)."""
    ours = np.zeros(shape, dtype=np.uint8)
    for comp, structure in ordered:
        ours[comp.region][comp.mask] = structure.label
    theirs = np.zeros(shape, dtype=np.uint8)
    for mask, label in named:
        theirs[mask] = label
    both = (ours > 0) & (theirs > 0)
    return float((ours[both] == theirs[both]).mean()) if both.any() else 0.0


def _full(comp: Component, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[comp.region] = comp.mask
    return mask
