from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import StreamingResponse

from hal9100.core.deps import RuntimeDep, SessionDep
from hal9100.core.pagination import ListParams, Order
from hal9100.core.schemas import ListResponse
from hal9100.files import service
from hal9100.files.schemas import FileDeleted, FileObject

router = APIRouter(prefix="/files", tags=["files"])


@router.post("")
async def upload_file(
    session: SessionDep,
    runtime: RuntimeDep,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form()],
    # Checked by the service: a bracketed form name would be lost from the error's `param`.
    expires_after_anchor: Annotated[str | None, Form(alias="expires_after[anchor]")] = None,
    expires_after_seconds: Annotated[str | None, Form(alias="expires_after[seconds]")] = None,
) -> FileObject:
    return await service.create(
        session,
        runtime.storage,
        file,
        purpose,
        max_bytes=runtime.settings.max_upload_bytes,
        expires_after_seconds=service.expires_after_seconds(
            expires_after_anchor, expires_after_seconds
        ),
    )


@router.get("")
async def list_files(
    session: SessionDep,
    purpose: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Annotated[Order, Query()] = "desc",
    after: Annotated[str | None, Query()] = None,
) -> ListResponse[FileObject]:
    return await service.list_(session, ListParams(limit, order, after), purpose)


@router.get("/{file_id}")
async def retrieve_file(file_id: str, session: SessionDep) -> FileObject:
    return await service.retrieve(session, file_id)


@router.delete("/{file_id}")
async def delete_file(file_id: str, session: SessionDep, runtime: RuntimeDep) -> FileDeleted:
    return await service.delete(session, runtime.storage, file_id)


@router.get("/{file_id}/content")
async def retrieve_file_content(
    file_id: str, session: SessionDep, runtime: RuntimeDep
) -> StreamingResponse:
    row, body = await service.open_content(session, runtime.storage, file_id)
    return StreamingResponse(
        body,
        media_type=service.media_type(row.content_type),
        headers={"Content-Disposition": service.content_disposition(row.filename)},
    )
