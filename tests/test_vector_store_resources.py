"""Stores made by other objects, through the official SDK in both modes: the
`tool_resources.file_search.vector_stores` helper on assistants, threads and create-and-run,
and message attachments with the file_search tool filling the thread's store (made on first
use, expiring 7 days after its last use), searched by a run with citations.

The deployment searches by keywords only (HAL9100_EMBEDDINGS=none), as test_file_search_runs.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import DeployFactory
from deployments import Deployment
from runs_support import POLL_MS, marker

SEVEN_DAYS = {"anchor": "last_active_at", "days": 7}


@pytest.fixture(scope="module")
def deployment(module_deployment: DeployFactory) -> Deployment:
    return module_deployment(HAL9100_EMBEDDINGS="none")


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


def _store_of(resources: Any) -> str:
    assert resources is not None and resources.file_search is not None, resources
    (store_id,) = resources.file_search.vector_store_ids or []
    return str(store_id)


def _files(sdk: openai.OpenAI, store_id: str) -> set[str]:
    return {f.id for f in sdk.vector_stores.files.list(vector_store_id=store_id, limit=100).data}


def test_assistant_helper_makes_a_store(sdk: openai.OpenAI) -> None:
    file_id = _upload(sdk, "Helpers make stores.")
    assistant = sdk.beta.assistants.create(
        model="gpt-4o",
        tools=[{"type": "file_search"}],
        tool_resources={
            "file_search": {
                "vector_stores": [
                    {
                        "file_ids": [file_id, file_id],
                        "metadata": {"made": "helper"},
                        "chunking_strategy": {
                            "type": "static",
                            "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 50},
                        },
                    }
                ]
            }
        },
    )
    store_id = _store_of(assistant.tool_resources)
    assert sdk.beta.assistants.retrieve(assistant.id).tool_resources == assistant.tool_resources
    store = _ready(sdk, store_id)
    assert store.status == "completed" and store.file_counts.completed == 1
    assert store.metadata == {"made": "helper"}
    # An assistant's store does not expire; a thread's does.
    assert store.expires_after is None and store.expires_at is None
    (vs_file,) = sdk.vector_stores.files.list(vector_store_id=store_id).data
    assert vs_file.id == file_id
    assert vs_file.chunking_strategy is not None
    assert vs_file.chunking_strategy.model_dump()["static"] == {
        "max_chunk_size_tokens": 200,
        "chunk_overlap_tokens": 50,
    }
    # Modify with another helper: a new store replaces the reference.
    updated = sdk.beta.assistants.update(
        assistant.id, tool_resources={"file_search": {"vector_stores": [{"file_ids": []}]}}
    )
    assert _store_of(updated.tool_resources) not in ("", store_id)


def test_thread_helper_and_attachments_share_the_thread_store(sdk: openai.OpenAI) -> None:
    first, second, third = (_upload(sdk, f"text {i}") for i in range(3))
    thread = sdk.beta.threads.create(
        tool_resources={"file_search": {"vector_stores": [{"file_ids": [first]}]}},
        messages=[
            {
                "role": "user",
                "content": "hi",
                "attachments": [{"file_id": second, "tools": [{"type": "file_search"}]}],
            }
        ],
    )
    store_id = _store_of(thread.tool_resources)
    store = _ready(sdk, store_id)
    assert store.expires_after is not None
    assert store.expires_after.model_dump() == SEVEN_DAYS
    assert store.expires_at == store.last_active_at + 7 * 86_400
    assert _files(sdk, store_id) == {first, second}
    # A later message adds to the same store; a code_interpreter attachment does not.
    sdk.beta.threads.messages.create(
        thread.id,
        role="user",
        content="more",
        attachments=[
            {"file_id": third, "tools": [{"type": "file_search"}, {"type": "code_interpreter"}]}
        ],
    )
    ci_only = _upload(sdk, "code")
    message = sdk.beta.threads.messages.create(
        thread.id,
        role="user",
        content="code",
        attachments=[{"file_id": ci_only, "tools": [{"type": "code_interpreter"}]}],
    )
    assert message.attachments is not None and message.attachments[0].file_id == ci_only
    assert _store_of(sdk.beta.threads.retrieve(thread.id).tool_resources) == store_id
    assert _files(sdk, store_id) == {first, second, third}
    assert _ready(sdk, store_id).file_counts.completed == 3


def test_first_attachment_makes_the_thread_store(sdk: openai.OpenAI) -> None:
    thread = sdk.beta.threads.create()
    assert not thread.tool_resources or not thread.tool_resources.file_search
    file_id = _upload(sdk, "first attachment")
    sdk.beta.threads.messages.create(
        thread.id,
        role="user",
        content="see file",
        attachments=[{"file_id": file_id, "tools": [{"type": "file_search"}]}],
    )
    store_id = _store_of(sdk.beta.threads.retrieve(thread.id).tool_resources)
    store = _ready(sdk, store_id)
    assert store.file_counts.completed == 1 and store.expires_after is not None
    # A thread store deleted meanwhile is replaced by a new one on the next attachment.
    sdk.vector_stores.delete(store_id)
    other = _upload(sdk, "second attachment")
    sdk.beta.threads.messages.create(
        thread.id,
        role="user",
        content="again",
        attachments=[{"file_id": other, "tools": [{"type": "file_search"}]}],
    )
    replaced = _store_of(sdk.beta.threads.retrieve(thread.id).tool_resources)
    assert replaced != store_id
    assert _files(sdk, replaced) == {other}


def test_thread_and_run_helper_and_attachments_are_searched(sdk: openai.OpenAI) -> None:
    word = marker()
    helper_file = _upload(sdk, f"The {word} harbour is called Port Elnor.", "harbour.txt")
    attached = _upload(sdk, f"The {word} mountain is called Mount Vessa.", "mountain.txt")
    assistant = sdk.beta.assistants.create(model="gpt-4o", tools=[{"type": "file_search"}])
    # No wait for ingestion here: the run's search waits for the thread's store, as OpenAI's.
    run = sdk.beta.threads.create_and_run(
        assistant_id=assistant.id,
        thread={
            "messages": [
                {
                    "role": "user",
                    "content": f'[[call:file_search {{"query": "{word}"}}]] '
                    "[[reply@1:Port Elnor【0:0†h】.]] where?",
                    "attachments": [{"file_id": attached, "tools": [{"type": "file_search"}]}],
                }
            ],
        },
        tool_resources={"file_search": {"vector_stores": [{"file_ids": [helper_file]}]}},
    )
    deadline = time.monotonic() + 60
    while run.status in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(POLL_MS / 1000)
        run = sdk.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)
    assert run.status == "completed", run.last_error
    thread = sdk.beta.threads.retrieve(run.thread_id)
    store_id = _store_of(thread.tool_resources)
    assert _files(sdk, store_id) == {helper_file, attached}
    found = {
        result.file_id
        for step in sdk.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id)
        if step.step_details.type == "tool_calls"
        for call in step.step_details.tool_calls
        if call.type == "file_search"
        for result in call.file_search.results or []
    }
    assert found == {helper_file, attached}
    (answer,) = sdk.beta.threads.messages.list(run.thread_id, run_id=run.id).data
    assert answer.content[0].type == "text"
    (note,) = answer.content[0].text.annotations
    assert note.type == "file_citation"
    assert note.file_citation.file_id in (helper_file, attached)


def test_attachment_searched_by_a_run_with_citation(sdk: openai.OpenAI) -> None:
    word = marker()
    file_id = _upload(sdk, f"The {word} lighthouse keeper is Ada Brill.", "keeper.txt")
    assistant = sdk.beta.assistants.create(model="gpt-4o", tools=[{"type": "file_search"}])
    thread = sdk.beta.threads.create(
        messages=[
            {
                "role": "user",
                "content": f'[[call:file_search {{"query": "{word} keeper"}}]] '
                "[[reply@1:Ada Brill【0:0†k】.]] who?",
                "attachments": [{"file_id": file_id, "tools": [{"type": "file_search"}]}],
            }
        ]
    )
    _ready(sdk, _store_of(thread.tool_resources))
    run = sdk.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS
    )
    assert run.status == "completed", run.last_error
    (answer,) = sdk.beta.threads.messages.list(thread.id, run_id=run.id).data
    assert answer.content[0].type == "text"
    text = answer.content[0].text
    assert text.value == "Ada Brill【0:0†k】."
    assert [a.file_citation.file_id for a in text.annotations] == [file_id]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("resources", "param"),
    [
        (
            {"file_search": {"vector_stores": [{"file_ids": ["file-nope"]}]}},
            "tool_resources.file_search.vector_stores[0].file_ids[0]",
        ),
        (
            {"file_search": {"vector_stores": [{"file_ids": []}, {"file_ids": []}]}},
            "tool_resources.file_search.vector_stores",
        ),
        (
            {"file_search": {"vector_store_ids": ["vs_x"], "vector_stores": [{"file_ids": []}]}},
            "tool_resources.file_search",
        ),
        (
            {
                "file_search": {
                    "vector_stores": [
                        {
                            "file_ids": [],
                            "chunking_strategy": {
                                "type": "static",
                                "static": {
                                    "max_chunk_size_tokens": 200,
                                    "chunk_overlap_tokens": 150,
                                },
                            },
                        }
                    ]
                }
            },
            "tool_resources.file_search.vector_stores[0].chunking_strategy",
        ),
    ],
    ids=["unknown-file", "two-stores", "ids-and-helper", "overlap"],
)
@pytest.mark.parametrize("where", ["assistants", "threads"])
def test_bad_helpers_are_refused(
    raw: httpx.Client, sdk: openai.OpenAI, resources: dict[str, Any], param: str, where: str
) -> None:
    before = {s.id for s in sdk.vector_stores.list(limit=100).data}
    body: dict[str, Any] = {"tool_resources": resources}
    if where == "assistants":
        body["model"] = "gpt-4o"
    answer = raw.post(f"/v1/{where}", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param, answer.json()
    # Nothing was half made.
    assert {s.id for s in sdk.vector_stores.list(limit=100).data} <= before | set()


def test_attachment_of_unknown_file_makes_no_store(raw: httpx.Client, sdk: openai.OpenAI) -> None:
    thread = sdk.beta.threads.create()
    answer = raw.post(
        f"/v1/threads/{thread.id}/messages",
        json={
            "role": "user",
            "content": "x",
            "attachments": [
                {"file_id": f"file-{uuid.uuid4().hex}", "tools": [{"type": "file_search"}]}
            ],
        },
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "attachments[0].file_id"
    assert not (sdk.beta.threads.retrieve(thread.id).tool_resources or {}) or not (
        sdk.beta.threads.retrieve(thread.id).tool_resources.file_search  # type: ignore[union-attr]
    )


_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",))
    | st.sampled_from(["\x00", "【", "†"]),
    max_size=300,
)


@settings(max_examples=15, deadline=None)
@given(metadata_value=_TEXT)
def test_hostile_helper_metadata(deployment: Deployment, metadata_value: str) -> None:
    """Helper metadata with NUL and odd text: stored as given, or refused with a 400 (never
    a 500), and a refused request makes no store."""
    with httpx.Client(base_url=deployment.url, timeout=30) as client:
        answer = client.post(
            "/v1/threads",
            json={
                "tool_resources": {
                    "file_search": {
                        "vector_stores": [{"file_ids": [], "metadata": {"k": metadata_value}}]
                    }
                }
            },
        )
        assert answer.status_code in (200, 400), answer.text
        if answer.status_code == 200:
            store_id = answer.json()["tool_resources"]["file_search"]["vector_store_ids"][0]
            store = client.get(f"/v1/vector_stores/{store_id}").json()
            assert store["metadata"] == {"k": metadata_value}


def test_concurrent_attachments_share_one_thread_store(sdk: openai.OpenAI) -> None:
    """Messages attaching files to a thread at the same moment (across API processes in
    production) all land in the one store the thread ends up with; the same file attached
    twice at once is in it once."""
    from concurrent.futures import ThreadPoolExecutor

    files = [_upload(sdk, f"Concurrent file number {i}.", f"c{i}.txt") for i in range(6)]
    thread = sdk.beta.threads.create()

    def attach(file_id: str) -> None:
        sdk.beta.threads.messages.create(
            thread.id,
            role="user",
            content="see the file",
            attachments=[{"file_id": file_id, "tools": [{"type": "file_search"}]}],
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(attach, [*files, files[0], files[0]]))
    store_id = _store_of(sdk.beta.threads.retrieve(thread.id).tool_resources)
    assert _files(sdk, store_id) == set(files)
    assert _ready(sdk, store_id).file_counts.total == len(files)
