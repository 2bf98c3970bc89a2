"""Study state in Redis: one JSON record per study, indexed by state for paged listing.

The record is what the API returns for GET /studies/{uid}; every stage writes its part: the assembler the
counts, series summary and selection decisions; the worker timings, attempts and results. Writes are
read-modify-write under WATCH, so concurrent writers (assembler, workers, API) never lose each other's
fields.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis

from service.errors import QueueError, StudyNotFoundError
from service.queue.keys import Keys


class StudyState(StrEnum):
    RECEIVED = "received"
    """Instances are arriving or the study waits for its quiet period."""
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


@dataclass
class SeriesSummary:
    """One series of the study as the selection saw it, with the decision taken and why."""

    series_uid: str
    description: str = ""
    modality: str = ""
    count: int = 0
    series_number: int | None = None
    orientation: str = "unknown"
    """sagittal, coronal, axial, oblique, mixed or unknown (from ImageOrientationPatient)."""
    weighting: str = "unknown"
    """T1, T2, STIR, PD, localizer, derived, ours, not-mr or unknown."""
    role: str | None = None
    """"t1" or "t2" when selected, None otherwise."""
    reason: str = ""

    def label(self) -> str:
        """Short human name, e.g. "AX T2 (12 images)"."""
        name = self.description or f"series {self.series_number or self.series_uid}"
        return f"{name} ({self.count} image{'s' if self.count != 1 else ''})"


@dataclass
class StudyRecord:
    study_uid: str
    state: StudyState = StudyState.RECEIVED
    received_at: float = 0.0
    """When the first instance was seen (epoch seconds)."""
    updated_at: float = 0.0
    state_times: dict[str, float] = field(default_factory=dict)
    """When the study last entered each state (epoch seconds)."""
    instances: int = 0
    ignored_instances: int = 0
    series: list[SeriesSummary] = field(default_factory=list)
    t1_series_uid: str | None = None
    t2_series_uid: str | None = None
    decisions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    job_id: str | None = None
    attempts: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage, e.g. {"decode": 0.4, "image_encoder": 1.2}."""
    results_dir: str | None = None
    results: dict[str, str] = field(default_factory=dict)
    """Result kind -> path, e.g. {"seg": ".../seg.dcm", "sr": ..., "report": ..., "preview": ...}."""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["state"] = self.state.value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}  # tolerate fields added by newer versions
        values["state"] = StudyState(values.get("state", StudyState.RECEIVED))
        values["series"] = [_series(s) for s in values.get("series", [])]
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> StudyRecord:
        return cls.from_dict(json.loads(text))


def _series(value: SeriesSummary | dict[str, Any]) -> SeriesSummary:
    if isinstance(value, SeriesSummary):
        return value
    known = {f.name for f in dataclasses.fields(SeriesSummary)}
    return SeriesSummary(**{k: v for k, v in value.items() if k in known})


_FIELDS = {f.name for f in dataclasses.fields(StudyRecord)} - {
    "study_uid",
    "state",
    "updated_at",
    "state_times",
}


class StudyStore:
    """Reads and writes StudyRecords; every Redis failure surfaces as QueueError."""

    def __init__(self, redis_client: redis.Redis, prefix: str = "lumbar-ai") -> None:
        self.redis = redis_client
        self.keys = Keys(prefix)

    def get(self, study_uid: str) -> StudyRecord | None:
        try:
            raw = self.redis.get(self.keys.study(study_uid))
        except redis.RedisError as exc:
            raise QueueError(f"Redis unavailable reading study {study_uid}: {exc}") from exc
        return StudyRecord.from_json(raw) if raw else None

    def list(
        self, state: StudyState | str | None = None, offset: int = 0, limit: int = 50
    ) -> tuple[list[StudyRecord], int]:
        """A page of records, newest received first, and the total count (of that state)."""
        index = self.keys.studies if state is None else self.keys.studies_in(StudyState(state).value)
        try:
            total = int(self.redis.zcard(index))
            uids = self.redis.zrevrange(index, offset, offset + max(limit, 0) - 1) if limit > 0 else []
            raws = self.redis.mget([self.keys.study(_text(u)) for u in uids]) if uids else []
        except redis.RedisError as exc:
            raise QueueError(f"Redis unavailable listing studies: {exc}") from exc
        return [StudyRecord.from_json(r) for r in raws if r], total

    def ensure(self, study_uid: str, received_at: float | None = None, **fields: Any) -> StudyRecord:
        """The record, created in state received when absent; fields are set either way."""
        at = time.time() if received_at is None else received_at

        def change(old: StudyRecord | None) -> StudyRecord:
            record = old or StudyRecord(
                study_uid, StudyState.RECEIVED, at, at, {StudyState.RECEIVED.value: at}
            )
            return _apply(record, None, fields)

        return self._modify(study_uid, change, create=True)

    def transition(self, study_uid: str, state: StudyState | str, **fields: Any) -> StudyRecord:
        """Move to a state (recording when), setting fields at the same time; StudyNotFoundError if absent."""
        new_state = StudyState(state)
        return self._modify(study_uid, lambda old: _apply(old, new_state, fields))

    def update(self, study_uid: str, **fields: Any) -> StudyRecord:
        """Set fields without changing state; StudyNotFoundError if absent."""
        return self._modify(study_uid, lambda old: _apply(old, None, fields))

    def delete(self, study_uid: str) -> bool:
        try:
            record = self.get(study_uid)
            pipe = self.redis.pipeline()
            pipe.delete(self.keys.study(study_uid))
            pipe.zrem(self.keys.studies, study_uid)
            for s in StudyState:
                pipe.zrem(self.keys.studies_in(s.value), study_uid)
            pipe.execute()
        except redis.RedisError as exc:
            raise QueueError(f"Redis unavailable deleting study {study_uid}: {exc}") from exc
        return record is not None

    def _modify(
        self, study_uid: str, change: Callable[[StudyRecord | None], StudyRecord], create: bool = False
    ) -> StudyRecord:
        key = self.keys.study(study_uid)
        try:
            with self.redis.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(key)
                        raw = pipe.get(key)
                        old = StudyRecord.from_json(raw) if raw else None
                        if old is None and not create:
                            raise StudyNotFoundError(f"no state recorded for study {study_uid}")
                        old_state = old.state if old else None
                        new = change(old)
                        pipe.multi()
                        pipe.set(key, new.to_json())
                        pipe.zadd(self.keys.studies, {study_uid: new.received_at})
                        if old_state is not None and old_state != new.state:
                            pipe.zrem(self.keys.studies_in(old_state.value), study_uid)
                        pipe.zadd(self.keys.studies_in(new.state.value), {study_uid: new.received_at})
                        pipe.execute()
                        return new
                    except redis.WatchError:
                        continue
        except redis.RedisError as exc:
            raise QueueError(f"Redis unavailable writing study {study_uid}: {exc}") from exc


def _apply(record: StudyRecord, state: StudyState | None, fields: dict[str, Any]) -> StudyRecord:
    unknown = set(fields) - _FIELDS
    if unknown:
        raise ValueError(f"StudyRecord has no field(s) {sorted(unknown)}")
    now = time.time()
    values = dict(fields)
    if "series" in values:
        values["series"] = [_series(s) for s in values["series"]]
    new = dataclasses.replace(record, **values, updated_at=now)
    if state is not None:
        new.state = state
        new.state_times = {**record.state_times, state.value: now}
    return new


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
