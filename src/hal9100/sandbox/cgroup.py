"""A cgroup of the session's own, where one can be had: one cap on the processes and one on
the memory of all the session's processes together (rlimits cap each process alone).

Only a server running as root can make one: under cgroup v1 in the `pids` and `memory`
hierarchies, under cgroup v2 in the root's subtree when it delegates both controllers.
Elsewhere (a container, an unprivileged server) sessions run without, and the rlimits and
tmpfs sizes still hold.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
PARENT = "hal9100-sandbox"


class SessionGroup:
    def __init__(self, directories: list[Path]) -> None:
        self.directories = directories

    @classmethod
    def create(cls, name: str, processes: int, memory_bytes: int) -> SessionGroup | None:
        """The group, made with its limits, or None where none can be had."""
        if os.geteuid() != 0:
            return None
        try:
            return cls._create(name, processes, memory_bytes)
        except OSError as error:
            log.debug("no cgroup for sandbox session %s: %s", name, error)
            return None

    @classmethod
    def _create(cls, name: str, processes: int, memory_bytes: int) -> SessionGroup | None:
        if (ROOT / "cgroup.controllers").is_file():
            enabled = (ROOT / "cgroup.subtree_control").read_text().split()
            if not {"pids", "memory"} <= set(enabled):
                return None
            parent = ROOT / PARENT
            parent.mkdir(exist_ok=True)
            control = parent / "cgroup.subtree_control"
            if not {"pids", "memory"} <= set(control.read_text().split()):
                control.write_text("+pids +memory")
            group = parent / name
            group.mkdir()
            made = cls([group])
            try:
                (group / "pids.max").write_text(str(processes))
                (group / "memory.max").write_text(str(memory_bytes))
                (group / "memory.swap.max").write_text("0")
            except OSError:
                made.remove()
                raise
            return made
        pids, memory = ROOT / "pids", ROOT / "memory"
        if not (pids / "cgroup.procs").is_file() or not (memory / "cgroup.procs").is_file():
            return None
        directories = []
        try:
            for hierarchy in (pids, memory):
                group = hierarchy / PARENT / name
                group.mkdir(parents=True)
                directories.append(group)
            made = cls(directories)
            (directories[0] / "pids.max").write_text(str(processes))
            (directories[1] / "memory.limit_in_bytes").write_text(str(memory_bytes))
        except OSError:
            cls(directories).remove()
            raise
        return made

    def enter(self) -> None:
        """Move the calling process in (run in the child before it execs bubblewrap, so that
        everything the session starts is born inside)."""
        pid = str(os.getpid())
        for directory in self.directories:
            with open(directory / "cgroup.procs", "w") as procs:
                procs.write(pid)

    def remove(self) -> None:
        """Remove the group once its processes are gone (they were just killed: give the
        kernel a moment to reap them)."""
        deadline = time.monotonic() + 2.0
        for directory in self.directories:
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        log.warning("sandbox cgroup %s left behind", directory)
                        break
                    time.sleep(0.02)


def sweep_stale(max_age: float = 60.0) -> None:
    """Remove the empty session groups a server that died left behind. Only old ones: a
    group another server process just made is empty until its session enters it."""
    if os.geteuid() != 0:
        return
    now = time.time()
    for parent in (ROOT / PARENT, ROOT / "pids" / PARENT, ROOT / "memory" / PARENT):
        try:
            groups = list(parent.glob("session-*"))
        except OSError:
            continue
        for group in groups:
            try:
                if now - group.stat().st_mtime > max_age:
                    group.rmdir()  # refused while any process is in it
            except OSError:
                continue
