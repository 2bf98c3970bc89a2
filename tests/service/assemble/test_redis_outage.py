"""Redis stopped in the middle of a study and restarted: the listener keeps storing, the study is queued once."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
import redis

from service.assemble.actions import build_assembler
from service.config import Settings
from service.queue.state import StudyState, StudyStore
from service.receive.listener import start_listener
from service.receive.spool import Spool
from tests.conftest import require_tool
from tests.redis_server import RedisServer
from tests.service.receive.study_factory import sag_t1_flair, sag_t2, write_study

pytestmark = pytest.mark.integration


def storescu(port: int, files: list[Path]) -> None:
    result = subprocess.run(
        [require_tool("storescu"), "-aec", "LUMBAR_AI", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_redis_stopped_mid_study_and_restarted_the_study_is_queued_exactly_once(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    settings = Settings(
        data_dir=tmp_path / "var",
        disk_reserve_mb=0,
        redis_url=server.url,
        quiet_period_s=3.0,
        series_settle_s=1.0,
        stream_prefix="outage",
    )
    spool = Spool.from_settings(settings)
    listener = start_listener(settings, spool, host="127.0.0.1", port=0)
    client = redis.Redis.from_url(server.url, socket_connect_timeout=0.5, socket_timeout=2)
    stop = threading.Event()
    thread = build_assembler(settings, client).start(stop, interval_s=0.1)
    try:
        t1 = write_study(tmp_path / "t1", [sag_t1_flair(n=6)])
        study = pydicom.dcmread(t1[0]).StudyInstanceUID
        t2 = write_study(tmp_path / "t2", [sag_t2(n=6)], study_uid=study)
        storescu(listener.port, t1)
        store = StudyStore(redis.Redis.from_url(server.url), "outage")
        deadline = time.monotonic() + 10
        while store.get(study) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.get(study).state == StudyState.RECEIVED

        server.stop()  # Redis goes away in the middle of the study
        storescu(listener.port, t2)  # the listener keeps accepting and storing
        time.sleep(3.5)  # the quiet period passes while Redis is down
        assert len(list(spool.root.rglob("*.dcm"))) == 12
        assert spool.read_assembled(study) is None

        server.start()
        deadline = time.monotonic() + 15
        record = None
        while time.monotonic() < deadline:
            try:
                record = StudyStore(redis.Redis.from_url(server.url), "outage").get(study)
            except Exception:
                record = None
            if record is not None and record.state == StudyState.QUEUED:
                break
            time.sleep(0.1)
        assert record is not None and record.state == StudyState.QUEUED and record.instances == 12
        time.sleep(0.5)  # a few more polls: nothing is queued twice
        assert redis.Redis.from_url(server.url).xlen("outage:jobs") == 1
    finally:
        stop.set()
        thread.join(5)
        listener.stop()
        client.close()
        server.stop()
