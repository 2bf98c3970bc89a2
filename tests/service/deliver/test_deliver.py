"""Delivery to a real dcmtk storescp through the Redis outbox: retries, backoff, dead letters, take-over."""

from __future__ import annotations

import random
import time
import uuid

import pytest
import redis

from service.config import Destination, Settings
from service.deliver.outbox import Outbox, backoff_s
from service.deliver.runner import deliver_one
from service.encode.bundle import encode_study
from service.encode.results import DICOM_KINDS, write_results
from service.ontology import DEFAULT_ONTOLOGY as ONT
from tests.conftest import free_port
from tests.service.deliver.pacs import StoreSCP
from tests.service.encode.conftest import make_case


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One encoded study written to a results folder: (data_dir, study_uid, instances)."""
    root = tmp_path_factory.mktemp("deliver")
    case = make_case(root / "t2")
    bundle = encode_study(
        reference=case.reference,
        other=None,
        t2_series_uid=case.reference.series_uid,
        t1_series_uid=None,
        result=case.result,
        ontology=ONT,
        context=case.context,
        seg_type="BINARY",
        timings={},
    )
    study_uid = str(case.reference.datasets[0].StudyInstanceUID)
    write_results(root / "data" / "results", study_uid, bundle.files)
    return root / "data", study_uid, case.context.job_id, bundle.instances


def _settings(redis_url, data_dir, port, **overrides) -> Settings:
    values = dict(
        redis_url=redis_url,
        data_dir=data_dir,
        stream_prefix=f"test-{uuid.uuid4().hex[:8]}",
        destinations=[Destination(ae_title="PACS", host="127.0.0.1", port=port)],
        deliver_backoff_s=0.2,
        deliver_backoff_cap_s=0.4,
        deliver_max_attempts=5,
        deliver_timeout_s=5.0,
    )
    values.update(overrides)
    return Settings(**values)


def _outbox(settings):
    return Outbox(redis.Redis.from_url(settings.redis_url), settings)


def _deliver_until_settled(outbox, settings, timeout_s=15.0):
    deadline = time.monotonic() + timeout_s
    outcomes = []
    while time.monotonic() < deadline:
        outcome = deliver_one(outbox, settings, "test-consumer", block_ms=100)
        if outcome is not None:
            outcomes.append(outcome)
            if outcome.delivered or not outcome.will_retry:
                return outcomes
    raise AssertionError(f"not settled in {timeout_s} s: {outcomes}")


def test_results_arrive_at_the_pacs_with_their_uids(redis_url, results, tmp_path):
    data_dir, study_uid, job_id, instances = results
    pacs = StoreSCP(tmp_path / "pacs", free_port()).start()
    try:
        settings = _settings(redis_url, data_dir, pacs.port)
        outbox = _outbox(settings)
        assert outbox.enqueue(study_uid, job_id, DICOM_KINDS) == 1
        outcomes = _deliver_until_settled(outbox, settings)
        assert [o.delivered for o in outcomes] == [True]
        received = pacs.wait_for(3)
    finally:
        pacs.stop()
    assert pacs.sop_instances() == {instances[k]["sop_instance_uid"]: 1 for k in DICOM_KINDS}
    assert {str(ds.StudyInstanceUID) for ds in received} == {study_uid}
    assert outbox.status(study_uid)[f"PACS@127.0.0.1:{pacs.port}"]["state"] == "delivered"
    assert outbox.waiting() == 0
    counters = outbox.redis.hgetall(f"{settings.stream_prefix}:metrics:counters")
    assert counters[b"deliveries|destination=PACS"] == b"1"


def test_pacs_down_then_up_is_delivered_after_it_returns(redis_url, results, tmp_path):
    data_dir, study_uid, job_id, instances = results
    port = free_port()
    settings = _settings(redis_url, data_dir, port)
    outbox = _outbox(settings)
    outbox.enqueue(study_uid, job_id, DICOM_KINDS)

    first = deliver_one(outbox, settings, "test-consumer", block_ms=100)
    assert first is not None and not first.delivered and first.will_retry
    status = outbox.status(study_uid)[f"PACS@127.0.0.1:{port}"]
    assert status["state"] == "pending" and status["next_attempt_at"] > time.time() - 1
    assert outbox.waiting() == 1  # waiting in the delayed set, not lost

    pacs = StoreSCP(tmp_path / "pacs", port).start()
    try:
        outcomes = _deliver_until_settled(outbox, settings)
        pacs.wait_for(3)
    finally:
        pacs.stop()
    assert outcomes[-1].delivered and outcomes[-1].claimed.task.attempt >= 2
    assert pacs.sop_instances() == {instances[k]["sop_instance_uid"]: 1 for k in DICOM_KINDS}


def test_a_retried_job_does_not_enqueue_its_delivery_twice(redis_url, results):
    data_dir, study_uid, job_id, _ = results
    outbox = _outbox(_settings(redis_url, data_dir, free_port()))
    assert outbox.enqueue(study_uid, job_id, DICOM_KINDS) == 1
    assert outbox.enqueue(study_uid, job_id, DICOM_KINDS) == 0
    assert outbox.waiting() == 1


def test_a_delivery_requeued_after_redis_lost_its_data_is_claimed(redis_url, results):
    data_dir, study_uid, job_id, _ = results
    settings = _settings(redis_url, data_dir, free_port())
    outbox = _outbox(settings)
    outbox.enqueue(study_uid, job_id, DICOM_KINDS)
    assert outbox.claim("d1", block_ms=0) is not None
    for key in outbox.redis.scan_iter(f"{settings.stream_prefix}:*"):  # as after a restart without persistence
        outbox.redis.delete(key)
    assert outbox.enqueue(study_uid, job_id, DICOM_KINDS) == 1  # reconciliation gives the result back
    claimed = outbox.claim("d1", block_ms=0)
    assert claimed is not None and claimed.task.job_id == job_id


def test_delivery_is_dead_lettered_with_its_reason_after_max_attempts(redis_url, results):
    data_dir, study_uid, job_id, _ = results
    settings = _settings(redis_url, data_dir, free_port(), deliver_max_attempts=2)
    outbox = _outbox(settings)
    outbox.enqueue(study_uid, job_id, DICOM_KINDS)
    outcomes = _deliver_until_settled(outbox, settings)
    assert [(o.delivered, o.will_retry) for o in outcomes] == [(False, True), (False, False)]
    [(task, failed_at)] = outbox.dead_letters()
    assert task.job_id == job_id and task.attempt == 2
    assert "PACS@127.0.0.1" in task.last_error
    assert outbox.status(study_uid)[f"PACS@127.0.0.1:{settings.destinations[0].port}"]["state"] == "dead"
    assert outbox.waiting() == 0


def test_missing_result_files_fail_the_attempt_with_a_reason(redis_url, results, tmp_path):
    _, study_uid, job_id, _ = results
    settings = _settings(redis_url, tmp_path / "empty", free_port(), deliver_max_attempts=1)
    outbox = _outbox(settings)
    outbox.enqueue(study_uid, job_id, DICOM_KINDS)
    outcome = deliver_one(outbox, settings, "c", block_ms=100)
    assert outcome is not None and not outcome.delivered and "results missing" in outcome.reason


def test_a_task_whose_deliverer_died_is_taken_over(redis_url, results, tmp_path):
    data_dir, study_uid, job_id, instances = results
    pacs = StoreSCP(tmp_path / "pacs", free_port()).start()
    try:
        settings = _settings(redis_url, data_dir, pacs.port, deliver_visibility_timeout_s=0.3)
        outbox = _outbox(settings)
        outbox.enqueue(study_uid, job_id, DICOM_KINDS)
        assert outbox.claim("dies-holding-it", block_ms=100) is not None  # ...and never settles
        assert deliver_one(outbox, settings, "survivor", block_ms=100) is None
        time.sleep(0.4)
        outcome = deliver_one(outbox, settings, "survivor", block_ms=100)
        assert outcome is not None and outcome.delivered
        pacs.wait_for(3)
    finally:
        pacs.stop()
    assert pacs.sop_instances() == {instances[k]["sop_instance_uid"]: 1 for k in DICOM_KINDS}


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap():
    rng = random.Random(7)
    for attempt, full in [(1, 5.0), (2, 10.0), (3, 20.0), (8, 600.0), (20, 600.0)]:
        delays = [backoff_s(attempt, 5.0, 600.0, rng) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays)
        assert max(delays) - min(delays) > full / 10  # jittered, not constant
