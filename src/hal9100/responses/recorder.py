"""How the Responses API records what the engine does: as the Assistants API does (the
response's messages and run steps on its thread, which the Conversations API reads as
items), except that its prompt is built from items, and a turn that ends with the client's
function calls ends the response (the client answers in its next request)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.conversations.items import Entry, thread_entries
from hal9100.db.models import Message, Run, RunStep
from hal9100.engine.recorder import Prompt
from hal9100.llm.base import FunctionTool
from hal9100.responses import prompt as prompt_
from hal9100.runs.prompt import image_file_ids
from hal9100.runs.recorder import AssistantsRecorder


def _run_of(entry: Entry) -> str | None:
    source = entry.source
    return source.run_id if isinstance(source, Message | RunStep) else None


async def context(session: AsyncSession, run: Run) -> list[Entry]:
    """Everything the response's model reads, oldest first: the conversation it belongs to,
    or the responses of its `previous_response_id` chain, then its own input and turns."""
    settings = run.response or {}
    own = await thread_entries(session, run.thread_id)
    if settings.get("conversation"):
        return own
    chain: list[Entry] = []
    previous_id = settings.get("previous_response_id")
    while previous_id:
        previous = await session.scalar(select(Run).where(Run.id == previous_id))
        if previous is None:
            break
        entries = await thread_entries(session, previous.thread_id)
        earlier = previous.response or {}
        if earlier.get("conversation"):
            # A response of a conversation: the conversation as it was when it ended.
            places = [e.ordinal for e in entries if _run_of(e) == previous.id]
            if places:
                entries = [e for e in entries if e.ordinal <= max(places)]
            chain = entries + chain
            break
        chain = entries + chain
        previous_id = earlier.get("previous_response_id")
    return chain + own


class ResponsesRecorder(AssistantsRecorder):
    client_calls_end_run = True

    def server_call_limit(self, run: Run) -> int | None:
        limit = (run.response or {}).get("max_tool_calls")
        return int(limit) if isinstance(limit, int) else None

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
        entries = await context(session, run)
        images = await self._images(session, image_file_ids(prompt_.context_messages(entries)))
        # A step shows as one entry per call: each once, in order.
        own = (e.source for e in entries if isinstance(e.source, RunStep))
        self._saw_steps([s for s in dict.fromkeys(own) if s.run_id == run.id])
        notes = await self._notes(session, run)
        return prompt_.build(
            run,
            entries,
            notes=notes,
            context_window=context_window,
            images=images,
            completion_tokens_left=completion_tokens_left,
            functions=functions,
            truncation=str((run.response or {}).get("truncation") or "disabled"),
        )
