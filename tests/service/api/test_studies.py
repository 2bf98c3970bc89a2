"""Study listing, state, results and the actions (process, retry, delete) over a real Redis and spool."""

from __future__ import annotations

import json

import pytest
import redis
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from service.config import Settings
from service.queue.state import StudyState, StudyStore
from service.queue.stream import JobQueue
from service.receive.spool import Spool
from tests.service.api.conftest import AUTH, mr_instance


@pytest.fixture
def store(settings: Settings) -> StudyStore:
    return StudyStore(redis.Redis.from_url(settings.redis_url), settings.stream_prefix)


def _upload_series(client: TestClient, slices: int = 5) -> str:
    study, series = generate_uid(), generate_uid()
    files = [("files", (f"{i}.dcm", mr_instance(study, series, position=i * 4.0))) for i in range(slices)]
    assert client.post("/studies", headers=AUTH, files=files).status_code == 202
    return study


def test_list_is_paged_newest_first_and_filtered_by_state(client: TestClient, store: StudyStore) -> None:
    uids = [generate_uid() for _ in range(5)]
    for i, uid in enumerate(uids):
        store.ensure(uid, received_at=1000.0 + i, instances=i)
    store.transition(
        uids[1], StudyState.FAILED, error="no sagittal T1 or T2 series; found: AX T2 (12 images)"
    )
    page = client.get("/studies", params={"limit": 2}, headers=AUTH).json()
    assert (page["total"], [s["study_uid"] for s in page["items"]]) == (5, uids[::-1][:2])
    page = client.get("/studies", params={"offset": 4, "limit": 2}, headers=AUTH).json()
    assert [s["study_uid"] for s in page["items"]] == [uids[0]]
    failed = client.get("/studies", params={"state": "failed"}, headers=AUTH).json()
    assert [(s["study_uid"], s["error"]) for s in failed["items"]] == [
        (uids[1], "no sagittal T1 or T2 series; found: AX T2 (12 images)")
    ]


def test_list_rejects_bad_query_with_422(client: TestClient) -> None:
    for params in ({"state": "lost"}, {"limit": 0}, {"limit": 501}, {"offset": -1}):
        assert client.get("/studies", params=params, headers=AUTH).status_code == 422, params


def test_study_detail_shows_state_decisions_timings_and_errors(client: TestClient, store: StudyStore) -> None:
    uid = generate_uid()
    store.ensure(uid, instances=30, decisions=["t2: SAG T2 (15 images)"], warnings=["no sagittal T1"])
    store.transition(uid, StudyState.DONE, timings={"decode": 0.4, "image_encoder": 1.25}, attempts=1)
    detail = client.get(f"/studies/{uid}", headers=AUTH).json()
    assert detail["state"] == "done"
    assert detail["decisions"] == ["t2: SAG T2 (15 images)"]
    assert detail["warnings"] == ["no sagittal T1"]
    assert detail["timings"] == {"decode": 0.4, "image_encoder": 1.25}
    assert set(detail["state_times"]) == {"received", "done"}
    assert detail["results"] == []


def test_unknown_study_is_404_and_malformed_uid_is_422(client: TestClient) -> None:
    assert client.get(f"/studies/{generate_uid()}", headers=AUTH).status_code == 404
    assert client.get(f"/studies/{generate_uid()}/report", headers=AUTH).status_code == 404
    for bad in ("1.2.abc", "1." + "2" * 70, "1..2", "1.2%2F..%2Fx"):
        assert client.get(f"/studies/{bad}", headers=AUTH).status_code in (404, 422), bad
    assert client.get("/studies/1.2.abc", headers=AUTH).status_code == 422


def test_results_are_served_with_their_media_types(
    client: TestClient, settings: Settings, store: StudyStore
) -> None:
    uid = generate_uid()
    store.ensure(uid)
    store.transition(uid, StudyState.DONE)
    out = settings.results_dir / uid
    out.mkdir(parents=True)
    report = {"study_uid": uid, "levels": [{"level": "L4/L5", "findings": [{"finding": "disc protrusion"}]}]}
    (out / "report.json").write_text(json.dumps(report))
    (out / "seg.dcm").write_bytes(mr_instance())
    (out / "preview.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    assert client.get(f"/studies/{uid}/report", headers=AUTH).json() == report
    seg = client.get(f"/studies/{uid}/seg", headers=AUTH)
    assert (seg.status_code, seg.headers["content-type"]) == (200, "application/dicom")
    assert seg.content[128:132] == b"DICM"
    assert client.get(f"/studies/{uid}/preview.png", headers=AUTH).headers["content-type"] == "image/png"
    missing = client.get(f"/studies/{uid}/sr", headers=AUTH)
    assert missing.status_code == 404 and "state: done" in missing.json()["detail"]
    detail = client.get(f"/studies/{uid}", headers=AUTH).json()
    assert detail["results"] == ["report", "seg", "preview"]
    assert detail["links"]["seg"].endswith(f"/studies/{uid}/seg")


def test_result_path_outside_the_results_dir_is_never_served(
    client: TestClient, settings: Settings, store: StudyStore, tmp_path
) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": true}')
    uid = generate_uid()
    store.ensure(uid, results={"report": str(secret)})
    assert client.get(f"/studies/{uid}/report", headers=AUTH).status_code == 404


def test_process_assembles_an_uploaded_study_and_queues_its_job(
    client: TestClient, settings: Settings, store: StudyStore
) -> None:
    uid = _upload_series(client)
    response = client.post(f"/studies/{uid}/process", headers=AUTH)
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "queued"
    record = store.get(uid)
    assert record.t2_series_uid is not None and record.job_id.startswith(uid + ":")
    assert JobQueue(store.redis, settings).depth() == 1
    # a queued study is not retried a second time
    assert client.post(f"/studies/{uid}/retry", headers=AUTH).status_code == 409


def test_retry_requeues_a_finished_study(client: TestClient, settings: Settings, store: StudyStore) -> None:
    uid = _upload_series(client)
    client.post(f"/studies/{uid}/process", headers=AUTH)
    queue = JobQueue(store.redis, settings)
    delivery = queue.claim("test-worker", block_ms=0)
    queue.ack(delivery)
    store.transition(uid, StudyState.DONE)
    response = client.post(f"/studies/{uid}/retry", headers=AUTH)
    assert (response.status_code, response.json()["state"]) == (202, "queued")
    assert queue.depth() == 1


def test_delete_removes_instances_results_and_state(
    client: TestClient, settings: Settings, store: StudyStore
) -> None:
    uid = _upload_series(client, slices=2)
    client.post(f"/studies/{uid}/process", headers=AUTH)
    (settings.results_dir / uid).mkdir(parents=True)
    (settings.results_dir / uid / "report.json").write_text("{}")
    assert client.delete(f"/studies/{uid}", headers=AUTH).status_code == 200
    assert store.get(uid) is None
    assert Spool.from_settings(settings).instances(uid) == []
    assert not (settings.results_dir / uid).exists()
    assert client.get(f"/studies/{uid}", headers=AUTH).status_code == 404
    assert client.delete(f"/studies/{uid}", headers=AUTH).status_code == 404


def test_delete_is_refused_while_processing(client: TestClient, store: StudyStore) -> None:
    uid = generate_uid()
    store.ensure(uid)
    store.transition(uid, StudyState.PROCESSING)
    assert client.delete(f"/studies/{uid}", headers=AUTH).status_code == 409
    assert store.get(uid) is not None


def test_redis_down_is_503_not_500(settings: Settings) -> None:
    from service.api.app import create_app
    from tests.conftest import free_port

    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(down)) as c:
        response = c.get("/studies", headers=AUTH)
        assert response.status_code == 503
        assert "Redis" in response.json()["detail"]
