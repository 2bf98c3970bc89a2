"""What the REST API calls for POST /studies/{uid}/process, POST /studies/{uid}/retry, DELETE /studies/{uid}.

They run in the API's process against the same spool volume and Redis as the listener's assembler; job ids
make a race between the two harmless (the same content is enqueued once).
"""

from __future__ import annotations

from service.assemble.assembler import Assembler
from service.assemble.rules import load_rules
from service.deliver.outbox import Outbox
from service.errors import StudyNotFoundError
from service.queue.state import StudyRecord, StudyStore
from service.queue.stream import JobQueue
from service.receive.spool import Spool


def build_assembler(settings, redis_client) -> Assembler:
    """The assembler of these settings (spool, state, queue, rules) over one Redis client."""
    return Assembler(
        spool=Spool.from_settings(settings),
        store=StudyStore(redis_client, settings.stream_prefix),
        queue=JobQueue(redis_client, settings),
        rules=load_rules(settings.series_rules, own_manufacturer=settings.manufacturer),
        quiet_period_s=settings.quiet_period_s,
        settle_s=settings.series_settle_s,
        retention_s=settings.retention_days * 86400.0,
        sweep_interval_s=getattr(settings, "retention_sweep_interval_s", 3600.0),
        results_dir=settings.results_dir,
        outbox=Outbox(redis_client, settings) if settings.destinations else None,
        recover_interval_s=settings.recover_interval_s,
    )


def force_complete(settings, redis_client, study_uid: str) -> StudyRecord:
    """Assemble and enqueue a study now, without waiting for its quiet period.

    Raises StudyNotFoundError when the spool holds nothing of the study; a study with no usable series
    ends in state failed with its reason (returned, not raised).
    """
    return build_assembler(settings, redis_client).assemble(study_uid, why="complete: processing requested")


def retry(settings, redis_client, study_uid: str) -> StudyRecord:
    """Process a study again: forget its last job id (so the same content may run again) and re-assemble.

    Re-assembling also re-runs series selection, so a study that failed for want of series is retried
    with the current rules.
    """
    store = StudyStore(redis_client, settings.stream_prefix)
    record = store.get(study_uid)
    if record is None:
        raise StudyNotFoundError(f"no state recorded for study {study_uid}")
    if record.job_id:
        JobQueue(redis_client, settings).forget(record.job_id)
    return build_assembler(settings, redis_client).assemble(study_uid, why="complete: retry requested")


def delete_study(settings, redis_client, study_uid: str) -> bool:
    """Remove a study's spooled instances, state and job id; False when nothing of it existed.

    Results under settings.results_dir belong to the worker and are not touched here.
    """
    store = StudyStore(redis_client, settings.stream_prefix)
    record = store.get(study_uid)
    if record is not None and record.job_id:
        JobQueue(redis_client, settings).forget(record.job_id)
    deleted_state = store.delete(study_uid)
    deleted_files = Spool.from_settings(settings).delete_study(study_uid)
    return deleted_state or deleted_files
