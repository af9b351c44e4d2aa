from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from hal9100.core.schemas import Metadata, ObjectModel, RequestModel

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
