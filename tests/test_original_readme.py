"""The original HAL-9100 README's curl walk-through, replayed as it was written: plain JSON
over HTTP at the root paths (no /v1), no Authorization header, an open model.

The original created the assistant with `{"type": "retrieval"}`, an Assistants v1 tool type
that v2 renamed; the v2 spelling of a tool is used here, everything else is verbatim."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from deployments import Deployment, RoundRobinTransport
from openapi_contract import make_validating_http_client, spec_available
from scripted_llm import ScriptedLLM

MODEL = "open-orca/mistral-7b-openorca"
INSTRUCTIONS = "You are a personal math tutor. Write and run code to answer math questions."
QUESTION = "I need to solve the equation `3x + 11 = 14`. Can you help me?"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def curl(server: Deployment) -> Iterator[httpx.Client]:
    """What curl sends: no Authorization header, responses checked against OpenAI's spec."""
    transport = RoundRobinTransport(server.urls) if len(server.urls) > 1 else None
    kwargs = {"base_url": server.url, "timeout": 30, "transport": transport}
    client = make_validating_http_client(**kwargs) if spec_available() else httpx.Client(**kwargs)
    with client:
        yield client


def test_original_readme_walkthrough(curl: httpx.Client, scripted_llm: ScriptedLLM) -> None:
    assistant = curl.post(
        "/assistants",
        headers=JSON,
        json={
            "instructions": INSTRUCTIONS,
            "name": "Math Tutor",
            "tools": [{"type": "code_interpreter"}],
            "model": MODEL,
        },
    )
    assert assistant.status_code == 200, assistant.text
    assistant_id = assistant.json()["id"]
    assert assistant_id.startswith("asst_")
    assert assistant.json()["name"] == "Math Tutor"

    # `curl -X POST http://localhost:3000/threads -H "Content-Type: application/json"`:
    # no body at all.
    thread = curl.post("/threads", headers=JSON)
    assert thread.status_code == 200, thread.text
    thread_id = thread.json()["id"]
    assert thread_id.startswith("thread_")

    message = curl.post(
        f"/threads/{thread_id}/messages",
        headers=JSON,
        json={"role": "user", "content": QUESTION},
    )
    assert message.status_code == 200, message.text
    assert message.json()["content"][0]["text"]["value"] == QUESTION

    run = curl.post(f"/threads/{thread_id}/runs", headers=JSON, json={"assistant_id": assistant_id})
    assert run.status_code == 200, run.text
    run_id = run.json()["id"]
    assert run_id.startswith("run_")
    assert run.json()["status"] in ("queued", "in_progress", "completed")

    deadline = time.monotonic() + 30
    while True:
        polled = curl.get(f"/threads/{thread_id}/runs/{run_id}")
        assert polled.status_code == 200, polled.text
        status = polled.json()["status"]
        if status not in ("queued", "in_progress"):
            break
        assert time.monotonic() < deadline, f"run stuck in {status}"
        time.sleep(0.05)
    assert status == "completed", polled.json()["last_error"]

    messages = curl.get(f"/threads/{thread_id}/messages")
    assert messages.status_code == 200, messages.text
    listed = messages.json()["data"]
    # Newest first: the assistant's answer, then the question.
    assert [m["role"] for m in listed] == ["assistant", "user"]
    answer = listed[0]
    assert answer["run_id"] == run_id and answer["assistant_id"] == assistant_id
    assert answer["content"][0]["type"] == "text"
    assert "3x + 11 = 14" in answer["content"][0]["text"]["value"]

    # The model behind it got the tutor's instructions and the question.
    (body,) = [b for b in scripted_llm.requests if QUESTION in json.dumps(b.get("messages"))][-1:]
    assert body["model"] == MODEL
    assert body["messages"] == [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": QUESTION},
    ]
