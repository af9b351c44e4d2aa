from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from hal9100.core.beta import v1_only
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
    # v1 only (`OpenAI-Beta: assistants=v1`): the files of the store the assistant owns.
    file_ids: list[str] | None = Field(default=None, max_length=20)

    _v1_only = field_validator("file_ids")(v1_only)


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
    # v1 only (`OpenAI-Beta: assistants=v1`): the files of the store the assistant owns.
    file_ids: list[str] | None = Field(default=None, max_length=20)

    _v1_only = field_validator("file_ids")(v1_only)


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
