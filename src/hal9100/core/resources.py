"""`tool_resources` and `attachments`: checks that the ids they name refer to real objects,
and the vector stores they make (the `vector_stores` helper; a thread's store for the files
its messages attach with the file_search tool)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.core.errors import bad_request
from hal9100.core.schemas import ToolResources, dump_json
from hal9100.db.models import File, Thread, VectorStore

if TYPE_CHECKING:
    from hal9100.runtime import Runtime


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
    session: AsyncSession,
    resources: ToolResources | None,
    param: str = "tool_resources",
    *,
    runtime: Runtime | None,
    expires_after: dict[str, Any] | None = None,
    owner_id: str | None = None,
) -> dict[str, Any] | None:
    """Validate the ids in `resources` and return them as the JSON we store. A
    `vector_stores` helper becomes a new store (uncommitted, with `expires_after`), named in
    the result's `vector_store_ids`; `vector_stores.service.commit` queues its files."""
    from hal9100.vector_stores import service as stores

    if resources is None:
        return None
    if resources.code_interpreter is not None:
        await check_file_ids(
            session, resources.code_interpreter.file_ids, f"{param}.code_interpreter.file_ids"
        )
    stored: dict[str, Any] = dump_json(resources)
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
        made = [
            await stores.add_store(
                session,
                runtime,
                helper.file_ids,
                param=f"{param}.file_search.vector_stores[{index}].file_ids",
                chunking_strategy=helper.chunking_strategy,
                metadata=helper.metadata,
                expires_after=expires_after,
                owner_id=owner_id,
            )
            for index, helper in enumerate(search.vector_stores or [])
        ]
        if search.vector_stores is not None:
            stored["file_search"] = {"vector_store_ids": [store.id for store in made]}
    return stored


def search_store_ids(resources: dict[str, Any] | None) -> list[str]:
    """The `vector_store_ids` of stored tool_resources."""
    search = (resources or {}).get("file_search") or {}
    found = search.get("vector_store_ids") or []
    return [store_id for store_id in found if isinstance(store_id, str)]


def with_search_store(resources: dict[str, Any] | None, store_id: str) -> dict[str, Any]:
    """Stored tool_resources whose file_search store is `store_id` (the only one)."""
    out = dict(resources or {})
    out["file_search"] = {**(out.get("file_search") or {}), "vector_store_ids": [store_id]}
    out["file_search"].pop("vector_stores", None)
    return out


async def add_to_thread_store(
    session: AsyncSession, runtime: Runtime | None, thread: Thread, file_ids: list[str]
) -> None:
    """Put files a message attaches for file_search in its thread's store (uncommitted), as
    OpenAI does: the thread's store if it has a live one, else a new one set on the thread,
    which expires 7 days after its last use."""
    from hal9100.core.clock import now
    from hal9100.vector_stores import service as stores

    if not file_ids:
        return
    # The thread's row is locked first (PostgreSQL; SQLite has one writer anyway): two
    # messages attaching files at once would each make a store, and one would be lost.
    await session.refresh(thread, ["tool_resources"], with_for_update=True)
    current = search_store_ids(thread.tool_resources)
    store = None
    if current:
        store = await session.scalar(select(VectorStore).where(VectorStore.id == current[0]))
    if store is not None and (store.expires_at is None or store.expires_at > now()):
        await stores.add_files(session, runtime, store.id, file_ids)
        return
    # A store deleted or expired meanwhile can take no more files: a new one replaces it.
    made = await stores.add_store(
        session,
        runtime,
        file_ids,
        param="attachments",
        expires_after=dict(stores.THREAD_STORE_EXPIRY),
    )
    thread.tool_resources = with_search_store(thread.tool_resources, made.id)
