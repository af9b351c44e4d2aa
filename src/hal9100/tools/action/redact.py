"""data.headers are write-only: API objects show every value as REDACTED.

A client that sends back an action tool as it read it (a retrieve-modify-update round trip)
sends REDACTED values; such a value keeps the real one stored for the same header name on a
stored action tool with the same openapi_spec. Any other REDACTED value is refused, so the
marker is never sent to an API as a credential.
"""

from __future__ import annotations

import copy
from typing import Any

from hal9100.core.errors import bad_request

REDACTED = "[redacted]"


def redact_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        data = tool.get("data") if tool.get("type") == "action" else None
        if isinstance(data, dict) and isinstance(data.get("headers"), dict):
            tool = {**tool, "data": {**data, "headers": dict.fromkeys(data["headers"], REDACTED)}}
        out.append(tool)
    return out


def restore_redacted(
    tools: list[dict[str, Any]], stored: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """`tools` with REDACTED header values replaced by the stored ones; raises a 400 APIError
    naming the header when there is none to take."""
    if not any(_headers(t) and REDACTED in _headers(t).values() for t in tools):
        return tools
    tools = copy.deepcopy(tools)
    for index, tool in enumerate(tools):
        headers = _headers(tool)
        for name, value in headers.items():
            if value != REDACTED:
                continue
            spec = tool["data"].get("openapi_spec")
            kept = next(
                (
                    _headers(old)[name]
                    for old in stored or []
                    if _headers(old).get(name, REDACTED) != REDACTED
                    and old["data"].get("openapi_spec") == spec
                ),
                None,
            )
            if kept is None:
                raise bad_request(
                    f"Invalid value for 'tools[{index}].data.headers.{name}': header values are "
                    f"write-only and shown as '{REDACTED}'; no stored action tool with the same "
                    "openapi_spec has this header, so send its real value.",
                    f"tools[{index}].data.headers.{name}",
                )
            headers[name] = kept
    return tools


def _headers(tool: dict[str, Any]) -> dict[str, Any]:
    data = tool.get("data") if tool.get("type") == "action" else None
    headers = data.get("headers") if isinstance(data, dict) else None
    return headers if isinstance(headers, dict) else {}
