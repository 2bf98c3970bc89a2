"""Small MR studies written as real DICOM files, with the acquisition parameters series selection reads.

Used until (and besides) the synthetic generator: these tests need exact control of TR/TE/TI,
ScanningSequence, ImageType, orientation and transfer syntax, and nothing anatomical. 32x32 pixels keep
the files small so associations stay fast on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"

ORIENTATIONS = {
    "sagittal": [0.0, 1.0, 0.0, 0.0, 0.0, -1.0],
    "sagittal-tilted": [-0.0, 0.99999, 0.0044, -0.0021, 0.0, -0.99999],
    "axial": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    "coronal": [1.0, 0.0, 0.0, 0.0, 0.0, -1.0],
}


@dataclass
class SeriesSpec:
    description: str
    orientation: str = "sagittal"
    """A key of ORIENTATIONS, or "3plane" (sagittal, axial and coronal slices mixed)."""
    tr: float | None = 3500.0
    te: float | None = 100.0
    ti: float | None = None
    scanning_sequence: str = "SE"
    images: int = 6
    image_type: list[str] = field(default_factory=lambda: ["ORIGINAL", "PRIMARY", "M", "NONE"])
    modality: str = "MR"
    manufacturer: str = "ACME"
    series_number: int = 1
    rows: int = 32
    columns: int = 32


def sag_t2(n: int = 6, number: int = 3) -> SeriesSpec:
    return SeriesSpec("SAG T2 FSE", "sagittal-tilted", 3500.0, 102.0, None, "SE", n, series_number=number)


def sag_t1_flair(n: int = 6, number: int = 2) -> SeriesSpec:
    return SeriesSpec("Sag T1 FLAIR", "sagittal", 2200.0, 9.0, 860.0, "IR", n, series_number=number)


def sag_stir(n: int = 6, number: int = 4) -> SeriesSpec:
    return SeriesSpec("SAG STIR", "sagittal", 4000.0, 60.0, 150.0, "IR", n, series_number=number)


def ax_t2(n: int = 6, number: int = 5) -> SeriesSpec:
    return SeriesSpec("AX T2", "axial", 4200.0, 95.0, None, "SE", n, series_number=number)


def localizer(n: int = 3, number: int = 1) -> SeriesSpec:
    return SeriesSpec(
        "3-plane loc",
        "3plane",
        7.0,
        2.0,
        None,
        "GR",
        n,
        ["ORIGINAL", "PRIMARY", "OTHER"],
        series_number=number,
    )


def make_instance(study_uid: str, series_uid: str, spec: SeriesSpec, index: int, seed: int = 0) -> Dataset:
    orientation = spec.orientation
    if orientation == "3plane":
        orientation = ("sagittal", "axial", "coronal")[index % 3]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"  # pydicom converts it while reading: not a raw element
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = "SYNTHETIC^TEST"
    ds.PatientID = "SYNTH-0001"
    ds.Modality = spec.modality
    ds.Manufacturer = spec.manufacturer
    ds.SeriesDescription = spec.description
    ds.SeriesNumber = spec.series_number
    ds.InstanceNumber = index + 1
    ds.ImageType = spec.image_type
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, "frame"])
    ds.ImageOrientationPatient = ORIENTATIONS[orientation]
    ds.ImagePositionPatient = [float(-20 + 4 * index), -100.0, 120.0]
    ds.PixelSpacing = [0.8, 0.8]
    ds.SliceThickness = 4.0
    if spec.tr is not None:
        ds.RepetitionTime = spec.tr
    if spec.te is not None:
        ds.EchoTime = spec.te
    if spec.ti is not None:
        ds.InversionTime = spec.ti
    ds.ScanningSequence = spec.scanning_sequence
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(seed * 1000 + index)
    ds.PixelData = rng.integers(0, 4000, (spec.rows, spec.columns), dtype=np.uint16).tobytes()
    return ds


def write_study(
    out_dir: Path, specs: list[SeriesSpec], study_uid: str | None = None, seed: int = 0
) -> list[Path]:
    """Write each series to out_dir/<series number>/IM_<n>.dcm; returns the files in sending order."""
    study_uid = study_uid or generate_uid()
    files = []
    for spec in specs:
        series_uid = generate_uid()
        series_dir = Path(out_dir) / f"{spec.series_number:02d}"
        series_dir.mkdir(parents=True, exist_ok=True)
        for i in range(spec.images):
            ds = make_instance(study_uid, series_uid, spec, i, seed)
            path = series_dir / f"IM_{i + 1:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    return files


def make_sr(study_uid: str) -> Dataset:
    """A Basic Text SR: a non-image object PACS send along with a study."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.SeriesNumber = 99
    return ds
