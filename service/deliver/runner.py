"""Stage ⑥: ``lumbar-ai deliver`` sends results from the outbox to the PACS, and sweeps expired results.

It runs as its own process (or as a thread of the worker, ``lumbar-ai worker`` does so by default), so an
unreachable PACS only ever delays delivery, never inference.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from service import telemetry
from service.config import Settings, get_settings
from service.deliver.outbox import ClaimedTask, Outbox
from service.deliver.scu import describe, send_files, tls_context
from service.encode.results import FILE_NAMES, mark_delivered, study_results_dir, sweep_expired
from service.errors import DeliveryError, LumbarAIError, QueueError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    claimed: ClaimedTask
    delivered: bool
    will_retry: bool
    reason: str | None = None


def deliver_one(outbox: Outbox, settings: Settings, consumer: str, block_ms: int = 1000) -> Outcome | None:
    """Claim one task and try it once; None when nothing was due."""
    claimed = outbox.claim(consumer, block_ms=block_ms)
    if claimed is None:
        return None
    task = claimed.task
    name = describe(task.destination)
    try:
        folder = study_results_dir(settings.results_dir, task.study_uid)
        paths = [folder / FILE_NAMES[kind] for kind in task.kinds]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise DeliveryError(f"results missing on disk: {', '.join(missing)}")
        tls = tls_context(settings) if task.destination.tls else None
        send_files(task.destination, paths, settings.ae_title, settings.deliver_timeout_s, tls)
    except (LumbarAIError, OSError) as exc:
        reason = str(exc)
        will_retry = outbox.failed(claimed, reason)
        telemetry.incr(outbox.redis, settings.stream_prefix, telemetry.DELIVERY_FAILURES,
                       destination=task.destination.ae_title)
        log.warning(
            "delivery of job %s to %s failed (attempt %d): %s; %s",
            task.job_id, name, task.attempt, reason, "will retry" if will_retry else "dead-lettered",
        )
        return Outcome(claimed, False, will_retry, reason)
    mark_delivered(settings.results_dir, task.study_uid, name, task.job_id)
    outbox.delivered(claimed)
    telemetry.incr(outbox.redis, settings.stream_prefix, telemetry.DELIVERIES, destination=task.destination.ae_title)
    log.info("delivered job %s to %s (attempt %d)", task.job_id, name, task.attempt)
    return Outcome(claimed, True, False)


def run_loop(settings: Settings, stop: threading.Event, consumer: str | None = None,
             redis_client: redis.Redis | None = None) -> None:
    """Deliver until stop is set; Redis outages are waited out, never fatal."""
    consumer = consumer or f"deliver-{socket.gethostname()}-{os.getpid()}"
    client = redis_client or redis.Redis.from_url(settings.redis_url)
    outbox = Outbox(client, settings)
    next_sweep = 0.0
    while not stop.is_set():
        try:
            if time.time() >= next_sweep:
                removed = sweep_expired(settings.results_dir, settings.retention_days)
                if removed:
                    log.info("removed results of %d studies past %g days", len(removed), settings.retention_days)
                next_sweep = time.time() + settings.retention_sweep_interval_s
            deliver_one(outbox, settings, consumer, block_ms=1000)
        except QueueError as exc:
            log.warning("%s; retrying in 2 s", exc)
            stop.wait(2.0)


def start_thread(settings: Settings, stop: threading.Event, consumer: str) -> threading.Thread:
    thread = threading.Thread(target=run_loop, args=(settings, stop, consumer), name="deliver", daemon=True)
    thread.start()
    return thread


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--consumer", help="consumer name in the deliverers group (default: host-pid)")
    parser.add_argument("--sweep-only", action="store_true",
                        help="remove results older than the retention once, then exit")


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.sweep_only:
        removed = sweep_expired(Path(settings.results_dir), settings.retention_days)
        print(f"removed results of {len(removed)} studies")
        return 0
    if not settings.destinations:
        log.warning("no destinations configured (LUMBAR_AI_DESTINATIONS); only sweeping expired results")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_loop(settings, stop, args.consumer)
    return 0
