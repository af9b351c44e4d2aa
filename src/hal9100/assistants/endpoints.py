from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from hal9100.assistants import service
from hal9100.assistants.schemas import AssistantCreate, AssistantObject, AssistantUpdate
from hal9100.core import beta
from hal9100.core.deps import RuntimeDep, SessionDep
from hal9100.core.pagination import ListParams, list_params
from hal9100.core.schemas import DeletedObject, ListResponse

# Every route reads the Assistants version first: the body's validators depend on it.
router = APIRouter(
    prefix="/assistants", tags=["assistants"], dependencies=[Depends(beta.read_version)]
)


async def _answer(session: SessionDep, version: beta.Version, obj: AssistantObject) -> Any:
    v1 = await service.v1_object(session, obj) if version == "v1" else None
    return beta.answer(version, obj, v1)


@router.post("", response_model=AssistantObject)
async def create_assistant(
    body: AssistantCreate, session: SessionDep, runtime: RuntimeDep, version: beta.VersionDep
) -> Any:
    return await _answer(session, version, await service.create(session, runtime, body))


@router.get("", response_model=ListResponse[AssistantObject])
async def list_assistants(
    session: SessionDep,
    params: Annotated[ListParams, Depends(list_params)],
    version: beta.VersionDep,
) -> Any:
    page = await service.list_(session, params)
    if version != "v1":
        return page
    return beta.list_v1(page, [await service.v1_object(session, obj) for obj in page.data])


@router.get("/{assistant_id}", response_model=AssistantObject)
async def retrieve_assistant(
    assistant_id: str, session: SessionDep, version: beta.VersionDep
) -> Any:
    return await _answer(session, version, await service.retrieve(session, assistant_id))


@router.post("/{assistant_id}", response_model=AssistantObject)
async def modify_assistant(
    assistant_id: str,
    body: AssistantUpdate,
    session: SessionDep,
    runtime: RuntimeDep,
    version: beta.VersionDep,
) -> Any:
    updated = await service.update(session, runtime, assistant_id, body)
    return await _answer(session, version, updated)


@router.delete("/{assistant_id}")
async def delete_assistant(
    assistant_id: str, session: SessionDep, runtime: RuntimeDep
) -> DeletedObject:
    return await service.delete(session, runtime, assistant_id)
