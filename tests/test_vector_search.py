"""Searching several stores at once (what `file_search` does with an assistant's and a
thread's stores): each store's files are searched with that store's attributes and status."""

from __future__ import annotations

from hal9100.ingestion.job import Ingestor
from hal9100.queue.base import ingest_key
from hal9100.runtime import Runtime
from hal9100.vector_stores import service
from hal9100.vector_stores.schemas import VectorStoreCreate, VectorStoreFileCreate
from test_ingestion_fencing import _file, runtime

__all__ = ["runtime"]


async def test_a_file_in_two_stores_is_filtered_by_each_stores_attributes(
    runtime: Runtime,
) -> None:
    file_id = await _file(runtime)
    worker = Ingestor(runtime.sessions, runtime.storage, runtime.index, None, runtime.settings, "w")
    stores = []
    for team in ("a", "b"):
        async with runtime.sessions() as session:
            store = await service.create(runtime, session, VectorStoreCreate(name=team))
            await service.create_file(
                runtime,
                session,
                store.id,
                VectorStoreFileCreate(file_id=file_id, attributes={"team": team}),
            )
        await worker(ingest_key(store.id, file_id))
        stores.append(store.id)
    found = await runtime.vector_search.search(
        stores, "lighthouse keeper", filters={"type": "eq", "key": "team", "value": "b"}
    )
    assert found
    assert {r.vector_store_id for r in found} == {stores[1]}
    assert all(r.attributes == {"team": "b"} for r in found)
    both = await runtime.vector_search.search(stores, "lighthouse keeper")
    texts = [r.text for r in both]
    assert len(texts) == len(set(texts)), "one file's chunk came back once per store"


async def test_a_file_still_ingesting_in_one_store_is_not_found_there(runtime: Runtime) -> None:
    file_id = await _file(runtime)
    worker = Ingestor(runtime.sessions, runtime.storage, runtime.index, None, runtime.settings, "w")
    async with runtime.sessions() as session:
        done = await service.create(runtime, session, VectorStoreCreate(name="done"))
        await service.create_file(runtime, session, done.id, VectorStoreFileCreate(file_id=file_id))
        busy = await service.create(runtime, session, VectorStoreCreate(name="busy"))
        await service.create_file(runtime, session, busy.id, VectorStoreFileCreate(file_id=file_id))
    await worker(ingest_key(done.id, file_id))
    # The other store's ingestion has written its chunks but not finished.
    attempt = await worker._claim(busy.id, file_id)
    assert attempt is not None
    await worker._ingest(attempt)
    found = await runtime.vector_search.search([done.id, busy.id], "lighthouse keeper")
    assert found and {r.vector_store_id for r in found} == {done.id}
