"""From the model's raw label map to levels a radiologist can read.

Three steps, each recorded so the report can say what was changed:

1. Levels by counting (level_count.py): structures are rebuilt from the kind of each voxel (sacrum,
   vertebra, disc) and named by their rank in the column, counted up from the sacrum when one lies under
   the lowest disc, else with the offset that agrees best with the model's labels. Per structure the
   largest 3D component is kept; other components are fragments, dropped unless they are big enough to
   be a part of their own.
2. When fewer than two discs were found there is nothing to count between; then per label the largest
   component is the structure, and structures ordered caudal to cranial along the spine axis must follow
   the ontology's stacking order (sacrum, L5/S1 disc, L5, L4/L5 disc, ...), kinds alternating and no
   label used twice. The assignment that keeps the most of the model's labels under those rules is found
   by dynamic programming; the others are relabelled or dropped.
3. With a model that has an outline refiner (outline_crops.py), each disc and vertebra is redrawn close
   up, slice by slice, keeping its name; the measurements and findings below read the redrawn outlines.
4. Per-level measurements (volume, disc height; for discs how far they reach behind the vertebral
   bodies, disc_morphometry.py) and findings (level_findings.py): the model's score for the structure as
   delivered (the level classifier's, or its finding maps pooled inside it), against the model card's threshold, or combined with the disc's measurements
   where the card has a combiner for that finding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from scipy import ndimage

from service.infer.disc_morphometry import disc_height_mm, measure_discs
from service.infer.level_count import Counting, count_levels
from service.infer.level_findings import (
    FindingCombiner,
    FindingResult,
    LevelScorer,
    level_findings,
    pooled_probs,
)
from service.ontology import Ontology, Structure

FRAGMENT_FRACTION = 0.3
"""A second component of one label is a candidate structure when at least this share of the largest."""
MIN_STRUCTURE_MM3 = 50.0
"""Below this a component is noise, whatever its label."""
KEEP_SCORE = 1.0
AGREE_SCORE = 2.0
GAP_PENALTY = 0.75
"""Per ontology position skipped between two kept neighbours (a structure the model did not find)."""
RAW_NAMING_TRUSTED = 1.01
"""raw_naming_agreement at or above which the model's own naming is delivered without counting levels
(above 1: always count)."""

ChangeKind = Literal["fragment_removed", "relabelled", "dropped"]


class OutlineRedrawer(Protocol):
    """Redraws the named structures of a label map (``outline_crops.OutlineRefiner``)."""

    def refine(self, labels: np.ndarray) -> np.ndarray: ...


class Grid(Protocol):
    """Geometry of the label map's grid (a SeriesVolume satisfies it)."""

    pixel_spacing: tuple[float, float]
    slice_spacing: float
    row_dir: np.ndarray
    col_dir: np.ndarray
    normal: np.ndarray

    def index_to_patient(self, ijk: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class LevelResult:
    """One structure as reported: its final label, where it came from, its size and findings."""

    label: int
    raw_label: int
    name: str
    kind: str
    level: str
    code_value: str
    code_meaning: str
    voxels: int
    volume_mm3: float
    centroid_mm: tuple[float, float, float]
    disc_height_mm: float | None
    findings: tuple[FindingResult, ...] = ()
    posterior_extent_mm: float | None = None
    """Discs: how far the disc reaches behind the adjacent vertebral bodies (disc_morphometry.py)."""
    migration_mm: float | None = None
    """Discs: how far disc material behind the bodies reaches up or down from the disc's plane."""
    endplate_intrusion_mm: float | None = None
    """Discs: how far the disc reaches into a body beyond its usual surface (a Schmorl's node)."""

    @property
    def positive_findings(self) -> list[FindingResult]:
        return [f for f in self.findings if f.present]


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    raw_label: int
    label: int | None
    voxels: int
    reason: str


@dataclass
class SpineResult:
    labels: np.ndarray
    """uint8 label map after clean-up and relabelling, on the model's (reference) grid."""
    levels: list[LevelResult]
    """Present structures, caudal to cranial."""
    changes: list[Change] = field(default_factory=list)
    spine_axis: tuple[float, float, float] = (0.0, 0.0, 1.0)
    outlines_refined: bool = False
    """The discs' and vertebrae's outlines were redrawn by the model's outline refiner."""

    def level(self, label: int) -> LevelResult:
        for lv in self.levels:
            if lv.label == label:
                return lv
        raise KeyError(label)

    def to_dict(self) -> dict[str, Any]:
        return {
            "levels": [asdict(lv) for lv in self.levels],
            "changes": [asdict(c) for c in self.changes],
            "spine_axis": list(self.spine_axis),
            "outlines_refined": self.outlines_refined,
        }


@dataclass
class _Component:
    raw_label: int
    region: tuple[slice, slice, slice]
    """Bounding box in the label map."""
    mask: np.ndarray
    """The component inside its bounding box."""
    voxels: int
    centroid_mm: np.ndarray
    """Index coordinates until _spine_axis turns them into patient millimetres."""


def postprocess(
    raw_labels: np.ndarray,
    finding_probs: dict[int, dict[str, float]],
    ontology: Ontology,
    thresholds: dict[str, float],
    grid: Grid,
    finding_maps: LevelScorer | None = None,
    finding_combiners: dict[str, FindingCombiner] | None = None,
    exclusive_findings: tuple[tuple[str, ...], ...] = (),
    outline_refiner: OutlineRedrawer | None = None,
) -> SpineResult:
    """Clean, order and measure the model's label map; finding_probs are keyed by raw label."""
    voxel_mm3 = float(grid.pixel_spacing[0] * grid.pixel_spacing[1] * grid.slice_spacing)
    changes: list[Change] = []
    raw_labels = _drop_unknown_labels(np.asarray(raw_labels), ontology, changes)
    min_voxels = int(np.ceil(MIN_STRUCTURE_MM3 / voxel_mm3))
    ordered_changes: list[Change] = []
    ordered, ordered_axis = _ordered_components(raw_labels, ontology, grid, voxel_mm3, ordered_changes)
    counting = None
    if raw_naming_agreement(ordered, ordered_changes) < RAW_NAMING_TRUSTED:
        counting = count_levels(raw_labels, ontology, grid, min_voxels)
    if counting is not None:
        placed, axis = _counted_components(raw_labels, counting, grid, min_voxels, changes)
    else:
        placed, axis = ordered, ordered_axis
        changes.extend(ordered_changes)
    labels = np.zeros(raw_labels.shape, dtype=np.uint8)
    for comp, structure in placed:
        labels[comp.region][comp.mask] = structure.label
    if outline_refiner is not None and placed:
        labels = outline_refiner.refine(labels)
        placed = _redrawn(placed, labels, grid)
    pooled = pooled_probs(finding_maps, labels, ontology)
    measured = measure_discs(labels, ontology, grid)

    levels = []
    for i, (comp, structure) in enumerate(placed):
        height = None
        if structure.kind == "disc":
            below = placed[i - 1][0].centroid_mm if i > 0 else None
            above = placed[i + 1][0].centroid_mm if i + 1 < len(placed) else None
            height = disc_height_mm(comp.mask, grid, below, above, axis)
        morphometry = measured.get(structure.label)
        measurements = morphometry.features() if morphometry is not None else None
        levels.append(
            LevelResult(
                label=structure.label,
                raw_label=comp.raw_label,
                name=structure.name,
                kind=structure.kind,
                level=structure.level,
                code_value=structure.code_value,
                code_meaning=structure.code_meaning,
                voxels=comp.voxels,
                volume_mm3=round(comp.voxels * voxel_mm3, 1),
                centroid_mm=tuple(round(float(v), 2) for v in comp.centroid_mm),  # type: ignore[arg-type]
                disc_height_mm=None if height is None else round(height, 2),
                findings=level_findings(structure, pooled.get(structure.label, finding_probs.get(comp.raw_label, {})),
                                        ontology, thresholds, finding_combiners, measurements, exclusive_findings),
                **(measurements or {}),
            )
        )
    return SpineResult(labels=labels, levels=levels, changes=changes, spine_axis=tuple(float(v) for v in axis),
                       outlines_refined=outline_refiner is not None)


def _redrawn(placed: list[tuple[_Component, Structure]], labels: np.ndarray, grid: Grid
             ) -> list[tuple[_Component, Structure]]:
    """The placed structures as the refined ``labels`` draw them (one lost entirely is left out)."""
    boxes = ndimage.find_objects(labels)
    out = []
    for comp, structure in placed:
        box = boxes[structure.label - 1] if structure.label <= len(boxes) else None
        if box is None:
            continue
        mask = labels[box] == structure.label
        offset = np.array([r.start for r in box], dtype=np.float64)
        centroid = grid.index_to_patient(np.asarray(ndimage.center_of_mass(mask)) + offset)
        out.append((_Component(comp.raw_label, box, mask, int(mask.sum()), centroid), structure))
    return out


def _drop_unknown_labels(raw_labels: np.ndarray, ontology: Ontology, changes: list[Change]) -> np.ndarray:
    known = {s.label for s in ontology.structures}
    unknown = [int(v) for v in np.unique(raw_labels) if v and int(v) not in known]
    if not unknown:
        return raw_labels
    out = raw_labels.copy()
    for value in unknown:
        where = raw_labels == value
        changes.append(Change("dropped", value, None, int(where.sum()), "label not in the ontology"))
        out[where] = 0
    return out


def _counted_components(
    raw_labels: np.ndarray, counting: Counting, grid: Grid, min_voxels: int, changes: list[Change]
) -> tuple[list[tuple[_Component, Structure]], np.ndarray]:
    """Each counted structure's main component (and parts nearly as big); the rest are fragments."""
    reason = "counted from the sacrum" if counting.anchored_on_sacrum else "counted along the column"
    full = np.ones((3, 3, 3), dtype=bool)
    placed = []
    for named in counting.structures:
        box = ndimage.find_objects(named.mask.astype(np.int8))[0]
        cc, _ = ndimage.label(named.mask[box], structure=full)
        sizes = np.bincount(cc.ravel())[1:]
        largest = int(sizes.max())
        keep = np.zeros(cc.shape, dtype=bool)
        for index, size in enumerate(sizes):
            piece = cc == index + 1
            if size >= min_voxels and (size == largest or size >= FRAGMENT_FRACTION * largest):
                keep |= piece
                continue
            why = "smaller than a structure" if size < min_voxels else "fragment of a larger component"
            changes.append(Change("fragment_removed", _majority(raw_labels[box][piece]), None, int(size), why))
        if not keep.any():
            continue
        values, counts = np.unique(raw_labels[box][keep], return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            if value != named.structure.label:
                changes.append(Change("relabelled", value, named.structure.label, count, reason))
        sub = ndimage.find_objects(keep.astype(np.int8))[0]
        region = tuple(slice(box[d].start + sub[d].start, box[d].start + sub[d].stop) for d in range(3))
        mask = keep[sub]
        offset = np.array([r.start for r in region], dtype=np.float64)
        centroid = grid.index_to_patient(np.asarray(ndimage.center_of_mass(mask)) + offset)
        comp = _Component(_majority(raw_labels[region][mask]), region, mask, int(mask.sum()), centroid)
        placed.append((comp, named.structure))
    for mask, why in counting.dropped:
        values, counts = np.unique(raw_labels[mask], return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            changes.append(Change("dropped", value, None, count, why))
    return placed, counting.axis


def raw_naming_agreement(ordered: list[tuple[_Component, Structure]], ordered_changes: list[Change]) -> float:
    """Share of the main components' voxels that keep the model's own label when its labels are only put in
    anatomical order (_ordered_components): 1.0 when the model named a consistent column itself.

    Counting from the discs and the sacrum corrects a model that outlines well and names badly, as on
    generated studies; on real scans, where discs are found patchily, it can rename or drop a column the
    model named consistently. A naming the model got consistent needs no counting."""
    kept = sum(comp.voxels for comp, structure in ordered if structure.label == comp.raw_label)
    changed = sum(c.voxels for c in ordered_changes if c.kind in ("relabelled", "dropped"))
    total = kept + changed
    return kept / total if total else 0.0


def _majority(values: np.ndarray) -> int:
    found, counts = np.unique(values, return_counts=True)
    return int(found[np.argmax(counts)])


def _ordered_components(
    raw_labels: np.ndarray, ontology: Ontology, grid: Grid, voxel_mm3: float, changes: list[Change]
) -> tuple[list[tuple[_Component, Structure]], np.ndarray]:
    """The model's labels, per label the main component, put in anatomical order by _assign."""
    components = _components(raw_labels, voxel_mm3, changes)
    axis = _spine_axis(components, grid)
    components.sort(key=lambda c: float(c.centroid_mm @ axis))
    placed = []
    for comp, structure in zip(components, _assign(components, ontology), strict=True):
        if structure is None:
            changes.append(Change("dropped", comp.raw_label, None, comp.voxels, "out of anatomical order"))
            continue
        if structure.label != comp.raw_label:
            changes.append(
                Change("relabelled", comp.raw_label, structure.label, comp.voxels, "out of anatomical order")
            )
        placed.append((comp, structure))
    return placed, axis


def _components(raw_labels: np.ndarray, voxel_mm3: float, changes: list[Change]) -> list[_Component]:
    out: list[_Component] = []
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
                out.append(_Component(value, region, mask, size, centroid))
            else:
                reason = "smaller than a structure" if not big_enough else "fragment of a larger component"
                changes.append(Change("fragment_removed", value, None, size, reason))
    return out


def _spine_axis(components: list[_Component], grid: Grid) -> np.ndarray:
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


def _assign(components: list[_Component], ontology: Ontology) -> list[Structure | None]:
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
