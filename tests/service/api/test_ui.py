"""The web page in a real headless Chromium against a real API server: studies, state, preview, findings."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis
import uvicorn
from PIL import Image, ImageDraw

from service.api.app import create_app
from service.config import Settings
from service.queue.state import StudyState, StudyStore
from tests.conftest import free_port, require_tool
from tests.service.api.conftest import API_KEY

DONE_UID = "1.2.826.0.1.3680043.8.498.777001"
FAILED_UID = "1.2.826.0.1.3680043.8.498.777002"


def _report(uid: str) -> dict:
    """A report shaped as service.encode.report builds it (only the keys the page reads, plus context)."""

    def finding(name: str, p: float) -> dict:
        return {
            "key": name.replace(" ", "_"),
            "name": name,
            "probability": p,
            "threshold": 0.5,
            "present": p >= 0.5,
        }

    disc = ["disc bulging", "disc protrusion", "disc extrusion", "Schmorl's node"]
    return {
        "schema": "lumbar-ai/report/1",
        "study_uid": uid,
        "levels": [
            {
                "structure": "L4/L5 disc",
                "level": "L4/L5",
                "findings": [finding(n, p) for n, p in zip(disc, (0.2, 0.91, 0.1, 0.05), strict=True)],
            },
            {
                "structure": "L5/S1 disc",
                "level": "L5/S1",
                "findings": [finding(n, p) for n, p in zip(disc, (0.7, 0.3, 0.1, 0.02), strict=True)],
            },
            {
                "structure": "L4 vertebra",
                "level": "L4",
                "findings": [finding("vertebral degeneration", 0.12)],
            },
        ],
        "positive_findings": [
            {"level": "L4/L5", "structure": "L4/L5 disc", "finding": "disc protrusion", "probability": 0.91},
            {"level": "L5/S1", "structure": "L5/S1 disc", "finding": "disc bulging", "probability": 0.7},
        ],
        "statement": "This model was trained on synthetic data only; its results on real scans are not validated.",
    }


@pytest.fixture
def server(settings: Settings):
    store = StudyStore(redis.Redis.from_url(settings.redis_url), settings.stream_prefix)
    store.ensure(DONE_UID, instances=30, decisions=["t2: SAG T2 (15 images)", "t1: SAG T1 (15 images)"])
    store.transition(DONE_UID, StudyState.DONE, timings={"decode": 0.31, "image_encoder": 1.42})
    store.ensure(FAILED_UID, instances=12)
    store.transition(
        FAILED_UID, StudyState.FAILED, error="no sagittal T1 or T2 series; found: AX T2 (12 images)"
    )
    out = settings.results_dir / DONE_UID
    out.mkdir(parents=True)
    (out / "report.json").write_text(json.dumps(_report(DONE_UID)))
    (out / "seg.dcm").write_bytes(b"\0" * 128 + b"DICM")
    image = Image.new("RGB", (320, 240), "black")
    ImageDraw.Draw(image).rectangle((140, 40, 180, 200), fill=(230, 120, 40))
    image.save(out / "preview.png")

    port = free_port()
    # public docs: a browser opening /docs sends no key
    config = uvicorn.Config(create_app(settings.model_copy(update={"public_docs": True})), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    exe = require_tool("chromium")
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--window-size=1400,900",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_page_lists_studies_and_shows_findings_and_preview_of_a_finished_one(
    server: str, tmp_path: Path
) -> None:
    url = f"{server}/ui#key={API_KEY}&study={DONE_UID}"
    dom = _chromium(tmp_path, "--dump-dom", url).stdout
    assert DONE_UID in dom and FAILED_UID in dom
    assert 'class="state done"' in dom and 'class="state failed"' in dom
    assert 'id="findings-table"' in dom
    assert "L4/L5 disc" in dom and "disc protrusion" in dom and "0.91" in dom
    assert 'id="preview"' in dom and 'src="blob:' in dom  # fetched with the key, shown from a blob
    for link in ("report.json", "seg.dcm", "preview.png"):
        assert f">{link}</a>" in dom
    assert "t2: SAG T2 (15 images)" in dom


def test_page_without_a_key_asks_for_one_and_shows_no_data(server: str, tmp_path: Path) -> None:
    dom = _chromium(tmp_path, "--dump-dom", f"{server}/ui").stdout
    assert "enter an API key" in dom
    assert DONE_UID not in dom


def test_page_screenshot(server: str, tmp_path: Path) -> None:
    """Writes the screenshot beside the test's temp files (look at it when the page changes)."""
    shot = tmp_path / "ui.png"
    _chromium(tmp_path, f"--screenshot={shot}", f"{server}/ui#key={API_KEY}&study={DONE_UID}")
    with Image.open(shot) as image:
        assert image.size == (1400, 900)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # a rendered page, not a blank one


def test_api_docs_render_without_internet_access(server: str, tmp_path: Path) -> None:
    """Swagger UI comes from the swagger-ui-bundle package; Chromium here reaches nothing but the server."""
    dom = _chromium(tmp_path, "--dump-dom", f"{server}/docs").stdout
    assert 'class="swagger-ui"' in dom
    assert "/studies/{uid}/report" in dom  # operations rendered from /openapi.json
