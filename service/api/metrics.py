"""GET /metrics: a Prometheus collector that reads the whole service's state from Redis at scrape time.

Nothing here counts on its own: the listener, workers and API write counters, histograms and heartbeats
into Redis (``service.telemetry``), and study states and the queue are in Redis already. One scrape of
any API replica therefore shows the whole deployment, however many listeners and workers it has.
"""

from __future__ import annotations

import logging

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

from service import __version__ as service_version
from service import telemetry
from service.deliver.outbox import Outbox
from service.queue.keys import Keys
from service.queue.state import StudyState

log = logging.getLogger(__name__)

NAMESPACE = "lumbar_ai"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisCollector(Collector):
    """Yields every metric family from one round of Redis reads; an unreachable Redis yields up=0 only."""

    def __init__(
        self, client: redis.Redis, prefix: str, group: str, heartbeat_s: float, outbox: Outbox | None = None
    ) -> None:
        self.client = client
        self.outbox = outbox
        self.prefix = prefix
        self.group = group
        self.heartbeat_s = heartbeat_s
        self.keys = Keys(prefix)

    def collect(self):
        up = GaugeMetricFamily(f"{NAMESPACE}_redis_up", "1 when Redis answered this scrape")
        info = InfoMetricFamily(f"{NAMESPACE}_service", "version of the service answering the scrape")
        info.add_metric([], {"version": service_version})
        yield info
        try:
            families = list(self._from_redis())
        except redis.RedisError as exc:
            log.warning("metrics scrape without Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _from_redis(self):
        pipe = self.client.pipeline(transaction=False)
        states = list(StudyState)
        for s in states:
            pipe.zcard(self.keys.studies_in(s.value))
        pipe.xlen(self.keys.jobs)
        pipe.xlen(self.keys.dead_letters)
        pipe.hgetall(telemetry.counters_key(self.prefix))
        if self.outbox is not None:
            pipe.xlen(self.outbox.stream)
            pipe.zcard(self.outbox.delayed)
            pipe.xlen(self.outbox.dead)
        replies = pipe.execute()

        studies = GaugeMetricFamily(f"{NAMESPACE}_studies", "studies by state", labels=["state"])
        for s, n in zip(states, replies[: len(states)], strict=True):
            studies.add_metric([s.value], int(n))
        yield studies
        depth, dead, counters = replies[len(states) : len(states) + 3]
        if self.outbox is not None:
            ready, delayed, dead_deliveries = replies[len(states) + 3 :]
            yield GaugeMetricFamily(
                f"{NAMESPACE}_deliveries_waiting",
                "result deliveries to a PACS not yet done (ready or waiting for a retry)",
                value=int(ready) + int(delayed),
            )
            yield GaugeMetricFamily(
                f"{NAMESPACE}_delivery_dead_letters",
                "deliveries that failed every attempt (kept with their reason)",
                value=int(dead_deliveries),
            )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_queue_depth", "jobs in the stream, waiting or in progress", value=int(depth)
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_queue_in_progress", "jobs held by a worker", value=self._pending()
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_dead_letters", "jobs in the dead-letter stream", value=int(dead)
        )
        yield from self._counters(counters)
        yield from self._histograms()
        yield from self._workers()

    def _pending(self) -> int:
        try:
            return int(self.client.xpending(self.keys.jobs, self.group)["pending"])
        except redis.ResponseError:  # no stream or no group yet: nothing is held
            return 0

    def _counters(self, raw: dict):
        help_text = {
            telemetry.INSTANCES_RECEIVED: ("instances stored in the spool", ["source"]),
            telemetry.DELIVERIES: ("results delivered to a DICOM destination", ["destination"]),
            telemetry.DELIVERY_FAILURES: ("failed C-STORE attempts to a DICOM destination", ["destination"]),
            telemetry.JOBS_FAILED: ("worker job attempts that failed", []),
        }
        parsed: dict[str, list[tuple[dict[str, str], int]]] = {name: [] for name in help_text}
        for field, value in raw.items():
            name, labels = telemetry.parse_field(_text(field))
            parsed.setdefault(name, []).append((labels, int(value)))
        for name, entries in parsed.items():
            doc, label_names = help_text.get(name, (f"{name} (counter)", []))
            names = sorted({k for labels, _ in entries for k in labels} | set(label_names))
            family = CounterMetricFamily(f"{NAMESPACE}_{name}", doc, labels=names)
            for labels, value in entries:
                family.add_metric([labels.get(k, "") for k in names], value)
            yield family

    def _histograms(self):
        family = HistogramMetricFamily(
            f"{NAMESPACE}_stage_seconds", "duration of each pipeline stage", labels=["stage"]
        )
        pattern = telemetry.histogram_key(self.prefix, "*")
        stem = telemetry.histogram_key(self.prefix, "")
        for key in sorted(_text(k) for k in self.client.scan_iter(match=pattern, count=100)):
            stage = key[len(stem) :]
            raw = {_text(k): v for k, v in self.client.hgetall(key).items()}
            buckets = [(str(b), int(raw.get(f"le={b}", 0))) for b in telemetry.LATENCY_BUCKETS]
            buckets.append(("+Inf", int(raw.get("count", 0))))
            family.add_metric([stage], buckets, float(raw.get("sum", 0.0)))
        yield family

    def _workers(self):
        workers = telemetry.live_workers(self.client, self.prefix, 3 * self.heartbeat_s)
        yield GaugeMetricFamily(
            f"{NAMESPACE}_live_workers",
            "workers with a model loaded and a recent heartbeat",
            value=len(workers),
        )
        models = InfoMetricFamily(f"{NAMESPACE}_model", "model loaded by each live worker", labels=["worker"])
        for w in workers:
            models.add_metric(
                [w.worker_id],
                {"model": w.model, "model_version": w.model_version, "providers": ",".join(w.providers)},
            )
        yield models
