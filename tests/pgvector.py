"""A PostgreSQL 16 with pgvector for the test session, from the PyPI package `pgserver`.

Debian's PostgreSQL on 127.0.0.1:5432 has no pgvector; pgserver bundles PostgreSQL 16.2 with
pgvector 0.6.2. Its own API listens on a Unix socket only, and run as root it creates and runs
as a `pgserver` system user; the tests (and production-mode deployments) want TCP, so this runs
the bundled `initdb` and `pg_ctl` directly, as that user when we are root, on 127.0.0.1 and a
free port. The server starts once per test session, on first use, and stops at exit.

`pgvector_admin_url()` returns a `postgres://` URL of its `postgres` database (trust auth);
callers create a database of their own from it and drop it afterwards. Where the server cannot
start the caller's test skips with the reason, or fails when `HAL9100_REQUIRE_SERVICES=1`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REQUIRE_SERVICES = os.environ.get("HAL9100_REQUIRE_SERVICES", "") not in ("", "0", "false")
SYSTEM_USER = "pgserver"

_lock = threading.Lock()
# Either the admin URL or the reason the server could not start: decided once per session.
_outcome: tuple[str | None, str | None] | None = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start() -> str:
    try:
        from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError as exc:
        raise RuntimeError(f"the pgserver package is not installed ({exc})") from exc

    as_root = os.geteuid() == 0
    data = Path(tempfile.mkdtemp(prefix="hal9100-pgvector-"))
    pgdata = data / "pgdata"
    prefix: list[str] = []
    if as_root:
        # PostgreSQL refuses to run as root; pgserver's helpers create its user and open the
        # bundled binaries and the data folder's parents to it.
        from pgserver.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        entry = ensure_user_exists(SYSTEM_USER)
        assert entry is not None
        ensure_prefix_permissions(data)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, 0o555)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o444)
        os.chown(data, entry.pw_uid, entry.pw_gid)
        prefix = ["runuser", "-u", SYSTEM_USER, "--"]

    def run(*args: str) -> None:
        subprocess.run(
            [*prefix, *args], check=True, capture_output=True, text=True, timeout=60, cwd=data
        )

    def stop() -> None:
        subprocess.run(
            [*prefix, str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "stop"],
            capture_output=True,
            timeout=60,
            cwd=data,
        )
        shutil.rmtree(data, ignore_errors=True)

    run(
        str(POSTGRES_BIN_PATH / "initdb"),
        "-D",
        str(pgdata),
        "--auth=trust",
        "--encoding=utf8",
        "-U",
        "postgres",
    )
    # A port picked free can be taken before the server binds it: try a few.
    last: subprocess.CalledProcessError | None = None
    for _ in range(5):
        port = _free_port()
        try:
            run(
                str(POSTGRES_BIN_PATH / "pg_ctl"),
                "-D",
                str(pgdata),
                "-w",
                "-t",
                "60",
                "-l",
                str(data / "log"),
                "-o",
                f"-h 127.0.0.1 -p {port} -k {data} -c max_connections=200",
                "start",
            )
        except subprocess.CalledProcessError as exc:
            last = exc
            continue
        atexit.register(stop)
        return f"postgres://postgres@127.0.0.1:{port}/postgres"
    log = (data / "log").read_text(errors="replace") if (data / "log").exists() else ""
    shutil.rmtree(data, ignore_errors=True)
    raise RuntimeError(f"pg_ctl start failed: {last and last.stderr}\n{log[-2000:]}")


def pgvector_url_or_reason() -> tuple[str | None, str | None]:
    """(admin URL, None) once the server runs, or (None, why it cannot); starts it on the
    first call of the session and answers the same afterwards."""
    global _outcome
    with _lock:
        if _outcome is None:
            try:
                _outcome = (_start(), None)
            except (OSError, RuntimeError, subprocess.SubprocessError, AssertionError) as exc:
                _outcome = (None, f"pgserver's PostgreSQL with pgvector did not start: {exc}")
        return _outcome


def pgvector_admin_url() -> str:
    """The admin URL of the session's PostgreSQL with pgvector; skips the calling test (fails
    it under HAL9100_REQUIRE_SERVICES=1) when it cannot start."""
    url, reason = pgvector_url_or_reason()
    if url is None:
        if REQUIRE_SERVICES:
            pytest.fail(f"{reason} (mandatory: HAL9100_REQUIRE_SERVICES is set)")
        pytest.skip(reason or "pgvector unavailable")
    return url


@pytest.fixture(scope="session")
def pgvector_admin() -> Iterator[str]:
    """Fixture form of `pgvector_admin_url()` (the server stops at interpreter exit, so a
    deployment started from a plain function in the same session can share it)."""
    yield pgvector_admin_url()
