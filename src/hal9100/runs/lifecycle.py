"""Run states and the writes that move a run between them, shared by the API (cancel, submit
tool outputs, expiry) and the executor.

Every transition is a guarded UPDATE: it names the states it may leave (and, for an executor,
the lease epoch it holds), so two processes racing on one run cannot both win.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.core.clock import now
from hal9100.db.models import ACTIVE_RUN_STATUSES, Message, Run, RunStep
from hal9100.events.base import RunEvent
from hal9100.messages.service import to_object as message_object
from hal9100.runs.schemas import RunObject, RunStepObject

# A thread holds at most one run in these states (OpenAI refuses new runs and messages then);
# they are also the states a run can expire from.
ACTIVE = ACTIVE_RUN_STATUSES
TERMINAL = ("completed", "failed", "cancelled", "expired", "incomplete")
NO_USAGE: dict[str, int] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
# The message status reason OpenAI gives when a run stops under a message it was writing.
MESSAGE_REASON = {"cancelled": "run_cancelled", "expired": "run_expired", "failed": "run_failed"}


def run_object(run: Run) -> RunObject:
    return RunObject(
        id=run.id,
        created_at=run.created_at,
        thread_id=run.thread_id,
        assistant_id=run.assistant_id,
        status=run.status,
        required_action=run.required_action,
        last_error=run.last_error,
        expires_at=None if run.status in TERMINAL else run.expires_at,
        started_at=run.started_at,
        cancelled_at=run.cancelled_at,
        failed_at=run.failed_at,
        completed_at=run.completed_at,
        incomplete_details=run.incomplete_details,
        model=run.model,
        instructions=run.instructions,
        tools=run.tools,
        metadata=run.metadata_ or {},
        # OpenAI reports usage only once the run is finished, and then always: a run that
        # ended before any model call spent nothing.
        usage=(run.usage or NO_USAGE) if run.status in TERMINAL else None,
        # Unset means the backend's default, which OpenAI reports as 1.0; None stays stored
        # so that nothing is sent to servers that reject sampling parameters.
        temperature=run.temperature if run.temperature is not None else 1.0,
        top_p=run.top_p if run.top_p is not None else 1.0,
        max_prompt_tokens=run.max_prompt_tokens,
        max_completion_tokens=run.max_completion_tokens,
        truncation_strategy=run.truncation_strategy,
        tool_choice=run.tool_choice,
        parallel_tool_calls=run.parallel_tool_calls,
        response_format=run.response_format if run.response_format is not None else "auto",
        reasoning_effort=run.reasoning_effort,
    )


def step_object(step: RunStep) -> RunStepObject:
    return RunStepObject(
        id=step.id,
        created_at=step.created_at,
        assistant_id=step.assistant_id,
        thread_id=step.thread_id,
        run_id=step.run_id,
        type=step.type,
        status=step.status,
        step_details=step.step_details,
        last_error=step.last_error,
        expired_at=step.expired_at,
        cancelled_at=step.cancelled_at,
        failed_at=step.failed_at,
        completed_at=step.completed_at,
        metadata=step.metadata_ or {},
        # Null only while in progress. A turn's usage is booked on one of its steps; the
        # other (the text before tool calls), or a step cut short, spent nothing of its own.
        usage=(step.usage or NO_USAGE) if step.status != "in_progress" else None,
    )


def event(name: str, payload: BaseModel | dict[str, Any]) -> RunEvent:
    if isinstance(payload, BaseModel):
        return RunEvent(name, payload.model_dump_json())
    return RunEvent(name, json.dumps(payload, separators=(",", ":")))


def run_event(run: Run) -> RunEvent:
    return event(f"thread.run.{run.status}", run_object(run))


async def transition(
    session: AsyncSession,
    run_id: str,
    from_statuses: tuple[str, ...],
    values: dict[str, Any],
    *,
    epoch: int | None = None,
) -> Run | None:
    """Apply `values` if the run is still in one of `from_statuses` (and at `epoch`, for an
    executor). Returns the updated run, or None when the guard failed. Does not commit."""
    query = update(Run).where(Run.id == run_id, Run.status.in_(from_statuses))
    if epoch is not None:
        query = query.where(Run.epoch == epoch)
    # One round trip: the guarded UPDATE hands back the row it changed (SQLite >= 3.35 and
    # PostgreSQL both support RETURNING).
    run: Run | None = await session.scalar(
        query.values(**values).returning(Run).execution_options(populate_existing=True)
    )
    return run


def terminal_values(status: str, **extra: Any) -> dict[str, Any]:
    """Column values for entering terminal `status` (timestamps, no pending action)."""
    values: dict[str, Any] = {
        "status": status,
        "required_action": None,
        "lease_owner": None,
        "lease_expires_at": None,
        **extra,
    }
    stamp = now()
    if status == "completed":
        values["completed_at"] = stamp
    elif status == "failed":
        values["failed_at"] = stamp
    elif status == "cancelled":
        values["cancelled_at"] = stamp
    elif status == "incomplete":
        values["completed_at"] = stamp
    return values


async def close_open_work(
    session: AsyncSession, run_id: str, status: str, last_error: dict[str, Any] | None = None
) -> list[RunEvent]:
    """Close the steps and messages a run leaves unfinished when it stops as `status`
    (cancelled, failed, expired or incomplete). Returns their events, to publish after commit."""
    stamp = now()
    events: list[RunEvent] = []
    # Messages first, then the steps that were writing them, as a finished turn does.
    messages = (
        await session.scalars(
            select(Message).where(Message.run_id == run_id, Message.status == "in_progress")
        )
    ).all()
    for message in messages:
        message.status = "incomplete"
        message.incomplete_at = stamp
        message.incomplete_details = {"reason": MESSAGE_REASON.get(status, "max_tokens")}
        events.append(event("thread.message.incomplete", message_object(message)))
    steps = (
        await session.scalars(
            select(RunStep).where(RunStep.run_id == run_id, RunStep.status == "in_progress")
        )
    ).all()
    step_status = "completed" if status == "incomplete" else status
    for step in steps:
        step.status = step_status
        if step_status == "completed":
            step.completed_at = stamp
        elif step_status == "cancelled":
            step.cancelled_at = stamp
        elif step_status == "expired":
            step.expired_at = stamp
        else:
            step.failed_at = stamp
            step.last_error = last_error
        events.append(event(f"thread.run.step.{step_status}", step_object(step)))
    return events
