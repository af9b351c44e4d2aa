"""The run queue: the API enqueues run ids; workers take them and call the executor.

The queue only says "this run has work to do". The database holds the run's state and a
lease on it, so a run delivered twice executes once, and a run lost from the queue is found
again by the sweeper.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

RunHandler = Callable[[str], Awaitable[None]]


class RunQueue(Protocol):
    async def enqueue(self, run_id: str) -> None: ...

    async def start_consuming(self, handler: RunHandler, concurrency: int) -> None:
        """Begin calling `handler(run_id)` for queued runs, at most `concurrency` at once."""
        ...

    async def aclose(self) -> None:
        """Stop taking runs and wait for the ones in hand to finish."""
        ...
