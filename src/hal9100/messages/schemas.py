from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from hal9100.core.beta import v1_only
from hal9100.core.schemas import Metadata, ObjectModel, RequestModel, tagged_union

Detail = Literal["auto", "low", "high"]


class TextPart(RequestModel):
    type: Literal["text"]
    text: str


class ImageFileRef(RequestModel):
    file_id: str
    detail: Detail | None = None


class ImageFilePart(RequestModel):
    type: Literal["image_file"]
    image_file: ImageFileRef


class ImageUrlRef(RequestModel):
    url: Annotated[str, Field(min_length=1)]
    detail: Detail | None = None


class ImageUrlPart(RequestModel):
    type: Literal["image_url"]
    image_url: ImageUrlRef


if TYPE_CHECKING:
    ContentPart = TextPart | ImageFilePart | ImageUrlPart
else:
    ContentPart = tagged_union(TextPart, ImageFilePart, ImageUrlPart)


class AttachmentTool(RequestModel):
    type: Literal["code_interpreter", "file_search"]


class Attachment(RequestModel):
    file_id: str
    tools: list[AttachmentTool] = Field(default_factory=list)


class MessageCreate(RequestModel):
    role: Literal["user", "assistant"]
    content: str | Annotated[list[ContentPart], Field(min_length=1)]
    attachments: list[Attachment] | None = None
    metadata: Metadata = None
    # v1 only (`OpenAI-Beta: assistants=v1`): read as attachments for file_search.
    file_ids: list[str] | None = Field(default=None, max_length=10)

    _v1_only = field_validator("file_ids")(v1_only)

    @model_validator(mode="after")
    def _file_ids_as_attachments(self) -> MessageCreate:
        if self.file_ids:
            search = [AttachmentTool(type="file_search")]
            self.attachments = [
                *(self.attachments or []),
                *(Attachment(file_id=f, tools=search) for f in dict.fromkeys(self.file_ids)),
            ]
        return self


class MessageUpdate(RequestModel):
    metadata: Metadata = None


class MessageObject(ObjectModel):
    id: str
    object: Literal["thread.message"] = "thread.message"
    created_at: int
    thread_id: str
    status: str
    incomplete_details: dict[str, Any] | None
    completed_at: int | None
    incomplete_at: int | None
    role: str
    content: list[dict[str, Any]]
    assistant_id: str | None
    run_id: str | None
    attachments: list[dict[str, Any]] | None
    metadata: dict[str, str]
