"""The tool loop end to end: server-side calls (an `action` tool's operations, made by HAL-9100
against an HTTP API served here on loopback) and client calls in one run, corrections of calls
the model got wrong, the bounds on both, and action header secrets kept out of everything
clients, the model and the logs see.

The SDK used here is the official one, but neither strict nor checked against OpenAI's spec:
`action` is HAL-9100's own tool type, which the assistant and run objects carry and neither
knows. Run steps and their stream events carry only OpenAI's shapes, so those are checked
against the spec by hand. The assistants live on their own deployment, so that tests listing
every assistant through the validating SDK never meet them.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import openai
import pytest
from openai import AssistantEventHandler
from openai.types.beta import AssistantStreamEvent
from openai.types.beta.threads import Run
from openai.types.beta.threads.runs import RunStep

from conftest import DeployFactory
from deployments import Deployment, RoundRobinTransport
from openapi_contract import spec_available, validate_schema, validate_stream_event
from runs_support import WEATHER_TOOL, marker, requests_with
from scripted_llm import ScriptedLLM

POLL_MS = 50
# The action API's slow operation answers after this long; the deployment gives up sooner.
SLOW_SECONDS = 3.0
ACTION_TIMEOUT = "1"


# --- the action's HTTP API, served here -------------------------------------------------------


@dataclass
class Upstream:
    base: str
    seen: list[dict[str, Any]] = field(default_factory=list)

    def requests_for(self, text: str) -> list[dict[str, Any]]:
        return [r for r in self.seen if text in r["path"]]


class _Handler(BaseHTTPRequestHandler):
    upstream: Upstream

    def log_message(self, *args: Any) -> None:
        return None

    def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        self.upstream.seen.append(
            {
                "method": self.command,
                "path": parts.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": self.rfile.read(length).decode() if length else None,
            }
        )
        if parts.path.startswith("/weather/"):
            city = unquote(parts.path.removeprefix("/weather/"))
            body = json.dumps({"city": city, "forecast": "sunny", "celsius": 21})
            self._answer(200, body.encode(), "application/json")
        elif parts.path.startswith("/broken/"):
            self._answer(500, b"upstream exploded")
        elif parts.path.startswith("/binary/"):
            # What a PNG or a PDF holds: NUL bytes and bytes that are no UTF-8.
            self._answer(200, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "image/png")
        elif parts.path.startswith("/slow/"):
            time.sleep(SLOW_SECONDS)
            self._answer(200, b"too late")
        else:
            self._answer(404, b"no such route")

    do_GET = do_POST = _handle


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A call that timed out closed its connection before the slow answer was written.
        return None


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = _QuietServer(("127.0.0.1", 0), _Handler)
    state = Upstream(f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = type("Recording", (_Handler,), {"upstream": state})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def _get(operation_id: str) -> dict[str, Any]:
    return {
        "get": {
            "operationId": operation_id,
            "summary": f"{operation_id} of a key",
            "parameters": [
                {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {"200": {"description": "ok"}},
        }
    }


def weather_spec(url: str) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "Weather", "version": "1"},
        "servers": [{"url": url}],
        "paths": {
            "/weather/{city}": {
                "get": {
                    "operationId": "getWeather",
                    "summary": "The weather in a city",
                    "parameters": [
                        {
                            "name": "city",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": {"description": "ok"}},
                }
            },
            "/broken/{key}": _get("getBroken"),
            "/slow/{key}": _get("getSlow"),
            "/binary/{key}": _get("getBinary"),
        },
    }


def remote_spec() -> dict[str, Any]:
    """An API on an address no action may reach (10/8)."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "Internal", "version": "1"},
        "servers": [{"url": "http://10.255.255.1"}],
        "paths": {"/remote/{key}": _get("getRemote")},
    }


def action(spec: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"openapi_spec": spec}
    if headers is not None:
        data["headers"] = headers
    return {"type": "action", "data": data}


# --- deployments and clients ------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployment(deploy: DeployFactory) -> Deployment:
    return deploy(HAL9100_ACTION_TIMEOUT=ACTION_TIMEOUT)


def sdk_for(deployment: Deployment) -> openai.OpenAI:
    urls = deployment.urls
    transport = RoundRobinTransport(urls) if len(urls) > 1 else None
    return openai.OpenAI(
        base_url=f"{urls[0]}/v1",
        api_key="test",
        max_retries=0,
        timeout=30,
        http_client=httpx.Client(transport=transport),
    )


@pytest.fixture
def sdk(deployment: Deployment) -> Iterator[openai.OpenAI]:
    client = sdk_for(deployment)
    yield client
    client.close()


@pytest.fixture
def raw(deployment: Deployment) -> Iterator[httpx.Client]:
    transport = RoundRobinTransport(deployment.urls) if len(deployment.urls) > 1 else None
    with httpx.Client(base_url=deployment.url, timeout=30, transport=transport) as client:
        yield client


def embedded_only(mode: str) -> None:
    if mode != "embedded":
        pytest.skip("a deployment of its own per setting: tested in embedded mode only")


# --- helpers ----------------------------------------------------------------------------------


def start(sdk: openai.OpenAI, tools: list[dict[str, Any]], text: str) -> tuple[str, str]:
    """A new assistant with these tools and a thread saying `text`: their ids."""
    assistant = sdk.beta.assistants.create(model="gpt-4o", tools=tools)  # type: ignore[arg-type]
    thread = sdk.beta.threads.create(messages=[{"role": "user", "content": text}])
    return assistant.id, thread.id


def run_polled(sdk: openai.OpenAI, tools: list[dict[str, Any]], text: str) -> Run:
    assistant_id, thread_id = start(sdk, tools, text)
    return sdk.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )


def steps_of(sdk: openai.OpenAI, run: Run) -> list[RunStep]:
    steps = sdk.beta.threads.runs.steps.list(
        run_id=run.id, thread_id=run.thread_id, order="asc", limit=100
    ).data
    if spec_available():
        for step in steps:
            validate_schema(step.model_dump(mode="json", exclude_unset=True), "RunStepObject")
    return steps


def tool_calls(step: RunStep) -> list[dict[str, Any]]:
    assert step.type == "tool_calls", step
    calls: list[dict[str, Any]] = step.model_dump(mode="json")["step_details"]["tool_calls"]
    return calls


def answer_of(sdk: openai.OpenAI, run: Run) -> str:
    messages = sdk.beta.threads.messages.list(thread_id=run.thread_id, run_id=run.id).data
    texts = [
        part.text.value
        for message in messages
        if message.role == "assistant"
        for part in message.content
        if part.type == "text"
    ]
    assert len(texts) == 1, texts
    return texts[0]


def weather_output(city: str) -> str:
    body = json.dumps({"city": city, "forecast": "sunny", "celsius": 21})
    return f"HTTP 200 OK\n{body}"


# --- 1. a server-side call: one run ------------------------------------------------------------


def test_action_call_completes_in_one_run(sdk: openai.OpenAI, upstream: Upstream) -> None:
    city = f"Bern-{marker()}"
    run = run_polled(
        sdk,
        [action(weather_spec(upstream.base))],
        f'[[call:getWeather {{"city": "{city}"}}]] what is the weather?',
    )
    assert run.status == "completed", run.last_error
    assert run.required_action is None and run.last_error is None
    # The API got the call, the path parameter in place.
    (request,) = upstream.requests_for(city)
    assert request["method"] == "GET"
    assert request["path"] == f"/weather/{city}"

    runs = sdk.beta.threads.runs.list(thread_id=run.thread_id).data
    assert [r.id for r in runs] == [run.id]

    tool_step, message_step = steps_of(sdk, run)
    assert tool_step.status == "completed" and tool_step.completed_at is not None
    (call,) = tool_calls(tool_step)
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == "getWeather"
    assert json.loads(call["function"]["arguments"]) == {"city": city}
    assert call["function"]["output"] == weather_output(city)
    assert message_step.type == "message_creation" and message_step.status == "completed"

    assert answer_of(sdk, run) == f"Tool results: {weather_output(city)}"


class StreamRecorder(AssistantEventHandler):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[AssistantStreamEvent] = []
        self.steps_done: list[RunStep] = []

    def on_event(self, event: AssistantStreamEvent) -> None:
        self.events.append(event)
        # Run events carry the `action` tool, which OpenAI's spec does not know.
        checked = event.event.startswith("thread.run.step.") or not event.event.startswith(
            "thread.run."
        )
        if checked and spec_available():
            validate_stream_event(
                event.event, event.data.model_dump(mode="json", exclude_unset=True)
            )

    def on_run_step_done(self, run_step: RunStep) -> None:
        self.steps_done.append(run_step)


def _output_deltas(events: list[AssistantStreamEvent]) -> list[tuple[int, str]]:
    found = []
    for position, item in enumerate(events):
        if item.event != "thread.run.step.delta":
            continue
        details = item.data.model_dump(mode="json")["delta"].get("step_details") or {}
        for call in details.get("tool_calls") or []:
            output = (call.get("function") or {}).get("output")
            if output:
                found.append((position, output))
    return found


def test_action_call_streamed(sdk: openai.OpenAI, upstream: Upstream) -> None:
    city = f"Zug-{marker()}"
    assistant_id, thread_id = start(
        sdk,
        [action(weather_spec(upstream.base))],
        f'[[call:getWeather {{"city": "{city}"}}]] what is the weather?',
    )
    recorder = StreamRecorder()
    with sdk.beta.threads.runs.stream(
        thread_id=thread_id, assistant_id=assistant_id, event_handler=recorder
    ) as stream:
        stream.until_done()
        final_run = stream.get_final_run()
        final_steps = stream.get_final_run_steps()
    assert final_run.status == "completed", final_run.last_error
    assert len(upstream.requests_for(city)) == 1

    events = recorder.events
    names = [e.event for e in events]
    assert names[:3] == ["thread.run.created", "thread.run.queued", "thread.run.in_progress"]
    assert names[-1] == "thread.run.completed"
    assert names.count("thread.run.completed") == 1
    assert "thread.run.requires_action" not in names

    tool_step_id = next(
        e.data.id
        for e in events
        if e.event == "thread.run.step.created" and e.data.type == "tool_calls"
    )

    def position(name: str, step_id: str | None = None) -> int:
        return next(
            i
            for i, e in enumerate(events)
            if e.event == name and (step_id is None or e.data.id == step_id)
        )

    created = position("thread.run.step.created", tool_step_id)
    completed = position("thread.run.step.completed", tool_step_id)
    ((delta_at, output),) = _output_deltas(events)
    # The output arrives once (the SDK appends every string it is sent), between the step's
    # creation and its completion.
    assert created < delta_at < completed
    assert output == weather_output(city)
    assert events[delta_at].data.id == tool_step_id
    # Then the model's second turn: its message, in the same run.
    message_created = position("thread.message.created")
    message_completed = position("thread.message.completed")
    assert completed < message_created < message_completed < len(events) - 1
    assert "thread.message.delta" in names[message_created:message_completed]
    assert names[completed + 1 : message_created] == [
        "thread.run.step.created",
        "thread.run.step.in_progress",
    ]
    assert names[message_completed + 1 :] == ["thread.run.step.completed", "thread.run.completed"]
    # Between the tool step's creation and completion: its own progress and deltas only.
    assert set(names[created + 1 : completed]) == {
        "thread.run.step.in_progress",
        "thread.run.step.delta",
    }

    # What the SDK built from the deltas is what the server stored.
    streamed_tool_step = next(s for s in final_steps if s.id == tool_step_id)
    (streamed_call,) = tool_calls(streamed_tool_step)
    assert streamed_call["function"]["output"] == weather_output(city)
    assert streamed_call["function"]["name"] == "getWeather"
    stored_tool_step = steps_of(sdk, final_run)[0]
    assert stored_tool_step.id == tool_step_id
    # (The SDK's accumulator keeps the deltas' `index` in its snapshot.)
    streamed = [
        {k: v for k, v in c.items() if k != "index"} for c in tool_calls(streamed_tool_step)
    ]
    assert tool_calls(stored_tool_step) == streamed
    assert [s.status for s in recorder.steps_done] == ["completed", "completed"]
    assert answer_of(sdk, final_run) == f"Tool results: {weather_output(city)}"


# --- 2. server and client calls in one turn --------------------------------------------------


def test_parallel_server_and_client_calls(sdk: openai.OpenAI, upstream: Upstream) -> None:
    server_city, client_city = f"Chur-{marker()}", f"Sion-{marker()}"
    run = run_polled(
        sdk,
        [action(weather_spec(upstream.base)), WEATHER_TOOL],
        f'[[call:getWeather {{"city": "{server_city}"}}]] '
        f'[[call:get_weather {{"city": "{client_city}"}}]] both please',
    )
    assert run.status == "requires_action", run.last_error
    assert run.required_action is not None
    (required,) = run.required_action.submit_tool_outputs.tool_calls
    assert required.function.name == "get_weather"
    assert json.loads(required.function.arguments) == {"city": client_city}
    # The server's call was made before the run stopped for the client.
    assert len(upstream.requests_for(server_city)) == 1

    (waiting,) = steps_of(sdk, run)
    assert waiting.status == "in_progress"
    server_call, client_call = tool_calls(waiting)
    assert server_call["function"]["output"] == weather_output(server_city)
    assert client_call["id"] == required.id and client_call["function"]["output"] is None

    done = sdk.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=run.thread_id,
        tool_outputs=[{"tool_call_id": required.id, "output": "cloudy in Sion"}],
        poll_interval_ms=POLL_MS,
    )
    assert done.status == "completed", done.last_error
    # Nothing was made twice.
    assert len(upstream.requests_for(server_city)) == 1
    tool_step, message_step = steps_of(sdk, done)
    assert tool_step.id == waiting.id and tool_step.status == "completed"
    server_call, client_call = tool_calls(tool_step)
    assert server_call["function"]["name"] == "getWeather"
    assert server_call["function"]["output"] == weather_output(server_city)
    assert client_call["function"]["name"] == "get_weather"
    assert client_call["function"]["output"] == "cloudy in Sion"
    assert message_step.type == "message_creation"
    assert answer_of(sdk, done) == (f"Tool results: {weather_output(server_city)}; cloudy in Sion")


# --- 3. corrections ---------------------------------------------------------------------------


def test_unknown_function_sent_back_to_the_model(sdk: openai.OpenAI) -> None:
    run = run_polled(
        sdk,
        [WEATHER_TOOL],
        f'[[call@0:nope {{}}]] [[call@1:get_weather {{"city":"x"}}]] {marker()}',
    )
    assert run.status == "requires_action", run.last_error
    assert run.required_action is not None
    (required,) = run.required_action.submit_tool_outputs.tool_calls
    assert required.function.name == "get_weather"
    assert json.loads(required.function.arguments) == {"city": "x"}
    corrected, waiting = steps_of(sdk, run)
    assert corrected.status == "completed"
    (bad,) = tool_calls(corrected)
    assert bad["function"]["name"] == "nope"
    assert bad["function"]["output"].startswith('Error: there is no function named "nope".')
    assert "get_weather" in bad["function"]["output"]
    assert [c["function"]["name"] for c in tool_calls(waiting)] == ["get_weather"]
    sdk.beta.threads.runs.cancel(run_id=run.id, thread_id=run.thread_id)


@pytest.mark.parametrize(
    "arguments", ['Sure {"city": "x"}', '{"city": "a"}{"city": "b"}'], ids=["prose", "two"]
)
def test_unreadable_arguments_sent_back_to_the_model(
    sdk: openai.OpenAI, scripted_llm: ScriptedLLM, arguments: str
) -> None:
    tag = marker()
    run = run_polled(
        sdk,
        [WEATHER_TOOL],
        f'[[call@0:get_weather {arguments}]] [[call@1:get_weather {{"city":"y"}}]] {tag}',
    )
    assert run.status == "requires_action", run.last_error
    assert run.required_action is not None
    (required,) = run.required_action.submit_tool_outputs.tool_calls
    assert json.loads(required.function.arguments) == {"city": "y"}
    corrected, _ = steps_of(sdk, run)
    (bad,) = tool_calls(corrected)
    assert bad["function"]["arguments"] == arguments
    assert bad["function"]["output"].startswith(
        "Error: the arguments of this call to get_weather could not be read: "
    )
    # The model read that error as the call's result.
    second = requests_with(scripted_llm, tag)[1]
    assert bad["function"]["output"] in [
        m.get("content") for m in second["messages"] if m.get("role") == "tool"
    ]
    sdk.beta.threads.runs.cancel(run_id=run.id, thread_id=run.thread_id)


def test_unambiguous_arguments_repaired(sdk: openai.OpenAI) -> None:
    run = run_polled(sdk, [WEATHER_TOOL], f"[[call:get_weather {{city: Paris]] {marker()}")
    assert run.status == "requires_action", run.last_error
    assert run.required_action is not None
    (required,) = run.required_action.submit_tool_outputs.tool_calls
    assert json.loads(required.function.arguments) == {"city": "Paris"}
    (step,) = steps_of(sdk, run)
    assert json.loads(tool_calls(step)[0]["function"]["arguments"]) == {"city": "Paris"}
    sdk.beta.threads.runs.cancel(run_id=run.id, thread_id=run.thread_id)


def test_corrections_bounded(sdk: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    tag = marker()
    run = run_polled(sdk, [WEATHER_TOOL], f"[[call:nope {{}}]] [[rounds:6]] {tag}")
    assert run.status == "failed"
    assert run.last_error is not None
    assert run.last_error.code == "server_error"
    assert "HAL9100_TOOL_CALL_CORRECTIONS" in run.last_error.message
    assert "no function named" in run.last_error.message
    # Three corrections, then the fourth bad call fails the run: four model calls.
    assert len(requests_with(scripted_llm, tag)) == 4
    steps = steps_of(sdk, run)
    assert len(steps) == 4
    # The turn that failed the run spent tokens too: all four are in the run's usage.
    assert run.usage is not None
    spent = sum(step.usage.completion_tokens for step in steps if step.usage is not None)
    assert run.usage.completion_tokens > spent > 0


def test_no_corrections_hand_unknown_names_to_the_client(deploy: DeployFactory, mode: str) -> None:
    embedded_only(mode)
    with sdk_for(deploy(HAL9100_TOOL_CALL_CORRECTIONS="0")) as sdk:
        run = run_polled(sdk, [WEATHER_TOOL], f'[[call:nope {{"a": 1}}]] {marker()}')
        assert run.status == "requires_action", run.last_error
        assert run.required_action is not None
        (call,) = run.required_action.submit_tool_outputs.tool_calls
        assert call.function.name == "nope"
        assert json.loads(call.function.arguments) == {"a": 1}
        # Unreadable arguments go out as made too.
        broken = run_polled(
            sdk, [WEATHER_TOOL], f'[[call:get_weather Sure {{"city": "x"}}]] {marker()}'
        )
        assert broken.status == "requires_action", broken.last_error
        assert broken.required_action is not None
        (call,) = broken.required_action.submit_tool_outputs.tool_calls
        assert call.function.arguments == 'Sure {"city": "x"}'


def test_no_corrections_hand_repairable_arguments_verbatim(
    deploy: DeployFactory, mode: str
) -> None:
    embedded_only(mode)
    with sdk_for(deploy(HAL9100_TOOL_CALL_CORRECTIONS="0")) as sdk:
        run = run_polled(sdk, [WEATHER_TOOL], f"[[call:get_weather {{city: Paris]] {marker()}")
        assert run.status == "requires_action", run.last_error
        assert run.required_action is not None
        (call,) = run.required_action.submit_tool_outputs.tool_calls
        assert call.function.arguments == "{city: Paris"


# --- 4. HAL9100_MAX_TURNS ---------------------------------------------------------------------


def test_max_turns(deploy: DeployFactory, mode: str, upstream: Upstream) -> None:
    embedded_only(mode)
    city = f"Thun-{marker()}"
    with sdk_for(deploy(HAL9100_MAX_TURNS="2")) as sdk:
        run = run_polled(
            sdk,
            [action(weather_spec(upstream.base))],
            f'[[call:getWeather {{"city": "{city}"}}]] [[rounds:5]]',
        )
        assert run.status == "failed"
        assert run.last_error is not None
        assert run.last_error.code == "server_error"
        assert "HAL9100_MAX_TURNS" in run.last_error.message
        # Two model turns, each with its call made; the third turn is never asked for.
        assert len(upstream.requests_for(city)) == 2
        steps = steps_of(sdk, run)
        assert [s.type for s in steps] == ["tool_calls", "tool_calls"]
        assert all(s.status == "completed" for s in steps)


# --- 5. header secrets ------------------------------------------------------------------------


def test_header_secret_sent_and_never_shown(
    sdk: openai.OpenAI,
    raw: httpx.Client,
    deployment: Deployment,
    upstream: Upstream,
    scripted_llm: ScriptedLLM,
) -> None:
    secret = f"sk-{uuid.uuid4().hex}"
    city, streamed_city = f"Biel-{marker()}", f"Aarau-{marker()}"
    tools = [action(weather_spec(upstream.base), {"X-Api-Key": secret})]
    run = run_polled(sdk, tools, f'[[call:getWeather {{"city": "{city}"}}]]')
    assert run.status == "completed", run.last_error
    (request,) = upstream.requests_for(city)
    assert request["headers"]["x-api-key"] == secret

    # A streamed run, read as the bytes on the wire.
    thread = sdk.beta.threads.create(
        messages=[{"role": "user", "content": f'[[call:getWeather {{"city": "{streamed_city}"}}]]'}]
    )
    with raw.stream(
        "POST",
        f"/v1/threads/{thread.id}/runs",
        json={"assistant_id": run.assistant_id, "stream": True},
    ) as response:
        assert response.status_code == 200
        sse = response.read().decode()
    assert "event: thread.run.completed" in sse
    assert weather_output(streamed_city).replace("\n", "\\n").replace('"', '\\"') in sse
    (request,) = upstream.requests_for(streamed_city)
    assert request["headers"]["x-api-key"] == secret

    streamed_run_id = next(
        json.loads(line.removeprefix("data: "))["id"]
        for line in sse.splitlines()
        if line.startswith("data: {") and '"thread.run"' in line
    )
    shown = {
        "sse": sse,
        "assistant": raw.get(f"/v1/assistants/{run.assistant_id}").text,
        "assistants": raw.get("/v1/assistants", params={"limit": 100}).text,
    }
    for thread_id, run_id in ((run.thread_id, run.id), (thread.id, streamed_run_id)):
        shown[f"run {run_id}"] = raw.get(f"/v1/threads/{thread_id}/runs/{run_id}").text
        shown[f"runs {thread_id}"] = raw.get(f"/v1/threads/{thread_id}/runs").text
        shown[f"steps {run_id}"] = raw.get(f"/v1/threads/{thread_id}/runs/{run_id}/steps").text
        shown[f"messages {thread_id}"] = raw.get(f"/v1/threads/{thread_id}/messages").text
    for what, text in shown.items():
        assert run.assistant_id in text or run.id in text or streamed_run_id in text, what
        assert secret not in text, f"the secret is in {what}"
    retrieved = sdk.beta.threads.runs.retrieve(run_id=run.id, thread_id=run.thread_id)
    assert secret not in retrieved.model_dump_json(warnings=False)

    # Nor does the model see it.
    for body in scripted_llm.requests:
        assert secret not in json.dumps(body)
    assert requests_with(scripted_llm, city)
    # Nor the logs, of the API processes and of the workers (production).
    processes = [*deployment.api, *deployment.workers]
    assert processes
    for process in processes:
        log = process.log_path.read_text(errors="replace")
        assert log.strip(), f"{process.log_path} is empty"
        assert secret not in log, process.log_path


# --- 6. failures of the action's API ----------------------------------------------------------


def test_api_failures_are_outputs(sdk: openai.OpenAI, upstream: Upstream) -> None:
    key = marker()
    run = run_polled(
        sdk,
        [action(weather_spec(upstream.base)), action(remote_spec())],
        f'[[call:getBroken {{"key": "{key}"}}]] [[call:getSlow {{"key": "{key}"}}]] '
        f'[[call:getRemote {{"key": "{key}"}}]]',
    )
    assert run.status == "completed", run.last_error
    assert sorted(r["path"] for r in upstream.requests_for(key)) == [
        f"/broken/{key}",
        f"/slow/{key}",
    ]

    tool_step, _ = steps_of(sdk, run)
    broken, slow, remote = (c["function"] for c in tool_calls(tool_step))
    assert broken["output"] == "HTTP 500 Internal Server Error\nupstream exploded"
    assert slow["output"] == (
        f"The request GET {upstream.base}/slow/{key} timed out "
        f"(no complete answer within {ACTION_TIMEOUT} s)."
    )
    assert remote["output"].startswith(f"The request GET http://10.255.255.1/remote/{key} was ")
    assert "refused" in remote["output"] and "HAL9100_ACTION_ALLOWED_HOSTS" in remote["output"]
    # The model read the three and answered.
    assert answer_of(sdk, run) == (
        f"Tool results: {broken['output']}; {slow['output']}; {remote['output']}"
    )


def test_binary_answer_is_stored_as_text(sdk: openai.OpenAI, upstream: Upstream) -> None:
    # NUL and bytes that are no UTF-8 reach the model as replacement characters; stored as
    # they came, PostgreSQL would refuse the step (and the GET be made again and again).
    key = marker()
    run = run_polled(
        sdk, [action(weather_spec(upstream.base))], f'[[call:getBinary {{"key": "{key}"}}]]'
    )
    assert run.status == "completed", run.last_error
    assert len(upstream.requests_for(key)) == 1
    tool_step, _ = steps_of(sdk, run)
    (call,) = tool_calls(tool_step)
    output = call["function"]["output"]
    assert output.startswith("HTTP 200 OK\n\ufffdPNG"), output
    assert "\x00" not in output
