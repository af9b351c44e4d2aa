"""The first version of the Assistants API (`OpenAI-Beta: assistants=v1`): what a request
asks for, and the v1 shapes of the objects answered to it.

Code written for v1 (openai-python before 1.21, the original HAL-9100 README) sends
`{"type": "retrieval"}` tools, `file_ids` on assistants and `file_ids` on messages. Such
requests are read in v2 terms: `retrieval` is `file_search`, an assistant's `file_ids` are a
vector store it owns (`VectorStore.owner_id`), a message's `file_ids` are attachments with
the file_search tool. The v1 vocabulary is accepted only under the v1 header; without it,
a request carrying it is refused as OpenAI's v2 refuses it.

The version is read by a router dependency (`read_version`) into a context variable before
FastAPI validates the body: the request models' validators consult it (`is_v1`). An async
dependency runs in the request's own task, so the value is that request's alone.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

Version = Literal["v1", "v2"]
HEADER = "OpenAI-Beta"

_version: ContextVar[Version] = ContextVar("hal9100_assistants_version", default="v2")


def parse_header(value: str | None) -> Version:
    """The Assistants version an `OpenAI-Beta` header asks for. It may list several betas
    (`assistants=v1, other=v3`); anything but an explicit `assistants=v1` is v2."""
    for item in (value or "").split(","):
        name, _, wanted = item.strip().partition("=")
        if name.strip().lower() == "assistants" and wanted.strip().lower() == "v1":
            return "v1"
    return "v2"


async def read_version(request: Request) -> Version:
    """Router dependency: the request's version, kept for the body's validators."""
    version = parse_header(request.headers.get(HEADER))
    _version.set(version)
    return version


VersionDep = Annotated[Version, Depends(read_version)]


def is_v1() -> bool:
    return _version.get() == "v1"


# --- requests ---


def v1_tools(tools: Any) -> Any:
    """A request's `tools` with v1's `retrieval` read as `file_search` (v1 requests only;
    a v2 request keeps it, and the tool union refuses it as OpenAI's v2 does)."""
    if not is_v1() or not isinstance(tools, list):
        return tools
    return [
        {**tool, "type": "file_search"}
        if isinstance(tool, dict) and tool.get("type") == "retrieval"
        else tool
        for tool in tools
    ]


def v1_tool_choice(choice: Any) -> Any:
    """A run request's `tool_choice` with v1's `{"type": "retrieval"}` read as file_search
    (v1 requests only; a v2 request keeps it, and is refused as OpenAI's v2 refuses it)."""
    if is_v1() and isinstance(choice, dict) and choice.get("type") == "retrieval":
        return {**choice, "type": "file_search"}
    return choice


def v1_only(value: Any) -> Any:
    """A field only v1 has (`file_ids`): refused outside v1 with the error an unknown
    argument gets ("Unrecognized request argument supplied: file_ids")."""
    if value is not None and not is_v1():
        from pydantic_core import PydanticCustomError

        raise PydanticCustomError("extra_forbidden", "Extra inputs are not permitted")
    return value


# --- responses ---


def v1_tool_list(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tools as v1 names them: `file_search` was `retrieval`, with no options."""
    return [
        {"type": "retrieval"} if isinstance(t, dict) and t.get("type") == "file_search" else t
        for t in tools
    ]


def assistant_v1(obj: BaseModel, file_ids: list[str]) -> dict[str, Any]:
    """A v2 assistant object in openai-python 1.20's `Assistant` shape."""
    data = obj.model_dump(mode="json")
    return {
        "id": data["id"],
        "object": "assistant",
        "created_at": data["created_at"],
        "name": data["name"],
        "description": data["description"],
        "model": data["model"],
        "instructions": data["instructions"],
        "tools": v1_tool_list(data["tools"]),
        "file_ids": file_ids,
        "metadata": data["metadata"],
    }


def message_v1(obj: BaseModel) -> dict[str, Any]:
    """A v2 message object in v1's shape: its attachments' files as `file_ids`."""
    return message_json_v1(obj.model_dump(mode="json"))


def message_json_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A message (JSON) in v1's shape."""
    data = dict(data)
    attachments = data.pop("attachments", None) or []
    if not isinstance(attachments, list):
        attachments = []
    data["file_ids"] = list(
        dict.fromkeys(
            a["file_id"]
            for a in attachments
            if isinstance(a, dict) and isinstance(a.get("file_id"), str)
        )
    )
    return data


def thread_v1(obj: BaseModel) -> dict[str, Any]:
    """A v2 thread object in v1's shape (v1 threads had no tool_resources)."""
    data = obj.model_dump(mode="json")
    data.pop("tool_resources", None)
    return data


# The fields of openai-python 1.20's `Run` (the last v1 release): v2 added `top_p`,
# `parallel_tool_calls` and `reasoning_effort` later, and dropped `file_ids`.
_RUN_V1_KEYS = (
    "id",
    "object",
    "created_at",
    "thread_id",
    "assistant_id",
    "status",
    "required_action",
    "last_error",
    "expires_at",
    "started_at",
    "cancelled_at",
    "failed_at",
    "completed_at",
    "incomplete_details",
    "model",
    "instructions",
    "tools",
    "file_ids",
    "metadata",
    "usage",
    "temperature",
    "max_prompt_tokens",
    "max_completion_tokens",
    "truncation_strategy",
    "tool_choice",
    "response_format",
)


def run_v1(data: dict[str, Any], file_ids: list[str]) -> dict[str, Any]:
    """A run object (JSON) in v1's shape: `retrieval` tools and tool_choice, and `file_ids`
    (the files of the run's assistant, as its v1 `file_ids` show them)."""
    choice = data.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "file_search":
        choice = {"type": "retrieval"}
    tools = data.get("tools")
    shaped = {
        **data,
        "tools": v1_tool_list(tools) if isinstance(tools, list) else [],
        "tool_choice": choice,
        "file_ids": file_ids,
    }
    return {key: shaped.get(key) for key in _RUN_V1_KEYS}


def _retrieval_call(call: Any) -> Any:
    """A file_search call (or call delta) as v1's `retrieval` call, whose details were an
    empty object; a delta keeps its `index`."""
    if not isinstance(call, dict) or call.get("type") != "file_search":
        return call
    shaped = {key: call[key] for key in ("index", "id") if key in call}
    return {**shaped, "type": "retrieval", "retrieval": {}}


def step_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A run step (JSON) in v1's shape: a file_search call was a `retrieval` call."""
    details = data.get("step_details")
    calls = details.get("tool_calls") if isinstance(details, dict) else None
    if not isinstance(details, dict) or not isinstance(calls, list):
        return data
    mapped = [_retrieval_call(c) for c in calls]
    return {**data, "step_details": {**details, "tool_calls": mapped}}


def step_delta_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A `thread.run.step.delta` payload in v1's shape."""
    delta = data.get("delta")
    if not isinstance(delta, dict) or not isinstance(delta.get("step_details"), dict):
        return data
    return {**data, "delta": step_v1(delta)}


def event_v1(event: str, data: Any, file_ids: list[str]) -> Any:
    """A stream event's payload (JSON) in v1's shape; `file_ids` are the run's (`run_v1`).
    Events without v2-only fields (message deltas, errors) keep theirs."""
    if not isinstance(data, dict):
        return data
    if event == "thread.created":
        return {k: v for k, v in data.items() if k != "tool_resources"}
    if event == "thread.run.step.delta":
        return step_delta_v1(data)
    if event.startswith("thread.run.step."):
        return step_v1(data)
    if event.startswith("thread.run."):
        return run_v1(data, file_ids)
    if event.startswith("thread.message.") and event != "thread.message.delta":
        return message_json_v1(data)
    return data


def answer(version: Version, v2: BaseModel, v1: dict[str, Any] | None) -> Any:
    """What an endpoint returns: the v2 model, or the v1 JSON as it stands (a Response
    skips FastAPI's check against the v2 response model)."""
    if version == "v1" and v1 is not None:
        return JSONResponse(v1)
    return v2


def list_v1(page: BaseModel, items: list[dict[str, Any]]) -> JSONResponse:
    data = page.model_dump(mode="json")
    data["data"] = items
    return JSONResponse(data)
