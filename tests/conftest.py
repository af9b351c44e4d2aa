"""Fixtures: a scripted LLM and a real HAL-9100 server on loopback ports, and the official
`openai` SDK pointed at it with every JSON response validated against OpenAI's spec."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openapi_contract import make_validating_http_client, spec_available
from scripted_llm import ScriptedLLM

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`hal9100 serve` as a user starts it, in a subprocess with its own data directory."""

    def __init__(self, env: dict[str, str], data_dir: Path, args: list[str] | None = None) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.log_path = data_dir / f"server-{self.port}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "HAL9100_DATA_DIR": str(data_dir), **env}
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hal9100", "serve", "--port", str(self.port), *(args or [])],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not start in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-20000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def scripted_llm() -> Iterator[ScriptedLLM]:
    llm = ScriptedLLM()
    llm.start()
    yield llm
    llm.stop()


def server_env(llm: ScriptedLLM) -> dict[str, str]:
    return {
        "MODEL_URL": llm.base_url,
        "MODEL_API_KEY": "scripted",
        "ANTHROPIC_API_KEY": "scripted",
        "ANTHROPIC_BASE_URL": llm.anthropic_base_url,
        "HAL9100_LLM_RETRY_BASE_DELAY": "0.05",
        "HAL9100_API_KEY": "",
    }


@pytest.fixture(scope="session")
def server(
    scripted_llm: ScriptedLLM, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    proc = ServerProcess(server_env(scripted_llm), tmp_path_factory.mktemp("server"))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def make_client(base_url: str, api_key: str = "test") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{base_url}/v1",
        api_key=api_key,
        max_retries=0,
        timeout=30,
        http_client=make_validating_http_client() if spec_available() else httpx.Client(),
        _strict_response_validation=True,
    )


@pytest.fixture
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    sdk = make_client(server.url)
    yield sdk
    sdk.close()


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    """Plain HTTP, for what the SDK cannot send (malformed JSON, unknown fields...)."""
    with httpx.Client(base_url=server.url, timeout=30) as raw:
        yield raw
