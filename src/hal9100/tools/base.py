"""The contract between the run engine and a server-side tool (action, file_search,
code_interpreter): what the model is shown, how a call runs, and what it leaves behind.

A tool knows nothing of the API that started the run. It gets the run's execution record
and what it needs to reach files and storage, and returns the text the model reads next
plus its call's details in OpenAI's run-step shape for its type; each API records those in
its own objects.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from hal9100.config import Settings
    from hal9100.db.engine import SessionMaker
    from hal9100.db.models import Run
    from hal9100.sandbox.sessions import Sessions
    from hal9100.storage.base import ObjectStorage
    from hal9100.vector_stores.search import VectorSearch


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """A function as the model sees it (the `function` of a chat-completions tool)."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


# Sends a fragment of the call's details (OpenAI's step-delta shape for the tool's type,
# without `index` or `id`) to whoever streams the run.
Progress = Callable[[dict[str, Any]], Awaitable[None]]


async def _no_progress(_: dict[str, Any]) -> None:
    return None


@dataclass(slots=True)
class ToolContext:
    """What a call may use. A call must stop when its task is cancelled (the run was
    cancelled, expired or lost its lease) and should not outlive `deadline`."""

    run: Run
    sessions: SessionMaker
    storage: ObjectStorage
    settings: Settings
    # Unix time by which the run must be done (its expiry), or None.
    deadline: float | None
    progress: Progress = field(default=_no_progress)
    # The call being made (the file_search tool numbers its citation markers by it).
    call_id: str | None = None
    # The vector stores' search, where the deployment has one.
    vector_search: VectorSearch | None = None
    # The code_interpreter sessions of this process, where a sandbox can be made.
    sandbox: Sessions | None = None


class ToolUnavailable(Exception):
    """The tool cannot run here at all (no safe sandbox): the run fails with this message,
    rather than the model being told and going on without it."""


@dataclass(slots=True)
class ToolOutput:
    # What the model reads as the call's result.
    output: str
    # The call's details in OpenAI's run-step shape for its type, without `id`: e.g.
    # {"type": "function", "function": {"name", "arguments", "output"}}.
    details: dict[str, Any]


class ServerTool(Protocol):
    """One tool of a run that the server runs itself. It may offer several functions (an
    action tool offers one per operation)."""

    # The run's tool type it comes from ("action", "file_search", "code_interpreter").
    type: str

    def functions(self) -> list[FunctionSpec]: ...

    def repeatable(self, name: str, arguments: dict[str, Any]) -> bool:
        """Whether a call may be made again after a crash left its outcome unknown (a
        read, or an idempotent write). A call that may not is never made twice."""
        ...

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> ToolOutput:
        """Run one call. Failures the model can act on (an HTTP 404, a timeout, a bad
        argument) are outputs, not exceptions; an exception fails the call with a generic
        output and is logged."""
        ...

    def unknown_outcome(self, name: str, arguments: dict[str, Any]) -> ToolOutput:
        """The output recorded for a call that was in flight when its worker died and may
        not be repeated: the model is told that its outcome is unknown."""
        ...
