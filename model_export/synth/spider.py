"""Anatomy from the real SPIDER masks (van der Graaf et al. 2024, CC BY 4.0) in ../shared/data/spider_masks.

SPIDER numbers vertebrae from the bottom in one of two conventions found in the masks: 1 = L5 with
discs 201 = L5/S1, 202 = L4/L5, ...; or VerSe-style 24 = L5, 23 = L4, ... with discs 224 = L5/S1.
We tell them apart by the largest vertebra label and verify the caudal-to-cranial order of the
centroids; a mask whose order disagrees is not used. 100 is the spinal canal; the sacrum is not
labelled. From the mask we take vertebrae (bodies and posterior elements), discs (nucleus and annulus
split by depth) and the canal (CSF core, epidural fat rim); the sacrum, cord, cauda equina and every
soft tissue are added procedurally around a centre line fitted through the disc centroids.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy.interpolate import CubicSpline
from scipy.ndimage import find_objects

from service.errors import SynthError

from .canvas import Canvas, VolumeCanvas
from .spine import (
    CURVE_STEP,
    HALF_DEPTH,
    HALF_WIDTH,
    VERTEBRA_LEVELS,
    Segment,
    SpineModel,
    disc_name,
    ontology_label,
)
from .tissues import Tissue

CANAL = 100


@dataclass
class SpiderMask:
    """One mask mapped to our labels, with native tissue classes; cached per file."""

    name: str
    image: sitk.Image  # uint16: our label * 256 + tissue, on the mask's own grid
    names: dict[int, tuple[str, str]]  # our label -> (level name, kind)
    centroids: dict[str, np.ndarray]  # level name -> physical centroid (mask space)
    points: dict[str, np.ndarray]  # level name -> physical points (subsampled, mask space); "canal" too


def _level_of(value: int, verse: bool) -> tuple[str, str] | None:
    if 0 < value < CANAL:
        i = 24 - value if verse else value - 1
        return (VERTEBRA_LEVELS[i], "vertebra") if 0 <= i < len(VERTEBRA_LEVELS) else None
    if value > 200:
        j = 224 - value if verse else value - 201
        return (disc_name(j), "disc") if 0 <= j < len(VERTEBRA_LEVELS) else None
    return None


def _physical(img: sitk.Image, idx_zyx: np.ndarray) -> np.ndarray:
    """Physical points of array indices (z, y, x) of an image."""
    d = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())[None, :]
    return idx_zyx[:, ::-1] @ d.T + np.array(img.GetOrigin())


def _working_grid(img: sitk.Image, finest: float = 0.8) -> sitk.Image:
    """The mask on a grid no finer than the canvases it will be drawn on (same orientation)."""
    spacing = np.maximum(np.array(img.GetSpacing()), finest)
    if np.allclose(spacing, img.GetSpacing()):
        return img
    size = np.maximum(1, np.round(np.array(img.GetSize()) * np.array(img.GetSpacing()) / spacing)).astype(int)
    ref = sitk.Image([int(v) for v in size], img.GetPixelID())
    ref.SetDirection(img.GetDirection())
    ref.SetSpacing(tuple(float(v) for v in spacing))
    d = np.array(img.GetDirection()).reshape(3, 3)
    shift = d @ ((spacing - np.array(img.GetSpacing())) / 2)  # keep the same physical extent
    ref.SetOrigin(tuple(float(v) for v in np.array(img.GetOrigin()) + shift))
    return sitk.Resample(img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, img.GetPixelID())


def _crop_to_labels(img: sitk.Image, margin: int = 3) -> sitk.Image:
    arr = sitk.GetArrayViewFromImage(img)
    box = find_objects((arr > 0).astype(np.uint8))
    if not box or box[0] is None:
        raise SynthError("SPIDER mask is empty")
    lo = [max(0, b.start - margin) for b in box[0]][::-1]  # (x, y, z) index order
    hi = [min(n, b.stop + margin) for b, n in zip(box[0], arr.shape, strict=True)][::-1]
    return sitk.RegionOfInterest(img, [int(h - lo_) for lo_, h in zip(lo, hi, strict=True)], [int(v) for v in lo])


def _boundary(arr: np.ndarray, img: sitk.Image, width: int) -> np.ndarray:
    """Voxels within ``width`` voxels of a different value, looking only along the in-plane axes.

    Thick sagittal masks have 3-5 mm between their slices, so the left-right axis is left out.
    """
    d = np.array(img.GetDirection()).reshape(3, 3)
    axes = [2 - i for i in range(3) if abs(d[0, i]) < 0.7]  # array axes not along patient x
    edge = np.zeros(arr.shape, bool)
    for axis in axes:
        for step in range(1, width + 1):
            for sign in (1, -1):
                shifted = np.roll(arr, sign * step, axis=axis)
                edge |= shifted != arr
    return edge


@lru_cache(maxsize=48)  # all 40 masks: a few MB each once cropped to their labels
def load_mask(path: str) -> SpiderMask:
    img = _crop_to_labels(_working_grid(sitk.ReadImage(path)))
    arr = sitk.GetArrayFromImage(img).astype(np.uint8)
    counts = np.bincount(arr.ravel())
    values = [int(v) for v in np.flatnonzero(counts) if v]
    verse = max((v for v in values if v < CANAL), default=0) >= 17
    label = np.zeros(arr.shape, np.uint8)
    tissue = np.zeros(arr.shape, np.uint8)
    edge = _boundary(arr, img, 1)
    rim = _boundary(arr, img, 2)
    names: dict[int, tuple[str, str]] = {}
    centroids: dict[str, np.ndarray] = {}
    points: dict[str, np.ndarray] = {}
    boxes = find_objects(arr)
    order: list[tuple[float, str, str]] = []
    for value in values:
        box = boxes[value - 1]
        crop = arr[box] == value
        idx = np.argwhere(crop) + np.array([b.start for b in box])
        pts = _physical(img, idx[:: max(1, len(idx) // 2000)].astype(np.float64))
        if value == CANAL:
            tissue[box][crop] = np.where(rim[box][crop], Tissue.EPIDURAL_FAT, Tissue.CSF)
            points["canal"] = pts
            continue
        level = _level_of(value, verse)
        if value > 200:  # nucleus: the inner part of the disc's inertia ellipsoid
            world = _physical(img, idx.astype(np.float64)) - pts.mean(axis=0)
            inv = np.linalg.pinv(np.cov(pts.T))
            r2 = np.einsum("ij,jk,ik->i", world, inv, world) / 5.0
            tissue[idx[:, 0], idx[:, 1], idx[:, 2]] = np.where(r2 < 0.3, Tissue.NUCLEUS, Tissue.ANNULUS)
        else:
            tissue[box][crop] = np.where(edge[box][crop], Tissue.CORTEX, Tissue.MARROW)
        if level is None:
            continue
        ours = ontology_label(*level)
        label[box][crop] = ours
        names[ours] = level
        centroids[level[0]] = pts.mean(axis=0)
        points[level[0]] = pts
        order.append((float(pts[:, 2].mean()), level[0], level[1]))
    # caudal-to-cranial order must alternate disc, vertebra from L5/S1 (partial top structures aside)
    expected = [disc_name(0)] + [n for i, v in enumerate(VERTEBRA_LEVELS[:-1]) for n in (v, disc_name(i + 1))]
    expected.append(VERTEBRA_LEVELS[-1])
    seen = [n for _, n, _ in sorted(order)]
    ranks = [expected.index(n) for n in seen]
    if not seen or seen[0] not in ("L5/S1", "L5") or sum(b < a for a, b in zip(ranks, ranks[1:], strict=False)) > 1:
        raise SynthError(f"{Path(path).name}: SPIDER labels are not in caudal-to-cranial order ({seen})")
    packed = sitk.GetImageFromArray(label.astype(np.uint16) * 256 + tissue)
    packed.CopyInformation(img)
    return SpiderMask(Path(path).stem, packed, names, centroids, points)


@dataclass
class SpiderAnatomy:
    """A mask placed in the study's patient frame by an affine map (scale, tilt, mirror)."""

    mask: SpiderMask
    matrix: np.ndarray  # patient = matrix @ (mask - centre) + centre
    centre: np.ndarray
    canal_line: tuple[np.ndarray, np.ndarray, np.ndarray] = (np.zeros(2), np.zeros(2), np.zeros(2))

    def to_patient(self, pts: np.ndarray) -> np.ndarray:
        return (pts - self.centre) @ self.matrix.T + self.centre

    def transform(self) -> sitk.Transform:
        """Patient -> mask space, as SimpleITK's resampler wants it."""
        t = sitk.AffineTransform(3)
        t.SetMatrix(tuple(np.linalg.inv(self.matrix).ravel()))
        t.SetCenter(tuple(self.centre))
        return t

    def sample(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest-neighbour (label, tissue) at patient points (..., 3)."""
        img = self.mask.image
        q = (pts.reshape(-1, 3) - self.centre) @ np.linalg.inv(self.matrix).T + self.centre
        d = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())[None, :]
        ijk = np.rint((q - np.array(img.GetOrigin())) @ np.linalg.inv(d).T).astype(np.int64)
        size = np.array(img.GetSize())
        ok = np.all((ijk >= 0) & (ijk < size), axis=1)
        arr = sitk.GetArrayViewFromImage(img)
        packed = np.zeros(len(q), np.uint16)
        packed[ok] = arr[ijk[ok, 2], ijk[ok, 1], ijk[ok, 0]]
        shape = pts.shape[:-1]
        return (packed >> 8).astype(np.uint8).reshape(shape), (packed & 255).astype(np.uint8).reshape(shape)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Patient-space bounding box of the mask grid."""
        img = self.mask.image
        size = np.array(img.GetSize()) - 1
        corners = [img.TransformContinuousIndexToPhysicalPoint([float(c * n) for c, n in zip(bits, size, strict=True)])
                   for bits in np.ndindex(2, 2, 2)]
        pts = self.to_patient(np.array(corners))
        return pts.min(axis=0) - 1.0, pts.max(axis=0) + 1.0

    def resample(self, reference: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
        out = sitk.Resample(self.mask.image, reference, self.transform(), sitk.sitkNearestNeighbor, 0,
                            sitk.sitkUInt16)
        packed = sitk.GetArrayViewFromImage(out)
        return (packed >> 8).astype(np.uint8), (packed & 255).astype(np.uint8)


def _fit_curve(centres_yz: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre line through disc centroids (caudal first), extended by a sacral curve below and straight above.

    Returns (s, yz, s_of_first_disc) with s measured from the start of the returned curve.
    """
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(centres_yz, axis=0), axis=1))])
    spline = CubicSpline(chord, centres_yz, bc_type="natural")
    u = np.linspace(0, chord[-1], int(chord[-1] / 0.25) + 2)
    dense = spline(u)
    seg = np.linalg.norm(np.diff(dense, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    s_new = np.arange(0, arc[-1], CURVE_STEP)
    mid = np.stack([np.interp(s_new, arc, dense[:, 0]), np.interp(s_new, arc, dense[:, 1])], axis=1)
    # above: straight along the last tangent
    top_t = mid[-1] - mid[-5]
    top_t /= np.linalg.norm(top_t)
    above = mid[-1] + np.arange(1, 300)[:, None] * CURVE_STEP * top_t
    # below: continue downwards while bending as a sacrum does
    t0 = mid[4] - mid[0]
    theta = np.arctan2(-t0[0], t0[1])
    kappa = np.deg2rad(rng.uniform(30, 55)) / 100.0
    pts = [mid[0]]
    for _ in range(int(220 / CURVE_STEP)):
        theta -= kappa * CURVE_STEP
        pts.append(pts[-1] - CURVE_STEP * np.array([-np.sin(theta), np.cos(theta)]))
    below = np.array(pts[1:][::-1])
    yz = np.concatenate([below, mid, above])
    s = np.arange(len(yz)) * CURVE_STEP
    return s, yz, len(below) * CURVE_STEP


def spider_spine(folder: Path, rng: np.random.Generator, transitional_probability: float
                 ) -> tuple[SpineModel, dict]:
    del transitional_probability  # the mask's own anatomy is what it is
    files = sorted(Path(folder).glob("*.mha"))
    for _ in range(5):
        path = files[int(rng.integers(len(files)))]
        try:
            mask = load_mask(str(path))
            break
        except SynthError:
            continue
    else:
        raise SynthError(f"no usable SPIDER mask in {folder}")
    centre = mask.centroids.get("L3", next(iter(mask.centroids.values())))
    tilt = np.deg2rad(rng.uniform(-8, 8))
    scale = rng.uniform(0.93, 1.07)
    c, s_ = np.cos(tilt), np.sin(tilt)
    matrix = scale * np.array([[1, 0, 0], [0, c, -s_], [0, s_, c]])
    if rng.random() < 0.5:
        matrix = matrix @ np.diag([-1.0, 1.0, 1.0])
    anatomy = SpiderAnatomy(mask, matrix, centre)
    discs = [disc_name(i) for i in range(len(VERTEBRA_LEVELS)) if disc_name(i) in mask.centroids]
    disc_c = np.array([anatomy.to_patient(mask.centroids[d][None])[0] for d in discs])
    curve_s, curve_yz, s_first = _fit_curve(disc_c[:, 1:], rng)
    x0 = float(np.median(disc_c[:, 0]))
    spine = SpineModel(curve_s=curve_s, curve_yz=curve_yz, x0=x0, segments=[], source=f"spider:{mask.name}")
    segments = _segments(spine, anatomy)
    s_zero = segments[0].s1  # top of the sacrum
    spine.curve_s = spine.curve_s - s_zero
    for g in segments:
        g.s0 -= s_zero
        g.s1 -= s_zero
    spine.segments = segments
    spine._tree = None
    canal = anatomy.to_patient(mask.points["canal"])
    cs, ct = spine.st_exact(canal[:, 1], canal[:, 2])
    lumbar = (cs > 0) & (cs < 200)
    bins = np.arange(cs.min(), cs.max() + 4, 4.0)
    which = np.digitize(cs, bins)
    line = [(cs[which == k].mean(), np.median(ct[which == k]), np.median(canal[which == k, 0]))
            for k in np.unique(which) if (which == k).sum() >= 3]
    anatomy.canal_line = tuple(np.array(v) for v in zip(*line, strict=True))  # type: ignore[assignment]
    spine.canal_depth = float(np.clip(np.ptp(np.percentile(ct[lumbar], [5, 95])), 10, 22)) if lumbar.any() else 15.0
    spine.canal_half_width = float(np.clip(np.ptp(np.percentile(canal[lumbar, 0], [5, 95])) / 2, 7, 14)) \
        if lumbar.any() else 10.0
    segs = {g.name: g for g in segments}
    spine.spinous_length = rng.uniform(24, 34)
    spine.muscle_depth, spine.fat_depth = rng.uniform(30, 55), rng.uniform(8, 40)
    spine.abdomen_depth, spine.body_half_width = rng.uniform(150, 230), rng.uniform(140, 185)
    spine.conus_s = rng.uniform(segs["L1"].s0 - 10, segs["L1"].s1 + 12)
    spine.diaphragm_s = rng.uniform(segs["L1"].s1 + 10, segs["L1"].s1 + 60)
    spine.aorta_bifurcation_s = rng.uniform(segs["L4"].s0, segs["L3"].s1)
    spine.spider = anatomy  # type: ignore[attr-defined]
    pts = np.concatenate([anatomy.to_patient(p) for p in mask.points.values()])
    limits = {"z_top": float(pts[:, 2].max()) - 3.0, "x_range": (float(pts[:, 0].min()), float(pts[:, 0].max()))}
    return spine, limits


def _segments(spine: SpineModel, anatomy: SpiderAnatomy) -> list[Segment]:
    """Arc-length extents and cross-section sizes of every mapped structure, caudal to cranial."""
    out: list[Segment] = []
    mask = anatomy.mask
    for label, (name, kind) in sorted(mask.names.items(), key=lambda kv: mask.centroids[kv[1][0]][2]):
        pts = anatomy.to_patient(mask.points[name])
        s, t = spine.st_exact(pts[:, 1], pts[:, 2])
        core = np.abs(t) < 12
        if core.sum() < 20:
            continue
        s0, s1 = np.percentile(s[core], [2, 98])
        a = float(np.ptp(np.percentile(t[t < 25], [3, 97]))) / 2 if (t < 25).sum() > 20 else 15.0
        b = float(np.ptp(np.percentile(pts[core, 0], [3, 97]))) / 2
        out.append(Segment(name, kind, float(s0), float(s1), float(np.clip(a, 10, 22)), float(np.clip(b, 12, 30)),
                           label))
    out.sort(key=lambda g: g.centre)
    # make neighbours meet: a vertebra spans from the disc below to the disc above
    for i, g in enumerate(out):
        if g.kind == "vertebra":
            if i > 0 and out[i - 1].kind == "disc":
                g.s0 = out[i - 1].s1
            if i + 1 < len(out) and out[i + 1].kind == "disc":
                g.s1 = out[i + 1].s0
    first = out[0]
    length = rng_free_sacrum_length(first)
    sacrum = Segment("S", "sacrum", first.s0 - length, first.s0, first.half_depth * 1.02, HALF_WIDTH[0] * 1.1,
                     ontology_label("S1", "sacrum"))
    return [sacrum, *out]


def rng_free_sacrum_length(first: Segment) -> float:
    """Sacrum length scaled from the L5/S1 disc depth (a deterministic function of the mask)."""
    return 105.0 * first.half_depth / HALF_DEPTH[0]


def spider_patch(canvas: Canvas, anatomy: SpiderAnatomy) -> tuple[Any, np.ndarray, np.ndarray] | None:
    """(key, label, tissue) of the mask over the part of a canvas its bounding box covers.

    ``key`` indexes the canvas arrays (slices for a volume, flat indices for points); sampling only
    that part skips most of a volume canvas, whose extent is set by the field of view, not the mask.
    """
    lo, hi = anatomy.bounds()
    if isinstance(canvas, VolumeCanvas):
        ranges = []
        for axis_values, a, b in ((canvas.z1d, lo[2], hi[2]), (canvas.y1d, lo[1], hi[1]), (canvas.x1d, lo[0], hi[0])):
            i0, i1 = np.searchsorted(axis_values, [a, b])
            if i0 >= i1:
                return None
            ranges.append(slice(int(i0), int(i1)))
        key = tuple(ranges)
        ref = sitk.Image(key[2].stop - key[2].start, key[1].stop - key[1].start, key[0].stop - key[0].start,
                         sitk.sitkUInt8)
        ref.SetOrigin((float(canvas.x1d[key[2].start]), float(canvas.y1d[key[1].start]),
                       float(canvas.z1d[key[0].start])))
        ref.SetSpacing(tuple(float(v) for v in canvas.spacing))
        label, tissue = anatomy.resample(ref)
        return key, label, tissue
    pts = np.stack([canvas.x, canvas.y, canvas.z], axis=-1)
    inside = np.flatnonzero(np.all((pts >= lo) & (pts <= hi), axis=1))
    if inside.size == 0:
        return None
    label, tissue = anatomy.sample(pts[inside].astype(np.float64))
    return inside, label, tissue


def paint_spider(canvas: Canvas, spine: SpineModel, degenerated: set[str]) -> None:
    """The mask's vertebrae, discs and canal over the procedural body, then cord and cauda equina."""
    patch = spider_patch(canvas, spine.spider)
    if patch is not None:
        key, label, tissue = patch
        dark = [g.label for g in spine.segments if g.name in degenerated and g.label]
        tissue = np.where((tissue == Tissue.NUCLEUS) & np.isin(label, dark), np.uint8(Tissue.NUCLEUS_DEGENERATED),
                          tissue)
        tv, lv = canvas.tissue[key], canvas.label[key]
        m = tissue > 0
        tv[m] = tissue[m]
        lv[m] = label[m]
        if not isinstance(key, tuple):  # flat indices gave copies
            canvas.tissue[key], canvas.label[key] = tv, lv
    line_s, line_t, line_x = spine.spider.canal_line
    reg = canvas.region((float(line_s.min()), float(line_s.max())), (float(line_t.min()) - 12, float(line_t.max()) + 12),
                        (float(line_x.min()) - 12, float(line_x.max()) + 12))
    if reg is None:
        return
    t_c = np.interp(reg.s, line_s, line_t).astype(np.float32)
    x_c = np.interp(reg.s, line_s, line_x).astype(np.float32)
    csf = reg.tissues() == Tissue.CSF
    grow = np.clip((reg.s - spine.conus_s) / 15.0, 0, 1)
    cord = (((reg.t - t_c) / (3.6 * grow + 1e-3)) ** 2 + ((reg.x - x_c) / (4.6 * grow + 1e-3)) ** 2) < 1.0
    reg.put(cord & csf & (reg.s > spine.conus_s), Tissue.CORD)
    dt2 = (reg.t - t_c - 3.5) ** 2
    for root_x in (-3.5, -1.2, 1.2, 3.5):  # cauda equina, dependent in the posterior sac
        root = (dt2 + (reg.x - x_c - root_x) ** 2 < 0.8 ** 2) & (reg.s < spine.conus_s) & (reg.s > 0)
        reg.put(root & csf, Tissue.NERVE)
