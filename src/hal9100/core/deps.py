"""FastAPI dependencies shared by the endpoints: the runtime and a database session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.runtime import Runtime


# Async, as every dependency here: FastAPI runs a plain `def` one in its thread pool, a
# thread hand-off on every request for an attribute read.
async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    runtime: Runtime = request.app.state.runtime
    async with runtime.sessions() as session:
        yield session


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
# Function scope: the session closes (its connection back in the pool) when the endpoint
# returns, before the response is sent. A streamed body (a file download, a run's events) can
# last as long as its client reads slowly; it must not hold a connection meanwhile, or a few
# stalled clients take every connection (embedded SQLite has a single one).
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
