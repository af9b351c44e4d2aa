"""Operating the server: a thread deleted under a streaming run, readiness, start-up against
unreachable backends, the start-up summary, the API key's scheme and open pages, and the
command line."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from conftest import DeployFactory, make_client
from deployments import (
    PG_ADMIN_URL,
    Deployment,
    MotoServer,
    Process,
    ServerProcess,
    drop_bucket,
    free_port,
    require_production,
    server_env,
    start_embedded,
    start_production,
)
from runs_support import marker, wait_llm_requests
from scripted_llm import ScriptedLLM

# The embedded parts whatever the environment says, for servers whose mode does not matter.
EMBEDDED = {"DATABASE_URL": "", "REDIS_URL": "", "S3_ENDPOINT": ""}
STARTUP_TIMEOUT = 2.0
# Python and the app import in a few seconds; a loaded CI machine needs more.
EXIT_GRACE = 25.0


def _established(port: int) -> int:
    """TCP connections in ESTABLISHED state whose local port is `port` (this process serves
    the scripted LLM, so these are the LLM's live client connections)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if int(local.rsplit(":", 1)[1], 16) == port and state == "01":
            count += 1
    return count


# --------------------------------------------------------------- deleting a streaming thread


@pytest.fixture(scope="module")
def own_llm(
    mode: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[ScriptedLLM, Deployment]]:
    """A deployment with a scripted LLM of its own, so the LLM's open connections are this
    module's only."""
    llm = ScriptedLLM().start()
    env = {**server_env(llm), "HAL9100_STREAM_CHECK_SECONDS": "15"}
    data_dir = tmp_path_factory.mktemp(f"{mode}-own-llm")
    try:
        if mode == "production":
            moto: MotoServer = request.getfixturevalue("moto")
            deployment = start_production(env, data_dir, moto=moto)
        else:
            deployment = start_embedded(env, data_dir)
    except BaseException:
        llm.stop()
        raise
    yield llm, deployment
    deployment.stop()
    llm.stop()


def test_deleting_a_thread_stops_its_streaming_run(
    own_llm: tuple[ScriptedLLM, Deployment],
) -> None:
    llm, deployment = own_llm
    sdk = make_client(deployment.urls)
    try:
        assistant = sdk.beta.assistants.create(model="scripted")
        mark = marker()
        # 300 words at 100 ms each: half a minute of streaming unless the run stops.
        thread = sdk.beta.threads.create(
            messages=[{"role": "user", "content": f"{mark} [[tokens:300]] [[slow:100]]"}]
        )
        deleted_at: float | None = None
        with (
            pytest.raises(openai.APIError, match="no longer exists"),
            sdk.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id) as stream,
        ):
            deltas = 0
            for item in stream:
                if item.event == "thread.message.delta":
                    deltas += 1
                    if deltas == 3:
                        assert _established(llm.port) == 1
                        assert sdk.beta.threads.delete(thread.id).deleted
                        deleted_at = time.monotonic()
        assert deleted_at is not None
        ended_after = time.monotonic() - deleted_at
        # Without the stop, the stream would end at the stream check (15 s here).
        assert ended_after < 5, f"the stream ended {ended_after:.1f}s after the delete"
        wait_llm_requests(llm, mark)

        # The executor was told to stop: it closed its request to the model (else it would
        # stream on for half a minute).
        deadline = time.monotonic() + 5
        while _established(llm.port):
            assert time.monotonic() < deadline, "the model call goes on after the delete"
            time.sleep(0.05)
        time.sleep(1)
        # Nothing came back to life: no second model call, no rows, no tracebacks.
        assert len([b for b in llm.requests if mark in str(b.get("messages"))]) == 1
        with pytest.raises(openai.NotFoundError):
            sdk.beta.threads.retrieve(thread.id)
        with pytest.raises(openai.NotFoundError):
            sdk.beta.threads.messages.list(thread.id)
        assert "Traceback" not in deployment.log()
    finally:
        sdk.close()


# --------------------------------------------------------------------------------- readiness


def test_ready_checks_every_part(server: Deployment, mode: str) -> None:
    for url in server.urls:
        for path in ("/ready", "/v1/ready"):
            response = httpx.get(f"{url}{path}", timeout=30)
            assert response.status_code == 200, response.text
            parts = {"database": "ok", "storage": "ok"}
            if mode == "production":
                parts["redis"] = "ok"
            assert response.json() == {"status": "ok", "checks": parts}


def test_ready_is_503_when_storage_is_down(deploy: DeployFactory, mode: str) -> None:
    # A deployment of its own: its storage is taken away.
    deployment = deploy(HAL9100_TEST_PURPOSE="storage-down")
    if mode == "production":
        restore = drop_bucket(deployment)
        variable = "S3_ENDPOINT"
        # Where the storage is: for the server's log, not for anyone who asks.
        secrets = [deployment.env["S3_ENDPOINT"], deployment.env["S3_BUCKET_NAME"]]
    else:
        files = deployment.api[0].data_dir / "files"
        shutil.rmtree(files)
        variable = "HAL9100_DATA_DIR"
        secrets = [str(deployment.api[0].data_dir.resolve())]
    try:
        for url in deployment.urls:
            assert httpx.get(f"{url}/health", timeout=30).status_code == 200
            response = httpx.get(f"{url}/v1/ready", timeout=30)
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["type"] == "server_error" and error["code"] == "not_ready"
            # `/ready` needs no API key: the names of what is down and of its variable only,
            # no host, path, bucket or driver error.
            assert error["message"] == f"Not ready: storage ({variable})", error
            for secret in secrets:
                assert secret not in response.text
        log = deployment.log()
        warnings = [line for line in log.splitlines() if "WARNING" in line and "storage" in line]
        assert warnings, log
        for secret in secrets:
            assert any(secret in line for line in warnings), warnings
    finally:
        if mode == "production":
            restore()
        else:
            files.mkdir()
    for url in deployment.urls:
        assert httpx.get(f"{url}/ready", timeout=30).status_code == 200


# ------------------------------------------------------------------ start-up, fail fast


def _closed_port_url(scheme: str, credentials: str = "") -> str:
    return f"{scheme}://{credentials}127.0.0.1:{free_port()}/0"


def _fails_fast(process: Process, variable: str) -> str:
    started = time.monotonic()
    try:
        code = process.proc.wait(STARTUP_TIMEOUT + EXIT_GRACE)
    except subprocess.TimeoutExpired:
        process.stop()
        pytest.fail(f"still running {STARTUP_TIMEOUT + EXIT_GRACE}s later:\n{process.log()}")
    finally:
        process.stop()
    output = process.log()
    assert code != 0, output
    assert time.monotonic() - started < STARTUP_TIMEOUT + EXIT_GRACE
    assert variable in output, output
    assert "Traceback" not in output, output
    assert "startup complete" not in output.lower(), output
    return output


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_unreachable_database_fails_fast(tmp_path: Path, command: str) -> None:
    env = {
        **EMBEDDED,
        "DATABASE_URL": _closed_port_url("postgresql", "hal:s3cr3t-pw@"),
        "HAL9100_STARTUP_TIMEOUT": str(STARTUP_TIMEOUT),
    }
    process: Process
    if command == "serve":
        process = ServerProcess(env, tmp_path)
    else:
        env["REDIS_URL"] = _closed_port_url("redis")
        process = Process(["worker"], env, tmp_path / "worker.log", tmp_path)
    output = _fails_fast(process, "DATABASE_URL")
    assert "s3cr3t-pw" not in output
    assert "cannot reach database" in output


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_unreachable_redis_fails_fast(tmp_path: Path, command: str) -> None:
    env = {
        **EMBEDDED,
        "REDIS_URL": _closed_port_url("redis", ":r3dis-pw@"),
        "HAL9100_STARTUP_TIMEOUT": str(STARTUP_TIMEOUT),
    }
    process: Process
    if command == "serve":
        process = ServerProcess(env, tmp_path)
    else:
        # A worker needs PostgreSQL; a reachable one, so that Redis alone is down.
        require_production()
        env["DATABASE_URL"] = PG_ADMIN_URL
        process = Process(["worker"], env, tmp_path / "worker.log", tmp_path)
    output = _fails_fast(process, "REDIS_URL")
    assert "r3dis-pw" not in output
    assert "cannot reach redis" in output and "cannot reach database" not in output


# ----------------------------------------------------------------- the start-up summary


def test_startup_summary_names_the_backends(server: Deployment, mode: str) -> None:
    # The whole log: `log()` keeps its tail, from which a shared server's start has scrolled.
    log = server.api[0].log_path.read_text(errors="replace")
    summary = [line for line in log.splitlines() if "backends:" in line]
    assert len(summary) == 1, log[-5000:]
    line = summary[0]
    if mode == "production":
        assert "database=postgresql" in line and "storage=s3" in line and "redis" in line
    else:
        assert "database=sqlite" in line and "storage=local" in line and "in-process" in line
    assert f"MODEL_URL={server.env['MODEL_URL']}" in line
    assert "anthropic=configured" in line
    assert "no model backend" not in log


def test_warns_when_no_model_backend_is_configured(tmp_path: Path) -> None:
    env = {
        **EMBEDDED,
        "MODEL_URL": "",
        "ANTHROPIC_API_KEY": "",
        "ANTHROPIC_BASE_URL": "",
        "HAL9100_API_KEY": "",
    }
    server = ServerProcess(env, tmp_path)
    try:
        server.wait_ready()
        log = server.log()
    finally:
        server.stop()
    warning = [line for line in log.splitlines() if "no model backend" in line]
    assert len(warning) == 1, log
    assert "WARNING" in warning[0] and "MODEL_URL" in warning[0]
    assert "ANTHROPIC_API_KEY" in warning[0]


# -------------------------------------------------------------------------- the API key


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Embedded whatever the environment says: the key check is the same in every mode.
    proc = ServerProcess({**EMBEDDED, "HAL9100_API_KEY": "secret"}, tmp_path_factory.mktemp("key"))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def test_bearer_scheme_is_case_insensitive(secured: ServerProcess) -> None:
    with httpx.Client(base_url=secured.url, timeout=30) as raw:
        for header in ("Bearer secret", "bearer secret", "BEARER secret", "bEaReR  secret"):
            response = raw.get("/v1/assistants", headers={"Authorization": header})
            assert response.status_code == 200, (header, response.text)
        for header in ("bearer wrong", "bearer", "secret", "Basic c2VjcmV0", "bearersecret"):
            response = raw.get("/v1/assistants", headers={"Authorization": header})
            assert response.status_code == 401, (header, response.text)
            assert response.json()["error"]["code"] == "invalid_api_key"


def test_documentation_and_probes_are_open_everything_else_needs_the_key(
    secured: ServerProcess,
) -> None:
    with httpx.Client(base_url=secured.url, timeout=30) as anonymous:
        for path in (
            "/docs",
            "/redoc",
            "/openapi.json",
            "/health",
            "/v1/health",
            "/ready",
            "/v1/ready",
        ):
            response = anonymous.get(path)
            assert response.status_code == 200, (path, response.text)
        for path in ("/v1/assistants", "/assistants", "/v1/files", "/docs-not", "/v1/docs"):
            response = anonymous.get(path)
            assert response.status_code == 401, (path, response.text)


# -------------------------------------------------------------------------- the CLI


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hal9100", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={**_clean_env(), "HAL9100_DATA_DIR": str(cwd / "data")},
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [("HAL9100_MODEL_ROUTES", "[{"), ("HAL9100_WORKER_CONCURRENCY", "many")],
)
def test_an_invalid_setting_is_a_one_line_error(tmp_path: Path, variable: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hal9100", "serve", "--port", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**_clean_env(), "HAL9100_DATA_DIR": str(tmp_path / "data"), variable: value},
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"hal9100: invalid configuration: {variable}:"), result.stderr


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in EMBEDDED}


def test_cli_version(tmp_path: Path) -> None:
    from hal9100 import __version__

    result = _cli("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"hal9100 {__version__}"


def test_cli_help_gives_every_option_a_help_text_and_default(tmp_path: Path) -> None:
    for command, options in (
        ("serve", ("--host", "--port", "--workers", "--migrate", "--with-worker")),
        ("worker", ("--concurrency",)),
        ("migrate", ("revision",)),
    ):
        result = _cli(command, "--help", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        text = " ".join(result.stdout.split())
        for option in options:
            assert option in text, (command, option, result.stdout)
        # Every option line ends up with its default, and there is one per option.
        assert text.count("(default:") >= len(options), (command, result.stdout)


def test_bad_migrate_revision_is_a_one_line_error(tmp_path: Path) -> None:
    result = _cli("migrate", "no-such-revision", cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "no-such-revision" in line]
    assert len(errors) == 1 and errors[0] == lines[-1], result.stderr
    assert errors[0].startswith("hal9100 migrate: error:"), errors[0]
