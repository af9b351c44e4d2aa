"""Start time, cell latency and memory of the code_interpreter sandbox (bubblewrap backend).

No server: the benchmark drives `hal9100.sandbox.bwrap.make_backend(Settings())` and
`hal9100.sandbox.sessions.Sessions` directly, in this process, the way a worker does. It needs
a sandbox Python (`hal9100 sandbox setup`, or `HAL9100_SANDBOX_PYTHON_DIR`).

1. Cold start: `backend.start()` until the kernel answers, and the same plus the first
   `import numpy, pandas, matplotlib.pyplot` cell (a thread's first cell without the pool).
2. From the pool (pool_size=1, refilled and waited for between repeats): the time for
   `sessions.lease(key)` to yield, and the same import cell in the leased session.
3. Round trip of a trivial cell (`1`), many cells in one session.
4. A cell printing 10,000 lines (the output cap), and a plot cell returning one PNG.
5. Memory of idle sessions (PSS from /proc/<pid>/smaps_rollup, summed over the sandbox's
   processes), fresh and warmed, one alone and ten together; this process's threads, file
   descriptors and RSS per open session.

    HAL9100_SANDBOX_PYTHON_DIR=/tmp/sbenv .venv/bin/python bench/bench_sandbox.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import shlex
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import cast

from hal9100.config import Settings
from hal9100.sandbox.base import CellResult, SandboxBackend, SandboxSession
from hal9100.sandbox.bwrap import BwrapBackend, BwrapSession, make_backend
from hal9100.sandbox.sessions import WARM_UP, Sessions

IMPORTS = "import numpy, pandas, matplotlib.pyplot"
PRINT_LINES = "for i in range(10_000):\n    print('line', i, 'of the output cap test')"
PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2, 4])\nplt.show()"
LIMIT = 120.0


# --------------------------------------------------------------------------- reporting


def command_line() -> str:
    python = sys.executable
    with contextlib.suppress(ValueError):
        python = os.path.relpath(python)
    prefix = ""
    if "HAL9100_SANDBOX_PYTHON_DIR" in os.environ:
        prefix = f"HAL9100_SANDBOX_PYTHON_DIR={os.environ['HAL9100_SANDBOX_PYTHON_DIR']} "
    return prefix + shlex.join([python, *sys.argv])


def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores, {model}; load average {load}"


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def timing(name: str, seconds: list[float]) -> str:
    """One line: milliseconds, p50 / p95 / mean / min / max over the repeats."""
    values = [s * 1000 for s in seconds]
    return (
        f"{name:<48} n={len(values):<4} p50 {percentile(values, 50):8.1f}  "
        f"p95 {percentile(values, 95):8.1f}  mean {statistics.fmean(values):8.1f}  "
        f"min {min(values):8.1f}  max {max(values):8.1f}  ms"
    )


def memory(name: str, kib: list[int]) -> str:
    values = [k / 1024 for k in kib]
    spread = f" (min {min(values):.1f}, max {max(values):.1f})" if len(values) > 1 else ""
    return f"{name:<48} n={len(values):<4} mean {statistics.fmean(values):7.1f} MiB{spread}"


# --------------------------------------------------------------------------- /proc


def descendants(pid: int) -> list[int]:
    """pid and its live descendants, through every thread's `children` list."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    todo.extend(int(child) for child in handle.read().split())
    return found


def rollup(pid: int) -> dict[str, int]:
    """smaps_rollup of one process, in KiB (missing if it has ended)."""
    fields: dict[str, int] = {}
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    fields[parts[0].rstrip(":")] = int(parts[1])
    return fields


def sandbox_memory(session: SandboxSession) -> tuple[int, int, int]:
    """PSS and RSS (KiB) of the sandbox's processes, and how many there are."""
    pids = descendants(cast(BwrapSession, session).pid)
    pss = rss = 0
    for pid in pids:
        fields = rollup(pid)
        pss += fields.get("Pss", 0)
        rss += fields.get("Rss", 0)
    return pss, rss, len(pids)


def own_counts() -> tuple[int, int, int]:
    """This process's threads, open descriptors and RSS (KiB)."""
    threads = len(os.listdir("/proc/self/task"))
    fds = len(os.listdir("/proc/self/fd"))
    return threads, fds, rollup(os.getpid()).get("Rss", 0)


def leftover_pids(roots: list[int]) -> list[str]:
    """Sandbox processes still alive after every session was closed (pid, state, command)."""
    left = []
    for pid in {pid for root in roots for pid in descendants(root)}:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat") as handle:
                stat = handle.read()
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")[:80]
            state, parent = stat[stat.rindex(")") + 2 :].split()[:2]
            left.append(f"{pid} state {state} parent {parent} {command}")
    return left


# --------------------------------------------------------------------------- measurements


async def cell(session: SandboxSession, code: str) -> tuple[float, CellResult]:
    began = time.perf_counter()
    result = await session.run_cell(code, LIMIT)
    elapsed = time.perf_counter() - began
    if result.error or result.state_lost:
        raise RuntimeError(f"cell failed: {code!r}: {result.logs[-1000:]} {result.state_lost}")
    return elapsed, result


class Bench:
    def __init__(self, backend: BwrapBackend, repeat: int, cells: int) -> None:
        self.backend = backend
        self.repeat = repeat
        self.cells = cells
        self.roots: list[int] = []
        """pid 1 of every sandbox started, to check that none is left at the end."""

    async def start(self) -> SandboxSession:
        session = await self.backend.start()
        self.roots.append(cast(BwrapSession, session).pid)
        return session

    async def cold(self) -> None:
        ready, first = [], []
        for _ in range(self.repeat):
            began = time.perf_counter()
            session = await self.start()
            ready.append(time.perf_counter() - began)
            try:
                await cell(session, IMPORTS)
                first.append(time.perf_counter() - began)
            finally:
                await session.close()
        print(timing("cold start (start -> kernel ready)", ready), flush=True)
        print(timing("cold start + first import cell", first), flush=True)

    async def pooled(self) -> None:
        sessions = Sessions(
            cast(SandboxBackend, self.backend),
            pool_size=1,
            idle_seconds=3600,
            max_seconds=7200,
            max_sessions=4,
        )
        sessions.start()
        leased, imported, total = [], [], []
        try:
            for index in range(self.repeat):
                await self._pool_filled(sessions)
                self.roots.extend(cast(BwrapSession, h.session).pid for h in sessions.pool)
                key = f"thread-{index}"
                began = time.perf_counter()
                async with sessions.lease(key) as lease:
                    got = time.perf_counter()
                    leased.append(got - began)
                    # The pool starts its next session meanwhile, as it would in production.
                    elapsed, _ = await cell(lease.session, IMPORTS)
                    imported.append(elapsed)
                    total.append(time.perf_counter() - began)
                await sessions.end(key)
        finally:
            self.roots.extend(cast(BwrapSession, h.session).pid for h in sessions.pool)
            await sessions.aclose()
        print(timing("pool: lease(key) yields", leased), flush=True)
        print(timing("pool: first import cell in the leased session", imported), flush=True)
        print(timing("pool: lease + first import cell", total), flush=True)

    @staticmethod
    async def _pool_filled(sessions: Sessions) -> None:
        deadline = time.monotonic() + 300
        while len(sessions.pool) < sessions.pool_size:
            if time.monotonic() > deadline:
                raise RuntimeError("the pool did not fill within 300 s")
            await asyncio.sleep(0.05)
        # Let the filler's last steps (and the host) settle before timing.
        await asyncio.sleep(0.5)

    async def cells_in_one_session(self) -> None:
        session = await self.start()
        try:
            await cell(session, WARM_UP)
            for _ in range(10):
                await cell(session, "1")
            trivial = [(await cell(session, "1"))[0] for _ in range(self.cells)]
            again = [(await cell(session, IMPORTS))[0] for _ in range(self.repeat)]
            printed, plotted = [], []
            lines = png = 0
            for _ in range(self.repeat):
                elapsed, result = await cell(session, PRINT_LINES)
                printed.append(elapsed)
                lines = result.logs.count("\n")
                elapsed, result = await cell(session, PLOT)
                plotted.append(elapsed)
                if len(result.images) != 1:
                    raise RuntimeError(f"the plot cell returned {len(result.images)} images")
                png = len(result.images[0])
        finally:
            await session.close()
        print(timing("trivial cell `1` round trip", trivial), flush=True)
        print(timing("import cell again, warmed session, no refill", again))
        print(timing("cell printing 10,000 lines (capped)", printed), flush=True)
        print(f"    (its logs kept {lines} lines, the cap is 64 KiB)")
        print(timing("plot cell (plt.plot + plt.show, one PNG)", plotted), flush=True)
        print(f"    (PNG of {png} bytes)")

    async def memory(self, together: int) -> None:
        # One session alone: shared pages (libraries) are all charged to it.
        session = await self.start()
        try:
            await cell(session, "1")
            await asyncio.sleep(1)
            fresh = sandbox_memory(session)
            await cell(session, WARM_UP)
            await asyncio.sleep(1)
            warmed = sandbox_memory(session)
        finally:
            await session.close()
        print(f"one idle session alone ({fresh[2]} processes in its sandbox):")
        print(f"    fresh:  PSS {fresh[0] / 1024:.1f} MiB, RSS {fresh[1] / 1024:.1f} MiB")
        print(f"    warmed: PSS {warmed[0] / 1024:.1f} MiB, RSS {warmed[1] / 1024:.1f} MiB")

        await asyncio.sleep(1)
        before = own_counts()
        group: list[SandboxSession] = []
        try:
            for _ in range(together):
                group.append(await self.start())
            for member in group:
                await cell(member, "1")
            await asyncio.sleep(1)
            after = own_counts()
            fresh_all = [sandbox_memory(member) for member in group]
            for member in group:
                await cell(member, WARM_UP)
            await asyncio.sleep(1)
            warmed_all = [sandbox_memory(member) for member in group]
        finally:
            for member in group:
                await member.close()
        print(f"{together} idle sessions open together, per session:")
        print(memory("    fresh PSS", [m[0] for m in fresh_all]))
        print(memory("    fresh RSS", [m[1] for m in fresh_all]))
        print(memory("    warmed (pooled) PSS", [m[0] for m in warmed_all]))
        print(memory("    warmed (pooled) RSS", [m[1] for m in warmed_all]))
        threads = (after[0] - before[0]) / together
        fds = (after[1] - before[1]) / together
        rss = (after[2] - before[2]) / together / 1024
        print(
            f"this process (the server's side), per open session: {threads:+.1f} threads, "
            f"{fds:+.1f} file descriptors, {rss:+.2f} MiB RSS "
            f"(threads {before[0]} -> {after[0]}, fds {before[1]} -> {after[1]})"
        )


async def main(args: argparse.Namespace) -> int:
    print(f"$ {command_line()}")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {machine()}")
    backend = make_backend(Settings())
    problems = await backend.problems()
    if problems:
        print("the sandbox cannot run here: " + "; ".join(problems))
        return 1
    print(f"sandbox Python: {backend.config.python_dir}; repeats {args.repeat}")
    bench = Bench(backend, args.repeat, args.cells)
    steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("1. cold start", bench.cold),
        ("2. from the warm pool", bench.pooled),
        (f"3-4. cells in one session ({args.cells} trivial cells)", bench.cells_in_one_session),
        ("5. memory per idle session", lambda: bench.memory(args.together)),
    ]
    try:
        for title, step in steps:
            print(f"\n{title}", flush=True)
            await step()
    finally:
        await backend.aclose()
    # Also bubblewrap's outer processes, children of this one. A killed sandbox's pid 1 can
    # outlive its bubblewrap parent as a zombie, reparented to the host's init: wait for it.
    roots = [*bench.roots, *descendants(os.getpid())[1:]]
    began = time.monotonic()
    zombies_seen = 0
    while (left := leftover_pids(roots)) and time.monotonic() - began < 30:
        zombies_seen = max(zombies_seen, sum(" state Z " in line for line in left))
        await asyncio.sleep(0.5)
    live = [line for line in left if " state Z " not in line]
    print(
        f"\nsandboxes started: {len(bench.roots)}; after closing them all: {zombies_seen} "
        f"zombie sandbox processes reaped by the host's init within "
        f"{time.monotonic() - began:.1f} s; left: {len(live)} running, "
        f"{len(left) - len(live)} zombies"
    )
    for line in left:
        print(f"    {line}")
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 1 if live else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10, help="repeats of each start/cell")
    parser.add_argument("--cells", type=int, default=200, help="trivial cells for step 3")
    parser.add_argument("--together", type=int, default=10, help="sessions open in step 5")
    sys.exit(asyncio.run(main(parser.parse_args())))
