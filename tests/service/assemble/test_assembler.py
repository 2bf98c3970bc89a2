"""The assembler against a real spool and a real Redis: completion, selection, idempotent enqueue."""

from __future__ import annotations

import io
import os
import uuid

import pytest
import redis
from pydicom.uid import generate_uid
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.assemble.actions import delete_study, force_complete, retry
from service.assemble.assembler import Assembler
from service.assemble.rules import load_rules
from service.config import Settings
from service.queue.state import StudyState, StudyStore
from service.queue.stream import JobQueue
from service.receive.spool import Spool
from tests.service.receive.study_factory import (
    SeriesSpec,
    ax_t2,
    localizer,
    make_instance,
    sag_t1_flair,
    sag_t2,
)

QUIET = 30.0
SETTLE = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def env(tmp_path, client):
    clock = Clock()
    spool = Spool(tmp_path / "spool", fsync=False)
    prefix = f"test-{uuid.uuid4().hex[:8]}"  # other test runs may share this Redis database
    store = StudyStore(client, prefix)
    queue = JobQueue(client, prefix=prefix, visibility_timeout_s=60, max_attempts=2)

    def make() -> Assembler:
        return Assembler(spool, store, queue, load_rules(), QUIET, SETTLE, clock=clock)

    return spool, store, queue, clock, make


def send(spool: Spool, study: str, spec: SeriesSpec, series: str | None = None, at: float | None = None):
    """Store a series as the listener would, the marker stamped with the given time."""
    series = series or generate_uid()
    for i in range(spec.images):
        buffer = io.BytesIO()
        make_instance(study, series, spec, i).save_as(buffer, enforce_file_format=True)
        spool.store_file_bytes(buffer.getvalue())
    if at is not None:
        os.utime(spool.study_dir(study) / ".received", (at, at))
    return series


def jobs(queue: JobQueue) -> list:
    return queue.redis.xrange(queue.keys.jobs)


def test_a_study_is_queued_once_after_its_quiet_period_with_its_decisions(env):
    spool, store, queue, clock, make = env
    assembler = make()
    study = generate_uid()
    send(spool, study, localizer(), at=clock.now)
    send(spool, study, sag_t2(), at=clock.now)  # T2 only: no early completion
    assert assembler.poll() == []
    assert store.get(study).state == StudyState.RECEIVED and store.get(study).instances == 9
    clock.now += QUIET + 1
    (record,) = assembler.poll()
    assert record.state == StudyState.QUEUED and record.job_id.startswith(study + ":")
    assert record.t2_series_uid and record.t1_series_uid is None
    assert record.warnings == ["no sagittal T1 series; using the sagittal T2 alone"]
    assert record.decisions[0].startswith("complete: no new instance for 30 s")
    assert assembler.poll() == [] and len(jobs(queue)) == 1


def test_expected_series_present_and_settled_complete_the_study_before_the_quiet_period(env):
    spool, store, queue, clock, make = env
    assembler = make()
    study = generate_uid()
    send(spool, study, sag_t1_flair(), at=clock.now)
    send(spool, study, sag_t2(), at=clock.now)
    assert assembler.poll() == []  # both present, but just seen growing
    clock.now += SETTLE + 0.1
    (record,) = assembler.poll()
    assert record.state == StudyState.QUEUED and record.t1_series_uid and record.t2_series_uid
    assert "unchanged for 5 s" in record.decisions[0]


def test_more_axial_images_after_queueing_do_not_queue_the_same_selection_again(env):
    spool, store, queue, clock, make = env
    assembler = make()
    study = generate_uid()
    send(spool, study, sag_t1_flair(), at=clock.now)
    send(spool, study, sag_t2(), at=clock.now)
    clock.now += SETTLE + 0.1
    assembler.poll()
    send(spool, study, ax_t2(), at=clock.now)
    clock.now += QUIET + 1
    (record,) = assembler.poll()
    assert record.state == StudyState.QUEUED and record.instances == 18 and len(jobs(queue)) == 1


def test_new_instances_in_a_selected_series_queue_the_study_again(env):
    spool, store, queue, clock, make = env
    assembler = make()
    study = generate_uid()
    series = send(spool, study, sag_t2(), at=clock.now)
    clock.now += QUIET + 1
    (first,) = assembler.poll()
    queue.ack(queue.claim("w", block_ms=0))
    store.transition(study, StudyState.DONE)
    send(spool, study, sag_t2(n=8), series=series, at=clock.now)
    clock.now += QUIET + 1
    (second,) = assembler.poll()
    assert second.state == StudyState.QUEUED and second.job_id != first.job_id and second.instances == 14


def test_an_identical_resend_after_done_is_not_processed_again(env):
    spool, store, queue, clock, make = env
    assembler = make()
    study = generate_uid()
    send(spool, study, sag_t2(), at=clock.now)
    clock.now += QUIET + 1
    assembler.poll()
    queue.ack(queue.claim("w", block_ms=0))
    store.transition(study, StudyState.DONE)
    os.utime(spool.study_dir(study) / ".received", (clock.now, clock.now))  # the PACS sends it all again
    clock.now += QUIET + 1
    assert assembler.poll() == []
    assert store.get(study).state == StudyState.DONE and queue.depth() == 0


def test_no_usable_series_fails_the_study_with_its_reason(env):
    spool, store, queue, clock, make = env
    study = generate_uid()
    send(spool, study, ax_t2(n=12), at=clock.now)
    clock.now += QUIET + 1
    (record,) = make().poll()
    assert record.state == StudyState.FAILED
    assert record.error == "no sagittal T1 or T2 series; found: AX T2 (12 images)"
    assert queue.depth() == 0


def test_start_up_reconciliation_queues_complete_studies_left_unqueued_and_nothing_twice(env):
    spool, store, queue, clock, make = env
    done_before, never_queued = generate_uid(), generate_uid()
    send(spool, done_before, sag_t2(), at=clock.now)
    clock.now += QUIET + 1
    make().poll()
    send(spool, never_queued, sag_t2(), at=clock.now - QUIET - 5)  # arrived while no assembler ran
    restarted = make()
    (record,) = restarted.poll()
    assert record.study_uid == never_queued and len(jobs(queue)) == 2
    assert make().poll() == []


def test_redis_down_keeps_the_study_until_redis_is_back(env, tmp_path):
    spool, store, queue, clock, make = env
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    offline = Assembler(
        spool,
        StudyStore(dead, "test"),
        JobQueue(dead, prefix="test"),
        load_rules(),
        QUIET,
        SETTLE,
        clock=clock,
    )
    study = generate_uid()
    send(spool, study, sag_t2(), at=clock.now)
    clock.now += QUIET + 1
    assert offline.poll() == []  # no exception, nothing lost
    assert spool.read_assembled(study) is None
    (record,) = make().poll()
    assert record.state == StudyState.QUEUED


def test_force_complete_retry_and_delete_for_the_api(env, tmp_path, client):
    spool, store, queue, clock, make = env
    settings = Settings(
        data_dir=tmp_path, stream_prefix=store.keys.prefix, max_attempts=1, quiet_period_s=QUIET
    )
    study = generate_uid()
    send(spool, study, sag_t2(), at=clock.now)
    record = force_complete(settings, client, study)  # long before the quiet period
    assert record.state == StudyState.QUEUED and record.decisions[0] == "complete: processing requested"
    api_queue = JobQueue(client, settings)
    assert api_queue.fail(api_queue.claim("w", block_ms=0), "boom") is False
    store.transition(study, StudyState.FAILED, error="boom")
    again = retry(settings, client, study)
    assert again.state == StudyState.QUEUED and again.job_id == record.job_id and api_queue.depth() == 1
    assert delete_study(settings, client, study) is True
    assert store.get(study) is None and not spool.study_dir(study).exists()


def test_retention_removes_only_old_studies_whose_processing_is_over(env, client):
    spool, store, queue, clock, make = env
    old_done, old_queued, recent_done = generate_uid(), generate_uid(), generate_uid()
    for study in (old_done, old_queued):
        send(spool, study, sag_t2(), at=clock.now)
    clock.now += QUIET + 1
    make().poll()
    send(spool, recent_done, sag_t2(), at=clock.now + 10 * 86400)
    store.transition(old_done, StudyState.DONE)
    clock.now += 10 * 86400 + QUIET + 1
    assembler = make()
    assembler.poll()
    store.transition(recent_done, StudyState.DONE)
    assembler.retention_s = 5 * 86400.0
    assert assembler.sweep() == [old_done]
    assert not spool.study_dir(old_done).exists()
    assert spool.study_dir(old_queued).exists() and spool.study_dir(recent_done).exists()
