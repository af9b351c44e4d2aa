from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query

from hal9100.core.deps import SessionDep
from hal9100.core.pagination import ListParams, list_params
from hal9100.core.schemas import DeletedObject, ListResponse
from hal9100.messages import service
from hal9100.messages.schemas import MessageCreate, MessageObject, MessageUpdate

router = APIRouter(prefix="/threads/{thread_id}/messages", tags=["messages"])


@router.post("")
async def create_message(thread_id: str, body: MessageCreate, session: SessionDep) -> MessageObject:
    return await service.create(session, thread_id, body)


@router.get("")
async def list_messages(
    thread_id: str,
    session: SessionDep,
    params: Annotated[ListParams, Depends(list_params)],
    run_id: Annotated[str | None, Query()] = None,
) -> ListResponse[MessageObject]:
    return await service.list_(session, thread_id, params, run_id)


@router.get("/{message_id}")
async def retrieve_message(thread_id: str, message_id: str, session: SessionDep) -> MessageObject:
    return await service.retrieve(session, thread_id, message_id)


@router.post("/{message_id}")
async def modify_message(
    thread_id: str,
    message_id: str,
    session: SessionDep,
    body: Annotated[MessageUpdate | None, Body()] = None,
) -> MessageObject:
    # Every field is optional, so no body is an update that changes nothing.
    return await service.update(session, thread_id, message_id, body or MessageUpdate())


@router.delete("/{message_id}")
async def delete_message(thread_id: str, message_id: str, session: SessionDep) -> DeletedObject:
    return await service.delete(session, thread_id, message_id)
