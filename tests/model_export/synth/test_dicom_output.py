"""The written study is real DICOM: deterministic, valid for dciodvfy, readable by pydicom and SimpleITK."""

from __future__ import annotations

import json
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import MRImageStorage

from model_export.synth.geometry import plan_sagittal
from model_export.synth.spine import procedural_spine
from tests.conftest import require_tool

from .conftest import SEED, SMALL, generate_study


def _files(study: Path) -> list[Path]:
    return sorted(study.glob("dicom/*/*.dcm"))


def test_same_seed_gives_identical_pixels_uids_and_labels(procedural_study: Path, procedural_study_again: Path
                                                          ) -> None:
    a, b = _files(procedural_study), _files(procedural_study_again)
    assert [p.relative_to(procedural_study) for p in a] == [p.relative_to(procedural_study_again) for p in b]
    for fa, fb in zip(a, b, strict=True):
        da, db = pydicom.dcmread(fa), pydicom.dcmread(fb)
        assert da.SOPInstanceUID == db.SOPInstanceUID
        assert da.SeriesInstanceUID == db.SeriesInstanceUID
        assert da.PixelData == db.PixelData
    for name in ("sag_t2", "sag_t1"):
        la = sitk.GetArrayFromImage(sitk.ReadImage(str(procedural_study / "labels" / f"{name}.nii.gz")))
        lb = sitk.GetArrayFromImage(sitk.ReadImage(str(procedural_study_again / "labels" / f"{name}.nii.gz")))
        assert np.array_equal(la, lb)
    ta = json.loads((procedural_study / "truth.json").read_text())
    assert ta == json.loads((procedural_study_again / "truth.json").read_text())


def test_another_seed_gives_other_uids(tmp_path: Path, procedural_study: Path) -> None:
    truth = generate_study(tmp_path / "other", SEED + 1, SMALL)
    first = json.loads((procedural_study / "truth.json").read_text())
    assert truth.study_instance_uid != first["study_instance_uid"]
    assert truth.series["sag_t2"]["series_instance_uid"] != first["series"]["sag_t2"]["series_instance_uid"]


def test_every_instance_round_trips_through_pydicom(procedural_study: Path) -> None:
    uids = set()
    for path in _files(procedural_study):
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == MRImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.PatientName.family_name == "SYNTHETIC" and ds.PatientID.startswith("SYN-")
        assert len(ds.ImageOrientationPatient) == 6 and len(ds.ImagePositionPatient) == 3
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        again = pydicom.dcmread(BytesIO(buf.getvalue()))
        assert again.PixelData == ds.PixelData and again.ImagePositionPatient == ds.ImagePositionPatient
        uids.add(ds.SOPInstanceUID)
    assert len(uids) == len(_files(procedural_study))


def test_files_are_byte_for_byte_what_pydicom_writes(procedural_study: Path) -> None:
    """write_series assembles files from elements encoded once per series; pydicom's own save_as of the
    same dataset must give exactly the same bytes (preamble, file meta, element order, padding)."""
    for series in sorted((procedural_study / "dicom").iterdir()):
        for path in sorted(series.glob("*.dcm"))[:2]:
            buf = BytesIO()
            pydicom.dcmread(path).save_as(buf, enforce_file_format=True)
            assert buf.getvalue() == path.read_bytes(), path


def test_dciodvfy_reports_no_error_on_any_series(procedural_study: Path) -> None:
    tool = require_tool("dciodvfy")
    for series in sorted((procedural_study / "dicom").iterdir()):
        for path in sorted(series.glob("*.dcm"))[:3]:
            result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
            errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
            assert not errors, f"{path}: {errors}"


def test_sagittal_acquisition_parameters_are_physically_plausible(procedural_study: Path) -> None:
    t2 = pydicom.dcmread(next((procedural_study / "dicom" / "sag_t2").glob("*.dcm")))
    t1 = pydicom.dcmread(next((procedural_study / "dicom" / "sag_t1").glob("*.dcm")))
    assert 3000 <= float(t2.RepetitionTime) <= 5000 and 80 <= float(t2.EchoTime) <= 120
    assert float(t1.EchoTime) < 40
    if "IR" in t1.ScanningSequence:
        assert 700 <= float(t1.InversionTime) <= 900 and 2000 <= float(t1.RepetitionTime) <= 2500
    normal = np.cross(np.array(t2.ImageOrientationPatient[:3], float), np.array(t2.ImageOrientationPatient[3:], float))
    assert abs(normal[0]) > 0.99  # sagittal: the slice normal runs left-right


def test_label_maps_have_the_geometry_imageseriesreader_gives(procedural_study: Path) -> None:
    for name in ("sag_t2", "sag_t1"):
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(procedural_study / "dicom" / name)))
        image = reader.Execute()
        label = sitk.ReadImage(str(procedural_study / "labels" / f"{name}.nii.gz"))
        assert label.GetPixelID() == sitk.sitkUInt8
        assert image.GetSize() == label.GetSize()
        assert np.allclose(image.GetOrigin(), label.GetOrigin(), atol=1e-3)
        assert np.allclose(image.GetSpacing(), label.GetSpacing(), atol=1e-4)
        assert np.allclose(image.GetDirection(), label.GetDirection(), atol=1e-4)
        assert sitk.GetArrayFromImage(label).max() <= 19


def test_instance_numbers_do_not_always_follow_position() -> None:
    """Across seeds both slice orders occur, so readers must sort by position, not InstanceNumber."""
    orders = set()
    for seed in range(8):
        rng = np.random.default_rng(seed)
        spine = procedural_spine(rng, 0.0)
        for stack in plan_sagittal(spine, SMALL, rng):
            orders.add(stack.instance_order[0] < stack.instance_order[1])
    assert orders == {True, False}
