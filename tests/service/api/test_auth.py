"""Every route but health refuses a missing or wrong key; keys come from settings or a secrets file."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.auth import key_matches, load_api_keys
from service.config import Settings
from service.errors import ConfigError
from tests.service.api.conftest import API_KEY, AUTH

PUBLIC = {"/healthz", "/readyz", "/ui", "/", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
UID = "1.2.826.0.1.3680043.8.498.12345"


def _protected_routes(app) -> list[tuple[str, str]]:
    """Every operation of the OpenAPI document (every route a client can find) except the public ones."""
    out = []
    for path, operations in app.openapi()["paths"].items():
        if path not in PUBLIC:
            for method in operations:
                out.append((method.upper(), path.replace("{uid}", UID)))
    assert out
    return out


def test_protected_routes_cover_the_api(client: TestClient) -> None:
    paths = {p for _, p in _protected_routes(client.app)}
    for expected in ("/studies", f"/studies/{UID}", f"/studies/{UID}/seg", "/dicomweb/studies", "/metrics"):
        assert expected in paths


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": API_KEY}]
)
def test_every_route_but_health_refuses_a_missing_or_wrong_key(client: TestClient, headers: dict) -> None:
    for method, path in _protected_routes(client.app):
        response = client.request(method, path, headers=headers)
        assert response.status_code in (401, 403), (method, path, response.status_code)
        if "Authorization" not in headers or not headers["Authorization"].startswith("Bearer"):
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"


def test_health_routes_and_page_need_no_key(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code in (200, 503)  # readiness, not auth: checked elsewhere
    assert client.get("/ui").status_code == 200


def test_api_docs_ask_for_the_key_unless_public_docs_is_set(settings: Settings) -> None:
    with TestClient(create_app(settings)) as c:
        assert c.get("/openapi.json").status_code == 401 and c.get("/docs").status_code == 401
        assert c.get("/openapi.json", headers=AUTH).json()["info"]["title"] == "lumbar-ai"
        assert c.get("/docs", headers=AUTH).status_code == 200
    with TestClient(create_app(settings.model_copy(update={"public_docs": True}))) as c:
        assert c.get("/openapi.json").status_code == 200 and c.get("/docs").status_code == 200


def test_metrics_open_only_when_configured(settings: Settings) -> None:
    with TestClient(create_app(settings)) as c:
        assert c.get("/metrics").status_code == 401
    with TestClient(create_app(settings.model_copy(update={"metrics_require_key": False}))) as c:
        assert c.get("/metrics").status_code == 200


def test_keys_file_adds_keys_and_skips_comments(settings: Settings, tmp_path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# rotated 2026-01\nsecond-key-abcdefghijklmnop\n\n")
    app = create_app(settings.model_copy(update={"api_keys_file": keys_file}))
    with TestClient(app) as c:
        assert (
            c.get("/studies", headers={"Authorization": "Bearer second-key-abcdefghijklmnop"}).status_code
            == 200
        )
        assert c.get("/studies", headers=AUTH).status_code == 200
        assert c.get("/studies", headers={"Authorization": "Bearer # rotated 2026-01"}).status_code == 403


def test_missing_keys_file_is_a_config_error(settings: Settings, tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_api_keys(settings.model_copy(update={"api_keys_file": tmp_path / "absent"}))


def test_short_and_example_keys_are_refused(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="shorter than"):
        load_api_keys(settings.model_copy(update={"api_keys": ["short"]}))
    with pytest.raises(ConfigError, match="example API key"):
        load_api_keys(Settings(_env_file=None, api_keys=["change-me-to-the-output-of-openssl-rand-hex-32"]))


def test_no_key_configured_answers_503_not_open(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"api_keys": []}))) as c:
        assert c.get("/studies").status_code == 503
        assert c.get("/studies", headers=AUTH).status_code == 503


def test_key_matches_compares_against_every_key() -> None:
    keys = (b"a" * 20, b"b" * 20)
    assert key_matches(b"b" * 20, keys)
    assert not key_matches(b"b" * 19, keys)
    assert not key_matches(b"", keys)
