"""How the Assistants API records what the engine does: the run's steps, the assistant's
messages on the thread, and the `thread.*` events that stream them.

A model turn's text becomes a message with its `message_creation` step; its tool calls one
`tool_calls` step, whose calls the server fills in as it runs them (an action's call keeps
the function shape, its output written by the server) and the client fills in for its own.
Deltas are streamed and never stored; the finished text is. Citation markers in the text
become annotations as it streams (`runs.citations`), from the results of the run's
file_search calls as the steps held them when the turn's prompt was built.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.core import ids
from hal9100.core.clock import now
from hal9100.db.models import File, Message, Run, RunStatus, RunStep
from hal9100.engine.recorder import Call, Execution, Prompt, TurnEnd
from hal9100.events.base import RunEvent
from hal9100.llm.base import FunctionTool
from hal9100.messages.repository import MessageRepository
from hal9100.messages.service import to_object as message_object
from hal9100.runs.citations import CitationStream, Sources, paths_of, sources_of
from hal9100.runs.lifecycle import close_open_work, event, run_event, step_object
from hal9100.runs.prompt import build_prompt, data_url, image_file_ids
from hal9100.storage.base import ObjectStorage, read_whole
from hal9100.tools import code_interpreter, file_search

MAX_IMAGE_BYTES = 20 * 1024 * 1024
# The first token's events leave before its message row is written: an embedded SQLite write
# runs on the event loop, and would otherwise go first and hold up the stream.
FIRST_WRITE_DELAY = 0.002

# Statements of every turn, built once: building and compiling them anew cost more than
# running them. The turn's own objects are written back as plain UPDATEs (no re-read).
_RUN_STEPS = (
    select(RunStep)
    .where(RunStep.run_id == bindparam("run_id"))
    .order_by(RunStep.created_at, RunStep.seq)
)
_END_MESSAGE = (
    update(Message)
    .where(Message.id == bindparam("message_id"))
    .values(
        {
            name: bindparam(f"v_{name}")
            for name in (
                "content",
                "attachments",
                "status",
                "completed_at",
                "incomplete_at",
                "incomplete_details",
            )
        }
    )
    .execution_options(synchronize_session=False)
)
_END_STEP = (
    update(RunStep)
    .where(RunStep.id == bindparam("step_id"))
    .values({name: bindparam(f"v_{name}") for name in ("status", "completed_at", "usage")})
    .execution_options(synchronize_session=False)
)


@dataclass
class _Turn:
    """The objects of the model turn being streamed."""

    message: Message | None = None
    message_step: RunStep | None = None
    tool_step: RunStep | None = None
    # The answer's text, its citation markers made annotations.
    cite: CitationStream = field(default_factory=lambda: CitationStream({}))
    calls: dict[int, Call] = field(default_factory=dict)
    arguments: dict[int, list[str]] = field(default_factory=dict)
    # What each code_interpreter call's input deltas have carried so far.
    code_sent: dict[int, str] = field(default_factory=dict)
    # Plots that lead the turn's message (`image_file` parts before its text).
    images: list[str] = field(default_factory=list)
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


def _builtin(run: Run, name: str | None) -> str | None:
    """The built-in tool type (file_search, code_interpreter) a call of this name is, if the
    run has that tool (a client function of the same name would take the name, as the
    toolset gives it)."""
    if name not in (file_search.NAME, code_interpreter.NAME):
        return None
    tools = run.tools or []
    if any(t.get("type") == name for t in tools) and not any(
        t.get("type") == "function" and t.get("function", {}).get("name") == name for t in tools
    ):
        return name
    return None


def _image_part(file_id: str) -> dict[str, Any]:
    return {"type": "image_file", "image_file": {"file_id": file_id}}


def _shown_images(steps: list[RunStep]) -> list[str]:
    """The plots of the run's code_interpreter calls since its last message (they lead the
    next one, as OpenAI's messages show them)."""
    images: list[str] = []
    for step in steps:
        if step.type == "message_creation":
            images = []
            continue
        for call in step.step_details.get("tool_calls", []):
            if isinstance(call, dict) and call.get("type") == code_interpreter.NAME:
                for output in (call.get(code_interpreter.NAME) or {}).get("outputs") or []:
                    if isinstance(output, dict) and output.get("type") == "image":
                        images.append(str(output["image"]["file_id"]))
    return images


def _tool_call(call: Call) -> dict[str, Any]:
    if call.details is None and call.kind == "server" and call.name == file_search.NAME:
        # Not run yet: OpenAI shows a file_search call so from the start.
        return {"id": call.id, "type": "file_search", "file_search": {}}
    if call.details is None and call.kind == "server" and call.name == code_interpreter.NAME:
        code = code_interpreter.partial_code(call.arguments)
        return {
            "id": call.id,
            "type": "code_interpreter",
            "code_interpreter": {"input": code, "outputs": []},
        }
    return {"id": call.id, **(call.details or call.function_details())}


class AssistantsRecorder:
    client_calls_end_run = False

    def server_call_limit(self, run: Run) -> int | None:
        return None

    async def server_calls_made(self, session: AsyncSession, run: Run) -> int:
        details = await session.scalars(
            select(RunStep.step_details).where(
                RunStep.run_id == run.id,
                RunStep.type == "tool_calls",
                RunStep.status == "completed",
            )
        )
        return sum(
            1
            for step in details
            for call in step.get("tool_calls") or []
            if isinstance(call, dict)
            and call.get("type") in (file_search.NAME, code_interpreter.NAME)
        )

    def __init__(self, execution: Execution, storage: ObjectStorage) -> None:
        self.x = execution
        self.storage = storage
        self.turn: _Turn | None = None
        # The step holding the calls of the turn whose server-side calls are being run.
        self.tool_step: RunStep | None = None
        # What markers in the next turn's answer may cite, and the files its code wrote.
        self.sources: Sources = {}
        self.paths: dict[str, str] = {}
        # The plots the next turn's message shows first.
        self.images: list[str] = []
        # The run's `include`, once known: what its steps' events show.
        self.include: list[str] | None = None

    def _saw(self, run: Run) -> None:
        self.include = list(run.include or [])

    async def _include(self, session: AsyncSession) -> list[str]:
        if self.include is None:
            found = await session.scalar(select(Run.include).where(Run.id == self.x.run_id))
            self.include = list(found or [])
        return self.include

    def _message_content(self, turn: _Turn) -> list[dict[str, Any]]:
        """The plots the run's code showed since its last message, then the text."""
        text = {"value": turn.cite.value, "annotations": turn.cite.annotations}
        return [*map(_image_part, turn.images), {"type": "text", "text": text}]

    @staticmethod
    def _attachments(turn: _Turn) -> list[dict[str, Any]]:
        """The files the answer links to (`file_path` annotations), as OpenAI attaches them."""
        linked = dict.fromkeys(
            a["file_path"]["file_id"] for a in turn.cite.annotations if a["type"] == "file_path"
        )
        return [{"file_id": f, "tools": [{"type": code_interpreter.NAME}]} for f in linked]

    def _text_delta(self, turn: _Turn, text: dict[str, Any]) -> RunEvent:
        assert turn.message is not None
        part = {"index": len(turn.images), "type": "text", "text": text}
        payload = {
            "id": turn.message.id,
            "object": "thread.message.delta",
            "delta": {"content": [part]},
        }
        return event("thread.message.delta", payload)

    def run_changed(self, run: Run) -> list[RunEvent]:
        self._saw(run)
        return [run_event(run)]

    # --- the prompt ------------------------------------------------------------------------

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
        self._saw(run)
        messages = await MessageRepository(session).all_in_thread(run.thread_id)
        steps = list((await session.scalars(_RUN_STEPS, {"run_id": run.id})).all())
        images = await self._images(session, image_file_ids(messages))
        self._saw_steps(steps)
        notes = await self._notes(session, run)
        return build_prompt(
            run,
            messages,
            steps,
            context_window=context_window,
            images=images,
            prompt_tokens_used=prompt_tokens_used,
            completion_tokens_left=completion_tokens_left,
            functions=functions,
            notes=notes,
        )

    def _saw_steps(self, steps: list[RunStep]) -> None:
        """The run's steps so far, in order: what the next turn's citation markers may cite,
        the files its code wrote, and the plots its message leads with."""
        calls = [s.step_details for s in steps if s.type == "tool_calls"]
        self.sources = sources_of(calls)
        self.paths = paths_of(calls)
        self.images = _shown_images(steps)

    async def _notes(self, session: AsyncSession, run: Run) -> list[str]:
        """What the run's tools make available, for the end of the system prompt (the files
        code_interpreter finds in /mnt/data)."""
        if not any(t.get("type") == code_interpreter.NAME for t in run.tools or []):
            return []
        files = await code_interpreter.run_files(
            session, run.thread_id, run.assistant_id or None, run.tools
        )
        note = code_interpreter.files_note(files)
        return [note] if note is not None else []

    async def _images(self, session: AsyncSession, file_ids: list[str]) -> dict[str, str]:
        if not file_ids:
            return {}
        files = (await session.scalars(select(File).where(File.id.in_(file_ids)))).all()
        out: dict[str, str] = {}
        for file in files:
            if file.bytes > MAX_IMAGE_BYTES:
                continue
            data = await read_whole(self.storage, file.storage_key)
            if data is not None:
                out[file.id] = data_url(file, data)
        return out

    async def resumed(self, session: AsyncSession, run: Run) -> None:
        self._saw(run)
        open_ids = {c["id"] for c in run.open_calls or []}
        unfinished = (
            await session.scalars(
                select(RunStep).where(RunStep.run_id == run.id, RunStep.status == "in_progress")
            )
        ).all()
        for step in unfinished:
            if step.type == "tool_calls" and open_ids & {
                c["id"] for c in step.step_details.get("tool_calls", [])
            }:
                # Its calls are on record and go on where the dead attempt left them.
                self.tool_step = step
                continue
            if step.type == "message_creation":
                await session.execute(
                    delete(Message).where(
                        Message.id == step.step_details["message_creation"]["message_id"]
                    )
                )
            await session.delete(step)

    # --- a model turn, as it streams -------------------------------------------------------

    def _new_turn(self) -> _Turn:
        return _Turn(cite=CitationStream(self.sources, self.paths), images=list(self.images))

    async def text(self, run: Run, delta: str) -> None:
        turn = self.turn = self.turn or self._new_turn()
        if turn.message is None:
            await self._open_message(run, turn)
        assert turn.message is not None
        # A marker split across pieces is held back until it is whole (or is no marker).
        piece = turn.cite.feed(delta)
        if piece is not None:
            await self.x.publish_one(self._text_delta(turn, piece.delta()))

    def _finish_text(self, turn: _Turn) -> list[RunEvent]:
        """The answer ended: what the citation stream still held goes out as text."""
        piece = turn.cite.finish()
        if piece is None or turn.message is None:
            return []
        return [self._text_delta(turn, piece.delta())]

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
        await self.x.publish(
            [
                event("thread.run.step.created", step_out),
                event("thread.run.step.in_progress", step_out),
                event("thread.message.created", message_out),
                event("thread.message.in_progress", message_out),
                *self._image_deltas(turn),
            ]
        )
        turn.persisting = asyncio.create_task(self.x.insert(message, step, after=FIRST_WRITE_DELAY))

    def _image_deltas(self, turn: _Turn) -> list[RunEvent]:
        if not turn.images or turn.message is None:
            return []
        parts = [{"index": i, **_image_part(f)} for i, f in enumerate(turn.images)]
        payload = {
            "id": turn.message.id,
            "object": "thread.message.delta",
            "delta": {"content": parts},
        }
        return [event("thread.message.delta", payload)]

    async def tool_call(self, run: Run, call: Call, name: str | None, arguments: str) -> None:
        turn = self.turn = self.turn or self._new_turn()
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
            await self.x.insert(step)
            turn.tool_step = step
            step_out = step_object(step)
            await self.x.publish(
                [
                    event("thread.run.step.created", step_out),
                    event("thread.run.step.in_progress", step_out),
                ]
            )
        first = call.position not in turn.calls
        if first:
            turn.calls[call.position] = call
            turn.arguments[call.position] = []
        turn.arguments[call.position].append(arguments)
        builtin = _builtin(run, turn.calls[call.position].name or name)
        if builtin == file_search.NAME:
            # OpenAI streams a file_search call as its own type, without its arguments.
            if first:
                search = {"index": call.position, "id": call.id, "type": "file_search"}
                await self._step_delta(turn.tool_step, {**search, "file_search": {}})
            return
        if builtin == code_interpreter.NAME:
            await self._code_delta(turn, call, first)
            return
        fragment: dict[str, Any] = {"index": call.position, "type": "function"}
        if first:
            fragment["id"] = call.id
        function: dict[str, Any] = {"arguments": arguments, "output": None}
        if name:
            function["name"] = name
        fragment["function"] = function
        await self._step_delta(turn.tool_step, fragment)

    async def _code_delta(self, turn: _Turn, call: Call, first: bool) -> None:
        """A code_interpreter call streams as OpenAI's: created with an empty input, then
        the code as it is written (decoded from the arguments' JSON as they stream)."""
        assert turn.tool_step is not None
        if first:
            turn.code_sent[call.position] = ""
            created = {"input": "", "outputs": []}
            fragment = {"index": call.position, "id": call.id, "type": "code_interpreter"}
            await self._step_delta(turn.tool_step, {**fragment, "code_interpreter": created})
        code = code_interpreter.partial_code("".join(turn.arguments[call.position]))
        sent = turn.code_sent[call.position]
        if len(code) > len(sent) and code.startswith(sent):
            turn.code_sent[call.position] = code
            fragment = {"index": call.position, "type": "code_interpreter"}
            delta = {"input": code[len(sent) :]}
            await self._step_delta(turn.tool_step, {**fragment, "code_interpreter": delta})

    async def _step_delta(self, step: RunStep, fragment: dict[str, Any]) -> None:
        payload = {
            "id": step.id,
            "object": "thread.run.step.delta",
            "delta": {"step_details": {"type": "tool_calls", "tool_calls": [fragment]}},
        }
        await self.x.publish_one(event("thread.run.step.delta", payload))

    async def _announce_message_done(self, turn: _Turn) -> None:
        """Text came before tool calls: like OpenAI, close the message and its step before
        the tool-call step opens (the SDK's helpers expect one open step at a time). Their
        rows are written at the end of the turn, or by `_keep_partial` if the run stops."""
        assert turn.message is not None and turn.message_step is not None
        held = self._finish_text(turn)
        stamp = turn.message_done_at = now()
        message, step = turn.message, turn.message_step
        message.content = self._message_content(turn)
        message.attachments = self._attachments(turn)
        message.status = "completed"
        message.completed_at = stamp
        step.status = "completed"
        step.completed_at = stamp
        step.usage = None  # the turn's usage goes to its tool-call step
        await self.x.publish(
            [
                *held,
                event("thread.message.completed", message_object(message)),
                event("thread.run.step.completed", step_object(step)),
            ]
        )

    async def settle(self) -> None:
        if self.turn is not None:
            await self.turn.persisted()

    def forget_turn(self) -> None:
        self.turn = None

    async def end_turn(self, session: AsyncSession, run: Run, end: TurnEnd) -> list[RunEvent]:
        self._saw(run)
        turn = self.turn or self._new_turn()
        stamp = now()
        # The turn's text is `end.text` with its markers made annotations: what streamed.
        events: list[RunEvent] = self._finish_text(turn)
        turn_usage = {
            "prompt_tokens": end.usage.prompt_tokens,
            "completion_tokens": end.usage.completion_tokens,
            "total_tokens": end.usage.total_tokens,
        }
        if turn.message is not None and turn.message_step is not None:
            announced = turn.message_done_at is not None
            message, step = turn.message, turn.message_step
            message.content = self._message_content(turn)
            message.attachments = self._attachments(turn)
            if end.cut_short and not announced:
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
                _END_MESSAGE,
                {
                    "message_id": message.id,
                    "v_content": message.content,
                    "v_attachments": message.attachments,
                    "v_status": message.status,
                    "v_completed_at": message.completed_at,
                    "v_incomplete_at": message.incomplete_at,
                    "v_incomplete_details": message.incomplete_details,
                },
            )
            await session.execute(
                _END_STEP,
                {
                    "step_id": step.id,
                    "v_status": step.status,
                    "v_completed_at": step.completed_at,
                    "v_usage": step.usage,
                },
            )
            if not announced:
                events.append(
                    event(
                        "thread.message.completed"
                        if not end.cut_short
                        else "thread.message.incomplete",
                        message_object(message),
                    )
                )
                events.append(event("thread.run.step.completed", step_object(step)))
        if turn.tool_step is not None:
            tool_step = turn.tool_step
            # A turn cut short leaves its calls unsorted and unanswered: arguments cut off
            # mid-way are not worth running or asking the client to run.
            calls = [_tool_call(c) for c in end.calls]
            tool_step.step_details = {"type": "tool_calls", "tool_calls": calls}
            tool_step.usage = turn_usage
            if not end.calls_open:
                tool_step.status = "completed"
                tool_step.completed_at = stamp
                events.append(
                    event("thread.run.step.completed", step_object(tool_step, self.include))
                )
            else:
                self.tool_step = tool_step
                # The calls the model must redo are answered at once.
                for call in end.calls:
                    if call.kind == "invalid":
                        events.extend(self._output_delta(tool_step, call))
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
        return events

    # --- server-side calls ---------------------------------------------------------------

    def _output_delta(self, step: RunStep, call: Call) -> list[RunEvent]:
        """A function-shaped call's output, streamed as OpenAI streams step deltas: only what
        is new (the SDK's accumulator appends every string it is sent again). Other tool
        types stream their own progress as they run."""
        details = call.details or call.function_details()
        if details.get("type") != "function":
            return []
        fragment = {
            "index": call.position,
            "type": "function",
            "function": {"output": details["function"].get("output")},
        }
        return [
            event(
                "thread.run.step.delta",
                {
                    "id": step.id,
                    "object": "thread.run.step.delta",
                    "delta": {"step_details": {"type": "tool_calls", "tool_calls": [fragment]}},
                },
            )
        ]

    async def call_progress(self, call: Call, fragment: dict[str, Any]) -> None:
        if self.tool_step is not None:
            await self._step_delta(self.tool_step, {"index": call.position, **fragment})

    async def call_done(self, session: AsyncSession, call: Call) -> list[RunEvent]:
        step = self.tool_step
        if step is None:
            raise RuntimeError(f"no open tool step holds call {call.id}")
        calls = [
            _tool_call(call) if c.get("id") == call.id else c
            for c in step.step_details.get("tool_calls", [])
        ]
        step.step_details = {"type": "tool_calls", "tool_calls": calls}
        await session.execute(
            update(RunStep)
            .where(RunStep.id == step.id)
            .values(step_details=step.step_details)
            .execution_options(synchronize_session=False)
        )
        return self._output_delta(step, call)

    async def calls_done(self, session: AsyncSession, calls: list[Call]) -> list[RunEvent]:
        step, self.tool_step = self.tool_step, None
        if step is None:
            raise RuntimeError("no open tool step holds the turn's calls")
        step.step_details = {"type": "tool_calls", "tool_calls": [_tool_call(c) for c in calls]}
        step.status = "completed"
        step.completed_at = now()
        await session.execute(
            update(RunStep)
            .where(RunStep.id == step.id)
            .values(
                step_details=step.step_details, status=step.status, completed_at=step.completed_at
            )
            .execution_options(synchronize_session=False)
        )
        include = await self._include(session)
        return [event("thread.run.step.completed", step_object(step, include))]

    # --- the end ---------------------------------------------------------------------------

    async def stopped(
        self, session: AsyncSession, status: RunStatus, last_error: dict[str, Any] | None
    ) -> list[RunEvent]:
        await self._keep_partial(session)
        self.turn = None
        self.tool_step = None
        include = await self._include(session)
        return await close_open_work(session, self.x.run_id, status, last_error, include)

    async def _keep_partial(self, session: AsyncSession) -> None:
        """Store what the unfinished turn streamed (text, tool-call fragments) on the message
        and step it leaves open, which `close_open_work` then closes: the stored objects say
        what the stream said."""
        turn = self.turn
        if turn is None:
            return
        # What the citation stream held back was never streamed: it is not stored either.
        content = self._message_content(turn)
        if turn.message is not None and turn.message_done_at is not None:
            # Announced completed when the tool calls began: store it so.
            done = {"status": "completed", "completed_at": turn.message_done_at}
            await session.execute(
                update(Message)
                .where(Message.id == turn.message.id, Message.status == "in_progress")
                .values(content=content, attachments=self._attachments(turn), **done)
                .execution_options(synchronize_session=False)
            )
            if turn.message_step is not None:
                await session.execute(
                    update(RunStep)
                    .where(RunStep.id == turn.message_step.id, RunStep.status == "in_progress")
                    .values(**done)
                    .execution_options(synchronize_session=False)
                )
        elif turn.message is not None and turn.cite.value:
            await session.execute(
                update(Message)
                .where(Message.id == turn.message.id, Message.status == "in_progress")
                .values(content=content, attachments=self._attachments(turn))
                .execution_options(synchronize_session=False)
            )
        if turn.tool_step is not None and turn.calls:
            calls = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {
                        "name": c.name,
                        "arguments": "".join(turn.arguments[position]),
                        "output": None,
                    },
                }
                for position, c in turn.calls.items()
            ]
            await session.execute(
                update(RunStep)
                .where(RunStep.id == turn.tool_step.id, RunStep.status == "in_progress")
                .values(step_details={"type": "tool_calls", "tool_calls": calls})
                .execution_options(synchronize_session=False)
            )
