"""Study records in a real Redis: states with timestamps, paged listing, concurrent writers."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.errors import QueueError, StudyNotFoundError
from service.queue.state import SeriesSummary, StudyRecord, StudyState, StudyStore


@pytest.fixture
def store(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield StudyStore(client, f"test-{uuid.uuid4().hex[:8]}")  # other runs may share this database
    client.close()


def test_ensure_creates_a_received_record_once_and_keeps_its_state(store):
    first = store.ensure("1.2.3", instances=4)
    assert first.state == StudyState.RECEIVED and first.instances == 4 and "received" in first.state_times
    store.transition("1.2.3", StudyState.QUEUED, job_id="1.2.3:abc")
    again = store.ensure("1.2.3", instances=5)
    assert (
        again.state == StudyState.QUEUED and again.instances == 5 and again.received_at == first.received_at
    )


def test_transition_records_when_each_state_was_entered_with_the_fields(store):
    store.ensure("1.2.3")
    store.transition("1.2.3", StudyState.PROCESSING, attempts=1)
    done = store.transition("1.2.3", "done", timings={"decode": 0.5}, results={"seg": "/r/seg.dcm"})
    assert done.state == StudyState.DONE and done.attempts == 1
    assert set(done.state_times) == {"received", "processing", "done"}
    assert done.state_times["done"] >= done.state_times["processing"]
    assert store.get("1.2.3") == done


def test_records_are_json_the_api_can_return(store):
    series = [SeriesSummary("1.2.3.4", "SAG T2", "MR", 15, 3, "sagittal", "T2", "t2", "selected")]
    record = store.ensure("1.2.3", series=series, decisions=["T2: SAG T2 (15 images)"])
    text = json.dumps(record.to_dict())
    assert StudyRecord.from_json(text) == record
    assert json.loads(text)["state"] == "received" and json.loads(text)["series"][0]["role"] == "t2"


def test_list_pages_newest_first_and_filters_by_state(store):
    for i in range(5):
        store.ensure(f"1.2.{i}", received_at=1000.0 + i)
    store.transition("1.2.1", StudyState.FAILED, error="no sagittal T1 or T2 series; found: AX T2 (3 images)")
    page, total = store.list(None, offset=0, limit=2)
    assert total == 5 and [r.study_uid for r in page] == ["1.2.4", "1.2.3"]
    page, total = store.list(None, offset=4, limit=2)
    assert [r.study_uid for r in page] == ["1.2.0"]
    failed, total = store.list(StudyState.FAILED)
    assert total == 1 and failed[0].error.startswith("no sagittal")
    assert store.list("received")[1] == 4


def test_update_of_an_unknown_study_raises_and_unknown_fields_are_refused(store):
    with pytest.raises(StudyNotFoundError):
        store.update("9.9.9", instances=1)
    store.ensure("1.2.3")
    with pytest.raises(ValueError):
        store.update("1.2.3", patient_name="x")


def test_delete_removes_the_record_and_its_index_entries(store):
    store.ensure("1.2.3")
    store.transition("1.2.3", StudyState.DONE)
    assert store.delete("1.2.3") is True
    assert store.get("1.2.3") is None and store.list()[1] == 0 and store.list("done")[1] == 0
    assert store.delete("1.2.3") is False


def test_concurrent_writers_of_different_fields_never_lose_each_others_writes(store):
    store.ensure("1.2.3")
    writers = {
        "instances": lambda j: j,
        "attempts": lambda j: j,
        "warnings": lambda j: [f"w{j}"],
        "decisions": lambda j: [f"d{j}"],
    }

    def write(name: str) -> None:
        for j in range(15):
            store.update("1.2.3", **{name: writers[name](j)})

    threads = [threading.Thread(target=write, args=(name,)) for name in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = store.get("1.2.3")
    assert (final.instances, final.attempts, final.warnings, final.decisions) == (14, 14, ["w14"], ["d14"])


def test_redis_down_is_a_queue_error():
    dead = StudyStore(
        redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)), "test"
    )
    with pytest.raises(QueueError):
        dead.get("1.2.3")
    with pytest.raises(QueueError):
        dead.ensure("1.2.3")
