"""The optional shared API key (HAL9100_API_KEY). Unset means no authentication, as the
original HAL-9100; per-project keys come later and will replace this check."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from hal9100.core.errors import error_body

_OPEN_PATHS = frozenset({"/health", "/v1/health", "/docs", "/openapi.json"})


class APIKeyMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware) so streamed responses pass through untouched."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse

        message = (
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            if not given
            else "Incorrect API key provided."
        )
        response = JSONResponse(
            error_body(message, "invalid_request_error", None, "invalid_api_key"),
            status_code=401,
        )
        await response(scope, receive, send)
