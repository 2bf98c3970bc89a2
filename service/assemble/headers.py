"""What series selection needs from one instance, read from its header only (never its pixel data).

Classic MR Image Storage keeps the acquisition parameters at the top level; Enhanced MR (one multi-frame
instance per series) keeps them in the shared or first per-frame functional groups. Both end up in the
same InstanceHeader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from service.errors import AssembleError


@dataclass(frozen=True)
class InstanceHeader:
    sop_uid: str
    series_uid: str
    size: int
    modality: str = ""
    manufacturer: str = ""
    sop_class_uid: str = ""
    series_description: str = ""
    series_number: int | None = None
    image_type: tuple[str, ...] = ()
    orientation: tuple[float, ...] | None = None
    """ImageOrientationPatient (row and column direction cosines), or None."""
    repetition_time: float | None = None
    echo_time: float | None = None
    inversion_time: float | None = None
    scanning_sequence: tuple[str, ...] = ()
    frames: int = 1
    has_pixels: bool = False

    @property
    def slice_normal(self) -> np.ndarray | None:
        if self.orientation is None or len(self.orientation) != 6:
            return None
        normal = np.cross(np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:]))
        length = float(np.linalg.norm(normal))
        return normal / length if length > 1e-6 else None


def read_header(path: Path, series_uid: str, sop_uid: str, size: int) -> InstanceHeader:
    """Header of one spooled instance; AssembleError when the file cannot be read (it was checked on receipt)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise AssembleError(f"cannot read header of instance {sop_uid}: {type(exc).__name__}") from exc
    return header_from_dataset(ds, series_uid, sop_uid, size)


def header_from_dataset(ds: Dataset, series_uid: str, sop_uid: str, size: int) -> InstanceHeader:
    groups = _functional_groups(ds)
    return InstanceHeader(
        sop_uid=sop_uid,
        series_uid=series_uid,
        size=size,
        modality=str(ds.get("Modality", "") or "").upper(),
        manufacturer=str(ds.get("Manufacturer", "") or ""),
        sop_class_uid=str(ds.get("SOPClassUID", "") or ""),
        series_description=str(ds.get("SeriesDescription", "") or "").strip(),
        series_number=_int(ds.get("SeriesNumber")),
        image_type=tuple(str(v).upper() for v in _multi(ds.get("ImageType"))),
        orientation=_orientation(ds, groups),
        repetition_time=_float(_find(ds, groups, "RepetitionTime", "MRTimingAndRelatedParametersSequence")),
        echo_time=_float(
            ds.get("EchoTime")
            if "EchoTime" in ds
            else _find(ds, groups, "EffectiveEchoTime", "MREchoSequence")
        ),
        inversion_time=_inversion_time(ds, groups),
        scanning_sequence=tuple(str(v).upper() for v in _multi(ds.get("ScanningSequence"))),
        frames=max(1, _int(ds.get("NumberOfFrames")) or 1),
        has_pixels="Rows" in ds and "Columns" in ds,  # pixels themselves are never read here
    )


def _functional_groups(ds: Dataset) -> list[Dataset]:
    """Shared functional groups first, then the first frame's: where Enhanced MR keeps its parameters."""
    groups = []
    for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = ds.get(keyword)
        if seq:
            groups.append(seq[0])
    return groups


def _find(ds: Dataset, groups: list[Dataset], keyword: str, macro: str) -> object:
    if keyword in ds:
        return ds.get(keyword)
    for group in groups:
        seq = group.get(macro)
        if seq and keyword in seq[0]:
            return seq[0].get(keyword)
    return None


def _orientation(ds: Dataset, groups: list[Dataset]) -> tuple[float, ...] | None:
    value = ds.get("ImageOrientationPatient")
    if value is None:
        value = _find(ds, groups, "ImageOrientationPatient", "PlaneOrientationSequence")
    try:
        values = tuple(float(v) for v in _multi(value))
    except (TypeError, ValueError):
        return None
    return values if len(values) == 6 else None


def _inversion_time(ds: Dataset, groups: list[Dataset]) -> float | None:
    if "InversionTime" in ds:
        return _float(ds.get("InversionTime"))
    times = _find(ds, groups, "InversionTimes", "MRModifierSequence")
    values = list(_multi(times))
    return _float(values[0]) if values else None


def _multi(value: object) -> list:
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


def _float(value: object) -> float | None:
    values = _multi(value)
    if not values:
        return None
    try:
        return float(values[0])
    except (TypeError, ValueError):
        return None


def _int(value: object) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
