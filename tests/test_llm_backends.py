"""The LLM backends against the scripted LLM server, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import openai
import pytest

from hal9100.llm.anthropic import AnthropicBackend
from hal9100.llm.base import (
    ChatMessage,
    ChatRequest,
    Finish,
    FunctionTool,
    ImagePart,
    LLMBackend,
    LLMError,
    LLMEvent,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from hal9100.llm.openai_compat import OpenAICompatBackend, _ToolCallAssembler
from hal9100.llm.router import ModelRoute, ModelRouter
from scripted_llm import ScriptedLLM

TOOLS = [
    FunctionTool(
        "get_weather",
        "Weather for a city",
        {"type": "object", "properties": {"city": {"type": "string"}}},
    ),
    FunctionTool("get_time"),
]


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedLLM]:
    with ScriptedLLM() as server:
        yield server


@pytest.fixture
async def openai_backend(llm: ScriptedLLM) -> AsyncIterator[OpenAICompatBackend]:
    llm.reset()
    backend = OpenAICompatBackend(llm.base_url, "test-key", timeout=5)
    yield backend
    await backend.aclose()


@pytest.fixture
async def anthropic_backend(llm: ScriptedLLM) -> AsyncIterator[AnthropicBackend]:
    llm.reset()
    backend = AnthropicBackend("test-key", llm.anthropic_base_url, timeout=5)
    yield backend
    await backend.aclose()


@pytest.fixture(params=["openai", "anthropic"])
async def backend(request: pytest.FixtureRequest, llm: ScriptedLLM) -> AsyncIterator[LLMBackend]:
    llm.reset()
    made: LLMBackend
    if request.param == "openai":
        made = OpenAICompatBackend(llm.base_url, "test-key", timeout=5)
    else:
        made = AnthropicBackend("test-key", llm.anthropic_base_url, timeout=5)
    yield made
    await made.aclose()


@dataclass
class Collected:
    events: list[LLMEvent] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextDelta))

    @property
    def text_deltas(self) -> int:
        return sum(isinstance(e, TextDelta) for e in self.events)

    @property
    def calls(self) -> list[tuple[int, str | None, str]]:
        """(index, name, arguments) per call, assembled as the executor would."""
        names: dict[int, str | None] = {}
        arguments: dict[int, str] = {}
        for e in self.events:
            if isinstance(e, ToolCallDelta):
                if e.name is not None:
                    assert e.index not in names or names[e.index] is None, "name sent twice"
                    names[e.index] = e.name
                else:
                    names.setdefault(e.index, None)
                arguments[e.index] = arguments.get(e.index, "") + e.arguments
        return [(i, names[i], arguments[i]) for i in sorted(names)]

    @property
    def usage(self) -> Usage | None:
        usages = [e for e in self.events if isinstance(e, Usage)]
        assert len(usages) <= 1
        return usages[0] if usages else None

    @property
    def finish(self) -> str:
        assert isinstance(self.events[-1], Finish), self.events
        assert sum(isinstance(e, Finish) for e in self.events) == 1
        return self.events[-1].reason


async def collect(backend: LLMBackend, request: ChatRequest) -> Collected:
    out = Collected()
    async for event in backend.stream(request):
        out.events.append(event)
    return out


def ask(text: str, **kwargs: Any) -> ChatRequest:
    kwargs.setdefault("model", "test-model")
    return ChatRequest(messages=[ChatMessage("user", text)], **kwargs)


# ----------------------------------------------------------------------------- text


async def test_text_streams_in_several_deltas_with_usage(
    backend: LLMBackend, llm: ScriptedLLM
) -> None:
    request = ChatRequest(
        model="test-model",
        messages=[
            ChatMessage("system", "Be brief."),
            ChatMessage("user", "hello brave new world"),
        ],
    )
    out = await collect(backend, request)
    assert out.text == "Echo: hello brave new world"
    assert out.text_deltas == 5
    # Both protocols count the words of every message: 2 + 4.
    assert out.usage == Usage(prompt_tokens=6, completion_tokens=5)
    assert out.finish == "stop"


async def test_openai_request_shape(openai_backend: OpenAICompatBackend, llm: ScriptedLLM) -> None:
    await collect(openai_backend, ask("hi", max_tokens=50, temperature=0.3, top_p=0.9))
    body = llm.last_request
    assert body is not None
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 50
    assert "max_completion_tokens" not in body
    assert body["temperature"] == 0.3 and body["top_p"] == 0.9
    # Without tools, none of the tool knobs may be sent (OpenAI rejects tool_choice alone).
    assert not {"tools", "tool_choice", "parallel_tool_calls", "reasoning_effort"} & set(body)
    assert llm.recorded[-1].headers["authorization"] == "Bearer test-key"


async def test_openai_tools_and_options_mapping(
    openai_backend: OpenAICompatBackend, llm: ScriptedLLM
) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    request = ChatRequest(
        model="test-model",
        messages=[
            ChatMessage(
                "user",
                [TextPart("what is this?"), ImagePart("https://example.test/a.png", "low")],
            )
        ],
        tools=TOOLS,
        tool_choice="get_weather",
        parallel_tool_calls=False,
        response_format=fmt,
        reasoning_effort="low",
    )
    out = await collect(openai_backend, request)
    assert json.loads(out.text) == {"echo": "Echo: what is this?"}
    body = llm.last_request
    assert body is not None
    assert body["tools"][0] == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    assert body["tools"][1]["function"]["parameters"] == {"type": "object", "properties": {}}
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assert body["response_format"] == fmt
    assert body["reasoning_effort"] == "low"
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.test/a.png", "detail": "low"}},
    ]
    for choice in ("none", "auto", "required"):
        await collect(openai_backend, ask("x", tools=TOOLS, tool_choice=choice))
        assert llm.requests[-1]["tool_choice"] == choice


async def test_full_chat_completions_url_is_accepted(llm: ScriptedLLM) -> None:
    backend = OpenAICompatBackend(f"{llm.base_url}/chat/completions/", None, timeout=5)
    try:
        assert backend.base_url == llm.base_url
        out = await collect(backend, ask("ping"))
        assert out.text == "Echo: ping"
        assert llm.recorded[-1].path == "/v1/chat/completions"
    finally:
        await backend.aclose()


async def test_max_tokens_cuts_with_length(backend: LLMBackend) -> None:
    out = await collect(backend, ask("[[tokens:10]]", max_tokens=4))
    assert out.text == "token1 token2 token3 token4"
    assert out.finish == "length"
    assert out.usage is not None and out.usage.completion_tokens == 4


async def test_json_mode_reply(backend: LLMBackend, llm: ScriptedLLM) -> None:
    out = await collect(backend, ask("give json", response_format={"type": "json_object"}))
    assert json.loads(out.text) == {"echo": "Echo: give json"}


# ------------------------------------------------------------------------ tool calls


async def test_parallel_tool_calls(backend: LLMBackend) -> None:
    out = await collect(
        backend,
        ask(
            'weather? [[call:get_weather {"city": "Paris"}]] [[call:get_time {}]]',
            tools=TOOLS,
        ),
    )
    assert out.calls == [
        (0, "get_weather", '{"city": "Paris"}'),
        (1, "get_time", "{}"),
    ]
    assert out.finish == "tool_calls"
    ids = [e.backend_id for e in out.events if isinstance(e, ToolCallDelta) and e.backend_id]
    assert len(ids) == 2


@pytest.mark.parametrize(
    "quirks",
    ["same_id", "no_id", "repeat_id", "no_index", "no_index,no_id", "no_index,same_id"],
)
async def test_openai_tool_call_quirks_are_normalised(
    openai_backend: OpenAICompatBackend, quirks: str
) -> None:
    text = (
        f'[[quirk:{quirks}]] [[call:get_weather {{"city": "Paris"}}]] '
        '[[call:get_weather {"city": "Rome"}]] [[call:get_time]]'
    )
    out = await collect(openai_backend, ask(text, tools=TOOLS))
    assert out.calls == [
        (0, "get_weather", '{"city": "Paris"}'),
        (1, "get_weather", '{"city": "Rome"}'),
        (2, "get_time", "{}"),
    ]
    assert out.finish == "tool_calls"


async def test_openai_legacy_function_call(openai_backend: OpenAICompatBackend) -> None:
    out = await collect(
        openai_backend,
        ask('[[quirk:legacy_function_call]] [[call:get_weather {"city": "Oslo"}]]', tools=TOOLS),
    )
    assert out.calls == [(0, "get_weather", '{"city": "Oslo"}')]
    assert out.finish == "tool_calls"


async def test_openai_fragments_also_sent_as_function_call_count_once(
    openai_backend: OpenAICompatBackend,
) -> None:
    """llama-cpp-python repeats each tool-call fragment in `function_call`, same chunk."""
    text = '[[quirk:dup_function_call]] [[call:get_weather {"city": "Oslo"}]] [[call:get_time]]'
    out = await collect(openai_backend, ask(text, tools=TOOLS))
    assert out.calls == [(0, "get_weather", '{"city": "Oslo"}'), (1, "get_time", "{}")]
    assert out.finish == "tool_calls"


async def test_openai_whole_completion_answered_to_a_stream(
    openai_backend: OpenAICompatBackend,
) -> None:
    out = await collect(openai_backend, ask("[[quirk:ignore_stream]] whole answer"))
    assert out.text == "Echo: whole answer"
    assert out.usage == Usage(prompt_tokens=3, completion_tokens=3)
    assert out.finish == "stop"
    text = '[[quirk:ignore_stream]] [[call:get_weather {"city": "Oslo"}]] [[call:get_time]]'
    out = await collect(openai_backend, ask(text, tools=TOOLS))
    assert out.calls == [(0, "get_weather", '{"city": "Oslo"}'), (1, "get_time", "{}")]
    assert out.finish == "tool_calls"


@pytest.mark.parametrize("kind", ["html", "json", "sse"])
async def test_an_answer_that_is_no_completion_is_a_server_error(
    backend: LLMBackend, kind: str
) -> None:
    with pytest.raises(LLMError) as caught:
        await collect(backend, ask(f"[[garbage:{kind}]]"))
    assert caught.value.kind == "server" and caught.value.retryable
    message = caught.value.message
    assert "HTTP 200" in message and len(message) < 400, message
    if kind == "html":
        assert "502 Bad Gateway" in message
    elif kind == "json" or isinstance(backend, OpenAICompatBackend):
        assert "scripted garbage" in message or '"scripted": "garbage"' in message, message


async def test_openai_no_usage_and_no_finish(openai_backend: OpenAICompatBackend) -> None:
    out = await collect(openai_backend, ask("[[quirk:no_usage,no_finish]] quiet"))
    assert out.usage is None
    assert out.text == "Echo: quiet"
    assert out.finish == "stop"
    out = await collect(openai_backend, ask("[[quirk:no_finish]] [[call:get_time]]", tools=TOOLS))
    assert out.finish == "tool_calls"
    assert out.usage is not None


async def test_openai_retries_without_rejected_stream_options(
    openai_backend: OpenAICompatBackend, llm: ScriptedLLM
) -> None:
    out = await collect(openai_backend, ask("[[quirk:reject_stream_options]] old server"))
    assert out.text == "Echo: old server"
    assert [("stream_options" in body) for body in llm.requests] == [True, False]


async def test_text_before_tool_calls(backend: LLMBackend) -> None:
    out = await collect(backend, ask("[[reply@0:Let me check.]] [[call:get_time]]", tools=TOOLS))
    assert out.text == "Let me check."
    assert out.calls == [(0, "get_time", "{}")]
    assert out.finish == "tool_calls"


def _after_tools(text: str) -> list[ChatMessage]:
    return [
        ChatMessage("system", "You are helpful."),
        ChatMessage("user", text),
        ChatMessage(
            "assistant",
            "",
            tool_calls=[
                ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
                ToolCall("call.b", "get_weather", "not json"),
            ],
        ),
        ChatMessage("tool", "sunny", tool_call_id="call_a"),
        ChatMessage("tool", "rainy", tool_call_id="call.b"),
    ]


async def test_openai_tool_results_round_trip(
    openai_backend: OpenAICompatBackend, llm: ScriptedLLM
) -> None:
    request = ChatRequest(
        model="test-model", messages=_after_tools("[[call:get_weather {}]]"), tools=TOOLS
    )
    out = await collect(openai_backend, request)
    assert out.text == "Tool results: sunny; rainy"
    assert out.finish == "stop"
    body = llm.last_request
    assert body is not None
    assert body["messages"][2] == {
        "role": "assistant",
        # Not null: llama.cpp's server rejects a null content (tests/test_real_model.py).
        "content": "",
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "call.b",
                "type": "function",
                "function": {"name": "get_weather", "arguments": "not json"},
            },
        ],
    }
    assert body["messages"][3:] == [
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call.b", "content": "rainy"},
    ]


async def test_anthropic_tool_results_round_trip(
    anthropic_backend: AnthropicBackend, llm: ScriptedLLM
) -> None:
    request = ChatRequest(
        model="claude-test",
        messages=_after_tools("[[call:get_weather {}]]"),
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
    )
    out = await collect(anthropic_backend, request)
    assert out.text == "Tool results: sunny; rainy"
    body = llm.last_request
    assert body is not None
    assert body["system"] == "You are helpful."
    assert body["max_tokens"] == 4096
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["tools"][0] == {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    assert body["tools"][1]["input_schema"] == {"type": "object", "properties": {}}
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"] == [
        {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}},
        # Invalid JSON arguments become {}; ids are made valid for Anthropic, consistently.
        {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {}},
    ]
    # Both tool results in ONE user turn.
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_a", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "call_b", "content": "rainy"},
    ]


async def test_tool_loop_over_several_rounds(backend: LLMBackend) -> None:
    text = "[[call:get_time]] [[rounds:2]]"
    messages = [ChatMessage("user", text)]
    kinds = []
    for round_ in range(4):
        out = await collect(backend, ChatRequest("test-model", list(messages), tools=TOOLS))
        kinds.append(out.finish)
        if out.finish != "tool_calls":
            assert out.text == "Tool results: 12:00"
            break
        [(_, name, arguments)] = out.calls
        call = ToolCall(f"call_{round_}", name or "", arguments)
        messages += [
            ChatMessage("assistant", tool_calls=[call]),
            ChatMessage("tool", "12:00", tool_call_id=call.id),
        ]
    assert kinds == ["tool_calls", "tool_calls", "stop"]


async def test_anthropic_message_mapping(
    anthropic_backend: AnthropicBackend, llm: ScriptedLLM
) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    request = ChatRequest(
        model="claude-test",
        messages=[
            ChatMessage("system", "Rule one."),
            ChatMessage("assistant", "I spoke first."),
            ChatMessage("system", "Rule two."),
            ChatMessage(
                "user",
                [
                    TextPart("look"),
                    ImagePart("https://example.test/cat.png"),
                    ImagePart("data:image/jpeg;base64,QUJD"),
                ],
            ),
            ChatMessage("user", "and again"),
        ],
        tools=TOOLS,
        tool_choice="get_time",
        temperature=1.6,
        top_p=1.0,
        max_tokens=77,
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
    )
    out = await collect(anthropic_backend, request)
    # Consecutive user messages merge into one turn, so the "last user text" spans both.
    assert json.loads(out.text) == {"echo": "Echo: look and again"}
    body = llm.last_request
    assert body is not None
    assert body["system"].startswith("Rule one.\n\nRule two.\n\n")
    assert json.dumps(schema, sort_keys=True) in body["system"]
    assert body["max_tokens"] == 77
    assert body["temperature"] == 1.0  # clamped to Claude's range
    assert "top_p" not in body  # the default is left out: Claude rejects both knobs
    assert body["tool_choice"] == {"type": "tool", "name": "get_time"}
    # The API needs a user turn first and alternating roles.
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][2]["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image", "source": {"type": "url", "url": "https://example.test/cat.png"}},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"},
        },
        {"type": "text", "text": "and again"},
    ]


async def test_anthropic_drops_sampling_knobs_a_model_rejects(
    anthropic_backend: AnthropicBackend, llm: ScriptedLLM
) -> None:
    request = ask("[[quirk:reject_temperature]] warm", model="claude-new", temperature=0.2)
    assert (await collect(anthropic_backend, request)).text == "Echo: warm"
    assert [body.get("temperature") for body in llm.requests] == [0.2, None]
    # Remembered for the model: no failing attempt the second time.
    assert (await collect(anthropic_backend, request)).text == "Echo: warm"
    assert len(llm.requests) == 3


async def test_anthropic_tool_choice_none_and_auto(
    anthropic_backend: AnthropicBackend, llm: ScriptedLLM
) -> None:
    await collect(anthropic_backend, ask("x", tools=TOOLS, tool_choice="none"))
    assert llm.requests[-1]["tool_choice"] == {"type": "none"}
    await collect(anthropic_backend, ask("x", tools=TOOLS, tool_choice="auto"))
    assert llm.requests[-1]["tool_choice"] == {"type": "auto"}
    await collect(anthropic_backend, ask("x", tools=TOOLS))
    assert "tool_choice" not in llm.requests[-1]


async def test_anthropic_without_key_behind_a_proxy(
    llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    backend = AnthropicBackend(None, llm.anthropic_base_url, timeout=5)
    try:
        assert (await collect(backend, ask("hi"))).text == "Echo: hi"
    finally:
        await backend.aclose()


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("directive", "kind", "status"),
    [
        ("[[fail:500]]", "server", 500),
        ("[[fail:429]]", "rate_limit", 429),
        ("[[fail:401]]", "auth", 401),
        ("[[fail:403]]", "auth", 403),
        ("[[fail:400]]", "invalid_request", 400),
        ("[[fail:529]]", "server", 529),
    ],
)
async def test_http_errors_are_classified(
    backend: LLMBackend, directive: str, kind: str, status: int
) -> None:
    with pytest.raises(LLMError) as caught:
        await collect(backend, ask(directive))
    assert caught.value.kind == kind
    assert caught.value.status == status
    assert f"HTTP {status}" in caught.value.message
    assert f"scripted failure: HTTP {status}" in caught.value.message
    assert caught.value.retryable == (kind in ("server", "rate_limit"))


async def test_dropped_stream_is_a_server_error(backend: LLMBackend) -> None:
    events: list[LLMEvent] = []
    with pytest.raises(LLMError) as caught:
        async for event in backend.stream(ask("[[drop]] one two three four")):
            events.append(event)
    assert caught.value.kind == "server"
    assert caught.value.retryable
    assert events and all(isinstance(e, TextDelta) for e in events)


async def test_error_inside_stream(backend: LLMBackend) -> None:
    with pytest.raises(LLMError) as caught:
        await collect(backend, ask("[[stream_error]] one two three four"))
    assert caught.value.kind == "server"
    assert "scripted stream error" in caught.value.message


async def test_hang_times_out_as_server_error(llm: ScriptedLLM) -> None:
    for made in (
        OpenAICompatBackend(llm.base_url, "k", timeout=0.3),
        AnthropicBackend("k", llm.anthropic_base_url, timeout=0.3),
    ):
        try:
            with pytest.raises(LLMError) as caught:
                await collect(made, ask("[[hang]]"))
            assert caught.value.kind == "server"
            assert "timed out" in caught.value.message
        finally:
            await made.aclose()


async def test_connection_refused_is_a_server_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for made in (
        OpenAICompatBackend(f"http://127.0.0.1:{port}/v1", "k", timeout=2),
        AnthropicBackend("k", f"http://127.0.0.1:{port}", timeout=2),
    ):
        try:
            with pytest.raises(LLMError) as caught:
                await collect(made, ask("hi"))
            assert caught.value.kind == "server"
        finally:
            await made.aclose()


async def test_fail_times_then_success(backend: LLMBackend, llm: ScriptedLLM) -> None:
    request = ask("[[fail_times:2:503]] flaky")
    for _ in range(2):
        with pytest.raises(LLMError) as caught:
            await collect(backend, request)
        assert caught.value.kind == "server" and caught.value.status == 503
    assert (await collect(backend, request)).text == "Echo: flaky"


async def test_slow_stream_still_completes(backend: LLMBackend) -> None:
    out = await collect(backend, ask("[[slow:10]] a b c"))
    assert out.text == "Echo: a b c"


# ------------------------------------------------------------- fragment assembly


def _assemble(fragments: list[dict[str, Any]]) -> list[tuple[int, str | None, str]]:
    assembler = _ToolCallAssembler()
    out = Collected()
    for fragment in fragments:
        out.events.append(
            assembler.fragment(
                server_index=fragment.get("index"),
                call_id=fragment.get("id"),
                name=fragment.get("name"),
                arguments=fragment.get("arguments", ""),
            )
        )
    return out.calls


def test_assembler_splits_calls_a_server_put_at_one_index() -> None:
    assert _assemble(
        [
            {"index": 0, "id": "a", "name": "f", "arguments": '{"x": 1}'},
            {"index": 0, "id": "b", "name": "g", "arguments": "{}"},
        ]
    ) == [(0, "f", '{"x": 1}'), (1, "g", "{}")]


def test_assembler_one_complete_call_per_chunk_without_index_or_id() -> None:
    assert _assemble(
        [
            {"name": "f", "arguments": '{"x": 1}'},
            {"name": "f", "arguments": '{"x": 2}'},
        ]
    ) == [(0, "f", '{"x": 1}'), (1, "f", '{"x": 2}')]


def test_assembler_name_repeated_in_every_fragment() -> None:
    assert _assemble(
        [
            {"index": 0, "id": "a", "name": "f", "arguments": '{"x"'},
            {"index": 0, "id": "a", "name": "f", "arguments": ": 1}"},
        ]
    ) == [(0, "f", '{"x": 1}')]


def test_assembler_fresh_id_per_fragment_without_name() -> None:
    assert _assemble(
        [
            {"id": "a", "name": "f", "arguments": '{"x"'},
            {"id": "b", "arguments": ": 1}"},
        ]
    ) == [(0, "f", '{"x": 1}')]


# ---------------------------------------------------------------------------- routing


def _router(**overrides: Any) -> ModelRouter:
    options: dict[str, Any] = {
        "default_url": "http://default.test/v1",
        "default_api_key": "dk",
        "anthropic_api_key": "ak",
        "anthropic_base_url": None,
        "default_context_window": 8192,
    }
    options.update(overrides)
    routes = options.pop("routes", [])
    return ModelRouter(routes, **options)


async def test_router_defaults() -> None:
    router = _router()
    try:
        claude = router.resolve("claude-sonnet-4-5")
        assert claude.backend_kind == "anthropic"
        assert isinstance(claude.backend, AnthropicBackend)
        assert claude.context_window == 200_000
        other = router.resolve("llama3.1:8b")
        assert other.backend_kind == "openai"
        assert isinstance(other.backend, OpenAICompatBackend)
        assert other.backend.base_url == "http://default.test/v1"
        assert other.context_window == 8192
        # One backend (one connection pool) per server.
        assert router.resolve("qwen2.5").backend is other.backend
        assert router.resolve("claude-opus-4").backend is claude.backend
    finally:
        await router.aclose()


async def test_router_without_anthropic_sends_claude_to_the_default() -> None:
    router = _router(anthropic_api_key=None)
    try:
        assert router.resolve("claude-3-haiku").backend_kind == "openai"
        assert router.resolve("claude-3-haiku").context_window == 200_000
    finally:
        await router.aclose()
    router = _router(anthropic_api_key=None, anthropic_base_url="http://proxy.test")
    try:
        assert router.resolve("claude-3-haiku").backend_kind == "anthropic"
    finally:
        await router.aclose()


def _url(backend: LLMBackend) -> str:
    assert isinstance(backend, OpenAICompatBackend | AnthropicBackend)
    return backend.base_url


async def test_router_routes_exact_and_prefix() -> None:
    router = _router(
        routes=[
            ModelRoute(
                match="big-model",
                backend="openai",
                url="http://big.test/v1/chat/completions",
                context_window=65536,
            ),
            ModelRoute(match="local-*", backend="openai", url="http://local.test/v1", api_key="lk"),
            ModelRoute(match="claude-*", backend="openai"),
            ModelRoute(match="sonnet", backend="anthropic", url="http://claude-proxy.test"),
        ]
    )
    try:
        big = router.resolve("big-model")
        assert isinstance(big.backend, OpenAICompatBackend)
        assert big.backend.base_url == "http://big.test/v1"
        assert big.context_window == 65536
        assert _url(router.resolve("big-model-2").backend) == "http://default.test/v1"
        local = router.resolve("local-llama")
        assert _url(local.backend) == "http://local.test/v1"
        assert router.resolve("local-qwen").backend is local.backend
        # An explicit route beats the built-in claude rule.
        assert router.resolve("claude-3-opus").backend_kind == "openai"
        sonnet = router.resolve("sonnet")
        assert sonnet.backend_kind == "anthropic"
        assert _url(sonnet.backend) == "http://claude-proxy.test"
    finally:
        await router.aclose()


async def test_router_without_default_url() -> None:
    router = _router(default_url=None, anthropic_api_key=None)
    with pytest.raises(LLMError) as caught:
        router.resolve("llama3")
    assert caught.value.kind == "config"
    assert not caught.value.retryable
    assert "MODEL_URL" in caught.value.message
    assert "HAL9100_MODEL_ROUTES" in caught.value.message
    await router.aclose()


async def test_router_end_to_end(llm: ScriptedLLM) -> None:
    llm.reset()
    router = _router(
        default_url=f"{llm.base_url}/chat/completions",
        anthropic_base_url=llm.anthropic_base_url,
    )
    try:
        for model in ("claude-test", "llama3"):
            out = await collect(router.resolve(model).backend, ask("routed", model=model))
            assert out.text == "Echo: routed"
        assert [r.path for r in llm.recorded] == ["/v1/messages", "/v1/chat/completions"]
    finally:
        await router.aclose()


async def test_aclose_closes_clients(llm: ScriptedLLM) -> None:
    backend = OpenAICompatBackend(llm.base_url, "k")
    await backend.aclose()
    assert backend._client.is_closed()
    claude = AnthropicBackend("k", llm.anthropic_base_url)
    await claude.aclose()
    assert claude._client.is_closed()


# ---------------------------------------------------------------- the scripted server


async def test_scripted_responses_validate_with_the_official_sdks(llm: ScriptedLLM) -> None:
    oai = openai.AsyncOpenAI(
        base_url=llm.base_url, api_key="k", max_retries=0, _strict_response_validation=True
    )
    claude = anthropic.AsyncAnthropic(
        base_url=llm.anthropic_base_url,
        api_key="k",
        max_retries=0,
        _strict_response_validation=True,
    )
    try:
        text = 'hi [[reply@0:Checking.]] [[call:get_time {"tz": "UTC"}]]'
        completion = await oai.chat.completions.create(
            model="m", messages=[{"role": "user", "content": text}]
        )
        message = completion.choices[0].message
        assert message.content == "Checking."
        assert message.tool_calls is not None
        call = message.tool_calls[0]
        assert call.type == "function"
        assert (call.function.name, call.function.arguments) == ("get_time", '{"tz": "UTC"}')
        assert completion.choices[0].finish_reason == "tool_calls"
        assert completion.usage is not None and completion.usage.prompt_tokens == 5

        reply = await claude.messages.create(
            model="claude-x", max_tokens=100, messages=[{"role": "user", "content": text}]
        )
        assert [block.type for block in reply.content] == ["text", "tool_use"]
        assert reply.stop_reason == "tool_use"
        assert reply.usage.input_tokens == 5

        chunks = await oai.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "stream me"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        assert len([chunk async for chunk in chunks]) == 6  # role, 3 words, finish, usage
        events = await claude.messages.create(
            model="claude-x",
            max_tokens=100,
            messages=[{"role": "user", "content": "stream me"}],
            stream=True,
        )
        types = [event.type async for event in events]
        assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
    finally:
        await oai.close()
        await claude.close()


async def test_scripted_server_serves_concurrent_streams() -> None:
    with ScriptedLLM(latency=0.2) as slow:
        backend = OpenAICompatBackend(slow.base_url, None)
        try:
            started = time.monotonic()
            results = await asyncio.gather(*(collect(backend, ask(f"n{i}")) for i in range(40)))
            # Answered one after another they would take 40 x 0.2 = 8 s; at once, about
            # 0.2 s (the bound leaves room for a loaded machine).
            assert time.monotonic() - started < 4
            assert sorted(r.text for r in results) == sorted(f"Echo: n{i}" for i in range(40))
        finally:
            await backend.aclose()


async def test_scripted_server_stops_despite_a_hanging_request() -> None:
    server = ScriptedLLM().start()
    backend = OpenAICompatBackend(server.base_url, None, timeout=30)
    try:
        pending = asyncio.create_task(collect(backend, ask("[[hang]]")))
        for _ in range(500):
            if server.requests:
                break
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await asyncio.to_thread(server.stop)
        assert time.monotonic() - started < 1
        with pytest.raises(LLMError) as caught:
            await pending
        assert caught.value.kind == "server"
    finally:
        server.stop()
        await backend.aclose()
