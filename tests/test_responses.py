"""The Responses API through the official SDK (answers checked against OpenAI's spec): plain
and background responses, `previous_response_id` chains, the function-calling round trip,
responses in a conversation and on an Assistants thread, stored prompts (an assistant), `store:
false`, cancel, input items, and what is refused."""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
import time
from typing import Any

import httpx
import openai
import pytest

from conftest import make_client
from deployments import Deployment
from responses_support import check_events, read_events
from runs_support import POLL_MS, marker, requests_with
from scripted_llm import ScriptedLLM

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def _sent(llm: ScriptedLLM, word: str) -> list[dict[str, Any]]:
    """The chat messages of the newest request mentioning `word`."""
    messages: list[dict[str, Any]] = requests_with(llm, word)[-1]["messages"]
    return messages


def _wait(client: openai.OpenAI, response_id: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        response = client.responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress"):
            return response
        assert time.monotonic() < deadline, f"response stuck in {response.status}"
        time.sleep(POLL_MS / 1000)


def test_a_plain_response(client: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    word = marker()
    response = client.responses.create(
        model="scripted-model",
        input=f"{word} [[reply:Hello there.]]",
        instructions="Be brief.",
        metadata={"k": "v"},
        temperature=0.5,
    )
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == "Hello there."
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant"
    assert message.status == "completed"
    assert response.instructions == "Be brief."
    assert response.metadata == {"k": "v"}
    assert response.temperature == 0.5
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.completed_at is not None and response.error is None
    sent = _sent(scripted_llm, word)
    assert sent[0] == {"role": "system", "content": "Be brief."}
    assert sent[-1]["role"] == "user" and word in sent[-1]["content"]
    again = client.responses.retrieve(response.id)
    assert again.output_text == "Hello there."
    assert [i.id for i in again.output] == [message.id]
    (given,) = client.responses.input_items.list(response.id).data
    assert given.type == "message" and given.role == "user"  # type: ignore[union-attr]


def test_previous_response_id_chains_the_context(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    word = marker()
    first = client.responses.create(
        model="scripted-model", input=f"{word} one [[reply:First answer.]]", instructions="A"
    )
    second = client.responses.create(
        model="scripted-model",
        previous_response_id=first.id,
        input=[{"role": "user", "content": f"{word} two [[reply:Second answer.]]"}],
        instructions="B",
    )
    third = client.responses.create(
        model="scripted-model", previous_response_id=second.id, input=f"{word} three"
    )
    assert third.status == "completed"
    assert third.previous_response_id == second.id
    sent = _sent(scripted_llm, f"{word} three")
    # Instructions are not carried over; every earlier turn is.
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", f"{word} one [[reply:First answer.]]"),
        ("assistant", "First answer."),
        ("user", f"{word} two [[reply:Second answer.]]"),
        ("assistant", "Second answer."),
        ("user", f"{word} three"),
    ]
    # A fork from the first response sees only what came before it.
    fork = client.responses.create(
        model="scripted-model", previous_response_id=first.id, input=f"{word} fork"
    )
    assert fork.status == "completed"
    assert [m["content"] for m in _sent(scripted_llm, f"{word} fork")] == [
        f"{word} one [[reply:First answer.]]",
        "First answer.",
        f"{word} fork",
    ]


def test_function_calling_round_trip(client: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    word = marker()
    first = client.responses.create(
        model="scripted-model",
        input=f'{word} [[call:get_weather {{"city": "Oslo"}}]]',
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert first.status == "completed"
    (call,) = first.output
    assert call.type == "function_call"
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Oslo"}
    assert call.status == "completed"
    assert first.tools[0].type == "function" and first.tools[0].name == "get_weather"
    # Answering nothing is refused, as is an answer to a call that was never made.
    with pytest.raises(openai.BadRequestError):
        client.responses.create(
            model="scripted-model", previous_response_id=first.id, input="no answer"
        )
    with pytest.raises(openai.BadRequestError):
        client.responses.create(
            model="scripted-model",
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": "call_nope", "output": "x"}],
        )
    second = client.responses.create(
        model="scripted-model",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "-3C, snow"}],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert second.status == "completed", second.error
    assert second.output[-1].type == "message"
    sent = _sent(scripted_llm, "-3C, snow")
    assert sent[-2]["role"] == "assistant"
    assert sent[-2]["tool_calls"][0]["id"] == call.call_id
    assert sent[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "-3C, snow"}


def test_stateless_history_as_input(client: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    """What the Agents SDK sends without server-side state: the whole history as items, with
    the ids and statuses the earlier response gave them."""
    word = marker()
    first = client.responses.create(
        model="scripted-model",
        input=f'{word} [[call:get_weather {{"city": "Rome"}}]]',
        tools=[WEATHER],  # type: ignore[list-item]
    )
    history: list[Any] = [
        {"role": "user", "content": f'{word} [[call:get_weather {{"city": "Rome"}}]]'},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": first.output[0].call_id, "output": "25C"},  # type: ignore[union-attr]
    ]
    second = client.responses.create(
        model="scripted-model",
        input=history,
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert second.status == "completed", second.error
    sent = _sent(scripted_llm, "25C")
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]


def test_background_poll_and_cancel(client: openai.OpenAI) -> None:
    quick = client.responses.create(
        model="scripted-model", input="[[reply:Done.]]", background=True
    )
    assert quick.background is True
    assert quick.status in ("queued", "in_progress", "completed")
    assert _wait(client, quick.id).output_text == "Done."
    # One that has ended cannot be cancelled (as OpenAI answers).
    with pytest.raises(openai.BadRequestError) as ended:
        client.responses.cancel(quick.id)
    assert "Cannot cancel a completed response" in ended.value.message
    slow = client.responses.create(
        model="scripted-model", input="[[slow:200]] [[tokens:100]]", background=True
    )
    cancelled = client.responses.cancel(slow.id)
    assert cancelled.status in ("cancelled", "in_progress")
    assert _wait(client, slow.id).status == "cancelled"
    # Asked again, it is still cancelled.
    assert client.responses.cancel(slow.id).status == "cancelled"
    plain = client.responses.create(model="scripted-model", input="[[reply:x]]")
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(plain.id)


def test_responses_in_a_conversation(client: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    word = marker()
    conversation = client.conversations.create(
        items=[{"role": "developer", "content": "Answer in French."}]
    )
    first = client.responses.create(
        model="scripted-model",
        conversation=conversation.id,
        input=f"{word} hello [[reply:Bonjour.]]",
    )
    assert first.conversation is not None and first.conversation.id == conversation.id
    client.responses.create(
        model="scripted-model", conversation={"id": conversation.id}, input=f"{word} again"
    )
    sent = _sent(scripted_llm, f"{word} again")
    assert [(m["role"], m["content"]) for m in sent] == [
        ("system", "Answer in French."),
        ("user", f"{word} hello [[reply:Bonjour.]]"),
        ("assistant", "Bonjour."),
        ("user", f"{word} again"),
    ]
    items = client.conversations.items.list(conversation.id, order="asc").data
    assert [getattr(i, "role", None) for i in items] == [
        "developer",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert items[2].id == first.output[0].id


def test_an_assistants_thread_continued_through_responses(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    """An Assistants user's thread, moved to Responses without losing a message: the
    response reads the thread, and its answer is a message of the thread."""
    word = marker()
    assistant = client.beta.assistants.create(model="scripted-model", instructions="Be kind.")
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": f"{word} old question [[reply:Old answer.]]"}]
    )
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS
    )
    assert run.status == "completed"
    response = client.responses.create(
        model="scripted-model",
        conversation=thread.id,
        prompt={"id": assistant.id},
        input=f"{word} new question [[reply:New answer.]]",
    )
    assert response.output_text == "New answer."
    assert response.instructions == "Be kind."
    sent = _sent(scripted_llm, f"{word} new question")
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[0]["content"] == "Be kind."
    texts = [
        (m.role, m.content[0].text.value)  # type: ignore[union-attr]
        for m in client.beta.threads.messages.list(thread.id, order="asc").data
    ]
    assert texts == [
        ("user", f"{word} old question [[reply:Old answer.]]"),
        ("assistant", "Old answer."),
        ("user", f"{word} new question [[reply:New answer.]]"),
        ("assistant", "New answer."),
    ]
    # And read back as a conversation: the same four messages, as items.
    items = client.conversations.items.list(thread.id, order="asc").data
    assert [(i.type, getattr(i, "role", None)) for i in items] == [
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
        ("message", "assistant"),
    ]
    assert items[-1].id == response.output[0].id


def test_a_stored_assistant_as_the_prompt(client: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    word = marker()
    assistant = client.beta.assistants.create(
        model="scripted-model",
        instructions="You help {{customer}}.",
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
    )
    response = client.responses.create(
        prompt={"id": assistant.id, "variables": {"customer": "Ada"}},
        input=f"{word} hi",
    )
    assert response.model == "scripted-model"
    sent = requests_with(scripted_llm, word)[-1]
    assert sent["messages"][0] == {"role": "system", "content": "You help Ada."}
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    response = client.responses.create(model="scripted-model", input="[[reply:Gone.]]", store=False)
    assert response.output_text == "Gone."
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(
            model="scripted-model", previous_response_id=response.id, input="more"
        )
    assert refused.value.code == "previous_response_not_found"


def test_delete(client: openai.OpenAI) -> None:
    response = client.responses.create(model="scripted-model", input="[[reply:x]]")
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response.id)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        (
            {"model": "m", "input": "x", "tools": [{"type": "computer_use_preview"}]},
            "tools[0].type",
        ),
        (
            {"model": "m", "input": "x", "tools": [{"type": "function", "name": "a b"}]},
            "tools[0].name",
        ),
        (
            {"model": "m", "input": "x", "tool_choice": {"type": "function", "name": "nope"}},
            "tool_choice",
        ),
        ({"model": "m", "input": "x", "background": True, "store": False}, "store"),
        (
            {
                "model": "m",
                "input": "x",
                "previous_response_id": "resp_x",
                "conversation": "conv_x",
            },
            "previous_response_id",
        ),
        ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"model": "m", "input": "x", "temperature": 3}, "temperature"),
        ({"model": "m", "input": "x", "colour": "red"}, "colour"),
    ],
)
def test_refused_requests(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    answer = http.post("/v1/responses", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_web_search_is_accepted_and_not_offered(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    """Codex CLI sends a web_search tool on every request and works without it."""
    word = marker()
    response = client.responses.create(
        model="scripted-model",
        input=f"{word} hi",
        tools=[{"type": "web_search"}, WEATHER],  # type: ignore[list-item]
    )
    assert [t.type for t in response.tools] == ["web_search", "function"]
    sent = requests_with(scripted_llm, word)[-1]
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]


def test_calls_sent_back_with_their_response_are_read_once(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    """A client that sends the previous response's output items back along with
    previous_response_id: each call reaches the model once."""
    word = marker()
    first = client.responses.create(
        model="scripted-model",
        input=f'{word} [[call:get_weather {{"city": "Lima"}}]]',
        tools=[WEATHER],  # type: ignore[list-item]
    )
    (call,) = first.output
    second = client.responses.create(
        model="scripted-model",
        previous_response_id=first.id,
        input=[
            call.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"type": "function_call_output", "call_id": call.call_id, "output": "19C"},  # type: ignore[union-attr]
        ],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert second.status == "completed", second.error
    sent = _sent(scripted_llm, "19C")
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert len(sent[1]["tool_calls"]) == 1
    with pytest.raises(openai.BadRequestError):
        client.responses.create(
            model="scripted-model",
            previous_response_id=first.id,
            input=[
                {"type": "function_call_output", "call_id": call.call_id, "output": "a"},  # type: ignore[union-attr]
                {"type": "function_call_output", "call_id": call.call_id, "output": "b"},  # type: ignore[union-attr]
            ],
        )


def test_a_call_the_model_got_wrong_is_not_the_clients(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    """One turn calls an unknown function and a real one: the response shows the client the
    real call only; the model reads what was wrong with the other next time."""
    word = marker()
    first = client.responses.create(
        model="scripted-model",
        input=f'{word} [[call:no_such_tool {{}}]] [[call:get_weather {{"city": "Kyiv"}}]]',
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert first.status == "completed", first.error
    assert [(i.type, i.name) for i in first.output] == [("function_call", "get_weather")]  # type: ignore[union-attr]
    second = client.responses.create(
        model="scripted-model",
        previous_response_id=first.id,
        input=[
            {"type": "function_call_output", "call_id": first.output[0].call_id, "output": "2C"}
        ],  # type: ignore[union-attr]
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert second.status == "completed", second.error
    sent = _sent(scripted_llm, "2C")
    (turn,) = [m for m in sent if m["role"] == "assistant"]
    assert sorted(c["function"]["name"] for c in turn["tool_calls"]) == [
        "get_weather",
        "no_such_tool",
    ]
    tools_said = {m["tool_call_id"]: m["content"] for m in sent if m["role"] == "tool"}
    assert tools_said[first.output[0].call_id] == "2C"  # type: ignore[union-attr]
    assert len(tools_said) == 2


def test_chaining_to_a_response_still_running_is_refused(client: openai.OpenAI) -> None:
    running = client.responses.create(
        model="scripted-model", input="[[slow:100]] [[tokens:50]]", background=True
    )
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(
            model="scripted-model", previous_response_id=running.id, input="next"
        )
    assert refused.value.param == "previous_response_id"  # type: ignore[attr-defined]
    client.responses.cancel(running.id)


def test_input_tokens(client: openai.OpenAI) -> None:
    first = client.responses.create(model="scripted-model", input="[[reply:Hello there, friend.]]")
    alone = client.responses.input_tokens.count(model="scripted-model", input="How are you?")
    assert alone.object == "response.input_tokens"
    assert 4 < alone.input_tokens < 20
    chained = client.responses.input_tokens.count(
        model="scripted-model", input="How are you?", previous_response_id=first.id
    )
    assert chained.input_tokens > alone.input_tokens
    with_tool = client.responses.input_tokens.count(
        model="scripted-model",
        input="How are you?",
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert with_tool.input_tokens > alone.input_tokens
    with pytest.raises(openai.BadRequestError):
        client.responses.input_tokens.count(
            model="scripted-model", input="x", previous_response_id="resp_missing"
        )


@pytest.mark.parametrize(
    "tools",
    [
        [{"type": "file_search", "vector_store_ids": []}] * 2,
        [
            {"type": "code_interpreter", "container": "auto"},
            {"type": "function", "name": "code_interpreter"},
        ],
        [{"type": "code_interpreter", "container": "cntr_abc"}],
        [{"type": "code_interpreter", "container": {"type": "auto", "memory_limit": "4g"}}],
        [{"type": "file_search", "vector_store_ids": [], "filters": {"type": "eq"}}],
        [
            {
                "type": "namespace",
                "name": "x",
                "description": "d",
                "tools": [{"type": "custom", "name": "c"}],
            }
        ],
        [{"type": "namespace", "name": "x", "description": "d", "tools": []}],
        [
            {
                "type": "namespace",
                "name": "a.b",
                "description": "d",
                "tools": [{"type": "function", "name": "f"}],
            }
        ],
    ],
)
def test_tools_refused(http: httpx.Client, tools: list[Any]) -> None:
    answer = http.post("/v1/responses", json={"model": "m", "input": "x", "tools": tools})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"].startswith("tools")


def _rows_of(server: Deployment, response_id: str) -> int:
    """How many rows the database holds for the response (its run)."""
    if server.mode == "production":
        import asyncio

        import asyncpg

        async def count() -> int:
            url = server.env["DATABASE_URL"].replace("postgres://", "postgresql://")
            connection = await asyncpg.connect(url)
            try:
                query = "SELECT count(*) FROM runs WHERE id = $1"
                return int(await connection.fetchval(query, response_id))
            finally:
                await connection.close()

        return asyncio.run(count())
    path = server.api[0].data_dir / "hal9100.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        query = "SELECT count(*) FROM runs WHERE id = ?"
        return int(db.execute(query, (response_id,)).fetchone()[0])


def test_an_unstored_stream_left_midway_is_forgotten(
    http: httpx.Client, server: Deployment
) -> None:
    body = {
        "model": "scripted-model",
        "input": "[[slow:20]] [[tokens:30]]",
        "stream": True,
        "store": False,
    }
    with http.stream("POST", "/v1/responses", json=body) as answer:
        for line in answer.iter_lines():
            if line.startswith("data: ") and "response.created" in line:
                response_id = json.loads(line[6:])["response"]["id"]
                break
    assert http.get(f"/v1/responses/{response_id}").status_code == 404
    assert _rows_of(server, response_id) == 1  # running on, the client gone
    deadline = time.monotonic() + 20
    while _rows_of(server, response_id):
        assert time.monotonic() < deadline, "an unstored response was kept"
        time.sleep(0.2)


def test_stored_responses_are_kept_for_the_retention(mode: str, deploy: Any) -> None:
    """Past HAL9100_RESPONSE_RETENTION_DAYS a response is gone (here about two seconds); a
    conversation keeps what its responses added. (Production mode: the sweep of a worker
    process; embedded mode runs the same sweep in its server.)"""
    if mode != "production":
        pytest.skip("a deployment of its own per mode: the sweep is the same code in both")
    deployment = deploy(HAL9100_RESPONSE_RETENTION_DAYS="0.00002", HAL9100_SWEEP_SECONDS="0.2")
    client = make_client(deployment.urls)
    alone = client.responses.create(model="scripted-model", input="[[reply:Short-lived.]]")
    conversation = client.conversations.create()
    held = client.responses.create(
        model="scripted-model", conversation=conversation.id, input="[[reply:Kept here.]]"
    )
    deadline = time.monotonic() + 30
    while True:
        gone = []
        for response_id in (alone.id, held.id):
            try:
                client.responses.retrieve(response_id)
            except openai.NotFoundError:
                gone.append(response_id)
        if len(gone) == 2:
            break
        assert time.monotonic() < deadline, "responses outlived their retention"
        time.sleep(0.3)
    items = client.conversations.items.list(conversation.id, order="asc").data
    assert [getattr(i, "role", None) for i in items] == ["user", "assistant"]
    client.close()


CRM = {
    "type": "namespace",
    "name": "crm",
    "description": "Customer records.",
    "tools": [
        {
            "type": "function",
            "name": "lookup",
            "description": "Find a customer.",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
        }
    ],
}


def test_namespace_tools_are_groups_of_functions(
    client: openai.OpenAI, http: httpx.Client, scripted_llm: ScriptedLLM
) -> None:
    """Codex CLI's `namespace` tools: the model sees each function under its namespace's
    name, and the calls come back named as the client gave them, with their namespace."""
    word = marker()
    first = client.responses.create(
        model="scripted-model",
        input=f'{word} [[call:crm__lookup {{"id": "7"}}]]',
        tools=[CRM],  # type: ignore[list-item]
    )
    assert first.status == "completed", first.error
    offered = requests_with(scripted_llm, word)[-1]["tools"]
    assert [t["function"]["name"] for t in offered] == ["crm__lookup"]
    assert "Customer records." in offered[0]["function"]["description"]
    (call,) = first.output
    assert call.type == "function_call"
    assert (call.name, call.namespace) == ("lookup", "crm")
    assert first.tools[0].type == "namespace"
    second = client.responses.create(
        model="scripted-model",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Ada"}],
        tools=[CRM],  # type: ignore[list-item]
    )
    assert second.status == "completed", second.error
    sent = requests_with(scripted_llm, word)[-1]["messages"]
    assert sent[-2]["tool_calls"][0]["function"]["name"] == "crm__lookup"
    # Stateless: the history sent back names the call with its namespace.
    third = client.responses.create(
        model="scripted-model",
        input=[
            {"role": "user", "content": f"{word} again"},
            {
                "type": "function_call",
                "call_id": "call_x",
                "name": "lookup",
                "namespace": "crm",
                "arguments": '{"id": "8"}',
            },
            {"type": "function_call_output", "call_id": "call_x", "output": "Grace"},
        ],
        tools=[CRM],  # type: ignore[list-item]
    )
    assert third.status == "completed", third.error
    history = requests_with(scripted_llm, "Grace")[-1]["messages"]
    assert history[-2]["tool_calls"][0]["function"]["name"] == "crm__lookup"
    # Streamed, the call is named so too.
    with http.stream(
        "POST",
        "/v1/responses",
        json={
            "model": "scripted-model",
            "input": '[[call:crm__lookup {"id": "9"}]]',
            "tools": [CRM],
            "stream": True,
        },
    ) as answer:
        events = check_events(read_events(answer))
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [e["name"] for e in done] == ["lookup"]
    assert events[-1]["response"]["output"][0]["namespace"] == "crm"


def test_compact_then_go_on_from_the_compaction(
    client: openai.OpenAI, server: Deployment, scripted_llm: ScriptedLLM
) -> None:
    """The compacted output is the user messages and one compaction item, as the spec has
    it (the SDK types it as output items, which a user message is not: its answers are
    read without the SDK's strict types here, still checked against the spec)."""
    lenient = make_client(server.urls, strict=False)
    word = marker()
    first = client.responses.create(
        model="scripted-model", input=f"{word} one [[reply:The answer is 42.]]"
    )
    compacted = lenient.responses.compact(
        model="scripted-model", previous_response_id=first.id, input=f"{word} two"
    )
    assert compacted.object == "response.compaction"
    kinds = [item.type for item in compacted.output]
    assert kinds == ["message", "message", "compaction"]
    assert [item.content[0].text for item in compacted.output[:2]] == [  # type: ignore[union-attr]
        f"{word} one [[reply:The answer is 42.]]",
        f"{word} two",
    ]
    asked = requests_with(scripted_llm, word)[-1]["messages"]
    assert asked[-1]["role"] == "user" and "Compact the conversation" in asked[-1]["content"]
    assert [m["role"] for m in asked[:-1]] == ["user", "assistant", "user"]
    assert compacted.usage.total_tokens > 0
    # The compaction is the next request's context.
    go_on = client.responses.create(
        model="scripted-model",
        input=[
            *[i.model_dump(exclude_none=True, warnings=False) for i in compacted.output],
            {"role": "user", "content": f"{word} three"},
        ],  # type: ignore[list-item]
    )
    assert go_on.status == "completed", go_on.error
    sent = requests_with(scripted_llm, f"{word} three")[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "user", "user", "user"]
    assert sent[2]["content"].startswith("[Summary of the conversation so far]")
    # A compaction this server did not make is refused, however it is made.
    for forged in ("not ours", base64.urlsafe_b64encode(b"[" * 200_000).decode()):
        with pytest.raises(openai.BadRequestError):
            client.responses.create(
                model="scripted-model",
                input=[{"type": "compaction", "encrypted_content": forged}],  # type: ignore[list-item]
            )
    lenient.close()
