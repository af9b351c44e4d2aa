"""The vector store queries. A store's files and batches are always reached through the
store: every query on them starts from `scoped(store_id)`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, func, select, update

from hal9100.core.errors import not_found
from hal9100.core.pagination import ListParams, paginate
from hal9100.core.repository import Repository
from hal9100.db.models import (
    File,
    VectorStore,
    VectorStoreFile,
    VectorStoreFileBatch,
)
from hal9100.vector_stores.schemas import FileCounts

STATUSES = ("in_progress", "completed", "failed", "cancelled")
# A file taken out of a store: its row stays (its ingestion epoch must keep growing if the
# file is put back), hidden from the API.
DELETED = "deleted"


class VectorStoreRepository(Repository[VectorStore]):
    model = VectorStore
    noun = "vector store"

    async def counts(self, store_ids: Sequence[str]) -> dict[str, tuple[FileCounts, int]]:
        """Each store's file counts and bytes used, in one grouped query."""
        out = {store_id: (FileCounts(), 0) for store_id in store_ids}
        if not store_ids:
            return out
        rows = await self.session.execute(
            select(
                VectorStoreFile.vector_store_id,
                VectorStoreFile.status,
                func.count(),
                func.coalesce(func.sum(VectorStoreFile.usage_bytes), 0),
            )
            .where(
                VectorStoreFile.vector_store_id.in_(list(store_ids)),
                VectorStoreFile.status != DELETED,
            )
            .group_by(VectorStoreFile.vector_store_id, VectorStoreFile.status)
        )
        for store_id, status, count, used in rows:
            counts, total_bytes = out[store_id]
            if status in STATUSES:
                setattr(counts, status, getattr(counts, status) + int(count))
            counts.total += int(count)
            out[store_id] = (counts, total_bytes + int(used))
        return out

    async def touch(self, store_ids: Sequence[str], stamp: int) -> None:
        """Mark stores used now: `last_active_at`, and the expiry it anchors."""
        if not store_ids:
            return
        stores = await self.session.scalars(
            select(VectorStore).where(VectorStore.id.in_(list(store_ids)))
        )
        for store in stores:
            store.last_active_at = stamp
            store.expires_at = expiry(store.expires_after, stamp)


def expiry(expires_after: dict[str, Any] | None, last_active_at: int) -> int | None:
    if not expires_after:
        return None
    return last_active_at + int(expires_after["days"]) * 86_400


class StoreFileRepository:
    """A store's files."""

    def __init__(self, session: Any, store_id: str) -> None:
        self.session = session
        self.store_id = store_id

    def scoped(self) -> Select[Any]:
        return select(VectorStoreFile).where(
            VectorStoreFile.vector_store_id == self.store_id, VectorStoreFile.status != DELETED
        )

    async def by_ids_with_deleted(self, file_ids: Sequence[str]) -> dict[str, VectorStoreFile]:
        found: dict[str, VectorStoreFile] = {}
        # In slices: a batch of 2,000 ids stays well inside every driver's parameter limit.
        for start in range(0, len(file_ids), 500):
            rows = await self.session.scalars(
                select(VectorStoreFile).where(
                    VectorStoreFile.vector_store_id == self.store_id,
                    VectorStoreFile.id.in_(list(file_ids[start : start + 500])),
                )
            )
            found.update((row.id, row) for row in rows)
        return found

    async def get(self, file_id: str) -> VectorStoreFile | None:
        found: VectorStoreFile | None = (
            await self.session.scalars(self.scoped().where(VectorStoreFile.id == file_id))
        ).first()
        return found

    async def get_or_404(self, file_id: str) -> VectorStoreFile:
        row = await self.get(file_id)
        if row is None:
            raise not_found("vector store file", file_id)
        return row

    async def page(
        self, params: ListParams, status: str | None, batch_id: str | None = None
    ) -> tuple[list[VectorStoreFile], bool]:
        query = self.scoped()
        if status is not None:
            query = query.where(VectorStoreFile.status == status)
        if batch_id is not None:
            query = query.where(VectorStoreFile.batch_id == batch_id)
        return await paginate(self.session, VectorStoreFile, query, params)

    async def delete(self, file_id: str) -> None:
        await self.session.execute(
            update(VectorStoreFile)
            .where(VectorStoreFile.vector_store_id == self.store_id, VectorStoreFile.id == file_id)
            .values(
                status=DELETED,
                batch_id=None,
                attributes=None,
                usage_bytes=0,
                last_error=None,
                lease_owner=None,
                lease_expires_at=None,
            )
        )

    async def batch_counts(self, batch_id: str) -> FileCounts:
        rows = await self.session.execute(
            select(VectorStoreFile.status, func.count())
            .where(
                VectorStoreFile.vector_store_id == self.store_id,
                VectorStoreFile.batch_id == batch_id,
            )
            .group_by(VectorStoreFile.status)
        )
        counts = FileCounts()
        for status, count in rows:
            if status in STATUSES:
                setattr(counts, status, int(count))
            counts.total += int(count)
        return counts

    async def cancel_batch(self, batch_id: str) -> list[str]:
        """Cancel the batch's files still in progress; returns their ids."""
        ids = list(
            await self.session.scalars(
                select(VectorStoreFile.id).where(
                    VectorStoreFile.vector_store_id == self.store_id,
                    VectorStoreFile.batch_id == batch_id,
                    VectorStoreFile.status == "in_progress",
                )
            )
        )
        if ids:
            await self.session.execute(
                update(VectorStoreFile)
                .where(
                    VectorStoreFile.vector_store_id == self.store_id,
                    VectorStoreFile.batch_id == batch_id,
                    VectorStoreFile.status == "in_progress",
                )
                .values(status="cancelled", lease_owner=None, lease_expires_at=None)
            )
        return ids

    async def searchable(self) -> list[tuple[str, dict[str, Any] | None, str]]:
        """(file id, attributes, filename) of the store's completed files whose file still
        exists."""
        rows = await self.session.execute(
            select(VectorStoreFile.id, VectorStoreFile.attributes, File.filename)
            .join(File, File.id == VectorStoreFile.id)
            .where(
                VectorStoreFile.vector_store_id == self.store_id,
                VectorStoreFile.status == "completed",
            )
        )
        return [(file_id, attributes, filename) for file_id, attributes, filename in rows]


class BatchRepository:
    def __init__(self, session: Any, store_id: str) -> None:
        self.session = session
        self.store_id = store_id

    async def get_or_404(self, batch_id: str) -> VectorStoreFileBatch:
        row: VectorStoreFileBatch | None = (
            await self.session.scalars(
                select(VectorStoreFileBatch).where(
                    VectorStoreFileBatch.vector_store_id == self.store_id,
                    VectorStoreFileBatch.id == batch_id,
                )
            )
        ).first()
        if row is None:
            raise not_found("vector store file batch", batch_id)
        return row
