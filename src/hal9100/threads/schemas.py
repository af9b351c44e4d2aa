from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from hal9100.core.schemas import Metadata, ObjectModel, RequestModel, ToolResources
from hal9100.messages.schemas import MessageCreate


class ThreadCreate(RequestModel):
    messages: list[MessageCreate] = Field(default_factory=list)
    tool_resources: ToolResources | None = None
    metadata: Metadata = None


class ThreadUpdate(RequestModel):
    tool_resources: ToolResources | None = None
    metadata: Metadata = None


class ThreadObject(ObjectModel):
    id: str
    object: Literal["thread"] = "thread"
    created_at: int
    tool_resources: dict[str, Any] | None
    metadata: dict[str, str]
