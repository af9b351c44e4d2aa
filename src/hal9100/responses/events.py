"""A response's stream: the `thread.*` events its run publishes (the engine records a response
as it records an Assistants run), read as OpenAI's `response.*` events.

The reading depends only on the run's event log, read from its start, so every reader
numbers the events alike: `sequence_number` is an event's place in what this produces, and
a stream resumed after N (from any process) is the same stream without its first N + 1
events.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hal9100.conversations.items import call_item_id
from hal9100.events.base import RunEvent

# The run's end, and the response event that says it (a cancelled response has no event of
# its own in the Responses API; its stream ends as a failed one does, the response's status
# saying `cancelled`).
_ENDS_OF_RUNS = {
    "thread.run.completed": "response.completed",
    "thread.run.incomplete": "response.incomplete",
    "thread.run.failed": "response.failed",
    "thread.run.expired": "response.failed",
    "thread.run.cancelled": "response.failed",
}
# The events that end a response's stream.
ENDS = frozenset({*_ENDS_OF_RUNS.values(), "error"})
# What a response's run publishes first once a worker starts it.
FIRST_EVENT = "thread.run.in_progress"


@dataclass
class _Message:
    item_id: str
    output_index: int
    text: list[str] = field(default_factory=list)
    # Length of the Assistants text so far (citation markers included): where the next
    # delta's annotations are counted from.
    raw_length: int = 0
    removed: int = 0
    annotations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Call:
    item_id: str
    output_index: int
    call_id: str
    name: str
    arguments: list[str] = field(default_factory=list)


class Translator:
    """Feed it the run's events in order; it answers the response events they make."""

    def __init__(
        self,
        opening: dict[str, Any],
        final: Callable[[], Awaitable[dict[str, Any]]],
        filenames: Callable[[list[str]], Awaitable[dict[str, str]]],
        step_items: Callable[[str], Awaitable[list[dict[str, Any]]]],
        container_id: str,
        namespaces: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        # The response as it was created, and how to read it once ended.
        self.opening = opening
        self.final = final
        self.filenames = filenames
        # A completed step's calls as the response's output shows them (read back: the
        # step's event does not carry what a search looked for).
        self.step_items = step_items
        # code_interpreter's container: the response's thread, whose kernel it uses.
        self.container_id = container_id
        # Functions offered under a namespace: the name the model calls -> (namespace, name).
        self.namespaces = namespaces or {}
        self.sequence = 0
        self.next_output = 0
        self.message: _Message | None = None
        # The calls being streamed, by step and index (as fragments name them) and by id.
        self.calls: dict[str, _Call] = {}
        self.by_id: dict[str, _Call] = {}
        self.ended = False
        # Ended with the run's own end (not a failure of the stream).
        self.ended_well = False

    def _named(self, item: dict[str, Any]) -> dict[str, Any]:
        if item["name"] in self.namespaces:
            item["namespace"], item["name"] = self.namespaces[item["name"]]
        return item

    def _emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        events = [self._emit("response.created", response=self.opening)]
        if self.opening["status"] == "queued":
            events.append(self._emit("response.queued", response=self.opening))
        return events

    async def feed(self, item: RunEvent) -> list[dict[str, Any]]:
        if self.ended:
            return []
        name = item.event
        data: dict[str, Any] = json.loads(item.data) if item.data.startswith("{") else {}
        if name == "thread.run.in_progress":
            return [
                self._emit(
                    "response.in_progress", response={**self.opening, "status": "in_progress"}
                )
            ]
        if name == "thread.message.created" and data.get("role") == "assistant":
            return self._open_message(str(data["id"]))
        if name == "thread.message.delta":
            return await self._text(data)
        if name in ("thread.message.completed", "thread.message.incomplete"):
            return self._close_message(str(data.get("id")), name.endswith("incomplete"))
        if name == "thread.run.step.delta":
            return self._call_fragments(data)
        if name == "thread.run.step.completed":
            return await self._close_calls(data)
        if name in _ENDS_OF_RUNS:
            self.ended = self.ended_well = True
            return [self._emit(_ENDS_OF_RUNS[name], response=await self.final())]
        if name == "error":
            self.ended = True
            return [
                self._emit(
                    "error",
                    code=data.get("code"),
                    message=str(data.get("message") or "The response's stream failed."),
                    param=None,
                )
            ]
        return []

    # --- messages ------------------------------------------------------------------------

    def _open_message(self, message_id: str) -> list[dict[str, Any]]:
        # A message left open (its worker died; the turn is redone) ends here, incomplete.
        events = self._close_message(self.message.item_id, True) if self.message else []
        message = self.message = _Message(message_id, self.next_output)
        self.next_output += 1
        item = {
            "type": "message",
            "id": message_id,
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        return [
            *events,
            self._emit("response.output_item.added", output_index=message.output_index, item=item),
            self._emit(
                "response.content_part.added",
                item_id=message_id,
                output_index=message.output_index,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            ),
        ]

    async def _text(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        message = self.message
        if message is None or data.get("id") != message.item_id:
            return []
        events: list[dict[str, Any]] = []
        for part in (data.get("delta") or {}).get("content") or []:
            if not isinstance(part, dict) or part.get("type") != "text":
                continue
            text = part.get("text") or {}
            value = str(text.get("value") or "")
            base = message.raw_length
            message.raw_length += len(value)
            pieces: list[str] = []
            taken = 0
            cited: list[tuple[int, str]] = []
            for annotation in text.get("annotations") or []:
                if annotation.get("type") != "file_citation":
                    continue
                start = int(annotation.get("start_index", 0)) - base
                end = int(annotation.get("end_index", 0)) - base
                if not 0 <= taken <= start <= end <= len(value):
                    continue
                pieces.append(value[taken:start])
                position = sum(map(len, message.text)) + sum(map(len, pieces))
                taken = end
                file_id = str((annotation.get("file_citation") or {}).get("file_id", ""))
                cited.append((position, file_id))
            pieces.append(value[taken:])
            delta = "".join(pieces)
            if delta:
                message.text.append(delta)
                events.append(
                    self._emit(
                        "response.output_text.delta",
                        item_id=message.item_id,
                        output_index=message.output_index,
                        content_index=0,
                        delta=delta,
                        logprobs=[],
                    )
                )
            if cited:
                names = await self.filenames([file_id for _, file_id in cited])
                for position, file_id in cited:
                    annotation = {
                        "type": "file_citation",
                        "file_id": file_id,
                        "filename": names.get(file_id, ""),
                        "index": position,
                    }
                    events.append(
                        self._emit(
                            "response.output_text.annotation.added",
                            item_id=message.item_id,
                            output_index=message.output_index,
                            content_index=0,
                            annotation_index=len(message.annotations),
                            annotation=annotation,
                        )
                    )
                    message.annotations.append(annotation)
        return events

    def _close_message(self, message_id: str, incomplete: bool) -> list[dict[str, Any]]:
        message = self.message
        if message is None or message.item_id != message_id:
            return []
        self.message = None
        text = "".join(message.text)
        part = {
            "type": "output_text",
            "text": text,
            "annotations": message.annotations,
            "logprobs": [],
        }
        item = {
            "type": "message",
            "id": message.item_id,
            "status": "incomplete" if incomplete else "completed",
            "role": "assistant",
            "content": [part],
        }
        where = {"item_id": message.item_id, "output_index": message.output_index}
        return [
            self._emit(
                "response.output_text.done", **where, content_index=0, text=text, logprobs=[]
            ),
            self._emit("response.content_part.done", **where, content_index=0, part=part),
            self._emit("response.output_item.done", output_index=message.output_index, item=item),
        ]

    # --- function calls ------------------------------------------------------------------

    def _call_fragments(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        step_id = str(data.get("id"))
        details = (data.get("delta") or {}).get("step_details") or {}
        events: list[dict[str, Any]] = []
        for fragment in details.get("tool_calls") or []:
            if not isinstance(fragment, dict):
                continue
            if fragment.get("type") in ("file_search", "code_interpreter"):
                events.extend(self._builtin_fragment(step_id, fragment))
                continue
            if fragment.get("type") != "function":
                continue
            key = f"{step_id}:{fragment.get('index')}"
            function = fragment.get("function") or {}
            call = self.calls.get(key)
            if call is None:
                call_id = fragment.get("id")
                if not isinstance(call_id, str):
                    continue
                call = self.calls[key] = _Call(
                    call_item_id(call_id, "function"),
                    self.next_output,
                    call_id,
                    str(function.get("name") or ""),
                )
                self.by_id[call_id] = call
                self.next_output += 1
                item = self._named(
                    {
                        "type": "function_call",
                        "id": call.item_id,
                        "call_id": call_id,
                        "name": call.name,
                        "arguments": "",
                        "status": "in_progress",
                    }
                )
                events.append(
                    self._emit(
                        "response.output_item.added", output_index=call.output_index, item=item
                    )
                )
            fragment_text = function.get("arguments")
            if isinstance(fragment_text, str) and fragment_text:
                call.arguments.append(fragment_text)
                events.append(
                    self._emit(
                        "response.function_call_arguments.delta",
                        item_id=call.item_id,
                        output_index=call.output_index,
                        delta=fragment_text,
                    )
                )
        return events

    def _builtin_fragment(self, step_id: str, fragment: dict[str, Any]) -> list[dict[str, Any]]:
        kind = str(fragment["type"])
        key = f"{step_id}:{fragment.get('index')}"
        call = self.calls.get(key)
        events: list[dict[str, Any]] = []
        if call is None:
            call_id = fragment.get("id")
            if not isinstance(call_id, str):
                return []
            call = self.calls[key] = _Call(
                call_item_id(call_id, kind), self.next_output, call_id, kind
            )
            self.by_id[call_id] = call
            self.next_output += 1
            where = {"output_index": call.output_index, "item_id": call.item_id}
            item: dict[str, Any]
            if kind == "file_search":
                item = {
                    "type": "file_search_call",
                    "id": call.item_id,
                    "status": "in_progress",
                    "queries": [],
                    "results": None,
                }
                return [
                    self._emit(
                        "response.output_item.added", output_index=call.output_index, item=item
                    ),
                    self._emit("response.file_search_call.in_progress", **where),
                    self._emit("response.file_search_call.searching", **where),
                ]
            item = {
                "type": "code_interpreter_call",
                "id": call.item_id,
                "status": "in_progress",
                "container_id": self.container_id,
                "code": "",
                "outputs": None,
            }
            events += [
                self._emit("response.output_item.added", output_index=call.output_index, item=item),
                self._emit("response.code_interpreter_call.in_progress", **where),
            ]
        code = (
            (fragment.get("code_interpreter") or {}).get("input")
            if kind == "code_interpreter"
            else None
        )
        if isinstance(code, str) and code:
            call.arguments.append(code)
            events.append(
                self._emit(
                    "response.code_interpreter_call_code.delta",
                    output_index=call.output_index,
                    item_id=call.item_id,
                    delta=code,
                )
            )
        return events

    async def _close_builtin(self, step_id: str, call: _Call) -> list[dict[str, Any]]:
        where = {"output_index": call.output_index, "item_id": call.item_id}
        shown = next(
            (i for i in await self.step_items(step_id) if i.get("id") == call.item_id), None
        )
        if shown is None:
            return []
        if call.name == "file_search":
            return [
                self._emit("response.file_search_call.completed", **where),
                self._emit("response.output_item.done", output_index=call.output_index, item=shown),
            ]
        return [
            self._emit(
                "response.code_interpreter_call_code.done", **where, code=shown.get("code") or ""
            ),
            self._emit("response.code_interpreter_call.interpreting", **where),
            self._emit("response.code_interpreter_call.completed", **where),
            self._emit("response.output_item.done", output_index=call.output_index, item=shown),
        ]

    async def _close_calls(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        details = data.get("step_details") or {}
        if details.get("type") != "tool_calls":
            return []
        step_id = str(data.get("id"))
        events: list[dict[str, Any]] = []
        for made in details.get("tool_calls") or []:
            if isinstance(made, dict) and made.get("type") in ("file_search", "code_interpreter"):
                builtin = self.by_id.pop(str(made.get("id")), None)
                if builtin is not None:
                    events += await self._close_builtin(step_id, builtin)
                continue
            if not isinstance(made, dict) or made.get("type") != "function":
                continue
            call = self.by_id.pop(str(made.get("id")), None)
            function = made.get("function") or {}
            if call is None or function.get("output") is not None:
                # Answered by the server (a call the model got wrong): not the client's.
                continue
            arguments = str(function.get("arguments") or "".join(call.arguments))
            item = self._named(
                {
                    "type": "function_call",
                    "id": call.item_id,
                    "call_id": call.call_id,
                    "name": call.name,
                    "arguments": arguments,
                    "status": "completed",
                }
            )
            events.append(
                self._emit(
                    "response.function_call_arguments.done",
                    item_id=call.item_id,
                    output_index=call.output_index,
                    name=item["name"],
                    arguments=arguments,
                )
            )
            events.append(
                self._emit("response.output_item.done", output_index=call.output_index, item=item)
            )
        return events
