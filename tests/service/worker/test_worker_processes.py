"""``lumbar-ai worker`` as real processes: SIGKILL mid-job, SIGTERM, and the whole chain end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import redis

from service.infer.postprocess import postprocess
from service.infer.series import load_series, resample_onto
from service.queue.state import StudyState, StudyStore
from tests.conftest import ROOT, free_port, require_tool
from tests.service.deliver.pacs import StoreSCP
from tests.service.worker.conftest import enqueue, make_settings, settings_env, spool_files, write_study
from tests.service.worker.test_worker import seg_labels

pytestmark = pytest.mark.integration

SEG, SR, SC = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"


def start(settings, *args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, **settings_env(settings)}
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_worker_killed_mid_job_is_reclaimed_and_the_pacs_gets_one_seg_and_one_sr(
    redis_url, tmp_path, worker_model_dir
):
    pacs = StoreSCP(tmp_path / "pacs", free_port()).start()
    settings = make_settings(
        redis_url, tmp_path / "data", worker_model_dir, pacs_port=pacs.port, visibility_timeout_s=3.0
    )
    client = redis.Redis.from_url(settings.redis_url)
    store = StudyStore(client, settings.stream_prefix)
    # A finer matrix and more slices, so that the job takes long enough to be killed in the middle.
    study = spool_files(
        settings.spool_dir, write_study(tmp_path / "study", seed=8, shape=(15, 64, 64), upsample=4)
    )
    log = tmp_path / "worker.log"
    first = start(settings, "worker", "--name", "first", log=log)
    second = None
    try:
        enqueue(settings, study, client)
        wait_until(
            lambda: store.get(study.study_uid).state == StudyState.PROCESSING,
            60,
            "the first worker",
            interval_s=0.005,
        )
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert store.get(study.study_uid).state == StudyState.PROCESSING  # killed before it could finish

        second = start(settings, "worker", "--name", "second", log=log)
        record = wait_until(
            lambda: (r := store.get(study.study_uid)).state == StudyState.DONE and r,
            60,
            "the job to be reclaimed and finished",
        )
        received = pacs.wait_for(3, timeout_s=30)
    finally:
        if second is not None:
            stop(second)
        stop(first)
        pacs.stop()
    assert record.attempts == 2
    assert Counter(str(ds.SOPClassUID) for ds in received) == {SEG: 1, SR: 1, SC: 1}, log.read_text()[-3000:]
    folder = settings.results_dir / study.study_uid
    import pydicom

    on_disk = {
        str(pydicom.dcmread(folder / n, stop_before_pixels=True).SOPInstanceUID)
        for n in ("seg.dcm", "sr.dcm", "preview.dcm")
    }
    assert {str(ds.SOPInstanceUID) for ds in received} == on_disk


def test_sigterm_stops_an_idle_worker_cleanly(redis_url, tmp_path, worker_model_dir):
    settings = make_settings(redis_url, tmp_path / "data", worker_model_dir)
    client = redis.Redis.from_url(settings.redis_url)
    log = tmp_path / "worker.log"
    worker = start(settings, "worker", "--name", "polite", log=log)
    try:
        wait_until(lambda: client.hexists(f"{settings.stream_prefix}:workers", "polite"), 60, "a heartbeat")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0, log.read_text()[-2000:]
    finally:
        stop(worker)
    assert not client.hexists(f"{settings.stream_prefix}:workers", "polite")


SECRETS = {"PatientName": "Zyxwvut Qponml", "PatientID": "PID-SECRET-8842", "PatientBirthDate": "19xx0101"}


def test_end_to_end_storescu_to_listener_to_worker_to_pacs(redis_url, tmp_path, worker_model_dir, onnx_model):
    """Also: no log line of the listener, the worker or its delivery holds the patient's name, ID or birth date
    (a name without a caret and an invalid date, so that pydicom and highdicom warn about them)."""
    import pydicom

    storescu = require_tool("storescu")
    pacs = StoreSCP(tmp_path / "pacs", free_port()).start()
    settings = make_settings(
        redis_url,
        tmp_path / "data",
        worker_model_dir,
        pacs_port=pacs.port,
        listen_port=free_port(),
        quiet_period_s=1.0,
        require_called_aet=True,
    )
    client = redis.Redis.from_url(settings.redis_url)
    files = write_study(tmp_path / "study", seed=9)
    for path in [*files["t2"], *files["t1"]]:
        ds = pydicom.dcmread(path)
        for keyword, value in SECRETS.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
    log = tmp_path / "services.log"
    listener = start(settings, "listen", log=log)
    worker = start(settings, "worker", "--name", "e2e", log=log)
    try:
        wait_until(lambda: _accepts(settings.listen_port), 60, "the listener")
        paths = [str(p) for series in files.values() for p in series]
        sent = subprocess.run(
            [storescu, "-aec", settings.ae_title, "127.0.0.1", str(settings.listen_port), *paths],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        received = pacs.wait_for(3, timeout_s=90)
    finally:
        stop(worker)
        stop(listener)
        pacs.stop()
    assert Counter(str(ds.SOPClassUID) for ds in received) == {SEG: 1, SR: 1, SC: 1}, log.read_text()[-4000:]
    study_uid = str(received[0].StudyInstanceUID)
    assert StudyStore(client, settings.stream_prefix).get(study_uid).state == StudyState.DONE
    text = log.read_text()
    assert "service.receive" in text and "service.deliver" in text, text[-2000:]  # both logged
    for secret in ("Zyxwvut", "Qponml", SECRETS["PatientID"], SECRETS["PatientBirthDate"]):
        assert secret not in text

    t2, t1 = load_series(files["t2"]), load_series(files["t1"])
    prediction = onnx_model.predict(t2.pixels, resample_onto(t1, t2), t2.pixel_spacing, settings.slice_batch)
    expected = postprocess(
        prediction.labels, prediction.finding_probs, onnx_model.ontology, onnx_model.finding_thresholds, t2,
        prediction.finding_maps,
    )
    seg_file = next(p for p in pacs.folder.iterdir() if _sop_class(p) == SEG)
    np.testing.assert_array_equal(seg_labels(seg_file, t2, onnx_model.ontology), expected.labels)


def _accepts(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _sop_class(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID)
