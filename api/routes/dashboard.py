"""``GET /dashboard``: the A/B dashboard, one static page drawn in the browser from the report.

The page and its script and style ship with the package (``api/static``); nothing is loaded
from elsewhere. The script builds every element with ``textContent``/``createElementNS`` and
the Content-Security-Policy allows only this origin's script, style and fetches, so nothing the
report contains (variant names come from the admin) can run as code.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import Response

router = APIRouter(tags=["dashboard"])

_STATIC = files("api") / "static"
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _asset(name: str, media_type: str) -> Response:
    return Response(
        (_STATIC / name).read_bytes(),
        media_type=media_type,
        headers={"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"},
    )


@router.get("/dashboard", response_class=Response, summary="The A/B dashboard (HTML)")
def dashboard() -> Response:
    return _asset("dashboard.html", "text/html; charset=utf-8")


@router.get("/dashboard/dashboard.js", response_class=Response, include_in_schema=False)
def dashboard_script() -> Response:
    return _asset("dashboard.js", "text/javascript; charset=utf-8")


@router.get("/dashboard/dashboard.css", response_class=Response, include_in_schema=False)
def dashboard_style() -> Response:
    return _asset("dashboard.css", "text/css; charset=utf-8")
