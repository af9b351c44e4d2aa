"""Production mode loses no run when Redis restarts empty (it keeps nothing on disk here):
the database holds every run, and the sweeper re-dispatches what the queue forgot."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DeployFactory, make_client
from deployments import _port_open, free_port


class PrivateRedis:
    def __init__(self, port: int, data_dir: Path) -> None:
        self.port = port
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.proc = subprocess.Popen(
            [
                binary,
                *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--dir", str(self.data_dir)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _port_open("127.0.0.1", self.port):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(free_port(), tmp_path)
    server.start()
    yield server
    server.kill()


def test_runs_survive_a_redis_restart(
    mode: str, deploy: DeployFactory, private_redis: PrivateRedis
) -> None:
    if mode != "production":
        pytest.skip("Redis is part of production mode only")
    deployment = deploy(
        REDIS_URL=f"redis://127.0.0.1:{private_redis.port}/0",
        HAL9100_LEASE_SECONDS="2",
        HAL9100_SWEEP_SECONDS="0.5",
    )
    client = make_client(deployment.urls)
    assistant = client.beta.assistants.create(model="scripted-redis", instructions="count")
    prompt = "[[slow:50]] [[tokens:30]] redis restart"
    threads = [
        client.beta.threads.create(messages=[{"role": "user", "content": prompt}]).id
        for _ in range(10)
    ]
    before = {
        client.beta.threads.runs.create(thread_id=t, assistant_id=assistant.id).id: t
        for t in threads[:5]
    }
    time.sleep(0.5)
    private_redis.kill()
    # Runs created while Redis is down are stored; their dispatch waits for the sweeper.
    outage_start = time.monotonic()
    during = {
        client.beta.threads.runs.create(thread_id=t, assistant_id=assistant.id).id: t
        for t in threads[5:]
    }
    print(f"\n5 runs created during the outage in {time.monotonic() - outage_start:.1f}s")
    time.sleep(1.0)
    private_redis.start()

    runs = {**before, **during}
    deadline = time.monotonic() + 60
    final: dict[str, str] = {}
    while len(final) < len(runs) and time.monotonic() < deadline:
        for run_id, thread_id in runs.items():
            if run_id in final:
                continue
            status = client.beta.threads.runs.retrieve(run_id, thread_id=thread_id).status
            if status in ("completed", "failed", "cancelled", "expired", "incomplete"):
                final[run_id] = status
        time.sleep(0.2)
    print(
        f"\nredis restart: all {len(runs)} runs finished {time.monotonic() - deadline + 60:.1f}s after the restart"
    )
    assert len(final) == len(runs), f"unfinished: {set(runs) - set(final)}\n{deployment.log()}"
    assert set(final.values()) == {"completed"}, final
    expected = " ".join(f"token{i}" for i in range(1, 31))
    for thread_id in runs.values():
        answers = [m for m in client.beta.threads.messages.list(thread_id) if m.role == "assistant"]
        assert len(answers) == 1
        assert answers[0].content[0].text.value == expected  # type: ignore[union-attr]
