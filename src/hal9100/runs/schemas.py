from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from hal9100.core.beta import v1_tool_choice
from hal9100.core.schemas import (
    MAX_INT32,
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
from hal9100.messages.schemas import MessageCreate
from hal9100.threads.schemas import ThreadCreate

# OpenAI's lower bound; the upper one is what the database's integer column holds.
TokenLimit = Annotated[int, Field(ge=256, le=MAX_INT32)]


class TruncationStrategy(RequestModel):
    type: Literal["auto", "last_messages"]
    last_messages: Annotated[int, Field(ge=1, le=MAX_INT32)] | None = None


class NamedFunction(RequestModel):
    name: str


class NamedToolChoice(RequestModel):
    type: Literal["function", "file_search", "code_interpreter"]
    function: NamedFunction | None = None


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class _RunOptions(RequestModel):
    assistant_id: str
    model: Annotated[str, Field(min_length=1)] | None = None
    reasoning_effort: ReasoningEffort | None = None
    instructions: str | None = None
    tools: Tools | None = None
    metadata: Metadata = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stream: bool | None = None
    max_prompt_tokens: TokenLimit | None = None
    max_completion_tokens: TokenLimit | None = None
    truncation_strategy: TruncationStrategy | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    # v1's `{"type": "retrieval"}` is file_search, under the v1 header only.
    _v1_tool_choice = field_validator("tool_choice", mode="before")(v1_tool_choice)


class RunCreate(_RunOptions):
    additional_instructions: str | None = None
    additional_messages: list[MessageCreate] | None = None


class ThreadAndRunCreate(_RunOptions):
    thread: ThreadCreate | None = None
    tool_resources: ToolResources | None = None


class RunUpdate(RequestModel):
    metadata: Metadata = None


class ToolOutput(RequestModel):
    tool_call_id: str
    output: str = ""


class SubmitToolOutputs(RequestModel):
    tool_outputs: list[ToolOutput]
    stream: bool | None = None


class RunObject(ObjectModel):
    id: str
    object: Literal["thread.run"] = "thread.run"
    created_at: int
    thread_id: str
    assistant_id: str
    status: str
    required_action: dict[str, Any] | None
    last_error: dict[str, Any] | None
    expires_at: int | None
    started_at: int | None
    cancelled_at: int | None
    failed_at: int | None
    completed_at: int | None
    incomplete_details: dict[str, Any] | None
    model: str
    instructions: str
    tools: list[dict[str, Any]]
    metadata: dict[str, str]
    usage: dict[str, Any] | None
    temperature: float | None
    top_p: float | None
    max_prompt_tokens: int | None
    max_completion_tokens: int | None
    truncation_strategy: dict[str, Any]
    tool_choice: Any
    parallel_tool_calls: bool
    response_format: Any
    reasoning_effort: str | None = None


class RunStepObject(ObjectModel):
    id: str
    object: Literal["thread.run.step"] = "thread.run.step"
    created_at: int
    assistant_id: str
    thread_id: str
    run_id: str
    type: str
    status: str
    step_details: dict[str, Any]
    last_error: dict[str, Any] | None
    expired_at: int | None
    cancelled_at: int | None
    failed_at: int | None
    completed_at: int | None
    metadata: dict[str, str]
    usage: dict[str, Any] | None
