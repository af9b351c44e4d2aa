"""The Conversations API through the official SDK (its answers checked against OpenAI's
spec): conversations and their items, items of every kind a client adds, pagination, and
the one store it shares with the Assistants API: a thread is a conversation (its messages
and its runs' tool calls are items), and a conversation is a thread."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from runs_support import POLL_MS, WEATHER_TOOL, marker


def _ids(page: Any) -> list[str]:
    return [item.id for item in page.data]


def test_create_retrieve_update_delete(client: openai.OpenAI) -> None:
    conversation = client.conversations.create(
        metadata={"topic": "demo"},
        items=[{"type": "message", "role": "user", "content": "Hello!"}],
    )
    assert conversation.id.startswith("conv_")
    assert conversation.object == "conversation"
    assert conversation.metadata == {"topic": "demo"}
    got = client.conversations.retrieve(conversation.id)
    assert (got.id, got.created_at, got.metadata) == (
        conversation.id,
        conversation.created_at,
        {"topic": "demo"},
    )
    updated = client.conversations.update(conversation.id, metadata={"topic": "other"})
    assert updated.metadata == {"topic": "other"}
    items = client.conversations.items.list(conversation.id)
    assert len(items.data) == 1
    message = items.data[0]
    assert message.type == "message"
    assert message.role == "user"
    assert message.status == "completed"
    assert [(p.type, p.text) for p in message.content] == [("input_text", "Hello!")]
    deleted = client.conversations.delete(conversation.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (
        conversation.id,
        True,
        "conversation.deleted",
    )
    with pytest.raises(openai.NotFoundError) as missing:
        client.conversations.retrieve(conversation.id)
    assert missing.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_items_of_every_kind_keep_their_order_and_shape(client: openai.OpenAI) -> None:
    conversation = client.conversations.create()
    given: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "input_text", "text": "Use metric."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {
            "type": "function_call",
            "call_id": "call_abc",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        {"type": "function_call_output", "call_id": "call_abc", "output": "18C, sunny"},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Looked it up."}]},
        # An earlier response's output message, carried back with its id and status.
        {
            "type": "message",
            "id": "msg_from_elsewhere",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "18C and sunny.", "annotations": []}],
        },
    ]
    added = client.conversations.items.create(conversation.id, items=given)
    assert [item.type for item in added.data] == [
        "message",
        "message",
        "message",
        "function_call",
        "function_call_output",
        "reasoning",
        "message",
    ]
    listed = client.conversations.items.list(conversation.id, order="asc")
    assert _ids(listed) == _ids(added)
    assert listed.first_id == added.data[0].id
    assert not listed.has_more
    system, developer, user, call, output, reasoning, answer = listed.data
    assert (system.role, developer.role, user.role, answer.role) == (
        "system",
        "developer",
        "user",
        "assistant",
    )
    assert answer.id != "msg_from_elsewhere"  # ids are the conversation's own
    assert answer.content[0].type == "output_text"
    assert answer.content[0].text == "18C and sunny."
    assert (call.call_id, call.name, call.arguments) == (
        "call_abc",
        "get_weather",
        '{"city": "Paris"}',
    )
    assert (output.call_id, output.output) == ("call_abc", "18C, sunny")
    assert reasoning.summary[0].text == "Looked it up."
    newest_first = client.conversations.items.list(conversation.id)
    assert _ids(newest_first) == list(reversed(_ids(listed)))
    one = client.conversations.items.retrieve(call.id, conversation_id=conversation.id)
    assert one.id == call.id and one.type == "function_call"


def test_an_earlier_responses_tool_calls_read_back_in_openais_shape(
    client: openai.OpenAI,
) -> None:
    """Tool call items carried over from elsewhere are kept by their type's fields only:
    whatever else they hold, they read back as the spec has them."""
    conversation = client.conversations.create()
    client.conversations.items.create(
        conversation.id,
        items=[
            {
                "type": "file_search_call",
                "id": "fs_elsewhere",
                "status": "searching",
                "queries": ["capital of France"],
                "results": [
                    {"file_id": "file-1", "filename": "a.txt", "text": "Paris", "score": 2}
                ],
                "extra": {"junk": True},
            },
            {
                "type": "code_interpreter_call",
                "id": "ci_elsewhere",
                "status": "completed",
                "container_id": "cntr_1",
                "code": "print(1)",
                "outputs": [{"type": "logs", "logs": "1"}],
            },
            {
                "type": "function_call_output",
                "call_id": "call_9",
                "output": [{"type": "input_text", "text": "done"}],
            },
        ],  # type: ignore[list-item]
    )
    search, code, output = client.conversations.items.list(conversation.id, order="asc").data
    assert search.type == "file_search_call" and search.status == "completed"
    assert search.queries == ["capital of France"]
    assert search.results is not None and search.results[0].text == "Paris"
    assert code.type == "code_interpreter_call" and code.code == "print(1)"
    assert code.outputs is not None and code.outputs[0].type == "logs"
    assert output.type == "function_call_output"
    assert not isinstance(output.output, str) and output.output[0].type == "input_text"


def test_pages_follow_after_in_both_orders(client: openai.OpenAI) -> None:
    conversation = client.conversations.create(
        items=[{"role": "user", "content": f"message {n}"} for n in range(7)]
    )
    every = _ids(client.conversations.items.list(conversation.id, order="asc", limit=100))
    assert len(every) == 7
    for order, expected in (("asc", every), ("desc", list(reversed(every)))):
        seen: list[str] = []
        after: str | None = None
        while True:
            kwargs: dict[str, Any] = {"order": order, "limit": 3}
            if after is not None:
                kwargs["after"] = after
            page = client.conversations.items.list(conversation.id, **kwargs)
            seen += _ids(page)
            if not page.has_more:
                break
            after = page.last_id
        assert seen == expected
    # The SDK's auto-pagination walks the same way.
    walked = [item.id for item in client.conversations.items.list(conversation.id, limit=2)]
    assert walked == list(reversed(every))


def test_deleting_items(client: openai.OpenAI) -> None:
    conversation = client.conversations.create(
        items=[
            {"role": "user", "content": "keep"},
            {"role": "user", "content": "drop"},
            {"type": "function_call_output", "call_id": "call_1", "output": "x"},
        ]
    )
    keep, drop, output = client.conversations.items.list(conversation.id, order="asc").data
    answer = client.conversations.items.delete(drop.id, conversation_id=conversation.id)
    assert answer.id == conversation.id and answer.object == "conversation"
    client.conversations.items.delete(output.id, conversation_id=conversation.id)
    assert _ids(client.conversations.items.list(conversation.id)) == [keep.id]
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(drop.id, conversation_id=conversation.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.delete(drop.id, conversation_id=conversation.id)


def test_a_conversation_is_a_thread(client: openai.OpenAI) -> None:
    """Its user and assistant messages are the thread's; system and developer messages and
    other items are the conversation's alone (the Assistants API has no place for them)."""
    conversation = client.conversations.create(
        items=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello."},
            {"type": "function_call_output", "call_id": "call_1", "output": "x"},
        ]
    )
    thread = client.beta.threads.retrieve(conversation.id)
    assert thread.id == conversation.id
    messages = client.beta.threads.messages.list(conversation.id, order="asc").data
    assert [(m.role, m.content[0].text.value) for m in messages] == [  # type: ignore[union-attr]
        ("user", "Hi there"),
        ("assistant", "Hello."),
    ]
    # A message added through the Assistants API is an item too.
    added = client.beta.threads.messages.create(conversation.id, role="user", content="And?")
    items = client.conversations.items.list(conversation.id, order="asc").data
    assert items[-1].id == added.id
    assert [(i.type, getattr(i, "role", None)) for i in items] == [
        ("message", "developer"),
        ("message", "user"),
        ("message", "assistant"),
        ("function_call_output", None),
        ("message", "user"),
    ]
    client.beta.threads.delete(conversation.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.list(conversation.id)


def test_a_threads_run_reads_as_items(client: openai.OpenAI) -> None:
    """An Assistants thread with a function-calling run: its messages and the run's tool
    call, with the output the client submitted, as a Responses client would see them."""
    word = marker()
    assistant = client.beta.assistants.create(model="scripted-model", tools=[WEATHER_TOOL])
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": f'{word} [[call:get_weather {{"city": "Oslo"}}]]'}]
    )
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS
    )
    assert run.status == "requires_action"
    assert run.required_action is not None
    (call,) = run.required_action.submit_tool_outputs.tool_calls
    pending = client.conversations.items.list(thread.id, order="asc").data
    assert [i.type for i in pending] == ["message", "function_call"]
    assert pending[1].call_id == call.id  # type: ignore[union-attr]
    assert pending[1].status == "completed"  # type: ignore[union-attr]
    # The run waits for the client's answer to that call: its history stays as it is.
    with pytest.raises(openai.BadRequestError):
        client.conversations.items.delete(pending[1].id, conversation_id=thread.id)
    with pytest.raises(openai.BadRequestError):
        client.conversations.items.create(thread.id, items=[{"role": "user", "content": "x"}])
    run = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": call.id, "output": "-3C, snow"}],
        poll_interval_ms=POLL_MS,
    )
    assert run.status == "completed"
    items = client.conversations.items.list(thread.id, order="asc").data
    assert [i.type for i in items] == [
        "message",
        "function_call",
        "function_call_output",
        "message",
    ]
    user, function_call, output, answer = items
    assert user.role == "user" and user.content[0].type == "input_text"  # type: ignore[union-attr]
    assert function_call.name == "get_weather"  # type: ignore[union-attr]
    assert '"Oslo"' in function_call.arguments  # type: ignore[union-attr]
    assert (output.call_id, output.output) == (call.id, "-3C, snow")  # type: ignore[union-attr]
    assert answer.role == "assistant"  # type: ignore[union-attr]
    assert answer.content[0].type == "output_text"  # type: ignore[union-attr]
    assert answer.content[0].text  # type: ignore[union-attr]
    # Hiding a run's tool call leaves the run's own record whole.
    client.conversations.items.delete(function_call.id, conversation_id=thread.id)
    assert function_call.id not in _ids(client.conversations.items.list(thread.id))
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data
    assert any(s.type == "tool_calls" for s in steps)


@pytest.mark.parametrize(
    ("items", "param"),
    [
        ([{"type": "computer_call", "call_id": "c"}], "items[0].type"),
        ([{"role": "robot", "content": "hi"}], "items[0].role"),
        ([{"role": "user", "content": 5}], "items[0].content"),
        ([{"role": "user", "content": [{"type": "input_text"}]}], "items[0].content[0].text"),
        (
            [{"role": "user", "content": [{"type": "input_file", "file_id": "file-x"}]}],
            "items[0].content[0].type",
        ),
        ([{"type": "function_call_output", "output": "x"}], "items[0].call_id"),
        ([{"role": "user", "content": "ok"}, "not an item"], "items[1]"),
        ([{"role": "user", "content": "x"}] * 21, "items"),
        ([{"role": ["user"], "content": "x"}], "items[0].role"),
        ([{"type": {}, "content": "x"}], "items[0].type"),
        ([{"type": ["message"]}], "items[0].type"),
        (
            [
                {
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "a", "annotations": [1]}],
                }
            ],
            "items[0].content[0].annotations[0].type",
        ),
        (
            [
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "output_text",
                            "text": "a",
                            "annotations": [
                                {"type": "file_citation", "file_id": "f", "index": "0"}
                            ],
                        }
                    ],
                }
            ],
            "items[0].content[0].annotations[0].filename",
        ),
        ([{"type": "reasoning", "summary": "thought"}], "items[0].summary"),
        (
            [{"type": "reasoning", "summary": [{"type": "summary_text"}]}],
            "items[0].summary[0].text",
        ),
        ([{"type": "file_search_call", "queries": [1]}], "items[0].queries[0]"),
        ([{"type": "file_search_call", "results": ["x"]}], "items[0].results[0]"),
        (
            [{"type": "code_interpreter_call", "outputs": [{"type": "video"}]}],
            "items[0].outputs[0].type",
        ),
        ([{"type": "function_call_output", "call_id": "c", "output": [5]}], "items[0].output[0]"),
    ],
)
def test_bad_items_are_refused_and_nothing_is_added(
    client: openai.OpenAI, http: httpx.Client, items: list[Any], param: str
) -> None:
    conversation = client.conversations.create()
    answer = http.post(f"/v1/conversations/{conversation.id}/items", json={"items": items})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert set(error) == {"message", "type", "param", "code"}
    assert client.conversations.items.list(conversation.id).data == []


def test_unknown_ids_and_cursors(client: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.list("conv_missing")
    conversation = client.conversations.create(items=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve("msg_missing", conversation_id=conversation.id)
    bad_cursor = http.get(f"/v1/conversations/{conversation.id}/items", params={"after": "msg_x"})
    assert bad_cursor.status_code == 400
    assert bad_cursor.json()["error"]["param"] == "after"
    bad_limit = http.get(f"/v1/conversations/{conversation.id}/items", params={"limit": 101})
    assert bad_limit.status_code == 400
    bad_include = http.get(
        f"/v1/conversations/{conversation.id}/items", params={"include[]": "everything"}
    )
    assert bad_include.status_code == 400
    unknown_field = http.post("/v1/conversations", json={"metadata": {}, "colour": "red"})
    assert unknown_field.status_code == 400
