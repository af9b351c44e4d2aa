"""The seccomp filter bubblewrap loads into the code_interpreter sandbox (`bwrap --seccomp FD`).

Everything is allowed except what a data-analysis kernel never needs and what widens the
kernel's attack surface, after Flatpak's and bubblewrap's demo filter and Docker's default
profile. Namespaces, mounts, keyrings, tracing, BPF, io_uring, modules and clock setting are
refused with EPERM, so a cell sees an ordinary error rather than dying.

Only the native architecture is in the filter; a syscall made through any other ABI (`int 0x80`
into the 32-bit table, x32 numbers) kills the process, so the 32-bit tables, whose numbers and
multiplexed `socketcall`/`ipc` the rules below do not describe, are never reachable.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import socket
import termios
from collections.abc import Callable
from types import ModuleType
from typing import Any

from hal9100.sandbox.base import SandboxUnavailable

_Rule = Callable[..., None]
"""`rule(action, syscall_name, *pyseccomp.Arg)`: adds a rule, skipping unknown syscalls."""

DENIED_SYSCALLS: tuple[str, ...] = (
    # Namespaces and the mount table: the sandbox's own layout is the boundary.
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "mount_setattr",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    # Kernel keyrings are not namespaced.
    "keyctl",
    "add_key",
    "request_key",
    # Looking into or driving other processes.
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    # Large, often-exploited kernel surfaces with no use in a notebook.
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    # Host administration; most need capabilities we dropped, refusing them early is cheap.
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "lookup_dcookie",
    "syslog",
    "vhangup",
    "uselib",
    "nfsservctl",
    "iopl",
    "ioperm",
    # File handles bypass the mount namespace (the "shocker" container escape).
    "open_by_handle_at",
    "name_to_handle_at",
    # Clocks are global.
    "clock_settime",
    "settimeofday",
    "adjtimex",
    "clock_adjtime",
)
"""Refused outright with EPERM (names this libseccomp does not know here are skipped)."""

CLONE_NAMESPACE_FLAGS: tuple[int, ...] = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
"""`clone` with any of these is refused. CLONE_NEWTIME (0x80) is missing on purpose: in clone(2)
that bit belongs to the exit-signal byte, the kernel only honours it in clone3 and unshare,
both refused whole."""

ALLOWED_SOCKET_FAMILIES: tuple[int, ...] = (
    socket.AF_UNIX,
    socket.AF_INET,
    socket.AF_INET6,
    socket.AF_NETLINK,
)
"""Every other family (packet, vsock, bluetooth, ...) gets EAFNOSUPPORT.

AF_NETLINK is here only for NETLINK_ROUTE (see `_add_socket_rules`): getifaddrs(3) needs it, and
libzmq calls that on every TCP bind and aborts the process when it fails, which would take the
Jupyter kernel down. In the sandbox's empty network namespace, with no capabilities, it lists
the loopback device and changes nothing."""

_PERSONALITY_QUERY = 0xFFFFFFFF
_LOW32 = 0xFFFFFFFF


@functools.cache
def filter_program() -> bytes:
    """The compiled classic-BPF filter (a `struct sock_filter` array) for `bwrap --seccomp`.

    Built once per process. Raises `SandboxUnavailable` when libseccomp cannot be loaded or
    refuses the rules, so the tool fails closed instead of running unfiltered.
    """
    try:
        import pyseccomp
    except (ImportError, OSError) as exc:
        raise SandboxUnavailable(f"libseccomp is not available: {exc}") from exc
    try:
        flt = _build(pyseccomp)
        return _export(flt)
    except OSError as exc:
        raise SandboxUnavailable(f"could not build the seccomp filter: {exc}") from exc


def filter_fd() -> int:
    """A new readable fd at offset 0 holding `filter_program()`, for `pass_fds` to bwrap.

    The caller owns it and closes it once bwrap has started. It is close-on-exec (pass_fds
    clears that in the child) and sealed, so nothing can change the program after we wrote it.
    """
    program = filter_program()
    fd = os.memfd_create("hal9100-seccomp", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, program)
        fcntl.fcntl(
            fd,
            fcntl.F_ADD_SEALS,
            fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL,
        )
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _build(sc: ModuleType) -> Any:
    flt = sc.SyscallFilter(sc.ALLOW)
    try:
        flt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    except OSError:
        # KILL_PROCESS needs a newer API level than some hosts report; killing the thread still
        # stops the call.
        flt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL)
    eperm = sc.ERRNO(errno.EPERM)

    def rule(action: int, name: str, *args: Any) -> None:
        nr = sc.resolve_syscall(sc.Arch.NATIVE, name)
        if nr < 0:
            return  # not a syscall on this architecture: nothing to refuse
        flt.add_rule(action, nr, *args)

    for name in DENIED_SYSCALLS:
        rule(eperm, name)

    # glibc tries clone3 first and falls back to clone on ENOSYS; clone3 passes its flags in
    # memory a filter cannot read, while clone's flags are a register we can check.
    rule(sc.ERRNO(errno.ENOSYS), "clone3")
    clone_flags_arg = 1 if sc.system_arch() in (sc.Arch.S390, sc.Arch.S390X) else 0
    for flag in CLONE_NAMESPACE_FLAGS:
        rule(eperm, "clone", sc.Arg(clone_flags_arg, sc.MASKED_EQ, flag, flag))

    # The kernel reads an ioctl's request as 32 bits; comparing only those stops a caller from
    # slipping past with high bits set (CVE-2019-10063 in Flatpak).
    for request in (termios.TIOCSTI, getattr(termios, "TIOCLINUX", 0x541C)):
        rule(eperm, "ioctl", sc.Arg(1, sc.MASKED_EQ, _LOW32, request))

    _add_socket_rules(sc, rule)
    _add_personality_rules(sc, rule, eperm)
    return flt


def _add_socket_rules(sc: ModuleType, rule: _Rule) -> None:
    # One comparison per rule (libseccomp refuses two on one argument), so refuse the gaps
    # between allowed families and everything above. The comparison is 64-bit, so any value
    # with high bits set, whatever its low 32 bits (all the kernel reads), falls under GE.
    eafnosupport = sc.ERRNO(errno.EAFNOSUPPORT)
    previous = -1
    for family in sorted(ALLOWED_SOCKET_FAMILIES):
        for refused in range(previous + 1, family):
            rule(eafnosupport, "socket", sc.Arg(0, sc.EQ, refused))
        previous = family
    rule(eafnosupport, "socket", sc.Arg(0, sc.GE, previous + 1))
    # Netlink's other protocols (audit, netfilter, uevents, generic families, ...) are where
    # its bugs live. 64-bit NE again refuses any protocol with high bits set.
    rule(
        sc.ERRNO(errno.EPROTONOSUPPORT),
        "socket",
        sc.Arg(0, sc.EQ, socket.AF_NETLINK),
        sc.Arg(2, sc.NE, socket.NETLINK_ROUTE),
    )


def _add_personality_rules(sc: ModuleType, rule: _Rule, eperm: int) -> None:
    # Allowed: PER_LINUX (0) and the 0xffffffff query, both exactly as a 64-bit register holds
    # them (a sign-extended -1 query is refused, as in Docker); no 32-bit emulation, no
    # ADDR_NO_RANDOMIZE, no READ_IMPLIES_EXEC. "Neither 0 nor 0xffffffff" needs two comparisons
    # on one argument, which libseccomp refuses, so it is spelled as single-comparison rules:
    # anything above 32 bits, and any low word that is not all zeros or all ones, which is one
    # that has a set bit whose cyclic neighbour is clear.
    rule(eperm, "personality", sc.Arg(0, sc.GT, _PERSONALITY_QUERY))
    for bit in range(32):
        pair = (1 << bit) | (1 << ((bit + 1) % 32))
        rule(eperm, "personality", sc.Arg(0, sc.MASKED_EQ, pair, 1 << bit))


def _export(flt: Any) -> bytes:
    fd = os.memfd_create("hal9100-seccomp-export", os.MFD_CLOEXEC)
    with os.fdopen(fd, "w+b") as out:
        flt.export_bpf(out)
        out.seek(0)
        program = out.read()
    if not program or len(program) % 8:
        raise OSError(errno.EINVAL, f"libseccomp wrote a malformed program ({len(program)} bytes)")
    return program
