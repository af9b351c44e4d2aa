from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from hal9100.core import beta
from hal9100.core.deps import RuntimeDep, SessionDep
from hal9100.core.pagination import ListParams, list_params
from hal9100.core.schemas import ListResponse
from hal9100.runs import service
from hal9100.runs.lifecycle import run_object
from hal9100.runs.schemas import (
    RunCreate,
    RunObject,
    RunStepObject,
    RunUpdate,
    SubmitToolOutputs,
    ThreadAndRunCreate,
)
from hal9100.runs.streaming import event_stream

# The Assistants version is read first: v1 bodies (`retrieval` tools, messages' `file_ids`)
# are read by validators that depend on it.
router = APIRouter(tags=["runs"], dependencies=[Depends(beta.read_version)])

Include = Annotated[list[str], Query(alias="include[]")]


def _answer(
    runtime: RuntimeDep, started: service.Started, stream: bool | None
) -> RunObject | StreamingResponse:
    if stream:
        return event_stream(runtime, started.run.id, started.position)
    return run_object(started.run)


@router.post("/threads/runs", response_model=RunObject)
async def create_thread_and_run(
    body: ThreadAndRunCreate, session: SessionDep, runtime: RuntimeDep
) -> RunObject | StreamingResponse:
    started = await service.create_thread_and_run(session, runtime, body)
    return _answer(runtime, started, body.stream)


@router.post("/threads/{thread_id}/runs", response_model=RunObject)
async def create_run(
    thread_id: str,
    body: RunCreate,
    session: SessionDep,
    runtime: RuntimeDep,
    include: Include = [],  # noqa: B006 - FastAPI copies query defaults
) -> RunObject | StreamingResponse:
    started = await service.create(session, runtime, thread_id, body, include)
    return _answer(runtime, started, body.stream)


@router.get("/threads/{thread_id}/runs")
async def list_runs(
    thread_id: str, session: SessionDep, params: Annotated[ListParams, Depends(list_params)]
) -> ListResponse[RunObject]:
    return await service.list_(session, thread_id, params)


@router.get("/threads/{thread_id}/runs/{run_id}")
async def retrieve_run(thread_id: str, run_id: str, session: SessionDep) -> RunObject:
    return await service.retrieve(session, thread_id, run_id)


@router.post("/threads/{thread_id}/runs/{run_id}")
async def modify_run(
    thread_id: str, run_id: str, body: RunUpdate, session: SessionDep
) -> RunObject:
    return await service.update(session, thread_id, run_id, body)


@router.post("/threads/{thread_id}/runs/{run_id}/cancel")
async def cancel_run(
    thread_id: str, run_id: str, session: SessionDep, runtime: RuntimeDep
) -> RunObject:
    return await service.cancel(session, runtime, thread_id, run_id)


@router.post("/threads/{thread_id}/runs/{run_id}/submit_tool_outputs", response_model=RunObject)
async def submit_tool_outputs(
    thread_id: str,
    run_id: str,
    body: SubmitToolOutputs,
    session: SessionDep,
    runtime: RuntimeDep,
) -> RunObject | StreamingResponse:
    started = await service.submit_tool_outputs(session, runtime, thread_id, run_id, body)
    return _answer(runtime, started, body.stream)


@router.get("/threads/{thread_id}/runs/{run_id}/steps")
async def list_run_steps(
    thread_id: str,
    run_id: str,
    session: SessionDep,
    params: Annotated[ListParams, Depends(list_params)],
    include: Include = [],  # noqa: B006
) -> ListResponse[RunStepObject]:
    return await service.list_steps(session, thread_id, run_id, params, include)


@router.get("/threads/{thread_id}/runs/{run_id}/steps/{step_id}")
async def retrieve_run_step(
    thread_id: str,
    run_id: str,
    step_id: str,
    session: SessionDep,
    include: Include = [],  # noqa: B006
) -> RunStepObject:
    return await service.retrieve_step(session, thread_id, run_id, step_id, include)
