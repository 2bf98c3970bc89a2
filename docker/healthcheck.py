"""Container health check: ``http`` (the API's /healthz), ``tcp`` (the DICOM listener's port) or
``worker`` (a heartbeat from a worker on this host, with its model loaded, in Redis).

Exit 0 healthy, 1 unhealthy; one line on stdout says why (docker inspect shows it).
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import urllib.request


def check_http() -> str:
    port = os.environ.get("LUMBAR_AI_API_PORT", "8000")
    scheme = "https" if os.environ.get("LUMBAR_AI_API_TLS_CERT") else "http"
    context = ssl._create_unverified_context() if scheme == "https" else None  # own cert, loopback only
    with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/healthz", timeout=4, context=context) as r:
        if r.status != 200:
            raise RuntimeError(f"/healthz answered {r.status}")
    return "api answers /healthz"


def check_tcp() -> str:
    port = int(os.environ.get("LUMBAR_AI_LISTEN_PORT", "11112"))
    with socket.create_connection(("127.0.0.1", port), timeout=4):
        pass
    return f"listener accepts connections on {port}"


def check_worker() -> str:
    import redis

    from service import telemetry
    from service.config import Settings

    settings = Settings()
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=3)
    host = socket.gethostname()
    live = telemetry.live_workers(client, settings.stream_prefix, 3 * settings.worker_heartbeat_s)
    # worker ids are "worker-<host>-<pid>" (lumbar-ai worker's default name) or "<host>:<anything>"
    mine = [w for w in live if w.worker_id.startswith(f"worker-{host}-") or w.worker_id.split(":", 1)[0] == host]
    if not mine:
        raise RuntimeError(f"no recent heartbeat from a worker on {host}")
    return f"{len(mine)} worker(s) on {host} with model {mine[0].model_version}"


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "http"
    checks = {"http": check_http, "tcp": check_tcp, "worker": check_worker}
    try:
        print(checks[mode]())
        return 0
    except Exception as exc:  # any failure is "unhealthy", with the reason
        print(f"unhealthy ({mode}): {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
