"""Vector stores, their files and file batches. Ingestion itself is a queued task
(`hal9100.ingestion.job`); this module creates the work, reports its state and cancels it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from hal9100.core import ids
from hal9100.core.clock import now
from hal9100.core.errors import APIError, bad_request
from hal9100.core.pagination import ListParams, envelope
from hal9100.core.resources import check_file_ids
from hal9100.core.schemas import DeletedObject, ListResponse, dump_json
from hal9100.db.models import File, VectorStore, VectorStoreFile, VectorStoreFileBatch
from hal9100.ingestion.parsers import InvalidFile, UnsupportedFile, iter_pages
from hal9100.queue.base import INGEST_FILE, ingest_key
from hal9100.runtime import Runtime
from hal9100.vector_stores.repository import (
    BatchRepository,
    StoreFileRepository,
    VectorStoreRepository,
    expiry,
)
from hal9100.vector_stores.schemas import (
    ChunkingStrategy,
    ContentPart,
    FileBatchCreate,
    FileBatchObject,
    FileContentPage,
    FileCounts,
    SearchRequest,
    SearchResultItem,
    SearchResultsPage,
    VectorStoreCreate,
    VectorStoreFileCreate,
    VectorStoreFileObject,
    VectorStoreFileUpdate,
    VectorStoreObject,
    VectorStoreUpdate,
    chunking_json,
)
from hal9100.vector_stores.search import rewrite


def store_object(row: VectorStore, counts: FileCounts, usage_bytes: int) -> VectorStoreObject:
    if row.expires_at is not None and row.expires_at <= now():
        status = "expired"
    elif counts.in_progress:
        status = "in_progress"
    else:
        status = "completed"
    return VectorStoreObject(
        id=row.id,
        created_at=row.created_at,
        name=row.name or "",
        usage_bytes=usage_bytes,
        file_counts=counts,
        status=status,
        expires_after=row.expires_after,
        expires_at=row.expires_at,
        last_active_at=row.last_active_at,
        metadata=row.metadata_ or {},
    )


def file_object(row: VectorStoreFile) -> VectorStoreFileObject:
    return VectorStoreFileObject(
        id=row.id,
        usage_bytes=row.usage_bytes,
        created_at=row.created_at,
        vector_store_id=row.vector_store_id,
        status=row.status,
        last_error=row.last_error,
        chunking_strategy=row.chunking_strategy,
        attributes=row.attributes or {},
    )


def batch_object(row: VectorStoreFileBatch, counts: FileCounts) -> FileBatchObject:
    if row.cancelled:
        status = "cancelled"
    elif counts.in_progress:
        status = "in_progress"
    elif counts.total and counts.failed == counts.total:
        status = "failed"
    else:
        status = "completed"
    return FileBatchObject(
        id=row.id,
        created_at=row.created_at,
        vector_store_id=row.vector_store_id,
        status=status,
        file_counts=counts,
    )


async def _store_object(session: Any, row: VectorStore) -> VectorStoreObject:
    counts, used = (await VectorStoreRepository(session).counts([row.id]))[row.id]
    return store_object(row, counts, used)


async def _enqueue(runtime: Runtime, store_id: str, file_ids: Sequence[str]) -> None:
    for file_id in file_ids:
        await runtime.queue.enqueue(INGEST_FILE, ingest_key(store_id, file_id))


async def attach(
    session: Any,
    runtime: Runtime,
    store_id: str,
    file_id: str,
    strategy: ChunkingStrategy | None,
    attributes: dict[str, Any] | None,
    batch_id: str | None = None,
) -> tuple[VectorStoreFile, bool]:
    """Put a file in a store (not committed). A file already there is ingested again with
    the new settings, unless it is being ingested now (then only its batch changes).
    Returns the row and whether it needs a task."""
    repo = StoreFileRepository(session, store_id)
    row = await repo.get(file_id)
    dispatch = time.time() + runtime.settings.lease_seconds
    if row is not None and row.status == "in_progress":
        if batch_id is not None:
            row.batch_id = batch_id
        return row, False
    if row is None:
        row = VectorStoreFile(id=file_id, vector_store_id=store_id, epoch=0)
        session.add(row)
    row.created_at = now()
    row.status = "in_progress"
    row.last_error = None
    row.usage_bytes = 0
    row.chunking_strategy = chunking_json(strategy)
    row.attributes = attributes
    row.batch_id = batch_id
    # A dispatch deadline, as a queued run has: past it, the sweeper queues the file again.
    row.lease_owner = None
    row.lease_expires_at = dispatch
    return row, True


# --- vector stores ---


async def create(runtime: Runtime, session: Any, body: VectorStoreCreate) -> VectorStoreObject:
    await check_file_ids(session, body.file_ids, "file_ids")
    stamp = now()
    expires_after = dump_json(body.expires_after)
    row = VectorStore(
        id=ids.vector_store_id(),
        created_at=stamp,
        name=body.name,
        description=body.description,
        expires_after=expires_after,
        expires_at=expiry(expires_after, stamp),
        last_active_at=stamp,
        metadata_=body.metadata or {},
    )
    session.add(row)
    # The store exists before its files point at it (PostgreSQL checks the foreign key).
    await session.flush()
    todo = []
    for file_id in dict.fromkeys(body.file_ids):
        _, needed = await attach(session, runtime, row.id, file_id, body.chunking_strategy, None)
        if needed:
            todo.append(file_id)
    await session.commit()
    await _enqueue(runtime, row.id, todo)
    return await _store_object(session, row)


async def retrieve(session: Any, store_id: str) -> VectorStoreObject:
    return await _store_object(session, await VectorStoreRepository(session).get_or_404(store_id))


async def update(session: Any, store_id: str, body: VectorStoreUpdate) -> VectorStoreObject:
    row = await VectorStoreRepository(session).get_or_404(store_id)
    given = body.model_fields_set
    if "name" in given:
        row.name = body.name
    if "metadata" in given:
        row.metadata_ = body.metadata or {}
    if "expires_after" in given:
        row.expires_after = dump_json(body.expires_after)
        row.expires_at = expiry(row.expires_after, row.last_active_at)
    await session.commit()
    return await _store_object(session, row)


async def list_(session: Any, params: ListParams) -> ListResponse[VectorStoreObject]:
    repo = VectorStoreRepository(session)
    rows, has_more = await repo.page(params)
    counts = await repo.counts([r.id for r in rows])
    return envelope([store_object(r, *counts[r.id]) for r in rows], has_more)


async def delete(runtime: Runtime, session: Any, store_id: str) -> DeletedObject:
    repo = VectorStoreRepository(session)
    await repo.get_or_404(store_id)
    await repo.delete_by_id(store_id)
    await session.commit()
    # Chunks go after the rows: a crash in between leaves chunks no store names, which no
    # search can reach (searches start from a store's files).
    await runtime.index.drop_store(store_id)
    return DeletedObject(id=store_id, object="vector_store.deleted")


# --- files ---


async def create_file(
    runtime: Runtime, session: Any, store_id: str, body: VectorStoreFileCreate
) -> VectorStoreFileObject:
    await VectorStoreRepository(session).get_or_404(store_id)
    await check_file_ids(session, [body.file_id], "file_id")
    row, needed = await attach(
        session, runtime, store_id, body.file_id, body.chunking_strategy, body.attributes
    )
    await session.commit()
    if needed:
        await _enqueue(runtime, store_id, [body.file_id])
    return file_object(row)


async def retrieve_file(session: Any, store_id: str, file_id: str) -> VectorStoreFileObject:
    await VectorStoreRepository(session).get_or_404(store_id)
    return file_object(await StoreFileRepository(session, store_id).get_or_404(file_id))


async def update_file(
    session: Any, store_id: str, file_id: str, body: VectorStoreFileUpdate
) -> VectorStoreFileObject:
    await VectorStoreRepository(session).get_or_404(store_id)
    row = await StoreFileRepository(session, store_id).get_or_404(file_id)
    row.attributes = body.attributes
    await session.commit()
    return file_object(row)


async def list_files(
    session: Any,
    store_id: str,
    params: ListParams,
    status: str | None,
    batch_id: str | None = None,
) -> ListResponse[VectorStoreFileObject]:
    await VectorStoreRepository(session).get_or_404(store_id)
    if batch_id is not None:
        await BatchRepository(session, store_id).get_or_404(batch_id)
    rows, has_more = await StoreFileRepository(session, store_id).page(params, status, batch_id)
    return envelope([file_object(r) for r in rows], has_more)


async def delete_file(runtime: Runtime, session: Any, store_id: str, file_id: str) -> DeletedObject:
    await VectorStoreRepository(session).get_or_404(store_id)
    repo = StoreFileRepository(session, store_id)
    await repo.get_or_404(file_id)
    await repo.delete(file_id)
    await session.commit()
    await runtime.index.drop_file(store_id, file_id)
    return DeletedObject(id=file_id, object="vector_store.file.deleted")


# What `/content` returns of one file at most: the parsed text of a 500-page document.
MAX_CONTENT_CHARS = 20_000_000


async def file_content(
    runtime: Runtime, session: Any, store_id: str, file_id: str
) -> FileContentPage:
    """The file's text as ingestion parsed it, one part per page (PDF page, slide)."""
    await VectorStoreRepository(session).get_or_404(store_id)
    await StoreFileRepository(session, store_id).get_or_404(file_id)
    source = (await session.scalars(select(File).where(File.id == file_id))).first()
    await session.commit()
    if source is None:
        return FileContentPage(data=[])
    data = bytearray()
    async for piece in runtime.storage.get(source.storage_key):
        data.extend(piece)

    def parse() -> list[str]:
        pages, total = [], 0
        for page in iter_pages(bytes(data), source.filename, source.content_type):
            pages.append(page[: MAX_CONTENT_CHARS - total])
            total += len(pages[-1])
            if total >= MAX_CONTENT_CHARS:
                break
        return pages

    try:
        pages = await asyncio.to_thread(parse)
    except (UnsupportedFile, InvalidFile):
        return FileContentPage(data=[])
    return FileContentPage(data=[ContentPart(text=page) for page in pages])


# --- batches ---


async def create_batch(
    runtime: Runtime, session: Any, store_id: str, body: FileBatchCreate
) -> FileBatchObject:
    await VectorStoreRepository(session).get_or_404(store_id)
    if (body.file_ids is None) == (body.files is None):
        raise bad_request("Exactly one of 'file_ids' or 'files' must be given.", "file_ids")
    if body.files is not None:
        if body.chunking_strategy is not None or body.attributes is not None:
            raise bad_request(
                "With 'files', give 'attributes' and 'chunking_strategy' per file.", "files"
            )
        items = [(f.file_id, f.chunking_strategy, f.attributes) for f in body.files]
        await check_file_ids(session, [f.file_id for f in body.files], "files")
    else:
        file_ids = body.file_ids or []
        await check_file_ids(session, file_ids, "file_ids")
        items = [(f, body.chunking_strategy, body.attributes) for f in file_ids]
    batch = VectorStoreFileBatch(
        id=ids.file_batch_id(), vector_store_id=store_id, created_at=now(), cancelled=False
    )
    session.add(batch)
    todo = []
    seen: set[str] = set()
    for file_id, strategy, attributes in items:
        if file_id in seen:
            continue
        seen.add(file_id)
        _, needed = await attach(
            session, runtime, store_id, file_id, strategy, attributes, batch_id=batch.id
        )
        if needed:
            todo.append(file_id)
    await session.commit()
    await _enqueue(runtime, store_id, todo)
    return batch_object(batch, await StoreFileRepository(session, store_id).batch_counts(batch.id))


async def retrieve_batch(session: Any, store_id: str, batch_id: str) -> FileBatchObject:
    await VectorStoreRepository(session).get_or_404(store_id)
    batch = await BatchRepository(session, store_id).get_or_404(batch_id)
    return batch_object(batch, await StoreFileRepository(session, store_id).batch_counts(batch_id))


async def cancel_batch(
    runtime: Runtime, session: Any, store_id: str, batch_id: str
) -> FileBatchObject:
    await VectorStoreRepository(session).get_or_404(store_id)
    batch = await BatchRepository(session, store_id).get_or_404(batch_id)
    repo = StoreFileRepository(session, store_id)
    counts = await repo.batch_counts(batch_id)
    if not counts.in_progress and not batch.cancelled:
        raise bad_request(
            f"Cannot cancel vector store file batch '{batch_id}': it is already "
            f"{batch_object(batch, counts).status}."
        )
    batch.cancelled = True
    cancelled = await repo.cancel_batch(batch_id)
    await session.commit()
    # A file's worker notices the cancel between pages and batches and stops; its chunks
    # are dropped here too, so a search never sees a cancelled file even meanwhile.
    for file_id in cancelled:
        await runtime.index.drop_file(store_id, file_id)
    return batch_object(batch, await repo.batch_counts(batch_id))


# --- search ---


async def search(
    runtime: Runtime, session: Any, store_id: str, body: SearchRequest
) -> SearchResultsPage:
    store = await VectorStoreRepository(session).get_or_404(store_id)
    if store.expires_at is not None and store.expires_at <= now():
        raise APIError(400, f"Vector store '{store_id}' has expired and can no longer be searched.")
    await session.commit()
    queries = [body.query] if isinstance(body.query, str) else list(body.query)
    if body.rewrite_query:
        queries = [rewrite(q) for q in queries]
    results = await runtime.vector_search.search(
        [store_id],
        queries,
        max_num_results=body.max_num_results,
        ranking_options=dump_json(body.ranking_options),
        filters=body.filters,
    )
    return SearchResultsPage(
        search_query=queries,
        data=[
            SearchResultItem(
                file_id=r.file_id,
                filename=r.filename,
                score=round(r.score, 6),
                attributes=r.attributes,
                content=[ContentPart(text=r.text)],
            )
            for r in results
        ],
    )
