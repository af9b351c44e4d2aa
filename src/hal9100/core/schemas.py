"""Pydantic types shared by every domain: request base, metadata, tools, list envelopes."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeVar, Union, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from hal9100.core.beta import v1_tools

T = TypeVar("T")

# The largest integer a request field may hold: what PostgreSQL's INTEGER columns store,
# and far beyond any count a client means.
MAX_INT32 = 2**31 - 1


class RequestModel(BaseModel):
    """Base of every request body: OpenAI rejects arguments it does not know."""

    model_config = ConfigDict(extra="forbid")


class ObjectModel(BaseModel):
    """Base of every API object we return."""

    model_config = ConfigDict(from_attributes=True)


def _type_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return f"<{kind}>" if isinstance(kind, str) else None


def tagged_union(*models: type[BaseModel]) -> Any:
    """A union told apart by its `type` field, OpenAI's way of typing tools and parts.

    Tags are written `<type>` so that error locations can drop them: OpenAI's `param` reads
    `tools[0].function.name`, where pydantic's own location repeats the tag."""
    members = tuple(
        Annotated[model, Tag(f"<{get_args(model.model_fields['type'].annotation)[0]}>")]
        for model in models
    )
    return Annotated[Union[members], Discriminator(_type_tag)]  # noqa: UP007


def _check_metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return None
    if len(value) > 16:
        raise ValueError("metadata can have at most 16 keys")
    for key, item in value.items():
        if len(key) > 64:
            raise ValueError(f"metadata key '{key[:20]}...' is longer than 64 characters")
        if len(item) > 512:
            raise ValueError(f"metadata value for '{key}' is longer than 512 characters")
    return value


Metadata = Annotated[dict[str, str] | None, AfterValidator(_check_metadata)]

# Deeper than any real JSON schema, well within what pydantic serializes (a few hundred
# levels; deeper answers 500) and what the databases' JSON functions read.
MAX_JSON_DEPTH = 64


def _check_json(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Free-form JSON that every answer can carry back. Python's parser takes NaN and
    Infinity and reads 1e400 as infinity; JSON has no words for them. Walked without
    recursion: the value may be deeper than the interpreter's stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite (NaN, Infinity and 1e400 are not JSON)")
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"JSON may be nested at most {MAX_JSON_DEPTH} levels deep")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return value


FreeJSON = Annotated[dict[str, Any] | None, AfterValidator(_check_json)]

FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class FunctionDefinition(RequestModel):
    name: FunctionName
    description: str | None = None
    parameters: FreeJSON = None
    strict: bool | None = None


class RankingOptions(RequestModel):
    ranker: Literal["auto", "default_2024_08_21"] = "auto"
    score_threshold: float = Field(ge=0, le=1)


class FileSearchOptions(RequestModel):
    max_num_results: int | None = Field(default=None, ge=1, le=50)
    ranking_options: RankingOptions | None = None


class CodeInterpreterTool(RequestModel):
    type: Literal["code_interpreter"]


class FileSearchTool(RequestModel):
    type: Literal["file_search"]
    file_search: FileSearchOptions | None = None


class FunctionTool(RequestModel):
    type: Literal["function"]
    function: FunctionDefinition


def _check_openapi_spec_size(value: str | dict[str, Any]) -> str | dict[str, Any]:
    from hal9100.tools.action.spec import check_spec_size

    return check_spec_size(value)


def _check_action_headers(value: dict[str, str]) -> dict[str, str]:
    from hal9100.tools.action.spec import check_headers

    return check_headers(value)


class ActionData(RequestModel):
    # An OpenAPI 3.x spec as JSON or YAML text, or as an object; stored as sent. Only its size
    # is checked here: parsing it takes seconds for a megabyte, so the services do that off
    # the event loop (hal9100.tools.action.check).
    openapi_spec: Annotated[str | dict[str, Any], AfterValidator(_check_openapi_spec_size)]
    # Sent with every call (e.g. Authorization); write-only: API objects show them redacted.
    headers: Annotated[dict[str, str], AfterValidator(_check_action_headers)] = Field(
        default_factory=dict, max_length=64
    )


class ActionTool(RequestModel):
    """HAL-9100's own tool: an HTTP API the server calls for the model (hal9100.tools.action)."""

    type: Literal["action"]
    data: ActionData


if TYPE_CHECKING:
    Tool = CodeInterpreterTool | FileSearchTool | FunctionTool | ActionTool
else:
    Tool = tagged_union(CodeInterpreterTool, FileSearchTool, FunctionTool, ActionTool)


def _check_action_spec_total(tools: Any) -> Any:
    """The action specs' total size, which bounds the parsing one request costs (the
    services parse them once the request is read). Checked before the tools are read, so it
    is the error reported even when a later tool is refused for something else."""
    from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

    from hal9100.tools.action.spec import over_total_spec_bytes

    over = over_total_spec_bytes(tools)
    if over is not None:
        index, total, limit = over
        error = PydanticCustomError(
            "value_error",
            "with this tool, the action specs add up to {total} bytes, more than the {limit} "
            "accepted across one request's tools (HAL9100_ACTION_MAX_SPEC_BYTES)",
            {"total": total, "limit": limit},
        )
        raise ValidationError.from_exception_data(
            "tools", [InitErrorDetails(type=error, loc=(index,), input=tools[index])]
        )
    return tools


# A request's `tools`; OpenAI takes at most 128. Their functions' names across tools are
# checked with the specs, by the services (hal9100.tools.action.check.check_tools).
Tools = Annotated[
    list[Tool],
    Field(max_length=128),
    BeforeValidator(_check_action_spec_total),
    # Listed last, so run first (pydantic runs `before` validators from the outside in).
    BeforeValidator(v1_tools),
]


class CodeInterpreterResources(RequestModel):
    file_ids: list[str] = Field(default_factory=list, max_length=20)


class ChunkingStrategyStatic(RequestModel):
    max_chunk_size_tokens: int = Field(ge=100, le=4096)
    # OpenAI: at most half of max_chunk_size_tokens, itself at most 4096.
    chunk_overlap_tokens: int = Field(ge=0, le=2048)


class ChunkingStrategy(RequestModel):
    type: Literal["auto", "static"]
    static: ChunkingStrategyStatic | None = None

    @model_validator(mode="after")
    def _static_sizes(self) -> ChunkingStrategy:
        # The vector store API's own rules (hal9100.vector_stores.schemas), which the store
        # a helper creates is made under.
        if self.type == "static":
            if self.static is None:
                raise ValueError("a 'static' chunking strategy needs 'static'")
            if self.static.chunk_overlap_tokens > self.static.max_chunk_size_tokens // 2:
                raise ValueError(
                    "chunk_overlap_tokens must not exceed half of max_chunk_size_tokens"
                )
        elif self.static is not None:
            raise ValueError("'static' is given only with the 'static' type")
        return self


class VectorStoreHelper(RequestModel):
    file_ids: list[str] = Field(default_factory=list, max_length=10_000)
    chunking_strategy: ChunkingStrategy | None = None
    metadata: Metadata = None


class FileSearchResources(RequestModel):
    vector_store_ids: list[str] | None = Field(default=None, max_length=1)
    vector_stores: list[VectorStoreHelper] | None = Field(default=None, max_length=1)


class ToolResources(RequestModel):
    code_interpreter: CodeInterpreterResources | None = None
    file_search: FileSearchResources | None = None


class ResponseFormatText(RequestModel):
    type: Literal["text"]


class ResponseFormatJsonObject(RequestModel):
    type: Literal["json_object"]


class JsonSchemaFormat(RequestModel):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    # `schema` shadows a BaseModel attribute, hence the alias.
    schema_: FreeJSON = Field(default=None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ResponseFormatJsonSchema(RequestModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


if TYPE_CHECKING:
    ResponseFormat = (
        Literal["auto"] | ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema
    )
else:
    ResponseFormat = Literal["auto"] | tagged_union(
        ResponseFormatText, ResponseFormatJsonObject, ResponseFormatJsonSchema
    )

ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(ge=0, le=1)]


def dump_json(value: Any) -> Any:
    """A request sub-model as the plain JSON we store and return (aliases, no unset keys)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, list):
        return [dump_json(v) for v in value]
    return value


class ListResponse(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedObject(BaseModel):
    id: str
    object: str
    deleted: bool = True
