"""Dependencies of the routes, as Annotated aliases, all taken from the app's state.

``create_app`` builds each shared object once (one Redis pool, one spool); a route asks for what it needs
by type, and tests get the same objects through their own settings.
"""

from __future__ import annotations

from typing import Annotated

import redis
from fastapi import Depends, Request

from service.config import Settings
from service.queue.state import StudyStore
from service.receive.spool import Spool


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis


def get_store(request: Request) -> StudyStore:
    return request.app.state.store


def get_spool(request: Request) -> Spool:
    return request.app.state.spool


def get_base_url(request: Request) -> str:
    """Absolute URL of the API root (no trailing slash), honouring a reverse proxy's root_path."""
    return str(request.base_url).rstrip("/")


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
StoreDep = Annotated[StudyStore, Depends(get_store)]
SpoolDep = Annotated[Spool, Depends(get_spool)]
BaseUrl = Annotated[str, Depends(get_base_url)]
