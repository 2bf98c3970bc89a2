"""Series selection from headers: parameters decide, descriptions are a secondary signal, reasons recorded."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from service.assemble.headers import header_from_dataset
from service.assemble.rules import load_rules
from service.assemble.selection import select_series
from service.errors import ConfigError
from tests.service.receive.study_factory import (
    SeriesSpec,
    ax_t2,
    localizer,
    make_instance,
    make_sr,
    sag_stir,
    sag_t1_flair,
    sag_t2,
)

RULES = load_rules(own_manufacturer="lumbar-ai project")


def headers_of(*specs: SeriesSpec, extra: list[Dataset] = ()):
    study = generate_uid()
    out = []
    for spec in specs:
        series = generate_uid()
        for i in range(spec.images):
            ds = make_instance(study, series, spec, i)
            out.append(header_from_dataset(ds, series, ds.SOPInstanceUID, 1000))
    for ds in extra:
        out.append(header_from_dataset(ds, ds.SeriesInstanceUID, ds.SOPInstanceUID, 10))
    return out


def by_description(selection):
    return {s.description: s for s in selection.series}


def test_routine_lumbar_study_selects_t1_flair_and_t2_and_records_why_others_were_not():
    sel = select_series(headers_of(localizer(), sag_t1_flair(), sag_t2(), sag_stir(), ax_t2()), RULES)
    assert sel.error is None and sel.warnings == []
    assert sel.t1.description == "Sag T1 FLAIR" and sel.t1.role == "t1"
    assert sel.t2.description == "SAG T2 FSE" and sel.t2.role == "t2"
    series = by_description(sel)
    assert series["SAG STIR"].weighting == "STIR" and "neither T1 nor T2" in series["SAG STIR"].reason
    assert series["AX T2"].orientation == "axial" and "not sagittal" in series["AX T2"].reason
    assert series["3-plane loc"].weighting == "localizer"
    assert len(sel.selected_instances) == 12 and sel.instances == 12 + 6 + 6 + 3
    assert any(d.startswith("T1: Sag T1 FLAIR (6 images)") for d in sel.decisions)


def test_t1_flair_and_t2_with_similar_tr_are_told_apart_by_te_ti_and_scanning_sequence():
    flair = SeriesSpec("series A", tr=2500.0, te=24.0, ti=860.0, scanning_sequence="IR", series_number=1)
    t2 = SeriesSpec("series B", tr=2500.0, te=110.0, scanning_sequence="SE", series_number=2)
    sel = select_series(headers_of(flair, t2), RULES)
    assert sel.t1.description == "series A" and sel.t2.description == "series B"


def test_stir_is_excluded_even_when_described_as_t2():
    stir = SeriesSpec("SAG T2 STIR", tr=4000.0, te=70.0, ti=150.0, scanning_sequence="IR")
    sel = select_series(headers_of(stir), RULES)
    assert sel.t2 is None and sel.error is not None


def test_one_sagittal_series_is_used_alone_with_a_warning():
    sel = select_series(headers_of(sag_t2(), ax_t2()), RULES)
    assert sel.t2 is not None and sel.t1 is None and sel.error is None
    assert sel.warnings == ["no sagittal T1 series; using the sagittal T2 alone"]


def test_no_sagittal_t1_or_t2_fails_with_a_reason_a_person_can_act_on():
    sel = select_series(headers_of(localizer(), ax_t2(n=12)), RULES)
    assert sel.error == "no sagittal T1 or T2 series; found: 3-plane loc (3 images), AX T2 (12 images)"
    assert sel.selected_instances == []


def test_a_three_plane_localizer_without_localizer_image_type_is_excluded():
    loc = SeriesSpec("survey", "3plane", 8.0, 3.0, None, "GR", 9, ["ORIGINAL", "PRIMARY", "OTHER"])
    loc.description = "tri-view"
    sel = select_series(headers_of(loc), RULES)
    assert sel.series[0].weighting == "localizer" and "mixed slice orientations" in sel.series[0].reason


def test_localizer_image_type_derived_images_and_our_own_outputs_are_never_input():
    flagged = SeriesSpec("sag t2 a", image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"], series_number=1)
    derived = SeriesSpec("sag t2 b", image_type=["DERIVED", "SECONDARY", "MPR"], series_number=2)
    ours = SeriesSpec("sag t2 c", manufacturer="lumbar-ai project", series_number=3)
    sel = select_series(headers_of(flagged, derived, ours), RULES)
    assert [s.weighting for s in sel.series] == ["localizer", "derived", "ours"]
    assert sel.error is not None


def test_non_mr_objects_are_ignored_and_counted():
    sr = make_sr(generate_uid())
    sel = select_series(headers_of(sag_t2(), extra=[sr]), RULES)
    assert sel.ignored_instances == 1 and by_description(sel)[""].weighting == "not-mr"
    assert sel.t2 is not None


def test_description_decides_only_when_parameters_are_missing():
    blind = SeriesSpec("t1_tse_sag", tr=None, te=None)
    sel = select_series(headers_of(blind), RULES)
    assert sel.t1 is not None and "by its description" in sel.t1.reason
    contradicting = SeriesSpec("SAG T1", tr=3500.0, te=100.0)
    sel = select_series(headers_of(contradicting), RULES)
    assert sel.t2 is not None and "parameters win" in sel.t2.reason


def test_among_two_sagittal_t2_the_one_the_description_agrees_with_then_the_larger_wins():
    a = SeriesSpec("sequence 7", images=8, series_number=7)
    b = SeriesSpec("Sag T2 frFSE", images=6, series_number=8)
    sel = select_series(headers_of(a, b), RULES)
    assert sel.t2.description == "Sag T2 frFSE"
    assert "not selected" in by_description(sel)["sequence 7"].reason


def test_tilted_sagittal_is_sagittal_but_too_few_images_is_not_a_candidate():
    sel = select_series(headers_of(sag_t2(n=3)), RULES)
    assert sel.series[0].orientation == "sagittal" and "only 3 images" in sel.series[0].reason


def test_enhanced_mr_parameters_are_read_from_functional_groups():
    ds = Dataset()
    ds.Modality, ds.Rows, ds.Columns, ds.NumberOfFrames = "MR", 32, 32, 15
    ds.SeriesDescription = "sag"
    shared = Dataset()
    timing = Dataset()
    timing.RepetitionTime = 3200.0
    shared.MRTimingAndRelatedParametersSequence = [timing]
    echo = Dataset()
    echo.EffectiveEchoTime = 95.0
    shared.MREchoSequence = [echo]
    plane = Dataset()
    plane.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    shared.PlaneOrientationSequence = [plane]
    ds.SharedFunctionalGroupsSequence = [shared]
    header = header_from_dataset(ds, "1.2.3", "1.2.3.4", 10)
    assert (header.repetition_time, header.echo_time, header.frames) == (3200.0, 95.0, 15)
    sel = select_series([header], RULES)
    assert sel.t2 is not None and sel.t2.count == 15


def test_rules_from_a_file_change_the_outcome_without_code(tmp_path):
    custom = tmp_path / "rules.yaml"
    custom.write_text(
        "min_images: 2\nsagittal_max_angle_deg: 30\n"
        "weighting:\n  - {name: T2, weighting: T2, echo_time: [60, null]}\n"
        "descriptions: {}\n"
    )
    rules = load_rules(custom)
    sel = select_series(headers_of(sag_t2(n=3)), rules)
    assert sel.t2 is not None and rules.source == str(custom)


@pytest.mark.parametrize(
    "text", ["min_images: -1\n", "unknown_key: 1\n", "weighting: [{name: x}]\n", ": :\n"]
)
def test_invalid_rules_files_are_a_config_error(tmp_path, text):
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_rules(path)


def test_a_missing_rules_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_rules(tmp_path / "absent.yaml")
