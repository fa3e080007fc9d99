"""GET /: the dashboard page, and /static/: its scripts and styles (no CDN; works offline).

The page and its files hold no data, so they are served without the token; the page asks for
the token (when the server has one) and sends it as a Bearer header on every API call.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from api.routing import StrictQueryRoute

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False, route_class=StrictQueryRoute)
static_files = StaticFiles(directory=STATIC_DIR)
"""Mounted at /static by create_app."""


@router.get("/")
def dashboard() -> FileResponse:
    """The dashboard: jobs table, job view with live learning curves, new-job form."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})
