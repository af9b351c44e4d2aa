"""1,000 streamed runs in flight at once on one machine, embedded and production.

For each mode, a HAL-9100 deployment answering from the scripted LLM (tests/scripted_llm.py,
in a thread of this process) whose every answer is `[[slow:MS]] [[tokens:N]]` (default 20
one-word chunks 50 ms apart: about 1 s of LLM time per run, so the runs overlap for real):

* embedded: one `hal9100 serve` (SQLite, runs executed in-process), started as bench_runs.py
  starts it, HAL9100_WORKER_CONCURRENCY = the number of runs;
* production: as bench_production.py deploys it (tests/deployments.py's `start_production`:
  PostgreSQL, Redis, moto S3, 2 API processes, N `hal9100 worker` processes, default 2),
  HAL9100_WORKER_CONCURRENCY = runs / workers + 25% per worker; its database, Redis keys and
  bucket are removed at the end, also on errors.

The threads (each with its user message) are created beforehand, untimed. Then every run is
opened at once (`POST /v1/threads/{id}/runs` with `stream: true`, one raw httpx.AsyncClient
allowing that many connections) and each stream is read to `event: done`: it must end with
`thread.run.completed` and its `thread.message.delta` events must add up to the whole
answer. Reported: completion latency (create → done) p50/p99/max, wall time, runs/s, how many
runs were in progress at once (LLM streams open, and client streams between their first delta
and their end), peak RSS of the HAL-9100 processes (VmRSS summed over each process and its
descendants, sampled every 100 ms; PostgreSQL and Redis apart) against the value before the
burst, and every error (HTTP status, failed runs, missing deltas, warnings/errors/tracebacks
in the server logs). Exit status 1 if anything failed or errored.

    .venv/bin/python bench/bench_inflight.py [--mode embedded production] [--runs 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_production import (  # noqa: E402
    API_PROCESSES,
    create_assistant,
    create_threads,
    log_counts,
    run_rows,
    wait_workers_ready,
)
from bench_runs import (  # noqa: E402
    PROBLEM_MARKERS,
    TERMINAL,
    command_line,
    full_logs,
    git_revision,
    log_problems,
    ms,
    percentile,
    table,
)

import scripted_llm  # noqa: E402
from deployments import (  # noqa: E402
    Deployment,
    MotoServer,
    production_unavailable,
    server_env,
    start_embedded,
    start_production,
)
from scripted_llm import ScriptedLLM  # noqa: E402

MODES = ("embedded", "production")
COUNT_EVERY = 0.05  # s between samples of the in-progress counts
MEMORY_EVERY = 2  # samples of the counts per sample of memory (every 100 ms)
TREE_EVERY = 1.0  # s between rescans of /proc for the processes to measure


# --------------------------------------------------------------------------- the machine


def raise_fd_limit() -> tuple[int, int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (the servers started after inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard


def scan_proc() -> dict[int, tuple[int, str, str]]:
    """Every process: pid -> (parent pid, command name, start time in ticks)."""
    processes: dict[int, tuple[int, str, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                data = handle.read()
        except OSError:
            continue
        name = data[data.index("(") + 1 : data.rindex(")")]
        fields = data[data.rindex(")") + 2 :].split()
        processes[int(entry)] = (int(fields[1]), name, fields[19])
    return processes


def descendants(roots: list[int], processes: dict[int, tuple[int, str, str]]) -> list[int]:
    """The roots (those alive) and all their descendants."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _name, _start) in processes.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [pid for pid in roots if pid in processes]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def rss_kb(pid: int, key: str = "VmRSS:") -> int:
    """VmRSS (or another /proc/<pid>/status size) of one process in kB, 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def mb(kb: float) -> str:
    return f"{kb / 1024:.0f}"


# --------------------------------------------------------------------------- counting runs


@dataclass
class Gauge:
    """A count of things in progress, with its exact peak (updated by one thread)."""

    now: int = 0
    peak: int = 0

    def up(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def down(self) -> None:
        self.now -= 1


@contextlib.contextmanager
def counting_llm_streams(llm: ScriptedLLM) -> Iterator[Gauge]:
    """Count the scripted LLM's streamed answers being sent (its own thread updates it): the
    runs that are in their model call. Wraps the LLM's connection handler in this process."""
    gauge = Gauge()
    original = scripted_llm._Connection._stream

    async def counted(self: Any, renderer: Any, script: Any) -> None:
        counts = self.owner is llm
        if counts:
            gauge.up()
        try:
            await original(self, renderer, script)
        finally:
            if counts:
                gauge.down()

    scripted_llm._Connection._stream = counted  # type: ignore[method-assign]
    try:
        yield gauge
    finally:
        scripted_llm._Connection._stream = original  # type: ignore[method-assign]


@dataclass
class ClientGauges:
    open: Gauge = field(default_factory=Gauge)  # sent, not ended
    streaming: Gauge = field(default_factory=Gauge)  # first delta seen, not ended
    ended: int = 0


@dataclass
class Sample:
    t: float
    open: int
    streaming: int
    ended: int
    llm: int
    rss: dict[str, int] | None = None  # group -> kB


class Sampler(threading.Thread):
    """Every 50 ms the in-progress counts; every 100 ms the RSS of each process group.

    `groups` maps a name to root pids (the group is them and their descendants); `services`
    maps a name to a command name (every process called so, e.g. all PostgreSQL backends).
    """

    def __init__(
        self,
        groups: dict[str, list[int]],
        services: dict[str, str],
        client: ClientGauges,
        llm: Gauge,
    ) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.groups = groups
        self.services = services
        self.client = client
        self.llm = llm
        self.samples: list[Sample] = []
        self.started = time.perf_counter()
        self.seen: dict[int, str] = {}  # every HAL-9100 pid measured -> its start time
        self._halt = threading.Event()
        self._members: dict[str, list[int]] = {}
        self._scanned = -math.inf

    def members(self) -> dict[str, list[int]]:
        if time.perf_counter() - self._scanned >= TREE_EVERY:
            processes = scan_proc()
            members = {name: descendants(roots, processes) for name, roots in self.groups.items()}
            for pids in members.values():
                for pid in pids:
                    self.seen[pid] = processes[pid][2]
            for name, command in self.services.items():
                members[name] = [p for p, (_pp, n, _s) in processes.items() if n == command]
            self._members = members
            self._scanned = time.perf_counter()
        return self._members

    def memory(self) -> dict[str, int]:
        members = self.members()
        memory = {name: sum(rss_kb(p) for p in pids) for name, pids in members.items()}
        # A service's processes share memory (PostgreSQL's shared buffers are in every
        # backend's VmRSS): their private memory too.
        for name in self.services:
            if not name.startswith("PostgreSQL"):
                continue
            memory[f"{name}, RssAnon"] = sum(rss_kb(p, "RssAnon:") for p in members[name])
        return memory

    def run(self) -> None:
        for tick in itertools.count():
            sample = Sample(
                time.perf_counter() - self.started,
                self.client.open.now,
                self.client.streaming.now,
                self.client.ended,
                self.llm.now,
            )
            if tick % MEMORY_EVERY == 0:
                sample.rss = self.memory()
            self.samples.append(sample)
            if self._halt.wait(COUNT_EVERY):
                return

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def peak(self, group: str) -> int:
        return max((s.rss[group] for s in self.samples if s.rss), default=0)


# --------------------------------------------------------------------------- one stream


@dataclass
class StreamResult:
    seconds: float
    status: str
    run_id: str | None = None
    detail: str = ""
    deltas: int = 0
    text: str = ""


async def stream_run(
    client: httpx.AsyncClient,
    url: str,
    thread_id: str,
    assistant_id: str,
    gauges: ClientGauges,
) -> StreamResult:
    """One streamed run, read to `event: done`, its deltas decoded and joined."""
    result = StreamResult(0.0, "no terminal event")
    event: str | None = None
    events: list[str] = []
    parts: list[str] = []
    streaming = False
    gauges.open.up()
    started = time.perf_counter()
    try:
        async with client.stream(
            "POST",
            f"{url}/v1/threads/{thread_id}/runs",
            json={"assistant_id": assistant_id, "stream": True},
        ) as response:
            if response.status_code != 200:
                await response.aread()
                result.status = f"HTTP {response.status_code}"
                result.detail = response.text[:500]
                return result
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                    events.append(event)
                    if event == "done":
                        break
                elif line.startswith("data: ") and event is not None:
                    if event == "thread.message.delta":
                        data = json.loads(line[6:])
                        for part in data["delta"].get("content") or []:
                            parts.append(((part.get("text") or {}).get("value")) or "")
                        result.deltas += 1
                        if not streaming:
                            streaming = True
                            gauges.streaming.up()
                    elif event == "thread.run.created":
                        result.run_id = json.loads(line[6:]).get("id")
                    elif event.startswith("thread.run.") and event.rsplit(".", 1)[1] in TERMINAL:
                        data = json.loads(line[6:])
                        result.status = data.get("status") or event.rsplit(".", 1)[1]
                        if data.get("last_error"):
                            result.detail = json.dumps(data["last_error"])
                    elif event == "error":
                        result.status = "error event"
                        result.detail = line[6:][:500]
            else:
                result.detail = f"stream ended without `done`; last events: {events[-3:]}"
                if result.status == "completed":
                    result.status = "completed, no done"
    except httpx.HTTPError as exc:
        result.status = f"{type(exc).__name__} after {len(events)} events"
        result.detail = f"{exc!r}"[:300] + f"; last events: {events[-3:]}"
    finally:
        result.seconds = time.perf_counter() - started
        result.text = "".join(parts)
        gauges.open.down()
        if streaming:
            gauges.streaming.down()
        gauges.ended += 1
    return result


async def burst(
    urls: list[str],
    threads: list[str],
    assistant_id: str,
    gauges: ClientGauges,
    read_timeout: float,
) -> tuple[float, list[StreamResult]]:
    """Every run opened at once (spread over the API processes), each read to its end."""
    limits = httpx.Limits(
        max_connections=len(threads) + 64, max_keepalive_connections=len(threads) + 64
    )
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(read_timeout, connect=60), limits=limits
    ) as client:
        spread = itertools.cycle(urls)
        started = time.perf_counter()
        results = await asyncio.gather(
            *(stream_run(client, next(spread), t, assistant_id, gauges) for t in threads)
        )
        return time.perf_counter() - started, list(results)


async def prepare(urls: list[str], texts: list[str]) -> tuple[str, list[str]]:
    async with httpx.AsyncClient(timeout=120) as client:
        assistant_id = await create_assistant(client, urls[0])
        threads = await create_threads(client, urls, texts)
    return assistant_id, threads


# --------------------------------------------------------------------------- one mode


@dataclass
class ModeResult:
    mode: str
    config: str
    wall: float
    results: list[StreamResult]
    expected: str
    sampler: Sampler
    before: dict[str, int]
    llm_peak: int
    llm_calls: Counter[int]
    hal_groups: list[str]
    service_groups: list[str]
    load_after: float
    problems: str = ""
    summary: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    log_counts: Counter[str] = field(default_factory=Counter)

    def bad(self, result: StreamResult) -> str | None:
        """Why this run is an error, or None."""
        if result.status != "completed":
            return result.status
        if result.text != self.expected:
            if not result.detail:
                result.detail = f"{result.deltas} deltas, text {result.text[:80]!r}"
            return "completed, but its deltas do not add up to the answer"
        return None

    @property
    def errors(self) -> list[tuple[StreamResult, str]]:
        out = []
        for result in self.results:
            reason = self.bad(result)
            if reason is not None:
                out.append((result, reason))
        return out

    @property
    def failed(self) -> bool:
        return bool(self.errors or self.problems)


_IDS = re.compile(r"\b(run|thread|msg|step|asst|file|vs|call|resp)_[A-Za-z0-9]+")
_NUMBERS = re.compile(r"\b(?:[0-9a-f]{32}|\d{6,}(?:\.\d+)?)\b")


def _fold(line: str) -> str:
    """A log line with its object ids, job keys and timestamps folded, for counting."""
    return _NUMBERS.sub("*", _IDS.sub(r"\1_*", line))[:200]


def error_summary(deployment: Deployment, limit: int = 12) -> list[str]:
    """Each log's ERROR/WARNING/CRITICAL messages and the exceptions its tracebacks end
    with, counted (object ids replaced by `_*`), most frequent first."""
    out = []
    for name, text in full_logs(deployment).items():
        counts: Counter[str] = Counter()
        in_traceback = False
        for line in text.splitlines():
            if line.startswith("Traceback ("):
                in_traceback = True
            elif in_traceback and line and not line[0].isspace():
                in_traceback = False
                counts["exception: " + _fold(line)] += 1
            elif any(m in line for m in PROBLEM_MARKERS if m != "Traceback"):
                message = line.split(" ", 2)[2] if line[:2].isdigit() else line
                counts[_fold(message)] += 1
        if counts:
            out.append(f"{name}:")
            out += [f"  {n:5d} x {what}" for what, n in counts.most_common(limit)]
    return out


def leftovers(seen: dict[int, str]) -> list[int]:
    """Processes we started (pid and start time both match) that are still alive."""
    processes = scan_proc()
    return [pid for pid, start in seen.items() if pid in processes and processes[pid][2] == start]


def kill_leftovers(seen: dict[int, str]) -> list[int]:
    alive = leftovers(seen)
    for pid in alive:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return alive


def deploy(
    mode: str, env: dict[str, str], root: Path, moto: MotoServer | None, workers: int
) -> Deployment:
    if mode == "embedded":
        return start_embedded(env, root / "embedded")
    assert moto is not None
    deployment = start_production(
        env,
        root / "production",
        moto=moto,
        api_processes=API_PROCESSES,
        worker_processes=workers,
    )
    try:
        wait_workers_ready(deployment)
    except BaseException:
        deployment.stop()
        raise
    return deployment


def worker_concurrency(mode: str, args: argparse.Namespace) -> int:
    if args.worker_concurrency:
        return int(args.worker_concurrency)
    if mode == "embedded":
        return int(args.runs)
    # A worker's shared run lane gets 7/8 of its concurrency (1/8 is its own lane): 25% more
    # than its share of the runs leaves every run a slot even if the split is a bit uneven.
    return math.ceil(args.runs / args.workers * 1.25)


def db_pool_size(args: argparse.Namespace) -> int:
    if args.db_pool_size:
        return int(args.db_pool_size)
    # Each process may open 2 x the pool; keep the deployment under PostgreSQL's default 100.
    return max(1, min(10, 90 // (2 * (API_PROCESSES + args.workers))))


def run_mode(
    mode: str, args: argparse.Namespace, root: Path, moto: MotoServer | None
) -> ModeResult:
    concurrency = worker_concurrency(mode, args)
    llm = ScriptedLLM(latency=0.0).start()
    deployment: Deployment | None = None
    sampler: Sampler | None = None
    try:
        env = {**server_env(llm), "HAL9100_WORKER_CONCURRENCY": str(concurrency)}
        if mode == "production":
            env["HAL9100_DB_POOL_SIZE"] = str(db_pool_size(args))
            config = (
                f"{API_PROCESSES} API processes, {args.workers} workers, "
                f"HAL9100_WORKER_CONCURRENCY={concurrency} per worker, "
                f"HAL9100_DB_POOL_SIZE={env['HAL9100_DB_POOL_SIZE']}"
            )
        else:
            config = f"one `hal9100 serve` (SQLite), HAL9100_WORKER_CONCURRENCY={concurrency}"
        deployment = deploy(mode, env, root, moto, args.workers)
        urls = deployment.urls
        answer = f"[[slow:{args.slow}]] [[tokens:{args.tokens}]]"
        expected = " ".join(f"token{i}" for i in range(1, args.tokens + 1))

        gauges = ClientGauges()
        # Warm-up: a few runs through every API process, not measured.
        if args.warmup:
            assistant_id, threads = asyncio.run(
                prepare(urls, [f"{answer} warm-up {i}" for i in range(args.warmup)])
            )
            _wall, warm = asyncio.run(burst(urls, threads, assistant_id, gauges, args.timeout))
            bad = [r for r in warm if r.status != "completed"]
            if bad:
                raise RuntimeError(f"warm-up runs failed: {bad[:3]}\n{deployment.log()[-4000:]}")

        started = time.perf_counter()
        assistant_id, threads = asyncio.run(
            prepare(urls, [f"{answer} inflight {i}" for i in range(args.runs)])
        )
        print(
            f"  [{mode}] {len(threads)} threads created in {time.perf_counter() - started:.1f} s;"
            " opening every run at once",
            flush=True,
        )
        llm.reset()

        if mode == "embedded":
            groups = {"hal9100 serve": [deployment.api[0].proc.pid]}
            services: dict[str, str] = {}
        else:
            groups = {
                "API processes": [p.proc.pid for p in deployment.api],
                "workers": [p.proc.pid for p in deployment.workers],
            }
            services = {"PostgreSQL (all postgres processes)": "postgres"}
            services["Redis"] = "redis-server"
        gauges = ClientGauges()
        with counting_llm_streams(llm) as llm_gauge:
            sampler = Sampler(groups, services, gauges, llm_gauge)
            sampler.members()
            before = sampler.memory()
            sampler.start()
            try:
                wall, results = asyncio.run(
                    burst(urls, threads, assistant_id, gauges, args.timeout)
                )
            finally:
                sampler.stop()
        load_after = os.getloadavg()[0]

        calls: Counter[int] = Counter()
        for body in llm.requests:
            match = re.search(r"\] inflight (\d+)\b", json.dumps(body))
            if match:
                calls[int(match.group(1))] += 1
        result = ModeResult(
            mode,
            config,
            wall,
            results,
            expected,
            sampler,
            before,
            llm_gauge.peak,
            calls,
            list(groups),
            [
                key
                for name in services
                for key in (name, f"{name}, RssAnon")
                if key == name or name.startswith("PostgreSQL")
            ],
            load_after,
        )
        result.problems = log_problems(deployment, limit=2500)
        result.summary = error_summary(deployment)
        if mode == "production":
            result.log_counts = log_counts(deployment)
            failed_ids = [r.run_id for r, _why in result.errors if r.run_id]
            if failed_ids:
                result.stuck = asyncio.run(run_rows(deployment, failed_ids[:20]))
        return result
    except BaseException:
        if deployment is not None:
            print(
                f"## {mode}: deployment log (tail)\n\n{deployment.log()[-4000:]}", file=sys.stderr
            )
        raise
    finally:
        seen = dict(sampler.seen) if sampler is not None else {}
        try:
            if deployment is not None:
                deployment.stop()  # production: also drops its database and Redis keys
        finally:
            killed = kill_leftovers(seen)
            if killed:
                print(f"  [{mode}] killed leftover processes: {killed}", file=sys.stderr)
            llm.stop()


# --------------------------------------------------------------------------- the report


def timeline(r: ModeResult, rows: int) -> str:
    samples = r.sampler.samples
    if not samples:
        return "(no samples)"
    step = max(COUNT_EVERY * MEMORY_EVERY, math.ceil(samples[-1].t / rows * 2) / 2)
    out, next_t = [], 0.0
    for sample in samples:
        if sample.rss is None or sample.t + 1e-9 < next_t:
            continue
        next_t = sample.t + step
        out.append(
            [
                f"{sample.t:.1f}",
                str(sample.open),
                str(sample.streaming),
                str(sample.llm),
                str(sample.ended),
                mb(sum(sample.rss[g] for g in r.hal_groups)),
            ]
        )
    return table(
        [
            "t (s)",
            "streams open",
            "streaming (1st delta, not ended)",
            "LLM streams open",
            "ended",
            "HAL RSS (MB)",
        ],
        out,
    )


def report(r: ModeResult, args: argparse.Namespace) -> str:
    completed = [x for x in r.results if r.bad(x) is None]
    latencies = [x.seconds for x in completed]
    samples = r.sampler.samples
    sampled_streaming = max((s.streaming for s in samples), default=0)
    sampled_llm = max((s.llm for s in samples), default=0)
    twice = sum(1 for n in r.llm_calls.values() if n > 1)
    never = args.runs - len(r.llm_calls)
    errors = r.errors
    rows = [
        ["runs opened at once", str(len(r.results))],
        ["runs completed with every delta", str(len(completed))],
        ["runs with an error", str(len(errors))],
        ["wall time, first create → last done (s)", f"{r.wall:.2f}"],
        ["throughput (completed runs/s)", f"{len(completed) / r.wall:.1f}"],
        ["completion latency p50 (ms)", ms(percentile(latencies, 50))],
        ["completion latency p99 (ms)", ms(percentile(latencies, 99))],
        ["completion latency max (ms)", ms(max(latencies) if latencies else float("nan"))],
        [
            "peak LLM streams open at once (runs in their model call), exact / sampled",
            f"{r.llm_peak} / {sampled_llm}",
        ],
        [
            "peak client streams between first delta and end, exact / sampled",
            f"{r.sampler.client.streaming.peak} / {sampled_streaming}",
        ],
        ["peak client requests open (sent, not ended)", str(r.sampler.client.open.peak)],
        ["LLM calls per run", f"{sum(r.llm_calls.values()) / max(1, args.runs):.3f}"],
        ["runs the LLM answered more than once / never", f"{twice} / {never}"],
        ["1-minute load average after the burst", f"{r.load_after:.1f}"],
    ]
    memory = []
    hal_before = sum(r.before[g] for g in r.hal_groups)
    hal_peak = max(
        (sum(s.rss[g] for g in r.hal_groups) for s in samples if s.rss), default=hal_before
    )
    groups = r.hal_groups
    if len(groups) > 1:
        for group in groups:
            memory.append([group, mb(r.before[group]), mb(r.sampler.peak(group))])
        memory.append(["HAL-9100 total (peak of the sum)", mb(hal_before), mb(hal_peak)])
    else:
        memory.append([f"{groups[0]} (and descendants)", mb(hal_before), mb(hal_peak)])
    for group in r.service_groups:
        memory.append([group, mb(r.before[group]), mb(r.sampler.peak(group))])
    out = [
        f"## {r.mode}: {len(r.results)} streamed runs in flight at once, "
        f"`[[slow:{args.slow}]] [[tokens:{args.tokens}]]` answers",
        "",
        r.config,
        "",
        table(["metric", "value"], rows),
        "",
        table(["RSS (VmRSS, MB)", "before the burst", "peak during the burst"], memory),
        "",
        timeline(r, args.timeline_rows),
    ]
    if r.log_counts:
        out += [
            "",
            "Log markers: "
            + ", ".join(f"{key} {count}" for key, count in sorted(r.log_counts.items())),
        ]
    if errors:
        reasons = Counter(why for _r, why in errors)
        out += [
            "",
            f"ERRORS: {len(errors)} runs: "
            + "; ".join(f"{n} x {w}" for w, n in reasons.most_common()),
        ]
        out += [f"  {x.run_id}: {why}: {x.detail}"[:300] for x, why in errors[:10]]
        if r.stuck:
            out += ["  in the runs table after the burst:"] + [f"    {x}" for x in r.stuck]
    if r.problems:
        out += ["", "Warnings/errors in the server logs, counted:", *r.summary]
        out += ["", "The first of them, in context:", r.problems]
    else:
        out += ["", "Server logs: no warnings or errors."]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--runs", type=int, default=1000, help="runs opened at once")
    parser.add_argument("--tokens", type=int, default=20, help="answer length in chunks")
    parser.add_argument("--slow", type=int, default=50, help="ms the LLM waits between chunks")
    parser.add_argument("--workers", type=int, default=2, help="production: worker processes")
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=0,
        help="HAL9100_WORKER_CONCURRENCY (default: runs in embedded mode, "
        "runs / workers + 25%% per worker in production)",
    )
    parser.add_argument(
        "--db-pool-size",
        type=int,
        default=0,
        help="production: HAL9100_DB_POOL_SIZE (default: 10, less if the deployment's "
        "processes x 2 x pool would pass 90 connections)",
    )
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured runs first")
    parser.add_argument(
        "--timeout", type=float, default=600, help="client read timeout per stream (s)"
    )
    parser.add_argument("--timeline-rows", type=int, default=15)
    parser.add_argument("--keep", action="store_true", help="keep the logs' directory")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    before, soft, hard = raise_fd_limit()
    print(f"$ {command_line()}")
    print(
        f"HAL-9100 {git_revision()}; Python {platform.python_version()}; "
        f"{os.cpu_count()} CPU cores (load average before start: "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}); "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB RAM; "
        f"open files soft limit {before} → {soft} (hard {hard}); loopback only"
    )
    print(
        "The scripted LLM (latency 0) and this client run in this process; the servers, "
        "PostgreSQL, Redis, the LLM and the client all share the machine's cores."
    )
    print(flush=True)

    root = Path(tempfile.mkdtemp(prefix="hal9100-bench-inflight-"))
    moto: MotoServer | None = None
    failed = unavailable = False
    reports = []
    try:
        for mode in args.mode:
            if mode == "production":
                reason = production_unavailable()
                if reason:
                    print(f"## production: unavailable: {reason}\n", flush=True)
                    unavailable = True
                    continue
                moto = MotoServer(root)
            result = run_mode(mode, args, root, moto)
            text = report(result, args)
            reports.append(text)
            print("\n" + text + "\n", flush=True)
            failed |= result.failed
            if moto is not None:
                moto.stop()
                moto = None
    except BaseException:
        failed = True
        raise
    finally:
        if moto is not None:
            moto.stop()
        if args.keep or failed:
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if failed:
        return 1
    return 2 if unavailable else 0


if __name__ == "__main__":
    sys.exit(main())
