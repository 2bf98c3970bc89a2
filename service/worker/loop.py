"""The worker: one model per process, jobs from the shared consumer group, at-least-once.

For each job: state processing -> results on disk -> delivery enqueued -> state done -> XACK. A worker
killed anywhere before the XACK leaves the entry pending; another worker reclaims it after the visibility
timeout and, because result UIDs derive from the job id, writes and delivers the very same instances.
SIGTERM lets the current job finish, then the worker leaves the group's live list and exits.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import traceback
from dataclasses import dataclass

import redis

from service import telemetry
from service.config import Settings
from service.deliver.outbox import Outbox
from service.encode.results import DICOM_KINDS
from service.errors import QueueError, StudyNotFoundError
from service.queue.state import StudyState, StudyStore
from service.queue.stream import Delivery, JobQueue
from service.worker.pipeline import INPUT_ERRORS, Model, ProcessedJob, process_job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobOutcome:
    job_id: str
    study_uid: str
    state: StudyState
    error: str | None = None
    processed: ProcessedJob | None = None


class Worker:
    def __init__(self, settings: Settings, model: Model, redis_client: redis.Redis | None = None,
                 name: str | None = None) -> None:
        self.settings = settings
        self.model = model
        self.name = name or f"worker-{socket.gethostname()}-{os.getpid()}"
        self.redis = redis_client or redis.Redis.from_url(settings.redis_url)
        self.queue = JobQueue(self.redis, settings)
        self.store = StudyStore(self.redis, settings.stream_prefix)
        self.outbox = Outbox(self.redis, settings)

    # -- one job ------------------------------------------------------------------------------------------

    def run_once(self, block_ms: int = 1000) -> JobOutcome | None:
        """Claim and process one job; None when none came within block_ms."""
        delivery = self.queue.claim(self.name, block_ms=block_ms)
        if delivery is None:
            return None
        job = delivery.job
        log.info("job %s (attempt %d) claimed by %s", job.job_id, delivery.attempt, self.name)
        self._record(job.study_uid, StudyState.PROCESSING, attempts=delivery.attempt, job_id=job.job_id, error=None)
        finished = threading.Event()
        renewer = threading.Thread(target=self._keep_claimed, args=(delivery, finished), name="renew-claim",
                                   daemon=True)
        renewer.start()
        try:
            processed = process_job(job, self.model, self.settings)
        except INPUT_ERRORS as exc:
            return self._unless_lost(delivery, finished, renewer) or self._fail_input(delivery, str(exc))
        except Exception as exc:  # noqa: BLE001 - the queue's retry-or-dead-letter is the edge for everything else
            return self._unless_lost(delivery, finished, renewer) or self._fail_retry(delivery, exc)
        return self._unless_lost(delivery, finished, renewer) or self._finish(delivery, processed)

    def _keep_claimed(self, delivery: Delivery, finished: threading.Event) -> None:
        """Renew the claim every third of the visibility timeout while the job runs, so a job slower than
        the timeout is not handed to a second worker; stops early once the claim is lost."""
        interval = max(0.05, self.settings.visibility_timeout_s / 3)
        while not finished.wait(interval):
            try:
                if not self.queue.renew(delivery, self.name):
                    return
            except QueueError as exc:
                log.warning("%s; trying again in %.1f s", exc, interval)

    def _unless_lost(self, delivery: Delivery, finished: threading.Event, renewer: threading.Thread
                     ) -> JobOutcome | None:
        """None while this worker still holds the job; otherwise (another worker reclaimed it, Redis lost
        it) an outcome that records, delivers and acknowledges nothing: the holder does that, once."""
        finished.set()
        renewer.join()
        if self.queue.renew(delivery, self.name):
            return None
        job = delivery.job
        log.warning("job %s: claim lost while in progress; its results are left to the worker that holds it",
                    job.job_id)
        return JobOutcome(job.job_id, job.study_uid, StudyState.PROCESSING, "claim lost while in progress")

    def _finish(self, delivery: Delivery, processed: ProcessedJob) -> JobOutcome:
        job = delivery.job
        if self.settings.destinations:
            self.outbox.enqueue(job.study_uid, job.job_id, DICOM_KINDS)
        existing = self.store.get(job.study_uid)
        warnings = list(dict.fromkeys([*(existing.warnings if existing else []), *processed.warnings]))
        self._record(
            job.study_uid,
            StudyState.DONE,
            timings={k: round(v, 4) for k, v in processed.timings.items()},
            results=processed.results,
            results_dir=str(processed.results_dir),
            warnings=warnings,
            error=None,
        )
        self.queue.ack(delivery)
        telemetry.observe_all(self.redis, self.settings.stream_prefix, processed.timings)
        log.info("job %s done in %.2f s", job.job_id, processed.timings.get("total", 0.0))
        return JobOutcome(job.job_id, job.study_uid, StudyState.DONE, processed=processed)

    def _fail_input(self, delivery: Delivery, reason: str) -> JobOutcome:
        """The study itself cannot be processed: fail it now; retrying would give the same answer."""
        job = delivery.job
        self._record(job.study_uid, StudyState.FAILED, error=reason)
        self.queue.ack(delivery)
        telemetry.incr(self.redis, self.settings.stream_prefix, telemetry.JOBS_FAILED, reason="input")
        log.warning("job %s failed: %s", job.job_id, reason)
        return JobOutcome(job.job_id, job.study_uid, StudyState.FAILED, reason)

    def _fail_retry(self, delivery: Delivery, exc: Exception) -> JobOutcome:
        job = delivery.job
        reason = f"{type(exc).__name__}: {exc}"
        log.error("job %s attempt %d failed: %s\n%s", job.job_id, delivery.attempt, reason,
                  "".join(traceback.format_exception(exc)[-3:]))
        requeued = self.queue.fail(delivery, reason)
        state = StudyState.QUEUED if requeued else StudyState.FAILED
        self._record(job.study_uid, state, error=reason)
        if not requeued:
            telemetry.incr(self.redis, self.settings.stream_prefix, telemetry.JOBS_FAILED, reason="attempts")
        return JobOutcome(job.job_id, job.study_uid, state, reason)

    def _record(self, study_uid: str, state: StudyState, **fields) -> None:
        try:
            self.store.transition(study_uid, state, **fields)
        except StudyNotFoundError:  # enqueued by hand or the record expired: recreate it
            self.store.ensure(study_uid)
            self.store.transition(study_uid, state, **fields)

    # -- the loop -----------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Process jobs until stop is set; Redis outages are waited out."""
        beat = threading.Thread(target=self._heartbeat, args=(stop,), name="heartbeat", daemon=True)
        beat.start()
        try:
            while not stop.is_set():
                try:
                    self.run_once(block_ms=1000)
                except QueueError as exc:
                    log.warning("%s; retrying in 2 s", exc)
                    stop.wait(2.0)
        finally:
            telemetry.remove_worker(self.redis, self.settings.stream_prefix, self.name)

    def _heartbeat(self, stop: threading.Event) -> None:
        card = self.model.card
        providers = self.model.providers
        while not stop.is_set():
            telemetry.heartbeat(self.redis, self.settings.stream_prefix, self.name, str(card.get("name", "")),
                                str(card.get("version", "")), providers)
            stop.wait(self.settings.worker_heartbeat_s)

