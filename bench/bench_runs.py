"""Run latency, server CPU and throughput of HAL-9100 in embedded mode.

One `hal9100 serve` subprocess (SQLite, runs executed in-process), started the way the test
suite starts it (tests/deployments.py), answering from the scripted LLM (tests/scripted_llm.py)
with no latency, so what is measured is HAL-9100 itself. Everything runs on loopback.

1. Sequential runs: each run is created with `stream: true` (raw httpx) and read to its
   `done` event; then the chat completion HAL-9100 sent for it is replayed directly to the
   scripted LLM (`POST /v1/chat/completions`, stream) and read to `[DONE]`. The difference is
   HAL-9100's overhead per run. The server's CPU time (utime+stime from /proc) over the batch,
   divided by the number of runs, is its CPU cost per run.
2. Throughput: N threads created beforehand, then N runs created at once (httpx.AsyncClient),
   each streamed to `done`: runs completed per second and each run's latency.

    .venv/bin/python bench/bench_runs.py [--runs 200] [--warmup 20] [--concurrent 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from deployments import Deployment, server_env, start_embedded  # noqa: E402
from scripted_llm import ScriptedLLM  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
TERMINAL = ("completed", "failed", "cancelled", "expired", "incomplete")


# --------------------------------------------------------------------------- helpers


def command_line() -> str:
    python = sys.executable
    try:
        python = os.path.relpath(python)
    except ValueError:
        pass
    return shlex.join([python, *sys.argv])


def git_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}{' (src/ has uncommitted changes)' if dirty else ''}"


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                str(c).ljust(w) if i == 0 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as handle:
        data = handle.read()
    # The command name (field 2) may contain spaces; everything after its ")" splits cleanly.
    return data[data.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """pid and its live descendants (uvicorn runs in-process with one worker, but be safe)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(_stat_fields(int(entry))[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes and their descendants, in seconds."""
    total = 0
    for root in pids:
        for pid in process_tree(root):
            try:
                fields = _stat_fields(pid)
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of /proc/pid/stat
    return total / CLK_TCK


def full_logs(deployment: Deployment) -> dict[str, str]:
    """Every process's whole log (Process.log() keeps only the tail)."""
    return {
        process.log_path.name: process.log_path.read_text(errors="replace")
        for process in [*deployment.api, *deployment.workers]
    }


PROBLEM_MARKERS = ("Traceback", " ERROR", "ERROR:", "CRITICAL", " WARNING", "WARNING:")


def log_problems(deployment: Deployment, limit: int = 6000) -> str:
    """Warnings, errors and tracebacks in the processes' logs, with a little context."""
    shown: list[str] = []
    for name, text in full_logs(deployment).items():
        lines = text.splitlines()
        hits = [i for i, line in enumerate(lines) if any(m in line for m in PROBLEM_MARKERS)]
        if not hits:
            continue
        shown.append(f"--- {name}: {len(hits)} warning/error lines; the first ones:")
        last = -1
        for i in hits[:6]:
            start = max(last + 1, i - 2)
            end = i + (25 if "Traceback" in lines[i] else 1)
            shown.extend(line[:400] for line in lines[start:end])
            last = end - 1
    return "\n".join(shown)[:limit]


# --------------------------------------------------------------------------- the API


@dataclass
class RunResult:
    seconds: float
    status: str
    run_id: str | None = None
    detail: str = ""


def prompt(tokens: int, index: int) -> str:
    return f"[[tokens:{tokens}]] bench run {index}"


def create_assistant(client: httpx.Client, base: str) -> str:
    response = client.post(
        f"{base}/v1/assistants",
        json={"model": "scripted-bench", "instructions": "You are a benchmark."},
    )
    response.raise_for_status()
    return str(response.json()["id"])


def create_threads(client: httpx.Client, base: str, texts: list[str]) -> list[str]:
    ids = []
    for text in texts:
        response = client.post(
            f"{base}/v1/threads", json={"messages": [{"role": "user", "content": text}]}
        )
        response.raise_for_status()
        ids.append(str(response.json()["id"]))
    return ids


class _EventReader:
    """Follows a run's server-sent events: its id, its final status, the `done` line."""

    def __init__(self) -> None:
        self.event: str | None = None
        self.status = "no terminal event"
        self.run_id: str | None = None
        self.detail = ""
        self.done = False
        self.events: list[str] = []

    def feed(self, line: str) -> None:
        if line.startswith("event: "):
            self.event = line[len("event: ") :]
            self.events.append(self.event)
            if self.event == "done":
                self.done = True
        elif line.startswith("data: ") and self.event is not None:
            event = self.event
            if event == "thread.run.created" or (
                event.startswith("thread.run.") and event.rsplit(".", 1)[1] in TERMINAL
            ):
                data = json.loads(line[len("data: ") :])
                self.run_id = data.get("id", self.run_id)
                if event != "thread.run.created":
                    self.status = data.get("status", event.rsplit(".", 1)[1])
                    if data.get("last_error"):
                        self.detail = json.dumps(data["last_error"])
            elif event == "error":
                self.status = "error event"
                self.detail = line[len("data: ") :]


def run_body(assistant_id: str) -> dict[str, object]:
    return {"assistant_id": assistant_id, "stream": True}


def stream_run(client: httpx.Client, base: str, thread_id: str, assistant_id: str) -> RunResult:
    reader = _EventReader()
    started = time.perf_counter()
    with client.stream(
        "POST", f"{base}/v1/threads/{thread_id}/runs", json=run_body(assistant_id)
    ) as response:
        if response.status_code != 200:
            response.read()
            return RunResult(
                time.perf_counter() - started,
                f"HTTP {response.status_code}",
                detail=response.text[:500],
            )
        for line in response.iter_lines():
            reader.feed(line)
            if reader.done:
                break
    elapsed = time.perf_counter() - started
    return RunResult(elapsed, reader.status, reader.run_id, reader.detail)


async def stream_run_async(
    client: httpx.AsyncClient, base: str, thread_id: str, assistant_id: str
) -> RunResult:
    reader = _EventReader()
    started = time.perf_counter()
    try:
        async with client.stream(
            "POST", f"{base}/v1/threads/{thread_id}/runs", json=run_body(assistant_id)
        ) as response:
            if response.status_code != 200:
                await response.aread()
                return RunResult(
                    time.perf_counter() - started,
                    f"HTTP {response.status_code}",
                    detail=response.text[:500],
                )
            async for line in response.aiter_lines():
                reader.feed(line)
                if reader.done:
                    break
    except httpx.HTTPError as exc:
        return RunResult(
            time.perf_counter() - started,
            f"{type(exc).__name__} after {len(reader.events)} events",
            reader.run_id,
            f"last events: {reader.events[-3:]}",
        )
    return RunResult(time.perf_counter() - started, reader.status, reader.run_id, reader.detail)


def direct_completion(client: httpx.Client, llm: ScriptedLLM, body: dict[str, object]) -> float:
    """The same streamed chat completion, asked of the scripted LLM directly."""
    started = time.perf_counter()
    with client.stream("POST", f"{llm.base_url}/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.strip() == "data: [DONE]":
                break
        else:
            raise RuntimeError("the scripted LLM's stream ended without [DONE]")
    return time.perf_counter() - started


# --------------------------------------------------------------------------- phases


def sequential(
    deployment: Deployment, llm: ScriptedLLM, args: argparse.Namespace
) -> tuple[str, list[RunResult]]:
    base = deployment.url
    server_pid = deployment.api[0].proc.pid
    total = args.warmup + args.runs
    with (
        httpx.Client(timeout=60) as hal,
        httpx.Client(timeout=60) as direct,
    ):
        assistant_id = create_assistant(hal, base)
        threads = create_threads(hal, base, [prompt(args.tokens, i) for i in range(total)])
        hal_times: list[float] = []
        direct_times: list[float] = []
        failures: list[RunResult] = []
        cpu_before = wall_before = 0.0
        for index, thread_id in enumerate(threads):
            if index == args.warmup:
                cpu_before = cpu_seconds([server_pid])
                wall_before = time.perf_counter()
            result = stream_run(hal, base, thread_id, assistant_id)
            body = llm.last_request
            if result.status != "completed" or body is None:
                failures.append(result)
                continue
            if f"bench run {index}" not in json.dumps(body):
                raise RuntimeError(f"the LLM's last request is not run {index}'s: {body}")
            seconds = direct_completion(direct, llm, dict(body))
            if index >= args.warmup:
                hal_times.append(result.seconds)
                direct_times.append(seconds)
        wall = time.perf_counter() - wall_before
        cpu = cpu_seconds([server_pid]) - cpu_before

        # One answer, checked end to end.
        messages = hal.get(f"{base}/v1/threads/{threads[-1]}/messages").json()["data"]
        answer = [m for m in messages if m["role"] == "assistant"]
        expected = " ".join(f"token{i}" for i in range(1, args.tokens + 1))
        if len(answer) != 1 or answer[0]["content"][0]["text"]["value"] != expected:
            raise RuntimeError(f"unexpected answer in the last thread: {messages}")

    overheads = [h - d for h, d in zip(hal_times, direct_times, strict=True)]
    done = len(hal_times)
    rows = [
        [
            "HAL-9100 run (create → done)",
            ms(percentile(hal_times, 50)),
            ms(percentile(hal_times, 99)),
            ms(sum(hal_times) / done),
            ms(max(hal_times)),
        ],
        [
            "scripted LLM direct (→ [DONE])",
            ms(percentile(direct_times, 50)),
            ms(percentile(direct_times, 99)),
            ms(sum(direct_times) / done),
            ms(max(direct_times)),
        ],
        [
            "overhead (run - direct, per run)",
            ms(percentile(overheads, 50)),
            ms(percentile(overheads, 99)),
            ms(sum(overheads) / done),
            ms(max(overheads)),
        ],
    ]
    out = [
        f"## Sequential runs: {done} completed runs of {args.tokens} tokens "
        f"(after {args.warmup} warm-up runs), one at a time",
        "",
        table(["wall time per run (ms)", "p50", "p99", "mean", "max"], rows),
        "",
        table(
            ["server CPU (utime+stime, /proc)", "value"],
            [
                ["CPU over the batch (s)", f"{cpu:.2f}"],
                ["CPU per completed run (ms)", f"{cpu * 1000 / done:.1f}"],
                ["batch wall time, runs + direct requests (s)", f"{wall:.2f}"],
                ["server CPU utilisation over the batch", f"{100 * cpu / wall:.0f}%"],
            ],
        ),
    ]
    if failures:
        out += ["", f"FAILED runs: {len(failures)}"] + [
            f"  {f.run_id}: {f.status} {f.detail}" for f in failures[:10]
        ]
    return "\n".join(out), failures


async def _concurrent(
    base: str, threads: list[str], assistant_id: str
) -> tuple[float, list[RunResult]]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=len(threads))
    async with httpx.AsyncClient(timeout=httpx.Timeout(180, connect=30), limits=limits) as client:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(stream_run_async(client, base, t, assistant_id) for t in threads)
        )
        wall = time.perf_counter() - started
    return wall, list(results)


def throughput(deployment: Deployment, args: argparse.Namespace) -> tuple[str, list[RunResult]]:
    base = deployment.url
    server_pid = deployment.api[0].proc.pid
    with httpx.Client(timeout=60) as hal:
        assistant_id = create_assistant(hal, base)
        threads = create_threads(
            hal, base, [prompt(args.tokens, 100_000 + i) for i in range(args.concurrent)]
        )
    cpu_before = cpu_seconds([server_pid])
    wall, results = asyncio.run(_concurrent(base, threads, assistant_id))
    cpu = cpu_seconds([server_pid]) - cpu_before
    completed = [r for r in results if r.status == "completed"]
    failures = [r for r in results if r.status != "completed"]
    latencies = [r.seconds for r in completed]
    rows = [
        ["runs started at once", str(len(threads))],
        ["runs completed", str(len(completed))],
        ["runs not completed", str(len(failures))],
        ["wall time, first create → last done (s)", f"{wall:.2f}"],
        ["throughput (completed runs/s)", f"{len(completed) / wall:.1f}"],
        ["completion latency p50 (ms)", ms(percentile(latencies, 50))],
        ["completion latency p99 (ms)", ms(percentile(latencies, 99))],
        ["completion latency max (ms)", ms(max(latencies) if latencies else float("nan"))],
        ["server CPU per completed run (ms)", f"{cpu * 1000 / max(1, len(completed)):.1f}"],
        ["server CPU utilisation", f"{100 * cpu / wall:.0f}%"],
    ]
    out = [
        f"## Throughput: {len(threads)} concurrent runs of {args.tokens} tokens, each streamed "
        f"to `done` (worker concurrency {args.worker_concurrency})",
        "",
        table(["metric", "value"], rows),
    ]
    if failures:
        out += ["", f"FAILED runs: {len(failures)}"] + [
            f"  {f.run_id}: {f.status} {f.detail}" for f in failures[:10]
        ]
    return "\n".join(out), failures


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="sequential runs measured")
    parser.add_argument("--warmup", type=int, default=20, help="sequential runs not measured")
    parser.add_argument("--concurrent", type=int, default=200, help="runs in the throughput test")
    parser.add_argument("--tokens", type=int, default=20, help="reply length in chunks")
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=64,
        help="HAL9100_WORKER_CONCURRENCY: runs the embedded server executes at once",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    args = parser.parse_args()
    # SIGTERM ends the benchmark through the same cleanup as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    print(f"$ {command_line()}")
    print(
        f"HAL-9100 {git_revision()}; Python {platform.python_version()}; "
        f"{os.cpu_count()} CPU cores (load average before start: "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}); embedded mode (one `hal9100 serve`, SQLite); "
        "scripted LLM in this process, latency 0; loopback only"
    )
    print(
        "The server, the scripted LLM and this client share the machine's cores, so CPU spent "
        "by the client and the LLM is not available to the server."
    )
    print(flush=True)

    data_dir = Path(tempfile.mkdtemp(prefix="hal9100-bench-runs-"))
    llm = ScriptedLLM(latency=0.0).start()
    deployment: Deployment | None = None
    failed = False
    try:
        env = {
            **server_env(llm),
            "HAL9100_WORKER_CONCURRENCY": str(args.worker_concurrency),
        }
        deployment = start_embedded(env, data_dir)
        report, failures = sequential(deployment, llm, args)
        print(report + "\n", flush=True)
        failed |= bool(failures)
        report, failures = throughput(deployment, args)
        print(report + "\n", flush=True)
        failed |= bool(failures)
        problems = log_problems(deployment)
        if problems:
            failed = True
            print("## Errors in the server log\n\n" + problems)
        else:
            print("Server log: no errors.")
    except BaseException:
        failed = True
        if deployment is not None:
            print("## Server log (tail)\n\n" + deployment.log()[-4000:], file=sys.stderr)
        raise
    finally:
        if deployment is not None:
            deployment.stop()
        llm.stop()
        if args.keep or failed:
            print(f"data directory and server log kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
