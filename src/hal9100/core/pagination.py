"""Cursor pagination as OpenAI does it: `limit`, `order`, `after`, `before` over object ids.

Rows are ordered by (created_at, seq): `created_at` is in whole seconds and many rows share
one, so the insertion sequence breaks ties and keeps cursors exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Query
from sqlalchemy import Select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.core.errors import bad_request
from hal9100.core.schemas import ListResponse

Order = Literal["asc", "desc"]
M = TypeVar("M")


@dataclass(slots=True)
class ListParams:
    limit: int = 20
    order: Order = "desc"
    after: str | None = None
    before: str | None = None


def list_params(
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[Order, Query()] = "desc",
    after: Annotated[str | None, Query()] = None,
    before: Annotated[str | None, Query()] = None,
) -> ListParams:
    return ListParams(limit=limit, order=order, after=after, before=before)


async def paginate(
    session: AsyncSession, model: Any, query: Select[Any], params: ListParams
) -> tuple[list[Any], bool]:
    """Run `query` (already filtered) as one page; returns (rows, has_more)."""
    key = tuple_(model.created_at, model.seq)
    descending = params.order == "desc"
    # `before` walks backwards: fetch in the opposite order, then flip the page.
    backwards = params.before is not None and params.after is None
    scope = query
    if params.after is not None:
        cursor = await _cursor(session, model, scope, params.after, "after")
        query = query.where(key < cursor if descending else key > cursor)
    if params.before is not None:
        cursor = await _cursor(session, model, scope, params.before, "before")
        query = query.where(key > cursor if descending else key < cursor)
    ascending = descending if backwards else not descending
    if ascending:
        query = query.order_by(model.created_at.asc(), model.seq.asc())
    else:
        query = query.order_by(model.created_at.desc(), model.seq.desc())
    rows = list((await session.scalars(query.limit(params.limit + 1))).all())
    has_more = len(rows) > params.limit
    rows = rows[: params.limit]
    if backwards:
        rows.reverse()
    return rows, has_more


async def _cursor(
    session: AsyncSession, model: Any, query: Select[Any], object_id: str, param: str
) -> Any:
    # Looked up within the list's own query, so an object outside it (another thread's
    # message, another run's step) is no cursor here, exactly like an unknown id.
    position = query.with_only_columns(model.created_at, model.seq).where(model.id == object_id)
    row = (await session.execute(position)).first()
    if row is None:
        raise bad_request(f"Invalid '{param}': no object found with id '{object_id}'.", param)
    return tuple_(row[0], row[1])


def envelope(items: list[M], has_more: bool) -> ListResponse[M]:
    first = getattr(items[0], "id", None) if items else None
    last = getattr(items[-1], "id", None) if items else None
    return ListResponse[M](data=items, first_id=first, last_id=last, has_more=has_more)
