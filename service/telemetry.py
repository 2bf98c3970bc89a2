"""Counters, latency histograms and worker heartbeats kept in Redis, so every process can write them and
the API's /metrics can read them at scrape time.

The listener, the workers and the API are separate processes (often on separate hosts); an in-process
prometheus-client registry in each would need a scrape target per process. Instead each process adds to
Redis hashes here (HINCRBY/HINCRBYFLOAT are atomic, so the numbers stay cumulative as Prometheus expects),
and ``service.api.metrics`` turns them into metric families. Writing is best effort: a metric must never
fail a C-STORE or a job, so Redis errors are swallowed here and only logged.

Keys (prefix = settings.stream_prefix)::

    <prefix>:metrics:counters          hash  "name|label=value,..." -> count
    <prefix>:metrics:hist:<stage>      hash  "le=<bound>" -> count, "sum" -> seconds, "count" -> n
    <prefix>:workers                   hash  worker id -> JSON {"at", "model", "model_version", "providers"}
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import redis

log = logging.getLogger(__name__)

# Seconds: from a 50 ms decode to a 10 min CPU job on a slow host
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

FORGET_WORKER_AFTER_S = 86_400.0
"""A heartbeat this old is deleted, so worker ids of crashed containers do not pile up."""

# Counter names other processes increment (documented on /metrics)
INSTANCES_RECEIVED = "instances_received"
"""labels: source = dicom | api"""
DELIVERY_FAILURES = "delivery_failures"
"""labels: destination = AE title"""
DELIVERIES = "deliveries"
"""labels: destination = AE title"""
JOBS_FAILED = "jobs_failed"


def counters_key(prefix: str) -> str:
    return f"{prefix}:metrics:counters"


def histogram_key(prefix: str, stage: str) -> str:
    return f"{prefix}:metrics:hist:{stage}"


def workers_key(prefix: str) -> str:
    return f"{prefix}:workers"


def _field(name: str, labels: dict[str, str]) -> str:
    return name + "|" + ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def parse_field(field: str) -> tuple[str, dict[str, str]]:
    name, _, rest = field.partition("|")
    labels = dict(pair.split("=", 1) for pair in rest.split(",") if "=" in pair)
    return name, labels


def incr(client: redis.Redis, prefix: str, name: str, amount: int = 1, **labels: str) -> None:
    """Add to a cumulative counter; best effort."""
    try:
        client.hincrby(counters_key(prefix), _field(name, labels), amount)
    except redis.RedisError as exc:
        log.warning("metric %s not recorded: %s", name, exc)


def observe(client: redis.Redis, prefix: str, stage: str, seconds: float) -> None:
    """Record one duration of a pipeline stage in its cumulative histogram; best effort."""
    key = histogram_key(prefix, stage)
    try:
        pipe = client.pipeline(transaction=False)
        for bound in LATENCY_BUCKETS:
            if seconds <= bound:
                pipe.hincrby(key, f"le={bound}", 1)
        pipe.hincrby(key, "count", 1)
        pipe.hincrbyfloat(key, "sum", float(seconds))
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("latency of %s not recorded: %s", stage, exc)


def observe_all(client: redis.Redis, prefix: str, timings: dict[str, float]) -> None:
    for stage, seconds in timings.items():
        observe(client, prefix, stage, seconds)


# -- worker heartbeats ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerBeat:
    worker_id: str
    at: float
    model: str
    model_version: str
    providers: list[str]


def heartbeat(
    client: redis.Redis,
    prefix: str,
    worker_id: str,
    model: str,
    model_version: str,
    providers: list[str],
) -> None:
    """A worker with its model loaded says so; call every ``worker_heartbeat_s`` seconds."""
    value = json.dumps(
        {"at": time.time(), "model": model, "model_version": model_version, "providers": list(providers)}
    )
    try:
        client.hset(workers_key(prefix), worker_id, value)
    except redis.RedisError as exc:
        log.warning("heartbeat of %s not recorded: %s", worker_id, exc)


def remove_worker(client: redis.Redis, prefix: str, worker_id: str) -> None:
    """A worker that stops cleanly leaves the list at once instead of aging out."""
    try:
        client.hdel(workers_key(prefix), worker_id)
    except redis.RedisError as exc:
        log.warning("worker %s not removed: %s", worker_id, exc)


def live_workers(client: redis.Redis, prefix: str, max_age_s: float) -> list[WorkerBeat]:
    """Workers whose last heartbeat is younger than ``max_age_s``; raises redis errors (readiness wants them)."""
    now = time.time()
    out = []
    for worker_id, raw in client.hgetall(workers_key(prefix)).items():
        try:
            beat = json.loads(raw)
            entry = WorkerBeat(
                worker_id=worker_id.decode() if isinstance(worker_id, bytes) else worker_id,
                at=float(beat["at"]),
                model=str(beat.get("model", "")),
                model_version=str(beat.get("model_version", "")),
                providers=[str(p) for p in beat.get("providers", [])],
            )
        except (ValueError, KeyError, TypeError):
            continue
        if now - entry.at <= max_age_s:
            out.append(entry)
        elif now - entry.at > FORGET_WORKER_AFTER_S:  # killed without saying goodbye, long ago
            client.hdel(workers_key(prefix), entry.worker_id)
    return out
