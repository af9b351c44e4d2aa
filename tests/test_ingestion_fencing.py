"""The ingestion task's fencing, driven step by step on a real database and chunk index:
interleavings no test through the API can time (a worker stalled past its lease that wakes
after another finished the file; a file taken out and put back while its first ingestion
still runs; a file put in a store again and again)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deployments import PG_ADMIN_URL, _psql, production_unavailable
from hal9100.config import Settings
from hal9100.core import ids
from hal9100.db.migrate import upgrade_async
from hal9100.db.models import File
from hal9100.ingestion.job import MAX_ATTEMPTS, Ingestor
from hal9100.queue.base import ingest_key
from hal9100.runtime import Runtime, build_runtime
from hal9100.vector_stores import service
from hal9100.vector_stores.schemas import SearchRequest, VectorStoreCreate, VectorStoreFileCreate

TEXT = ("The lighthouse keeper counts the ships. " * 400).encode()


@pytest.fixture(params=["sqlite", "postgresql"])
async def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Runtime]:
    database_url = None
    name = f"hal9100_fence_{uuid.uuid4().hex[:10]}"
    if request.param == "postgresql":
        reason = production_unavailable()
        if reason:
            pytest.skip(reason)
        await asyncio.to_thread(_psql, PG_ADMIN_URL, f'CREATE DATABASE "{name}"')
        database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    settings = Settings(
        HAL9100_DATA_DIR=tmp_path,
        DATABASE_URL=database_url,
        HAL9100_EMBEDDINGS="none",
        HAL9100_LEASE_SECONDS=0.2,
    )
    await upgrade_async(settings.sqlalchemy_url)
    built = await build_runtime(settings)
    try:
        yield built
    finally:
        await built.aclose()
        if database_url:
            await asyncio.to_thread(
                _psql, PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
            )


async def _file(runtime: Runtime) -> str:
    file_id = ids.file_id()

    async def body() -> AsyncIterator[bytes]:
        yield TEXT

    await runtime.storage.put(f"files/{file_id}", body())
    async with runtime.sessions() as session:
        session.add(
            File(
                id=file_id,
                created_at=int(time.time()),
                filename="keeper.txt",
                purpose="assistants",
                bytes=len(TEXT),
                status="processed",
                storage_key=f"files/{file_id}",
            )
        )
        await session.commit()
    return file_id


async def _store_with(runtime: Runtime, file_id: str) -> str:
    async with runtime.sessions() as session:
        store = await service.create(runtime, session, VectorStoreCreate(name="fence"))
        await service.create_file(
            runtime, session, store.id, VectorStoreFileCreate(file_id=file_id)
        )
    return store.id


async def _state(runtime: Runtime, store_id: str, file_id: str) -> tuple[str, list[str]]:
    async with runtime.sessions() as session:
        status = (await service.retrieve_file(session, store_id, file_id)).status
        page = await service.search(
            runtime, session, store_id, SearchRequest(query="lighthouse keeper", max_num_results=50)
        )
    return status, [r.content[0].text for r in page.data]


async def test_a_stale_worker_cannot_undo_the_attempt_that_replaced_it(runtime: Runtime) -> None:
    file_id = await _file(runtime)
    store_id = await _store_with(runtime, file_id)
    stale = Ingestor(runtime.sessions, runtime.storage, runtime.index, None, runtime.settings, "a")
    fresh = Ingestor(runtime.sessions, runtime.storage, runtime.index, None, runtime.settings, "b")
    attempt = await stale._claim(store_id, file_id)
    assert attempt is not None
    outcome = await stale._ingest(attempt)
    # Worker a stalls past its lease; worker b takes the file over and finishes it.
    await asyncio.sleep(0.3)
    await fresh(ingest_key(store_id, file_id))
    status, texts = await _state(runtime, store_id, file_id)
    assert status == "completed" and texts
    # a wakes up and tries to finish: nothing it does may change the file.
    await stale._finish(attempt, "completed", None, **outcome)
    assert await _state(runtime, store_id, file_id) == (status, texts)
    await stale._finish(attempt, "failed", {"code": "server_error", "message": "x"})
    assert await _state(runtime, store_id, file_id) == (status, texts)


async def test_a_file_put_back_mid_ingestion_is_ingested_once(runtime: Runtime) -> None:
    file_id = await _file(runtime)
    store_id = await _store_with(runtime, file_id)
    worker = Ingestor(runtime.sessions, runtime.storage, runtime.index, None, runtime.settings, "w")
    first = await worker._claim(store_id, file_id)
    assert first is not None
    async with runtime.sessions() as session:
        await service.delete_file(runtime, session, store_id, file_id)
    async with runtime.sessions() as session:
        await service.create_file(
            runtime, session, store_id, VectorStoreFileCreate(file_id=file_id)
        )
    second = await worker._claim(store_id, file_id)
    assert second is not None and second.epoch > first.epoch
    results = await asyncio.gather(
        worker._ingest(first), worker._ingest(second), return_exceptions=True
    )
    assert not isinstance(results[1], BaseException), results
    for attempt, result in zip((first, second), results, strict=True):
        if not isinstance(result, BaseException):
            await worker._finish(attempt, "completed", None, **result)
    status, texts = await _state(runtime, store_id, file_id)
    assert status == "completed" and texts
    assert len(texts) == len(set(texts)), "chunks were written twice"


async def test_a_file_can_be_put_in_a_store_again_and_again(runtime: Runtime) -> None:
    file_id = await _file(runtime)
    store_id = await _store_with(runtime, file_id)
    worker = Ingestor(runtime.sessions, runtime.storage, runtime.index, None, runtime.settings, "w")
    for _ in range(MAX_ATTEMPTS + 2):
        async with runtime.sessions() as session:
            await service.create_file(
                runtime, session, store_id, VectorStoreFileCreate(file_id=file_id)
            )
        await worker(ingest_key(store_id, file_id))
        status, texts = await _state(runtime, store_id, file_id)
        assert status == "completed" and texts
