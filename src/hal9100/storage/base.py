"""The interface every object store implements. Contents always move as chunk streams, so a
file of any size passes through a bounded amount of memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

CHUNK_SIZE = 1024 * 1024


class ObjectStorage(Protocol):
    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        """Store the stream under `key`; returns the number of bytes written."""
        ...

    def get(self, key: str) -> AsyncIterator[bytes]:
        """Stream the object's bytes. Raises KeyError when it does not exist."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""
        ...

    async def ping(self) -> None:
        """Raise when the store cannot take files now (a cheap call, for readiness)."""
        ...

    async def aclose(self) -> None: ...


async def read_whole(storage: ObjectStorage, key: str) -> bytes | None:
    """An object's bytes in memory, or None when it does not exist (callers bound its size
    first: the row says how big it is)."""
    try:
        return b"".join([chunk async for chunk in storage.get(key)])
    except KeyError:
        return None
