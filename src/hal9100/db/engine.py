"""The database engine: SQLite (embedded) or PostgreSQL, chosen by the URL alone.

Everything dialect-specific lives here, so services and repositories never ask which
database they are on.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession

SessionMaker = async_sessionmaker[AsyncSession]


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    if url.startswith("sqlite"):
        # One connection: SQLite allows one writer at a time, and a pool of connections only
        # trades queueing in Python for "database is locked" errors (a deferred transaction
        # cannot upgrade to a write lock once another writer has committed). Transactions are
        # kept short everywhere, so the queue is short too.
        engine = create_async_engine(url, pool_size=1, max_overflow=0, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_sessionmaker(engine: AsyncEngine) -> SessionMaker:
    return async_sessionmaker(engine, expire_on_commit=False)
