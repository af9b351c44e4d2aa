"""The in-process event channel of embedded mode.

A run's log lives while someone uses it (a subscriber reads it, an executor waits for a
cancel request) and for `retain_seconds` after its last use, so a stream that subscribes a
little after the run finished (the API took its position first) still gets everything. Then
it is dropped, whatever state the run is in: a run that never reaches a terminal event here
(its thread was deleted, it waits for tool outputs that never come) leaves nothing behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from hal9100.events.base import CLOSING_EVENTS, RunEvent

# How long an unused run log stays (for late subscribers) before it is dropped.
RETAIN_SECONDS = 60.0


class _RunLog:
    __slots__ = ("cancelled", "changed", "events", "readers", "touched", "users")

    def __init__(self, stamp: float) -> None:
        self.events: list[RunEvent] = []
        self.changed = asyncio.Event()
        self.cancelled = asyncio.Event()
        # Subscribers and cancel waiters currently holding the log: it is never dropped
        # under them.
        self.users = 0
        self.readers = 0  # the subscribers among the users
        self.touched = stamp


class MemoryEventBus:
    START = "0"

    def __init__(self, retain_seconds: float = RETAIN_SECONDS) -> None:
        self._logs: dict[str, _RunLog] = {}
        self._retain = retain_seconds
        self._reaper: asyncio.TimerHandle | None = None

    def _log(self, run_id: str) -> _RunLog:
        loop = asyncio.get_running_loop()
        log = self._logs.get(run_id)
        if log is None:
            log = self._logs[run_id] = _RunLog(loop.time())
            if self._reaper is None:
                self._reaper = loop.call_later(self._retain / 2, self._reap)
        else:
            log.touched = loop.time()
        return log

    def _reap(self) -> None:
        """Drop the logs nobody used for `retain` seconds; re-arm while any are left."""
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - self._retain
        for run_id, log in list(self._logs.items()):
            if log.users == 0 and log.touched <= cutoff:
                del self._logs[run_id]
        self._reaper = loop.call_later(self._retain / 2, self._reap) if self._logs else None

    def held_runs(self) -> int:
        """How many run logs are held (for tests and diagnostics)."""
        return len(self._logs)

    async def publish(self, run_id: str, event: RunEvent) -> None:
        log = self._log(run_id)
        log.events.append(event)
        # Wake every waiting subscriber, then re-arm for the next event.
        log.changed.set()
        log.changed = asyncio.Event()
        if log.readers:
            # Let the subscribers run: an executor working through a burst of buffered
            # chunks would otherwise hold every event back until the burst is processed
            # (the Redis bus yields here anyway, on its round trip).
            await asyncio.sleep(0)

    async def position(self, run_id: str) -> str:
        return str(len(self._log(run_id).events))

    async def subscribe(self, run_id: str, after: str) -> AsyncIterator[RunEvent]:
        index = int(after)
        log = self._log(run_id)
        log.users += 1
        log.readers += 1
        try:
            while True:
                while index < len(log.events):
                    event = log.events[index]
                    index += 1
                    yield event
                    if event.event in CLOSING_EVENTS:
                        return
                await log.changed.wait()
        finally:
            log.users -= 1
            log.readers -= 1
            log.touched = asyncio.get_running_loop().time()

    async def request_cancel(self, run_id: str) -> None:
        self._log(run_id).cancelled.set()

    async def wait_cancel(self, run_id: str) -> None:
        log = self._log(run_id)
        log.users += 1
        try:
            await log.cancelled.wait()
        finally:
            log.users -= 1
            log.touched = asyncio.get_running_loop().time()

    def forget(self, run_id: str) -> None:
        """Drop a run's state at once if nobody uses it and nothing was published."""
        log = self._logs.get(run_id)
        if log is not None and not log.events and log.users == 0:
            del self._logs[run_id]

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        self._logs.clear()
