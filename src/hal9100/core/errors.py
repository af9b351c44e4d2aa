"""OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, for every failure.

FastAPI answers validation problems with 422 and its own body; OpenAI clients expect 400 and
this shape (the SDK raises `BadRequestError` from it), so every handler here rewrites them.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


INVALID_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you "
    "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
    "but what was sent was not valid JSON.)"
)


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def not_found(kind: str, object_id: str, param: str | None = None) -> APIError:
    return APIError(404, f"No {kind} found with id '{object_id}'.", param=param)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def _param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # Pydantic names the union member it tried ("function-after[...]", "str"); drop those.
    parts = [
        p
        for p in parts
        if not (p.endswith("]") or p.startswith("<") or p in ("str", "list[...]", "int", "float"))
    ]
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def _validation_message(err: dict[str, Any], param: str | None) -> str:
    kind = err.get("type", "")
    if kind == "json_invalid":
        return INVALID_JSON
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}"
    if kind == "missing":
        if param is None:
            return "Missing request body: this endpoint expects a JSON object."
        return f"Missing required parameter: '{param}'."
    if param is None and kind in ("model_attributes_type", "dict_type", "model_type"):
        return "Invalid request body: expected a JSON object."
    if kind == "union_tag_invalid":
        # Tags are written `<type>` (see core.schemas.tagged_union).
        ctx = err.get("ctx") or {}
        tag = str(ctx.get("tag", "")).strip("<>")
        expected = str(ctx.get("expected_tags", "")).replace("<", "").replace(">", "")
        return f"Invalid value for '{param}': '{tag}'. Supported values are: {expected}."
    if kind == "union_tag_not_found":
        return f"Missing required parameter: '{param}'."
    msg = str(err.get("msg", "Invalid value"))
    msg = msg.removeprefix("Value error, ")
    return f"Invalid value for '{param}': {msg}" if param else msg


def _within(param: str | None, root: str | None) -> bool:
    if param is None or root is None:
        return param == root
    return param == root or param.startswith((f"{root}.", f"{root}["))


def _most_specific(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The error to report. A value checked against a union (`content`: a string or a list of
    parts) fails once per member; the first is usually "should be a valid string", which
    hides the real problem ("at least 1 item", "content[0].text" missing). Among the errors
    at or below the first one's location, prefer one from inside the value (the member whose
    shape it had) or one that is more than a type mismatch of the whole value."""
    first = errors[0]
    root = _param(tuple(first.get("loc", ())))
    for err in errors:
        param = _param(tuple(err.get("loc", ())))
        if not _within(param, root):
            continue
        if param != root:
            return err
        kind = str(err.get("type", ""))
        if kind.endswith("_type") or kind == "literal_error":
            continue
        if kind == "union_tag_not_found" and not isinstance(err.get("input"), dict):
            continue
        return err
    return first


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    # A body that is not an object at all (e.g. a JSON list) has no useful location.
    err = _most_specific(errors) if errors else {"msg": "Invalid request"}
    param = _param(tuple(err.get("loc", ())))
    if err.get("type") == "json_invalid":
        param = None
    elif err.get("type") in ("union_tag_invalid", "union_tag_not_found"):
        # The `type` field picks the member: name it, as OpenAI's `content[0].type`.
        param = f"{param}.type" if param else "type"
    return JSONResponse(
        error_body(_validation_message(err, param), "invalid_request_error", param),
        status_code=400,
    )


async def _api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Invalid method for URL ({request.method} {request.url.path})"
    else:
        message = str(exc.detail)
    return JSONResponse(
        error_body(message, "invalid_request_error"),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _unhandled_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(
        error_body("The server had an error while processing your request.", "server_error"),
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(APIError, _api_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(Exception, _unhandled_handler)
