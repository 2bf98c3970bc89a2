"""A DICOM MR series as one volume with its patient geometry.

Slices are sorted by their position along the slice normal, because InstanceNumber need not follow
position (DESIGN.md section 6). The geometry is kept exactly as SimpleITK's ImageSeriesReader would
build it (origin of the first slice, direction columns row/column/normal, slice spacing from the first
and last positions), so that T1 resampled onto the T2 grid here agrees with any ITK-based tool.

Compressed transfer syntaxes are decoded by pydicom's pixel backends (pylibjpeg, openjpeg, libjpeg,
pyjpegls, RLE); deflate is handled when the file is read. Errors name the file, never its contents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from service.errors import InconsistentSeriesError, SeriesDecodeError

ORIENTATION_TOLERANCE = 1e-3
"""Largest difference between direction cosines of slices of one series (vendors round differently)."""
SPACING_TOLERANCE = 0.25
"""Largest relative deviation of one slice gap from the mean gap before we call a slice missing."""


@dataclass
class SeriesVolume:
    """Pixels in patient units (rescale applied), sorted along the slice normal, with DICOM geometry."""

    pixels: np.ndarray
    """float32, (n_slices, rows, cols)."""
    datasets: list[Dataset]
    """Header of each slice in pixel order; for a multi-frame instance the same dataset repeats."""
    origin: np.ndarray
    """ImagePositionPatient of the first sorted slice (mm, LPS)."""
    row_dir: np.ndarray
    """Direction of increasing column index (first triplet of ImageOrientationPatient)."""
    col_dir: np.ndarray
    """Direction of increasing row index (second triplet)."""
    normal: np.ndarray
    """row_dir x col_dir; slices are sorted ascending along it."""
    pixel_spacing: tuple[float, float]
    """(between rows, between columns) in mm, the DICOM PixelSpacing order."""
    slice_spacing: float
    """Distance between slice centres in mm."""
    frame_numbers: list[int] | None = field(default=None)
    """1-based frame number of each slice in its multi-frame instance; None for single-frame series."""
    dropped: list[str] = field(default_factory=list)
    """Why each instance whose pixels could not be decoded was blanked or left out (load_series)."""

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.pixels.shape)  # type: ignore[return-value]

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def source_datasets(self) -> list[Dataset]:
        """Each instance once, in slice order (what a SEG or SR references)."""
        seen: dict[int, Dataset] = {}
        for ds in self.datasets:
            seen.setdefault(id(ds), ds)
        return list(seen.values())

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are row_dir, col_dir and normal (ITK's direction)."""
        return np.stack([self.row_dir, self.col_dir, self.normal], axis=1)

    def slice_position(self, index: int) -> np.ndarray:
        return self.origin + index * self.slice_spacing * self.normal

    def index_to_patient(self, ijk: np.ndarray) -> np.ndarray:
        """Patient coordinates (mm) of (slice, row, col) indices, shape (..., 3)."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return (
            self.origin
            + ijk[..., 0:1] * self.slice_spacing * self.normal
            + ijk[..., 1:2] * self.pixel_spacing[0] * self.col_dir
            + ijk[..., 2:3] * self.pixel_spacing[1] * self.row_dir
        )

    def to_sitk(self) -> Any:
        """A SimpleITK image with the geometry ImageSeriesReader gives for the same files."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.ascontiguousarray(self.pixels, dtype=np.float32))
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetSpacing((float(self.pixel_spacing[1]), float(self.pixel_spacing[0]), float(self.slice_spacing)))
        image.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return image


@dataclass
class _Slice:
    pixels: np.ndarray
    dataset: Dataset
    frame: int | None
    position: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    spacing: tuple[float, float]


def load_series(paths: Sequence[Path]) -> SeriesVolume:
    """Decode the instances of one series into a volume sorted along the slice normal.

    One undecodable slice does not fail an otherwise usable series: while more than half of the instances
    decode, a slice whose pixels cannot be decoded but whose header places it becomes a blank slice (the
    model sees nothing there and the results label nothing there), and one that cannot even be placed is
    left out; each is named in ``SeriesVolume.dropped``. The decode error itself is raised when more fail."""
    if not paths:
        raise InconsistentSeriesError("series has no instances")
    slices: list[_Slice] = []
    failed: list[tuple[Path, SeriesDecodeError]] = []
    for path in paths:
        try:
            slices.extend(_read_instance(Path(path)))
        except SeriesDecodeError as exc:
            failed.append((Path(path), exc))
    if failed and (not slices or len(failed) * 2 >= len(paths)):
        raise failed[0][1]
    dropped = []
    for path, exc in failed:
        blank = _blank_slice(path, slices[0].pixels.shape)
        if blank is not None:
            slices.append(blank)
        dropped.append(f"{exc}; {'a blank slice takes its place' if blank is not None else 'left out'}")
    volume = _assemble(slices)
    volume.dropped = dropped
    return volume


def _blank_slice(path: Path, shape: tuple[int, ...]) -> _Slice | None:
    """A slice of zeros where an undecodable instance's header says it lies, or None when it cannot say."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if "PerFrameFunctionalGroupsSequence" in ds or (int(ds.Rows), int(ds.Columns)) != tuple(shape):
            return None
        return _single_frame(ds, np.zeros(shape, dtype=np.float32))
    except Exception:  # noqa: BLE001 - any header that cannot place the slice: leave the slice out
        return None


def resample_onto(moving: SeriesVolume, reference: SeriesVolume, order: int = 1) -> np.ndarray:
    """moving's pixels on reference's grid by patient geometry; 0 outside moving's field of view.

    order 1 is linear (images), order 0 nearest neighbour (label maps).
    """
    import SimpleITK as sitk

    interpolators = {0: sitk.sitkNearestNeighbor, 1: sitk.sitkLinear}
    if order not in interpolators:
        raise ValueError(f"order must be 0 or 1, got {order}")
    out = sitk.Resample(
        moving.to_sitk(), reference.to_sitk(), sitk.Transform(), interpolators[order], 0.0, sitk.sitkFloat32
    )
    return sitk.GetArrayFromImage(out).astype(np.float32, copy=False)


def _read_instance(path: Path) -> list[_Slice]:
    name = path.name
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many types for unreadable files
        raise SeriesDecodeError(f"{name}: not a readable DICOM file ({type(exc).__name__})") from exc
    if "PixelData" not in ds:
        raise SeriesDecodeError(f"{name}: has no pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise SeriesDecodeError(f"{name}: colour images are not MR magnitude images")
    try:
        array = ds.pixel_array
    except Exception as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        raise SeriesDecodeError(
            f"{name}: pixel data in transfer syntax {syntax} could not be decoded ({type(exc).__name__}: {exc})"
        ) from exc
    del ds.PixelData  # keep headers only; the pixels live in the volume
    try:
        if "PerFrameFunctionalGroupsSequence" in ds:
            return _enhanced_frames(ds, array)
        return [_single_frame(ds, array)]
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise SeriesDecodeError(f"{name}: geometry attributes missing or malformed ({exc})") from exc


def _rescale(array: np.ndarray, slope: Any, intercept: Any) -> np.ndarray:
    out = array.astype(np.float32)
    slope = 1.0 if slope is None else float(slope)
    intercept = 0.0 if intercept is None else float(intercept)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def _single_frame(ds: Dataset, array: np.ndarray) -> _Slice:
    if array.ndim != 2:
        raise ValueError(f"expected one frame, got an array of shape {array.shape}")
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    return _Slice(
        pixels=_rescale(array, ds.get("RescaleSlope"), ds.get("RescaleIntercept")),
        dataset=ds,
        frame=None,
        position=np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64),
        row_dir=iop[:3],
        col_dir=iop[3:],
        spacing=(float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
    )


def _functional(ds: Dataset, frame_item: Dataset, sequence: str) -> Dataset | None:
    """A functional group item for one frame: per-frame first, then shared."""
    if sequence in frame_item:
        return frame_item[sequence].value[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and sequence in shared[0]:
        return shared[0][sequence].value[0]
    return None


def _enhanced_frames(ds: Dataset, array: np.ndarray) -> list[_Slice]:
    frames = ds.PerFrameFunctionalGroupsSequence
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.shape[0] != len(frames):
        raise ValueError(f"{array.shape[0]} frames of pixel data but {len(frames)} per-frame items")
    out = []
    for i, item in enumerate(frames):
        position = _functional(ds, item, "PlanePositionSequence")
        orientation = _functional(ds, item, "PlaneOrientationSequence")
        measures = _functional(ds, item, "PixelMeasuresSequence")
        if position is None or orientation is None or measures is None:
            raise ValueError(f"frame {i + 1} lacks plane position, orientation or pixel measures")
        transform = _functional(ds, item, "PixelValueTransformationSequence")
        slope = transform.get("RescaleSlope") if transform is not None else None
        intercept = transform.get("RescaleIntercept") if transform is not None else None
        iop = np.asarray([float(v) for v in orientation.ImageOrientationPatient], dtype=np.float64)
        out.append(
            _Slice(
                pixels=_rescale(array[i], slope, intercept),
                dataset=ds,
                frame=i + 1,
                position=np.asarray([float(v) for v in position.ImagePositionPatient], dtype=np.float64),
                row_dir=iop[:3],
                col_dir=iop[3:],
                spacing=(float(measures.PixelSpacing[0]), float(measures.PixelSpacing[1])),
            )
        )
    return out


def _label(s: _Slice) -> str:
    name = Path(str(s.dataset.filename)).name if s.dataset.filename else str(s.dataset.SOPInstanceUID)
    return f"{name} frame {s.frame}" if s.frame is not None else name


def _assemble(slices: list[_Slice]) -> SeriesVolume:
    first = slices[0]
    for s in slices[1:]:
        if s.pixels.shape != first.pixels.shape:
            raise InconsistentSeriesError(
                f"{_label(s)}: size {s.pixels.shape} differs from {first.pixels.shape} of {_label(first)}"
            )
        if (
            np.abs(s.row_dir - first.row_dir).max() > ORIENTATION_TOLERANCE
            or np.abs(s.col_dir - first.col_dir).max() > ORIENTATION_TOLERANCE
        ):
            raise InconsistentSeriesError(f"{_label(s)}: orientation differs from {_label(first)}")
        if not np.allclose(s.spacing, first.spacing, rtol=1e-3, atol=1e-4):
            raise InconsistentSeriesError(f"{_label(s)}: pixel spacing differs from {_label(first)}")
    row_dir = first.row_dir / np.linalg.norm(first.row_dir)
    col_dir = first.col_dir / np.linalg.norm(first.col_dir)
    normal = np.cross(row_dir, col_dir)
    if not np.isfinite(normal).all() or np.linalg.norm(normal) < 0.5:
        raise InconsistentSeriesError(f"{_label(first)}: ImageOrientationPatient is degenerate")
    normal /= np.linalg.norm(normal)

    distances = np.array([float(s.position @ normal) for s in slices])
    order = np.argsort(distances, kind="stable")
    slices = [slices[i] for i in order]
    distances = distances[order]
    gaps = np.diff(distances)
    if gaps.size and gaps.min() < 1e-3:
        i = int(np.argmin(gaps))
        raise InconsistentSeriesError(
            f"{_label(slices[i + 1])}: same position as {_label(slices[i])} (several stacks in one series?)"
        )

    if len(slices) > 1:
        # As ITK's ImageSeriesReader: spacing from the first and last origins over n - 1.
        slice_spacing = float(np.linalg.norm(slices[-1].position - slices[0].position)) / (len(slices) - 1)
        mean_gap = float(gaps.mean())
        worst = int(np.argmax(np.abs(gaps - mean_gap)))
        if abs(gaps[worst] - mean_gap) > SPACING_TOLERANCE * mean_gap:
            raise InconsistentSeriesError(
                f"{_label(slices[worst + 1])}: slice gap {gaps[worst]:.2f} mm differs from the mean "
                f"{mean_gap:.2f} mm (missing slices?)"
            )
    else:
        ds = first.dataset
        slice_spacing = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)

    return SeriesVolume(
        pixels=np.stack([s.pixels for s in slices]).astype(np.float32, copy=False),
        datasets=[s.dataset for s in slices],
        origin=slices[0].position,
        row_dir=row_dir,
        col_dir=col_dir,
        normal=normal,
        pixel_spacing=first.spacing,
        slice_spacing=slice_spacing,
        frame_numbers=[s.frame for s in slices] if first.frame is not None else None,  # type: ignore[misc]
    )
