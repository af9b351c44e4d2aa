"""One model call, read as it streams: text and tool-call fragments made storable, handed to
the recorder as they come, and gathered into what the turn produced.

Every backend's output passes here, so what clients are streamed is what is stored. Open
models repeat one id for parallel calls or send none: calls are told apart by their index,
and every call gets an id of ours.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from hal9100.core import ids
from hal9100.core.text import StorableStream, storable
from hal9100.db.models import Run
from hal9100.engine.recorder import Call, Recorder
from hal9100.engine.state import LeaseLost
from hal9100.llm.base import (
    ChatRequest,
    Finish,
    LLMBackend,
    LLMError,
    TextDelta,
    ToolCallDelta,
    Usage,
)

log = logging.getLogger(__name__)


@dataclass
class Turn:
    """What one model call produced so far."""

    text: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    arguments: list[list[str]] = field(default_factory=list)
    # The backend's index of each call -> its position in `calls`.
    positions: dict[int, int] = field(default_factory=dict)
    usage: Usage | None = None
    finish: str | None = None

    @property
    def emitted(self) -> bool:
        return bool(self.text or self.calls)

    async def read(
        self, backend: LLMBackend, request: ChatRequest, run: Run, rec: Recorder, run_id: str
    ) -> None:
        """Stream one completion into this turn, telling `rec` as it goes."""
        text = StorableStream()
        arguments: dict[int, StorableStream] = {}
        try:
            async for item in backend.stream(request):
                if isinstance(item, TextDelta):
                    value = text.feed(item.text)
                    if value:
                        self.text.append(value)
                        await rec.text(run, value)
                elif isinstance(item, ToolCallDelta):
                    # The text ends where the tool calls begin.
                    if tail := text.flush():
                        self.text.append(tail)
                        await rec.text(run, tail)
                    fragments = arguments.get(item.index)
                    if fragments is None:
                        fragments = arguments[item.index] = StorableStream()
                    item.arguments = fragments.feed(item.arguments)
                    if item.name:
                        item.name = storable(item.name)
                    await self._tool_delta(run, rec, item)
                elif isinstance(item, Usage):
                    self.usage = item
                elif isinstance(item, Finish):
                    self.finish = item.reason
            if tail := text.flush():
                self.text.append(tail)
                await rec.text(run, tail)
            for index, fragments in arguments.items():
                if tail := fragments.flush():
                    await self._tool_delta(run, rec, ToolCallDelta(index, arguments=tail))
        except LLMError:
            raise
        except (asyncio.CancelledError, LeaseLost):
            raise
        except Exception as exc:
            log.exception("run %s: backend stream failed", run_id)
            raise LLMError("server", f"the model backend failed: {exc}") from exc
        for call, pieces in zip(self.calls, self.arguments, strict=True):
            call.arguments = "".join(pieces)

    async def _tool_delta(self, run: Run, rec: Recorder, delta: ToolCallDelta) -> None:
        position = self.positions.get(delta.index)
        if position is None:
            position = self.positions[delta.index] = len(self.calls)
            self.calls.append(Call(id=ids.call_id(), position=position, name="", arguments=""))
            self.arguments.append([])
        call = self.calls[position]
        name = None
        if delta.name and not call.name:
            call.name = name = delta.name
        self.arguments[position].append(delta.arguments)
        await rec.tool_call(run, call, name, delta.arguments)
