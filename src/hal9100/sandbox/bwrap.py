"""The bubblewrap backend: each session is an IPython kernel in its own set of namespaces.

What the code inside gets: the system's `/usr` and the sandbox's own Python read-only, a
root that is read-only once set up, size-capped tmpfs at `/mnt/data` and `/tmp`, a private
`/proc` and `/dev`, loopback only (no network), no capabilities, no further namespaces, a
seccomp filter, resource limits, a cleared environment. Nothing of the host's `/etc`,
`/root`, `/home`, the data directory or other sessions is mounted. The kernel's sockets live
in the sandbox's own tmpfs; the server reaches them, and `/mnt/data`, through
`/proc/<pid>/root`, so no host directory is shared at all.

Started by root, the sandbox runs as a uid of its own per session (bubblewrap started as root
would map the sandbox's user to the host's root); started by anyone else, as that user, in an
unprivileged user namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hal9100.sandbox import cgroup, files, kernel, python_env, seccomp
from hal9100.sandbox.base import (
    DATA_DIR,
    CellResult,
    SandboxBackend,
    SandboxFile,
    SandboxSession,
    SandboxUnavailable,
)

if TYPE_CHECKING:
    from hal9100.config import Settings

log = logging.getLogger(__name__)

_INSIDE = Path(__file__).parent / "inside"
_SOCKETS = "/run/hal9100"
_ETC = "/etc/hal9100"
_PYTHON = "/opt/python"
_SANDBOX_UID = 1000
UID_SLOTS = 65536
UID_LOCKS = "/run/hal9100-sandbox-uids"


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 2 << 30
    """Address space of each process (RLIMIT_AS): a memory bomb ends in MemoryError."""
    processes: int = 64
    """Processes and threads of the session (RLIMIT_NPROC, counted in its user namespace)."""
    file_bytes: int = 256 << 20
    open_files: int = 256
    cpu_seconds: int = 3600
    data_bytes: int = 512 << 20
    """Size of the /mnt/data tmpfs."""
    tmp_bytes: int = 256 << 20
    """Size of the /tmp tmpfs (and, as much again, /dev/shm)."""
    output_bytes: int = 65536
    """What one cell's logs keep, inside the kernel and again outside it."""


@dataclass(frozen=True)
class BwrapConfig:
    python_dir: Path
    limits: Limits = Limits()
    bwrap: str = "bwrap"
    uid_base: int = 600000
    """First of the uids sessions run as when the server is root (one per live session)."""
    start_timeout: float = 60.0
    ready_timeout: float = 15.0
    """How long a started kernel has to answer before its sandbox is started again."""
    start_attempts: int = 3


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        path = Path(top)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), top]
        elif path.is_dir():
            args += ["--ro-bind", top, top]
    # The dynamic loader finds the multiarch library directories through its cache.
    if Path("/etc/ld.so.cache").is_file():
        args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    # Fontconfig's settings (Pillow and matplotlib's text), nothing secret.
    if Path("/etc/fonts").is_dir():
        args += ["--ro-bind", "/etc/fonts", "/etc/fonts"]
    return args


def _data_fd(data: bytes) -> int:
    """A descriptor bwrap reads `data` from (`--ro-bind-data`, `--seccomp`)."""
    fd = os.memfd_create("hal9100-sandbox", os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class BwrapSession(SandboxSession):
    def __init__(self, backend: BwrapBackend, uid: int | None, uid_lock: int) -> None:
        self.id = secrets.token_hex(8)
        self.backend = backend
        self.uid = uid
        # Held while the session lives: the uid is this session's alone on the machine.
        self.uid_lock = uid_lock
        self.process: asyncio.subprocess.Process | None = None
        self.pid = 0
        self.kernel: kernel.Kernel | None = None
        self.group: cgroup.SessionGroup | None = None
        self.started_at = time.monotonic()
        self._pidfd = -1
        self._proc = -1
        self._draining: asyncio.Task[None] | None = None
        self._stderr_tail = b""

    # --- start and stop -------------------------------------------------------------------

    def _argv(self, fds: dict[str, int], info_fd: int) -> list[str]:
        config = self.backend.config
        limits = config.limits
        env = {
            "PATH": f"{_PYTHON}/bin:/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "USER": "sandbox",
            "LANG": "C.UTF-8",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "MPLCONFIGDIR": "/tmp/.matplotlib",
            "PYTHONNOUSERSITE": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            # One thread per math library: the process limit counts threads too.
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "HAL9100_OUTPUT_BYTES": str(limits.output_bytes),
        }
        launch = {
            "connection_file": f"{_ETC}/kernel.json",
            "startup_file": f"{_ETC}/startup.py",
            "mplconfig": f"{_PYTHON}/mplconfig",
            "limits": {
                "RLIMIT_AS": limits.memory_bytes,
                "RLIMIT_NPROC": limits.processes,
                "RLIMIT_FSIZE": limits.file_bytes,
                "RLIMIT_NOFILE": limits.open_files,
                "RLIMIT_CPU": limits.cpu_seconds,
                "RLIMIT_CORE": 0,
            },
        }
        argv = [
            config.bwrap,
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--uid",
            str(_SANDBOX_UID),
            "--gid",
            str(_SANDBOX_UID),
            "--hostname",
            "sandbox",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--clearenv",
            *_system_binds(),
            "--ro-bind",
            str(config.python_dir),
            _PYTHON,
            "--ro-bind-data",
            str(fds["launch"]),
            f"{_ETC}/launch.py",
            "--ro-bind-data",
            str(fds["startup"]),
            f"{_ETC}/startup.py",
            "--ro-bind-data",
            str(fds["connection"]),
            f"{_ETC}/kernel.json",
            "--ro-bind-data",
            str(fds["passwd"]),
            "/etc/passwd",
            "--ro-bind-data",
            str(fds["group"]),
            "/etc/group",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--size",
            str(limits.tmp_bytes),
            "--tmpfs",
            "/dev/shm",
            "--size",
            str(limits.tmp_bytes),
            "--tmpfs",
            "/tmp",
            "--size",
            str(limits.data_bytes),
            "--tmpfs",
            DATA_DIR,
            "--size",
            str(1 << 20),
            "--tmpfs",
            _SOCKETS,
            "--remount-ro",
            "/",
            "--chdir",
            DATA_DIR,
            "--seccomp",
            str(fds["seccomp"]),
            "--info-fd",
            str(info_fd),
        ]
        for name, value in env.items():
            argv += ["--setenv", name, value]
        argv += ["--", f"{_PYTHON}/bin/python", f"{_ETC}/launch.py", json.dumps(launch)]
        return argv

    async def start(self) -> None:
        key = secrets.token_hex(32)
        inside = kernel.connection_info(f"{_SOCKETS}/kernel", key)
        passwd = f"sandbox:x:{_SANDBOX_UID}:{_SANDBOX_UID}:sandbox:/tmp:/bin/sh\n"
        group = f"sandbox:x:{_SANDBOX_UID}:\n"
        fds = {
            "connection": _data_fd(json.dumps(inside).encode()),
            "passwd": _data_fd(passwd.encode()),
            "group": _data_fd(group.encode()),
            "seccomp": seccomp.filter_fd(),
            # Copied in, not bound: the package may be installed where the sandbox's uid
            # cannot read (under /root).
            "launch": _data_fd((_INSIDE / "launch.py").read_bytes()),
            "startup": _data_fd((_INSIDE / "startup.py").read_bytes()),
        }
        info_read, info_write = os.pipe()
        try:
            owner: dict[str, Any] = {}
            if self.uid is not None:
                limits = self.backend.config.limits
                self.group = cgroup.SessionGroup.create(
                    f"session-{self.id}",
                    limits.processes,
                    limits.memory_bytes + limits.data_bytes + 2 * limits.tmp_bytes,
                )
                # Not Popen's user= and group=: uvloop's subprocesses do not take them.
                owner = {"preexec_fn": _become(self.uid, self.group)}
            self.process = await asyncio.create_subprocess_exec(
                *self._argv(fds, info_write),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=[*fds.values(), info_write],
                start_new_session=True,
                # bubblewrap's own process stays in the sandbox (its pid 1), where the code
                # can read its environment: give it nothing of the server's.
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                **owner,
            )
        finally:
            for fd in fds.values():
                os.close(fd)
            os.close(info_write)
        try:
            info = await asyncio.wait_for(
                asyncio.to_thread(_read_all, info_read), self.backend.config.start_timeout
            )
        finally:
            os.close(info_read)
        # What the sandbox writes to its stderr is drained for good (ipykernel echoes the
        # code's fd 2 there: an unread pipe would fill and hang the next cell), keeping the
        # end of it for the error of a start that fails.
        self._draining = asyncio.create_task(self._drain_stderr())
        try:
            self._hold(int(json.loads(info)["child-pid"]))
        except (ValueError, KeyError, TypeError, OSError):
            await self.close()
            message = self._stderr_tail.decode(errors="replace").strip()
            raise SandboxUnavailable(f"bubblewrap did not start the sandbox: {message}") from None
        if _host_uids(self._proc) & {0}:
            # Code inside would be root on the host wherever a namespace lets it through
            # (`/proc/sys`, files the host's root owns): never run it.
            await self.close()
            raise SandboxUnavailable("the sandbox would run as the host's root: refused")
        try:
            await self._in_thread(self._wait_listening)
            if self._proc < 0:  # closed meanwhile
                raise SandboxUnavailable("the sandbox session has ended")
            # Connected once, now, before any code but ours has run in the sandbox (so the
            # names are the kernel's own), and never again (kernel.py): the code may later
            # replace them by links to any socket of the host.
            sockets = f"/proc/self/fd/{self._proc}/root{_SOCKETS}/kernel"
            self.kernel = kernel.Kernel(kernel.connection_info(sockets, key))
        except Exception as error:
            await self.close()
            message = self._stderr_tail.decode(errors="replace").strip()
            raise SandboxUnavailable(
                f"the sandbox's kernel did not start: {message or repr(error)}"
            ) from None
        try:
            await self.kernel.wait_ready(self.backend.config.ready_timeout)
        except Exception as error:
            await self.close()
            message = self._stderr_tail.decode(errors="replace").strip()
            raise _NotReady(
                f"the sandbox's kernel did not answer: {message or repr(error)}"
            ) from None

    def _hold(self, pid: int) -> None:
        """Keep hold of the sandbox's init by descriptor, not by number: once it is gone its
        pid may be another process's, which a kill or a path through /proc would reach."""
        self.pid = pid
        self._pidfd = os.pidfd_open(pid)
        self._proc = os.open(f"/proc/{pid}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def _wait_listening(self, root: str) -> None:
        """Wait until the kernel listens on each of its sockets (reached without following a
        link, checked to be a socket): ZeroMQ connects once, and must not come first."""
        deadline = time.monotonic() + self.backend.config.start_timeout
        parts = [*_SOCKETS.strip("/").split("/")]
        for port in kernel.CLIENT_PORTS:
            while True:
                try:
                    fd = files.open_socket(root, [*parts, f"kernel-{port}"])
                    try:
                        files.probe_socket(fd)
                    finally:
                        os.close(fd)
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    if time.monotonic() > deadline or not self.alive:
                        raise
                    time.sleep(0.02)

    async def _in_thread(self, work: Callable[..., Any], *args: Any) -> Any:
        """`work(root, *args)` in a thread, on a descriptor of the sandbox's /proc entry of
        its own: a close meanwhile frees the session's, whose number another session may
        then get."""
        if self._proc < 0:
            raise SandboxUnavailable("the sandbox session has ended")
        held = os.dup(self._proc)
        try:
            return await asyncio.to_thread(work, f"/proc/self/fd/{held}/root", *args)
        finally:
            os.close(held)

    async def _drain_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while chunk := await self.process.stderr.read(65536):
            self._stderr_tail = (self._stderr_tail + chunk)[-4096:]

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None and self._proc >= 0

    async def close(self) -> None:
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None
        if self._pidfd >= 0:
            # The init of the sandbox's pid namespace: its end takes every process in the
            # namespace with it. (bwrap's --die-with-parent would too when bwrap is killed,
            # but not in every mode bwrap can run in.)
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        if self.process is not None and self.process.returncode is None:
            # bwrap's outer process reaps the sandbox's init and exits on its own: killed at
            # once, it would leave that init a zombie for the host's init to collect (and
            # in a container whose pid 1 is this server, nobody would).
            try:
                if self._pidfd < 0:
                    raise TimeoutError  # no sandbox yet: nothing to wait for
                await asyncio.wait_for(self.process.wait(), 2)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self.group is not None:
            group, self.group = self.group, None
            await asyncio.to_thread(group.remove)
        if self._draining is not None:
            self._draining.cancel()
        for fd in [self._pidfd, self._proc]:
            if fd >= 0:
                os.close(fd)
        self._pidfd = self._proc = -1
        self.backend._forget(self)

    # --- code and files -------------------------------------------------------------------

    async def run_cell(self, code: str, limit: float) -> CellResult:
        if not self.alive or self.kernel is None:
            raise SandboxUnavailable("the sandbox session has ended")
        assert self.process is not None
        limits = self.backend.config.limits
        execute = asyncio.ensure_future(
            self.kernel.execute(code, limit, max_output=limits.output_bytes)
        )
        exited = asyncio.ensure_future(self.process.wait())
        done, _ = await asyncio.wait({execute, exited}, return_when=asyncio.FIRST_COMPLETED)
        if execute in done:
            exited.cancel()
            outcome = execute.result()
            if outcome.finished:
                return CellResult(outcome.logs, outcome.images, outcome.error)
            await self.close()
            return CellResult(
                outcome.logs,
                outcome.images,
                error=True,
                state_lost=(
                    f"the cell did not stop within its {limit:g} s limit when interrupted, "
                    "so its Python session was ended"
                ),
            )
        execute.cancel()
        await self.close()
        return CellResult(
            "",
            error=True,
            state_lost="the Python session ended while the cell ran (it may have run out of memory)",
        )

    async def put_file(self, name: str, data: bytes) -> str:
        written: str = await self._in_thread(files.write_file, name, data, self.uid)
        return written

    async def list_files(self) -> list[SandboxFile]:
        found: list[SandboxFile] = await self._in_thread(files.list_regular)
        return found

    async def read_file(self, path: str, max_bytes: int) -> bytes | None:
        data: bytes | None = await self._in_thread(files.read_regular, path, max_bytes)
        return data


def _become(uid: int, group: cgroup.SessionGroup | None) -> Callable[[], None]:
    """In the child before exec: enter the session's cgroup (while still root), then drop to
    `uid` (and its own gid, no supplementary groups)."""

    def drop() -> None:
        if group is not None:
            group.enter()
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)

    return drop


class _NotReady(SandboxUnavailable):
    """The kernel was started but did not answer in time."""


def _host_uids(proc: int) -> set[int]:
    """The real, effective, saved and file system uids of the process whose /proc entry is
    open as `proc`, as the host sees them."""
    try:
        with open(f"/proc/self/fd/{proc}/status") as status:
            for line in status:
                if line.startswith("Uid:"):
                    return {int(field) for field in line.split()[1:]}
    except OSError:
        pass
    return {0}


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


class BwrapBackend(SandboxBackend):
    name = "bubblewrap"

    def __init__(self, config: BwrapConfig) -> None:
        self.config = config
        self.sessions: set[BwrapSession] = set()
        self._free_uids = list(range(UID_SLOTS - 1, -1, -1))
        self._problems: list[str] | None = None

    async def problems(self) -> list[str]:
        if self._problems is None:
            self._problems = await asyncio.to_thread(self._find_problems)
        return self._problems

    def _find_problems(self) -> list[str]:
        found = []
        if shutil.which(self.config.bwrap) is None:
            found.append(
                f"bubblewrap ({self.config.bwrap}) is not installed: "
                "install the `bubblewrap` package (Debian, Ubuntu, Fedora)"
            )
        try:
            python_env.inspect(self.config.python_dir)
        except SandboxUnavailable as error:
            found.append(str(error))
        if not hasattr(os, "memfd_create") or not Path("/proc/self/root").exists():
            found.append("the bubblewrap sandbox needs Linux")
        cgroup.sweep_stale()
        return found

    def _uid(self) -> tuple[int, int] | None:
        """A uid no other session on this machine runs as, and the lock that says so: other
        worker processes of the host draw from the same range."""
        if os.geteuid() != 0:
            return None
        try:
            os.makedirs(UID_LOCKS, mode=0o700, exist_ok=True)
        except OSError as error:
            raise SandboxUnavailable(f"no sandbox uid can be claimed: {error}") from None
        tried = []
        try:
            while self._free_uids:
                slot = self._free_uids.pop(secrets.randbelow(len(self._free_uids)))
                tried.append(slot)
                uid = self.config.uid_base + slot
                try:
                    lock = os.open(
                        f"{UID_LOCKS}/{uid}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
                    )
                except OSError as error:
                    raise SandboxUnavailable(f"no sandbox uid can be claimed: {error}") from None
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(lock)
                    continue
                tried.pop()
                return uid, lock
        finally:
            self._free_uids.extend(tried)
        raise SandboxUnavailable("every sandbox uid is in use")

    def _forget(self, session: BwrapSession) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            if session.uid is not None:
                self._free_uids.append(session.uid - self.config.uid_base)
            if session.uid_lock >= 0:
                os.close(session.uid_lock)  # the lock goes with it
                session.uid_lock = -1

    async def start(self) -> SandboxSession:
        problems = await self.problems()
        if problems:
            raise SandboxUnavailable("; ".join(problems))
        for attempt in range(1, self.config.start_attempts + 1):
            claimed = self._uid()
            session = BwrapSession(self, *(claimed or (None, -1)))
            self.sessions.add(session)
            try:
                await session.start()
            except _NotReady as error:
                # A kernel that listens yet does not answer in time (a machine loaded past
                # what it can serve; once, a client state this module no longer has): a new
                # sandbox may. The model's code has not run in this one.
                await session.close()
                log.warning("sandbox start %d: %s; starting another", attempt, error)
                if attempt == self.config.start_attempts:
                    raise
                continue
            except BaseException:
                await session.close()
                raise
            return session
        raise AssertionError("unreachable")

    async def self_test(self) -> list[str]:
        problems = await self.problems()
        if problems:
            return problems
        try:
            session = await self.start()
        except SandboxUnavailable as error:
            return [str(error)]
        try:
            result = await session.run_cell(_SELF_TEST, limit=30)
        finally:
            await session.close()
        if result.error:
            return [f"the self-test cell failed: {result.logs.strip()[-2000:]}"]
        return [
            line[len("PROBLEM ") :]
            for line in result.logs.splitlines()
            if line.startswith("PROBLEM ")
        ]

    async def aclose(self) -> None:
        for session in list(self.sessions):
            await session.close()


_SELF_TEST = r"""
import os, socket
def problem(text): print("PROBLEM " + text)
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
if status["CapEff"].strip() != "0000000000000000": problem("the kernel has capabilities")
if status["NoNewPrivs"].strip() != "1": problem("no_new_privs is not set")
if status["Seccomp"].strip() != "2": problem("no seccomp filter")
if sorted(os.listdir("/sys/class/net") if os.path.isdir("/sys/class/net") else ["lo"]) != ["lo"]:
    problem("network interfaces besides lo are visible")
try:
    socket.create_connection(("192.0.2.1", 80), timeout=1)
    problem("the network is reachable")
except OSError:
    pass
for path in ("/root", "/home", "/etc/shadow"):
    if os.path.exists(path): problem(f"{path} is visible")
try:
    open("/usr/hal9100-probe", "w")
    problem("/usr is writable")
except OSError:
    pass
import numpy, pandas, matplotlib
"""


def make_backend(settings: Settings) -> BwrapBackend:
    mb = 1 << 20
    limits = Limits(
        memory_bytes=settings.sandbox_memory_mb * mb,
        processes=settings.sandbox_processes,
        data_bytes=settings.sandbox_disk_mb * mb,
        tmp_bytes=min(settings.sandbox_disk_mb, 256) * mb,
        file_bytes=settings.sandbox_disk_mb * mb,
    )
    return BwrapBackend(
        BwrapConfig(
            python_dir=settings.sandbox_python_dir or python_env.default_dir(),
            limits=limits,
            uid_base=settings.sandbox_uid_base,
        )
    )
