from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends

from hal9100.core import beta
from hal9100.core.deps import RuntimeDep, SessionDep
from hal9100.core.schemas import DeletedObject
from hal9100.threads import service
from hal9100.threads.schemas import ThreadCreate, ThreadObject, ThreadUpdate

# Every route reads the Assistants version first: the body's validators depend on it.
router = APIRouter(prefix="/threads", tags=["threads"], dependencies=[Depends(beta.read_version)])


def _answer(version: beta.Version, obj: ThreadObject) -> Any:
    return beta.answer(version, obj, beta.thread_v1(obj) if version == "v1" else None)


@router.post("", response_model=ThreadObject)
async def create_thread(
    session: SessionDep,
    runtime: RuntimeDep,
    version: beta.VersionDep,
    body: Annotated[ThreadCreate | None, Body()] = None,
) -> Any:
    # The original README creates threads with an empty body; OpenAI accepts that too.
    return _answer(version, await service.create(session, runtime, body or ThreadCreate()))


@router.get("/{thread_id}", response_model=ThreadObject)
async def retrieve_thread(thread_id: str, session: SessionDep, version: beta.VersionDep) -> Any:
    return _answer(version, await service.retrieve(session, thread_id))


@router.post("/{thread_id}", response_model=ThreadObject)
async def modify_thread(
    thread_id: str,
    session: SessionDep,
    runtime: RuntimeDep,
    version: beta.VersionDep,
    body: Annotated[ThreadUpdate | None, Body()] = None,
) -> Any:
    # Every field is optional, so no body is an update that changes nothing.
    updated = await service.update(session, runtime, thread_id, body or ThreadUpdate())
    return _answer(version, updated)


@router.delete("/{thread_id}")
async def delete_thread(thread_id: str, session: SessionDep, runtime: RuntimeDep) -> DeletedObject:
    return await service.delete(session, runtime, thread_id)
