"""A response's events as server-sent events: the run's event log read from its start and
translated (`responses.events`), so any process streams any response, live or ended, and a
client that lost its connection resumes after the last `sequence_number` it saw.

A finished response whose log the bus no longer holds (embedded mode keeps a log a minute
after its last reader, Redis an hour) still streams: the run's end, read from the database,
closes it with the whole response."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.conversations import items as items_
from hal9100.conversations.items import filenames_of_files
from hal9100.db.models import Run, RunStep
from hal9100.responses import objects
from hal9100.responses.events import ENDS, Translator
from hal9100.responses.service import forget, wait_done
from hal9100.responses.tools import namespaced
from hal9100.runs.streaming import follow, sse_response
from hal9100.runtime import Runtime

log = logging.getLogger(__name__)


# Tasks that forget unstored responses whose client left before their end.
_forgetting: set[asyncio.Task[None]] = set()


async def _forget(runtime: Runtime, response_id: str) -> None:
    async with runtime.sessions() as session:
        ended = await session.scalar(select(Run).where(Run.id == response_id))
        if ended is not None:
            await forget(session, ended)


async def _forget_when_done(runtime: Runtime, response_id: str) -> None:
    try:
        async with runtime.sessions() as session:
            run = await session.scalar(select(Run).where(Run.id == response_id))
            if run is None:
                return
            await session.commit()
            await wait_done(runtime, session, run, runtime.bus.START)
        await _forget(runtime, response_id)
    except Exception:
        log.exception("response %s: forgetting it failed", response_id)


def _sse(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


async def opening(session: AsyncSession, run: Run) -> dict[str, Any]:
    """The response as its stream opens: as created, before any output."""
    shown = await objects.to_object(session, run)
    background = shown["background"]
    shown.update(
        status="queued" if background else "in_progress",
        output=[],
        completed_at=None,
        error=None,
        incomplete_details=None,
    )
    shown.pop("usage", None)
    return shown


def stream(
    runtime: Runtime, run: Run, first: dict[str, Any], after: int | None
) -> StreamingResponse:
    # Read now: the caller's session may end (and expire the row) before the stream runs.
    response_id, thread_id = run.id, run.thread_id

    async def final() -> dict[str, Any]:
        async with runtime.sessions() as session:
            ended = await session.scalar(select(Run).where(Run.id == response_id))
            if ended is None:
                return {
                    **first,
                    "status": "failed",
                    "error": {"code": "server_error", "message": "The response was deleted."},
                }
            return await objects.to_object(session, ended)

    async def filenames(file_ids: list[str]) -> dict[str, str]:
        async with runtime.sessions() as session:
            return await filenames_of_files(session, set(file_ids))

    async def step_items(step_id: str) -> list[dict[str, Any]]:
        async with runtime.sessions() as session:
            step = await session.scalar(select(RunStep).where(RunStep.id == step_id))
            settings = await session.scalar(select(Run.response).where(Run.id == response_id))
        shown = set((settings or {}).get("include") or [])
        return items_.step_items(step, shown, namespaced(first["tools"])) if step else []

    translator = Translator(
        first, final, filenames, step_items, thread_id, namespaced(first["tools"])
    )

    def frames_of(events: list[dict[str, Any]]) -> bytes:
        out = []
        for event in events:
            if after is None or event["sequence_number"] > after:
                out.append(_sse(event))
            elif event["type"] in ENDS:
                # The log was gone (it is kept a while only): the stream was read back from
                # the response's end alone, shorter than what the client saw. Its end comes.
                out.append(_sse({**event, "sequence_number": after + 1}))
        return b"".join(out)

    async def frames() -> AsyncIterator[bytes]:
        head = frames_of(translator.start())
        if head:
            yield head
        events = follow(runtime, response_id, runtime.bus.START)
        try:
            async for batch in events:
                out: list[dict[str, Any]] = []
                for item in batch:
                    out.extend(await translator.feed(item))
                chunk = frames_of(out)
                if chunk:
                    yield chunk
                if translator.ended:
                    break
        finally:
            await events.aclose()
            if not first["store"]:
                # Not to be stored: gone once it ended (also when its client left first).
                if translator.ended:
                    await _forget(runtime, response_id)
                else:
                    task = asyncio.create_task(_forget_when_done(runtime, response_id))
                    _forgetting.add(task)
                    task.add_done_callback(_forgetting.discard)

    return sse_response(frames())
