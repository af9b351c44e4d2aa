"""Server-sent events for streamed runs, as OpenAI frames them: `event:` and `data:` lines,
ending with `event: done` / `data: [DONE]`."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

from hal9100.events.base import EventBus

DONE = b"event: done\ndata: [DONE]\n\n"


def event_stream(bus: EventBus, run_id: str, position: str) -> StreamingResponse:
    async def frames() -> AsyncIterator[bytes]:
        # The subscription ends at the first closing event (finished, or requires_action).
        # A client that disconnects cancels this generator, never the run.
        async for item in bus.subscribe(run_id, position):
            yield item.sse()
        yield DONE

    return StreamingResponse(
        frames(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
