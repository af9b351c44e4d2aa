"""code_interpreter through the official SDK, in both modes: the scripted model writes the
code, a real sandboxed kernel runs it, and the run's steps, messages, files and stream show
what OpenAI's do."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from conftest import DeployFactory, make_client
from deployments import Deployment
from openapi_contract import spec_available, validate_schema
from responses_support import check_events as check_response_events
from runs_support import POLL_MS, CollectEvents, marker, requests_with
from sandbox_support import sandbox_backend
from scripted_llm import ScriptedLLM


@pytest.fixture(scope="module")
def deployment(module_deployment: DeployFactory) -> Deployment:
    sandbox_backend()  # skips (or fails in CI) where no sandbox can be made
    return module_deployment(HAL9100_SANDBOX_POOL="1")


def _call(code: str, round_: int | None = None) -> str:
    where = f"@{round_}" if round_ is not None else ""
    return f"[[call{where}:code_interpreter {json.dumps({'code': code})}]]"


def _assistant(sdk: openai.OpenAI, **resources: Any) -> str:
    return sdk.beta.assistants.create(
        model="gpt-4o",
        tools=[{"type": "code_interpreter"}],
        tool_resources={"code_interpreter": resources} if resources else None,
    ).id


def _run(sdk: openai.OpenAI, thread_id: str, assistant_id: str) -> Any:
    run = sdk.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    assert run.status == "completed", run.last_error
    return run


def _code_calls(raw: httpx.Client, thread_id: str, run_id: str) -> list[dict[str, Any]]:
    answer = raw.get(
        f"/v1/threads/{thread_id}/runs/{run_id}/steps", params={"order": "asc", "limit": "100"}
    )
    assert answer.status_code == 200, answer.text
    calls = []
    for step in answer.json()["data"]:
        if spec_available():
            validate_schema(step, "RunStepObject")
        if step["type"] == "tool_calls":
            calls += step["step_details"]["tool_calls"]
    assert all(c["type"] == "code_interpreter" for c in calls)
    assert all(set(c) == {"id", "type", "code_interpreter"} for c in calls)
    return calls


def _answer(sdk: openai.OpenAI, thread_id: str, run_id: str) -> Any:
    (message,) = sdk.beta.threads.messages.list(thread_id=thread_id, run_id=run_id).data
    return message


def test_a_run_computes_with_code_and_answers(
    sdk: openai.OpenAI, raw: httpx.Client, scripted_llm: ScriptedLLM
) -> None:
    tag = marker()
    assistant_id = _assistant(sdk)
    thread = sdk.beta.threads.create(
        messages=[{"role": "user", "content": f"{tag} {_call('print(6 * 7)')} what is 6x7?"}]
    )
    run = _run(sdk, thread.id, assistant_id)
    (call,) = _code_calls(raw, thread.id, run.id)
    assert call["code_interpreter"] == {
        "input": "print(6 * 7)",
        "outputs": [{"type": "logs", "logs": "42\n"}],
    }
    first, second = requests_with(scripted_llm, tag)[-2:]
    (offered,) = [t for t in first["tools"] if t["function"]["name"] == "code_interpreter"]
    assert offered["function"]["parameters"]["required"] == ["code"]
    assert second["messages"][-1] == {
        "role": "tool",
        "tool_call_id": call["id"],
        "content": "42",
    }
    assert _answer(sdk, thread.id, run.id).content[0].text.value == "Tool results: 42"


def test_state_carries_over_between_runs_and_errors_are_logs(
    sdk: openai.OpenAI, raw: httpx.Client
) -> None:
    assistant_id = _assistant(sdk)
    thread = sdk.beta.threads.create(
        messages=[{"role": "user", "content": _call("secret = 21") + " remember"}]
    )
    _run(sdk, thread.id, assistant_id)
    sdk.beta.threads.messages.create(
        thread.id, role="user", content=_call("print(secret * 2)\n1 / 0") + " use it"
    )
    run = _run(sdk, thread.id, assistant_id)
    (call,) = _code_calls(raw, thread.id, run.id)
    (logs,) = call["code_interpreter"]["outputs"]
    assert logs["logs"].startswith("42\n")
    assert "ZeroDivisionError" in logs["logs"]


def test_an_attached_csv_is_read_and_listed_in_the_prompt(
    sdk: openai.OpenAI, raw: httpx.Client, scripted_llm: ScriptedLLM
) -> None:
    tag = marker()
    upload = sdk.files.create(
        file=("sales.csv", b"region,amount\nnorth,10\nsouth,32\n"), purpose="assistants"
    )
    given = sdk.files.create(file=("rates.txt", b"1.5"), purpose="assistants")
    assistant_id = _assistant(sdk, file_ids=[given.id])
    code = (
        "import pandas as pd\n"
        "print(pd.read_csv('/mnt/data/sales.csv')['amount'].sum(), open('/mnt/data/rates.txt').read())"
    )
    thread = sdk.beta.threads.create(
        messages=[
            {
                "role": "user",
                "content": f"{tag} {_call(code)} total?",
                "attachments": [{"file_id": upload.id, "tools": [{"type": "code_interpreter"}]}],
            }
        ]
    )
    run = _run(sdk, thread.id, assistant_id)
    (call,) = _code_calls(raw, thread.id, run.id)
    assert call["code_interpreter"]["outputs"] == [{"type": "logs", "logs": "42 1.5\n"}]
    system = requests_with(scripted_llm, tag)[0]["messages"][0]
    assert system["role"] == "system"
    assert "/mnt/data/sales.csv" in system["content"] and "/mnt/data/rates.txt" in system["content"]


def test_a_plot_comes_back_as_an_image(
    sdk: openai.OpenAI, raw: httpx.Client, scripted_llm: ScriptedLLM
) -> None:
    assistant_id = _assistant(sdk)
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"
    thread = sdk.beta.threads.create(messages=[{"role": "user", "content": _call(code) + " plot"}])
    run = _run(sdk, thread.id, assistant_id)
    (call,) = _code_calls(raw, thread.id, run.id)
    (image,) = call["code_interpreter"]["outputs"]
    assert image["type"] == "image"
    file_id = image["image"]["file_id"]
    stored = sdk.files.retrieve(file_id)
    assert stored.purpose == "assistants_output"
    assert sdk.files.content(file_id).read().startswith(b"\x89PNG")
    message = _answer(sdk, thread.id, run.id)
    assert [p.type for p in message.content] == ["image_file", "text"]
    assert message.content[0].image_file.file_id == file_id


def test_a_written_file_comes_back_with_a_file_path_annotation(
    sdk: openai.OpenAI, raw: httpx.Client
) -> None:
    assistant_id = _assistant(sdk)
    code = "open('/mnt/data/report.csv', 'w').write('a,b\\n1,2\\n')"
    reply = "[[reply@1:Here it is: [report](sandbox:/mnt/data/report.csv).]]"
    thread = sdk.beta.threads.create(
        messages=[{"role": "user", "content": f"{_call(code)} {reply} write it"}]
    )
    run = _run(sdk, thread.id, assistant_id)
    message = _answer(sdk, thread.id, run.id)
    text = message.content[0].text
    assert text.value == "Here it is: [report](sandbox:/mnt/data/report.csv)."
    (note,) = text.annotations
    assert note.type == "file_path"
    assert note.text == "sandbox:/mnt/data/report.csv"
    assert text.value[note.start_index : note.end_index] == note.text
    file_id = note.file_path.file_id
    assert sdk.files.content(file_id).read() == b"a,b\n1,2\n"
    assert sdk.files.retrieve(file_id).filename == "report.csv"
    assert [(a.file_id, [t.type for t in a.tools]) for a in message.attachments] == [
        (file_id, ["code_interpreter"])
    ]


def test_a_streamed_run_shows_the_code_and_outputs_as_deltas(
    sdk: openai.OpenAI, raw: httpx.Client
) -> None:
    assistant_id = _assistant(sdk)
    code = "for i in range(3):\n    print('line', i)"
    thread = sdk.beta.threads.create(messages=[{"role": "user", "content": _call(code) + " go"}])
    handler = CollectEvents()
    with sdk.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=assistant_id, event_handler=handler
    ) as stream:
        stream.until_done()
        run = stream.get_final_run()
    assert run.status == "completed"
    fragments = [
        call
        for e in handler.events
        if e.event == "thread.run.step.delta"
        for call in e.data.delta.step_details.tool_calls or []  # type: ignore[union-attr]
    ]
    assert fragments and all(f.type == "code_interpreter" for f in fragments)
    first = fragments[0].code_interpreter
    assert fragments[0].id and first is not None and first.input == ""
    inputs = "".join(f.code_interpreter.input or "" for f in fragments if f.code_interpreter)
    assert inputs == code
    outputs = [o for f in fragments if f.code_interpreter for o in f.code_interpreter.outputs or []]
    assert [(o.type, o.logs) for o in outputs] == [("logs", "line 0\nline 1\nline 2\n")]
    # Input deltas come before output deltas, then the step completes.
    kinds = [
        "input" if f.code_interpreter and f.code_interpreter.input else "output"
        for f in fragments[1:]
    ]
    assert kinds == sorted(kinds, key=lambda k: k == "output")
    (stored,) = _code_calls(raw, thread.id, run.id)
    assert stored["code_interpreter"]["input"] == code


def test_a_later_turn_sees_the_code_and_its_output(
    sdk: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    tag = marker()
    assistant_id = _assistant(sdk)
    content = f"{tag} {_call('x = 5', 0)} {_call('print(x + 1)', 1)} two rounds"
    thread = sdk.beta.threads.create(messages=[{"role": "user", "content": content}])
    _run(sdk, thread.id, assistant_id)
    last = requests_with(scripted_llm, tag)[-1]["messages"]
    calls = [m for m in last if m["role"] == "assistant" and m.get("tool_calls")]
    assert [json.loads(c["tool_calls"][0]["function"]["arguments"]) for c in calls] == [
        {"code": "x = 5"},
        {"code": "print(x + 1)"},
    ]
    outputs = [m["content"] for m in last if m["role"] == "tool"]
    assert outputs == ["(the code ran and printed nothing)", "6"]


def test_without_a_sandbox_the_run_fails_closed(
    own_deployment: DeployFactory, tmp_path: Any
) -> None:
    deployment = own_deployment(HAL9100_SANDBOX_PYTHON_DIR=str(tmp_path / "missing"))
    client = make_client(deployment.urls)
    try:
        assistant_id = _assistant(client)
        thread = client.beta.threads.create(
            messages=[{"role": "user", "content": _call("import os; os.system('id')") + " x"}]
        )
        run = client.beta.threads.runs.create_and_poll(
            thread_id=thread.id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
        )
        assert run.status == "failed"
        assert run.last_error is not None and run.last_error.code == "server_error"
        assert "sandbox" in run.last_error.message and "hal9100 sandbox" in run.last_error.message
    finally:
        client.close()


def test_every_run_of_a_thread_finds_its_session(sdk: openai.OpenAI, raw: httpx.Client) -> None:
    """In production the runs of one thread are routed to the worker holding its session
    (two workers here: without routing about half the second runs would miss it)."""
    assistant_id = _assistant(sdk)
    threads = [
        sdk.beta.threads.create(
            messages=[{"role": "user", "content": _call(f"kept = {n}") + " keep"}]
        ).id
        for n in range(6)
    ]
    for thread_id in threads:
        _run(sdk, thread_id, assistant_id)
    for n, thread_id in enumerate(threads):
        sdk.beta.threads.messages.create(
            thread_id, role="user", content=_call("print(kept)") + " show"
        )
        run = _run(sdk, thread_id, assistant_id)
        (call,) = _code_calls(raw, thread_id, run.id)
        assert call["code_interpreter"]["outputs"] == [{"type": "logs", "logs": f"{n}\n"}]


def test_a_session_that_ended_is_reported_lost(
    mode: str, own_deployment: DeployFactory, scripted_llm: ScriptedLLM
) -> None:
    if mode != "embedded":
        pytest.skip("the idle lifetime is the same code in both modes")
    sandbox_backend()  # a deployment of its own: skips (or fails in CI) as the fixture does
    deployment = own_deployment(HAL9100_SANDBOX_IDLE_SECONDS="1")
    client = make_client(deployment.urls)
    try:
        assistant_id = _assistant(client)
        thread = client.beta.threads.create(
            messages=[{"role": "user", "content": _call("gone = 1") + " set"}]
        )
        _run(client, thread.id, assistant_id)
        time.sleep(2.5)
        tag = marker()
        client.beta.threads.messages.create(
            thread.id, role="user", content=f"{tag} {_call('print(gone)')} get"
        )
        _run(client, thread.id, assistant_id)
        told = requests_with(scripted_llm, tag)[-1]["messages"][-1]["content"]
        assert told.startswith("Note: the Python session of this conversation was reset")
        assert "NameError" in told
    finally:
        client.close()


def test_code_interpreter_through_responses(sdk: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    """A response with `code_interpreter` (`container: auto` with a file): the code runs in
    the sandbox, its call and outputs are an output item, and a later response of the same
    conversation finds the kernel's state."""
    tag = marker()
    given = sdk.files.create(file=("numbers.txt", b"3 4 5"), purpose="assistants")
    conversation = sdk.conversations.create()
    tool = {"type": "code_interpreter", "container": {"type": "auto", "file_ids": [given.id]}}
    code = "x = sum(map(int, open('/mnt/data/numbers.txt').read().split()))\nprint(x)"
    first = sdk.responses.create(
        model="gpt-4o",
        conversation=conversation.id,
        input=f"{tag} {_call(code)} [[reply@1:The sum is 12.]]",
        tools=[tool],  # type: ignore[list-item]
        include=["code_interpreter_call.outputs"],
    )
    assert first.status == "completed", first.error
    call, answer = first.output
    assert call.type == "code_interpreter_call"
    assert call.code == code
    assert call.outputs is not None and call.outputs[0].type == "logs"
    assert call.outputs[0].logs == "12\n"  # type: ignore[union-attr]
    assert answer.type == "message"
    system = requests_with(scripted_llm, tag)[0]["messages"][0]
    assert "/mnt/data/numbers.txt" in system["content"]
    second = sdk.responses.create(
        model="gpt-4o",
        conversation=conversation.id,
        input=f"{tag} again {_call('print(x * 2)')}",
        tools=[tool],  # type: ignore[list-item]
        include=["code_interpreter_call.outputs"],
    )
    assert second.status == "completed", second.error
    assert second.output[0].outputs[0].logs == "24\n"  # type: ignore[union-attr]
    streamed = sdk.responses.create(
        model="gpt-4o",
        conversation=conversation.id,
        input=f"{tag} streamed {_call('print(x + 1)')}",
        tools=[tool],  # type: ignore[list-item]
        include=["code_interpreter_call.outputs"],
        stream=True,
    )
    events = check_response_events(
        [e.model_dump(mode="json", exclude_unset=True) for e in streamed]
    )
    kinds = [e["type"] for e in events]
    assert "response.code_interpreter_call.in_progress" in kinds
    code = "".join(
        e["delta"] for e in events if e["type"] == "response.code_interpreter_call_code.delta"
    )
    assert code == "print(x + 1)"
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    final = events[-1]["response"]
    assert done == final["output"]
    assert final["output"][0]["outputs"] == [{"type": "logs", "logs": "13\n"}]
