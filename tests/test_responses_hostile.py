"""Hostile input to the Responses and Conversations APIs: any JSON in place of input items,
content parts, tools and tool choices is answered (a response, or 400/404 in OpenAI's error
shape naming a param), never with a 5xx, and never leaves a conversation that cannot be
listed. Lone surrogates and NUL anywhere in an item are refused naming where."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(
        [
            "message",
            "function_call",
            "function_call_output",
            "reasoning",
            "file_search_call",
            "code_interpreter_call",
            "input_text",
            "output_text",
            "input_image",
            "user",
            "assistant",
            "system",
            "function",
            "namespace",
            "file_search",
            "code_interpreter",
            "auto",
        ]
    ),
)
KEYS = st.sampled_from(
    [
        "type",
        "role",
        "content",
        "text",
        "call_id",
        "name",
        "arguments",
        "output",
        "summary",
        "queries",
        "results",
        "outputs",
        "annotations",
        "image_url",
        "file_id",
        "detail",
        "tools",
        "container",
        "vector_store_ids",
        "filters",
        "parameters",
        "namespace",
        "id",
        "status",
    ]
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=6)),
    max_leaves=20,
)
items = st.lists(st.dictionaries(KEYS, json_values, max_size=6), max_size=4)


def _answered(answer: httpx.Response) -> None:
    assert answer.status_code < 500, answer.text
    if answer.status_code >= 400:
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error


@pytest.fixture
def conversation_id(http: httpx.Client) -> str:
    answer = http.post("/v1/conversations", json={})
    assert answer.status_code == 200
    return str(answer.json()["id"])


@PROPERTY
@given(given_items=items)
def test_any_items_added_to_a_conversation(
    http: httpx.Client, conversation_id: str, given_items: list[Any]
) -> None:
    _answered(http.post(f"/v1/conversations/{conversation_id}/items", json={"items": given_items}))
    listed = http.get(f"/v1/conversations/{conversation_id}/items", params={"limit": 100})
    assert listed.status_code == 200, listed.text


@PROPERTY
@given(
    given_input=st.one_of(items, json_values),
    tools=st.one_of(st.none(), items),
    choice=st.one_of(st.none(), json_values),
)
def test_any_response_request(
    http: httpx.Client, given_input: Any, tools: Any, choice: Any
) -> None:
    body: dict[str, Any] = {"model": "scripted-model", "input": given_input}
    if tools is not None:
        body["tools"] = tools
    if choice is not None:
        body["tool_choice"] = choice
    _answered(http.post("/v1/responses", json=body))
    counted = http.post("/v1/responses/input_tokens", json=body)
    _answered(counted)


@pytest.mark.parametrize("bad", ["\x00", "\ud800"])
def test_invalid_text_in_an_item_is_refused_naming_where(http: httpx.Client, bad: str) -> None:
    # Escaped as JSON allows (`\\u0000`, `\\ud800`): the SDK cannot even send it.
    raw = json.dumps(
        {
            "model": "m",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": f"a{bad}b"}]}],
        }
    )
    answer = http.post(
        "/v1/responses", content=raw.encode(), headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "input[0].content[0].text"
