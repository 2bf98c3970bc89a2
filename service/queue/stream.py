"""The job queue: a Redis Stream read by one consumer group, at-least-once.

Producer: :meth:`JobQueue.enqueue` adds a job unless its job id was already queued, done or dead (an
idempotency key set in the same atomic step). Consumer (the worker)::

    delivery = queue.claim("worker-1", block_ms=5000)   # new entry, or one idle past the visibility timeout
    ... persist results ...
    queue.ack(delivery)                                  # XACK + XDEL only after the results are on disk
    # or, on error:
    queue.fail(delivery, "reason")                       # requeued while attempts remain, else dead-lettered

A worker that dies holding an entry loses it to the next claim after ``visibility_timeout_s`` (XAUTOCLAIM);
every delivery counts as an attempt, so a job that kills its worker ends in the dead-letter stream too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import redis

from service.errors import QueueError
from service.queue.jobs import Job
from service.queue.keys import Keys

T = TypeVar("T")

_ENQUEUE = """
if redis.call('SET', KEYS[1], 'queued', 'NX') then
  return redis.call('XADD', KEYS[2], '*', unpack(ARGV))
end
return false
"""

# KEYS: stream, target stream, job id key. ARGV: group, entry id, job id key value, fields...
_MOVE = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return false end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3])
return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
"""

# KEYS: stream. ARGV: group, consumer, entry id. Resets the entry's idle time while this consumer holds it.
_RENEW = """
local held = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #held == 0 then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""

_ACK = """
local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], 'done')
return n
"""


@dataclass(frozen=True)
class Delivery:
    """One job handed to one consumer; attempt counts every delivery of this job (1 = first)."""

    entry_id: str
    job: Job
    attempt: int
    last_error: str | None = None
    """The reason the previous attempt failed, if any."""


@dataclass(frozen=True)
class DeadLetter:
    entry_id: str
    job: Job
    reason: str
    attempts: int
    failed_at: float


class JobQueue:
    def __init__(
        self,
        redis_client: redis.Redis,
        settings=None,
        *,
        prefix: str | None = None,
        group: str | None = None,
        visibility_timeout_s: float | None = None,
        max_attempts: int | None = None,
    ) -> None:
        self.redis = redis_client
        self.keys = Keys(prefix or (settings.stream_prefix if settings else "lumbar-ai"))
        self.group = group or (settings.consumer_group if settings else "workers")
        vis = (
            visibility_timeout_s
            if visibility_timeout_s is not None
            else getattr(settings, "visibility_timeout_s", 300.0)
        )
        self.visibility_ms = max(1, int(vis * 1000))
        self.max_attempts = max_attempts or (settings.max_attempts if settings else 3)
        self._enqueue = redis_client.register_script(_ENQUEUE)
        self._move = redis_client.register_script(_MOVE)
        self._ack = redis_client.register_script(_ACK)
        self._renew = redis_client.register_script(_RENEW)
        self._group_ready = False

    # -- producer ------------------------------------------------------------------------------------------

    def enqueue(self, job: Job) -> bool:
        """Add the job; False when its job id was already queued, processed or dead-lettered."""
        fields = {**job.to_fields(), "attempt_base": "0"}
        argv = [x for kv in fields.items() for x in kv]
        try:
            self._ensure_group()
            entry = self._enqueue(keys=[self.keys.job_id(job.job_id), self.keys.jobs], args=argv)
        except redis.RedisError as exc:
            raise QueueError(f"Redis unavailable enqueueing {job.job_id}: {exc}") from exc
        return entry is not None

    def forget(self, job_id: str) -> bool:
        """Drop a job id's idempotency key so that the same job may be enqueued again (explicit retry)."""
        try:
            return bool(self.redis.delete(self.keys.job_id(job_id)))
        except redis.RedisError as exc:
            raise QueueError(f"Redis unavailable: {exc}") from exc

    def mark_done(self, job_id: str) -> None:
        """Remember a job id as done whose results are on disk (reconciliation after Redis lost its data),
        so the same content is not enqueued again."""
        try:
            self.redis.set(self.keys.job_id(job_id), "done")
        except redis.RedisError as exc:
            raise QueueError(f"Redis unavailable: {exc}") from exc

    def job_status(self, job_id: str) -> str | None:
        """ "queued", "done", "dead" or None (never enqueued, or forgotten)."""
        try:
            value = self.redis.get(self.keys.job_id(job_id))
        except redis.RedisError as exc:
            raise QueueError(f"Redis unavailable: {exc}") from exc
        return _text(value) if value is not None else None

    # -- consumer ------------------------------------------------------------------------------------------

    def claim(self, consumer_name: str, block_ms: int = 5000) -> Delivery | None:
        """The next job for this consumer: first an entry idle past the visibility timeout, else a new one.

        Blocks up to block_ms for a new entry (0 or less: do not block). Entries whose attempts are used up
        when reclaimed go to the dead-letter stream instead of being returned.
        """
        return claim_making_group_again(lambda: self._claim(consumer_name, block_ms), self._forget_group,
                                        "claiming a job")

    def _forget_group(self) -> None:
        self._group_ready = False

    def _claim(self, consumer_name: str, block_ms: int) -> Delivery | None:
        self._ensure_group()
        while True:
            reclaimed = self._reclaim_one(consumer_name)
            if reclaimed is None:
                break
            if reclaimed.attempt <= self.max_attempts:
                return reclaimed
            self._dead_letter(
                reclaimed,
                reclaimed.last_error
                or f"worker did not finish within {self.visibility_ms / 1000:g} s, {self.max_attempts} times",
                attempts=reclaimed.attempt - 1,
            )
        response = self.redis.xreadgroup(
            self.group,
            consumer_name,
            {self.keys.jobs: ">"},
            count=1,
            block=block_ms if block_ms > 0 else None,
        )
        for _stream, entries in response or []:
            for entry_id, fields in entries:
                if fields:
                    return self._delivery(_text(entry_id), fields, times_delivered=1)
        return None

    def renew(self, delivery: Delivery, consumer_name: str) -> bool:
        """Keep a job in progress claimed: reset its idle time, so no other worker reclaims it after the
        visibility timeout. False when this consumer no longer holds it (reclaimed, acknowledged or gone):
        the caller must then not deliver or acknowledge its results."""
        try:
            return bool(self._renew(keys=[self.keys.jobs], args=[self.group, consumer_name, delivery.entry_id]))
        except redis.RedisError as exc:
            raise QueueError(f"Redis unavailable renewing {delivery.job.job_id}: {exc}") from exc

    def ack(self, delivery: Delivery) -> None:
        """The job's results are persisted: remove it from the stream and remember its id as done."""
        try:
            self._ack(
                keys=[self.keys.jobs, self.keys.job_id(delivery.job.job_id)],
                args=[self.group, delivery.entry_id],
            )
        except redis.RedisError as exc:
            raise QueueError(f"Redis unavailable acknowledging {delivery.job.job_id}: {exc}") from exc

    def fail(self, delivery: Delivery, reason: str) -> bool:
        """Record a failed attempt. True: requeued for another attempt; False: moved to the dead letters."""
        try:
            if delivery.attempt < self.max_attempts:
                fields = {
                    **delivery.job.to_fields(),
                    "attempt_base": str(delivery.attempt),
                    "last_error": reason,
                }
                self._move(
                    keys=[self.keys.jobs, self.keys.jobs, self.keys.job_id(delivery.job.job_id)],
                    args=[self.group, delivery.entry_id, "queued", *[x for kv in fields.items() for x in kv]],
                )
                return True
            self._dead_letter(delivery, reason, attempts=delivery.attempt)
        except redis.RedisError as exc:
            raise QueueError(f"Redis unavailable failing {delivery.job.job_id}: {exc}") from exc
        return False

    # -- inspection ----------------------------------------------------------------------------------------

    def depth(self) -> int:
        """Jobs in the stream: waiting plus in progress (acknowledged entries are deleted)."""
        try:
            return int(self.redis.xlen(self.keys.jobs))
        except redis.RedisError as exc:
            raise QueueError(f"Redis unavailable: {exc}") from exc

    def in_progress(self) -> int:
        """Entries delivered to a consumer and not yet acknowledged."""
        try:
            self._ensure_group()
            return int(self.redis.xpending(self.keys.jobs, self.group)["pending"])
        except redis.RedisError as exc:
            raise QueueError(f"Redis unavailable: {exc}") from exc

    def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, newest first."""
        try:
            entries = self.redis.xrevrange(self.keys.dead_letters, count=count)
        except redis.RedisError as exc:
            raise QueueError(f"Redis unavailable: {exc}") from exc
        out = []
        for entry_id, fields in entries:
            f = {_text(k): _text(v) for k, v in fields.items()}
            out.append(
                DeadLetter(
                    _text(entry_id),
                    Job.from_fields(f),
                    f.get("reason", ""),
                    int(f.get("attempts", 0)),
                    float(f.get("failed_at", 0.0)),
                )
            )
        return out

    # -- internals -----------------------------------------------------------------------------------------

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self.redis.xgroup_create(self.keys.jobs, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _reclaim_one(self, consumer_name: str) -> Delivery | None:
        """Claim one entry idle beyond the visibility timeout, walking the whole pending list.

        XAUTOCLAIM looks at a bounded number of pending entries per call, so with many jobs in progress
        a stale one further down is reached by following its cursor until it wraps to 0-0.
        """
        cursor = "0-0"
        while True:
            response = self.redis.xautoclaim(
                self.keys.jobs,
                self.group,
                consumer_name,
                min_idle_time=self.visibility_ms,
                start_id=cursor,
                count=1,
            )
            cursor = _text(response[0])
            for entry_id, fields in response[1] if len(response) > 1 else []:
                entry_id = _text(entry_id)
                if not fields:  # deleted while pending (Redis 6.2 reports it): drop it from the pending list
                    self.redis.xack(self.keys.jobs, self.group, entry_id)
                    continue
                pending = self.redis.xpending_range(
                    self.keys.jobs, self.group, min=entry_id, max=entry_id, count=1
                )
                times = int(pending[0]["times_delivered"]) if pending else 1
                return self._delivery(entry_id, fields, times_delivered=times)
            if cursor == "0-0":
                return None

    def _delivery(self, entry_id: str, fields, times_delivered: int) -> Delivery:
        f = {_text(k): _text(v) for k, v in fields.items()}
        base = int(f.get("attempt_base") or 0)
        return Delivery(entry_id, Job.from_fields(f), base + times_delivered, f.get("last_error") or None)

    def _dead_letter(self, delivery: Delivery, reason: str, attempts: int) -> None:
        fields = {
            **delivery.job.to_fields(),
            "reason": reason,
            "attempts": str(attempts),
            "failed_at": repr(time.time()),
        }
        self._move(
            keys=[self.keys.jobs, self.keys.dead_letters, self.keys.job_id(delivery.job.job_id)],
            args=[self.group, delivery.entry_id, "dead", *[x for kv in fields.items() for x in kv]],
        )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def claim_making_group_again(claim: Callable[[], T], forget_group: Callable[[], None], what: str) -> T:
    """``claim()``; when Redis answers NOGROUP (it restarted without its data, and reconciliation refills
    the stream) the consumer group is made again and the claim tried once more. Redis errors become
    QueueError."""
    try:
        return claim()
    except redis.ResponseError as exc:
        if not str(exc).startswith("NOGROUP"):
            raise QueueError(f"Redis unavailable {what}: {exc}") from exc
    except redis.RedisError as exc:
        raise QueueError(f"Redis unavailable {what}: {exc}") from exc
    forget_group()
    try:
        return claim()
    except redis.RedisError as exc:
        raise QueueError(f"Redis unavailable {what}: {exc}") from exc
