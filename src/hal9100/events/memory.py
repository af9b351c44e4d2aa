"""The in-process event channel of embedded mode."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from hal9100.events.base import CLOSING_EVENTS, TERMINAL_EVENTS, RunEvent

# How long a finished run's log stays for late subscribers (a client that reconnects).
RETAIN_SECONDS = 60.0


class _RunLog:
    __slots__ = ("cancelled", "changed", "drop_handle", "events")

    def __init__(self) -> None:
        self.events: list[RunEvent] = []
        self.changed = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.drop_handle: asyncio.TimerHandle | None = None


class MemoryEventBus:
    def __init__(self, retain_seconds: float = RETAIN_SECONDS) -> None:
        self._logs: dict[str, _RunLog] = {}
        self._retain = retain_seconds

    def _log(self, run_id: str) -> _RunLog:
        log = self._logs.get(run_id)
        if log is None:
            log = self._logs[run_id] = _RunLog()
        return log

    async def publish(self, run_id: str, event: RunEvent) -> None:
        log = self._log(run_id)
        log.events.append(event)
        # Wake every waiting subscriber, then re-arm for the next event.
        log.changed.set()
        log.changed = asyncio.Event()
        if event.event in TERMINAL_EVENTS:
            if log.drop_handle is not None:
                log.drop_handle.cancel()
            log.drop_handle = asyncio.get_running_loop().call_later(
                self._retain, self._drop, run_id, log
            )

    def _drop(self, run_id: str, log: _RunLog) -> None:
        if self._logs.get(run_id) is log:
            del self._logs[run_id]

    async def position(self, run_id: str) -> str:
        return str(len(self._log(run_id).events))

    async def subscribe(self, run_id: str, after: str) -> AsyncIterator[RunEvent]:
        index = int(after)
        while True:
            log = self._log(run_id)
            while index < len(log.events):
                event = log.events[index]
                index += 1
                yield event
                if event.event in CLOSING_EVENTS:
                    return
            await log.changed.wait()

    async def request_cancel(self, run_id: str) -> None:
        self._log(run_id).cancelled.set()

    async def wait_cancel(self, run_id: str) -> None:
        await self._log(run_id).cancelled.wait()

    def forget(self, run_id: str) -> None:
        """Drop a run's state at once (its executor finished and nobody streams it)."""
        log = self._logs.get(run_id)
        if log is not None and not log.events:
            del self._logs[run_id]

    async def aclose(self) -> None:
        for log in self._logs.values():
            if log.drop_handle is not None:
                log.drop_handle.cancel()
        self._logs.clear()
