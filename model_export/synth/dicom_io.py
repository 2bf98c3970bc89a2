"""Writing a synthetic series as real MR Image Storage instances, one file per slice.

UIDs come from pydicom's ``generate_uid`` with a seeded entropy source, so a seed always gives the same
study, series and instance UIDs. Decimal strings are written with at most 16 characters, and the
geometry handed to the label writer is parsed back from exactly those strings, so a NIfTI label map
and ImageSeriesReader's view of the DICOM series agree to the last written digit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from .geometry import SliceStack
from .protocols import Protocol

UID_NAMESPACE = "lumbar-ai-synth"


def uid(seed: int, *parts: object) -> str:
    return str(generate_uid(entropy_srcs=[UID_NAMESPACE, str(seed), *map(str, parts)]))


def ds_str(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) for a float."""
    text = f"{value:.10g}"
    if len(text) > 16:
        text = f"{value:.8g}"
    return "0" if text in ("-0", "0") else text


def rounded(values: np.ndarray) -> np.ndarray:
    return np.array([float(ds_str(float(v))) for v in np.ravel(values)]).reshape(np.shape(values))


def quantise(stack: SliceStack) -> SliceStack:
    """The stack as DICOM will state it: directions and centres rounded to decimal strings."""
    row, col = rounded(stack.row_dir), rounded(stack.col_dir)
    spacing = float(ds_str(stack.pixel_spacing))
    pos = rounded(SliceStack(stack.rows, stack.cols, spacing, row, col, stack.centres, stack.thickness).positions())
    offset = row * spacing * (stack.cols - 1) / 2 + col * spacing * (stack.rows - 1) / 2
    return SliceStack(stack.rows, stack.cols, spacing, row, col, pos + offset, stack.thickness,
                      list(stack.instance_order))


@dataclass(frozen=True)
class StudyInfo:
    seed: int
    study_uid: str
    frame_uid: str
    patient_name: str
    patient_id: str
    study_date: str
    study_time: str
    accession: str
    patient_sex: str
    patient_age: str
    field_strength: float
    manufacturer: str
    model: str

    @classmethod
    def draw(cls, seed: int, rng: np.random.Generator) -> StudyInfo:
        day = 1 + int(rng.integers(0, 28))
        month = 1 + int(rng.integers(0, 12))
        vendor = [("GE MEDICAL SYSTEMS", "SIGNA (synthetic)"), ("SIEMENS", "Aera (synthetic)"),
                  ("Philips Medical Systems", "Ingenia (synthetic)")][int(rng.integers(3))]
        return cls(seed=seed, study_uid=uid(seed, "study"), frame_uid=uid(seed, "frame"),
                   patient_name=f"SYNTHETIC^STUDY{seed:05d}", patient_id=f"SYN-{seed:05d}",
                   study_date=f"2026{month:02d}{day:02d}", study_time=f"{8 + int(rng.integers(0, 10)):02d}1500",
                   accession=f"SYN{seed:07d}", patient_sex=str(rng.choice(["F", "M"])),
                   patient_age=f"{int(rng.integers(25, 85)):03d}Y", field_strength=float(rng.choice([1.5, 3.0])),
                   manufacturer=vendor[0], model=vendor[1])


def _base_dataset(study: StudyInfo, series_uid: str, series_number: int, protocol: Protocol) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(protocol.image_type)
    ds.SOPClassUID = MRImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = study.study_date
    ds.StudyTime = study.study_time
    ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = f"{study.study_time[:2]}{10 + series_number:02d}00"
    ds.AccessionNumber = study.accession
    ds.Modality = "MR"
    ds.Manufacturer = study.manufacturer
    ds.ManufacturerModelName = study.model
    ds.InstitutionName = "Synthetic Data"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "MR LUMBAR SPINE (SYNTHETIC)"
    ds.SeriesDescription = protocol.description
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = study.patient_sex
    ds.PatientAge = study.patient_age
    ds.BodyPartExamined = "LSPINE"
    ds.ScanningSequence = protocol.scanning_sequence.replace("SE\\IR", "SE\\IR").split("\\")
    ds.SequenceVariant = protocol.sequence_variant.split("\\")
    ds.ScanOptions = protocol.scan_options.split("\\") if protocol.scan_options else ""
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = protocol.sequence_name
    ds.AngioFlag = "N"
    ds.RepetitionTime = ds_str(protocol.repetition_time)
    ds.EchoTime = ds_str(protocol.echo_time)
    if protocol.inversion_time is not None:
        ds.InversionTime = ds_str(protocol.inversion_time)
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = ds_str(42.577478 * study.field_strength)
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = ds_str(study.field_strength)
    ds.EchoTrainLength = protocol.echo_train_length
    ds.FlipAngle = ds_str(protocol.flip_angle)
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"{study.seed % 100000}"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = study.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    return ds


def _encode(ds: Dataset) -> dict[int, bytes]:
    """Every element of ``ds`` encoded on its own in Explicit VR Little Endian, keyed by tag: a file is
    then the concatenation in tag order, so elements shared by a series are encoded once, not per file."""
    out = {}
    for elem in ds:
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_data_element(fp, elem, ds.get("SpecificCharacterSet"))
        out[int(elem.tag)] = fp.getvalue()
    return out


def _short(tag: int, vr: str, value: str) -> bytes:
    """One text element with a 16-bit length (Explicit VR Little Endian), padded to an even length as
    pydicom pads it: UI with a NUL, other text with a space. For the few elements that differ per file."""
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode("ascii"), len(raw)) + raw


def _preamble_and_meta(instance_uid: str) -> bytes:
    """Preamble, "DICM" and File Meta Information, as ``save_as(enforce_file_format=True)`` writes them."""
    body = (struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\0\1"
            + _short(0x00020002, "UI", MRImageStorage)
            + _short(0x00020003, "UI", instance_uid)
            + _short(0x00020010, "UI", ExplicitVRLittleEndian)
            + _short(0x00020012, "UI", PYDICOM_IMPLEMENTATION_UID)
            + _short(0x00020013, "SH", f"PYDICOM {pydicom.__version__}"[:16]))
    return b"\0" * 128 + b"DICM" + struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body)) + body


def _pixel_data_header(nbytes: int) -> bytes:
    """(7FE0,0010) Pixel Data, VR OW, 32-bit length: its value (the slice's bytes) is written straight after."""
    return struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, nbytes)


def write_series(folder: Path, study: StudyInfo, series_uid: str, series_number: int, protocol: Protocol,
                 stacks: list[SliceStack], pixels: list[np.ndarray], name: str) -> list[Path]:
    """Write one series; ``stacks`` has one entry per orientation block (three for a 3-plane localizer).

    ``pixels[i]`` is (slices, rows, cols) uint16 in the sorted order of ``stacks[i]``. Each block's
    common elements are encoded once by pydicom; per file only the file meta and the four elements that
    differ (SOP Instance UID, Instance Number, Image Position, Slice Location) are encoded, by hand, and
    the pixel bytes are written as they are. The files are byte for byte what pydicom's ``save_as``
    writes (a test checks this); building and saving a Dataset per file cost four times as much.
    """
    folder.mkdir(parents=True, exist_ok=True)
    base = _base_dataset(study, series_uid, series_number, protocol)
    written: list[Path] = []
    instance = 0
    for block, (stack, px) in enumerate(zip(stacks, pixels, strict=True)):
        q = quantise(stack)
        pos = q.positions()
        normal = q.normal
        hi = int(px.max()) if px.size else 1
        ds = Dataset()
        ds.update(base)
        ds.ImageOrientationPatient = [ds_str(v) for v in q.orientation()]
        ds.SliceThickness = ds_str(stack.thickness)
        ds.SpacingBetweenSlices = ds_str(abs(q.slice_spacing))
        ds.PixelSpacing = [ds_str(q.pixel_spacing), ds_str(q.pixel_spacing)]
        ds.Rows, ds.Columns = stack.rows, stack.cols
        ds.AcquisitionMatrix = [0, stack.cols, stack.rows, 0]
        ds.InPlanePhaseEncodingDirection = "ROW"
        ds.WindowCenter = ds_str(hi * 0.45)
        ds.WindowWidth = ds_str(max(hi * 0.9, 1))
        encoded = _encode(ds)
        px = px.astype("<u2", copy=False)
        for order_index in range(stack.num_slices):
            k = stack.instance_order[order_index] if stack.instance_order else order_index
            instance += 1
            sop_uid = uid(study.seed, name, block, k)
            elements = {**encoded,
                        0x00080018: _short(0x00080018, "UI", sop_uid),
                        0x00200013: _short(0x00200013, "IS", str(instance)),
                        0x00200032: _short(0x00200032, "DS", "\\".join(ds_str(v) for v in pos[k])),
                        0x00201041: _short(0x00201041, "DS", ds_str(float(np.dot(pos[k], normal))))}
            plane = np.ascontiguousarray(px[k])
            path = folder / f"IM_{instance:04d}.dcm"
            with path.open("wb") as f:
                f.write(_preamble_and_meta(sop_uid))
                f.write(b"".join(elements[tag] for tag in sorted(elements)))
                f.write(_pixel_data_header(plane.nbytes))
                f.write(memoryview(plane).cast("B"))
            written.append(path)
    return written
