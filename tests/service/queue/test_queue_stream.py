"""The job queue against a real Redis: idempotent enqueue, claim, reclaim, retries, dead letters."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.errors import QueueError
from service.queue.jobs import Job, make_job_id
from service.queue.stream import JobQueue

STUDY = "1.2.826.0.1.3680043.8.498.1"


def job(sops=(("1.2.3.1", 100), ("1.2.3.2", 100))) -> Job:
    return Job(
        make_job_id(STUDY, sops), STUDY, t2_series_uid="1.2.3", t1_series_uid="1.2.4", created_at=1000.0
    )


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def queue(client, visibility=30.0, attempts=3) -> JobQueue:
    """A queue under a prefix of its own: other test runs may share this Redis database."""
    return JobQueue(
        client,
        prefix=f"test-{uuid.uuid4().hex[:8]}",
        group="workers",
        visibility_timeout_s=visibility,
        max_attempts=attempts,
    )


def test_job_id_is_study_uid_plus_digest_of_selected_instances_in_any_order():
    a = make_job_id(STUDY, [("1.2.3.1", 10), ("1.2.3.2", 20)])
    assert a == make_job_id(STUDY, [("1.2.3.2", 20), ("1.2.3.1", 10)])
    assert a.startswith(STUDY + ":") and len(a.split(":")[1]) == 16
    assert a != make_job_id(STUDY, [("1.2.3.1", 10), ("1.2.3.2", 20), ("1.2.3.3", 20)])  # new instance
    assert a != make_job_id(STUDY, [("1.2.3.1", 10), ("1.2.3.2", 21)])  # same instance, other content


def test_job_round_trips_through_stream_fields_with_a_missing_series():
    original = Job(make_job_id(STUDY, [("1.2.3.1", 1)]), STUDY, t2_series_uid="1.2.3", t1_series_uid=None)
    fields = {k.encode(): v.encode() for k, v in original.to_fields().items()}
    assert Job.from_fields(fields) == original
    assert set(original.to_fields()) == {
        "job_id",
        "study_uid",
        "t2_series_uid",
        "t1_series_uid",
        "created_at",
    }


def test_job_refuses_an_id_of_another_study_and_a_job_without_series():
    with pytest.raises(ValueError):
        Job("9.9:abc", STUDY, "1.2", None)
    with pytest.raises(ValueError):
        Job(STUDY + ":abc", STUDY, None, None)


def test_enqueue_is_idempotent_per_job_id(client):
    q = queue(client)
    assert q.enqueue(job()) is True
    assert q.enqueue(job()) is False
    assert q.depth() == 1
    assert q.job_status(job().job_id) == "queued"


def test_claim_delivers_each_new_job_once_then_nothing(client):
    q = queue(client)
    q.enqueue(job())
    delivery = q.claim("w1", block_ms=0)
    assert delivery is not None and delivery.job == job() and delivery.attempt == 1
    assert q.claim("w2", block_ms=0) is None
    assert q.in_progress() == 1


def test_claim_after_redis_lost_its_data_makes_the_group_again_and_returns_the_requeued_job(client):
    q = queue(client)
    q.enqueue(job())
    assert q.claim("w1", block_ms=0) is not None
    for key in client.scan_iter(f"{q.keys.prefix}:*"):  # as after a restart without persistence
        client.delete(key)
    assert q.enqueue(job())  # reconciliation re-queues the study from the spool
    delivery = q.claim("w1", block_ms=0)
    assert delivery is not None and delivery.job == job()


def test_ack_removes_the_entry_and_an_identical_job_is_not_enqueued_again(client):
    q = queue(client)
    q.enqueue(job())
    q.ack(q.claim("w1", block_ms=0))
    assert q.depth() == 0 and q.in_progress() == 0
    assert q.job_status(job().job_id) == "done"
    assert q.enqueue(job()) is False


def test_entry_idle_beyond_visibility_timeout_is_reclaimed_as_the_next_attempt(client):
    q = queue(client, visibility=0.2)
    q.enqueue(job())
    first = q.claim("dead-worker", block_ms=0)
    assert q.claim("w2", block_ms=0) is None  # still within the visibility timeout
    time.sleep(0.3)
    second = q.claim("w2", block_ms=0)
    assert second is not None and second.entry_id == first.entry_id and second.attempt == 2


def test_fail_requeues_with_the_reason_until_max_attempts_then_dead_letters(client):
    q = queue(client, attempts=2)
    q.enqueue(job())
    first = q.claim("w1", block_ms=0)
    assert q.fail(first, "decode error in 1.2.3.1") is True
    second = q.claim("w1", block_ms=0)
    assert second.attempt == 2 and second.last_error == "decode error in 1.2.3.1"
    assert q.fail(second, "decode error again") is False
    assert q.depth() == 0 and q.claim("w1", block_ms=0) is None
    (dead,) = q.dead_letters()
    assert dead.job == job() and dead.reason == "decode error again" and dead.attempts == 2
    assert q.job_status(job().job_id) == "dead" and q.enqueue(job()) is False


def test_a_job_whose_worker_dies_every_time_ends_in_the_dead_letters(client):
    q = queue(client, visibility=0.1, attempts=2)
    q.enqueue(job())
    q.claim("w1", block_ms=0)
    time.sleep(0.15)
    assert q.claim("w2", block_ms=0).attempt == 2
    time.sleep(0.15)
    assert q.claim("w3", block_ms=0) is None
    (dead,) = q.dead_letters()
    assert "did not finish" in dead.reason and dead.attempts == 2


def test_forget_lets_the_same_job_be_enqueued_again_for_an_explicit_retry(client):
    q = queue(client, attempts=1)
    q.enqueue(job())
    q.fail(q.claim("w1", block_ms=0), "boom")
    assert q.forget(job().job_id) is True
    assert q.enqueue(job()) is True and q.claim("w1", block_ms=0).attempt == 1


def test_claim_blocks_until_a_job_arrives_or_the_timeout(client):
    q = queue(client)
    start = time.monotonic()
    assert q.claim("w1", block_ms=200) is None
    assert time.monotonic() - start >= 0.15


def test_redis_down_is_a_queue_error():
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    with pytest.raises(QueueError):
        queue(dead).enqueue(job())


def test_a_stale_entry_behind_many_jobs_in_progress_is_still_reclaimed(client):
    q = queue(client, visibility=0.3)
    for i in range(15):
        q.enqueue(job(sops=((f"1.2.3.{i}", 1),)))
    claimed = [q.claim("worker-a", block_ms=0) for _ in range(15)]
    time.sleep(0.35)
    # the first 14 are being worked on (their idle time reset); only the last is stale
    client.xclaim(q.keys.jobs, q.group, "worker-b", 0, [d.entry_id for d in claimed[:14]], justid=True)
    reclaimed = q.claim("worker-c", block_ms=0)  # XAUTOCLAIM alone looks at 10 entries per call
    assert reclaimed is not None and reclaimed.entry_id == claimed[14].entry_id and reclaimed.attempt == 2
