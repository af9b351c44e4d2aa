"""Backend for Anthropic's Messages API (Claude), through the official SDK.

The Messages API differs from chat completions in ways the executor must not see: the
system prompt is a top-level field, tool results travel inside user messages, roles must
alternate, `max_tokens` is mandatory, and tool calls are content blocks numbered among text
blocks. `stream()` translates both ways and reports tool calls by their own position.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import anthropic
from anthropic import AsyncAnthropic
from anthropic.types import (
    InputJSONDelta,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    TextBlock,
    ToolUseBlock,
)
from anthropic.types import (
    TextDelta as AnthropicTextDelta,
)

from hal9100.llm._common import (
    TRANSPORT_ERRORS,
    body_message,
    garbage_error,
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

_STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}

# Error `type`s in Anthropic error bodies, for errors that arrive inside a 200 stream.
_ERROR_TYPES = {
    "rate_limit_error": "rate_limit",
    "overloaded_error": "server",
    "api_error": "server",
    "timeout_error": "server",
    "authentication_error": "auth",
    "permission_error": "auth",
    "invalid_request_error": "invalid_request",
    "not_found_error": "invalid_request",
    "request_too_large": "invalid_request",
}

# How much of a body that is no event stream is read, to quote it.
_MAX_QUOTED = 4096

_DATA_URL = re.compile(r"^data:(?P<media>[\w.+-]+/[\w.+-]+)?(?:;[^,]*)?;base64,(?P<data>.*)$", re.S)
_TOOL_ID_INVALID = re.compile(r"[^a-zA-Z0-9_-]")

# Keyless proxies in front of Claude still need the SDK to send *some* credential.
_NO_KEY = "not-needed"

# Sent in place of a missing first user turn: the Messages API rejects a conversation that
# opens with an assistant turn (Assistants threads may start with one).
_OPENING_USER_TURN = "(conversation start)"


class AnthropicBackend:
    """An `LLMBackend` for the Anthropic Messages API."""

    def __init__(
        self,
        api_key: str | None,
        base_url: str | None = None,
        *,
        timeout: float = 600,
        default_max_tokens: int = 4096,
    ) -> None:
        if not api_key and base_url and not _env_credentials():
            api_key = _NO_KEY
        # api_key None lets the SDK resolve credentials itself (env vars, profiles).
        self._client = AsyncAnthropic(
            api_key=api_key or None,
            base_url=base_url.rstrip("/") if base_url else None,
            timeout=timeout,
            max_retries=0,
        )
        self.base_url = str(self._client.base_url).rstrip("/")
        self._label = f"Anthropic backend at {self.base_url}"
        self.default_max_tokens = default_max_tokens
        self._rejects_sampling: set[str] = set()

    async def aclose(self) -> None:
        await self._client.close()

    def stream(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        return self._stream(request)

    async def _stream(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        params = build_request_params(request, default_max_tokens=self.default_max_tokens)
        events = await self._open(params)

        # Anthropic numbers content blocks across text and tool_use; the contract numbers
        # tool calls among themselves.
        tool_positions: dict[int, int] = {}
        input_tokens = 0
        output_tokens = 0
        saw_usage = False
        started = False
        stop_reason: str | None = None
        try:
            async for event in events:
                if isinstance(event, RawMessageStartEvent):
                    started = True
                    usage = event.message.usage
                    if usage is not None:
                        saw_usage = True
                        input_tokens = _input_tokens(usage)
                        output_tokens = token_count(usage.output_tokens)
                elif isinstance(event, RawContentBlockStartEvent):
                    block = event.content_block
                    if isinstance(block, ToolUseBlock):
                        position = len(tool_positions)
                        tool_positions[event.index] = position
                        yield ToolCallDelta(index=position, name=block.name, backend_id=block.id)
                    elif isinstance(block, TextBlock) and block.text:
                        yield TextDelta(block.text)
                elif isinstance(event, RawContentBlockDeltaEvent):
                    delta = event.delta
                    if isinstance(delta, AnthropicTextDelta):
                        if delta.text:
                            yield TextDelta(delta.text)
                    elif isinstance(delta, InputJSONDelta):
                        position_or_none = tool_positions.get(event.index)
                        if position_or_none is not None and delta.partial_json:
                            yield ToolCallDelta(
                                index=position_or_none, arguments=delta.partial_json
                            )
                    # Thinking, signature and citation deltas have no place in the contract.
                elif isinstance(event, RawMessageDeltaEvent):
                    if event.delta.stop_reason:
                        stop_reason = event.delta.stop_reason
                    usage_delta = event.usage
                    if usage_delta is not None:
                        saw_usage = True
                        # Cumulative counts; input counts appear here only on newer APIs.
                        output_tokens = token_count(usage_delta.output_tokens) or output_tokens
                        if usage_delta.input_tokens is not None:
                            input_tokens = _input_tokens(usage_delta)
        except Exception as exc:
            raise_mapped(exc, self._map_error(exc))
        finally:
            await events.close()
        if not started:
            # Every Messages stream opens with message_start; the SDK skips events it does
            # not know, so another server's stream reads as an empty one.
            raise LLMError(
                "server",
                f"{self._label} answered HTTP {events.response.status_code} with an event "
                "stream that holds no message (no message_start event)",
                status=events.response.status_code,
            )

        if saw_usage:
            yield Usage(prompt_tokens=input_tokens, completion_tokens=output_tokens)
        reason = _STOP_REASONS.get(stop_reason or "")
        if reason is None:
            reason = "tool_calls" if tool_positions else "stop"
        yield Finish(reason)

    async def _open(self, params: dict[str, Any]) -> anthropic.AsyncStream[Any]:
        model = params["model"]
        if model in self._rejects_sampling:
            params.pop("extra_body", None)
        try:
            events: anthropic.AsyncStream[Any] = await self._client.messages.create(
                **params, stream=True
            )
        except anthropic.BadRequestError as exc:
            if "extra_body" in params and _rejects_sampling(exc):
                # Remembered per model, so later runs skip the failing attempt.
                self._rejects_sampling.add(model)
                return await self._open(params)
            raise self._status_error(exc) from exc
        except Exception as exc:
            raise_mapped(exc, self._map_error(exc))
        response = events.response
        content_type = response.headers.get("content-type", "")
        if "html" in content_type or "json" in content_type:
            # A proxy's error page, or a whole message from a server that ignored `stream`:
            # the SDK would read either as an empty stream. (Other types are left to the
            # message_start check: proxies label event streams loosely.)
            head = b""
            try:
                async for part in response.aiter_bytes():
                    head += part
                    if len(head) >= _MAX_QUOTED:
                        break
            except Exception as exc:
                raise_mapped(exc, self._map_error(exc))
            finally:
                await response.aclose()
            body = head[:_MAX_QUOTED].decode("utf-8", "replace")
            raise garbage_error(self._label, response.status_code, "no event stream", body)
        return events

    def _map_error(self, exc: BaseException) -> LLMError | None:
        if isinstance(exc, anthropic.APIStatusError):
            return self._status_error(exc)
        if isinstance(exc, anthropic.APIConnectionError):
            cause = exc.__cause__
            if cause is not None:
                return transport_error(self._label, cause)
            return LLMError("server", f"{self._label}: {exc.message}")
        if isinstance(exc, anthropic.APIError):
            detail = body_message(exc.body) or exc.message
            return LLMError("server", f"{self._label}: {detail}")
        if isinstance(exc, TRANSPORT_ERRORS):
            # Unlike the OpenAI SDK, this SDK lets transport errors of a broken stream through.
            return transport_error(self._label, exc)
        if isinstance(exc, json.JSONDecodeError):
            return LLMError("server", f"{self._label} sent a malformed stream event: {exc}")
        if isinstance(exc, anthropic.AnthropicError):
            return LLMError("auth", f"{self._label}: {exc}")
        if isinstance(exc, TypeError) and "authentication" in str(exc):
            # The SDK raises TypeError("Could not resolve authentication method ...").
            return LLMError("auth", f"{self._label}: no API key configured ({exc})")
        return None

    def _status_error(self, exc: anthropic.APIStatusError) -> LLMError:
        error_type = getattr(exc, "type", None)
        status = exc.status_code
        if 200 <= status < 300:
            # An `event: error` inside a successful stream (e.g. overloaded midway): classify
            # by the error's type, as there is no real status.
            detail = body_message(exc.body) or exc.message
            kind = _ERROR_TYPES.get(str(error_type), "server")
            return LLMError(kind, f"{self._label} reported {error_type or 'an error'}: {detail}")
        return status_error(self._label, status, exc.body, exc.message)


def build_request_params(request: ChatRequest, *, default_max_tokens: int) -> dict[str, Any]:
    """The Messages API parameters for `request`, without `stream`."""
    system_parts = [
        _text(message.content) for message in request.messages if message.role == "system"
    ]
    system_parts = [part for part in system_parts if part.strip()]
    json_instruction = _json_instruction(request.response_format)
    if json_instruction:
        system_parts.append(json_instruction)

    params: dict[str, Any] = {
        "model": request.model,
        "messages": _messages(request.messages),
        "max_tokens": request.max_tokens or default_max_tokens,
    }
    if system_parts:
        params["system"] = "\n\n".join(system_parts)
    if request.tools:
        params["tools"] = [_tool(tool) for tool in request.tools]
        choice = _tool_choice(request.tool_choice, request.parallel_tool_calls)
        if choice is not None:
            params["tool_choice"] = choice
    # Sampling knobs go through `extra_body`: the SDK dropped them because recent Claude
    # models reject them ("temperature is deprecated for this model"), while older models and
    # proxies still honour them. 1.0 is the default of both, so it is never sent; Claude's
    # temperature range is 0..1 where OpenAI's is 0..2.
    sampling: dict[str, float] = {}
    if request.temperature is not None and request.temperature != 1.0:
        sampling["temperature"] = max(0.0, min(1.0, request.temperature))
    if request.top_p is not None and request.top_p != 1.0:
        sampling["top_p"] = request.top_p
    if sampling:
        params["extra_body"] = sampling
    return params


def _json_instruction(response_format: dict[str, Any] | None) -> str | None:
    """A system-prompt instruction standing in for `response_format`.

    The Messages API has no `response_format` (structured outputs exist only on some
    models and API versions), so JSON mode is requested in words; Claude follows it well.
    """
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "Respond with a single valid JSON object and nothing else: no prose, no code fences."
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        text = (
            "Respond with a single valid JSON object and nothing else: no prose, no code "
            "fences. The object must conform to this JSON Schema"
        )
        name = spec.get("name") if isinstance(spec, dict) else None
        if name:
            text += f" (named {name!r})"
        return f"{text}:\n{json.dumps(schema or {}, indent=None, sort_keys=True)}"
    return None


def _messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        if message.role == "tool":
            role = "user"
            blocks = [_tool_result(message)]
        elif message.role == "assistant":
            role = "assistant"
            blocks = _content_blocks(message.content)
            for call in message.tool_calls:
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": _tool_id(call.id),
                        "name": call.name,
                        "input": _tool_input(call.arguments),
                    }
                )
        else:
            role = "user"
            blocks = _content_blocks(message.content)
        if not blocks:
            continue  # The API rejects empty turns.
        if turns and turns[-1]["role"] == role:
            # Roles must alternate: consecutive tool results become one user turn, and so
            # do a tool result followed by a user message.
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        if turn["role"] == "user":
            # Tool results must open the user turn that answers the tool calls.
            turn["content"].sort(key=lambda block: block.get("type") != "tool_result")
    if turns and turns[0]["role"] == "assistant":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": _OPENING_USER_TURN}]})
    return turns


def _content_blocks(content: str | list[ContentPart]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            if part.text.strip():
                blocks.append({"type": "text", "text": part.text})
        else:
            blocks.append(_image_block(part))
    return blocks


def _image_block(part: ImagePart) -> dict[str, Any]:
    match = _DATA_URL.match(part.url)
    if match:
        return {
            "type": "image",
            "source": {
                "type": "base64",
                "media_type": match.group("media") or "image/png",
                "data": match.group("data"),
            },
        }
    return {"type": "image", "source": {"type": "url", "url": part.url}}


def _tool_result(message: ChatMessage) -> dict[str, Any]:
    content = message.content
    result: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": _tool_id(message.tool_call_id or ""),
    }
    if isinstance(content, str):
        result["content"] = content
    else:
        result["content"] = _content_blocks(content)
    return result


def _tool_id(call_id: str) -> str:
    # Anthropic requires ids matching ^[a-zA-Z0-9_-]+$; ids minted elsewhere (or by an
    # OpenAI-compatible server earlier in the thread) may not.
    return _TOOL_ID_INVALID.sub("_", call_id) or "call"


def _tool_input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _tool(tool: FunctionTool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": tool.name,
        "input_schema": tool.parameters or {"type": "object", "properties": {}},
    }
    if tool.description:
        out["description"] = tool.description
    return out


def _tool_choice(choice: str | None, parallel: bool | None) -> dict[str, Any] | None:
    if choice == "none":
        return {"type": "none"}
    out: dict[str, Any]
    if choice is None or choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    else:
        out = {"type": "tool", "name": choice}
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # Nothing to say: the API's default is auto with parallel calls.
    return out


def _text(content: str | list[ContentPart]) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(part.text for part in content if isinstance(part, TextPart))


def _input_tokens(usage: Any) -> int:
    # With prompt caching, `input_tokens` counts only the uncached part of the prompt.
    return (
        token_count(getattr(usage, "input_tokens", None))
        + token_count(getattr(usage, "cache_creation_input_tokens", None))
        + token_count(getattr(usage, "cache_read_input_tokens", None))
    )


def _rejects_sampling(exc: anthropic.BadRequestError) -> bool:
    detail = (body_message(exc.body) or exc.message).lower()
    return "temperature" in detail or "top_p" in detail


def _env_credentials() -> bool:
    return bool(os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN"))
