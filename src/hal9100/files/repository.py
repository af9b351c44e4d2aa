from __future__ import annotations

from sqlalchemy import select

from hal9100.core.pagination import ListParams
from hal9100.core.repository import Repository
from hal9100.db.models import File


class FileRepository(Repository[File]):
    model = File
    noun = "file"

    async def page_by_purpose(
        self, params: ListParams, purpose: str | None
    ) -> tuple[list[File], bool]:
        query = select(File)
        if purpose is not None:
            query = query.where(File.purpose == purpose)
        return await self.page(params, query)
