"""The in-process run queue of embedded mode: an asyncio queue and a fixed set of tasks."""

from __future__ import annotations

import asyncio
import logging

from hal9100.queue.base import RunHandler

log = logging.getLogger(__name__)


class MemoryRunQueue:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def enqueue(self, run_id: str) -> None:
        self._queue.put_nowait(run_id)

    async def start_consuming(self, handler: RunHandler, concurrency: int) -> None:
        for index in range(concurrency):
            self._tasks.append(
                asyncio.create_task(self._consume(handler), name=f"run-worker-{index}")
            )

    async def _consume(self, handler: RunHandler) -> None:
        while True:
            run_id = await self._queue.get()
            try:
                await handler(run_id)
            except Exception:
                # The executor records failures on the run itself; this only keeps the
                # worker alive if something escaped it.
                log.exception("run %s: executor raised", run_id)
            finally:
                self._queue.task_done()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
