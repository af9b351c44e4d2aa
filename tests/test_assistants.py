"""Assistants through the official SDK: every field stored and returned, pagination, errors."""

from __future__ import annotations

import httpx
import openai
import pytest


def test_create_retrieve_with_every_field(client: openai.OpenAI) -> None:
    created = client.beta.assistants.create(
        model="gpt-4o",
        name="Math tutor",
        description="Helps with sums",
        instructions="You are a personal math tutor.",
        tools=[
            {"type": "code_interpreter"},
            {"type": "file_search", "file_search": {"max_num_results": 7}},
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                    "strict": True,
                },
            },
        ],
        metadata={"team": "math"},
        temperature=0.3,
        top_p=0.9,
        response_format={"type": "json_object"},
        reasoning_effort="low",
    )
    assert created.id.startswith("asst_")
    assert created.object == "assistant"
    got = client.beta.assistants.retrieve(created.id)
    assert got == created
    assert got.name == "Math tutor"
    assert got.description == "Helps with sums"
    assert [t.type for t in got.tools] == ["code_interpreter", "file_search", "function"]
    assert got.tools[1].file_search is not None and got.tools[1].file_search.max_num_results == 7
    assert got.tools[2].function.name == "get_weather"
    assert got.tools[2].function.strict is True
    assert got.metadata == {"team": "math"}
    assert got.temperature == 0.3 and got.top_p == 0.9
    assert got.response_format is not None and got.response_format.type == "json_object"  # type: ignore[union-attr]
    assert got.reasoning_effort == "low"


def test_defaults_match_openai(client: openai.OpenAI) -> None:
    created = client.beta.assistants.create(model="m")
    assert created.name is None and created.instructions is None
    assert created.tools == []
    assert created.metadata == {}
    assert created.temperature == 1.0 and created.top_p == 1.0
    assert created.response_format == "auto"


def test_tool_resources_file_ids_checked(client: openai.OpenAI) -> None:
    file = client.files.create(file=("a.txt", b"hello"), purpose="assistants")
    created = client.beta.assistants.create(
        model="m",
        tools=[{"type": "code_interpreter"}],
        tool_resources={"code_interpreter": {"file_ids": [file.id]}},
    )
    assert created.tool_resources is not None
    assert created.tool_resources.code_interpreter is not None
    assert created.tool_resources.code_interpreter.file_ids == [file.id]
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.assistants.create(
            model="m", tool_resources={"code_interpreter": {"file_ids": ["file-nope"]}}
        )
    assert err.value.body["param"] == "tool_resources.code_interpreter.file_ids[0]"  # type: ignore[index]


def test_modify_changes_only_given_fields(client: openai.OpenAI) -> None:
    created = client.beta.assistants.create(
        model="m1", name="a", instructions="x", metadata={"k": "v"}
    )
    updated = client.beta.assistants.update(created.id, name="b", model="m2", metadata={"k2": "v2"})
    assert updated.name == "b" and updated.model == "m2"
    assert updated.instructions == "x"
    assert updated.metadata == {"k2": "v2"}
    cleared = client.beta.assistants.update(created.id, instructions=None)
    assert cleared.instructions is None and cleared.name == "b"
    assert client.beta.assistants.retrieve(created.id) == cleared


def test_delete_then_404(client: openai.OpenAI) -> None:
    created = client.beta.assistants.create(model="m")
    deleted = client.beta.assistants.delete(created.id)
    assert deleted.id == created.id and deleted.deleted is True
    assert deleted.object == "assistant.deleted"
    with pytest.raises(openai.NotFoundError) as err:
        client.beta.assistants.retrieve(created.id)
    assert err.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert created.id in err.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.beta.assistants.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.beta.assistants.update(created.id, name="x")


def test_list_pagination_order_and_cursors(client: openai.OpenAI) -> None:
    tag = {"suite": "pagination"}
    made = [
        client.beta.assistants.create(model="m", name=f"p{i}", metadata=tag).id for i in range(7)
    ]
    # Several share one created_at second: cursors must still be exact.
    page = client.beta.assistants.list(limit=3, order="asc", after=made[0])
    assert [a.id for a in page.data] == made[1:4]
    assert page.has_more is True
    assert page.first_id == made[1] and page.last_id == made[3]
    desc = client.beta.assistants.list(limit=2, order="desc", before=made[3])
    assert [a.id for a in desc.data] == [made[5], made[4]]
    asc_before = client.beta.assistants.list(limit=2, order="asc", before=made[3])
    assert [a.id for a in asc_before.data] == [made[1], made[2]]
    # Auto-pagination over many pages with the SDK's iterator.
    seen = [a.id for a in client.beta.assistants.list(limit=2, order="asc", after=made[0])]
    assert [i for i in seen if i in made] == made[1:]
    newest_first = [a.id for a in client.beta.assistants.list(limit=100)]
    positions = [newest_first.index(i) for i in made]
    assert positions == sorted(positions, reverse=True)


def test_bad_input_is_400_in_openai_shape(client: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.assistants.create(model="m", temperature=5)
    assert err.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.assistants.create(model="m", metadata={f"k{i}": "v" for i in range(17)})
    assert err.value.body["param"] == "metadata"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.beta.assistants.create(model="m", metadata={"k" * 65: "v"})
    with pytest.raises(openai.BadRequestError):
        client.beta.assistants.create(model="m", name="n" * 257)
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.assistants.create(
            model="m", tools=[{"type": "function", "function": {"name": "bad name!"}}]
        )
    assert err.value.body["param"] == "tools[0].function.name"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.beta.assistants.create(model="m", tools=[{"type": "browser"}])  # type: ignore[list-item]

    missing = http.post("/v1/assistants", json={"name": "no model"})
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "model"
    unknown = http.post("/v1/assistants", json={"model": "m", "colour": "red"})
    assert unknown.status_code == 400
    assert unknown.json() == {
        "error": {
            "message": "Unrecognized request argument supplied: colour",
            "type": "invalid_request_error",
            "param": "colour",
            "code": None,
        }
    }
    broken = http.post(
        "/v1/assistants", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400
    assert broken.json()["error"]["type"] == "invalid_request_error"
    not_object = http.post("/v1/assistants", json=[1, 2])
    assert not_object.status_code == 400
    bad_limit = http.get("/v1/assistants", params={"limit": 0})
    assert bad_limit.status_code == 400 and bad_limit.json()["error"]["param"] == "limit"
    bad_order = http.get("/v1/assistants", params={"order": "sideways"})
    assert bad_order.status_code == 400
    unknown_cursor = http.get("/v1/assistants", params={"after": "asst_nope"})
    assert unknown_cursor.status_code == 400
    assert unknown_cursor.json()["error"]["param"] == "after"


def test_root_paths_and_beta_header(server, http: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    created = http.post(
        "/assistants",
        json={"model": "open-orca/mistral-7b-openorca", "instructions": "hi"},
        headers={"OpenAI-Beta": "assistants=v2"},
    )
    assert created.status_code == 200
    body = created.json()
    assert http.get(f"/v1/assistants/{body['id']}").json() == body
    assert http.get(f"/assistants/{body['id']}").json() == body
    unknown_route = http.get("/v1/nothing-here")
    assert unknown_route.status_code == 404
    assert unknown_route.json()["error"]["type"] == "invalid_request_error"
