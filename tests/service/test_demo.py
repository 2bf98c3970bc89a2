"""`lumbar-ai demo` smoke runs with the tiny exported model: the whole pipeline as subprocesses.

Real Redis (the test's, or one the demo starts itself), real listener, worker, API, dcmtk storescp as the
PACS and storescu as the modality. Ctrl-C stops what the demo started and nothing else.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from tests.conftest import ROOT, free_port, require_tool

# The worker tests' model: the tiny config trained a few more steps on spine bands, so that it finds
# structures, exported with the export's own parity checks; and their writer of band studies as DICOM.
from tests.service.worker.conftest import TINY_BANDS_MODEL, worker_model_dir, write_study  # noqa: F401

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
pytestmark = pytest.mark.integration


def _demo(model_dir: Path, data_dir: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    for tool in ("storescp", "storescu", "redis-server"):
        require_tool(tool)
    cmd = [
        sys.executable, "-m", "service.cli", "demo", "--model-dir", str(model_dir), "--data-dir", str(data_dir),
        "--quiet-period", "1", "--timeout", "240", *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _ports(output: str) -> list[int]:
    return [int(p) for p in re.findall(r"on port (\d+)", output)] + [
        int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)", output)
    ]


def _closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_demo_runs_a_study_through_the_pipeline_prints_findings_and_exits(
    worker_model_dir: Path,  # noqa: F811
    tmp_path: Path,
    redis_url: str,
) -> None:
    write_study(tmp_path / "study", seed=7)  # seeds 0-2 trained the model
    env = {"LUMBAR_AI_REDIS_URL": redis_url}
    demo = _demo(
        worker_model_dir, tmp_path / "demo", env, "--study", str(tmp_path / "study"), "--exit-after-result"
    )
    output, _ = demo.communicate(timeout=400)
    print(output)  # shown with pytest -rP: what a user of the demo sees
    assert demo.returncode == 0, output
    assert "structure(s) found; findings per level" in output and "Positive findings:" in output
    uid = re.search(r"Sending study ([0-9.]+)", output).group(1)
    results = tmp_path / "demo" / "results" / uid
    for name in ("seg.dcm", "sr.dcm", "preview.png", "report.json"):
        assert (results / name).is_file(), name
    assert "/ui#key=" in output and f"study={uid}" in output
    delivered = int(re.search(r"over C-STORE: (\d+) instance", output).group(1))
    assert delivered >= 2
    classes = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID
        for p in (tmp_path / "demo" / "pacs").iterdir()
    }
    assert {SEG, COMPREHENSIVE_3D_SR} <= classes
    ports = _ports(output)
    assert len(ports) >= 3 and all(_closed(p) for p in ports), ports  # everything it started has stopped


def test_ctrl_c_stops_what_the_demo_started_and_nothing_else(
    worker_model_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    no_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing answers: the demo starts its own redis-server
    extra = ("--small-study", "--seed", "900001")  # a generated study, as `make demo` sends
    demo = _demo(worker_model_dir, tmp_path / "demo", {"LUMBAR_AI_REDIS_URL": no_redis}, *extra)
    lines: list[str] = []
    try:
        deadline = time.time() + 300
        for line in demo.stdout:
            lines.append(line)
            if "sending it with storescu" in line or time.time() > deadline:
                break  # Ctrl-C in the middle: the study is on its way through the pipeline
        output = "".join(lines)
        assert "sending it with storescu" in output, output
        assert "Started Redis on port" in output
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
        output += rest
        assert demo.returncode == 130, output
        assert "Stopping api, worker, listener, pacs, redis" in output
        ports = _ports(output)
        assert len(ports) >= 4 and all(_closed(p) for p in ports), ports
        assert bystander.poll() is None  # not one of the demo's: still running
    finally:
        bystander.kill()
        if demo.poll() is None:
            demo.kill()


def test_dcmtk_tools_are_found_past_pynetdicoms_python_apps_of_the_same_name(tmp_path, monkeypatch):
    from service.demo import find_dcmtk

    venv_bin, system_bin = tmp_path / "venv" / "bin", tmp_path / "usr" / "bin"
    for folder, text in ((venv_bin, "#!/opt/venv/bin/python\nfrom pynetdicom.apps.storescp import main\n"),
                         (system_bin, "\x7fELF dcmtk stand-in")):
        folder.mkdir(parents=True)
        (folder / "storescp").write_text(text)
        (folder / "storescp").chmod(0o755)
    monkeypatch.setenv("PATH", f"{venv_bin}:{system_bin}")
    assert find_dcmtk("storescp") == str(system_bin / "storescp")
    monkeypatch.setenv("PATH", str(venv_bin))
    assert find_dcmtk("storescp") is None


def test_demo_runs_the_configured_model_and_says_what_to_do_when_it_is_missing(tmp_path: Path) -> None:
    import argparse

    from service.demo import _ensure_model, add_arguments
    from service.errors import ConfigError

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert _ensure_model(args, TINY_BANDS_MODEL) == TINY_BANDS_MODEL
    with pytest.raises(ConfigError, match="no model.json.*--build-demo-model"):
        _ensure_model(args, tmp_path / "nothing-here")
