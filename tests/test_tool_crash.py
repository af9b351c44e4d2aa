"""A process killed (SIGKILL) while one of its runs waits on an action tool's HTTP call: the run
still ends, and the API behind the tool sees a call that must not be repeated (a POST) once,
while a repeatable one (a GET) is simply made again.

Production mode kills the `hal9100 worker` executing the run and lets another worker take it
once its lease lapses; embedded mode kills the server itself and restarts it on the same data
directory. The action API is served here, on loopback (the test deployments allow 127.0.0.1).
Plain HTTP rather than the SDK: `action` is HAL-9100's own tool type, unknown to OpenAI's spec.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from conftest import DeployFactory
from deployments import WORKER_READY, Process, ServerProcess, server_env
from scripted_llm import ScriptedLLM

# Short leases and sweeps: the production takeover waits out the dead worker's lease.
FAST_RECOVERY = {"HAL9100_LEASE_SECONDS": "2", "HAL9100_SWEEP_SECONDS": "0.5"}
TERMINAL = {"completed", "failed", "cancelled", "expired", "incomplete"}


class OrdersAPI:
    """An HTTP API with a slow POST and a slow GET: each request is recorded, then held until
    the test calls `release()`, so it is still in flight when its caller dies."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self._changed = threading.Condition()
        self._gate = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with api._changed:
                    api.requests.append((self.command, self.path, body))
                    api._changed.notify_all()
                api._gate.wait(60)
                if self.command == "POST":
                    status, answer = 201, {"id": "order-1", "item": (body or {}).get("item")}
                else:
                    status, answer = 200, {"id": self.path.rsplit("/", 1)[-1], "status": "shipped"}
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                # The answer to a killed caller meets a closed connection.
                return None

        self._server = Server(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def received(self, method: str) -> int:
        with self._changed:
            return sum(1 for m, _, _ in self.requests if m == method)

    def wait_for(self, method: str, count: int = 1, timeout: float = 20) -> None:
        with self._changed:
            arrived = self._changed.wait_for(
                lambda: sum(1 for m, _, _ in self.requests if m == method) >= count, timeout
            )
        assert arrived, f"the API never received {method} (received {self.requests})"

    def release(self) -> None:
        self._gate.set()

    def close(self) -> None:
        self._gate.set()
        self._server.shutdown()
        self._server.server_close()

    def tool(self) -> dict[str, Any]:
        spec = {
            "openapi": "3.0.3",
            "info": {"title": "Orders", "version": "1"},
            "servers": [{"url": self.base}],
            "paths": {
                "/orders": {
                    "post": {
                        "operationId": "createOrder",
                        "requestBody": {
                            "required": True,
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {"item": {"type": "string"}},
                                    }
                                }
                            },
                        },
                        "responses": {"201": {"description": "created"}},
                    }
                },
                "/orders/{order_id}": {
                    "get": {
                        "operationId": "getOrder",
                        "parameters": [
                            {
                                "name": "order_id",
                                "in": "path",
                                "required": True,
                                "schema": {"type": "string"},
                            }
                        ],
                        "responses": {"200": {"description": "ok"}},
                    }
                },
            },
        }
        return {"type": "action", "data": {"openapi_spec": spec}}


@pytest.fixture
def orders() -> Iterator[OrdersAPI]:
    api = OrdersAPI()
    yield api
    api.close()


@dataclass
class Crashable:
    """A deployment whose process executing a given run can be killed and replaced."""

    url: str
    # The process executing the run (it holds the run's lease).
    victim: Callable[[str], Process]
    # After the kill: start what takes the run over; returns the URL to use from then on.
    take_over: Callable[[], str]
    cleanup: list[Callable[[], None]] = field(default_factory=list)


def _lease_owner(database_url: str, run_id: str) -> str | None:
    async def query() -> str | None:
        connection = await asyncpg.connect(database_url.replace("postgres://", "postgresql://"))
        try:
            owner: str | None = await connection.fetchval(
                "SELECT lease_owner FROM runs WHERE id = $1", run_id
            )
            return owner
        finally:
            await connection.close()

    return asyncio.run(query())


@pytest.fixture
def crashable(
    mode: str, deploy: DeployFactory, scripted_llm: ScriptedLLM, tmp_path: Path
) -> Iterator[Crashable]:
    if mode == "production":
        deployment = deploy(**FAST_RECOVERY, HAL9100_WORKER_CONCURRENCY="8")

        def worker_of(run_id: str) -> Process:
            owner = _lease_owner(deployment.env["DATABASE_URL"], run_id) or ""
            for worker in deployment.workers:
                if f":{worker.proc.pid}:" in owner:
                    return worker
            raise AssertionError(f"no live worker holds run {run_id} (lease owner {owner!r})")

        def replace_dead_workers() -> str:
            # Start a worker for each dead one, so that the deployment keeps two for the next
            # test; the run goes to whichever worker's sweep finds its lease lapsed first.
            data_dir = Path(deployment.env["HAL9100_DATA_DIR"])
            for index, worker in enumerate(deployment.workers):
                if not worker.alive():
                    worker.stop()
                    fresh = Process(
                        ["worker"],
                        deployment.env,
                        data_dir / f"worker-{index}-{time.monotonic_ns()}.log",
                        data_dir,
                    )
                    deployment.workers[index] = fresh
                    fresh.wait_for(WORKER_READY)
            return deployment.url

        yield Crashable(deployment.url, worker_of, replace_dead_workers)
        return

    env = {**server_env(scripted_llm), **FAST_RECOVERY}
    first = ServerProcess(env, tmp_path)
    servers = [first]
    try:
        first.wait_ready()

        def restart() -> str:
            second = ServerProcess(env, tmp_path)
            servers.append(second)
            second.wait_ready()
            return second.url

        yield Crashable(first.url, lambda _: first, restart)
    finally:
        for server in servers:
            server.stop()


def _start_run(http: httpx.Client, orders: OrdersAPI, prompt: str) -> tuple[str, str]:
    assistant = http.post("/v1/assistants", json={"model": "scripted", "tools": [orders.tool()]})
    assert assistant.status_code == 200, assistant.text
    run = http.post(
        "/v1/threads/runs",
        json={
            "assistant_id": assistant.json()["id"],
            "thread": {"messages": [{"role": "user", "content": prompt}]},
        },
    )
    assert run.status_code == 200, run.text
    return run.json()["thread_id"], run.json()["id"]


def _crash_and_finish(
    target: Crashable, orders: OrdersAPI, method: str, prompt: str
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """Start the run, kill its executor while `method` is in flight, let the run be taken
    over; returns the final run, its steps and the thread's assistant answers."""
    with httpx.Client(base_url=target.url, timeout=30) as http:
        thread_id, run_id = _start_run(http, orders, prompt)
        orders.wait_for(method)
        victim = target.victim(run_id)
    victim.kill()
    # The request the dead process made may now be answered: into a closed connection.
    orders.release()
    url = target.take_over()
    with httpx.Client(base_url=url, timeout=30) as http:
        deadline = time.monotonic() + 30
        while True:
            run = http.get(f"/v1/threads/{thread_id}/runs/{run_id}").json()
            if run["status"] in TERMINAL:
                break
            assert time.monotonic() < deadline, f"the run never ended: {run}"
            time.sleep(0.1)
        steps = http.get(f"/v1/threads/{thread_id}/runs/{run_id}/steps").json()["data"]
        messages = http.get(f"/v1/threads/{thread_id}/messages").json()["data"]
    answers = [m["content"][0]["text"]["value"] for m in messages if m["role"] == "assistant"]
    return run, steps, answers


def _only_call(steps: list[dict[str, Any]]) -> dict[str, Any]:
    tool_steps = [s for s in steps if s["type"] == "tool_calls"]
    assert len(tool_steps) == 1, steps
    assert tool_steps[0]["status"] == "completed", tool_steps[0]
    calls = tool_steps[0]["step_details"]["tool_calls"]
    assert len(calls) == 1, calls
    call: dict[str, Any] = calls[0]
    return call


def test_post_in_flight_is_never_repeated(crashable: Crashable, orders: OrdersAPI) -> None:
    arguments = {"body": {"item": "tea"}}
    run, steps, answers = _crash_and_finish(
        crashable, orders, "POST", f"[[call:createOrder {json.dumps(arguments)}]] order tea"
    )
    assert run["status"] == "completed", run
    # The order may have been placed: placing it again could place two.
    assert orders.received("POST") == 1, orders.requests
    assert orders.requests[0][2] == {"item": "tea"}
    call = _only_call(steps)
    assert call["function"]["name"] == "createOrder"
    assert json.loads(call["function"]["arguments"]) == arguments
    output = call["function"]["output"]
    assert output.startswith("Outcome unknown:"), output
    assert "may or may not have taken effect" in output and "not retried" in output
    assert f"POST {orders.base}/orders" in output
    # The model was told so, and answered once.
    assert answers == [f"Tool results: {output}"], answers


def test_get_in_flight_is_made_again(crashable: Crashable, orders: OrdersAPI) -> None:
    run, steps, answers = _crash_and_finish(
        crashable, orders, "GET", '[[call:getOrder {"order_id": "o-7"}]] where is it'
    )
    assert run["status"] == "completed", run
    assert [(m, p) for m, p, _ in orders.requests] == [("GET", "/orders/o-7")] * 2
    output = _only_call(steps)["function"]["output"]
    assert output == 'HTTP 200 OK\n{"id": "o-7", "status": "shipped"}', output
    assert answers == [f"Tool results: {output}"], answers
