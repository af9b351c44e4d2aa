"""Helpers shared by the backends: classifying failures into `LLMError`s."""

from __future__ import annotations

import ssl
from typing import Any, NoReturn

import anyio
import httpx
import httpx2

from hal9100.llm.base import LLMError

# The SDKs talk through `httpx2`, but an SDK may surface an `httpx` error when a caller
# injected an `httpx` transport, and a few transport failures escape both as bare
# `ssl`/`anyio` errors (the SDKs themselves shim these).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    httpx2.HTTPError,
    httpx2.StreamError,
    httpx.HTTPError,
    httpx.StreamError,
    ssl.SSLError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    ConnectionError,
    TimeoutError,
)

_MAX_MESSAGE = 500
# How much of an answer that is no completion a run's `last_error.message` quotes.
_MAX_PREVIEW = 200


def kind_for_status(status: int) -> str:
    """The `LLMError.kind` for an HTTP status, following what the OpenAI SDK retries."""
    if status == 429:
        return "rate_limit"
    if status in (401, 403):
        return "auth"
    # 408 (request timeout) and 409 (lock contention) are transient: the official SDKs retry them.
    if status in (408, 409) or status >= 500:
        return "server"
    if 400 <= status < 500:
        return "invalid_request"
    # 1xx/2xx/3xx as an error means the server broke the protocol; trying again may help.
    return "server"


def body_message(body: object) -> str | None:
    """The human-readable message in an error body, whatever shape the server chose.

    OpenAI-style `{"error": {"message": ...}}` (or the SDK's unwrapped inner dict), FastAPI's
    `{"detail": ...}`, `{"error": "text"}`, Anthropic's `{"type": "error", "error": {...}}`,
    or plain text.
    """
    if body is None:
        return None
    if isinstance(body, str):
        text = body.strip()
        return _truncate(text) if text else None
    if isinstance(body, dict):
        for key in ("message", "detail", "error", "msg"):
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                return _truncate(value.strip())
            if isinstance(value, dict):
                inner = body_message(value)
                if inner:
                    return inner
            if isinstance(value, list) and value:
                # FastAPI validation errors: a list of {"loc", "msg", ...}.
                return _truncate("; ".join(_describe(item) for item in value))
        return _truncate(str(body))
    return _truncate(str(body))


def raise_mapped(exc: Exception, mapped: LLMError | None) -> NoReturn:
    """Raise the `LLMError` that `exc` stands for (the backend's `_map_error`), or `exc`
    itself when it stands for none: not a backend failure, so not the run's to report."""
    if mapped is None:
        raise exc
    raise mapped from exc


def status_error(
    backend: str, status: int, body: object, fallback: str, *, kind: str | None = None
) -> LLMError:
    detail = body_message(body) or fallback
    return LLMError(
        kind or kind_for_status(status),
        f"{backend} answered HTTP {status}: {detail}",
        status=status,
    )


def transport_error(backend: str, exc: BaseException) -> LLMError:
    name = type(exc).__name__
    detail = str(exc)
    detail = f"{name}: {_truncate(detail)}" if detail else name
    if isinstance(exc, httpx2.TimeoutException | httpx.TimeoutException | TimeoutError):
        return LLMError("server", f"{backend} timed out ({detail})")
    return LLMError("server", f"{backend} connection failed ({detail})")


def garbage_error(backend: str, status: int, what: str, body: str) -> LLMError:
    """A 200 answer that is no completion (a proxy's HTML error page, another API's JSON):
    retryable, like any server failure, and quoted so the run says what came back."""
    shown = preview(body)
    return LLMError(
        "server",
        f"{backend} answered HTTP {status} with {what}: "
        + (repr(shown) if shown else "an empty body"),
        status=status,
    )


def preview(text: str) -> str:
    """The start of `text` on one line, shortened for an error message."""
    flat = " ".join(text[: _MAX_PREVIEW * 4].split())
    return flat if len(flat) <= _MAX_PREVIEW else flat[: _MAX_PREVIEW - 3] + "..."


def token_count(value: object) -> int:
    """A usage count as a server reported it; anything but a non-negative integer counts as
    unreported (0), so a broken server cannot store a usage the API cannot return."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return 0


def _describe(item: Any) -> str:
    if isinstance(item, dict):
        msg = item.get("msg") or item.get("message")
        loc = item.get("loc")
        if msg and loc:
            return f"{'.'.join(str(part) for part in loc)}: {msg}"
        if msg:
            return str(msg)
    return str(item)


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."
