"""The browser playground: a chat page at `/` and a live metrics page at `/playground/metrics`.

Plain static files from `static/` (no build step); the pages talk to this server only (/v1/chat/completions,
/v1/models, /metrics), and their Content-Security-Policy forbids anything else.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

__all__ = ["router", "STATIC"]

STATIC = Path(__file__).parent / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


def static_file(name: str) -> Response:
    """A file of `static/` by its bare name: only names listed in that folder are served, so no path escapes it."""
    files = {p.name: p for p in STATIC.iterdir() if p.is_file()} if STATIC.is_dir() else {}
    path = files.get(name)
    if path is None or path.suffix not in TYPES:
        raise HTTPException(404, f"no playground file '{name}'")
    return Response(path.read_bytes(), media_type=TYPES[path.suffix], headers=HEADERS)


@router.get("/")
async def chat_page() -> Response:
    return static_file("index.html")


@router.get("/playground/metrics")
async def metrics_page() -> Response:
    return static_file("metrics.html")


@router.get("/playground/{asset}")
async def asset(asset: str) -> Response:
    return static_file(asset)
