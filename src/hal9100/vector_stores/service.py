"""Vector stores, their files and file batches. Ingestion itself is a queued task
(`hal9100.ingestion.job`); this module creates the work, reports its state and cancels it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

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
    DELETED,
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

log = logging.getLogger(__name__)


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
    the new settings; one being ingested now takes the new attributes, and starts over only
    if its chunking changes. Returns the row and whether it needs a task."""
    (row, needed), *_ = await attach_many(
        session,
        store_id,
        [(file_id, strategy, attributes)],
        batch_id,
        time.time() + runtime.settings.lease_seconds,
    )
    return row, needed


Item = tuple[str, "ChunkingStrategy | None", "dict[str, Any] | None"]


async def attach_many(
    session: Any,
    store_id: str,
    items: Sequence[Item],
    batch_id: str | None,
    dispatch: float,
    *,
    keep_existing: bool = False,
) -> list[tuple[VectorStoreFile, bool]]:
    """`attach` for many files (distinct ids) in one query. `keep_existing`: files already
    in the store (not taken out) are left as they are, settings and all: what a message's
    attachment of a file its thread's store holds already means."""
    rows = await StoreFileRepository(session, store_id).by_ids_with_deleted(
        [file_id for file_id, _, _ in items]
    )
    out = []
    for file_id, strategy, attributes in items:
        row = rows.get(file_id)
        if keep_existing and row is not None and row.status != DELETED:
            out.append((row, False))
            continue
        out.append(
            _attach(session, store_id, row, file_id, strategy, attributes, batch_id, dispatch)
        )
    return out


def _attach(
    session: Any,
    store_id: str,
    row: VectorStoreFile | None,
    file_id: str,
    strategy: ChunkingStrategy | None,
    attributes: dict[str, Any] | None,
    batch_id: str | None,
    dispatch: float,
) -> tuple[VectorStoreFile, bool]:
    chunking = chunking_json(strategy)
    if row is not None and row.status == "in_progress":
        if batch_id is not None:
            row.batch_id = batch_id
        row.attributes = attributes
        if row.chunking_strategy == chunking:
            return row, False
    if row is None:
        row = VectorStoreFile(id=file_id, vector_store_id=store_id, epoch=0)
        session.add(row)
    else:
        # Every restart fences off whatever attempt came before (one under way with other
        # chunk sizes, or a stale one of a file taken out and put back): its epoch is no
        # longer the row's. In SQL, so that a claim at the same moment is counted too.
        row.epoch = VectorStoreFile.epoch + 1
    # A file put back after it was taken out counts as new (OpenAI's `created_at`).
    if row.status in (DELETED, None) or row.created_at is None:
        row.created_at = now()
    row.attempts = 0
    row.status = "in_progress"
    row.last_error = None
    row.usage_bytes = 0
    row.chunking_strategy = chunking
    row.attributes = attributes
    row.batch_id = batch_id
    # A dispatch deadline, as a queued run has: past it, the sweeper queues the file again.
    row.lease_owner = None
    row.lease_expires_at = dispatch
    return row, True


# --- vector stores ---


async def create(runtime: Runtime, session: Any, body: VectorStoreCreate) -> VectorStoreObject:
    row = await add_store(
        session,
        runtime,
        body.file_ids,
        param="file_ids",
        chunking_strategy=body.chunking_strategy,
        metadata=body.metadata,
        expires_after=dump_json(body.expires_after),
        name=body.name,
        description=body.description,
    )
    await commit(session, runtime)
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
    # Chunks go after the rows: a crash in between leaves chunks no store names, which no
    # search can reach (searches start from a store's files).
    _later(session, _TO_DROP).append((store_id, None))
    await commit(session, runtime)
    return DeletedObject(id=store_id, object="vector_store.deleted")


# --- files ---


async def create_file(
    runtime: Runtime, session: Any, store_id: str, body: VectorStoreFileCreate
) -> VectorStoreFileObject:
    await VectorStoreRepository(session).get_or_404(store_id)
    await check_file_ids(session, [body.file_id], "file_id")
    for attempt in range(2):
        row, needed = await attach(
            session, runtime, store_id, body.file_id, body.chunking_strategy, body.attributes
        )
        try:
            await session.commit()
            break
        except IntegrityError:
            # The same file put in the same store by another request at the same moment:
            # once its row is there, this is an update of it.
            await session.rollback()
            if attempt:
                raise
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
    _later(session, _TO_DROP).append((store_id, file_id))
    await commit(session, runtime)
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
    try:
        async for piece in runtime.storage.get(source.storage_key):
            data.extend(piece)
    except KeyError:
        # Deleted meanwhile: nothing to show, as for a file that is gone.
        return FileContentPage(data=[])

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
        # OpenAI's reference: with `files`, the batch-wide `attributes` and
        # `chunking_strategy` "will be ignored" (each file carries its own).
        items = [(f.file_id, f.chunking_strategy, f.attributes) for f in body.files]
        await check_file_ids(session, [f.file_id for f in body.files], "files")
    else:
        file_ids = body.file_ids or []
        await check_file_ids(session, file_ids, "file_ids")
        items = [(f, body.chunking_strategy, body.attributes) for f in file_ids]
    # A file named twice counts once, with its first settings.
    unique: dict[str, Item] = {}
    for item in items:
        unique.setdefault(item[0], item)
    for attempt in range(2):
        batch = VectorStoreFileBatch(
            id=ids.file_batch_id(), vector_store_id=store_id, created_at=now(), cancelled=False
        )
        session.add(batch)
        attached = await attach_many(
            session,
            store_id,
            list(unique.values()),
            batch.id,
            time.time() + runtime.settings.lease_seconds,
        )
        todo = [r.id for r, needed in attached if needed]
        try:
            await session.commit()
            break
        except IntegrityError:
            # Another request put one of these files in the store at the same moment.
            await session.rollback()
            if attempt:
                raise
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
    # A file's worker notices the cancel between pages and batches and stops; its chunks
    # are dropped here too, so a search never sees a cancelled file even meanwhile.
    _later(session, _TO_DROP).extend((store_id, file_id) for file_id in cancelled)
    await commit(session, runtime)
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


# --- stores made by other objects (tool_resources helpers, attachments, v1 file_ids) ---

# What a session's writes leave to do once committed: files to queue for ingestion, and
# chunks to drop ((store, file), or (store, None) for a whole store). Kept in the session's
# `info`, so the services that build rows need not carry it back to the one that commits.
_TO_QUEUE = "hal9100.vector_stores.to_queue"
_TO_DROP = "hal9100.vector_stores.to_drop"

# OpenAI's expiry for the stores a thread's helpers and message attachments create.
THREAD_STORE_EXPIRY: dict[str, Any] = {"anchor": "last_active_at", "days": 7}

_STRATEGY: TypeAdapter[ChunkingStrategy] = TypeAdapter(ChunkingStrategy)


def _later(session: Any, key: str) -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = session.info.setdefault(key, [])
    return found


def _deadline(runtime: Runtime | None) -> float:
    # Without the runtime (a caller that does not pass it), the dispatch deadline is now: the
    # ingestion sweeper queues the file on its next pass instead of `commit`.
    return time.time() + (runtime.settings.lease_seconds if runtime is not None else 0.0)


async def add_store(
    session: Any,
    runtime: Runtime | None,
    file_ids: Sequence[str],
    *,
    param: str,
    chunking_strategy: Any = None,
    metadata: dict[str, str] | None = None,
    expires_after: dict[str, Any] | None = None,
    owner_id: str | None = None,
    name: str | None = None,
    description: str | None = None,
) -> VectorStore:
    """Add (uncommitted) a store holding `file_ids`, checked with errors naming
    `param[index]`; `chunking_strategy` is a request model or JSON of one. `commit` queues
    the files' ingestion."""
    await check_file_ids(session, list(file_ids), param)
    stamp = now()
    row = VectorStore(
        id=ids.vector_store_id(),
        created_at=stamp,
        name=name,
        description=description,
        expires_after=expires_after,
        expires_at=expiry(expires_after, stamp),
        last_active_at=stamp,
        metadata_=metadata or {},
        owner_id=owner_id,
    )
    session.add(row)
    # The store exists before its files point at it (PostgreSQL checks the foreign key).
    await session.flush()
    await add_files(session, runtime, row.id, file_ids, chunking_strategy)
    return row


async def add_files(
    session: Any,
    runtime: Runtime | None,
    store_id: str,
    file_ids: Sequence[str],
    chunking_strategy: Any = None,
) -> None:
    """Put files (already checked) in a store, uncommitted; `commit` queues them. Files the
    store holds already stay as they are (not ingested again)."""
    strategy = (
        _STRATEGY.validate_python(dump_json(chunking_strategy)) if chunking_strategy else None
    )
    queue = _later(session, _TO_QUEUE)
    attached = await attach_many(
        session,
        store_id,
        [(file_id, strategy, None) for file_id in dict.fromkeys(file_ids)],
        None,
        _deadline(runtime),
        keep_existing=True,
    )
    queue.extend((store_id, row.id) for row, needed in attached if needed)


async def remove_files(session: Any, store_id: str, file_ids: Sequence[str]) -> None:
    """Take files out of a store, uncommitted; `commit` drops their chunks."""
    repo = StoreFileRepository(session, store_id)
    drop = _later(session, _TO_DROP)
    for file_id in file_ids:
        await repo.delete(file_id)
        drop.append((store_id, file_id))


async def file_ids_of(session: Any, store_id: str) -> list[str]:
    """A store's files, oldest first."""
    rows = await session.scalars(
        select(VectorStoreFile.id)
        .where(VectorStoreFile.vector_store_id == store_id, VectorStoreFile.status != DELETED)
        .order_by(VectorStoreFile.created_at, VectorStoreFile.seq)
    )
    return list(rows)


async def owned_store(session: Any, owner_id: str) -> VectorStore | None:
    """The store an object's v1 `file_ids` became."""
    found: VectorStore | None = (
        await session.scalars(
            select(VectorStore).where(VectorStore.owner_id == owner_id).order_by(VectorStore.seq)
        )
    ).first()
    return found


async def delete_owned(session: Any, owner_id: str) -> None:
    """Delete (uncommitted) the stores an object owns; `commit` drops their chunks."""
    repo = VectorStoreRepository(session)
    drop = _later(session, _TO_DROP)
    for store_id in list(
        await session.scalars(select(VectorStore.id).where(VectorStore.owner_id == owner_id))
    ):
        await repo.delete_by_id(store_id)
        drop.append((store_id, None))


async def commit(session: Any, runtime: Runtime) -> None:
    """Commit, then do what the session's store writes left: queue the files to ingest and
    drop the chunks of what was removed (after the rows, as `delete` does)."""
    await session.commit()
    queued = session.info.pop(_TO_QUEUE, [])
    dropped = session.info.pop(_TO_DROP, [])
    for store_id, file_id in queued:
        await runtime.queue.enqueue(INGEST_FILE, ingest_key(store_id, file_id))
    # The write is done: a failing drop must not answer it with an error (a client would
    # retry it). Chunks left behind belong to no store's files, so no search reaches them.
    for store_id, file_id in dropped:
        try:
            if file_id is None:
                await runtime.index.drop_store(store_id)
            else:
                await runtime.index.drop_file(store_id, file_id)
        except Exception:
            log.exception("dropping the chunks of %s/%s failed", store_id, file_id)


def forget_pending(session: Any) -> None:
    """Drop the work of writes that were rolled back."""
    session.info.pop(_TO_QUEUE, None)
    session.info.pop(_TO_DROP, None)
