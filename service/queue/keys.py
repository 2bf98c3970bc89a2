"""Every Redis key this project uses, in one place (settings.stream_prefix namespaces them all)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "lumbar-ai"

    @property
    def jobs(self) -> str:
        """Stream of jobs; the consumer group reads it."""
        return f"{self.prefix}:jobs"

    @property
    def dead_letters(self) -> str:
        """Stream of jobs that failed max_attempts times, with their reason."""
        return f"{self.prefix}:jobs:dead"

    def job_id(self, job_id: str) -> str:
        """Idempotency key of one job id: "queued", "done" or "dead"; present = not enqueued again."""
        return f"{self.prefix}:jobid:{job_id}"

    def study(self, study_uid: str) -> str:
        """JSON StudyRecord of one study."""
        return f"{self.prefix}:study:{study_uid}"

    @property
    def studies(self) -> str:
        """Sorted set of every study UID, scored by received_at (paged listing)."""
        return f"{self.prefix}:studies"

    def studies_in(self, state: str) -> str:
        """Sorted set of the study UIDs in one state, scored by received_at."""
        return f"{self.prefix}:studies:{state}"
