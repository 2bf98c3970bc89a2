"""The spine as a curve and a stack of segments: the frame every synthetic tissue is drawn in.

A study's anatomy is described in curvilinear coordinates around the centre line of the vertebral bodies:
``s`` is the arc length along that line (0 at the top of the sacrum, increasing cranially) and ``t`` the
signed distance from it in the mid-sagittal plane (positive posterior). Left-right stays the patient ``x``.
Lordosis, sacral slope and kyphosis are curvatures of the line; vertebrae and discs are intervals of
``s``. Coordinates are DICOM patient coordinates (LPS, mm).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d, map_coordinates

from service.ontology import DEFAULT_ONTOLOGY, Ontology

# Caudal to cranial. Beyond T9 the vertebrae are drawn but belong to no ontology structure.
VERTEBRA_LEVELS = ("L5", "L4", "L3", "L2", "L1", "T12", "T11", "T10", "T9", "T8", "T7", "T6", "T5")
# Typical body heights, disc heights, half depths and half widths (mm), caudal to cranial.
BODY_HEIGHT = (27, 28, 28, 27, 26, 24, 22, 21, 20, 19, 18.5, 18, 17.5)
DISC_HEIGHT = (10.5, 11, 10, 9, 8, 7, 6, 5.5, 5, 4.5, 4.5, 4.5, 4.5)
HALF_DEPTH = (17.5, 17.5, 17, 16.5, 16, 15, 14.5, 14, 13.5, 13, 13, 12.5, 12.5)
HALF_WIDTH = (25, 24, 23, 22, 21, 19.5, 18.5, 18, 17, 16.5, 16, 15.5, 15)
CURVE_STEP = 0.5


def disc_name(index: int) -> str:
    """Name of the disc below vertebra ``index`` (0 = L5 -> "L5/S1")."""
    below = "S1" if index == 0 else VERTEBRA_LEVELS[index - 1]
    return f"{VERTEBRA_LEVELS[index]}/{below}"


@dataclass
class Segment:
    """A vertebra, disc or the sacrum: an interval of arc length with its cross-section size."""

    name: str  # "S", "L4", "L4/L5"
    kind: str  # "sacrum" | "vertebra" | "disc"
    s0: float
    s1: float
    half_depth: float
    half_width: float
    label: int  # ontology label, 0 when the ontology has no such structure

    @property
    def height(self) -> float:
        return self.s1 - self.s0

    @property
    def centre(self) -> float:
        return 0.5 * (self.s0 + self.s1)


@dataclass
class SpineModel:
    """Curve, segments and the soft-tissue proportions around them."""

    curve_s: np.ndarray  # (n,) arc length samples
    curve_yz: np.ndarray  # (n, 2) patient y, z of the body centre line
    x0: float  # lateral position of the mid-sagittal plane
    segments: list[Segment]
    canal_depth: float = 16.0  # antero-posterior size of the canal
    canal_half_width: float = 11.0
    spinous_length: float = 30.0
    muscle_depth: float = 45.0  # posterior muscle behind the laminae
    fat_depth: float = 20.0  # subcutaneous fat
    abdomen_depth: float = 180.0  # anterior extent of the body in front of the spine
    body_half_width: float = 160.0
    conus_s: float = 180.0  # caudal tip of the spinal cord
    diaphragm_s: float = 220.0  # above this, lung in front of the spine
    aorta_bifurcation_s: float = 90.0
    transitional: str | None = None  # None | "sacralised" | "lumbarised"
    source: str = "procedural"
    spider: Any = None  # SpiderAnatomy when the vertebrae, discs and canal come from a real mask

    # -- curve geometry ---------------------------------------------------------------------------
    def tangent(self) -> np.ndarray:
        d = np.gradient(self.curve_yz, axis=0)
        return d / np.linalg.norm(d, axis=1, keepdims=True)

    def point(self, s: float) -> np.ndarray:
        """Patient (x, y, z) of the centre line at arc length ``s``."""
        y = np.interp(s, self.curve_s, self.curve_yz[:, 0])
        z = np.interp(s, self.curve_s, self.curve_yz[:, 1])
        return np.array([self.x0, y, z])

    def frame(self, s: float) -> tuple[np.ndarray, np.ndarray]:
        """Unit tangent (cranial) and normal (posterior) in patient (y, z) at ``s``."""
        tan = self.tangent()
        ty = np.interp(s, self.curve_s, tan[:, 0])
        tz = np.interp(s, self.curve_s, tan[:, 1])
        t = np.array([ty, tz]) / np.hypot(ty, tz)
        return t, np.array([t[1], -t[0]])

    def patient_point(self, s: float, t: float, x: float | None = None) -> np.ndarray:
        tan, nrm = self.frame(s)
        p = self.point(s)
        p[1:] += t * nrm
        if x is not None:
            p[0] = x
        return p

    def st_exact(self, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Curvilinear (s, t) of patient points (y, z) by projection onto the nearest curve sample."""
        pts = np.stack([np.ravel(y), np.ravel(z)], axis=1)
        idx = np.concatenate([self._nearest_sample(pts[i:i + 4096]) for i in range(0, len(pts), 4096)]
                             or [np.zeros(0, int)])
        tan = self.tangent()[idx]
        d = pts - self.curve_yz[idx]
        s = self.curve_s[idx] + np.einsum("ij,ij->i", d, tan)
        t = d[:, 0] * tan[:, 1] - d[:, 1] * tan[:, 0]
        return s.reshape(np.shape(y)), t.reshape(np.shape(y))

    def _nearest_sample(self, pts: np.ndarray, stride: int = 8) -> np.ndarray:
        """Index of the nearest curve sample: nearest of every ``stride``-th sample, then its neighbours.

        Exact wherever one stretch of the curve is clearly nearest (everywhere in the body); a k-d tree
        was three times slower, because points far from a nearly straight curve visit most of its nodes.
        """
        curve = self.curve_yz
        # the coarse search in float32 (a third faster): it only picks the window the exact search scans
        coarse = curve[::stride].astype(np.float32)
        p32 = pts.astype(np.float32)
        d2 = (p32[:, None, 0] - coarse[None, :, 0]) ** 2 + (p32[:, None, 1] - coarse[None, :, 1]) ** 2
        centre = np.argmin(d2, axis=1) * stride
        cand = np.clip(centre[:, None] + np.arange(-stride, stride + 1)[None, :], 0, len(curve) - 1)
        d2 = (pts[:, None, 0] - curve[cand, 0]) ** 2 + (pts[:, None, 1] - curve[cand, 1]) ** 2
        return cand[np.arange(len(pts)), np.argmin(d2, axis=1)]

    def st_of(self, y: np.ndarray, z: np.ndarray, step: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
        """(s, t) of many points: exact on a coarse grid over their extent, linearly interpolated between.

        s and t are smooth away from the centres of curvature (far outside the body), so a 2 mm grid
        loses nothing visible and is a hundred times cheaper than projecting every voxel.
        """
        y = np.asarray(y, dtype=np.float64)
        z = np.asarray(z, dtype=np.float64)
        step = max(step, max(np.ptp(y), np.ptp(z)) / 120.0)  # a 48 cm localizer needs no 2 mm lookup
        y0, z0 = y.min() - step, z.min() - step
        ny = int(np.ceil((y.max() + step - y0) / step)) + 1
        nz = int(np.ceil((z.max() + step - z0) / step)) + 1
        gz, gy = np.meshgrid(z0 + step * np.arange(nz), y0 + step * np.arange(ny), indexing="ij")
        cs, ct = self.st_exact(gy, gz)
        coords = np.stack([np.ravel((z - z0) / step), np.ravel((y - y0) / step)])
        s = map_coordinates(cs, coords, order=1, mode="nearest").reshape(y.shape)
        t = map_coordinates(ct, coords, order=1, mode="nearest").reshape(y.shape)
        return s.astype(np.float32), t.astype(np.float32)

    # -- segments ---------------------------------------------------------------------------------
    def segment(self, name: str) -> Segment:
        for seg in self.segments:
            if seg.name == name:
                return seg
        raise KeyError(name)

    def labelled(self, kind: str) -> list[Segment]:
        return [s for s in self.segments if s.kind == kind and s.label]

    def neighbours(self, disc: Segment) -> tuple[Segment | None, Segment | None]:
        """The structures caudal and cranial to a disc."""
        i = self.segments.index(disc)
        below = self.segments[i - 1] if i > 0 else None
        above = self.segments[i + 1] if i + 1 < len(self.segments) else None
        return below, above


def ontology_label(level: str, kind: str, ontology: Ontology = DEFAULT_ONTOLOGY) -> int:
    try:
        return ontology.by_level(level, kind).label  # type: ignore[arg-type]
    except KeyError:
        return 0


def build_curve(rng: np.random.Generator, s_min: float, s_max: float, lumbar_top: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Integrate a centre line from piecewise curvature: sacral kyphosis, lumbar lordosis, thoracic kyphosis."""
    s = np.arange(s_min, s_max + CURVE_STEP, CURVE_STEP)
    slope = np.deg2rad(rng.uniform(28, 45))  # tilt of the axis at S1 (sacral slope)
    lordosis = np.deg2rad(rng.uniform(30, 60))
    kyphosis = np.deg2rad(rng.uniform(15, 40))
    sacral = np.deg2rad(rng.uniform(30, 55))
    kappa = np.where(s < 0, sacral / 100.0, np.where(s < lumbar_top, -lordosis / lumbar_top, kyphosis / 220.0))
    kappa = gaussian_filter1d(kappa, 20.0 / CURVE_STEP, mode="nearest")
    i0 = int(np.argmin(np.abs(s)))
    theta = np.cumsum(kappa) * CURVE_STEP
    theta = theta - theta[i0] + slope  # anterior tilt of the cranial tangent
    dy = -np.sin(theta) * CURVE_STEP
    dz = np.cos(theta) * CURVE_STEP
    y = np.cumsum(dy)
    z = np.cumsum(dz)
    y -= y[i0]
    z -= z[i0]
    return s, np.stack([y, z], axis=1)


def procedural_spine(rng: np.random.Generator, transitional_probability: float) -> SpineModel:
    """A plausible adult thoracolumbar spine with random size, proportions and curvature."""
    size = rng.uniform(0.88, 1.12)
    segments: list[Segment] = []
    sacrum_len = rng.uniform(90, 115) * size
    segments.append(Segment("S", "sacrum", -sacrum_len, 0.0, HALF_DEPTH[0] * size * rng.uniform(0.95, 1.08),
                            HALF_WIDTH[0] * size * 1.1, ontology_label("S1", "sacrum")))
    transitional = None
    if rng.random() < transitional_probability:
        transitional = "sacralised" if rng.random() < 0.5 else "lumbarised"
    s = 0.0
    for i, level in enumerate(VERTEBRA_LEVELS):
        dh = DISC_HEIGHT[i] * size * rng.uniform(0.85, 1.15)
        if i == 0 and transitional == "sacralised":
            dh = rng.uniform(2.0, 3.5)  # rudimentary L5/S1 disc
        depth = HALF_DEPTH[i] * size * rng.uniform(0.95, 1.05)
        width = HALF_WIDTH[i] * size * rng.uniform(0.95, 1.05)
        name = disc_name(i)
        segments.append(Segment(name, "disc", s, s + dh, depth, width, ontology_label(name, "disc")))
        s += dh
        bh = BODY_HEIGHT[i] * size * rng.uniform(0.93, 1.07)
        segments.append(Segment(level, "vertebra", s, s + bh, depth, width, ontology_label(level, "vertebra")))
        s += bh
    lumbar_top = segments[2 * 5].s1  # top of L1
    curve_s, curve_yz = build_curve(rng, -sacrum_len - 80.0, s + 120.0, lumbar_top)
    l1 = segments[2 * 5]
    return SpineModel(
        curve_s=curve_s, curve_yz=curve_yz, x0=0.0, segments=segments,
        canal_depth=rng.uniform(13, 18) * size, canal_half_width=rng.uniform(9.5, 12.0) * size,
        spinous_length=rng.uniform(24, 34) * size, muscle_depth=rng.uniform(30, 55),
        fat_depth=rng.uniform(8, 40), abdomen_depth=rng.uniform(150, 230), body_half_width=rng.uniform(140, 185),
        conus_s=rng.uniform(l1.s0 - 10, l1.s1 + 12), diaphragm_s=rng.uniform(l1.s1 + 10, l1.s1 + 60),
        aorta_bifurcation_s=rng.uniform(segments[4].s0, segments[6].s1),
        transitional=transitional,
    )
