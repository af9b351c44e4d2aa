"""The Redis event channel of production mode.

Each run's events go to a Redis stream (`XADD`), so a subscriber on any API process reads
them in order from any position, and one that connects late still gets everything after the
position it took. Cancel requests travel by pub/sub, with a key as well so an executor that
starts after the request still sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from hal9100.events.base import CLOSING_EVENTS, RunEvent

log = logging.getLogger(__name__)
T = TypeVar("T")
# A Redis restart takes a moment. Writers wait a little for it (an event published late beats
# one lost); readers wait longer, so a client's stream survives the restart.
PUBLISH_PATIENCE = 2.0
READ_PATIENCE = 30.0
TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)


async def _cancellable(operation: Callable[[], Awaitable[T]], *, finish: bool) -> T:
    """Run one Redis operation so that a cancel of the caller always raises here.

    redis-py swallows a cancel that arrives mid-command (redis/redis-py#2028, still so in
    8.x: most cancels of a task awaiting XADD are lost), and a run's model stream that is
    cancelled on expiry or cancel while it publishes would then go on to its end. So the
    command runs in a task of its own, which the caller's cancel does not reach. With
    `finish`, a cancelled caller first lets the command end (bounded), so that the events it
    publishes next cannot overtake this one."""
    task = asyncio.ensure_future(operation())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if finish:
            await asyncio.wait({task}, timeout=PUBLISH_PATIENCE)
        if not task.done():
            task.cancel()
        # Retrieved, so a failed command logs no "exception was never retrieved".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise


async def _retrying(
    operation: Callable[[], Awaitable[T]], what: str, patience: float, *, finish: bool = False
) -> T:
    delay = 0.05
    waited = 0.0
    while True:
        try:
            return await _cancellable(operation, finish=finish)
        except TRANSIENT as exc:
            if waited >= patience:
                raise
            log.warning(
                "redis unavailable during %s (%s); retrying in %.2fs",
                what,
                exc or type(exc).__name__,
                delay,
            )
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 1.0)


# A finished run's events stay this long for late readers; every publish renews it.
RETAIN_SECONDS = 3600
MAX_EVENTS_PER_RUN = 100_000
BLOCK_MS = 5000


class RedisEventBus:
    START = "0-0"

    def __init__(
        self,
        url: str,
        prefix: str = "hal9100",
        retain_seconds: float = RETAIN_SECONDS,
        max_connections: int = 10_000,
    ) -> None:
        # redis-py's socket timeout (5 s by default since 8.0) must outlast a blocking read:
        # at 5 s a loaded machine's XREAD answers came a moment late, and each was taken
        # for a dead connection (dropped, reconnected, logged as Redis unavailable).
        self.redis = redis.Redis.from_url(
            url, max_connections=max_connections, socket_timeout=BLOCK_MS / 1000 + 10
        )
        self.prefix = prefix
        self.retain_seconds = max(1, int(retain_seconds))
        self._cancel_channel = f"{prefix}:cancel"
        self._cancel_waiters: dict[str, asyncio.Event] = {}
        self._listener: asyncio.Task[None] | None = None

    def _key(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:events"

    async def publish(self, run_id: str, event: RunEvent) -> None:
        key = self._key(run_id)

        async def send() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(
                    key,
                    {"e": event.event, "d": event.data},
                    maxlen=MAX_EVENTS_PER_RUN,
                    approximate=True,
                )
                pipe.expire(key, self.retain_seconds)
                await pipe.execute()

        try:
            await _retrying(send, "publish", PUBLISH_PATIENCE, finish=True)
        except TRANSIENT:
            # The run's state is in the database; only live streams miss this event.
            log.error("run %s: event %s lost, Redis is down", run_id, event.event)

    async def position(self, run_id: str) -> str:
        key = self._key(run_id)
        last = await _retrying(
            lambda: self.redis.xrevrange(key, count=1), "position", PUBLISH_PATIENCE
        )
        if not last:
            return "0-0"
        entry_id = last[0][0]
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def subscribe(self, run_id: str, after: str) -> AsyncIterator[RunEvent]:
        key = self._key(run_id)
        cursor = after
        while True:
            # Entry ids are times, so after a Redis restart new entries still sort after
            # the cursor: the stream resumes with whatever is published from then on.
            # redis-py types a reply as anything RESP can carry; XREAD's shape is fixed.
            answer: Any = await _retrying(
                functools.partial(self.redis.xread, {key: cursor}, count=500, block=BLOCK_MS),
                "read",
                READ_PATIENCE,
            )
            for _stream, entries in answer or []:
                for entry_id, fields in entries:
                    cursor = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    event = RunEvent(fields[b"e"].decode(), fields[b"d"].decode())
                    yield event
                    if event.event in CLOSING_EVENTS:
                        return

    async def ping(self) -> None:
        await self.redis.ping()

    async def request_cancel(self, run_id: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(f"{self.prefix}:run:{run_id}:cancel", 1, ex=self.retain_seconds)
            pipe.publish(self._cancel_channel, run_id)
            await pipe.execute()

    async def wait_cancel(self, run_id: str) -> None:
        self._ensure_listener()
        waiter = self._cancel_waiters.setdefault(run_id, asyncio.Event())
        try:
            # The request may have come before this executor started listening.
            key = f"{self.prefix}:run:{run_id}:cancel"
            if await _cancellable(lambda: self.redis.exists(key), finish=False):
                return
            await waiter.wait()
        finally:
            if self._cancel_waiters.get(run_id) is waiter:
                del self._cancel_waiters[run_id]

    def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="cancel-listener")

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self.redis.pubsub()
                await pubsub.subscribe(self._cancel_channel)
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    run_id = message["data"].decode()
                    waiter = self._cancel_waiters.get(run_id)
                    if waiter is not None:
                        waiter.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Redis restarted or the connection broke: the executor's lease heartbeat
                # also reads the run's status, so no cancel is lost meanwhile.
                log.warning("cancel listener lost its connection; reconnecting", exc_info=True)
                await asyncio.sleep(1)

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        await self.redis.aclose()
