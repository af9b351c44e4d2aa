"""OpenAI's error shape for every failure (bad JSON, bad types, unknown routes and methods),
and the optional shared API key on a second server started with HAL9100_API_KEY."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from conftest import make_client
from deployments import Deployment, RoundRobinTransport, ServerProcess
from openapi_contract import make_validating_http_client

ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture
def raw(server: Deployment) -> Iterator[httpx.Client]:
    """Plain HTTP (spread over every API process) whose JSON answers are still checked
    against OpenAI's spec."""
    transport = RoundRobinTransport(server.urls) if len(server.urls) > 1 else None
    with make_validating_http_client(
        require=False, base_url=server.url, timeout=30, transport=transport
    ) as sdk_less:
        yield sdk_less


def assert_error(
    response: httpx.Response, status: int, param: str | None = None, code: str | None = None
) -> dict[str, object]:
    """`response` is exactly `{"error": {"message", "type", "param", "code"}}` with `status`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == ERROR_KEYS, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["param"] == param, error
    assert error["code"] == code, error
    return dict(error)


def test_error_shape_everywhere(client: openai.OpenAI, raw: httpx.Client) -> None:
    thread = client.beta.threads.create()
    cases: list[tuple[httpx.Response, int, str | None]] = [
        (raw.get("/v1/threads/thread_missing"), 404, None),
        (raw.get(f"/v1/threads/{thread.id}/messages/msg_missing"), 404, None),
        (raw.get("/v1/files/file-missing"), 404, None),
        (raw.get("/v1/assistants/asst_missing"), 404, None),
        (raw.post("/v1/threads", json={"bogus": 1}), 400, "bogus"),
        (raw.post(f"/v1/threads/{thread.id}/messages", json={"role": "user"}), 400, "content"),
        (raw.get("/v1/files", params={"limit": -1}), 400, "limit"),
        (raw.post("/v1/files", data={"purpose": "assistants"}), 400, "file"),
    ]
    for response, status, param in cases:
        error = assert_error(response, status, param)
        assert error["type"] == "invalid_request_error"


def test_malformed_json_is_400(raw: httpx.Client) -> None:
    for path in ("/v1/threads", "/v1/assistants", "/threads"):
        broken = raw.post(
            path, content=b'{"metadata": {', headers={"content-type": "application/json"}
        )
        error = assert_error(broken, 400)
        assert error["type"] == "invalid_request_error"
        assert "JSON" in str(error["message"])


def test_non_object_bodies_are_400(raw: httpx.Client) -> None:
    thread_id = raw.post("/v1/threads").json()["id"]
    for path in (
        "/v1/threads",
        f"/v1/threads/{thread_id}",
        f"/v1/threads/{thread_id}/messages",
        "/v1/assistants",
    ):
        for body in ([1, 2], "text", 42):
            response = raw.post(path, json=body)
            error = assert_error(response, 400)
            assert error["type"] == "invalid_request_error"
            assert "object" in str(error["message"]), error
    # Where a body is required, sending none names the body, not a parameter called 'None'.
    for path in ("/v1/assistants", f"/v1/threads/{thread_id}/messages"):
        error = assert_error(raw.post(path), 400)
        assert "body" in str(error["message"]) and "None" not in str(error["message"])


def test_wrong_types_name_the_param(raw: httpx.Client) -> None:
    thread_id = raw.post("/v1/threads").json()["id"]
    messages = f"/v1/threads/{thread_id}/messages"
    for path, body, param in (
        ("/v1/threads", {"metadata": "tags"}, "metadata"),
        ("/v1/threads", {"metadata": {"k": 1}}, "metadata.k"),
        ("/v1/threads", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            "/v1/threads",
            {"tool_resources": {"code_interpreter": {"file_ids": "f"}}},
            "tool_resources.code_interpreter.file_ids",
        ),
        (messages, {"role": 1, "content": "x"}, "role"),
        (messages, {"role": "user", "content": {"text": "x"}}, "content"),
        (messages, {"role": "user", "content": [{"type": "text", "text": 3}]}, "content[0].text"),
        (messages, {"role": "user", "content": "x", "attachments": {}}, "attachments"),
        (messages, {"role": "user", "content": [{"text": "x"}]}, "content[0].type"),
        ("/v1/assistants", {"model": 7}, "model"),
        ("/v1/assistants", {"model": "m", "temperature": "hot"}, "temperature"),
    ):
        response = raw.post(path, json=body)
        error = assert_error(response, 400, param)
        assert error["type"] == "invalid_request_error"
    bad_query = raw.get(messages, params={"limit": "many"})
    assert_error(bad_query, 400, "limit")


def test_unknown_routes_and_methods(raw: httpx.Client) -> None:
    for path in (
        "/v1/nothing-here",
        "/nothing-here",
        "/v1/threads/t/messages/m/extra",
        "/v2/threads",
    ):
        error = assert_error(raw.get(path), 404)
        assert error["type"] == "invalid_request_error"
        assert path in str(error["message"])
    for method, path in (
        ("PUT", "/v1/threads"),
        ("PATCH", "/v1/threads/thread_x"),
        ("DELETE", "/v1/files"),
        ("PUT", "/v1/threads/thread_x/messages/msg_x"),
    ):
        response = raw.request(method, path)
        error = assert_error(response, 405)
        assert error["type"] == "invalid_request_error"
        assert method in str(error["message"])
        assert "allow" in response.headers


# --------------------------------------------------------------------------- authentication


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A second server, this one requiring `Authorization: Bearer secret`."""
    data_dir: Path = tmp_path_factory.mktemp("secured")
    # Embedded whatever the environment says: the key check is the same in every mode.
    env = {"HAL9100_API_KEY": "secret", "DATABASE_URL": "", "REDIS_URL": "", "S3_ENDPOINT": ""}
    proc = ServerProcess(env, data_dir)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def test_missing_key_is_401(secured: ServerProcess) -> None:
    with httpx.Client(base_url=secured.url, timeout=30) as anonymous:
        for method, path in (
            ("POST", "/v1/threads"),
            ("POST", "/threads"),
            ("GET", "/v1/files"),
            ("GET", "/v1/assistants"),
            ("GET", "/v1/nothing-here"),
        ):
            error = assert_error(anonymous.request(method, path), 401, code="invalid_api_key")
            assert error["type"] == "invalid_request_error"
            assert "API key" in str(error["message"])


def test_wrong_key_is_401(secured: ServerProcess) -> None:
    with httpx.Client(base_url=secured.url, timeout=30) as raw_client:
        for header in ("Bearer wrong", "Bearer secret2", "Bearer", "secret", "Basic c2VjcmV0"):
            response = raw_client.post("/v1/threads", headers={"Authorization": header})
            error = assert_error(response, 401, code="invalid_api_key")
            assert "Incorrect API key" in str(error["message"])
    wrong = make_client(secured.url, api_key="wrong")
    try:
        with pytest.raises(openai.AuthenticationError) as err:
            wrong.beta.threads.create()
        assert err.value.status_code == 401
        assert err.value.code == "invalid_api_key"
    finally:
        wrong.close()


def test_right_key_works_through_the_sdk(secured: ServerProcess) -> None:
    sdk = make_client(secured.url, api_key="secret")
    try:
        thread = sdk.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
        assert [m.role for m in sdk.beta.threads.messages.list(thread.id)] == ["user"]
        file = sdk.files.create(file=("k.txt", b"key"), purpose="assistants")
        assert sdk.files.content(file.id).read() == b"key"
        assert sdk.beta.threads.delete(thread.id).deleted is True
    finally:
        sdk.close()


def test_health_is_open(secured: ServerProcess) -> None:
    for path in ("/health",):
        response = httpx.get(f"{secured.url}{path}", timeout=30)
        assert response.status_code == 200, (path, response.text)
        assert response.json() == {"status": "ok"}
