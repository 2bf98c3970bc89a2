"""compose.yaml, the Dockerfiles and .env.example agree with the code (no Docker engine needed).

Each service's command must be a real `lumbar-ai` sub-command that parses, the settings compose gives it
must build, its volumes must be where those settings put the spool and results, and every file a
Dockerfile copies must exist. The health check script runs for real against a live API and a TCP port.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import uvicorn
import yaml

from service.cli import COMMANDS, build_parser
from service.config import Settings
from tests.conftest import ROOT, free_port

OUR_SERVICES = ("listener", "api", "worker", "worker-gpu")
GOOD_KEY = "k" * 32


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with the defaults (what a fresh .env leaves them at)."""
    return re.sub(
        r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: os.environ.get(m.group(1), m.group(2) or ""), value
    )


def _env_example() -> dict[str, str]:
    env = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def _service_env(service: dict) -> dict[str, str]:
    """What a container of this service sees: the env file, then the service's environment over it."""
    env = _env_example()
    env.update({k: _interpolate(str(v)) for k, v in (service.get("environment") or {}).items()})
    return env


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in [k for k in os.environ if k.startswith("LUMBAR_AI_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings(_env_file=None)


def test_compose_has_the_services_with_restart_policies_and_healthchecks(compose: dict) -> None:
    services = compose["services"]
    assert set(services) >= {"redis", *OUR_SERVICES}
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"], name
    assert "--appendonly" in services["redis"]["command"]
    assert services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1] == "yes"
    assert "redis:/data" in services["redis"]["volumes"]
    assert set(compose["volumes"]) >= {"redis", "spool", "results"}


def test_gpu_worker_is_under_a_profile_with_a_device_reservation(compose: dict) -> None:
    gpu = compose["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "CUDAExecutionProvider" in gpu["environment"]["LUMBAR_AI_ONNX_PROVIDERS"]
    assert "profiles" not in compose["services"]["worker"]  # the CPU worker runs by default


@pytest.mark.parametrize("name", OUR_SERVICES)
def test_service_command_is_a_real_cli_entry(compose: dict, name: str) -> None:
    argv = compose["services"][name]["command"]
    assert argv[0] in COMMANDS, f"{name}: {argv[0]!r} is not a lumbar-ai sub-command"
    args = build_parser(argv).parse_args(argv)  # imports the module and parses its real arguments
    assert args.command == argv[0]
    module = __import__(COMMANDS[argv[0]][0], fromlist=["run"])
    assert callable(module.run) and callable(module.add_arguments)


@pytest.mark.parametrize("name", OUR_SERVICES)
def test_settings_compose_gives_each_service_build_and_match_its_volumes(
    compose: dict, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = compose["services"][name]
    settings = _settings_from(_service_env(service), monkeypatch)
    mounts = {_interpolate(m).split(":")[1]: _interpolate(m).split(":")[0] for m in service["volumes"]}
    assert mounts[str(settings.spool_dir)] == "spool"
    assert mounts[str(settings.results_dir)] == "results"
    assert settings.redis_url.startswith("redis://redis:")  # the compose service name
    if name.startswith("worker"):
        assert str(settings.model_dir).startswith("/models/") and "/models" in mounts
    if name == "api":
        assert f":{settings.api_port}" in service["ports"][0]
    if name == "listener":
        assert service["ports"][0].endswith(f":{settings.listen_port}")


def test_api_refuses_the_example_key_and_starts_with_a_real_one(
    compose: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from service.api import cli
    from service.config import get_settings
    from service.errors import ConfigError

    env = _service_env(compose["services"]["api"])
    env["LUMBAR_AI_DATA_DIR"] = str(tmp_path)  # /var/lib/lumbar-ai exists only in the image
    args = build_parser(["api"]).parse_args(["api"])
    _settings_from(env, monkeypatch)
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="example API key"):
        cli.build(args)
    monkeypatch.setenv("LUMBAR_AI_API_KEYS", f'["{GOOD_KEY}"]')
    get_settings.cache_clear()
    try:
        settings, app = cli.build(args)
        assert app.state.api_keys == (GOOD_KEY.encode(),)
    finally:
        get_settings.cache_clear()


def test_env_example_documents_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    missing = [n for n in Settings.model_fields if f"LUMBAR_AI_{n.upper()}=" not in text]
    assert not missing, f".env.example lacks {['LUMBAR_AI_' + n.upper() for n in missing]}"


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile", "docker/Dockerfile.gpu"])
def test_dockerfile_copies_existing_sources_and_runs_as_non_root(dockerfile: str) -> None:
    text = (ROOT / dockerfile).read_text()
    copies = re.findall(r"^COPY\s+(?!--from)(.+)$", text, flags=re.M)
    assert copies
    for line in copies:
        *sources, _dest = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile}: COPY source {source} does not exist"
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK ", text, flags=re.M)
    ignore = (ROOT / f"{dockerfile}.dockerignore").read_text()
    for source in {s for line in copies for s in line.split()[:-1]}:
        assert f"!{source}" in ignore, f"{source} is excluded from the build context"


def test_gpu_image_swaps_onnxruntime_for_onnxruntime_gpu() -> None:
    text = (ROOT / "docker/Dockerfile.gpu").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+-cudnn-runtime-", text, flags=re.M)
    assert "pip uninstall -y onnxruntime" in text and "onnxruntime-gpu" in text


def test_entrypoint_is_valid_sh_and_executable() -> None:
    script = ROOT / "docker/entrypoint.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["sh", "-n", str(script)], check=True)


def test_compose_healthchecks_use_modes_the_script_has(compose: dict) -> None:
    text = (ROOT / "docker/healthcheck.py").read_text()
    for name in OUR_SERVICES:
        test = compose["services"][name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "/usr/local/bin/lumbar-ai-healthcheck"]
        assert f'"{test[3]}": check_{test[3]}' in text


def _healthcheck(mode: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "docker/healthcheck.py"), mode],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_healthcheck_http_and_tcp_against_live_servers(tmp_path: Path, redis_url: str) -> None:
    from service.api.app import create_app

    port = free_port()
    settings = Settings(_env_file=None, data_dir=tmp_path, redis_url=redis_url, api_keys=[GOOD_KEY])
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        ok = _healthcheck("http", {"LUMBAR_AI_API_PORT": str(port)})
        assert ok.returncode == 0, ok.stdout
    finally:
        server.should_exit = True
        thread.join(10)
    assert _healthcheck("http", {"LUMBAR_AI_API_PORT": str(port)}).returncode == 1

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        tcp_port = listening.getsockname()[1]
        assert _healthcheck("tcp", {"LUMBAR_AI_LISTEN_PORT": str(tcp_port)}).returncode == 0
    assert _healthcheck("tcp", {"LUMBAR_AI_LISTEN_PORT": str(free_port())}).returncode == 1


def test_healthcheck_worker_wants_a_heartbeat_from_its_own_host(redis_url: str) -> None:
    import redis

    from service import telemetry

    prefix = f"hc-test-{uuid.uuid4().hex[:8]}"  # other runs may share this Redis database
    env = {"LUMBAR_AI_REDIS_URL": redis_url, "LUMBAR_AI_STREAM_PREFIX": prefix}
    assert _healthcheck("worker", env).returncode == 1
    client = redis.Redis.from_url(redis_url)
    telemetry.heartbeat(client, prefix, f"worker-another-{socket.gethostname()}-1", "demo", "1", [])
    assert _healthcheck("worker", env).returncode == 1
    telemetry.heartbeat(client, prefix, f"worker-{socket.gethostname()}-42", "demo", "1", [])  # its format
    result = _healthcheck("worker", env)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile", "docker/Dockerfile.gpu"])
def test_images_carry_the_shipped_model_and_load_it_by_default(dockerfile: str, compose: dict) -> None:
    from service.config import SHIPPED_MODEL_DIR, SHIPPED_MODEL_NAME

    text = (ROOT / dockerfile).read_text()
    assert re.search(rf"^COPY models/{SHIPPED_MODEL_NAME} /models/{SHIPPED_MODEL_NAME}$", text, flags=re.M)
    assert f"LUMBAR_AI_MODEL_DIR=/models/{SHIPPED_MODEL_NAME}" in text
    worker_env = _service_env(compose["services"]["worker"])
    assert worker_env["LUMBAR_AI_MODEL_DIR"] == f"/models/{SHIPPED_MODEL_NAME}"  # the mounted ./models holds it
    assert SHIPPED_MODEL_DIR == ROOT / "models" / SHIPPED_MODEL_NAME
