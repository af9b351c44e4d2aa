"""Code written for the first Assistants API (`OpenAI-Beta: assistants=v1`), in both modes,
over plain HTTP: requests as openai-python 1.20 sent them (`retrieval` tools, `file_ids` on
assistants and messages; that SDK cannot be installed beside the current one), answered in
v1's shapes, mapped onto file_search and vector stores, and refused without the header as
OpenAI's v2 refuses them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import DeployFactory
from deployments import Deployment
from hal9100.core.beta import event_v1, parse_header
from runs_support import marker

# What openai-python 1.20 put on every Assistants request.
V1 = {"OpenAI-Beta": "assistants=v1", "Content-Type": "application/json"}
V1_ASSISTANT_KEYS = {
    "id",
    "object",
    "created_at",
    "name",
    "description",
    "model",
    "instructions",
    "tools",
    "file_ids",
    "metadata",
}
# openai-python 1.20's `Run`: no top_p, parallel_tool_calls, reasoning_effort.
V1_RUN_KEYS = {
    "id",
    "object",
    "created_at",
    "thread_id",
    "assistant_id",
    "status",
    "required_action",
    "last_error",
    "expires_at",
    "started_at",
    "cancelled_at",
    "failed_at",
    "completed_at",
    "incomplete_details",
    "model",
    "instructions",
    "tools",
    "file_ids",
    "metadata",
    "usage",
    "temperature",
    "max_prompt_tokens",
    "max_completion_tokens",
    "truncation_strategy",
    "tool_choice",
    "response_format",
}
V1_MESSAGE_KEYS = {
    "id",
    "object",
    "created_at",
    "thread_id",
    "status",
    "incomplete_details",
    "completed_at",
    "incomplete_at",
    "role",
    "content",
    "assistant_id",
    "run_id",
    "file_ids",
    "metadata",
}


@pytest.fixture(scope="module")
def deployment(module_deployment: DeployFactory) -> Deployment:
    return module_deployment(HAL9100_EMBEDDINGS="none")


@pytest.fixture
def v1(deployment: Deployment) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=deployment.url + "/v1", timeout=30, headers=V1) as client:
        yield client


def _ok(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _upload(sdk: openai.OpenAI, text: str, name: str = "doc.txt") -> str:
    return sdk.files.create(file=(name, text.encode(), "text/plain"), purpose="assistants").id


def _ready(sdk: openai.OpenAI, store_id: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        store = sdk.vector_stores.retrieve(store_id)
        if store.status != "in_progress":
            return store
        assert time.monotonic() < deadline, f"store {store_id} still in progress"
        time.sleep(0.05)


def _owned_store(sdk: openai.OpenAI, assistant_id: str) -> str:
    resources = sdk.beta.assistants.retrieve(assistant_id).tool_resources
    assert resources is not None and resources.file_search is not None
    (store_id,) = resources.file_search.vector_store_ids or []
    return str(store_id)


def _files(sdk: openai.OpenAI, store_id: str) -> list[str]:
    listed = sdk.vector_stores.files.list(vector_store_id=store_id, limit=100, order="asc")
    return [f.id for f in listed.data]


def test_v1_assistant_with_retrieval_and_file_ids(v1: httpx.Client, sdk: openai.OpenAI) -> None:
    a, b, c = (_upload(sdk, f"file {i}") for i in range(3))
    created = _ok(
        v1.post(
            "/assistants",
            json={
                "model": "gpt-4-turbo-preview",
                "name": "Librarian",
                "instructions": "Answer from the files.",
                "tools": [{"type": "retrieval"}, {"type": "code_interpreter"}],
                "file_ids": [a, b],
            },
        )
    )
    assert set(created) == V1_ASSISTANT_KEYS
    assert created["tools"] == [{"type": "retrieval"}, {"type": "code_interpreter"}]
    assert created["file_ids"] == [a, b]
    assistant_id = created["id"]

    # The v2 view: file_search and a store the assistant owns.
    v2 = sdk.beta.assistants.retrieve(assistant_id)
    assert [t.type for t in v2.tools] == ["file_search", "code_interpreter"]
    store_id = _owned_store(sdk, assistant_id)
    assert _files(sdk, store_id) == [a, b]
    assert _ready(sdk, store_id).file_counts.completed == 2

    # Modify: the new file added, the dropped one removed from the same store.
    modified = _ok(v1.post(f"/assistants/{assistant_id}", json={"file_ids": [b, c]}))
    assert modified["file_ids"] == [b, c]
    assert _owned_store(sdk, assistant_id) == store_id
    assert set(_files(sdk, store_id)) == {b, c}
    assert _ok(v1.get(f"/assistants/{assistant_id}"))["file_ids"] == [b, c]
    listed = _ok(v1.get("/assistants", params={"limit": 100}))
    (mine,) = [item for item in listed["data"] if item["id"] == assistant_id]
    assert set(mine) == V1_ASSISTANT_KEYS and mine["file_ids"] == [b, c]

    # Deleting the assistant deletes the store it owns.
    assert _ok(v1.delete(f"/assistants/{assistant_id}"))["deleted"] is True
    with pytest.raises(openai.NotFoundError):
        sdk.vector_stores.retrieve(store_id)


def test_v1_file_ids_checked(v1: httpx.Client) -> None:
    answer = v1.post("/assistants", json={"model": "m", "file_ids": ["file-nope"]})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "file_ids[0]"
    both = v1.post(
        "/assistants",
        json={
            "model": "m",
            "file_ids": [],
            "tool_resources": {"file_search": {"vector_store_ids": []}},
        },
    )
    assert both.status_code == 400 and both.json()["error"]["param"] == "file_ids"


def test_v2_requests_refuse_v1_vocabulary(deployment: Deployment, sdk: openai.OpenAI) -> None:
    thread = sdk.beta.threads.create()
    for header in ({}, {"OpenAI-Beta": "assistants=v2"}):
        with httpx.Client(base_url=deployment.url + "/v1", timeout=30, headers=header) as v2:
            for path, body in [
                ("/assistants", {"model": "m", "file_ids": []}),
                (
                    f"/threads/{thread.id}/messages",
                    {"role": "user", "content": "x", "file_ids": []},
                ),
                ("/threads", {"messages": [{"role": "user", "content": "x", "file_ids": []}]}),
            ]:
                answer = v2.post(path, json=body)
                assert answer.status_code == 400, answer.text
                error = answer.json()["error"]
                assert error["message"].startswith("Unrecognized request argument supplied: ")
                assert error["param"].endswith("file_ids")
            retrieval = v2.post(
                "/assistants", json={"model": "m", "tools": [{"type": "retrieval"}]}
            )
            assert retrieval.status_code == 400
            assert retrieval.json()["error"]["param"] == "tools[0].type"
            assert "'retrieval'" in retrieval.json()["error"]["message"]


def test_v1_messages_with_file_ids(v1: httpx.Client, sdk: openai.OpenAI) -> None:
    a, b = _upload(sdk, "alpha"), _upload(sdk, "beta")
    thread = _ok(
        v1.post("/threads", json={"messages": [{"role": "user", "content": "hi", "file_ids": [a]}]})
    )
    assert "tool_resources" not in thread
    message = _ok(
        v1.post(
            f"/threads/{thread['id']}/messages",
            json={"role": "user", "content": "more", "file_ids": [b]},
        )
    )
    assert set(message) == V1_MESSAGE_KEYS and message["file_ids"] == [b]
    listed = _ok(v1.get(f"/threads/{thread['id']}/messages", params={"order": "asc"}))
    assert [m["file_ids"] for m in listed["data"]] == [[a], [b]]
    assert all(set(m) == V1_MESSAGE_KEYS for m in listed["data"])
    # The v2 view: attachments for file_search, in the thread's store.
    v2 = sdk.beta.threads.messages.retrieve(message["id"], thread_id=thread["id"])
    assert v2.attachments is not None
    assert [(x.file_id, [t.type for t in x.tools or []]) for x in v2.attachments] == [
        (b, ["file_search"])
    ]
    resources = sdk.beta.threads.retrieve(thread["id"]).tool_resources
    assert resources is not None and resources.file_search is not None
    (store_id,) = resources.file_search.vector_store_ids or []
    assert set(_files(sdk, store_id)) == {a, b}


def _v1_librarian(v1: httpx.Client, sdk: openai.OpenAI, word: str) -> tuple[str, str]:
    """A v1 assistant with `retrieval` over one file naming `word`: (assistant id, file id)."""
    file_id = _upload(sdk, f"The {word} treaty was signed in Oslavia.", "treaty.txt")
    assistant = _ok(
        v1.post(
            "/assistants",
            json={
                "model": "gpt-4-1106-preview",
                "tools": [{"type": "retrieval"}],
                "file_ids": [file_id],
            },
        )
    )
    _ready(sdk, _owned_store(sdk, assistant["id"]))
    return assistant["id"], file_id


def _search_then_cite(word: str) -> str:
    return (
        f'[[call:file_search {{"query": "{word} treaty"}}]] '
        "[[reply@1:In Oslavia【0:0†treaty】.]] where?"
    )


def _assert_v1_run(run: dict[str, Any], file_id: str) -> None:
    assert set(run) == V1_RUN_KEYS, set(run) ^ V1_RUN_KEYS
    assert run["tools"] == [{"type": "retrieval"}]
    assert run["file_ids"] == [file_id]


def _assert_v1_steps(v1: httpx.Client, thread_id: str, run_id: str) -> None:
    listed = _ok(v1.get(f"/threads/{thread_id}/runs/{run_id}/steps", params={"order": "asc"}))
    tools, message = listed["data"]
    assert message["type"] == "message_creation"
    (call,) = tools["step_details"]["tool_calls"]
    assert call == {"id": call["id"], "type": "retrieval", "retrieval": {}}
    # Asking for the results' content changes nothing: v1 showed no results.
    one = _ok(
        v1.get(
            f"/threads/{thread_id}/runs/{run_id}/steps/{tools['id']}",
            params={"include[]": "step_details.tool_calls[*].file_search.results[*].content"},
        )
    )
    assert one == tools


def test_v1_run_cites_the_assistant_file(v1: httpx.Client, sdk: openai.OpenAI) -> None:
    word = marker()
    assistant_id, file_id = _v1_librarian(v1, sdk, word)
    thread = _ok(
        v1.post(
            "/threads", json={"messages": [{"role": "user", "content": _search_then_cite(word)}]}
        )
    )
    run = _ok(v1.post(f"/threads/{thread['id']}/runs", json={"assistant_id": assistant_id}))
    _assert_v1_run(run, file_id)
    deadline = time.monotonic() + 60
    while run["status"] in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
        run = _ok(v1.get(f"/threads/{thread['id']}/runs/{run['id']}"))
        _assert_v1_run(run, file_id)
    assert run["status"] == "completed", run["last_error"]
    listed = _ok(v1.get(f"/threads/{thread['id']}/messages", params={"run_id": run["id"]}))
    (answer,) = listed["data"]
    assert set(answer) == V1_MESSAGE_KEYS
    text = answer["content"][0]["text"]
    assert text["value"] == "In Oslavia【0:0†treaty】."
    (note,) = text["annotations"]
    assert note["type"] == "file_citation" and note["file_citation"]["file_id"] == file_id
    assert text["value"][note["start_index"] : note["end_index"]] == note["text"]

    _assert_v1_steps(v1, thread["id"], run["id"])
    (listed_run,) = _ok(v1.get(f"/threads/{thread['id']}/runs"))["data"]
    _assert_v1_run(listed_run, file_id)
    modified = _ok(
        v1.post(f"/threads/{thread['id']}/runs/{run['id']}", json={"metadata": {"k": "v"}})
    )
    _assert_v1_run(modified, file_id)
    assert modified["metadata"] == {"k": "v"}
    # The same run and step in v2's shapes, without the header.
    v2_run = sdk.beta.threads.runs.retrieve(run["id"], thread_id=thread["id"])
    assert [t.type for t in v2_run.tools] == ["file_search"]
    steps = sdk.beta.threads.runs.steps.list(run["id"], thread_id=thread["id"], order="asc")
    details = steps.data[0].step_details
    assert details.type == "tool_calls" and details.tool_calls[0].type == "file_search"


def test_v1_streamed_run_in_v1_shapes(v1: httpx.Client, sdk: openai.OpenAI) -> None:
    word = marker()
    assistant_id, file_id = _v1_librarian(v1, sdk, word)
    answer = v1.post(
        "/threads/runs",
        json={
            "assistant_id": assistant_id,
            "stream": True,
            "tool_choice": {"type": "retrieval"},
            "thread": {"messages": [{"role": "user", "content": _search_then_cite(word)}]},
        },
    )
    assert answer.status_code == 200, answer.text
    events = []
    for block in answer.text.split("\n\n"):
        if block.strip():
            fields = dict(line.split(": ", 1) for line in block.split("\n"))
            events.append((fields["event"], fields["data"]))
    assert events[-1] == ("done", "[DONE]")
    payloads = [(name, json.loads(data)) for name, data in events[:-1]]
    names = [name for name, _ in payloads]
    assert names[-1] == "thread.run.completed", payloads[-1]
    assert "tool_resources" not in dict(payloads)["thread.created"]
    runs = [
        data for name, data in payloads if name.startswith("thread.run.") and "step" not in name
    ]
    assert runs
    for run in runs:
        _assert_v1_run(run, file_id)
        assert run["tool_choice"] == {"type": "retrieval"}
    calls = [
        call
        for name, data in payloads
        if name.startswith("thread.run.step.")
        for call in (data["delta"] if name == "thread.run.step.delta" else data)[
            "step_details"
        ].get("tool_calls", [])
    ]
    assert calls and all(c["type"] == "retrieval" and c["retrieval"] == {} for c in calls)
    messages = [
        data
        for name, data in payloads
        if name.startswith("thread.message.") and name != "thread.message.delta"
    ]
    assert messages and all(set(m) == V1_MESSAGE_KEYS for m in messages)
    assert not any('"type":"file_search"' in data for _, data in events)
    thread_id = runs[-1]["thread_id"]
    _assert_v1_steps(v1, thread_id, runs[-1]["id"])
    # v2 reads the choice as file_search.
    v2_run = sdk.beta.threads.runs.retrieve(runs[-1]["id"], thread_id=thread_id)
    choice = v2_run.tool_choice
    assert choice is not None and not isinstance(choice, str) and choice.type == "file_search"


def test_v1_tool_choice_retrieval_only_under_v1(
    deployment: Deployment, v1: httpx.Client, sdk: openai.OpenAI
) -> None:
    assistant = _ok(v1.post("/assistants", json={"model": "m", "tools": [{"type": "retrieval"}]}))
    body = {"assistant_id": assistant["id"], "tool_choice": {"type": "retrieval"}}
    thread = sdk.beta.threads.create()
    run = _ok(v1.post(f"/threads/{thread.id}/runs", json=body))
    assert run["tool_choice"] == {"type": "retrieval"} and run["file_ids"] == []
    cancelled = _ok(v1.post(f"/threads/{thread.id}/runs/{run['id']}/cancel"))
    assert set(cancelled) == V1_RUN_KEYS
    # Without the retrieval tool, the choice names a tool the run lacks.
    bare = _ok(v1.post("/assistants", json={"model": "m"}))
    refused = v1.post("/threads/runs", json={**body, "assistant_id": bare["id"]})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "tool_choice"
    with httpx.Client(base_url=deployment.url + "/v1", timeout=30) as v2:
        answer = v2.post("/threads/runs", json=body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"].startswith("tool_choice")


def test_v1_create_thread_and_run_maps_retrieval(v1: httpx.Client, sdk: openai.OpenAI) -> None:
    file_id = _upload(sdk, "gamma")
    assistant = _ok(v1.post("/assistants", json={"model": "m"}))
    run = _ok(
        v1.post(
            "/threads/runs",
            json={
                "assistant_id": assistant["id"],
                "tools": [{"type": "retrieval"}],
                "thread": {"messages": [{"role": "user", "content": "x", "file_ids": [file_id]}]},
            },
        )
    )
    assert run["tools"] == [{"type": "retrieval"}] and run["file_ids"] == []
    assert set(run) == V1_RUN_KEYS
    resources = sdk.beta.threads.retrieve(run["thread_id"]).tool_resources
    assert resources is not None and resources.file_search is not None
    (store_id,) = resources.file_search.vector_store_ids or []
    assert _files(sdk, store_id) == [file_id]


@given(st.text(max_size=80))
def test_beta_header_parsing(value: str) -> None:
    """Any header text reads as v1 or v2, and v1 only when it says `assistants=v1`."""
    version = parse_header(value)
    assert version in ("v1", "v2")
    if version == "v1":
        assert "assistants" in value.lower() and "v1" in value.lower()
    # Whatever else the header lists, an `assistants=v1` item among them asks for v1.
    assert parse_header(f"{value},assistants=v1") == "v1"
    assert parse_header("other=v3, Assistants = V1") == "v1"
    assert parse_header("assistants=v2") == "v2"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.sampled_from(
        [
            "thread.created",
            "thread.run.created",
            "thread.run.step.created",
            "thread.run.step.delta",
            "thread.message.completed",
            "thread.message.delta",
            "error",
            "\ud800",
        ]
    ),
    _json,
)
def test_v1_event_shapes_survive_any_payload(event: str, data: Any) -> None:
    """Reshaping a stream event never fails, whatever its payload, and stays JSON."""
    shaped = event_v1(event, data, ["file-\x00"])
    json.dumps(shaped)
    if event == "thread.run.created" and isinstance(data, dict):
        assert set(shaped) == V1_RUN_KEYS
