"""``GET /dashboard``: the A/B dashboard, one static page drawn in the browser from the report;
``GET /explain``: a review's words shaded by their attribution (``POST /v1/explanations``).

The page and its script and style ship with the package (``api/static``); nothing is loaded
from elsewhere. The script builds every element with ``textContent``/``createElementNS`` and
the Content-Security-Policy allows only this origin's script, style and fetches, so nothing the
report contains (variant names come from the admin), and nothing a review contains, can run
as code.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import Response

from api.errors import ApiError

router = APIRouter(tags=["dashboard"])

_STATIC = files("api") / "static"
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

# The only files served: a fixed list, so no path from the URL ever reaches the file system.
_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
    "explain.js": "text/javascript; charset=utf-8",
    "explain.css": "text/css; charset=utf-8",
}


class NotFound(ApiError):
    status = 404
    code = "not_found"


def _asset(name: str, media_type: str) -> Response:
    return Response(
        (_STATIC / name).read_bytes(),
        media_type=media_type,
        headers={"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"},
    )


@router.get("/dashboard", response_class=Response, summary="The A/B dashboard (HTML)")
def dashboard() -> Response:
    return _asset("dashboard.html", "text/html; charset=utf-8")


@router.get(
    "/explain", response_class=Response, summary="Why a rating: words by attribution (HTML)"
)
def explain_page() -> Response:
    return _asset("explain.html", "text/html; charset=utf-8")


@router.get("/dashboard/{asset}", response_class=Response, include_in_schema=False)
@router.get("/explain/{asset}", response_class=Response, include_in_schema=False)
def dashboard_asset(asset: str) -> Response:
    media_type = _ASSETS.get(asset)
    if media_type is None:
        raise NotFound("no such dashboard asset")
    return _asset(asset, media_type)
