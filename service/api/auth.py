"""API keys: bearer tokens from the settings or a secrets file, compared in constant time.

Keys are loaded once when the app is built. A secrets file (Docker/Kubernetes secret) holds one key per
line; blank lines and lines starting with ``#`` are ignored. With no key configured every protected route
answers 503 rather than opening up: an API that forgot its keys must not serve studies to anyone.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from service.config import Settings
from service.errors import ConfigError

MIN_KEY_LENGTH = 16


def load_api_keys(settings: Settings) -> tuple[bytes, ...]:
    """Every configured key as bytes; ConfigError for a missing secrets file or a key too short to be safe."""
    keys = [(k.get_secret_value() if isinstance(k, SecretStr) else str(k)).strip() for k in settings.api_keys]
    if settings.api_keys_file is not None:
        keys.extend(_read_keys_file(settings.api_keys_file))
    keys = [k for k in keys if k]
    if any(k.startswith("change-me") for k in keys):
        raise ConfigError(
            "the example API key from .env.example is still set: replace it (openssl rand -hex 32)"
        )
    short = [i for i, k in enumerate(keys) if len(k) < MIN_KEY_LENGTH]
    if short:
        raise ConfigError(f"{len(short)} API key(s) shorter than {MIN_KEY_LENGTH} characters")
    return tuple(k.encode() for k in keys)


def _read_keys_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"API keys file {path} cannot be read: {exc.strerror}") from exc
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def key_matches(presented: bytes, keys: tuple[bytes, ...]) -> bool:
    """True when the presented key equals one of the keys; every key is compared, so timing says nothing."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(presented, key)
    return found


bearer_scheme = HTTPBearer(
    auto_error=False, description="An API key from LUMBAR_AI_API_KEYS or the keys file"
)


def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> None:
    """FastAPI dependency: 401 without a bearer key, 403 with a wrong one."""
    keys: tuple[bytes, ...] = request.app.state.api_keys
    if not keys:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no API key is configured on this server")
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials.strip():
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not key_matches(credentials.credentials.strip().encode(), keys):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "API key not accepted")


ApiKey = Annotated[None, Depends(require_api_key)]
"""Add ``_: ApiKey`` to a route, or ``dependencies=[Depends(require_api_key)]`` to a router."""
