from __future__ import annotations

from typing import Any, Literal

from pydantic import SerializerFunctionWrapHandler, model_serializer

from hal9100.core.schemas import ObjectModel

Purpose = Literal["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]
PURPOSES: tuple[str, ...] = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")


class FileObject(ObjectModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    status: str
    status_details: str | None = None

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # OpenAI leaves these out rather than sending null, and its schema has no null here.
        data: dict[str, Any] = handler(self)
        for key in ("expires_at", "status_details"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class FileDeleted(ObjectModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
