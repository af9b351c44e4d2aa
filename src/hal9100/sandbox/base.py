"""What the code_interpreter tool needs of a sandbox, whatever runs it.

A backend starts sessions; a session is one stateful Python kernel with its own `/mnt/data`,
reachable only through this interface. The bubblewrap backend (`bwrap.py`) is the one that
ships; a pod-per-session backend (a gVisor runtime class on Kubernetes) would implement the
same two classes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

DATA_DIR = "/mnt/data"
"""Where a session's files are, as the code inside sees them."""


class SandboxUnavailable(Exception):
    """No safe sandbox can be made here: the tool fails closed with this message."""


@dataclass
class CellResult:
    """What one cell printed and showed, as the model and the run step get it."""

    logs: str
    """stdout, stderr, the value of the last expression and any traceback, in order, capped."""
    images: list[bytes] = field(default_factory=list)
    """PNG images the cell displayed (plots), in order."""
    error: bool = False
    """The cell raised (its traceback is in `logs`)."""
    state_lost: str | None = None
    """Why the session's variables are gone, if they are: the kernel was restarted (a cell
    ran past its limit, or the memory cap ended it) or the session had ended. The model is
    told, so that it does not rely on earlier state."""


@dataclass(frozen=True)
class SandboxFile:
    """A regular file under `/mnt/data`; `path` is relative to it."""

    path: str
    size: int
    mtime_ns: int


class SandboxSession(ABC):
    """One kernel and its files. Methods may be called from one task at a time."""

    id: str

    @property
    @abstractmethod
    def alive(self) -> bool:
        """False once the session is closed or its sandbox died."""

    @abstractmethod
    async def run_cell(self, code: str, limit: float) -> CellResult:
        """Run `code` in the kernel. Past `limit` seconds the cell is interrupted; if it
        does not stop, the kernel is killed and restarted (`state_lost` says so)."""

    @abstractmethod
    async def put_file(self, name: str, data: bytes) -> str:
        """Write a file at `/mnt/data/<name>` (a plain name, no directories), replacing any
        file the code made there; return its path as the code sees it."""

    @abstractmethod
    async def list_files(self) -> list[SandboxFile]:
        """Regular files under `/mnt/data`, recursively, never following a symlink."""

    @abstractmethod
    async def read_file(self, path: str, max_bytes: int) -> bytes | None:
        """The file at `path` (relative to `/mnt/data`, or absolute under it) if it is a
        regular file reached without following any symlink and at most `max_bytes` long;
        otherwise None."""

    @abstractmethod
    async def close(self) -> None:
        """Kill the kernel and everything the code started; forget the files."""


class SandboxBackend(ABC):
    name: str

    @abstractmethod
    async def problems(self) -> list[str]:
        """Why a safe sandbox cannot be made here (empty when it can). Cheap: no kernel."""

    @abstractmethod
    async def start(self) -> SandboxSession:
        """A new session, ready to run code. Raises SandboxUnavailable."""

    @abstractmethod
    async def self_test(self) -> list[str]:
        """Start a session, run a cell, check the confinement from inside; problems found."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close every session this backend started."""
