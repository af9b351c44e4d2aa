"""HAL-9100 started the way users start it, in either mode, for the test suite.

* embedded: one `hal9100 serve` process (SQLite, local files, runs in-process);
* production: PostgreSQL, Redis and an S3-compatible server (moto's standalone server), with
  two `hal9100 serve` API processes and two `hal9100 worker` processes, so every request,
  stream and run may cross processes.

Each production deployment gets its own database, Redis prefix and bucket, so deployments
never see each other's state.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from scripted_llm import ScriptedLLM

PG_ADMIN_URL = os.environ.get("HAL9100_TEST_PG", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("HAL9100_TEST_REDIS", "redis://127.0.0.1:6379/0")
REQUIRE_SERVICES = os.environ.get("HAL9100_REQUIRE_SERVICES", "") not in ("", "0", "false")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


# What `hal9100 worker` logs once it takes runs off the queue.
WORKER_READY = "executing up to"


class Process:
    """One `python -m hal9100 ...` subprocess with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hal9100", *args],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-20000:]

    def wait_for(self, text: str, timeout: float = 60) -> None:
        """Wait until the process has logged `text` (a worker saying it takes runs)."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if not self.alive():
                raise RuntimeError(f"{self.args} exited early:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.args} not ready in {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash a worker gets from the OOM killer or a lost machine."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 40) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class ServerProcess(Process):
    """`hal9100 serve` on a free loopback port."""

    def __init__(self, env: dict[str, str], data_dir: Path, args: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        env = {"HAL9100_DATA_DIR": str(data_dir), **env}
        super().__init__(
            ["serve", "--port", str(self.port), *(args or [])],
            env,
            data_dir / f"server-{self.port}.log",
            data_dir,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not start in {timeout}s:\n{self.log()}")


class MotoServer:
    """moto's standalone S3-compatible server, from PyPI."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        binary = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
        self._log = open(data_dir / "moto.log", "ab")
        self.proc = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not _port_open("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto_server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._log.close()


def drop_bucket(deployment: Deployment) -> Callable[[], None]:
    """Take a production deployment's S3 bucket away, contents and all (storage outages);
    returns what makes an empty one again."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=deployment.env["S3_ENDPOINT"],
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    bucket = deployment.env["S3_BUCKET_NAME"]
    for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        s3.delete_object(Bucket=bucket, Key=item["Key"])
    s3.delete_bucket(Bucket=bucket)

    def restore() -> None:
        s3.create_bucket(Bucket=bucket)

    return restore


def server_env(llm: ScriptedLLM) -> dict[str, str]:
    """The environment of a deployment answering from the scripted LLM (tests and benches)."""
    return {
        "MODEL_URL": llm.base_url,
        "MODEL_API_KEY": "scripted",
        "ANTHROPIC_API_KEY": "scripted",
        "ANTHROPIC_BASE_URL": llm.anthropic_base_url,
        "HAL9100_LLM_RETRY_BASE_DELAY": "0.05",
        "HAL9100_API_KEY": "",
        # Action tools in tests call HTTP APIs served on loopback, which is refused otherwise.
        "HAL9100_ACTION_ALLOWED_HOSTS": "127.0.0.1",
        # A test session keeps a dozen production deployments of four processes each alive,
        # against one PostgreSQL's 100 connections.
        "HAL9100_DB_POOL_SIZE": "4",
        # A warm sandbox session costs every deployment a kernel and its imports; only the
        # code_interpreter tests want one.
        "HAL9100_SANDBOX_POOL": "0",
    }


def production_unavailable() -> str | None:
    """Why production mode cannot be tested here, or None when it can."""
    pg = httpx.URL(PG_ADMIN_URL.replace("postgres://", "http://", 1))
    if not _port_open(pg.host, pg.port or 5432):
        return f"PostgreSQL is not reachable at {pg.host}:{pg.port or 5432}"
    redis = httpx.URL(REDIS_URL.replace("redis://", "http://", 1))
    if not _port_open(redis.host, redis.port or 6379):
        return f"Redis is not reachable at {redis.host}:{redis.port or 6379}"
    if not (shutil.which("moto_server") or (Path(sys.executable).parent / "moto_server").exists()):
        return "moto_server (pip install 'moto[server]') is not installed"
    return None


def require_production() -> None:
    reason = production_unavailable()
    if reason is None:
        return
    message = f"production-mode tests need PostgreSQL, Redis and moto: {reason}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (mandatory: HAL9100_REQUIRE_SERVICES is set)")
    pytest.skip(message)


def _psql(database_url: str, statement: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(database_url)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


@dataclass
class Deployment:
    mode: str
    api: list[ServerProcess]
    workers: list[Process] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    _cleanup: list[object] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.api[0].url

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.api]

    def log(self) -> str:
        return "\n".join(
            f"--- {p.args[0]} {p.log_path.name} ---\n{p.log()}" for p in [*self.api, *self.workers]
        )

    def stop(self) -> None:
        stop_all([self])


def stop_all(deployments: list[Deployment]) -> None:
    """Stop deployments together: every process is told at once (each drains for seconds,
    and a session stops dozens of deployments), then each is waited for and cleaned up."""
    for deployment in deployments:
        for process in [*deployment.api, *deployment.workers]:
            if process.alive():
                process.proc.terminate()
    for deployment in deployments:
        for process in [*deployment.api, *deployment.workers]:
            process.stop()
        for cleanup in reversed(deployment._cleanup):
            cleanup()  # type: ignore[operator]


def start_embedded(
    env: dict[str, str], data_dir: Path, args: list[str] | None = None
) -> Deployment:
    server = ServerProcess(env, data_dir, args)
    deployment = Deployment("embedded", [server], env=env)
    try:
        server.wait_ready()
    except BaseException:
        deployment.stop()
        raise
    return deployment


def start_production(
    env: dict[str, str],
    data_dir: Path,
    *,
    moto: MotoServer,
    api_processes: int = 2,
    worker_processes: int = 2,
    admin_url: str | None = None,
) -> Deployment:
    require_production()
    name = f"hal9100_test_{uuid.uuid4().hex[:12]}"
    admin = admin_url or PG_ADMIN_URL
    _psql(admin, f'CREATE DATABASE "{name}"')
    database_url = admin.rsplit("/", 1)[0] + f"/{name}"
    full_env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "HAL9100_REDIS_PREFIX": name,
        "S3_ENDPOINT": moto.url,
        "S3_ACCESS_KEY": "test",
        "S3_SECRET_KEY": "test",
        "S3_BUCKET_NAME": name.replace("_", "-"),
        "HAL9100_DATA_DIR": str(data_dir),
        **env,
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    deployment = Deployment("production", [], env=full_env)

    def drop_state() -> None:
        _psql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        # Ours start with the prefix; SAQ's embed the queue name ("saq:job:<name>-runs:...").
        keys = list(client.scan_iter(f"{name}*", count=1000)) + list(
            client.scan_iter(f"saq:*{name}*", count=1000)
        )
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        client.close()

    deployment._cleanup.append(drop_state)
    try:
        migrate = subprocess.run(
            [sys.executable, "-m", "hal9100", "migrate"],
            env={**os.environ, **full_env},
            capture_output=True,
            text=True,
            cwd=data_dir,
            timeout=120,
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"hal9100 migrate failed:\n{migrate.stdout}\n{migrate.stderr}")
        for index in range(worker_processes):
            deployment.workers.append(
                Process(["worker"], full_env, data_dir / f"worker-{index}.log", data_dir)
            )
        for _ in range(api_processes):
            deployment.api.append(ServerProcess(full_env, data_dir))
        for server in deployment.api:
            server.wait_ready()
        for worker in deployment.workers:
            worker.wait_for(WORKER_READY)
    except BaseException:
        deployment.stop()
        raise
    return deployment


class RoundRobinTransport(httpx.BaseTransport):
    """Sends each request to the next API process in turn, as a load balancer would, so a
    run created on one process is polled, streamed and cancelled through the others."""

    def __init__(self, urls: list[str]) -> None:
        self._targets = itertools.cycle([httpx.URL(u) for u in urls])
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        target = next(self._targets)
        request.url = request.url.copy_with(host=target.host, port=target.port)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()
