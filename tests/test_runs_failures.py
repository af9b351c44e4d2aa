"""Runs when things go wrong: backend errors with retries, broken streams, timeouts, cancel
of an in-flight model call, expiry, and no backend at all. Whatever happens, every run ends
in a terminal state with its steps and messages closed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.beta.threads import Run

from conftest import DeployFactory, make_client
from runs_support import (
    POLL_MS,
    TERMINAL,
    TIME_TOOL,
    marker,
    requests_with,
    wait_llm_requests,
)
from scripted_llm import ScriptedLLM

# The default deployment retries three times (HAL9100_LLM_MAX_RETRIES) after the first try.
ATTEMPTS = 4
# Generous bounds: "promptly" means seconds, not the minutes a stuck run would take.
PROMPT_SECONDS = 10


@pytest.fixture(scope="module")
def short(deploy: DeployFactory) -> Iterator[openai.OpenAI]:
    """Runs expire two seconds after creation; the sweeper looks five times a second."""
    deployment = deploy(HAL9100_RUN_EXPIRY_SECONDS="2", HAL9100_SWEEP_SECONDS="0.2")
    sdk = make_client(deployment.urls)
    yield sdk
    sdk.close()


@pytest.fixture(scope="module")
def degraded(deploy: DeployFactory, scripted_llm: ScriptedLLM) -> Iterator[openai.OpenAI]:
    """No default model server and no Anthropic: only `routed-*` models have a backend, and
    it gets half a second to answer, with one retry."""
    routes = [{"match": "routed-*", "backend": "openai", "url": scripted_llm.base_url}]
    deployment = deploy(
        MODEL_URL="",
        ANTHROPIC_API_KEY="",
        ANTHROPIC_BASE_URL="",
        HAL9100_MODEL_ROUTES=json.dumps(routes),
        HAL9100_LLM_TIMEOUT="0.5",
        HAL9100_LLM_MAX_RETRIES="1",
    )
    sdk = make_client(deployment.urls)
    yield sdk
    sdk.close()


def _start(
    client: openai.OpenAI, text: str, *, model: str = "scripted-model", **kwargs: Any
) -> Run:
    """Create a run on a new thread asking `text`; do not wait."""
    assistant_id = client.beta.assistants.create(model=model, tools=[TIME_TOOL]).id
    thread_id = client.beta.threads.create(messages=[{"role": "user", "content": text}]).id
    return client.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant_id, **kwargs)


def _poll(client: openai.OpenAI, run: Run) -> Run:
    return client.beta.threads.runs.poll(run.id, thread_id=run.thread_id, poll_interval_ms=POLL_MS)


def _wait(client: openai.OpenAI, run: Run, statuses: set[str], timeout: float = 30) -> Run:
    deadline = time.monotonic() + timeout
    while True:
        current = client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)
        if current.status in statuses:
            return current
        assert time.monotonic() < deadline, f"run stuck in {current.status!r}"
        time.sleep(POLL_MS / 1000)


def _assert_closed(client: openai.OpenAI, run: Run) -> None:
    """The run and everything it opened are finished; the thread takes new work."""
    runs = client.beta.threads.runs
    for each in runs.list(run.thread_id):
        assert each.status in TERMINAL, f"run {each.id} left in {each.status!r}"
        assert each.required_action is None and each.expires_at is None
    for step in runs.steps.list(run.id, thread_id=run.thread_id):
        assert step.status != "in_progress", f"step {step.id} left in progress"
    for message in client.beta.threads.messages.list(run.thread_id):
        assert message.status != "in_progress", f"message {message.id} left in progress"
    client.beta.threads.messages.create(run.thread_id, role="user", content="still there?")


def _failed(run: Run, code: str) -> str:
    assert run.status == "failed", (run.status, run.last_error)
    assert run.failed_at is not None
    assert run.completed_at is None and run.cancelled_at is None
    assert run.last_error is not None
    assert run.last_error.code == code, run.last_error
    return run.last_error.message


# --------------------------------------------------------------------------- retries


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
def test_transient_failures_are_retried(
    client: openai.OpenAI, scripted_llm: ScriptedLLM, status: int
) -> None:
    mark = marker()
    run = _poll(client, _start(client, f"{mark} [[fail_times:2:{status}]]"))
    assert run.status == "completed", run.last_error
    assert run.last_error is None
    # Two failures, then the answer.
    assert len(requests_with(scripted_llm, mark)) == 3
    messages = client.beta.threads.messages.list(run.thread_id, order="asc").data
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[1].content[0].text.value == f"Echo: {mark}"  # type: ignore[union-attr]


def test_retries_also_cover_later_model_calls(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    """After tool outputs, the run's next model call is retried just the same."""
    mark = marker()
    # fail_times counts per conversation: the call after the tool outputs is a new
    # conversation, so it fails once too.
    run = _poll(client, _start(client, f"{mark} [[call:get_time]] [[fail_times:1:503]]"))
    assert run.status == "requires_action", run.last_error
    assert len(requests_with(scripted_llm, mark)) == 2
    assert run.required_action is not None
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=run.thread_id,
        tool_outputs=[{"tool_call_id": call.id, "output": "noon"}],
        poll_interval_ms=POLL_MS,
    )
    assert done.status == "completed", done.last_error
    assert len(requests_with(scripted_llm, mark)) == 4
    steps = list(client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id))
    assert sorted(s.type for s in steps) == ["message_creation", "tool_calls"]


def test_persistent_server_error_fails_the_run(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    run = _poll(client, _start(client, f"{mark} [[fail:500]]"))
    message = _failed(run, "server_error")
    # Says what the backend answered.
    assert "500" in message and "scripted failure" in message
    assert len(requests_with(scripted_llm, mark)) == ATTEMPTS
    assert run.usage is not None  # a finished run reports usage, even if nothing was spent
    assert [m.role for m in client.beta.threads.messages.list(run.thread_id)] == ["user"]
    _assert_closed(client, run)


def test_persistent_rate_limit_fails_the_run(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    run = _poll(client, _start(client, f"{mark} [[fail:429]]"))
    message = _failed(run, "rate_limit_exceeded")
    assert "429" in message and "scripted failure" in message
    assert len(requests_with(scripted_llm, mark)) == ATTEMPTS
    _assert_closed(client, run)


@pytest.mark.parametrize("status", [400, 401, 404])
def test_client_errors_are_not_retried(
    client: openai.OpenAI, scripted_llm: ScriptedLLM, status: int
) -> None:
    mark = marker()
    run = _poll(client, _start(client, f"{mark} [[fail:{status}]]"))
    assert run.status == "failed", run.last_error
    assert run.last_error is not None
    assert str(status) in run.last_error.message
    assert "scripted failure" in run.last_error.message
    assert len(requests_with(scripted_llm, mark)) == 1
    _assert_closed(client, run)


def test_connection_dropped_mid_stream_fails_the_run(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    run = _poll(client, _start(client, f"{mark} [[drop]]"))
    message = _failed(run, "server_error")
    assert "connection" in message.lower() or "closed" in message.lower(), message
    # The partial answer is closed, never left looking live.
    for each in client.beta.threads.messages.list(run.thread_id):
        if each.role == "assistant":
            assert each.status == "incomplete"
            assert each.incomplete_details is not None
            assert each.incomplete_details.reason == "run_failed"
    for step in client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id):
        assert step.status == "failed" and step.failed_at is not None
        assert step.last_error is not None and step.last_error.code == "server_error"
    _assert_closed(client, run)


def test_connection_dropped_before_any_output_is_retried(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    """A stream that breaks before anything reached the run's clients is tried again, like
    any transient failure (here it always breaks, so the run fails in the end)."""
    mark = marker()
    run = _poll(client, _start(client, f"{mark} [[reply:]] [[drop]]"))
    message = _failed(run, "server_error")
    assert "connection" in message.lower() or "closed" in message.lower(), message
    assert len(requests_with(scripted_llm, mark)) == ATTEMPTS
    assert list(client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id)) == []
    _assert_closed(client, run)


def test_error_event_mid_stream_fails_the_run(client: openai.OpenAI) -> None:
    run = _poll(client, _start(client, "[[stream_error]]"))
    message = _failed(run, "server_error")
    assert "scripted stream error" in message
    _assert_closed(client, run)


def test_a_failed_run_leaves_the_thread_usable(client: openai.OpenAI) -> None:
    run = _poll(client, _start(client, "[[fail:500]]"))
    assert run.status == "failed"
    client.beta.threads.messages.create(run.thread_id, role="user", content="try again")
    again = client.beta.threads.runs.create_and_poll(
        thread_id=run.thread_id, assistant_id=run.assistant_id, poll_interval_ms=POLL_MS
    )
    assert again.status == "completed", again.last_error
    answers = [
        m.content[0].text.value  # type: ignore[union-attr]
        for m in client.beta.threads.messages.list(run.thread_id, order="asc")
        if m.role == "assistant"
    ]
    assert answers == ["Echo: try again"]


# --------------------------------------------------------------------------- cancel


def test_cancel_stops_a_hanging_model_call(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    run = _start(client, f"{mark} [[hang]]")
    wait_llm_requests(scripted_llm, mark)
    running = _wait(client, run, {"in_progress"})
    assert running.started_at is not None and running.expires_at is not None
    assert running.usage is None

    started = time.monotonic()
    cancelling = client.beta.threads.runs.cancel(run.id, thread_id=run.thread_id)
    assert cancelling.status in ("cancelling", "cancelled")
    cancelled = _wait(client, run, TERMINAL, timeout=PROMPT_SECONDS * 3)
    elapsed = time.monotonic() - started
    assert cancelled.status == "cancelled", cancelled.last_error
    assert elapsed < PROMPT_SECONDS, f"cancel took {elapsed:.1f}s"
    assert cancelled.cancelled_at is not None
    assert cancelled.failed_at is None and cancelled.completed_at is None
    assert cancelled.last_error is None
    # No retry or second attempt after the cancel.
    time.sleep(0.3)
    assert len(requests_with(scripted_llm, mark)) == 1
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.cancel(run.id, thread_id=run.thread_id)
    _assert_closed(client, run)


def test_cancel_mid_answer_closes_the_partial_message(client: openai.OpenAI) -> None:
    # 200 words at 50 ms each: ten seconds of streaming unless cancelled.
    run = _start(client, "[[tokens:200]] [[slow:50]]")
    deadline = time.monotonic() + 30
    while not [
        m for m in client.beta.threads.messages.list(run.thread_id) if m.role == "assistant"
    ]:
        assert time.monotonic() < deadline, "the answer never started"
        time.sleep(POLL_MS / 1000)
    partial = next(
        m for m in client.beta.threads.messages.list(run.thread_id) if m.role == "assistant"
    )
    assert partial.status == "in_progress"

    started = time.monotonic()
    client.beta.threads.runs.cancel(run.id, thread_id=run.thread_id)
    cancelled = _wait(client, run, TERMINAL, timeout=PROMPT_SECONDS * 3)
    assert cancelled.status == "cancelled"
    assert time.monotonic() - started < PROMPT_SECONDS

    message = client.beta.threads.messages.retrieve(partial.id, thread_id=run.thread_id)
    assert message.status == "incomplete"
    assert message.incomplete_details is not None
    assert message.incomplete_details.reason == "run_cancelled"
    steps = list(client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id))
    assert [(s.type, s.status) for s in steps] == [("message_creation", "cancelled")]
    assert steps[0].cancelled_at is not None
    _assert_closed(client, run)


def test_cancel_right_after_create(client: openai.OpenAI) -> None:
    """Cancelled before (or while) a worker picks it up: it still ends cancelled."""
    run = _start(client, "[[hang]]")
    client.beta.threads.runs.cancel(run.id, thread_id=run.thread_id)
    cancelled = _wait(client, run, TERMINAL, timeout=PROMPT_SECONDS * 3)
    assert cancelled.status == "cancelled"
    _assert_closed(client, run)


# --------------------------------------------------------------------------- expiry


def test_hanging_model_call_expires(short: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    mark = marker()
    run = _start(short, f"{mark} [[hang]]")
    assert run.expires_at is not None and run.expires_at - run.created_at == 2
    wait_llm_requests(scripted_llm, mark)
    expired = _wait(short, run, TERMINAL, timeout=30)
    assert expired.status == "expired", expired.last_error
    assert expired.failed_at is None and expired.cancelled_at is None
    assert expired.completed_at is None
    _assert_closed(short, run)


def test_run_waiting_for_tool_outputs_expires(short: openai.OpenAI) -> None:
    run = _poll(short, _start(short, "[[call:get_time]]"))
    assert run.status == "requires_action"
    assert run.required_action is not None
    call_id = run.required_action.submit_tool_outputs.tool_calls[0].id
    expired = _wait(short, run, TERMINAL, timeout=30)
    assert expired.status == "expired"
    assert expired.required_action is None
    steps = list(short.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id))
    assert [(s.type, s.status) for s in steps] == [("tool_calls", "expired")]
    assert steps[0].expired_at is not None
    # Too late for the outputs now.
    with pytest.raises(openai.BadRequestError):
        short.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=run.thread_id, tool_outputs=[{"tool_call_id": call_id, "output": "x"}]
        )
    _assert_closed(short, run)


def test_quick_runs_finish_before_expiry(short: openai.OpenAI) -> None:
    run = _poll(short, _start(short, "quick"))
    assert run.status == "completed", run.last_error


# --------------------------------------------------------------------------- misconfiguration


def test_no_backend_for_the_model_fails_cleanly(degraded: openai.OpenAI) -> None:
    """A server configuration problem, not the prompt's: says what to set."""
    run = _poll(degraded, _start(degraded, "anyone there?", model="unrouted-model"))
    message = _failed(run, "server_error")
    assert "unrouted-model" in message
    assert "MODEL_URL" in message and "HAL9100_MODEL_ROUTES" in message, message
    _assert_closed(degraded, run)


def test_no_backend_for_a_claude_model_fails_cleanly(degraded: openai.OpenAI) -> None:
    run = _poll(degraded, _start(degraded, "anyone there?", model="claude-3-5-sonnet-latest"))
    message = _failed(run, "server_error")
    assert "claude-3-5-sonnet-latest" in message
    assert "ANTHROPIC_API_KEY" in message and "MODEL_URL" in message, message
    _assert_closed(degraded, run)


def test_routed_model_works_without_a_default_backend(degraded: openai.OpenAI) -> None:
    run = _poll(degraded, _start(degraded, "routed", model="routed-model"))
    assert run.status == "completed", run.last_error


def test_model_timeout_is_retried_then_fails(
    degraded: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    run = _poll(degraded, _start(degraded, f"{mark} [[hang]]", model="routed-model"))
    message = _failed(run, "server_error")
    assert "timed out" in message, message
    # The first try and the one retry this deployment allows.
    assert len(requests_with(scripted_llm, mark)) == 2
    _assert_closed(degraded, run)
