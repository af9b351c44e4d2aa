"""The file_search tool: the model searches the vector stores of the run's assistant and
thread, and reads the best chunks, each under a citation marker it can cite.

The model sees one function, `file_search`, taking `query`. Every result is shown headed by
its marker `【turn:index†name】`: `turn` counts the run's file_search calls from 0 in the
order the run's steps hold them (so a worker that takes over a run numbers a call as the dead
one did), `index` is the result's rank. `runs.citations` turns those markers in the answer
into annotations.

A call's details are OpenAI's `file_search` step shape (ranking options, and the results with
their content; the API serves the content only when asked with `include[]`), plus one key of
ours, `hal9100`, holding what that shape has no room for: the call's arguments and turn, and
the output when the search found nothing to list. The API strips it (`public_details`); the
prompt of a later turn rebuilds the call's output from it (`replayed_output`).

Files still being ingested: a message's attachments reach the thread's store as the run
starts, so a search may come before they are ingested. As OpenAI's runs do, a search waits
for the thread's stores (not the assistant's, which were ingested ahead by whoever made them)
until none of their files is in progress, for at most `THREAD_STORE_WAIT` seconds counted from
the run's creation (so one run waits once) and never past the run's deadline; then it
searches what is ingested.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from hal9100.core.resources import search_store_ids
from hal9100.core.text import storable
from hal9100.db.models import Assistant, RunStep, Thread, VectorStoreFile
from hal9100.tools.base import FunctionSpec, ToolContext, ToolOutput

if TYPE_CHECKING:
    from hal9100.config import Settings

NAME = "file_search"
# OpenAI's default for gpt-4* models; gpt-3.5's 5 is no concern of open models.
DEFAULT_MAX_RESULTS = 20
# Queries of one call searched (OpenAI's models were trained on a `queries` list).
MAX_QUERIES = 5
# The key of ours in a stored call's details; never served.
PRIVATE = "hal9100"
# The `include[]` value under which results carry their content.
INCLUDE_CONTENT = "step_details.tool_calls[*].file_search.results[*].content"
# A filename as a marker shows it: what would end or fake a marker goes, and it stays short.
MARKER_NAME_CHARS = 80
# OpenAI's fallback: a run waits up to 60 s for the thread's store to finish ingesting.
THREAD_STORE_WAIT = 60.0
_WAIT_POLL = 0.25
_NOT_IN_MARKER = str.maketrans({c: " " for c in "【】[]†\r\n\t"})

DESCRIPTION = (
    "Search the files given to you (documents attached to this assistant or conversation) "
    "for passages about a query. Use it whenever the answer may be in those files, before "
    "answering from memory. Each result is headed by a marker such as 【0:1†report.pdf】; "
    "when you use a result, cite it by writing its marker exactly as shown right after the "
    "statement it supports."
)
PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {
            "type": "string",
            "description": "What to look for, in words likely to appear in the files.",
        }
    },
    "required": ["query"],
}


def marker(turn: int, index: int, filename: str) -> str:
    name = filename.translate(_NOT_IN_MARKER).strip()[:MARKER_NAME_CHARS] or "file"
    return f"【{turn}:{index}†{name}】"


def _queries(arguments: dict[str, Any]) -> list[str]:
    """`query`, or OpenAI's `queries` list; blank ones dropped, unstorable text replaced."""
    given: list[Any] = []
    if isinstance(arguments.get("query"), str):
        given.append(arguments["query"])
    if isinstance(arguments.get("queries"), list):
        given.extend(arguments["queries"])
    out: list[str] = []
    for item in given:
        if isinstance(item, str) and item.strip():
            text = storable(item.strip())
            if text not in out:
                out.append(text)
    return out[:MAX_QUERIES]


def _is_file_search(call: dict[str, Any]) -> bool:
    if call.get("type") == "file_search":
        return True
    function = call.get("function")
    return isinstance(function, dict) and function.get("name") == NAME


def stored_turn(call: dict[str, Any]) -> int | None:
    """The turn a stored file_search call's markers carry."""
    private = call.get(PRIVATE)
    turn = private.get("turn") if isinstance(private, dict) else None
    return turn if isinstance(turn, int) and not isinstance(turn, bool) else None


def public_details(call: dict[str, Any], include_content: bool) -> dict[str, Any]:
    """A stored tool call as the API serves it."""
    if call.get("type") != "file_search":
        return call
    out = {k: v for k, v in call.items() if k != PRIVATE}
    search = out.get("file_search")
    if not include_content and isinstance(search, dict) and "results" in search:
        results = [
            {k: v for k, v in r.items() if k != "content"} if isinstance(r, dict) else r
            for r in search["results"] or []
        ]
        out["file_search"] = {**search, "results": results}
    return out


def render(turn: int, queries: Sequence[str], results: Sequence[dict[str, Any]]) -> str:
    """The model's view of a search that found `results` (stored result objects)."""
    shown = ", ".join(json.dumps(q, ensure_ascii=False) for q in queries)
    blocks = [
        f"File search results for {shown}. Cite what you use from a result by writing its "
        "marker, exactly as shown, right after the statement it supports."
    ]
    for index, result in enumerate(results):
        text = "".join(
            part.get("text", "") for part in result.get("content") or [] if isinstance(part, dict)
        )
        blocks.append(f"{marker(turn, index, str(result.get('file_name') or ''))}\n{text}")
    return "\n\n".join(blocks)


def replayed_output(call: dict[str, Any]) -> str:
    """A stored file_search call's output, as the model read it."""
    private = call.get(PRIVATE)
    private = private if isinstance(private, dict) else {}
    if isinstance(private.get("output"), str):
        return str(private["output"])
    results = (call.get("file_search") or {}).get("results") or []
    queries = private.get("queries")
    queries = [q for q in queries if isinstance(q, str)] if isinstance(queries, list) else []
    return render(stored_turn(call) or 0, queries, [r for r in results if isinstance(r, dict)])


def replayed_arguments(call: dict[str, Any]) -> str:
    private = call.get(PRIVATE)
    arguments = private.get("arguments") if isinstance(private, dict) else None
    return arguments if isinstance(arguments, str) else "{}"


class FileSearchTool:
    """A ServerTool (hal9100.tools.base) for a `{"type": "file_search"}` tool."""

    type = "file_search"

    def __init__(
        self,
        max_num_results: int,
        ranking_options: dict[str, Any],
        vector_store_ids: list[str] | None = None,
        filters: dict[str, Any] | None = None,
    ) -> None:
        self.max_num_results = max_num_results
        self.ranking_options = ranking_options
        # A response's tool names its stores (and may filter them); an Assistants run
        # searches its assistant's and thread's.
        self.vector_store_ids = vector_store_ids
        self.filters = filters

    @classmethod
    def from_definition(cls, definition: dict[str, Any], settings: Settings) -> FileSearchTool:
        options = definition.get("file_search") or {}
        ranking = options.get("ranking_options") or {}
        stores = definition.get("vector_store_ids")
        return cls(
            int(options.get("max_num_results") or DEFAULT_MAX_RESULTS),
            {
                "ranker": ranking.get("ranker") or "auto",
                "score_threshold": float(ranking.get("score_threshold") or 0.0),
            },
            [str(s) for s in stores] if isinstance(stores, list) else None,
            definition.get("filters") if isinstance(definition.get("filters"), dict) else None,
        )

    def functions(self) -> list[FunctionSpec]:
        return [FunctionSpec(NAME, DESCRIPTION, PARAMETERS)]

    def repeatable(self, name: str, arguments: dict[str, Any]) -> bool:
        return True  # a read

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> ToolOutput:
        queries = _queries(arguments)
        turn = await self._turn(ctx)
        if not queries:
            return self._output(
                arguments, turn, queries, [], "Error: give a `query` to search for."
            )
        if self.vector_store_ids is not None:
            store_ids, thread_store_ids = self.vector_store_ids, list[str]()
        else:
            store_ids, thread_store_ids = await self._store_ids(ctx)
        if not store_ids:
            return self._output(
                arguments,
                turn,
                queries,
                [],
                "There are no files to search: no vector store is attached to this "
                "assistant or thread.",
            )
        if ctx.vector_search is None:
            return self._output(
                arguments, turn, queries, [], "Error: file search is not available on this server."
            )
        await self._wait_for_thread_stores(ctx, thread_store_ids)
        found = await ctx.vector_search.search(
            store_ids,
            queries[0] if len(queries) == 1 else queries,
            max_num_results=self.max_num_results,
            ranking_options=dict(self.ranking_options),
            filters=self.filters,
        )
        results = [
            {
                "file_id": r.file_id,
                "file_name": r.filename,
                "score": min(1.0, max(0.0, float(r.score))),
                "content": [{"type": "text", "text": r.text}],
            }
            for r in found[: self.max_num_results]
        ]
        if not results:
            note = "File search found nothing for " + ", ".join(
                json.dumps(q, ensure_ascii=False) for q in queries
            )
            return self._output(arguments, turn, queries, [], note + ".")
        return self._output(arguments, turn, queries, results, None)

    def unknown_outcome(self, name: str, arguments: dict[str, Any]) -> ToolOutput:
        # Never asked for: every call is repeatable.
        return self._output(
            arguments, 0, _queries(arguments), [], "Outcome unknown: the search was interrupted."
        )

    def _output(
        self,
        arguments: dict[str, Any],
        turn: int,
        queries: list[str],
        results: list[dict[str, Any]],
        note: str | None,
    ) -> ToolOutput:
        private: dict[str, Any] = {
            "turn": turn,
            "arguments": json.dumps(arguments, ensure_ascii=False),
            "queries": queries,
        }
        if note is not None:
            private["output"] = note
        details = {
            "type": "file_search",
            "file_search": {"ranking_options": dict(self.ranking_options), "results": results},
            PRIVATE: private,
        }
        output = note if note is not None else render(turn, queries, results)
        return ToolOutput(output=output, details=details)

    @staticmethod
    async def _turn(ctx: ToolContext) -> int:
        """How many file_search calls the run's steps hold before this one."""
        async with ctx.sessions() as session:
            steps = (
                await session.scalars(
                    select(RunStep.step_details)
                    .where(RunStep.run_id == ctx.run.id, RunStep.type == "tool_calls")
                    .order_by(RunStep.created_at, RunStep.seq)
                )
            ).all()
        count = 0
        for details in steps:
            for call in (details or {}).get("tool_calls", []):
                if ctx.call_id is not None and call.get("id") == ctx.call_id:
                    return count
                if _is_file_search(call):
                    count += 1
        return count

    @staticmethod
    async def _wait_for_thread_stores(ctx: ToolContext, store_ids: list[str]) -> None:
        """Wait (bounded) until no file the thread's stores held when the run began is
        being ingested."""
        if not store_ids:
            return
        until = ctx.run.created_at + THREAD_STORE_WAIT
        if ctx.deadline is not None:
            until = min(until, ctx.deadline)
        poll = _WAIT_POLL
        while True:
            async with ctx.sessions() as session:
                pending = await session.scalar(
                    select(func.count()).where(
                        VectorStoreFile.vector_store_id.in_(store_ids),
                        VectorStoreFile.status == "in_progress",
                        # What was there when the run began: files another client adds to a
                        # shared store meanwhile are not waited for.
                        VectorStoreFile.created_at <= ctx.run.created_at,
                    )
                )
                await session.commit()
            if not pending or time.time() >= until:
                return
            await asyncio.sleep(poll)
            # Backing off: a long ingestion is not polled four times a second for a minute.
            poll = min(poll * 1.5, 2.0)

    @staticmethod
    async def _store_ids(ctx: ToolContext) -> tuple[list[str], list[str]]:
        """The vector stores to search (the run's assistant's, then its thread's), and the
        thread's alone."""
        async with ctx.sessions() as session:
            assistant = await session.scalar(
                select(Assistant.tool_resources).where(Assistant.id == ctx.run.assistant_id)
            )
            thread = await session.scalar(
                select(Thread.tool_resources).where(Thread.id == ctx.run.thread_id)
            )
            await session.commit()
        thread_ids = search_store_ids(thread)
        return list(dict.fromkeys([*search_store_ids(assistant), *thread_ids])), thread_ids
