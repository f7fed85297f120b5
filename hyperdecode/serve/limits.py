"""A request-body limit as pure ASGI middleware (no BaseHTTPMiddleware, which would hide client disconnects from
the handlers): a declared Content-Length over the limit is answered 413 before a byte of the body is read; a body
without one (chunked) is counted as it arrives and refused when it passes the limit.

>>> default_max_request_bytes(4096)
1310720
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

from fastapi.responses import JSONResponse

from .protocol import APIError, error_body

__all__ = ["BodyLimit", "default_max_request_bytes"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
BYTES_PER_TOKEN = 64  # room for a prompt of max_model_len tokens as escaped JSON text (~4 characters a token)
BASE_BYTES = 2 ** 20


def default_max_request_bytes(max_model_len: int) -> int:
    """1 MiB plus 64 bytes per token of context."""
    return BASE_BYTES + BYTES_PER_TOKEN * max_model_len


def too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than the server's limit of {limit} bytes "
                         "(--max-request-bytes)", type="invalid_request_error", code="request_too_large")


class BodyLimit:
    def __init__(self, app: Callable, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            e = too_large(self.max_bytes) if declared.isdigit() else APIError(400, "a bad Content-Length header")
            response = JSONResponse(error_body(e), status_code=e.status, headers={"connection": "close"})
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_large(self.max_bytes)  # the app's APIError handler answers it
            return message

        await self.app(scope, counted, send)
