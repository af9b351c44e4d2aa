"""The queries every domain shares; each domain's repository adds its own on top."""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import Select, bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.core.errors import not_found
from hal9100.core.pagination import ListParams, paginate

M = TypeVar("M")


_BY_ID: dict[type[Any], Select[Any]] = {}
_EXISTS: dict[type[Any], Select[Any]] = {}


def _by_id(model: type[Any]) -> Select[Any]:
    # Built once per model: every request reads an object or two by id, and building and
    # compiling the statement anew cost more than running it.
    statement = _BY_ID.get(model)
    if statement is None:
        statement = _BY_ID[model] = select(model).where(model.id == bindparam("object_id"))
    return statement


def _exists(model: type[Any]) -> Select[Any]:
    statement = _EXISTS.get(model)
    if statement is None:
        statement = _EXISTS[model] = select(model.seq).where(model.id == bindparam("object_id"))
    return statement


class Repository(Generic[M]):
    model: ClassVar[type[Any]]
    # How a missing object is named in OpenAI's 404 message ("No thread found with id ...").
    noun: ClassVar[str]

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, object_id: str) -> M | None:
        result = await self.session.scalars(_by_id(self.model), {"object_id": object_id})
        return result.first()

    async def get_or_404(self, object_id: str, param: str | None = None) -> M:
        obj = await self.get(object_id)
        if obj is None:
            raise not_found(self.noun, object_id, param)
        return obj

    async def exists(self, object_id: str) -> bool:
        found = await self.session.scalar(_exists(self.model), {"object_id": object_id})
        return found is not None

    async def ensure_exists(self, object_id: str, param: str | None = None) -> None:
        """The 404 of `get_or_404`, for a caller that needs no more than the object being
        there (a column read, not an object loaded)."""
        if not await self.exists(object_id):
            raise not_found(self.noun, object_id, param)

    async def missing_ids(self, ids: list[str]) -> list[str]:
        if not ids:
            return []
        found = set(await self.session.scalars(select(self.model.id).where(self.model.id.in_(ids))))
        return [i for i in ids if i not in found]

    async def page(
        self, params: ListParams, query: Select[Any] | None = None
    ) -> tuple[list[M], bool]:
        return await paginate(
            self.session, self.model, query if query is not None else select(self.model), params
        )

    def add(self, obj: M) -> M:
        self.session.add(obj)
        return obj

    async def delete_by_id(self, object_id: str) -> bool:
        result = await self.session.execute(delete(self.model).where(self.model.id == object_id))
        return bool(getattr(result, "rowcount", 0))
