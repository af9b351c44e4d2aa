"""Hostile request input: text that is not valid Unicode, oversized bodies, huge numbers.

JSON may carry a lone surrogate (`"x\\ud800y"`, what JavaScript produces when it cuts a string
mid-emoji) or NUL; such text is refused with 400 naming the `param`, and every other character
(right-to-left, zero-width, emoji, astral planes, control characters) reads back exactly. No
answer is a 5xx and no list is ever poisoned. Bodies are sent as raw JSON with httpx: the SDK
cannot even encode a lone surrogate.
"""

from __future__ import annotations

import itertools
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import DeployFactory
from deployments import Deployment

# Characters that break naive code yet are valid Unicode and must round-trip.
SPECIAL = [
    "\u202eevil\u202c",  # right-to-left override
    "שלום עולם",  # right-to-left script
    "a\u200bb\u200c\u200d\ufeffc",  # zero-width characters and BOM
    "👩\u200d👩\u200d👧\u200d👦",  # ZWJ emoji sequence
    "\U0001d518\U0001f600\U00010348",  # astral planes
    "\x01\x1f\x7f\x9f",  # control characters other than NUL
    "\ufffd\ufffe\uffff",  # replacement character and non-characters
    "e\u0301",  # combining mark
]
BAD_CHARACTERS = ["\x00", "\ud800", "\udbff", "\udc00", "\udfff"]

valid_text = st.one_of(
    st.sampled_from(SPECIAL),
    st.text(
        st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
        min_size=1,
        max_size=20,
    ),
)
bad_text = st.builds(
    lambda before, bad, after: before + bad + after,
    st.text(max_size=5).filter(lambda s: "\x00" not in s),
    st.one_of(st.sampled_from(BAD_CHARACTERS), st.characters(categories=("Cs",))),
    st.text(max_size=5).filter(lambda s: "\x00" not in s),
)
# (text, whether the server must refuse it)
texts = st.one_of(valid_text.map(lambda t: (t, False)), bad_text.map(lambda t: (t, True)))
# Runs go to the scripted LLM, steered by `[[directives]]`: keep them out of its prompts.
run_texts = texts.filter(lambda pair: "[[" not in pair[0])
# Escaped (`\ud800`) as JavaScript sends it, or raw (UTF-8 bytes of the surrogate).
encodings = st.sampled_from(["escaped", "raw"])

PROPERTY = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def send(http: httpx.Client, path: str, body: Any, encoding: str = "escaped") -> httpx.Response:
    if encoding == "escaped":
        raw = json.dumps(body).encode()
    else:
        raw = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return http.post(path, content=raw, headers={"content-type": "application/json"})


def check(response: httpx.Response, bad: bool, param: str, accepts: bool = True) -> bool:
    """Whether the request was accepted; asserts what it must be."""
    assert response.status_code < 500, response.text
    if bad:
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error", error
        assert error["param"] == param, error
        assert "NUL" in error["message"] or "surrogate" in error["message"], error
        return False
    if accepts:
        assert response.status_code == 200, response.text
    return response.status_code == 200


def assert_lists_answer(http: httpx.Client, thread_id: str, run_id: str | None = None) -> None:
    paths = ["/v1/assistants", f"/v1/threads/{thread_id}/messages", "/v1/files"]
    paths.append(f"/v1/threads/{thread_id}/runs")
    if run_id is not None:
        paths.append(f"/v1/threads/{thread_id}/runs/{run_id}/steps")
    for path in paths:
        for order in ("desc", "asc"):
            response = http.get(path, params={"order": order})
            assert response.status_code == 200, (path, response.text)


@dataclass(frozen=True)
class Field:
    """One string field of a request: how to put text in the body, its `param`, how to
    read it back from the answer (None: not returned as sent), and whether any valid text
    is accepted (a function name must match a pattern; a file id must exist)."""

    param: str
    body: Callable[[str], dict[str, Any]]
    read: Callable[[dict[str, Any]], Any] | None
    accepts: bool = True


def function_tool(**function: Any) -> dict[str, Any]:
    return {"tools": [{"type": "function", "function": {"name": "f", **function}}]}


def schema_property(key: str, description: str) -> dict[str, Any]:
    properties = {key: {"type": "string", "description": description}}
    return function_tool(parameters={"type": "object", "properties": properties})


METADATA_FIELDS = [
    Field("metadata.k", lambda t: {"metadata": {"k": t}}, lambda o: o["metadata"]["k"]),
    # A bad key cannot be named in `param` (the answer must be valid JSON): its object is.
    Field("metadata", lambda t: {"metadata": {t: "v"}}, lambda o: next(iter(o["metadata"]))),
]

ASSISTANT_FIELDS = [
    Field("name", lambda t: {"name": t}, lambda o: o["name"]),
    Field("description", lambda t: {"description": t}, lambda o: o["description"]),
    Field("instructions", lambda t: {"instructions": t}, lambda o: o["instructions"]),
    Field("model", lambda t: {"model": "m" + t}, lambda o: o["model"][1:]),
    *METADATA_FIELDS,
    Field("tools[0].function.name", lambda t: function_tool(name=t), None, accepts=False),
    Field(
        "tools[0].function.description",
        lambda t: function_tool(description=t),
        lambda o: o["tools"][0]["function"]["description"],
    ),
    Field(
        "tools[0].function.parameters.properties.x.description",
        lambda t: schema_property("x", t),
        lambda o: o["tools"][0]["function"]["parameters"]["properties"]["x"]["description"],
    ),
    Field(
        "tools[0].function.parameters.properties",
        lambda t: schema_property(t, "d"),
        lambda o: next(iter(o["tools"][0]["function"]["parameters"]["properties"])),
    ),
    Field(
        "response_format.json_schema.description",
        lambda t: {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "s", "description": t, "schema": {"type": "object"}},
            }
        },
        lambda o: o["response_format"]["json_schema"]["description"],
    ),
]


def message_fields(prefix: str) -> list[Field]:
    """The string fields of a message to create; `prefix` is where the message sits."""

    def nest(message: dict[str, Any]) -> dict[str, Any]:
        if not prefix:
            return message
        return {prefix: [message]}

    at = f"{prefix}[0]." if prefix else ""
    return [
        Field(f"{at}content", lambda t: nest({"role": "user", "content": t}), None),
        Field(
            f"{at}content[0].text",
            lambda t: nest({"role": "user", "content": [{"type": "text", "text": t}]}),
            None,
        ),
        Field(
            f"{at}content[0].image_url.url",
            lambda t: nest(
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": t}}]}
            ),
            None,
        ),
        Field(
            f"{at}metadata.k",
            lambda t: nest({"role": "user", "content": "hi", "metadata": {"k": t}}),
            None,
        ),
        Field(
            f"{at}attachments[0].file_id",
            lambda t: nest({"role": "user", "content": "hi", "attachments": [{"file_id": t}]}),
            None,
            accepts=False,
        ),
    ]


def message_text(message: dict[str, Any]) -> str | None:
    part = message["content"][0]
    if part["type"] == "text":
        return str(part["text"]["value"])
    if part["type"] == "image_url":
        return str(part["image_url"]["url"])
    return None


def sent_message_reads_back(
    http: httpx.Client, thread_id: str, field: Field, text: str, message_id: str | None = None
) -> None:
    """The message created through `field` holds `text` exactly."""
    if message_id is None:
        listing = http.get(f"/v1/threads/{thread_id}/messages", params={"order": "asc"})
        assert listing.status_code == 200, listing.text
        message_id = next(m["id"] for m in listing.json()["data"] if m["role"] == "user")
    message = http.get(f"/v1/threads/{thread_id}/messages/{message_id}")
    assert message.status_code == 200, message.text
    data = message.json()
    if field.param.endswith("metadata.k"):
        assert data["metadata"]["k"] == text
    else:
        assert message_text(data) == text


@pytest.fixture
def assistant_id(http: httpx.Client) -> str:
    response = http.post("/v1/assistants", json={"model": "gpt-4o"})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


@pytest.fixture
def thread_id(http: httpx.Client) -> str:
    response = http.post("/v1/threads", json={})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


# --- finding 1: text that is not valid Unicode ---


@PROPERTY
@given(field=st.sampled_from(ASSISTANT_FIELDS), pair=texts, encoding=encodings)
@example(field=ASSISTANT_FIELDS[4], pair=("\x00", True), encoding="escaped")
def test_assistant_create(
    http: httpx.Client, thread_id: str, field: Field, pair: tuple[str, bool], encoding: str
) -> None:
    text, bad = pair
    response = send(http, "/v1/assistants", {"model": "m", **field.body(text)}, encoding)
    if check(response, bad, field.param, field.accepts) and field.read is not None:
        assert field.read(response.json()) == text
        again = http.get(f"/v1/assistants/{response.json()['id']}")
        assert again.status_code == 200, again.text
        assert field.read(again.json()) == text
    assert_lists_answer(http, thread_id)


@PROPERTY
@given(field=st.sampled_from(ASSISTANT_FIELDS), pair=texts, encoding=encodings)
def test_assistant_modify(
    http: httpx.Client,
    assistant_id: str,
    thread_id: str,
    field: Field,
    pair: tuple[str, bool],
    encoding: str,
) -> None:
    text, bad = pair
    response = send(http, f"/v1/assistants/{assistant_id}", field.body(text), encoding)
    if check(response, bad, field.param, field.accepts) and field.read is not None:
        assert field.read(response.json()) == text
        again = http.get(f"/v1/assistants/{assistant_id}")
        assert field.read(again.json()) == text
    assert_lists_answer(http, thread_id)


THREAD_FIELDS = [*METADATA_FIELDS, *message_fields("messages")]


@PROPERTY
@given(field=st.sampled_from(THREAD_FIELDS), pair=texts, encoding=encodings)
@example(field=THREAD_FIELDS[2], pair=("x\ud800y", True), encoding="escaped")
def test_thread_create_and_modify(
    http: httpx.Client, thread_id: str, field: Field, pair: tuple[str, bool], encoding: str
) -> None:
    text, bad = pair
    created = send(http, "/v1/threads", field.body(text), encoding)
    accepted = check(created, bad, field.param, field.accepts)
    if accepted:
        new_id = created.json()["id"]
        if field.read is not None:
            assert field.read(created.json()) == text
            assert field.read(http.get(f"/v1/threads/{new_id}").json()) == text
        else:
            sent_message_reads_back(http, new_id, field, text)
        assert_lists_answer(http, new_id)
    if field in METADATA_FIELDS:
        modified = send(http, f"/v1/threads/{thread_id}", field.body(text), encoding)
        if check(modified, bad, field.param) and field.read is not None:
            assert field.read(http.get(f"/v1/threads/{thread_id}").json()) == text
    assert_lists_answer(http, thread_id)


MESSAGE_FIELDS = message_fields("")


@PROPERTY
@given(field=st.sampled_from(MESSAGE_FIELDS), pair=texts, encoding=encodings)
def test_message_create_and_modify(
    http: httpx.Client, thread_id: str, field: Field, pair: tuple[str, bool], encoding: str
) -> None:
    text, bad = pair
    created = send(http, f"/v1/threads/{thread_id}/messages", field.body(text), encoding)
    if check(created, bad, field.param, field.accepts):
        sent_message_reads_back(http, thread_id, field, text, created.json()["id"])
    message = send(http, f"/v1/threads/{thread_id}/messages", {"role": "user", "content": "x"})
    assert message.status_code == 200, message.text
    message_id = message.json()["id"]
    for meta in METADATA_FIELDS:
        modified = send(
            http, f"/v1/threads/{thread_id}/messages/{message_id}", meta.body(text), encoding
        )
        if check(modified, bad, meta.param) and meta.read is not None:
            again = http.get(f"/v1/threads/{thread_id}/messages/{message_id}")
            assert meta.read(again.json()) == text
    assert_lists_answer(http, thread_id)


RUN_FIELDS = [
    Field("instructions", lambda t: {"instructions": t}, lambda o: o["instructions"]),
    Field("additional_instructions", lambda t: {"additional_instructions": t}, None),
    *METADATA_FIELDS,
    Field(
        "tools[0].function.description",
        lambda t: function_tool(description=t),
        lambda o: o["tools"][0]["function"]["description"],
    ),
    *message_fields("additional_messages"),
]


@PROPERTY
@given(field=st.sampled_from(RUN_FIELDS), pair=run_texts, encoding=encodings)
def test_run_create_and_modify(
    http: httpx.Client, assistant_id: str, field: Field, pair: tuple[str, bool], encoding: str
) -> None:
    text, bad = pair
    thread = http.post("/v1/threads", json={"messages": [{"role": "user", "content": "hi"}]})
    assert thread.status_code == 200, thread.text
    thread_id = thread.json()["id"]
    body = {"assistant_id": assistant_id, **field.body(text)}
    created = send(http, f"/v1/threads/{thread_id}/runs", body, encoding)
    run_id = None
    if check(created, bad, field.param, field.accepts):
        run_id = created.json()["id"]
        run = http.get(f"/v1/threads/{thread_id}/runs/{run_id}")
        assert run.status_code == 200, run.text
        if field.read is not None:
            assert field.read(run.json()) == text
        elif field.param.startswith("additional_messages"):
            listing = http.get(f"/v1/threads/{thread_id}/messages", params={"order": "asc"})
            sent_message_reads_back(http, thread_id, field, text, listing.json()["data"][1]["id"])
        for meta in METADATA_FIELDS:
            modified = send(
                http, f"/v1/threads/{thread_id}/runs/{run_id}", meta.body(text), encoding
            )
            if check(modified, bad, meta.param) and meta.read is not None:
                assert meta.read(modified.json()) == text
    assert_lists_answer(http, thread_id, run_id)


@PROPERTY
@given(pair=run_texts, encoding=encodings)
def test_create_thread_and_run(
    http: httpx.Client, assistant_id: str, pair: tuple[str, bool], encoding: str
) -> None:
    text, bad = pair
    body = {
        "assistant_id": assistant_id,
        "thread": {"messages": [{"role": "user", "content": text}]},
    }
    created = send(http, "/v1/threads/runs", body, encoding)
    if check(created, bad, "thread.messages[0].content"):
        thread_id = created.json()["thread_id"]
        sent_message_reads_back(http, thread_id, MESSAGE_FIELDS[0], text)
        assert_lists_answer(http, thread_id, created.json()["id"])


@pytest.mark.parametrize(
    ("path", "body", "param", "problem"),
    [
        ("/v1/assistants", {"model": "m", "metadata": {"key": "a\x00b"}}, "metadata.key", "NUL"),
        ("/v1/assistants", {"model": "m", "metadata": {"a\x00": "v"}}, "metadata", "NUL"),
        (
            "/v1/threads",
            {"messages": [{"role": "user", "content": "x\ud800y"}]},
            "messages[0].content",
            "surrogate",
        ),
        (
            "/v1/assistants",
            {"model": "m", **function_tool(description="\udfff")},
            "tools[0].function.description",
            "surrogate",
        ),
        (
            "/v1/assistants",
            {"model": "m", **schema_property("x", "\x00")},
            "tools[0].function.parameters.properties.x.description",
            "NUL",
        ),
        # Unknown arguments are refused too, as what they are: their text is checked first.
        ("/v1/threads", {"bogus\x00": 1}, None, "NUL"),
    ],
)
def test_invalid_text_is_refused_naming_the_param(
    http: httpx.Client, path: str, body: dict[str, Any], param: str | None, problem: str
) -> None:
    response = send(http, path, body)
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error": {
            "message": response.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": param,
            "code": None,
        }
    }
    assert problem in response.json()["error"]["message"]
    assert http.get("/v1/assistants").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/v1/assistants/%00",
        "/v1/threads/%ED%A0%80",
        "/v1/threads/%00/messages",
        "/v1/files/%00",
        "/v1/files/%00/content",
        "/v1/assistants?after=%00",
        "/v1/assistants?before=a%00b",
        "/v1/files?purpose=%00",
        "/v1/assistants?order=%ED%A0%80",
        "/assistants/%00",
    ],
)
def test_invalid_text_in_path_or_query_is_4xx(http: httpx.Client, path: str) -> None:
    response = http.get(path)
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert http.delete(path.split("?")[0]).status_code < 500
    assert http.post(path.split("?")[0], json={}).status_code < 500


def test_messages_cursor_with_nul(http: httpx.Client, thread_id: str) -> None:
    response = http.get(f"/v1/threads/{thread_id}/messages", params={"after": "m\x00"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "after"


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"]
# (path, body with VALUE for a free-form JSON value, the param that holds it)
FREE_FORM = [
    (
        "/v1/assistants",
        '{"model": "m", "tools": [{"type": "function", "function": {"name": "f", '
        '"parameters": VALUE}}]}',
        "tools[0].function.parameters",
    ),
    (
        "/v1/assistants",
        '{"model": "m", "response_format": {"type": "json_schema", "json_schema": '
        '{"name": "s", "schema": VALUE}}}',
        "response_format.json_schema.schema",
    ),
    (
        "/v1/threads/runs",
        '{"assistant_id": "ASSISTANT", "tools": [{"type": "function", "function": '
        '{"name": "f", "parameters": VALUE}}]}',
        "tools[0].function.parameters",
    ),
]


def post_raw(http: httpx.Client, path: str, body: str, assistant_id: str) -> httpx.Response:
    content = body.replace("ASSISTANT", assistant_id).encode()
    return http.post(path, content=content, headers={"content-type": "application/json"})


def assert_refused(response: httpx.Response, param: str) -> None:
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error": {
            "message": response.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": param,
            "code": None,
        }
    }


@pytest.mark.parametrize("number", NON_FINITE)
@pytest.mark.parametrize(("path", "body", "param"), FREE_FORM)
def test_non_finite_numbers_are_refused_in_free_form_json(
    http: httpx.Client, assistant_id: str, number: str, path: str, body: str, param: str
) -> None:
    """Python's parser takes NaN and Infinity, and reads 1e400 as infinity; JSON has no
    words for them, so stored in free-form JSON no answer could carry them back."""
    value = '{"type": "object", "x": [1, {"y": NUMBER}]}'.replace("NUMBER", number)
    response = post_raw(http, path, body.replace("VALUE", value), assistant_id)
    assert_refused(response, param)
    assert "finite" in response.json()["error"]["message"]
    # Large but finite numbers are kept as sent.
    ok = post_raw(http, path, body.replace("VALUE", '{"x": 1e300}'), assistant_id)
    assert ok.status_code == 200, ok.text
    assert "1e+300" in ok.text
    assert http.get("/v1/assistants").status_code == 200


@pytest.mark.parametrize("number", NON_FINITE)
@pytest.mark.parametrize(
    ("field", "param"),
    [
        ('"temperature": VALUE', "temperature"),
        ('"top_p": VALUE', "top_p"),
        (
            '"tools": [{"type": "file_search", "file_search": {"ranking_options": '
            '{"score_threshold": VALUE}}}]',
            "tools[0].file_search.ranking_options.score_threshold",
        ),
    ],
)
def test_non_finite_numbers_are_refused_in_number_fields(
    http: httpx.Client, number: str, field: str, param: str
) -> None:
    body = '{"model": "m", ' + field.replace("VALUE", number) + "}"
    response = http.post(
        "/v1/assistants", content=body, headers={"content-type": "application/json"}
    )
    assert_refused(response, param)


def test_a_string_that_spells_a_constant_is_only_text(http: httpx.Client) -> None:
    for constant in ("NaN", "Infinity", "-Infinity", "1e400"):
        ok = http.post(
            "/v1/assistants", json={"model": "m", "metadata": {"k": constant}, "name": constant}
        )
        assert ok.status_code == 200, ok.text
        assert http.get(f"/v1/assistants/{ok.json()['id']}").json()["name"] == constant
    assert http.get("/v1/assistants").status_code == 200


def nested(depth: int) -> str:
    """`depth` JSON containers inside each other, objects and arrays in turn."""
    opening = "".join('{"a": ' if i % 2 == 0 else "[" for i in range(depth))
    closing = "".join("}" if i % 2 == 0 else "]" for i in reversed(range(depth)))
    return opening + "1" + closing


@pytest.mark.parametrize(("path", "body", "param"), FREE_FORM)
@pytest.mark.parametrize("depth", [65, 300, 5000, 100_000])
def test_over_deep_free_form_json_is_refused(
    http: httpx.Client, assistant_id: str, depth: int, path: str, body: str, param: str
) -> None:
    response = post_raw(http, path, body.replace("VALUE", nested(depth)), assistant_id)
    assert response.status_code == 400, response.text
    if depth <= 300:
        assert_refused(response, param)
        assert "64" in response.json()["error"]["message"]
    else:
        # Deeper than any JSON parser recurses: refused as a body that is not parsed.
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    deepest = post_raw(http, path, body.replace("VALUE", nested(64)), assistant_id)
    assert deepest.status_code == 200, deepest.text
    assert http.get("/v1/assistants").status_code == 200
    if path == "/v1/threads/runs":
        run = http.get(f"/v1/threads/{deepest.json()['thread_id']}/runs/{deepest.json()['id']}")
        assert run.status_code == 200, run.text


# --- multipart uploads: the form's fields and the file part's own headers ---

# Text a form may carry: anything (NUL and lone surrogates included), digits of other scripts
# (`"²".isdigit()` is true), and what breaks a part's headers.
form_text = st.text(
    st.one_of(
        st.characters(),
        st.characters(categories=("Cs",)),
        st.characters(categories=("Nd", "No")),
        st.sampled_from(["\x00", "\x01", "\x7f", "\r", "\n", '"', ";", "/", "=", "\\"]),
    ),
    max_size=12,
)
# A form's charset decides how its text is read; UTF-7 can carry lone surrogates.
form_charsets = st.sampled_from([None, "utf-7"])
# Files already downloaded whole: each listed file is fetched once per session.
_downloaded: set[str] = set()


def multipart_upload(
    http: httpx.Client,
    fields: dict[str, str | None],
    part_type: str | None,
    filename: str,
    charset: str | None,
) -> httpx.Response:
    """The upload's bytes built by hand: httpx percent-encodes control characters."""

    def encode(text: str) -> bytes:
        return text.encode(charset or "utf-8", "surrogatepass")

    boundary = uuid.uuid4().hex
    body = b""
    for name, value in fields.items():
        if value is not None:
            body += (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            )
            body += encode(value) + b"\r\n"
    body += f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="'.encode()
    body += encode(filename) + b'"\r\n'
    if part_type is not None:
        body += b"Content-Type: " + part_type.encode("utf-8", "surrogatepass") + b"\r\n"
    body += b"\r\nfuzzed\r\n" + f"--{boundary}--\r\n".encode()
    content_type = f"multipart/form-data; boundary={boundary}"
    if charset is not None:
        content_type += f"; charset={charset}"
    return http.post("/v1/files", content=body, headers={"content-type": content_type})


@PROPERTY
@given(
    purpose=st.one_of(st.sampled_from(["assistants", "vision"]), form_text),
    anchor=st.one_of(st.none(), st.just("created_at"), form_text),
    seconds=st.one_of(st.none(), st.just("3600"), form_text),
    part_type=st.one_of(st.none(), st.sampled_from(["image/png", "text/csv; a=b"]), form_text),
    filename=form_text,
    charset=form_charsets,
)
@example(
    purpose="assistants", anchor=None, seconds=None, part_type="a/b\x00", filename="f", charset=None
)
@example(
    purpose="assistants",
    anchor="created_at",
    seconds="²",
    part_type=None,
    filename="f",
    charset=None,
)
@example(
    purpose="as\ud800", anchor=None, seconds=None, part_type=None, filename="", charset="utf-7"
)
def test_multipart_fields(
    http: httpx.Client,
    purpose: str,
    anchor: str | None,
    seconds: str | None,
    part_type: str | None,
    filename: str,
    charset: str | None,
) -> None:
    fields = {
        "purpose": purpose,
        "expires_after[anchor]": anchor,
        "expires_after[seconds]": seconds,
    }
    response = multipart_upload(http, fields, part_type, filename, charset)
    assert response.status_code < 500, response.text
    if response.status_code == 200:
        assert response.json()["purpose"] in ("assistants", "vision")
    else:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    listing = http.get("/v1/files")
    assert listing.status_code == 200, listing.text
    for file in listing.json()["data"]:
        if file["id"] in _downloaded:
            continue
        content = http.get(f"/v1/files/{file['id']}/content")
        assert content.status_code == 200, content.text
        assert len(content.content) == file["bytes"]
        assert content.headers["content-type"].isascii()
        _downloaded.add(file["id"])


# --- finding 7: request size limits ---


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def zeros(total: int, chunk: int = 1024 * 1024) -> Iterator[bytes]:
    block = b"0" * chunk
    sent = 0
    while sent < total:
        yield block[: min(chunk, total - sent)]
        sent += chunk


BODY = 200 * 1024 * 1024


def assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    assert response.json() == {
        "error": {
            "message": response.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
    }


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_oversized_json_body_is_refused_unread(server: Deployment, framing: str) -> None:
    process = server.api[0].proc
    # Reset the peak (VmHWM) so it measures this request alone.
    Path(f"/proc/{process.pid}/clear_refs").write_text("5")
    before = rss_bytes(process.pid)
    head, tail = b'{"metadata": {"k": "', b'"}}'
    headers = {"content-type": "application/json"}
    if framing == "content-length":
        headers["content-length"] = str(BODY)
    chunks = itertools.chain([head], zeros(BODY - len(head) - len(tail)), [tail])
    with httpx.Client(base_url=server.url, timeout=120) as raw:
        response = raw.post("/v1/threads", content=chunks, headers=headers)
        assert_too_large(response)
        assert "32 MiB" in response.json()["error"]["message"] or "33554432" in response.text
        # The connection and the server are still fine.
        assert raw.get("/v1/assistants").status_code == 200
    peak = rss_bytes(process.pid, "VmHWM")
    # The 32 MiB limit may be buffered before a chunked body is refused; 200 MB never is.
    assert peak - before < 64 * 1024 * 1024, (before, peak)


def test_body_under_the_limit_is_read(http: httpx.Client) -> None:
    # A big but allowed body reaches validation (40 KB instructions is over no limit).
    response = http.post("/v1/assistants", json={"model": "m", "instructions": "x" * 40_000})
    assert response.status_code == 200, response.text


def multipart(boundary: str, size: int) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    yield from zeros(size, 256 * 1024)
    yield f"\r\n--{boundary}--\r\n".encode()


def open_files(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("/"):
            found.add(target)
    return found


def stored_files(data_dir: Path) -> list[Path]:
    files_dir = data_dir / "files"
    return sorted(files_dir.rglob("*")) if files_dir.exists() else []


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_upload_over_the_limit_is_refused_leaving_nothing(
    deploy: DeployFactory, framing: str
) -> None:
    small = deploy(HAL9100_MAX_UPLOAD_BYTES="1000000")
    process = small.api[0].proc
    data_dir = small.api[0].data_dir
    with httpx.Client(base_url=small.url, timeout=60) as raw:
        listed = raw.get("/v1/files").json()["data"]
        files_before, stored_before = open_files(process.pid), stored_files(data_dir)
        boundary = uuid.uuid4().hex
        headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
        size = 20 * 1024 * 1024
        content: Any = multipart(boundary, size)
        if framing == "content-length":
            content = b"".join(content)
        response = raw.post("/v1/files", content=content, headers=headers)
        assert_too_large(response)
        assert "1000000" in response.json()["error"]["message"]
        assert raw.get("/v1/files").json()["data"] == listed
        assert stored_files(data_dir) == stored_before
        assert open_files(process.pid) <= files_before
        # Within the limit still works.
        ok = raw.post(
            "/v1/files", files={"file": ("ok.bin", b"1" * 900_000)}, data={"purpose": "assistants"}
        )
        assert ok.status_code == 200, ok.text
        # Just over the limit: within the room left for the multipart framing, so the file
        # part itself is what is refused, with the same answer.
        over = raw.post(
            "/v1/files",
            files={"file": ("over.bin", b"1" * 1_000_001)},
            data={"purpose": "assistants"},
        )
        assert over.status_code == 413, over.text
        assert over.json()["error"] == {
            "message": over.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": "file",
            "code": "request_too_large",
        }
        assert [f["id"] for f in raw.get("/v1/files").json()["data"]] == [
            ok.json()["id"],
            *[f["id"] for f in listed],
        ]
        assert not [path for path in stored_files(data_dir) if path.name.endswith(".part")]


# --- finding 10: numbers the database cannot hold ---


@pytest.mark.parametrize("field", ["max_prompt_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [10**30, 2**31, 255, -1])
def test_token_limits_are_bounded(
    http: httpx.Client, assistant_id: str, field: str, value: int
) -> None:
    thread = http.post("/v1/threads", json={}).json()["id"]
    response = http.post(
        f"/v1/threads/{thread}/runs", json={"assistant_id": assistant_id, field: value}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field
    both = http.post("/v1/threads/runs", json={"assistant_id": assistant_id, field: value})
    assert both.status_code == 400, both.text
    largest = http.post(
        f"/v1/threads/{thread}/runs", json={"assistant_id": assistant_id, field: 2**31 - 1}
    )
    assert largest.status_code == 200, largest.text
    assert largest.json()[field] == 2**31 - 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"truncation_strategy": {"type": "last_messages", "last_messages": 10**30}}, None),
        ({"temperature": 10**30}, "temperature"),
        ({"top_p": -(10**30)}, "top_p"),
    ],
)
def test_other_numbers_are_bounded(
    http: httpx.Client, assistant_id: str, body: dict[str, Any], param: str | None
) -> None:
    response = http.post("/v1/threads/runs", json={"assistant_id": assistant_id, **body})
    assert response.status_code == 400, response.text
    expected = param or "truncation_strategy.last_messages"
    assert response.json()["error"]["param"] == expected
