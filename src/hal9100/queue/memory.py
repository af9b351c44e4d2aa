"""The in-process run queue of embedded mode: an asyncio queue and a fixed set of tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from hal9100.queue.base import RunHandler

log = logging.getLogger(__name__)


class MemoryRunQueue:
    def __init__(self, drain_seconds: float = 30.0) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.drain_seconds = drain_seconds

    async def enqueue(self, run_id: str) -> None:
        self._queue.put_nowait(run_id)

    async def start_consuming(self, handler: RunHandler, concurrency: int) -> None:
        for index in range(concurrency):
            self._tasks.append(
                asyncio.create_task(self._consume(handler), name=f"run-worker-{index}")
            )

    async def _consume(self, handler: RunHandler) -> None:
        while (run_id := await self._queue.get()) is not None:
            try:
                await handler(run_id)
            except Exception:
                # The executor records failures on the run itself; this only keeps the
                # worker alive if something escaped it.
                log.exception("run %s: executor raised", run_id)

    async def aclose(self) -> None:
        """Finish the runs in hand (up to drain_seconds); runs still waiting stay `queued` in
        the database, and the sweeper of the next process to start picks them up."""
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
