"""The database engine: SQLite (embedded) or PostgreSQL, chosen by the URL alone.

Everything dialect-specific lives here, so services and repositories never ask which
database they are on.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import aiosqlite
from sqlalchemy import event, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession

SessionMaker = async_sessionmaker[AsyncSession]

# How long a session waits for a connection. Waiting is queueing behind the work ahead: a
# burst of 1,000 runs took 24 s on 2 cores (one SQLite connection) and, in production, held
# a worker's 500 runs behind its 20 connections for longer; past SQLAlchemy's default of
# 30 s requests failed (500) and runs were executed twice where they should only have waited.
POOL_TIMEOUT = 300


class _InlineConnection(aiosqlite.Connection):
    """aiosqlite, with each call run right away on the event loop's thread.

    aiosqlite sends every call to a thread of its own and back: a few hundred microseconds
    of thread switching for statements that take SQLite a few microseconds, five or more
    times per transaction, which was most of a run's time to first token. Embedded mode
    has one connection per process and short, indexed statements (WAL, synchronous=NORMAL:
    a commit does not wait for the disk), so running them inline costs the loop less than
    the hand-off did."""

    async def _execute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)


def _sqlite_path(url: str) -> str:
    return make_url(url).database or ":memory:"


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    if url.startswith("sqlite"):
        path = _sqlite_path(url)

        async def connect() -> aiosqlite.Connection:
            connection = _InlineConnection(
                lambda: sqlite3.connect(path, timeout=30, check_same_thread=False), 64
            )
            return await connection

        # One connection: SQLite allows one writer at a time, and a pool of connections only
        # trades queueing in Python for "database is locked" errors (a deferred transaction
        # cannot upgrade to a write lock once another writer has committed). Transactions are
        # kept short everywhere, so the queue is short too.
        engine = create_async_engine(
            url,
            async_creator=connect,
            pool_size=1,
            max_overflow=0,
            pool_timeout=POOL_TIMEOUT,
            # Sessions end every transaction themselves (commit, or rollback on close), so
            # the pool's own rollback on check-in would be a wasted call.
            pool_reset_on_return=None,
        )
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=POOL_TIMEOUT,
    )


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def locks_rows(session: AsyncSession) -> bool:
    """Whether `SELECT ... FOR UPDATE` locks anything: PostgreSQL's row locks do, SQLite
    ignores the clause (it has one writer), so a statement sent only for its lock is skipped
    there."""
    bind = session.bind
    return bind is None or bind.dialect.name != "sqlite"


def make_sessionmaker(engine: AsyncEngine) -> SessionMaker:
    return async_sessionmaker(engine, expire_on_commit=False)
