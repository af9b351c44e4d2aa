from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from hal9100.assistants import service
from hal9100.assistants.schemas import AssistantCreate, AssistantObject, AssistantUpdate
from hal9100.core.deps import SessionDep
from hal9100.core.pagination import ListParams, list_params
from hal9100.core.schemas import DeletedObject, ListResponse

router = APIRouter(prefix="/assistants", tags=["assistants"])


@router.post("")
async def create_assistant(body: AssistantCreate, session: SessionDep) -> AssistantObject:
    return await service.create(session, body)


@router.get("")
async def list_assistants(
    session: SessionDep, params: Annotated[ListParams, Depends(list_params)]
) -> ListResponse[AssistantObject]:
    return await service.list_(session, params)


@router.get("/{assistant_id}")
async def retrieve_assistant(assistant_id: str, session: SessionDep) -> AssistantObject:
    return await service.retrieve(session, assistant_id)


@router.post("/{assistant_id}")
async def modify_assistant(
    assistant_id: str, body: AssistantUpdate, session: SessionDep
) -> AssistantObject:
    return await service.update(session, assistant_id, body)


@router.delete("/{assistant_id}")
async def delete_assistant(assistant_id: str, session: SessionDep) -> DeletedObject:
    return await service.delete(session, assistant_id)
