"""What the Assistants API shows of a run: its objects and events, and the closing of the
steps and messages a stopped run leaves open. The states and guarded writes themselves are
the engine's (`engine/state.py`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.core.clock import now
from hal9100.db.models import Message, Run, RunStatus, RunStep
from hal9100.engine.state import TERMINAL
from hal9100.events.base import RunEvent
from hal9100.messages.service import to_object as message_object
from hal9100.runs.schemas import RunObject, RunStepObject
from hal9100.tools import code_interpreter, file_search
from hal9100.tools.action import redact_tools

NO_USAGE: dict[str, int] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
# The message status reason OpenAI gives when a run stops under a message it was writing.
MESSAGE_REASON = {
    RunStatus.CANCELLED: "run_cancelled",
    RunStatus.EXPIRED: "run_expired",
    RunStatus.FAILED: "run_failed",
}


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
        tools=redact_tools(run.tools),
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


def _public(call: dict[str, Any], include_content: bool) -> dict[str, Any]:
    if call.get("type") == code_interpreter.NAME:
        return code_interpreter.public_details(call)
    return file_search.public_details(call, include_content)


def step_object(step: RunStep, include: Sequence[str] | None = ()) -> RunStepObject:
    """A step as the API serves it: file_search results carry their content only when the
    request's (or the run's) `include` asks for it."""
    details = step.step_details
    if step.type == "tool_calls" and isinstance(details.get("tool_calls"), list):
        content = file_search.INCLUDE_CONTENT in (include or ())
        details = {
            **details,
            "tool_calls": [
                _public(c, content) if isinstance(c, dict) else c for c in details["tool_calls"]
            ],
        }
    return RunStepObject(
        id=step.id,
        created_at=step.created_at,
        assistant_id=step.assistant_id,
        thread_id=step.thread_id,
        run_id=step.run_id,
        type=step.type,
        status=step.status,
        step_details=details,
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


async def close_open_work(
    session: AsyncSession,
    run_id: str,
    status: RunStatus,
    last_error: dict[str, Any] | None = None,
    include: Sequence[str] | None = (),
) -> list[RunEvent]:
    """Close the steps and messages a run leaves unfinished when it stops as `status`
    (cancelled, failed, expired or incomplete). Returns their events, to publish after commit;
    `include` is the run's (what its steps' events show)."""
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
    step_status = "completed" if status == RunStatus.INCOMPLETE else status
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
        events.append(event(f"thread.run.step.{step_status}", step_object(step, include)))
    return events
