"""Files in and out of a session's `/mnt/data`, from outside the sandbox, trusting nothing in it.

The code inside owns that directory and may plant symlinks, FIFOs or directories where a file
is expected. Every path is walked one component at a time from a directory descriptor with
`O_NOFOLLOW`; only regular files are read, and only up to a size cap. Opens never block (a
FIFO with no writer would) and never give the sandbox a controlling terminal.
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from hal9100.sandbox.base import DATA_DIR, SandboxFile

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
MAX_LISTED = 1000
"""Files listed at most: code can make millions, and nobody reads a list that long."""
MAX_DEPTH = 8
_DATA_PARTS = DATA_DIR.strip("/").split("/")


def relative_parts(path: str) -> list[str] | None:
    """`path` (relative to /mnt/data, or absolute under it) as plain components; None if it
    leaves /mnt/data or names something no file can be (`..`, empty, NUL)."""
    if "\x00" in path:
        return None
    if path.startswith(DATA_DIR + "/"):
        path = path[len(DATA_DIR) + 1 :]
    elif path.startswith("/"):
        return None
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts or any(part == ".." for part in parts):
        return None
    return parts


@contextmanager
def opened_dir(root: str, parts: list[str]) -> Iterator[int]:
    """A descriptor of `/mnt/data/<parts>` in the sandbox whose root the host sees at `root`
    (`/proc/<pid>/root`: that magic link is the kernel's, and is followed), opened one
    component at a time without following a link."""
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in [*_DATA_PARTS, *parts]:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def read_regular(root: str, path: str, max_bytes: int) -> bytes | None:
    """The regular file at `path` under /mnt/data, if it is one and at most `max_bytes` long."""
    parts = relative_parts(path)
    if parts is None:
        return None
    try:
        with opened_dir(root, parts[:-1]) as directory:
            fd = os.open(parts[-1], _READ_FLAGS, dir_fd=directory)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            return None
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        # It may have grown between the stat and the read.
        return data if len(data) <= max_bytes else None
    finally:
        os.close(fd)


def list_regular(root: str) -> list[SandboxFile]:
    """Regular files under /mnt/data, depth-first, never entering a linked directory."""
    found: list[SandboxFile] = []

    def walk(fd: int, prefix: str, depth: int) -> None:
        with os.scandir(fd) as entries:
            for entry in entries:
                if len(found) >= MAX_LISTED:
                    return
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    found.append(SandboxFile(prefix + entry.name, info.st_size, info.st_mtime_ns))
                elif stat.S_ISDIR(info.st_mode) and depth < MAX_DEPTH:
                    try:
                        child = os.open(
                            entry.name, os.O_RDONLY | _DIR_FLAGS & ~os.O_PATH, dir_fd=fd
                        )
                    except OSError:
                        continue
                    try:
                        walk(child, f"{prefix}{entry.name}/", depth + 1)
                    finally:
                        os.close(child)

    try:
        with opened_dir(root, []) as data:
            top = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=data)
    except OSError:
        return []
    try:
        walk(top, "", 0)
    finally:
        os.close(top)
    return found


@contextmanager
def _acting_as(uid: int | None) -> Iterator[None]:
    """File system credentials of `uid` for this thread alone. The sandbox's tmpfs belongs to
    its user namespace, where the host's root has no uid: a file root creates there fails
    (EOVERFLOW). setfsuid is per thread in the kernel, and glibc does not spread it to the
    process's other threads as it does setuid."""
    if uid is None:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    before_gid = libc.setfsgid(uid)
    before_uid = libc.setfsuid(uid)
    try:
        yield
    finally:
        libc.setfsuid(before_uid)
        libc.setfsgid(before_gid)


def write_file(root: str, name: str, data: bytes, owner: int | None) -> str:
    """Put `data` at `/mnt/data/<name>` (a plain name), replacing whatever the code left there
    (a link is replaced, not followed), created as `owner` (the sandbox's host uid, when the
    server runs as root) so that the code may change it."""
    if "/" in name or name in ("", ".", "..") or "\x00" in name:
        raise ValueError(f"not a plain file name: {name!r}")
    with _acting_as(owner), opened_dir(root, []) as directory:
        temporary = f".hal9100-upload-{os.getpid()}-{id(data)}"
        fd = os.open(
            temporary,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
            dir_fd=directory,
        )
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            os.unlink(temporary, dir_fd=directory)
            raise
        os.close(fd)
        os.rename(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
    return f"{DATA_DIR}/{name}"


def open_socket(root: str, parts: list[str]) -> int:
    """An `O_PATH` descriptor of the Unix socket at `parts` under the sandbox's root, reached
    without following a link (FileNotFoundError until it exists; OSError if it is not a
    socket)."""
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        sock = os.open(parts[-1], os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISSOCK(os.fstat(sock).st_mode):
        os.close(sock)
        raise OSError(f"{'/'.join(parts)} is not a socket")
    return sock


def probe_socket(fd: int) -> None:
    """Connect to the socket pinned as `fd` and let go (ConnectionRefusedError until it
    listens)."""
    import socket

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(f"/proc/self/fd/{fd}")
    finally:
        probe.close()
