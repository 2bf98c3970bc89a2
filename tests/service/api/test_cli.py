"""`lumbar-ai api` as a real process: refuses to start without a key, serves HTTPS with a certificate."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port
from tests.service.api.conftest import API_KEY


def _env(tmp_path: Path, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUMBAR_AI_")}
    env.update(LUMBAR_AI_DATA_DIR=str(tmp_path / "data"), LUMBAR_AI_REDIS_URL=redis_url, **extra)
    return env


def test_api_refuses_to_start_without_a_key(tmp_path: Path, redis_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "api"],
        cwd=tmp_path,  # no .env here
        env=_env(tmp_path, redis_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no API key configured" in result.stderr


def test_api_serves_https_with_the_configured_certificate(tmp_path: Path, redis_url: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    env = _env(
        tmp_path,
        redis_url,
        LUMBAR_AI_API_KEYS=json.dumps([API_KEY]),
        LUMBAR_AI_API_HOST="127.0.0.1",
        LUMBAR_AI_API_PORT=str(port),
        LUMBAR_AI_API_TLS_CERT=str(cert),
        LUMBAR_AI_API_TLS_KEY=str(key),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "api"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        context = ssl.create_default_context(cafile=str(cert))
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}/studies", headers={"Authorization": f"Bearer {API_KEY}"}
        )
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            assert response.status == 200 and json.load(response)["total"] == 0
        check = subprocess.run(
            [sys.executable, str(ROOT / "docker/healthcheck.py"), "http"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stdout  # the compose healthcheck speaks HTTPS too
    finally:
        proc.terminate()
        proc.wait(15)
