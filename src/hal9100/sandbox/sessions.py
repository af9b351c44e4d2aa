"""Which session belongs to which thread, in this process, and the warm pool.

A thread keeps its session (variables, `/mnt/data`) between runs while it is used: it ends
after `idle_seconds` unused, and `max_seconds` after it started. A few sessions are kept
started ahead, with numpy, pandas and matplotlib imported, so that a thread's first cell does
not wait for a kernel to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from hal9100.sandbox.base import SandboxBackend, SandboxSession, SandboxUnavailable
from hal9100.sandbox.directory import BEAT_SECONDS, LocalDirectory, SessionDirectory

log = logging.getLogger(__name__)

WARM_UP = "import numpy, pandas, matplotlib, matplotlib.pyplot"
"""Run silently in each pooled session: the imports the model's first cell nearly always does."""


@dataclass
class _Held:
    session: SandboxSession
    started: float
    used: float
    files: dict[str, str] = field(default_factory=dict)


@dataclass
class Lease:
    session: SandboxSession
    fresh: bool
    """The session was new to this key: no variables of earlier cells are in it."""
    files: dict[str, str]
    """Files put in the session's /mnt/data: file id -> path. Whoever puts one adds it."""


class Sessions:
    def __init__(
        self,
        backend: SandboxBackend,
        *,
        pool_size: int,
        idle_seconds: float,
        max_seconds: float,
        max_sessions: int,
        directory: SessionDirectory | None = None,
        worker_id: str = "",
    ) -> None:
        self.backend = backend
        self.directory = directory or LocalDirectory()
        self.worker_id = worker_id
        self.pool_size = pool_size
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self.max_sessions = max_sessions
        self.held: dict[str, _Held] = {}
        self.pool: list[_Held] = []
        self._filling: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._wanted: dict[str, int] = {}

    def start(self) -> None:
        """Begin filling the pool and ending stale sessions (in the running loop)."""
        self._reaper = asyncio.create_task(self._reap_forever())
        self._fill()

    @contextlib.asynccontextmanager
    async def lease(self, key: str) -> AsyncIterator[Lease]:
        """The session of `key`, for one caller at a time; a new one if it has none alive."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        # Counted, not read off the lock: between a release and the next waiter's wake-up
        # the lock is free, yet still wanted.
        self._wanted[key] = self._wanted.get(key, 0) + 1
        try:
            async with lock:
                held = self.held.get(key)
                fresh = False
                if held is None or not held.session.alive:
                    if held is not None:
                        del self.held[key]
                        await held.session.close()
                    held = await self._take()
                    self.held[key] = held
                    fresh = True
                # Runs of this thread are routed here while the session lives and is used.
                await self.directory.claim(key, self.worker_id, self.idle_seconds)
                try:
                    yield Lease(held.session, fresh, held.files)
                finally:
                    held.used = time.monotonic()
                    if held.session.alive:
                        # The idle lifetime counts from now: so does the claim.
                        await self.directory.claim(key, self.worker_id, self.idle_seconds)
                    elif self.held.get(key) is held:
                        del self.held[key]
                        try:
                            await held.session.close()
                        finally:
                            await self.directory.release(key, self.worker_id)
        finally:
            self._wanted[key] -= 1
            if not self._wanted[key]:
                del self._wanted[key]
                if key not in self.held:
                    self._locks.pop(key, None)
        await self._evict()

    def _busy(self, key: str) -> bool:
        return key in self._wanted

    async def end(self, key: str) -> None:
        held = self.held.pop(key, None)
        if not self._busy(key):
            self._locks.pop(key, None)
        if held is not None:
            try:
                await held.session.close()
            finally:
                await self.directory.release(key, self.worker_id)

    async def _take(self) -> _Held:
        now = time.monotonic()
        while self.pool:
            held = self.pool.pop(0)
            if held.session.alive and now - held.started < self.max_seconds:
                self._fill()
                held.used = now
                return held
            await held.session.close()
        self._fill()
        session = await self.backend.start()
        return _Held(session, now, now)

    def _fill(self) -> None:
        if self.pool_size and (self._filling is None or self._filling.done()):
            self._filling = asyncio.create_task(self._fill_pool())

    async def _fill_pool(self) -> None:
        while len(self.pool) < self.pool_size:
            try:
                session = await self.backend.start()
            except SandboxUnavailable as error:
                log.warning("the sandbox pool is not filled: %s", error)
                return
            try:
                result = await session.run_cell(WARM_UP, limit=120)
            except SandboxUnavailable as error:
                log.warning("a pooled sandbox session ended while warming up: %s", error)
                await session.close()
                return
            if result.error or result.state_lost:
                log.warning("a pooled sandbox session failed to warm up: %s", result.logs[-500:])
                await session.close()
                return
            now = time.monotonic()
            self.pool.append(_Held(session, now, now))

    async def _evict(self) -> None:
        """Past `max_sessions`, end the least recently used sessions not in use."""
        idle = sorted((held.used, key) for key, held in self.held.items() if not self._busy(key))
        for used, key in idle[: max(0, len(self.held) - self.max_sessions)]:
            held = self.held.get(key)
            # Ending the one before may have taken a while: check again that it is idle.
            if held is not None and held.used == used and not self._busy(key):
                await self.end(key)

    async def reap(self) -> None:
        now = time.monotonic()
        for key, held in list(self.held.items()):
            stale = now - held.used > self.idle_seconds or now - held.started > self.max_seconds
            if (stale or not held.session.alive) and not self._busy(key):
                await self.end(key)
        for held in list(self.pool):
            if not held.session.alive or now - held.started > self.max_seconds:
                self.pool.remove(held)
                await held.session.close()
        self._fill()

    async def _reap_forever(self) -> None:
        every = min(BEAT_SECONDS, self.idle_seconds / 4)
        while True:
            await self.directory.beat(self.worker_id)
            await asyncio.sleep(every)
            try:
                await self.reap()
            except Exception:
                log.exception("ending stale sandbox sessions failed")

    async def aclose(self) -> None:
        for task in (self._reaper, self._filling):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for key in list(self.held):
            await self.end(key)
        for held in self.pool:
            await held.session.close()
        self.pool.clear()
        await self.backend.aclose()
