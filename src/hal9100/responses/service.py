"""Responses: each one a run of the engine on a thread, the conversation's when it names one,
else a thread of its own (its `previous_response_id` chain is read from the earlier
responses' threads). Its input items are written before the run is queued, as the
Conversations API writes items; what it produces is its run's messages and steps."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy import null, select, update
from sqlalchemy.exc import IntegrityError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.assistants.repository import AssistantRepository
from hal9100.config import Settings
from hal9100.conversations import items as items_
from hal9100.conversations.schemas import ItemList
from hal9100.core import ids
from hal9100.core.clock import now
from hal9100.core.errors import APIError, bad_request, not_found
from hal9100.core.pagination import ListParams
from hal9100.core.text import storable
from hal9100.db.models import (
    Assistant,
    File,
    Item,
    Message,
    ResponseEvents,
    Run,
    RunStatus,
    RunStep,
    Thread,
    VectorStore,
)
from hal9100.engine.state import TERMINAL
from hal9100.events.base import TERMINAL_EVENTS
from hal9100.ingestion.chunking import count_tokens
from hal9100.llm.base import (
    ChatMessage,
    ChatRequest,
    LLMError,
    TextDelta,
    Usage,
    estimate_tokens,
)
from hal9100.queue.base import EXECUTE_RUN
from hal9100.responses import objects, tools
from hal9100.responses import prompt as prompt_
from hal9100.responses.recorder import context
from hal9100.responses.schemas import (
    CompactRequest,
    ConversationRef,
    ResponseCreate,
    TokenCount,
)
from hal9100.runs import service as runs
from hal9100.runs.prompt import message_tokens, prompt_tokens
from hal9100.runtime import Runtime
from hal9100.threads import service as threads

_VARIABLE = re.compile(r"\{\{\s*([a-zA-Z0-9_]+)\s*\}\}")


async def stored(session: AsyncSession, response_id: str) -> Run:
    run = await session.scalar(select(Run).where(Run.id == response_id))
    if run is None or run.response is None or not run.response.get("store", True):
        raise not_found("response", response_id)
    return run


def _input_of(given: str | list[Any] | None) -> list[Any]:
    if given is None:
        return []
    if isinstance(given, str):
        return [{"type": "message", "role": "user", "content": given}]
    return given


def _format(body: ResponseCreate) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(`text` to echo, the run's response_format)."""
    if body.text is None:
        return None, None
    text = body.text.model_dump(mode="json", by_alias=True, exclude_none=True)
    fmt = text.get("format")
    if not fmt or fmt["type"] == "text":
        return text, None
    if fmt["type"] == "json_object":
        return text, {"type": "json_object"}
    schema = {k: v for k, v in fmt.items() if k != "type"}
    return text, {"type": "json_schema", "json_schema": schema}


def _instructions(assistant: Assistant | None, body: ResponseCreate) -> str:
    if body.instructions is not None:
        return body.instructions
    if assistant is None:
        return ""
    text = assistant.instructions or ""
    variables = body.prompt.variables if body.prompt is not None else None
    if variables:
        for name, value in variables.items():
            if not isinstance(value, str):
                raise bad_request(
                    f"Invalid type for 'prompt.variables.{name}': this server substitutes "
                    "string variables only.",
                    f"prompt.variables.{name}",
                )

        def substitute(match: re.Match[str]) -> str:
            return str(variables.get(match.group(1), match.group(0)))

        text = _VARIABLE.sub(substitute, text)
    return text


def _assistant_tools(assistant: Assistant) -> list[Any]:
    """A stored assistant's tools, as a response's `tools` gives them (its tool_resources
    become the stores and files of its file_search and code_interpreter)."""
    resources = assistant.tool_resources or {}
    given = []
    for tool in assistant.tools or []:
        kind = tool.get("type")
        if kind == "function":
            function = tool.get("function") or {}
            given.append({"type": "function", **function})
        elif kind == "file_search":
            options = tool.get("file_search") or {}
            search = {
                "type": "file_search",
                "vector_store_ids": list(
                    (resources.get("file_search") or {}).get("vector_store_ids") or []
                ),
            }
            if options.get("max_num_results") is not None:
                search["max_num_results"] = options["max_num_results"]
            given.append(search)
        elif kind == "code_interpreter":
            files = list((resources.get("code_interpreter") or {}).get("file_ids") or [])
            given.append(
                {"type": "code_interpreter", "container": {"type": "auto", "file_ids": files}}
            )
        else:
            raise bad_request(
                f"The assistant's '{kind}' tool cannot be used by a response on this server "
                "(function, file_search and code_interpreter tools can).",
                "prompt.id",
            )
    return given


async def _check_outputs(session: AsyncSession, run: Run, rows: list[Message | Item]) -> None:
    """Every function call output answers a call of the context, and every call the model
    made in the previous response is answered (as OpenAI requires)."""
    given_list = [
        row.data.get("call_id")
        for row in rows
        if isinstance(row, Item) and row.type == "function_call_output"
    ]
    given = set(given_list)
    if len(given) != len(given_list):
        raise bad_request("Duplicate function call output for one call_id in 'input'.", "input")
    if not given and not (run.response or {}).get("previous_response_id"):
        return  # nothing answers a call, and no earlier response waits for answers
    entries = await context(session, run)
    calls = {str(e.item.get("call_id")) for e in entries if e.item.get("type") == "function_call"}
    answered = {
        str(e.item.get("call_id")) for e in entries if e.item.get("type") == "function_call_output"
    }
    for call_id in given:
        if call_id in answered - given:
            raise bad_request(f"The function call {call_id} has an output already.", "input")
        if call_id not in calls:
            raise bad_request(
                f"No tool call found for function call output with call_id {call_id}.", "input"
            )
    previous = (run.response or {}).get("previous_response_id")
    if previous:
        earlier = await session.scalar(select(Run).where(Run.id == previous))
        if earlier is not None:
            made = [
                str(e.item.get("call_id"))
                for e in entries
                if e.item.get("type") == "function_call"
                and isinstance(e.source, RunStep)
                and e.source.run_id == earlier.id
            ]
            missing = [c for c in made if c not in answered]
            if missing:
                raise bad_request(f"No tool output found for function call {missing[0]}.", "input")


async def _check_tool_objects(session: AsyncSession, run_tools: list[dict[str, Any]]) -> None:
    """The vector stores and files the tools name exist."""
    for index, tool in enumerate(run_tools):
        wanted = tool.get("vector_store_ids") or []
        if wanted:
            found = set(
                await session.scalars(select(VectorStore.id).where(VectorStore.id.in_(wanted)))
            )
            for store_id in wanted:
                if store_id not in found:
                    raise not_found("vector store", store_id, f"tools[{index}].vector_store_ids")
        files = tool.get("file_ids") or []
        if files:
            found = set(await session.scalars(select(File.id).where(File.id.in_(files))))
            for file_id in files:
                if file_id not in found:
                    raise not_found("file", file_id, f"tools[{index}].container.file_ids")


async def create(session: AsyncSession, runtime: Runtime, body: ResponseCreate) -> tuple[Run, str]:
    """Write the response and queue it; returns it and the bus position before its events."""
    store = True if body.store is None else body.store
    if body.background and not store:
        raise bad_request("Background responses must be stored: set 'store' to true.", "store")
    if body.conversation is not None and body.previous_response_id is not None:
        raise bad_request(
            "Mutually exclusive parameters: 'previous_response_id' and 'conversation' "
            "cannot be used together.",
            "previous_response_id",
        )
    assistant = None
    if body.prompt is not None:
        assistant = await AssistantRepository(session).get(body.prompt.id)
        if assistant is None:
            raise not_found("prompt", body.prompt.id, "prompt.id")
    model = body.model or (assistant.model if assistant is not None else None)
    if not model:
        raise bad_request("Missing required parameter: 'model'.", "model")
    given_tools = body.tools
    if given_tools is None and assistant is not None:
        given_tools = _assistant_tools(assistant)
    echoed_tools, run_tools = tools.run_tools(given_tools)
    await _check_tool_objects(session, run_tools)
    echoed_choice, run_choice = tools.run_tool_choice(body.tool_choice, run_tools)
    text, response_format = _format(body)
    if response_format is None and assistant is not None and body.text is None:
        response_format = (
            assistant.response_format if isinstance(assistant.response_format, dict) else None
        )
    conversation_id = _conversation_id(body.conversation)
    if conversation_id is not None:
        thread = await session.scalar(select(Thread).where(Thread.id == conversation_id))
        if thread is None:
            raise not_found("conversation", conversation_id, "conversation")
    else:
        thread = Thread(id=ids.thread_id(), created_at=now(), metadata_={})
        session.add(thread)
    if body.previous_response_id is not None:
        previous = await _previous(session, body.previous_response_id)
        if previous.status not in TERMINAL:
            raise bad_request(
                f"Previous response {previous.id} is still {objects.status_of(previous)}: "
                "wait for it to end.",
                "previous_response_id",
            )
    rows = items_.build_entries(thread.id, _input_of(body.input), "input")
    created = now()
    settings: dict[str, Any] = {
        "previous_response_id": body.previous_response_id,
        "conversation": conversation_id,
        "store": store,
        "background": bool(body.background),
        "instructions": body.instructions
        if body.instructions is not None
        else (_instructions(assistant, body) if assistant is not None else None),
        "tools": echoed_tools,
        "tool_choice": echoed_choice,
        "text": text,
        "include": list(body.include or []),
        "max_tool_calls": body.max_tool_calls,
        "truncation": body.truncation or "disabled",
        "reasoning": body.reasoning.model_dump(mode="json", exclude_none=True)
        if body.reasoning is not None
        else None,
        "prompt": body.prompt.model_dump(mode="json") if body.prompt is not None else None,
        "prompt_cache_key": body.prompt_cache_key,
        "prompt_cache_retention": body.prompt_cache_retention,
        "safety_identifier": body.safety_identifier,
        "user": body.user,
        "top_logprobs": body.top_logprobs,
        "input_ids": [items_.entry_item(row)["id"] for row in rows],
    }
    run = Run(
        id=ids.response_id(),
        created_at=created,
        thread_id=thread.id,
        assistant_id=assistant.id if assistant is not None else "",
        status=RunStatus.QUEUED,
        expires_at=created + runtime.settings.run_expiry_seconds,
        model=model,
        instructions=_instructions(assistant, body),
        tools=run_tools,
        metadata_=body.metadata or {},
        temperature=body.temperature
        if body.temperature is not None
        else (assistant.temperature if assistant is not None else None),
        top_p=body.top_p
        if body.top_p is not None
        else (assistant.top_p if assistant is not None else None),
        max_completion_tokens=body.max_output_tokens,
        truncation_strategy={"type": "auto", "last_messages": None},
        tool_choice=run_choice,
        parallel_tool_calls=True if body.parallel_tool_calls is None else body.parallel_tool_calls,
        response_format=response_format,
        reasoning_effort=body.reasoning.effort if body.reasoning is not None else None,
        include=[],
        lease_expires_at=time.time() + runtime.settings.lease_seconds,
        epoch=0,
        cancel_requested=False,
        response=settings,
    )
    try:
        await session.flush()
        session.add_all(rows)
        await session.flush()
        await _check_outputs(session, run, rows)
        if conversation_id is not None:
            try:
                await runs.ensure_idle(session, conversation_id)
            except APIError as exc:
                raise _busy(conversation_id) from exc
        session.add(run)
        await session.commit()
    except IntegrityError as exc:
        # The conversation went (deleted meanwhile), or another response (or run) of it
        # started meanwhile.
        await session.rollback()
        gone = await session.scalar(select(Thread.id).where(Thread.id == conversation_id))
        if conversation_id is not None and gone is None:
            raise not_found("conversation", conversation_id, "conversation") from exc
        raise _busy(conversation_id) from exc
    position = await runtime.bus.position(run.id)
    # A conversation's code_interpreter kernel lives in one worker: its runs go there.
    worker = await runs.route(runtime, run.thread_id, run.tools)
    await runtime.queue.enqueue(EXECUTE_RUN, run.id, worker=worker)
    return run, position


def _conversation_id(given: str | ConversationRef | None) -> str | None:
    return given.id if isinstance(given, ConversationRef) else given


def _busy(conversation_id: str | None) -> APIError:
    return bad_request(
        f"Another response is in progress for conversation {conversation_id}.", "conversation"
    )


async def wait_done(runtime: Runtime, session: AsyncSession, run: Run, position: str) -> Run:
    """Wait until the response has ended: its events say so, or a look at its row when they
    are quiet (a bus that restarted loses nothing here)."""
    ended = asyncio.Event()

    async def watch() -> None:
        async for event in runtime.bus.subscribe(run.id, position):
            if event.event in TERMINAL_EVENTS:
                break
        ended.set()

    watcher = asyncio.create_task(watch())
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), timeout=runtime.settings.stream_check_seconds)
            async with runtime.sessions() as fresh:
                status = await fresh.scalar(select(Run.status).where(Run.id == run.id))
            if status is None:
                raise not_found("response", run.id)
            if status in TERMINAL:
                try:
                    await session.refresh(run)
                except InvalidRequestError as exc:  # deleted in between
                    raise not_found("response", run.id) from exc
                return run
            if watcher.done():
                # The bus gave up (Redis gone for long): look at the row now and then.
                ended.clear()
                await asyncio.sleep(min(1.0, runtime.settings.stream_check_seconds))
    finally:
        watcher.cancel()
        with contextlib.suppress(BaseException):
            await watcher


async def forget(session: AsyncSession, run: Run) -> None:
    """A response that is not to be stored: gone once answered (its thread with it, unless
    the thread is a conversation, which keeps what the response added)."""
    if (run.response or {}).get("conversation"):
        # The run stays the conversation's record; the response object goes with its
        # settings (SQL NULL: the retention sweep and lookups pass it by).
        await session.execute(update(Run).where(Run.id == run.id).values(response=null()))
        await session.execute(sql_delete(ResponseEvents).where(ResponseEvents.run_id == run.id))
        await session.commit()
        return
    thread_id = run.thread_id
    await session.execute(sql_delete(ResponseEvents).where(ResponseEvents.run_id == run.id))
    await session.execute(sql_delete(RunStep).where(RunStep.run_id == run.id))
    await session.execute(sql_delete(Run).where(Run.id == run.id))
    await session.execute(sql_delete(Message).where(Message.thread_id == thread_id))
    await session.execute(sql_delete(Item).where(Item.thread_id == thread_id))
    await session.execute(sql_delete(Thread).where(Thread.id == thread_id))
    await session.commit()


async def retrieve(session: AsyncSession, response_id: str, include: set[str]) -> dict[str, Any]:
    return await objects.to_object(session, await stored(session, response_id), include)


async def delete(session: AsyncSession, runtime: Runtime, response_id: str) -> dict[str, Any]:
    run = await stored(session, response_id)
    if (run.response or {}).get("conversation"):
        # The conversation keeps its items; the response object goes.
        if run.status not in TERMINAL:
            await runs.cancel(session, runtime, run.thread_id, run.id)
        await forget(session, await stored(session, response_id))
    else:
        await threads.delete(session, runtime, run.thread_id)
    return {"id": response_id, "object": "response", "deleted": True}


async def cancel(session: AsyncSession, runtime: Runtime, response_id: str) -> dict[str, Any]:
    run = await stored(session, response_id)
    if not (run.response or {}).get("background"):
        raise bad_request("Only background responses can be cancelled.")
    if run.status in TERMINAL and run.status != RunStatus.CANCELLED:
        shown = objects.status_of(run)
        raise bad_request(f"Cannot cancel a {shown} response.")
    if run.status not in TERMINAL:
        await runs.cancel(session, runtime, run.thread_id, run.id)
    await session.refresh(run)
    return await objects.to_object(session, run)


async def input_items(
    session: AsyncSession, response_id: str, params: ListParams, include: set[str]
) -> ItemList:
    run = await stored(session, response_id)
    wanted = list((run.response or {}).get("input_ids") or [])
    found = {
        e.item["id"]: e.item
        for e in await items_.thread_entries(session, run.thread_id, include)
        if e.item.get("id") in wanted
    }
    return items_.page([found[item_id] for item_id in wanted if item_id in found], params)


async def input_tokens(session: AsyncSession, body: TokenCount) -> dict[str, Any]:
    """How many tokens the request's prompt would hold: its instructions, its context (the
    conversation, or the previous_response_id chain), its input and its tools' definitions,
    counted with OpenAI's tokenizer."""
    conversation_id = _conversation_id(body.conversation)
    if conversation_id is not None and body.previous_response_id is not None:
        raise bad_request(
            "Mutually exclusive parameters: 'previous_response_id' and 'conversation' "
            "cannot be used together.",
            "previous_response_id",
        )
    if conversation_id is not None:
        found = await session.scalar(select(Thread.id).where(Thread.id == conversation_id))
        if found is None:
            raise not_found("conversation", conversation_id, "conversation")
    if body.previous_response_id is not None:
        await _previous(session, body.previous_response_id)
    _, run_tools = tools.run_tools(body.tools)
    probe = Run(
        id="",
        thread_id=conversation_id or "",
        instructions=body.instructions or "",
        response={
            "previous_response_id": body.previous_response_id,
            "conversation": conversation_id,
        },
    )
    rows = items_.build_entries(conversation_id or "", _input_of(body.input), "input")
    given = [items_.Entry(items_.entry_item(row), index, row) for index, row in enumerate(rows)]
    entries = [*await context(session, probe), *given]
    messages = prompt_.chat_messages(entries, {})
    if probe.instructions:
        messages.insert(0, ChatMessage("system", probe.instructions))
    # OpenAI's tokenizer (o200k), offline: the count a client of OpenAI's API expects. A
    # message costs 4 more, an image a fixed 256 (pixels are not seen here).
    total = sum(json_tokens(tool) for tool in run_tools)
    total += sum(message_tokens(message, count_tokens) for message in messages)
    return {"object": "response.input_tokens", "input_tokens": total}


def json_tokens(value: Any) -> int:
    return count_tokens(json.dumps(value, separators=(",", ":")))


RETENTION_BATCH = 500


def retention_check_seconds(settings: Settings) -> float:
    """How often responses past their retention are looked for (a scan of the runs table):
    every ten minutes, or a quarter of the retention if that is shorter."""
    return min(600.0, max(0.1, settings.response_retention_days * 86400 / 4))


async def drop_expired(runtime: Runtime) -> int:
    """Forget the stored responses older than HAL9100_RESPONSE_RETENTION_DAYS that have
    ended; returns how many."""
    days = runtime.settings.response_retention_days
    if days <= 0:
        return 0
    cutoff = now() - int(days * 86400)
    async with runtime.sessions() as session:
        old = (
            await session.scalars(
                select(Run.id)
                .where(
                    Run.id.startswith(ids.RESPONSE_PREFIX),
                    Run.response.is_not(None),
                    Run.created_at < cutoff,
                    Run.status.in_(TERMINAL),
                )
                # A batch per check: a backlog goes over the following ones.
                .limit(RETENTION_BATCH)
            )
        ).all()
    dropped = 0
    for response_id in old:
        async with runtime.sessions() as session:
            run = await session.scalar(select(Run).where(Run.id == response_id))
            if run is None or run.response is None or not run.response.get("store", True):
                # Gone meanwhile, or forgotten already (another worker's sweep may have
                # cleared it: its thread is then a conversation's, never to be deleted).
                continue
            try:
                if (run.response or {}).get("conversation"):
                    await forget(session, run)
                else:
                    await threads.delete(session, runtime, run.thread_id)
            except APIError:
                continue  # its thread was deleted meanwhile
            dropped += 1
    return dropped


COMPACTION_REQUEST = (
    "Compact the conversation above so that it can go on in a smaller context. Its user "
    "messages are kept as they are; write a summary of everything else: what was asked "
    "and answered, the tool calls made and what they returned, facts established, "
    "decisions taken and what is still open. Be complete and precise, and write only the "
    "summary."
)


async def compact(session: AsyncSession, runtime: Runtime, body: CompactRequest) -> dict[str, Any]:
    """`POST /responses/compact`: the context (the previous_response_id chain and the
    input) compacted by the model into its user messages and one `compaction` item holding
    a summary of the rest, to send as the input of the next request."""
    if body.previous_response_id is not None:
        await _previous(session, body.previous_response_id)
    probe = Run(
        id="",
        thread_id="",
        instructions=body.instructions or "",
        response={"previous_response_id": body.previous_response_id},
    )
    rows = items_.build_entries("", _input_of(body.input), "input")
    given = [items_.Entry(items_.entry_item(row), index, row) for index, row in enumerate(rows)]
    entries = [*await context(session, probe), *given]
    await session.rollback()  # the model's answer can take a while: no connection held
    messages = prompt_.chat_messages(entries, {})
    if not messages:
        raise bad_request(
            "There is nothing to compact: give 'input' or 'previous_response_id'.", "input"
        )
    system = [ChatMessage("system", body.instructions)] if body.instructions else []
    request = ChatRequest(
        model=body.model,
        messages=[*system, *messages, ChatMessage("user", COMPACTION_REQUEST)],
    )
    summary: list[str] = []
    usage = None
    try:
        async for event in runtime.router.resolve(body.model).backend.stream(request):
            if isinstance(event, TextDelta):
                summary.append(event.text)
            elif isinstance(event, Usage):
                usage = event
    except LLMError as exc:
        raise _llm_error(exc) from exc
    text = storable("".join(summary))
    if usage is None:
        usage = Usage(prompt_tokens(request.messages), estimate_tokens(text))
    kept = [
        e.item for e in entries if e.item.get("type") == "message" and e.item.get("role") == "user"
    ]
    return {
        "id": ids.response_id(),
        "object": "response.compaction",
        "output": [*kept, items_.compaction_item(text)],
        "created_at": now(),
        "usage": {
            "input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        },
    }


def _llm_error(exc: LLMError) -> APIError:
    """A model server's failure, answered as OpenAI answers its own."""
    if exc.kind == "rate_limit":
        return APIError(429, exc.message, type="rate_limit_error", code="rate_limit_exceeded")
    if exc.kind in ("invalid_request", "config"):
        return bad_request(exc.message, "model" if exc.kind == "config" else None)
    return APIError(
        500, f"The model server failed: {exc.message}", type="server_error", code="server_error"
    )


async def _previous(session: AsyncSession, response_id: str) -> Run:
    try:
        return await stored(session, response_id)
    except APIError as exc:
        raise bad_request(
            f"Previous response with id '{response_id}' not found.",
            "previous_response_id",
            "previous_response_not_found",
        ) from exc
