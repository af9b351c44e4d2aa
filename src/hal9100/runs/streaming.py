"""Server-sent events for streamed runs, as OpenAI frames them: `event:` and `data:` lines,
ending with `event: done` / `data: [DONE]`.

A stream follows the run's events on the bus from the position the API took before it
dispatched the run, up to the first closing event (the run finished, or waits for tool
outputs). The stream only watches: a client that disconnects stops the watching, never the
run. The subscription is read by a small pump task so the stream can notice a run that went
quiet for good (its thread was deleted under it, or its closing event was lost) and end
instead of hanging; both the pump and the subscription end with the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from fastapi.responses import StreamingResponse
from sqlalchemy import select
from starlette.types import Receive, Scope, Send

from hal9100.db.models import Run, RunStatus
from hal9100.events.base import RunEvent, error_event, run_gone_event
from hal9100.runs.lifecycle import TERMINAL, run_event
from hal9100.runtime import Runtime

log = logging.getLogger(__name__)

DONE = b"event: done\ndata: [DONE]\n\n"
# Events already waiting when one is sent go out in the same write, up to this many.
MAX_EVENTS_PER_WRITE = 64
# Statuses whose event closes a stream segment.
_CLOSING_STATUSES = frozenset((*TERMINAL, RunStatus.REQUIRES_ACTION))


class _EventStreamResponse(StreamingResponse):
    """Closes its event generator when the response ends, however it ends (Starlette
    abandons an unfinished body iterator on a client disconnect)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            body = self.body_iterator
            if hasattr(body, "aclose"):
                await body.aclose()


async def _pump(
    runtime: Runtime, run_id: str, position: str, queue: asyncio.Queue[RunEvent | None]
) -> None:
    """Copy the run's events into `queue`; None marks the end of the segment."""
    subscription = runtime.bus.subscribe(run_id, position)
    closing = getattr(subscription, "aclose", None)
    try:
        async for item in subscription:
            queue.put_nowait(item)
        queue.put_nowait(None)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("run %s: event subscription failed", run_id)
        queue.put_nowait(error_event("The run's event stream was interrupted; poll the run."))
        queue.put_nowait(None)
    finally:
        if closing is not None:
            with contextlib.suppress(Exception):
                await closing()


async def _after_quiet(
    runtime: Runtime, run_id: str, suspect: bool
) -> tuple[RunEvent | None, bool]:
    """Look the run up after a quiet spell. Returns the event that ends the stream now, if
    any, and whether the run looks finished without its closing event having come."""
    async with runtime.sessions() as session:
        run = await session.scalar(select(Run).where(Run.id == run_id))
        if run is None:
            return run_gone_event(run_id), False
        if run.status not in _CLOSING_STATUSES:
            return None, False
        if not suspect:
            # Its closing event may be on its way (published right after the commit).
            return None, True
        # A second quiet spell with the run at rest and no closing event: it was lost on
        # its way; send the state the database holds, which is what it would have said.
        log.warning("run %s: closing event missing; sending it from the database", run_id)
        return run_event(run), False


async def follow(
    runtime: Runtime, run_id: str, position: str
) -> AsyncGenerator[list[RunEvent], None]:
    """The run's events from `position`, in batches of those already waiting, up to and
    with the one that closes the segment (or the event that ends it for a run gone quiet
    for good)."""
    check_seconds = runtime.settings.stream_check_seconds
    queue: asyncio.Queue[RunEvent | None] = asyncio.Queue()
    pump = asyncio.create_task(_pump(runtime, run_id, position, queue), name="sse-pump")
    suspect = False
    try:
        item: RunEvent | None
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    async with asyncio.timeout(check_seconds):
                        item = await queue.get()
                except TimeoutError:
                    final, suspect = await _after_quiet(runtime, run_id, suspect)
                    if final is not None:
                        yield [final]
                        break
                    continue
                # Woken by one event: one turn of the loop lets the events published with
                # it (a model's chunks read in one go) join it in the same write.
                await asyncio.sleep(0)
            if item is None:  # the segment ended (a closing event, or an error)
                break
            suspect = False
            # Events already waiting go out with this one, in one write.
            ready = [item]
            ended = False
            while len(ready) < MAX_EVENTS_PER_WRITE:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if item is None:
                    ended = True
                    break
                ready.append(item)
            yield ready
            if ended:
                break
    finally:
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)


def sse_response(frames: AsyncIterator[bytes]) -> StreamingResponse:
    return _EventStreamResponse(
        frames,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def event_stream(
    runtime: Runtime,
    run_id: str,
    position: str,
    reshape: Callable[[RunEvent], RunEvent] | None = None,
) -> StreamingResponse:
    """The run's events from `position` as SSE; `reshape` rewrites each event first (the
    v1 shapes, for a client of `assistants=v1`)."""

    def sse(item: RunEvent) -> bytes:
        return (reshape(item) if reshape is not None else item).sse()

    async def frames() -> AsyncIterator[bytes]:
        events = follow(runtime, run_id, position)
        try:
            async for batch in events:
                yield b"".join(sse(item) for item in batch)
            yield DONE
        finally:
            await events.aclose()

    return sse_response(frames())
