"""The seccomp filter of the code_interpreter sandbox, checked from inside a real bwrap sandbox."""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from hal9100.sandbox.seccomp import filter_fd, filter_program

BWRAP = shutil.which("bwrap")
PYTHON = "/usr/bin/python3"

# Runs inside the sandbox as an unprivileged uid and reports what each call gave, so that one
# sandbox start (~0.1 s) covers every check.
PROBE = textwrap.dedent(
    r"""
    import ctypes, errno, json, mmap, os, platform, signal, socket, subprocess, termios, threading

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    out = {}

    def call(name, fn, *args):
        ctypes.set_errno(0)
        rc = fn(*args)
        out[name] = 0 if rc >= 0 else ctypes.get_errno()
        return rc

    def raw(name, nr, *args):
        return call(name, libc.syscall, ctypes.c_long(nr), *(ctypes.c_ulong(a) for a in args))

    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    out["status"] = {k: status[k].strip() for k in ("Seccomp", "NoNewPrivs", "CapEff")}
    out["uid"] = os.getuid()

    CLONE_NEWNS, CLONE_NEWUSER, SIGCHLD = 0x20000, 0x10000000, 17
    call("unshare_user", libc.unshare, CLONE_NEWUSER)
    call("unshare_ns", libc.unshare, CLONE_NEWNS)
    call("setns", libc.setns, os.open("/proc/self/ns/net", os.O_RDONLY), 0)
    call("mount", libc.mount, b"none", b"/tmp", b"tmpfs", 0, None)
    call("chroot", libc.chroot, b"/tmp")
    call("ptrace_traceme", libc.ptrace, 0, 0, None, None)
    call("keyctl", libc.syscall, ctypes.c_long(250), ctypes.c_long(0))  # KEYCTL_GET_KEYRING_ID
    call("bpf", libc.syscall, ctypes.c_long(321), 0, None, 0)
    call("io_uring_setup", libc.syscall, ctypes.c_long(425), 1, None)
    call("userfaultfd", libc.syscall, ctypes.c_long(323), 0)
    call("perf_event_open", libc.syscall, ctypes.c_long(298), None, 0, -1, -1, 0)

    # Raw clone: a success would put a second copy of this interpreter in an odd state, so a
    # child that got through leaves at once and the parent reports it.
    for name, flags in (("clone_newns", CLONE_NEWNS), ("clone_newuser", CLONE_NEWUSER)):
        pid = raw(name, 56, flags | SIGCHLD, 0, 0, 0, 0)
        if pid == 0:
            os._exit(0)
        if pid > 0:
            os.waitpid(pid, 0)
    raw("clone3", 435, 0, 0)

    def sock(name, family, kind=socket.SOCK_RAW):
        try:
            socket.socket(family, kind).close()
            out[name] = 0
        except OSError as exc:
            out[name] = exc.errno

    sock("socket_netlink_route", socket.AF_NETLINK)
    out["getifaddrs"] = [name for _, name in socket.if_nameindex()]
    for proto in (9, 12, 15, 16):  # AUDIT, NETFILTER, KOBJECT_UEVENT, GENERIC
        try:
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto).close()
            out["socket_netlink_other"] = 0
            break
        except OSError as exc:
            out["socket_netlink_other"] = exc.errno
    sock("socket_packet", socket.AF_PACKET)
    sock("socket_vsock", 40, socket.SOCK_STREAM)
    sock("socket_unix", socket.AF_UNIX, socket.SOCK_STREAM)
    sock("socket_inet", socket.AF_INET, socket.SOCK_DGRAM)
    sock("socket_inet6", socket.AF_INET6, socket.SOCK_DGRAM)
    # The kernel reads only the low 32 bits of the family; high bits must not smuggle netlink in.
    fd = raw("socket_packet_highbits", 41, (1 << 32) | socket.AF_PACKET, socket.SOCK_RAW, 0)
    if fd >= 0:
        os.close(fd)
    fd = raw("socket_netlink_audit_highbits", 41, socket.AF_NETLINK, socket.SOCK_RAW, (1 << 32) | 9)
    if fd >= 0:
        os.close(fd)

    # As C passes it (unsigned long); ctypes would turn a bare 0xFFFFFFFF into a sign-extended -1.
    call("personality_query", libc.personality, ctypes.c_ulong(0xFFFFFFFF))
    call("personality_query_sign_extended", libc.personality, -1)
    call("personality_linux", libc.personality, 0)
    call("personality_linux32", libc.personality, 0x0008)
    call("personality_no_aslr", libc.personality, 0x0040000)
    call("personality_read_implies_exec", libc.personality, 0x0400000)

    master, slave = os.openpty()
    char = ctypes.c_char(b"x")
    call("ioctl_tiocsti", libc.ioctl, slave, termios.TIOCSTI, ctypes.byref(char))
    raw("ioctl_tiocsti_highbits", 16, slave, (1 << 32) | termios.TIOCSTI, ctypes.addressof(char))
    call("ioctl_tiocgwinsz", libc.ioctl, slave, termios.TIOCGWINSZ, ctypes.create_string_buffer(8))

    out["subprocess"] = subprocess.run(["/usr/bin/true"]).returncode
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    out["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    seen = []
    threads = [threading.Thread(target=seen.append, args=(i * i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["threads"] = sorted(seen)
    out["arith"] = sum(i * i for i in range(1000))
    out["listdir"] = "bin" in os.listdir("/usr")
    a, b = socket.socketpair()
    a.sendall(b"ping")
    out["socketpair"] = b.recv(4).decode()

    # A 32-bit syscall (int 0x80, getpid) from a 64-bit process: that ABI is not in the filter,
    # so the process must die of SIGSYS rather than reach an unfiltered syscall table.
    if platform.machine() == "x86_64":
        pid = os.fork()
        if pid == 0:
            code = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            code.write(bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3]))  # mov eax,20; int 0x80; ret
            ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(code)))()
            os._exit(0)
        status = os.waitpid(pid, 0)[1]
        out["int80_signal"] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None

    print(json.dumps(out))
    """
)


def _bwrap_or_skip() -> str:
    if BWRAP is None:
        if os.environ.get("HAL9100_REQUIRE_SANDBOX") == "1":
            pytest.fail("bwrap is missing and HAL9100_REQUIRE_SANDBOX=1")
        pytest.skip("bwrap is not installed (set HAL9100_REQUIRE_SANDBOX=1 to make this fail)")
    return BWRAP


def _run_in_sandbox(script: str) -> subprocess.CompletedProcess[str]:
    bwrap = _bwrap_or_skip()
    # The sandbox must run unprivileged, as in production: drop root before bwrap starts.
    prefix = (
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    )
    fd = filter_fd()
    try:
        argv = [
            *prefix,
            bwrap,
            "--unshare-all",
            # --unshare-all only *tries* the user namespace; --disable-userns insists on it.
            "--unshare-user",
            "--die-with-parent",
            "--disable-userns",
            "--cap-drop",
            "ALL",
            "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64",
            "--symlink", "usr/bin", "/bin",
            "--proc", "/proc",
            "--dev", "/dev",
            "--tmpfs", "/tmp",
            "--seccomp", str(fd),
            "--", PYTHON, "-c", script,
        ]  # fmt: skip
        return subprocess.run(argv, pass_fds=(fd,), capture_output=True, text=True, timeout=60)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def probe() -> dict[str, Any]:
    done = _run_in_sandbox(PROBE)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_program_is_a_sock_filter_array_ending_in_a_return() -> None:
    program = filter_program()
    assert program is filter_program()  # built once
    assert program and len(program) % 8 == 0
    assert len(program) // 8 <= 4096  # BPF_MAXINSNS
    code = struct.unpack_from("<H", program, len(program) - 8)[0]
    assert code & 0x07 == 0x06  # BPF_RET


def test_filter_fd_is_readable_from_zero_and_sealed() -> None:
    fd = filter_fd()
    try:
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
        assert os.read(fd, len(filter_program()) + 1) == filter_program()
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"\0" * 8, 0)
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)


def test_filter_refuses_namespaces_where_it_alone_stands_in_the_way() -> None:
    """As root outside bwrap these calls would succeed, so only the filter can refuse them."""
    if os.geteuid() != 0:
        pytest.skip("needs root, for whom unshare and clone(CLONE_NEWNS) otherwise succeed")
    script = textwrap.dedent(
        """
        import ctypes, os, sys
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        program = sys.stdin.buffer.read()
        buf = ctypes.create_string_buffer(program, len(program))
        class Prog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
        prog = Prog(len(program) // 8, ctypes.addressof(buf))
        assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
        assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0  # PR_SET_SECCOMP, FILTER
        res = []
        for fn, args in ((libc.unshare, (0x20000,)), (libc.syscall, (56, 0x20000 | 17, 0, 0, 0, 0))):
            rc = fn(*args)
            if rc == 0 and fn is libc.syscall:
                os._exit(0)
            res.append(ctypes.get_errno() if rc < 0 else 0)
        print(*res)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=filter_program(),
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(errno.EPERM).encode()] * 2


def test_sandbox_is_confined(probe: dict[str, Any]) -> None:
    assert probe["status"] == {
        "Seccomp": "2",
        "NoNewPrivs": "1",
        "CapEff": "0000000000000000",
    }
    assert probe["uid"] == 65534 or os.geteuid() != 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("unshare_user", errno.EPERM),
        ("unshare_ns", errno.EPERM),
        ("setns", errno.EPERM),
        ("mount", errno.EPERM),
        ("chroot", errno.EPERM),
        ("ptrace_traceme", errno.EPERM),
        ("keyctl", errno.EPERM),
        ("bpf", errno.EPERM),
        ("io_uring_setup", errno.EPERM),
        ("userfaultfd", errno.EPERM),
        ("perf_event_open", errno.EPERM),
        ("clone_newns", errno.EPERM),
        ("clone_newuser", errno.EPERM),
        ("clone3", errno.ENOSYS),
        ("socket_netlink_other", errno.EPROTONOSUPPORT),
        ("socket_netlink_audit_highbits", errno.EPROTONOSUPPORT),
        ("socket_packet", errno.EAFNOSUPPORT),
        ("socket_vsock", errno.EAFNOSUPPORT),
        ("socket_packet_highbits", errno.EAFNOSUPPORT),
        # Harmless (the kernel reads 32 bits), but only the exact query is let through, as Docker.
        ("personality_query_sign_extended", errno.EPERM),
        ("personality_linux32", errno.EPERM),
        ("personality_no_aslr", errno.EPERM),
        ("personality_read_implies_exec", errno.EPERM),
        ("ioctl_tiocsti", errno.EPERM),
        ("ioctl_tiocsti_highbits", errno.EPERM),
    ],
)
def test_refused(probe: dict[str, Any], name: str, expected: int) -> None:
    assert probe[name] == expected, f"{name}: got {errno.errorcode.get(probe[name], probe[name])}"


@pytest.mark.parametrize(
    "name",
    [
        "socket_unix",
        "socket_inet",
        "socket_inet6",
        "socket_netlink_route",
        "personality_query",
        "personality_linux",
        "ioctl_tiocgwinsz",
    ],
)
def test_allowed(probe: dict[str, Any], name: str) -> None:
    assert probe[name] == 0, f"{name}: got {errno.errorcode.get(probe[name], probe[name])}"


def test_ordinary_work_goes_on(probe: dict[str, Any]) -> None:
    assert probe["subprocess"] == 0
    assert probe["fork"] == 7
    assert probe["threads"] == [0, 1, 4, 9]
    assert probe["arith"] == 332833500
    assert probe["listdir"] is True
    assert probe["socketpair"] == "ping"
    assert probe["getifaddrs"] == ["lo"]  # libzmq's TCP bind depends on this


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the 32-bit ABI check is x86-only")
def test_32bit_syscall_abi_kills_the_process(probe: dict[str, Any]) -> None:
    assert probe["int80_signal"] == signal.SIGSYS
