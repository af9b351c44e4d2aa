"""HAL-9100 against LiteLLM's proxy: the time to first token each adds over the model.

The scripted LLM (tests/scripted_llm.py, in a thread of this process), LiteLLM's proxy (from
PyPI, pinned to 1.82.6, in its own virtualenv, started as a subprocess with an offline
config: no database, no callbacks, no retries) and one embedded `hal9100 serve` subprocess
(tests/deployments.py), all on loopback and all answering from the same scripted LLM. At each
concurrency level the same answer ([[tokens:N]] [[slow:MS]]: N one-word chunks, MS apart) is
streamed four ways, in interleaved batches (the order rotating from batch to batch) so all
see the same machine:

* direct: `POST /v1/chat/completions` with `stream: true` to the scripted LLM;
* LiteLLM: the same request to the proxy (its model `bench-model` is `openai/bench-model`
  with `api_base` the scripted LLM);
* HAL-9100 Assistants: `POST /v1/threads/{id}/runs` with `stream: true` (the threads, each
  with its user message, are created beforehand and not timed);
* HAL-9100 Responses: `POST /v1/responses` with `stream: true` (stored, the default).

Time to first token (TTFT) is from sending the request to the first chunk with
`delta.content`, the first `thread.message.delta` or the first `response.output_text.delta`.
Every stream is checked to carry all N deltas and to end well. "Added" is a path's
percentile minus the direct one; the target is HAL-9100's added p50 and p99 at most half of
LiteLLM's, at each level, for both APIs.

    .venv/bin/python bench/bench_vs_litellm.py [--litellm ../litellm-venv]
        [--concurrency 1 50] [--streams 50 300] [--tokens 20] [--slow 20]

LiteLLM's virtualenv (from the repository root):
    python3 -m venv ../litellm-venv && ../litellm-venv/bin/pip install "litellm[proxy]==1.82.6"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_runs import command_line  # noqa: E402
from bench_streaming import (  # noqa: E402
    Batch,
    batch,
    bench_env,
    check_streams,
    create_threads,
    direct,
    ms,
    percentile,
    table,
    through_hal,
    through_responses,
)

from deployments import free_port, start_embedded  # noqa: E402
from scripted_llm import ScriptedLLM  # noqa: E402

LITELLM_VERSION = "1.82.6"
# Uploads of litellm to PyPI that carried malware: never run them.
LITELLM_MALICIOUS = {"1.82.7", "1.82.8"}
CREATE_VENV = (
    'python3 -m venv ../litellm-venv && ../litellm-venv/bin/pip install "litellm[proxy]==1.82.6"'
)
MODEL = "bench-model"  # the name bench_streaming's requests use

DIRECT, LITELLM, ASSISTANTS, RESPONSES = (
    "direct",
    "LiteLLM",
    "HAL-9100 Assistants",
    "HAL-9100 Responses",
)
PATHS = (DIRECT, LITELLM, ASSISTANTS, RESPONSES)
# What counts as a problem in LiteLLM's log.
PROBLEM = re.compile(r"WARNING|ERROR|CRITICAL|Traceback|Exception")
TARGET = 0.5  # HAL-9100's added TTFT at most this fraction of LiteLLM's


# --------------------------------------------------------------------------- LiteLLM


def default_litellm_venv() -> str:
    return os.environ.get("LITELLM_VENV") or str(ROOT.parent / "litellm-venv")


def litellm_version(venv: Path) -> str:
    """The installed version, read from the package metadata (litellm is not imported)."""
    return subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


# Uvicorn's default logging, without the access log (HAL-9100 runs with its access log off).
LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "stream": "ext://sys.stderr",
        }
    },
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO"},
        "uvicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
    },
}


class LiteLLMProxy:
    """`litellm --config ...` in its own process group, answering from `llm_base_url`."""

    def __init__(self, venv: Path, llm_base_url: str, work_dir: Path) -> None:
        self.venv = venv
        self.work_dir = work_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = work_dir / "litellm-config.yaml"
        self.log_path = work_dir / "litellm.log"
        # JSON is YAML: the config needs no YAML library on this side.
        config = {
            "model_list": [
                {
                    "model_name": MODEL,
                    "litellm_params": {
                        "model": f"openai/{MODEL}",
                        "api_base": llm_base_url,
                        "api_key": "scripted",
                    },
                }
            ],
            "litellm_settings": {
                "num_retries": 0,
                "request_timeout": 600,
                "drop_params": True,
                "telemetry": False,
                "callbacks": [],
                "success_callback": [],
                "failure_callback": [],
            },
            # No database_url and no master_key: no spend logs, no keys, no auth.
            "general_settings": {"disable_spend_logs": True},
        }
        self.config_path.write_text(json.dumps(config, indent=2))
        (work_dir / "litellm-log-config.json").write_text(json.dumps(LOG_CONFIG, indent=2))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> None:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("DATABASE_URL", "DIRECT_URL", "LITELLM_MASTER_KEY", "REDIS_URL")
        }
        env.update(
            {
                "LITELLM_LOG": "ERROR",
                "LITELLM_TELEMETRY": "False",
                # The bundled model price map instead of fetching it from GitHub at import.
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "DISABLE_SCHEMA_UPDATE": "true",
                "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost",
            }
        )
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [
                    str(self.venv / "bin" / "litellm"),
                    "--config",
                    str(self.config_path),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--num_workers",
                    "1",
                    "--telemetry",
                    "False",
                    "--log_config",
                    str(self.work_dir / "litellm-log-config.json"),
                ],
                env=env,
                cwd=self.work_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one at the end
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"LiteLLM exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health/liveliness", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"LiteLLM did not start in {timeout:.0f}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-20000:]

    def problems(self) -> list[str]:
        """Lines of its log at level WARNING or above, or from a traceback; except the
        warning that no master key is set (none is, as HAL-9100 runs without an API key)."""
        return [
            line
            for line in self.log_path.read_text(errors="replace").splitlines()
            if PROBLEM.search(line) and "LITELLM_MASTER_KEY is not set" not in line
        ]

    def stop(self) -> None:
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc = None


# --------------------------------------------------------------------------- measuring


async def measure(
    urls: dict[str, str],
    concurrency: int,
    streams: int,
    wave: int,
    warmup: int,
    text: str,
    tokens: int,
) -> dict[str, Batch]:
    """Warm-up batches, then batches of `wave` streams per path, the paths taking turns."""
    limits = httpx.Limits(max_connections=concurrency + 32, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(120)
    async with (
        httpx.AsyncClient(base_url=urls[DIRECT], limits=limits, timeout=timeout) as llm,
        httpx.AsyncClient(base_url=urls[LITELLM], limits=limits, timeout=timeout) as litellm,
        httpx.AsyncClient(base_url=urls["hal"], limits=limits, timeout=timeout) as hal,
    ):
        response = await hal.post(
            "/v1/assistants", json={"model": MODEL, "instructions": "Benchmark."}
        )
        response.raise_for_status()
        assistant_id = response.json()["id"]

        async def assistants(size: int) -> Batch:
            threads = await create_threads(hal, text, size)  # not timed
            return await batch(
                concurrency, size, lambda i: through_hal(hal, assistant_id, threads[i])
            )

        run: dict[str, Callable[[int], Awaitable[Batch]]] = {
            DIRECT: lambda size: batch(concurrency, size, lambda i: direct(llm, text)),
            LITELLM: lambda size: batch(concurrency, size, lambda i: direct(litellm, text)),
            ASSISTANTS: assistants,
            RESPONSES: lambda size: batch(
                concurrency, size, lambda i: through_responses(hal, text)
            ),
        }
        for path in PATHS:
            await run[path](warmup)

        measured = {path: Batch() for path in PATHS}
        left, turn = streams, 0
        while left > 0:
            size = min(wave, left)
            for path in PATHS[turn % len(PATHS) :] + PATHS[: turn % len(PATHS)]:
                result = await run[path](size)
                measured[path].streams += result.streams
                measured[path].seconds += result.seconds
            left -= size
            turn += 1
    for path in PATHS:
        check_streams(path, concurrency, measured[path], tokens)
    return measured


# --------------------------------------------------------------------------- main


def machine() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {load}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--litellm",
        default=default_litellm_venv(),
        help="LiteLLM's virtualenv (default: $LITELLM_VENV, or ../litellm-venv next to the repo)",
    )
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 50], help="streams in flight"
    )
    parser.add_argument(
        "--streams",
        type=int,
        nargs="+",
        default=[50, 300],
        help="measured streams per path at each concurrency level (one value, or one each)",
    )
    parser.add_argument("--tokens", type=int, default=20, help="chunks in each answer")
    parser.add_argument(
        "--slow", type=int, default=20, help="milliseconds the LLM waits between chunks"
    )
    args = parser.parse_args()
    counts = args.streams * len(args.concurrency) if len(args.streams) == 1 else args.streams
    if len(counts) != len(args.concurrency):
        parser.error("give one --streams value, or one per --concurrency level")

    venv = Path(args.litellm).resolve()
    if not (venv / "bin" / "litellm").exists():
        sys.exit(
            f"LiteLLM's proxy is not installed in {venv}. Create its virtualenv, from the "
            f"repository root:\n\n    {CREATE_VENV}\n\nor point --litellm (or $LITELLM_VENV) "
            "at one."
        )
    version = litellm_version(venv)
    if version in LITELLM_MALICIOUS:
        sys.exit(f"litellm {version} in {venv} is a known malicious upload: remove it.")
    if version != LITELLM_VERSION:
        print(f"note: litellm {version} in {venv}; this benchmark is pinned to {LITELLM_VERSION}")

    # SIGTERM unwinds like Ctrl-C, so the servers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    text = f"[[tokens:{args.tokens}]]" + (f" [[slow:{args.slow}]]" if args.slow else "")
    print(f"machine at start: {machine()}", flush=True)
    work_dir = Path(tempfile.mkdtemp(prefix="hal9100-bench-vs-litellm-"))
    llm = ScriptedLLM().start()
    proxy = LiteLLMProxy(venv, llm.base_url, work_dir)
    deployment = None
    rows: list[list[str]] = []
    verdicts: list[list[str]] = []
    began = time.perf_counter()
    try:
        proxy.start()
        deployment = start_embedded(bench_env(llm, max(args.concurrency)), work_dir / "hal9100")
        print(f"LiteLLM {version} and HAL-9100 ready ({time.perf_counter() - began:.0f}s)")
        urls = {DIRECT: llm.url, LITELLM: proxy.url, "hal": deployment.url}
        for concurrency, count in zip(args.concurrency, counts, strict=True):
            measured = asyncio.run(
                measure(
                    urls,
                    concurrency,
                    count,
                    wave=min(count, max(25, 2 * concurrency)),
                    warmup=min(count, max(5, concurrency)),
                    text=text,
                    tokens=args.tokens,
                )
            )
            base = {q: percentile(measured[DIRECT].ttfts, q) for q in (50, 99)}
            added = {
                path: {q: percentile(measured[path].ttfts, q) - base[q] for q in (50, 99)}
                for path in PATHS
            }
            for path in PATHS:
                ttfts = measured[path].ttfts
                rows.append(
                    [
                        f"c={concurrency}",
                        path,
                        str(len(ttfts)),
                        ms(percentile(ttfts, 50)),
                        ms(percentile(ttfts, 99)),
                        "" if path == DIRECT else ms(added[path][50]),
                        "" if path == DIRECT else ms(added[path][99]),
                    ]
                )
            for path in (ASSISTANTS, RESPONSES):
                for q in (50, 99):
                    ours, theirs = added[path][q], added[LITELLM][q]
                    verdicts.append(
                        [
                            f"c={concurrency}",
                            path,
                            f"p{q}",
                            ms(ours),
                            ms(theirs),
                            f"{ours / theirs:.2f}" if theirs > 0 else "n/a",
                            f"<= {TARGET:.2f}",
                            "met" if ours <= TARGET * theirs else "not met",
                        ]
                    )
            print(
                f"c={concurrency}: {count} streams per path done "
                f"({time.perf_counter() - began:.0f}s so far)",
                flush=True,
            )
    finally:
        if deployment is not None:
            deployment.stop()
        proxy.stop()
        llm.stop()

    print()
    print(
        f"Streamed answers of {args.tokens} chunks"
        + (f", {args.slow} ms apart at the LLM" if args.slow else ", sent by the LLM at once")
        + "; time to first token in milliseconds, measured by the client; added = the "
        "path's percentile minus the direct one."
    )
    print(
        table(["level", "path", "streams", "TTFT p50", "TTFT p99", "added p50", "added p99"], rows)
    )
    print()
    print(f"Target: HAL-9100's added TTFT at most {TARGET:.2f} x LiteLLM's (p50 and p99).")
    print(
        table(
            [
                "level",
                "HAL-9100 path",
                "pct",
                "HAL-9100 added",
                "LiteLLM added",
                "ratio",
                "target",
                "result",
            ],
            verdicts,
        )
    )
    print()
    problems = proxy.problems()
    print(
        f"LiteLLM {version} log ({proxy.log_path}): "
        + (f"{len(problems)} error/warning lines, first:" if problems else "no errors or warnings")
    )
    for line in problems[:5]:
        print(f"    {line[:200]}")
    print(f"machine at end: {machine()}; total {time.perf_counter() - began:.0f}s")
    print(f"command: {command_line()}")


if __name__ == "__main__":
    main()
