"""Several processes on one deployment: one active run per thread holds with any number of API
processes (`hal9100 serve --workers 2` on one SQLite file; two API processes on PostgreSQL),
an embedded server owns its data directory (a second one is refused, a restarted one takes
its predecessor's runs over at once), and `hal9100 worker` refuses a configuration it cannot
work with."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments import Deployment, ServerProcess, free_port, server_env, start_embedded
from runs_support import TERMINAL, marker, requests_with, wait_llm_requests
from scripted_llm import ScriptedLLM

RACERS = 20
# About a second of streaming: the run is still active while every racer arrives.
SLOW_PROMPT = "[[slow:50]] [[tokens:20]]"
# Eight seconds of streaming, for a run that must outlast however slowly its racers arrive
# (it is cancelled once they have).
LONG_PROMPT = "[[slow:40]] [[tokens:200]]"
# HAL9100_LEASE_SECONDS's default, which these servers keep.
LEASE_SECONDS = 30


@pytest.fixture(scope="module")
def several(
    mode: str,
    deploy: Any,
    scripted_llm: ScriptedLLM,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    """Several API processes on one database: production's two, or an embedded server with
    `--workers 2` (two uvicorn processes on one SQLite file)."""
    if mode == "production":
        yield deploy()
        return
    deployment = start_embedded(
        server_env(scripted_llm), tmp_path_factory.mktemp("workers"), args=["--workers", "2"]
    )
    yield deployment
    deployment.stop()


def _embedded_only(mode: str) -> None:
    if mode != "embedded":
        pytest.skip("the data directory lock is embedded mode's (production has no data dir)")


def _wait_terminal(http: httpx.Client, thread_id: str, run_id: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        run = http.get(f"/v1/threads/{thread_id}/runs/{run_id}").json()
        if run["status"] in TERMINAL or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def _assistant_answers(http: httpx.Client, thread_id: str) -> list[Any]:
    messages = http.get(f"/v1/threads/{thread_id}/messages", params={"limit": 100}).json()
    return [m for m in messages["data"] if m["role"] == "assistant"]


def _all_at_once(count: int, send: Any) -> list[httpx.Response]:
    """Call `send(index, client)` from `count` threads released together, each with its own
    connection (so uvicorn's processes share them)."""
    barrier = threading.Barrier(count)

    def one(index: int) -> httpx.Response:
        with httpx.Client(timeout=60) as own:
            barrier.wait()
            response: httpx.Response = send(index, own)
            return response

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_concurrent_run_creates_on_one_thread_start_exactly_one(several: Deployment) -> None:
    urls = several.urls
    with httpx.Client(base_url=several.url, timeout=60) as http:
        assistant_id = http.post("/v1/assistants", json={"model": "scripted-race"}).json()["id"]
        for attempt in range(8):
            thread_id = http.post(
                "/v1/threads",
                json={"messages": [{"role": "user", "content": f"{SLOW_PROMPT} race {attempt}"}]},
            ).json()["id"]
            responses = _all_at_once(
                RACERS,
                lambda index, own, thread_id=thread_id: own.post(
                    f"{urls[index % len(urls)]}/v1/threads/{thread_id}/runs",
                    json={"assistant_id": assistant_id},
                ),
            )
            statuses = sorted(r.status_code for r in responses)
            assert statuses == [200] + [400] * (RACERS - 1), (
                f"{statuses}\n{[r.text for r in responses if r.status_code != 200]}\n"
                f"{several.log()[-4000:]}"
            )
            (run_id,) = [r.json()["id"] for r in responses if r.status_code == 200]
            for refused in (r for r in responses if r.status_code == 400):
                assert refused.json() == {
                    "error": {
                        "message": f"Thread {thread_id} already has an active run {run_id}.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                }
            run = _wait_terminal(http, thread_id, run_id, timeout=30)
            assert run["status"] == "completed", run
            runs = http.get(f"/v1/threads/{thread_id}/runs").json()["data"]
            assert [r["id"] for r in runs] == [run_id]
            answers = _assistant_answers(http, thread_id)
            assert len(answers) == 1, answers


def test_a_message_racing_a_run_is_in_its_prompt_or_refused(
    several: Deployment, scripted_llm: ScriptedLLM
) -> None:
    """A message accepted while a run starts must have been committed before the run (so
    the run's prompt holds it); one arriving after is refused, never slipped in under the
    active run."""
    urls = several.urls
    with httpx.Client(base_url=several.url, timeout=60) as http:
        assistant_id = http.post("/v1/assistants", json={"model": "scripted-race"}).json()["id"]
        for attempt in range(3):
            tag = marker()
            thread_id = http.post(
                "/v1/threads",
                json={"messages": [{"role": "user", "content": f"{LONG_PROMPT} {tag} {attempt}"}]},
            ).json()["id"]

            def send(
                index: int, own: httpx.Client, thread_id: str = thread_id, tag: str = tag
            ) -> httpx.Response:
                base = f"{urls[index % len(urls)]}/v1/threads/{thread_id}"
                if index == 0:
                    return own.post(f"{base}/runs", json={"assistant_id": assistant_id})
                # The last user message steers the scripted LLM: keep the run going whichever
                # message comes last.
                return own.post(
                    f"{base}/messages",
                    json={"role": "user", "content": f"{LONG_PROMPT} {tag}-{index}"},
                )

            responses = _all_at_once(10, send)
            assert responses[0].status_code == 200, responses[0].text
            run_id = responses[0].json()["id"]
            # The claim holds only for messages answered while the run was active: one
            # accepted after it ended rightly misses its prompt. The run streams for 8 s, so
            # it is still active now however slowly the racers arrived (checked, not assumed).
            run = http.get(f"/v1/threads/{thread_id}/runs/{run_id}").json()
            assert run["status"] in ("queued", "in_progress"), run
            accepted = [f"{tag}-{i}" for i, r in enumerate(responses) if i and r.is_success]
            for refused in (r for r in responses[1:] if not r.is_success):
                assert refused.status_code == 400, refused.text
                assert "while a run" in refused.json()["error"]["message"]
            wait_llm_requests(scripted_llm, tag, timeout=30)
            http.post(f"/v1/threads/{thread_id}/runs/{run_id}/cancel")
            assert _wait_terminal(http, thread_id, run_id, timeout=30)["status"] == "cancelled"
            (prompt,) = requests_with(scripted_llm, tag)
            sent = str(prompt["messages"])
            slipped = [text for text in accepted if text not in sent]
            assert not slipped, f"accepted while run {run_id} was active: {slipped}"


def _serve(data_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hal9100", *args],
        env={**os.environ, **env, "HAL9100_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=data_dir,
    )


def _assert_refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    last = output.strip().splitlines()[-1]
    for word in words:
        assert word in last, output


def test_a_second_server_on_the_data_directory_is_refused(
    mode: str, several: Deployment, scripted_llm: ScriptedLLM
) -> None:
    _embedded_only(mode)
    holder = several.api[0]
    started = time.monotonic()
    result = _serve(holder.data_dir, server_env(scripted_llm), "serve", "--port", str(free_port()))
    took = time.monotonic() - started
    _assert_refused(result, str(holder.data_dir.resolve()), f"pid {holder.proc.pid}")
    # Python's start-up alone on a loaded machine; a server that waited for the lock or for its
    # backends would take HAL9100_STARTUP_TIMEOUT (30 s) or longer.
    assert took < 20, f"refused only after {took:.1f}s"
    # `hal9100 migrate` would change the schema under the running server: refused the same way.
    _assert_refused(_serve(holder.data_dir, {}, "migrate"), str(holder.data_dir.resolve()))
    # The holder (a `--workers 2` server: its processes share the directory) still answers.
    assert httpx.get(f"{holder.url}/v1/assistants", timeout=10).status_code == 200


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def test_workers_left_by_a_killed_server_keep_the_directory(
    mode: str, scripted_llm: ScriptedLLM, tmp_path: Path
) -> None:
    """SIGKILL reaches uvicorn's parent only; its worker processes live on and still use the
    database, so a new server must not take their runs over."""
    _embedded_only(mode)
    env = server_env(scripted_llm)
    first = ServerProcess(env, tmp_path, ["--workers", "2"])
    orphans: list[int] = []
    try:
        first.wait_ready()
        orphans = _children(first.proc.pid)
        first.kill()
        result = _serve(tmp_path, env, "serve", "--port", str(free_port()))
        _assert_refused(result, str(tmp_path.resolve()))
    finally:
        for pid in orphans:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        first.stop()


# Two apps on two data directories in one process, each started as an ASGI server starts it
# (its lifespan); prints what a `hal9100 migrate` on each directory says meanwhile.
TWO_APPS = """
import asyncio, os, subprocess, sys
from hal9100.app import create_app
from hal9100.config import Settings

async def main() -> None:
    apps = []
    for directory in sys.argv[1:]:
        os.environ["HAL9100_DATA_DIR"] = directory
        apps.append(create_app(Settings()))
    async with apps[0].router.lifespan_context(apps[0]):
        async with apps[1].router.lifespan_context(apps[1]):
            for directory in sys.argv[1:]:
                env = {**os.environ, "HAL9100_DATA_DIR": directory}
                env.pop("HAL9100_DATA_DIR_HOLDER", None)
                migrate = subprocess.run(
                    [sys.executable, "-m", "hal9100", "migrate"],
                    env=env, capture_output=True, text=True, timeout=60,
                )
                print(migrate.returncode, (migrate.stdout + migrate.stderr).strip().splitlines()[-1])

asyncio.run(main())
"""


def test_each_data_directory_of_a_process_is_held(
    mode: str, scripted_llm: ScriptedLLM, tmp_path: Path
) -> None:
    """An app holds its own data directory, though another app of the process holds another."""
    _embedded_only(mode)
    directories = [tmp_path / "first", tmp_path / "second"]
    for directory in directories:
        directory.mkdir()
        migrated = _serve(directory, {}, "migrate")
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    result = subprocess.run(
        [sys.executable, "-c", TWO_APPS, *map(str, directories)],
        env={**os.environ, **server_env(scripted_llm), "HAL9100_DATA_DIR_HOLDER": ""},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    lines = result.stdout.splitlines()
    assert len(lines) == 2, output
    for line, directory in zip(lines, directories, strict=True):
        assert not line.startswith("0 ") and str(directory.resolve()) in line, output


class UvicornProcess(ServerProcess):
    """The app started by uvicorn's own command line instead of `hal9100 serve`: the ASGI
    server of someone who embeds it."""

    def __init__(self, env: dict[str, str], data_dir: Path) -> None:
        # Not ServerProcess's: that one runs `python -m hal9100`.
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.args = ["uvicorn", "hal9100.app:create_app", "--factory", "--port", str(self.port)]
        self.log_path = data_dir / f"uvicorn-{self.port}.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *self.args],
            env={**os.environ, "HAL9100_DATA_DIR": str(data_dir), **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
        )


@pytest.mark.parametrize("launcher", [ServerProcess, UvicornProcess])
def test_a_restarted_server_takes_its_runs_over_at_once(
    mode: str, scripted_llm: ScriptedLLM, tmp_path: Path, launcher: type[ServerProcess]
) -> None:
    """The lock proves the restarted server alone uses the database, so it need not wait out
    the dead server's leases (30 s by default), whichever ASGI server started it."""
    _embedded_only(mode)
    env = server_env(scripted_llm)
    first = ServerProcess(env, tmp_path)
    second: ServerProcess | None = None
    try:
        first.wait_ready()
        with httpx.Client(base_url=first.url, timeout=30) as http:
            assistant_id = http.post("/v1/assistants", json={"model": "scripted"}).json()["id"]
            thread_id = http.post(
                "/v1/threads",
                json={"messages": [{"role": "user", "content": "[[slow:50]] [[tokens:40]]"}]},
            ).json()["id"]
            run_id = http.post(
                f"/v1/threads/{thread_id}/runs", json={"assistant_id": assistant_id}
            ).json()["id"]
            deadline = time.monotonic() + 10
            while not _assistant_answers(http, thread_id):
                assert time.monotonic() < deadline, "the run never started answering"
                time.sleep(0.05)
            time.sleep(0.5)  # a few tokens in
        first.kill()
        killed = time.monotonic()
        second = launcher(env, tmp_path)
        second.wait_ready()
        ready = time.monotonic()
        with httpx.Client(base_url=second.url, timeout=30) as http:
            run = _wait_terminal(http, thread_id, run_id, timeout=45)
            finished = time.monotonic()
            assert run["status"] == "completed", run
            answers = _assistant_answers(http, thread_id)
        assert len(answers) == 1, answers
        assert answers[0]["content"][0]["text"]["value"] == " ".join(
            f"token{i}" for i in range(1, 41)
        )
        print(
            f"restart took {ready - killed:.1f}s; run finished {finished - ready:.1f}s after "
            f"the restarted server answered"
        )
        # Waiting out the dead server's lease would take until it expires, HAL9100_LEASE_SECONDS
        # (30 s) after the claim the killed server made a moment before it died.
        assert finished - ready < LEASE_SECONDS - 5, (
            f"run finished {finished - ready:.1f}s after the restart"
        )
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_worker_refuses_without_redis_and_postgresql(mode: str, tmp_path: Path) -> None:
    """A worker takes runs from Redis and works on the shared database; an embedded server
    executes its own runs. Embedded: no REDIS_URL. Production: REDIS_URL but no DATABASE_URL."""
    env = {"REDIS_URL": "", "DATABASE_URL": ""}
    missing = "REDIS_URL"
    if mode == "production":
        env["REDIS_URL"] = "redis://127.0.0.1:6379/0"
        missing = "DATABASE_URL"
    started = time.monotonic()
    result = _serve(tmp_path, env, "worker")
    _assert_refused(result, missing)
    assert time.monotonic() - started < 15
