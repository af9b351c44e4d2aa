"""An embedded server's hold on its data directory.

Embedded mode keeps its SQLite database and its files in HAL9100_DATA_DIR, and executes its
runs in its own processes. Two servers on one directory would each re-dispatch the other's
runs; and a server restarted after a crash can only take its predecessor's runs over at once
(rather than waiting for their leases to lapse) if it knows nobody else uses the database.
Two `flock` locks in the directory say so; the kernel drops them when their processes die,
however they die:

* `hal9100.lock`, exclusive, held by the process that started the server (`hal9100 serve`,
  the parent of uvicorn's `--workers`), with its pid inside for the message to a second one;
* `hal9100.processes.lock`, shared, held by every process of the server. SIGKILL reaches
  uvicorn's parent alone: its workers live on and keep executing runs, and a new server
  must not take those over. It takes this lock exclusively (non-blocking) to check.

A process started by the holder learns it from `HAL9100_DATA_DIR_HOLDER` (the holder's pid
and directory, checked against its parent's pid and its own directory, so a value inherited
by anything else counts for nothing).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from hal9100.config import Settings

SERVER_LOCK = "hal9100.lock"
PROCESSES_LOCK = "hal9100.processes.lock"
HOLDER_ENV = "HAL9100_DATA_DIR_HOLDER"

# The lock files' descriptors by data directory, open for the life of the process: closing
# one drops its lock. By directory, as one process may serve several apps on several.
_held: dict[Path, list[int]] = {}


class DataDirInUse(Exception):
    """Another server uses the data directory; the message says which and what to do."""


def _lock(path: Path, operation: int) -> int | None:
    """The open descriptor holding the lock, or None if another process holds a conflicting one."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def claim(settings: Settings) -> bool:
    """Hold the data directory of an embedded server (no DATABASE_URL) for this process's life.

    True when this call took it over from nobody: no other process uses its database, so
    the caller may take over the runs a crashed predecessor left. False when nothing was to
    be taken (a PostgreSQL deployment), or this process or its parent holds it already.
    Raises DataDirInUse when another server holds it.
    """
    if settings.database_url:
        return False
    directory = settings.data_dir.resolve()
    if directory in _held:
        return False
    directory.mkdir(parents=True, exist_ok=True)
    if os.environ.get(HOLDER_ENV) == f"{os.getppid()}:{directory}":
        # One of `--workers N`; the parent holds the directory, so no other server can.
        shared = _lock(directory / PROCESSES_LOCK, fcntl.LOCK_SH)
        if shared is None:
            raise DataDirInUse(f"Data directory {directory} was taken by another server.")
        _held[directory] = [shared]
        return False
    server = _lock(directory / SERVER_LOCK, fcntl.LOCK_EX)
    if server is None:
        holder = (directory / SERVER_LOCK).read_text().strip()
        raise DataDirInUse(
            f"Data directory {directory} is in use by another hal9100 server (pid {holder}); "
            "stop it first, or give this one its own HAL9100_DATA_DIR."
        )
    processes = _lock(directory / PROCESSES_LOCK, fcntl.LOCK_EX)
    if processes is None:
        os.close(server)
        raise DataDirInUse(
            f"Data directory {directory} is still used by processes of a server that was "
            "killed (its --workers outlive it); stop them first."
        )
    # Shared from now on, like the lock of every process this one starts. The conversion is
    # not atomic, but a process that could slip in between would first need the server lock.
    fcntl.flock(processes, fcntl.LOCK_SH)
    os.ftruncate(server, 0)
    os.write(server, f"{os.getpid()}\n".encode())
    _held[directory] = [server, processes]
    os.environ[HOLDER_ENV] = f"{os.getpid()}:{directory}"
    return True
