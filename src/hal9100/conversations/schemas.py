from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from hal9100.core.schemas import Metadata, ObjectModel, RequestModel

# Items are read by hand (conversations.items): real clients' items do not fit the spec's
# request schemas literally (messages without `type`, ids and statuses of earlier output).
InputItems = Annotated[list[Any], Field(max_length=20)]


class ConversationCreate(RequestModel):
    metadata: Metadata = None
    items: InputItems | None = None


class ConversationUpdate(RequestModel):
    metadata: Metadata


class ItemsCreate(RequestModel):
    items: InputItems


class ConversationObject(ObjectModel):
    id: str
    object: Literal["conversation"] = "conversation"
    created_at: int
    metadata: dict[str, str]


class ItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool
