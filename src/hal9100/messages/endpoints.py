from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query

from hal9100.core import beta
from hal9100.core.deps import RuntimeDep, SessionDep
from hal9100.core.pagination import ListParams, list_params
from hal9100.core.schemas import DeletedObject, ListResponse
from hal9100.messages import service
from hal9100.messages.schemas import MessageCreate, MessageObject, MessageUpdate

# Every route reads the Assistants version first: the body's validators depend on it.
router = APIRouter(
    prefix="/threads/{thread_id}/messages",
    tags=["messages"],
    dependencies=[Depends(beta.read_version)],
)


def _answer(version: beta.Version, obj: MessageObject) -> Any:
    return beta.answer(version, obj, beta.message_v1(obj) if version == "v1" else None)


@router.post("", response_model=MessageObject)
async def create_message(
    thread_id: str,
    body: MessageCreate,
    session: SessionDep,
    runtime: RuntimeDep,
    version: beta.VersionDep,
) -> Any:
    return _answer(version, await service.create(session, runtime, thread_id, body))


@router.get("", response_model=ListResponse[MessageObject])
async def list_messages(
    thread_id: str,
    session: SessionDep,
    params: Annotated[ListParams, Depends(list_params)],
    version: beta.VersionDep,
    run_id: Annotated[str | None, Query()] = None,
) -> Any:
    page = await service.list_(session, thread_id, params, run_id)
    if version != "v1":
        return page
    return beta.list_v1(page, [beta.message_v1(obj) for obj in page.data])


@router.get("/{message_id}", response_model=MessageObject)
async def retrieve_message(
    thread_id: str, message_id: str, session: SessionDep, version: beta.VersionDep
) -> Any:
    return _answer(version, await service.retrieve(session, thread_id, message_id))


@router.post("/{message_id}", response_model=MessageObject)
async def modify_message(
    thread_id: str,
    message_id: str,
    session: SessionDep,
    version: beta.VersionDep,
    body: Annotated[MessageUpdate | None, Body()] = None,
) -> Any:
    # Every field is optional, so no body is an update that changes nothing.
    updated = await service.update(session, thread_id, message_id, body or MessageUpdate())
    return _answer(version, updated)


@router.delete("/{message_id}")
async def delete_message(thread_id: str, message_id: str, session: SessionDep) -> DeletedObject:
    return await service.delete(session, thread_id, message_id)
