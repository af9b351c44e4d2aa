"""Streamed responses through the official SDK: OpenAI's `response.*` events in order, each
with its `sequence_number` and checked against the spec's schema for its type; the SDK's
stream helper; a function call streamed; and a stream cut off and resumed with
`starting_after` (in production mode, on another API process) losing nothing."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from responses_support import check_events, read_events
from runs_support import marker

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def test_a_streamed_response(client: openai.OpenAI) -> None:
    word = marker()
    stream = client.responses.create(
        model="scripted-model", input=f"{word} [[reply:One two three.]]", stream=True
    )
    events = check_events([event.model_dump(mode="json", exclude_unset=True) for event in stream])
    kinds = [e["type"] for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas >= 2
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0]["sequence_number"] == 0
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "One two three."
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert final["output"][0]["content"][0]["text"] == text
    stored = client.responses.retrieve(final["id"])
    assert stored.output_text == text
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == []


def test_the_sdks_stream_helper(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model="scripted-model", input="[[reply:Hi from the helper.]]"
    ) as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == "Hi from the helper."
    assert final.output_text == "Hi from the helper."


def test_a_function_call_streams(client: openai.OpenAI) -> None:
    stream = client.responses.create(
        model="scripted-model",
        input='[[call:get_weather {"city": "Quito"}]]',
        tools=[WEATHER],  # type: ignore[list-item]
        stream=True,
    )
    events = check_events([event.model_dump(mode="json", exclude_unset=True) for event in stream])
    kinds = [e["type"] for e in events]
    assert kinds[0:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    arguments = "".join(
        e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"
    )
    assert json.loads(arguments) == {"city": "Quito"}
    done = events[-2]["item"]
    assert done["type"] == "function_call" and done["name"] == "get_weather"
    assert events[-1]["response"]["output"] == [done]


def test_a_stream_cut_off_is_resumed(http: httpx.Client, client: openai.OpenAI) -> None:
    """The client reads some events, loses its connection, and asks (maybe another API
    process) for the rest: it gets exactly the events it missed, while the response runs
    and after it ended."""
    body = {
        "model": "scripted-model",
        "input": "[[slow:30]] [[tokens:40]]",
        "stream": True,
        "background": True,
    }
    with http.stream("POST", "/v1/responses", json=body) as answer:
        assert answer.status_code == 200
        head = read_events(answer, stop_after=8)
    response_id = head[0]["response"]["id"]
    assert [e["type"] for e in head[:2]] == ["response.created", "response.queued"]
    seen = head[-1]["sequence_number"]
    with http.stream(
        "GET", f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": seen}
    ) as answer:
        assert answer.status_code == 200
        rest = read_events(answer)
    events = check_events(head + rest)
    assert events[-1]["type"] == "response.completed"
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == client.responses.retrieve(response_id).output_text
    # After the end, the whole stream again, numbered alike.
    with http.stream("GET", f"/v1/responses/{response_id}", params={"stream": "true"}) as answer:
        again = read_events(answer)
    assert [(e["type"], e["sequence_number"]) for e in again] == [
        (e["type"], e["sequence_number"]) for e in events
    ]


def test_starting_after_without_stream_is_refused(
    http: httpx.Client, client: openai.OpenAI
) -> None:
    response = client.responses.create(model="scripted-model", input="[[reply:x]]")
    answer = http.get(f"/v1/responses/{response.id}", params={"starting_after": 3})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "starting_after"


@pytest.mark.parametrize("store", [False])
def test_a_streamed_response_that_is_not_stored(client: openai.OpenAI, store: bool) -> None:
    stream = client.responses.create(
        model="scripted-model", input="[[reply:Forget me.]]", stream=True, store=store
    )
    events = [event.model_dump(mode="json", exclude_unset=True) for event in stream]
    assert events[-1]["type"] == "response.completed"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(events[0]["response"]["id"])


def test_a_replay_after_the_bus_let_go_is_numbered_alike(mode: str, deploy: Any) -> None:
    """The bus keeps a run's log a while only (here: embedded mode's, shortened); the log a
    stream followed to the end is kept, and a replay after the bus dropped it is the same
    stream."""
    if mode != "embedded":
        pytest.skip("a deployment of its own per mode: the kept log is the same code in both")
    deployment = deploy(HAL9100_EVENT_RETAIN_SECONDS="0.5")
    with httpx.Client(base_url=deployment.url, timeout=30) as http:
        body = {"model": "scripted-model", "input": "[[tokens:12]]", "stream": True}
        with http.stream("POST", "/v1/responses", json=body) as answer:
            live = read_events(answer)
        response_id = live[0]["response"]["id"]
        time.sleep(2)  # the bus's copy is gone by now
        with http.stream(
            "GET", f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": 5}
        ) as answer:
            rest = read_events(answer)
    assert [(e["type"], e["sequence_number"]) for e in rest] == [
        (e["type"], e["sequence_number"]) for e in live[6:]
    ]
