"""Small MR series written as real DICOM files for tests of decoding, encoding, delivery and the worker.

Independent of the synthetic study generator on purpose: these tests need exact control of geometry,
instance order, transfer syntax and the multi-frame form, and nothing anatomical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
SAGITTAL = ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0))
"""Row direction anterior->posterior, column direction head->feet: a usual sagittal orientation."""


@dataclass(frozen=True)
class Geometry:
    origin: tuple[float, float, float] = (-20.0, -100.0, 120.0)
    row_dir: tuple[float, float, float] = SAGITTAL[0]
    col_dir: tuple[float, float, float] = SAGITTAL[1]
    pixel_spacing: tuple[float, float] = (0.8, 0.8)
    slice_spacing: float = 4.0

    @property
    def normal(self) -> np.ndarray:
        return np.cross(np.asarray(self.row_dir), np.asarray(self.col_dir))

    def position(self, k: int) -> np.ndarray:
        return np.asarray(self.origin) + k * self.slice_spacing * self.normal

    def index_to_patient(self, k: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return (
            np.asarray(self.origin)[:, None]
            + np.outer(self.normal, k * self.slice_spacing)
            + np.outer(np.asarray(self.col_dir), r * self.pixel_spacing[0])
            + np.outer(np.asarray(self.row_dir), c * self.pixel_spacing[1])
        )


def oblique(angle_deg: float = 7.0) -> Geometry:
    """A sagittal plane tilted about two axes, as real scans are."""
    a = np.deg2rad(angle_deg)
    rot_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    b = np.deg2rad(angle_deg / 2)
    rot_y = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rot = rot_y @ rot_z
    row = rot @ np.asarray(SAGITTAL[0])
    col = rot @ np.asarray(SAGITTAL[1])
    return Geometry(row_dir=tuple(row.round(8)), col_dir=tuple(col.round(8)))


def phantom(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """uint16 volume with structure in every direction, so a flipped or shifted slice shows."""
    rng = np.random.default_rng(seed)
    n, rows, cols = shape
    k, r, c = np.meshgrid(np.arange(n), np.arange(rows), np.arange(cols), indexing="ij")
    vol = 200 + 40 * k + 3 * r + 2 * c + 150 * np.sin(r / 5.0) * np.cos(c / 7.0)
    vol += rng.integers(0, 20, size=shape)
    return np.clip(vol, 0, 4000).astype(np.uint16)


def _base_dataset(
    study_uid: str, series_uid: str, frame_uid: str, description: str, series_number: int
) -> Dataset:
    ds = Dataset()
    ds.PatientName = "SYNTHETIC^TEST"
    ds.PatientID = "SYNTH-0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC0001"
    ds.ReferringPhysicianName = ""
    ds.Modality = "MR"
    ds.Manufacturer = "tests"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.BodyPartExamined = "LSPINE"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


def _file_meta(sop_class: str, sop_uid: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _save(ds: Dataset, path: Path, transfer_syntax: str) -> None:
    """Write with the transfer syntax; compressed ones through pydicom's encoders."""
    if transfer_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(transfer_syntax, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)


def write_series(
    out_dir: Path,
    volume: np.ndarray,
    geometry: Geometry = Geometry(),
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_uid: str | None = None,
    description: str = "T2 SAG FSE",
    series_number: int = 2,
    repetition_time: float = 3500.0,
    echo_time: float = 100.0,
    instance_order: str = "ascending",
    transfer_syntax: str = ExplicitVRLittleEndian,
    rescale: tuple[float, float] | None = None,
    seed: int = 0,
) -> list[Path]:
    """One single-frame MR instance per slice; volume[k] lies at geometry.position(k).

    instance_order sets InstanceNumber and file order: ascending, reversed or shuffled.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    n = volume.shape[0]
    order = list(range(n))
    if instance_order == "reversed":
        order.reverse()
    elif instance_order == "shuffled":
        order = [int(i) for i in np.random.default_rng(seed).permutation(n)]
    paths = []
    for number, k in enumerate(order, start=1):
        sop_uid = generate_uid(entropy_srcs=[series_uid, str(k)])
        ds = _base_dataset(study_uid, series_uid, frame_uid, description, series_number)
        ds.file_meta = _file_meta(MR_IMAGE_STORAGE, sop_uid, transfer_syntax)
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.InstanceNumber = number
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "SK"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = repetition_time
        ds.EchoTime = echo_time
        ds.EchoTrainLength = 16
        ds.MagneticFieldStrength = 1.5
        ds.SliceThickness = abs(geometry.slice_spacing)
        ds.SpacingBetweenSlices = abs(geometry.slice_spacing)
        ds.ImagePositionPatient = [round(float(v), 6) for v in geometry.position(k)]
        ds.ImageOrientationPatient = [float(v) for v in (*geometry.row_dir, *geometry.col_dir)]
        ds.SliceLocation = round(float(geometry.position(k) @ geometry.normal), 6)
        ds.PixelSpacing = list(geometry.pixel_spacing)
        ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[2])
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
            ds.RescaleType = "US"
        ds.PixelData = np.ascontiguousarray(volume[k], dtype=np.uint16).tobytes()
        path = out_dir / f"{sop_uid}.dcm"
        _save(ds, path, transfer_syntax)
        paths.append(path)
    return paths


def write_enhanced(
    out_dir: Path,
    volume: np.ndarray,
    geometry: Geometry = Geometry(),
    *,
    frame_order: Sequence[int] | None = None,
    rescale: tuple[float, float] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Path:
    """One Enhanced MR instance holding all slices as frames (in frame_order), geometry per frame."""
    out_dir.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    sop_uid = generate_uid()
    ds = _base_dataset(generate_uid(), series_uid, generate_uid(), "t2_tse_sag_384", 3)
    ds.file_meta = _file_meta(ENHANCED_MR_IMAGE_STORAGE, sop_uid, transfer_syntax)
    ds.SOPClassUID = ENHANCED_MR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.InstanceNumber = 1
    order = list(frame_order) if frame_order is not None else list(range(volume.shape[0]))
    ds.NumberOfFrames = len(order)
    ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[2])
    measures = Dataset()
    measures.PixelSpacing = list(geometry.pixel_spacing)
    measures.SliceThickness = abs(geometry.slice_spacing)
    orientation = Dataset()
    orientation.ImageOrientationPatient = [float(v) for v in (*geometry.row_dir, *geometry.col_dir)]
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    if rescale is not None:
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = rescale
        transform.RescaleType = "US"
        shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for k in order:
        position = Dataset()
        position.ImagePositionPatient = [round(float(v), 6) for v in geometry.position(k)]
        item = Dataset()
        item.PlanePositionSequence = DicomSequence([position])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = np.ascontiguousarray(volume[order], dtype=np.uint16).tobytes()
    path = out_dir / f"{sop_uid}.dcm"
    _save(ds, path, transfer_syntax)
    return path
