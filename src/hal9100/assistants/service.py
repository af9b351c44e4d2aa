"""Assistants: stored configurations of model, instructions and tools.

An assistant created or modified with v1's `file_ids` (`OpenAI-Beta: assistants=v1`) owns
a vector store holding those files, named in its `tool_resources`; v1 answers show that
store's files as the assistant's `file_ids`, and deleting the assistant deletes the store."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.assistants.repository import AssistantRepository
from hal9100.assistants.schemas import AssistantCreate, AssistantObject, AssistantUpdate
from hal9100.core import beta, ids
from hal9100.core.clock import now
from hal9100.core.errors import bad_request
from hal9100.core.pagination import ListParams, envelope
from hal9100.core.resources import check_file_ids, check_tool_resources, with_search_store
from hal9100.core.schemas import DeletedObject, ListResponse, dump_json
from hal9100.db.models import Assistant
from hal9100.runtime import Runtime
from hal9100.tools.action import redact_tools, restore_redacted
from hal9100.tools.action.check import check_tools
from hal9100.vector_stores import service as stores


def to_object(row: Assistant) -> AssistantObject:
    return AssistantObject(
        id=row.id,
        created_at=row.created_at,
        name=row.name,
        description=row.description,
        model=row.model,
        instructions=row.instructions,
        tools=redact_tools(row.tools),
        tool_resources=row.tool_resources or {},
        metadata=row.metadata_ or {},
        # OpenAI reports its defaults rather than null.
        temperature=row.temperature if row.temperature is not None else 1.0,
        top_p=row.top_p if row.top_p is not None else 1.0,
        response_format=row.response_format if row.response_format is not None else "auto",
        reasoning_effort=row.reasoning_effort,
    )


async def v1_object(session: AsyncSession, obj: AssistantObject) -> dict[str, Any]:
    """The assistant in v1's shape: its owned store's files as `file_ids`."""
    store = await stores.owned_store(session, obj.id)
    file_ids = await stores.file_ids_of(session, store.id) if store is not None else []
    await session.commit()
    return beta.assistant_v1(obj, file_ids)


def _refuse_two_stores(body: AssistantCreate | AssistantUpdate) -> None:
    search = body.tool_resources.file_search if body.tool_resources is not None else None
    if body.file_ids is not None and search is not None:
        raise bad_request(
            "Give either 'file_ids' or 'tool_resources.file_search': an assistant has at "
            "most one vector store.",
            "file_ids",
        )


async def _set_v1_files(
    session: AsyncSession, runtime: Runtime, row: Assistant, file_ids: list[str]
) -> None:
    """Make the assistant's owned store hold exactly `file_ids` (uncommitted), creating it
    (and naming it in tool_resources) if the assistant has none."""
    await check_file_ids(session, file_ids, "file_ids")
    store = await stores.owned_store(session, row.id)
    if store is None:
        store = await stores.add_store(
            session, runtime, file_ids, param="file_ids", owner_id=row.id
        )
    else:
        held = await stores.file_ids_of(session, store.id)
        await stores.remove_files(session, store.id, [f for f in held if f not in file_ids])
        await stores.add_files(session, runtime, store.id, [f for f in file_ids if f not in held])
    row.tool_resources = with_search_store(row.tool_resources, store.id)


async def create(session: AsyncSession, runtime: Runtime, body: AssistantCreate) -> AssistantObject:
    tools = dump_json(body.tools)
    await check_tools(tools)
    _refuse_two_stores(body)
    row = Assistant(
        id=ids.assistant_id(),
        created_at=now(),
        model=body.model,
        name=body.name,
        description=body.description,
        instructions=body.instructions,
        tools=restore_redacted(tools, []),
        metadata_=body.metadata or {},
        temperature=body.temperature,
        top_p=body.top_p,
        response_format=dump_json(body.response_format),
        reasoning_effort=body.reasoning_effort,
    )
    row.tool_resources = await check_tool_resources(
        session, body.tool_resources, runtime=runtime, owner_id=None
    )
    AssistantRepository(session).add(row)
    if body.file_ids:
        await _set_v1_files(session, runtime, row, body.file_ids)
    await stores.commit(session, runtime)
    return to_object(row)


async def retrieve(session: AsyncSession, assistant_id: str) -> AssistantObject:
    return to_object(await AssistantRepository(session).get_or_404(assistant_id))


async def update(
    session: AsyncSession, runtime: Runtime, assistant_id: str, body: AssistantUpdate
) -> AssistantObject:
    given = body.model_fields_set
    tools = dump_json(body.tools or [])
    if "tools" in given:
        await check_tools(tools)
    _refuse_two_stores(body)
    row = await AssistantRepository(session).get_or_404(assistant_id)
    if body.model is not None:
        row.model = body.model
    for field in ("name", "description", "instructions", "reasoning_effort"):
        if field in given:
            setattr(row, field, getattr(body, field))
    if "tools" in given:
        row.tools = restore_redacted(tools, row.tools)
    if "tool_resources" in given:
        row.tool_resources = await check_tool_resources(
            session, body.tool_resources, runtime=runtime
        )
    if body.file_ids is not None:
        await _set_v1_files(session, runtime, row, body.file_ids)
    if "metadata" in given:
        row.metadata_ = body.metadata or {}
    if "temperature" in given:
        row.temperature = body.temperature
    if "top_p" in given:
        row.top_p = body.top_p
    if "response_format" in given:
        row.response_format = dump_json(body.response_format)
    await stores.commit(session, runtime)
    return to_object(row)


async def delete(session: AsyncSession, runtime: Runtime, assistant_id: str) -> DeletedObject:
    repo = AssistantRepository(session)
    await repo.get_or_404(assistant_id)
    await repo.delete_by_id(assistant_id)
    await stores.delete_owned(session, assistant_id)
    await stores.commit(session, runtime)
    return DeletedObject(id=assistant_id, object="assistant.deleted")


async def list_(session: AsyncSession, params: ListParams) -> ListResponse[AssistantObject]:
    rows, has_more = await AssistantRepository(session).page(params)
    return envelope([to_object(r) for r in rows], has_more)
