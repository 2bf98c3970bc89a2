"""The discs of the spinal column in a label map, each with its plane: the separators level counting
(level_count.py) counts between.

A disc candidate is a connected component of disc voxels. Candidates that cannot be levels are left out,
because one stray piece counted as a disc would shift the name of every level above it: pieces much
smaller than the largest disc, blobs off the line of the column, pieces inside the sacrum, and the
smaller of two candidates closer together than two levels can be. Pieces of one disc split across slices
are merged. Two discs that touch (a bridge of disc voxels, e.g. on a lateral slice of a real scan) are
split again where the model gave them two disc labels far apart in the sagittal plane; counted as one,
they would shift every level above them. Each disc's plane is fitted within the sagittal plane, so a disc
seen on one slice still has one, and lordosis tilts it with the disc.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

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
MAX_OFF_AXIS_MM = 40.0
"""A disc component farther than this from the line of the other discs is not part of the column."""

SPLIT_MIN_SHARE = 0.2
"""A disc component is split by the model's labels only when at least two of them hold this share."""
SPLIT_MIN_MM = 10.0
"""... and their centroids lie farther apart than this in the sagittal plane. Discs are 20-40 mm apart
centre to centre; one disc painted with two labels has its label centroids a few mm apart, and if its
front and back were split anyway, the two parts lie within DISC_MERGE_MM along the spine and are merged."""

KIND_CODES = {"sacrum": 1, "vertebra": 2, "disc": 3}


@dataclass
class Disc:
    mask: np.ndarray
    points: np.ndarray
    """Patient coordinates (mm) of the disc's voxels."""
    centroid: np.ndarray
    normal: np.ndarray = field(default_factory=lambda: np.zeros(3))
    depth_dir: np.ndarray = field(default_factory=lambda: np.zeros(3))
    depth_range: tuple[float, float] = (0.0, 0.0)


def find_discs(kind: np.ndarray, grid, min_voxels: int, labels: np.ndarray | None = None
               ) -> tuple[list[Disc], np.ndarray] | None:
    """The discs of the column, caudal to cranial, and the spine's axis; None when fewer than two.

    ``labels`` (the model's label map) lets touching discs be split by the level labels they carry.
    """
    discs = _disc_components(kind == KIND_CODES["disc"], grid, min_voxels, labels)
    if len(discs) < 2:
        return None
    axis = axis_through([d.centroid for d in discs])
    discs = sorted(discs, key=lambda d: float(d.centroid @ axis))
    discs = _outside_sacrum(discs, kind == KIND_CODES["sacrum"], grid, axis)
    if len(discs) < 2:
        return None
    discs = _drop_crowded(_merge_close(discs, axis), axis)
    return (discs, axis) if len(discs) >= 2 else None


def _disc_components(disc_voxels: np.ndarray, grid, min_voxels: int, labels: np.ndarray | None = None
                     ) -> list[Disc]:
    """Disc candidates: components at least DISC_MIN_SHARE of the largest one's size (a stray fragment
    counted as a disc would shift every level above it), on the line of the column."""
    cc, n = ndimage.label(disc_voxels, structure=np.ones((3, 3, 3)))
    if n == 0:
        return []
    sizes = np.bincount(cc.ravel())[1:]
    # after splitting, the largest part still holds SPLIT_MIN_SHARE of the largest component, so smaller
    # components than this can never be kept: leave them unmaterialised (real scans have many specks)
    floor = max(min_voxels, DISC_MIN_SHARE * SPLIT_MIN_SHARE * float(sizes.max()))
    pieces = [cc == i + 1 for i in np.flatnonzero(sizes >= floor)]
    if labels is not None:
        pieces = [part for piece in pieces for part in _split_touching(piece, labels, grid)]
    sizes = np.array([int(piece.sum()) for piece in pieces])
    keep_at = max(min_voxels, DISC_MIN_SHARE * float(sizes.max()))
    discs = []
    for mask in (piece for piece, size in zip(pieces, sizes, strict=True) if size >= keep_at):
        points = grid.index_to_patient(np.argwhere(mask))
        discs.append(Disc(mask, points, points.mean(axis=0)))
    if len(discs) >= 3:  # a blob off the column (e.g. in the abdomen) is not a level
        line = axis_through([d.centroid for d in discs])
        centre = np.mean([d.centroid for d in discs], axis=0)
        off = [np.linalg.norm((d.centroid - centre) - ((d.centroid - centre) @ line) * line) for d in discs]
        discs = [d for d, o in zip(discs, off, strict=True) if o <= MAX_OFF_AXIS_MM]
    return discs


def _split_touching(mask: np.ndarray, labels: np.ndarray, grid) -> list[np.ndarray]:
    """One component, or one part per major label when the labels' centroids lie far apart in the sagittal
    plane; every voxel goes to the nearest of those centroids."""
    voxel_labels = labels[mask]  # in the order of np.argwhere(mask)
    values, counts = np.unique(voxel_labels, return_counts=True)
    major = values[counts >= SPLIT_MIN_SHARE * counts.sum()]
    if len(major) < 2:
        return [mask]
    index = np.argwhere(mask)
    in_plane = grid.index_to_patient(index) @ np.stack([grid.row_dir, grid.col_dir]).T  # (n, 2) mm
    centroids = np.stack([in_plane[voxel_labels == v].mean(axis=0) for v in major])
    gaps = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
    if gaps[np.triu_indices(len(major), 1)].min() < SPLIT_MIN_MM:
        return [mask]
    nearest = np.argmin(np.linalg.norm(in_plane[:, None] - centroids[None], axis=-1), axis=1)
    parts = []
    for j in range(len(major)):
        part = np.zeros_like(mask)
        part[tuple(index[nearest == j].T)] = True
        parts.append(part)
    return parts


def axis_through(points: list[np.ndarray]) -> np.ndarray:
    """Main direction of the points, pointing cranially (+z in LPS)."""
    stacked = np.stack(points)
    _, _, vt = np.linalg.svd(stacked - stacked.mean(axis=0), full_matrices=False)
    axis = vt[0] if vt[0][2] >= 0 else -vt[0]
    return axis / np.linalg.norm(axis)


def _outside_sacrum(discs: list[Disc], sacrum: np.ndarray, grid, axis: np.ndarray) -> list[Disc]:
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
        normal = disc_normal(disc.points, grid, axis)
        depth_dir, (lo, hi) = depth_axis(disc, normal, grid)
        depth = (points - disc.centroid) @ depth_dir
        column = (depth >= lo) & (depth <= hi)
        above = ((points[column] - disc.centroid) @ normal > 0).sum()
        if not column.any() or above <= SACRUM_ABOVE_SHARE * column.sum():
            kept.append(disc)
    return kept


def _merge_close(discs: list[Disc], axis: np.ndarray) -> list[Disc]:
    merged = [discs[0]]
    for disc in discs[1:]:
        last = merged[-1]
        if float((disc.centroid - last.centroid) @ axis) < DISC_MERGE_MM:
            points = np.concatenate([last.points, disc.points])
            merged[-1] = Disc(last.mask | disc.mask, points, points.mean(axis=0))
        else:
            merged.append(disc)
    return merged


def _drop_crowded(discs: list[Disc], axis: np.ndarray) -> list[Disc]:
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


def disc_normal(points: np.ndarray, grid, axis: np.ndarray) -> np.ndarray:
    """The disc's thin direction within the sagittal plane (a disc seen on one slice has no width)."""
    basis = np.stack([grid.row_dir, grid.col_dir])  # (2, 3) in-plane directions
    flat = (points - points.mean(axis=0)) @ basis.T
    if len(flat) < 3:
        return axis
    _, vectors = np.linalg.eigh(np.cov(flat.T))
    normal = vectors[:, 0] @ basis  # smallest-variance in-plane direction
    normal /= np.linalg.norm(normal)
    return normal if normal @ axis >= 0 else -normal


def depth_axis(disc: Disc, normal: np.ndarray, grid) -> tuple[np.ndarray, tuple[float, float]]:
    """The disc's front-to-back direction in the sagittal plane, pointing back, and its extent along it
    (mm from its centroid)."""
    direction = depth_direction(normal, grid)
    depth = (disc.points - disc.centroid) @ direction
    return direction, (float(depth.min()), float(depth.max()))


def depth_direction(normal: np.ndarray, grid) -> np.ndarray:
    """Across a disc with this normal, within the sagittal plane, pointing to the patient's back."""
    direction = np.cross(normal, grid.normal)
    direction /= np.linalg.norm(direction)
    return -direction if direction[1] < 0 else direction  # +y in LPS is back, where the arches are
