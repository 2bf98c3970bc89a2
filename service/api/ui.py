"""GET /ui: one static page (HTML with a little inline JS, no CDN, no build step) over the API.

The page holds no study data of its own: it asks the user for an API key and calls the same routes any
client calls, so it needs no key to be served and adds no second way in.
"""

from __future__ import annotations

from importlib import resources

import swagger_ui_bundle
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from service.api.auth import require_api_key

router = APIRouter(tags=["ui"])
OPENAPI_URL = "/openapi.json"

_PAGE = resources.files("service.api").joinpath("static/index.html")
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "img-src 'self' blob: data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@router.get("/ui", response_class=HTMLResponse, summary="Web page: studies, state, findings (no key needed)")
def page() -> HTMLResponse:
    return HTMLResponse(_PAGE.read_text(encoding="utf-8"), headers=_HEADERS)


@router.get("/", include_in_schema=False)
def root() -> RedirectResponse:
    return RedirectResponse("ui")


def add_offline_docs(app: FastAPI, public: bool) -> None:
    """/openapi.json, and /docs: Swagger UI from the swagger-ui-bundle package, so the docs work without
    internet access. Both ask for the API key unless ``public``; a browser sends none, so a site that wants
    the page in a browser sets LUMBAR_AI_PUBLIC_DOCS=true on a trusted network, and clients fetch
    /openapi.json with the key."""
    guard = [] if public else [Depends(require_api_key)]
    app.mount("/docs/static", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger-ui")

    @app.get(OPENAPI_URL, include_in_schema=False, dependencies=guard)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=guard)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{OPENAPI_URL}",
            title=f"{app.title} API",
            swagger_js_url=f"{root}/docs/static/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/static/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/static/favicon-32x32.png",
        )
