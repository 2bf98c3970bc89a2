"""The FastAPI application, built from one Settings by ``create_app`` (tests build theirs the same way).

Public without a key: /healthz and /readyz (compose and load balancers; /readyz says only ready or not
unless a key comes with it), and /ui (a static page that holds no data and asks the user for a key).
/docs and /openapi.json ask for a key unless ``public_docs`` is true, /metrics unless
``metrics_require_key`` is false. Everything else answers 401 without a key and 403 with a wrong one.
Errors from the stages are translated to HTTP here, and only here.
"""

from __future__ import annotations

import logging

import redis
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from service import __version__
from service.api import health, stow, studies, ui
from service.api.auth import load_api_keys, require_api_key
from service.api.limits import BodySizeLimit
from service.api.metrics import RedisCollector
from service.config import Settings
from service.deliver.outbox import Outbox
from service.errors import (
    InvalidUIDError,
    LumbarAIError,
    QueueError,
    ReceiveError,
    SpoolFullError,
    StudyNotFoundError,
)
from service.queue.state import StudyStore
from service.receive.spool import Spool

log = logging.getLogger(__name__)

DESCRIPTION = """
Lumbar spine MRI AI service. Upload a study (or let the PACS send it over DICOM), follow its state, and
fetch the results: a JSON report, a DICOM SEG of 19 structures, a DICOM SR (TID 1500) with the findings
per level, and a preview image. Authenticate with `Authorization: Bearer <API key>`.
The shipped model is trained partly on synthetic data (its model card says on what); it is not a medical device.
"""


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        docs_url=None,  # served from the package below, not from a CDN a hospital network may block
        redoc_url=None,
        openapi_url=None,  # served by ui.add_offline_docs, behind the key unless settings.public_docs
        title="lumbar-ai",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=[
            {"name": "studies", "description": "upload, state and results"},
            {"name": "dicomweb", "description": "STOW-RS for DICOMweb clients"},
            {"name": "health", "description": "liveness, readiness, metrics"},
            {"name": "ui", "description": "the web page"},
        ],
    )
    app.state.settings = settings
    app.state.api_keys = load_api_keys(settings)
    app.state.redis = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=30
    )
    app.state.store = StudyStore(app.state.redis, settings.stream_prefix)
    app.state.spool = Spool.from_settings(settings)
    app.state.outbox = Outbox(app.state.redis, settings)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        RedisCollector(
            app.state.redis,
            settings.stream_prefix,
            settings.consumer_group,
            settings.worker_heartbeat_s,
            outbox=app.state.outbox,
        )
    )
    app.state.metrics_registry = registry

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_mb * 1024 * 1024)
    protected = [Depends(require_api_key)]
    app.include_router(health.router)
    app.include_router(ui.router)
    ui.add_offline_docs(app, public=settings.public_docs)
    app.include_router(studies.router, dependencies=protected)
    app.include_router(stow.router, dependencies=protected)
    _add_error_handlers(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    statuses: list[tuple[type[LumbarAIError], int]] = [
        (StudyNotFoundError, 404),
        (InvalidUIDError, 400),
        (SpoolFullError, 507),
        (QueueError, 503),
        (ReceiveError, 500),
        (LumbarAIError, 500),
    ]
    for exc_type, code in statuses:

        async def handler(request: Request, exc: Exception, code: int = code) -> JSONResponse:
            if code >= 500:
                log.warning("%s %s -> %d: %s", request.method, request.url.path, code, type(exc).__name__)
            return JSONResponse({"detail": str(exc)}, status_code=code)

        app.add_exception_handler(exc_type, handler)
