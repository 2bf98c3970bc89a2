"""The delivery outbox: one task per (job, destination), in Redis, so that it survives restarts.

Keys (all under settings.stream_prefix)::

    <p>:deliver              stream of tasks ready to send, read by the consumer group "deliverers"
    <p>:deliver:delayed      sorted set of tasks waiting for their next attempt, scored by due time
    <p>:deliver:dead         stream of tasks that failed deliver_max_attempts times, with the reason
    <p>:deliver:task:<job>:<destination>   idempotency key: a retried job never enqueues twice
    <p>:delivery:<study>     hash destination -> JSON status (pending, delivered, dead) for the API

A failed attempt leaves the stream and waits in the delayed set for min(cap, base * 2^(n-1)) seconds
with "equal jitter" (half fixed, half random), so that many studies queued during a PACS outage do not
hit it all at once when it returns. A task whose deliverer died is taken over after the visibility
timeout. Moves between the three places are Lua scripts, so a task is never in two of them or in none.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass

import redis

from service.config import Destination, Settings
from service.deliver.scu import describe
from service.errors import QueueError
from service.queue.stream import claim_making_group_again

GROUP = "deliverers"
TASK_KEY_TTL_S = 30 * 86400

_ENQUEUE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
  return redis.call('XADD', KEYS[2], '*', 'task', ARGV[1], 'enqueued_at', ARGV[2])
end
return false
"""

# KEYS: delayed zset, stream. ARGV: now, max
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('XADD', KEYS[2], '*', 'task', member, 'enqueued_at', ARGV[1])
end
return #due
"""

# KEYS: stream, delayed zset or dead stream, status hash. ARGV: group, entry, mode, score, task, field, status
_SETTLE = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
if ARGV[3] == 'retry' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
elseif ARGV[3] == 'dead' then
  redis.call('XADD', KEYS[2], '*', 'task', ARGV[5], 'failed_at', ARGV[4])
end
redis.call('HSET', KEYS[3], ARGV[6], ARGV[7])
return 1
"""


@dataclass(frozen=True)
class DeliveryTask:
    study_uid: str
    job_id: str
    destination: Destination
    kinds: tuple[str, ...]
    """Result kinds to send (files under results_dir/<study>/)."""
    attempt: int = 1
    last_error: str | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data["destination"] = self.destination.model_dump()
        data["kinds"] = list(self.kinds)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> DeliveryTask:
        data = json.loads(text)
        data["destination"] = Destination(**data["destination"])
        data["kinds"] = tuple(data["kinds"])
        return cls(**data)


@dataclass(frozen=True)
class ClaimedTask:
    entry_id: str
    task: DeliveryTask


def backoff_s(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Delay before attempt ``attempt + 1``: exponential up to the cap, half of it random."""
    delay = min(cap_s, base_s * 2 ** max(0, attempt - 1))
    return delay / 2 + (rng or random).uniform(0, delay / 2)


class Outbox:
    def __init__(self, redis_client: redis.Redis, settings: Settings) -> None:
        self.redis = redis_client
        self.settings = settings
        p = settings.stream_prefix
        self.stream = f"{p}:deliver"
        self.delayed = f"{p}:deliver:delayed"
        self.dead = f"{p}:deliver:dead"
        self._prefix = p
        self._enqueue = redis_client.register_script(_ENQUEUE)
        self._promote = redis_client.register_script(_PROMOTE)
        self._settle = redis_client.register_script(_SETTLE)
        self._group_ready = False

    def status_key(self, study_uid: str) -> str:
        return f"{self._prefix}:delivery:{study_uid}"

    def task_key(self, job_id: str, destination: Destination) -> str:
        return f"{self._prefix}:deliver:task:{job_id}:{describe(destination)}"

    # -- producer (the worker) ----------------------------------------------------------------------------

    def enqueue(self, study_uid: str, job_id: str, kinds: tuple[str, ...],
                destinations: list[Destination] | None = None) -> int:
        """One task per destination (default: every configured one); returns how many were new (0 for a
        retried job)."""
        added = 0
        try:
            self._ensure_group()
            for destination in self.settings.destinations if destinations is None else destinations:
                task = DeliveryTask(study_uid, job_id, destination, tuple(kinds))
                status = json.dumps({"state": "pending", "job_id": job_id, "attempts": 0, "at": time.time()})
                entry = self._enqueue(
                    keys=[self.task_key(job_id, destination), self.stream, self.status_key(study_uid)],
                    args=[task.to_json(), repr(time.time()), TASK_KEY_TTL_S, describe(destination), status],
                )
                added += entry is not None
        except redis.RedisError as exc:
            raise QueueError(f"Redis unavailable enqueueing delivery of {job_id}: {exc}") from exc
        return added

    # -- consumer (the deliverer) -------------------------------------------------------------------------

    def claim(self, consumer: str, block_ms: int = 1000) -> ClaimedTask | None:
        """A task whose deliverer died, else one that is due, else a new one (waiting up to block_ms)."""
        return claim_making_group_again(lambda: self._claim(consumer, block_ms), self._forget_group,
                                        "claiming a delivery")

    def _forget_group(self) -> None:
        self._group_ready = False

    def _claim(self, consumer: str, block_ms: int) -> ClaimedTask | None:
        self._ensure_group()
        self._promote(keys=[self.delayed, self.stream], args=[repr(time.time()), 100])
        stale = self.redis.xautoclaim(
            self.stream,
            GROUP,
            consumer,
            min_idle_time=int(self.settings.deliver_visibility_timeout_s * 1000),
            start_id="0-0",
            count=1,
        )
        entries = stale[1] if len(stale) > 1 else []
        entries = [e for e in entries if e[1]]
        if not entries:
            response = self.redis.xreadgroup(
                GROUP, consumer, {self.stream: ">"}, count=1, block=block_ms if block_ms > 0 else None
            )
            entries = [e for _, batch in response or [] for e in batch if e[1]]
        if not entries:
            return None
        entry_id, fields = entries[0]
        fields = {_text(k): _text(v) for k, v in fields.items()}
        return ClaimedTask(_text(entry_id), DeliveryTask.from_json(fields["task"]))

    def delivered(self, claimed: ClaimedTask) -> None:
        task = claimed.task
        status = {"state": "delivered", "job_id": task.job_id, "attempts": task.attempt, "at": time.time()}
        self._settle_as(claimed, "done", 0.0, task, status)

    def failed(self, claimed: ClaimedTask, reason: str) -> bool:
        """Schedule the next attempt (True) or dead-letter the task (False) when attempts are used up."""
        task = claimed.task
        if task.attempt >= self.settings.deliver_max_attempts:
            status = {"state": "dead", "job_id": task.job_id, "attempts": task.attempt, "reason": reason,
                      "at": time.time()}
            dead = DeliveryTask(task.study_uid, task.job_id, task.destination, task.kinds, task.attempt, reason)
            self._settle_as(claimed, "dead", time.time(), dead, status)
            return False
        delay = backoff_s(task.attempt, self.settings.deliver_backoff_s, self.settings.deliver_backoff_cap_s)
        due = time.time() + delay
        status = {"state": "pending", "job_id": task.job_id, "attempts": task.attempt, "reason": reason,
                  "next_attempt_at": due, "at": time.time()}
        retry = DeliveryTask(task.study_uid, task.job_id, task.destination, task.kinds, task.attempt + 1, reason)
        self._settle_as(claimed, "retry", due, retry, status)
        return True

    # -- inspection ---------------------------------------------------------------------------------------

    def status(self, study_uid: str) -> dict[str, dict]:
        """Destination -> its latest delivery status for one study (what the API shows)."""
        try:
            raw = self.redis.hgetall(self.status_key(study_uid))
        except redis.RedisError as exc:
            raise QueueError(f"Redis unavailable: {exc}") from exc
        return {_text(k): json.loads(v) for k, v in raw.items()}

    def dead_letters(self, count: int = 100) -> list[tuple[DeliveryTask, float]]:
        try:
            entries = self.redis.xrevrange(self.dead, count=count)
        except redis.RedisError as exc:
            raise QueueError(f"Redis unavailable: {exc}") from exc
        out = []
        for _, fields in entries:
            f = {_text(k): _text(v) for k, v in fields.items()}
            out.append((DeliveryTask.from_json(f["task"]), float(f.get("failed_at", 0.0))))
        return out

    def waiting(self) -> int:
        """Tasks not yet delivered or dead: in the stream plus delayed."""
        try:
            return int(self.redis.xlen(self.stream)) + int(self.redis.zcard(self.delayed))
        except redis.RedisError as exc:
            raise QueueError(f"Redis unavailable: {exc}") from exc

    # -- internals ----------------------------------------------------------------------------------------

    def _settle_as(self, claimed: ClaimedTask, mode: str, score: float, task: DeliveryTask, status: dict) -> None:
        target = {"retry": self.delayed, "dead": self.dead, "done": self.delayed}[mode]
        try:
            self._settle(
                keys=[self.stream, target, self.status_key(task.study_uid)],
                args=[GROUP, claimed.entry_id, mode, repr(score), task.to_json(), describe(task.destination),
                      json.dumps(status)],
            )
        except redis.RedisError as exc:
            raise QueueError(f"Redis unavailable settling delivery of {task.job_id}: {exc}") from exc

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
