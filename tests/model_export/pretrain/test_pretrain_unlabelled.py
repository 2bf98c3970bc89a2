"""Unlabelled readers take what archives hold: mixed series, missing tags, compressed syntaxes, broken files."""

from __future__ import annotations

import pydicom
import pytest

from model_export.pretrain.unlabelled import discover_unlabelled, load_unlabelled
from service.errors import ConfigError
from tests.conftest import require_tool


def test_archive_study_yields_its_sagittal_t2_and_t1_and_names_the_files_it_skips(archive):
    require_tool("dcmcjpls")
    t2_file = sorted((archive / "export" / "patient_a" / "sag_t2").iterdir())[0]
    assert pydicom.dcmread(t2_file).file_meta.TransferSyntaxUID.is_compressed  # JPEG-LS really on disk
    studies, skipped = load_unlabelled(archive)
    by_name = {s.name: s for s in studies}
    assert set(by_name) == {"export_patient_a", "nifti_case_t2"}  # labels.nii.gz is not a study
    dicom = by_name["export_patient_a"]
    assert dicom.t2 is not None and dicom.t1 is not None
    assert dicom.t1.shape == dicom.t2.shape  # T1 resampled onto the T2 grid
    assert dicom.t2.shape[0] >= 9 and dicom.t2.max() > 0
    assert dicom.study_uid == str(pydicom.dcmread(t2_file, stop_before_pixels=True).StudyInstanceUID)
    reasons = {s.path: s.reason for s in skipped}
    assert "export/patient_a/README" in reasons  # not DICOM: reported, not fatal
    assert any(p.endswith("IM_9999.dcm") for p in reasons), reasons  # truncated pixel data
    assert not any("notes.txt" in p for p in reasons)  # text files are not images: silently ignored
    assert "label map" in reasons["spider_like_mask"]  # a mask under an image-like name
    volume = by_name["nifti_case_t2"]
    assert volume.t2.shape == (6, 40, 32) and volume.t1 is None


def test_a_study_without_sagittal_series_is_skipped_with_its_reason(archive, tmp_path):
    import shutil

    shutil.copytree(archive / "export" / "patient_a" / "ax_t2", tmp_path / "axial_only" / "ax_t2")
    shutil.copytree(archive / "nifti_case", tmp_path / "nifti_case")
    studies, skipped = load_unlabelled(tmp_path)
    assert [s.name for s in studies] == ["nifti_case_t2"]
    assert any(s.path.startswith("axial_only") and "no sagittal T1 or T2" in s.reason for s in skipped), skipped


def test_generated_studies_are_read_with_labels_ignored(report_studies):
    found = discover_unlabelled(report_studies)
    assert [name for name, _ in found.loaders] == sorted(p.name for p in report_studies.iterdir())
    assert all(name in found.study_uids for name, _ in found.loaders)


def test_a_folder_without_readable_studies_is_an_error_naming_it(tmp_path):
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(ConfigError, match=str(tmp_path)):
        load_unlabelled(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_unlabelled(tmp_path / "missing")
