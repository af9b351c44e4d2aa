from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query

from hal9100.conversations import service
from hal9100.conversations.schemas import (
    ConversationCreate,
    ConversationObject,
    ConversationUpdate,
    Include,
    ItemList,
    ItemsCreate,
)
from hal9100.core.deps import RuntimeDep, SessionDep
from hal9100.core.pagination import ListParams
from hal9100.core.schemas import DeletedObject

router = APIRouter(prefix="/conversations", tags=["conversations"])

IncludeQuery = Annotated[list[Include] | None, Query(alias="include[]")]
IncludeQueryPlain = Annotated[list[Include] | None, Query(alias="include")]


def _included(include: IncludeQuery = None, include_plain: IncludeQueryPlain = None) -> set[str]:
    """`include` as the SDK sends it (`include[]=...`) or plainly (`include=...`)."""
    return {v for value in (include, include_plain) for v in value or []}


def _list_params(
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
    after: Annotated[str | None, Query()] = None,
) -> ListParams:
    return ListParams(limit=limit, order=order, after=after)


IncludedDep = Annotated[set[str], Depends(_included)]
ItemListParams = Annotated[ListParams, Depends(_list_params)]


@router.post("", response_model=ConversationObject)
async def create_conversation(
    session: SessionDep, body: Annotated[ConversationCreate | None, Body()] = None
) -> Any:
    return await service.create(session, body or ConversationCreate())


@router.get("/{conversation_id}", response_model=ConversationObject)
async def retrieve_conversation(conversation_id: str, session: SessionDep) -> Any:
    return await service.retrieve(session, conversation_id)


@router.post("/{conversation_id}", response_model=ConversationObject)
async def update_conversation(
    conversation_id: str, body: ConversationUpdate, session: SessionDep
) -> Any:
    return await service.update(session, conversation_id, body)


@router.delete("/{conversation_id}")
async def delete_conversation(
    conversation_id: str, session: SessionDep, runtime: RuntimeDep
) -> DeletedObject:
    return await service.delete(session, runtime, conversation_id)


@router.post("/{conversation_id}/items", response_model=ItemList)
async def create_items(
    conversation_id: str, body: ItemsCreate, session: SessionDep, include: IncludedDep
) -> Any:
    return await service.add_items(session, conversation_id, body, include)


@router.get("/{conversation_id}/items", response_model=ItemList)
async def list_items(
    conversation_id: str, session: SessionDep, params: ItemListParams, include: IncludedDep
) -> Any:
    return await service.list_items(session, conversation_id, params, include)


@router.get("/{conversation_id}/items/{item_id}")
async def retrieve_item(
    conversation_id: str, item_id: str, session: SessionDep, include: IncludedDep
) -> Any:
    return await service.retrieve_item(session, conversation_id, item_id, include)


@router.delete("/{conversation_id}/items/{item_id}", response_model=ConversationObject)
async def delete_item(conversation_id: str, item_id: str, session: SessionDep) -> Any:
    return await service.delete_item(session, conversation_id, item_id)
