"""Upload throughput of the REST API against the DICOM path, measured in the same run.

The same generated series (default 200 instances, 512x512, 16-bit) goes into a fresh spool three ways:
POST /studies (one multipart request), POST /dicomweb/studies (one STOW-RS request), and dcmtk's storescu
to `lumbar-ai listen --no-assembler` over one association (TCP_NODELAY set). Both servers write with fsync
on, as in production. Printed: instances/s and MB/s of each, and the API's rate as a ratio of the DICOM
path's; the HTTP routes are meant for occasional uploads, so the goal is only >= 0.5.

    .venv/bin/python bench/bench_api.py [--instances 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_receive import DCMTK_ENV, ROOT, free_port, write_series  # noqa: E402

KEY = "bench-key-" + uuid.uuid4().hex


def _wait_port(port: int, timeout_s: float = 60.0) -> None:
    import socket

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def _server(cmd: list[str], env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    _wait_port(port)
    return proc


def _env(data_dir: Path, redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "LUMBAR_AI_DATA_DIR": str(data_dir),
        "LUMBAR_AI_REDIS_URL": redis_url,
        "LUMBAR_AI_STREAM_PREFIX": "lumbar-ai-bench",
        "LUMBAR_AI_API_KEYS": json.dumps([KEY]),
        "LUMBAR_AI_DISK_RESERVE_MB": "0",
        "LUMBAR_AI_MAX_UPLOAD_MB": "4096",
    }


def bench_http(files: list[Path], work: Path, redis_url: str, stow: bool) -> float:
    data_dir = work / ("stow" if stow else "multipart")
    port = free_port()
    env = {**_env(data_dir, redis_url), "LUMBAR_AI_API_PORT": str(port), "LUMBAR_AI_API_HOST": "127.0.0.1"}
    proc = _server([sys.executable, "-m", "service.cli", "api"], env, port)
    try:
        payloads = [f.read_bytes() for f in files]
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            started = time.perf_counter()
            if stow:
                boundary = uuid.uuid4().hex
                body = (
                    b"".join(
                        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
                        for p in payloads
                    )
                    + f"--{boundary}--\r\n".encode()
                )
                content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
                response = client.post(
                    "/dicomweb/studies", content=body, headers={**headers, "Content-Type": content_type}
                )
                assert response.status_code == 200, response.text[:300]
            else:
                parts = [
                    ("files", (f.name, p, "application/dicom")) for f, p in zip(files, payloads, strict=True)
                ]
                response = client.post("/studies", files=parts, headers=headers)
                assert response.status_code == 202, response.text[:300]
            elapsed = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(10)
    assert sum(1 for _ in (data_dir / "spool").rglob("*.dcm")) == len(files)
    return elapsed


def bench_dicom(files: list[Path], work: Path, redis_url: str) -> float:
    data_dir = work / "dicom"
    port = free_port()
    env = {
        **_env(data_dir, redis_url),
        "LUMBAR_AI_LISTEN_PORT": str(port),
        "LUMBAR_AI_LISTEN_HOST": "127.0.0.1",
    }
    proc = _server([sys.executable, "-m", "service.cli", "listen", "--no-assembler"], env, port)
    try:
        started = time.perf_counter()
        subprocess.run(
            ["storescu", "-aec", "LUMBAR_AI", "127.0.0.1", str(port), *map(str, files)],
            env=DCMTK_ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        elapsed = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(10)
    assert sum(1 for _ in (data_dir / "spool").rglob("*.dcm")) == len(files)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument(
        "--redis-url", default=os.environ.get("LUMBAR_AI_REDIS_URL", "redis://127.0.0.1:6379/14")
    )
    args = parser.parse_args()
    if shutil.which("storescu") is None:
        raise SystemExit("dcmtk's storescu is needed (apt-get install dcmtk)")
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    try:
        files = write_series(work / "series", args.instances)
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        results = {
            "storescu -> lumbar-ai listen": bench_dicom(files, work, args.redis_url),
            "POST /studies (multipart)": bench_http(files, work, args.redis_url, stow=False),
            "POST /dicomweb/studies (STOW-RS)": bench_http(files, work, args.redis_url, stow=True),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    peer = results["storescu -> lumbar-ai listen"]
    print(f"{args.instances} instances, {megabytes:.1f} MB, fsync on")
    for name, seconds in results.items():
        rate = args.instances / seconds
        print(
            f"  {name:<34} {rate:7.1f} inst/s {megabytes / seconds:7.1f} MB/s  ratio vs DICOM {peer / seconds:5.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
