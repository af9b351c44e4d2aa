"""Backend for OpenAI-compatible chat-completions servers (OpenAI, vLLM, Ollama, llama.cpp, ...).

Open servers differ from OpenAI in how they stream tool calls, usage and finish reasons;
`stream()` normalises all of that into the `base` contract. The quirks handled, each seen in
real servers: tool-call fragments without `index`, ids repeated in every fragment, ids
missing, parallel calls sharing one id or one index, the legacy `delta.function_call`, no
usage chunk, usage-only chunks with empty `choices`, finish reasons that are missing,
nonstandard (`eos`) or `function_call`, `stop` reported after tool calls, each fragment sent
twice (in `tool_calls` and `function_call`, llama-cpp-python), and a complete
`chat.completion` answered to a streamed request. A 200 answer that is no completion at all
(a proxy's HTML error page) is a retryable server error quoting what came back.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, NoReturn

import httpx2
import openai
from openai import AsyncOpenAI

from hal9100.llm._common import (
    TRANSPORT_ERRORS,
    body_message,
    garbage_error,
    kind_for_status,
    raise_mapped,
    status_error,
    token_count,
    transport_error,
)
from hal9100.llm.base import (
    ChatMessage,
    ChatRequest,
    ContentPart,
    Finish,
    FinishReason,
    FunctionTool,
    ImagePart,
    LLMError,
    LLMEvent,
    TextDelta,
    TextPart,
    ToolCallDelta,
    Usage,
)

_CHAT_COMPLETIONS_SUFFIX = "/chat/completions"

# The SDK insists on a key; keyless local servers ignore whatever is sent. We deliberately do
# not let the SDK fall back to OPENAI_API_KEY: that would leak an OpenAI key to a third-party
# server configured without one.
_NO_KEY = "not-needed"

# Event-stream lines other than `data:`; any other line is part of a body that is no stream.
_SSE_FIELDS = ("event:", "id:", "retry:", ":")
# The most of such a body kept, to read a complete `chat.completion` from it.
_MAX_WHOLE_BODY = 16 * 1024 * 1024

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "function_call": "tool_calls",
}


def normalize_base_url(url: str) -> str:
    """Accept `http://host/v1` or the full `http://host/v1/chat/completions` endpoint."""
    url = url.strip().rstrip("/")
    if url.endswith(_CHAT_COMPLETIONS_SUFFIX):
        url = url[: -len(_CHAT_COMPLETIONS_SUFFIX)].rstrip("/")
    return url


class OpenAICompatBackend:
    """An `LLMBackend` speaking the chat-completions protocol through the official SDK."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float = 600,
        max_retries: int = 0,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self._client = AsyncOpenAI(
            base_url=self.base_url,
            api_key=api_key or _NO_KEY,
            timeout=timeout,
            max_retries=max_retries,
        )
        self._label = f"LLM backend at {self.base_url}"
        # Flipped off the first time the server rejects `stream_options` (older TGI, some
        # proxies); such servers never report streamed usage anyway.
        self._send_stream_options = True

    async def aclose(self) -> None:
        await self._client.close()

    def stream(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        return self._stream(request)

    async def _stream(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        body = build_request_body(request)
        chunks = await self._open(body, may_be_empty=_may_choose_tool(body))
        state = _StreamState()
        try:
            try:
                async for event in self._events(chunks, state):
                    yield event
            except _EmptyStream:
                # llama-cpp-python's chatml-function-calling cannot stream a turn in which
                # the model may choose a tool (tool_choice auto): it answers 200 and an event
                # stream with no event. Unstreamed, the same request is answered (on a new
                # connection: that server drops the one it answered on, keep-alive or not).
                await chunks.close()
                chunks = await self._open(body, stream=False, reconnect=True)
                async for event in self._events(chunks, state):
                    yield event
        except Exception as exc:
            raise_mapped(exc, self._map_error(exc))
        finally:
            await chunks.close()

        if state.usage is not None:
            yield state.usage
        yield Finish(_finish_reason(state.finish_reason, saw_tool_calls=state.assembler.count > 0))

    @staticmethod
    async def _events(chunks: _ChunkStream, state: _StreamState) -> AsyncIterator[LLMEvent]:
        async for chunk in chunks:
            chunk_usage = getattr(chunk, "usage", None)
            if chunk_usage is not None:
                # Some servers send running totals on every chunk: the last one wins.
                state.usage = Usage(
                    prompt_tokens=token_count(getattr(chunk_usage, "prompt_tokens", None)),
                    completion_tokens=token_count(getattr(chunk_usage, "completion_tokens", None)),
                )
            choices = getattr(chunk, "choices", None)
            for choice in choices if isinstance(choices, list) else ():
                if (getattr(choice, "index", 0) or 0) != 0:
                    continue  # n > 1 is never requested; ignore stray choices.
                delta = getattr(choice, "delta", None)
                if delta is not None:
                    for event in _delta_events(delta, state.assembler):
                        yield event
                reason = getattr(choice, "finish_reason", None)
                if reason:
                    state.finish_reason = reason

    async def _open(
        self,
        body: dict[str, Any],
        *,
        stream: bool = True,
        may_be_empty: bool = False,
        reconnect: bool = False,
    ) -> _ChunkStream:
        """`may_be_empty`: an event stream with no byte at all is the llama.cpp case below,
        not garbage. `reconnect`: send once more, at once, when the connection turns out to
        be dropped before any answer (the server closed the keep-alive connection it just
        answered on); the engine retries every other failure itself."""
        while True:
            extra: dict[str, Any] = {}
            if stream and self._send_stream_options:
                extra["stream_options"] = {"include_usage": True}
            try:
                # The SDK's generic POST: its auth, headers, timeouts and HTTP error mapping,
                # without re-validating a body we built to the protocol ourselves (half a
                # millisecond per call, on every run's time to first token).
                response = await self._client.post(
                    "/chat/completions",
                    cast_to=httpx2.Response,
                    body={**body, **extra, "stream": stream},
                    stream=True,
                )
                return _ChunkStream(
                    response, self._label, empty_means_unstreamable=stream and may_be_empty
                )
            except openai.APIStatusError as exc:
                if stream and self._send_stream_options and _rejects_stream_options(exc):
                    self._send_stream_options = False
                    continue
                raise self._status_error(exc) from exc
            except openai.APIConnectionError as exc:
                if reconnect and not isinstance(exc, openai.APITimeoutError):
                    reconnect = False
                    continue
                raise_mapped(exc, self._map_error(exc))
            except Exception as exc:
                raise_mapped(exc, self._map_error(exc))

    def _map_error(self, exc: BaseException) -> LLMError | None:
        if isinstance(exc, openai.APIStatusError):
            return self._status_error(exc)
        if isinstance(exc, openai.APIConnectionError):
            # Covers APITimeoutError; the SDK wraps transport failures of a broken stream too.
            cause = exc.__cause__
            if cause is not None:
                return transport_error(self._label, cause)
            return LLMError("server", f"{self._label}: {exc.message}")
        if isinstance(exc, openai.APIResponseValidationError):
            return LLMError("server", f"{self._label} sent an invalid response: {exc.message}")
        if isinstance(exc, openai.APIError):
            # An `{"error": ...}` object inside a 200 stream (vLLM, llama.cpp do this when
            # generation fails midway). Its `code` is often the HTTP status it stands for.
            code = _int_or_none(getattr(exc, "code", None))
            detail = body_message(exc.body) or exc.message
            if code is not None and 400 <= code < 600:
                return LLMError(
                    kind_for_status(code),
                    f"{self._label} reported an error mid-stream (code {code}): {detail}",
                    status=code,
                )
            return LLMError("server", f"{self._label} reported an error mid-stream: {detail}")
        if isinstance(exc, TRANSPORT_ERRORS):
            return transport_error(self._label, exc)
        if isinstance(exc, openai.OpenAIError):
            return LLMError("invalid_request", f"{self._label}: {exc}")
        return None

    def _status_error(self, exc: openai.APIStatusError) -> LLMError:
        return status_error(self._label, exc.status_code, exc.body, exc.message)


class _EmptyStream(Exception):
    """A streamed request that let the model choose a tool was answered with no byte."""


def _may_choose_tool(body: dict[str, Any]) -> bool:
    return bool(body.get("tools")) and body.get("tool_choice", "auto") == "auto"


@dataclass(slots=True)
class _StreamState:
    assembler: _ToolCallAssembler = field(default_factory=lambda: _ToolCallAssembler())
    finish_reason: str | None = None
    usage: Usage | None = None


class _ChunkStream:
    """The SSE chunks of a streamed completion, decoded straight from the response lines.

    The SDK still sends the request and maps HTTP errors, but its per-chunk model
    construction was a fifth of the server's CPU per run; chunks are read here as plain
    namespaces instead, which the delta handling reads attribute by attribute either way.
    """

    def __init__(
        self, response: httpx2.Response, label: str, *, empty_means_unstreamable: bool = False
    ) -> None:
        self._response = response
        self._label = label
        self._empty_means_unstreamable = empty_means_unstreamable

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[Any]:
        chunks = 0
        # What came before any chunk and was none: a body that is no event stream, or data
        # no chat-completions server sends. Kept (up to a bound) to read a whole
        # `chat.completion` from, or to quote; once chunks flow, strays are only skipped.
        other: list[str] = []
        kept = 0
        lines = 0
        async for line in self._response.aiter_lines():
            lines += 1
            if not line.startswith("data:"):
                # Blank separators, `event:`/`id:` lines and `: keep-alive` comments aside.
                if line and not chunks and kept < _MAX_WHOLE_BODY:
                    if not line.startswith(_SSE_FIELDS):
                        other.append(line)
                        kept += len(line)
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            if not data:
                continue
            try:
                chunk = json.loads(data, object_hook=_namespace)
            except ValueError:
                raise self._garbage("a malformed stream chunk", data) from None
            error = getattr(chunk, "error", None)
            if error is not None:
                # vLLM and llama.cpp report a failure mid-generation this way.
                self._raise_error(json.loads(data)["error"], data)
            if not _is_chunk(chunk):
                if not chunks and kept < _MAX_WHOLE_BODY:
                    other.append(data)
                    kept += len(data)
                continue
            chunks += 1
            yield chunk
        if not chunks:
            if not lines and self._empty_means_unstreamable:
                raise _EmptyStream
            yield self._whole_body("\n".join(other))

    def _whole_body(self, text: str) -> SimpleNamespace:
        """The answer of a server that ignored `stream: true`, as one chunk."""
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if isinstance(body, dict):
            if body.get("error") is not None:
                self._raise_error(body["error"], text)
            chunk = _completion_as_chunk(body)
            if chunk is not None:
                return chunk
        raise self._garbage("no chat-completions stream", text)

    def _raise_error(self, raw: Any, data: str) -> NoReturn:
        message = raw.get("message") if isinstance(raw, dict) else str(raw)
        raise openai.APIError(message or data, self._response.request, body=raw)

    def _garbage(self, what: str, body: str) -> LLMError:
        return garbage_error(self._label, self._response.status_code, what, body)

    async def close(self) -> None:
        await self._response.aclose()


def _namespace(fields: dict[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(**fields)


def _is_chunk(chunk: object) -> bool:
    return isinstance(chunk, SimpleNamespace) and (
        isinstance(getattr(chunk, "choices", None), list)
        or getattr(chunk, "usage", None) is not None
    )


def _completion_as_chunk(body: dict[str, Any]) -> SimpleNamespace | None:
    """A `chat.completion` object as the one chunk that streams the same answer."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return None
    streamed: list[dict[str, Any]] = []
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            return None
        delta = {key: message.get(key) for key in ("content", "refusal", "function_call")}
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            # Whole calls carry no `index`; their order is their position.
            delta["tool_calls"] = [
                {**call, "index": index} if isinstance(call, dict) else call
                for index, call in enumerate(calls)
            ]
        streamed.append(
            {
                "index": choice.get("index", 0),
                "delta": delta,
                "finish_reason": choice.get("finish_reason"),
            }
        )
    chunk = json.loads(
        json.dumps({"choices": streamed, "usage": body.get("usage")}), object_hook=_namespace
    )
    assert isinstance(chunk, SimpleNamespace)
    return chunk


def build_request_body(request: ChatRequest) -> dict[str, Any]:
    """The chat-completions body for `request`, without the streaming switches."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [_message(message) for message in request.messages],
    }
    if request.tools:
        body["tools"] = [_tool(tool) for tool in request.tools]
        if request.tool_choice is not None:
            body["tool_choice"] = _tool_choice(request.tool_choice)
        if request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
    # `max_tokens`, not `max_completion_tokens`: llama.cpp and older vLLM only know the former.
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.response_format is not None:
        body["response_format"] = request.response_format
    if request.reasoning_effort is not None:
        body["reasoning_effort"] = request.reasoning_effort
    return body


def _message(message: ChatMessage) -> dict[str, Any]:
    if message.role == "user":
        return {"role": "user", "content": _user_content(message.content)}
    if message.role == "assistant":
        out: dict[str, Any] = {"role": "assistant", "content": _text(message.content)}
        if message.tool_calls:
            # An empty string, not null: llama.cpp's server (llama-cpp-python) rejects a null
            # content, and OpenAI, vLLM and Ollama take either.
            out["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in message.tool_calls
            ]
        return out
    if message.role == "tool":
        return {
            "role": "tool",
            "tool_call_id": message.tool_call_id or "",
            "content": _text(message.content),
        }
    return {"role": "system", "content": _text(message.content)}


def _user_content(content: str | list[ContentPart]) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not any(isinstance(part, ImagePart) for part in content):
        # A plain string works with text-only servers that reject the array form.
        return _text(content)
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": part.text})
        else:
            image: dict[str, Any] = {"url": part.url}
            if part.detail:
                image["detail"] = part.detail
            parts.append({"type": "image_url", "image_url": image})
    return parts


def _text(content: str | list[ContentPart]) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(part.text for part in content if isinstance(part, TextPart))


def _tool(tool: FunctionTool) -> dict[str, Any]:
    function: dict[str, Any] = {
        "name": tool.name,
        # Several servers require `parameters` even for argument-less functions.
        "parameters": tool.parameters or {"type": "object", "properties": {}},
    }
    if tool.description:
        function["description"] = tool.description
    if tool.strict:
        function["strict"] = True
    return {"type": "function", "function": function}


def _tool_choice(choice: str) -> str | dict[str, Any]:
    if choice in ("none", "auto", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def _delta_events(delta: Any, assembler: _ToolCallAssembler) -> list[LLMEvent]:
    events: list[LLMEvent] = []
    content = getattr(delta, "content", None)
    if isinstance(content, str) and content:
        events.append(TextDelta(content))
    # A refusal replaces the content (structured outputs); the user should see it.
    refusal = getattr(delta, "refusal", None)
    if isinstance(refusal, str) and refusal:
        events.append(TextDelta(refusal))
    calls = getattr(delta, "tool_calls", None)
    if isinstance(calls, list) and calls:
        for call in calls:
            function = getattr(call, "function", None)
            events.append(
                assembler.fragment(
                    server_index=_int_or_none(getattr(call, "index", None)),
                    call_id=_text_or_none(getattr(call, "id", None)),
                    name=_text_or_none(getattr(function, "name", None)),
                    arguments=_text_or_none(getattr(function, "arguments", None)) or "",
                )
            )
        # llama-cpp-python repeats each fragment in the legacy `function_call` of the same
        # chunk: a chunk with both counts once.
        return events
    legacy = getattr(delta, "function_call", None)
    if legacy is not None:
        events.append(
            assembler.fragment(
                server_index=0,
                call_id=None,
                name=_text_or_none(getattr(legacy, "name", None)),
                arguments=_text_or_none(getattr(legacy, "arguments", None)) or "",
            )
        )
    return events


class _ToolCallAssembler:
    """Assigns each tool-call fragment to a call position (the contract's `index`).

    The server's `index` is trusted when present, its `id` otherwise. Two signals start a
    new call even where index/id say "same call": a fragment carrying a function name and
    a different id than the call has, or a function name arriving after the call's
    arguments already form complete JSON (servers that put every parallel call at index 0,
    or send no index and no id, one complete call per chunk). A name repeated while the
    arguments are still incomplete is a continuation (servers that repeat it every chunk);
    such a server's call then takes a new call's name only with new arguments
    (llama-cpp-python ends each call with one more named fragment without any).
    """

    def __init__(self) -> None:
        self._by_server_index: dict[int, int] = {}
        self._ids: list[str | None] = []
        self._names: list[str | None] = []
        self._arguments: list[str] = []
        # Whether the server named the call again in a fragment that continued it.
        self._repeats_name: list[bool] = []
        self._current: int | None = None

    @property
    def count(self) -> int:
        return len(self._ids)

    def fragment(
        self, *, server_index: int | None, call_id: str | None, name: str | None, arguments: str
    ) -> ToolCallDelta:
        position: int | None
        if server_index is not None:
            position = self._by_server_index.get(server_index)
        else:
            position = self._current
        if position is not None and self._starts_new_call(position, call_id, name, arguments):
            position = None
        if position is None:
            position = len(self._ids)
            self._ids.append(None)
            self._names.append(None)
            self._arguments.append("")
            self._repeats_name.append(False)
        elif name:
            self._repeats_name[position] = True
        if server_index is not None:
            self._by_server_index[server_index] = position
        self._current = position

        delta = ToolCallDelta(index=position, arguments=arguments)
        if call_id and self._ids[position] is None:
            self._ids[position] = call_id
            delta.backend_id = call_id
        if name and self._names[position] is None:
            # The contract: `name` only on a call's first fragment, even if the server repeats it.
            self._names[position] = name
            delta.name = name
        self._arguments[position] += arguments
        return delta

    def _starts_new_call(
        self, position: int, call_id: str | None, name: str | None, arguments: str
    ) -> bool:
        if name is None:
            # Fragments without a name continue a call, even when a server invents a fresh
            # id for each of them.
            return False
        known_id = self._ids[position]
        if call_id and known_id and call_id != known_id:
            return True
        if not _is_complete_json(self._arguments[position]):
            return False
        return not self._repeats_name[position] or bool(arguments.strip())


def _is_complete_json(text: str) -> bool:
    if not text.strip():
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _finish_reason(reason: str | None, *, saw_tool_calls: bool) -> FinishReason:
    mapped = _FINISH_REASONS.get(reason) if reason else None
    if mapped is None:
        # Missing (server closed the stream without one) or nonstandard ("eos", "abort").
        return "tool_calls" if saw_tool_calls else "stop"
    if mapped == "stop" and saw_tool_calls:
        # Ollama and some llama.cpp builds say "stop" after emitting tool calls.
        return "tool_calls"
    return mapped


def _rejects_stream_options(exc: openai.APIStatusError) -> bool:
    if exc.status_code not in (400, 422):
        return False
    detail = body_message(exc.body) or exc.message
    return "stream_options" in detail


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
