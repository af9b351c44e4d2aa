from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from hal9100.core.deps import RuntimeDep, SessionDep
from hal9100.core.schemas import DeletedObject
from hal9100.threads import service
from hal9100.threads.schemas import ThreadCreate, ThreadObject, ThreadUpdate

router = APIRouter(prefix="/threads", tags=["threads"])


@router.post("")
async def create_thread(
    session: SessionDep, body: Annotated[ThreadCreate | None, Body()] = None
) -> ThreadObject:
    # The original README creates threads with an empty body; OpenAI accepts that too.
    return await service.create(session, body or ThreadCreate())


@router.get("/{thread_id}")
async def retrieve_thread(thread_id: str, session: SessionDep) -> ThreadObject:
    return await service.retrieve(session, thread_id)


@router.post("/{thread_id}")
async def modify_thread(
    thread_id: str, session: SessionDep, body: Annotated[ThreadUpdate | None, Body()] = None
) -> ThreadObject:
    # Every field is optional, so no body is an update that changes nothing.
    return await service.update(session, thread_id, body or ThreadUpdate())


@router.delete("/{thread_id}")
async def delete_thread(thread_id: str, session: SessionDep, runtime: RuntimeDep) -> DeletedObject:
    return await service.delete(session, runtime, thread_id)
