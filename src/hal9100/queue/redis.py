"""Task dispatch through Redis with SAQ, for API and worker processes on many machines.

SAQ was chosen over arq because it dequeues with a blocking list move (BLMOVE): a worker
takes a run the moment it is queued, where arq polls a sorted set (0.5 s by default), which
would sit in every run's time to first token. The queue only carries "task T has work for
key K"; the state and its lease live in the database, so a job delivered twice runs once and
a job lost with Redis is re-dispatched by the sweeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from saq import Worker
from saq.queue.redis import RedisQueue as SaqRedisQueue

from hal9100.queue.base import EXECUTE_RUN, Handler


class _Queue(SaqRedisQueue):
    """SAQ's Redis queue without its stuck-job sweep.

    That sweep snapshots the active jobs and aborts those it takes for stuck, which includes
    a job a worker has dequeued but not yet marked active: it cancelled runs mid-stream under
    load, and its five-second waits held up every shutdown. A run's liveness is its database
    lease, and HAL-9100's own sweeper re-dispatches runs whose lease lapsed."""

    async def sweep(self, lock: int = 60, abort: float = 5.0) -> list[str]:
        return []


log = logging.getLogger(__name__)


class RedisTaskQueue:
    """One SAQ queue per task, so each task has its own lane and concurrency. A run's queue
    keeps the name it had before tasks had lanes (`<prefix>-runs`)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "hal9100",
        drain_seconds: int = 30,
        max_connections: int = 10_000,
    ) -> None:
        self.url = url
        self.max_connections = max_connections
        self.prefix = prefix
        self.drain_seconds = drain_seconds
        self._queues: dict[str, _Queue] = {}
        self._workers: list[tuple[Worker[Any], asyncio.Task[None]]] = []
        self._closed = False

    def queue(self, task: str, worker: str | None = None) -> _Queue:
        lane = f"{task}@{worker}" if worker else task
        if lane not in self._queues:
            name = f"{self.prefix}-runs" if task == EXECUTE_RUN else f"{self.prefix}-{task}"
            if worker:
                name = f"{name}@{worker}"
            # Not SAQ's from_url, which leaves redis-py's pool at 100 connections: a worker
            # holds one per run slot in a blocking dequeue.
            client = Redis.from_url(self.url, max_connections=self.max_connections)
            queue = _Queue(client, name=name)
            self._queues[lane] = queue
        return self._queues[lane]

    async def enqueue(self, task: str, key: str, *, worker: str | None = None) -> None:
        """Hand the task to a worker. If Redis is down its work stays on record in the
        database (a run stays queued), and the sweeper dispatches it once its dispatch
        deadline passes."""
        try:
            await self._enqueue(task, key, worker)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            log.warning("%s %s: Redis unavailable, leaving dispatch to the sweeper", task, key)

    async def _enqueue(self, task: str, key: str, worker: str | None) -> None:
        await self.queue(task, worker).enqueue(
            task,
            task_key=key,
            # A fresh job key each time: the same run is queued again after tool outputs
            # while its previous job may still be closing; the database lease de-duplicates.
            key=f"{key}:{uuid.uuid4().hex}",
            timeout=0,
            retries=1,
            ttl=60,
        )

    async def start_consuming(
        self,
        handlers: Mapping[str, Handler],
        concurrency: Mapping[str, int],
        worker: str | None = None,
    ) -> None:
        def job(handler: Handler) -> Any:
            async def run(ctx: dict[str, Any], **kwargs: Any) -> None:
                # `run_id`: what jobs queued by HAL-9100 before named tasks carried.
                await handler(kwargs.get("task_key") or kwargs["run_id"])

            return run

        lanes: list[tuple[str, str | None]] = [(task, None) for task in handlers]
        if worker:
            # Runs routed to this worker (its code_interpreter sessions), in a lane of its
            # own that no other worker reads.
            lanes += [(task, worker) for task in handlers if task == EXECUTE_RUN]
        for task, own in lanes:
            handler = handlers[task]
            # The worker's own lane takes an eighth of the task's concurrency and the
            # shared lane the rest: together they never pass it.
            share = max(1, concurrency[task] // 8) if worker and task == EXECUTE_RUN else 0
            consumer: Worker[Any] = Worker(
                self.queue(task, own),
                functions=[(task, job(handler))],
                concurrency=share if own else max(1, concurrency[task] - share),
                shutdown_grace_period_s=self.drain_seconds,
                # SAQ's stop waits for all its loops, which notice the stop only between
                # sleeps and dequeue timeouts: short ones let an idle worker exit within a
                # second, while tasks in hand get the whole grace period.
                dequeue_timeout=1,
                timers={"sweep": 1, "schedule": 1, "worker_info": 1, "abort": 1},
            )
            # The process owns its signals (uvicorn's, or `hal9100 worker`'s drain); SAQ
            # must not take them over.
            consumer.SIGNALS = []
            name = f"saq-worker-{task}" + (f"@{own}" if own else "")
            self._workers.append((consumer, asyncio.create_task(consumer.start(), name=name)))

    async def aclose(self) -> None:
        """Stop taking tasks, let the ones in hand finish (up to drain_seconds), then go."""
        workers, self._workers = self._workers, []
        for worker, _ in workers:
            worker.event.set()
        for _, task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not self._closed:
            self._closed = True
            for queue in self._queues.values():
                await queue.disconnect()
