"""Fixtures: a scripted LLM, HAL-9100 deployed as users deploy it (embedded, and production
with two API and two worker processes), and the official `openai` SDK pointed at it with every
JSON response validated against OpenAI's spec.

`HAL9100_TEST_MODES` picks the modes (default `embedded,production`); every test that uses
`server`/`client` runs once per mode. Production mode needs PostgreSQL, Redis and moto: where
they are missing its tests skip, unless `HAL9100_REQUIRE_SERVICES=1` (as in CI) makes that a
failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from deployments import (
    Deployment,
    MotoServer,
    RoundRobinTransport,
    ServerProcess,
    free_port,
    require_production,
    server_env,
    start_embedded,
    start_production,
    stop_all,
)
from openapi_contract import make_validating_http_client, spec_available
from pgvector import pgvector_admin_url
from scripted_llm import ScriptedLLM

ROOT = Path(__file__).resolve().parent.parent
MODES = [m.strip() for m in os.environ.get("HAL9100_TEST_MODES", "embedded,production").split(",")]

__all__ = ["Deployment", "ServerProcess", "free_port", "make_client", "server_env"]


@pytest.fixture(scope="session")
def scripted_llm() -> Iterator[ScriptedLLM]:
    llm = ScriptedLLM()
    llm.start()
    yield llm
    llm.stop()


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    require_production()
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture(scope="session", params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    if value == "production":
        require_production()
    return value


DeployFactory = Callable[..., Deployment]


@pytest.fixture(scope="session")
def deploy(
    mode: str,
    scripted_llm: ScriptedLLM,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[DeployFactory]:
    """Start (once per session and configuration) a deployment in the current mode, with
    extra environment on top of the defaults: `deploy(HAL9100_RUN_EXPIRY_SECONDS="2")`;
    `deploy(pgvector=True)`: in production mode, on a PostgreSQL with pgvector."""
    started: dict[tuple[tuple[str, str], ...], Deployment] = {}

    def start(pgvector: bool = False, **extra: str) -> Deployment:
        key = (*sorted(extra.items()), ("pgvector", str(pgvector)))
        if key not in started:
            env = {**server_env(scripted_llm), **extra}
            data_dir = tmp_path_factory.mktemp(f"{mode}-deployment")
            if mode == "production":
                moto_server: MotoServer = request.getfixturevalue("moto")
                # Debian's PostgreSQL has no pgvector: `pgvector=True` puts the deployment on
                # pgserver's PostgreSQL 16 with it (tests/pgvector.py).
                admin = pgvector_admin_url() if pgvector else None
                started[key] = start_production(env, data_dir, moto=moto_server, admin_url=admin)
            else:
                started[key] = start_embedded(env, data_dir)
        return started[key]

    yield start
    stop_all(list(started.values()))


def _own_deployments(
    mode: str,
    scripted_llm: ScriptedLLM,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[DeployFactory]:
    started: list[Deployment] = []

    def start(**extra: str) -> Deployment:
        env = {**server_env(scripted_llm), **extra}
        data_dir = tmp_path_factory.mktemp(f"{mode}-own-deployment")
        if mode == "production":
            moto_server: MotoServer = request.getfixturevalue("moto")
            started.append(start_production(env, data_dir, moto=moto_server))
        else:
            started.append(start_embedded(env, data_dir))
        return started[-1]

    yield start
    stop_all(started)


# `deploy`, for a configuration one test (or one module) alone uses: stopped when the test
# (the module) ends, so that a session's production deployments, four processes each, do
# not pile up on the one PostgreSQL's 100 connections.
own_deployment = pytest.fixture(_own_deployments)
module_deployment = pytest.fixture(scope="module", name="module_deployment")(_own_deployments)


@pytest.fixture(scope="session")
def server(deploy: DeployFactory) -> Deployment:
    return deploy()


def make_client(
    base_url: str | list[str], api_key: str = "test", *, strict: bool = True
) -> openai.OpenAI:
    """The SDK on a deployment, its answers checked against the spec; `strict`: also
    against the SDK's own types (which are, here and there, narrower than the spec)."""
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    transport = RoundRobinTransport(urls) if len(urls) > 1 else None
    http_client = (
        make_validating_http_client(transport=transport)
        if spec_available()
        else httpx.Client(transport=transport)
    )
    return openai.OpenAI(
        base_url=f"{urls[0]}/v1",
        api_key=api_key,
        max_retries=0,
        timeout=30,
        http_client=http_client,
        _strict_response_validation=strict,
    )


@pytest.fixture
def sdk(deployment: Deployment) -> Iterator[openai.OpenAI]:
    """The SDK on the module's own `deployment` fixture."""
    client = make_client(deployment.urls)
    yield client
    client.close()


@pytest.fixture
def raw(deployment: Deployment) -> Iterator[httpx.Client]:
    """Plain HTTP to the module's own `deployment` fixture's first API process."""
    with httpx.Client(base_url=deployment.url, timeout=30) as client:
        yield client


@pytest.fixture
def client(server: Deployment) -> Iterator[openai.OpenAI]:
    sdk = make_client(server.urls)
    yield sdk
    sdk.close()


@pytest.fixture
def http(server: Deployment) -> Iterator[httpx.Client]:
    """Plain HTTP, for what the SDK cannot send (malformed JSON, unknown fields...)."""
    transport = RoundRobinTransport(server.urls) if len(server.urls) > 1 else None
    with httpx.Client(base_url=server.url, timeout=30, transport=transport) as raw:
        yield raw
