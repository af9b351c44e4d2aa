"""Runs through the official SDK: lifecycle and fields, the function-calling loop (with the
tool-call quirks of open models), run steps, token usage, and request validation."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from openai.types.beta.threads import Run

from deployments import Deployment
from runs_support import (
    POLL_MS,
    TERMINAL,
    TIME_TOOL,
    WEATHER_TOOL,
    marker,
    requests_with,
    usage_of,
)
from scripted_llm import ScriptedLLM

INCLUDE_CONTENT = "step_details.tool_calls[*].file_search.results[*].content"


def assistant(client: openai.OpenAI, **kwargs: Any) -> str:
    kwargs.setdefault("model", "scripted-model")
    return client.beta.assistants.create(**kwargs).id


def thread_with(client: openai.OpenAI, text: str) -> str:
    return client.beta.threads.create(messages=[{"role": "user", "content": text}]).id


def run_text(client: openai.OpenAI, text: str, **kwargs: Any) -> Run:
    """Ask `text` on a new thread with a tool-less assistant and poll the run to rest."""
    assistant_id = assistant(client)
    thread_id = thread_with(client, text)
    return client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS, **kwargs
    )


def wait_run(
    client: openai.OpenAI,
    thread_id: str,
    run_id: str,
    statuses: set[str],
    timeout: float = 30,
) -> Run:
    """Poll until the run is in one of `statuses`; fail (not hang) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        run = client.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
        if run.status in statuses:
            return run
        assert time.monotonic() < deadline, f"run stuck in {run.status!r}, wanted {statuses}"
        time.sleep(POLL_MS / 1000)


def answers(client: openai.OpenAI, thread_id: str) -> list[str]:
    """The texts of the thread's assistant messages, oldest first."""
    out: list[str] = []
    for message in client.beta.threads.messages.list(thread_id, order="asc"):
        if message.role == "assistant":
            out.append("".join(part.text.value for part in message.content if part.type == "text"))
    return out


def assert_all_terminal(client: openai.OpenAI, thread_id: str) -> None:
    """No run of the thread is left queued, in progress, waiting or cancelling."""
    for run in client.beta.threads.runs.list(thread_id):
        assert run.status in TERMINAL, f"run {run.id} left in {run.status!r}"
        assert run.expires_at is None
        assert run.required_action is None


def _tool_assistant(client: openai.OpenAI, **kwargs: Any) -> str:
    return assistant(client, tools=[WEATHER_TOOL, TIME_TOOL], **kwargs)


def _calls(run: Any) -> list[Any]:
    assert run.status == "requires_action", (run.status, run.last_error)
    assert run.required_action is not None
    assert run.required_action.type == "submit_tool_outputs"
    return list(run.required_action.submit_tool_outputs.tool_calls)


# --------------------------------------------------------------------------- lifecycle


def test_run_answers_and_records_everything(client: openai.OpenAI) -> None:
    assistant_id = assistant(client, instructions="You are terse.")
    thread_id = thread_with(client, "hello there")
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id,
        assistant_id=assistant_id,
        metadata={"k": "v"},
        poll_interval_ms=POLL_MS,
    )
    assert run.status == "completed", run.last_error
    assert run.id.startswith("run_") and run.object == "thread.run"
    assert run.thread_id == thread_id and run.assistant_id == assistant_id
    assert run.model == "scripted-model"
    assert run.instructions == "You are terse."
    assert run.metadata == {"k": "v"}
    assert run.tools == []
    assert run.started_at is not None and run.completed_at is not None
    assert run.created_at <= run.started_at <= run.completed_at
    assert run.failed_at is None and run.cancelled_at is None
    assert run.expires_at is None  # only unfinished runs expire
    assert run.last_error is None and run.required_action is None
    assert run.incomplete_details is None
    assert run.truncation_strategy is not None and run.truncation_strategy.type == "auto"
    assert run.tool_choice == "auto"
    assert run.parallel_tool_calls is True
    assert run.response_format == "auto"
    assert run.temperature == 1.0 and run.top_p == 1.0

    messages = list(client.beta.threads.messages.list(thread_id, order="asc"))
    assert [m.role for m in messages] == ["user", "assistant"]
    answer = messages[1]
    assert answer.run_id == run.id and answer.assistant_id == assistant_id
    assert answer.status == "completed" and answer.completed_at is not None
    assert answer.content[0].type == "text"
    assert answer.content[0].text.value == "Echo: hello there"

    steps = list(client.beta.threads.runs.steps.list(run.id, thread_id=thread_id))
    assert len(steps) == 1
    step = steps[0]
    assert step.id.startswith("step_") and step.object == "thread.run.step"
    assert step.type == "message_creation" and step.status == "completed"
    assert step.run_id == run.id and step.thread_id == thread_id
    assert step.assistant_id == assistant_id
    assert step.completed_at is not None
    assert step.step_details.type == "message_creation"
    assert step.step_details.message_creation.message_id == answer.id  # type: ignore[union-attr]
    # One model call: the step's usage is the run's.
    prompt, completion, total = usage_of(run)
    assert prompt > 0 and completion > 0 and total == prompt + completion
    assert usage_of(step) == usage_of(run)
    assert client.beta.threads.runs.steps.retrieve(step.id, thread_id=thread_id, run_id=run.id) == (
        step
    )


def test_new_run_is_queued_with_an_expiry(client: openai.OpenAI) -> None:
    assistant_id = assistant(client)
    thread_id = thread_with(client, "queue me")
    run = client.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant_id)
    # The API answers before any worker touched the run.
    assert run.status == "queued"
    assert run.started_at is None and run.completed_at is None
    assert run.usage is None
    assert run.expires_at is not None
    # OpenAI's ten minutes, the default.
    assert run.expires_at - run.created_at == 600
    done = client.beta.threads.runs.poll(run.id, thread_id=thread_id, poll_interval_ms=POLL_MS)
    assert done.status == "completed"
    assert answers(client, thread_id) == ["Echo: queue me"]


def test_create_thread_and_run(client: openai.OpenAI) -> None:
    assistant_id = assistant(client, instructions="Be kind.")
    run = client.beta.threads.create_and_run_poll(
        assistant_id=assistant_id,
        thread={
            "messages": [{"role": "user", "content": "new thread please"}],
            "metadata": {"origin": "test"},
        },
        metadata={"run": "1"},
        poll_interval_ms=POLL_MS,
    )
    assert run.status == "completed", run.last_error
    assert run.thread_id.startswith("thread_")
    assert run.metadata == {"run": "1"}
    thread = client.beta.threads.retrieve(run.thread_id)
    assert thread.metadata == {"origin": "test"}
    assert answers(client, run.thread_id) == ["Echo: new thread please"]
    runs = list(client.beta.threads.runs.list(run.thread_id))
    assert [r.id for r in runs] == [run.id]


def test_create_thread_and_run_without_thread(client: openai.OpenAI) -> None:
    run = client.beta.threads.create_and_run_poll(
        assistant_id=assistant(client), poll_interval_ms=POLL_MS
    )
    # Nothing to answer, but the run must still end, and end well.
    assert run.status == "completed", run.last_error


def test_run_options_override_the_assistant(client: openai.OpenAI) -> None:
    assistant_id = _tool_assistant(client, instructions="Assistant's.", temperature=0.4, top_p=0.8)
    thread_id = thread_with(client, "options")
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id,
        assistant_id=assistant_id,
        model="other-model",
        instructions="Run's.",
        tools=[TIME_TOOL],
        temperature=0.3,
        top_p=0.5,
        max_prompt_tokens=5000,
        max_completion_tokens=1000,
        truncation_strategy={"type": "last_messages", "last_messages": 4},
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False,
        response_format={"type": "json_object"},
        poll_interval_ms=POLL_MS,
    )
    assert run.status == "completed", run.last_error
    assert run.model == "other-model"
    assert run.instructions == "Run's."
    assert [t.function.name for t in run.tools if t.type == "function"] == ["get_time"]
    assert run.temperature == 0.3 and run.top_p == 0.5
    assert run.max_prompt_tokens == 5000 and run.max_completion_tokens == 1000
    assert run.truncation_strategy is not None
    assert run.truncation_strategy.type == "last_messages"
    assert run.truncation_strategy.last_messages == 4
    assert run.tool_choice is not None and not isinstance(run.tool_choice, str)
    assert run.tool_choice.type == "function"
    assert run.tool_choice.function is not None and run.tool_choice.function.name == "get_time"
    assert run.parallel_tool_calls is False
    assert not isinstance(run.response_format, str) and run.response_format is not None
    assert run.response_format.type == "json_object"
    # The assistant itself is untouched.
    kept = client.beta.assistants.retrieve(assistant_id)
    assert kept.instructions == "Assistant's." and kept.temperature == 0.4


def test_run_defaults_come_from_the_assistant(client: openai.OpenAI) -> None:
    assistant_id = _tool_assistant(
        client,
        model="assistant-model",
        instructions="From the assistant.",
        temperature=0.2,
        top_p=0.7,
        response_format={"type": "json_object"},
    )
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_with(client, "defaults"),
        assistant_id=assistant_id,
        poll_interval_ms=POLL_MS,
    )
    assert run.status == "completed", run.last_error
    assert run.model == "assistant-model"
    assert run.instructions == "From the assistant."
    assert [t.function.name for t in run.tools if t.type == "function"] == [
        "get_weather",
        "get_time",
    ]
    assert run.temperature == 0.2 and run.top_p == 0.7
    assert not isinstance(run.response_format, str) and run.response_format is not None
    assert run.response_format.type == "json_object"


def test_list_retrieve_and_modify_runs(client: openai.OpenAI) -> None:
    assistant_id = assistant(client)
    thread_id = thread_with(client, "first")
    ids = []
    for _ in range(3):
        run = client.beta.threads.runs.create_and_poll(
            thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
        )
        assert run.status == "completed"
        ids.append(run.id)

    listed = client.beta.threads.runs.list(thread_id)
    assert [r.id for r in listed] == ids[::-1]  # newest first by default
    ascending = client.beta.threads.runs.list(thread_id, order="asc")
    assert [r.id for r in ascending] == ids
    page = client.beta.threads.runs.list(thread_id, order="asc", limit=2)
    assert [r.id for r in page.data] == ids[:2] and page.has_more
    rest = client.beta.threads.runs.list(thread_id, order="asc", after=ids[1])
    assert [r.id for r in rest.data] == ids[2:] and not rest.has_more
    before = client.beta.threads.runs.list(thread_id, order="asc", before=ids[2])
    assert [r.id for r in before.data] == ids[:2]

    got = client.beta.threads.runs.retrieve(ids[0], thread_id=thread_id)
    assert got.id == ids[0] and got.status == "completed"
    updated = client.beta.threads.runs.update(
        ids[0], thread_id=thread_id, metadata={"reviewed": "yes"}
    )
    assert updated.metadata == {"reviewed": "yes"}
    assert client.beta.threads.runs.retrieve(ids[0], thread_id=thread_id).metadata == {
        "reviewed": "yes"
    }
    # Everything but the metadata is as it was.
    assert updated.model_dump(exclude={"metadata"}) == got.model_dump(exclude={"metadata"})
    cleared = client.beta.threads.runs.update(ids[0], thread_id=thread_id, metadata={})
    assert cleared.metadata == {}
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.runs.update(
            ids[0], thread_id=thread_id, metadata={f"k{i}": "v" for i in range(17)}
        )
    assert _error(err)["param"] == "metadata"


def test_include_is_accepted_and_checked(client: openai.OpenAI, http: httpx.Client) -> None:
    assistant_id = assistant(client)
    thread_id = thread_with(client, "include")
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id,
        assistant_id=assistant_id,
        include=[INCLUDE_CONTENT],
        poll_interval_ms=POLL_MS,
    )
    assert run.status == "completed"
    steps = client.beta.threads.runs.steps.list(
        run.id, thread_id=thread_id, include=[INCLUDE_CONTENT]
    )
    assert len(steps.data) == 1

    bad = http.post(
        f"/v1/threads/{thread_id}/runs",
        params={"include[]": "step_details.nope"},
        json={"assistant_id": assistant_id},
    )
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["param"] == "include[0]"
    bad_steps = http.get(
        f"/v1/threads/{thread_id}/runs/{run.id}/steps", params={"include[]": "nope"}
    )
    assert bad_steps.status_code == 400
    # The refused run was never created.
    assert [r.id for r in client.beta.threads.runs.list(thread_id)] == [run.id]


# --------------------------------------------------------------------------- one active run


def test_one_active_run_per_thread(client: openai.OpenAI) -> None:
    assistant_id = _tool_assistant(client)
    thread_id = thread_with(client, '[[call:get_weather {"city": "Oslo"}]]')
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    assert run.status == "requires_action"

    with pytest.raises(openai.BadRequestError) as second:
        client.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant_id)
    assert run.id in second.value.message
    with pytest.raises(openai.BadRequestError) as message:
        client.beta.threads.messages.create(thread_id, role="user", content="interrupting")
    assert run.id in message.value.message
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.create(
            thread_id=thread_id,
            assistant_id=assistant_id,
            additional_messages=[{"role": "user", "content": "sneaking in"}],
        )
    # Neither refusal left anything behind.
    assert [m.role for m in client.beta.threads.messages.list(thread_id)] == ["user"]
    assert [r.id for r in client.beta.threads.runs.list(thread_id)] == [run.id]

    cancelled = client.beta.threads.runs.cancel(run.id, thread_id=thread_id)
    assert cancelled.status == "cancelled"
    client.beta.threads.messages.create(thread_id, role="user", content="now I may")
    again = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    assert again.status == "completed"
    assert answers(client, thread_id) == ["Echo: now I may"]


def test_racing_run_creations_start_one_run(client: openai.OpenAI, server: Deployment) -> None:
    """Concurrent creates on one thread (spread over every API process) start exactly one
    run; the rest are refused, as are messages racing with them."""
    assistant_id = _tool_assistant(client)
    thread_id = thread_with(client, "[[call:get_time]]")

    def post(index: int) -> int:
        url = server.urls[index % len(server.urls)]
        with httpx.Client(base_url=url, timeout=30) as raw:
            if index % 4 == 3:
                # Still asking for a call: the run that wins waits for outputs whatever
                # got in before it.
                path = f"/v1/threads/{thread_id}/messages"
                body = {"role": "user", "content": "[[call:get_time]]"}
            else:
                path, body = f"/v1/threads/{thread_id}/runs", {"assistant_id": assistant_id}
            return raw.post(path, json=body).status_code

    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(post, range(12)))
    assert set(statuses) <= {200, 400}, statuses
    runs = list(client.beta.threads.runs.list(thread_id))
    assert len(runs) == 1, statuses
    run_statuses = [code for i, code in enumerate(statuses) if i % 4 != 3]
    assert run_statuses.count(200) == 1, statuses
    # Messages got in only before the run did: none was added after it was created.
    for message in client.beta.threads.messages.list(thread_id):
        assert message.created_at <= runs[0].created_at
    client.beta.threads.runs.cancel(runs[0].id, thread_id=thread_id)
    assert wait_run(client, thread_id, runs[0].id, TERMINAL).status == "cancelled"


def test_runs_on_different_threads_are_independent(client: openai.OpenAI) -> None:
    assistant_id = _tool_assistant(client)
    waiting = client.beta.threads.runs.create_and_poll(
        thread_id=thread_with(client, "[[call:get_time]]"),
        assistant_id=assistant_id,
        poll_interval_ms=POLL_MS,
    )
    assert waiting.status == "requires_action"
    other = client.beta.threads.runs.create_and_poll(
        thread_id=thread_with(client, "independent"),
        assistant_id=assistant_id,
        poll_interval_ms=POLL_MS,
    )
    assert other.status == "completed"
    client.beta.threads.runs.cancel(waiting.id, thread_id=waiting.thread_id)


# --------------------------------------------------------------------------- tool calls


def test_tool_call_round_trip(client: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    mark = marker()
    assistant_id = _tool_assistant(client)
    thread_id = thread_with(client, f'{mark} [[call:get_weather {{"city": "Paris"}}]]')
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    calls = _calls(run)
    assert len(calls) == 1
    call = calls[0]
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    # A waiting run is not finished: no usage yet, still expiring, nothing completed.
    assert run.usage is None and run.expires_at is not None
    assert run.completed_at is None and run.started_at is not None

    steps = list(client.beta.threads.runs.steps.list(run.id, thread_id=thread_id))
    assert [(s.type, s.status) for s in steps] == [("tool_calls", "in_progress")]
    details = steps[0].step_details
    assert details.type == "tool_calls"
    assert [c.id for c in details.tool_calls] == [call.id]
    assert details.tool_calls[0].function.output is None  # type: ignore[union-attr]

    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread_id,
        tool_outputs=[{"tool_call_id": call.id, "output": "18C and sunny"}],
        poll_interval_ms=POLL_MS,
    )
    assert done.status == "completed", done.last_error
    assert done.required_action is None
    assert answers(client, thread_id) == ["Tool results: 18C and sunny"]

    steps = list(client.beta.threads.runs.steps.list(run.id, thread_id=thread_id, order="asc"))
    assert [(s.type, s.status) for s in steps] == [
        ("tool_calls", "completed"),
        ("message_creation", "completed"),
    ]
    tool_call = steps[0].step_details.tool_calls[0]  # type: ignore[union-attr]
    assert tool_call.id == call.id and tool_call.type == "function"
    assert tool_call.function.name == "get_weather"
    assert json.loads(tool_call.function.arguments) == {"city": "Paris"}
    assert tool_call.function.output == "18C and sunny"
    assert steps[0].completed_at is not None

    # Usage: the run's is the sum of its two model calls, one per step.
    step_usages = [usage_of(s) for s in steps]
    assert usage_of(done) == tuple(sum(u[i] for u in step_usages) for i in range(3))

    # The model saw its own call and the output, tied by the id the client answered.
    first, second = requests_with(scripted_llm, mark)
    assert [m["role"] for m in first["messages"]] == ["user"]
    assert first["tools"][0]["function"]["name"] == "get_weather"
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "tool"]
    assert second["messages"][1]["tool_calls"][0]["id"] == call.id
    assert second["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert second["messages"][2] == {
        "role": "tool",
        "tool_call_id": call.id,
        "content": "18C and sunny",
    }


def test_parallel_tool_calls(client: openai.OpenAI) -> None:
    assistant_id = _tool_assistant(client)
    thread_id = thread_with(
        client, '[[call:get_weather {"city": "Rome"}]] [[call:get_time {"tz": "CET"}]]'
    )
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    calls = _calls(run)
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert len({c.id for c in calls}) == 2
    # Outputs in another order than the calls: matched by id, not position.
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread_id,
        tool_outputs=[
            {"tool_call_id": calls[1].id, "output": "noon"},
            {"tool_call_id": calls[0].id, "output": "rainy"},
        ],
        poll_interval_ms=POLL_MS,
    )
    assert done.status == "completed", done.last_error
    assert answers(client, thread_id) == ["Tool results: rainy; noon"]
    step = client.beta.threads.runs.steps.list(run.id, thread_id=thread_id, order="asc").data[0]
    outputs = {c.id: c.function.output for c in step.step_details.tool_calls}  # type: ignore[union-attr]
    assert outputs == {calls[0].id: "rainy", calls[1].id: "noon"}


def test_text_before_tool_calls_is_kept(client: openai.OpenAI) -> None:
    assistant_id = _tool_assistant(client)
    thread_id = thread_with(client, "[[reply@0:Let me check.]] [[call:get_time]]")
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    calls = _calls(run)
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread_id,
        tool_outputs=[{"tool_call_id": calls[0].id, "output": "9am"}],
        poll_interval_ms=POLL_MS,
    )
    assert done.status == "completed"
    assert answers(client, thread_id) == ["Let me check.", "Tool results: 9am"]
    kinds = [
        s.type
        for s in client.beta.threads.runs.steps.list(run.id, thread_id=thread_id, order="asc")
    ]
    assert kinds.count("message_creation") == 2 and kinds.count("tool_calls") == 1


def test_multi_round_tool_loop(client: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    mark = marker()
    assistant_id = _tool_assistant(client)
    thread_id = thread_with(client, f'{mark} [[call:get_weather {{"city": "Lima"}}]] [[rounds:3]]')
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    seen: list[str] = []
    for round_ in range(3):
        calls = _calls(run)
        assert len(calls) == 1 and calls[0].function.name == "get_weather"
        assert calls[0].id not in seen
        seen.append(calls[0].id)
        run = client.beta.threads.runs.submit_tool_outputs_and_poll(
            run_id=run.id,
            thread_id=thread_id,
            tool_outputs=[{"tool_call_id": calls[0].id, "output": f"out{round_}"}],
            poll_interval_ms=POLL_MS,
        )
    assert run.status == "completed", run.last_error
    assert answers(client, thread_id) == ["Tool results: out2"]

    steps = list(client.beta.threads.runs.steps.list(run.id, thread_id=thread_id, order="asc"))
    assert [s.type for s in steps] == ["tool_calls"] * 3 + ["message_creation"]
    assert all(s.status == "completed" for s in steps)
    assert [s.step_details.tool_calls[0].id for s in steps[:3]] == seen  # type: ignore[union-attr]
    assert [s.step_details.tool_calls[0].function.output for s in steps[:3]] == [  # type: ignore[union-attr]
        "out0",
        "out1",
        "out2",
    ]
    assert usage_of(run)[0] == sum(usage_of(s)[0] for s in steps)
    assert usage_of(run)[1] == sum(usage_of(s)[1] for s in steps)

    # The last request carries every round, each call followed by its own output.
    requests = requests_with(scripted_llm, mark)
    assert len(requests) == 4
    last = requests[-1]["messages"]
    assert [m["role"] for m in last] == ["user"] + ["assistant", "tool"] * 3
    for i in range(3):
        assert last[1 + 2 * i]["tool_calls"][0]["id"] == seen[i]
        assert last[2 + 2 * i]["tool_call_id"] == seen[i]
        assert last[2 + 2 * i]["content"] == f"out{i}"


QUIRKS = [
    "same_id",
    "no_id",
    "repeat_id",
    "no_index",
    "same_id,no_index",
    "no_id,no_index",
    "repeat_id,same_id",
    "repeat_id,no_index",
    "no_usage",
    "no_finish",
    "same_id,no_usage,no_finish",
]


@pytest.mark.parametrize("quirks", QUIRKS)
def test_parallel_calls_from_quirky_servers_come_out_distinct(
    client: openai.OpenAI, scripted_llm: ScriptedLLM, quirks: str
) -> None:
    mark = marker()
    assistant_id = _tool_assistant(client)
    thread_id = thread_with(
        client,
        f'{mark} [[quirk:{quirks}]] [[call:get_weather {{"city": "Paris", "unit": "C"}}]] '
        '[[call:get_time {"tz": "Europe/Paris"}]] [[call:get_weather {"city": "Tokyo"}]] '
        "[[rounds:2]]",
    )
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    all_ids: list[str] = []
    for round_ in range(2):
        calls = _calls(run)
        assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
            ("get_weather", {"city": "Paris", "unit": "C"}),
            ("get_time", {"tz": "Europe/Paris"}),
            ("get_weather", {"city": "Tokyo"}),
        ]
        ids = [c.id for c in calls]
        assert len(set(ids)) == 3, ids
        assert not set(ids) & set(all_ids), "ids must be unique across rounds too"
        all_ids += ids
        run = client.beta.threads.runs.submit_tool_outputs_and_poll(
            run_id=run.id,
            thread_id=thread_id,
            tool_outputs=[
                {"tool_call_id": call_id, "output": f"r{round_}c{i}"}
                for i, call_id in enumerate(ids)
            ],
            poll_interval_ms=POLL_MS,
        )
    assert run.status == "completed", run.last_error
    assert answers(client, thread_id) == ["Tool results: r1c0; r1c1; r1c2"]
    prompt, completion, total = usage_of(run)
    assert prompt > 0 and completion > 0 and total == prompt + completion

    last = requests_with(scripted_llm, mark)[-1]["messages"]
    sent_ids = [c["id"] for m in last if m["role"] == "assistant" for c in m["tool_calls"]]
    answered = [m["tool_call_id"] for m in last if m["role"] == "tool"]
    assert sent_ids == all_ids and answered == all_ids

    steps = list(client.beta.threads.runs.steps.list(run.id, thread_id=thread_id, order="asc"))
    assert [s.type for s in steps] == ["tool_calls", "tool_calls", "message_creation"]
    for step in steps:
        assert step.status == "completed"
        prompt, completion, total = usage_of(step)
        assert prompt > 0 and completion > 0


@pytest.mark.parametrize("quirks", QUIRKS)
def test_identical_parallel_calls_stay_apart(client: openai.OpenAI, quirks: str) -> None:
    """Two calls with the same name and arguments: only the stream's structure tells them
    apart, and neither may swallow the other."""
    assistant_id = _tool_assistant(client)
    thread_id = thread_with(
        client,
        f'[[quirk:{quirks}]] [[call:get_time {{"tz": "UTC"}}]] [[call:get_time {{"tz": "UTC"}}]]',
    )
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    calls = _calls(run)
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_time", {"tz": "UTC"}),
        ("get_time", {"tz": "UTC"}),
    ]
    assert calls[0].id != calls[1].id
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread_id,
        tool_outputs=[
            {"tool_call_id": calls[0].id, "output": "first"},
            {"tool_call_id": calls[1].id, "output": "second"},
        ],
        poll_interval_ms=POLL_MS,
    )
    assert done.status == "completed", done.last_error
    assert answers(client, thread_id) == ["Tool results: first; second"]


def test_text_answer_without_finish_reason(client: openai.OpenAI) -> None:
    run = run_text(client, "[[quirk:no_finish,no_usage]] plain words")
    assert run.status == "completed", run.last_error
    assert answers(client, run.thread_id) == ["Echo: plain words"]
    prompt, completion, _ = usage_of(run)
    assert prompt > 0 and completion > 0


def test_legacy_function_call(client: openai.OpenAI) -> None:
    assistant_id = _tool_assistant(client)
    thread_id = thread_with(
        client, '[[quirk:legacy_function_call]] [[call:get_weather {"city": "Bern"}]]'
    )
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    calls = _calls(run)
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Bern"})
    ]
    assert calls[0].id.startswith("call_")
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread_id,
        tool_outputs=[{"tool_call_id": calls[0].id, "output": "snow"}],
        poll_interval_ms=POLL_MS,
    )
    assert done.status == "completed", done.last_error
    assert answers(client, thread_id) == ["Tool results: snow"]


def test_broken_json_arguments_reach_the_client_repaired(client: openai.OpenAI) -> None:
    # Issue 10: a call whose arguments are not JSON is never handed to the client as it came;
    # this one repairs unambiguously. (With HAL9100_TOOL_CALL_CORRECTIONS=0 it reaches the
    # client verbatim: tests/test_tool_loop.py.)
    assistant_id = _tool_assistant(client)
    thread_id = thread_with(client, "[[call:get_weather {city: Paris]]")
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    calls = _calls(run)
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    client.beta.threads.runs.cancel(run.id, thread_id=thread_id)


def test_tool_outputs_must_answer_every_call_exactly_once(client: openai.OpenAI) -> None:
    assistant_id = _tool_assistant(client)
    thread_id = thread_with(client, "[[call:get_weather]] [[call:get_time]]")
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    first, second = (c.id for c in _calls(run))
    submit = client.beta.threads.runs.submit_tool_outputs

    with pytest.raises(openai.BadRequestError) as missing:
        submit(run.id, thread_id=thread_id, tool_outputs=[{"tool_call_id": first, "output": "a"}])
    assert second in missing.value.message
    with pytest.raises(openai.BadRequestError) as duplicate:
        submit(
            run.id,
            thread_id=thread_id,
            tool_outputs=[
                {"tool_call_id": first, "output": "a"},
                {"tool_call_id": second, "output": "b"},
                {"tool_call_id": first, "output": "again"},
            ],
        )
    assert first in duplicate.value.message
    with pytest.raises(openai.BadRequestError) as unknown:
        submit(
            run.id,
            thread_id=thread_id,
            tool_outputs=[
                {"tool_call_id": first, "output": "a"},
                {"tool_call_id": second, "output": "b"},
                {"tool_call_id": "call_unknown", "output": "c"},
            ],
        )
    assert "call_unknown" in unknown.value.message
    with pytest.raises(openai.BadRequestError):
        submit(run.id, thread_id=thread_id, tool_outputs=[])

    # None of the refusals changed the run.
    still = client.beta.threads.runs.retrieve(run.id, thread_id=thread_id)
    assert still.status == "requires_action"
    assert [c.id for c in _calls(still)] == [first, second]

    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread_id,
        tool_outputs=[
            {"tool_call_id": first, "output": "a"},
            {"tool_call_id": second, "output": "b"},
        ],
        poll_interval_ms=POLL_MS,
    )
    assert done.status == "completed"
    assert answers(client, thread_id) == ["Tool results: a; b"]
    # A finished run takes no more outputs.
    with pytest.raises(openai.BadRequestError):
        submit(run.id, thread_id=thread_id, tool_outputs=[{"tool_call_id": first, "output": "a"}])


def test_old_call_ids_are_refused_in_the_next_round(client: openai.OpenAI) -> None:
    assistant_id = _tool_assistant(client)
    thread_id = thread_with(client, "[[call:get_time]] [[rounds:2]]")
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    old = _calls(run)[0].id
    run = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread_id,
        tool_outputs=[{"tool_call_id": old, "output": "1"}],
        poll_interval_ms=POLL_MS,
    )
    new = _calls(run)[0].id
    assert new != old
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=thread_id, tool_outputs=[{"tool_call_id": old, "output": "1"}]
        )
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread_id,
        tool_outputs=[{"tool_call_id": new, "output": "2"}],
        poll_interval_ms=POLL_MS,
    )
    assert done.status == "completed"


def test_cancel_a_run_waiting_for_tool_outputs(client: openai.OpenAI) -> None:
    assistant_id = _tool_assistant(client)
    thread_id = thread_with(client, "[[call:get_time]]")
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    assert run.status == "requires_action"
    cancelled = client.beta.threads.runs.cancel(run.id, thread_id=thread_id)
    assert cancelled.status == "cancelled"
    assert cancelled.cancelled_at is not None and cancelled.required_action is None
    steps = list(client.beta.threads.runs.steps.list(run.id, thread_id=thread_id))
    assert [(s.type, s.status) for s in steps] == [("tool_calls", "cancelled")]
    assert steps[0].cancelled_at is not None
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.cancel(run.id, thread_id=thread_id)
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.submit_tool_outputs(
            run.id,
            thread_id=thread_id,
            tool_outputs=[{"tool_call_id": _calls(run)[0].id, "output": "late"}],
        )
    assert_all_terminal(client, thread_id)


def test_cancel_succeeds_at_any_moment(client: openai.OpenAI) -> None:
    """A run that will stop for tool outputs is cancellable at every point of its life:
    queued, mid model call, at the moment it turns to requires_action, or waiting."""
    assistant_id = _tool_assistant(client)
    runs = []
    for delay_ms in range(0, 100, 5):
        thread_id = thread_with(client, "[[call:get_time]]")
        run = client.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant_id)
        time.sleep(delay_ms / 1000)
        cancelled = client.beta.threads.runs.cancel(run.id, thread_id=thread_id)
        assert cancelled.status in ("cancelling", "cancelled")
        runs.append(run)
    for run in runs:
        final = wait_run(client, run.thread_id, run.id, TERMINAL)
        assert final.status == "cancelled", (final.status, final.last_error)
        assert final.required_action is None and final.cancelled_at is not None
        for step in client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id):
            assert step.status == "cancelled"


def test_cancel_a_finished_run_is_refused(client: openai.OpenAI) -> None:
    run = run_text(client, "finished")
    assert run.status == "completed"
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.runs.cancel(run.id, thread_id=run.thread_id)
    assert "completed" in err.value.message
    assert client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id).status == "completed"


# --------------------------------------------------------------------------- token limits


def test_max_completion_tokens_makes_the_run_incomplete(client: openai.OpenAI) -> None:
    run = run_text(client, "[[tokens:400]]", max_completion_tokens=256)
    assert run.status == "incomplete", run.last_error
    assert run.incomplete_details is not None
    assert run.incomplete_details.reason == "max_completion_tokens"
    assert run.expires_at is None and run.required_action is None
    assert usage_of(run)[1] <= 256
    messages = [
        m for m in client.beta.threads.messages.list(run.thread_id) if m.role == "assistant"
    ]
    assert len(messages) == 1
    assert messages[0].status == "incomplete"
    assert messages[0].incomplete_details is not None
    text = messages[0].content[0].text.value  # type: ignore[union-attr]
    assert text.split() == [f"token{i}" for i in range(1, 257)]
    step = client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id).data[0]
    assert step.type == "message_creation" and step.status == "completed"


def test_max_completion_tokens_spans_the_whole_run(client: openai.OpenAI) -> None:
    """The budget is for the run, not each model call: after tool rounds that spent it,
    the run stops as incomplete rather than asking the model again."""
    assistant_id = _tool_assistant(client)
    # Round 0 spends 200 text chunks and the call's fragments; round 1 would answer 200
    # more but only the rest of the 256 remains.
    thread_id = thread_with(
        client, "[[tokens:200]] [[reply@0:" + " ".join(["w"] * 200) + "]] [[call:get_time]]"
    )
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id,
        assistant_id=assistant_id,
        max_completion_tokens=256,
        poll_interval_ms=POLL_MS,
    )
    calls = _calls(run)
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread_id,
        tool_outputs=[{"tool_call_id": calls[0].id, "output": "x"}],
        poll_interval_ms=POLL_MS,
    )
    assert done.status == "incomplete", done.last_error
    assert done.incomplete_details is not None
    assert done.incomplete_details.reason == "max_completion_tokens"
    assert usage_of(done)[1] <= 256


def test_max_prompt_tokens_makes_the_run_incomplete(client: openai.OpenAI) -> None:
    # One message longer than the whole prompt budget: nothing can be truncated away.
    run = run_text(client, " ".join(["lorem"] * 2000), max_prompt_tokens=256)
    assert run.status == "incomplete", run.last_error
    assert run.incomplete_details is not None
    assert run.incomplete_details.reason == "max_prompt_tokens"
    assert_all_terminal(client, run.thread_id)


def test_max_prompt_tokens_spans_the_whole_run(client: openai.OpenAI) -> None:
    """The prompt budget is for the run: a second model call that would overspend it is not
    made."""
    assistant_id = _tool_assistant(client)
    thread_id = thread_with(client, "[[call:get_time]] " + " ".join(["lorem"] * 150))
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id,
        assistant_id=assistant_id,
        max_prompt_tokens=256,
        poll_interval_ms=POLL_MS,
    )
    calls = _calls(run)
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread_id,
        tool_outputs=[{"tool_call_id": calls[0].id, "output": "x"}],
        poll_interval_ms=POLL_MS,
    )
    assert done.status == "incomplete", done.last_error
    assert done.incomplete_details is not None
    assert done.incomplete_details.reason == "max_prompt_tokens"
    assert usage_of(done)[0] <= 256
    assert answers(client, thread_id) == []


def test_usage_accumulates_over_model_calls(client: openai.OpenAI) -> None:
    assistant_id = _tool_assistant(client)
    thread_id = thread_with(client, "[[call:get_time]]")
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    calls = _calls(run)
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread_id,
        tool_outputs=[{"tool_call_id": calls[0].id, "output": "one two three"}],
        poll_interval_ms=POLL_MS,
    )
    steps = list(client.beta.threads.runs.steps.list(run.id, thread_id=thread_id, order="asc"))
    tool_usage, message_usage = usage_of(steps[0]), usage_of(steps[1])
    # The scripted model counts prompt words: the second call saw the tool output too.
    assert message_usage[0] > tool_usage[0]
    # "Tool results: one two three" is five words, one chunk each.
    assert message_usage[1] == 5
    assert usage_of(done) == tuple(a + b for a, b in zip(tool_usage, message_usage, strict=True))


# --------------------------------------------------------------------------- steps


def test_step_list_pagination_and_retrieve(client: openai.OpenAI) -> None:
    assistant_id = _tool_assistant(client)
    thread_id = thread_with(client, "[[call:get_time]] [[rounds:2]]")
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    while run.status == "requires_action":
        run = client.beta.threads.runs.submit_tool_outputs_and_poll(
            run_id=run.id,
            thread_id=thread_id,
            tool_outputs=[{"tool_call_id": c.id, "output": "t"} for c in _calls(run)],
            poll_interval_ms=POLL_MS,
        )
    assert run.status == "completed"
    steps = client.beta.threads.runs.steps
    ascending = [s.id for s in steps.list(run.id, thread_id=thread_id, order="asc")]
    assert len(ascending) == 3
    assert [s.id for s in steps.list(run.id, thread_id=thread_id)] == ascending[::-1]
    page = steps.list(run.id, thread_id=thread_id, order="asc", limit=2)
    assert [s.id for s in page.data] == ascending[:2] and page.has_more
    rest = steps.list(run.id, thread_id=thread_id, order="asc", after=ascending[1])
    assert [s.id for s in rest.data] == ascending[2:] and not rest.has_more
    # The SDK's auto-pagination walks every page.
    assert [s.id for s in steps.list(run.id, thread_id=thread_id, order="asc", limit=1)] == (
        ascending
    )
    for step_id in ascending:
        got = steps.retrieve(step_id, thread_id=thread_id, run_id=run.id)
        assert got.id == step_id and got.run_id == run.id


# --------------------------------------------------------------------------- validation


def _error(exc: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, Any]:
    body = exc.value.body
    assert isinstance(body, dict)
    return body


def test_unknown_ids_are_404(client: openai.OpenAI) -> None:
    run = run_text(client, "exists")
    thread_id = run.thread_id
    runs = client.beta.threads.runs
    with pytest.raises(openai.NotFoundError):
        runs.create(thread_id="thread_nope", assistant_id=run.assistant_id)
    with pytest.raises(openai.NotFoundError) as err:
        runs.create(thread_id=thread_id, assistant_id="asst_nope")
    assert _error(err)["param"] == "assistant_id"
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.create_and_run(assistant_id="asst_nope")
    with pytest.raises(openai.NotFoundError):
        runs.retrieve("run_nope", thread_id=thread_id)
    with pytest.raises(openai.NotFoundError):
        runs.update("run_nope", thread_id=thread_id, metadata={})
    with pytest.raises(openai.NotFoundError):
        runs.cancel("run_nope", thread_id=thread_id)
    with pytest.raises(openai.NotFoundError):
        runs.submit_tool_outputs("run_nope", thread_id=thread_id, tool_outputs=[])
    with pytest.raises(openai.NotFoundError):
        runs.list("thread_nope")
    with pytest.raises(openai.NotFoundError):
        runs.steps.list("run_nope", thread_id=thread_id)
    with pytest.raises(openai.NotFoundError):
        runs.steps.retrieve("step_nope", thread_id=thread_id, run_id=run.id)
    # A run is only found under its own thread.
    other = client.beta.threads.create().id
    with pytest.raises(openai.NotFoundError):
        runs.retrieve(run.id, thread_id=other)
    with pytest.raises(openai.NotFoundError):
        runs.steps.list(run.id, thread_id=other)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_prompt_tokens": 100}, "max_prompt_tokens"),
        ({"max_completion_tokens": 10}, "max_completion_tokens"),
        ({"truncation_strategy": {"type": "last_messages", "last_messages": 0}}, None),
        ({"truncation_strategy": {"type": "first_messages"}}, None),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"response_format": {"type": "yaml"}}, None),
        ({"tools": [{"type": "function"}]}, None),
        ({"metadata": {"k": "v" * 600}}, None),
        ({"additional_messages": [{"role": "system", "content": "x"}]}, None),
        ({"model": ""}, "model"),
        ({"unknown_field": 1}, None),
    ],
)
def test_invalid_run_requests_are_400(
    client: openai.OpenAI, http: httpx.Client, body: dict[str, Any], param: str | None
) -> None:
    assistant_id = assistant(client, tools=[WEATHER_TOOL])
    thread_id = client.beta.threads.create().id
    answer = http.post(f"/v1/threads/{thread_id}/runs", json={"assistant_id": assistant_id, **body})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    if param is not None:
        assert error["param"] is not None and error["param"].startswith(param)
    # Nothing was created.
    assert list(client.beta.threads.runs.list(thread_id)) == []
    # (`additional_messages` is unknown to create-thread-and-run: refused as well.)
    both = http.post("/v1/threads/runs", json={"assistant_id": assistant_id, **body})
    assert both.status_code == 400, both.text


def test_missing_assistant_id_is_400(http: httpx.Client) -> None:
    thread = http.post("/v1/threads", json={}).json()
    answer = http.post(f"/v1/threads/{thread['id']}/runs", json={})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "assistant_id"


def test_submit_tool_outputs_body_is_checked(client: openai.OpenAI, http: httpx.Client) -> None:
    assistant_id = _tool_assistant(client)
    thread_id = thread_with(client, "[[call:get_time]]")
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    url = f"/v1/threads/{thread_id}/runs/{run.id}/submit_tool_outputs"
    assert http.post(url, json={}).status_code == 400
    assert http.post(url, json={"tool_outputs": [{"output": "x"}]}).status_code == 400
    assert http.post(url, json={"tool_outputs": "x"}).status_code == 400
    assert client.beta.threads.runs.retrieve(run.id, thread_id=thread_id).status == (
        "requires_action"
    )
    client.beta.threads.runs.cancel(run.id, thread_id=thread_id)
    assert_all_terminal(client, thread_id)
