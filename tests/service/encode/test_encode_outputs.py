"""Preview (PNG and secondary capture), JSON report and the atomic results folder."""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
import pydicom
import pytest
from PIL import Image

from service.encode.bundle import encode_study
from service.encode.identity import ResultContext
from service.encode.preview import DISPLAY_SIZE, preview_slice, render_preview
from service.encode.results import FILE_NAMES, study_results_dir, sweep_expired, write_results
from service.errors import InvalidUIDError
from service.ontology import DEFAULT_ONTOLOGY as ONT
from tests.service.encode.conftest import CARD, Case, dciodvfy_errors


def _bundle(case: Case, **overrides):
    args = dict(
        reference=case.reference,
        other=None,
        t2_series_uid=case.reference.series_uid,
        t1_series_uid=None,
        result=case.result,
        ontology=ONT,
        context=case.context,
        seg_type="BINARY",
        timings={"decode": 0.5, "image_encoder": 1.25},
        warnings=["no sagittal T1 series; T2 alone"],
    )
    args.update(overrides)
    return encode_study(**args)


def test_preview_shows_the_slice_through_the_spine_in_colour():
    labels = np.zeros((5, 10, 10), np.uint8)
    labels[3, 2:5, 2:5] = 2
    assert preview_slice(labels) == 3
    assert preview_slice(np.zeros((5, 10, 10), np.uint8)) == 2


def test_preview_png_has_square_display_pixels_and_coloured_structures(case: Case):
    preview = render_preview(case.reference, case.result, ONT, case.context)
    height, width, _ = preview.rgb.shape
    assert max(height, width) == DISPLAY_SIZE
    # 200 x 48 pixels of 0.8 mm: the picture keeps the 200:48 aspect.
    assert width / height == pytest.approx(48 / 200, abs=0.01)
    sacrum_colour = np.array(ONT.by_label(1).color)
    distance = np.abs(preview.rgb.astype(int) - sacrum_colour).sum(axis=2)
    assert (distance < 10).sum() > 50  # the outline is drawn in the structure's own colour
    grey = (preview.rgb[..., 0] == preview.rgb[..., 1]) & (preview.rgb[..., 1] == preview.rgb[..., 2])
    assert grey.mean() > 0.3  # the MR image is still visible around the overlay


def test_bundle_files_are_valid_and_in_the_source_study(tmp_path, case: Case):
    bundle = _bundle(case)
    assert set(bundle.files) == set(FILE_NAMES)
    png = Image.open(io.BytesIO(bundle.files["preview"]))
    assert png.format == "PNG" and png.mode == "RGB"
    study_uid = case.reference.datasets[0].StudyInstanceUID
    for kind in ("seg", "sr", "preview_dcm"):
        path = tmp_path / FILE_NAMES[kind]
        path.write_bytes(bundle.files[kind])
        assert dciodvfy_errors(path) == [], kind
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == study_uid
        assert ds.SOPInstanceUID == bundle.instances[kind]["sop_instance_uid"]
        assert ds.SeriesInstanceUID != case.reference.series_uid
    sc = pydicom.dcmread(tmp_path / "preview.dcm")
    assert sc.BurnedInAnnotation == "YES"
    np.testing.assert_array_equal(sc.pixel_array, np.asarray(png))


def test_report_has_levels_findings_timings_model_and_synthetic_statement(case: Case):
    bundle = _bundle(case)
    report = json.loads(bundle.files["report"])
    assert report["study_uid"] == case.reference.datasets[0].StudyInstanceUID
    assert report["model"]["version"] == "0.0.1"
    assert report["model"]["trained_on_synthetic_data"] is True
    assert "synthetic data" in report["statement"]
    assert [lv["structure"] for lv in report["levels"]] == [lv.name for lv in case.result.levels]
    l45 = next(lv for lv in report["levels"] if lv["structure"] == "L4/L5 disc")
    assert l45["code"] == {"value": "84020006", "scheme": "SCT", "meaning": "L4/L5 disc"}
    assert l45["disc_height_mm"] == pytest.approx(case.result.level(l45["label"]).disc_height_mm)
    assert {
        "level": "L4/L5",
        "structure": "L4/L5 disc",
        "finding": "disc bulging",
        "probability": 0.8,
    } in report["positive_findings"]
    assert set(report["timings_s"]) >= {"decode", "image_encoder", "seg", "sr", "preview"}
    assert report["instances"]["seg"]["sop_instance_uid"] == bundle.instances["seg"]["sop_instance_uid"]
    assert report["warnings"] == ["no sagittal T1 series; T2 alone"]


def test_report_makes_no_synthetic_claim_when_the_card_does_not(case: Case):
    card = {k: v for k, v in CARD.items() if k != "provenance"} | {
        "provenance": "trained on 400 hospital scans"
    }
    context = ResultContext.from_card(case.context.job_id, card, "lumbar-ai project")
    report = json.loads(_bundle(case, context=context).files["report"])
    assert report["model"]["trained_on_synthetic_data"] is False
    assert report["statement"] == ""
    assert report["model"]["provenance"] == "trained on 400 hospital scans"


def test_results_are_written_under_the_study_uid_without_temporary_files(tmp_path, case: Case):
    bundle = _bundle(case)
    paths = write_results(tmp_path, "1.2.3.4", bundle.files)
    folder = tmp_path / "1.2.3.4"
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILE_NAMES.values())
    for kind, path in paths.items():
        assert open(path, "rb").read() == bundle.files[kind]
    # Rewriting (a retried job) replaces the files in place.
    write_results(tmp_path, "1.2.3.4", {"report": b"{}\n"})
    assert (folder / "report.json").read_bytes() == b"{}\n"
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILE_NAMES.values())


def test_results_folder_refuses_a_study_uid_that_could_escape(tmp_path):
    with pytest.raises(InvalidUIDError):
        study_results_dir(tmp_path, "1.2/../../etc")
    with pytest.raises(InvalidUIDError):
        write_results(tmp_path, "..", {"report": b"{}"})


def test_sweep_removes_only_results_older_than_the_retention(tmp_path):
    write_results(tmp_path, "1.2.3", {"report": b"{}"})
    write_results(tmp_path, "1.2.4", {"report": b"{}"})
    old = time.time() - 31 * 86400
    os.utime(tmp_path / "1.2.3" / "report.json", (old, old))
    assert sweep_expired(tmp_path, retention_days=30) == ["1.2.3"]
    assert not (tmp_path / "1.2.3").exists() and (tmp_path / "1.2.4" / "report.json").exists()
    assert sweep_expired(tmp_path / "absent", retention_days=30) == []


def test_provenance_is_read_from_the_exported_cards_training_statement(case: Case):
    card = {"name": "demo", "version": "0.1.0",
            "training": {"statement": "trained on synthetic data only: generated lumbar MRI studies"}}
    context = ResultContext.from_card(case.context.job_id, card, "lumbar-ai project")
    assert context.trained_on_synthetic_data
    assert context.provenance_statement.startswith("trained on synthetic data only")


def test_report_of_a_model_trained_partly_on_real_scans_does_not_say_synthetic_only(case: Case):
    card = {k: v for k, v in CARD.items() if k != "provenance"} | {
        "training": {"statement": "trained partly on synthetic data: generated studies mixed with 49 real scans"}
    }
    context = ResultContext.from_card(case.context.job_id, card, "lumbar-ai project")
    report = json.loads(_bundle(case, context=context).files["report"])
    assert report["model"]["trained_on_synthetic_data"] is True
    assert "partly on synthetic data" in report["statement"] and "only" not in report["statement"]
