"""Each task has a lane of its own in both queues: a backlog of one task (files to ingest)
never holds up another (runs)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from deployments import REDIS_URL, production_unavailable
from hal9100.queue.base import EXECUTE_RUN, INGEST_FILE, TaskQueue
from hal9100.queue.memory import MemoryTaskQueue
from hal9100.queue.redis import RedisTaskQueue


@pytest.fixture(params=["memory", "redis"])
async def queue(request: pytest.FixtureRequest) -> AsyncIterator[TaskQueue]:
    made: TaskQueue
    if request.param == "redis":
        reason = production_unavailable()
        if reason:
            pytest.skip(reason)
        made = RedisTaskQueue(REDIS_URL, prefix=f"hal9100_lanes_{uuid.uuid4().hex[:8]}")
    else:
        made = MemoryTaskQueue()
    yield made
    await made.aclose()


async def test_a_backlog_of_one_task_does_not_hold_up_another(queue: TaskQueue) -> None:
    release = asyncio.Event()
    done: list[str] = []
    run_done = asyncio.Event()

    async def ingest(key: str) -> None:
        await release.wait()
        done.append(key)

    async def execute(key: str) -> None:
        done.append(key)
        run_done.set()

    await queue.start_consuming(
        {EXECUTE_RUN: execute, INGEST_FILE: ingest}, {EXECUTE_RUN: 4, INGEST_FILE: 1}
    )
    for index in range(20):
        await queue.enqueue(INGEST_FILE, f"file-{index}")
    await queue.enqueue(EXECUTE_RUN, "run-1")
    # The run goes through while every file waits (one in hand, nineteen queued).
    await asyncio.wait_for(run_done.wait(), timeout=30)
    assert done == ["run-1"]
    release.set()
    for _ in range(600):
        if len(done) == 21:
            break
        await asyncio.sleep(0.05)
    assert sorted(done) == sorted(["run-1", *(f"file-{i}" for i in range(20))])
