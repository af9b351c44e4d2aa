"""What code in the sandbox must not be able to do, tried from inside (every loop bounded).

Each test runs real code in a real bubblewrap session, as the model's code would run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hal9100.sandbox.base import SandboxSession, SandboxUnavailable
from hal9100.sandbox.bwrap import BwrapBackend
from sandbox_support import backend, session

__all__ = ["backend", "session"]

CANARY = "hal9100-canary-secret-7f3a"


async def run(session: SandboxSession, code: str, limit: float = 30) -> str:
    result = await session.run_cell(textwrap.dedent(code), limit)
    assert result.state_lost is None, result
    assert not result.error, result.logs
    return result.logs


# --- network ---------------------------------------------------------------------------


async def test_only_loopback_and_no_host_services(session: SandboxSession) -> None:
    logs = await run(
        session,
        """
        import os, socket
        print("ifaces", sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net")
              else [name for _, name in socket.if_nameindex()])
        for port in (5432, 6379):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1)
                print("reached", port)
            except OSError as error:
                print("refused", port, type(error).__name__)
        try:
            socket.create_connection(("192.0.2.1", 80), timeout=1)
            print("reached test-net")
        except OSError as error:
            print("test-net unreachable", type(error).__name__)
        try:
            socket.getaddrinfo("pypi.org", 443)
            print("resolved")
        except OSError as error:
            print("dns fails", type(error).__name__)
        """,
    )
    assert "ifaces ['lo']" in logs
    assert "refused 5432" in logs and "refused 6379" in logs
    assert "test-net unreachable" in logs
    assert "dns fails" in logs
    assert "reached" not in logs and "resolved" not in logs


HOST_SOCKET_DIRS = [
    path
    for path in ("/var/run/postgresql", "/run/postgresql", "/tmp/.X11-unix", "/run/dbus")
    if os.path.exists(path)
]


async def test_no_host_unix_sockets(session: SandboxSession) -> None:
    host_sockets = HOST_SOCKET_DIRS
    logs = await run(
        session,
        f"""
        import os
        for path in {[*host_sockets, "/var/run", "/run/user"]!r}:
            print(path, os.path.exists(path))
        found = []
        for top in ("/run", "/var", "/tmp", "/mnt/data"):
            for directory, _, names in os.walk(top):
                for name in names:
                    full = os.path.join(directory, name)
                    import stat
                    if stat.S_ISSOCK(os.lstat(full).st_mode) and not full.startswith("/run/hal9100"):
                        found.append(full)
        print("sockets", found)
        """,
    )
    for path in host_sockets:
        assert f"{path} False" in logs
    assert "sockets []" in logs


# --- the host's files and secrets ----------------------------------------------------------


async def test_host_files_and_environment_absent(
    backend: BwrapBackend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HAL9100_TEST_CANARY", CANARY)
    session = await backend.start()
    try:
        logs = await run(
            session,
            f"""
            import os, glob
            for path in ("/etc/shadow", "/root", "/home", {str(tmp_path)!r}, {str(Path.cwd())!r},
                         "/etc/hostname", "/etc/ssh", "/var/lib/postgresql"):
                print(path, os.path.exists(path))
            seen = repr(dict(os.environ))
            for path in glob.glob("/proc/[0-9]*/environ"):
                try:
                    seen += open(path, "rb").read().decode(errors="replace")
                except OSError:
                    pass
            print("canary", {CANARY!r} in seen)
            """,
        )
    finally:
        await session.close()
    assert "True" not in logs, logs
    assert "canary False" in logs


async def test_system_python_and_proc_sys_read_only(session: SandboxSession) -> None:
    logs = await run(
        session,
        """
        import os, sys
        targets = ["/usr/bin/hal9100-probe", "/etc/hal9100-probe", "/opt/python/probe",
                   os.path.join(os.path.dirname(os.__file__), "probe.py"),
                   "/proc/sys/kernel/hostname", "/proc/sys/vm/drop_caches", "/hal9100-probe"]
        for target in targets:
            try:
                with open(target, "w") as handle:
                    handle.write("x")
                print("wrote", target)
            except OSError as error:
                print("refused", target, type(error).__name__)
        """,
    )
    assert "wrote" not in logs, logs
    assert logs.count("refused") == 7


# --- privileges ----------------------------------------------------------------------------


async def test_no_privileges_namespaces_or_mounts(session: SandboxSession) -> None:
    logs = await run(
        session,
        """
        import ctypes, os, subprocess
        status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
        print("CapEff", status["CapEff"].strip())
        print("NoNewPrivs", status["NoNewPrivs"].strip())
        print("Seccomp", status["Seccomp"].strip())
        libc = ctypes.CDLL(None, use_errno=True)
        for flag in (0x10000000, 0x00020000, 0x40000000):  # CLONE_NEWUSER, NEWNS, NEWNET
            print("unshare", hex(flag), libc.unshare(flag), ctypes.get_errno())
        print("mount", libc.mount(b"none", b"/tmp", b"tmpfs", 0, None), ctypes.get_errno())
        for command in (["unshare", "-U", "true"], ["mount", "-t", "tmpfs", "none", "/tmp"]):
            try:
                print(command[0], "exit", subprocess.run(command, capture_output=True).returncode)
            except OSError as error:
                print(command[0], "missing", error)
        """,
    )
    assert "CapEff 0000000000000000" in logs
    assert "NoNewPrivs 1" in logs
    assert "Seccomp 2" in logs
    assert logs.count(" -1 1\n") == 4, logs  # each returned -1 with EPERM
    assert "unshare exit 0" not in logs and "mount exit 0" not in logs


async def test_server_out_of_reach_and_kill_all_harmless(
    backend: BwrapBackend, session: SandboxSession
) -> None:
    logs = await run(
        session,
        f"""
        import os, signal
        try:
            os.kill({os.getpid()}, 0)
            print("server reachable")
        except ProcessLookupError:
            print("server pid absent")
        except PermissionError:
            print("server pid refused")
        print("pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit())[:5])
        """,
    )
    assert "server reachable" not in logs
    # kill(-1) from inside: it can end this session's own processes, nothing else.
    result = await session.run_cell(
        "import subprocess, sys\n"
        "subprocess.run([sys.executable, '-c', 'import os, signal; os.kill(-1, signal.SIGKILL)'])",
        20,
    )
    assert result.state_lost is not None or not result.error
    other = await backend.start()
    try:
        assert "2" in await run(other, "1 + 1")
    finally:
        await other.close()


async def test_sandbox_mapped_to_host_root_is_refused(backend: BwrapBackend) -> None:
    if os.geteuid() != 0:
        pytest.skip("only a server running as root could map the sandbox to root")

    class AsRoot(BwrapBackend):
        """A backend that hands out the host's root as a session's uid (a configuration
        error the guard must catch)."""

        def _uid(self) -> tuple[int, int] | None:
            return 0, -1

    as_root = AsRoot(backend.config)
    with pytest.raises(SandboxUnavailable, match="host's root"):
        await as_root.start()
    await as_root.aclose()


# --- resources -----------------------------------------------------------------------------


async def test_fork_bomb_stopped_while_others_work(backend: BwrapBackend) -> None:
    bomb, other = await backend.start(), await backend.start()
    try:
        logs = await run(
            bomb,
            """
            import os, time
            children, refused = [], None
            for _ in range(400):
                try:
                    pid = os.fork()
                except OSError as error:
                    refused = type(error).__name__
                    break
                if pid == 0:
                    time.sleep(30)
                    os._exit(0)
                children.append(pid)
            print("forked", len(children), "refused", refused)
            """,
        )
        forked = int(logs.split("forked ")[1].split()[0])
        assert forked < 400 and "refused BlockingIOError" in logs, logs
        # While the bomb's children are all alive, another session still starts processes.
        logs = await run(
            other,
            """
            import subprocess, sys
            print([subprocess.run([sys.executable, "-c", "print(7)"], capture_output=True,
                   text=True).stdout.strip() for _ in range(5)])
            """,
        )
        assert "['7', '7', '7', '7', '7']" in logs
    finally:
        await bomb.close()
        await other.close()


async def test_memory_bomb_ends_in_memory_error(session: SandboxSession) -> None:
    result = await session.run_cell(
        "blocks = []\nfor _ in range(10_000):\n    blocks.append(bytearray(64 << 20))", 60
    )
    assert result.error
    assert "MemoryError" in result.logs or result.state_lost is not None, result.logs
    if result.state_lost is None:
        assert "2" in await run(session, "del blocks\n1 + 1")


async def test_endless_loop_interrupted_and_stubborn_one_killed(
    backend: BwrapBackend, session: SandboxSession
) -> None:
    result = await session.run_cell("x = 1\nwhile True:\n    pass", 2)
    assert result.error and result.state_lost is None
    assert "KeyboardInterrupt" in result.logs
    assert "1" in await run(session, "x")  # the state survived the interrupt

    started = time.monotonic()
    result = await session.run_cell(
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass", 2
    )
    assert result.state_lost is not None and result.error
    assert time.monotonic() - started < 20
    assert not session.alive


async def test_disk_fill_stopped_at_the_caps(
    backend: BwrapBackend, session: SandboxSession
) -> None:
    cap = backend.config.limits.data_bytes
    logs = await run(
        session,
        f"""
        import os
        for target in ("/mnt/data/fill", "/tmp/fill"):
            written, error = 0, None
            chunk = b"x" * (8 << 20)
            with open(target, "wb") as handle:
                for _ in range({cap} // len(chunk) + 8):
                    try:
                        handle.write(chunk)
                        handle.flush()
                        written += len(chunk)
                    except OSError as failure:
                        error = type(failure).__name__ + str(failure.errno)
                        break
            os.remove(target)
            print(target, written <= {cap}, error)
        """,
        limit=60,
    )
    assert "/mnt/data/fill True OSError" in logs, logs
    assert "/tmp/fill True OSError" in logs, logs


async def test_huge_output_cut(session: SandboxSession) -> None:
    result = await session.run_cell("for i in range(1_000_000):\n    print('x' * 100)", 60)
    assert len(result.logs) < 70_000
    assert "[output truncated]" in result.logs


async def test_input_errors_instead_of_hanging(session: SandboxSession) -> None:
    started = time.monotonic()
    result = await session.run_cell("input('your name? ')", 20)
    assert result.error and "StdinNotImplementedError" in result.logs
    assert time.monotonic() - started < 10


# --- files and other sessions --------------------------------------------------------------


async def test_planted_links_and_fifos_never_exported(session: SandboxSession) -> None:
    await run(
        session,
        """
        import os
        os.symlink("/etc/passwd", "/mnt/data/link.txt")
        os.symlink("/", "/mnt/data/rootlink")
        os.mkfifo("/mnt/data/pipe.txt")
        os.mkdir("/mnt/data/sub")
        os.symlink("/opt/python/pyvenv.cfg", "/mnt/data/sub/cfg")
        open("/mnt/data/sub/real.txt", "w").write("real")
        """,
    )
    listed = {f.path for f in await session.list_files()}
    assert listed == {"sub/real.txt"}
    for path in ("link.txt", "rootlink/etc/passwd", "pipe.txt", "sub/cfg", "sub", "../etc/passwd"):
        assert await asyncio.wait_for(session.read_file(path, 1 << 20), 5) is None, path
    assert await session.read_file("/mnt/data/sub/real.txt", 1 << 20) == b"real"
    assert await session.read_file("sub/real.txt", 3) is None  # over the cap
    # A link planted where an upload goes is replaced, not written through.
    await run(session, "import os\nos.symlink('/tmp/target', '/mnt/data/upload.csv')")
    assert await session.put_file("upload.csv", b"a,b\n") == "/mnt/data/upload.csv"
    logs = await run(
        session,
        "import os\nprint(os.path.islink('/mnt/data/upload.csv'), os.path.exists('/tmp/target'))",
    )
    assert "False False" in logs


async def test_sessions_cannot_see_each_other(backend: BwrapBackend) -> None:
    first, second = await backend.start(), await backend.start()
    try:
        await run(first, "open('/mnt/data/mine.txt', 'w').write('secret'); import time")
        logs = await run(
            second,
            """
            import os
            print("files", os.listdir("/mnt/data"))
            print("processes", len([p for p in os.listdir("/proc") if p.isdigit()]))
            """,
        )
        assert "files []" in logs
        assert await second.read_file("mine.txt", 100) is None
        assert int(logs.split("processes ")[1].split()[0]) < 10
    finally:
        await first.close()
        await second.close()


def test_no_kernel_left_behind_when_the_server_is_killed(
    backend: BwrapBackend, tmp_path: Path
) -> None:
    script = tmp_path / "server.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys
            from hal9100.config import Settings
            from hal9100.sandbox.bwrap import make_backend

            async def main():
                session = await make_backend(Settings()).start()
                result = await session.run_cell("import os; print(os.getpid())", 30)
                print("started", session.pid, flush=True)
                await asyncio.sleep(600)

            asyncio.run(main())
            """
        )
    )
    server = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("started"), line
        sandbox_pid = int(line.split()[1])
        assert Path(f"/proc/{sandbox_pid}").exists()
    finally:
        server.kill()
        server.wait()
    deadline = time.monotonic() + 10
    while _running(sandbox_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(sandbox_pid), "the sandbox outlived its server"


def _running(pid: int) -> bool:
    """Alive, not a zombie waiting for whoever adopted it to reap it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


async def test_a_session_has_a_cgroup_of_its_own_where_one_can_be_had(
    backend: BwrapBackend, session: SandboxSession
) -> None:
    from hal9100.sandbox.bwrap import BwrapSession

    assert isinstance(session, BwrapSession)
    if session.group is None:
        if os.geteuid() == 0 and _exists("/sys/fs/cgroup/pids/cgroup.procs"):
            pytest.fail("root with cgroup v1's pids hierarchy, yet no cgroup was made")
        pytest.skip("no cgroup can be had here (not root, or no delegated controllers)")
    kernel_pid = int(_read(f"/proc/{session.pid}/task/{session.pid}/children").split()[0])
    memberships = _read(f"/proc/{kernel_pid}/cgroup")
    assert f"session-{session.id}" in memberships
    limits = [d / "pids.max" for d in session.group.directories if (d / "pids.max").exists()]
    assert [p.read_text().strip() for p in limits] == [str(backend.config.limits.processes)]
    directories = list(session.group.directories)
    await session.close()
    assert not any(d.exists() for d in directories)


async def test_the_server_never_follows_links_planted_for_its_kernel_sockets(
    session: SandboxSession, tmp_path: Path
) -> None:
    """The code replaces the kernel's socket names by links to a socket of the host and
    drops the server's connections: the server must not connect anywhere else."""
    import socket as socket_module

    host = socket_module.socket(socket_module.AF_UNIX)
    path = str(tmp_path / "host.sock")
    host.bind(path)
    host.listen(8)
    host.setblocking(False)
    os.chmod(path, 0o777)
    code = f"""
import os, socket
for n in ("1", "2", "3", "4", "5"):
    name = "/run/hal9100/kernel-" + n
    os.rename(name, name + ".orig")
    os.symlink({path!r}, name)
for fd in os.listdir("/proc/self/fd"):
    try:
        if not os.readlink(f"/proc/self/fd/{{fd}}").startswith("socket:"):
            continue
        sock = socket.socket(fileno=os.dup(int(fd)))
        try:
            if sock.family == socket.AF_UNIX and not sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_ACCEPTCONN
            ):
                sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()
    except OSError:
        pass
"""
    await session.run_cell(code, 5)
    await asyncio.sleep(1.5)
    try:
        host.accept()
        reached = True
    except BlockingIOError:
        reached = False
    finally:
        host.close()
    assert not reached, "the server connected to a socket the code chose"


async def test_stderr_floods_do_not_hang_later_cells(session: SandboxSession) -> None:
    await run(
        session,
        "import os, subprocess\n"
        "for _ in range(32):\n    os.write(2, b'x' * 65536)\n"
        "subprocess.run(['sh', '-c', 'head -c 2000000 /dev/zero >&2'])",
    )
    started = time.monotonic()
    logs = await run(
        session, "import subprocess\nsubprocess.run(['sh', '-c', 'echo small >&2'])\nprint('ok')"
    )
    assert "ok" in logs and time.monotonic() - started < 10


async def test_a_huge_message_does_not_reach_the_server(
    backend: BwrapBackend, session: SandboxSession
) -> None:
    result = await session.run_cell(
        "from IPython.display import display\ndisplay({'text/plain': 'A' * (200 << 20)}, raw=True)",
        10,
    )
    assert len(result.logs) < 70_000
    # The session may be gone (its connection dropped): others are not.
    other = await backend.start()
    try:
        assert "2" in await run(other, "1 + 1")
    finally:
        await other.close()


def _read(path: str) -> str:
    return Path(path).read_text()


def _exists(path: str) -> bool:
    return Path(path).exists()


async def test_sessions_of_two_server_processes_never_share_a_uid(backend: BwrapBackend) -> None:
    if os.geteuid() != 0:
        pytest.skip("only a server running as root gives each session a uid of its own")
    other_process = BwrapBackend(backend.config)  # another worker's backend, same range
    mine = [backend._uid() for _ in range(40)]
    theirs = [other_process._uid() for _ in range(40)]
    try:
        uids = [claimed[0] for claimed in [*mine, *theirs] if claimed is not None]
        assert len(uids) == 80 and len(set(uids)) == 80
    finally:
        for claimed in [*mine, *theirs]:
            if claimed is not None:
                os.close(claimed[1])
