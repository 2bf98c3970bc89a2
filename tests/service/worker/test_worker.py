"""The worker in-process against real Redis and a real exported model: results, states, failures."""

from __future__ import annotations

import json

import highdicom as hd
import numpy as np
import pydicom
import pytest
import redis
from pydicom.uid import JPEG2000Lossless

from service.deliver.outbox import Outbox
from service.infer.postprocess import postprocess
from service.infer.series import load_series, resample_onto
from service.queue.state import StudyState, StudyStore
from service.queue.stream import JobQueue
from service.worker.loop import Worker
from tests.service.worker.conftest import enqueue, make_settings, spool_files, write_study

RESULT_FILES = ["preview.dcm", "preview.png", "report.json", "seg.dcm", "sr.dcm"]


def seg_labels(seg_path, reference, ontology) -> np.ndarray:
    """The SEG's label map on the reference series, in ontology label values."""
    seg = hd.seg.segread(seg_path)
    to_label = np.zeros(256, np.uint8)
    for number in seg.get_segment_numbers():
        code = seg.get_segment_description(number).segmented_property_type.value
        to_label[number] = next(s.label for s in ontology.structures if s.code_value == code)
    uids = [str(ds.SOPInstanceUID) for ds in reference.datasets]
    return to_label[seg.get_pixels_by_source_instance(uids, combine_segments=True)]


@pytest.fixture
def settings(redis_url, tmp_path, worker_model_dir):
    return make_settings(redis_url, tmp_path / "data", worker_model_dir, pacs_port=4242)


@pytest.fixture
def worker(settings, onnx_model):
    return Worker(settings, onnx_model, name="test-worker")


@pytest.fixture
def client(settings):
    return redis.Redis.from_url(settings.redis_url)


def test_job_becomes_results_on_disk_state_done_and_a_queued_delivery(settings, worker, client, tmp_path):
    study = spool_files(settings.spool_dir, write_study(tmp_path / "study"))
    job = enqueue(settings, study, client)

    outcome = worker.run_once(block_ms=100)

    assert outcome is not None and outcome.state == StudyState.DONE, outcome
    record = StudyStore(client, settings.stream_prefix).get(study.study_uid)
    assert record.state == StudyState.DONE and record.error is None and record.attempts == 1
    assert {
        "decode",
        "resample",
        "image_encoder",
        "fusion_head",
        "postprocess",
        "seg",
        "sr",
        "preview",
        "write",
        "total",
    } <= set(record.timings)
    folder = settings.results_dir / study.study_uid
    assert sorted(p.name for p in folder.iterdir()) == RESULT_FILES
    assert record.results["seg"] == str((folder / "seg.dcm").resolve())
    report = json.loads((folder / "report.json").read_text())
    assert report["job_id"] == job.job_id and report["model"]["trained_on_synthetic_data"] is True
    assert report["series"] == {
        "t2": study.t2_series_uid,
        "t1": study.t1_series_uid,
        "reference": study.t2_series_uid,
    }
    assert report["levels"], "the model found no structure"
    queue = JobQueue(client, settings)
    assert queue.job_status(job.job_id) == "done" and queue.depth() == 0
    assert Outbox(client, settings).waiting() == 1


def test_seg_labels_equal_the_onnx_only_inference_after_postprocessing(
    settings, worker, client, onnx_model, tmp_path
):
    files = write_study(tmp_path / "study", seed=3)
    study = spool_files(settings.spool_dir, files)
    enqueue(settings, study, client)
    assert worker.run_once(block_ms=100).state == StudyState.DONE

    t2, t1 = load_series(files["t2"]), load_series(files["t1"])
    prediction = onnx_model.predict(t2.pixels, resample_onto(t1, t2), t2.pixel_spacing, settings.slice_batch)
    expected = postprocess(
        prediction.labels, prediction.finding_probs, onnx_model.ontology, onnx_model.finding_thresholds, t2,
        prediction.finding_maps,
    )
    got = seg_labels(settings.results_dir / study.study_uid / "seg.dcm", t2, onnx_model.ontology)
    assert expected.labels.any()
    np.testing.assert_array_equal(got, expected.labels)


def test_study_without_its_series_fails_with_the_reason_while_the_next_study_is_done(
    settings, worker, client, tmp_path
):
    broken = spool_files(settings.spool_dir, write_study(tmp_path / "a", seed=1, with_t1=False))
    enqueue(settings, broken, client, t2="1.2.3.999", t1=None)
    good = spool_files(settings.spool_dir, write_study(tmp_path / "b", seed=2))
    enqueue(settings, good, client)

    first, second = worker.run_once(block_ms=100), worker.run_once(block_ms=100)

    assert first.state == StudyState.FAILED and "1.2.3.999" in first.error and "no instances" in first.error
    assert second.state == StudyState.DONE
    store = StudyStore(client, settings.stream_prefix)
    assert store.get(broken.study_uid).state == StudyState.FAILED
    assert "no instances in the spool" in store.get(broken.study_uid).error
    assert store.get(good.study_uid).state == StudyState.DONE
    assert JobQueue(client, settings).depth() == 0  # an input error is final: acknowledged, not retried


def _spoil_pixel_data(path) -> None:
    ds = pydicom.dcmread(path)
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = pydicom.encaps.encapsulate([frame[: len(frame) // 3]])
    ds.save_as(path, enforce_file_format=True)


def test_one_undecodable_slice_is_blanked_with_a_warning_naming_the_file(settings, worker, client, tmp_path):
    files = write_study(tmp_path / "study", transfer_syntax=JPEG2000Lossless, with_t1=False)
    victim = files["t2"][2]
    _spoil_pixel_data(victim)
    study = spool_files(settings.spool_dir, files)
    enqueue(settings, study, client)

    outcome = worker.run_once(block_ms=100)

    assert outcome.state == StudyState.DONE
    record = StudyStore(client, settings.stream_prefix).get(study.study_uid)
    assert any(victim.name in w and "blank slice" in w for w in record.warnings)


def test_a_series_of_undecodable_slices_fails_the_study_naming_a_file(settings, worker, client, tmp_path):
    files = write_study(tmp_path / "study", transfer_syntax=JPEG2000Lossless, with_t1=False)
    for path in files["t2"]:
        _spoil_pixel_data(path)
    study = spool_files(settings.spool_dir, files)
    enqueue(settings, study, client)

    outcome = worker.run_once(block_ms=100)

    assert outcome.state == StudyState.FAILED
    assert "could not be decoded" in outcome.error and any(p.name in outcome.error for p in files["t2"])
    assert JobQueue(client, settings).depth() == 0


def test_an_anonymised_study_without_type2_attributes_and_odd_values_is_done_with_warnings(
        settings, worker, client, tmp_path):
    files = write_study(tmp_path / "study", seed=5)
    for path in [*files["t2"], *files["t1"]]:
        ds = pydicom.dcmread(path)
        for keyword in ("AccessionNumber", "StudyID", "ReferringPhysicianName", "PatientBirthDate"):
            delattr(ds, keyword)
        ds.PatientSex = "0000"
        ds.save_as(path, enforce_file_format=True)
    study = spool_files(settings.spool_dir, files)
    enqueue(settings, study, client)

    outcome = worker.run_once(block_ms=100)

    assert outcome.state == StudyState.DONE, outcome.error
    record = StudyStore(client, settings.stream_prefix).get(study.study_uid)
    assert any("PatientSex" in w for w in record.warnings) and not any("0000" in w for w in record.warnings)
    seg = pydicom.dcmread(outcome.processed.results["seg"])
    assert seg.PatientSex == "" and seg.AccessionNumber == ""


@pytest.mark.parametrize("present", ["t2", "t1"])
def test_one_sagittal_series_alone_is_processed_with_a_warning(settings, worker, client, tmp_path, present):
    files = write_study(tmp_path / "study", seed=4, with_t1=present == "t1", with_t2=present == "t2")
    study = spool_files(settings.spool_dir, files)
    enqueue(settings, study, client)
    outcome = worker.run_once(block_ms=100)
    assert outcome.state == StudyState.DONE, outcome.error
    record = StudyStore(client, settings.stream_prefix).get(study.study_uid)
    other = "T1" if present == "t2" else "T2"
    assert any(f"without its {other} channel" in w for w in record.warnings)
    seg = pydicom.dcmread(settings.results_dir / study.study_uid / "seg.dcm", stop_before_pixels=True)
    reference_uid = study.t2_series_uid if present == "t2" else study.t1_series_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == reference_uid


def test_jpeg2000_study_gives_the_same_result_as_the_uncompressed_one(
    settings, worker, client, onnx_model, tmp_path
):
    shape = (5, 64, 64)
    plain = write_study(tmp_path / "plain", seed=5, shape=shape)
    packed = write_study(tmp_path / "packed", seed=5, shape=shape, transfer_syntax=JPEG2000Lossless)
    assert pydicom.dcmread(packed["t2"][0]).file_meta.TransferSyntaxUID == JPEG2000Lossless
    studies = [spool_files(settings.spool_dir, files) for files in (plain, packed)]
    for study in studies:
        enqueue(settings, study, client)
        assert worker.run_once(block_ms=100).state == StudyState.DONE
    labels = [
        seg_labels(settings.results_dir / s.study_uid / "seg.dcm", load_series(f["t2"]), onnx_model.ontology)
        for s, f in zip(studies, (plain, packed), strict=True)
    ]
    np.testing.assert_array_equal(labels[0], labels[1])
    reports = [json.loads((settings.results_dir / s.study_uid / "report.json").read_text()) for s in studies]
    assert [lv["volume_mm3"] for lv in reports[0]["levels"]] == [
        lv["volume_mm3"] for lv in reports[1]["levels"]
    ]


def test_a_retried_job_writes_the_same_sop_instance_uids_and_queues_one_delivery(
    settings, worker, client, tmp_path
):
    study = spool_files(settings.spool_dir, write_study(tmp_path / "study", seed=6))
    job = enqueue(settings, study, client)
    assert worker.run_once(block_ms=100).state == StudyState.DONE
    folder = settings.results_dir / study.study_uid
    names = ("seg.dcm", "sr.dcm", "preview.dcm")
    first = {n: pydicom.dcmread(folder / n, stop_before_pixels=True).SOPInstanceUID for n in names}
    queue = JobQueue(client, settings)
    queue.forget(job.job_id)
    assert queue.enqueue(job)
    assert worker.run_once(block_ms=100).state == StudyState.DONE
    again = {n: pydicom.dcmread(folder / n, stop_before_pixels=True).SOPInstanceUID for n in names}
    assert again == first
    assert Outbox(client, settings).waiting() == 1


def test_a_model_that_finds_nothing_fails_the_study_with_that_reason(settings, worker, client, tmp_path):
    from pydicom.uid import ExplicitVRLittleEndian

    from tests.service.encode.dicom_factory import write_series

    flat = np.full((5, 64, 64), 300, np.uint16)  # no structure at all
    files = {"t2": write_series(tmp_path / "flat", flat, transfer_syntax=ExplicitVRLittleEndian)}
    study = spool_files(settings.spool_dir, files)
    enqueue(settings, study, client, t1=None)
    outcome = worker.run_once(block_ms=100)
    assert outcome.state == StudyState.FAILED and "no spinal structure found" in outcome.error


def test_a_model_with_a_level_classifier_and_refiner_reports_scores_of_the_redrawn_levels(
    redis_url, client, worker_level_model_dir, tmp_path
):
    from service.infer.level_crops import CroppedLevels
    from service.infer.model import OnnxModel

    settings = make_settings(redis_url, tmp_path / "data", worker_level_model_dir, pacs_port=4242)
    model = OnnxModel.load(worker_level_model_dir, intra_op_threads=1)
    files = write_study(tmp_path / "study", seed=3)
    study = spool_files(settings.spool_dir, files)
    enqueue(settings, study, client)
    assert Worker(settings, model, name="level-worker").run_once(block_ms=100).state == StudyState.DONE

    t2, t1 = load_series(files["t2"]), load_series(files["t1"])
    prediction = model.predict(t2.pixels, resample_onto(t1, t2), t2.pixel_spacing, settings.slice_batch, grid=t2)
    assert isinstance(prediction.finding_maps, CroppedLevels)
    assert prediction.outline_refiner is not None
    expected = postprocess(prediction.labels, prediction.finding_probs, model.ontology, model.finding_thresholds, t2,
                           prediction.finding_maps, model.finding_combiners, model.exclusive_findings,
                           prediction.outline_refiner)
    report = json.loads((settings.results_dir / study.study_uid / "report.json").read_text())
    assert report["outlines_refined"] is True and report["timings_s"]["outline_refiner"] > 0
    assert [lv["volume_mm3"] for lv in report["levels"]] == [lv.volume_mm3 for lv in expected.levels]
    got = {(lv["label"], f["key"]): f["probability"] for lv in report["levels"] for f in lv["findings"]}
    assert got and got == {(lv.label, f.key): f.probability for lv in expected.levels for f in lv.findings}
    # the finding maps would have scored them otherwise
    maps = model.predict(t2.pixels, resample_onto(t1, t2), t2.pixel_spacing, settings.slice_batch).finding_maps
    assert not isinstance(maps, CroppedLevels)


class _SlowModel:
    """The real exported model, made slower than the visibility timeout (a slow CPU, a large study)."""

    def __init__(self, model, delay_s: float) -> None:
        self._model, self._delay_s = model, delay_s

    def __getattr__(self, name):
        return getattr(self._model, name)

    def predict(self, *args, **kwargs):
        import time

        time.sleep(self._delay_s)
        return self._model.predict(*args, **kwargs)


def test_a_job_slower_than_the_visibility_timeout_is_processed_and_delivered_once(
        redis_url, tmp_path, worker_model_dir, onnx_model):
    import threading
    import time

    settings = make_settings(redis_url, tmp_path / "data", worker_model_dir, pacs_port=4242,
                             visibility_timeout_s=0.3)
    client = redis.Redis.from_url(settings.redis_url)
    study = spool_files(settings.spool_dir, write_study(tmp_path / "study", seed=6))
    job = enqueue(settings, study, client)
    slow = Worker(settings, _SlowModel(onnx_model, delay_s=1.5), name="slow-worker")
    rival = Worker(settings, onnx_model, name="rival-worker")
    outcomes = {}
    runner = threading.Thread(target=lambda: outcomes.setdefault("slow", slow.run_once(block_ms=100)))
    runner.start()
    queue = JobQueue(client, settings)
    while queue.in_progress() == 0 and runner.is_alive():  # the slow worker holds the job first
        time.sleep(0.01)
    rival_claims = []
    while runner.is_alive():
        rival_claims.append(rival.run_once(block_ms=100))
    runner.join()

    assert outcomes["slow"].state == StudyState.DONE
    assert [c for c in rival_claims if c is not None] == []  # the claim was renewed while the job ran
    assert StudyStore(client, settings.stream_prefix).get(study.study_uid).attempts == 1
    assert JobQueue(client, settings).job_status(job.job_id) == "done"
    assert Outbox(client, settings).waiting() == 1


def test_a_worker_whose_claim_was_taken_records_and_delivers_nothing(settings, worker, client, tmp_path):
    study = spool_files(settings.spool_dir, write_study(tmp_path / "study", seed=7))
    enqueue(settings, study, client)
    queue = JobQueue(client, settings)
    taken = queue.claim("other-worker", block_ms=100)

    assert not queue.renew(taken, "test-worker")
    assert queue.renew(taken, "other-worker")


def test_no_log_line_of_the_worker_holds_the_patients_name_id_or_birth_date(settings, worker, client, tmp_path):
    from tests.conftest import service_log_text

    name, patient_id, birth_date = "Zyxwvut Qponml", "PID-SECRET-8842", "19xx0101"  # no caret: highdicom warns
    files = write_study(tmp_path / "study", seed=8)
    for path in [*files["t2"], *files["t1"]]:
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = name, patient_id, birth_date
        ds.save_as(path, enforce_file_format=True)
    study = spool_files(settings.spool_dir, files)
    enqueue(settings, study, client)
    with service_log_text() as buffer:
        outcome = worker.run_once(block_ms=100)

    assert outcome.state == StudyState.DONE, outcome.error
    text = buffer.getvalue()
    for secret in ("Zyxwvut", "Qponml", patient_id, birth_date):
        assert secret not in text
