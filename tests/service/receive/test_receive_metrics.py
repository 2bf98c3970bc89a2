"""The listener's count of received instances reaches /metrics through Redis."""

from __future__ import annotations

import uuid

import redis

from service import telemetry
from service.receive.cli import _publish_counts
from service.receive.handlers import SUCCESS, ReceiveCounters


def test_new_instances_are_taken_once_and_duplicates_and_refusals_are_not_counted():
    counters = ReceiveCounters()
    counters.count(SUCCESS, 100)
    counters.count(SUCCESS, 100, duplicate=True)
    counters.count(0xC210)
    assert counters.take_new_instances() == 1
    assert counters.take_new_instances() == 0
    counters.count(SUCCESS, 100)
    assert counters.take_new_instances() == 1


def test_published_counts_accumulate_in_the_dicom_counter(redis_url):
    client = redis.Redis.from_url(redis_url)
    prefix = f"test-recv-{uuid.uuid4().hex[:8]}"
    counters = ReceiveCounters()
    for _ in range(3):
        counters.count(SUCCESS, 10)
    _publish_counts(client, prefix, counters)
    counters.count(SUCCESS, 10)
    _publish_counts(client, prefix, counters)
    _publish_counts(client, prefix, counters)
    fields = client.hgetall(telemetry.counters_key(prefix))
    dicom = {k.decode(): int(v) for k, v in fields.items() if b"source=dicom" in k}
    assert list(dicom.values()) == [4]
