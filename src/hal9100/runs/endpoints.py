from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.core import beta
from hal9100.core.deps import RuntimeDep, SessionDep
from hal9100.core.pagination import ListParams, list_params
from hal9100.core.schemas import ListResponse
from hal9100.events.base import RunEvent
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
from hal9100.vector_stores import service as stores

# The Assistants version is read first: v1 bodies (`retrieval` tools, messages' `file_ids`)
# are read by validators that depend on it.
router = APIRouter(tags=["runs"], dependencies=[Depends(beta.read_version)])

Include = Annotated[list[str], Query(alias="include[]")]


# Stream events whose payloads v1 shaped no differently.
_SAME_IN_V1 = frozenset(("thread.message.delta", "error"))


async def _assistant_files(session: AsyncSession, assistant_id: str) -> list[str]:
    """A run's v1 `file_ids`: its assistant's files, as the assistant's v1 object shows them
    (none once the assistant is deleted)."""
    store = await stores.owned_store(session, assistant_id)
    return await stores.file_ids_of(session, store.id) if store is not None else []


async def _run_v1(
    session: AsyncSession, run: RunObject, known: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    known = {} if known is None else known
    if run.assistant_id not in known:
        known[run.assistant_id] = await _assistant_files(session, run.assistant_id)
    return beta.run_v1(run.model_dump(mode="json"), known[run.assistant_id])


async def _run_answer(session: AsyncSession, version: beta.Version, run: RunObject) -> Any:
    return beta.answer(version, run, await _run_v1(session, run) if version == "v1" else None)


def _v1_events(file_ids: list[str]) -> Callable[[RunEvent], RunEvent]:
    def reshape(item: RunEvent) -> RunEvent:
        if item.event in _SAME_IN_V1:
            return item
        try:
            data = json.loads(item.data)
        except ValueError:
            return item
        shaped = beta.event_v1(item.event, data, file_ids)
        return RunEvent(item.event, json.dumps(shaped, separators=(",", ":")))

    return reshape


async def _answer(
    session: AsyncSession,
    runtime: RuntimeDep,
    version: beta.Version,
    started: service.Started,
    stream: bool | None,
) -> Any:
    if stream:
        reshape = None
        if version == "v1":
            # Read once: a stream's run keeps its assistant, whose files rarely change
            # while it runs.
            reshape = _v1_events(await _assistant_files(session, started.run.assistant_id))
        return event_stream(runtime, started.run.id, started.position, reshape)
    return await _run_answer(session, version, run_object(started.run))


@router.post("/threads/runs", response_model=RunObject)
async def create_thread_and_run(
    body: ThreadAndRunCreate, session: SessionDep, runtime: RuntimeDep, version: beta.VersionDep
) -> Any:
    started = await service.create_thread_and_run(session, runtime, body)
    return await _answer(session, runtime, version, started, body.stream)


@router.post("/threads/{thread_id}/runs", response_model=RunObject)
async def create_run(
    thread_id: str,
    body: RunCreate,
    session: SessionDep,
    runtime: RuntimeDep,
    version: beta.VersionDep,
    include: Include = [],  # noqa: B006 - FastAPI copies query defaults
) -> Any:
    started = await service.create(session, runtime, thread_id, body, include)
    return await _answer(session, runtime, version, started, body.stream)


@router.get("/threads/{thread_id}/runs", response_model=ListResponse[RunObject])
async def list_runs(
    thread_id: str,
    session: SessionDep,
    params: Annotated[ListParams, Depends(list_params)],
    version: beta.VersionDep,
) -> Any:
    page = await service.list_(session, thread_id, params)
    if version != "v1":
        return page
    known: dict[str, list[str]] = {}
    return beta.list_v1(page, [await _run_v1(session, run, known) for run in page.data])


@router.get("/threads/{thread_id}/runs/{run_id}", response_model=RunObject)
async def retrieve_run(
    thread_id: str, run_id: str, session: SessionDep, version: beta.VersionDep
) -> Any:
    return await _run_answer(session, version, await service.retrieve(session, thread_id, run_id))


@router.post("/threads/{thread_id}/runs/{run_id}", response_model=RunObject)
async def modify_run(
    thread_id: str, run_id: str, body: RunUpdate, session: SessionDep, version: beta.VersionDep
) -> Any:
    updated = await service.update(session, thread_id, run_id, body)
    return await _run_answer(session, version, updated)


@router.post("/threads/{thread_id}/runs/{run_id}/cancel", response_model=RunObject)
async def cancel_run(
    thread_id: str, run_id: str, session: SessionDep, runtime: RuntimeDep, version: beta.VersionDep
) -> Any:
    cancelled = await service.cancel(session, runtime, thread_id, run_id)
    return await _run_answer(session, version, cancelled)


@router.post("/threads/{thread_id}/runs/{run_id}/submit_tool_outputs", response_model=RunObject)
async def submit_tool_outputs(
    thread_id: str,
    run_id: str,
    body: SubmitToolOutputs,
    session: SessionDep,
    runtime: RuntimeDep,
    version: beta.VersionDep,
) -> Any:
    started = await service.submit_tool_outputs(session, runtime, thread_id, run_id, body)
    return await _answer(session, runtime, version, started, body.stream)


@router.get("/threads/{thread_id}/runs/{run_id}/steps", response_model=ListResponse[RunStepObject])
async def list_run_steps(
    thread_id: str,
    run_id: str,
    session: SessionDep,
    params: Annotated[ListParams, Depends(list_params)],
    version: beta.VersionDep,
    include: Include = [],  # noqa: B006
) -> Any:
    page = await service.list_steps(session, thread_id, run_id, params, include)
    if version != "v1":
        return page
    return beta.list_v1(page, [beta.step_v1(step.model_dump(mode="json")) for step in page.data])


@router.get("/threads/{thread_id}/runs/{run_id}/steps/{step_id}", response_model=RunStepObject)
async def retrieve_run_step(
    thread_id: str,
    run_id: str,
    step_id: str,
    session: SessionDep,
    version: beta.VersionDep,
    include: Include = [],  # noqa: B006
) -> Any:
    step = await service.retrieve_step(session, thread_id, run_id, step_id, include)
    v1 = beta.step_v1(step.model_dump(mode="json")) if version == "v1" else None
    return beta.answer(version, step, v1)
