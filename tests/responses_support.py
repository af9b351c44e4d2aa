"""Helpers for the Responses API's tests: its streamed events read and checked."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import httpx

from openapi_contract import load_spec, spec_available, validate_schema


@cache
def _schema_of_type() -> dict[str, str]:
    schemas = load_spec()["components"]["schemas"]
    members = schemas["ResponseStreamEvent"].get("anyOf") or schemas["ResponseStreamEvent"]["oneOf"]
    found = {}
    for member in members:
        name = member["$ref"].rsplit("/", 1)[-1]
        kind = schemas[name].get("properties", {}).get("type", {}).get("enum", [None])[0]
        if kind:
            found[kind] = name
    return found


def check_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every event fits its schema, and the sequence numbers count up from the first."""
    first = events[0]["sequence_number"]
    assert [e["sequence_number"] for e in events] == list(range(first, first + len(events)))
    if spec_available():
        for event in events:
            validate_schema(event, _schema_of_type()[event["type"]])
    return events


def read_events(answer: httpx.Response, stop_after: int | None = None) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    kind = None
    for line in answer.iter_lines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
            assert data["type"] == kind
            events.append(data)
            if stop_after is not None and len(events) >= stop_after:
                break
    return events
