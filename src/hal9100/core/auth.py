"""The optional shared API key (HAL9100_API_KEY). Unset means no authentication, as the
original HAL-9100; per-project keys come later and will replace this check.

With a key set, the documentation pages and the liveness and readiness probes stay open (a
load balancer or orchestrator probes without credentials); everything else needs the key.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from hal9100.core.errors import error_body

_OPEN_PATHS = frozenset(
    {
        "/health",
        "/v1/health",
        "/ready",
        "/v1/ready",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
    }
)


class APIKeyMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware) so streamed responses pass through untouched."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = api_key.encode()

    def _authorized(self, header: bytes) -> bool:
        # The scheme is case-insensitive (RFC 9110 section 11.1); the key is not.
        scheme, _, token = header.strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if self._authorized(given):
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
