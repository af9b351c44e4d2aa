"""The Responses API's request. Input items and tools are read by hand (`conversations.items`,
`responses.tools`): real clients send shapes the spec's request schemas do not describe
literally (messages without `type`, output items carried back with ids and statuses)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from hal9100.conversations.schemas import Include
from hal9100.core.schemas import (
    MAX_INT32,
    FreeJSON,
    Metadata,
    ReasoningEffort,
    RequestModel,
    Temperature,
    TopP,
)


class ConversationRef(RequestModel):
    id: str


class PromptRef(RequestModel):
    id: str
    version: str | None = None
    variables: dict[str, Any] | None = None


class Reasoning(RequestModel):
    effort: ReasoningEffort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    # Older clients' name for `summary`.
    generate_summary: Literal["auto", "concise", "detailed"] | None = None

    model_config = ConfigDict(extra="allow")


class TextFormatJsonSchema(RequestModel):
    type: Literal["json_schema"]
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    schema_: FreeJSON = Field(alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TextFormatPlain(RequestModel):
    type: Literal["text", "json_object"]


class TextParam(RequestModel):
    format: Annotated[TextFormatPlain | TextFormatJsonSchema, Field(discriminator=None)] | None = (
        None
    )
    verbosity: Literal["low", "medium", "high"] | None = None


class StreamOptions(RequestModel):
    include_obfuscation: bool | None = None


class ResponseCreate(RequestModel):
    model: str | None = None
    input: str | list[Any] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    conversation: str | ConversationRef | None = None
    prompt: PromptRef | None = None
    store: bool | None = None
    background: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: Annotated[int, Field(ge=16, le=MAX_INT32)] | None = None
    max_tool_calls: Annotated[int, Field(ge=0, le=MAX_INT32)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    text: TextParam | None = None
    include: list[Include] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    metadata: Metadata = None
    reasoning: Reasoning | None = None
    # Fields for features no model server behind HAL-9100 offers: kept and answered as
    # OpenAI answers a model that does not use them.
    user: Annotated[str, Field(max_length=512)] | None = None
    safety_identifier: Annotated[str, Field(max_length=64)] | None = None
    prompt_cache_key: Annotated[str, Field(max_length=512)] | None = None
    prompt_cache_retention: Literal["in_memory", "24h", "in-memory"] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None


class TokenCount(RequestModel):
    """`POST /responses/input_tokens`: what a response's prompt would be made of."""

    model: str | None = None
    input: str | list[Any] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    conversation: str | ConversationRef | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    text: TextParam | None = None
    reasoning: Reasoning | None = None
    truncation: Literal["auto", "disabled"] | None = None


class CompactRequest(RequestModel):
    """`POST /responses/compact`."""

    model: str
    input: str | list[Any] | None = None
    previous_response_id: str | None = None
    instructions: str | None = None
    # Kept by OpenAI's prompt cache; nothing to apply on a model server.
    prompt_cache_key: Annotated[str, Field(max_length=64)] | None = None
    prompt_cache_retention: Literal["in_memory", "24h", "in-memory"] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
