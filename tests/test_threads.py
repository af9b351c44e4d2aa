"""Threads through the official SDK (and raw HTTP for what it cannot send): create with and
without a body, initial messages, tool_resources, modify, delete with its messages, errors."""

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


def _text(message: openai.types.beta.threads.Message) -> str:
    part = message.content[0]
    assert part.type == "text"
    return part.text.value


def test_create_without_body_or_with_empty_object(client: openai.OpenAI, raw: httpx.Client) -> None:
    no_body = raw.post("/v1/threads")
    assert no_body.status_code == 200, no_body.text
    empty = raw.post("/v1/threads", json={})
    assert empty.status_code == 200, empty.text
    empty_bytes = raw.post("/v1/threads", content=b"", headers={"content-type": "application/json"})
    assert empty_bytes.status_code == 200, empty_bytes.text
    ids = {r.json()["id"] for r in (no_body, empty, empty_bytes)}
    assert len(ids) == 3 and all(i.startswith("thread_") for i in ids)
    body = empty.json()
    assert body["object"] == "thread"
    assert body["metadata"] == {}
    assert isinstance(body["created_at"], int)
    sdk = client.beta.threads.create()
    assert sdk.id.startswith("thread_") and sdk.object == "thread"
    assert sdk.metadata == {}
    assert client.beta.threads.retrieve(sdk.id) == sdk


def test_original_readme_curl_flow_at_root_without_auth(
    server: Deployment, raw: httpx.Client
) -> None:
    # `curl -X POST http://localhost:3000/threads`: no body, no auth header, no /v1.
    created = httpx.post(f"{server.url}/threads", timeout=30)
    assert created.status_code == 200, created.text
    thread = created.json()
    assert thread["object"] == "thread" and thread["id"].startswith("thread_")
    assert raw.get(f"/threads/{thread['id']}").json() == thread
    assert raw.get(f"/v1/threads/{thread['id']}").json() == thread
    message = raw.post(
        f"/threads/{thread['id']}/messages", json={"role": "user", "content": "hello"}
    )
    assert message.status_code == 200, message.text
    listed = raw.get(f"/threads/{thread['id']}/messages").json()
    assert [m["id"] for m in listed["data"]] == [message.json()["id"]]


def test_create_with_messages_of_every_shape(client: openai.OpenAI) -> None:
    image = client.files.create(file=("cat.png", b"\x89PNG fake"), purpose="vision")
    doc = client.files.create(file=("notes.txt", b"notes"), purpose="assistants")
    thread = client.beta.threads.create(
        messages=[
            {"role": "user", "content": "plain string", "metadata": {"n": "0"}},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look at these"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/cat.png", "detail": "low"},
                    },
                    {"type": "image_file", "image_file": {"file_id": image.id, "detail": "high"}},
                ],
            },
            {
                "role": "assistant",
                "content": "with attachments",
                "attachments": [
                    {
                        "file_id": doc.id,
                        "tools": [{"type": "code_interpreter"}, {"type": "file_search"}],
                    }
                ],
            },
        ],
        metadata={"source": "test"},
    )
    assert thread.metadata == {"source": "test"}
    messages = list(client.beta.threads.messages.list(thread.id, order="asc"))
    assert len(messages) == 3
    first, second, third = messages
    assert all(m.thread_id == thread.id for m in messages)
    assert [m.role for m in messages] == ["user", "user", "assistant"]
    assert _text(first) == "plain string"
    assert first.metadata == {"n": "0"}
    assert first.attachments == []
    assert [p.type for p in second.content] == ["text", "image_url", "image_file"]
    assert second.content[1].type == "image_url"
    assert second.content[1].image_url.url == "https://example.com/cat.png"
    assert second.content[1].image_url.detail == "low"
    assert second.content[2].type == "image_file"
    assert second.content[2].image_file.file_id == image.id
    assert second.content[2].image_file.detail == "high"
    assert _text(third) == "with attachments"
    assert third.attachments is not None and len(third.attachments) == 1
    assert third.attachments[0].file_id == doc.id
    assert [t.type for t in third.attachments[0].tools or []] == [
        "code_interpreter",
        "file_search",
    ]
    newest_first = [m.id for m in client.beta.threads.messages.list(thread.id)]
    assert newest_first == [third.id, second.id, first.id]


def test_tool_resources_are_stored_and_checked(client: openai.OpenAI) -> None:
    file = client.files.create(file=("data.csv", b"a,b\n1,2\n"), purpose="assistants")
    thread = client.beta.threads.create(
        tool_resources={"code_interpreter": {"file_ids": [file.id]}}
    )
    assert thread.tool_resources is not None
    assert thread.tool_resources.code_interpreter is not None
    assert thread.tool_resources.code_interpreter.file_ids == [file.id]
    assert client.beta.threads.retrieve(thread.id).tool_resources == thread.tool_resources

    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.create(
            tool_resources={"code_interpreter": {"file_ids": [file.id, "file-nope"]}}
        )
    assert err.value.body["param"] == "tool_resources.code_interpreter.file_ids[1]"  # type: ignore[index]
    assert "file-nope" in err.value.body["message"]  # type: ignore[index]


def test_initial_message_with_unknown_file_is_rejected(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.create(
            messages=[
                {"role": "user", "content": "fine"},
                {
                    "role": "user",
                    "content": "bad",
                    "attachments": [{"file_id": "file-missing", "tools": []}],
                },
            ]
        )
    assert err.value.body["param"] == "messages[1].attachments[0].file_id"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.create(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "x"},
                        {"type": "image_file", "image_file": {"file_id": "file-missing"}},
                    ],
                }
            ]
        )
    assert err.value.body["param"] == "messages[0].content[1].image_file.file_id"  # type: ignore[index]


def test_modify_metadata_and_tool_resources(client: openai.OpenAI, raw: httpx.Client) -> None:
    file = client.files.create(file=("x.py", b"print(1)"), purpose="assistants")
    thread = client.beta.threads.create(metadata={"a": "1"})
    updated = client.beta.threads.update(thread.id, metadata={"b": "2"})
    assert updated.id == thread.id and updated.created_at == thread.created_at
    assert updated.metadata == {"b": "2"}
    with_files = client.beta.threads.update(
        thread.id, tool_resources={"code_interpreter": {"file_ids": [file.id]}}
    )
    assert with_files.metadata == {"b": "2"}
    assert with_files.tool_resources is not None
    assert with_files.tool_resources.code_interpreter is not None
    assert with_files.tool_resources.code_interpreter.file_ids == [file.id]
    assert client.beta.threads.retrieve(thread.id) == with_files

    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.update(
            thread.id, tool_resources={"code_interpreter": {"file_ids": ["file-gone"]}}
        )
    assert err.value.body["param"] == "tool_resources.code_interpreter.file_ids[0]"  # type: ignore[index]
    # A rejected update changes nothing.
    assert client.beta.threads.retrieve(thread.id) == with_files

    # Every field of the update is optional, so an empty (or absent) body is a no-op.
    for response in (
        raw.post(f"/v1/threads/{thread.id}", json={}),
        raw.post(f"/v1/threads/{thread.id}"),
    ):
        assert response.status_code == 200, response.text
        assert response.json()["metadata"] == {"b": "2"}

    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.update(thread.id, metadata={f"k{i}": "v" for i in range(17)})
    assert err.value.body["param"] == "metadata"  # type: ignore[index]


def test_delete_removes_thread_and_its_messages(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "first"}])
    message = client.beta.threads.messages.create(thread.id, role="user", content="second")
    deleted = client.beta.threads.delete(thread.id)
    assert deleted.id == thread.id
    assert deleted.object == "thread.deleted"
    assert deleted.deleted is True

    with pytest.raises(openai.NotFoundError) as err:
        client.beta.threads.retrieve(thread.id)
    assert thread.id in err.value.body["message"]  # type: ignore[index]
    assert err.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.messages.retrieve(message.id, thread_id=thread.id)
    with pytest.raises(openai.NotFoundError) as err:
        client.beta.threads.messages.list(thread.id)
    assert thread.id in err.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.messages.create(thread.id, role="user", content="too late")
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.update(thread.id, metadata={"a": "b"})
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.delete(thread.id)


def test_unknown_thread_is_404(client: openai.OpenAI) -> None:
    for call in (
        lambda: client.beta.threads.retrieve("thread_doesnotexist"),
        lambda: client.beta.threads.update("thread_doesnotexist", metadata={}),
        lambda: client.beta.threads.delete("thread_doesnotexist"),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.status_code == 404
        assert err.value.body == {  # type: ignore[comparison-overlap]
            "message": "No thread found with id 'thread_doesnotexist'.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }


def test_unknown_and_invalid_fields_are_400(raw: httpx.Client) -> None:
    unknown = raw.post("/v1/threads", json={"messages": [], "colour": "red"})
    assert unknown.status_code == 400
    assert unknown.json() == {
        "error": {
            "message": "Unrecognized request argument supplied: colour",
            "type": "invalid_request_error",
            "param": "colour",
            "code": None,
        }
    }
    nested = raw.post(
        "/v1/threads", json={"messages": [{"role": "user", "content": "x", "name": "bob"}]}
    )
    assert nested.status_code == 400
    assert nested.json()["error"]["message"] == (
        "Unrecognized request argument supplied: messages[0].name"
    )
    thread_id = raw.post("/v1/threads").json()["id"]
    unknown_on_modify = raw.post(f"/v1/threads/{thread_id}", json={"messages": []})
    assert unknown_on_modify.status_code == 400
    assert unknown_on_modify.json()["error"]["param"] == "messages"

    bad_role = raw.post("/v1/threads", json={"messages": [{"role": "system", "content": "x"}]})
    assert bad_role.status_code == 400
    assert bad_role.json()["error"]["param"] == "messages[0].role"
    assert bad_role.json()["error"]["type"] == "invalid_request_error"
    missing_content = raw.post("/v1/threads", json={"messages": [{"role": "user"}]})
    assert missing_content.status_code == 400
    assert missing_content.json()["error"]["param"] == "messages[0].content"
    bad_metadata = raw.post("/v1/threads", json={"metadata": {"k": 1}})
    assert bad_metadata.status_code == 400
    assert bad_metadata.json()["error"]["param"] == "metadata.k"
    not_a_list = raw.post("/v1/threads", json={"messages": "hello"})
    assert not_a_list.status_code == 400
    assert not_a_list.json()["error"]["param"] == "messages"
