"""Checks that ids named in `tool_resources` and `attachments` refer to real objects."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.core.errors import bad_request
from hal9100.core.schemas import ToolResources, dump_json
from hal9100.db.models import File, VectorStore


async def check_file_refs(session: AsyncSession, refs: list[tuple[str, str]]) -> None:
    """Check (file_id, param) pairs in one query; the first missing file is a 400 naming its
    own location (`attachments[1].file_id`)."""
    if not refs:
        return
    ids = list({file_id for file_id, _ in refs})
    found = set(await session.scalars(select(File.id).where(File.id.in_(ids))))
    for file_id, param in refs:
        if file_id not in found:
            raise bad_request(f"Invalid '{param}': no file found with id '{file_id}'.", param)


async def check_file_ids(session: AsyncSession, ids: list[str], param: str) -> None:
    """Check a list of file ids given as `param` (errors name `param[index]`)."""
    await check_file_refs(session, [(file_id, f"{param}[{i}]") for i, file_id in enumerate(ids)])


async def check_tool_resources(
    session: AsyncSession, resources: ToolResources | None, param: str = "tool_resources"
) -> dict[str, Any] | None:
    """Validate the ids in `resources` and return them as the JSON we store."""
    if resources is None:
        return None
    if resources.code_interpreter is not None:
        await check_file_ids(
            session, resources.code_interpreter.file_ids, f"{param}.code_interpreter.file_ids"
        )
    search = resources.file_search
    if search is not None:
        if search.vector_store_ids and search.vector_stores:
            raise bad_request(
                "Only one of 'vector_store_ids' or 'vector_stores' may be given.",
                f"{param}.file_search",
            )
        wanted = search.vector_store_ids or []
        found = set(await session.scalars(select(VectorStore.id).where(VectorStore.id.in_(wanted))))
        for index, store_id in enumerate(wanted):
            if store_id not in found:
                raise bad_request(
                    f"Invalid '{param}.file_search.vector_store_ids[{index}]': "
                    f"no vector store found with id '{store_id}'.",
                    f"{param}.file_search.vector_store_ids[{index}]",
                )
        for index, helper in enumerate(search.vector_stores or []):
            await check_file_ids(
                session, helper.file_ids, f"{param}.file_search.vector_stores[{index}].file_ids"
            )
            raise bad_request(
                "Creating a vector store from 'tool_resources' needs the vector store API, "
                "which this server does not offer yet.",
                f"{param}.file_search.vector_stores",
            )
    stored: dict[str, Any] = dump_json(resources)
    return stored
