"""Generated lumbar studies (model_export.synth) through the listener and the assembler."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pydicom
import pytest
import redis

from model_export.synth.config import SMALL_TEST_CONFIG, SynthConfig
from model_export.synth.output import generate_study
from service.assemble.actions import build_assembler
from service.assemble.headers import read_header
from service.assemble.rules import load_rules
from service.assemble.selection import select_series
from service.config import Settings
from service.queue.state import StudyState, StudyStore
from service.receive.listener import start_listener
from service.receive.spool import Spool
from tests.conftest import require_tool
from tests.service.receive.test_listener import dataset_bytes


def generated(tmp_path: Path, seed: int) -> Path:
    out = tmp_path / f"study{seed}"
    generate_study(out, seed, SynthConfig(use_spider=False, **SMALL_TEST_CONFIG))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_generated_sagittal_t1_and_t2_are_selected(tmp_path, seed):
    study = generated(tmp_path, seed)
    headers, folder_of = [], {}
    for f in sorted(study.glob("dicom/*/*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        folder_of[ds.SeriesInstanceUID] = f.parent.name
        headers.append(read_header(f, ds.SeriesInstanceUID, ds.SOPInstanceUID, f.stat().st_size))
    selection = select_series(headers, load_rules())
    assert selection.error is None and selection.warnings == []
    assert folder_of[selection.t1.series_uid] == "sag_t1"
    assert folder_of[selection.t2.series_uid] == "sag_t2"
    others = {folder_of[s.series_uid]: s.weighting for s in selection.series if s.role is None}
    assert others == {"ax_t2": "T2", "localizer": "localizer"}


@pytest.mark.integration
def test_a_generated_study_sent_with_storescu_is_stored_byte_for_byte_and_queued(tmp_path, redis_url):
    study_dir = generated(tmp_path, 7)
    files = sorted(study_dir.glob("dicom/*/*.dcm"))
    settings = Settings(
        data_dir=tmp_path / "var",
        disk_reserve_mb=0,
        redis_url=redis_url,
        quiet_period_s=30.0,
        series_settle_s=0.5,
        stream_prefix=f"generated-{uuid.uuid4().hex[:8]}",
    )
    listener = start_listener(settings, Spool.from_settings(settings), host="127.0.0.1", port=0)
    client = redis.Redis.from_url(redis_url)
    stop = threading.Event()
    thread = build_assembler(settings, client).start(stop, interval_s=0.1)
    try:
        result = subprocess.run(
            [
                require_tool("storescu"),
                "-aec",
                "LUMBAR_AI",
                "127.0.0.1",
                str(listener.port),
                *map(str, files),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "TCP_NODELAY": "1"},
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        on_disk = {p.stem: p for p in settings.spool_dir.rglob("*.dcm")}
        assert len(on_disk) == len(files)
        for f in files:
            assert dataset_bytes(
                on_disk[pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID]
            ) == dataset_bytes(f)
        study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
        store = StudyStore(client, settings.stream_prefix)
        deadline = time.monotonic() + 20  # early completion: far sooner than the 30 s quiet period
        record = None
        while time.monotonic() < deadline:
            record = store.get(study_uid)
            if record is not None and record.state == StudyState.QUEUED and record.instances == len(files):
                break
            time.sleep(0.1)
        assert record is not None and record.state == StudyState.QUEUED and record.instances == len(files)
        assert "unchanged for 0.5 s" in record.decisions[0]
        roles = {s.role for s in record.series}
        assert roles == {"t1", "t2", None}
    finally:
        stop.set()
        thread.join(5)
        listener.stop()
        client.close()
