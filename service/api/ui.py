"""GET /ui: one static page (HTML with a little inline JS, no CDN, no build step) over the API.

The page holds no study data of its own: it asks the user for an API key and calls the same routes any
client calls, so it needs no key to be served and adds no second way in.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse

router = APIRouter(tags=["ui"])

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
