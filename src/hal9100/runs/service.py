"""Runs from the API's side: create (with or without a new thread), read, modify, cancel,
submit tool outputs. Execution is the executor's; this module only records what the client
asked for and hands the run to the queue."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.assistants.repository import AssistantRepository
from hal9100.core import ids
from hal9100.core.clock import now
from hal9100.core.errors import bad_request, not_found
from hal9100.core.pagination import ListParams, envelope
from hal9100.core.schemas import ListResponse, dump_json
from hal9100.db.models import Assistant, Run, RunStatus, RunStep
from hal9100.db.rows import insert_rows
from hal9100.engine.state import TERMINAL, terminal_values, transition
from hal9100.events.base import RunEvent
from hal9100.messages.service import build_message
from hal9100.queue.base import EXECUTE_RUN
from hal9100.runs.lifecycle import (
    close_open_work,
    event,
    run_event,
    run_object,
    step_object,
)
from hal9100.runs.repository import RunRepository
from hal9100.runs.schemas import (
    RunCreate,
    RunObject,
    RunStepObject,
    RunUpdate,
    SubmitToolOutputs,
    ThreadAndRunCreate,
)
from hal9100.runtime import Runtime
from hal9100.threads.repository import ThreadRepository
from hal9100.threads.schemas import ThreadCreate
from hal9100.threads.service import build_thread
from hal9100.threads.service import to_object as thread_object
from hal9100.tools import file_search
from hal9100.tools.action import restore_redacted
from hal9100.tools.action.check import check_tools, offered_functions
from hal9100.tools.action.spec import all_parsed, function_names
from hal9100.vector_stores import service as stores

# A cancel re-reads the run and tries again this often when the run changes state under it.
_CANCEL_ATTEMPTS = 5
# A run create whose checks were overtaken by a concurrent write checks again this often.
_CREATE_ATTEMPTS = 3
INCLUDABLE = (file_search.INCLUDE_CONTENT,)


@dataclass(slots=True)
class Started:
    """A run handed to the queue, with the events the API wrote for it and the bus position
    taken before them (a streaming response reads from there)."""

    run: Run
    position: str


def _check_include(include: list[str]) -> list[str]:
    for index, item in enumerate(include):
        if item not in INCLUDABLE:
            raise bad_request(
                f"Invalid value for 'include[{index}]': '{item}'. Supported values are: "
                f"{', '.join(INCLUDABLE)}.",
                f"include[{index}]",
            )
    return include


def _run_tools(
    body: RunCreate | ThreadAndRunCreate, stored: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], Any]:
    """The run's tools (the request's, else the assistant's `stored` ones) and its
    tool_choice, checked but for a function it names (`_check_named`)."""
    tools = restore_redacted(dump_json(body.tools), stored) if body.tools is not None else stored
    tool_choice = dump_json(body.tool_choice) if body.tool_choice is not None else "auto"
    if isinstance(tool_choice, dict) and tool_choice.get("type") != "function":
        if not any(t.get("type") == tool_choice.get("type") for t in tools):
            raise bad_request(
                f"Invalid 'tool_choice': the tool '{tool_choice.get('type')}' is not enabled.",
                "tool_choice",
            )
    return tools, tool_choice


async def _check_named(session: AsyncSession, tools: list[dict[str, Any]], choice: Any) -> bool:
    """Refuse a tool_choice naming a function no tool offers (function tools and action
    tools' operations: the model calls both by name). Returns whether the session gave its
    connection back first, to parse an action spec this process has not parsed yet in a
    thread (an embedded server has one connection, which nothing else could use meanwhile)."""
    if not (isinstance(choice, dict) and choice.get("type") == "function"):
        return False
    released = not all_parsed(tools)
    if released:
        await session.rollback()
    name = (choice.get("function") or {}).get("name")
    # Parsed specs are read from the cache in place; only a parse goes to a thread.
    offered = await offered_functions(tools) if released else function_names(tools)
    if name not in offered:
        raise bad_request(
            f"Invalid 'tool_choice': the function '{name}' is not among the run's tools.",
            "tool_choice",
        )
    return released


def _new_run(
    runtime: Runtime,
    body: RunCreate | ThreadAndRunCreate,
    assistant: Assistant,
    thread_id: str,
    include: list[str],
    tools: list[dict[str, Any]],
    tool_choice: Any,
) -> Run:
    """The run a request asks for, with the tools `_run_tools` settled."""
    created = now()
    additional = body.additional_instructions if isinstance(body, RunCreate) else None
    return Run(
        id=ids.run_id(),
        created_at=created,
        thread_id=thread_id,
        assistant_id=assistant.id,
        status=RunStatus.QUEUED,
        expires_at=created + runtime.settings.run_expiry_seconds,
        model=body.model or assistant.model,
        instructions=body.instructions
        if body.instructions is not None
        else assistant.instructions or "",
        additional_instructions=additional,
        tools=tools,
        metadata_=body.metadata or {},
        temperature=body.temperature if body.temperature is not None else assistant.temperature,
        top_p=body.top_p if body.top_p is not None else assistant.top_p,
        max_prompt_tokens=body.max_prompt_tokens,
        max_completion_tokens=body.max_completion_tokens,
        truncation_strategy=dump_json(body.truncation_strategy)
        if body.truncation_strategy is not None
        else {"type": "auto", "last_messages": None},
        tool_choice=tool_choice,
        parallel_tool_calls=body.parallel_tool_calls
        if body.parallel_tool_calls is not None
        else True,
        response_format=dump_json(body.response_format)
        if body.response_format is not None
        else assistant.response_format,
        reasoning_effort=body.reasoning_effort or assistant.reasoning_effort,
        include=include,
        # The dispatch deadline: a run still unclaimed by then is re-queued by the sweeper.
        lease_expires_at=time.time() + runtime.settings.lease_seconds,
        epoch=0,
        cancel_requested=False,
    )


async def _dispatch(
    runtime: Runtime, run: Run, events: list[RunEvent], stream: bool | None
) -> Started:
    # These events open the stream of this very request; nobody else reads a run from before
    # its creation. A polling client neither needs nor waits on the event channel (which may
    # be restarting: the run is stored and will be dispatched all the same).
    position = ""
    if stream:
        position = await runtime.bus.position(run.id)
        for item in events:
            await runtime.bus.publish(run.id, item)
    await runtime.queue.enqueue(
        EXECUTE_RUN, run.id, worker=await route(runtime, run.thread_id, run.tools)
    )
    return Started(run=run, position=position)


async def route(runtime: Runtime, thread_id: str, tools: list[dict[str, Any]] | None) -> str | None:
    """The worker a run must go to, if any: a thread's code_interpreter session lives in one
    worker (production mode), and its runs go there."""
    if any(t.get("type") == "code_interpreter" for t in tools or []):
        return await runtime.directory.owner(thread_id)
    return None


async def ensure_idle(session: AsyncSession, thread_id: str) -> None:
    active = await RunRepository(session).active_run_id(thread_id)
    if active is not None:
        raise bad_request(f"Thread {thread_id} already has an active run {active}.")


async def create(
    session: AsyncSession, runtime: Runtime, thread_id: str, body: RunCreate, include: list[str]
) -> Started:
    if body.tools is not None:
        await check_tools(dump_json(body.tools))
    _check_include(include)
    for attempt in range(1, _CREATE_ATTEMPTS + 1):
        await ThreadRepository(session).ensure_exists(thread_id)
        assistant = await AssistantRepository(session).get_or_404(body.assistant_id, "assistant_id")
        tools, tool_choice = _run_tools(body, assistant.tools)
        if await _check_named(session, tools, tool_choice):
            # The session let go to parse: read again what the run is made from.
            await ThreadRepository(session).ensure_exists(thread_id)
            assistant = await AssistantRepository(session).get_or_404(
                body.assistant_id, "assistant_id"
            )
        await ensure_idle(session, thread_id)
        run = _new_run(runtime, body, assistant, thread_id, include, tools, tool_choice)
        for index, message in enumerate(body.additional_messages or []):
            session.add(
                await build_message(
                    session,
                    thread_id,
                    message,
                    f"additional_messages[{index}]",
                    runtime=runtime,
                )
            )
        try:
            await insert_rows(session, [run])
            await stores.commit(session, runtime)
            break
        except IntegrityError:
            # The checks above read before this transaction wrote: a request in another
            # process may have added a run (the unique index on a thread's active run
            # refuses ours) or deleted what ours refers to. Checking again answers it as
            # if it had come a moment later.
            await session.rollback()
            stores.forget_pending(session)
            if attempt == _CREATE_ATTEMPTS:
                raise
    queued = run_object(run)
    return await _dispatch(
        runtime,
        run,
        [event("thread.run.created", queued), event("thread.run.queued", queued)],
        body.stream,
    )


async def create_thread_and_run(
    session: AsyncSession, runtime: Runtime, body: ThreadAndRunCreate
) -> Started:
    if body.tools is not None:
        await check_tools(dump_json(body.tools))
    assistant = await AssistantRepository(session).get_or_404(body.assistant_id, "assistant_id")
    tools, tool_choice = _run_tools(body, assistant.tools)
    # Before the thread's first write, which a parse must not hold open.
    if await _check_named(session, tools, tool_choice):
        assistant = await AssistantRepository(session).get_or_404(body.assistant_id, "assistant_id")
    thread_body = body.thread or ThreadCreate()
    if body.tool_resources is not None and thread_body.tool_resources is None:
        thread_body = thread_body.model_copy(update={"tool_resources": body.tool_resources})
    thread = await build_thread(session, runtime, thread_body)
    run = _new_run(runtime, body, assistant, thread.id, [], tools, tool_choice)
    session.add(run)
    # Commits, and queues the ingestion of the stores made for the thread.
    await stores.commit(session, runtime)
    queued = run_object(run)
    return await _dispatch(
        runtime,
        run,
        [
            event("thread.created", thread_object(thread)),
            event("thread.run.created", queued),
            event("thread.run.queued", queued),
        ],
        body.stream,
    )


async def _get(session: AsyncSession, thread_id: str, run_id: str) -> Run:
    await ThreadRepository(session).ensure_exists(thread_id)
    run = await session.scalar(select(Run).where(Run.id == run_id, Run.thread_id == thread_id))
    if run is None:
        raise not_found("run", run_id)
    return run


async def retrieve(session: AsyncSession, thread_id: str, run_id: str) -> RunObject:
    return run_object(await _get(session, thread_id, run_id))


async def update(session: AsyncSession, thread_id: str, run_id: str, body: RunUpdate) -> RunObject:
    run = await _get(session, thread_id, run_id)
    if "metadata" in body.model_fields_set:
        run.metadata_ = body.metadata or {}
    await session.commit()
    return run_object(run)


async def list_(
    session: AsyncSession, thread_id: str, params: ListParams
) -> ListResponse[RunObject]:
    await ThreadRepository(session).ensure_exists(thread_id)
    rows, has_more = await RunRepository(session).page(
        params, select(Run).where(Run.thread_id == thread_id)
    )
    return envelope([run_object(r) for r in rows], has_more)


async def cancel(session: AsyncSession, runtime: Runtime, thread_id: str, run_id: str) -> RunObject:
    run = await _get(session, thread_id, run_id)
    # The run may move between our guarded updates (an executor ends its turn: in_progress
    # -> requires_action; tool outputs arrive: requires_action -> queued). Whichever state it
    # moved to is cancellable too, so try again rather than refuse.
    for _ in range(_CANCEL_ATTEMPTS):
        if run.status in TERMINAL or run.status == RunStatus.CANCELLING:
            break
        # A run nobody executes right now (waiting in the queue, or for tool outputs) is
        # cancelled here and now; one in an executor's hands is asked to stop.
        idle = await transition(
            session,
            run_id,
            (RunStatus.REQUIRES_ACTION, RunStatus.QUEUED),
            terminal_values(RunStatus.CANCELLED, cancel_requested=True),
        )
        if idle is not None:
            events = await close_open_work(
                session, run_id, RunStatus.CANCELLED, include=idle.include
            )
            await session.commit()
            for item in [*events, run_event(idle)]:
                await runtime.bus.publish(run_id, item)
            return run_object(idle)
        await session.rollback()
        busy = await transition(
            session,
            run_id,
            (RunStatus.IN_PROGRESS,),
            {"status": RunStatus.CANCELLING, "cancel_requested": True},
        )
        if busy is not None:
            await session.commit()
            await runtime.bus.publish(run_id, run_event(busy))
            await runtime.bus.request_cancel(run_id)
            return run_object(busy)
        await session.rollback()
        run = await _get(session, thread_id, run_id)
    raise bad_request(f"Cannot cancel run with status '{run.status}'.")


async def submit_tool_outputs(
    session: AsyncSession,
    runtime: Runtime,
    thread_id: str,
    run_id: str,
    body: SubmitToolOutputs,
) -> Started:
    run = await _get(session, thread_id, run_id)
    if run.status != RunStatus.REQUIRES_ACTION or not run.required_action:
        raise bad_request(
            f"Runs in status '{run.status}' do not accept tool outputs.", "tool_outputs"
        )
    pending = [c["id"] for c in run.required_action["submit_tool_outputs"]["tool_calls"]]
    outputs: dict[str, str] = {}
    for index, item in enumerate(body.tool_outputs):
        if item.tool_call_id not in pending:
            raise bad_request(
                f"Invalid 'tool_outputs[{index}].tool_call_id': no pending tool call with id "
                f"'{item.tool_call_id}'.",
                f"tool_outputs[{index}].tool_call_id",
            )
        if item.tool_call_id in outputs:
            raise bad_request(
                f"Duplicate output for tool call '{item.tool_call_id}'.",
                f"tool_outputs[{index}].tool_call_id",
            )
        outputs[item.tool_call_id] = item.output
    missing = [call_id for call_id in pending if call_id not in outputs]
    if missing:
        raise bad_request(
            f"Expected tool outputs for call_ids {pending}, got {list(outputs)}. "
            f"Missing: {missing}.",
            "tool_outputs",
        )
    resumed = await transition(
        session,
        run_id,
        (RunStatus.REQUIRES_ACTION,),
        {
            "status": RunStatus.QUEUED,
            "required_action": None,
            "lease_owner": None,
            "lease_expires_at": time.time() + runtime.settings.lease_seconds,
        },
    )
    if resumed is None:
        await session.rollback()
        raise bad_request("The run no longer accepts tool outputs.", "tool_outputs")
    step = await _pending_tool_step(session, run_id, pending)
    events: list[RunEvent] = []
    if step is not None:
        details = dict(step.step_details)
        details["tool_calls"] = [
            {**call, "function": {**call["function"], "output": outputs[call["id"]]}}
            if call["id"] in outputs
            else call
            for call in details["tool_calls"]
        ]
        step.step_details = details
        step.status = "completed"
        step.completed_at = now()
        events.append(event("thread.run.step.completed", step_object(step, run.include)))
    await session.commit()
    events.append(event("thread.run.queued", run_object(resumed)))
    return await _dispatch(runtime, resumed, events, body.stream)


async def _pending_tool_step(
    session: AsyncSession, run_id: str, call_ids: list[str]
) -> RunStep | None:
    steps = (
        await session.scalars(
            select(RunStep).where(
                RunStep.run_id == run_id,
                RunStep.type == "tool_calls",
                RunStep.status == "in_progress",
            )
        )
    ).all()
    wanted = set(call_ids)
    for step in steps:
        if {c["id"] for c in step.step_details.get("tool_calls", [])} & wanted:
            return step
    return None


async def list_steps(
    session: AsyncSession, thread_id: str, run_id: str, params: ListParams, include: list[str]
) -> ListResponse[RunStepObject]:
    _check_include(include)
    await _get(session, thread_id, run_id)
    rows, has_more = await RunRepository(session).page_steps(run_id, params)
    return envelope([step_object(r, include) for r in rows], has_more)


async def retrieve_step(
    session: AsyncSession, thread_id: str, run_id: str, step_id: str, include: list[str]
) -> RunStepObject:
    _check_include(include)
    await _get(session, thread_id, run_id)
    step = await session.scalar(
        select(RunStep).where(RunStep.id == step_id, RunStep.run_id == run_id)
    )
    if step is None:
        raise not_found("run step", step_id)
    return step_object(step, include)
