"""Production-mode throughput per worker count, and how fast a killed worker's runs move.

HAL-9100 is deployed as tests/deployments.py's `start_production` deploys it: PostgreSQL
(127.0.0.1:5432), Redis (127.0.0.1:6379), moto's S3 server, `hal9100 migrate`, two
`hal9100 serve` API processes and N `hal9100 worker` processes, each deployment with its own
database, Redis prefix and bucket. Everything runs on loopback.

1. Throughput: with 1, 2 and 4 workers and a scripted LLM that waits 200 ms before its first
   byte, 400 runs are created at once (spread over the API processes) and each is streamed to
   its `done` event: runs completed per second, and each run's latency.
2. Takeover: with 2 workers, HAL9100_LEASE_SECONDS=2 and HAL9100_SWEEP_SECONDS=0.5, 20 runs
   that stream for about 3 s; one worker is SIGKILLed while it holds runs, and for each of
   its runs the `runs` table is watched for the moment another worker holds the lease and the
   moment the run ends.

    .venv/bin/python bench/bench_production.py [--runs 400] [--workers 1,2,4]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_runs import (  # noqa: E402
    TERMINAL,
    RunResult,
    command_line,
    cpu_seconds,
    full_logs,
    git_revision,
    log_problems,
    ms,
    percentile,
    server_env,
    stream_run_async,
    table,
)

from deployments import (  # noqa: E402
    Deployment,
    MotoServer,
    production_unavailable,
    start_production,
)
from scripted_llm import ScriptedLLM  # noqa: E402

API_PROCESSES = 2


def wait_workers_ready(deployment: Deployment, timeout: float = 90) -> None:
    """`hal9100 worker` logs "executing up to N runs at once" once it consumes the queue."""
    deadline = time.monotonic() + timeout
    for worker in deployment.workers:
        while "executing up to" not in worker.log():
            if not worker.alive():
                raise RuntimeError(f"worker exited early:\n{worker.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready after {timeout}s:\n{worker.log()}")
            time.sleep(0.1)


def hal_pids(deployment: Deployment) -> list[int]:
    return [p.proc.pid for p in [*deployment.api, *deployment.workers] if p.alive()]


def stop_workers(deployment: Deployment, timeout: float) -> list[float | None]:
    """SIGTERM every live worker at once; seconds until each exited, None if it was still
    draining after `timeout` (it is then SIGKILLed, so the benchmark stays bounded)."""
    live = [w for w in deployment.workers if w.alive()]
    started = time.monotonic()
    for worker in live:
        worker.proc.terminate()
    exited: dict[int, float] = {}
    while len(exited) < len(live) and time.monotonic() - started < timeout:
        for index, worker in enumerate(live):
            if index not in exited and worker.proc.poll() is not None:
                exited[index] = time.monotonic() - started
        time.sleep(0.05)
    for worker in live:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait()
    return [exited.get(index) for index in range(len(live))]


def format_stops(stops: list[float | None], timeout: float) -> str:
    return ", ".join(f"{s:.1f}" if s is not None else f">{timeout:g} (killed)" for s in stops)


# Log lines that tell how runs were dispatched: SAQ's sweeper taking a job in its active list
# for stuck (and aborting it), and API streams that had to read the run's end from the DB.
LOG_MARKERS = {
    "saq_swept": "INFO saq: Sweeping job",
    "saq_aborted": "INFO saq: Aborting",
    "closing_from_db": "closing event missing",
    "lease_lost": "lease lost",
    "requeued": "dispatch or lease lapsed, re-queueing",
    "grace_exceeded": "did not finish within the shutdown grace period",
}


async def run_rows(deployment: Deployment, run_ids: list[str]) -> list[str]:
    """The runs table's view of these runs, for runs whose stream did not end well."""
    dsn = deployment.env["DATABASE_URL"].replace("postgres://", "postgresql://", 1)
    db = await asyncpg.connect(dsn)
    try:
        rows = await db.fetch(
            "SELECT id, status, lease_owner, lease_expires_at, epoch FROM runs"
            " WHERE id = ANY($1::text[])",
            run_ids,
        )
    finally:
        await db.close()
    return [
        f"{row['id']}: status={row['status']} lease_owner={row['lease_owner']} "
        f"lease_expires_at={row['lease_expires_at']} epoch={row['epoch']}"
        for row in rows
    ]


def log_counts(deployment: Deployment) -> Counter[str]:
    counts: Counter[str] = Counter()
    for text in full_logs(deployment).values():
        for key, marker in LOG_MARKERS.items():
            counts[key] += text.count(marker)
    return counts


async def _create(
    client: httpx.AsyncClient, url: str, body: dict[str, object], gate: asyncio.Semaphore
) -> str:
    async with gate:
        response = await client.post(url, json=body)
        response.raise_for_status()
        return str(response.json()["id"])


async def create_threads(
    client: httpx.AsyncClient, urls: list[str], texts: list[str], parallel: int = 16
) -> list[str]:
    gate = asyncio.Semaphore(parallel)
    spread = itertools.cycle(urls)
    return list(
        await asyncio.gather(
            *(
                _create(
                    client,
                    f"{next(spread)}/v1/threads",
                    {"messages": [{"role": "user", "content": text}]},
                    gate,
                )
                for text in texts
            )
        )
    )


async def create_assistant(client: httpx.AsyncClient, url: str) -> str:
    return await _create(
        client,
        f"{url}/v1/assistants",
        {"model": "scripted-bench", "instructions": "You are a benchmark."},
        asyncio.Semaphore(1),
    )


# --------------------------------------------------------------------------- throughput


@dataclass
class ThroughputResult:
    workers: int
    runs: int
    wall: float
    results: list[RunResult]
    cpu: float
    llm_calls: Counter[int]
    logs: Counter[str] = field(default_factory=Counter)
    stops: list[float | None] = field(default_factory=list)
    load: float = 0.0
    problems: str = ""
    stuck: list[str] = field(default_factory=list)
    client_cpu: float = 0.0

    @property
    def executed_twice(self) -> int:
        return sum(1 for calls in self.llm_calls.values() if calls > 1)

    @property
    def completed(self) -> list[RunResult]:
        return [r for r in self.results if r.status == "completed"]

    @property
    def failures(self) -> list[RunResult]:
        return [r for r in self.results if r.status != "completed"]


async def _burst(
    urls: list[str], prefix: str, runs: int, tokens: int
) -> tuple[float, list[RunResult]]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=runs + 16)
    # A stream may legitimately stay quiet for two stream checks (2 x 15 s) before the API
    # reads a lost closing event from the database; quieter than 45 s, it is stuck.
    timeout = httpx.Timeout(45, connect=30)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        assistant_id = await create_assistant(client, urls[0])
        texts = [f"[[tokens:{tokens}]] {prefix} {i}" for i in range(runs)]
        threads = await create_threads(client, urls, texts)
        spread = itertools.cycle(urls)
        started = time.perf_counter()
        results = await asyncio.gather(
            *(stream_run_async(client, next(spread), t, assistant_id) for t in threads)
        )
        return time.perf_counter() - started, list(results)


def throughput(
    moto: MotoServer, llm: ScriptedLLM, root: Path, workers: int, args: argparse.Namespace
) -> ThroughputResult:
    env = {**server_env(llm), "HAL9100_WORKER_CONCURRENCY": str(args.worker_concurrency)}
    deployment = start_production(
        env,
        root / f"workers-{workers}",
        moto=moto,
        api_processes=API_PROCESSES,
        worker_processes=workers,
    )
    try:
        wait_workers_ready(deployment)
        _wall, warm = asyncio.run(_burst(deployment.urls, "warm-up", args.warmup, args.tokens))
        if any(r.status != "completed" for r in warm):
            bad = [r for r in warm if r.status != "completed"][:5]
            raise RuntimeError(f"warm-up runs failed: {bad}\n{deployment.log()[-4000:]}")
        llm.reset()
        cpu_before = cpu_seconds(hal_pids(deployment))
        client_before = time.process_time()
        wall, results = asyncio.run(_burst(deployment.urls, "bench", args.runs, args.tokens))
        cpu = cpu_seconds(hal_pids(deployment)) - cpu_before
        client_cpu = time.process_time() - client_before
        load = os.getloadavg()[0]
        failed_ids = [r.run_id for r in results if r.status != "completed" and r.run_id]
        stuck = asyncio.run(run_rows(deployment, failed_ids)) if failed_ids else []
        # Which run each chat completion was for: the user text ends with "bench <i>".
        calls: Counter[int] = Counter()
        for body in llm.requests:
            match = re.search(r"\] bench (\d+)\b", json.dumps(body))
            if match:
                calls[int(match.group(1))] += 1
        stops = stop_workers(deployment, args.stop_timeout)
        return ThroughputResult(
            workers,
            args.runs,
            wall,
            results,
            cpu,
            calls,
            log_counts(deployment),
            stops,
            load,
            log_problems(deployment),
            stuck,
            client_cpu,
        )
    except BaseException:
        print(f"## Deployment log (tail)\n\n{deployment.log()[-4000:]}", file=sys.stderr)
        raise
    finally:
        deployment.stop()


def throughput_report(results: list[ThroughputResult], args: argparse.Namespace) -> str:
    rows = []
    health = []
    for r in results:
        latencies = [x.seconds for x in r.completed]
        rows.append(
            [
                str(r.workers),
                f"{len(r.completed)}/{r.runs}",
                f"{r.wall:.2f}",
                f"{len(r.completed) / r.wall:.1f}",
                ms(percentile(latencies, 50)),
                ms(percentile(latencies, 99)),
                ms(max(latencies) if latencies else float("nan")),
                f"{r.cpu * 1000 / max(1, len(r.completed)):.1f}",
                f"{r.client_cpu * 1000 / max(1, len(r.completed)):.1f}",
                f"{r.load:.1f}",
            ]
        )
        health.append(
            [
                str(r.workers),
                f"{sum(r.llm_calls.values()) / r.runs:.3f}",
                str(r.executed_twice),
                str(r.logs["saq_swept"]),
                str(r.logs["saq_aborted"]),
                str(r.logs["closing_from_db"]),
                str(r.logs["requeued"]),
                format_stops(r.stops, args.stop_timeout),
            ]
        )
    out = [
        f"## Throughput: {args.runs} runs in flight at once, {args.tokens}-token answers, "
        f"LLM latency {args.latency * 1000:.0f} ms, {API_PROCESSES} API processes, "
        f"worker concurrency {args.worker_concurrency}",
        "",
        table(
            [
                "workers",
                "completed",
                "wall (s)",
                "runs/s",
                "p50 latency (ms)",
                "p99 latency (ms)",
                "max latency (ms)",
                "HAL CPU/run (ms)",
                "client+LLM CPU/run (ms)",
                "load avg",
            ],
            rows,
        ),
        "",
        table(
            [
                "workers",
                "LLM calls/run",
                "runs executed twice",
                "SAQ jobs swept",
                "SAQ tasks aborted",
                "streams ended from DB",
                "runs re-queued by HAL",
                "worker exit after SIGTERM (s)",
            ],
            health,
        ),
        "",
        f"Machine: {os.cpu_count()} CPU cores shared by PostgreSQL, Redis, moto, the "
        f"{API_PROCESSES} API processes, every worker, the scripted LLM and this client: more "
        "worker processes add run slots, not CPU, so runs/s stops scaling once the cores are "
        "busy. The LLM latency alone would allow up to workers x concurrency / latency = "
        + ", ".join(
            f"{int(r.workers * args.worker_concurrency / args.latency)} runs/s ({r.workers}w)"
            for r in results
        )
        + ".",
        "HAL CPU/run: utime+stime of the API and worker processes (not PostgreSQL/Redis) over "
        "the burst, per completed run; client+LLM: this process (the httpx client and the "
        "scripted LLM's thread) over the burst. load avg: 1-minute load average right after the burst "
        "(other work on the machine shows here).",
        "runs executed twice: runs the scripted LLM was asked to answer more than once. SAQ "
        'jobs swept / tasks aborted: "Sweeping job" / "Aborting" lines in the worker logs. '
        'streams ended from DB: "closing event missing" warnings in the API logs. Runs '
        're-queued by HAL: "dispatch or lease lapsed, re-queueing" lines (its own sweeper). '
        "A stream silent for 45 s is counted as failed (ReadTimeout) and its run looked up in "
        "the runs table.",
    ]
    for r in results:
        if r.failures:
            out += ["", f"FAILED runs with {r.workers} workers: {len(r.failures)}"] + [
                f"  {f.run_id}: {f.status} {f.detail}" for f in r.failures[:10]
            ]
            if r.stuck:
                out += ["  in the runs table after the burst:"] + [f"    {x}" for x in r.stuck]
        if r.problems:
            out += ["", f"Warnings/errors in the logs with {r.workers} workers:", r.problems]
    return "\n".join(out)


# --------------------------------------------------------------------------- takeover


@dataclass
class TakeoverRun:
    run_id: str
    thread_id: str
    taken_over: float | None = None
    ended: float | None = None
    status: str = ""
    answers: int = -1


@dataclass
class TakeoverResult:
    victim: str
    total_runs: int
    held: list[TakeoverRun]
    others: dict[str, str] = field(default_factory=dict)
    lease_seconds: float = 0.0
    sweep_seconds: float = 0.0
    problems: str = ""
    held_at_kill_by_survivor: int = 0
    logs: Counter[str] = field(default_factory=Counter)
    stops: list[float | None] = field(default_factory=list)


async def _rows(db: asyncpg.Connection) -> dict[str, tuple[str, str | None]]:
    rows = await db.fetch("SELECT id, status, lease_owner FROM runs")
    return {row["id"]: (row["status"], row["lease_owner"]) for row in rows}


async def _takeover(deployment: Deployment, args: argparse.Namespace) -> TakeoverResult:
    urls = deployment.urls
    dsn = deployment.env["DATABASE_URL"].replace("postgres://", "postgresql://", 1)
    db = await asyncpg.connect(dsn)
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            assistant_id = await create_assistant(client, urls[0])
            texts = [f"[[slow:75]] [[tokens:40]] takeover {i}" for i in range(args.takeover_runs)]
            threads = await create_threads(client, urls, texts)
            # Created one by one across one SAQ dequeue period (1 s): a burst smaller than a
            # worker's concurrency would all go to the worker whose idle dequeuers have waited
            # longest (Redis serves blocked BLMOVEs first come, first served).
            gate = asyncio.Semaphore(1)
            spread = itertools.cycle(urls)
            run_ids = []
            for thread_id in threads:
                run_ids.append(
                    await _create(
                        client,
                        f"{next(spread)}/v1/threads/{thread_id}/runs",
                        {"assistant_id": assistant_id},
                        gate,
                    )
                )
                await asyncio.sleep(args.takeover_spread / len(threads))
            thread_of = dict(zip(run_ids, threads, strict=True))

            # Wait until every run is claimed, then let them stream for a moment.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                rows = await _rows(db)
                if all(owner for _status, owner in rows.values()):
                    break
                await asyncio.sleep(0.025)
            await asyncio.sleep(0.3)

            rows = await _rows(db)
            # The victim: the worker holding the most runs (workers[0] on a tie), for the
            # most takeovers to time.
            holdings = [
                sum(1 for _s, o in rows.values() if o and f":{w.proc.pid}:" in o)
                for w in deployment.workers
            ]
            if not any(holdings):
                raise RuntimeError(f"no worker holds a run: {rows}\n{deployment.log()[-4000:]}")
            victim = deployment.workers[holdings.index(max(holdings))]
            victim_index = deployment.workers.index(victim)
            tag = f":{victim.proc.pid}:"
            victim.kill()
            killed_at = time.monotonic()
            held = [
                TakeoverRun(run_id, thread_of[run_id])
                for run_id, (_status, owner) in rows.items()
                if owner and tag in owner
            ]
            survivor_held = sum(1 for _s, o in rows.values() if o and tag not in o)

            # Watch the runs table until every run has ended.
            deadline = killed_at + args.takeover_timeout
            while time.monotonic() < deadline:
                rows = await _rows(db)
                now = time.monotonic() - killed_at
                for run in held:
                    status, owner = rows[run.run_id]
                    if run.taken_over is None and owner and tag not in owner:
                        run.taken_over = now
                    if run.ended is None and status in TERMINAL:
                        run.ended = now
                        run.status = status
                if all(status in TERMINAL for status, _owner in rows.values()):
                    break
                await asyncio.sleep(0.025)
            for run in held:
                if run.ended is None:
                    run.status = rows[run.run_id][0] + " (not ended)"
                response = await client.get(f"{urls[0]}/v1/threads/{run.thread_id}/messages")
                response.raise_for_status()
                run.answers = sum(1 for m in response.json()["data"] if m["role"] == "assistant")
            others = {
                run_id: status
                for run_id, (status, _owner) in rows.items()
                if run_id not in {r.run_id for r in held}
            }
            return TakeoverResult(
                f"workers[{victim_index}], pid {victim.proc.pid}",
                len(run_ids),
                held,
                others,
                float(deployment.env["HAL9100_LEASE_SECONDS"]),
                float(deployment.env["HAL9100_SWEEP_SECONDS"]),
                held_at_kill_by_survivor=survivor_held,
            )
    finally:
        await db.close()


def takeover(moto: MotoServer, root: Path, args: argparse.Namespace) -> TakeoverResult:
    llm = ScriptedLLM(latency=0.0).start()
    deployment: Deployment | None = None
    try:
        env = {
            **server_env(llm),
            "HAL9100_LEASE_SECONDS": str(args.lease_seconds),
            "HAL9100_SWEEP_SECONDS": str(args.sweep_seconds),
            "HAL9100_WORKER_CONCURRENCY": str(args.worker_concurrency),
        }
        deployment = start_production(
            env, root / "takeover", moto=moto, api_processes=API_PROCESSES, worker_processes=2
        )
        wait_workers_ready(deployment)
        result = asyncio.run(_takeover(deployment, args))
        result.stops = stop_workers(deployment, args.stop_timeout)
        result.logs = log_counts(deployment)
        result.problems = log_problems(deployment)
        return result
    except BaseException:
        if deployment is not None:
            print(f"## Deployment log (tail)\n\n{deployment.log()[-4000:]}", file=sys.stderr)
        raise
    finally:
        if deployment is not None:
            deployment.stop()
        llm.stop()


def takeover_report(r: TakeoverResult, args: argparse.Namespace) -> tuple[str, bool]:
    taken = [x.taken_over for x in r.held if x.taken_over is not None]
    ended = [x.ended for x in r.held if x.ended is not None]
    resumed = sum(1 for x in r.held if x.status == "completed")
    failed = sum(1 for x in r.held if x.status == "failed")
    other = len(r.held) - resumed - failed
    doubled = [x for x in r.held if x.status == "completed" and x.answers != 1]
    others_ended = sum(1 for s in r.others.values() if s == "completed")

    def stat(values: list[float], fn: object) -> str:
        return f"{fn(values):.2f}" if values else "n/a"  # type: ignore[operator]

    out = [
        f"## Takeover: {r.total_runs} runs of ~3 s (`[[slow:75]] [[tokens:40]]`, LLM latency 0) "
        f"on 2 workers; {r.victim} SIGKILLed while holding {len(r.held)} "
        f"(the other worker held {r.held_at_kill_by_survivor})",
        "",
        f"HAL9100_LEASE_SECONDS = {r.lease_seconds:g}, HAL9100_SWEEP_SECONDS = "
        f"{r.sweep_seconds:g}: a lease is renewed every lease/3 s, so a dead worker's lease "
        f"lapses within {r.lease_seconds:g} s of the kill and the next sweep (≤ "
        f"{r.sweep_seconds:g} s later) re-queues the run. Times are read from the runs table "
        "every 25 ms.",
        "",
        table(
            ["seconds after the kill", "p50", "max", "runs"],
            [
                [
                    "another worker holds the lease",
                    stat(taken, lambda v: percentile(v, 50)),
                    stat(taken, max),
                    f"{len(taken)}/{len(r.held)}",
                ],
                [
                    "the run has ended",
                    stat(ended, lambda v: percentile(v, 50)),
                    stat(ended, max),
                    f"{len(ended)}/{len(r.held)}",
                ],
            ],
        ),
        "",
        table(
            ["killed worker's runs", "count"],
            [
                ["resumed (completed by the other worker)", str(resumed)],
                ["failed", str(failed)],
                ["other / not ended", str(other)],
                ["completed with ≠ 1 assistant answer", str(len(doubled))],
            ],
        ),
        "",
        f"The other {len(r.others)} runs: {others_ended} completed"
        + (f", statuses {sorted(set(r.others.values()))}" if others_ended != len(r.others) else ""),
    ]
    out += [
        f"SAQ jobs swept: {r.logs['saq_swept']}, SAQ tasks aborted: {r.logs['saq_aborted']}, "
        f'streams ended from DB: {r.logs["closing_from_db"]}, "lease lost" warnings: '
        f"{r.logs['lease_lost']}; surviving worker exit after SIGTERM (s): "
        f"{format_stops(r.stops, args.stop_timeout)}",
    ]
    bad = bool(other or doubled or others_ended != len(r.others) or r.problems)
    for x in r.held:
        if x.status != "completed" or x.answers != 1:
            out.append(f"  {x.run_id}: {x.status}, {x.answers} assistant answers")
    if r.problems:
        out += ["", "Errors in the logs:", r.problems]
    return "\n".join(out), bad


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure")
    parser.add_argument("--runs", type=int, default=400, help="runs in flight per worker count")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured runs per deployment")
    parser.add_argument("--tokens", type=int, default=20, help="reply length in chunks")
    parser.add_argument("--latency", type=float, default=0.2, help="LLM latency (s)")
    parser.add_argument("--worker-concurrency", type=int, default=64)
    parser.add_argument("--takeover-runs", type=int, default=20)
    parser.add_argument("--lease-seconds", type=float, default=2.0)
    parser.add_argument("--sweep-seconds", type=float, default=0.5)
    parser.add_argument("--takeover-timeout", type=float, default=60.0)
    parser.add_argument(
        "--takeover-spread", type=float, default=1.0, help="seconds over which runs are created"
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=10.0,
        help="seconds a SIGTERMed worker gets to exit before it is killed",
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-takeover", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the logs' directory")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    print(f"$ {command_line()}")
    print(
        f"HAL-9100 {git_revision()}; Python {platform.python_version()}; "
        f"{os.cpu_count()} CPU cores (load average before start: "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}); production mode: PostgreSQL, "
        f"Redis, moto S3, {API_PROCESSES} API processes; loopback only"
    )
    print(
        f"Note: this machine has {os.cpu_count()} cores for every process of the deployment, "
        "its services and this client."
    )
    print(flush=True)
    reason = production_unavailable()
    if reason:
        print(f"production mode unavailable: {reason}")
        return 2

    root = Path(tempfile.mkdtemp(prefix="hal9100-bench-production-"))
    moto: MotoServer | None = None
    llm: ScriptedLLM | None = None
    failed = False
    try:
        moto = MotoServer(root)
        if not args.skip_throughput:
            llm = ScriptedLLM(latency=args.latency).start()
            results = []
            for workers in [int(w) for w in args.workers.split(",") if w.strip()]:
                results.append(throughput(moto, llm, root, workers, args))
                print(f"  ({workers} workers measured)", flush=True)
            print()
            print(throughput_report(results, args) + "\n", flush=True)
            failed |= any(r.failures or r.problems for r in results)
            llm.stop()
            llm = None
        if not args.skip_takeover:
            report, bad = takeover_report(takeover(moto, root, args), args)
            print(report + "\n", flush=True)
            failed |= bad
    except BaseException:
        failed = True
        raise
    finally:
        if llm is not None:
            llm.stop()
        if moto is not None:
            moto.stop()
        if args.keep or failed:
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
