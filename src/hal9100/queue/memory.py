"""The in-process task queue of embedded mode: an asyncio queue and a fixed set of tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from hal9100.queue.base import Handler

log = logging.getLogger(__name__)


class MemoryTaskQueue:
    def __init__(self, drain_seconds: float = 30.0) -> None:
        self._queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.drain_seconds = drain_seconds

    async def enqueue(self, task: str, key: str) -> None:
        self._queue.put_nowait((task, key))

    async def start_consuming(self, handlers: Mapping[str, Handler], concurrency: int) -> None:
        for index in range(concurrency):
            self._tasks.append(
                asyncio.create_task(self._consume(handlers), name=f"task-worker-{index}")
            )

    async def _consume(self, handlers: Mapping[str, Handler]) -> None:
        while (item := await self._queue.get()) is not None:
            task, key = item
            try:
                await handlers[task](key)
            except Exception:
                # Handlers record failures on what they work on; this only keeps the worker
                # alive if something escaped them.
                log.exception("%s %s: handler raised", task, key)

    async def aclose(self) -> None:
        """Finish the tasks in hand (up to drain_seconds); what was still waiting keeps its
        state in the database (a run stays `queued`), and the sweeper of the next process to
        start picks it up."""
        while not self._queue.empty():
            self._queue.get_nowait()
        for _ in self._tasks:
            self._queue.put_nowait(None)
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=self.drain_seconds)
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*pending, return_exceptions=True)
        self._tasks.clear()
