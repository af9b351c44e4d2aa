"""The `action` tool: specs accepted and refused over HTTP, header values redacted in assistant
and run objects, the address check (a pure function), and ActionTool.call against a real HTTP
server on loopback, reached through HAL9100_ACTION_ALLOWED_HOSTS.

Plain HTTP rather than the SDK: `action` is HAL-9100's own tool type, which the SDK's strict
response models and OpenAI's spec do not know. The assistants live on their own deployment so
that tests listing every assistant through the validating SDK never meet them.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import html
import json
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

import httpx
import pytest
import yaml

from conftest import DeployFactory
from hal9100.config import Settings
from hal9100.tools.action import REDACTED, ActionTool, refusal
from hal9100.tools.action.spec import (
    SAFE_LOADER,
    ActionSpecError,
    parse_cached,
    parse_in_thread,
)
from hal9100.tools.base import ToolContext

SECRET = "Bearer sk-very-secret"


def make_spec(url: str = "https://api.example.com/v1", **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "Pets", "version": "1"},
        "servers": [{"url": url}],
        "paths": {
            "/pets/{pet_id}": {
                "get": {
                    "operationId": "getPet",
                    "summary": "Get a pet",
                    "parameters": [
                        {
                            "name": "pet_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {"name": "fields", "in": "query", "schema": {"type": "string"}},
                        {"name": "X-Trace", "in": "header", "schema": {"type": "string"}},
                    ],
                    "responses": {"200": {"description": "ok"}},
                }
            },
            "/pets": {
                "post": {
                    "operationId": "addPet",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}
                        },
                    },
                    "responses": {"200": {"description": "ok"}},
                }
            },
        },
        "components": {
            "schemas": {
                "Pet": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}},
                    "required": ["name"],
                }
            }
        },
    }
    spec.update(extra)
    return spec


def action(spec: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"openapi_spec": spec}
    if headers is not None:
        data["headers"] = headers
    return {"type": "action", "data": data}


@pytest.fixture(scope="module")
def api(deploy: DeployFactory) -> Iterator[httpx.Client]:
    server = deploy(HAL9100_ACTION_MAX_SPEC_BYTES="20000")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def create_assistant(api: httpx.Client, tools: list[dict[str, Any]]) -> httpx.Response:
    return api.post("/v1/assistants", json={"model": "gpt-4o", "tools": tools})


# --- creation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["json", "yaml", "object"])
def test_spec_accepted_as_json_yaml_or_object(api: httpx.Client, form: str) -> None:
    spec = make_spec()
    raw: Any = {"json": json.dumps(spec), "yaml": yaml.safe_dump(spec), "object": spec}[form]
    answer = create_assistant(api, [action(raw, {"Authorization": SECRET})])
    assert answer.status_code == 200, answer.text
    tool = answer.json()["tools"][0]
    assert tool["type"] == "action"
    # The spec is stored and shown as sent; only header values are hidden.
    assert tool["data"]["openapi_spec"] == raw
    assert tool["data"]["headers"] == {"Authorization": REDACTED}
    assert SECRET not in answer.text


def _yaml_alias_bomb() -> str:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [{', '.join(['*a' + (str(i - 1) if i > 1 else '')] * 10)}]")
    return "openapi: 3.0.3\n" + "\n".join(lines)


def _cyclic() -> dict[str, Any]:
    spec = make_spec()
    spec["components"]["schemas"]["Pet"]["properties"]["parent"] = {
        "$ref": "#/components/schemas/Pet"
    }
    return spec


def _bad_operation_id() -> dict[str, Any]:
    spec = make_spec()
    spec["paths"]["/pets"]["post"]["operationId"] = "add pet!"
    return spec


def _duplicate_names() -> dict[str, Any]:
    # Unique operationIds (the validator checks those), but the name derived for an
    # operation without one (method and path) is taken.
    spec = make_spec()
    spec["paths"]["/pets"]["post"]["operationId"] = "get_pets"
    spec["paths"]["/pets"]["get"] = {"responses": {"200": {"description": "ok"}}}
    return spec


def _many_operations() -> dict[str, Any]:
    spec = make_spec()
    for i in range(128):
        spec["paths"][f"/p{i}"] = {"get": {"responses": {"200": {"description": "ok"}}}}
    return spec


def _remote_ref(ref: str) -> dict[str, Any]:
    spec = make_spec()
    spec["paths"]["/pets"]["post"]["requestBody"]["content"]["application/json"]["schema"] = {
        "$ref": ref
    }
    return spec


SPEC = "tools[0].data.openapi_spec"
HEADERS = "tools[0].data.headers"


@pytest.mark.parametrize(
    ("spec", "headers", "param", "reason"),
    [
        (
            {"swagger": "2.0", "info": {"title": "x", "version": "1"}, "paths": {}},
            None,
            SPEC,
            "Swagger / OpenAPI 2.0 is not supported",
        ),
        ({"info": {"title": "x"}}, None, SPEC, "must be OpenAPI 3.x"),
        ("openapi: [unclosed", None, SPEC, "neither JSON nor YAML"),
        (
            {k: v for k, v in make_spec().items() if k != "info"},
            None,
            SPEC,
            "'info' is a required property",
        ),
        ({k: v for k, v in make_spec().items() if k != "servers"}, None, SPEC, "servers[0].url"),
        (make_spec(url="/v1"), None, SPEC, "must be an absolute http:// or https:// URL"),
        (make_spec(url="ftp://files.example.com"), None, SPEC, "absolute http:// or https://"),
        (_bad_operation_id(), None, SPEC, "function name 'add pet!'"),
        (_duplicate_names(), None, SPEC, "function name 'get_pets' is used by another"),
        (make_spec(padding="x" * 20_001), None, SPEC, "at most 20000 are accepted"),
        (json.dumps(make_spec(padding="x" * 20_001)), None, SPEC, "at most 20000 are accepted"),
        (_yaml_alias_bomb(), None, SPEC, "more than 200000 nodes"),
        (_many_operations(), None, SPEC, "more than 128 operations"),
        (_remote_ref("https://example.com/pet.json"), None, SPEC, "is not local"),
        (_remote_ref("file:///etc/passwd"), None, SPEC, "is not local"),
        (_remote_ref("pet.yaml#/Pet"), None, SPEC, "is not local"),
        (_remote_ref("#/components/schemas/Missing"), None, SPEC, "Missing"),
        (_cyclic(), None, SPEC, "cyclic $ref '#/components/schemas/Pet'"),
        (make_spec(), {"Bad Header": "x"}, HEADERS, "not a valid HTTP header name"),
        (make_spec(), {"X-Key": "a\r\nInjected: 1"}, HEADERS, "not a valid HTTP header value"),
        (make_spec(), {"Host": "evil.example"}, HEADERS, "set by the server"),
        (make_spec(), {"X-Key": " Injected"}, HEADERS, "no leading or trailing spaces or tabs"),
        (make_spec(), {"X-Key": "Injected\t"}, HEADERS, "no leading or trailing spaces or tabs"),
    ],
)
def test_invalid_tools_refused_with_param_and_reason(
    api: httpx.Client, spec: Any, headers: dict[str, str] | None, param: str, reason: str
) -> None:
    answer = create_assistant(api, [action(spec, headers)])
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert reason in error["message"], error["message"]
    # A refused header value may be a secret: never echoed.
    assert "Injected" not in answer.text


def test_refused_on_update_and_on_runs(api: httpx.Client) -> None:
    assistant = create_assistant(api, []).json()
    bad = [{"type": "code_interpreter"}, action(make_spec(url="/relative"))]
    update = api.post(f"/v1/assistants/{assistant['id']}", json={"tools": bad})
    assert update.status_code == 400
    assert update.json()["error"]["param"] == "tools[1].data.openapi_spec"
    run = api.post("/v1/threads/runs", json={"assistant_id": assistant["id"], "tools": bad})
    assert run.status_code == 400
    assert run.json()["error"]["param"] == "tools[1].data.openapi_spec"


def test_specs_of_a_request_limited_in_total(api: httpx.Client) -> None:
    # Each is within the deployment's 20000 bytes; the third one takes the total past it.
    def spec(prefix: str) -> dict[str, Any]:
        made = make_spec(**{"x-padding": "x" * 8000})
        for op in ("get", "post"):
            path = "/pets/{pet_id}" if op == "get" else "/pets"
            made["paths"][path][op]["operationId"] = f"{prefix}_{op}"
        return made

    assert create_assistant(api, [action(spec("a"))]).status_code == 200
    tools = [{"type": "code_interpreter"}, action(spec("a")), action(spec("b"))]
    answer = create_assistant(api, [*tools, action(spec("c"))])
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == "tools[3]", error
    assert "more than the 20000 accepted across one request's tools" in error["message"]
    assert create_assistant(api, tools).status_code == 200


def test_yaml_read_with_libyaml_when_available() -> None:
    # The pure-Python loader takes seconds for a spec of a megabyte, on the event loop.
    assert SAFE_LOADER is (yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader)


def test_tool_choice_may_name_an_action_operation(api: httpx.Client) -> None:
    assistant = create_assistant(api, [action(make_spec())]).json()

    def run(name: str) -> httpx.Response:
        choice = {"type": "function", "function": {"name": name}}
        return api.post(
            "/v1/threads/runs", json={"assistant_id": assistant["id"], "tool_choice": choice}
        )

    accepted = run("addPet")
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["tool_choice"] == {"type": "function", "function": {"name": "addPet"}}
    created = accepted.json()
    api.post(f"/v1/threads/{created['thread_id']}/runs/{created['id']}/cancel")
    refused = run("removePet")
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "tool_choice"
    assert "'removePet' is not among the run's tools" in refused.json()["error"]["message"]


def test_tool_choice_naming_an_operation_another_process_has_not_parsed(
    deploy: DeployFactory, mode: str
) -> None:
    # The run is created by an API process that never parsed the assistant's spec: it parses
    # it (in a thread, its database session let go meanwhile) to check the name.
    if mode != "production":
        pytest.skip("needs two API processes")
    server = deploy(HAL9100_ACTION_MAX_SPEC_BYTES="20000")
    spec = make_spec(url=f"https://api-{uuid.uuid4().hex[:8]}.example.com")
    with httpx.Client(base_url=server.urls[0], timeout=30) as first:
        assistant = create_assistant(first, [action(spec)]).json()
    choice = {"type": "function", "function": {"name": "addPet"}}
    with httpx.Client(base_url=server.urls[1], timeout=30) as second:
        thread = second.post("/v1/threads", json={}).json()
        run = second.post(
            f"/v1/threads/{thread['id']}/runs",
            json={"assistant_id": assistant["id"], "tool_choice": choice},
        )
        assert run.status_code == 200, run.text
        assert run.json()["tool_choice"] == choice
        second.post(f"/v1/threads/{thread['id']}/runs/{run.json()['id']}/cancel")
    spec = make_spec(url=f"https://api-{uuid.uuid4().hex[:8]}.example.com")
    with httpx.Client(base_url=server.urls[0], timeout=30) as first:
        assistant = create_assistant(first, [action(spec)]).json()
    with httpx.Client(base_url=server.urls[1], timeout=30) as second:
        both = second.post(
            "/v1/threads/runs", json={"assistant_id": assistant["id"], "tool_choice": choice}
        )
        assert both.status_code == 200, both.text
        assert both.json()["thread_id"].startswith("thread_")
        refused = second.post(
            "/v1/threads/runs",
            json={
                "assistant_id": assistant["id"],
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
        )
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "tool_choice"


# --- redaction --------------------------------------------------------------------------------


def test_headers_redacted_in_assistant_objects(api: httpx.Client) -> None:
    tools = [action(make_spec(), {"Authorization": SECRET, "X-Api-Key": "k-123"})]
    created = create_assistant(api, tools).json()
    retrieved = api.get(f"/v1/assistants/{created['id']}")
    listed = api.get("/v1/assistants", params={"limit": 100})
    for answer in (retrieved, listed):
        assert answer.status_code == 200
        assert SECRET not in answer.text and "k-123" not in answer.text
    assert retrieved.json()["tools"][0]["data"]["headers"] == {
        "Authorization": REDACTED,
        "X-Api-Key": REDACTED,
    }
    mine = next(a for a in listed.json()["data"] if a["id"] == created["id"])
    assert mine["tools"] == retrieved.json()["tools"]


def test_redacted_values_sent_back_keep_the_stored_ones(api: httpx.Client) -> None:
    created = create_assistant(api, [action(make_spec(), {"Authorization": SECRET})]).json()
    # A retrieve-modify-update round trip: the marker stands for the stored value.
    tools = api.get(f"/v1/assistants/{created['id']}").json()["tools"]
    tools[0]["data"]["headers"]["X-Extra"] = "plain"
    updated = api.post(f"/v1/assistants/{created['id']}", json={"tools": tools})
    assert updated.status_code == 200, updated.text
    assert updated.json()["tools"][0]["data"]["headers"] == {
        "Authorization": REDACTED,
        "X-Extra": REDACTED,
    }
    # With another spec there is nothing to keep: the client must send the real value.
    tools[0]["data"]["openapi_spec"] = make_spec(url="https://other.example.com")
    refused = api.post(f"/v1/assistants/{created['id']}", json={"tools": tools})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "tools[0].data.headers.Authorization"
    assert "write-only" in refused.json()["error"]["message"]
    fresh = create_assistant(api, [action(make_spec(), {"Authorization": REDACTED})])
    assert fresh.status_code == 400


def test_headers_redacted_in_run_objects(api: httpx.Client) -> None:
    assistant = create_assistant(api, [action(make_spec(), {"Authorization": SECRET})]).json()
    thread = api.post("/v1/threads", json={}).json()
    runs = [
        # The assistant's tools, copied onto the run.
        api.post(f"/v1/threads/{thread['id']}/runs", json={"assistant_id": assistant["id"]}),
        # The run's own tools, through thread-and-run.
        api.post(
            "/v1/threads/runs",
            json={
                "assistant_id": assistant["id"],
                "tools": [action(json.dumps(make_spec()), {"X-Api-Key": "k-456"})],
            },
        ),
    ]
    for created in runs:
        assert created.status_code == 200, created.text
        run = created.json()
        retrieved = api.get(f"/v1/threads/{run['thread_id']}/runs/{run['id']}")
        listed = api.get(f"/v1/threads/{run['thread_id']}/runs")
        for answer in (created, retrieved, listed):
            assert SECRET not in answer.text and "k-456" not in answer.text
        headers = retrieved.json()["tools"][0]["data"]["headers"]
        assert set(headers.values()) == {REDACTED}
        # Whatever became of the run, let it end before the thread is reused.
        api.post(f"/v1/threads/{run['thread_id']}/runs/{run['id']}/cancel")


# --- where calls may go (pure) ----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://[::1]/",
        "http://10.1.2.3/",
        "http://172.16.0.1/",
        "http://172.31.255.255/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://224.0.0.1/",
        "http://0.0.0.0/",
        "http://100.64.0.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[2002:7f00:1::]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://255.255.255.255/",
        "http://localhost:8080/",
        "http://api.localhost/",
        # Special-purpose ranges Python 3.11's flags call global.
        "http://[fec0::1]/",
        "http://192.0.0.8/",
        "http://192.88.99.1/",
        "http://[3fff::1]/",
        "http://[::ffff:192.0.0.8]/",
        # Flagged by Python, listed too.
        "http://198.18.0.1/",
        "http://198.19.255.254/",
        "http://[2001:db8::1]/",
        "http://192.0.2.1/",
        "http://203.0.113.7/",
        "http://240.0.0.1/",
    ],
)
def test_non_public_addresses_refused(url: str) -> None:
    reason = refusal(url)
    assert reason is not None
    assert "HAL9100_ACTION_ALLOWED_HOSTS" in reason


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://a/"])
def test_other_schemes_refused(url: str) -> None:
    reason = refusal(url, ["8.8.8.8"])
    assert reason is not None and "only http and https" in reason


def test_names_checked_by_every_resolved_address() -> None:
    assert refusal("https://api.example.com/", ["8.8.8.8", "2606:4700::1111"]) is None
    reason = refusal("https://rebind.example.com/", ["8.8.8.8", "127.0.0.1"])
    assert reason is not None and "resolves to 127.0.0.1" in reason
    assert refusal("https://meta.example.com/", ["::ffff:169.254.169.254"]) is not None
    assert "did not resolve" in (refusal("https://nowhere.example.com/", []) or "")


def test_public_addresses_allowed() -> None:
    assert refusal("http://8.8.8.8/") is None
    assert refusal("https://[2606:4700::1111]/") is None
    assert refusal("http://[64:ff9b::808:808]/") is None
    # Next to special-purpose ranges, outside them.
    assert refusal("http://192.0.1.1/") is None
    assert refusal("http://198.20.0.1/") is None
    assert refusal("http://[2001:db9::1]/") is None


def test_allowed_hosts_override() -> None:
    assert refusal("http://localhost:8080/", allowed_hosts=["localhost"]) is None
    assert refusal("http://localhost:8080/", allowed_hosts=["localhost:8080"]) is None
    assert refusal("http://localhost:9090/", allowed_hosts=["localhost:8080"]) is not None
    assert refusal("http://127.0.0.1:8080/", allowed_hosts=["127.0.0.1:8080"]) is None
    assert refusal("http://[::1]:8080/", allowed_hosts=["[::1]:8080"]) is None
    assert refusal("http://[::1]/", allowed_hosts=["::1"]) is None
    assert refusal("http://db.internal/", ["10.0.0.5"], allowed_hosts=["db.internal"]) is None
    # Allowing a host does not allow another scheme.
    assert refusal("ftp://localhost/", allowed_hosts=["localhost"]) is not None


# --- calls against a real server on loopback --------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]]

    def log_message(self, *args: Any) -> None:
        return None

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else None
        record = {
            "method": self.command,
            "path": parts.path,
            "query": parse_qs(parts.query),
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
        }
        self.seen.append(record)
        port = self.server.server_address[1]
        route = parts.path.removeprefix("/api")
        if route == "/big":
            self._answer(200, b"x" * 5000)
        elif route == "/slow":
            time.sleep(2)
            self._answer(200, b"late")
        elif route == "/loop":
            self._answer(302, b"", {"Location": "/api/loop"})
        elif route == "/to-metadata":
            self._answer(302, b"", {"Location": "http://169.254.169.254/latest/meta-data/"})
        elif route == "/to-localhost":
            self._answer(307, b"", {"Location": f"http://localhost:{port}/echo"})
        elif route == "/missing":
            self._answer(404, b'{"error": "no such pet"}')
        elif route == "/hangup":
            # Read the request, then close without a word.
            self.close_connection = True
        elif route == "/gzip-bomb":
            self._answer(200, gzip_bomb(), {"Content-Encoding": "gzip"})
        elif route == "/gzip-small":
            self._answer(200, gzip.compress(b"small and gzipped"), {"Content-Encoding": "gzip"})
        elif route == "/deflate":
            self._answer(200, zlib.compress(b"zlib deflated"), {"Content-Encoding": "deflate"})
        elif route == "/raw-deflate":
            raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
            payload = raw.compress(b"raw deflated") + raw.flush()
            self._answer(200, payload, {"Content-Encoding": "deflate"})
        elif route == "/gzip-gzip":
            payload = gzip.compress(gzip.compress(b"twice"))
            self._answer(200, payload, {"Content-Encoding": "gzip, gzip"})
        elif route == "/br":
            self._answer(200, b"\x0b\x02\x80hello\x03", {"Content-Encoding": "br"})
        elif route == "/bad-gzip":
            self._answer(200, b"\x1f\x8bnot really gzip", {"Content-Encoding": "gzip"})
        elif route.startswith("/echo-auth"):
            # An API quoting the request: the model sizes `pad` to place a cut in the secret.
            asked = parse_qs(parts.query)
            echo = f"{asked.get('pad', [''])[0]} {self.headers.get('Authorization')}".encode()
            if route == "/echo-auth":
                self._answer(200, echo)
                return
            # The first `at` bytes of it, then the connection closes or stalls.
            at = int(asked["at"][0])
            self.send_response(200)
            self.send_header("Content-Length", str(len(echo)))
            self.end_headers()
            self.wfile.write(echo[:at])
            self.wfile.flush()
            if route == "/echo-auth-stall":
                time.sleep(1)
            self.close_connection = True
        elif route == "/echo-encoded":
            auth = self.headers.get("Authorization") or ""
            forms = [
                json.dumps({"auth": auth}).replace("/", "\\/"),
                quote(auth, safe=""),
                quote_plus(auth),
                html.escape(auth),
            ]
            self._answer(200, "\n".join(forms).encode())
        elif route in ("/utf-16", "/latin-1", "/windows-1252", "/utf-7"):
            charset = route[1:]
            self._answer(
                200,
                "caf\u00e9 \u20ac".encode(charset, errors="replace"),
                {"Content-Type": f"text/plain; charset={charset}"},
            )
        elif route == "/raw-deflate-one-byte":
            # zlib takes one byte without a word: the raw-deflate retry must still be open.
            raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
            payload = raw.compress(b"raw deflated") + raw.flush()
            self.send_response(200)
            self.send_header("Content-Encoding", "deflate")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[:1])
            self.wfile.flush()
            time.sleep(0.2)
            self.wfile.write(payload[1:])
        elif route == "/br-stall":
            self.send_response(200)
            self.send_header("Content-Encoding", "br")
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.flush()
            time.sleep(2)
            self.close_connection = True
        elif route == "/gzip-trailing":
            payload = gzip.compress(b"first") + b"trailing junk"
            self._answer(200, payload, {"Content-Encoding": "gzip"})
        elif route == "/empty-blocks":
            # "hi", then empty stored blocks without end: much input, no more output.
            raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
            payload = raw.compress(b"hi") + raw.flush(zlib.Z_SYNC_FLUSH)
            self._answer(
                200, payload + b"\x00\x00\x00\xff\xff" * 30_000, {"Content-Encoding": "deflate"}
            )
        else:
            self._answer(200, json.dumps(record).encode(), {"Content-Type": "application/json"})

    do_GET = do_POST = do_PUT = do_DELETE = _handle


@functools.cache
def gzip_bomb() -> bytes:
    # 50 MB of one byte, about 50 kB on the wire.
    return gzip.compress(b"a" * 50_000_000, compresslevel=9)


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A call that timed out closed its connection before the slow answer was written.
        return None


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    handler = type("RecordingHandler", (Handler,), {"seen": seen})
    server = QuietServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def call_spec(base: str) -> dict[str, Any]:
    spec = make_spec(url=f"http://{base}/api")
    paths = spec["paths"]
    paths["/pets/{pet_id}"]["put"] = {
        "operationId": "putPet",
        "parameters": [{"name": "pet_id", "in": "path", "required": True, "schema": {}}],
        "responses": {"200": {"description": "ok"}},
    }
    names = ["big", "slow", "loop", "to-metadata", "to-localhost", "missing", "hangup"]
    names += ["gzip-bomb", "gzip-small", "deflate", "raw-deflate", "gzip-gzip", "br", "bad-gzip"]
    names += ["echo-encoded", "utf-16", "latin-1", "windows-1252", "utf-7"]
    names += ["raw-deflate-one-byte", "br-stall", "gzip-trailing", "empty-blocks"]
    for name in names:
        paths[f"/{name}"] = {
            "get": {
                "operationId": name.replace("-", "_"),
                "responses": {"200": {"description": "ok"}},
            }
        }
    for name in ("echo-auth", "echo-auth-hangup", "echo-auth-stall"):
        paths[f"/{name}"] = {
            "get": {
                "operationId": name.replace("-", "_"),
                "parameters": [
                    {"name": "pad", "in": "query", "schema": {"type": "string"}},
                    {"name": "at", "in": "query", "schema": {"type": "integer"}},
                ],
                "responses": {"200": {"description": "ok"}},
            }
        }
    for name in ("slow", "hangup"):
        paths[f"/{name}"]["post"] = {
            "operationId": f"post_{name}",
            "responses": {"200": {"description": "ok"}},
        }
    return spec


def make_tool(base: str, **settings: Any) -> ActionTool:
    config = Settings(action_allowed_hosts=[base], **settings)
    definition = action(call_spec(base), {"Authorization": SECRET})
    return ActionTool.from_definition(definition, config)


def ctx(deadline: float | None = None) -> ToolContext:
    # An action call uses none of the run's storage; the engine passes the real ones.
    return ToolContext(run=None, sessions=None, storage=None, settings=None, deadline=deadline)  # type: ignore[arg-type]


def test_functions_from_operations(upstream: tuple[str, list[Any]]) -> None:
    tool = make_tool(upstream[0])
    functions = {f.name: f for f in tool.functions()}
    get_pet = functions["getPet"]
    assert get_pet.description == "Get a pet"
    assert get_pet.parameters == {
        "type": "object",
        "properties": {
            "pet_id": {"type": "string"},
            "fields": {"type": "string"},
            "X-Trace": {"type": "string"},
        },
        "required": ["pet_id"],
    }
    # The JSON body goes under `body`, its $ref inlined.
    assert functions["addPet"].parameters == {
        "type": "object",
        "properties": {
            "body": {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "required": ["name"],
            }
        },
        "required": ["body"],
    }
    assert tool.repeatable("getPet", {}) and tool.repeatable("putPet", {})
    assert not tool.repeatable("addPet", {}) and not tool.repeatable("nope", {})


async def test_get_with_path_query_and_header_params(upstream: tuple[str, list[Any]]) -> None:
    base, seen = upstream
    tool = make_tool(base)
    arguments = {"pet_id": "a b/c", "fields": "name,age", "X-Trace": "t-1"}
    result = await tool.call("getPet", arguments, ctx())
    assert result.output.startswith("HTTP 200 OK\n")
    record = json.loads(result.output.split("\n", 1)[1])
    assert record["method"] == "GET"
    # Percent-encoded: the slash stays inside the one path segment.
    assert record["path"] == "/api/pets/a%20b%2Fc"
    assert record["query"] == {"fields": ["name,age"]}
    assert record["headers"]["x-trace"] == "t-1"
    # Sent; but the echo of it in the answer is scrubbed before the model reads it.
    assert seen[-1]["headers"]["authorization"] == SECRET
    assert record["headers"]["authorization"] == REDACTED
    assert "sk-very-secret" not in result.output
    assert record["headers"]["host"] == base
    assert result.details == {
        "type": "function",
        "function": {
            "name": "getPet",
            "arguments": json.dumps(arguments),
            "output": result.output,
        },
    }
    assert seen[-1]["path"] == "/api/pets/a%20b%2Fc"


async def test_post_json_body(upstream: tuple[str, list[Any]]) -> None:
    tool = make_tool(upstream[0])
    result = await tool.call("addPet", {"body": {"name": "Rex"}}, ctx())
    record = json.loads(result.output.split("\n", 1)[1])
    assert record["method"] == "POST"
    assert json.loads(record["body"]) == {"name": "Rex"}
    assert record["headers"]["content-type"] == "application/json"


async def test_bad_arguments_are_outputs(upstream: tuple[str, list[Any]]) -> None:
    tool = make_tool(upstream[0])
    missing = await tool.call("addPet", {}, ctx())
    assert "missing required argument(s): body" in missing.output
    unknown = await tool.call("getPet", {"pet_id": "1", "colour": "red"}, ctx())
    assert "unknown argument(s) colour" in unknown.output
    crlf = await tool.call("getPet", {"pet_id": "1", "X-Trace": "a\r\nB: c"}, ctx())
    assert "not a valid HTTP header value" in crlf.output
    assert "no function 'nope'" in (await tool.call("nope", {}, ctx())).output


async def test_http_errors_are_outputs(upstream: tuple[str, list[Any]]) -> None:
    result = await make_tool(upstream[0]).call("missing", {}, ctx())
    assert result.output == 'HTTP 404 Not Found\n{"error": "no such pet"}'


async def test_response_cut(upstream: tuple[str, list[Any]]) -> None:
    bytes_cut = await make_tool(upstream[0], action_max_response_bytes=1000).call("big", {}, ctx())
    assert bytes_cut.output == "HTTP 200 OK\n" + "x" * 1000 + (
        "\n[response cut: only its first 1000 bytes were read]"
    )
    chars_cut = await make_tool(upstream[0], action_max_output_chars=100).call("big", {}, ctx())
    assert chars_cut.output == "HTTP 200 OK\n" + "x" * 100 + (
        "\n[response cut: showing 100 of 5000 characters]"
    )


async def test_timeout_is_an_output(upstream: tuple[str, list[Any]]) -> None:
    tool = make_tool(upstream[0], action_timeout=0.5)
    started = time.monotonic()
    result = await tool.call("slow", {}, ctx())
    assert "timed out" in result.output
    assert time.monotonic() - started < 1.5
    # The run's deadline bounds it too.
    result = await make_tool(upstream[0]).call("slow", {}, ctx(deadline=time.time() + 0.5))
    assert "timed out" in result.output
    expired = await make_tool(upstream[0]).call("slow", {}, ctx(deadline=time.time() - 1))
    assert "no time left" in expired.output


async def test_refused_address_is_an_output(upstream: tuple[str, list[Any]]) -> None:
    # The same server, not allowed: refused before any connection.
    base, seen = upstream
    before = len(seen)
    tool = ActionTool.from_definition(action(call_spec(base)), Settings())
    result = await tool.call("getPet", {"pet_id": "1"}, ctx())
    assert "was refused" in result.output and "127.0.0.1 is not a public address" in result.output
    assert len(seen) == before


async def test_connection_refused_is_an_output() -> None:
    tool = ActionTool.from_definition(
        action(call_spec("127.0.0.1:9")), Settings(action_allowed_hosts=["127.0.0.1:9"])
    )
    result = await tool.call("getPet", {"pet_id": "1"}, ctx())
    assert "could not connect" in result.output


async def test_redirects(upstream: tuple[str, list[Any]]) -> None:
    base, seen = upstream
    tool = make_tool(base)
    refused = await tool.call("to_metadata", {}, ctx())
    assert "redirect to http://169.254.169.254/latest/meta-data/ was not followed" in refused.output
    before = len(seen)
    loop = await tool.call("loop", {}, ctx())
    assert "redirected more than 5 times" in loop.output
    assert len(seen) - before == 6


async def test_secret_headers_stay_with_the_spec_origin(upstream: tuple[str, list[Any]]) -> None:
    base, _ = upstream
    port = base.split(":")[1]
    config = Settings(action_allowed_hosts=[base, f"localhost:{port}"])
    tool = ActionTool.from_definition(action(call_spec(base), {"Authorization": SECRET}), config)
    result = await tool.call("to_localhost", {}, ctx())
    assert result.output.startswith("HTTP 200 OK\n"), result.output
    record = json.loads(result.output.split("\n", 1)[1])
    assert record["path"] == "/echo"
    assert "authorization" not in record["headers"]


async def test_connects_to_the_checked_address_with_the_real_host(
    upstream: tuple[str, list[Any]],
) -> None:
    """Requests go to a resolved address, with the name in the Host header (so a second
    resolution, e.g. a DNS rebinding, is never made)."""
    _, seen = upstream
    port = upstream[0].split(":")[1]
    config = Settings(action_allowed_hosts=[f"localhost:{port}"])
    tool = ActionTool.from_definition(action(call_spec(f"localhost:{port}")), config)
    result = await tool.call("getPet", {"pet_id": "7"}, ctx())
    assert result.output.startswith("HTTP 200 OK\n"), result.output
    assert seen[-1]["headers"]["host"] == f"localhost:{port}"


async def test_path_arguments_of_only_dots_are_refused(upstream: tuple[str, list[Any]]) -> None:
    # `/pets/..` would be sent as `/` (dot segments are removed), with data.headers.
    base, seen = upstream
    tool = make_tool(base)
    before = len(seen)
    for value in ("..", ".", "..."):
        result = await tool.call("getPet", {"pet_id": value}, ctx())
        assert f"argument pet_id may not be '{value}'" in result.output
        assert result.output.endswith("Nothing was sent.")
    assert len(seen) == before
    fine = await tool.call("getPet", {"pet_id": "..a"}, ctx())
    assert fine.output.startswith("HTTP 200 OK\n")
    assert seen[-1]["path"] == "/api/pets/..a"


async def test_header_values_never_leak_into_outputs(upstream: tuple[str, list[Any]]) -> None:
    base, seen = upstream
    tool = make_tool(base)
    padded = await tool.call("getPet", {"pet_id": "1", "X-Trace": " t-1"}, ctx())
    assert "no leading or trailing spaces or tabs" in padded.output
    assert padded.output.endswith("Nothing was sent.")
    # A value HTTP refuses, as stored before such values were refused: h11's error quotes it,
    # and the output gives fixed words instead.
    secret = "sk-padded-secret"
    stored = action(call_spec(base), {"Authorization": f"Bearer {secret} "})
    config = Settings(action_allowed_hosts=[base])
    before = len(seen)
    result = await ActionTool.from_definition(stored, config).call("getPet", {"pet_id": "1"}, ctx())
    assert "could not be written as valid HTTP" in result.output, result.output
    assert "Nothing was sent." in result.output
    assert secret not in result.output and secret not in json.dumps(result.details)
    assert len(seen) == before


async def test_compressed_answers_are_decoded_under_the_cap(
    upstream: tuple[str, list[Any]],
) -> None:
    tool = make_tool(upstream[0], action_max_response_bytes=1000)
    # 50 MB once inflated: only as much as the cap is ever decoded.
    bomb = await tool.call("gzip_bomb", {}, ctx())
    assert bomb.output == "HTTP 200 OK\n" + "a" * 1000 + (
        "\n[response cut: only its first 1000 bytes were read]"
    )
    default = await make_tool(upstream[0]).call("gzip_bomb", {}, ctx())
    assert default.output.endswith(
        "[response cut: only its first 1048576 bytes were read]\n"
        "[response cut: showing 20000 of 1048576 characters]"
    )
    for name, text in [
        ("gzip_small", "small and gzipped"),
        ("deflate", "zlib deflated"),
        ("raw_deflate", "raw deflated"),
    ]:
        assert (await tool.call(name, {}, ctx())).output == f"HTTP 200 OK\n{text}"
    # An answer that fits exactly is not cut.
    exact = await make_tool(upstream[0], action_max_response_bytes=17).call("gzip_small", {}, ctx())
    assert exact.output == "HTTP 200 OK\nsmall and gzipped"
    for name, encoding in [("gzip_gzip", "gzip, gzip"), ("br", "br")]:
        refused = await tool.call(name, {}, ctx())
        assert refused.output == (
            f"HTTP 200 OK\nThe answer's body was not read: its Content-Encoding is "
            f"'{encoding}', and only identity or one gzip or deflate layer is read."
        )
    broken = await tool.call("bad_gzip", {}, ctx())
    assert broken.output == (
        "HTTP 200 OK\n\n[the rest of the answer could not be read: its gzip data is invalid]"
    )


async def test_a_post_without_an_answer_has_an_unknown_outcome(
    upstream: tuple[str, list[Any]],
) -> None:
    base, seen = upstream
    tool = make_tool(base, action_timeout=0.5)
    before = len(seen)
    slow = await tool.call("post_slow", {}, ctx())
    assert len(seen) == before + 1
    assert slow.output == (
        f"Outcome unknown: the request POST http://{base}/api/slow was sent, but no answer "
        "came within 0.5 s. It may or may not have taken effect; it was not retried; check "
        "before calling it again."
    )
    hangup = await tool.call("post_hangup", {}, ctx())
    assert hangup.output.startswith("Outcome unknown: the request POST ")
    assert "the server closed the connection or did not answer in valid HTTP" in hangup.output
    # An idempotent call can just be made again: a plain failure.
    get = await tool.call("hangup", {}, ctx())
    assert get.output == (
        f"The request GET http://{base}/api/hangup failed: the server closed the connection "
        "or did not answer in valid HTTP."
    )
    assert "timed out" in (await tool.call("slow", {}, ctx())).output
    # Nothing reached a server: a plain failure, whatever the method.
    closed = ActionTool.from_definition(
        action(call_spec("127.0.0.1:9")), Settings(action_allowed_hosts=["127.0.0.1:9"])
    )
    refused = await closed.call("addPet", {"body": {"name": "Rex"}}, ctx())
    assert refused.output == (
        "The request POST http://127.0.0.1:9/api/pets failed: could not connect (refused, "
        "unreachable, or the TLS handshake failed). Nothing was sent."
    )


# The secret's word as an API would echo it; any of its first 4 or more characters would help
# a model (or whoever reads its outputs) guess the rest.
SECRET_PREFIXES = [SECRET.split()[1][:n] for n in range(4, len(SECRET.split()[1]) + 1)]


def _shows_secret(result: Any) -> bool:
    shown = result.output + json.dumps(result.details)
    return any(prefix in shown for prefix in SECRET_PREFIXES)


@pytest.mark.parametrize("cap", ["action_max_response_bytes", "action_max_output_chars"])
async def test_a_cut_inside_an_echoed_secret_shows_none_of_it(
    upstream: tuple[str, list[Any]], cap: str
) -> None:
    tool = make_tool(upstream[0], **{cap: 40})
    # The answer is `pad` + " " + SECRET: each length of `pad` puts the cut at 40 one character
    # further into the secret, from before its start to past its end.
    for length in range(40 - len(SECRET) - 2, 41):
        result = await tool.call("echo_auth", {"pad": "x" * length}, ctx())
        assert result.output.startswith("HTTP 200 OK\n" + "x" * length), result.output
        assert not _shows_secret(result), (length, result.output)


async def test_a_body_broken_off_inside_an_echoed_secret_shows_none_of_it(
    upstream: tuple[str, list[Any]],
) -> None:
    body = "x " + SECRET
    tool = make_tool(upstream[0])
    for at in range(2, len(body)):
        result = await tool.call("echo_auth_hangup", {"pad": "x", "at": at}, ctx())
        assert "[the rest of the answer could not be read: " in result.output, result.output
        assert not _shows_secret(result), (at, result.output)
    # The run's time ends the read: the partial body is shown by the failure's words.
    slow = make_tool(upstream[0], action_timeout=0.3)
    for at in (len(body) - 1, len(body) - 6):
        result = await slow.call("echo_auth_stall", {"pad": "x", "at": at}, ctx())
        assert "[the rest of the answer did not come within 0.3 s]" in result.output
        assert result.output.startswith("HTTP 200 OK\nx "), result.output
        assert not _shows_secret(result), (at, result.output)


async def test_encoded_echoes_of_a_secret_are_scrubbed(upstream: tuple[str, list[Any]]) -> None:
    base, _ = upstream
    secret = 'sk/te+st&"key"<1>'
    definition = action(call_spec(base), {"Authorization": f"Bearer {secret}"})
    tool = ActionTool.from_definition(definition, Settings(action_allowed_hosts=[base]))
    result = await tool.call("echo_encoded", {}, ctx())
    # As JSON with escaped slashes, percent-encoded (both ways), HTML-escaped.
    assert result.output.split("\n") == [
        "HTTP 200 OK",
        json.dumps({"auth": REDACTED}),
        REDACTED,
        REDACTED,
        REDACTED,
    ]


async def test_only_ascii_compatible_charsets_are_decoded(upstream: tuple[str, list[Any]]) -> None:
    tool = make_tool(upstream[0])
    text = "caf\u00e9 \u20ac"

    async def body(name: str) -> str:
        return (await tool.call(name, {}, ctx())).output.removeprefix("HTTP 200 OK\n")

    assert await body("windows_1252") == text
    assert await body("latin_1") == "caf\u00e9 ?"
    # Others would let a secret through in a form no scrub matches, and a cut of their
    # bytes is no cut of the text: read as UTF-8.
    # (Without its NULs, which no database stores: UTF-16's ASCII reads as ASCII, so a
    # secret echoed in it is scrubbed like any other.)
    for name, charset in [("utf_16", "utf-16"), ("utf_7", "utf-7")]:
        expected = text.encode(charset).decode("utf-8", errors="replace").replace("\x00", "")
        assert await body(name) == expected


async def test_compressed_answers_read_with_care(upstream: tuple[str, list[Any]]) -> None:
    tool = make_tool(upstream[0], action_max_response_bytes=1000, action_timeout=5)
    one_byte = await tool.call("raw_deflate_one_byte", {}, ctx())
    assert one_byte.output == "HTTP 200 OK\nraw deflated"
    # Refused by its head: the body that never comes is not waited for.
    started = time.monotonic()
    stalled = await tool.call("br_stall", {}, ctx())
    assert time.monotonic() - started < 1.5
    assert stalled.output == (
        "HTTP 200 OK\nThe answer's body was not read: its Content-Encoding is 'br', and only "
        "identity or one gzip or deflate layer is read."
    )
    trailing = await tool.call("gzip_trailing", {}, ctx())
    assert trailing.output == (
        "HTTP 200 OK\nfirst\n[data after the end of the answer's gzip stream was not read]"
    )
    # Input that inflates to nothing is bounded as well: 2 x 1000 + 64 KiB of it.
    empty = await tool.call("empty_blocks", {}, ctx())
    assert empty.output == (
        "HTTP 200 OK\nhi\n[response cut: only its first 67536 deflate bytes were read, which "
        "decode to 2 bytes]"
    )


async def test_specs_are_parsed_in_their_own_few_threads() -> None:
    lock = threading.Lock()
    running = peak = 0

    def work() -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.1)
        with lock:
            running -= 1
        return threading.current_thread().name

    names = await asyncio.gather(*(parse_in_thread(work) for _ in range(6)))
    # Not asyncio's default executor, which also resolves names and does file I/O.
    assert all(name.startswith("action-spec") for name in names), names
    assert peak == 2


def _asked_at_once(raw: Any, callers: int = 4) -> list[Any]:
    """parse_cached(raw) from `callers` threads at once: their parses, or their refusals."""
    barrier = threading.Barrier(callers)
    results: list[Any] = []

    def ask() -> None:
        barrier.wait()
        try:
            results.append(parse_cached(raw))
        except ActionSpecError as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=ask) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_one_spec_asked_for_at_once_is_parsed_once() -> None:
    """After a restart, every run of an assistant builds its tools at once: one parse (its
    result, or its refusal) serves them all."""
    spec = _large_spec(200_000)
    spec["info"]["title"] = f"asked for at once {time.time_ns()}"
    parsed = _asked_at_once(spec)
    assert len(parsed) == 4 and all(result is parsed[0] for result in parsed), parsed
    refused = _asked_at_once(make_spec(url=f"ftp://at-once-{time.time_ns()}.example"))
    assert len(refused) == 4 and "must be an absolute http" in refused[0]
    assert refused == [refused[0]] * 4


def test_unknown_outcome(upstream: tuple[str, list[Any]]) -> None:
    tool = make_tool(upstream[0])
    result = tool.unknown_outcome("addPet", {"body": {"name": "Rex"}})
    assert "in flight when the server process making it stopped" in result.output
    assert "may or may not have taken effect" in result.output
    assert "not retried" in result.output
    assert result.details["function"]["output"] == result.output
    assert result.details["function"]["arguments"] == json.dumps({"body": {"name": "Rex"}})


# --- function names unique across a request's tools ------------------------------------------
# The model calls a function by its name alone, so no name may be offered by two tools: two
# function tools, two action specs with the same operationId, or an operation named like a
# function tool. The later tool is refused, wherever `tools` is given.


def function(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("tools", "name"),
    [
        # The other spec's server differs; its operationIds do not.
        ([action(make_spec()), action(make_spec(url="https://other.example.com"))], "getPet"),
        ([function("addPet"), action(make_spec())], "addPet"),
        ([action(make_spec()), function("getPet")], "getPet"),
        ([function("lookup"), function("lookup")], "lookup"),
    ],
)
def test_a_function_name_offered_twice_is_refused(
    api: httpx.Client, tools: list[dict[str, Any]], name: str
) -> None:
    answer = create_assistant(api, [{"type": "code_interpreter"}, *tools])
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "tools[2]"
    assert f"function name '{name}' is already offered by tools[1]" in error["message"], error


def test_distinct_function_names_are_accepted(api: httpx.Client) -> None:
    tools = [function("lookup"), action(make_spec()), function("getPets")]
    answer = create_assistant(api, tools)
    assert answer.status_code == 200, answer.text
    assert [t["type"] for t in answer.json()["tools"]] == ["function", "action", "function"]


def test_function_names_offered_twice_refused_on_update_and_runs(api: httpx.Client) -> None:
    assistant = create_assistant(api, [function("getPet")]).json()
    clash = [function("getPet"), action(make_spec())]
    refusals = {
        "update": api.post(f"/v1/assistants/{assistant['id']}", json={"tools": clash}),
        "thread and run": api.post(
            "/v1/threads/runs", json={"assistant_id": assistant["id"], "tools": clash}
        ),
    }
    thread = api.post("/v1/threads", json={}).json()
    refusals["run"] = api.post(
        f"/v1/threads/{thread['id']}/runs", json={"assistant_id": assistant["id"], "tools": clash}
    )
    for where, answer in refusals.items():
        assert answer.status_code == 400, (where, answer.text)
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error", where
        assert error["param"] == "tools[1]", (where, error)
        assert "function name 'getPet' is already offered by tools[0]" in error["message"]
    # Nothing was changed or started.
    assert api.get(f"/v1/assistants/{assistant['id']}").json()["tools"] == [function("getPet")]
    assert api.get(f"/v1/threads/{thread['id']}/runs").json()["data"] == []


def test_more_than_128_functions_in_all_are_refused(api: httpx.Client) -> None:
    # Each spec alone is within its 128 operations; together they offer 130 functions, more
    # than a model server takes in one request.
    def spec(prefix: str, count: int) -> dict[str, Any]:
        made = make_spec()
        made["paths"] = {
            f"/{prefix}{i}": {
                "get": {
                    "operationId": f"{prefix}{i}",
                    "responses": {"200": {"description": "ok"}},
                }
            }
            for i in range(count)
        }
        return made

    answer = create_assistant(api, [action(spec("a", 100)), action(spec("b", 30))])
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == "tools[1]", error
    assert "more than 128 functions" in error["message"], error
    assert create_assistant(api, [action(spec("a", 100)), action(spec("b", 28))]).status_code == 200


@pytest.mark.parametrize("name", ["Host", "content-length", "Transfer-Encoding", "Connection"])
def test_header_parameters_the_server_sets_are_refused(api: httpx.Client, name: str) -> None:
    spec = make_spec()
    spec["paths"]["/pets/{pet_id}"]["get"]["parameters"].append(
        {"name": name, "in": "header", "schema": {"type": "string"}}
    )
    answer = create_assistant(api, [action(spec)])
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == "tools[0].data.openapi_spec", error
    assert f"header parameter '{name}' is set by the server" in error["message"], error


# --- a spec's check does not hold up the server -----------------------------------------------
# Checking a spec of a megabyte takes seconds; it runs in a worker thread, so every other
# request (and stream) of the process is answered meanwhile.


def _large_spec(size: int) -> dict[str, Any]:
    """About `size` bytes: 100 operations, each taking one of many large schemas."""
    spec = make_spec(paths={})
    schemas: dict[str, Any] = {}
    spec["components"]["schemas"] = schemas
    while len(json.dumps(spec)) < size:
        index = len(schemas)
        schemas[f"Thing{index}"] = {
            "type": "object",
            "description": f"Thing {index}, " + "described at length. " * 4,
            "properties": {
                f"field_{f}": {
                    "type": ("string", "integer", "boolean")[f % 3],
                    "description": f"Field {f} of thing {index}.",
                }
                for f in range(40)
            },
            "required": ["field_0"],
        }
        if index < 100:
            body = {"$ref": f"#/components/schemas/Thing{index}"}
            spec["paths"][f"/things{index}"] = {
                "post": {
                    "operationId": f"postThing{index}",
                    "requestBody": {"content": {"application/json": {"schema": body}}},
                    "responses": {"200": {"description": "ok"}},
                }
            }
    return spec


def test_other_requests_are_answered_while_a_large_spec_is_checked(
    deploy: DeployFactory,
) -> None:
    server = deploy(HAL9100_ACTION_MAX_SPEC_BYTES="1000000")
    spec = _large_spec(800_000)
    created: list[httpx.Response] = []
    with (
        httpx.Client(base_url=server.url, timeout=120) as api,
        httpx.Client(base_url=server.url, timeout=120) as poller,
    ):
        assert poller.get("/health").status_code == 200
        creating = threading.Thread(
            target=lambda: created.append(create_assistant(api, [action(spec)]))
        )
        creating.start()
        # One poll at a time. On a loop blocked by the check, one poll waits for its end, and
        # only the few polls made while the body is read and the answer written are answered
        # before the create (3 to 7, measured with the check on the loop); the threaded check
        # leaves the loop free for hundreds.
        answered = 0
        while creating.is_alive():
            assert poller.get("/health").status_code == 200
            if creating.is_alive():
                answered += 1
        creating.join()
    assert created[0].status_code == 200, created[0].text[:500]
    assert len(created[0].json()["tools"][0]["data"]["openapi_spec"]["paths"]) == 100
    # Measured: 485 to 939 with the threaded check, 3 to 7 with the check on the loop. 20 stays
    # clear of the latter by a wide margin and tolerates a loaded CI machine.
    assert answered >= 20, answered
