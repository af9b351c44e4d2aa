from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from hal9100.core.schemas import (
    Metadata,
    ObjectModel,
    ReasoningEffort,
    RequestModel,
    ResponseFormat,
    Temperature,
    ToolResources,
    Tools,
    TopP,
)


class AssistantCreate(RequestModel):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    name: Annotated[str, Field(max_length=256)] | None = None
    description: Annotated[str, Field(max_length=512)] | None = None
    instructions: Annotated[str, Field(max_length=256_000)] | None = None
    reasoning_effort: ReasoningEffort | None = None
    tools: Tools = Field(default_factory=list)
    tool_resources: ToolResources | None = None
    metadata: Metadata = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    response_format: ResponseFormat | None = None


class AssistantUpdate(RequestModel):
    model: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    name: Annotated[str, Field(max_length=256)] | None = None
    description: Annotated[str, Field(max_length=512)] | None = None
    instructions: Annotated[str, Field(max_length=256_000)] | None = None
    reasoning_effort: ReasoningEffort | None = None
    tools: Tools | None = None
    tool_resources: ToolResources | None = None
    metadata: Metadata = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    response_format: ResponseFormat | None = None


class AssistantObject(ObjectModel):
    id: str
    object: Literal["assistant"] = "assistant"
    created_at: int
    name: str | None
    description: str | None
    model: str
    instructions: str | None
    tools: list[dict[str, Any]]
    tool_resources: dict[str, Any] | None
    metadata: dict[str, str]
    temperature: float | None
    top_p: float | None
    response_format: Any
    reasoning_effort: str | None
