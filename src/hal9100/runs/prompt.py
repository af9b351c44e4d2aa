"""What the LLM is shown for one turn of a run: instructions, the thread, this run's own tool
rounds, fitted to the context window and to the run's token budget."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any

from hal9100.db.models import File, Message, Run, RunStep
from hal9100.engine.recorder import Prompt
from hal9100.llm.base import (
    ChatMessage,
    ChatRequest,
    ContentPart,
    FunctionTool,
    ImagePart,
    TextPart,
    ToolCall,
    estimate_tokens,
)
from hal9100.tools import code_interpreter, file_search

# Room kept free for the answer when `truncation_strategy` is auto and the run sets no
# completion budget of its own: this much, but never more than a quarter of the window (a
# fixed reserve larger than a small model's window would truncate every thread to its last
# message, however short the conversation).
DEFAULT_COMPLETION_RESERVE = 1024
# Images count as a fixed cost; servers price them very differently and we cannot see pixels.
IMAGE_TOKENS = 256


def message_tokens(message: ChatMessage, count: Callable[[str], int] = estimate_tokens) -> int:
    """A message's cost in tokens, its text counted by `count` (an estimate by default)."""
    cost = 4
    if isinstance(message.content, str):
        cost += count(message.content)
    else:
        for part in message.content:
            cost += count(part.text) if isinstance(part, TextPart) else IMAGE_TOKENS
    for call in message.tool_calls:
        cost += count(call.name) + count(call.arguments) + 4
    return cost


def prompt_tokens(messages: list[ChatMessage]) -> int:
    return sum(message_tokens(m) for m in messages)


def text_of(content: list[dict[str, Any]]) -> str:
    return "".join(part["text"]["value"] for part in content if part.get("type") == "text")


def _user_parts(message: Message, images: dict[str, str]) -> str | list[ContentPart]:
    parts: list[ContentPart] = []
    for part in message.content:
        kind = part.get("type")
        if kind == "text":
            parts.append(TextPart(part["text"]["value"]))
        elif kind == "image_url":
            parts.append(ImagePart(part["image_url"]["url"], part["image_url"].get("detail")))
        elif kind == "image_file":
            url = images.get(part["image_file"]["file_id"])
            if url is not None:
                parts.append(ImagePart(url, part["image_file"].get("detail")))
    if all(isinstance(p, TextPart) for p in parts):
        return "".join(p.text for p in parts if isinstance(p, TextPart))
    return parts


def image_file_ids(messages: list[Message]) -> list[str]:
    return [
        part["image_file"]["file_id"]
        for message in messages
        for part in message.content
        if part.get("type") == "image_file"
    ]


def data_url(file: File, data: bytes) -> str:
    mime = (
        file.content_type if file.content_type and file.content_type.startswith("image/") else None
    )
    if mime is None:
        suffix = file.filename.rsplit(".", 1)[-1].lower()
        mime = {
            "jpg": "image/jpeg",
            "jpeg": "image/jpeg",
            "gif": "image/gif",
            "webp": "image/webp",
        }.get(suffix, "image/png")
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _thread_messages(messages: list[Message], images: dict[str, str]) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    for message in messages:
        if message.role == "user":
            out.append(ChatMessage("user", _user_parts(message, images)))
        else:
            out.append(ChatMessage("assistant", text_of(message.content)))
    return out


def _replayed(call: dict[str, Any]) -> tuple[ToolCall, str] | None:
    """A step's tool call as the model made it, and its output. Functions, the client's and
    the server's (an action's operation), share the function shape; file_search calls have
    their own."""
    if call.get("type") == "function":
        function = call["function"]
        arguments = function["arguments"]
        if not _json_object(arguments):
            # A call the model got wrong keeps what it wrote in the step; replayed, its
            # output says what was wrong. Servers that parse history arguments (vLLM's chat
            # templates do) would refuse the whole prompt over it.
            arguments = "{}"
        return ToolCall(call["id"], function["name"], arguments), (function.get("output") or "")
    if call.get("type") == code_interpreter.NAME:
        return (
            ToolCall(call["id"], code_interpreter.NAME, code_interpreter.replayed_arguments(call)),
            code_interpreter.replayed_output(call),
        )
    if call.get("type") == "file_search":
        # OpenAI's shape keeps neither the query nor the output: both are rebuilt from what
        # the tool stored beside it.
        return (
            ToolCall(call["id"], file_search.NAME, file_search.replayed_arguments(call)),
            file_search.replayed_output(call),
        )
    return None


def _json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _run_rounds(steps: list[RunStep], own_messages: dict[str, Message]) -> list[ChatMessage]:
    """This run's earlier turns, in step order: its answers and its tool calls with outputs."""
    out: list[ChatMessage] = []
    for step in steps:
        details = step.step_details
        if step.type == "message_creation":
            message = own_messages.get(details["message_creation"]["message_id"])
            if message is not None and message.status == "completed":
                out.append(ChatMessage("assistant", text_of(message.content)))
        elif step.status == "completed":
            rounds = [r for r in map(_replayed, details.get("tool_calls", [])) if r is not None]
            if not rounds:
                continue
            out.append(ChatMessage("assistant", "", tool_calls=[call for call, _ in rounds]))
            out.extend(ChatMessage("tool", output, tool_call_id=call.id) for call, output in rounds)
    return out


def _tool_choice(run: Run) -> str | None:
    choice = run.tool_choice
    if isinstance(choice, dict):
        if choice.get("type") == "function":
            name: str = choice["function"]["name"]
            return name
        if choice.get("type") == "file_search" and any(
            t.get("type") == "file_search" for t in run.tools or []
        ):
            return file_search.NAME
        # Another built-in tool named explicitly: the model must call some tool.
        return "required"
    if isinstance(choice, str):
        return choice
    return None


def build_prompt(
    run: Run,
    thread_messages: list[Message],
    steps: list[RunStep],
    *,
    context_window: int,
    images: dict[str, str],
    prompt_tokens_used: int,
    completion_tokens_left: int | None,
    functions: list[FunctionTool],
    notes: Sequence[str] = (),
) -> Prompt:
    """Assemble one turn's request; `notes` go at the end of the system prompt (what the
    run's tools make available, such as code_interpreter's files).

    `thread_messages` are the thread's messages in order; those this run wrote are placed
    among its tool rounds rather than with the thread. `prompt_tokens_used` is what earlier
    turns of the run already spent against `max_prompt_tokens`.
    """
    own = {m.id: m for m in thread_messages if m.run_id == run.id}
    history = _thread_messages([m for m in thread_messages if m.run_id != run.id], images)
    rounds = _run_rounds(steps, own)

    system_text = run.instructions or ""
    if run.additional_instructions:
        system_text = (
            f"{system_text}\n\n{run.additional_instructions}"
            if system_text
            else run.additional_instructions
        )
    system_text = "\n\n".join(part for part in (system_text, *notes) if part)
    system = [ChatMessage("system", system_text)] if system_text else []

    strategy = run.truncation_strategy or {"type": "auto"}
    if strategy.get("type") == "last_messages" and strategy.get("last_messages"):
        history = history[-int(strategy["last_messages"]) :]

    reserve = (
        completion_tokens_left
        if completion_tokens_left is not None
        else min(DEFAULT_COMPLETION_RESERVE, context_window // 4)
    )
    budget = context_window - reserve
    if run.max_prompt_tokens is not None:
        budget = min(budget, run.max_prompt_tokens - prompt_tokens_used)
    fixed = prompt_tokens(system) + prompt_tokens(rounds)
    # Drop the oldest thread messages until the prompt fits; the newest one always stays.
    sizes = [message_tokens(m) for m in history]
    total = fixed + sum(sizes)
    start = 0
    while total > budget and start < len(history) - 1:
        total -= sizes[start]
        start += 1
    history = history[start:]
    # A conversation must not open with an assistant turn on some servers (Anthropic).
    while len(history) > 1 and history[0].role == "assistant":
        total -= message_tokens(history[0])
        history = history[1:]

    over_budget = (
        run.max_prompt_tokens is not None and total > run.max_prompt_tokens - prompt_tokens_used
    )
    request = chat_request(run, [*system, *history, *rounds], functions, completion_tokens_left)
    return Prompt(request=request, estimated_tokens=total, over_budget=over_budget)


def chat_request(
    run: Run,
    messages: list[ChatMessage],
    functions: list[FunctionTool],
    completion_tokens_left: int | None,
) -> ChatRequest:
    """A turn's request to the model: the messages, with the run's tools and settings."""
    return ChatRequest(
        model=run.model,
        messages=messages,
        tools=functions,
        tool_choice=_tool_choice(run) if functions else None,
        parallel_tool_calls=run.parallel_tool_calls if functions else None,
        temperature=run.temperature,
        top_p=run.top_p,
        max_tokens=completion_tokens_left,
        response_format=run.response_format
        if isinstance(run.response_format, dict) and run.response_format.get("type") != "text"
        else None,
        reasoning_effort=run.reasoning_effort,
    )
