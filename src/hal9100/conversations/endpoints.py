from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query

from hal9100.conversations import service
from hal9100.conversations.schemas import (
    ConversationCreate,
    ConversationObject,
    ConversationUpdate,
    ItemList,
    ItemsCreate,
)
from hal9100.core.deps import RuntimeDep, SessionDep
from hal9100.core.pagination import ListParams
from hal9100.core.schemas import DeletedObject

router = APIRouter(prefix="/conversations", tags=["conversations"])

# What `include` may ask for. Those naming tools this server does not run (web search,
# computer use) or data it has none of (logprobs, encrypted reasoning) add nothing, as on
# OpenAI for a conversation without such items.
Include = Literal[
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
]
IncludeQuery = Annotated[list[Include] | None, Query(alias="include[]")]
IncludeQueryPlain = Annotated[list[Include] | None, Query(alias="include")]


def _include(*values: list[Include] | None) -> set[str]:
    return {v for value in values for v in value or []}


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
    conversation_id: str,
    body: ItemsCreate,
    session: SessionDep,
    include: IncludeQuery = None,
    include_plain: IncludeQueryPlain = None,
) -> Any:
    return await service.add_items(session, conversation_id, body, _include(include, include_plain))


@router.get("/{conversation_id}/items", response_model=ItemList)
async def list_items(
    conversation_id: str,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
    after: Annotated[str | None, Query()] = None,
    include: IncludeQuery = None,
    include_plain: IncludeQueryPlain = None,
) -> Any:
    params = ListParams(limit=limit, order=order, after=after)
    return await service.list_items(
        session, conversation_id, params, _include(include, include_plain)
    )


@router.get("/{conversation_id}/items/{item_id}")
async def retrieve_item(
    conversation_id: str,
    item_id: str,
    session: SessionDep,
    include: IncludeQuery = None,
    include_plain: IncludeQueryPlain = None,
) -> Any:
    return await service.retrieve_item(
        session, conversation_id, item_id, _include(include, include_plain)
    )


@router.delete("/{conversation_id}/items/{item_id}", response_model=ConversationObject)
async def delete_item(conversation_id: str, item_id: str, session: SessionDep) -> Any:
    return await service.delete_item(session, conversation_id, item_id)
