"""Benchmark: create-message and list-messages over a 10,000-message thread.

Starts a real embedded `hal9100 serve` (SQLite, local files) on a loopback port in a temporary
data directory, fills one thread with 10,000 messages, then sends a fixed number of requests
per scenario at concurrency 1 and 16 and prints p50/p99 latency and requests per second.

    .venv/bin/python bench/bench_messages.py                  # defaults: ~1 minute
    .venv/bin/python bench/bench_messages.py --messages 2000 --requests 200   # quick look

Client and server share the machine (and its CPUs); the numbers are for comparing changes
on one machine, not an absolute capacity figure.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from deployments import ServerProcess  # noqa: E402  (tests/ is not a package)

Request = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


@dataclass
class Result:
    scenario: str
    concurrency: int
    requests: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))
        return ordered[index] * 1000


async def run_fixed(
    client: httpx.AsyncClient, request: Request, total: int, concurrency: int
) -> tuple[float, list[float]]:
    """Send `total` requests, `concurrency` in flight at a time; every answer must be 200."""
    latencies: list[float] = []
    remaining = iter(range(total))

    async def lane() -> None:
        for _ in remaining:
            start = time.perf_counter()
            response = await request(client)
            latencies.append(time.perf_counter() - start)
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {response.text[:500]}")

    began = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return time.perf_counter() - began, latencies


async def bench(url: str, messages: int, requests: int, levels: list[int]) -> list[Result]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=f"{url}/v1", timeout=60, limits=limits) as client:
        # Seed in one request: `POST /threads` takes the initial messages (no count limit in
        # OpenAI's spec), which is one transaction instead of 10,000.
        print(f"seeding a thread with {messages:,} messages in one POST /threads ...", flush=True)
        began = time.perf_counter()
        seeded = await client.post(
            "/threads",
            json={
                "messages": [
                    {"role": "user" if i % 2 == 0 else "assistant", "content": f"seed {i}"}
                    for i in range(messages)
                ]
            },
        )
        seconds = time.perf_counter() - began
        if seeded.status_code != 200:
            raise RuntimeError(f"seeding failed: {seeded.status_code} {seeded.text[:500]}")
        thread_id = seeded.json()["id"]
        print(f"  seeded {thread_id} in {seconds:.1f}s ({messages / seconds:,.0f} messages/s)")
        messages_url = f"/threads/{thread_id}/messages"
        counter = iter(range(10**9))

        async def create(c: httpx.AsyncClient) -> httpx.Response:
            n = next(counter)
            return await c.post(messages_url, json={"role": "user", "content": f"message {n}"})

        # A cursor deep in the thread: the message in the middle of the default (newest
        # first) order, found by walking the pages once.
        middle = messages // 2
        cursor: str | None = None
        walked = 0
        while walked < middle:
            params = {"limit": 100, **({"after": cursor} if cursor else {})}
            page = (await client.get(messages_url, params=params)).json()
            take = min(100, middle - walked)
            cursor = page["data"][take - 1]["id"]
            walked += take

        async def list_first(c: httpx.AsyncClient) -> httpx.Response:
            return await c.get(messages_url, params={"limit": 20})

        async def list_deep(c: httpx.AsyncClient) -> httpx.Response:
            return await c.get(messages_url, params={"limit": 20, "after": cursor})

        scenarios: list[tuple[str, Request]] = [
            ("create message", create),
            ("list, first page (limit 20)", list_first),
            (f"list, after #{middle:,} (limit 20)", list_deep),
        ]
        results = []
        for name, request in scenarios:
            for concurrency in levels:
                await run_fixed(client, request, min(50, requests), concurrency)  # warm-up
                seconds, latencies = await run_fixed(client, request, requests, concurrency)
                result = Result(name, concurrency, requests, seconds, latencies)
                results.append(result)
                print(
                    f"  {name:<32} c={concurrency:<3} {result.rps:8.0f} req/s  "
                    f"p50 {result.percentile(0.5):6.1f} ms  p99 {result.percentile(0.99):6.1f} ms",
                    flush=True,
                )
        total = (await client.get(messages_url, params={"limit": 1})).json()
        assert total["data"], "thread unexpectedly empty"
        return results


def print_table(results: list[Result], argv: list[str], messages: int) -> None:
    print()
    print(f"command: {' '.join(shlex.quote(a) for a in argv)}")
    print(
        f"server:  embedded hal9100 serve (SQLite), loopback; python {platform.python_version()}, "
        f"{platform.machine()}; thread of {messages:,} messages (grows with the create runs)"
    )
    header = f"| {'scenario':<32} | {'conc.':>5} | {'requests':>8} | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} |"
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for r in results:
        print(
            f"| {r.scenario:<32} | {r.concurrency:>5} | {r.requests:>8} | {r.rps:>8.0f} | "
            f"{r.percentile(0.5):>7.1f} | {r.percentile(0.99):>7.1f} |"
        )


def _shown_python() -> str:
    """The interpreter as the user typed it, relative to the current folder when inside it."""
    python = Path(sys.executable)
    try:
        return str(python.relative_to(Path.cwd()))
    except ValueError:
        return str(python)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="messages in the thread")
    parser.add_argument("--requests", type=int, default=1000, help="requests per scenario")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 16], help="requests in flight"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hal9100-bench-") as tmp:
        env = {
            "HAL9100_API_KEY": "",
            # Access logs to a file would be part of every request's cost.
            "HAL9100_LOG_LEVEL": "warning",
            "DATABASE_URL": "",
            "REDIS_URL": "",
            "S3_ENDPOINT": "",
        }
        server = ServerProcess(env, Path(tmp))
        try:
            server.wait_ready()
            print(f"server at {server.url} (data in {tmp})", flush=True)
            began = time.perf_counter()
            results = asyncio.run(bench(server.url, args.messages, args.requests, args.concurrency))
            print(f"benchmark took {time.perf_counter() - began:.0f}s")
        except BaseException:
            print(server.log(), file=sys.stderr)
            raise
        finally:
            server.stop()
    print_table(results, [_shown_python(), *sys.argv], args.messages)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
