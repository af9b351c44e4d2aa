"""Which worker holds each thread's code_interpreter session, so that a thread's next run is
routed to it (production mode, several workers).

A worker claims a thread when it leases the thread's session and releases it when the
session ends; a claim lapses on its own after the session's idle lifetime. A worker also
beats: a claim of a worker that stopped beating (it died, or its machine did) is no claim,
and the run goes to any worker, whose new session tells the model its state was lost.

Routing is an optimisation of where a run executes, never a condition for it: every
failure here is logged and the run is dispatched as usual.
"""

from __future__ import annotations

import logging
from typing import Protocol

import redis.asyncio as redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

BEAT_SECONDS = 5.0
"""How often a worker beats; a worker silent for three beats is gone."""


class SessionDirectory(Protocol):
    async def owner(self, thread_id: str) -> str | None:
        """The live worker holding the thread's session, if any."""
        ...

    async def claim(self, thread_id: str, worker_id: str, ttl: float) -> None: ...

    async def release(self, thread_id: str, worker_id: str) -> None: ...

    async def beat(self, worker_id: str) -> None: ...

    async def aclose(self) -> None: ...


class LocalDirectory:
    """One process executes every run (embedded mode): nothing to route."""

    async def owner(self, thread_id: str) -> str | None:
        return None

    async def claim(self, thread_id: str, worker_id: str, ttl: float) -> None:
        return None

    async def release(self, thread_id: str, worker_id: str) -> None:
        return None

    async def beat(self, worker_id: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


# Delete the claim only if it is still this worker's (another may have claimed since).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisDirectory:
    def __init__(self, url: str, prefix: str) -> None:
        self.redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.prefix = prefix

    def _claim_key(self, thread_id: str) -> str:
        return f"{self.prefix}:sandbox-owner:{thread_id}"

    def _beat_key(self, worker_id: str) -> str:
        return f"{self.prefix}:worker-alive:{worker_id}"

    async def owner(self, thread_id: str) -> str | None:
        try:
            found = await self.redis.get(self._claim_key(thread_id))
            if found is None:
                return None
            worker_id = found.decode() if isinstance(found, bytes) else str(found)
            if not await self.redis.exists(self._beat_key(worker_id)):
                return None
            return worker_id
        except (RedisError, OSError) as error:
            log.warning("sandbox directory unavailable, dispatching anywhere: %s", error)
            return None

    async def claim(self, thread_id: str, worker_id: str, ttl: float) -> None:
        try:
            await self.redis.set(self._claim_key(thread_id), worker_id, px=int(ttl * 1000))
        except (RedisError, OSError) as error:
            log.warning("claiming the sandbox of %s failed: %s", thread_id, error)

    async def release(self, thread_id: str, worker_id: str) -> None:
        try:
            await self.redis.eval(_RELEASE, 1, self._claim_key(thread_id), worker_id)
        except (RedisError, OSError) as error:
            log.warning("releasing the sandbox of %s failed: %s", thread_id, error)

    async def beat(self, worker_id: str) -> None:
        try:
            await self.redis.set(self._beat_key(worker_id), "1", px=int(BEAT_SECONDS * 3000))
        except (RedisError, OSError) as error:
            log.warning("sandbox directory heartbeat failed: %s", error)

    async def aclose(self) -> None:
        await self.redis.aclose()
