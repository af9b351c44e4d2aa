"""The run executor: takes one run from its current state to the next resting point
(completed, requires_action, failed, ...), calling the LLM as often as that needs.

It knows nothing of where it runs. The in-process queue of embedded mode and the Redis
workers of production mode both just call `execute(run_id)`. All state lives in the database:
the executor claims a lease on the run, and every write that ends a turn is fenced by the
lease's epoch, so a worker that lost its lease (it stalled, another took over) writes nothing.

Events are published as things happen; deltas are never stored, only the finished text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from hal9100.config import Settings
from hal9100.core import ids
from hal9100.core.clock import now
from hal9100.core.text import StorableStream, storable
from hal9100.db.engine import SessionMaker
from hal9100.db.models import File, Message, Run, RunStep
from hal9100.events.base import EventBus, RunEvent
from hal9100.llm.base import (
    ChatRequest,
    Finish,
    LLMBackend,
    LLMError,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from hal9100.llm.router import ModelRouter
from hal9100.messages.repository import MessageRepository
from hal9100.messages.service import to_object as message_object
from hal9100.runs.lifecycle import (
    close_open_work,
    event,
    run_event,
    step_object,
    terminal_values,
    transition,
)
from hal9100.runs.prompt import (
    build_prompt,
    data_url,
    estimate_tokens,
    image_file_ids,
)
from hal9100.storage.base import ObjectStorage

log = logging.getLogger(__name__)

# Statuses in which a run has work for an executor.
RUNNABLE = ("queued", "in_progress", "cancelling")
# A safety net against a model that never stops calling server-side tools.
MAX_TURNS_PER_EXECUTION = 32
MAX_IMAGE_BYTES = 20 * 1024 * 1024
# The first token's events leave before its message row is written: an embedded SQLite write
# runs on the event loop, and would otherwise go first and hold up the stream.
FIRST_WRITE_DELAY = 0.002
# Executions of one run that may end in an unexpected error in a row (a bug, a storage
# outage) before the run fails instead of being dispatched, and its model called, again.
MAX_FAILED_EXECUTIONS = 3


def _outage(exc: BaseException) -> bool:
    """Whether `exc` is a lost or refused connection (a database failover, a network cut)
    rather than something the run itself brings about each time."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    return isinstance(exc, ConnectionError | TimeoutError)


class LeaseLost(Exception):
    """Another worker owns the run now; stop without writing."""


class Stop(Exception):
    """The run must stop (cancel requested, or past expires_at)."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


@dataclass
class _Call:
    id: str
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class _Turn:
    """What one LLM call produced so far."""

    message: Message | None = None
    message_step: RunStep | None = None
    tool_step: RunStep | None = None
    text: list[str] = field(default_factory=list)
    calls: list[_Call] = field(default_factory=list)
    positions: dict[int, int] = field(default_factory=dict)
    usage: Usage | None = None
    finish: str | None = None
    # When the message was announced completed because the model went on to tool calls
    # (it is stored so at the end of the turn, or when the run stops).
    message_done_at: int | None = None
    # The message and its step are written while their first events are already on their
    # way (the first token does not wait for the database); later writes wait for this.
    persisting: asyncio.Task[None] | None = None

    async def persisted(self) -> None:
        task, self.persisting = self.persisting, None
        if task is not None:
            await task

    @property
    def emitted(self) -> bool:
        return self.message is not None or self.tool_step is not None


class RunExecutor:
    def __init__(
        self,
        *,
        sessions: SessionMaker,
        bus: EventBus,
        router: ModelRouter,
        storage: ObjectStorage,
        settings: Settings,
        worker_id: str,
    ) -> None:
        self.sessions = sessions
        self.bus = bus
        self.router = router
        self.storage = storage
        self.settings = settings
        self.worker_id = worker_id
        self.lease_seconds = settings.lease_seconds

    # --- lease -------------------------------------------------------------------------

    async def _claim(self, run_id: str) -> tuple[Run, bool] | None:
        """Take the lease on a run that has work. Returns the run, and whether this claim
        also started it (queued -> in_progress)."""
        stamp = time.time()
        free = or_(Run.lease_owner.is_(None), Run.lease_expires_at < stamp)
        lease = {
            "lease_owner": self.worker_id,
            "lease_expires_at": stamp + self.lease_seconds,
            "epoch": Run.epoch + 1,
        }
        async with self.sessions() as session:
            # The common case in one statement: a queued run (new, or resumed with tool
            # outputs) is claimed and started together.
            run = await session.scalar(
                update(Run)
                .where(Run.id == run_id, Run.status == "queued", free)
                .values(
                    **lease,
                    status="in_progress",
                    started_at=func.coalesce(Run.started_at, now()),
                )
                .returning(Run)
            )
            started = run is not None
            if run is None:
                # Taking over a run in progress or being cancelled (its worker died).
                run = await session.scalar(
                    update(Run)
                    .where(Run.id == run_id, Run.status.in_(RUNNABLE), free)
                    .values(**lease)
                    .returning(Run)
                )
            if run is None:
                await session.rollback()
                return None
            await session.commit()
            return run, started

    async def _keep_lease(self, run_id: str, epoch: int, stop: asyncio.Future[str]) -> None:
        """Renew the lease until cancelled; resolve `stop` when the lease is lost or the
        database says the run is being cancelled (a cancel signal that was missed)."""
        while not stop.done():
            await asyncio.sleep(self.lease_seconds / 3)
            async with self.sessions() as session:
                result = await session.execute(
                    update(Run)
                    .where(Run.id == run_id, Run.epoch == epoch, Run.lease_owner == self.worker_id)
                    .values(lease_expires_at=time.time() + self.lease_seconds)
                )
                status = await session.scalar(select(Run.status).where(Run.id == run_id))
                await session.commit()
            if not getattr(result, "rowcount", 0):
                if not stop.done():
                    stop.set_result("lease_lost")
            elif status == "cancelling" and not stop.done():
                stop.set_result("cancelled")

    async def _release(self, run_id: str, epoch: int) -> None:
        async with self.sessions() as session:
            await session.execute(
                update(Run)
                .where(Run.id == run_id, Run.epoch == epoch, Run.lease_owner == self.worker_id)
                .values(lease_owner=None, lease_expires_at=None)
            )
            await session.commit()

    # --- entry point ---------------------------------------------------------------------

    async def execute(self, run_id: str) -> None:
        claimed = await self._claim(run_id)
        if claimed is None:
            return
        run, started = claimed
        epoch = run.epoch
        stop: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        lease = asyncio.create_task(self._keep_lease(run_id, epoch, stop))
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
            await job._settle()
            lease.cancel()
            cancel_watch.cancel()
            await asyncio.gather(lease, cancel_watch, return_exceptions=True)
            if not stop.done():
                stop.cancel()
            # A turn that ended the run's work (finished, or waiting for tool outputs) let go
            # of the lease in the same write; anything else lets go here.
            if not job.released:
                await self._release(run_id, epoch)

    async def _watch_cancel(self, run_id: str, stop: asyncio.Future[str]) -> None:
        await self.bus.wait_cancel(run_id)
        if not stop.done():
            stop.set_result("cancelled")


class _Job:
    """One execution of one run."""

    def __init__(self, executor: RunExecutor, run_id: str, epoch: int, stop: asyncio.Future[str]):
        self.x = executor
        self.run_id = run_id
        self.epoch = epoch
        self.stop = stop
        # The turn being streamed, so a run stopped mid-turn stores what its clients saw.
        self.turn: _Turn | None = None
        # The lease was given up in the write that ended the run's work.
        self.released = False

    async def publish(self, events: list[RunEvent]) -> None:
        for item in events:
            await self.x.bus.publish(self.run_id, item)

    # --- the loop ------------------------------------------------------------------------

    async def drive(self, claimed: Run, started: bool) -> None:
        run = await self._start(claimed, started)
        if run is None:
            return
        for _ in range(MAX_TURNS_PER_EXECUTION):
            try:
                outcome = await self._turn(run)
                run = None
            except Stop as stop:
                await self._finish(stop.status)
                return
            except LLMError as exc:
                await self._fail(exc)
                return
            if outcome != "continue":
                return
        await self._finish(
            "failed",
            last_error={
                "code": "server_error",
                "message": f"The run made more than {MAX_TURNS_PER_EXECUTION} model calls "
                "without finishing.",
            },
        )

    async def _start(self, run: Run, started: bool) -> Run | None:
        if started:
            # Claimed straight from the queue: nothing half-done can exist, and the run is
            # already in progress.
            await self.publish([run_event(run)])
            if run.expires_at is not None and now() >= run.expires_at:
                await self._finish("expired")
                return None
            return run
        if run.status == "cancelling":
            await self._finish("cancelled")
            return None
        if run.expires_at is not None and now() >= run.expires_at:
            await self._finish("expired")
            return None
        async with self.x.sessions() as session:
            # A worker that died mid-turn left its half-written answer: drop it, the turn is
            # redone from the last completed step, so no answer is ever stored twice.
            await self._discard_unfinished(session)
            await session.commit()
        return run

    async def _discard_unfinished(self, session: Any) -> None:
        unfinished = (
            await session.scalars(
                select(RunStep).where(
                    RunStep.run_id == self.run_id, RunStep.status == "in_progress"
                )
            )
        ).all()
        for step in unfinished:
            if step.type == "message_creation":
                await session.execute(
                    delete(Message).where(
                        Message.id == step.step_details["message_creation"]["message_id"]
                    )
                )
            await session.delete(step)

    # --- one model call ----------------------------------------------------------------

    async def _turn(self, current: Run | None) -> str:
        """One model call. `current` is the run as the claim returned it (first turn), else
        it is read again: the previous turn changed it."""
        async with self.x.sessions() as session:
            run = current or await session.scalar(select(Run).where(Run.id == self.run_id))
            if run is None or run.epoch != self.epoch:
                raise LeaseLost
            messages = await MessageRepository(session).all_in_thread(run.thread_id)
            steps = list(
                (
                    await session.scalars(
                        select(RunStep)
                        .where(RunStep.run_id == self.run_id)
                        .order_by(RunStep.created_at, RunStep.seq)
                    )
                ).all()
            )
            images = await self._images(session, image_file_ids(messages))

        resolved = self.x.router.resolve(run.model)
        used = run.usage or {"prompt_tokens": 0, "completion_tokens": 0}
        completion_left = None
        if run.max_completion_tokens is not None:
            completion_left = run.max_completion_tokens - used["completion_tokens"]
            if completion_left <= 0:
                await self._incomplete("max_completion_tokens")
                return "done"
        prompt = build_prompt(
            run,
            messages,
            steps,
            context_window=resolved.context_window,
            images=images,
            prompt_tokens_used=used["prompt_tokens"],
            completion_tokens_left=completion_left,
        )
        if prompt.over_budget:
            await self._incomplete("max_prompt_tokens")
            return "done"

        turn = self.turn = _Turn()
        await self._stream(run, resolved.backend, prompt.request, turn)
        if turn.usage is None:
            # Some servers report no usage when streaming; estimate rather than leave a run
            # that spent tokens with none recorded.
            completion_text = "".join(turn.text) + "".join(
                c.name + "".join(c.arguments) for c in turn.calls
            )
            turn.usage = Usage(prompt.estimated_tokens, estimate_tokens(completion_text))
        return await self._end_turn(run, turn, completion_left)

    async def _images(self, session: Any, file_ids: list[str]) -> dict[str, str]:
        if not file_ids:
            return {}
        files = (await session.scalars(select(File).where(File.id.in_(file_ids)))).all()
        out: dict[str, str] = {}
        for file in files:
            if file.bytes > MAX_IMAGE_BYTES:
                continue
            try:
                data = b"".join([chunk async for chunk in self.x.storage.get(file.storage_key)])
            except KeyError:
                continue
            out[file.id] = data_url(file, data)
        return out

    async def _stream(
        self, run: Run, backend: LLMBackend, request: ChatRequest, turn: _Turn
    ) -> None:
        """Consume the LLM stream into `turn`, racing it against cancel, expiry and lease
        loss; retry transient failures that happen before anything was shown to clients."""
        attempt = 0
        while True:
            consume = asyncio.create_task(self._consume(run, backend, request, turn))
            waiters: list[asyncio.Future[Any]] = [consume, self.stop]
            deadline: asyncio.Task[None] | None = None
            if run.expires_at is not None:
                deadline = asyncio.create_task(
                    asyncio.sleep(max(0.0, run.expires_at - time.time()))
                )
                waiters.append(deadline)
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if deadline is not None:
                    deadline.cancel()
            if not consume.done():
                # Closing the task closes the HTTP stream: the LLM stops generating now.
                consume.cancel()
                await asyncio.gather(consume, return_exceptions=True)
                if self.stop.done() and self.stop.result() == "lease_lost":
                    raise LeaseLost
                raise Stop("cancelled" if self.stop.done() else "expired")
            try:
                consume.result()
                return
            except LLMError as exc:
                if not exc.retryable or turn.emitted or attempt >= self.x.settings.llm_max_retries:
                    raise
                delay = self.x.settings.llm_retry_base_delay * (2**attempt)
                attempt += 1
                log.info("run %s: %s, retry %d in %.2fs", self.run_id, exc.message, attempt, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))

    async def _consume(
        self, run: Run, backend: LLMBackend, request: ChatRequest, turn: _Turn
    ) -> None:
        # Every backend's output passes here, where it is made storable: what clients are
        # streamed is what is stored.
        text = StorableStream()
        arguments: dict[int, StorableStream] = {}
        try:
            async for item in backend.stream(request):
                if isinstance(item, TextDelta):
                    value = text.feed(item.text)
                    if value:
                        await self._on_text(run, turn, value)
                elif isinstance(item, ToolCallDelta):
                    # The text ends where the tool calls begin.
                    if tail := text.flush():
                        await self._on_text(run, turn, tail)
                    fragments = arguments.get(item.index)
                    if fragments is None:
                        fragments = arguments[item.index] = StorableStream()
                    item.arguments = fragments.feed(item.arguments)
                    if item.name:
                        item.name = storable(item.name)
                    await self._on_tool_delta(run, turn, item)
                elif isinstance(item, Usage):
                    turn.usage = item
                elif isinstance(item, Finish):
                    turn.finish = item.reason
            if tail := text.flush():
                await self._on_text(run, turn, tail)
            for index, fragments in arguments.items():
                if tail := fragments.flush():
                    await self._on_tool_delta(run, turn, ToolCallDelta(index, arguments=tail))
        except LLMError:
            raise
        except (asyncio.CancelledError, LeaseLost):
            raise
        except Exception as exc:
            log.exception("run %s: backend stream failed", self.run_id)
            raise LLMError("server", f"the model backend failed: {exc}") from exc

    async def _on_text(self, run: Run, turn: _Turn, text: str) -> None:
        if turn.message is None:
            await self._open_message(run, turn)
        assert turn.message is not None
        turn.text.append(text)
        payload = {
            "id": turn.message.id,
            "object": "thread.message.delta",
            "delta": {
                "content": [
                    {"index": 0, "type": "text", "text": {"value": text, "annotations": []}}
                ]
            },
        }
        await self.x.bus.publish(self.run_id, event("thread.message.delta", payload))

    async def _open_message(self, run: Run, turn: _Turn) -> None:
        stamp = now()
        message = Message(
            id=ids.message_id(),
            created_at=stamp,
            thread_id=run.thread_id,
            status="in_progress",
            role="assistant",
            content=[],
            assistant_id=run.assistant_id,
            run_id=run.id,
            attachments=[],
            metadata_={},
        )
        step = RunStep(
            id=ids.step_id(),
            created_at=stamp,
            run_id=run.id,
            thread_id=run.thread_id,
            assistant_id=run.assistant_id,
            type="message_creation",
            status="in_progress",
            step_details={
                "type": "message_creation",
                "message_creation": {"message_id": message.id},
            },
            metadata_={},
        )
        turn.message, turn.message_step = message, step
        step_out = step_object(step)
        message_out = message_object(message)
        await self.publish(
            [
                event("thread.run.step.created", step_out),
                event("thread.run.step.in_progress", step_out),
                event("thread.message.created", message_out),
                event("thread.message.in_progress", message_out),
            ]
        )
        turn.persisting = asyncio.create_task(self._insert(message, step, after=FIRST_WRITE_DELAY))

    async def _on_tool_delta(self, run: Run, turn: _Turn, delta: ToolCallDelta) -> None:
        if turn.tool_step is None:
            await turn.persisted()
            if turn.message is not None and turn.message_done_at is None:
                await self._announce_message_done(turn)
            step = RunStep(
                id=ids.step_id(),
                created_at=now(),
                run_id=run.id,
                thread_id=run.thread_id,
                assistant_id=run.assistant_id,
                type="tool_calls",
                status="in_progress",
                step_details={"type": "tool_calls", "tool_calls": []},
                metadata_={},
            )
            await self._insert(step)
            turn.tool_step = step
            step_out = step_object(step)
            await self.publish(
                [
                    event("thread.run.step.created", step_out),
                    event("thread.run.step.in_progress", step_out),
                ]
            )
        # Open models repeat one id for parallel calls or send none: calls are told apart by
        # their index, and every call gets an id of ours.
        position = turn.positions.get(delta.index)
        fragment: dict[str, Any] = {"type": "function"}
        if position is None:
            position = turn.positions[delta.index] = len(turn.calls)
            turn.calls.append(_Call(id=ids.call_id()))
            fragment["id"] = turn.calls[position].id
        call = turn.calls[position]
        function: dict[str, Any] = {"arguments": delta.arguments, "output": None}
        if delta.name and not call.name:
            call.name = delta.name
            function["name"] = delta.name
        call.arguments.append(delta.arguments)
        fragment["function"] = function
        payload = {
            "id": turn.tool_step.id,
            "object": "thread.run.step.delta",
            "delta": {
                "step_details": {
                    "type": "tool_calls",
                    "tool_calls": [{"index": position, **fragment}],
                }
            },
        }
        await self.x.bus.publish(self.run_id, event("thread.run.step.delta", payload))

    async def _announce_message_done(self, turn: _Turn) -> None:
        """Text came before tool calls: like OpenAI, close the message and its step before
        the tool-call step opens (the SDK's helpers expect one open step at a time). Their
        rows are written at the end of the turn, or by `_keep_partial` if the run stops."""
        assert turn.message is not None and turn.message_step is not None
        stamp = turn.message_done_at = now()
        message, step = turn.message, turn.message_step
        message.content = [
            {"type": "text", "text": {"value": "".join(turn.text), "annotations": []}}
        ]
        message.status = "completed"
        message.completed_at = stamp
        step.status = "completed"
        step.completed_at = stamp
        step.usage = None  # the turn's usage goes to its tool-call step
        await self.publish(
            [
                event("thread.message.completed", message_object(message)),
                event("thread.run.step.completed", step_object(step)),
            ]
        )

    async def _insert(self, *rows: Any, after: float = 0.0) -> None:
        if after:
            await asyncio.sleep(after)
        async with self.x.sessions() as session:
            # Fence: only the lease holder may add to the run, and only while it runs; a run
            # the API or the sweeper ended (cancelled, expired) has had its work closed.
            owner = await session.scalar(
                select(Run.epoch).where(
                    Run.id == self.run_id, Run.epoch == self.epoch, Run.status.in_(RUNNABLE)
                )
            )
            if owner is None:
                raise LeaseLost
            session.add_all(rows)
            await session.commit()

    # --- ending a turn -----------------------------------------------------------------

    async def _end_turn(self, run: Run, turn: _Turn, completion_left: int | None) -> str:
        assert turn.usage is not None
        await turn.persisted()
        stamp = now()
        used = run.usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        usage = {
            "prompt_tokens": used["prompt_tokens"] + turn.usage.prompt_tokens,
            "completion_tokens": used["completion_tokens"] + turn.usage.completion_tokens,
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        turn_usage = {
            "prompt_tokens": turn.usage.prompt_tokens,
            "completion_tokens": turn.usage.completion_tokens,
            "total_tokens": turn.usage.total_tokens,
        }
        cut_short = turn.finish == "length" and completion_left is not None
        events: list[RunEvent] = []
        async with self.x.sessions() as session:
            # A turn that ended as it should clears the count of failed executions.
            values: dict[str, Any] = {"usage": usage, "failed_executions": 0}
            calls: list[dict[str, Any]] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": "".join(c.arguments)},
                }
                for c in turn.calls
            ]
            if calls and not cut_short:
                values["status"] = "requires_action"
                values["required_action"] = {
                    "type": "submit_tool_outputs",
                    "submit_tool_outputs": {"tool_calls": calls},
                }
                # Nothing to do until the client answers: let go of the run now.
                values["lease_owner"] = None
                values["lease_expires_at"] = None
            elif cut_short:
                values.update(
                    terminal_values(
                        "incomplete", incomplete_details={"reason": "max_completion_tokens"}
                    )
                )
            elif not calls:
                values.update(terminal_values("completed"))
            updated = await transition(
                session, self.run_id, ("in_progress",), values, epoch=self.epoch
            )
            if updated is None:
                await session.rollback()
                # Cancelled (or expired) between the last token and now: stop as asked.
                raise await self._why_not_in_progress()
            if turn.message is not None and turn.message_step is not None:
                announced = turn.message_done_at is not None
                # The turn's own objects, written back as plain UPDATEs (no re-read).
                message, step = turn.message, turn.message_step
                message.content = [
                    {"type": "text", "text": {"value": "".join(turn.text), "annotations": []}}
                ]
                if cut_short and not announced:
                    message.status = "incomplete"
                    message.incomplete_at = stamp
                    message.incomplete_details = {"reason": "max_tokens"}
                else:
                    message.status = "completed"
                    message.completed_at = turn.message_done_at or stamp
                step.status = "completed"
                step.completed_at = turn.message_done_at or stamp
                step.usage = turn_usage if turn.tool_step is None else None
                await session.execute(
                    update(Message)
                    .where(Message.id == message.id)
                    .values(
                        content=message.content,
                        status=message.status,
                        completed_at=message.completed_at,
                        incomplete_at=message.incomplete_at,
                        incomplete_details=message.incomplete_details,
                    )
                    .execution_options(synchronize_session=False)
                )
                await session.execute(
                    update(RunStep)
                    .where(RunStep.id == step.id)
                    .values(status=step.status, completed_at=step.completed_at, usage=step.usage)
                    .execution_options(synchronize_session=False)
                )
                if not announced:
                    events.append(
                        event(
                            "thread.message.completed"
                            if not cut_short
                            else "thread.message.incomplete",
                            message_object(message),
                        )
                    )
                    events.append(event("thread.run.step.completed", step_object(step)))
            if turn.tool_step is not None:
                tool_step = turn.tool_step
                tool_step.step_details = {
                    "type": "tool_calls",
                    "tool_calls": [
                        {**c, "function": {**c["function"], "output": None}} for c in calls
                    ],
                }
                tool_step.usage = turn_usage
                if cut_short:
                    # Arguments cut off mid-way are not worth asking the client to run.
                    tool_step.status = "completed"
                    tool_step.completed_at = stamp
                    events.append(event("thread.run.step.completed", step_object(tool_step)))
                await session.execute(
                    update(RunStep)
                    .where(RunStep.id == tool_step.id)
                    .values(
                        step_details=tool_step.step_details,
                        usage=tool_step.usage,
                        status=tool_step.status,
                        completed_at=tool_step.completed_at,
                    )
                    .execution_options(synchronize_session=False)
                )
            await session.commit()
        self.released = updated.lease_owner is None
        events.append(run_event(updated))
        await self.publish(events)
        return "done"

    async def _why_not_in_progress(self) -> Exception:
        async with self.x.sessions() as session:
            row = (
                await session.execute(select(Run.status, Run.epoch).where(Run.id == self.run_id))
            ).first()
        if row is None or row.epoch != self.epoch:
            return LeaseLost()
        if row.status == "cancelling":
            return Stop("cancelled")
        return LeaseLost()

    # --- stopping ------------------------------------------------------------------------

    async def _finish(self, status: str, *, last_error: dict[str, Any] | None = None) -> None:
        """End the run as cancelled, expired or failed, closing whatever it left open."""
        extra: dict[str, Any] = {}
        if last_error is not None:
            # Error messages quote what servers sent.
            last_error = {**last_error, "message": storable(last_error["message"])}
            extra["last_error"] = last_error
        await self._settle()
        try:
            await self._close(status, extra, last_error)
        except Exception:
            if self.turn is None:
                raise
            log.exception("run %s: storing its partial answer failed", self.run_id)
            # What the turn streamed may be what cannot be written: end the run without it.
            self.turn = None
            await self._close(status, extra, last_error)

    async def _close(
        self, status: str, extra: dict[str, Any], last_error: dict[str, Any] | None
    ) -> None:
        async with self.x.sessions() as session:
            updated = await transition(
                session,
                self.run_id,
                RUNNABLE,
                terminal_values(status, **extra),
                epoch=self.epoch,
            )
            if updated is None:
                await session.rollback()
                return
            await self._keep_partial(session)
            events = await close_open_work(session, self.run_id, status, last_error)
            await session.commit()
        self.released = True
        await self.publish([*events, run_event(updated)])

    async def _settle(self) -> None:
        """Let the turn's pending writes land before the run is closed around them (a failed
        one, e.g. fenced out, has nothing to close)."""
        if self.turn is not None:
            with contextlib.suppress(Exception):
                await self.turn.persisted()

    async def _keep_partial(self, session: Any) -> None:
        """Store what the unfinished turn streamed (text, tool-call fragments) on the message
        and step it leaves open, which `close_open_work` then closes: the stored objects say
        what the stream said."""
        turn = self.turn
        if turn is None:
            return
        if turn.message is not None and turn.message_done_at is not None:
            # Announced completed when the tool calls began: store it so.
            text = {"value": "".join(turn.text), "annotations": []}
            done = {"status": "completed", "completed_at": turn.message_done_at}
            await session.execute(
                update(Message)
                .where(Message.id == turn.message.id, Message.status == "in_progress")
                .values(content=[{"type": "text", "text": text}], **done)
                .execution_options(synchronize_session=False)
            )
            if turn.message_step is not None:
                await session.execute(
                    update(RunStep)
                    .where(RunStep.id == turn.message_step.id, RunStep.status == "in_progress")
                    .values(**done)
                    .execution_options(synchronize_session=False)
                )
        elif turn.message is not None and turn.text:
            text = {"value": "".join(turn.text), "annotations": []}
            await session.execute(
                update(Message)
                .where(Message.id == turn.message.id, Message.status == "in_progress")
                .values(content=[{"type": "text", "text": text}])
                .execution_options(synchronize_session=False)
            )
        if turn.tool_step is not None and turn.calls:
            calls = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": "".join(c.arguments), "output": None},
                }
                for c in turn.calls
            ]
            await session.execute(
                update(RunStep)
                .where(RunStep.id == turn.tool_step.id, RunStep.status == "in_progress")
                .values(step_details={"type": "tool_calls", "tool_calls": calls})
                .execution_options(synchronize_session=False)
            )

    async def _incomplete(self, reason: str) -> None:
        await self._settle()
        async with self.x.sessions() as session:
            updated = await transition(
                session,
                self.run_id,
                ("in_progress",),
                terminal_values("incomplete", incomplete_details={"reason": reason}),
                epoch=self.epoch,
            )
            if updated is None:
                await session.rollback()
                return
            events = await close_open_work(session, self.run_id, "incomplete")
            await session.commit()
        self.released = True
        await self.publish([*events, run_event(updated)])

    async def _fail(self, exc: LLMError) -> None:
        code = {"rate_limit": "rate_limit_exceeded", "invalid_request": "invalid_prompt"}.get(
            exc.kind, "server_error"
        )
        if exc.kind == "config":
            message = f"The server is misconfigured: {exc.message}."
        else:
            message = f"The model backend failed: {exc.message}"
        log.warning("run %s failed: %s", self.run_id, exc.message)
        await self._finish("failed", last_error={"code": code, "message": message})

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
        await self._finish("failed", last_error=last_error)
