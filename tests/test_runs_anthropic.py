"""The core run flows on Claude (`claude-*` models go to Anthropic's Messages API, here the
scripted LLM's): answers, the function-calling loop, options, and failures."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import openai
import pytest
from openai.types.beta.threads import Run

from runs_support import (
    POLL_MS,
    TERMINAL,
    TIME_TOOL,
    WEATHER_TOOL,
    marker,
    requests_with,
    usage_of,
    wait_llm_requests,
)
from scripted_llm import ScriptedLLM

CLAUDE = "claude-3-5-sonnet-latest"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def _start(
    client: openai.OpenAI,
    content: str | list[dict[str, Any]],
    *,
    assistant: dict[str, Any] | None = None,
    **run: Any,
) -> Run:
    options = {"model": CLAUDE, "tools": [WEATHER_TOOL, TIME_TOOL], **(assistant or {})}
    assistant_id = client.beta.assistants.create(**options).id
    thread_id = client.beta.threads.create(
        messages=[{"role": "user", "content": content}]  # type: ignore[list-item,typeddict-item]
    ).id
    return client.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant_id, **run)


def _poll(client: openai.OpenAI, run: Run) -> Run:
    return client.beta.threads.runs.poll(run.id, thread_id=run.thread_id, poll_interval_ms=POLL_MS)


def _submit(client: openai.OpenAI, run: Run, outputs: list[str]) -> Run:
    assert run.status == "requires_action", (run.status, run.last_error)
    assert run.required_action is not None
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert len(calls) == len(outputs)
    return client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=run.thread_id,
        tool_outputs=[
            {"tool_call_id": call.id, "output": output}
            for call, output in zip(calls, outputs, strict=True)
        ],
        poll_interval_ms=POLL_MS,
    )


def _answers(client: openai.OpenAI, thread_id: str) -> list[str]:
    return [
        "".join(p.text.value for p in m.content if p.type == "text")
        for m in client.beta.threads.messages.list(thread_id, order="asc")
        if m.role == "assistant"
    ]


def _anthropic_requests(llm: ScriptedLLM, mark: str) -> list[dict[str, Any]]:
    recorded = [r for r in llm.recorded if mark in json.dumps(r.body.get("messages", []))]
    assert recorded, "the model was never called"
    # Claude models must go to the Messages API, not to chat completions.
    assert all(r.path.endswith("/v1/messages") for r in recorded), [r.path for r in recorded]
    return [r.body for r in recorded]


def _assert_closed(client: openai.OpenAI, run: Run) -> None:
    for each in client.beta.threads.runs.list(run.thread_id):
        assert each.status in TERMINAL and each.expires_at is None
    for step in client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id):
        assert step.status != "in_progress"
    for message in client.beta.threads.messages.list(run.thread_id):
        assert message.status != "in_progress"


# --------------------------------------------------------------------------- answers


def test_claude_answers(client: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    mark = marker()
    run = _poll(
        client,
        _start(client, f"{mark} hello Claude", assistant={"instructions": "You are a poet."}),
    )
    assert run.status == "completed", run.last_error
    assert run.model == CLAUDE
    assert _answers(client, run.thread_id) == [f"Echo: {mark} hello Claude"]
    (body,) = _anthropic_requests(scripted_llm, mark)
    assert body["model"] == CLAUDE
    assert body["system"] == "You are a poet."
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": f"{mark} hello Claude"}]}
    ]
    assert body["max_tokens"] > 0 and body["stream"] is True
    assert {t["name"] for t in body["tools"]} == {"get_weather", "get_time"}
    weather = next(t for t in body["tools"] if t["name"] == "get_weather")
    assert weather["input_schema"] == WEATHER_TOOL["function"]["parameters"]
    prompt, completion, total = usage_of(run)
    assert prompt > 0 and completion > 0 and total == prompt + completion
    step = client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id).data[0]
    assert step.type == "message_creation" and usage_of(step) == usage_of(run)


def test_claude_sees_the_conversation(client: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    mark = marker()
    assistant_id = client.beta.assistants.create(model=CLAUDE).id
    thread_id = client.beta.threads.create(
        messages=[
            {"role": "user", "content": f"{mark} one"},
            {"role": "assistant", "content": "two"},
            {"role": "user", "content": "three"},
        ]
    ).id
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id,
        assistant_id=assistant_id,
        additional_instructions="Be brief.",
        additional_messages=[{"role": "user", "content": "four"}],
        poll_interval_ms=POLL_MS,
    )
    assert run.status == "completed", run.last_error
    (body,) = _anthropic_requests(scripted_llm, mark)
    assert body["system"] == "Be brief."
    # Roles alternate on the Messages API: consecutive user messages share one turn.
    turns = [
        (m["role"], [b["text"] for b in m["content"] if b["type"] == "text"])
        for m in body["messages"]
    ]
    assert turns == [
        ("user", [f"{mark} one"]),
        ("assistant", ["two"]),
        ("user", ["three", "four"]),
    ]
    # The scripted Claude echoes the last user turn: both messages in it.
    assert _answers(client, thread_id) == ["two", "Echo: three four"]


def test_claude_options(client: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    mark = marker()
    run = _poll(
        client,
        _start(
            client,
            mark,
            temperature=0.5,
            top_p=0.9,
            max_completion_tokens=300,
            tool_choice={"type": "function", "function": {"name": "get_time"}},
            parallel_tool_calls=False,
            response_format={"type": "json_object"},
        ),
    )
    assert run.status == "completed", run.last_error
    (body,) = _anthropic_requests(scripted_llm, mark)
    assert body["temperature"] == 0.5 and body["top_p"] == 0.9
    assert body["max_tokens"] == 300
    assert body["tool_choice"] == {
        "type": "tool",
        "name": "get_time",
        "disable_parallel_tool_use": True,
    }
    # No response_format on the Messages API: JSON is asked for in the system prompt.
    assert "Respond with a single valid JSON object" in body["system"]
    (answer,) = _answers(client, run.thread_id)
    assert json.loads(answer) == {"echo": f"Echo: {mark}"}


@pytest.mark.parametrize(
    ("choice", "sent"),
    [("none", {"type": "none"}), ("required", {"type": "any"}), ("auto", {"type": "auto"})],
)
def test_claude_tool_choice(
    client: openai.OpenAI, scripted_llm: ScriptedLLM, choice: str, sent: dict[str, Any]
) -> None:
    mark = marker()
    run = _poll(client, _start(client, mark, tool_choice=choice))
    assert run.status == "completed"
    (body,) = _anthropic_requests(scripted_llm, mark)
    assert body["tool_choice"] == sent


def test_claude_model_rejecting_temperature_still_answers(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    # Another model name: the backend remembers, per model, that sampling knobs are refused.
    mark = marker()
    run = _poll(
        client,
        _start(
            client,
            f"{mark} [[quirk:reject_temperature]]",
            assistant={"model": "claude-sonnet-4-5"},
            temperature=0.3,
        ),
    )
    assert run.status == "completed", run.last_error
    first, second = _anthropic_requests(scripted_llm, mark)
    assert first["temperature"] == 0.3 and "temperature" not in second


def test_claude_images(client: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    mark = marker()
    image = client.files.create(file=("pixel.png", PNG, "image/png"), purpose="vision")
    run = _poll(
        client,
        _start(
            client,
            [
                {"type": "text", "text": f"{mark} compare"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "image_file", "image_file": {"file_id": image.id}},
            ],
        ),
    )
    assert run.status == "completed", run.last_error
    (body,) = _anthropic_requests(scripted_llm, mark)
    blocks = body["messages"][-1]["content"]
    assert blocks[0] == {"type": "text", "text": f"{mark} compare"}
    assert blocks[1] == {
        "type": "image",
        "source": {"type": "url", "url": "https://example.com/a.png"},
    }
    assert blocks[2]["type"] == "image"
    assert blocks[2]["source"]["type"] == "base64"
    assert blocks[2]["source"]["media_type"] == "image/png"
    assert base64.b64decode(blocks[2]["source"]["data"]) == PNG


def test_claude_max_completion_tokens(client: openai.OpenAI) -> None:
    run = _poll(client, _start(client, "[[tokens:300]]", max_completion_tokens=256))
    assert run.status == "incomplete", run.last_error
    assert run.incomplete_details is not None
    assert run.incomplete_details.reason == "max_completion_tokens"
    (answer,) = _answers(client, run.thread_id)
    assert len(answer.split()) == 256


# --------------------------------------------------------------------------- tool calls


def test_claude_tool_call_round_trip(client: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    mark = marker()
    run = _poll(client, _start(client, f'{mark} [[call:get_weather {{"city": "Paris"}}]]'))
    assert run.status == "requires_action", run.last_error
    assert run.required_action is not None
    (call,) = run.required_action.submit_tool_outputs.tool_calls
    # Our id, not Anthropic's toolu_...
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    done = _submit(client, run, ["18C and sunny"])
    assert done.status == "completed", done.last_error
    assert _answers(client, run.thread_id) == ["Tool results: 18C and sunny"]

    first, second = _anthropic_requests(scripted_llm, mark)
    assert len(first["messages"]) == 1
    user, assistant, result = second["messages"]
    assert user["role"] == "user"
    assert assistant["role"] == "assistant"
    (tool_use,) = [b for b in assistant["content"] if b["type"] == "tool_use"]
    assert tool_use["name"] == "get_weather" and tool_use["input"] == {"city": "Paris"}
    assert result["role"] == "user"
    assert result["content"] == [
        {"type": "tool_result", "tool_use_id": tool_use["id"], "content": "18C and sunny"}
    ]

    steps = list(client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id, order="asc"))
    assert [(s.type, s.status) for s in steps] == [
        ("tool_calls", "completed"),
        ("message_creation", "completed"),
    ]
    recorded = steps[0].step_details.tool_calls[0]  # type: ignore[union-attr]
    assert recorded.id == call.id and recorded.function.output == "18C and sunny"  # type: ignore[union-attr]
    assert usage_of(done)[0] == usage_of(steps[0])[0] + usage_of(steps[1])[0]


def test_claude_parallel_calls_and_rounds(client: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    mark = marker()
    run = _poll(
        client,
        _start(
            client,
            f'{mark} [[reply@0:Checking both.]] [[call:get_weather {{"city": "Rome"}}]] '
            '[[call:get_time {"tz": "CET"}]] [[rounds:2]]',
        ),
    )
    ids: list[str] = []
    for round_ in range(2):
        assert run.required_action is not None, (run.status, run.last_error)
        calls = run.required_action.submit_tool_outputs.tool_calls
        assert [c.function.name for c in calls] == ["get_weather", "get_time"]
        ids += [c.id for c in calls]
        run = _submit(client, run, [f"w{round_}", f"t{round_}"])
    assert run.status == "completed", run.last_error
    assert len(set(ids)) == 4
    # Round 0 said something before calling; round 1 only called.
    assert _answers(client, run.thread_id) == ["Checking both.", "Tool results: w1; t1"]
    last = _anthropic_requests(scripted_llm, mark)[-1]["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "user", "assistant", "user"]
    # Each round's results answer that round's calls, in one user turn.
    all_use_ids: list[str] = []
    for assistant_turn, results in ((last[1], last[2]), (last[3], last[4])):
        use_ids = [b["id"] for b in assistant_turn["content"] if b["type"] == "tool_use"]
        result_ids = [b["tool_use_id"] for b in results["content"] if b["type"] == "tool_result"]
        assert len(use_ids) == 2 and result_ids == use_ids
        all_use_ids += use_ids
    assert len(set(all_use_ids)) == 4
    # The text said before the first calls stays in the same assistant turn, first.
    assert last[1]["content"][0] == {"type": "text", "text": "Checking both."}


# --------------------------------------------------------------------------- failures


def test_claude_overloaded_is_retried(client: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    mark = marker()
    run = _poll(client, _start(client, f"{mark} [[fail_times:2:529]]"))
    assert run.status == "completed", run.last_error
    assert len(_anthropic_requests(scripted_llm, mark)) == 3


@pytest.mark.parametrize(
    ("status", "code"), [(500, "server_error"), (529, "server_error"), (429, "rate_limit_exceeded")]
)
def test_claude_persistent_errors_fail_the_run(
    client: openai.OpenAI, scripted_llm: ScriptedLLM, status: int, code: str
) -> None:
    mark = marker()
    run = _poll(client, _start(client, f"{mark} [[fail:{status}]]"))
    assert run.status == "failed"
    assert run.last_error is not None and run.last_error.code == code
    assert str(status) in run.last_error.message
    assert "scripted failure" in run.last_error.message
    assert len(_anthropic_requests(scripted_llm, mark)) == 4
    _assert_closed(client, run)


def test_claude_error_event_mid_stream(client: openai.OpenAI) -> None:
    run = _poll(client, _start(client, "[[stream_error]]"))
    assert run.status == "failed"
    assert run.last_error is not None and run.last_error.code == "server_error"
    assert "scripted stream error" in run.last_error.message
    _assert_closed(client, run)


def test_claude_dropped_connection(client: openai.OpenAI) -> None:
    run = _poll(client, _start(client, "[[drop]]"))
    assert run.status == "failed"
    assert run.last_error is not None and run.last_error.code == "server_error"
    _assert_closed(client, run)


def test_claude_cancel_stops_a_hanging_call(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    run = _start(client, f"{mark} [[hang]]")
    wait_llm_requests(scripted_llm, mark)
    started = time.monotonic()
    client.beta.threads.runs.cancel(run.id, thread_id=run.thread_id)
    deadline = started + 30
    while (
        current := client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)
    ).status not in TERMINAL:
        assert time.monotonic() < deadline, f"run stuck in {current.status}"
        time.sleep(POLL_MS / 1000)
    assert current.status == "cancelled"
    assert time.monotonic() - started < 10
    assert len(requests_with(scripted_llm, mark)) == 1
    _assert_closed(client, run)
