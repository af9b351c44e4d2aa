"""Offline tests of the OpenAPI contract validator itself (no HAL-9100 server involved)."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from jsonschema import Draft202012Validator

import openapi_contract
from openapi_contract import (
    ContractViolation,
    ValidatingClient,
    load_spec,
    make_validating_async_http_client,
    make_validating_http_client,
    require_spec,
    response_schema_for,
    rewrite_nullable,
    stream_event_names,
    validate_response,
    validate_schema,
    validate_sse_text,
    validate_stream_event,
)


@pytest.fixture
def spec() -> None:
    require_spec()


# The SDK flags every Assistants call as deprecated; that is not what these tests check.
sdk_deprecation = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")


ASSISTANT: dict[str, Any] = {
    "id": "asst_1",
    "object": "assistant",
    "created_at": 1_700_000_000,
    "name": "Coding Tutor",
    "description": None,
    "model": "gpt-4o",
    "instructions": "Be helpful.",
    "tools": [{"type": "code_interpreter"}],
    "tool_resources": {"code_interpreter": {"file_ids": []}},
    "metadata": {},
    "temperature": 1.0,
    "top_p": 1.0,
    "response_format": "auto",
}

RUN: dict[str, Any] = {
    "id": "run_1",
    "object": "thread.run",
    "created_at": 1_700_000_000,
    "thread_id": "thread_1",
    "assistant_id": "asst_1",
    "status": "queued",
    "required_action": None,
    "last_error": None,
    "expires_at": None,
    "started_at": None,
    "cancelled_at": None,
    "failed_at": None,
    "completed_at": None,
    "incomplete_details": None,
    "model": "gpt-4o",
    "instructions": "Be helpful.",
    "tools": [],
    "metadata": {},
    "usage": None,
    "temperature": None,
    "top_p": None,
    "max_prompt_tokens": None,
    "max_completion_tokens": None,
    "truncation_strategy": {"type": "auto", "last_messages": None},
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "response_format": None,
}

THREAD: dict[str, Any] = {
    "id": "thread_1",
    "object": "thread",
    "created_at": 1_700_000_000,
    "tool_resources": None,
    "metadata": {},
}

MESSAGE_DELTA: dict[str, Any] = {
    "id": "msg_1",
    "object": "thread.message.delta",
    "delta": {
        "content": [{"index": 0, "type": "text", "text": {"value": "Hel", "annotations": []}}]
    },
}

ERROR: dict[str, Any] = {
    "error": {
        "message": "No assistant found with id 'asst_x'.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
}


def violation(instance: Any, schema: str) -> str:
    with pytest.raises(ContractViolation) as info:
        validate_schema(instance, schema)
    return str(info.value)


# --------------------------------------------------------------------------- spec location


def test_missing_spec_skips_locally_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(openapi_contract, "SPEC_PATH", tmp_path / "openapi.yaml")
    monkeypatch.delenv(openapi_contract.ENV_SPEC, raising=False)
    monkeypatch.delenv(openapi_contract.ENV_REQUIRE, raising=False)
    assert not openapi_contract.spec_available()
    with pytest.raises(pytest.skip.Exception, match=r"openapi\.yaml not found.*CI makes them"):
        require_spec()
    with pytest.raises(pytest.skip.Exception):
        make_validating_http_client()
    make_validating_http_client(require=False).close()  # validation simply off
    monkeypatch.setenv(openapi_contract.ENV_REQUIRE, "1")
    with pytest.raises(pytest.fail.Exception, match="mandatory in CI"):
        require_spec()


# --------------------------------------------------------------------------- nullable rewrite


def test_rewrite_nullable_wraps_enum_ref_and_allof_without_loosening_bare_markers() -> None:
    schema = {
        "type": "object",
        "properties": {
            "mode": {"type": "string", "enum": ["a", "b"], "nullable": True},
            "ref": {"$ref": "#/$defs/Thing", "nullable": True},
            "strict": {"allOf": [{"$ref": "#/$defs/Thing"}, {"nullable": True}]},
            "loose": {"description": "anything", "nullable": True},
            "plain": {"type": "integer", "nullable": False},
        },
        "$defs": {"Thing": {"type": "object", "required": ["x"]}},
    }
    validator = Draft202012Validator(rewrite_nullable(copy.deepcopy(schema)))

    def ok(**fields: Any) -> bool:
        return bool(validator.is_valid(fields))

    assert ok(mode=None) and ok(mode="a") and not ok(mode="c")
    assert ok(ref=None) and ok(ref={"x": 1}) and not ok(ref={})
    # allOf: [X, {nullable: true}] only says "nullable" in a schema that constrains nothing.
    assert not ok(strict=None) and ok(strict={"x": 1})
    assert ok(loose=None) and ok(loose=3)
    assert not ok(plain=None) and ok(plain=3)
    assert "nullable" not in json.dumps(rewrite_nullable(copy.deepcopy(schema)))


# --------------------------------------------------------------------------- schemas


def test_correct_assistant_validates(spec: None) -> None:
    validate_schema(ASSISTANT, "AssistantObject")


def test_wrong_object_value_fails_with_path_and_body(spec: None) -> None:
    report = violation({**ASSISTANT, "object": "assistants"}, "AssistantObject")
    assert "$.object" in report and "'assistants' is not one of ['assistant']" in report
    assert '"id": "asst_1"' in report  # the offending JSON is shown


def test_missing_required_field_fails(spec: None) -> None:
    body = {key: value for key, value in ASSISTANT.items() if key != "model"}
    assert "'model' is a required property" in violation(body, "AssistantObject")


def test_every_error_is_listed_best_match_first(spec: None) -> None:
    report = violation({**RUN, "status": "sleeping", "expires_at": "soon"}, "RunObject")
    assert "all errors (2)" in report
    assert "$.status" in report and "$.expires_at" in report
    # anyOf failures name the closest branch's complaint, not only "not valid under any".
    assert "'soon' is not of type 'integer'" in report


def test_nullable_fields_accept_null(spec: None) -> None:
    validate_schema(RUN, "RunObject")  # expires_at, last_error, response_format ($ref) ... null
    validate_schema(
        {**RUN, "status": "failed", "last_error": {"code": "server_error", "message": "x"}},
        "RunObject",
    )
    validate_schema(THREAD, "ThreadObject")
    validate_schema({**ASSISTANT, "name": None, "instructions": None}, "AssistantObject")


def test_strict_where_the_spec_and_openai_are_strict(spec: None) -> None:
    assert "$.truncation_strategy" in violation({**RUN, "truncation_strategy": None}, "RunObject")
    assert "$.tool_choice" in violation({**RUN, "tool_choice": None}, "RunObject")
    # A nullable field still checks the non-null value.
    assert "$.last_error" in violation({**RUN, "last_error": {"code": "oops"}}, "RunObject")


def test_list_envelope_with_null_ids_validates(spec: None) -> None:
    empty: dict[str, Any] = {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }
    for name in (
        "ListAssistantsResponse",
        "ListMessagesResponse",
        "ListRunsResponse",
        "ListRunStepsResponse",
        "ListFilesResponse",
        "ListVectorStoresResponse",
        "ListVectorStoreFilesResponse",
    ):
        validate_schema(empty, name)
    assert validate_response("GET", "/v1/assistants", 200, empty) == "ListAssistantsResponse"
    page = {**empty, "data": [ASSISTANT], "first_id": "asst_1", "last_id": "asst_1"}
    validate_schema(page, "ListAssistantsResponse")
    bad_item = {**page, "data": [{**ASSISTANT, "object": "thread"}]}
    assert "$.data[0].object" in violation(bad_item, "ListAssistantsResponse")
    # Still required, only nullable.
    no_ids = {key: value for key, value in empty.items() if key != "first_id"}
    assert "'first_id' is a required property" in violation(no_ids, "ListAssistantsResponse")


def test_file_purpose_evals_is_accepted(spec: None) -> None:
    file = {
        "id": "file-1",
        "object": "file",
        "bytes": 3,
        "created_at": 1_700_000_000,
        "filename": "a.jsonl",
        "purpose": "evals",
        "status": "processed",
    }
    validate_schema(file, "OpenAIFile")
    assert "$.purpose" in violation({**file, "purpose": "bogus"}, "OpenAIFile")


def test_unknown_schema_name_is_a_key_error(spec: None) -> None:
    with pytest.raises(KeyError, match="NoSuchObject"):
        validate_schema({}, "NoSuchObject")


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("method", "path", "schema"),
    [
        ("GET", "/v1/assistants", "ListAssistantsResponse"),
        ("POST", "/v1/assistants", "AssistantObject"),
        ("GET", "/assistants/asst_1", "AssistantObject"),
        ("POST", "/assistants/asst_1", "AssistantObject"),
        ("DELETE", "/v1/assistants/asst_1", "DeleteAssistantResponse"),
        ("POST", "/threads", "ThreadObject"),
        ("POST", "/threads/runs", "RunObject"),  # literal "runs" beats {thread_id}
        ("GET", "/threads/runs", "ThreadObject"),  # ... only where it has the method
        ("GET", "/v1/threads/thread_abc/messages/msg_1", "MessageObject"),
        ("GET", "/threads/t/messages", "ListMessagesResponse"),
        ("GET", "/threads/t/runs/r/steps", "ListRunStepsResponse"),
        ("GET", "/threads/t/runs/r/steps/s", "RunStepObject"),
        ("POST", "/threads/t/runs/r/submit_tool_outputs", "RunObject"),
        ("POST", "/threads/t/runs/r/cancel", "RunObject"),
        ("GET", "/files", "ListFilesResponse"),
        ("POST", "/v1/files", "OpenAIFile"),
        ("DELETE", "/files/f", "DeleteFileResponse"),
        ("POST", "/vector_stores", "VectorStoreObject"),
        ("GET", "/vector_stores/vs/file_batches/b/files", "ListVectorStoreFilesResponse"),
        ("POST", "/vector_stores/vs/file_batches/b/cancel", "VectorStoreFileBatchObject"),
        ("GET", "/vector_stores/vs/files/f/content", "VectorStoreFileContentResponse"),
        ("GET", "/v1/assistants/?limit=2&order=asc", "ListAssistantsResponse"),
    ],
)
def test_paths_map_to_the_right_operation(spec: None, method: str, path: str, schema: str) -> None:
    found = response_schema_for(method, path, 200)
    assert found is load_spec()["components"]["schemas"][schema]


def test_literal_segment_wins_over_parameter(spec: None) -> None:
    run_create = response_schema_for("POST", "/threads/runs", 200)
    thread_update = response_schema_for("POST", "/threads/thread_1", 200)
    assert run_create is not None and thread_update is not None
    assert run_create is not thread_update
    # /threads/runs has no DELETE, so the request is DELETE /threads/{thread_id} (id "runs").
    deleted = response_schema_for("DELETE", "/threads/runs", 200)
    assert deleted is load_spec()["components"]["schemas"]["DeleteThreadResponse"]


def test_raw_content_unknown_paths_and_methods_have_no_schema(spec: None) -> None:
    assert response_schema_for("GET", "/v1/files/file-1/content", 200) is None
    assert validate_response("GET", "/v1/files/file-1/content", 200, "raw bytes") is None
    assert response_schema_for("GET", "/health", 200) is None
    assert response_schema_for("PATCH", "/assistants/asst_1", 200) is None
    assert validate_response("GET", "/v1/nothing/here", 200, {"anything": 1}) is None


def test_error_statuses_use_error_response(spec: None) -> None:
    assert validate_response("GET", "/v1/assistants/asst_x", 404, ERROR) == "ErrorResponse"
    assert validate_response("POST", "/v1/threads/runs", 429, ERROR) == "ErrorResponse"
    assert validate_response("GET", "/v1/files/f/content", 404, ERROR) == "ErrorResponse"
    assert validate_response("POST", "/v1/threads/t/runs", 500, ERROR) == "ErrorResponse"
    # The spec gives this one a bare `Error` body; OpenAI (and the SDK) use the envelope.
    assert validate_response("DELETE", "/v1/responses/resp_1", 404, ERROR) == "ErrorResponse"
    with pytest.raises(ContractViolation, match="'error' is a required property"):
        validate_response("GET", "/v1/assistants/asst_x", 404, {"detail": "Not Found"})
    with pytest.raises(ContractViolation, match="'code' is a required property"):
        validate_response("POST", "/v1/assistants", 400, {"error": {"message": "m", "type": "t"}})


def test_undeclared_success_status_is_a_violation(spec: None) -> None:
    with pytest.raises(ContractViolation, match=r"declares only 200.*not 201"):
        validate_response("POST", "/v1/assistants", 201, ASSISTANT)


def test_validate_response_reports_the_request(spec: None) -> None:
    with pytest.raises(ContractViolation, match=r"POST /v1/threads/runs -> 200 does not match"):
        validate_response("POST", "/v1/threads/runs", 200, {**RUN, "object": "run"})


# --------------------------------------------------------------------------- stream events


def test_message_delta_event_validates(spec: None) -> None:
    assert validate_stream_event("thread.message.delta", MESSAGE_DELTA) == "MessageDeltaObject"
    validate_stream_event("thread.message.delta", json.dumps(MESSAGE_DELTA))  # raw data: text


def test_invalid_message_delta_event_fails(spec: None) -> None:
    bad = {**MESSAGE_DELTA, "object": "thread.message"}
    with pytest.raises(ContractViolation, match=r"\$\.object"):
        validate_stream_event("thread.message.delta", bad)
    bad_part = {**MESSAGE_DELTA, "delta": {"content": [{"type": "text", "text": {"value": 1}}]}}
    with pytest.raises(ContractViolation, match=r"thread\.message\.delta"):
        validate_stream_event("thread.message.delta", bad_part)


def test_other_events_map_to_their_objects(spec: None) -> None:
    assert validate_stream_event("thread.created", THREAD) == "ThreadObject"
    assert validate_stream_event("thread.run.created", RUN) == "RunObject"
    assert validate_stream_event("error", ERROR["error"]) == "Error"
    validate_stream_event("done", "[DONE]")
    with pytest.raises(ContractViolation):
        validate_stream_event("done", "DONE")
    with pytest.raises(ContractViolation, match="unknown Assistants stream event"):
        validate_stream_event("thread.run.exploded", RUN)
    with pytest.raises(ContractViolation, match="non-JSON data"):
        validate_stream_event("thread.run.created", "{not json")
    assert {"thread.run.step.delta", "thread.message.incomplete"} <= stream_event_names()


def sse(*events: tuple[str, Any]) -> str:
    return "".join(
        f"event: {name}\ndata: {data if isinstance(data, str) else json.dumps(data)}\n\n"
        for name, data in events
    )


def test_validate_sse_text(spec: None) -> None:
    text = sse(("thread.run.created", RUN), ("thread.message.delta", MESSAGE_DELTA))
    text += ": keep-alive comment\r\n\r\n" + sse(("done", "[DONE]")).replace("\n", "\r\n")
    assert validate_sse_text(text) == ["thread.run.created", "thread.message.delta", "done"]
    with pytest.raises(ContractViolation, match="ended inside an event"):
        validate_sse_text("event: done\ndata: [DONE]\n")
    with pytest.raises(ContractViolation, match="unknown Assistants stream event 'message'"):
        validate_sse_text('data: {"id": 1}\n\n')


# --------------------------------------------------------------------------- httpx clients


def json_response(status: int, body: Any) -> httpx.Response:
    return httpx.Response(status, json=body)


def test_client_validates_json_answers(spec: None) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/bad"):
            return json_response(200, {**ASSISTANT, "object": "nope"})
        if request.url.path.endswith("/missing"):
            return json_response(404, ERROR)
        return json_response(200, ASSISTANT)

    with make_validating_http_client(
        transport=httpx.MockTransport(handler), base_url="http://hal.test"
    ) as client:
        assert client.get("/v1/assistants/asst_1").json()["id"] == "asst_1"
        assert client.get("/v1/assistants/missing").status_code == 404
        assert client.get("/health").status_code == 200  # not in the spec: skipped
        assert client.validated_count == 2
        assert [v.schema for v in client.validated] == ["AssistantObject", "ErrorResponse"]
        with pytest.raises(ContractViolation, match=r"GET /v1/assistants/bad -> 200"):
            client.get("/v1/assistants/bad")
        assert len(client.failures) == 1 and client.validated_count == 2


def test_client_checks_content_type_but_skips_raw_downloads(spec: None) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/content"):
            return httpx.Response(200, content=b"\x00raw", headers={"content-type": "text/plain"})
        return httpx.Response(200, text="ok", headers={"content-type": "text/plain"})

    with make_validating_http_client(transport=httpx.MockTransport(handler)) as client:
        assert client.get("http://hal.test/v1/files/f/content").content == b"\x00raw"
        with pytest.raises(ContractViolation, match="declares application/json"):
            client.get("http://hal.test/v1/assistants/asst_1")
        assert client.validated_count == 0


def test_client_flags_undeclared_status_and_ignores_bodies_outside_the_spec(spec: None) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            return httpx.Response(204)
        return httpx.Response(200, headers={"content-type": "application/json"})

    with make_validating_http_client(transport=httpx.MockTransport(handler)) as client:
        assert client.head("http://hal.test/v1/assistants").status_code == 200
        with pytest.raises(
            ContractViolation, match=r"declares only 200, 429 for DELETE .*, not 204"
        ):
            client.delete("http://hal.test/v1/assistants/asst_1")


def test_client_does_not_read_event_streams(spec: None) -> None:
    consumed: list[bytes] = []

    def chunks() -> Iterator[bytes]:
        for chunk in (b"event: done\n", b"data: [DONE]\n\n"):
            consumed.append(chunk)
            yield chunk

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=chunks(), headers={"content-type": "text/event-stream; charset=utf-8"}
        )

    with make_validating_http_client(transport=httpx.MockTransport(handler)) as client:
        request = client.build_request("POST", "http://hal.test/v1/threads/runs")
        response = client.send(request, stream=True)
        assert consumed == [] and not response.is_stream_consumed
        assert b"".join(response.iter_bytes()) == b"event: done\ndata: [DONE]\n\n"
        response.close()
        assert client.validated_count == 0 and client.validated_events == []


def stream_handler(body_chunks: list[bytes]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=iter(body_chunks), headers={"content-type": "text/event-stream"}
        )

    return httpx.MockTransport(handler)


def split_every(text: str, size: int) -> list[bytes]:
    raw = text.encode()
    return [raw[i : i + size] for i in range(0, len(raw), size)]


def test_client_validates_stream_events_on_request(spec: None) -> None:
    good = sse(("thread.run.created", RUN), ("thread.message.delta", MESSAGE_DELTA))
    good += sse(("done", "[DONE]"))
    # Tiny chunks split events, lines and "\r\n" pairs across reads.
    transport = stream_handler(split_every(good.replace("\n", "\r\n"), 7))
    with make_validating_http_client(transport=transport, validate_streams=True) as client:
        with client.stream("POST", "http://hal.test/v1/threads/runs") as response:
            body = b"".join(response.iter_bytes())
        assert body.decode() == good.replace("\n", "\r\n")
        assert client.validated_events == ["thread.run.created", "thread.message.delta", "done"]

    bad = sse(("thread.message.delta", {**MESSAGE_DELTA, "delta": "x"}), ("done", "[DONE]"))
    transport = stream_handler(split_every(bad, 5))
    with make_validating_http_client(transport=transport, validate_streams=True) as client:
        with client.stream("POST", "http://hal.test/v1/threads/runs") as response:
            with pytest.raises(ContractViolation, match=r"\$\.delta"):
                response.read()
        assert len(client.failures) == 1


# --------------------------------------------------------------------------- official SDK


def sdk_for(handler: Any, **client_kwargs: Any) -> tuple[openai.OpenAI, ValidatingClient]:
    http_client = make_validating_http_client(
        transport=httpx.MockTransport(handler), **client_kwargs
    )
    sdk = openai.OpenAI(
        base_url="http://hal.test/v1", api_key="sk-test", max_retries=0, http_client=http_client
    )
    return sdk, http_client


@sdk_deprecation
def test_sdk_calls_are_validated_and_violations_fail_the_call(spec: None) -> None:
    answers = {"asst_1": ASSISTANT, "asst_bad": {**ASSISTANT, "tools": [{"type": "web"}]}}

    def handler(request: httpx.Request) -> httpx.Response:
        assistant_id = request.url.path.rsplit("/", 1)[-1]
        if assistant_id in answers:
            return json_response(200, answers[assistant_id])
        return json_response(404, ERROR)

    sdk, http_client = sdk_for(handler)
    assert sdk.beta.assistants.retrieve("asst_1").id == "asst_1"
    with pytest.raises(openai.NotFoundError):
        sdk.beta.assistants.retrieve("asst_x")
    assert http_client.validated_count == 2
    with pytest.raises(ContractViolation, match=r"\$\.tools\[0\]"):
        sdk.beta.assistants.retrieve("asst_bad")


@sdk_deprecation
def test_sdk_streaming_passes_through_the_validating_client(spec: None) -> None:
    body = sse(
        ("thread.created", THREAD),
        ("thread.run.created", RUN),
        ("thread.message.delta", MESSAGE_DELTA),
        ("done", "[DONE]"),
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=iter(split_every(body, 11)), headers={"content-type": "text/event-stream"}
        )

    sdk, http_client = sdk_for(handler, validate_streams=True)
    stream = sdk.beta.threads.create_and_run(assistant_id="asst_1", stream=True)
    events = [event.event for event in stream]
    assert events == ["thread.created", "thread.run.created", "thread.message.delta"]
    assert http_client.validated_events[-1] == "done"
    assert http_client.validated_count == 0


@sdk_deprecation
async def test_async_client_validates(spec: None) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/bad"):
            return json_response(200, {**THREAD, "metadata": []})
        return json_response(200, THREAD)

    http_client = make_validating_async_http_client(transport=httpx.MockTransport(handler))
    sdk = openai.AsyncOpenAI(
        base_url="http://hal.test/v1", api_key="sk-test", max_retries=0, http_client=http_client
    )
    assert (await sdk.beta.threads.retrieve("thread_1")).id == "thread_1"
    assert http_client.validated_count == 1
    with pytest.raises(ContractViolation, match=r"\$\.metadata"):
        await sdk.beta.threads.retrieve("bad")
    await sdk.close()


@sdk_deprecation
async def test_async_sdk_streaming_validates_events(spec: None) -> None:
    body = sse(("thread.run.created", RUN), ("thread.message.delta", {"id": "msg_1"}))

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in split_every(body, 9):
            yield chunk

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=chunks(), headers={"content-type": "text/event-stream"})

    http_client = make_validating_async_http_client(
        transport=httpx.MockTransport(handler), validate_streams=True
    )
    sdk = openai.AsyncOpenAI(
        base_url="http://hal.test/v1", api_key="sk-test", max_retries=0, http_client=http_client
    )
    stream = await sdk.beta.threads.runs.create(
        thread_id="thread_1", assistant_id="asst_1", stream=True
    )
    seen = []
    with pytest.raises(ContractViolation, match="'object' is a required property"):
        async for event in stream:
            seen.append(event.event)
    assert seen == ["thread.run.created"]
    assert http_client.validated_events == ["thread.run.created"]
    await sdk.close()
