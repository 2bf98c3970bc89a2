"""From the model's raw label map to levels a radiologist can read.

Three steps, each recorded so the report can say what was changed:

1. Names. The model's own labels, per label the main component, are put in anatomical order
   (ordered_naming.py). Where that naming is consistent (RAW_NAMING_TRUSTED) and fits the column's
   geometry, it is what is delivered; otherwise the levels are counted (level_count.py): structures
   rebuilt from the kind of each voxel (sacrum, vertebra, disc) and named by their rank in the column,
   counted up from the sacrum when one lies under the lowest disc, else with the offset that agrees best
   with the model's labels.
2. Outlines. Counting also cleans the geometry: it splits two vertebrae the model let touch at the disc
   plane, merges a vertebra painted with two labels and keeps each arch with its body. So a trusted
   naming is delivered on counting's structures (with the model's offset, not the sacrum's) when the two
   agree on at least SAME_NAMING of the voxels they both label, and as the model drew it when they do
   not (on real scans discs are found patchily, and the disc planes then cut the bodies wrongly). With
   fewer than two discs there is nothing to count between, and the ordered naming is delivered.
3. With a model that has an outline refiner (outline_crops.py), each disc and vertebra is redrawn close
   up, slice by slice, keeping its name; the measurements and findings below read the redrawn outlines.
4. Per-level measurements (volume, disc height; for discs how far they reach behind the vertebral
   bodies, disc_morphometry.py) and findings (level_findings.py): the model's score for the structure as
   delivered (the level classifier's, or its finding maps pooled inside it), against the model card's
   threshold, or combined with the disc's measurements where the card has a combiner for that finding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

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
from service.infer.ordered_naming import (
    FRAGMENT_FRACTION,
    MIN_STRUCTURE_MM3,
    Change,
    Component,
    Grid,
    naming_misfit,
    naming_overlap,
    ordered_components,
    raw_naming_agreement,
)
from service.ontology import Ontology, Structure

__all__ = ["Change", "Grid", "LevelResult", "SpineResult", "postprocess"]

RAW_NAMING_TRUSTED = 0.95
"""raw_naming_agreement at or above which the model's own naming is delivered (if it fits the column)
without counting from the sacrum (above 1: always count). Chosen on the real training cases
(model_export/RESULTS.md)."""
SAME_NAMING = 0.9
"""Share of co-labelled voxels on which counting's structures must carry the model's trusted names for
counting's outlines to be delivered."""


class OutlineRedrawer(Protocol):
    """Redraws the named structures of a label map (``outline_crops.OutlineRefiner``)."""

    def refine(self, labels: np.ndarray) -> np.ndarray: ...


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
    ordered, ordered_axis = ordered_components(raw_labels, ontology, grid, voxel_mm3, ordered_changes)
    trusted = (raw_naming_agreement(ordered, ordered_changes) >= RAW_NAMING_TRUSTED
               and naming_misfit(ordered, ordered_axis, raw_labels.shape, grid, ontology) is None)
    counting = count_levels(raw_labels, ontology, grid, min_voxels, anchor_on_sacrum=not trusted)
    if trusted and counting is not None and naming_overlap(
            [(n.mask, n.structure.label) for n in counting.structures], ordered, raw_labels.shape) < SAME_NAMING:
        counting = None  # counting's disc planes cut this column otherwise than the model drew it
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


def _redrawn(placed: list[tuple[Component, Structure]], labels: np.ndarray, grid: Grid
             ) -> list[tuple[Component, Structure]]:
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
        out.append((Component(comp.raw_label, box, mask, int(mask.sum()), centroid), structure))
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
) -> tuple[list[tuple[Component, Structure]], np.ndarray]:
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
        comp = Component(_majority(raw_labels[region][mask]), region, mask, int(mask.sum()), centroid)
        placed.append((comp, named.structure))
    for mask, why in counting.dropped:
        values, counts = np.unique(raw_labels[mask], return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            changes.append(Change("dropped", value, None, count, why))
    return placed, counting.axis


def _majority(values: np.ndarray) -> int:
    found, counts = np.unique(values, return_counts=True)
    return int(found[np.argmax(counts)])


