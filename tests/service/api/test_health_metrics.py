"""Liveness, readiness (Redis, spool space, a live worker) and the Prometheus metrics read from Redis."""

from __future__ import annotations

import time

import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service import telemetry
from service.api.app import create_app
from service.config import Settings
from service.queue.state import StudyState, StudyStore
from tests.conftest import free_port
from tests.service.api.conftest import AUTH, mr_instance


def _metrics(client: TestClient) -> dict[str, list]:
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(response.text)}


def test_healthz_answers_without_redis(settings: Settings) -> None:
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(down)) as c:
        assert c.get("/healthz").json() == {"status": "ok", "checks": {}}
        ready = c.get("/readyz", headers=AUTH)
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"].startswith("unavailable")
        samples = _metrics(c)
        assert samples["lumbar_ai_redis_up"][0].value == 0


def test_readyz_wants_a_live_worker_with_a_model(client: TestClient, settings: Settings) -> None:
    ready = client.get("/readyz", headers=AUTH)
    assert ready.status_code == 503
    assert "no worker" in ready.json()["checks"]["workers"]
    r = redis.Redis.from_url(settings.redis_url)
    telemetry.heartbeat(
        r, settings.stream_prefix, "host-a:1", "demo", "0.1.0+synthetic", ["CPUExecutionProvider"]
    )
    ready = client.get("/readyz", headers=AUTH)
    assert ready.status_code == 200, ready.json()
    assert ready.json()["checks"]["workers"] == "ok: 1 live (0.1.0+synthetic)"


def test_readyz_without_a_key_says_only_whether_the_service_is_ready(client: TestClient, settings: Settings) -> None:
    assert client.get("/readyz").json() == {"status": "unavailable", "checks": {}}
    telemetry.heartbeat(redis.Redis.from_url(settings.redis_url), settings.stream_prefix, "host-d:4", "demo",
                        "0.1.0+synthetic", [])
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ok", "checks": {}}
    assert client.get("/readyz", headers={"Authorization": "Bearer wrong"}).json()["checks"] == {}


def test_readyz_ignores_a_stale_heartbeat(client: TestClient, settings: Settings) -> None:
    r = redis.Redis.from_url(settings.redis_url)
    telemetry.heartbeat(r, settings.stream_prefix, "host-b:2", "demo", "1", [])
    beat = r.hget(telemetry.workers_key(settings.stream_prefix), "host-b:2").decode()
    stale = beat.replace(
        beat.split('"at": ')[1].split(",")[0], str(time.time() - 10 * settings.worker_heartbeat_s)
    )
    r.hset(telemetry.workers_key(settings.stream_prefix), "host-b:2", stale)
    assert client.get("/readyz", headers=AUTH).status_code == 503


def test_readyz_fails_when_the_spool_is_below_its_reserve(settings: Settings) -> None:
    r = redis.Redis.from_url(settings.redis_url)
    telemetry.heartbeat(r, settings.stream_prefix, "host-c:3", "demo", "1", [])
    huge = settings.model_copy(update={"disk_reserve_mb": 1 << 40})
    with TestClient(create_app(huge)) as c:
        ready = c.get("/readyz", headers=AUTH)
        assert ready.status_code == 503
        assert "below the reserve" in ready.json()["checks"]["spool"]


def test_metrics_show_states_queue_counters_histograms_and_models(
    client: TestClient, settings: Settings
) -> None:
    r = redis.Redis.from_url(settings.redis_url)
    store = StudyStore(r, settings.stream_prefix)
    for uid, state in (
        ("1.2.3.1", StudyState.DONE),
        ("1.2.3.2", StudyState.DONE),
        ("1.2.3.3", StudyState.FAILED),
    ):
        store.ensure(uid)
        store.transition(uid, state)
    telemetry.incr(r, settings.stream_prefix, telemetry.INSTANCES_RECEIVED, 30, source="dicom")
    telemetry.incr(r, settings.stream_prefix, telemetry.DELIVERY_FAILURES, destination="PACS_MAIN")
    telemetry.observe_all(r, settings.stream_prefix, {"image_encoder": 1.2, "decode": 0.07})
    telemetry.observe(r, settings.stream_prefix, "image_encoder", 0.4)
    telemetry.heartbeat(r, settings.stream_prefix, "gpu-1:7", "demo", "0.1.0", ["CUDAExecutionProvider"])
    client.post("/studies", headers=AUTH, files=[("files", ("a.dcm", mr_instance()))])

    samples = _metrics(client)
    by_state = {s.labels["state"]: s.value for s in samples["lumbar_ai_studies"]}
    # the uploaded study is in the spool only: no assembler runs in this test to record it
    assert by_state == {"received": 0, "queued": 0, "processing": 0, "done": 2, "failed": 1}
    received = {s.labels["source"]: s.value for s in samples["lumbar_ai_instances_received"]}
    assert received == {"dicom": 30, "api": 1}
    assert samples["lumbar_ai_delivery_failures"][0].labels == {"destination": "PACS_MAIN"}
    hist = {
        (s.name, s.labels["stage"], s.labels.get("le")): s.value for s in samples["lumbar_ai_stage_seconds"]
    }
    assert hist[("lumbar_ai_stage_seconds_count", "image_encoder", None)] == 2
    assert hist[("lumbar_ai_stage_seconds_bucket", "image_encoder", "0.5")] == 1
    assert hist[("lumbar_ai_stage_seconds_bucket", "image_encoder", "2.5")] == 2
    assert abs(hist[("lumbar_ai_stage_seconds_sum", "image_encoder", None)] - 1.6) < 1e-9
    assert samples["lumbar_ai_live_workers"][0].value == 1
    assert samples["lumbar_ai_model_info"][0].labels["providers"] == "CUDAExecutionProvider"
    assert samples["lumbar_ai_queue_depth"][0].value == 0


def test_heartbeats_of_workers_gone_for_a_day_are_forgotten(settings: Settings) -> None:
    r = redis.Redis.from_url(settings.redis_url)
    key = telemetry.workers_key(settings.stream_prefix)
    r.hset(
        key,
        "worker-gone-1",
        '{"at": %f, "model": "demo"}' % (time.time() - 2 * telemetry.FORGET_WORKER_AFTER_S),
    )
    telemetry.heartbeat(r, settings.stream_prefix, "worker-here-2", "demo", "1", [])
    live = telemetry.live_workers(r, settings.stream_prefix, 45)
    assert [w.worker_id for w in live] == ["worker-here-2"]
    assert r.hkeys(key) == [b"worker-here-2"]


def test_delivery_status_shows_on_the_study_and_in_the_metrics(settings: Settings) -> None:
    from service.config import Destination
    from service.deliver.outbox import Outbox

    settings = settings.model_copy(
        update={"destinations": [Destination(ae_title="PACS_MAIN", host="127.0.0.1", port=104)]}
    )
    r = redis.Redis.from_url(settings.redis_url)
    uid = "1.2.3.42"
    StudyStore(r, settings.stream_prefix).ensure(uid)
    outbox = Outbox(r, settings)
    assert outbox.enqueue(uid, f"{uid}:abc", ("seg", "sr")) == 1
    outbox.failed(outbox.claim("test", block_ms=0), "association rejected by PACS_MAIN")
    with TestClient(create_app(settings)) as c:
        deliveries = c.get(f"/studies/{uid}", headers=AUTH).json()["deliveries"]
        status = deliveries["PACS_MAIN@127.0.0.1:104"]
        assert (status["state"], status["reason"]) == ("pending", "association rejected by PACS_MAIN")
        samples = _metrics(c)
    assert samples["lumbar_ai_deliveries_waiting"][0].value == 1
    assert samples["lumbar_ai_delivery_dead_letters"][0].value == 0
