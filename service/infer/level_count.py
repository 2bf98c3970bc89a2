"""Naming levels by counting from the sacrum, as a radiologist does.

A model outlines sacrum, vertebrae and discs far better than it names their levels: neighbouring lumbar
levels look alike and differ mainly by their place in the column. So the structures are rebuilt from the
kind of each voxel (sacrum, vertebra, disc) and named by their rank:

1. Discs are the separators (disc_finding.py finds them and fits their planes). They are ordered along
   the spine; a spacing about twice the usual one means a disc the model missed, and the count skips a
   level there.
2. The vertebral body voxels between two consecutive disc planes form one vertebra (each disc's plane
   is fitted in the sagittal plane, so lordosis tilts it with the disc), which also splits two vertebrae
   the model let touch, and merges one vertebra the model painted with two level labels. Behind the
   discs the planes would cut the spinous processes, which slope down over the level below, so the arch
   voxels follow their body instead: they keep the model's label, renamed as that label's body was, as
   long as they lie within one interval of that body; arch voxels whose label names a body farther away
   join the body level with them. So no delivered vertebra comes out of order along the column.
3. One offset names the whole chain (which disc is L5/S1). When a sacrum lies under the lowest disc,
   levels are counted up from it, whatever the model called the discs: right under it, that disc is
   L5/S1; an empty gap of about one disc spacing means the model missed one level there, and so on. A
   vertebral body in that gap with no disc under it is the top of the sacrum (S1) taken for L5 when it is
   a sliver against the vertebra above (common on generated studies), and L5 over a missed L5/S1 disc
   when it is as tall (common on real scans, where the model finds discs patchily).
   Otherwise (sacrum out of view or not found) the offset is the one whose names agree best with the
   model's own labels, each structure's vote being the share of its voxels the model gave that name.

With fewer than two discs there is nothing to count between; the caller keeps the model's labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.infer.disc_finding import KIND_CODES, Disc, depth_axis, disc_normal, find_discs
from service.ontology import Ontology, Structure

LEVELS_UNDER_ROUNDING = 0.35
"""Levels missed between the sacrum and the lowest disc found: floor(gap / spacing + this). A sacrum right
under the disc (gap about half a disc) gives 0; one vertebra and disc missed (gap about 1.1 spacings) 1."""
SLIVER_SHARE = 0.6
"""A vertebral body under the lowest disc found that is less than this share as tall as the vertebra above
that disc is the top of the sacrum (S1) taken for L5 (as on generated studies); a taller one is L5 over an
L5/S1 disc the model missed (as on real scans, where discs are found patchily)."""
GAP_RATIO = 1.6
"""A disc spacing at least this multiple of the median spacing holds a disc the model missed."""
FRONT_MARGIN_MM = 8.0
"""Vertebral voxels farther than this in front of the discs are not bone (anterior osteophytes are shorter)."""
BODY_MARGIN_MM = 3.0
"""Vertebral voxels up to this far in front of or behind the discs' extent count as vertebral body."""


@dataclass
class CountedStructure:
    structure: Structure
    mask: np.ndarray
    """Full-size boolean mask of the voxels named ``structure``."""
    body_interval: int = -1
    """Vertebrae: how many disc planes lie below most of the body (-1 without a body in view)."""


@dataclass
class Counting:
    structures: list[CountedStructure]
    """Caudal to cranial."""
    dropped: list[tuple[np.ndarray, str]]
    """Full-size masks left out of the column, with the reason."""
    axis: np.ndarray
    """Caudal-to-cranial unit vector (patient mm) through the discs."""
    anchored_on_sacrum: bool


def count_levels(labels: np.ndarray, ontology: Ontology, grid, min_voxels: int, anchor_on_sacrum: bool = True
                 ) -> Counting | None:
    """Name every sacrum, vertebra and disc voxel of ``labels`` by its rank in the column, or None.

    ``anchor_on_sacrum=False``: the offset that agrees best with the model's labels even where a sacrum
    lies under the lowest disc (for a model whose own naming is trusted)."""
    kind = _kind_map(labels, ontology)
    found = find_discs(kind, grid, min_voxels, labels)
    if found is None:
        return None
    discs, axis = found
    positions = _disc_positions(discs, axis)
    order = ontology.caudal_to_cranial()
    disc_order = [s for s in order if s.kind == "disc"]
    vertebra_order = [s for s in order if s.kind == "vertebra"]
    if positions[-1] >= len(disc_order):
        return None

    for disc in discs:
        disc.normal = disc_normal(disc.points, grid, axis)
        disc.depth_dir, disc.depth_range = depth_axis(disc, disc.normal, grid)
    vertebra_index, vertebra_body, vertebra_front = _place(kind == KIND_CODES["vertebra"], discs, grid)
    sacrum_index, sacrum_body, _ = _place(kind == KIND_CODES["sacrum"], discs, grid)
    body_index = np.where(vertebra_body, vertebra_index, -1)
    sacrum_out = (sacrum_index > 0) & sacrum_body  # a "sacrum" in the column above the lowest disc
    sacrum_kept = (sacrum_index >= 0) & ~sacrum_out
    sacrum_top = (sacrum_index == 0) & sacrum_body
    offsets = range(len(disc_order) - positions[-1])
    anchored = anchor_on_sacrum and bool(sacrum_top.any())
    if anchored:  # count up from the sacrum, including the levels the model missed just above it
        bodies_under = body_index == 0
        top_of_sacrum = is_top_of_sacrum(bodies_under, body_index == 1, grid, axis)
        missed = _levels_under(discs, positions, sacrum_top | bodies_under if top_of_sacrum else sacrum_top,
                               grid, axis)
        anchored = missed in offsets
        offsets = range(missed, missed + 1) if anchored else offsets
    intervals = [body_index == k for k in range(len(discs) + 1)]  # bodies under, between and over the discs
    best = max(offsets, key=lambda offset: _chain_score(labels, discs, positions, intervals, offset, disc_order,
                                                       vertebra_order))

    sacrum = next(s for s in ontology.structures if s.kind == "sacrum")
    named: list[CountedStructure] = []
    below_lowest = intervals[0]
    if best == 0:  # vertebral bodies under L5/S1 are sacrum that the model took for a vertebra
        named.append(CountedStructure(sacrum, sacrum_kept | below_lowest))
    else:
        named.append(CountedStructure(sacrum, sacrum_kept))
        named.append(CountedStructure(vertebra_order[best + positions[0] - 1], below_lowest))
    for i, disc in enumerate(discs):
        named.append(CountedStructure(disc_order[best + positions[i]], disc.mask))
        named.extend(_split_interval(labels, intervals[i + 1], _above_disc(i, best, positions, vertebra_order),
                                     grid, axis))
    arches = (vertebra_index >= 0) & ~vertebra_body & ~vertebra_front
    for n in named:
        if n.structure.kind == "vertebra":
            n.body_interval = _planes_below_body(n.mask, vertebra_index)
    arch_planes = _with_planes_past_the_ends(vertebra_index, discs, positions, grid, axis)
    orphans = _attach_posterior_elements(labels, arches, named, arch_planes)
    orphans = _edge_arches(labels, orphans, named, vertebra_order, arch_planes)
    orphans = _arches_level_with_a_body(orphans, named, arch_planes)
    placed = np.zeros(labels.shape, dtype=bool)
    for n in named:
        placed |= n.mask
    stray = (kind > 0) & ~placed & ~sacrum_out & ~vertebra_front & ~orphans  # disc pieces that are no level
    dropped = [(mask, why) for mask, why in ((sacrum_out, "sacrum above the lowest disc"),
                                             (vertebra_front, "vertebra in front of the vertebral bodies"),
                                             (orphans, "no vertebral body of this level"),
                                             (stray, "disc piece that is no level (small, off the column or in the sacrum)"))
               if mask.any()]
    named = sorted((n for n in named if n.mask.any()), key=lambda n: order.index(n.structure))
    return Counting(named, dropped, axis, anchored_on_sacrum=anchored)


def _levels_under(discs: list[Disc], positions: list[int], bone_under: np.ndarray, grid, axis: np.ndarray
                  ) -> int:
    """Levels between the sacrum and the lowest disc found, from the gap and the lowest disc spacing.

    ``bone_under`` is the sacrum, plus any vertebral body under the lowest disc that is the top of the
    sacrum taken for L5 (which closes the gap)."""
    spacing = float((discs[1].centroid - discs[0].centroid) @ axis) / (positions[1] - positions[0])
    return int(np.floor(_gap_below(bone_under, discs[0], grid) / spacing + LEVELS_UNDER_ROUNDING))


def is_top_of_sacrum(body: np.ndarray, vertebra_above: np.ndarray, grid, axis: np.ndarray) -> bool:
    """Whether a vertebral body right above the sacrum, with no disc between, is the top of the sacrum
    taken for L5: a sliver, less than SLIVER_SHARE as tall along the column as the vertebra above it. A
    whole L5 over a disc the model missed or drew thin is as tall as L4. Without a vertebra above to
    compare with, it is taken for the top of the sacrum (the more common confusion on generated studies)."""
    if not body.any():
        return False
    if not vertebra_above.any():
        return True
    return _height(body, grid, axis) < SLIVER_SHARE * _height(vertebra_above, grid, axis)


def _height(mask: np.ndarray, grid, axis: np.ndarray) -> float:
    """Extent (mm) of a mask along the column, between the 5th and 95th percentiles of its voxels."""
    along = grid.index_to_patient(np.argwhere(mask)) @ axis
    low, high = np.percentile(along, [5, 95])
    return float(high - low)


def _kind_map(labels: np.ndarray, ontology: Ontology) -> np.ndarray:
    lut = np.zeros(256, np.uint8)
    for s in ontology.structures:
        lut[s.label] = KIND_CODES[s.kind]
    return lut[labels]


def _gap_below(voxels: np.ndarray, disc: Disc, grid) -> float:
    """Distance (mm) from the disc's plane down to the highest of ``voxels`` (all below it)."""
    points = grid.index_to_patient(np.argwhere(voxels))
    return float(-((points - disc.centroid) @ disc.normal).max())


def _disc_positions(discs: list[Disc], axis: np.ndarray) -> list[int]:
    """Rank of each disc in the column, counting the discs the model missed between two it found."""
    spacing = np.diff([float(d.centroid @ axis) for d in discs])
    usual = float(np.median(spacing))
    positions = [0]
    for step in spacing:
        missed = max(0, int(round(step / usual)) - 1) if step >= GAP_RATIO * usual else 0
        positions.append(positions[-1] + 1 + missed)
    return positions


def _place(voxels: np.ndarray, discs: list[Disc], grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _with_planes_past_the_ends(planes_below: np.ndarray, discs: list[Disc], positions: list[int], grid,
                               axis: np.ndarray) -> np.ndarray:
    """``planes_below`` with one more plane a disc spacing beyond each end disc, where the next disc would
    be: beyond the ends nothing else bounds how far an arch may lie from its body."""
    spacing = float((discs[-1].centroid - discs[0].centroid) @ axis) / (positions[-1] - positions[0])
    out = planes_below.copy()
    for disc, sign, end, past in ((discs[-1], 1.0, len(discs), len(discs) + 1), (discs[0], -1.0, 0, -1)):
        where = np.argwhere(planes_below == end)
        if where.size:
            beyond = sign * ((grid.index_to_patient(where) - disc.centroid) @ disc.normal) > spacing
            out[tuple(where[beyond].T)] = past
    return out


def _planes_below_body(body: np.ndarray, planes_below: np.ndarray) -> int:
    """The interval between disc planes that holds most of a vertebral body (-1 for an empty mask)."""
    values = planes_below[body]
    values = values[values >= 0]
    return int(np.bincount(values).argmax()) if values.size else -1


def _near_body(planes_below: np.ndarray, body_interval: int) -> np.ndarray:
    """Where an arch of the body in ``body_interval`` can lie: level with its body, one interval lower
    (its spinous process slopes down behind the disc and the vertebra below) or one higher (its superior
    articular processes rise beside the disc above). Farther away the same label is not this vertebra's
    arch, and would put the vertebra out of order along the column."""
    return np.abs(planes_below.astype(np.int16) - body_interval) <= 1


def _attach_posterior_elements(labels: np.ndarray, posterior: np.ndarray, named: list[CountedStructure],
                               planes_below: np.ndarray) -> np.ndarray:
    """Give each vertebra the arch voxels near its body that carry the label the model gave its body;
    returns the voxels left over.

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
        arch = posterior & (labels == raw) & _near_body(planes_below, n.body_interval)
        n.mask = n.mask | arch
        leftover &= ~arch
    return leftover


def _edge_arches(labels: np.ndarray, orphans: np.ndarray, named: list[CountedStructure],
                 vertebra_order: list[Structure], planes_below: np.ndarray) -> np.ndarray:
    """Arch voxels of the vertebra just beyond either end of the column keep the model's label: at the
    edge of the field of view a spinous process is often in view while its body is not. They must lie
    where that vertebra's arch can be: within one interval (_near_body) of where its body would sit, one
    interval beyond the end vertebra's. The same label painted behind the middle of the column is no arch
    of it."""
    ends = [(vertebra_order.index(n.structure), n.body_interval) for n in named
            if n.structure.kind == "vertebra" and n.mask.any() and n.body_interval >= 0]
    if not ends or not orphans.any():
        return orphans
    (low_rank, low_interval), (high_rank, high_interval) = min(ends), max(ends)
    beyond = {low_rank - 1: low_interval - 1, high_rank + 1: high_interval + 1}
    for rank, interval in beyond.items():
        if 0 <= rank < len(vertebra_order):
            arch = orphans & _near_body(planes_below, interval) & (labels == vertebra_order[rank].label)
            if arch.any():
                named.append(CountedStructure(vertebra_order[rank], arch))
                orphans = orphans & ~arch
    return orphans


def _arches_level_with_a_body(orphans: np.ndarray, named: list[CountedStructure], planes_below: np.ndarray
                              ) -> np.ndarray:
    """Arch voxels that carry the label of a body two or more levels away: the model named the level
    wrongly, not the bone. They join the vertebra whose body lies level with them, where the interval
    holds exactly one; returns the voxels still left over."""
    per_interval: dict[int, list[CountedStructure]] = {}
    for n in named:
        if n.structure.kind == "vertebra" and n.body_interval >= 0:
            per_interval.setdefault(n.body_interval, []).append(n)
    for interval, owners in per_interval.items():
        if len(owners) == 1:
            arch = orphans & (planes_below == interval)
            owners[0].mask = owners[0].mask | arch
            orphans = orphans & ~arch
    return orphans


def _vote(labels: np.ndarray, mask: np.ndarray, wanted: list[Structure]) -> float:
    """Share of the mask's voxels that the model gave one of the wanted labels."""
    total = int(mask.sum())
    if total == 0 or not wanted:
        return 0.0
    values = labels[mask]
    return float(np.isin(values, [s.label for s in wanted]).sum()) / total


def _above_disc(i: int, offset: int, positions: list[int], vertebra_order: list[Structure]) -> list[Structure]:
    """The vertebrae between disc i and the next disc found: one, or more where the model missed discs."""
    top = offset + positions[i + 1] if i + 1 < len(positions) else offset + positions[i] + 1
    return vertebra_order[offset + positions[i]:min(top, len(vertebra_order))]


def _chain_score(labels: np.ndarray, discs: list[Disc], positions: list[int], intervals: list[np.ndarray],
                 offset: int, disc_order: list[Structure], vertebra_order: list[Structure]) -> float:
    score = 0.0
    for i, disc in enumerate(discs):
        score += _vote(labels, disc.mask, [disc_order[offset + positions[i]]])
        score += _vote(labels, intervals[i + 1], _above_disc(i, offset, positions, vertebra_order))
    if offset + positions[0] > 0:
        score += _vote(labels, intervals[0], [vertebra_order[offset + positions[0] - 1]])
    return score


def _split_interval(labels: np.ndarray, mask: np.ndarray, allowed: list[Structure], grid, axis: np.ndarray
                    ) -> list[CountedStructure]:
    """The vertebral voxels between two discs: one vertebra, or several where the model missed a disc.

    There the model's own labels among the allowed ones divide them (other labels go to the first); where
    the model stacked those labels the wrong way round, its parts are named in their order along the spine."""
    if not allowed:
        return []
    if len(allowed) == 1:
        return [CountedStructure(allowed[0], mask)]
    values = {s.label for s in allowed}
    parts = []
    for i, structure in enumerate(allowed):
        own = mask & (labels == structure.label)
        if i == 0:
            own |= mask & ~np.isin(labels, list(values))
        parts.append(own)
    filled = [i for i, part in enumerate(parts) if part.any()]
    heights = [float((grid.index_to_patient(np.argwhere(parts[i])) @ axis).mean()) for i in filled]
    by_height = [filled[j] for j in np.argsort(heights, kind="stable")]
    names = list(allowed)
    for name_index, part_index in zip(filled, by_height, strict=True):
        names[part_index] = allowed[name_index]
    return [CountedStructure(name, part) for name, part in zip(names, parts, strict=True)]
