"""Assistants: stored configurations of model, instructions and tools."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.assistants.repository import AssistantRepository
from hal9100.assistants.schemas import AssistantCreate, AssistantObject, AssistantUpdate
from hal9100.core import ids
from hal9100.core.clock import now
from hal9100.core.pagination import ListParams, envelope
from hal9100.core.resources import check_tool_resources
from hal9100.core.schemas import DeletedObject, ListResponse, dump_json
from hal9100.db.models import Assistant
from hal9100.tools.action import redact_tools, restore_redacted
from hal9100.tools.action.check import check_tools


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


async def create(session: AsyncSession, body: AssistantCreate) -> AssistantObject:
    tools = dump_json(body.tools)
    await check_tools(tools)
    row = Assistant(
        id=ids.assistant_id(),
        created_at=now(),
        model=body.model,
        name=body.name,
        description=body.description,
        instructions=body.instructions,
        tools=restore_redacted(tools, []),
        tool_resources=await check_tool_resources(session, body.tool_resources),
        metadata_=body.metadata or {},
        temperature=body.temperature,
        top_p=body.top_p,
        response_format=dump_json(body.response_format),
        reasoning_effort=body.reasoning_effort,
    )
    AssistantRepository(session).add(row)
    await session.commit()
    return to_object(row)


async def retrieve(session: AsyncSession, assistant_id: str) -> AssistantObject:
    return to_object(await AssistantRepository(session).get_or_404(assistant_id))


async def update(
    session: AsyncSession, assistant_id: str, body: AssistantUpdate
) -> AssistantObject:
    given = body.model_fields_set
    tools = dump_json(body.tools or [])
    if "tools" in given:
        await check_tools(tools)
    row = await AssistantRepository(session).get_or_404(assistant_id)
    if body.model is not None:
        row.model = body.model
    for field in ("name", "description", "instructions", "reasoning_effort"):
        if field in given:
            setattr(row, field, getattr(body, field))
    if "tools" in given:
        row.tools = restore_redacted(tools, row.tools)
    if "tool_resources" in given:
        row.tool_resources = await check_tool_resources(session, body.tool_resources)
    if "metadata" in given:
        row.metadata_ = body.metadata or {}
    if "temperature" in given:
        row.temperature = body.temperature
    if "top_p" in given:
        row.top_p = body.top_p
    if "response_format" in given:
        row.response_format = dump_json(body.response_format)
    await session.commit()
    return to_object(row)


async def delete(session: AsyncSession, assistant_id: str) -> DeletedObject:
    repo = AssistantRepository(session)
    await repo.get_or_404(assistant_id)
    await repo.delete_by_id(assistant_id)
    await session.commit()
    return DeletedObject(id=assistant_id, object="assistant.deleted")


async def list_(session: AsyncSession, params: ListParams) -> ListResponse[AssistantObject]:
    rows, has_more = await AssistantRepository(session).page(params)
    return envelope([to_object(r) for r in rows], has_more)
