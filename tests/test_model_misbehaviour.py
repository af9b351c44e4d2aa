"""Model servers that misbehave: text that is not valid Unicode, HTTP 200 answers that are no
completion, llama.cpp's doubled tool-call fragments, and a run whose execution keeps failing.
Whatever the server sends, the run ends, says why, and stores what its clients were shown."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import AssistantEventHandler
from openai.types.beta.threads import Run
from openai.types.beta.threads.runs import ToolCall

from conftest import DeployFactory, make_client
from deployments import Deployment, drop_bucket
from runs_support import POLL_MS, TERMINAL, TIME_TOOL, WEATHER_TOOL, marker, requests_with
from scripted_llm import ScriptedLLM

MODELS = {"openai": "scripted-model", "anthropic": "claude-3-5-sonnet-latest"}
# The default deployment retries three times (HAL9100_LLM_MAX_RETRIES) after the first try.
ATTEMPTS = 4
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


@pytest.fixture(params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> str:
    return MODELS[request.param]


def _thread(client: openai.OpenAI, content: str | list[dict[str, Any]]) -> str:
    return client.beta.threads.create(
        messages=[{"role": "user", "content": content}]  # type: ignore[list-item,typeddict-item]
    ).id


def _assistant(client: openai.OpenAI, model: str) -> str:
    return client.beta.assistants.create(model=model, tools=[WEATHER_TOOL, TIME_TOOL]).id


def _run(client: openai.OpenAI, model: str, text: str) -> Run:
    return client.beta.threads.runs.create_and_poll(
        thread_id=_thread(client, text),
        assistant_id=_assistant(client, model),
        poll_interval_ms=POLL_MS,
    )


def _answer(client: openai.OpenAI, run: Run) -> str:
    messages = client.beta.threads.messages.list(run.thread_id, order="asc", run_id=run.id).data
    assert len(messages) == 1, messages
    assert messages[0].status == "completed"
    return "".join(part.text.value for part in messages[0].content if part.type == "text")


def _assert_closed(client: openai.OpenAI, run: Run) -> None:
    for step in client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id):
        assert step.status != "in_progress", f"step {step.id} left in progress"
    for message in client.beta.threads.messages.list(run.thread_id):
        assert message.status != "in_progress", f"message {message.id} left in progress"
    # The thread takes new work.
    client.beta.threads.messages.create(run.thread_id, role="user", content="still there?")


class _Recorder(AssistantEventHandler):
    def __init__(self) -> None:
        super().__init__()
        self.deltas: list[str] = []
        self.calls: list[ToolCall] = []

    def on_text_delta(self, delta: Any, snapshot: Any) -> None:
        self.deltas.append(delta.value or "")

    def on_tool_call_done(self, tool_call: ToolCall) -> None:
        self.calls.append(tool_call)


def _stream(client: openai.OpenAI, model: str, text: str) -> tuple[Run, _Recorder]:
    recorder = _Recorder()
    with client.beta.threads.runs.stream(
        thread_id=_thread(client, text),
        assistant_id=_assistant(client, model),
        event_handler=recorder,
    ) as stream:
        stream.until_done()
    run = stream.get_final_run()
    return run, recorder


# --------------------------------------------------------------------------- not Unicode


# (directives, the text clients must see): lone surrogates and NUL become U+FFFD; an emoji a
# proxy cut between two chunks is joined again.
UNSTORABLE = pytest.mark.parametrize(
    ("directives", "expected"),
    [
        (
            r"[[escapes]] [[reply:lone \ud800 high, lone \udc00 low, nul \u0000 end]]",
            "lone \ufffd high, lone \ufffd low, nul \ufffd end",
        ),
        (
            r'[[chunks:["cut \ud83d", "\ude00 joined", " \ud83d", " \udc00x\ud83d"] ]]',
            "cut \U0001f600 joined \ufffd \ufffdx\ufffd",
        ),
    ],
    ids=["lone", "split"],
)


@UNSTORABLE
def test_unstorable_text_from_the_model_is_stored_as_replacement_characters(
    client: openai.OpenAI, model: str, directives: str, expected: str
) -> None:
    run = _run(client, model, directives)
    assert run.status == "completed", run.last_error
    assert _answer(client, run) == expected


@UNSTORABLE
def test_what_is_streamed_is_what_is_stored(
    client: openai.OpenAI, model: str, directives: str, expected: str
) -> None:
    run, recorder = _stream(client, model, directives)
    assert run.status == "completed", run.last_error
    assert "".join(recorder.deltas) == expected
    assert _answer(client, run) == expected


def test_unstorable_tool_call_names_and_arguments(client: openai.OpenAI, model: str) -> None:
    text = r'[[escapes]] [[call:get_\u0000time {"tz": "\ud800 \u0000"}]]'
    run, recorder = _stream(client, model, text)
    # No function has that name: since issue 10 the call goes back to the model as a tool
    # error instead of to the client, and the model answers. What was streamed of the call
    # is what the step stores.
    assert run.status == "completed", run.last_error
    # (The SDK reports a tool call done when its step completes and again when the run
    # does, as it does against OpenAI after any server-side tool call.)
    assert {c.id for c in recorder.calls} == {recorder.calls[0].id}
    streamed = recorder.calls[0]
    assert streamed.type == "function"
    assert streamed.function.name == "get_\ufffdtime"
    assert json.loads(streamed.function.arguments) == {"tz": "\ufffd \ufffd"}
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id, order="asc")
    (stored,) = [
        call
        for step in steps
        if step.step_details.type == "tool_calls"
        for call in step.step_details.tool_calls
    ]
    assert stored.type == "function"
    assert stored.function.name == streamed.function.name
    assert stored.function.arguments == streamed.function.arguments
    assert stored.function.output is not None
    assert 'no function named "get_\ufffdtime"' in stored.function.output


# --------------------------------------------------------------------------- garbage


@pytest.mark.parametrize(
    ("kind", "shown"),
    [("html", "502 Bad Gateway"), ("json", "scripted garbage"), ("sse", None)],
)
def test_an_answer_that_is_no_completion_fails_the_run(
    client: openai.OpenAI, scripted_llm: ScriptedLLM, model: str, kind: str, shown: str | None
) -> None:
    mark = marker()
    run = _run(client, model, f"{mark} [[garbage:{kind}]]")
    assert run.status == "failed", run.last_error
    assert run.last_error is not None
    assert run.last_error.code == "server_error"
    message = run.last_error.message
    assert len(message) < 500, message
    if shown is not None:
        # Says what came back.
        assert shown in message, message
    elif model == MODELS["openai"]:
        assert "scripted" in message and "garbage" in message, message
    # Garbage is a server failure: retried, then the run fails.
    assert len(requests_with(scripted_llm, mark)) == ATTEMPTS
    assert [m.role for m in client.beta.threads.messages.list(run.thread_id)] == ["user"]
    _assert_closed(client, run)


def test_a_server_that_ignores_stream_still_answers(client: openai.OpenAI) -> None:
    """Some servers answer a complete `chat.completion` even when asked to stream."""
    run = _run(client, MODELS["openai"], "[[quirk:ignore_stream]] whole")
    assert run.status == "completed", run.last_error
    assert _answer(client, run) == "Echo: whole"
    assert run.usage is not None and run.usage.completion_tokens == 2

    run = _run(client, MODELS["openai"], '[[quirk:ignore_stream]] [[call:get_weather {"a": 1}]]')
    assert run.status == "requires_action", run.last_error
    assert run.required_action is not None
    (call,) = run.required_action.submit_tool_outputs.tool_calls
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"a": 1}')


# --------------------------------------------------------------------------- llama.cpp


def test_tool_call_fragments_sent_twice_in_one_chunk_count_once(client: openai.OpenAI) -> None:
    """llama-cpp-python sends each fragment in `tool_calls` and in `function_call`."""
    text = '[[quirk:dup_function_call]] [[call:get_weather {"city": "Paris"}]]'
    run, recorder = _stream(client, MODELS["openai"], text)
    assert run.status == "requires_action", run.last_error
    assert run.required_action is not None
    (call,) = run.required_action.submit_tool_outputs.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    (streamed,) = recorder.calls
    assert streamed.function.arguments == call.function.arguments  # type: ignore[union-attr]


def test_a_turn_that_cannot_be_streamed_is_asked_for_whole(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    """llama-cpp-python's chatml-function-calling answers a streamed request offering tools
    with tool_choice auto by an empty event stream (it raises "Automatic streaming tool
    choice is not supported" after the 200). Found by the real-model tier."""
    mark = marker()
    text = f'[[quirk:empty_stream_auto]] [[call:get_weather {{"city": "Bern"}}]] {mark}'
    run, recorder = _stream(client, MODELS["openai"], text)
    assert run.status == "requires_action", run.last_error
    assert run.required_action is not None
    (call,) = run.required_action.submit_tool_outputs.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather",
        {"city": "Bern"},
    )
    assert recorder.calls and recorder.calls[0].id == call.id
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=run.thread_id,
        tool_outputs=[{"tool_call_id": call.id, "output": "fog"}],
        poll_interval_ms=POLL_MS,
    )
    assert done.status == "completed", done.last_error
    assert _answer(client, done) == "Tool results: fog"
    # Each turn: the streamed request, then the same one unstreamed.
    asked = requests_with(scripted_llm, mark)
    assert [bool(r.get("stream")) for r in asked] == [True, False, True, False]


# --------------------------------------------------------------------------- failing executions


@pytest.fixture(scope="module")
def fragile(deploy: DeployFactory) -> Deployment:
    """A deployment whose file storage this module breaks (the sweeper looks five times a
    second, so runs are re-dispatched quickly)."""
    return deploy(HAL9100_SWEEP_SECONDS="0.2", HAL9100_RUN_EXPIRY_SECONDS="120")


@pytest.fixture
def fragile_client(fragile: Deployment) -> Iterator[openai.OpenAI]:
    sdk = make_client(fragile.urls)
    yield sdk
    sdk.close()


def _break_storage(deployment: Deployment, file_id: str) -> str:
    """Make reading the file's bytes fail with an error that is not "no such object", as a
    storage outage does. Returns the error's name, as the run's last_error must say it."""
    if deployment.mode == "embedded":
        (blob,) = [p for p in deployment.api[0].data_dir.rglob(file_id) if p.is_file()]
        blob.unlink()
        blob.mkdir()  # reading it now raises IsADirectoryError
        return "IsADirectoryError"
    drop_bucket(deployment)
    return "NoSuchBucket"


def test_a_run_whose_execution_keeps_failing_fails_after_a_few_attempts(
    fragile: Deployment, fragile_client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    client = fragile_client
    image = client.files.create(file=("pixel.png", PNG, "image/png"), purpose="vision")
    mark = marker()
    thread_id = _thread(
        client,
        [
            {"type": "text", "text": f"{mark} what is this?"},
            {"type": "image_file", "image_file": {"file_id": image.id}},
        ],
    )
    error_name = _break_storage(fragile, image.id)
    run = client.beta.threads.runs.create(
        thread_id=thread_id, assistant_id=_assistant(client, MODELS["openai"])
    )
    deadline = time.monotonic() + 30
    while run.status not in TERMINAL:
        assert time.monotonic() < deadline, f"run stuck in {run.status!r}"
        time.sleep(POLL_MS / 1000)
        run = client.beta.threads.runs.retrieve(run.id, thread_id=thread_id)
    assert run.status == "failed", run.last_error
    assert run.failed_at is not None
    assert run.last_error is not None
    assert run.last_error.code == "server_error"
    assert error_name in run.last_error.message, run.last_error.message
    assert "3 times" in run.last_error.message, run.last_error.message
    # The model was never asked, let alone again and again.
    assert requests_with(scripted_llm, mark) == []
    _assert_closed(client, run)
