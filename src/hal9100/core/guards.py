"""Checks every request passes before any route sees it: the body's size, and text that no
database can store. Pure ASGI middlewares (not BaseHTTPMiddleware), so streamed responses
pass through untouched.

* Size: a JSON body may hold at most HAL9100_MAX_REQUEST_BYTES, an upload
  HAL9100_MAX_UPLOAD_BYTES plus room for the multipart framing. A `Content-Length` over the
  limit is answered 413 before a byte is read; a chunked body as soon as the count passes it.
* Text: a lone surrogate cannot be encoded as UTF-8 (SQLite stores it and every later read of
  the row fails, poisoning lists) and PostgreSQL refuses NUL in text and JSON. JSON can carry
  both (`"\\ud800"`, `"\\u0000"`), and so can a URL (`%00`): they are refused with 400 naming
  the `param`, every other character is accepted as it is. An upload's form fields are
  checked where they are read (files/service.py).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hal9100.core.errors import APIError, bad_request
from hal9100.core.text import problem as text_problem

# Room for the multipart boundaries, part headers and the small form fields of an upload;
# the file's own size is checked exactly where it is read (files/service.py).
MULTIPART_ALLOWANCE = 64 * 1024


class RequestRejected(APIError, HTTPException):
    """An APIError raised from a wrapped `receive` while the app reads the body. FastAPI
    turns any other exception raised there into a generic "error parsing the body" but lets
    an HTTPException through; the APIError handler (first in the MRO) then answers it in
    OpenAI's shape with its `param` and `code`."""

    def __init__(self, error: APIError) -> None:
        # Not APIError.__init__: its super() call would land in HTTPException's.
        HTTPException.__init__(self, error.status, error.message)
        self.status = error.status
        self.message = error.message
        self.type = error.type
        self.param = error.param
        self.code = error.code


async def _answer(error: APIError, scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)


def upload_too_large(limit: int, param: str | None = None) -> APIError:
    """The 413 for an upload past HAL9100_MAX_UPLOAD_BYTES, from this guard or from where
    the file part itself is counted (files/service.py)."""
    message = f"The upload is larger than the limit of {limit} bytes (HAL9100_MAX_UPLOAD_BYTES)."
    return APIError(413, message, param=param, code="request_too_large")


def bad_text(param: str | None, problem: str, what: str = "the string") -> APIError:
    """The 400 for text no database can store (`core.text.problem`), naming its `param`."""
    where = f"Invalid '{param}'" if param else "Invalid request body"
    return bad_request(f"{where}: {what} contains {problem}.", param)


def check_text(value: str | None, param: str) -> None:
    """The rule for a field this guard does not parse (an upload's form fields)."""
    problem = None if value is None else text_problem(value)
    if problem is not None:
        raise bad_text(param, problem)


class BodyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_request_bytes: int,
        max_upload_bytes: int,
        upload_paths: frozenset[str],
    ) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.max_upload_bytes = max_upload_bytes
        self.upload_paths = upload_paths

    def _too_large(self, upload: bool) -> APIError:
        if upload:
            return upload_too_large(self.max_upload_bytes)
        limit = self.max_request_bytes
        size = f"{limit // 2**20} MiB" if limit % 2**20 == 0 else f"{limit} bytes"
        message = (
            f"The request body is larger than the limit of {size} (HAL9100_MAX_REQUEST_BYTES)."
        )
        return APIError(413, message, code="request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["method"] == "POST" and scope["path"] in self.upload_paths
        limit = self.max_upload_bytes + MULTIPART_ALLOWANCE if upload else self.max_request_bytes
        declared = Headers(scope=scope).get("content-length")
        if (
            declared is not None
            and declared.isascii()
            and declared.isdigit()
            and int(declared) > limit
        ):
            await _answer(self._too_large(upload), scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestRejected(self._too_large(upload))
            return message

        await self.app(scope, limited_receive, send)


def _may_hold_bad_text(body: bytes) -> bool:
    """False for (nearly) every real body, cheaply: only an escape, a NUL byte (also in
    UTF-16/32 bodies, which json.loads accepts) or a UTF-8-encoded surrogate (0xED 0xA0-0xBF,
    which json.loads decodes with surrogatepass) can carry bad text."""
    if b"\\u" in body or b"\x00" in body:
        return True
    if b"\xed" not in body:
        return False
    try:
        body.decode()
    except UnicodeDecodeError:
        return True
    return False


def _child(param: str | None, key: str | int) -> str:
    if isinstance(key, int):
        return f"{param or ''}[{key}]"
    return f"{param}.{key}" if param else key


def _find_bad_text(value: Any) -> APIError | None:
    """The first string or object key in a parsed JSON value that cannot be stored, as a
    400 naming its `param` in OpenAI's form (`tools[0].function.description`). A bad key
    names its object: the key itself cannot be written into the answer."""
    stack: list[tuple[Any, str | None]] = [(value, None)]
    while stack:
        item, param = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem is not None:
                return bad_text(param, problem)
        elif isinstance(item, dict):
            children: list[tuple[Any, str | None]] = []
            for key, child in item.items():
                problem = text_problem(key)
                if problem is not None:
                    return bad_text(param, problem, "an object key")
                children.append((child, _child(param, key)))
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend((item[i], _child(param, i)) for i in reversed(range(len(item))))
    return None


def _body_problem(body: bytes) -> APIError | None:
    if not _may_hold_bad_text(body):
        return None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON: FastAPI answers that itself
    return _find_bad_text(value)


def _url_problem(scope: Scope) -> APIError | None:
    problem = text_problem(scope["path"])
    if problem is not None:
        return bad_request(f"Invalid URL: the path contains {problem}.")
    query: bytes = scope["query_string"]
    # A NUL can only arrive percent-encoded; decoded as Starlette does (encoded surrogates
    # become U+FFFD there).
    if b"%" in query:
        for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            problem = text_problem(key)
            if problem is not None:
                return bad_request(f"Invalid query string: a parameter name contains {problem}.")
            problem = text_problem(value)
            if problem is not None:
                return bad_request(f"Invalid '{key}': the value contains {problem}.", key)
    return None


def _is_json(scope: Scope) -> bool:
    """Whether FastAPI parses this body as JSON: no content type, or application/(*+)json."""
    content_type = Headers(scope=scope).get("content-type")
    if content_type is None:
        return True
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json")
    )


class TextGuardMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        error = _url_problem(scope)
        if error is not None:
            await _answer(error, scope, receive, send)
            return
        if not _is_json(scope):
            await self.app(scope, receive, send)
            return
        delivered = False

        async def checked_receive() -> Message:
            # The whole body is gathered (as the app would) and checked before the app sees
            # it; later calls (a streamed response waiting for a disconnect) pass through.
            nonlocal delivered
            if delivered:
                return await receive()
            chunks: list[bytes] = []
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return message
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            delivered = True
            body = b"".join(chunks)
            error = _body_problem(body)
            if error is not None:
                raise RequestRejected(error)
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, checked_receive, send)
