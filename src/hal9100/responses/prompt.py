"""A response's prompt: its context as items (the conversation's, or the chain of
`previous_response_id`), its own input and what it did so far, as chat messages.

Tool calls made by a run carry their output in the step when the server (or, on an
Assistants thread, the client through submit_tool_outputs) answered them; a response's
function calls are answered by `function_call_output` items in a later request, matched by
`call_id`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hal9100.conversations.items import Entry, compaction_summary
from hal9100.db.models import Message, Run, RunStep
from hal9100.engine.recorder import Prompt
from hal9100.llm.base import (
    ChatMessage,
    ContentPart,
    FunctionTool,
    ImagePart,
    TextPart,
    ToolCall,
)
from hal9100.responses.tools import offered_name
from hal9100.runs.prompt import (
    DEFAULT_COMPLETION_RESERVE,
    _replayed,
    chat_request,
    message_tokens,
    prompt_tokens,
)


def _text_of(content: list[Any]) -> str:
    parts = []
    for part in content:
        if isinstance(part, dict):
            if part.get("type") in ("input_text", "output_text", "text"):
                parts.append(str(part.get("text", "")))
            elif part.get("type") == "refusal":
                parts.append(str(part.get("refusal", "")))
    return "".join(parts)


def _user_content(content: list[Any], images: dict[str, str]) -> str | list[ContentPart]:
    parts: list[ContentPart] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "input_text":
            parts.append(TextPart(str(part.get("text", ""))))
        elif part.get("type") == "input_image":
            url = part.get("image_url") or images.get(str(part.get("file_id")))
            if url:
                parts.append(ImagePart(str(url), part.get("detail")))
    if all(isinstance(p, TextPart) for p in parts):
        return "".join(p.text for p in parts if isinstance(p, TextPart))
    return parts


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    return _text_of(output if isinstance(output, list) else [])


def _message(item: dict[str, Any], images: dict[str, str]) -> ChatMessage:
    role = item.get("role")
    content = item.get("content") or []
    if role == "assistant":
        return ChatMessage("assistant", _text_of(content))
    if role in ("system", "developer"):
        return ChatMessage("system", _text_of(content))
    return ChatMessage("user", _user_content(content, images))


def _arguments(text: str) -> str:
    # Servers that parse history arguments (vLLM's chat templates do) refuse a prompt
    # holding a call whose arguments are not a JSON object.
    try:
        return text if isinstance(json.loads(text), dict) else "{}"
    except ValueError:
        return "{}"


def chat_messages(entries: list[Entry], images: dict[str, str]) -> list[ChatMessage]:
    """The items as a chat: consecutive tool calls become one assistant turn, each answered
    in a tool message (an answer without its call, or a call never answered, is left out:
    no server takes either)."""
    out: list[ChatMessage] = []
    answered: dict[str, str] = {}
    for entry in entries:
        item = entry.item
        if item.get("type") == "function_call_output":
            answered[str(item.get("call_id"))] = _output_text(item.get("output"))
    seen_steps: set[int] = set()
    # Each call once, whichever way it came (a client may send back a response's output
    # items with the previous_response_id that holds them already).
    emitted: set[str] = set()
    pending: list[ToolCall] = []
    outputs: list[tuple[str, str]] = []

    def flush() -> None:
        if pending:
            out.append(ChatMessage("assistant", "", tool_calls=list(pending)))
            out.extend(ChatMessage("tool", text, tool_call_id=call_id) for call_id, text in outputs)
            pending.clear()
            outputs.clear()

    for entry in entries:
        source, item = entry.source, entry.item
        kind = item.get("type")
        if isinstance(source, RunStep):
            if id(source) in seen_steps:
                continue
            seen_steps.add(id(source))
            for call in source.step_details.get("tool_calls") or []:
                replayed = _replayed(call) if isinstance(call, dict) else None
                if replayed is None:
                    continue
                tool_call, output = replayed
                if tool_call.id in emitted:
                    continue
                function = call.get("function") or {}
                if call.get("type") == "function" and function.get("output") is None:
                    # The client's call, answered (or not) by a function_call_output item.
                    if tool_call.id not in answered:
                        continue
                    output = answered[tool_call.id]
                emitted.add(tool_call.id)
                pending.append(tool_call)
                outputs.append((tool_call.id, output))
            continue
        if kind == "function_call":
            call_id = str(item.get("call_id"))
            if call_id in answered and call_id not in emitted:
                emitted.add(call_id)
                name = str(item.get("name"))
                if isinstance(item.get("namespace"), str):
                    name = offered_name(item["namespace"], name)
                pending.append(ToolCall(call_id, name, _arguments(str(item.get("arguments")))))
                outputs.append((call_id, answered[call_id]))
            continue
        if kind == "function_call_output":
            continue
        if kind == "message":
            flush()
            out.append(_message(item, images))
        elif kind == "compaction":
            summary = compaction_summary(str(item.get("encrypted_content") or ""))
            if summary is not None:
                flush()
                # A user turn, not a system one: many chat templates take a system
                # message only first.
                out.append(ChatMessage("user", f"[Summary of the conversation so far]\n{summary}"))
        # Reasoning items and hosted tool calls of other servers carry nothing this model
        # can read back.
    flush()
    return out


def build(
    run: Run,
    entries: list[Entry],
    *,
    context_window: int,
    images: dict[str, str],
    completion_tokens_left: int | None,
    functions: list[FunctionTool],
    truncation: str,
    notes: Sequence[str] = (),
) -> Prompt:
    """`notes` go at the end of the system prompt (what the tools make available, such as
    code_interpreter's files)."""
    history = chat_messages(entries, images)
    system_text = "\n\n".join(part for part in (run.instructions, *notes) if part)
    system = [ChatMessage("system", system_text)] if system_text else []
    reserve = (
        completion_tokens_left
        if completion_tokens_left is not None
        else min(DEFAULT_COMPLETION_RESERVE, context_window // 4)
    )
    budget = context_window - reserve
    total = prompt_tokens(system) + prompt_tokens(history)
    if truncation == "auto":
        # Drop whole turns from the start until it fits; the last user message stays.
        last_user = max((i for i, m in enumerate(history) if m.role == "user"), default=0)
        start = 0
        while total > budget and start < last_user:
            total -= message_tokens(history[start])
            start += 1
        # Never start on a tool answer or an assistant turn (servers refuse both).
        while start < last_user and history[start].role in ("tool", "assistant"):
            total -= message_tokens(history[start])
            start += 1
        history = history[start:]
    request = chat_request(run, [*system, *history], functions, completion_tokens_left)
    return Prompt(request=request, estimated_tokens=total, over_budget=False)


def context_messages(entries: list[Entry]) -> list[Message]:
    return [e.source for e in entries if isinstance(e.source, Message)]
