"""The job a worker receives: ids only, never paths to patient data, never patient data.

The job id is the idempotency key: StudyInstanceUID + ":" + a short digest of the selected instances
(their SOP Instance UIDs and sizes). Sending the same study again gives the same id, so it is not processed
twice; a study that received new instances in its selected series gets a new id and is processed again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

DIGEST_CHARS = 16


def make_job_id(study_uid: str, selected_instances: Iterable[tuple[str, int]]) -> str:
    """StudyInstanceUID:digest, the digest over sorted (SOP Instance UID, size in bytes) pairs."""
    h = hashlib.sha256()
    for sop_uid, size in sorted(selected_instances):
        h.update(f"{sop_uid}:{size}\n".encode())
    return f"{study_uid}:{h.hexdigest()[:DIGEST_CHARS]}"


@dataclass(frozen=True)
class Job:
    job_id: str
    study_uid: str
    t2_series_uid: str | None
    t1_series_uid: str | None
    created_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if not self.job_id.startswith(self.study_uid + ":"):
            raise ValueError(f"job_id {self.job_id!r} does not start with its study_uid")
        if self.t1_series_uid is None and self.t2_series_uid is None:
            raise ValueError("a job needs a T1 or a T2 series")

    def to_fields(self) -> dict[str, str]:
        """Stream entry fields (strings; a missing series is the empty string)."""
        return {
            "job_id": self.job_id,
            "study_uid": self.study_uid,
            "t2_series_uid": self.t2_series_uid or "",
            "t1_series_uid": self.t1_series_uid or "",
            "created_at": repr(self.created_at),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str | bytes, str | bytes]) -> Job:
        f = {_text(k): _text(v) for k, v in fields.items()}
        return cls(
            job_id=f["job_id"],
            study_uid=f["study_uid"],
            t2_series_uid=f.get("t2_series_uid") or None,
            t1_series_uid=f.get("t1_series_uid") or None,
            created_at=float(f.get("created_at") or 0.0),
        )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
