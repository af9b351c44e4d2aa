"""What HAL-9100 adds to a streamed answer: time to first token and time per token.

The scripted LLM (tests/scripted_llm.py, in a thread of this process) and one embedded
`hal9100 serve` subprocess, started as the test suite starts it (tests/deployments.py), all on
loopback. At each concurrency level the same answer ([[tokens:N]], N one-word chunks) is
streamed two ways, in alternating batches so both see the same machine:

* through HAL-9100: `POST /v1/threads/{id}/runs` with `stream: true`, read as the SDK reads
  it; time to first token is from sending the request to the first `thread.message.delta`;
* directly: `POST /v1/chat/completions` with `stream: true` to the scripted LLM; time to first
  token is from sending the request to the first chunk with `delta.content`.

The time per token of a stream is the time from its first delta to its last, divided by the
gaps between them (HAL-9100 writes the events already waiting in one go, so single gaps say
little). Both clients decode every delta's JSON, as a real client does. The "added" rows are
HAL-9100's percentile minus the direct one.

    .venv/bin/python bench/bench_streaming.py [--streams 200 500] [--concurrency 1 100]
        [--tokens 50] [--slow MS]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_runs import command_line  # noqa: E402

from deployments import server_env, start_embedded  # noqa: E402
from scripted_llm import ScriptedLLM  # noqa: E402

FINAL_EVENTS = {
    "thread.run.completed",
    "thread.run.failed",
    "thread.run.incomplete",
    "thread.run.cancelled",
    "thread.run.expired",
    "thread.run.requires_action",
    "error",
}


@dataclass
class Stream:
    """One streamed answer, timed on the client."""

    ttft: float
    per_token: float
    deltas: int
    outcome: str


@dataclass
class Batch:
    streams: list[Stream] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ttfts(self) -> list[float]:
        return [s.ttft for s in self.streams]

    @property
    def per_token(self) -> list[float]:
        return [s.per_token for s in self.streams]


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                str(c).ljust(w) if i < 2 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def bench_env(llm: ScriptedLLM, concurrency: int) -> dict[str, str]:
    return {
        **server_env(llm),
        # No access log; and enough run executors that no measured run waits for one.
        "HAL9100_LOG_LEVEL": "warning",
        "HAL9100_WORKER_CONCURRENCY": str(max(64, concurrency + 16)),
    }


# --------------------------------------------------------------------------- one stream


async def through_hal(client: httpx.AsyncClient, assistant_id: str, thread_id: str) -> Stream:
    times: list[float] = []
    outcome = "no final event"
    started = time.perf_counter()
    async with client.stream(
        "POST",
        f"/v1/threads/{thread_id}/runs",
        json={"assistant_id": assistant_id, "stream": True},
    ) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"create run: {response.status_code} {response.text[:300]}")
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                if event == "thread.message.delta":
                    delta = json.loads(line[6:])
                    if delta["delta"]["content"][0]["text"]["value"]:
                        times.append(time.perf_counter())
                elif event in FINAL_EVENTS:
                    outcome = event
    return _stream(started, times, outcome)


async def through_responses(client: httpx.AsyncClient, text: str) -> Stream:
    """A streamed `POST /v1/responses`: the first token is the first non-empty
    `response.output_text.delta`."""
    times: list[float] = []
    outcome = "no final event"
    started = time.perf_counter()
    async with client.stream(
        "POST",
        "/v1/responses",
        json={"model": "bench-model", "input": text, "instructions": "Benchmark.", "stream": True},
    ) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"create response: {response.status_code} {response.text[:300]}")
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                if event == "response.output_text.delta":
                    if json.loads(line[6:])["delta"]:
                        times.append(time.perf_counter())
                elif event == "response.completed":
                    outcome = FINAL_OK  # the same outcome, for the tally
                elif event in ("response.failed", "response.incomplete", "error"):
                    outcome = event
    return _stream(started, times, outcome)


async def direct(client: httpx.AsyncClient, text: str) -> Stream:
    times: list[float] = []
    outcome = "no [DONE]"
    started = time.perf_counter()
    async with client.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": "bench-model",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": text}],
        },
    ) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"completion: {response.status_code} {response.text[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                outcome = "thread.run.completed"  # the same outcome, for the tally
                break
            chunk = json.loads(line[6:])
            if any(c["delta"].get("content") for c in chunk["choices"]):
                times.append(time.perf_counter())
    return _stream(started, times, outcome)


def _stream(started: float, times: list[float], outcome: str) -> Stream:
    if not times:
        return Stream(float("nan"), float("nan"), 0, outcome)
    per_token = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 0.0
    return Stream(times[0] - started, per_token, len(times), outcome)


# --------------------------------------------------------------------------- batches


async def create_threads(client: httpx.AsyncClient, text: str, count: int) -> list[str]:
    """Threads with the prompt in place (not timed): a thread takes one run at a time."""
    semaphore = asyncio.Semaphore(16)

    async def one() -> str:
        async with semaphore:
            response = await client.post(
                "/v1/threads", json={"messages": [{"role": "user", "content": text}]}
            )
            response.raise_for_status()
            return str(response.json()["id"])

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def batch(concurrency: int, count: int, start: object) -> Batch:
    """`count` streams, `concurrency` at a time; `start(i)` opens stream i."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(index: int) -> Stream:
        async with semaphore:
            return await start(index)  # type: ignore[operator, no-any-return]

    began = time.perf_counter()
    streams = await asyncio.gather(*(one(i) for i in range(count)))
    return Batch(list(streams), time.perf_counter() - began)


async def measure(
    hal_url: str,
    llm_url: str,
    concurrency: int,
    streams: int,
    text: str,
    tokens: int,
    warmup: int,
    api: str = "assistants",
) -> tuple[Batch, Batch]:
    limits = httpx.Limits(max_connections=concurrency + 32, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(120)
    async with (
        httpx.AsyncClient(base_url=hal_url, limits=limits, timeout=timeout) as hal,
        httpx.AsyncClient(base_url=llm_url, limits=limits, timeout=timeout) as llm,
    ):
        response = await hal.post(
            "/v1/assistants", json={"model": "bench-model", "instructions": "Benchmark."}
        )
        response.raise_for_status()
        assistant_id = response.json()["id"]

        # Alternate batches of at most `wave` streams so both paths share the machine's state.
        wave = max(concurrency, min(streams, 100))
        hal_all, direct_all = Batch(), Batch()
        plan = [(warmup, False)] if warmup else []
        left = streams
        while left > 0:
            plan.append((min(wave, left), True))
            left -= wave
        for size, counted in plan:
            if api == "responses":
                through = await batch(concurrency, size, lambda i: through_responses(hal, text))
            else:
                threads = await create_threads(hal, text, size)
                through = await batch(
                    concurrency, size, lambda i, t=threads: through_hal(hal, assistant_id, t[i])
                )
            straight = await batch(concurrency, size, lambda i: direct(llm, text))
            if counted:
                hal_all.streams += through.streams
                hal_all.seconds += through.seconds
                direct_all.streams += straight.streams
                direct_all.seconds += straight.seconds
    for name, measured in (("HAL-9100", hal_all), ("direct", direct_all)):
        check_streams(name, concurrency, measured, tokens)
    return hal_all, direct_all


FINAL_OK = "thread.run.completed"


def check_streams(name: str, concurrency: int, measured: Batch, tokens: int) -> None:
    """Raise unless every stream carried all `tokens` deltas and ended well."""
    wrong = [s for s in measured.streams if s.deltas != tokens or s.outcome != FINAL_OK]
    if wrong:
        raise RuntimeError(
            f"{name} at concurrency {concurrency}: {len(wrong)} streams did not end well "
            f"(first: {wrong[0].deltas} deltas, {wrong[0].outcome})"
        )


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 100], help="streams in flight"
    )
    parser.add_argument(
        "--streams",
        type=int,
        nargs="+",
        default=[200, 500],
        help="measured streams per path at each concurrency level (one value, or one each)",
    )
    parser.add_argument("--tokens", type=int, default=50, help="chunks in each answer")
    parser.add_argument(
        "--api",
        choices=["assistants", "responses"],
        default="assistants",
        help="stream an Assistants run (POST /threads/{id}/runs) or a response (POST /responses)",
    )
    parser.add_argument(
        "--slow", type=int, default=0, help="milliseconds the LLM waits between chunks"
    )
    args = parser.parse_args()
    counts = args.streams * len(args.concurrency) if len(args.streams) == 1 else args.streams
    if len(counts) != len(args.concurrency):
        parser.error("give one --streams value, or one per --concurrency level")

    text = f"[[tokens:{args.tokens}]]" + (f" [[slow:{args.slow}]]" if args.slow else "")
    llm = ScriptedLLM().start()
    data_dir = Path(tempfile.mkdtemp(prefix="hal9100-bench-streaming-"))
    deployment = start_embedded(bench_env(llm, max(args.concurrency)), data_dir)
    rows: list[list[str]] = []
    began = time.perf_counter()
    try:
        for concurrency, count in zip(args.concurrency, counts, strict=True):
            warmup = min(count, max(20, concurrency))
            hal, straight = asyncio.run(
                measure(
                    deployment.url,
                    llm.url,
                    concurrency,
                    count,
                    text,
                    args.tokens,
                    warmup,
                    args.api,
                )
            )
            for name, measured in (("direct", straight), ("HAL-9100", hal)):
                rows.append(
                    [
                        f"c={concurrency}",
                        name,
                        str(len(measured.streams)),
                        ms(percentile(measured.ttfts, 50)),
                        ms(percentile(measured.ttfts, 99)),
                        ms(percentile(measured.per_token, 50)),
                        ms(percentile(measured.per_token, 99)),
                        f"{len(measured.streams) / measured.seconds:.0f}",
                    ]
                )
            rows.append(
                [
                    f"c={concurrency}",
                    "added",
                    "",
                    *(
                        ms(percentile(hal_values, q) - percentile(direct_values, q))
                        for hal_values, direct_values in (
                            (hal.ttfts, straight.ttfts),
                            (hal.per_token, straight.per_token),
                        )
                        for q in (50, 99)
                    ),
                    "",
                ]
            )
            print(
                f"c={concurrency}: {count} streams each way done "
                f"({time.perf_counter() - began:.0f}s so far)",
                flush=True,
            )
    finally:
        deployment.stop()
        llm.stop()

    print()
    print(
        f"Streamed answers of {args.tokens} chunks"
        + (f", {args.slow} ms apart at the LLM" if args.slow else ", sent by the LLM at once")
        + "; times in milliseconds, measured by the client."
    )
    print(
        table(
            [
                "level",
                "path",
                "streams",
                "TTFT p50",
                "TTFT p99",
                "per-token p50",
                "per-token p99",
                "streams/s",
            ],
            rows,
        )
    )
    print()
    print(
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, total {time.perf_counter() - began:.0f}s"
    )
    print(f"command: {command_line()}")


if __name__ == "__main__":
    main()
