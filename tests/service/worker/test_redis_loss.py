"""Redis killed without persistence, with jobs queued and deliveries pending: every study is still processed
and delivered exactly once, from what the spool and the results hold on disk."""

from __future__ import annotations

import pytest
import redis

from service.assemble.actions import build_assembler
from service.deliver.outbox import Outbox
from service.deliver.runner import deliver_one
from service.encode.results import DICOM_KINDS
from service.queue.state import StudyState, StudyStore
from service.queue.stream import JobQueue
from service.receive.spool import Spool
from service.worker.loop import Worker
from tests.conftest import free_port
from tests.redis_server import RedisServer
from tests.service.deliver.pacs import StoreSCP
from tests.service.worker.conftest import make_settings, write_study

pytestmark = pytest.mark.integration


def _receive(settings, series: dict) -> str:
    """Store every file as the listener does (the spool marks the study received); its study UID."""
    spool = Spool.from_settings(settings)
    return next(iter({spool.store_file_bytes(p.read_bytes()).study_uid for paths in series.values() for p in paths}))


def _deliver_all(outbox: Outbox, settings) -> int:
    delivered = 0
    while (outcome := deliver_one(outbox, settings, "deliverer", block_ms=100)) is not None:
        assert outcome.delivered, outcome.reason
        delivered += 1
    return delivered


def test_redis_lost_with_jobs_queued_and_deliveries_pending_every_study_is_delivered_once(
        tmp_path, worker_model_dir, onnx_model):
    server = RedisServer(tmp_path / "redis", persistent=False)
    (tmp_path / "redis").mkdir()
    server.start()
    pacs = StoreSCP(tmp_path / "pacs", free_port()).start()
    settings = make_settings(server.url, tmp_path / "data", worker_model_dir, pacs_port=pacs.port,
                             quiet_period_s=0.0, series_settle_s=0.0)
    try:
        studies = {name: _receive(settings, write_study(tmp_path / name, seed=seed))
                   for name, seed in (("queued", 11), ("undelivered", 12), ("delivered", 13))}
        client = redis.Redis.from_url(server.url)
        assembler = build_assembler(settings, client)
        assert len(assembler.poll()) == 3
        worker = Worker(settings, onnx_model, redis_client=client, name="worker-1")
        outbox = Outbox(client, settings)
        done = {}
        while len(done) < 2:  # two of the three are processed before Redis goes
            outcome = worker.run_once(block_ms=100)
            done[outcome.study_uid] = outcome
        queued = next(uid for uid in studies.values() if uid not in done)
        studies = {"queued": queued, **dict(zip(("undelivered", "delivered"), done, strict=True))}
        deliver_one(outbox, settings, "deliverer", block_ms=100)  # the first processed study reaches the PACS
        first_delivered = pacs.wait_for(3)
        delivered_uid = str(first_delivered[0].StudyInstanceUID)
        if delivered_uid != studies["delivered"]:
            studies["delivered"], studies["undelivered"] = studies["undelivered"], studies["delivered"]

        server.kill()  # no persistence: jobs, records and the pending delivery are gone
        server.start()
        client = redis.Redis.from_url(server.url)
        assembler = build_assembler(settings, client)
        store = StudyStore(client, settings.stream_prefix)
        assert store.get(studies["queued"]) is None

        recovered = {r.study_uid: r for r in assembler.recover()}

        assert set(recovered) == set(studies.values())
        assert recovered[studies["queued"]].state == StudyState.QUEUED
        assert recovered[studies["undelivered"]].state == StudyState.DONE
        assert recovered[studies["delivered"]].state == StudyState.DONE
        assert assembler.recover() == []  # Redis knows every study again: nothing more to do
        worker = Worker(settings, onnx_model, redis_client=client, name="worker-2")
        assert worker.run_once(block_ms=100).study_uid == studies["queued"]
        assert worker.run_once(block_ms=100) is None  # the processed studies are not run again
        assert JobQueue(client, settings).depth() == 0
        assert _deliver_all(Outbox(client, settings), settings) == 2  # queued and undelivered, not delivered
        received = pacs.wait_for(9)
        assert all(store.get(uid).state == StudyState.DONE for uid in studies.values())
    finally:
        pacs.stop()
        server.stop()
    assert all(count == 1 for count in pacs.sop_instances().values())
    by_study = {uid: sum(str(ds.StudyInstanceUID) == uid for ds in received) for uid in studies.values()}
    assert by_study == {uid: len(DICOM_KINDS) for uid in studies.values()}
