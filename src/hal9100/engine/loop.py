"""The run engine: takes one run from its current state to its next resting point (completed,
requires_action, failed, ...), going round as often as that needs:

    model turn -> sort its tool calls -> run the server-side ones -> next model turn
                                      -> stop at client calls, at the answer, at a limit

It knows no API. The Assistants API's runs and the Responses API's responses are both
executed here; what clients see is written by the `Recorder` each API supplies. It knows
nothing of where it runs either: the in-process queue of embedded mode and the Redis workers
of production both just call `execute(run_id)`.

All state lives in the database. The engine holds a lease on the run, and every write that
ends a turn or a tool call is fenced by the lease's epoch, so a worker that lost its lease
writes nothing. A turn's tool calls are stored on the run (`open_calls`) before any of them
runs, and a call that may not be repeated is marked running before it is made: a worker
taking over a dead one's run makes each remaining call once and never repeats such a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.config import Settings
from hal9100.core.clock import now
from hal9100.core.text import storable
from hal9100.db.engine import SessionMaker
from hal9100.db.models import Run, RunStatus
from hal9100.db.rows import insert_rows
from hal9100.engine import calls as calls_
from hal9100.engine.lease import Lease
from hal9100.engine.recorder import Call, Execution, Recorder, RecorderFactory, TurnEnd
from hal9100.engine.state import RUNNABLE, LeaseLost, terminal_values, transition
from hal9100.engine.turn import Turn
from hal9100.events.base import EventBus, RunEvent
from hal9100.llm.base import (
    ChatRequest,
    LLMBackend,
    LLMError,
    Usage,
    estimate_tokens,
)
from hal9100.llm.router import ModelRouter
from hal9100.storage.base import ObjectStorage
from hal9100.tools.base import ServerTool, ToolContext, ToolOutput, ToolUnavailable
from hal9100.tools.registry import Toolset, build_toolset

if TYPE_CHECKING:
    from hal9100.sandbox.sessions import Sessions
    from hal9100.vector_stores.search import VectorSearch

log = logging.getLogger(__name__)

# Whether this execution still owns the run, asked before it adds the run's rows; built once
# (building and compiling it per call cost more than running it).
_OWNED = select(Run.epoch).where(
    Run.id == bindparam("run_id"),
    Run.epoch == bindparam("epoch"),
    Run.status.in_([s.value for s in RUNNABLE]),
)

# Executions of one run that may end in an unexpected error in a row (a bug, a storage
# outage) before the run fails instead of being dispatched, and its model called, again.
MAX_FAILED_EXECUTIONS = 3
# Server-side calls of one run made at once (a model may ask for a hundred in one turn).
MAX_PARALLEL_CALLS = 8


# A task asked to stop that still runs after this long is asked again.
RECANCEL_SECONDS = 0.5


async def _stopped(*tasks: asyncio.Future[Any]) -> None:
    """Cancel `tasks` and wait until every one has ended. A library that swallows a cancel
    (redis-py does, mid-command) would let a model stream that should stop run on to its
    end: whatever still runs is cancelled again. (Not at once: a task in its cleanup, such
    as closing the model's HTTP stream, is given time to finish it.)"""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_SECONDS)
    await asyncio.gather(*tasks, return_exceptions=True)


def _outage(exc: BaseException) -> bool:
    """Whether `exc` is a lost or refused connection (a database failover, a network cut)
    rather than something the run itself brings about each time."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    return isinstance(exc, ConnectionError | TimeoutError)


class Stop(Exception):
    """The run must stop (cancel requested, or past expires_at)."""

    def __init__(self, status: RunStatus) -> None:
        super().__init__(status)
        self.status = status


class _Failed(Exception):
    """The run fails for a reason of its own (not the model server's)."""

    def __init__(self, last_error: dict[str, Any], usage: dict[str, int] | None = None) -> None:
        super().__init__(last_error["message"])
        self.last_error = last_error
        # The run's usage with the turn that failed it, when a turn did.
        self.usage = usage


class Engine:
    def __init__(
        self,
        *,
        sessions: SessionMaker,
        bus: EventBus,
        router: ModelRouter,
        storage: ObjectStorage,
        settings: Settings,
        worker_id: str,
        recorder: RecorderFactory,
        vector_search: VectorSearch | None = None,
        sandbox: Sessions | None = None,
    ) -> None:
        self.sessions = sessions
        self.bus = bus
        self.router = router
        self.storage = storage
        self.settings = settings
        self.worker_id = worker_id
        self.recorder = recorder
        self.vector_search = vector_search
        self.sandbox = sandbox
        self.lease = Lease(sessions, worker_id, settings.lease_seconds)

    async def execute(self, run_id: str) -> None:
        claimed = await self.lease.claim(run_id)
        if claimed is None:
            return
        run, started = claimed
        epoch = run.epoch
        stop: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        lease = asyncio.create_task(self.lease.keep(run_id, epoch, stop))
        cancel_watch = asyncio.create_task(self._watch_cancel(run_id, stop))
        job = _Job(self, run_id, epoch, stop)
        try:
            await job.drive(run, started)
        except LeaseLost:
            log.warning("run %s: lease lost, leaving it to its new owner", run_id)
        except Exception as exc:
            log.exception("run %s: execution failed", run_id)
            await job.crashed(exc)
        finally:
            await job.settle()
            await _stopped(lease, cancel_watch)
            if not stop.done():
                stop.cancel()
            # A write that ended the run's work (finished, or waiting for tool outputs) let
            # go of the lease with it; anything else lets go here.
            if not job.released:
                await self.lease.release(run_id, epoch)

    async def _watch_cancel(self, run_id: str, stop: asyncio.Future[str]) -> None:
        await self.bus.wait_cancel(run_id)
        if not stop.done():
            stop.set_result(RunStatus.CANCELLED)


class _Job:
    """One execution of one run."""

    def __init__(self, engine: Engine, run_id: str, epoch: int, stop: asyncio.Future[str]):
        self.x = engine
        self.settings = engine.settings
        self.run_id = run_id
        self.epoch = epoch
        self.stop = stop
        self.rec: Recorder = engine.recorder(
            Execution(run_id, epoch, self.insert, self.publish, self.publish_one)
        )
        self._tools: Toolset | None = None
        # A model turn is streaming: if the run stops now, what it streamed is stored.
        self.streaming = False
        # The lease was given up in the write that ended the run's work.
        self.released = False
        # Turns of this execution whose server-side calls the server ran.
        self.server_rounds = 0
        self.parallel_calls = asyncio.Semaphore(MAX_PARALLEL_CALLS)

    async def publish(self, events: list[RunEvent]) -> None:
        for item in events:
            await self.x.bus.publish(self.run_id, item)

    async def publish_one(self, item: RunEvent) -> None:
        await self.x.bus.publish(self.run_id, item)

    async def insert(self, *rows: Any, after: float = 0.0) -> None:
        """Add rows that belong to the run, as its lease holder and while it runs (a run the
        API or the sweeper ended has had its work closed)."""
        if after:
            await asyncio.sleep(after)
        async with self.x.sessions() as session:
            owner = await session.scalar(_OWNED, {"run_id": self.run_id, "epoch": self.epoch})
            if owner is None:
                raise LeaseLost
            await insert_rows(session, rows)
            await session.commit()

    async def tools(self, run: Run) -> Toolset:
        """The run's tools, built once per execution."""
        if self._tools is None:
            try:
                self._tools = await build_toolset(list(run.tools or []), self.settings)
            except ValueError as exc:
                raise _Failed(
                    {"code": "server_error", "message": f"The run's tools cannot be used: {exc}"}
                ) from exc
        return self._tools

    # --- the loop ------------------------------------------------------------------------

    async def drive(self, claimed: Run, started: bool) -> None:
        run = await self._start(claimed, started)
        turns = 0
        while run is not None:
            try:
                if run.open_calls:
                    run = await self._run_calls(run)
                    continue
                if turns >= self.settings.max_turns:
                    raise _Failed(
                        {
                            "code": "server_error",
                            "message": f"The run made {turns} model calls in a row without "
                            "finishing or needing the client's tool outputs (the limit is "
                            "HAL9100_MAX_TURNS).",
                        }
                    )
                turns += 1
                run = await self._turn(run)
            except Stop as stop:
                await self._finish(stop.status)
                return
            except LLMError as exc:
                await self._fail(exc)
                return
            except _Failed as failed:
                log.warning("run %s failed: %s", self.run_id, failed.last_error["message"])
                extra = {"usage": failed.usage} if failed.usage is not None else {}
                await self._finish(RunStatus.FAILED, last_error=failed.last_error, extra=extra)
                return

    async def _start(self, run: Run, started: bool) -> Run | None:
        if started:
            # Claimed straight from the queue: nothing half-done can exist, and the run is
            # already in progress.
            await self.publish(self.rec.run_changed(run))
            if run.expires_at is not None and now() >= run.expires_at:
                await self._finish(RunStatus.EXPIRED)
                return None
            return run
        if run.status == RunStatus.CANCELLING:
            await self._finish(RunStatus.CANCELLED)
            return None
        if run.expires_at is not None and now() >= run.expires_at:
            await self._finish(RunStatus.EXPIRED)
            return None
        async with self.x.sessions() as session:
            # Hold the run's row first (on PostgreSQL a row lock, which a newer claim waits
            # for): a worker that stalled past its lease must not delete its successor's work.
            held = await session.execute(
                update(Run)
                .where(Run.id == self.run_id, Run.epoch == self.epoch)
                .values(epoch=Run.epoch)
            )
            if not getattr(held, "rowcount", 0):
                await session.rollback()
                raise LeaseLost
            # A worker that died mid-turn left its half-written answer: drop it, the turn is
            # redone from the last completed step, so no answer is ever stored twice.
            await self.rec.resumed(session, run)
            await session.commit()
        return run

    # --- one model turn ------------------------------------------------------------------

    async def _turn(self, run: Run) -> Run | None:
        """One model call; returns the run when it goes on, None when it came to rest."""
        tools = await self.tools(run)
        resolved = self.x.router.resolve(run.model)
        used = run.usage or {"prompt_tokens": 0, "completion_tokens": 0}
        completion_left = None
        if run.max_completion_tokens is not None:
            completion_left = run.max_completion_tokens - used["completion_tokens"]
            if completion_left <= 0:
                await self._incomplete("max_completion_tokens")
                return None
        async with self.x.sessions() as session:
            prompt = await self.rec.prompt(
                session,
                run,
                functions=tools.functions,
                context_window=resolved.context_window,
                prompt_tokens_used=used["prompt_tokens"],
                completion_tokens_left=completion_left,
            )
        if prompt.over_budget:
            await self._incomplete("max_prompt_tokens")
            return None
        if self.server_rounds and prompt.request.tool_choice not in (None, "auto", "none"):
            # A forced tool was called and the server ran it: forcing it again would loop
            # until HAL9100_MAX_TURNS. As the Agents SDK's reset_tool_choice does, the model
            # now chooses.
            prompt.request.tool_choice = "auto"

        turn = Turn()
        self.streaming = True
        await self._stream(run, resolved.backend, prompt.request, turn)
        if turn.usage is None:
            # Some servers report no usage when streaming; estimate rather than leave a run
            # that spent tokens with none recorded.
            completion_text = "".join(turn.text) + "".join(c.name + c.arguments for c in turn.calls)
            turn.usage = Usage(prompt.estimated_tokens, estimate_tokens(completion_text))
        return await self._end_turn(run, turn, completion_left)

    async def _stream(
        self, run: Run, backend: LLMBackend, request: ChatRequest, turn: Turn
    ) -> None:
        """Consume the LLM stream into `turn`, racing it against cancel, expiry and lease
        loss; retry transient failures that happen before anything was shown to clients."""
        attempt = 0
        while True:
            consume = asyncio.create_task(turn.read(backend, request, run, self.rec, self.run_id))
            # Cancelling the task closes the HTTP stream: the LLM stops generating at once.
            await self._race(consume, run)
            try:
                consume.result()
                return
            except LLMError as exc:
                if not exc.retryable or turn.emitted or attempt >= self.settings.llm_max_retries:
                    raise
                delay = self.settings.llm_retry_base_delay * (2**attempt)
                attempt += 1
                log.info("run %s: %s, retry %d in %.2fs", self.run_id, exc.message, attempt, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))

    async def _race(self, work: asyncio.Future[Any], run: Run) -> None:
        """Wait for `work`, or cancel it and raise when the run must stop first (cancelled,
        past its expiry, lease lost)."""
        waiters: list[asyncio.Future[Any]] = [work, self.stop]
        deadline: asyncio.Task[None] | None = None
        if run.expires_at is not None:
            deadline = asyncio.create_task(asyncio.sleep(max(0.0, run.expires_at - time.time())))
            waiters.append(deadline)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if deadline is not None:
                deadline.cancel()
        if work.done():
            return
        await _stopped(work)
        if self.stop.done() and self.stop.result() == "lease_lost":
            raise LeaseLost
        raise Stop(RunStatus.CANCELLED if self.stop.done() else RunStatus.EXPIRED)

    # --- ending a turn -------------------------------------------------------------------

    def _sort_calls(self, tools: Toolset, calls: list[Call]) -> int:
        """Decide who answers each call; returns how many the model must redo."""
        offered = tools.names
        correct = self.settings.tool_call_corrections > 0
        invalid = 0
        for call in calls:
            server = call.name in tools.server
            # A server-side call runs only with JSON arguments, whatever the setting.
            arguments, error = calls_.check(call, offered, correct=correct or server)
            if error is not None:
                call.kind, call.state, call.output = "invalid", "done", error
                call.details = call.function_details()
                invalid += 1
            else:
                assert arguments is not None
                call.arguments = arguments
                call.kind = "server" if server else "client"
        return invalid

    async def _end_turn(self, run: Run, turn: Turn, completion_left: int | None) -> Run | None:
        assert turn.usage is not None
        await self.rec.settle()
        used = run.usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        usage = {
            "prompt_tokens": used["prompt_tokens"] + turn.usage.prompt_tokens,
            "completion_tokens": used["completion_tokens"] + turn.usage.completion_tokens,
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        cut_short = turn.finish == "length" and completion_left is not None
        calls = turn.calls
        # A turn that ended as it should clears the count of failed executions.
        values: dict[str, Any] = {"usage": usage, "failed_executions": 0}
        open_calls = False
        if calls and not cut_short:
            invalid = self._sort_calls(await self.tools(run), calls)
            # With corrections off only a server-side call can be sent back (it cannot run
            # without JSON arguments); HAL9100_MAX_TURNS bounds that.
            if invalid and self.settings.tool_call_corrections > 0:
                corrections = run.corrections + invalid
                limit = self.settings.tool_call_corrections
                if corrections > limit:
                    bad = next(c for c in calls if c.kind == "invalid")
                    raise _Failed(
                        {
                            "code": "server_error",
                            "message": f"The model made {corrections} tool calls that could "
                            f"not be used (more than HAL9100_TOOL_CALL_CORRECTIONS={limit}); "
                            f"the last: {bad.output}",
                        },
                        usage,
                    )
                values["corrections"] = corrections
            if any(c.kind != "client" for c in calls):
                # Server-side calls to run (or calls to redo): the run goes on, and its open
                # calls are on record before any of them is made.
                values["open_calls"] = [c.dump() for c in calls]
                open_calls = True
            elif self.rec.client_calls_end_run:
                values.update(terminal_values(RunStatus.COMPLETED))
            else:
                values.update(self._requires_action(calls))
                open_calls = True
        elif cut_short:
            values.update(
                terminal_values(
                    RunStatus.INCOMPLETE, incomplete_details={"reason": "max_completion_tokens"}
                )
            )
        else:
            values.update(terminal_values(RunStatus.COMPLETED))
        async with self.x.sessions() as session:
            # Fenced: cancelled (or expired) between the last token and now, it stops as asked.
            updated = await self._fence(session, values)
            end = TurnEnd(
                text="".join(turn.text),
                calls=calls,
                usage=turn.usage,
                cut_short=cut_short,
                calls_open=open_calls,
            )
            events = await self.rec.end_turn(session, updated, end)
            await session.commit()
        self.rec.forget_turn()
        self.streaming = False
        self.released = updated.lease_owner is None
        if updated.status != RunStatus.IN_PROGRESS:
            events.extend(self.rec.run_changed(updated))
        await self.publish(events)
        return updated if updated.status == RunStatus.IN_PROGRESS else None

    def _requires_action(self, calls: list[Call]) -> dict[str, Any]:
        client = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in calls
            if c.kind == "client"
        ]
        return {
            "status": RunStatus.REQUIRES_ACTION,
            "required_action": {
                "type": "submit_tool_outputs",
                "submit_tool_outputs": {"tool_calls": client},
            },
            "open_calls": None,
            # Nothing to do until the client answers: let go of the run now.
            "lease_owner": None,
            "lease_expires_at": None,
        }

    async def _why_not_in_progress(self) -> Exception:
        async with self.x.sessions() as session:
            row = (
                await session.execute(select(Run.status, Run.epoch).where(Run.id == self.run_id))
            ).first()
        if row is None or row.epoch != self.epoch:
            return LeaseLost()
        if row.status == RunStatus.CANCELLING:
            return Stop(RunStatus.CANCELLED)
        return LeaseLost()

    # --- server-side calls ---------------------------------------------------------------

    async def _run_calls(self, run: Run) -> Run | None:
        """Run the turn's server-side calls that have no output yet, concurrently, each
        output stored as it arrives; then go on to the next turn, or stop for the client's
        calls of the same turn."""
        assert run.open_calls is not None
        calls = [Call.load(c) for c in run.open_calls]
        tools = await self.tools(run)
        todo: list[tuple[Call, ServerTool]] = []
        risky = False
        allowed = await self._calls_allowed(run)
        if allowed is not None:
            # Calls of this turn made before a takeover count too.
            allowed -= sum(
                1
                for c in calls
                if c.kind == "server"
                and c.state == "done"
                and (tool := tools.server.get(c.name)) is not None
                and tool.type != "action"
                and (c.details or {}).get("type") != "function"
            )
        for call in calls:
            if call.kind != "server" or call.state == "done":
                continue
            tool = tools.server.get(call.name)
            if allowed is not None and tool is not None and tool.type != "action":
                if allowed <= 0:
                    output = (
                        f"Error: not run: this response may make at most {self.rec.server_call_limit(run)} "
                        "built-in tool calls (max_tool_calls). Answer with what you have."
                    )
                    await self._call_done(call, _error(call, output), calls)
                    continue
                allowed -= 1
            if tool is None:
                # The run's tools no longer offer it (the server was upgraded between the
                # turn and now): the model hears so, and goes on.
                output = f"Error: the function {call.name} is no longer available. Nothing was run."
                await self._call_done(call, _error(call, output), calls)
                continue
            arguments = _arguments(call)
            if not tool.repeatable(call.name, arguments):
                if call.state == "running":
                    # Its worker died while it was being made: it may have taken effect.
                    outcome = tool.unknown_outcome(call.name, arguments)
                    await self._call_done(call, outcome, calls)
                    continue
                call.state = "running"
                risky = True
            todo.append((call, tool))
        if risky:
            # On record before any of them is made: a takeover never makes them again.
            await self._store_calls(calls)
        tasks = {asyncio.create_task(self._call(run, call, tool)): call for call, tool in todo}
        try:
            while tasks:
                ready = asyncio.ensure_future(
                    asyncio.wait(list(tasks), return_when=asyncio.FIRST_COMPLETED)
                )
                await self._race(ready, run)
                done, _ = ready.result()
                for task in done:
                    call = tasks.pop(task)
                    await self._call_done(call, task.result(), calls)
        finally:
            await _stopped(*tasks)
        if any(c.kind == "server" for c in calls):
            self.server_rounds += 1
        return await self._calls_answered(calls)

    async def _calls_allowed(self, run: Run) -> int | None:
        """How many more built-in tool calls the run may make, if its API limits them."""
        limit = self.rec.server_call_limit(run)
        if limit is None:
            return None
        async with self.x.sessions() as session:
            made = await self.rec.server_calls_made(session, run)
        return limit - made

    async def _call(self, run: Run, call: Call, tool: ServerTool) -> ToolOutput:
        async with self.parallel_calls:
            return await self._call_now(run, call, tool)

    async def _call_now(self, run: Run, call: Call, tool: ServerTool) -> ToolOutput:
        async def progress(fragment: dict[str, Any]) -> None:
            await self.rec.call_progress(call, fragment)

        ctx = ToolContext(
            run=run,
            sessions=self.x.sessions,
            storage=self.x.storage,
            settings=self.settings,
            deadline=float(run.expires_at) if run.expires_at is not None else None,
            progress=progress,
            call_id=call.id,
            vector_search=self.x.vector_search,
            sandbox=self.x.sandbox,
        )
        try:
            return await tool.call(call.name, _arguments(call), ctx)
        except (asyncio.CancelledError, LeaseLost):
            raise
        except ToolUnavailable as exc:
            raise _Failed({"code": "server_error", "message": str(exc)}) from exc
        except Exception as exc:
            log.exception("run %s: tool call %s (%s) failed", self.run_id, call.id, call.name)
            return _error(call, f"Error: the call failed inside the server ({type(exc).__name__}).")

    async def _call_done(self, call: Call, result: ToolOutput, calls: list[Call]) -> None:
        # What a tool read from elsewhere (an API's body) may hold NUL or lone surrogates,
        # which no database stores.
        details = _storable(result.details)
        if details.get("type") == "function":
            # The call as the turn stored it (the model's arguments, repaired if they were),
            # not as the tool re-serialized them.
            function = {**details["function"], "name": call.name, "arguments": call.arguments}
            details = {**details, "function": function}
        call.state, call.output, call.details = "done", storable(result.output), details
        async with self.x.sessions() as session:
            await self._fence(session, {"open_calls": [c.dump() for c in calls]})
            events = await self.rec.call_done(session, call)
            await session.commit()
        await self.publish(events)

    async def _store_calls(self, calls: list[Call]) -> None:
        async with self.x.sessions() as session:
            await self._fence(session, {"open_calls": [c.dump() for c in calls]})
            await session.commit()

    async def _fence(self, session: AsyncSession, values: dict[str, Any]) -> Run:
        updated = await transition(
            session, self.run_id, (RunStatus.IN_PROGRESS,), values, epoch=self.epoch
        )
        if updated is None:
            await session.rollback()
            raise await self._why_not_in_progress()
        return updated

    async def _calls_answered(self, calls: list[Call]) -> Run | None:
        client = [c for c in calls if c.kind == "client"]
        async with self.x.sessions() as session:
            if client and self.rec.client_calls_end_run:
                updated = await self._fence(session, terminal_values(RunStatus.COMPLETED))
                events = await self.rec.calls_done(session, calls)
                events.extend(self.rec.run_changed(updated))
            elif client:
                updated = await self._fence(session, self._requires_action(calls))
                events = self.rec.run_changed(updated)
            else:
                updated = await self._fence(session, {"open_calls": None})
                events = await self.rec.calls_done(session, calls)
            await session.commit()
        self.released = updated.lease_owner is None
        await self.publish(events)
        return None if client else updated

    # --- stopping ------------------------------------------------------------------------

    async def _finish(
        self,
        status: RunStatus,
        *,
        last_error: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """End the run as cancelled, expired or failed, closing whatever it left open."""
        extra = dict(extra or {})
        if last_error is not None:
            # Error messages quote what servers sent.
            last_error = {**last_error, "message": storable(last_error["message"])}
            extra["last_error"] = last_error
        await self.settle()
        try:
            await self._close(status, RUNNABLE, extra, last_error)
        except Exception:
            if not self.streaming:
                raise
            log.exception("run %s: storing its partial answer failed", self.run_id)
            # What the turn streamed may be what cannot be written: end the run without it.
            self.streaming = False
            self.rec.forget_turn()
            await self._close(status, RUNNABLE, extra, last_error)

    async def _incomplete(self, reason: str) -> None:
        await self.settle()
        await self._close(
            RunStatus.INCOMPLETE,
            (RunStatus.IN_PROGRESS,),
            {"incomplete_details": {"reason": reason}},
            None,
        )

    async def _close(
        self,
        status: RunStatus,
        from_statuses: tuple[RunStatus, ...],
        extra: dict[str, Any],
        last_error: dict[str, Any] | None,
    ) -> None:
        async with self.x.sessions() as session:
            updated = await transition(
                session,
                self.run_id,
                from_statuses,
                terminal_values(status, **extra),
                epoch=self.epoch,
            )
            if updated is None:
                await session.rollback()
                return
            events = await self.rec.stopped(session, status, last_error)
            await session.commit()
        self.streaming = False
        self.released = True
        await self.publish([*events, *self.rec.run_changed(updated)])

    async def settle(self) -> None:
        """Let the turn's pending writes land before the run is closed around them (a failed
        one, e.g. fenced out, has nothing to close)."""
        with contextlib.suppress(Exception):
            await self.rec.settle()

    async def _fail(self, exc: LLMError) -> None:
        code = {"rate_limit": "rate_limit_exceeded", "invalid_request": "invalid_prompt"}.get(
            exc.kind, "server_error"
        )
        if exc.kind == "config":
            message = f"The server is misconfigured: {exc.message}."
        else:
            message = f"The model backend failed: {exc.message}"
        log.warning("run %s failed: %s", self.run_id, exc.message)
        await self._finish(RunStatus.FAILED, last_error={"code": code, "message": message})

    async def crashed(self, exc: Exception) -> None:
        """Count an execution that ended in an unexpected error; at the bound, fail the run
        rather than leave it to be dispatched again. (A crash runs no code: never counted.)"""
        if _outage(exc):
            # The database or the network is down, which is no fault of the run: it is
            # dispatched again once they are back, however long that takes.
            return
        async with self.x.sessions() as session:
            failures = await session.scalar(
                update(Run)
                .where(Run.id == self.run_id, Run.epoch == self.epoch, Run.status.in_(RUNNABLE))
                .values(failed_executions=Run.failed_executions + 1)
                .returning(Run.failed_executions)
            )
            await session.commit()
        if failures is None or failures < MAX_FAILED_EXECUTIONS:
            return
        detail = f"{type(exc).__name__}: {exc}"
        last_error = {
            "code": "server_error",
            "message": f"The server failed to execute the run {failures} times in a row; "
            f"the last time: {detail[:300]}",
        }
        await self._finish(RunStatus.FAILED, last_error=last_error)


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {key: _storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable(item) for item in value]
    return value


def _error(call: Call, output: str) -> ToolOutput:
    function = {"name": call.name, "arguments": call.arguments, "output": output}
    return ToolOutput(output, {"type": "function", "function": function})


def _arguments(call: Call) -> dict[str, Any]:
    value = json.loads(call.arguments)
    return value if isinstance(value, dict) else {}
