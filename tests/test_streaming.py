"""Streamed runs (issue 4), driven through every stream helper of the official SDK against
both protocols of the scripted LLM: the exact order of events, every event's payload against
OpenAI's spec, deltas that join to what is stored, and streams that end well when the client
goes away, the backend breaks mid-answer, or the run disappears under the stream."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from openai import AssistantEventHandler
from openai.types.beta import AssistantStreamEvent
from openai.types.beta.threads import Message, Run, Text, TextDelta
from openai.types.beta.threads.runs import RunStep, ToolCall, ToolCallDelta

from deployments import Deployment, RoundRobinTransport
from openapi_contract import (
    make_validating_http_client,
    require_spec,
    spec_available,
    validate_sse_text,
    validate_stream_event,
)
from runs_support import TERMINAL, TIME_TOOL, WEATHER_TOOL

MODELS = {"openai": "scripted-model", "anthropic": "claude-scripted"}
HEAD = ["thread.run.created", "thread.run.queued", "thread.run.in_progress"]
MESSAGE_OPEN = [
    "thread.run.step.created",
    "thread.run.step.in_progress",
    "thread.message.created",
    "thread.message.in_progress",
]
MESSAGE_CLOSE = ["thread.message.completed", "thread.run.step.completed"]
TOOL_OPEN = ["thread.run.step.created", "thread.run.step.in_progress"]


def text_run(deltas: int) -> list[str]:
    """The events of a run answering with `deltas` chunks of text."""
    return [
        *HEAD,
        *MESSAGE_OPEN,
        *["thread.message.delta"] * deltas,
        *MESSAGE_CLOSE,
        "thread.run.completed",
    ]


def tokens(n: int) -> str:
    return " ".join(f"token{i}" for i in range(1, n + 1))


def tag() -> str:
    return f"m{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(params=sorted(MODELS))
def backend(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


def streaming_client(server: Deployment) -> openai.OpenAI:
    """The SDK with every JSON answer and every stream event validated against the spec
    (when the spec is present) as the SDK consumes it."""
    urls = server.urls
    transport = RoundRobinTransport(urls) if len(urls) > 1 else None
    return openai.OpenAI(
        base_url=f"{urls[0]}/v1",
        api_key="test",
        max_retries=0,
        timeout=30,
        http_client=make_validating_http_client(
            validate_streams=True, require=False, transport=transport
        ),
        _strict_response_validation=True,
    )


@pytest.fixture
def sdk(server: Deployment) -> Iterator[openai.OpenAI]:
    client = streaming_client(server)
    yield client
    client.close()


@pytest.fixture
def assistant_id(sdk: openai.OpenAI, backend: str) -> str:
    return sdk.beta.assistants.create(
        model=MODELS[backend], instructions="Be brief.", tools=[WEATHER_TOOL, TIME_TOOL]
    ).id


def new_thread(sdk: openai.OpenAI, text: str) -> str:
    return sdk.beta.threads.create(messages=[{"role": "user", "content": text}]).id


def stored_texts(sdk: openai.OpenAI, thread_id: str, run_id: str) -> list[str]:
    messages = sdk.beta.threads.messages.list(thread_id, order="asc", run_id=run_id)
    return [text_of(m) for m in messages.data]


def text_of(message: Message) -> str:
    return "".join(part.text.value for part in message.content if part.type == "text")


def wait_run(sdk: openai.OpenAI, thread_id: str, run_id: str, timeout: float = 30) -> Run:
    deadline = time.monotonic() + timeout
    while True:
        run = sdk.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
        if run.status in TERMINAL:
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run.status}"
        time.sleep(0.05)


def raw_events(body: str) -> list[tuple[str, Any]]:
    """(event, data) pairs of a whole text/event-stream body, data decoded from JSON."""
    out: list[tuple[str, Any]] = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        data = fields["data"]
        out.append((fields["event"], data if data == "[DONE]" else json.loads(data)))
    return out


class Recorder(AssistantEventHandler):
    """Records every callback the SDK's stream helper makes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.events: list[str] = []
        self.text_deltas_seen: list[str] = []
        self.texts_done: list[str] = []
        self.tool_calls_created: list[ToolCall] = []
        self.tool_calls_done: list[ToolCall] = []
        self.argument_deltas: dict[int, list[str]] = {}
        self.steps_done: list[RunStep] = []
        self.messages_done: list[Message] = []
        self.exceptions: list[Exception] = []

    def on_event(self, event: AssistantStreamEvent) -> None:
        self.events.append(event.event)

    def on_run_step_created(self, run_step: RunStep) -> None:
        self.calls.append(f"step_created:{run_step.type}")

    def on_run_step_done(self, run_step: RunStep) -> None:
        self.calls.append(f"step_done:{run_step.type}:{run_step.status}")
        self.steps_done.append(run_step)

    def on_message_created(self, message: Message) -> None:
        self.calls.append("message_created")

    def on_message_done(self, message: Message) -> None:
        self.calls.append(f"message_done:{message.status}")
        self.messages_done.append(message)

    def on_text_created(self, text: Text) -> None:
        self.calls.append("text_created")

    def on_text_delta(self, delta: TextDelta, snapshot: Text) -> None:
        self.calls.append("text_delta")
        assert delta.value is not None
        self.text_deltas_seen.append(delta.value)
        assert snapshot.value == "".join(self.text_deltas_seen)

    def on_text_done(self, text: Text) -> None:
        self.calls.append("text_done")
        self.texts_done.append(text.value)

    def on_tool_call_created(self, tool_call: ToolCall) -> None:
        self.calls.append("tool_call_created")
        self.tool_calls_created.append(tool_call)

    def on_tool_call_delta(self, delta: ToolCallDelta, snapshot: ToolCall) -> None:
        self.calls.append("tool_call_delta")
        if delta.type == "function" and delta.function and delta.function.arguments:
            self.argument_deltas.setdefault(delta.index, []).append(delta.function.arguments)

    def on_tool_call_done(self, tool_call: ToolCall) -> None:
        self.calls.append("tool_call_done")
        self.tool_calls_done.append(tool_call)

    def on_exception(self, exception: Exception) -> None:
        self.exceptions.append(exception)

    def on_end(self) -> None:
        self.calls.append("end")


def text_callbacks(deltas: int) -> list[str]:
    return [
        "step_created:message_creation",
        "message_created",
        "text_created",
        *["text_delta"] * deltas,
        "text_done",
        "message_done:completed",
        "step_done:message_creation:completed",
    ]


# --------------------------------------------------------------------------- the helpers


def test_event_handler_sees_every_event_in_order(
    sdk: openai.OpenAI, assistant_id: str, backend: str
) -> None:
    thread_id = new_thread(sdk, f"{tag()} [[tokens:5]]")
    handler = Recorder()
    with sdk.beta.threads.runs.stream(
        thread_id=thread_id, assistant_id=assistant_id, event_handler=handler
    ) as stream:
        assert stream is handler
        stream.until_done()

    assert handler.events == text_run(5)
    assert handler.calls == [*text_callbacks(5), "end"]
    assert handler.exceptions == []
    # One delta per backend chunk, joined into exactly what is stored.
    assert handler.text_deltas_seen == ["token1", " token2", " token3", " token4", " token5"]
    run = handler.get_final_run()
    assert run.status == "completed"
    assert stored_texts(sdk, thread_id, run.id) == [tokens(5)] == handler.texts_done
    final = handler.get_final_messages()
    assert [text_of(m) for m in final] == [tokens(5)]
    assert final[0].status == "completed"

    # The run, steps and usage stored are those the stream ended with.
    stored = sdk.beta.threads.runs.retrieve(run.id, thread_id=thread_id)
    assert stored.usage is not None and run.usage is not None
    assert stored.usage.model_dump() == run.usage.model_dump()
    assert stored.usage.completion_tokens == 5
    stored_steps = sdk.beta.threads.runs.steps.list(run.id, thread_id=thread_id).data
    streamed_steps = handler.get_final_run_steps()
    assert [s.model_dump() for s in stored_steps] == [s.model_dump() for s in handler.steps_done]
    assert [s.id for s in stored_steps] == [s.id for s in streamed_steps]


def test_text_deltas_and_final_helpers(sdk: openai.OpenAI, assistant_id: str) -> None:
    thread_id = new_thread(sdk, f"{tag()} [[tokens:7]]")
    with sdk.beta.threads.runs.stream(thread_id=thread_id, assistant_id=assistant_id) as stream:
        pieces = list(stream.text_deltas)
        run = stream.get_final_run()
        messages = stream.get_final_messages()
    assert len(pieces) == 7
    assert "".join(pieces) == tokens(7)
    assert run.status == "completed"
    assert [text_of(m) for m in messages] == [tokens(7)]
    assert stored_texts(sdk, thread_id, run.id) == [tokens(7)]


def test_create_and_run_stream(sdk: openai.OpenAI, assistant_id: str) -> None:
    word = tag()
    handler = Recorder()
    with sdk.beta.threads.create_and_run_stream(
        assistant_id=assistant_id,
        thread={"messages": [{"role": "user", "content": f"say {word}"}]},
        event_handler=handler,
    ) as stream:
        stream.until_done()
    answer = f"Echo: say {word}"
    deltas = len(answer.split())
    assert handler.events == ["thread.created", *text_run(deltas)]
    assert handler.calls == [*text_callbacks(deltas), "end"]
    run = handler.get_final_run()
    assert "".join(handler.text_deltas_seen) == answer
    assert stored_texts(sdk, run.thread_id, run.id) == [answer]


def test_tool_call_stream_then_submit_tool_outputs_stream(
    sdk: openai.OpenAI, assistant_id: str
) -> None:
    thread_id = new_thread(
        sdk,
        f'{tag()} [[call:get_weather {{"city": "Paris"}}]] [[call:get_time {{"tz": "CET"}}]]',
    )
    handler = Recorder()
    with sdk.beta.threads.runs.stream(
        thread_id=thread_id, assistant_id=assistant_id, event_handler=handler
    ) as stream:
        stream.until_done()

    assert handler.events[: len(HEAD) + 2] == [*HEAD, *TOOL_OPEN]
    deltas = handler.events[len(HEAD) + 2 : -1]
    assert deltas and set(deltas) == {"thread.run.step.delta"}
    assert handler.events[-1] == "thread.run.requires_action"
    run = handler.get_final_run()
    assert run.status == "requires_action"
    assert run.required_action is not None
    required = run.required_action.submit_tool_outputs.tool_calls
    assert [c.function.name for c in required] == ["get_weather", "get_time"]

    # Argument fragments join to the stored step's arguments, the ids are those stored (an
    # id repeated on later fragments would have been concatenated by the SDK).
    steps = sdk.beta.threads.runs.steps.list(run.id, thread_id=thread_id).data
    assert len(steps) == 1 and steps[0].step_details.type == "tool_calls"
    stored_calls = steps[0].step_details.tool_calls
    assert [c.id for c in stored_calls] == [c.id for c in required]
    snapshot = handler.get_final_run_steps()[0]
    assert snapshot.step_details.type == "tool_calls"
    for index, call in enumerate(stored_calls):
        assert call.type == "function"
        assert "".join(handler.argument_deltas[index]) == call.function.arguments
        streamed = snapshot.step_details.tool_calls[index]
        assert streamed.type == "function"
        assert streamed.id == call.id
        assert streamed.function.name == call.function.name
        assert streamed.function.arguments == call.function.arguments
    assert json.loads(stored_calls[0].function.arguments) == {"city": "Paris"}
    assert json.loads(stored_calls[1].function.arguments) == {"tz": "CET"}
    assert [c.id for c in handler.tool_calls_created] == [c.id for c in required]
    assert handler.calls[0] == "step_created:tool_calls"
    assert handler.calls.count("tool_call_created") == 2
    assert handler.calls[-1] == "end"

    # Submit, streaming the rest of the run.
    second = Recorder()
    with sdk.beta.threads.runs.submit_tool_outputs_stream(
        run_id=run.id,
        thread_id=thread_id,
        tool_outputs=[
            {"tool_call_id": required[0].id, "output": "sunny"},
            {"tool_call_id": required[1].id, "output": "noon"},
        ],
        event_handler=second,
    ) as stream:
        stream.until_done()
    answer = "Tool results: sunny; noon"
    assert second.events == [
        "thread.run.step.completed",
        "thread.run.queued",
        "thread.run.in_progress",
        *MESSAGE_OPEN,
        *["thread.message.delta"] * len(answer.split()),
        *MESSAGE_CLOSE,
        "thread.run.completed",
    ]
    final = second.get_final_run()
    assert final.status == "completed"
    assert "".join(second.text_deltas_seen) == answer
    assert stored_texts(sdk, thread_id, run.id) == [answer]
    stored = sdk.beta.threads.runs.retrieve(run.id, thread_id=thread_id)
    assert stored.usage is not None and final.usage is not None
    assert stored.usage.model_dump() == final.usage.model_dump()
    steps = sdk.beta.threads.runs.steps.list(run.id, thread_id=thread_id, order="asc").data
    assert [s.type for s in steps] == ["tool_calls", "message_creation"]
    assert steps[0].step_details.type == "tool_calls"
    outputs = [c.function.output for c in steps[0].step_details.tool_calls if c.type == "function"]
    assert outputs == ["sunny", "noon"]


def test_text_before_tool_calls_closes_the_message_first(
    sdk: openai.OpenAI, assistant_id: str
) -> None:
    """Claude often says something before calling tools: the message and its step close
    before the tool-call step opens, so the SDK sees one open step at a time."""
    thread_id = new_thread(
        sdk, f'{tag()} [[reply@0:Let me check.]] [[call:get_weather {{"city": "Rome"}}]]'
    )
    handler = Recorder()
    with sdk.beta.threads.runs.stream(
        thread_id=thread_id, assistant_id=assistant_id, event_handler=handler
    ) as stream:
        stream.until_done()
    fragments = handler.events.count("thread.run.step.delta")
    assert fragments >= 2
    assert handler.events == [
        *HEAD,
        *MESSAGE_OPEN,
        *["thread.message.delta"] * 3,
        *MESSAGE_CLOSE,
        *TOOL_OPEN,
        *["thread.run.step.delta"] * fragments,
        "thread.run.requires_action",
    ]
    assert handler.calls == [
        *text_callbacks(3),
        "step_created:tool_calls",
        "tool_call_created",
        *["tool_call_delta"] * (fragments - 1),
        "tool_call_done",
        "end",
    ]
    run = handler.get_final_run()
    assert stored_texts(sdk, thread_id, run.id) == ["Let me check."]
    steps = sdk.beta.threads.runs.steps.list(run.id, thread_id=thread_id, order="asc").data
    assert [(s.type, s.status) for s in steps] == [
        ("message_creation", "completed"),
        ("tool_calls", "in_progress"),
    ]
    assert steps[0].model_dump() == handler.steps_done[0].model_dump()
    assert (
        handler.messages_done[0].model_dump()
        == (
            sdk.beta.threads.messages.retrieve(handler.messages_done[0].id, thread_id=thread_id)
        ).model_dump()
    )


def test_raw_create_with_stream_true(sdk: openai.OpenAI, assistant_id: str) -> None:
    thread_id = new_thread(sdk, f"{tag()} [[tokens:4]]")
    stream = sdk.beta.threads.runs.create(
        thread_id=thread_id, assistant_id=assistant_id, stream=True
    )
    events = list(stream)
    assert [e.event for e in events] == text_run(4)
    texts = [
        part.text.value
        for e in events
        if e.event == "thread.message.delta"
        for part in e.data.delta.content or []
        if part.type == "text" and part.text and part.text.value
    ]
    indexes = {
        part.index
        for e in events
        if e.event == "thread.message.delta"
        for part in e.data.delta.content or []
    }
    assert indexes == {0}
    last = events[-1]
    assert last.event == "thread.run.completed"
    assert stored_texts(sdk, thread_id, last.data.id) == ["".join(texts)] == [tokens(4)]
    completed = [e for e in events if e.event == "thread.message.completed"]
    assert text_of(completed[0].data) == tokens(4)


def test_poll_and_stream_helpers_mix_on_one_thread(sdk: openai.OpenAI, assistant_id: str) -> None:
    thread_id = new_thread(sdk, f"{tag()} [[reply:one]]")
    polled = sdk.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=20
    )
    assert polled.status == "completed"

    sdk.beta.threads.messages.create(thread_id, role="user", content="[[reply:two]]")
    with sdk.beta.threads.runs.stream(thread_id=thread_id, assistant_id=assistant_id) as stream:
        assert "".join(stream.text_deltas) == "two"

    sdk.beta.threads.messages.create(thread_id, role="user", content="[[reply:three]]")
    raw = list(
        sdk.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant_id, stream=True)
    )
    assert raw[-1].event == "thread.run.completed"

    sdk.beta.threads.messages.create(thread_id, role="user", content="[[reply:four]]")
    last = sdk.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant_id)
    assert last.status == "queued"
    assert wait_run(sdk, thread_id, last.id).status == "completed"

    messages = sdk.beta.threads.messages.list(thread_id, order="asc").data
    answers = [text_of(m) for m in messages if m.role == "assistant"]
    assert answers == ["one", "two", "three", "four"]
    runs = sdk.beta.threads.runs.list(thread_id).data
    assert len(runs) == 4 and {r.status for r in runs} == {"completed"}


# --------------------------------------------------------------------------- the wire


def test_every_event_matches_the_spec(server: Deployment, assistant_id: str) -> None:
    """Raw HTTP: every event of text, tool-call, create-and-run, submit and failed streams
    validates against AssistantStreamEvent, and each stream ends with a literal done."""
    require_spec()
    with httpx.Client(base_url=f"{server.url}/v1", timeout=30) as http:
        seen: set[str] = set()

        def stream(path: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
            response = http.post(path, json={**body, "stream": True})
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("text/event-stream")
            names = validate_sse_text(response.text)
            assert names[-1] == "done"
            assert response.text.endswith("event: done\ndata: [DONE]\n\n")
            seen.update(names)
            return raw_events(response.text)

        thread = http.post("/threads", json={}).json()["id"]
        http.post(f"/threads/{thread}/messages", json={"role": "user", "content": "[[tokens:3]]"})
        text = stream(f"/threads/{thread}/runs", {"assistant_id": assistant_id})
        assert [e for e, _ in text] == [*text_run(3), "done"]

        created = stream(
            "/threads/runs",
            {
                "assistant_id": assistant_id,
                "thread": {
                    "messages": [
                        {"role": "user", "content": '[[call:get_weather {"city":"Oslo"}]]'}
                    ]
                },
            },
        )
        assert created[0][0] == "thread.created"
        run = created[-2][1]
        assert created[-2][0] == "thread.run.requires_action"
        # Tool-call fragments: id (and name) on the first fragment of a call only, type on
        # every fragment, arguments joining to the stored arguments.
        fragments = [
            call
            for event, data in created
            if event == "thread.run.step.delta"
            for call in data["delta"]["step_details"]["tool_calls"]
        ]
        assert all(f["type"] == "function" and f["index"] == 0 for f in fragments)
        assert [("id" in f, "name" in f["function"]) for f in fragments] == [(True, True)] + [
            (False, False)
        ] * (len(fragments) - 1)
        call = run["required_action"]["submit_tool_outputs"]["tool_calls"][0]
        assert fragments[0]["id"] == call["id"]
        assert (
            "".join(f["function"]["arguments"] for f in fragments) == call["function"]["arguments"]
        )

        submitted = stream(
            f"/threads/{run['thread_id']}/runs/{run['id']}/submit_tool_outputs",
            {"tool_outputs": [{"tool_call_id": call["id"], "output": "cold"}]},
        )
        assert submitted[-2][0] == "thread.run.completed"

        thread = http.post("/threads", json={}).json()["id"]
        http.post(
            f"/threads/{thread}/messages",
            json={"role": "user", "content": "[[drop]] [[tokens:9]]"},
        )
        failed = stream(f"/threads/{thread}/runs", {"assistant_id": assistant_id})
        assert failed[-2][0] == "thread.run.failed"

    assert {
        "thread.created",
        "thread.run.step.delta",
        "thread.message.delta",
        "thread.run.requires_action",
        "thread.run.failed",
        "thread.run.step.failed",
        "thread.message.incomplete",
    } <= seen


def test_non_streaming_requests_are_unchanged(sdk: openai.OpenAI, assistant_id: str) -> None:
    thread_id = new_thread(sdk, f"{tag()} [[tokens:2]]")
    run = sdk.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant_id)
    assert isinstance(run, Run) and run.status == "queued"
    assert wait_run(sdk, thread_id, run.id).status == "completed"
    run = sdk.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant_id, stream=False)
    assert isinstance(run, Run)
    assert wait_run(sdk, thread_id, run.id).status == "completed"


# --------------------------------------------------------------------------- going wrong


@pytest.mark.parametrize("failure", ["drop", "stream_error"])
def test_backend_failure_mid_stream_ends_with_run_failed(
    sdk: openai.OpenAI, assistant_id: str, failure: str
) -> None:
    thread_id = new_thread(sdk, f"{tag()} [[{failure}]] [[tokens:20]]")
    handler = Recorder()
    with sdk.beta.threads.runs.stream(
        thread_id=thread_id, assistant_id=assistant_id, event_handler=handler
    ) as stream:
        stream.until_done()
    partial = ["token1", " token2"]
    assert handler.events == [
        *HEAD,
        *MESSAGE_OPEN,
        *["thread.message.delta"] * len(partial),
        "thread.message.incomplete",
        "thread.run.step.failed",
        "thread.run.failed",
    ]
    assert handler.exceptions == []
    run = handler.get_final_run()
    assert run.status == "failed"
    assert run.last_error is not None and run.last_error.code == "server_error"
    # What was streamed is what is stored, marked incomplete.
    assert handler.text_deltas_seen == partial
    message = handler.messages_done[0]
    assert message.status == "incomplete"
    assert message.incomplete_details is not None
    assert message.incomplete_details.reason == "run_failed"
    stored = sdk.beta.threads.messages.retrieve(message.id, thread_id=thread_id)
    assert stored.status == "incomplete"
    assert text_of(stored) == "".join(partial) == text_of(message)
    step = sdk.beta.threads.runs.steps.list(run.id, thread_id=thread_id).data[0]
    assert step.status == "failed" and step.last_error is not None
    retrieved = sdk.beta.threads.runs.retrieve(run.id, thread_id=thread_id)
    assert retrieved.status == "failed"
    assert retrieved.last_error == run.last_error


def test_backend_failure_raw_stream_ends_with_failed_then_done(
    server: Deployment, assistant_id: str
) -> None:
    with httpx.Client(base_url=f"{server.url}/v1", timeout=30) as http:
        thread = http.post(
            "/threads", json={"messages": [{"role": "user", "content": "[[stream_error]] x"}]}
        ).json()["id"]
        response = http.post(
            f"/threads/{thread}/runs", json={"assistant_id": assistant_id, "stream": True}
        )
    events = raw_events(response.text)
    assert [e for e, _ in events[-2:]] == ["thread.run.failed", "done"]
    if spec_available():
        validate_sse_text(response.text)


def test_failure_during_tool_calls_after_text(sdk: openai.OpenAI) -> None:
    """OpenAI protocol only: the scripted Anthropic stream drops before its tool_use block."""
    assistant_id = sdk.beta.assistants.create(model=MODELS["openai"], tools=[WEATHER_TOOL]).id
    thread_id = new_thread(
        sdk, f'{tag()} [[reply@0:Checking.]] [[call:get_weather {{"city": "Rome"}}]] [[drop]]'
    )
    handler = Recorder()
    with sdk.beta.threads.runs.stream(
        thread_id=thread_id, assistant_id=assistant_id, event_handler=handler
    ) as stream:
        stream.until_done()
    assert handler.events == [
        *HEAD,
        *MESSAGE_OPEN,
        "thread.message.delta",
        *MESSAGE_CLOSE,
        *TOOL_OPEN,
        "thread.run.step.delta",
        "thread.run.step.failed",
        "thread.run.failed",
    ]
    run = handler.get_final_run()
    # The finished message stays completed; the tool-call step keeps what was streamed.
    assert stored_texts(sdk, thread_id, run.id) == ["Checking."]
    steps = sdk.beta.threads.runs.steps.list(run.id, thread_id=thread_id, order="asc").data
    assert [(s.type, s.status) for s in steps] == [
        ("message_creation", "completed"),
        ("tool_calls", "failed"),
    ]
    details = steps[1].step_details
    assert details.type == "tool_calls"
    streamed = handler.get_final_run_steps()[1].step_details
    assert streamed.type == "tool_calls"
    # (The SDK's snapshot also keeps the deltas' `index`.)
    assert [c.model_dump() for c in details.tool_calls] == [
        c.model_dump(exclude={"index"}) for c in streamed.tool_calls
    ]


def test_cancel_mid_stream_ends_with_run_cancelled(sdk: openai.OpenAI, assistant_id: str) -> None:
    thread_id = new_thread(sdk, f"{tag()} [[slow:50]] [[tokens:200]]")
    handler = Recorder()
    with sdk.beta.threads.runs.stream(
        thread_id=thread_id, assistant_id=assistant_id, event_handler=handler
    ) as stream:
        for event in stream:
            if event.event == "thread.message.delta" and len(handler.text_deltas_seen) == 3:
                assert stream.current_run is not None
                sdk.beta.threads.runs.cancel(stream.current_run.id, thread_id=thread_id)
    events = handler.events
    cancelling = events.index("thread.run.cancelling")
    assert set(events[len(HEAD) + len(MESSAGE_OPEN) : cancelling]) == {"thread.message.delta"}
    tail = [e for e in events[cancelling + 1 :] if e != "thread.message.delta"]
    assert tail == [
        "thread.message.incomplete",
        "thread.run.step.cancelled",
        "thread.run.cancelled",
    ]
    run = handler.get_final_run()
    assert run.status == "cancelled"
    message = handler.messages_done[0]
    assert message.incomplete_details is not None
    assert message.incomplete_details.reason == "run_cancelled"
    streamed = "".join(handler.text_deltas_seen)
    assert 3 <= len(handler.text_deltas_seen) < 200
    assert stored_texts(sdk, thread_id, run.id) == [streamed] == [text_of(message)]


def test_max_completion_tokens_ends_with_run_incomplete(
    sdk: openai.OpenAI, assistant_id: str
) -> None:
    thread_id = new_thread(sdk, f"{tag()} [[tokens:300]]")
    handler = Recorder()
    with sdk.beta.threads.runs.stream(
        thread_id=thread_id,
        assistant_id=assistant_id,
        max_completion_tokens=256,
        event_handler=handler,
    ) as stream:
        stream.until_done()
    assert handler.events == [
        *HEAD,
        *MESSAGE_OPEN,
        *["thread.message.delta"] * 256,
        "thread.message.incomplete",
        "thread.run.step.completed",
        "thread.run.incomplete",
    ]
    run = handler.get_final_run()
    assert run.incomplete_details is not None
    assert run.incomplete_details.reason == "max_completion_tokens"
    assert stored_texts(sdk, thread_id, run.id) == [tokens(256)]
    assert "".join(handler.text_deltas_seen) == tokens(256)
    stored = sdk.beta.threads.runs.retrieve(run.id, thread_id=thread_id)
    assert stored.usage is not None and run.usage is not None
    assert stored.usage.model_dump() == run.usage.model_dump()


def test_client_disconnect_does_not_stop_the_run(
    sdk: openai.OpenAI, server: Deployment, assistant_id: str
) -> None:
    thread_id = new_thread(sdk, f"{tag()} [[slow:100]] [[tokens:30]]")
    seen: list[str] = []
    run_id = None
    with (
        httpx.Client(base_url=f"{server.url}/v1", timeout=30) as http,
        http.stream(
            "POST",
            f"/threads/{thread_id}/runs",
            json={"assistant_id": assistant_id, "stream": True},
        ) as response,
    ):
        assert response.status_code == 200
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event is not None:
                seen.append(event)
                if spec_available():
                    validate_stream_event(event, line.removeprefix("data: "))
                if event == "thread.run.created":
                    run_id = json.loads(line.removeprefix("data: "))["id"]
                if seen.count("thread.message.delta") == 3:
                    break
        # Leaving both blocks closes the connection mid-stream.
    assert run_id is not None
    assert seen[-1] == "thread.message.delta"
    run = wait_run(sdk, thread_id, run_id)
    assert run.status == "completed"
    assert stored_texts(sdk, thread_id, run_id) == [tokens(30)]
    assert run.usage is not None and run.usage.completion_tokens == 30


def test_sdk_stream_closed_early_leaves_the_run_running(
    sdk: openai.OpenAI, assistant_id: str
) -> None:
    thread_id = new_thread(sdk, f"{tag()} [[slow:30]] [[tokens:15]]")
    with sdk.beta.threads.runs.stream(thread_id=thread_id, assistant_id=assistant_id) as stream:
        for event in stream:
            if event.event == "thread.message.delta":
                run = stream.current_run
                break
    assert run is not None
    assert wait_run(sdk, thread_id, run.id).status == "completed"
    assert stored_texts(sdk, thread_id, run.id) == [tokens(15)]


def test_many_streams_opened_and_closed(
    sdk: openai.OpenAI, server: Deployment, assistant_id: str
) -> None:
    """Leaks show as behaviour: after many streams abandoned at every stage, every run
    still completes, and the server answers new streams and polls as before."""
    count = 24
    threads = [new_thread(sdk, f"{tag()} [[slow:20]] [[tokens:10]]") for _ in range(count)]

    def abandon(index: int) -> str:
        thread_id = threads[index]
        with (
            httpx.Client(base_url=f"{server.url}/v1", timeout=30) as http,
            http.stream(
                "POST",
                f"/threads/{thread_id}/runs",
                json={"assistant_id": assistant_id, "stream": True},
            ) as response,
        ):
            lines = response.iter_lines()
            run_id = ""
            for line in lines:
                if line.startswith("data: ") and not run_id:
                    run_id = json.loads(line.removeprefix("data: "))["id"]
                    if index % 3 == 0:
                        break  # gone right after the first event
                if index % 3 == 1 and line == "event: thread.message.delta":
                    break  # gone mid-answer
            # index % 3 == 2 reads to the end
        return run_id

    with ThreadPoolExecutor(12) as pool:
        run_ids = list(pool.map(abandon, range(count)))
    assert all(run_ids)
    for thread_id, run_id in zip(threads, run_ids, strict=True):
        run = wait_run(sdk, thread_id, run_id)
        assert run.status == "completed"
        assert stored_texts(sdk, thread_id, run_id) == [tokens(10)]

    thread_id = new_thread(sdk, f"{tag()} [[tokens:3]]")
    started = time.monotonic()
    with sdk.beta.threads.runs.stream(thread_id=thread_id, assistant_id=assistant_id) as stream:
        assert "".join(stream.text_deltas) == tokens(3)
    assert time.monotonic() - started < 5
    assert sdk.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=20
    ).status in {"completed"}


# --------------------------------------------------------------------------- error event


@pytest.fixture
def quick(deploy: Any) -> Deployment:
    """A deployment that looks a quiet stream's run up after 0.3 s instead of 15 s, and
    expires runs after 3 s instead of 10 minutes."""
    deployment: Deployment = deploy(
        HAL9100_STREAM_CHECK_SECONDS="0.3", HAL9100_RUN_EXPIRY_SECONDS="3"
    )
    return deployment


def test_expiry_mid_stream_ends_with_run_expired(quick: Deployment, backend: str) -> None:
    sdk = streaming_client(quick)
    try:
        assistant_id = sdk.beta.assistants.create(model=MODELS[backend]).id
        thread_id = new_thread(sdk, f"{tag()} [[slow:100]] [[tokens:100]]")
        handler = Recorder()
        with sdk.beta.threads.runs.stream(
            thread_id=thread_id, assistant_id=assistant_id, event_handler=handler
        ) as stream:
            stream.until_done()
        deltas = len(handler.text_deltas_seen)
        assert 0 < deltas < 100
        assert handler.events == [
            *HEAD,
            *MESSAGE_OPEN,
            *["thread.message.delta"] * deltas,
            "thread.message.incomplete",
            "thread.run.step.expired",
            "thread.run.expired",
        ]
        run = handler.get_final_run()
        message = handler.messages_done[0]
        assert message.incomplete_details is not None
        assert message.incomplete_details.reason == "run_expired"
        assert stored_texts(sdk, thread_id, run.id) == ["".join(handler.text_deltas_seen)]
    finally:
        sdk.close()


def test_stream_of_a_deleted_run_ends_with_an_error_event(quick: Deployment, backend: str) -> None:
    """A failure of the stream, not of the run: its thread (and so the run) is deleted
    while it streams. The stream ends with `error` then `done`, not with a hang."""
    sdk = streaming_client(quick)
    try:
        assistant_id = sdk.beta.assistants.create(model=MODELS[backend]).id
        thread_id = new_thread(sdk, f"{tag()} [[slow:100]] [[tokens:8]]")
        with (
            httpx.Client(base_url=f"{quick.url}/v1", timeout=30) as http,
            http.stream(
                "POST",
                f"/threads/{thread_id}/runs",
                json={"assistant_id": assistant_id, "stream": True},
            ) as response,
        ):
            events: list[tuple[str, str]] = []
            event = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((event, line.removeprefix("data: ")))
                    if event == "thread.message.delta" and len(events) == 8:
                        assert sdk.beta.threads.delete(thread_id).deleted
        names = [name for name, _ in events]
        assert names[-2:] == ["error", "done"], names
        data = json.loads(events[-2][1])
        if spec_available():
            validate_stream_event("error", data)
        assert data["type"] == "server_error" and "no longer exists" in data["message"]
        assert data["error"] == {k: data[k] for k in ("message", "type", "param", "code")}

        # The SDK raises the error event as an APIError.
        thread_id = new_thread(sdk, f"{tag()} [[slow:100]] [[tokens:8]]")
        deleted = False
        with (
            pytest.raises(openai.APIError, match="no longer exists"),
            sdk.beta.threads.runs.stream(thread_id=thread_id, assistant_id=assistant_id) as stream,
        ):
            for item in stream:
                if item.event == "thread.message.delta" and not deleted:
                    deleted = sdk.beta.threads.delete(thread_id).deleted
        assert deleted
    finally:
        sdk.close()
