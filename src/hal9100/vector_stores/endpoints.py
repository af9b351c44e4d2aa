from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from hal9100.core.deps import RuntimeDep, SessionDep
from hal9100.core.pagination import ListParams, list_params
from hal9100.core.schemas import DeletedObject, ListResponse
from hal9100.vector_stores import service
from hal9100.vector_stores.schemas import (
    FileBatchCreate,
    FileBatchObject,
    FileContentPage,
    SearchRequest,
    SearchResultsPage,
    VectorStoreCreate,
    VectorStoreFileCreate,
    VectorStoreFileObject,
    VectorStoreFileUpdate,
    VectorStoreObject,
    VectorStoreUpdate,
)

router = APIRouter(prefix="/vector_stores", tags=["vector_stores"])

Params = Annotated[ListParams, Depends(list_params)]
StatusFilter = Annotated[
    Literal["in_progress", "completed", "failed", "cancelled"] | None, Query(alias="filter")
]


@router.post("")
async def create_vector_store(
    body: VectorStoreCreate, session: SessionDep, runtime: RuntimeDep
) -> VectorStoreObject:
    return await service.create(runtime, session, body)


@router.get("")
async def list_vector_stores(
    session: SessionDep, params: Params
) -> ListResponse[VectorStoreObject]:
    return await service.list_(session, params)


@router.get("/{vector_store_id}")
async def retrieve_vector_store(vector_store_id: str, session: SessionDep) -> VectorStoreObject:
    return await service.retrieve(session, vector_store_id)


@router.post("/{vector_store_id}")
async def modify_vector_store(
    vector_store_id: str, body: VectorStoreUpdate, session: SessionDep
) -> VectorStoreObject:
    return await service.update(session, vector_store_id, body)


@router.delete("/{vector_store_id}")
async def delete_vector_store(
    vector_store_id: str, session: SessionDep, runtime: RuntimeDep
) -> DeletedObject:
    return await service.delete(runtime, session, vector_store_id)


@router.post("/{vector_store_id}/search")
async def search_vector_store(
    vector_store_id: str, body: SearchRequest, session: SessionDep, runtime: RuntimeDep
) -> SearchResultsPage:
    return await service.search(runtime, session, vector_store_id, body)


@router.post("/{vector_store_id}/files")
async def create_vector_store_file(
    vector_store_id: str, body: VectorStoreFileCreate, session: SessionDep, runtime: RuntimeDep
) -> VectorStoreFileObject:
    return await service.create_file(runtime, session, vector_store_id, body)


@router.get("/{vector_store_id}/files")
async def list_vector_store_files(
    vector_store_id: str, session: SessionDep, params: Params, status: StatusFilter = None
) -> ListResponse[VectorStoreFileObject]:
    return await service.list_files(session, vector_store_id, params, status)


@router.get("/{vector_store_id}/files/{file_id}")
async def retrieve_vector_store_file(
    vector_store_id: str, file_id: str, session: SessionDep
) -> VectorStoreFileObject:
    return await service.retrieve_file(session, vector_store_id, file_id)


@router.post("/{vector_store_id}/files/{file_id}")
async def update_vector_store_file(
    vector_store_id: str, file_id: str, body: VectorStoreFileUpdate, session: SessionDep
) -> VectorStoreFileObject:
    return await service.update_file(session, vector_store_id, file_id, body)


@router.delete("/{vector_store_id}/files/{file_id}")
async def delete_vector_store_file(
    vector_store_id: str, file_id: str, session: SessionDep, runtime: RuntimeDep
) -> DeletedObject:
    return await service.delete_file(runtime, session, vector_store_id, file_id)


@router.get("/{vector_store_id}/files/{file_id}/content")
async def retrieve_vector_store_file_content(
    vector_store_id: str, file_id: str, session: SessionDep, runtime: RuntimeDep
) -> FileContentPage:
    return await service.file_content(runtime, session, vector_store_id, file_id)


@router.post("/{vector_store_id}/file_batches")
async def create_file_batch(
    vector_store_id: str, body: FileBatchCreate, session: SessionDep, runtime: RuntimeDep
) -> FileBatchObject:
    return await service.create_batch(runtime, session, vector_store_id, body)


@router.get("/{vector_store_id}/file_batches/{batch_id}")
async def retrieve_file_batch(
    vector_store_id: str, batch_id: str, session: SessionDep
) -> FileBatchObject:
    return await service.retrieve_batch(session, vector_store_id, batch_id)


@router.post("/{vector_store_id}/file_batches/{batch_id}/cancel")
async def cancel_file_batch(
    vector_store_id: str, batch_id: str, session: SessionDep, runtime: RuntimeDep
) -> FileBatchObject:
    return await service.cancel_batch(runtime, session, vector_store_id, batch_id)


@router.get("/{vector_store_id}/file_batches/{batch_id}/files")
async def list_file_batch_files(
    vector_store_id: str,
    batch_id: str,
    session: SessionDep,
    params: Params,
    status: StatusFilter = None,
) -> ListResponse[VectorStoreFileObject]:
    return await service.list_files(session, vector_store_id, params, status, batch_id)
