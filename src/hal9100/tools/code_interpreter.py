"""The code_interpreter tool: the model runs Python in its thread's sandboxed kernel.

The model sees one function, `code_interpreter`, taking `code`. A thread keeps one session
(variables, `/mnt/data`) between calls and runs while it is used (`sandbox.sessions`). The
files of the assistant's and the thread's `tool_resources.code_interpreter` and of the
thread's message attachments for this tool are put in `/mnt/data` under their own names
(`sandbox_names`), and the prompt lists them (`files_note`).

A call's details are OpenAI's `code_interpreter` step shape: `input` (the code) and `outputs`
(`logs`; `image` for each plot, stored as a file of purpose `assistants_output`), plus our
key `hal9100`: the output as the model read it, and the files the cell wrote under
`/mnt/data`, each stored as a file too, by path, for the answer's `sandbox:/mnt/data/...`
links to become `file_path` annotations (`runs.citations`).

When a thread's session is gone (it ended idle or old, its kernel was restarted, or the
process holding it ended) the model is told that its earlier variables and files are lost.
Code never runs outside the sandbox: without one the call raises `ToolUnavailable`, and the
run fails saying why.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import String, cast, or_, select

from hal9100.core import ids
from hal9100.core.clock import now
from hal9100.core.text import storable
from hal9100.db.models import Assistant, File, Message, RunStep, Thread
from hal9100.sandbox.base import DATA_DIR, CellResult, SandboxUnavailable
from hal9100.storage.base import read_whole
from hal9100.tools.base import FunctionSpec, ToolContext, ToolOutput, ToolUnavailable

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from hal9100.config import Settings
    from hal9100.sandbox.base import SandboxSession

NAME = "code_interpreter"
PRIVATE = "hal9100"
PURPOSE = "assistants_output"
MAX_INPUT_FILE_BYTES = 512 << 20
"""The largest file put in a session (OpenAI's limit for a file)."""
MAX_EXPORTED_FILES = 20
"""Files one cell wrote that are kept as files; the model is told of the rest."""
MAX_EXPORTED_BYTES = 64 << 20
# Seconds kept back from the run's deadline for what follows the cell (storing, answering).
DEADLINE_MARGIN = 5.0
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")

DESCRIPTION = (
    "Run Python code in a stateful Jupyter kernel, in a sandbox without internet access. "
    "Variables, imports and files persist between calls in this conversation. numpy, pandas "
    "and matplotlib are installed. Files given to you are in /mnt/data; save files you make "
    "for the user in /mnt/data and link them in your answer as sandbox:/mnt/data/<name>. "
    "Show plots with matplotlib's plt.show(). The call returns what the code printed, the "
    "value of its last expression, and any error."
)
PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"code": {"type": "string", "description": "The Python code to run."}},
    "required": ["code"],
}
STATE_LOST = (
    "Note: the Python session of this conversation was reset ({why}): variables, imports and "
    "files made by earlier code are gone. The files given to you are in /mnt/data again."
)


def _cut(name: str, size: int) -> str:
    """At most `size` bytes of UTF-8 (a file name's limit is in bytes), whole characters."""
    return name.encode()[:size].decode(errors="ignore")


def sandbox_names(files: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Each file's name in /mnt/data, from `(file_id, filename)` pairs in order: the
    filename made safe, and made unique by the file id where two would clash."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for file_id, filename in files:
        if file_id in names:
            continue
        name = _cut(_UNSAFE_NAME.sub("_", filename).strip(), 200)
        if name in ("", ".", "..") or name.startswith(".hal9100"):
            name = file_id
        if name in taken:
            name = _cut(f"{file_id}-{name}", 255)
        taken.add(name)
        names[file_id] = name
    return names


def tool_file_ids(tools: list[Any] | None) -> list[str]:
    """The files a run's code_interpreter tool names itself (a response's
    `container.file_ids`)."""
    found: list[str] = []
    for tool in tools or []:
        if isinstance(tool, dict) and tool.get("type") == NAME:
            found += [str(i) for i in tool.get("file_ids") or [] if isinstance(i, str)]
    return found


async def run_files(
    session: AsyncSession,
    thread_id: str,
    assistant_id: str | None,
    tools: list[Any] | None = None,
) -> list[File]:
    """The files a run's code may use, in order: those its tool names, the assistant's and
    the thread's `tool_resources.code_interpreter.file_ids`, then the thread's message
    attachments for this tool. Files deleted since are left out."""
    wanted: list[str] = tool_file_ids(tools)
    if assistant_id is not None:
        resources = await session.scalar(
            select(Assistant.tool_resources).where(Assistant.id == assistant_id)
        )
        wanted += _resource_ids(resources)
    wanted += _resource_ids(
        await session.scalar(select(Thread.tool_resources).where(Thread.id == thread_id))
    )
    # The user's attachments: an assistant's are the files its code wrote, still in the
    # session that wrote them (or lost with it).
    for attachments in await session.scalars(
        select(Message.attachments)
        .where(Message.thread_id == thread_id, Message.role == "user")
        .order_by(Message.created_at, Message.seq)
    ):
        for attachment in attachments or []:
            if isinstance(attachment, dict) and any(
                isinstance(t, dict) and t.get("type") == NAME for t in attachment.get("tools") or []
            ):
                wanted.append(str(attachment.get("file_id")))
    if not wanted:
        return []
    rows = {f.id: f for f in await session.scalars(select(File).where(File.id.in_(set(wanted))))}
    ordered: list[File] = []
    for file_id in dict.fromkeys(wanted):
        if file_id in rows:
            ordered.append(rows[file_id])
    return ordered


def _resource_ids(resources: Any) -> list[str]:
    if not isinstance(resources, dict):
        return []
    section = resources.get(NAME)
    ids_ = section.get("file_ids") if isinstance(section, dict) else None
    return [str(i) for i in ids_ or [] if isinstance(i, str)]


def files_note(files: Sequence[File]) -> str | None:
    """What the prompt tells the model of the files in /mnt/data."""
    if not files:
        return None
    names = sandbox_names([(f.id, f.filename) for f in files])
    listed = "\n".join(f"- {DATA_DIR}/{names[f.id]} (uploaded as {f.filename!r})" for f in files)
    return f"Files available to the code_interpreter tool, in {DATA_DIR}:\n{listed}"


async def _had_session(session: AsyncSession, thread_id: str) -> bool:
    """Whether code ran on this thread before (so a new session means state was lost)."""
    found = await session.scalar(
        select(RunStep.id)
        .where(
            RunStep.thread_id == thread_id,
            RunStep.type == "tool_calls",
            # The step of the call being made is in progress (so are its parallel calls).
            RunStep.status != "in_progress",
            # A call's own `type`: the same words inside a string (an argument, a search
            # result) are escaped there, and do not match.
            or_(
                cast(RunStep.step_details, String).like('%"type": "code_interpreter"%'),
                cast(RunStep.step_details, String).like('%"type":"code_interpreter"%'),
            ),
        )
        .limit(1)
    )
    return found is not None


def parse_code(arguments: dict[str, Any]) -> str | None:
    code = arguments.get("code")
    if isinstance(code, str) and code.strip():
        return code
    return None


def replayed_output(call: dict[str, Any]) -> str:
    """A stored call's output, as the model read it."""
    private = call.get(PRIVATE)
    if isinstance(private, dict) and isinstance(private.get("output"), str):
        return str(private["output"])
    outputs = (call.get(NAME) or {}).get("outputs") or []
    return "".join(o.get("logs", "") for o in outputs if isinstance(o, dict))


def replayed_arguments(call: dict[str, Any]) -> str:
    code = (call.get(NAME) or {}).get("input")
    return json.dumps({"code": code if isinstance(code, str) else ""}, ensure_ascii=False)


def public_details(call: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in call.items() if k != PRIVATE}


def exported_files(call: dict[str, Any]) -> dict[str, str]:
    """`/mnt/data/<path>` -> file id, for the files a stored call's cell wrote."""
    private = call.get(PRIVATE)
    files = private.get("files") if isinstance(private, dict) else None
    if not isinstance(files, dict):
        return {}
    return {str(k): str(v) for k, v in files.items() if isinstance(v, str)}


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def save_output(
    ctx: ToolContext, filename: str, data: bytes, content_type: str | None
) -> str:
    """Store `data` as a file of purpose `assistants_output`; its id."""
    file_id = ids.file_id()
    key = f"files/{file_id}"
    size = await ctx.storage.put(key, _once(data))
    async with ctx.sessions() as session:
        session.add(
            File(
                id=file_id,
                created_at=now(),
                filename=storable(filename)[:1024],
                purpose=PURPOSE,
                bytes=size,
                status="processed",
                storage_key=key,
                content_type=content_type,
            )
        )
        await session.commit()
    return file_id


class CodeInterpreterTool:
    """A ServerTool (hal9100.tools.base) for a `{"type": "code_interpreter"}` tool."""

    type = NAME

    def __init__(self, settings: Settings) -> None:
        self.cell_seconds = settings.sandbox_cell_seconds

    @classmethod
    def from_definition(cls, definition: dict[str, Any], settings: Settings) -> CodeInterpreterTool:
        return cls(settings)

    def functions(self) -> list[FunctionSpec]:
        return [FunctionSpec(NAME, DESCRIPTION, PARAMETERS)]

    def repeatable(self, name: str, arguments: dict[str, Any]) -> bool:
        # A worker that dies mid-cell takes the session with it: the cell runs again, in a
        # new session, and the model is told its earlier state is gone.
        return True

    def unknown_outcome(self, name: str, arguments: dict[str, Any]) -> ToolOutput:
        return self._details(
            str(arguments.get("code", "")), "The call's outcome is unknown.", [], {}
        )

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> ToolOutput:
        code = parse_code(arguments)
        if code is None:
            return self._details("", "Error: `code` must be a non-empty string.", [], {})
        sandboxes = ctx.sandbox
        if sandboxes is None:
            raise ToolUnavailable(
                "code_interpreter is disabled on this server (HAL9100_SANDBOX=none)"
            )
        run = ctx.run
        async with ctx.sessions() as session:
            files = await run_files(session, run.thread_id, run.assistant_id, run.tools)
            had_session = await _had_session(session, run.thread_id)
        try:
            async with sandboxes.lease(run.thread_id) as lease:
                notes: list[str] = []
                if lease.fresh and had_session:
                    notes.append(STATE_LOST.format(why="it had ended"))
                notes += await self._put_files(ctx, lease.session, lease.files, files)
                before = {f.path: (f.size, f.mtime_ns) for f in await lease.session.list_files()}
                result = await lease.session.run_cell(code, self._limit(ctx))
                if result.state_lost is not None:
                    lease.files.clear()
                    notes.append(STATE_LOST.format(why=result.state_lost))
                written = await self._export(ctx, lease.session, before, result)
        except SandboxUnavailable as error:
            raise ToolUnavailable(f"code_interpreter is not available: {error}") from None
        return await self._finish(ctx, code, result, written, notes)

    def _limit(self, ctx: ToolContext) -> float:
        limit = self.cell_seconds
        if ctx.deadline is not None:
            limit = min(limit, ctx.deadline - time.time() - DEADLINE_MARGIN)
        return max(limit, 1.0)

    async def _put_files(
        self,
        ctx: ToolContext,
        sandbox: SandboxSession,
        present: dict[str, str],
        files: Sequence[File],
    ) -> list[str]:
        notes = []
        names = sandbox_names([(f.id, f.filename) for f in files])
        for file in files:
            if file.id in present:
                continue
            if file.bytes > MAX_INPUT_FILE_BYTES:
                notes.append(f"Note: {file.filename!r} is too large to be put in {DATA_DIR}.")
                continue
            data = await read_whole(ctx.storage, file.storage_key)
            if data is None:
                continue
            try:
                present[file.id] = await sandbox.put_file(names[file.id], data)
            except OSError as error:
                # /mnt/data full, or the code made a directory of that name: the model is
                # told, and the next call tries again.
                notes.append(
                    f"Note: {file.filename!r} could not be put in {DATA_DIR}/{names[file.id]} "
                    f"({error.strerror or error})."
                )
        return notes

    async def _export(
        self,
        ctx: ToolContext,
        sandbox: SandboxSession,
        before: dict[str, tuple[int, int]],
        result: CellResult,
    ) -> dict[str, str]:
        """Store the files the cell made or changed under /mnt/data; path -> file id."""
        if not sandbox.alive:
            return {}
        written: dict[str, str] = {}
        changed = [
            f for f in await sandbox.list_files() if before.get(f.path) != (f.size, f.mtime_ns)
        ]
        for file in changed[:MAX_EXPORTED_FILES]:
            data = await sandbox.read_file(file.path, MAX_EXPORTED_BYTES)
            if data is None:
                continue
            name = file.path.rsplit("/", 1)[-1]
            written[f"{DATA_DIR}/{file.path}"] = await save_output(ctx, name, data, None)
        return written

    async def _finish(
        self,
        ctx: ToolContext,
        code: str,
        result: CellResult,
        written: dict[str, str],
        notes: list[str],
    ) -> ToolOutput:
        images = [
            await save_output(ctx, f"image-{index}.png", png, "image/png")
            for index, png in enumerate(result.images)
        ]
        outputs: list[dict[str, Any]] = []
        if result.logs:
            outputs.append({"type": "logs", "logs": storable(result.logs)})
        outputs += [{"type": "image", "image": {"file_id": file_id}} for file_id in images]
        if outputs:
            await ctx.progress(
                {
                    "type": NAME,
                    NAME: {"outputs": [{"index": i, **o} for i, o in enumerate(outputs)]},
                }
            )
        lines = [storable(result.logs).rstrip("\n")] if result.logs else []
        lines += [f"[a plot was shown to the user: image {i + 1}]" for i in range(len(images))]
        if written:
            lines.append("Files written: " + ", ".join(written))
        if not lines:
            lines.append("(the code ran and printed nothing)")
        text = "\n".join([*notes, *lines])
        return self._details(code, text, outputs, written)

    def _details(
        self, code: str, output: str, outputs: list[dict[str, Any]], written: dict[str, str]
    ) -> ToolOutput:
        details = {
            "type": NAME,
            NAME: {"input": code, "outputs": outputs},
            PRIVATE: {"output": output, "files": written},
        }
        return ToolOutput(output=output, details=details)


_CODE_KEY = re.compile(r'"code"\s*:\s*"')
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def partial_code(arguments: str) -> str:
    """The `code` of a call's JSON arguments as far as they have streamed: the string's
    characters decoded up to its end or to where the text stops (a cut escape waits)."""
    found = _CODE_KEY.search(arguments)
    if found is None:
        return ""
    out: list[str] = []
    position = found.end()
    size = len(arguments)
    while position < size:
        char = arguments[position]
        if char == '"':
            break
        if char != "\\":
            out.append(char)
            position += 1
            continue
        if position + 1 >= size:
            break
        kind = arguments[position + 1]
        if kind in _ESCAPES:
            out.append(_ESCAPES[kind])
            position += 2
            continue
        if kind != "u" or position + 6 > size:
            break
        try:
            unit = int(arguments[position + 2 : position + 6], 16)
        except ValueError:
            break
        position += 6
        if 0xD800 <= unit < 0xDC00:
            # A surrogate pair's second half may not have arrived.
            if position + 6 > size:
                position -= 6
                break
            if arguments[position : position + 2] == "\\u":
                try:
                    low = int(arguments[position + 2 : position + 6], 16)
                except ValueError:
                    low = -1
                if 0xDC00 <= low < 0xE000:
                    out.append(chr(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)))
                    position += 6
                    continue
        out.append(chr(unit))
    return "".join(out)
