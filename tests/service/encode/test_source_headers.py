"""Results from any source study the listener accepts: missing Type 2 attributes, refused values, character
sets, private tags, implicit VR, Enhanced MR, oblique and mirrored planes, and real files' headers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian

from service.encode.bundle import encode_study
from service.encode.results import FILE_NAMES
from service.encode.source_header import COPIED_ATTRIBUTES, conform_source_headers
from service.infer.postprocess import postprocess
from service.infer.series import load_series
from service.ontology import DEFAULT_ONTOLOGY as ONT
from tests.service.encode.conftest import CARD, SHAPE, dciodvfy_errors, finding_probs, make_case
from tests.service.encode.dicom_factory import Geometry, phantom, write_series
from tests.service.encode.label_factory import CANONICAL, spine

PATIENT_NAME = "SYNTHETIC^TEST"


def test_absent_type2_attributes_become_empty_without_a_warning():
    ds = Dataset()
    ds.PatientID = "P1"
    assert conform_source_headers([ds]) == []
    for keyword in COPIED_ATTRIBUTES:
        assert keyword in ds
    assert ds.PatientID == "P1" and ds.AccessionNumber == "" and ds.PatientSex == ""


def test_refused_values_become_empty_with_a_warning_naming_the_keyword_not_the_value():
    ds = Dataset()
    ds.PatientSex = "0000"
    ds.StudyDate = "20261345"
    ds.StudyID = "STUDY-ID-LONGER-THAN-16"
    ds.PatientName = "DOE^JANE"
    warnings = conform_source_headers([ds, ds])
    assert [w.split()[2] for w in warnings] == ["PatientSex", "StudyID", "StudyDate"]
    assert not any("0000" in w or "20261345" in w or "DOE" in w for w in warnings)
    assert ds.PatientSex == "" and ds.StudyDate == "" and ds.StudyID == ""
    assert ds.PatientName == "DOE^JANE"


def test_a_family_name_alone_gains_its_caret_so_highdicom_logs_no_name():
    ds = Dataset()
    ds.PatientName = "ANONYMOUS"
    conform_source_headers([ds])
    assert str(ds.PatientName) == "ANONYMOUS^"


def _strip_type2(ds: Dataset) -> None:
    for keyword in COPIED_ATTRIBUTES:
        if keyword in ds:
            delattr(ds, keyword)


def _refused_values(ds: Dataset) -> None:
    ds.PatientSex = "0000"
    ds.PatientBirthDate = "19xx0101"
    ds.StudyTime = "25:61"
    ds.AccessionNumber = "A" * 20


def _charset(charset: str | list[str], name: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        ds.ReferringPhysicianName = name
    return change


def _private_tags(ds: Dataset) -> None:
    block = ds.private_block(0x0029, "LUMBAR TEST PRIVATE", create=True)
    block.add_new(0x10, "LO", "private text")
    item = Dataset()
    item.add_new(0x00100020, "LO", "NESTED")
    block.add_new(0x11, "SQ", [item])
    ds.add_new(0x00431001, "UN", b"\x01\x02\x03\x04")


def _real_header(file_name: str) -> Callable[[Dataset], None]:
    """The Patient and General Study attributes and the private elements of one of pydicom's real files."""
    source = pydicom.dcmread(get_testdata_file(file_name), stop_before_pixels=True)

    def change(ds: Dataset) -> None:
        for element in source:
            if element.tag.group in (0x0008, 0x0010, 0x0032) and element.keyword in (
                    *COPIED_ATTRIBUTES, "SpecificCharacterSet", "StudyDescription", "InstitutionName"):
                ds[element.tag] = element
            elif element.tag.is_private and element.VR != "SQ":
                ds[element.tag] = element
    return change


HEADER_VARIANTS: dict[str, Callable[[Dataset], None]] = {
    "type2-absent": _strip_type2,
    "refused-values": _refused_values,
    "latin1": _charset("ISO_IR 100", "Müller^Jürgen"),
    "utf8": _charset("ISO_IR 192", "Ωμέγα^Ψυχή"),
    "japanese-iso2022": _charset(["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    "private-tags": _private_tags,
    "pydicom-MR_small": _real_header("MR_small.dcm"),
    "pydicom-CT_small": _real_header("CT_small.dcm"),
    "pydicom-liver": _real_header("liver_1frame.dcm"),
}


def _rewrite(paths: list[Path], change: Callable[[Dataset], None]) -> None:
    for path in paths:
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)


def _encode_and_check(tmp_path: Path, paths: list[Path], case_context) -> tuple[dict, list[str]]:
    reference = load_series(paths)
    result = postprocess(spine(CANONICAL, reference.shape), finding_probs(), ONT, CARD["finding_thresholds"],
                         reference)
    bundle = encode_study(reference=reference, other=None, t2_series_uid=reference.series_uid,
                          t1_series_uid=None, result=result, ontology=ONT, context=case_context,
                          seg_type="BINARY", timings={})
    written = {}
    for kind in ("seg", "sr", "preview_dcm"):
        out = tmp_path / "out" / FILE_NAMES[kind]
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(bundle.files[kind])
        assert dciodvfy_errors(out) == [], kind
        written[kind] = pydicom.dcmread(out)
    return written, bundle.warnings


@pytest.mark.parametrize("variant", sorted(HEADER_VARIANTS))
def test_results_pass_dciodvfy_for_every_source_header_variant(tmp_path, variant, caplog):
    case = make_case(tmp_path / "src")
    _rewrite(case.paths, HEADER_VARIANTS[variant])
    expected = pydicom.dcmread(case.paths[0])
    with caplog.at_level(logging.DEBUG):
        written, warnings = _encode_and_check(tmp_path, case.paths, case.context)
    for ds in written.values():
        assert ds.StudyInstanceUID == expected.StudyInstanceUID
        if "PatientName" in expected and variant != "refused-values":
            assert str(ds.PatientName).rstrip("^") == str(expected.PatientName).rstrip("^")
    if variant == "refused-values":
        assert {w.split()[2] for w in warnings} == {"PatientSex", "PatientBirthDate", "StudyTime", "AccessionNumber"}
        assert all(ds.PatientSex == "" for ds in written.values())
    name = str(expected.get("PatientName", "")).split("^")[0]
    assert not name or not any(name in record.getMessage() for record in caplog.records)


OBLIQUE = Geometry(row_dir=(0.0, 0.98481, 0.17365), col_dir=(0.0, 0.17365, -0.98481))  # sagittal tilted 10 deg


@pytest.mark.parametrize("form", ["implicit-vr", "enhanced-mr", "mirrored", "oblique"])
def test_results_pass_dciodvfy_for_every_source_encoding_and_orientation(tmp_path, form):
    if form == "enhanced-mr":
        case = make_case(tmp_path / "src", enhanced=True)
        paths = case.paths
    else:
        case = make_case(tmp_path / "unused")
        geometry = {"mirrored": Geometry(row_dir=(0.0, -1.0, 0.0), col_dir=(0.0, 0.0, -1.0)),
                    "oblique": OBLIQUE}.get(form, Geometry())
        syntax = ImplicitVRLittleEndian if form == "implicit-vr" else "1.2.840.10008.1.2.1"
        paths = write_series(tmp_path / "src", phantom(SHAPE), geometry, transfer_syntax=syntax)
    written, _ = _encode_and_check(tmp_path, paths, case.context)
    assert np.asarray(written["seg"].pixel_array).any()
