"""The `ingest_file` task: one vector-store file parsed, chunked, embedded and indexed.

Crash-safe as runs are: the worker claims a lease on the file's row (a guarded UPDATE that
bumps its `epoch`), renews it while it works, and every write is fenced on that epoch, in
the database and in the chunk index (`ChunkIndex.begin_file`). A worker that dies leaves the
lease to lapse; the sweeper queues the file again and the next attempt starts over, its
`begin_file` dropping what the dead one wrote. After MAX_ATTEMPTS attempts the file is
`failed` with `server_error`, so nothing stays `in_progress` for ever.

Cancellation (a cancelled batch, a deleted file or store) is seen between pages and between
embedding batches: the row is no longer this attempt's `in_progress` one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, or_, select, update

from hal9100.config import Settings
from hal9100.db.engine import SessionMaker
from hal9100.db.models import File, VectorStore, VectorStoreFile
from hal9100.embeddings.base import Embedder, EmbeddingError
from hal9100.ingestion import chunking
from hal9100.ingestion.parsers import InvalidFile, UnsupportedFile, iter_pages
from hal9100.queue.base import INGEST_FILE, TaskQueue, ingest_key, split_ingest_key
from hal9100.retrieval.base import Chunk, ChunkIndex, Fenced
from hal9100.storage.base import ObjectStorage
from hal9100.vector_stores.schemas import AUTO_MAX_TOKENS, AUTO_OVERLAP_TOKENS

log = logging.getLogger(__name__)

# Attempts a file gets (each claim is one); an attempt that crashed runs no code to count
# itself, so the claim counts it.
MAX_ATTEMPTS = 3
# Windows embedded per call: small enough that a cancel is seen within a second or two.
EMBED_BATCH = 32
# Chunks written per index transaction.
WRITE_BATCH = 64


class Stopped(Exception):
    """The file is no longer this attempt's to ingest (cancelled, deleted, taken over)."""


class Failed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Attempt:
    store_id: str
    file_id: str
    epoch: int


class Ingestor:
    """The handler of `ingest_file` tasks, and the sweep that finds files whose task was
    lost or whose worker died."""

    def __init__(
        self,
        sessions: SessionMaker,
        storage: ObjectStorage,
        index: ChunkIndex,
        embedder: Embedder | None,
        settings: Settings,
        worker_id: str,
    ) -> None:
        self.sessions = sessions
        self.storage = storage
        self.index = index
        self.embedder = embedder
        self.settings = settings
        self.worker_id = worker_id

    # --- the task ---

    async def __call__(self, key: str) -> None:
        store_id, file_id = split_ingest_key(key)
        attempt = await self._claim(store_id, file_id)
        if attempt is None:
            return
        lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        keeper = asyncio.create_task(self._keep(attempt, lost))
        work = asyncio.create_task(self._ingest(attempt))
        try:
            waiting: set[asyncio.Future[Any]] = {work, lost}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
                log.warning("ingestion of %s lost its lease; another worker has it", key)
                return
            outcome = work.result()
        except Stopped:
            log.info("ingestion of %s stopped: cancelled or removed", key)
            await self._dropped(attempt)
            return
        except Failed as failure:
            await self._finish(
                attempt, "failed", {"code": failure.code, "message": failure.message}
            )
            log.info("ingestion of %s failed: %s: %s", key, failure.code, failure.message)
            return
        except Exception:
            # Left to the sweeper: the lease is released and the file is queued again, up
            # to MAX_ATTEMPTS in all.
            log.exception("ingestion of %s failed unexpectedly", key)
            await self._release(attempt)
            return
        finally:
            # Cancelled from outside (the queue closing) too: neither task outlives this one.
            for task in (work, keeper):
                task.cancel()
            for task in (work, keeper):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._finish(attempt, "completed", None, **outcome)

    async def _claim(self, store_id: str, file_id: str) -> _Attempt | None:
        stamp = time.time()
        row = _row(store_id, file_id)
        async with self.sessions() as session:
            result = await session.execute(
                update(VectorStoreFile)
                .where(row, VectorStoreFile.status == "in_progress", _claimable(stamp))
                .values(
                    lease_owner=self.worker_id,
                    lease_expires_at=stamp + self.settings.lease_seconds,
                    epoch=VectorStoreFile.epoch + 1,
                    attempts=VectorStoreFile.attempts + 1,
                )
                .returning(VectorStoreFile.epoch, VectorStoreFile.attempts)
            )
            claimed = result.first()
            await session.commit()
        if claimed is None:
            return None
        epoch, attempts = claimed
        attempt = _Attempt(store_id, file_id, int(epoch))
        if attempts > MAX_ATTEMPTS:
            await self._finish(
                attempt,
                "failed",
                {
                    "code": "server_error",
                    "message": f"Ingestion was interrupted {MAX_ATTEMPTS} times.",
                },
            )
            return None
        log.info("ingesting %s/%s (attempt %d)", store_id, file_id, attempt.epoch)
        return attempt

    async def _keep(self, attempt: _Attempt, lost: asyncio.Future[None]) -> None:
        """Renew the lease; resolve `lost` when it is lost, or could not be renewed before
        it ran out (a database that stays down): the work must stop either way."""
        expires = time.monotonic() + self.settings.lease_seconds
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            try:
                async with self.sessions() as session:
                    result = await session.execute(
                        update(VectorStoreFile)
                        .where(self._mine(attempt))
                        .values(lease_expires_at=time.time() + self.settings.lease_seconds)
                    )
                    await session.commit()
            except Exception as exc:
                log.warning("ingestion lease renewal failed: %s", exc)
                if time.monotonic() < expires:
                    continue
                result = None
            if result is None or not getattr(result, "rowcount", 0):
                if not lost.done():
                    lost.set_result(None)
                return
            expires = time.monotonic() + self.settings.lease_seconds

    def _mine(self, attempt: _Attempt) -> ColumnElement[bool]:
        return (
            _row(attempt.store_id, attempt.file_id)
            & (VectorStoreFile.epoch == attempt.epoch)
            & (VectorStoreFile.lease_owner == self.worker_id)
            & (VectorStoreFile.status == "in_progress")
        )

    async def _check(self, attempt: _Attempt) -> None:
        async with self.sessions() as session:
            still = await session.scalar(select(VectorStoreFile.seq).where(self._mine(attempt)))
            await session.commit()
        if still is None:
            raise Stopped

    async def _ingest(self, attempt: _Attempt) -> dict[str, Any]:
        started = time.perf_counter()
        async with self.sessions() as session:
            row = await session.scalar(
                select(VectorStoreFile).where(_row(attempt.store_id, attempt.file_id))
            )
            source = await session.scalar(select(File).where(File.id == attempt.file_id))
            store = await session.scalar(
                select(VectorStore).where(VectorStore.id == attempt.store_id)
            )
            await session.commit()
        if row is None or store is None:
            raise Stopped
        if source is None:
            raise Failed("invalid_file", f"File '{attempt.file_id}' no longer exists.")
        if source.bytes > self.settings.max_upload_bytes:
            raise Failed("invalid_file", "The file is larger than this server ingests.")
        static = row.chunking_strategy.get("static", {})
        max_tokens = int(static.get("max_chunk_size_tokens", AUTO_MAX_TOKENS))
        overlap = int(static.get("chunk_overlap_tokens", AUTO_OVERLAP_TOKENS))

        await self.index.begin_file(attempt.store_id, attempt.file_id, attempt.epoch)
        data = bytearray()
        try:
            async for piece in self.storage.get(source.storage_key):
                data.extend(piece)
        except KeyError:
            raise Failed("invalid_file", "The file's contents are missing from storage.") from None

        # Parsing, page by page in a thread: the cancel check runs between pages.
        pages_iter = _pages(bytes(data), source.filename, source.content_type)
        pages: list[str] = []
        last_check = time.monotonic()
        while True:
            page = await asyncio.to_thread(next, pages_iter, None)
            if page is None:
                break
            if isinstance(page, Failed):
                raise page
            pages.append(page)
            if time.monotonic() - last_check > 1.0:
                await self._check(attempt)
                last_check = time.monotonic()
        parsed = time.perf_counter()

        plan = await asyncio.to_thread(chunking.plan, pages, max_tokens, overlap)
        limit = self.settings.vector_store_max_file_tokens
        if plan.tokens > limit:
            raise Failed(
                "invalid_file",
                f"The file has {plan.tokens} tokens, more than the {limit} this server ingests.",
            )
        chunked = time.perf_counter()

        # Vectors only when they compare with the store's: a store built with another model
        # is indexed by keywords (the search says so in the log).
        embedder = self.embedder
        if embedder is not None and store.embedding_model not in (None, embedder.name):
            log.warning(
                "vector store %s was embedded with %s, not %s: %s indexed by keywords only",
                attempt.store_id,
                store.embedding_model,
                embedder.name,
                attempt.file_id,
            )
            embedder = None
        vectors: list[list[float]] = []
        if embedder is not None:
            for start in range(0, len(plan.windows), EMBED_BATCH):
                await self._check(attempt)
                try:
                    vectors.extend(await embedder.embed(plan.windows[start : start + EMBED_BATCH]))
                except EmbeddingError as exc:
                    raise Failed("server_error", f"Embedding failed: {exc.message}") from None
        embedded = time.perf_counter()

        usage = 0
        dims = len(vectors[0]) if vectors else 0
        for start in range(0, len(plan.chunks), WRITE_BATCH):
            await self._check(attempt)
            batch = []
            for offset, planned in enumerate(plan.chunks[start : start + WRITE_BATCH]):
                chunk_vectors = [vectors[w] for w in planned.windows] if vectors else []
                batch.append(Chunk(start + offset, planned.text, planned.tokens, chunk_vectors))
                usage += len(planned.text.encode()) + 4 * dims * len(chunk_vectors)
            try:
                await self.index.add(attempt.store_id, attempt.file_id, attempt.epoch, batch)
            except Fenced:
                raise Stopped from None
        done = time.perf_counter()
        log.info(
            "ingested %s into %s: %d pages, %d chunks, %d windows; parse %.2fs (%.1f pages/s), "
            "chunk %.2fs, embed %.2fs (%.1f chunks/s), index %.2fs",
            attempt.file_id,
            attempt.store_id,
            len(pages),
            len(plan.chunks),
            len(plan.windows) if vectors else 0,
            parsed - started,
            len(pages) / max(parsed - started, 1e-6),
            chunked - parsed,
            embedded - chunked,
            len(plan.chunks) / max(embedded - chunked, 1e-6),
            done - embedded,
        )
        return {"usage_bytes": usage, "model": embedder.name if vectors and embedder else None}

    async def _finish(
        self,
        attempt: _Attempt,
        status: str,
        error: dict[str, str] | None,
        usage_bytes: int = 0,
        model: str | None = None,
    ) -> None:
        async with self.sessions() as session:
            result = await session.execute(
                update(VectorStoreFile)
                # Only while this worker still holds this attempt's lease.
                .where(self._mine(attempt))
                .values(
                    status=status,
                    last_error=error,
                    usage_bytes=usage_bytes,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            if model is not None:
                await session.execute(
                    update(VectorStore)
                    .where(
                        VectorStore.id == attempt.store_id, VectorStore.embedding_model.is_(None)
                    )
                    .values(embedding_model=model)
                )
            await session.commit()
        if not getattr(result, "rowcount", 0) or status != "completed":
            # Cancelled or removed meanwhile, or failed: none of its chunks may be found.
            await self._dropped(attempt)

    async def _dropped(self, attempt: _Attempt) -> None:
        """Drop what this attempt wrote, unless a later attempt has begun (it owns the
        file's chunks now, whatever its status: it may have completed already). The index
        decides, in one transaction with the later attempt's `begin_file`."""
        await self.index.abandon(attempt.store_id, attempt.file_id, attempt.epoch)

    async def _release(self, attempt: _Attempt) -> None:
        async with self.sessions() as session:
            await session.execute(
                update(VectorStoreFile)
                .where(self._mine(attempt))
                .values(lease_owner=None, lease_expires_at=None)
            )
            await session.commit()

    # --- the sweep ---

    async def sweep(self, queue: TaskQueue) -> None:
        """Queue again the files whose dispatch or lease lapsed (lost from the queue, or
        their worker died)."""
        stamp = time.time()
        async with self.sessions() as session:
            lapsed = (
                await session.execute(
                    select(VectorStoreFile.vector_store_id, VectorStoreFile.id).where(
                        VectorStoreFile.status == "in_progress", _free(stamp)
                    )
                )
            ).all()
            await session.commit()
        for store_id, file_id in lapsed:
            async with self.sessions() as session:
                result = await session.execute(
                    update(VectorStoreFile)
                    .where(
                        _row(store_id, file_id),
                        VectorStoreFile.status == "in_progress",
                        _free(stamp),
                    )
                    .values(lease_owner=None, lease_expires_at=stamp + self.settings.lease_seconds)
                )
                await session.commit()
            if getattr(result, "rowcount", 0):
                log.info(
                    "vector store file %s/%s: dispatch or lease lapsed, re-queueing",
                    store_id,
                    file_id,
                )
                await queue.enqueue(INGEST_FILE, ingest_key(store_id, file_id))


def _row(store_id: str, file_id: str) -> ColumnElement[bool]:
    return (VectorStoreFile.vector_store_id == store_id) & (VectorStoreFile.id == file_id)


def _claimable(stamp: float) -> ColumnElement[bool]:
    """No worker holds it (a pending dispatch deadline does not stop a claim)."""
    return or_(VectorStoreFile.lease_owner.is_(None), VectorStoreFile.lease_expires_at < stamp)


def _free(stamp: float) -> ColumnElement[bool]:
    """Neither held nor waiting for a dispatch: what the sweeper queues again."""
    return or_(VectorStoreFile.lease_expires_at.is_(None), VectorStoreFile.lease_expires_at < stamp)


def _pages(data: bytes, filename: str, content_type: str | None) -> Iterator[str | Failed]:
    """The parser's pages, with every failure turned into the file's `last_error`: a parser
    library that raises something unexpected means a file it cannot read (`invalid_file`),
    not a crash to be retried."""
    try:
        yield from iter_pages(data, filename, content_type)
    except UnsupportedFile as exc:
        yield Failed("unsupported_file", str(exc))
    except InvalidFile as exc:
        yield Failed("invalid_file", str(exc))
    except Exception as exc:
        yield Failed("invalid_file", f"The file could not be parsed ({type(exc).__name__}).")
