"""A response's events as server-sent events: the run's event log read from its start and
translated (`responses.events`), so any process streams any response, live or ended, and a
client that lost its connection resumes after the last `sequence_number` it saw.

The bus keeps a run's log a while (a minute after its last reader in embedded mode, an hour
with Redis); a stream that followed a response to its end keeps its log in the database, so
later replays read the same log. A finished response whose log was kept by neither still
streams: the run's end, read from the database, closes it with the whole response."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from typing import Any

from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.conversations import items as items_
from hal9100.conversations.items import filenames_of_files
from hal9100.db.models import ResponseEvents, Run, RunStep
from hal9100.events.base import RunEvent
from hal9100.responses import objects
from hal9100.responses.events import ENDS, FIRST_EVENT, Translator
from hal9100.responses.service import forget, wait_done
from hal9100.responses.tools import namespaced
from hal9100.runs.streaming import follow, sse_response
from hal9100.runtime import Runtime

log = logging.getLogger(__name__)


# Work a stream leaves behind it (forgetting an unstored response, keeping a log), held
# until done.
_leftover: set[asyncio.Task[None]] = set()


def _after_end(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(work)
    _leftover.add(task)
    task.add_done_callback(_leftover.discard)


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


async def _replay(saved: list[RunEvent]) -> AsyncGenerator[list[RunEvent], None]:
    yield saved


async def saved_log(runtime: Runtime, response_id: str) -> list[RunEvent] | None:
    async with runtime.sessions() as session:
        events = await session.scalar(
            select(ResponseEvents.events).where(ResponseEvents.run_id == response_id)
        )
    return None if events is None else [RunEvent(name, data) for name, data in events]


async def save_log(runtime: Runtime, response_id: str, events: list[RunEvent]) -> None:
    """Keep the log a reader followed to the response's end, for replays once the event
    bus has let it go (the first reader's stays: later ones read the same log, or less of
    it)."""
    try:
        async with runtime.sessions() as session:
            session.add(
                ResponseEvents(run_id=response_id, events=[[e.event, e.data] for e in events])
            )
            await session.commit()
    except IntegrityError:
        pass  # kept already (or the response is gone)
    except Exception:
        log.exception("response %s: keeping its event log failed", response_id)


def _sse(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


async def opening(session: AsyncSession, run: Run) -> dict[str, Any]:
    """The response as its stream opens: as created, before any output."""
    shown = await objects.to_object(session, run, output=False)
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
    runtime: Runtime, run: Run, first: dict[str, Any], after: int | None, *, fresh: bool = False
) -> StreamingResponse:
    """`fresh`: the response was just created (no log of it can have been kept)."""
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
        events: AsyncGenerator[list[RunEvent], None] | None = None
        saved: list[RunEvent] | None = None
        seen: list[RunEvent] = []
        try:
            head = frames_of(translator.start())
            if head:
                yield head
            saved = None if fresh else await saved_log(runtime, response_id)
            events = (
                _replay(saved)
                if saved is not None
                else follow(runtime, response_id, runtime.bus.START)
            )
            async for batch in events:
                seen.extend(batch)
                out: list[dict[str, Any]] = []
                for item in batch:
                    out.extend(await translator.feed(item))
                chunk = frames_of(out)
                if chunk:
                    yield chunk
                if translator.ended:
                    break
        finally:
            # Nothing awaited comes first: a stream whose client left is closed inside a
            # cancelled scope, where every await raises again (a client may leave at any
            # await, the first one included).
            if not first["store"]:
                # Not to be stored: gone once it ended (also when its client left first).
                _after_end(_forget_when_done(runtime, response_id))
            elif translator.ended_well and saved is None and seen and seen[0].event == FIRST_EVENT:
                # The whole log, from the run's first event to its end (a reader that came
                # after the bus trimmed or dropped it, or whose stream failed, keeps none).
                _after_end(save_log(runtime, response_id, seen))
            if events is not None:
                await events.aclose()

    return sse_response(frames())
