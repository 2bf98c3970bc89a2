"""SEG and SR: valid for dciodvfy, and what highdicom reads back is what the post-processing found."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from service.encode.results import dicom_bytes
from service.encode.seg import build_seg
from service.encode.sr import build_sr
from service.ontology import ANATOMICAL_STRUCTURE, PRIVATE_SCHEME
from service.ontology import DEFAULT_ONTOLOGY as ONT
from tests.service.encode.conftest import Case, dciodvfy_errors, make_case
from tests.service.encode.label_factory import CANONICAL


def _write(tmp_path, name, ds):
    path = tmp_path / name
    path.write_bytes(dicom_bytes(ds))
    return path


def test_binary_seg_passes_dciodvfy_and_reads_back_the_label_map(tmp_path, case: Case):
    seg = build_seg(case.reference, case.result, ONT, case.context, "BINARY")
    path = _write(tmp_path, "seg.dcm", seg.dataset)
    assert dciodvfy_errors(path) == []

    back = hd.seg.segread(path)
    assert back.SegmentationType == "BINARY"
    assert back.StudyInstanceUID == case.reference.datasets[0].StudyInstanceUID
    assert back.FrameOfReferenceUID == case.reference.datasets[0].FrameOfReferenceUID
    sop_uids = [str(ds.SOPInstanceUID) for ds in case.reference.datasets]
    pixels = back.get_pixels_by_source_instance(sop_uids, combine_segments=True)
    expected = np.zeros(256, np.uint8)
    for label, number in seg.segment_numbers.items():
        expected[label] = number
    np.testing.assert_array_equal(pixels, expected[case.result.labels])


def test_seg_has_one_coded_coloured_segment_per_present_structure(tmp_path, case: Case):
    seg = build_seg(case.reference, case.result, ONT, case.context)
    back = hd.seg.segread(_write(tmp_path, "seg.dcm", seg.dataset))
    assert back.get_segment_numbers() == list(range(1, len(CANONICAL) + 1))
    for label, number in seg.segment_numbers.items():
        structure = ONT.by_label(label)
        description = back.get_segment_description(number)
        assert description.segment_label == structure.name
        assert description.segmented_property_type.value == structure.code_value
        assert description.segmented_property_type.scheme_designator == "SCT"
        assert description.segmented_property_category.value == ANATOMICAL_STRUCTURE[0]
        assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        assert description.algorithm_identification[0].AlgorithmName == "lumbar-test"
        rgb = hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue).to_rgb()
        assert np.abs(np.array(rgb, dtype=int) - np.array(structure.color)).max() <= 2
    ours = [
        item
        for item in back.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == codes.DCM.ProcessingEquipment.value
    ]
    assert "lumbar-ai" in [item.ManufacturerModelName for item in ours]


def test_labelmap_seg_reads_back_the_same_labels(tmp_path, case: Case):
    seg = build_seg(case.reference, case.result, ONT, case.context, "LABELMAP")
    back = hd.seg.segread(_write(tmp_path, "seg.dcm", seg.dataset))
    assert back.SegmentationType == "LABELMAP"
    sop_uids = [str(ds.SOPInstanceUID) for ds in case.reference.datasets]
    pixels = back.get_pixels_by_source_instance(sop_uids, combine_segments=True)
    lut = np.zeros(256, np.uint8)
    for label, number in seg.segment_numbers.items():
        lut[label] = number
    np.testing.assert_array_equal(pixels, lut[case.result.labels])


def test_seg_on_an_enhanced_mr_source_maps_each_slice_to_its_frame(tmp_path):
    case = make_case(tmp_path / "enh", enhanced=True)
    seg = build_seg(case.reference, case.result, ONT, case.context)
    path = _write(tmp_path, "seg.dcm", seg.dataset)
    assert dciodvfy_errors(path) == []
    back = hd.seg.segread(path)
    source = case.reference.source_datasets[0]
    to_label = np.zeros(256, np.uint8)
    for label, number in seg.segment_numbers.items():
        to_label[number] = label
    for i, frame in enumerate(case.reference.frame_numbers):
        pixels = back.get_pixels_by_source_frame(
            str(source.SOPInstanceUID),
            [frame],
            combine_segments=True,
            relabel=False,
            assert_missing_frames_are_empty=True,
        )
        np.testing.assert_array_equal(to_label[pixels[0]], case.result.labels[i])


def test_sr_passes_dciodvfy_and_declares_the_private_coding_scheme(tmp_path, case: Case):
    seg = build_seg(case.reference, case.result, ONT, case.context)
    sr = build_sr(case.reference, seg, case.result, ONT, case.context)
    path = _write(tmp_path, "sr.dcm", sr)
    assert dciodvfy_errors(path) == []
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    designators = [item.CodingSchemeDesignator for item in back.CodingSchemeIdentificationSequence]
    assert PRIVATE_SCHEME in designators
    assert back.VerificationFlag == "UNVERIFIED"
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study in back.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert seg.dataset.SOPInstanceUID in evidence
    assert {str(ds.SOPInstanceUID) for ds in case.reference.datasets} <= evidence


def test_sr_measurement_groups_reference_segments_and_carry_measurements_and_findings(tmp_path, case: Case):
    seg = build_seg(case.reference, case.result, ONT, case.context)
    sr = hd.sr.srread(
        _write(tmp_path, "sr.dcm", build_sr(case.reference, seg, case.result, ONT, case.context))
    )
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(case.result.levels)
    by_name = {g.tracking_identifier: g for g in groups}
    for level in case.result.levels:
        group = by_name[level.name]
        assert group.referenced_segment.referenced_sop_instance_uid == seg.dataset.SOPInstanceUID
        assert group.referenced_segment.referenced_segment_numbers == [seg.segment_numbers[level.label]]
        assert group.finding_sites[0].value.value == level.code_value
        volume = group.get_measurements(name=codes.SCT.Volume)[0]
        assert volume.value == pytest.approx(level.volume_mm3)
        assert volume.unit.value == "mm3"
        heights = group.get_measurements(name=codes.DCM.Height)
        extents = [m for m in group.get_measurements() if m.name.value == "LAI0101"]
        if level.kind == "disc":
            assert heights[0].value == pytest.approx(level.disc_height_mm)
            assert extents[0].value == pytest.approx(level.posterior_extent_mm)
            assert extents[0].unit.value == "mm" and extents[0].name.scheme_designator == PRIVATE_SCHEME
        else:
            assert heights == [] and extents == []
        evaluations = {e.name.value: e.value.value for e in group.get_qualitative_evaluations()}
        for f in level.findings:
            code = ONT.finding(f.key).code_value
            assert evaluations[code] == (codes.SCT.Present.value if f.present else codes.SCT.Absent.value)
            probability = [m for m in group.get_measurements() if m.name.value == code + "P"][0]
            assert probability.value == pytest.approx(f.probability)
            assert probability.name.scheme_designator == PRIVATE_SCHEME


def test_sr_decisions_follow_the_card_thresholds(case: Case):
    disc = case.result.level(ONT.by_level("L4/L5", "disc").label)
    decided = {f.key: f.present for f in disc.findings}
    assert decided == {
        "disc_bulging": True,
        "disc_protrusion": False,
        "disc_extrusion": False,
        "schmorl_node": False,
    }


def test_uids_are_derived_from_the_job_id(tmp_path, case: Case):
    again = make_case(tmp_path / "again", job_id=case.context.job_id)
    other = make_case(tmp_path / "other", job_id="1.2.826.0.1.3680043.10.1.1:0000beef")
    first = build_seg(case.reference, case.result, ONT, case.context).dataset
    second = build_seg(again.reference, again.result, ONT, again.context).dataset
    third = build_seg(other.reference, other.result, ONT, other.context).dataset
    assert first.SOPInstanceUID == second.SOPInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert third.SOPInstanceUID != first.SOPInstanceUID
    assert pydicom.uid.UID(first.SOPInstanceUID).is_valid
