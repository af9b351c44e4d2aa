"""New rows written with one Core INSERT each, without the ORM's unit of work.

A run's engine adds a message and a step or two per turn: through the session's flush that
cost several times the statements themselves. The objects stay as built (transient), their
Python-side column defaults filled in as the flush would have (a default is called without
an execution context, which none of ours reads); only `seq`, the insertion order the
database assigns, is left unread."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, inspect
from sqlalchemy.ext.asyncio import AsyncSession

_COLUMNS: dict[type[Any], list[tuple[str, Column[Any]]]] = {}


def _columns(model: type[Any]) -> list[tuple[str, Column[Any]]]:
    columns = _COLUMNS.get(model)
    if columns is None:
        mapper = inspect(model)
        columns = _COLUMNS[model] = [(attr.key, attr.columns[0]) for attr in mapper.column_attrs]
    return columns


async def insert_rows(session: AsyncSession, rows: tuple[Any, ...] | list[Any]) -> None:
    for row in rows:
        values: dict[str, Any] = {}
        state = row.__dict__
        for key, column in _columns(type(row)):
            value = state.get(key)
            # As the flush does: None is no value (the column's default applies), except
            # for a type that stores it (JSON's null).
            if value is not None or (key in state and column.type.should_evaluate_none):
                values[column.key] = value
            elif column.default is not None and not column.primary_key:
                default = column.default
                value = default.arg(None) if default.is_callable else default.arg  # type: ignore[attr-defined]
                setattr(row, key, value)
                values[column.key] = value
        await session.execute(type(row).__table__.insert(), values)
