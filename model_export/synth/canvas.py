"""Where anatomy is painted: a tissue map and a label map over points with known (s, t, x).

Two layouts share one interface. :class:`VolumeCanvas` is an axis-aligned patient grid (z, y, x) whose
(s, t) depend only on (z, y), so each structure is evaluated on a small crop and broadcast along x;
the sagittal series are resampled from it. :class:`PointCanvas` is any set of points (axial slices,
localizer planes), evaluated directly. Painters ask for a region by ranges of s, t and x and receive
broadcastable coordinate arrays, then put a tissue (and optionally a label) where their mask is true.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

Range = tuple[float, float]


@dataclass
class Region:
    key: Any
    s: np.ndarray
    t: np.ndarray
    x: np.ndarray
    canvas: Canvas
    y: np.ndarray | None = None  # patient y and z, given for everything() regions
    z: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return np.broadcast_shapes(self.s.shape, self.t.shape, self.x.shape)

    def put(self, mask: np.ndarray, tissue: int | np.ndarray, label: int | np.ndarray | None = None,
            where_label: int | None = None) -> None:
        """Paint ``tissue`` (and ``label``) where ``mask``; ``where_label`` restricts to one structure."""
        self.canvas.put(self, mask, tissue, label, where_label)

    def fill(self, tissue: np.ndarray) -> None:
        """Set the tissue of every point of the region (no label change)."""
        tv, _ = self.canvas._views(self)
        tv[...] = np.broadcast_to(tissue, tv.shape)
        self.canvas._store(self, tv, self.canvas._views(self)[1])

    def labels(self) -> np.ndarray:
        return self.canvas.label_view(self)

    def tissues(self) -> np.ndarray:
        return self.canvas.tissue_view(self)


class Canvas:
    tissue: np.ndarray
    label: np.ndarray

    def region(self, s: Range, t: Range, x: Range) -> Region | None:  # pragma: no cover - interface
        raise NotImplementedError

    def everything(self) -> Region:  # pragma: no cover - interface
        raise NotImplementedError

    def _views(self, region: Region) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - interface
        raise NotImplementedError

    def label_view(self, region: Region) -> np.ndarray:
        return self._views(region)[1]

    def tissue_view(self, region: Region) -> np.ndarray:
        return self._views(region)[0]

    def put(self, region: Region, mask: np.ndarray, tissue: int | np.ndarray, label: int | np.ndarray | None,
            where_label: int | None) -> None:
        tv, lv = self._views(region)
        mask = np.broadcast_to(mask, tv.shape)
        if where_label is not None:
            mask = mask & (lv == where_label)
        if not mask.any():
            return
        tv[mask] = tissue if np.isscalar(tissue) else np.broadcast_to(tissue, tv.shape)[mask]
        if label is not None:
            lv[mask] = label if np.isscalar(label) else np.broadcast_to(label, lv.shape)[mask]
        self._store(region, tv, lv)

    def _store(self, region: Region, tv: np.ndarray, lv: np.ndarray) -> None:
        """Write views back when they are copies (point canvases); volumes paint in place."""


class VolumeCanvas(Canvas):
    """Axis-aligned grid; arrays indexed (z, y, x) like SimpleITK's GetArrayFromImage."""

    def __init__(self, s2d: np.ndarray, t2d: np.ndarray, x1d: np.ndarray, y1d: np.ndarray, z1d: np.ndarray,
                 spacing: tuple[float, float, float]) -> None:
        self.s2d, self.t2d, self.x1d, self.y1d, self.z1d = s2d, t2d, x1d, y1d, z1d
        self.origin = np.array([x1d[0], y1d[0], z1d[0]], dtype=np.float64)
        self.spacing = spacing
        shape = (*s2d.shape, x1d.size)
        self.tissue = np.zeros(shape, np.uint8)
        self.label = np.zeros(shape, np.uint8)

    def everything(self) -> Region:
        key = (slice(None), slice(None), slice(None))
        return Region(key, self.s2d[:, :, None], self.t2d[:, :, None], self.x1d[None, None, :], self,
                      self.y1d[None, :, None].astype(np.float32), self.z1d[:, None, None].astype(np.float32))

    def region(self, s: Range, t: Range, x: Range) -> Region | None:
        m = (self.s2d >= s[0]) & (self.s2d <= s[1]) & (self.t2d >= t[0]) & (self.t2d <= t[1])
        rows = np.flatnonzero(m.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(m[rows[0]:rows[-1] + 1].any(axis=0))
        x0, x1 = np.searchsorted(self.x1d, [x[0], x[1]])
        x1 = min(x1 + 1, self.x1d.size)
        if x0 >= x1:
            return None
        key = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1), slice(x0, x1))
        return Region(key, self.s2d[key[:2]][:, :, None], self.t2d[key[:2]][:, :, None],
                      self.x1d[key[2]][None, None, :], self)

    def _views(self, region: Region) -> tuple[np.ndarray, np.ndarray]:
        return self.tissue[region.key], self.label[region.key]


class PointCanvas(Canvas):
    """Arbitrary points (any shape); regions are index subsets."""

    def __init__(self, s: np.ndarray, t: np.ndarray, points: np.ndarray) -> None:
        self.shape = s.shape
        self.s, self.t = s.ravel(), t.ravel()
        self.x, self.y, self.z = (points[..., i].ravel().astype(np.float32) for i in range(3))
        self.tissue = np.zeros(self.s.size, np.uint8)
        self.label = np.zeros(self.s.size, np.uint8)
        self._order: np.ndarray | None = None
        self._sorted_s = self.s

    def everything(self) -> Region:
        return Region(slice(None), self.s, self.t, self.x, self, self.y, self.z)

    def region(self, s: Range, t: Range, x: Range) -> Region | None:
        if self._order is None:  # points sorted along the spine: a range of s is a contiguous run
            self._order = np.argsort(self.s, kind="stable")
            self._sorted_s = self.s[self._order]
        i0, i1 = np.searchsorted(self._sorted_s, [s[0], s[1]], side="left")
        run = self._order[i0:i1]
        tt, xx = self.t[run], self.x[run]
        idx = run[(tt >= t[0]) & (tt <= t[1]) & (xx >= x[0]) & (xx <= x[1])]
        if idx.size == 0:
            return None
        return Region(idx, self.s[idx], self.t[idx], self.x[idx], self)

    def _views(self, region: Region) -> tuple[np.ndarray, np.ndarray]:
        return self.tissue[region.key], self.label[region.key]

    def _store(self, region: Region, tv: np.ndarray, lv: np.ndarray) -> None:
        self.tissue[region.key] = tv
        self.label[region.key] = lv

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.tissue.reshape(self.shape), self.label.reshape(self.shape)
