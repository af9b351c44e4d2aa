from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from hal9100.conversations.endpoints import IncludedDep, ItemListParams
from hal9100.conversations.schemas import ItemList
from hal9100.core.deps import RuntimeDep, SessionDep
from hal9100.core.errors import bad_request
from hal9100.responses import objects, service, streaming
from hal9100.responses.schemas import CompactRequest, ResponseCreate, TokenCount

router = APIRouter(prefix="/responses", tags=["responses"])


@router.post("")
async def create_response(body: ResponseCreate, session: SessionDep, runtime: RuntimeDep) -> Any:
    run, position = await service.create(session, runtime, body)
    if body.stream:
        first = await streaming.opening(session, run)
        return streaming.stream(runtime, run, first, None, fresh=True)
    if body.background:
        return await objects.to_object(session, run)
    done = await service.wait_done(runtime, session, run, position)
    answer = await objects.to_object(session, done)
    if not answer["store"]:
        await service.forget(session, done)
    return answer


@router.post("/compact")
async def compact_response(body: CompactRequest, session: SessionDep, runtime: RuntimeDep) -> Any:
    return await service.compact(session, runtime, body)


@router.post("/input_tokens")
async def count_input_tokens(body: TokenCount, session: SessionDep) -> Any:
    return await service.input_tokens(session, body)


@router.get("/{response_id}")
async def retrieve_response(
    response_id: str,
    session: SessionDep,
    runtime: RuntimeDep,
    include: IncludedDep,
    stream: Annotated[bool, Query()] = False,
    starting_after: Annotated[int | None, Query(ge=0)] = None,
) -> Any:
    if starting_after is not None and not stream:
        raise bad_request(
            "'starting_after' is for streams: set 'stream' to true.", "starting_after"
        )
    if stream:
        # The response's events, replayed from the start or after `starting_after`, then
        # followed live while it runs.
        run = await service.stored(session, response_id)
        first = await streaming.opening(session, run)
        shown = streaming.stream(runtime, run, first, starting_after)
        # The stream reads in sessions of its own: this one lets go of its connection (the
        # embedded database has one).
        await session.rollback()
        return shown
    return await service.retrieve(session, response_id, include)


@router.delete("/{response_id}")
async def delete_response(response_id: str, session: SessionDep, runtime: RuntimeDep) -> Any:
    return await service.delete(session, runtime, response_id)


@router.post("/{response_id}/cancel")
async def cancel_response(response_id: str, session: SessionDep, runtime: RuntimeDep) -> Any:
    return await service.cancel(session, runtime, response_id)


@router.get("/{response_id}/input_items", response_model=ItemList)
async def list_input_items(
    response_id: str, session: SessionDep, params: ItemListParams, include: IncludedDep
) -> Any:
    return await service.input_items(session, response_id, params, include)
