"""The in-process task queue of embedded mode: an asyncio queue and a fixed set of consumers
per task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from hal9100.queue.base import Handler

log = logging.getLogger(__name__)


class MemoryTaskQueue:
    def __init__(self, drain_seconds: float = 30.0) -> None:
        self._queues: dict[str, asyncio.Queue[str | None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.drain_seconds = drain_seconds

    def _lane(self, task: str) -> asyncio.Queue[str | None]:
        return self._queues.setdefault(task, asyncio.Queue())

    async def enqueue(self, task: str, key: str, *, worker: str | None = None) -> None:
        # One process consumes everything: there is no other worker to route to.
        self._lane(task).put_nowait(key)

    async def start_consuming(
        self,
        handlers: Mapping[str, Handler],
        concurrency: Mapping[str, int],
        worker: str | None = None,
    ) -> None:
        for task, handler in handlers.items():
            lane = self._lane(task)
            for index in range(concurrency[task]):
                self._tasks.append(
                    asyncio.create_task(
                        self._consume(task, lane, handler), name=f"{task}-worker-{index}"
                    )
                )

    async def _consume(self, task: str, lane: asyncio.Queue[str | None], handler: Handler) -> None:
        while (key := await lane.get()) is not None:
            try:
                await handler(key)
            except Exception:
                # Handlers record failures on what they work on; this only keeps the worker
                # alive if something escaped them.
                log.exception("%s %s: handler raised", task, key)

    async def aclose(self) -> None:
        """Finish the tasks in hand (up to drain_seconds); what was still waiting keeps its
        state in the database (a run stays `queued`, a file `in_progress`), and the sweeper
        of the next process to start picks it up."""
        for lane in self._queues.values():
            while not lane.empty():
                lane.get_nowait()
        for task in self._tasks:
            # One stop per consumer, in the lane it reads (its name starts with the task).
            self._queues[task.get_name().rsplit("-worker-", 1)[0]].put_nowait(None)
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=self.drain_seconds)
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*pending, return_exceptions=True)
        self._tasks.clear()
