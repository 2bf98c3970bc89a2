"""``lumbar-ai api``: serve the REST API and the web page with uvicorn."""

from __future__ import annotations

import argparse
import logging

from service.config import Settings, get_settings
from service.errors import ConfigError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to bind (default: LUMBAR_AI_API_HOST)")
    parser.add_argument("--port", type=int, help="port to bind (default: LUMBAR_AI_API_PORT)")
    parser.add_argument(
        "--forwarded-allow-ips",
        default="127.0.0.1",
        help="reverse proxies trusted for X-Forwarded-* headers (comma-separated, '*' for any)",
    )


def build(args: argparse.Namespace) -> tuple[Settings, object]:
    """Settings and app as this command would serve them; refuses to start without an API key."""
    from service.api.app import create_app

    settings = get_settings()
    app = create_app(settings)
    if not app.state.api_keys:
        raise ConfigError("no API key configured: set LUMBAR_AI_API_KEYS or LUMBAR_AI_API_KEYS_FILE")
    if (settings.api_tls_cert is None) != (settings.api_tls_key is None):
        raise ConfigError("set both LUMBAR_AI_API_TLS_CERT and LUMBAR_AI_API_TLS_KEY, or neither")
    return settings, app


def run(args: argparse.Namespace) -> int:
    import uvicorn

    settings, app = build(args)
    host = args.host or settings.api_host
    port = args.port or settings.api_port
    scheme = "https" if settings.api_tls_cert else "http"
    log.info("API on %s://%s:%d (web page /ui, OpenAPI /docs)", scheme, host, port)
    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=settings.api_tls_cert,
        ssl_keyfile=settings.api_tls_key,
        proxy_headers=True,
        forwarded_allow_ips=args.forwarded_allow_ips,
        log_level="info" if not args.verbose else "debug",
        access_log=True,
    )
    return 0
