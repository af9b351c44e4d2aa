"""What the engine tells the API that started a run, and the records it hands over.

The engine drives a run (model turns, tool calls, limits) and owns the run's execution state
on its `runs` row; everything a client sees is the API's: the Assistants API records run
steps, messages and `thread.*` events, the Responses API items and `response.*` events. Each
API implements `Recorder`; the engine calls it in the order things happen, and within its own
transactions when a write must land together with the run's new state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.db.models import Run, RunStatus
from hal9100.events.base import RunEvent
from hal9100.llm.base import ChatRequest, FunctionTool, Usage

CallKind = Literal["client", "server", "invalid"]
CallState = Literal["pending", "running", "done"]


@dataclass(slots=True)
class Call:
    """One tool call of a model turn.

    `client` calls go to the client (`requires_action`); `server` calls are run by a
    server-side tool; `invalid` calls (an unknown function, arguments that are not JSON) go
    back to the model with `output` saying what was wrong."""

    id: str
    position: int
    name: str
    arguments: str
    kind: CallKind = "client"
    state: CallState = "pending"
    output: str | None = None
    # The call's details in OpenAI's run-step shape for its type, once it is done (a
    # server-side tool's own shape; a function's otherwise).
    details: dict[str, Any] | None = None

    def function_details(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments, "output": self.output},
        }

    def dump(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "position": self.position,
            "name": self.name,
            "arguments": self.arguments,
            "kind": self.kind,
            "state": self.state,
            "output": self.output,
            "details": self.details,
        }

    @classmethod
    def load(cls, value: dict[str, Any]) -> Call:
        return cls(**value)


@dataclass(slots=True)
class Prompt:
    request: ChatRequest
    estimated_tokens: int
    # The prompt could not be fitted inside the run's `max_prompt_tokens`.
    over_budget: bool


@dataclass(slots=True)
class TurnEnd:
    """How a model turn ended, for the recorder to write down."""

    text: str
    calls: list[Call]
    usage: Usage
    # The model hit the run's completion budget: its text is incomplete, its calls not run.
    cut_short: bool
    # The turn's tool calls stay open: server-side calls are to run, or client calls wait.
    calls_open: bool


# Fenced insert of rows that belong to the run (only the lease holder writes).
Insert = Callable[..., Coroutine[Any, Any, None]]


class Recorder(Protocol):
    """One execution's recorder. The engine creates one per execution of a run."""

    # Whether a turn whose calls are all the client's ends the run (Responses: the client
    # answers in its next request) rather than waiting for the client (Assistants:
    # `requires_action`, then submit_tool_outputs).
    client_calls_end_run: bool

    def server_call_limit(self, run: Run) -> int | None:
        """How many built-in tool calls (file_search, code_interpreter) the run may make in
        all (a response's `max_tool_calls`); None for no limit. Calls past it are answered
        without being run."""
        ...

    async def server_calls_made(self, session: AsyncSession, run: Run) -> int:
        """The built-in tool calls the run made in its earlier turns."""
        ...

    async def prompt(
        self,
        session: AsyncSession,
        run: Run,
        *,
        functions: list[FunctionTool],
        context_window: int,
        prompt_tokens_used: int,
        completion_tokens_left: int | None,
    ) -> Prompt:
        """The next turn's request: the conversation so far, this run's earlier rounds
        (answers, every kind of tool call with its output), fitted to the budgets."""
        ...

    async def resumed(self, session: AsyncSession, run: Run) -> None:
        """A new execution takes over a run whose worker died: drop what the dead attempt
        half-wrote (it is redone), but keep the tool calls in `run.open_calls`."""
        ...

    def run_changed(self, run: Run) -> list[RunEvent]:
        """The events that announce the run's new state."""
        ...

    # --- a model turn, as it streams -------------------------------------------------------

    async def text(self, run: Run, delta: str) -> None: ...

    async def tool_call(self, run: Run, call: Call, name: str | None, arguments: str) -> None:
        """A fragment of a tool call; `name` the first time it is known."""
        ...

    async def settle(self) -> None:
        """Wait for the writes the streaming started (a failed one raises)."""
        ...

    async def end_turn(self, session: AsyncSession, run: Run, end: TurnEnd) -> list[RunEvent]:
        """Write the turn's outcome, in the engine's transaction that also moved the run."""
        ...

    def forget_turn(self) -> None:
        """The turn is stored, or what it streamed cannot be (`stopped` then skips it)."""
        ...

    # --- server-side calls ---------------------------------------------------------------

    async def call_progress(self, call: Call, fragment: dict[str, Any]) -> None:
        """Stream a fragment of a server-side call's details as it runs."""
        ...

    async def call_done(self, session: AsyncSession, call: Call) -> list[RunEvent]:
        """A server-side call's output, in the transaction that marks it done."""
        ...

    async def calls_done(self, session: AsyncSession, calls: list[Call]) -> list[RunEvent]:
        """Every call of the turn is answered and the run goes on to its next turn."""
        ...

    # --- the end -------------------------------------------------------------------------

    async def stopped(
        self, session: AsyncSession, status: RunStatus, last_error: dict[str, Any] | None
    ) -> list[RunEvent]:
        """The run stopped (cancelled, expired, failed, incomplete): store what the current
        turn streamed and close whatever the run left open."""
        ...


@dataclass(slots=True)
class Execution:
    """What a recorder needs from the engine: the run it records for and the means to write
    and publish as the lease holder."""

    run_id: str
    epoch: int
    insert: Insert
    publish: Callable[[list[RunEvent]], Awaitable[None]]
    publish_one: Callable[[RunEvent], Awaitable[None]]


RecorderFactory = Callable[[Execution], Recorder]
