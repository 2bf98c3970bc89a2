"""Naming levels by counting from the sacrum, as a radiologist does.

A model outlines sacrum, vertebrae and discs far better than it names their levels: neighbouring lumbar
levels look alike and differ mainly by their place in the column. So the structures are rebuilt from the
kind of each voxel (sacrum, vertebra, disc) and named by their rank:

1. Disc components are the separators. They are ordered along the spine; a spacing about twice the
   usual one means a disc the model missed, and the count skips a level there.
2. The vertebral body voxels between two consecutive disc planes form one vertebra (each disc's plane
   is fitted in the sagittal plane, so lordosis tilts it with the disc), which also splits two vertebrae
   the model let touch, and merges one vertebra the model painted with two level labels. Behind the
   discs the planes would cut the spinous processes, which slope down over the level below, so the arch
   voxels follow their body instead: they keep the model's label, renamed as that label's body was.
3. One offset names the whole chain (which disc is L5/S1). When a sacrum lies under the lowest disc,
   levels are counted up from it, whatever the model called the discs: right under it, that disc is
   L5/S1; an empty gap of about one disc spacing means the model missed one level there, and so on. A
   vertebral body in that gap with no disc under it is the top of the sacrum (S1) taken for L5: on
   generated validation studies that confusion was more common than a missed L5/S1 disc.
   Otherwise (sacrum out of view or not found) the offset is the one whose names agree best with the
   model's own labels, each structure's vote being the share of its voxels the model gave that name.

With fewer than two discs there is nothing to count between; the caller keeps the model's labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from service.ontology import Ontology, Structure

LEVELS_UNDER_ROUNDING = 0.35
"""Levels missed between the sacrum and the lowest disc found: floor(gap / spacing + this). A sacrum right
under the disc (gap about half a disc) gives 0; one vertebra and disc missed (gap about 1.1 spacings) 1."""
DISC_MIN_SHARE = 0.1
"""Disc components smaller than this share of the largest are fragments. Thoracic discs and discs cut by
the edge of the field of view are a fifth of a lumbar disc or less; fragments close to a real disc are
caught by CROWDED_RATIO instead."""
SACRUM_DEPTH_MM = 35.0
"""A disc whose centre lies deeper than this below the top of the sacrum is inside it. (The L5/S1 disc
sits on the tilted sacral plateau, whose back edge can rise some 25 mm above the disc's centre.)"""
SACRUM_ABOVE_SHARE = 0.25
"""A disc with more than this share of the sacrum in its column above its plane lies inside the sacrum."""
DISC_MERGE_MM = 6.0
"""Disc components closer than this along the spine are pieces of one disc (e.g. split across slices)."""
CROWDED_RATIO = 0.5
"""Two discs closer than this multiple of the median spacing cannot both be discs."""
GAP_RATIO = 1.6
"""A disc spacing at least this multiple of the median spacing holds a disc the model missed."""
FRONT_MARGIN_MM = 8.0
"""Vertebral voxels farther than this in front of the discs are not bone (anterior osteophytes are shorter)."""
BODY_MARGIN_MM = 3.0
"""Vertebral voxels up to this far in front of or behind the discs' extent count as vertebral body."""
MAX_OFF_AXIS_MM = 40.0
"""A disc component farther than this from the line of the other discs is not part of the column."""

KIND_CODES = {"sacrum": 1, "vertebra": 2, "disc": 3}


@dataclass
class CountedStructure:
    structure: Structure
    mask: np.ndarray
    """Full-size boolean mask of the voxels named ``structure``."""


@dataclass
class Counting:
    structures: list[CountedStructure]
    """Caudal to cranial."""
    dropped: list[tuple[np.ndarray, str]]
    """Full-size masks left out of the column, with the reason."""
    axis: np.ndarray
    """Caudal-to-cranial unit vector (patient mm) through the discs."""
    anchored_on_sacrum: bool


def count_levels(labels: np.ndarray, ontology: Ontology, grid, min_voxels: int) -> Counting | None:
    """Name every sacrum, vertebra and disc voxel of ``labels`` by its rank in the column, or None."""
    kind = _kind_map(labels, ontology)
    found = _find_discs(kind, grid, min_voxels)
    if found is None:
        return None
    discs, axis = found
    positions = _disc_positions(discs, axis)
    disc_order = ontology.of_kind("disc")
    vertebra_order = ontology.of_kind("vertebra")
    disc_order.sort(key=lambda s: ontology.caudal_to_cranial().index(s))
    vertebra_order.sort(key=lambda s: ontology.caudal_to_cranial().index(s))
    if positions[-1] >= len(disc_order):
        return None

    for disc in discs:
        disc.normal = _disc_normal(disc.points, grid, axis)
        disc.depth_dir, disc.depth_range = _depth_axis(disc, disc.normal, grid)
    vertebra_index, vertebra_body, vertebra_front = _place(kind == KIND_CODES["vertebra"], discs, grid)
    sacrum_index, sacrum_body, _ = _place(kind == KIND_CODES["sacrum"], discs, grid)
    body_index = np.where(vertebra_body, vertebra_index, -1)
    sacrum_out = (sacrum_index > 0) & sacrum_body  # a "sacrum" in the column above the lowest disc
    sacrum_kept = (sacrum_index >= 0) & ~sacrum_out
    sacrum_top = (sacrum_index == 0) & sacrum_body
    offsets = range(len(disc_order) - positions[-1])
    anchored = bool(sacrum_top.any())
    if anchored:  # count up from the sacrum, including the levels the model missed just above it
        missed = _levels_under(discs, positions, sacrum_top | (body_index == 0), grid, axis)
        anchored = missed in offsets
        offsets = range(missed, missed + 1) if anchored else offsets
    best = max(offsets, key=lambda offset: _chain_score(labels, discs, positions, body_index, offset, disc_order,
                                                       vertebra_order))

    sacrum = next(s for s in ontology.structures if s.kind == "sacrum")
    named: list[CountedStructure] = []
    below_lowest = body_index == 0
    if best == 0:  # vertebral bodies under L5/S1 are sacrum that the model took for a vertebra
        named.append(CountedStructure(sacrum, sacrum_kept | below_lowest))
    else:
        named.append(CountedStructure(sacrum, sacrum_kept))
        named.append(CountedStructure(vertebra_order[best + positions[0] - 1], below_lowest))
    for i, disc in enumerate(discs):
        named.append(CountedStructure(disc_order[best + positions[i]], disc.mask))
        top = best + positions[i + 1] if i + 1 < len(discs) else best + positions[i] + 1
        allowed = vertebra_order[best + positions[i]:min(top, len(vertebra_order))]
        named.extend(_split_interval(labels, body_index == i + 1, allowed))
    arches = (vertebra_index >= 0) & ~vertebra_body & ~vertebra_front
    orphans = _edge_arches(labels, _attach_posterior_elements(labels, arches, named), named, vertebra_order)
    placed = np.zeros(labels.shape, dtype=bool)
    for n in named:
        placed |= n.mask
    stray = (kind > 0) & ~placed & ~sacrum_out & ~vertebra_front & ~orphans  # disc pieces that are no level
    dropped = [(mask, why) for mask, why in ((sacrum_out, "sacrum above the lowest disc"),
                                             (vertebra_front, "vertebra in front of the vertebral bodies"),
                                             (orphans, "no vertebral body of this level"),
                                             (stray, "disc piece that is no level (small, off the column or in the sacrum)"))
               if mask.any()]
    order = ontology.caudal_to_cranial()
    named = sorted((n for n in named if n.mask.any()), key=lambda n: order.index(n.structure))
    return Counting(named, dropped, axis, anchored_on_sacrum=anchored)


@dataclass
class _Disc:
    mask: np.ndarray
    points: np.ndarray
    """Patient coordinates (mm) of the disc's voxels."""
    centroid: np.ndarray
    normal: np.ndarray = field(default_factory=lambda: np.zeros(3))
    depth_dir: np.ndarray = field(default_factory=lambda: np.zeros(3))
    depth_range: tuple[float, float] = (0.0, 0.0)


def _find_discs(kind: np.ndarray, grid, min_voxels: int) -> tuple[list[_Disc], np.ndarray] | None:
    """The discs of the column, caudal to cranial, and the spine's axis; None when fewer than two."""
    discs = _disc_components(kind == KIND_CODES["disc"], grid, min_voxels)
    if len(discs) < 2:
        return None
    axis = _axis_through([d.centroid for d in discs])
    discs = sorted(discs, key=lambda d: float(d.centroid @ axis))
    discs = _outside_sacrum(discs, kind == KIND_CODES["sacrum"], grid, axis)
    if len(discs) < 2:
        return None
    discs = _drop_crowded(_merge_close(discs, axis), axis)
    return (discs, axis) if len(discs) >= 2 else None


def _levels_under(discs: list[_Disc], positions: list[int], bone_under: np.ndarray, grid, axis: np.ndarray
                  ) -> int:
    """Levels between the sacrum and the lowest disc found, from the gap and the lowest disc spacing.

    ``bone_under`` is the sacrum plus any vertebral body under the lowest disc: a body there with no disc
    under it is the top of the sacrum (S1) taken for L5, so it closes the gap."""
    spacing = float((discs[1].centroid - discs[0].centroid) @ axis) / (positions[1] - positions[0])
    return int(np.floor(_gap_below(bone_under, discs[0], grid) / spacing + LEVELS_UNDER_ROUNDING))


def _kind_map(labels: np.ndarray, ontology: Ontology) -> np.ndarray:
    lut = np.zeros(256, np.uint8)
    for s in ontology.structures:
        lut[s.label] = KIND_CODES[s.kind]
    return lut[labels]


def _disc_components(disc_voxels: np.ndarray, grid, min_voxels: int) -> list[_Disc]:
    """Disc candidates: components at least DISC_MIN_SHARE of the largest one's size (a stray fragment
    counted as a disc would shift every level above it), on the line of the column."""
    cc, n = ndimage.label(disc_voxels, structure=np.ones((3, 3, 3)))
    if n == 0:
        return []
    sizes = np.bincount(cc.ravel())[1:]
    keep_at = max(min_voxels, DISC_MIN_SHARE * float(sizes.max()))
    discs = []
    for index in np.flatnonzero(sizes >= keep_at):
        mask = cc == index + 1
        points = grid.index_to_patient(np.argwhere(mask))
        discs.append(_Disc(mask, points, points.mean(axis=0)))
    if len(discs) >= 3:  # a blob off the column (e.g. in the abdomen) is not a level
        line = _axis_through([d.centroid for d in discs])
        centre = np.mean([d.centroid for d in discs], axis=0)
        off = [np.linalg.norm((d.centroid - centre) - ((d.centroid - centre) @ line) * line) for d in discs]
        discs = [d for d, o in zip(discs, off, strict=True) if o <= MAX_OFF_AXIS_MM]
    return discs


def _axis_through(points: list[np.ndarray]) -> np.ndarray:
    """Main direction of the points, pointing cranially (+z in LPS)."""
    stacked = np.stack(points)
    _, _, vt = np.linalg.svd(stacked - stacked.mean(axis=0), full_matrices=False)
    axis = vt[0] if vt[0][2] >= 0 else -vt[0]
    return axis / np.linalg.norm(axis)


def _outside_sacrum(discs: list[_Disc], sacrum: np.ndarray, grid, axis: np.ndarray) -> list[_Disc]:
    """No lumbar disc lies inside the sacrum: a "disc" with much of the sacrum above it in its own column is
    a piece of the sacrum (a rudimentary S1/S2 disc, or noise) and would make every level above it one too
    low. The sacrum is its lowest sizable component (a second "sacrum" higher up is dropped later)."""
    if not sacrum.any():
        return discs
    pieces, _ = ndimage.label(sacrum, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(pieces.ravel())[1:]
    candidates = [i + 1 for i in np.flatnonzero(sizes >= 0.3 * sizes.max())]
    lowest = min(candidates, key=lambda i: float(grid.index_to_patient(
        np.argwhere(pieces == i).mean(axis=0)) @ axis))
    points = grid.index_to_patient(np.argwhere(pieces == lowest))
    top = float(np.percentile(points @ axis, 95))
    kept = []
    for disc in discs:
        if float(disc.centroid @ axis) < top - SACRUM_DEPTH_MM:
            continue
        normal = _disc_normal(disc.points, grid, axis)
        depth_dir, (lo, hi) = _depth_axis(disc, normal, grid)
        depth = (points - disc.centroid) @ depth_dir
        column = (depth >= lo) & (depth <= hi)
        above = ((points[column] - disc.centroid) @ normal > 0).sum()
        if not column.any() or above <= SACRUM_ABOVE_SHARE * column.sum():
            kept.append(disc)
    return kept


def _merge_close(discs: list[_Disc], axis: np.ndarray) -> list[_Disc]:
    merged = [discs[0]]
    for disc in discs[1:]:
        last = merged[-1]
        if float((disc.centroid - last.centroid) @ axis) < DISC_MERGE_MM:
            points = np.concatenate([last.points, disc.points])
            merged[-1] = _Disc(last.mask | disc.mask, points, points.mean(axis=0))
        else:
            merged.append(disc)
    return merged


def _gap_below(voxels: np.ndarray, disc: _Disc, grid) -> float:
    """Distance (mm) from the disc's plane down to the highest of ``voxels`` (all below it)."""
    points = grid.index_to_patient(np.argwhere(voxels))
    return float(-((points - disc.centroid) @ disc.normal).max())


def _drop_crowded(discs: list[_Disc], axis: np.ndarray) -> list[_Disc]:
    """Of two discs closer than half the usual spacing, keep the bigger: no two levels are that close."""
    discs = list(discs)
    while len(discs) >= 3:
        along = np.array([float(d.centroid @ axis) for d in discs])
        gaps = np.diff(along)
        i = int(np.argmin(gaps))
        if gaps[i] >= CROWDED_RATIO * float(np.median(gaps)):
            break
        smaller = i if discs[i].mask.sum() < discs[i + 1].mask.sum() else i + 1
        del discs[smaller]
    return discs


def _disc_positions(discs: list[_Disc], axis: np.ndarray) -> list[int]:
    """Rank of each disc in the column, counting the discs the model missed between two it found."""
    spacing = np.diff([float(d.centroid @ axis) for d in discs])
    usual = float(np.median(spacing))
    positions = [0]
    for step in spacing:
        missed = max(0, int(round(step / usual)) - 1) if step >= GAP_RATIO * usual else 0
        positions.append(positions[-1] + 1 + missed)
    return positions


def _disc_normal(points: np.ndarray, grid, axis: np.ndarray) -> np.ndarray:
    """The disc's thin direction within the sagittal plane (a disc seen on one slice has no width)."""
    basis = np.stack([grid.row_dir, grid.col_dir])  # (2, 3) in-plane directions
    flat = (points - points.mean(axis=0)) @ basis.T
    if len(flat) < 3:
        return axis
    _, vectors = np.linalg.eigh(np.cov(flat.T))
    normal = vectors[:, 0] @ basis  # smallest-variance in-plane direction
    normal /= np.linalg.norm(normal)
    return normal if normal @ axis >= 0 else -normal


def _depth_axis(disc: _Disc, normal: np.ndarray, grid) -> tuple[np.ndarray, tuple[float, float]]:
    """The disc's front-to-back direction in the sagittal plane, pointing back, and its extent along it
    (mm from its centroid)."""
    direction = np.cross(normal, grid.normal)
    direction /= np.linalg.norm(direction)
    if direction[1] < 0:  # toward the patient's back (+y in LPS), where the arches are
        direction = -direction
    depth = (disc.points - disc.centroid) @ direction
    return direction, (float(depth.min()), float(depth.max()))


def _place(voxels: np.ndarray, discs: list[_Disc], grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per voxel of ``voxels``: how many disc planes lie below it (0 under the lowest disc, -1 elsewhere);
    whether it lies in the column of the discs bounding it (a vertebral body); and whether it lies in
    front of that column (no bone of the spine is there: osteophytes stay within FRONT_MARGIN_MM).

    Disc planes extended behind the column would cut the spinous processes, which slope down over the
    level below, so only voxels within the discs' front-to-back extent are named by the planes."""
    index = np.full(voxels.shape, -1, np.int8)
    body = np.zeros(voxels.shape, dtype=bool)
    front = np.zeros(voxels.shape, dtype=bool)
    where = np.argwhere(voxels)
    if where.size == 0:
        return index, body, front
    points = grid.index_to_patient(where)
    above = np.zeros(len(points), np.int8)
    in_column = np.zeros((len(discs), len(points)), dtype=bool)
    ahead = np.zeros((len(discs), len(points)), dtype=bool)
    for i, disc in enumerate(discs):
        above += ((points - disc.centroid) @ disc.normal > 0).astype(np.int8)
        depth = (points - disc.centroid) @ disc.depth_dir
        lo, hi = disc.depth_range
        in_column[i] = (depth >= lo - BODY_MARGIN_MM) & (depth <= hi + BODY_MARGIN_MM)
        ahead[i] = depth < lo - FRONT_MARGIN_MM
    columns = np.arange(len(points))
    below_disc = np.clip(above.astype(np.int64) - 1, 0, len(discs) - 1)
    above_disc = np.clip(above.astype(np.int64), 0, len(discs) - 1)
    inside = in_column[below_disc, columns] | in_column[above_disc, columns]
    index[tuple(where.T)] = above
    body[tuple(where.T)] = inside
    front[tuple(where.T)] = ~inside & ahead[below_disc, columns] & ahead[above_disc, columns]
    return index, body, front


def _attach_posterior_elements(labels: np.ndarray, posterior: np.ndarray, named: list[CountedStructure]
                               ) -> np.ndarray:
    """Give each vertebra the arch voxels of the label the model gave its body; returns the voxels left over.

    Where counting renamed a body (the model's L4 is L3), its arch is renamed with it."""
    owner: dict[int, tuple[int, CountedStructure]] = {}
    for n in named:
        if n.structure.kind != "vertebra" or not n.mask.any():
            continue
        values, counts = np.unique(labels[n.mask], return_counts=True)
        raw, count = int(values[np.argmax(counts)]), int(counts.max())
        if count > owner.get(raw, (0, n))[0]:
            owner[raw] = (count, n)
    leftover = posterior.copy()
    for raw, (_, n) in owner.items():
        arch = posterior & (labels == raw)
        n.mask = n.mask | arch
        leftover &= ~arch
    return leftover


def _edge_arches(labels: np.ndarray, orphans: np.ndarray, named: list[CountedStructure],
                 vertebra_order: list[Structure]) -> np.ndarray:
    """Arch voxels of the vertebra just beyond either end of the column keep the model's label: at the
    edge of the field of view a spinous process is often in view while its body is not."""
    ranks = [vertebra_order.index(n.structure) for n in named if n.structure in vertebra_order and n.mask.any()]
    if not ranks or not orphans.any():
        return orphans
    for rank in (min(ranks) - 1, max(ranks) + 1):
        if 0 <= rank < len(vertebra_order):
            arch = orphans & (labels == vertebra_order[rank].label)
            if arch.any():
                named.append(CountedStructure(vertebra_order[rank], arch))
                orphans = orphans & ~arch
    return orphans


def _vote(labels: np.ndarray, mask: np.ndarray, wanted: list[Structure]) -> float:
    """Share of the mask's voxels that the model gave one of the wanted labels."""
    total = int(mask.sum())
    if total == 0 or not wanted:
        return 0.0
    values = labels[mask]
    return float(np.isin(values, [s.label for s in wanted]).sum()) / total


def _chain_score(labels: np.ndarray, discs: list[_Disc], positions: list[int], vertebra_index: np.ndarray,
                 offset: int, disc_order: list[Structure], vertebra_order: list[Structure]) -> float:
    score = 0.0
    for i, disc in enumerate(discs):
        score += _vote(labels, disc.mask, [disc_order[offset + positions[i]]])
        top = offset + positions[i + 1] if i + 1 < len(discs) else offset + positions[i] + 1
        allowed = vertebra_order[offset + positions[i]:min(top, len(vertebra_order))]
        score += _vote(labels, vertebra_index == i + 1, allowed)
    if offset + positions[0] > 0:
        score += _vote(labels, vertebra_index == 0, [vertebra_order[offset + positions[0] - 1]])
    return score


def _split_interval(labels: np.ndarray, mask: np.ndarray, allowed: list[Structure]) -> list[CountedStructure]:
    """The vertebral voxels between two discs: one vertebra, or several where the model missed a disc
    (there the model's own labels among the allowed ones divide them; other labels go to the first)."""
    if not allowed:
        return []
    if len(allowed) == 1:
        return [CountedStructure(allowed[0], mask)]
    values = {s.label for s in allowed}
    out = []
    for i, structure in enumerate(allowed):
        own = mask & (labels == structure.label)
        if i == 0:
            own |= mask & ~np.isin(labels, list(values))
        out.append(CountedStructure(structure, own))
    return out
