"""Shared helpers for the run tests: tool definitions, and picking out of the scripted LLM's
log the requests one test caused.

Helpers that call the SDK's Assistants resources live in the test modules themselves:
pytest's filter for the SDK's DeprecationWarnings applies to warnings raised from `test_*`
modules only."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from openai import AssistantEventHandler
from openai.types.beta import AssistantStreamEvent

from openapi_contract import spec_available, validate_stream_event
from scripted_llm import ScriptedLLM

POLL_MS = 20
TERMINAL = {"completed", "failed", "cancelled", "expired", "incomplete"}

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a time zone",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
}


def marker() -> str:
    """A word no other test writes, to find this test's requests in the scripted LLM's log."""
    return f"m{uuid.uuid4().hex[:12]}"


def requests_with(llm: ScriptedLLM, text: str) -> list[dict[str, Any]]:
    """The bodies the scripted LLM received whose messages mention `text`, oldest first."""
    return [body for body in llm.requests if text in json.dumps(body.get("messages", []))]


def usage_of(obj: Any) -> tuple[int, int, int]:
    usage = obj.usage
    assert usage is not None, f"{obj.id} has no usage"
    return usage.prompt_tokens, usage.completion_tokens, usage.total_tokens


def wait_llm_requests(llm: ScriptedLLM, text: str, count: int = 1, timeout: float = 15) -> None:
    """Wait until the scripted LLM has received `count` requests mentioning `text`."""
    deadline = time.monotonic() + timeout
    while len(requests_with(llm, text)) < count:
        assert time.monotonic() < deadline, f"the LLM never got {count} request(s) for {text}"
        time.sleep(0.02)


class CollectEvents(AssistantEventHandler):
    """Keeps a streamed run's events, each validated against the shared spec."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[AssistantStreamEvent] = []

    def on_event(self, event: AssistantStreamEvent) -> None:
        self.events.append(event)
        if spec_available():
            validate_stream_event(
                event.event, event.data.model_dump(mode="json", exclude_unset=True)
            )
