"""The file_search tool in runs, end to end through the official SDK: the stores searched (the
assistant's and the thread's), the results the model reads under citation markers, the step
details (content only with `include[]`), and the markers of the answer made `file_citation`
annotations, in the stored message and in the stream alike.

The deployment searches by keywords only (HAL9100_EMBEDDINGS=none): which chunks are found is
not the point here, and the local embedding model would only slow ingestion down.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import openai
import pytest

from conftest import DeployFactory
from deployments import Deployment
from openapi_contract import spec_available, validate_schema
from responses_support import check_events as check_response_events
from runs_support import POLL_MS, CollectEvents, marker, requests_with
from scripted_llm import ScriptedLLM

INCLUDE = "step_details.tool_calls[*].file_search.results[*].content"


@pytest.fixture(scope="module")
def deployment(module_deployment: DeployFactory) -> Deployment:
    return module_deployment(HAL9100_EMBEDDINGS="none")


def _store(sdk: openai.OpenAI, files: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A vector store holding these files (name -> text), ingested: its id and the files'."""
    store = sdk.vector_stores.create(name=f"store-{uuid.uuid4().hex[:6]}")
    ids: dict[str, str] = {}
    for name, text in files.items():
        uploaded = sdk.files.create(file=(name, text.encode(), "text/plain"), purpose="assistants")
        done = sdk.vector_stores.files.create_and_poll(
            vector_store_id=store.id, file_id=uploaded.id, poll_interval_ms=POLL_MS
        )
        assert done.status == "completed", done.last_error
        ids[name] = uploaded.id
    return store.id, ids


def _assistant(sdk: openai.OpenAI, store_ids: list[str], **tool: Any) -> str:
    return sdk.beta.assistants.create(
        model="gpt-4o",
        tools=[{"type": "file_search", **({"file_search": tool} if tool else {})}],
        tool_resources={"file_search": {"vector_store_ids": store_ids}} if store_ids else None,
    ).id


def _steps(raw: httpx.Client, thread_id: str, run_id: str, include: bool) -> list[dict[str, Any]]:
    params = {"order": "asc", "limit": "100"}
    if include:
        params["include[]"] = INCLUDE
    answer = raw.get(f"/v1/threads/{thread_id}/runs/{run_id}/steps", params=params)
    assert answer.status_code == 200, answer.text
    steps: list[dict[str, Any]] = answer.json()["data"]
    if spec_available():
        for step in steps:
            validate_schema(step, "RunStepObject")
    return steps


def _search_call(steps: list[dict[str, Any]]) -> dict[str, Any]:
    (call,) = [
        c for s in steps if s["type"] == "tool_calls" for c in s["step_details"]["tool_calls"]
    ]
    assert call["type"] == "file_search" and call["id"], call
    return call


def _answer(sdk: openai.OpenAI, thread_id: str, run_id: str) -> Any:
    (message,) = sdk.beta.threads.messages.list(thread_id=thread_id, run_id=run_id).data
    (part,) = message.content
    assert part.type == "text"
    return part.text


def test_search_results_and_citations(
    sdk: openai.OpenAI, raw: httpx.Client, scripted_llm: ScriptedLLM
) -> None:
    word = marker()
    mine, mine_ids = _store(sdk, {"zorblax.txt": f"The capital of Zorblax {word} is Quimby."})
    theirs, their_ids = _store(sdk, {"notes.md": f"Zorblax {word} exports blue cheese."})
    assistant_id = _assistant(sdk, [mine], max_num_results=5)
    thread = sdk.beta.threads.create(
        tool_resources={"file_search": {"vector_store_ids": [theirs]}},
        messages=[
            {
                "role": "user",
                "content": f'[[call:file_search {{"query": "Zorblax {word}"}}]] '
                "[[reply@1:Quimby【0:0†a】, cheese [0:1†b] and more【3:9†made-up】.]] "
                "tell me",
            }
        ],
    )
    run = sdk.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    assert run.status == "completed", run.last_error

    # The model was offered the function, and read both files' chunks under their markers.
    first, second = requests_with(scripted_llm, word)[-2:]
    (offered,) = [t for t in first["tools"] if t["function"]["name"] == "file_search"]
    assert offered["function"]["parameters"]["required"] == ["query"]
    output = second["messages"][-1]["content"]
    assert second["messages"][-1]["role"] == "tool"
    assert "【0:0†" in output and "【0:1†" in output
    assert "Quimby" in output and "blue cheese" in output

    # Step details: OpenAI's shape, the content only when asked for.
    call = _search_call(_steps(raw, thread.id, run.id, include=False))
    assert set(call["file_search"]) == {"ranking_options", "results"}
    assert call["file_search"]["ranking_options"] == {"ranker": "auto", "score_threshold": 0.0}
    results = call["file_search"]["results"]
    assert {r["file_id"] for r in results} == {mine_ids["zorblax.txt"], their_ids["notes.md"]}
    assert all("content" not in r and 0 <= r["score"] <= 1 for r in results)
    call = _search_call(_steps(raw, thread.id, run.id, include=True))
    with_content = call["file_search"]["results"]
    assert [r["file_id"] for r in with_content] == [r["file_id"] for r in results]
    texts = {r["file_name"]: r["content"][0]["text"] for r in with_content}
    assert "Quimby" in texts["zorblax.txt"] and "cheese" in texts["notes.md"]
    step_id = next(
        s["id"] for s in _steps(raw, thread.id, run.id, False) if s["type"] != "message_creation"
    )
    one = raw.get(
        f"/v1/threads/{thread.id}/runs/{run.id}/steps/{step_id}", params={"include[]": INCLUDE}
    ).json()
    assert "content" in one["step_details"]["tool_calls"][0]["file_search"]["results"][0]

    # The answer: known markers annotated (ASCII brackets too), the made-up one removed.
    text = _answer(sdk, thread.id, run.id)
    assert text.value == "Quimby【0:0†a】, cheese [0:1†b] and more."
    notes = [a.model_dump() for a in text.annotations]
    assert [(n["text"], n["file_citation"]["file_id"]) for n in notes] == [
        ("【0:0†a】", results[0]["file_id"]),
        ("[0:1†b]", results[1]["file_id"]),
    ]
    for note in notes:
        assert text.value[note["start_index"] : note["end_index"]] == note["text"]


@pytest.mark.parametrize("include", [False, True], ids=["plain", "include"])
def test_stream_accumulates_the_stored_message(sdk: openai.OpenAI, include: bool) -> None:
    word = marker()
    store, ids = _store(sdk, {"a.txt": f"Alpha {word} is the first letter."})
    assistant_id = _assistant(sdk, [store])
    # The answer's markers cut across chunks anywhere, one of them unknown.
    chunks = [
        "Alpha",
        " is first",
        "【",
        "0:",
        "0†a.t",
        "xt】",
        " (see [0",
        ":0†x",
        "])",
        "【1:",
        "0†no】.",
    ]
    thread = sdk.beta.threads.create(
        messages=[
            {
                "role": "user",
                "content": f'[[call:file_search {{"query": "Alpha {word}"}}]] '
                f"[[chunks:{json.dumps(chunks, ensure_ascii=False)} ]]",
            }
        ]
    )
    handler = CollectEvents()
    with sdk.beta.threads.runs.stream(
        thread_id=thread.id,
        assistant_id=assistant_id,
        event_handler=handler,
        include=[INCLUDE] if include else [],  # type: ignore[list-item]
    ) as stream:
        stream.until_done()
        final = stream.get_final_messages()
    run = handler.current_run
    assert run is not None and run.status == "completed", run
    # What the SDK accumulated from the deltas is what the API stores.
    value = "".join(
        part.text.value or ""
        for item in handler.events
        if item.event == "thread.message.delta"
        for part in item.data.delta.content or []
        if part.type == "text" and part.text is not None
    )
    streamed_notes = [
        a.model_dump(exclude={"index"}, exclude_none=True)
        for item in handler.events
        if item.event == "thread.message.delta"
        for part in item.data.delta.content or []
        if part.type == "text" and part.text is not None
        for a in part.text.annotations or []
    ]
    stored = _answer(sdk, thread.id, run.id)
    assert value == stored.value == "Alpha is first【0:0†a.txt】 (see [0:0†x])."
    stored_notes = [a.model_dump(exclude_none=True) for a in stored.annotations]
    assert streamed_notes == stored_notes
    assert [n["file_citation"]["file_id"] for n in stored_notes] == [ids["a.txt"]] * 2
    (message,) = final
    assert message.content[0].type == "text"
    assert message.content[0].text.value == stored.value
    # Streamed steps carry the content as the run was created: with include[] or without.
    found = [
        result
        for item in handler.events
        if item.event == "thread.run.step.completed"
        for call in item.data.model_dump()["step_details"].get("tool_calls") or []
        for result in (call.get("file_search") or {}).get("results") or []
    ]
    assert found
    for result in found:
        assert (result.get("content") is not None) == include
    # The call streams as OpenAI streams it: a file_search call, not a function.
    deltas = [
        call
        for item in handler.events
        if item.event == "thread.run.step.delta"
        for call in item.data.model_dump()["delta"]["step_details"].get("tool_calls") or []
    ]
    assert deltas
    assert all(call["type"] == "file_search" for call in deltas), deltas


def test_no_store_and_no_query(sdk: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    word = marker()
    assistant_id = _assistant(sdk, [])
    thread = sdk.beta.threads.create(
        messages=[
            {
                "role": "user",
                "content": f'[[call:file_search {{"query": "{word}"}}]] '
                '[[call:file_search {"query": "  "}]] go',
            }
        ]
    )
    run = sdk.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    assert run.status == "completed", run.last_error
    outputs = [
        m["content"]
        for m in requests_with(scripted_llm, word)[-1]["messages"]
        if m["role"] == "tool"
    ]
    assert outputs[0].startswith("There are no files to search")
    assert outputs[1].startswith("Error: give a `query`")


def test_turns_number_calls_across_rounds_and_replay(
    sdk: openai.OpenAI, raw: httpx.Client, scripted_llm: ScriptedLLM
) -> None:
    """Two rounds of file_search in one run: the second call's markers say turn 1, markers of
    both rounds are cited, and the first round is replayed to the model with its output."""
    word = marker()
    store, ids = _store(sdk, {"b.txt": f"Beta {word} is the second letter."})
    assistant_id = _assistant(sdk, [store])
    thread = sdk.beta.threads.create(
        messages=[
            {
                "role": "user",
                "content": f'[[call@0:file_search {{"query": "Beta {word}"}}]] '
                f'[[call@1:file_search {{"queries": ["second {word}", "letter"]}}]] '
                "[[reply@2:Second【1:0†b】 and【0:0†b】.]] go",
            }
        ]
    )
    run = sdk.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    assert run.status == "completed", run.last_error
    *_, second, third = requests_with(scripted_llm, word)
    tools = [m for m in third["messages"] if m["role"] == "tool"]
    assert len(tools) == 2
    assert "【0:0†b.txt】" in tools[0]["content"] and "【1:0†b.txt】" in tools[1]["content"]
    # The replayed first call: its arguments and output as the model saw them the first time.
    assert tools[0]["content"] == second["messages"][-1]["content"]
    calls = [m for m in third["messages"] if m.get("tool_calls")]
    assert json.loads(calls[1]["tool_calls"][0]["function"]["arguments"]) == {
        "queries": [f"second {word}", "letter"]
    }
    text = _answer(sdk, thread.id, run.id)
    assert [a.model_dump()["file_citation"]["file_id"] for a in text.annotations] == [
        ids["b.txt"]
    ] * 2


def test_hostile_queries_search(sdk: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    """NUL, lone surrogates (as JSON escapes in the arguments), FTS and tsquery syntax and
    20,000 characters: the search answers."""
    word = marker()
    store, _ = _store(sdk, {"h.txt": f"Hostile {word} text."})
    assistant_id = _assistant(sdk, [store])
    long = "x" * 20_000
    queries = [
        f"\\u0000 Hostile {word} \\ud800",
        f'Hostile {word} AND ( "unbalanced * OR NEAR(',
        f"Hostile {word} {long}",
    ]
    calls = " ".join(
        f"[[call:file_search {json.dumps({'query': q})}]]".replace("\\\\", "\\") for q in queries
    )
    thread = sdk.beta.threads.create(messages=[{"role": "user", "content": f"{calls} go"}])
    run = sdk.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    assert run.status == "completed", run.last_error
    last = requests_with(scripted_llm, word)[-1]
    outputs = [m["content"] for m in last["messages"] if m["role"] == "tool"]
    assert len(outputs) == 3
    for output in outputs:
        assert not output.startswith("Error"), output


def test_tool_choice_file_search_forces_the_function(
    sdk: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    word = marker()
    assistant_id = _assistant(sdk, [])
    thread = sdk.beta.threads.create(
        messages=[{"role": "user", "content": f'[[call:file_search {{"query": "{word}"}}]] go'}]
    )
    run = sdk.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant_id,
        tool_choice={"type": "file_search"},
        poll_interval_ms=POLL_MS,
    )
    assert run.status == "completed", run.last_error
    first, second = requests_with(scripted_llm, word)[-2:]
    assert first["tool_choice"] == {"type": "function", "function": {"name": "file_search"}}
    # The forced tool ran: the model now chooses (as the Agents SDK's reset_tool_choice).
    assert second.get("tool_choice") in (None, "auto")


def test_the_run_reads_as_conversation_items(sdk: openai.OpenAI) -> None:
    """The thread as the Conversations API shows it: the search as a `file_search_call`
    item (its results with `include`), the answer's citations as `file_citation`
    annotations naming the file."""
    word = marker()
    store, ids = _store(sdk, {"zorblax.txt": f"The capital of Zorblax {word} is Quimby."})
    assistant_id = _assistant(sdk, [store])
    thread = sdk.beta.threads.create(
        messages=[
            {
                "role": "user",
                "content": f'[[call:file_search {{"query": "Zorblax {word}"}}]] '
                "[[reply@1:Quimby【0:0†a】.]] tell me",
            }
        ]
    )
    run = sdk.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    assert run.status == "completed", run.last_error
    plain = sdk.conversations.items.list(thread.id, order="asc").data
    assert [item.type for item in plain] == ["message", "file_search_call", "message"]
    search = plain[1]
    assert search.type == "file_search_call"
    assert search.queries == [f"Zorblax {word}"]
    assert search.status == "completed"
    assert search.results is None
    answer = plain[2]
    assert answer.type == "message"
    (part,) = answer.content
    assert part.type == "output_text"
    assert part.text == "Quimby."
    (citation,) = part.annotations
    assert citation.type == "file_citation"
    assert (citation.file_id, citation.filename) == (ids["zorblax.txt"], "zorblax.txt")
    assert citation.index == len("Quimby")
    detailed = sdk.conversations.items.retrieve(
        search.id, conversation_id=thread.id, include=["file_search_call.results"]
    )
    assert detailed.type == "file_search_call"
    assert detailed.results is not None
    (result,) = detailed.results
    assert result.file_id == ids["zorblax.txt"]
    assert result.filename == "zorblax.txt"
    assert result.text is not None and word in result.text


def test_file_search_through_responses(sdk: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    """A response with `file_search` over its own stores (and a filter): the search is a
    `file_search_call` item, the answer cites the file, streamed and stored alike."""
    word = marker()
    store, ids = _store(sdk, {"quimby.txt": f"The capital of Zorblax {word} is Quimby."})
    other, _ = _store(sdk, {"other.txt": f"Zorblax {word} is far away."})
    tool = {"type": "file_search", "vector_store_ids": [store]}
    prompt = (
        f'[[call:file_search {{"query": "Zorblax {word}"}}]] [[reply@1:Quimby【0:0†a】.]] where?'
    )
    response = sdk.responses.create(
        model="gpt-4o",
        input=prompt,
        tools=[tool],  # type: ignore[list-item]
        include=["file_search_call.results"],
    )
    assert response.status == "completed", response.error
    search, answer = response.output
    assert search.type == "file_search_call"
    assert search.queries == [f"Zorblax {word}"]
    assert search.results is not None
    assert {r.file_id for r in search.results} == {ids["quimby.txt"]}
    assert answer.type == "message"
    part = answer.content[0]
    assert part.type == "output_text" and part.text == "Quimby."
    (citation,) = part.annotations
    assert citation.type == "file_citation" and citation.filename == "quimby.txt"
    assert citation.index == len("Quimby")
    # The model read the store's chunk, not the other store's.
    tool_said = requests_with(scripted_llm, f"Zorblax {word}")[-1]["messages"][-1]
    assert tool_said["role"] == "tool" and "Quimby" in tool_said["content"]
    assert "far away" not in tool_said["content"]
    streamed = sdk.responses.create(
        model="gpt-4o",
        input=prompt,
        tools=[tool],
        stream=True,  # type: ignore[list-item]
    )
    events = check_response_events(
        [e.model_dump(mode="json", exclude_unset=True) for e in streamed]
    )
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "Quimby."
    added = [
        (e["output_index"], e["item"]["type"])
        for e in events
        if e["type"] == "response.output_item.added"
    ]
    assert added == [(0, "file_search_call"), (1, "message")]
    kinds = [e["type"] for e in events]
    assert kinds.index("response.file_search_call.completed") < kinds.index(
        "response.output_text.delta"
    )
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done == events[-1]["response"]["output"]
    notes = [e for e in events if e["type"] == "response.output_text.annotation.added"]
    assert [a["annotation"]["filename"] for a in notes] == ["quimby.txt"]
    assert events[-1]["type"] == "response.completed"
    with pytest.raises(openai.NotFoundError):
        sdk.responses.create(
            model="gpt-4o",
            input="x",
            tools=[{"type": "file_search", "vector_store_ids": ["vs_missing"]}],
        )
    assert other


def test_max_tool_calls_bounds_the_searches_of_a_response(
    sdk: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    """`max_tool_calls: 1`: of two searches in one turn, one runs; the model is told the
    other was not, and the response shows the one it made."""
    word = marker()
    store, _ = _store(sdk, {"notes.txt": f"Zorblax {word} exports blue cheese."})
    response = sdk.responses.create(
        model="gpt-4o",
        input=(
            f'[[call:file_search {{"query": "Zorblax {word}"}}]] '
            f'[[call:file_search {{"query": "cheese {word}"}}]] [[reply@1:Done.]]'
        ),
        tools=[{"type": "file_search", "vector_store_ids": [store]}],
        max_tool_calls=1,
    )
    assert response.status == "completed", response.error
    assert response.max_tool_calls == 1
    assert [item.type for item in response.output] == ["file_search_call", "message"]
    said = [
        m
        for m in requests_with(scripted_llm, f"cheese {word}")[-1]["messages"]
        if m["role"] == "tool"
    ]
    assert len(said) == 2
    assert sum("max_tool_calls" in m["content"] for m in said) == 1
