"""The action tool: one function per operation of an OpenAPI spec, each call an HTTP request
to the spec's server.

A function's arguments are the operation's path, query, header and cookie parameters by
name, and its JSON request body under the property `body` (whatever the body's schema: an
object, an array or a scalar), so no body field can collide with a parameter.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from hal9100.tools.action import fetch
from hal9100.tools.action.spec import (
    BODY,
    HEADER_VALUE,
    HEADER_VALUE_RULE,
    IDEMPOTENT,
    Operation,
    Parameter,
    ParsedSpec,
    parse_cached,
)
from hal9100.tools.base import FunctionSpec, ToolContext, ToolOutput

if TYPE_CHECKING:
    from hal9100.config import Settings


class ArgumentError(ValueError):
    pass


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _simple(value: Any, explode: bool) -> str:
    """OpenAPI's `simple` style (path and header parameters)."""
    if isinstance(value, list):
        return ",".join(_scalar(v) for v in value)
    if isinstance(value, dict):
        if explode:
            return ",".join(f"{k}={_scalar(v)}" for k, v in value.items())
        return ",".join(f"{k},{_scalar(v)}" for k, v in value.items())
    return _scalar(value)


def _query(parameter: Parameter, value: Any) -> list[tuple[str, str]]:
    name = parameter.name
    if parameter.as_json:
        return [(name, json.dumps(value))]
    if isinstance(value, list):
        if parameter.explode:
            return [(name, _scalar(v)) for v in value]
        separator = {"spaceDelimited": " ", "pipeDelimited": "|"}.get(parameter.style, ",")
        return [(name, separator.join(_scalar(v) for v in value))]
    if isinstance(value, dict):
        if parameter.style == "deepObject":
            return [(f"{name}[{k}]", _scalar(v)) for k, v in value.items()]
        if parameter.explode:
            return [(str(k), _scalar(v)) for k, v in value.items()]
        return [(name, ",".join(f"{k},{_scalar(v)}" for k, v in value.items()))]
    return [(name, _scalar(value))]


def build_request(
    operation: Operation, arguments: dict[str, Any], secret_headers: dict[str, str]
) -> fetch.CallRequest:
    known = {p.name for p in operation.parameters}
    if operation.body_required is not None:
        known.add(BODY)
    unknown = sorted(set(arguments) - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "no arguments"
        raise ArgumentError(
            f"unknown argument(s) {', '.join(unknown)}; this function takes {takes}"
        )
    missing = [p.name for p in operation.parameters if p.required and p.name not in arguments]
    if operation.body_required and BODY not in arguments:
        missing.append(BODY)
    if missing:
        raise ArgumentError(f"missing required argument(s): {', '.join(missing)}")

    path = operation.path
    params: list[tuple[str, str]] = []
    headers: list[tuple[str, str]] = []
    cookies: list[str] = []
    for parameter in operation.parameters:
        if parameter.name not in arguments:
            continue
        value = arguments[parameter.name]
        if parameter.location == "query":
            params.extend(_query(parameter, value))
            continue
        text = json.dumps(value) if parameter.as_json else _simple(value, parameter.explode)
        if parameter.location == "path":
            if text and not text.strip("."):
                # Percent-encoding leaves dots alone, and a URL's `.` and `..` segments are
                # removed with the one before them: `/users/{id}/profile` would call `/profile`.
                raise ArgumentError(
                    f"argument {parameter.name} may not be '{text}': a path segment of only "
                    "dots would change which path is called"
                )
            path = path.replace("{" + parameter.name + "}", quote(text, safe=""))
        elif parameter.location == "header":
            if not HEADER_VALUE.match(text):
                raise ArgumentError(
                    f"argument {parameter.name} is not a valid HTTP header value "
                    f"({HEADER_VALUE_RULE})"
                )
            headers.append((parameter.name, text))
        else:
            cookies.append(f"{parameter.name}={quote(text, safe='')}")
    if cookies:
        headers.append(("Cookie", "; ".join(cookies)))
    try:
        url = httpx.URL(operation.base_url + path, params=params or None)
    except (httpx.InvalidURL, ValueError) as exc:
        raise ArgumentError(f"the arguments make an invalid URL: {exc}") from None
    return fetch.CallRequest(
        method=operation.method,
        url=url,
        headers=headers,
        secret_headers=dict(secret_headers),
        has_body=BODY in arguments,
        body=arguments.get(BODY),
    )


class ActionTool:
    """A ServerTool (hal9100.tools.base) for one `{"type": "action", "data": {...}}` tool."""

    type = "action"

    def __init__(self, parsed: ParsedSpec, headers: dict[str, str], settings: Settings) -> None:
        self._operations = parsed.operations
        self._headers = dict(headers)
        self._settings = settings

    @classmethod
    def from_definition(cls, definition: dict[str, Any], settings: Settings) -> ActionTool:
        """From a stored tool. Raises ActionSpecError (a ValueError) if its spec is not
        usable, which cannot happen to one that was accepted when stored."""
        data = definition.get("data") or {}
        return cls(
            parse_cached(data.get("openapi_spec") or {}), data.get("headers") or {}, settings
        )

    def functions(self) -> list[FunctionSpec]:
        return [operation.function for operation in self._operations.values()]

    def repeatable(self, name: str, arguments: dict[str, Any]) -> bool:
        operation = self._operations.get(name)
        return operation is not None and operation.method in IDEMPOTENT

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> ToolOutput:
        return self._output(name, arguments, await self._call(name, arguments, ctx))

    async def _call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> str:
        operation = self._operations.get(name)
        if operation is None:
            return f"Error: there is no function '{name}' in this action tool."
        try:
            request = build_request(operation, arguments, self._headers)
        except ArgumentError as exc:
            return f"Error: {exc}. Nothing was sent."
        budget = self._settings.action_timeout
        if ctx.deadline is not None:
            budget = min(budget, ctx.deadline - time.time())
        if budget <= 0:
            return "Error: the run has no time left for this request. Nothing was sent."
        return await fetch.send(request, self._settings, budget)

    def unknown_outcome(self, name: str, arguments: dict[str, Any]) -> ToolOutput:
        operation = self._operations.get(name)
        what = f" ({operation.method} {operation.base_url}{operation.path})" if operation else ""
        return self._output(
            name,
            arguments,
            f"Outcome unknown: the request{what} was in flight when the server process making "
            "it stopped. It may or may not have taken effect, and it was not retried.",
        )

    def _output(self, name: str, arguments: dict[str, Any], output: str) -> ToolOutput:
        # The output goes to the model, the run step, its events and the database. An answer's
        # body was scrubbed before it was cut (fetch._render); this also covers the rest (a
        # redirect's location, a URL quoted in a failure).
        output = fetch.scrub(output, self._headers.values())
        return ToolOutput(
            output=output,
            details={
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments), "output": output},
            },
        )
