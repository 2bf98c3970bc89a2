"""Shared fixtures: paths to the optional ../shared data, a real Redis, free ports."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def service_log_text() -> Iterator[io.StringIO]:
    """Every log record at DEBUG and every library warning, through the redacting handler that the
    processes install (service.logs): what an operator would read."""
    from service.logs import install

    buffer = io.StringIO()
    handler = install(logging.StreamHandler(buffer))
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            logging.captureWarnings(True)
            yield buffer
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(level)


def require_tool(name: str) -> str:
    """Path of a Debian tool the test needs; skips with its name when absent (make test installs it).

    dcmtk's tools are looked up past pynetdicom's same-named Python apps (service.demo.find_dcmtk).
    """
    from service.demo import find_dcmtk

    path = find_dcmtk(name)
    if path is None:
        pytest.skip(f"{name} is not installed (make test installs it with apt-get)")
    return path


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (a fresh clone has no ../shared)")
    return SHARED_DATA


@pytest.fixture
def redis_url() -> str:
    """URL of a real Redis (scripts/run_tests.sh starts one when none answers); the DB is flushed."""
    import redis

    url = os.environ.get("LUMBAR_AI_REDIS_URL", "redis://127.0.0.1:6379/15")
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"no Redis answers at {url}; run the tests with make test")
    client.flushdb()
    yield url
    client.flushdb()
    client.close()
