"""`lumbar-ai listen` as a real process: killed with SIGKILL in the middle of a study, then restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pydicom
import pytest
import redis
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import MRImageStorage, Verification  # type: ignore[attr-defined]

from service.queue.state import StudyState, StudyStore
from tests.conftest import ROOT, free_port
from tests.service.receive.study_factory import sag_t1_flair, sag_t2, write_study
from tests.service.receive.test_listener import dataset_bytes

pytestmark = pytest.mark.integration
PREFIX = f"test-listen-{uuid.uuid4().hex[:8]}"  # other test runs may share this Redis database


def start_listen(tmp_path: Path, port: int, redis_url: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "LUMBAR_AI_DATA_DIR": str(tmp_path / "var"),
        "LUMBAR_AI_LISTEN_HOST": "127.0.0.1",
        "LUMBAR_AI_LISTEN_PORT": str(port),
        "LUMBAR_AI_REDIS_URL": redis_url,
        "LUMBAR_AI_STREAM_PREFIX": PREFIX,
        "LUMBAR_AI_QUIET_PERIOD_S": "5",
        "LUMBAR_AI_SERIES_SETTLE_S": "1",
        "LUMBAR_AI_ASSEMBLER_POLL_S": "0.2",
        "LUMBAR_AI_DISK_RESERVE_MB": "0",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "listen"],
        cwd=tmp_path,  # no stray .env
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / f"listen-{port}.log", "ab"),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError((tmp_path / f"listen-{port}.log").read_text())
        assoc = AE(ae_title="PACS").associate(
            "127.0.0.1", port, [build_context(Verification)], ae_title="LUMBAR_AI"
        )
        if assoc.is_established:
            assoc.release()
            return proc
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("lumbar-ai listen did not start")


def send_all(port: int, files: list[Path], acknowledged: list[Path], started: threading.Event) -> None:
    """One association, one file after another, recording each 0x0000; stops when the peer is gone."""
    ae = AE(ae_title="PACS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate(
        "127.0.0.1", port, [build_context(MRImageStorage, ExplicitVRLittleEndian)], ae_title="LUMBAR_AI"
    )
    started.set()
    if not assoc.is_established:
        return
    for f in files:
        try:
            status = assoc.send_c_store(f)
        except Exception:
            return
        if not assoc.is_established or "Status" not in status:
            return
        if status.Status == 0x0000:
            acknowledged.append(f)
    assoc.release()


def test_sigkill_mid_study_loses_no_acknowledged_instance_and_the_study_completes(tmp_path, redis_url):
    files = write_study(tmp_path / "in", [sag_t1_flair(n=40, number=2), sag_t2(n=40, number=3)])
    port = free_port()
    proc = start_listen(tmp_path, port, redis_url)
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the files' bytes as they are
    try:
        acknowledged: list[Path] = []
        started = threading.Event()
        sender = threading.Thread(target=send_all, args=(port, files, acknowledged, started))
        sender.start()
        started.wait(10)
        deadline = time.monotonic() + 30
        while len(acknowledged) < 15 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of the study, possibly in the middle of a write
        proc.wait(10)
        sender.join(30)
        assert 15 <= len(acknowledged) < len(files)

        spool = tmp_path / "var" / "spool"
        on_disk = {p.stem: p for p in spool.rglob("*.dcm")}
        for f in acknowledged:
            sop = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
            assert dataset_bytes(on_disk[sop]) == dataset_bytes(f)

        proc = start_listen(tmp_path, port, redis_url)  # restarted; the PACS sends the whole study again
        acknowledged.clear()
        started.clear()
        send_all(port, files, acknowledged, started)
        assert len(acknowledged) == len(files)

        study = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
        client = redis.Redis.from_url(redis_url)
        store = StudyStore(client, PREFIX)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            record = store.get(study)
            if record is not None and record.state == StudyState.QUEUED and record.instances == len(files):
                break
            time.sleep(0.2)
        assert record is not None and record.state == StudyState.QUEUED, record
        assert record.instances == len(files) and record.t1_series_uid and record.t2_series_uid
        # the complete content is queued exactly once (a partial study that fell quiet may have been before)
        entries = client.xrange(f"{PREFIX}:jobs")
        assert [fields[b"job_id"].decode() for _, fields in entries].count(record.job_id) == 1
        assert not [
            p for p in spool.rglob("*") if p.is_file() and p.suffix == ".dcm" and p.stat().st_size == 0
        ]
        client.close()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
