"""The response object, read from the run that is the response and the items it wrote."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.conversations.items import thread_entries
from hal9100.db.models import Message, Run, RunStatus, RunStep

_STATUS = {
    RunStatus.QUEUED: "queued",
    RunStatus.IN_PROGRESS: "in_progress",
    # Asked to stop, not stopped yet.
    RunStatus.CANCELLING: "in_progress",
    RunStatus.COMPLETED: "completed",
    RunStatus.FAILED: "failed",
    RunStatus.CANCELLED: "cancelled",
    RunStatus.INCOMPLETE: "incomplete",
    # A response has no `expired`: it failed, and says why.
    RunStatus.EXPIRED: "failed",
}
# The error codes a response may carry (ResponseErrorCode); any other failure is the
# server's.
_ERROR_CODES = {"server_error", "rate_limit_exceeded", "invalid_prompt", "vector_store_timeout"}


def status_of(run: Run) -> str:
    return _STATUS.get(RunStatus(run.status), "in_progress")


def _error(run: Run) -> dict[str, Any] | None:
    if run.status == RunStatus.EXPIRED:
        return {
            "code": "server_error",
            "message": "The response did not finish within the server's time limit "
            "(HAL9100_RUN_EXPIRY_SECONDS).",
        }
    if run.status != RunStatus.FAILED:
        return None
    error = run.last_error or {}
    code = error.get("code")
    return {
        "code": code if code in _ERROR_CODES else "server_error",
        "message": str(error.get("message") or "The response failed."),
    }


def _usage(run: Run) -> dict[str, Any] | None:
    if run.usage is None:
        return None
    prompt = int(run.usage.get("prompt_tokens") or 0)
    completion = int(run.usage.get("completion_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _text(settings: dict[str, Any]) -> dict[str, Any]:
    text = dict(settings.get("text") or {})
    text.setdefault("format", {"type": "text"})
    text.setdefault("verbosity", "medium")
    return text


async def output_items(session: AsyncSession, run: Run, include: set[str]) -> list[dict[str, Any]]:
    """What the response produced, in order: its messages and its tool calls."""
    entries = [
        e
        for e in await thread_entries(session, run.thread_id, include)
        if isinstance(e.source, Message | RunStep) and e.source.run_id == run.id
    ]
    # Calls the server answered itself (a call the model got wrong, answered with what was
    # wrong) are not the client's to make: only the calls waiting for it are shown.
    answered = {
        e.item.get("call_id") for e in entries if e.item.get("type") == "function_call_output"
    }
    return [
        e.item
        for e in entries
        if not (isinstance(e.source, Message) and e.source.role == "user")
        and e.item.get("type") != "function_call_output"
        and not (e.item.get("type") == "function_call" and e.item.get("call_id") in answered)
    ]


async def to_object(
    session: AsyncSession,
    run: Run,
    include: Collection[str] = (),
    *,
    output: bool = True,
) -> dict[str, Any]:
    """`include`: what a retrieve asks to see beyond what the request's `include` did;
    `output`: whether to read the output (a response just created has none)."""
    settings = run.response or {}
    include = {*(settings.get("include") or []), *include}
    incomplete = None
    if run.status == RunStatus.INCOMPLETE:
        reason = (run.incomplete_details or {}).get("reason")
        incomplete = {
            "reason": "max_output_tokens"
            if reason in ("max_completion_tokens", "max_tokens", None)
            else "content_filter"
        }
    reasoning = settings.get("reasoning")
    conversation = settings.get("conversation")
    answer = {
        "id": run.id,
        "object": "response",
        "created_at": run.created_at,
        "status": status_of(run),
        "background": bool(settings.get("background")),
        "completed_at": run.completed_at if run.status == RunStatus.COMPLETED else None,
        "error": _error(run),
        "incomplete_details": incomplete,
        "instructions": settings.get("instructions"),
        "max_output_tokens": run.max_completion_tokens,
        "max_tool_calls": settings.get("max_tool_calls"),
        "model": run.model,
        "output": await output_items(session, run, include) if output else [],
        "parallel_tool_calls": run.parallel_tool_calls,
        "previous_response_id": settings.get("previous_response_id"),
        "conversation": {"id": conversation} if conversation else None,
        "prompt": settings.get("prompt"),
        "prompt_cache_key": settings.get("prompt_cache_key"),
        "prompt_cache_retention": settings.get("prompt_cache_retention"),
        # Models behind this server do not reason as OpenAI's reasoning models report it:
        # answered as OpenAI answers for a model that does not reason.
        "reasoning": {
            "effort": (reasoning or {}).get("effort"),
            "summary": (reasoning or {}).get("summary"),
        },
        "safety_identifier": settings.get("safety_identifier"),
        "service_tier": "default",
        "store": bool(settings.get("store", True)),
        "temperature": run.temperature if run.temperature is not None else 1.0,
        "text": _text(settings),
        "tool_choice": settings.get("tool_choice", "auto"),
        "tools": settings.get("tools") or [],
        "top_logprobs": settings.get("top_logprobs") or 0,
        "top_p": run.top_p if run.top_p is not None else 1.0,
        "truncation": settings.get("truncation") or "disabled",
        "usage": _usage(run),
        "user": settings.get("user"),
        "metadata": run.metadata_ or {},
    }
    # Fields the spec types without null are left out when unset, as OpenAI does.
    for key in ("user", "prompt_cache_retention", "usage"):
        if answer[key] is None:
            del answer[key]
    return answer
