"""The contract between the run executor and every LLM backend.

The executor speaks only these types. A backend turns a `ChatRequest` into a stream of
`LLMEvent`s; it always streams from the LLM, so streamed and polled runs share one path.
Backends must hide their server's quirks here: the executor relies on tool calls being keyed
by `index` (never by the backend's id, which open models repeat or omit) and on `Usage`
being reported when the server reports it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(slots=True)
class ImagePart:
    """An image for a vision model: a URL (http(s) or a `data:` URL with base64 bytes)."""

    url: str
    detail: str | None = None


@dataclass(slots=True)
class TextPart:
    text: str


ContentPart = TextPart | ImagePart


@dataclass(slots=True)
class ToolCall:
    """A complete tool call as sent back to the LLM in an assistant message."""

    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class ChatMessage:
    role: Role
    # Plain text, or parts when the message carries images.
    content: str | list[ContentPart] = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    # For role == "tool": the id of the call this message answers.
    tool_call_id: str | None = None


@dataclass(slots=True)
class FunctionTool:
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


# "none" | "auto" | "required" | {"type": "function", "function": {"name": ...}} as a name.
ToolChoice = Literal["none", "auto", "required"] | str


@dataclass(slots=True)
class ChatRequest:
    model: str
    messages: list[ChatMessage]
    tools: list[FunctionTool] = field(default_factory=list)
    # A plain string other than none/auto/required names the one function the model must call.
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    # OpenAI's response_format object ({"type": "json_object"} / {"type": "json_schema", ...}),
    # or None for text.
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | None = None


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ToolCallDelta:
    """A fragment of the tool call at position `index` in this completion.

    `name` is set on the first fragment of a call; `arguments` fragments concatenate.
    `backend_id` is whatever id the server sent (may be None, repeated, or shared between
    parallel calls): informational only, the executor assigns its own unique ids.
    """

    index: int
    name: str | None = None
    arguments: str = ""
    backend_id: str | None = None


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate (about four characters per token for English and code).

    Exact counts need the model's own tokenizer, which an OpenAI-compatible server does not
    expose; the estimate is only used to fit the context window and, when a server reports no
    usage, to fill it in."""
    return (len(text) + 3) // 4


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


FinishReason = Literal["stop", "tool_calls", "length", "content_filter"]


@dataclass(slots=True)
class Finish:
    reason: FinishReason


LLMEvent = TextDelta | ToolCallDelta | Usage | Finish


class LLMError(Exception):
    """A backend failure, classified so the executor can retry or fail the run as OpenAI does.

    kind: "rate_limit" (HTTP 429), "server" (5xx, timeout, broken connection: retryable),
    "invalid_request" (4xx other than 429: not retryable), "auth" (401/403: not retryable),
    "config" (no backend is configured for the model: not retryable).
    `message` says what the backend answered, for the run's `last_error.message`.
    """

    def __init__(self, kind: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.kind in ("rate_limit", "server")


class LLMBackend(Protocol):
    """One LLM server. Implementations: `openai_compat.OpenAICompatBackend`,
    `anthropic.AnthropicBackend`."""

    def stream(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        """Stream one completion. Raises `LLMError` (before or during the stream)."""
        ...

    async def aclose(self) -> None: ...
