"""Liveness, readiness and metrics routes: what compose, a load balancer and Prometheus call.

/healthz says the process answers (compose restarts the container when it does not); it checks nothing
else, so a Redis outage never restarts a healthy API. /readyz says the service can do its job end to end:
Redis answers, the spool has room above its reserve, and at least one worker has a model loaded.
"""

from __future__ import annotations

import shutil
from typing import Annotated

import redis
from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import telemetry
from service.api.auth import bearer_scheme, require_api_key
from service.api.deps import RedisDep, SettingsDep
from service.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness (no key needed)")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: Redis, spool disk space, a live worker with a model (no key needed)",
    responses={503: {"model": Health, "description": "not ready; checks says what is missing"}},
)
def readyz(settings: SettingsDep, client: RedisDep, request: Request,
           credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]) -> JSONResponse:
    """Ready or not for anyone (a load balancer needs no more); what each check found only with a key, since
    it names versions, free space and internal errors."""
    checks: dict[str, str] = {}
    ok = True
    try:
        client.ping()
        checks["redis"] = "ok"
        workers = telemetry.live_workers(client, settings.stream_prefix, 3 * settings.worker_heartbeat_s)
        if workers:
            checks["workers"] = (
                f"ok: {len(workers)} live ({', '.join(sorted({w.model_version for w in workers}))})"
            )
        else:
            ok = False
            checks["workers"] = "no worker with a model loaded has sent a heartbeat recently"
    except redis.RedisError as exc:
        ok = False
        checks["redis"] = f"unavailable: {type(exc).__name__}"
        checks["workers"] = "unknown (Redis unavailable)"
    try:
        settings.spool_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(settings.spool_dir).free
        reserve = settings.disk_reserve_mb * 1024 * 1024
        if free > reserve:
            checks["spool"] = f"ok: {free // 2**20} MiB free"
        else:
            ok = False
            checks["spool"] = f"{free // 2**20} MiB free, below the reserve of {settings.disk_reserve_mb} MiB"
    except OSError as exc:
        ok = False
        checks["spool"] = f"unusable: {exc.strerror}"
    body = Health(status="ok" if ok else "unavailable", checks=checks if _has_key(request, credentials) else {})
    return JSONResponse(body.model_dump(), status_code=200 if ok else status.HTTP_503_SERVICE_UNAVAILABLE)


def _has_key(request: Request, credentials: HTTPAuthorizationCredentials | None) -> bool:
    try:
        require_api_key(request, credentials)
    except HTTPException:
        return False
    return True


def _metrics_auth(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> None:
    if request.app.state.settings.metrics_require_key:
        require_api_key(request, credentials)


@router.get(
    "/metrics",
    summary="Prometheus metrics (key needed unless LUMBAR_AI_METRICS_REQUIRE_KEY=false)",
    response_class=Response,
    dependencies=[Depends(_metrics_auth)],
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 401: {}, 403: {}},
)
def metrics(request: Request) -> Response:
    try:
        body = generate_latest(request.app.state.metrics_registry)
    except redis.RedisError as exc:  # the collector handles Redis errors; this is belt and braces
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "Redis unavailable") from exc
    return Response(body, media_type=CONTENT_TYPE_LATEST)
