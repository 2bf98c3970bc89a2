"""``lumbar-ai listen``: the DICOM listener and the study assembler, in one process.

The listener stores instances whether or not Redis answers; the assembler (a background thread) reconciles
the spool at start-up, then turns complete studies into queued jobs, waiting for Redis when it is down.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

import redis

from service import telemetry
from service.assemble.actions import build_assembler
from service.config import get_settings
from service.receive.handlers import ReceiveCounters
from service.receive.listener import start_listener
from service.receive.spool import Spool

LOG = logging.getLogger(__name__)
METRICS_INTERVAL_S = 5.0


def _publish_counts(client: redis.Redis, prefix: str, counters: ReceiveCounters) -> None:
    """Adds the instances stored since the last call to /metrics' counter (best effort, like all metrics)."""
    new = counters.take_new_instances()
    if new:
        telemetry.incr(client, prefix, telemetry.INSTANCES_RECEIVED, new, source="dicom")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (settings: LUMBAR_AI_LISTEN_HOST)")
    parser.add_argument("--port", type=int, help="TCP port (settings: LUMBAR_AI_LISTEN_PORT)")
    parser.add_argument("--ae-title", help="our AE title (settings: LUMBAR_AI_AE_TITLE)")
    parser.add_argument(
        "--quiet-period", type=float, help="seconds without new instances before a study is complete"
    )
    parser.add_argument(
        "--no-assembler", action="store_true", help="receive only; do not assemble or enqueue"
    )


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    overrides = {
        key: value
        for key, value in (
            ("listen_host", args.host),
            ("listen_port", args.port),
            ("ae_title", args.ae_title),
            ("quiet_period_s", args.quiet_period),
        )
        if value is not None
    }
    if overrides:
        settings = settings.model_copy(update=overrides)

    # pynetdicom's association threads poll with 1 ms sleeps; a waking thread waits for the GIL up to the
    # switch interval (5 ms by default), which adds up to most of an instance's round trip
    sys.setswitchinterval(0.001)
    if not getattr(args, "verbose", False):
        # pynetdicom logs every association and every C-STORE at INFO; ours logs refusals and studies
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    spool = Spool.from_settings(settings)
    removed = spool.remove_stale_temp_files()
    if removed:
        LOG.info("removed %d temp files left by an earlier crash", removed)
    listener = start_listener(settings, spool)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    client = None
    if not args.no_assembler:
        client = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=30
        )
        build_assembler(settings, client).start(stop, settings.assembler_poll_s)
    print(f"lumbar-ai listen: {settings.ae_title} on port {listener.port}", flush=True)
    try:
        while not stop.wait(METRICS_INTERVAL_S):
            if client is not None:
                _publish_counts(client, settings.stream_prefix, listener.counters)
    finally:
        if client is not None:
            _publish_counts(client, settings.stream_prefix, listener.counters)
        LOG.info("stopping: %s", listener.counters)
        listener.stop()
        if client is not None:
            client.close()
    return 0
