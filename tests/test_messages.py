"""Messages through the official SDK: content shapes, roles, attachments, modify, delete,
cursor pagination over many messages that share one created_at second, and errors."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from deployments import Deployment, RoundRobinTransport
from openapi_contract import make_validating_http_client


@pytest.fixture
def raw(server: Deployment) -> Iterator[httpx.Client]:
    """Plain HTTP (spread over every API process) whose JSON answers are still checked
    against OpenAI's spec."""
    transport = RoundRobinTransport(server.urls) if len(server.urls) > 1 else None
    with make_validating_http_client(
        require=False, base_url=server.url, timeout=30, transport=transport
    ) as sdk_less:
        yield sdk_less


@pytest.fixture
def thread_id(client: openai.OpenAI) -> str:
    return client.beta.threads.create().id


def _text(message: openai.types.beta.threads.Message) -> str:
    part = message.content[0]
    assert part.type == "text"
    return part.text.value


def test_create_with_string_content(client: openai.OpenAI, thread_id: str) -> None:
    message = client.beta.threads.messages.create(
        thread_id, role="user", content="What is 2 + 2?", metadata={"k": "v"}
    )
    assert message.id.startswith("msg_")
    assert message.object == "thread.message"
    assert message.thread_id == thread_id
    assert message.role == "user"
    assert message.status == "completed"
    assert message.assistant_id is None and message.run_id is None
    assert message.attachments == []
    assert message.metadata == {"k": "v"}
    assert len(message.content) == 1
    assert message.content[0].type == "text"
    assert message.content[0].text.value == "What is 2 + 2?"
    assert message.content[0].text.annotations == []
    assert client.beta.threads.messages.retrieve(message.id, thread_id=thread_id) == message


def test_create_with_parts_and_assistant_role(client: openai.OpenAI, thread_id: str) -> None:
    image = client.files.create(file=("pic.jpg", b"\xff\xd8\xff fake jpeg"), purpose="vision")
    doc = client.files.create(file=("doc.md", b"# doc"), purpose="assistants")
    message = client.beta.threads.messages.create(
        thread_id,
        role="assistant",
        content=[
            {"type": "text", "text": "first"},
            {"type": "image_file", "image_file": {"file_id": image.id}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            {"type": "text", "text": "last"},
        ],
        attachments=[{"file_id": doc.id, "tools": [{"type": "file_search"}]}],
    )
    assert message.role == "assistant"
    assert [p.type for p in message.content] == ["text", "image_file", "image_url", "text"]
    assert message.content[0].type == "text" and message.content[0].text.value == "first"
    assert message.content[1].type == "image_file"
    assert message.content[1].image_file.file_id == image.id
    assert message.content[2].type == "image_url"
    assert message.content[2].image_url.url == "https://example.com/a.png"
    assert message.content[3].type == "text" and message.content[3].text.value == "last"
    assert message.attachments is not None
    assert message.attachments[0].file_id == doc.id
    assert [t.type for t in message.attachments[0].tools or []] == ["file_search"]
    assert client.beta.threads.messages.retrieve(message.id, thread_id=thread_id) == message


def test_invalid_messages_are_400(client: openai.OpenAI, raw: httpx.Client, thread_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.messages.create(thread_id, role="system", content="x")  # type: ignore[arg-type]
    assert err.value.body["param"] == "role"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.messages.create(thread_id, role="user", content=[])
    assert err.value.body["param"] == "content"  # type: ignore[index]
    # The message names the real problem (an empty list), not the string alternative.
    assert "valid string" not in err.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.messages.create(
            thread_id,
            role="user",
            content=[{"type": "text"}],  # type: ignore[list-item]
        )
    assert err.value.body["param"] == "content[0].text"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.messages.create(
            thread_id,
            role="user",
            content=[{"type": "video", "video": {}}],  # type: ignore[list-item]
        )
    assert err.value.body["param"] == "content[0].type"  # type: ignore[index]
    assert "video" in err.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.messages.create(
            thread_id,
            role="user",
            content="x",
            attachments=[{"file_id": "file-doesnotexist", "tools": [{"type": "file_search"}]}],
        )
    assert err.value.body["param"] == "attachments[0].file_id"  # type: ignore[index]
    assert "file-doesnotexist" in err.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.messages.create(
            thread_id,
            role="user",
            content=[
                {"type": "text", "text": "see"},
                {"type": "image_file", "image_file": {"file_id": "file-doesnotexist"}},
            ],
        )
    assert err.value.body["param"] == "content[1].image_file.file_id"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.messages.create(
            thread_id,
            role="user",
            content="x",
            attachments=[{"file_id": "f", "tools": [{"type": "browser"}]}],  # type: ignore[list-item]
        )
    assert err.value.body["param"] == "attachments[0].tools[0].type"  # type: ignore[index]

    missing_role = raw.post(f"/v1/threads/{thread_id}/messages", json={"content": "x"})
    assert missing_role.status_code == 400
    assert missing_role.json()["error"] == {
        "message": "Missing required parameter: 'role'.",
        "type": "invalid_request_error",
        "param": "role",
        "code": None,
    }
    unknown = raw.post(
        f"/v1/threads/{thread_id}/messages", json={"role": "user", "content": "x", "file_ids": []}
    )
    assert unknown.status_code == 400
    assert unknown.json()["error"]["message"] == "Unrecognized request argument supplied: file_ids"
    # None of the rejected messages was stored.
    assert client.beta.threads.messages.list(thread_id).data == []


def test_metadata_limits(client: openai.OpenAI, thread_id: str) -> None:
    sixteen = {f"key{i}": "v" for i in range(16)}
    assert (
        client.beta.threads.messages.create(
            thread_id, role="user", content="ok", metadata=sixteen
        ).metadata
        == sixteen
    )
    edge = {"k" * 64: "v" * 512}
    assert (
        client.beta.threads.messages.create(
            thread_id, role="user", content="ok", metadata=edge
        ).metadata
        == edge
    )
    for bad in (
        {f"key{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"k": "v" * 513},
    ):
        with pytest.raises(openai.BadRequestError) as err:
            client.beta.threads.messages.create(thread_id, role="user", content="x", metadata=bad)
        assert err.value.body["param"] == "metadata"  # type: ignore[index]
    message = client.beta.threads.messages.create(thread_id, role="user", content="x")
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.messages.update(
            message.id, thread_id=thread_id, metadata={"k": "v" * 513}
        )
    assert err.value.body["param"] == "metadata"  # type: ignore[index]


def test_modify_and_delete(client: openai.OpenAI, raw: httpx.Client, thread_id: str) -> None:
    message = client.beta.threads.messages.create(
        thread_id, role="user", content="hello", metadata={"a": "1"}
    )
    updated = client.beta.threads.messages.update(
        message.id, thread_id=thread_id, metadata={"b": "2"}
    )
    assert updated.metadata == {"b": "2"}
    assert updated.content == message.content and updated.created_at == message.created_at
    assert client.beta.threads.messages.retrieve(message.id, thread_id=thread_id) == updated
    unknown = raw.post(f"/v1/threads/{thread_id}/messages/{message.id}", json={"content": "new"})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "content"
    no_body = raw.post(f"/v1/threads/{thread_id}/messages/{message.id}")
    assert no_body.status_code == 200, no_body.text
    assert no_body.json()["metadata"] == {"b": "2"}

    keep = client.beta.threads.messages.create(thread_id, role="user", content="kept")
    deleted = client.beta.threads.messages.delete(message.id, thread_id=thread_id)
    assert deleted.id == message.id
    assert deleted.object == "thread.message.deleted"
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError) as err:
        client.beta.threads.messages.retrieve(message.id, thread_id=thread_id)
    assert message.id in err.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.messages.delete(message.id, thread_id=thread_id)
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.messages.update(message.id, thread_id=thread_id, metadata={})
    assert [m.id for m in client.beta.threads.messages.list(thread_id)] == [keep.id]


def test_message_of_another_thread_is_404(client: openai.OpenAI, thread_id: str) -> None:
    other = client.beta.threads.create(messages=[{"role": "user", "content": "elsewhere"}])
    foreign = client.beta.threads.messages.list(other.id).data[0]
    for call in (
        lambda: client.beta.threads.messages.retrieve(foreign.id, thread_id=thread_id),
        lambda: client.beta.threads.messages.update(foreign.id, thread_id=thread_id, metadata={}),
        lambda: client.beta.threads.messages.delete(foreign.id, thread_id=thread_id),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.body["message"] == f"No message found with id '{foreign.id}'."  # type: ignore[index]
    # Still there, untouched, in its own thread.
    assert client.beta.threads.messages.retrieve(foreign.id, thread_id=other.id) == foreign
    with pytest.raises(openai.NotFoundError) as err:
        client.beta.threads.messages.create("thread_doesnotexist", role="user", content="x")
    assert "thread_doesnotexist" in err.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.messages.list("thread_doesnotexist")
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.messages.retrieve("msg_doesnotexist", thread_id=thread_id)


def test_list_limit_order_and_cursors(
    client: openai.OpenAI, raw: httpx.Client, thread_id: str
) -> None:
    made = [
        client.beta.threads.messages.create(thread_id, role="user", content=f"m{i}").id
        for i in range(6)
    ]
    default = client.beta.threads.messages.list(thread_id, limit=2)
    assert [m.id for m in default.data] == [made[5], made[4]]  # newest first by default
    assert default.has_more is True
    assert default.first_id == made[5] and default.last_id == made[4]

    asc = client.beta.threads.messages.list(thread_id, order="asc", limit=3, after=made[0])
    assert [m.id for m in asc.data] == made[1:4]
    assert asc.has_more is True
    tail = client.beta.threads.messages.list(thread_id, order="asc", limit=3, after=made[3])
    assert [m.id for m in tail.data] == made[4:]
    assert tail.has_more is False

    desc_after = client.beta.threads.messages.list(thread_id, limit=2, after=made[4])
    assert [m.id for m in desc_after.data] == [made[3], made[2]]
    desc_before = client.beta.threads.messages.list(thread_id, limit=2, before=made[1])
    assert [m.id for m in desc_before.data] == [made[3], made[2]]
    asc_before = client.beta.threads.messages.list(thread_id, order="asc", limit=2, before=made[4])
    assert [m.id for m in asc_before.data] == [made[2], made[3]]
    between = client.beta.threads.messages.list(
        thread_id, order="asc", after=made[1], before=made[4]
    )
    assert [m.id for m in between.data] == [made[2], made[3]]
    nothing_after = client.beta.threads.messages.list(thread_id, order="asc", after=made[5])
    assert nothing_after.data == [] and nothing_after.has_more is False
    assert nothing_after.first_id is None and nothing_after.last_id is None

    everything = client.beta.threads.messages.list(thread_id, limit=100)
    assert [m.id for m in everything.data] == made[::-1]
    assert everything.has_more is False

    no_run = client.beta.threads.messages.list(thread_id, run_id="run_doesnotexist")
    assert no_run.data == [] and no_run.has_more is False
    assert no_run.first_id is None and no_run.last_id is None

    for params, param in (
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"order": "random"}, "order"),
        ({"after": "msg_doesnotexist"}, "after"),
        ({"before": "msg_doesnotexist"}, "before"),
    ):
        bad = raw.get(f"/v1/threads/{thread_id}/messages", params=params)
        assert bad.status_code == 400, params
        assert bad.json()["error"]["param"] == param


def test_auto_pagination_over_many_pages(client: openai.OpenAI, thread_id: str) -> None:
    # 45 messages written within a second or two: most share created_at, so only the
    # insertion-order tie-breaker keeps the cursors exact.
    made = [
        client.beta.threads.messages.create(thread_id, role="user", content=f"n{i}").id
        for i in range(45)
    ]
    first_page = client.beta.threads.messages.list(thread_id, limit=10, order="asc")
    assert len(first_page.data) == 10 and first_page.has_more is True
    seen = [m.id for m in client.beta.threads.messages.list(thread_id, limit=10, order="asc")]
    assert seen == made
    newest_first = [m.id for m in client.beta.threads.messages.list(thread_id, limit=7)]
    assert newest_first == made[::-1]
    texts = [_text(m) for m in client.beta.threads.messages.list(thread_id, limit=100, order="asc")]
    assert texts == [f"n{i}" for i in range(45)]


def _assert_not_a_cursor(raw: httpx.Client, path: str, foreign_id: str) -> None:
    """`foreign_id` exists but lies outside the list at `path`: it is refused as a cursor with
    the very answer an unknown id gets."""
    for param in ("after", "before"):
        answer = raw.get(path, params={param: foreign_id})
        assert answer.status_code == 400, (path, param, answer.text)
        assert answer.json() == {
            "error": {
                "message": f"Invalid '{param}': no object found with id '{foreign_id}'.",
                "type": "invalid_request_error",
                "param": param,
                "code": None,
            }
        }


def test_a_cursor_from_another_thread_is_refused(
    client: openai.OpenAI, raw: httpx.Client, thread_id: str
) -> None:
    mine = [
        client.beta.threads.messages.create(thread_id, role="user", content=f"c{i}").id
        for i in range(3)
    ]
    other = client.beta.threads.create().id
    theirs = client.beta.threads.messages.create(other, role="user", content="elsewhere").id
    _assert_not_a_cursor(raw, f"/v1/threads/{thread_id}/messages", theirs)
    # Within its own thread the same id is a cursor, and so are this thread's ids here.
    assert client.beta.threads.messages.list(other, after=theirs).data == []
    page = client.beta.threads.messages.list(thread_id, order="asc", after=mine[0])
    assert [m.id for m in page.data] == mine[1:]


def test_run_and_step_cursors_from_elsewhere_are_refused(
    client: openai.OpenAI, raw: httpx.Client
) -> None:
    assistant_id = client.beta.assistants.create(model="scripted-model").id
    runs = []
    for _ in range(2):
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "hello"}])
        run = client.beta.threads.runs.create_and_poll(
            thread_id=thread.id, assistant_id=assistant_id, poll_interval_ms=20
        )
        assert run.status == "completed"
        runs.append(run)
    first, second = runs
    _assert_not_a_cursor(raw, f"/v1/threads/{first.thread_id}/runs", second.id)
    assert client.beta.threads.runs.list(second.thread_id, after=second.id).data == []

    step = client.beta.threads.runs.steps.list(second.id, thread_id=second.thread_id).data[0]
    _assert_not_a_cursor(raw, f"/v1/threads/{first.thread_id}/runs/{first.id}/steps", step.id)
    own = client.beta.threads.runs.steps.list(second.id, thread_id=second.thread_id, after=step.id)
    assert own.data == []
