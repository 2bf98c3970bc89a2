"""Series geometry: where each slice of each series lies in patient space (LPS, mm).

A :class:`SliceStack` is what DICOM's Image Plane module says about a series: row and column
directions, pixel spacing, slice positions. Slices are kept sorted by position along the normal
(row x column), which is also the order SimpleITK's ImageSeriesReader returns them in; the order of
InstanceNumber is a separate, deliberately varied permutation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from .config import SynthConfig
from .spine import SpineModel


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation by small angles (radians) about the patient x, y and z axes."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class SliceStack:
    rows: int
    cols: int
    pixel_spacing: float  # same along rows and columns
    row_dir: np.ndarray  # direction of increasing column index (first triplet of IOP)
    col_dir: np.ndarray  # direction of increasing row index
    centres: np.ndarray  # (n, 3) slice centres, sorted along the normal
    thickness: float
    instance_order: list[int] = field(default_factory=list)  # sorted-slice index of InstanceNumber 1, 2, ...

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def num_slices(self) -> int:
        return len(self.centres)

    @property
    def slice_spacing(self) -> float:
        if self.num_slices < 2:
            return self.thickness
        return float(np.dot(self.centres[1] - self.centres[0], self.normal))

    def positions(self) -> np.ndarray:
        """ImagePositionPatient of every slice: the centre of its first pixel."""
        offset = self.row_dir * self.pixel_spacing * (self.cols - 1) / 2 + self.col_dir * self.pixel_spacing * (
            self.rows - 1) / 2
        return self.centres - offset

    def orientation(self) -> list[float]:
        return [float(v) for v in (*self.row_dir, *self.col_dir)]

    def reference(self) -> sitk.Image:
        """An empty image with exactly the geometry ImageSeriesReader gives this series."""
        img = sitk.Image(self.cols, self.rows, self.num_slices, sitk.sitkUInt8)
        img.SetOrigin(tuple(float(v) for v in self.positions()[0]))
        img.SetSpacing((self.pixel_spacing, self.pixel_spacing, self.slice_spacing))
        img.SetDirection(tuple(float(v) for v in np.stack([self.row_dir, self.col_dir, self.normal], axis=1).ravel()))
        return img

    def points(self, offsets: tuple[float, ...] = (0.0,)) -> np.ndarray:
        """Patient coordinates (len(offsets), n, rows, cols, 3) of every pixel, shifted along the normal."""
        i = np.arange(self.cols) * self.pixel_spacing
        j = np.arange(self.rows) * self.pixel_spacing
        plane = j[:, None, None] * self.col_dir + i[None, :, None] * self.row_dir  # (rows, cols, 3)
        pos = self.positions()
        out = pos[None, :, None, None, :] + plane[None, None] + np.asarray(offsets)[:, None, None, None, None] * self.normal
        return out

    def corners(self) -> np.ndarray:
        """The 8 corners of the slab the series images (with half a slice thickness either side)."""
        pos = self.positions()
        ext_r = self.row_dir * self.pixel_spacing * (self.cols - 1)
        ext_c = self.col_dir * self.pixel_spacing * (self.rows - 1)
        half = self.normal * self.thickness / 2
        out = []
        for p in (pos[0] - half, pos[-1] + half):
            out += [p, p + ext_r, p + ext_c, p + ext_r + ext_c]
        return np.array(out)

    def contains(self, point: np.ndarray, margin: float = 0.0) -> bool:
        """Whether a point projects inside the in-plane field of view (ignoring the slab)."""
        d = point - self.positions()[0]
        u = np.dot(d, self.row_dir) / self.pixel_spacing
        v = np.dot(d, self.col_dir) / self.pixel_spacing
        m = margin / self.pixel_spacing
        return bool(m <= u <= self.cols - 1 - m and m <= v <= self.rows - 1 - m)


def _stack(centre: np.ndarray, rot: np.ndarray, row: np.ndarray, col: np.ndarray, rows: int, cols: int,
           spacing: float, n: int, gap: float, thickness: float, rng: np.random.Generator) -> SliceStack:
    row_dir = rot @ row
    col_dir = rot @ col
    normal = np.cross(row_dir, col_dir)
    k = np.arange(n) - (n - 1) / 2
    centres = centre[None, :] + k[:, None] * gap * normal[None, :]
    order = list(range(n)) if rng.random() < 0.5 else list(range(n))[::-1]
    return SliceStack(rows, cols, spacing, row_dir, col_dir, centres, thickness, order)


def plan_sagittal(spine: SpineModel, config: SynthConfig, rng: np.random.Generator, limits: dict | None = None
                  ) -> tuple[SliceStack, SliceStack]:
    """Sagittal T2 and T1 sharing the planning (angle, centre) but not slice count or field of view."""
    segs = {g.name: g for g in spine.segments}
    pick = rng.random()
    if pick < 0.12:  # low: sacrum and lower lumbar spine
        s_c = rng.uniform(segs["L5"].s0, segs["L5"].s1)
    elif pick < 0.22:  # high: thoracolumbar junction, sacrum partly cut
        s_c = rng.uniform(segs["L2"].centre, segs["L1"].centre)
    else:
        s_c = rng.uniform(segs["L4"].centre, segs["L3"].centre)
    centre = spine.patient_point(s_c, rng.uniform(25, 60))
    centre[0] = spine.x0 + rng.uniform(-3, 3)
    oblique = rng.random() < config.oblique_probability
    m = np.deg2rad(config.max_oblique_deg) if oblique else np.deg2rad(0.3)
    rot = rotation(rng.uniform(-m, m), rng.uniform(-m, m) / 2, rng.uniform(-m, m) / 2)
    row = np.array([0.0, 1.0, 0.0])  # anterior -> posterior along a row
    col = np.array([0.0, 0.0, -1.0])  # head -> feet down the image
    if rng.random() < 0.15:
        row = -row  # some vendors and positions put the patient's back on the left
    stacks = []
    for _ in range(2):
        fov = rng.uniform(*config.fov)
        matrix = int(rng.integers(config.matrix[0] // 16, config.matrix[1] // 16 + 1)) * 16
        matrix = int(np.clip(matrix, config.matrix[0], config.matrix[1]))
        spacing = float(np.clip(fov / matrix, *config.pixel_spacing))
        n = int(rng.integers(config.slices[0], config.slices[1] + 1))
        thickness = float(np.round(rng.uniform(*config.slice_thickness), 1))
        gap = thickness * float(rng.choice([1.0, 1.0, 1.1, 1.2]))
        jitter = np.array([rng.uniform(-2, 2), rng.uniform(-4, 4), rng.uniform(-6, 6)])
        here = centre + jitter
        if limits:  # a SPIDER mask covers a known slab and height: stay inside it
            lo, hi = limits["x_range"]
            while n > config.slices[0] and n * gap > (hi - lo) + 8:
                n -= 1
            here[2] = min(here[2], limits["z_top"] - matrix * spacing / 2)
        stacks.append(_stack(here, rot, row, col, matrix, matrix, spacing, n, gap, thickness, rng))
    return stacks[0], stacks[1]


def plan_axial(spine: SpineModel, config: SynthConfig, rng: np.random.Generator) -> SliceStack:
    """An axial T2 block through the lower lumbar discs, tilted along the spine."""
    segs = {g.name: g for g in spine.segments}
    s_c = segs[str(rng.choice(["L4/L5", "L3/L4", "L4"]))].centre
    tan, _ = spine.frame(s_c)
    tilt = float(np.arctan2(-tan[0], tan[1]))  # anterior tilt of the spine axis at s_c
    rot = rotation(tilt * rng.uniform(0.5, 1.0), 0.0, rng.uniform(-0.03, 0.03))
    centre = spine.patient_point(s_c, rng.uniform(10, 30))
    matrix = int(rng.integers(config.axial_matrix[0] // 16, config.axial_matrix[1] // 16 + 1)) * 16
    matrix = int(np.clip(matrix, *config.axial_matrix))
    fov = rng.uniform(180, 240)
    n = int(rng.integers(config.axial_slices[0], config.axial_slices[1] + 1))
    thickness = float(np.round(rng.uniform(3.5, 5.0), 1))
    return _stack(centre, rot, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), matrix, matrix, fov / matrix, n,
                  thickness + 0.5, thickness, rng)


def plan_localizer(spine: SpineModel, config: SynthConfig, rng: np.random.Generator) -> list[SliceStack]:
    """A three-plane localizer: sagittal, coronal and axial planes through the lumbar spine."""
    centre = spine.patient_point(spine.segment("L3").centre, 20.0)
    m = config.localizer_matrix
    fov = rng.uniform(380, 480)
    n = int(rng.choice([1, 3]))
    planes = (
        (np.array([0.0, 1, 0]), np.array([0.0, 0, -1])),  # sagittal
        (np.array([1.0, 0, 0]), np.array([0.0, 0, -1])),  # coronal
        (np.array([1.0, 0, 0]), np.array([0.0, 1, 0])),  # axial
    )
    return [_stack(centre, np.eye(3), row, col, m, m, fov / m, n, 8.0, 7.0, rng) for row, col in planes]
