"""The event channel between run executors and the API processes that stream runs.

Each run has an ordered log of events. A subscriber names a position (taken before it
triggers the work, so nothing published in between is missed) and receives every later
event in order. In embedded mode the log lives in memory; in production Redis carries it, so
a client connected to any API process sees the events of a run executed by any worker.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

# Events after which a stream segment ends: the run is finished or waits for the client.
CLOSING_EVENTS = frozenset(
    {
        "thread.run.requires_action",
        "thread.run.completed",
        "thread.run.incomplete",
        "thread.run.failed",
        "thread.run.cancelled",
        "thread.run.expired",
        "error",
    }
)
TERMINAL_EVENTS = CLOSING_EVENTS - {"thread.run.requires_action"}


@dataclass(frozen=True, slots=True)
class RunEvent:
    event: str
    # The JSON payload, serialized once by the publisher.
    data: str

    def sse(self) -> bytes:
        return f"event: {self.event}\ndata: {self.data}\n\n".encode()


def error_event(message: str, code: str | None = "server_error") -> RunEvent:
    """The `error` stream event, for failures of a stream itself (a run's own failure is
    `thread.run.failed`).

    The spec's ErrorEvent data is a bare Error object, while the official SDKs raise
    `APIError` only for data holding an `error` object (the Python SDK otherwise tries to
    read the event as a run event). The data carries both: the Error fields at the top level
    and the same object under `error`.
    """
    error: dict[str, Any] = {"message": message, "type": "server_error", "param": None}
    error["code"] = code
    return RunEvent("error", json.dumps({**error, "error": error}, separators=(",", ":")))


def run_gone_event(run_id: str) -> RunEvent:
    """The `error` event that ends the streams of a run whose thread was deleted."""
    return error_event(f"Run {run_id} no longer exists (its thread was deleted).", "run_not_found")


class EventBus(Protocol):
    async def publish(self, run_id: str, event: RunEvent) -> None: ...

    # The position before a run's first event: a subscriber from there reads its whole log.
    START: str

    async def position(self, run_id: str) -> str:
        """An opaque position: `subscribe(after=position)` yields what is published later."""
        ...

    def subscribe(self, run_id: str, after: str) -> AsyncIterator[RunEvent]:
        """Events of the run after `after`, in order, until a closing event (included)."""
        ...

    async def request_cancel(self, run_id: str) -> None:
        """Tell whichever executor holds the run to stop now."""
        ...

    async def wait_cancel(self, run_id: str) -> None:
        """Return when a cancel was requested for the run (the executor races its work
        against this)."""
        ...

    async def ping(self) -> None:
        """Raise when the channel's server (Redis) does not answer; for readiness checks."""
        ...

    async def aclose(self) -> None: ...
