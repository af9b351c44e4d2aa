"""Threads: conversations that hold messages and runs.

The stores a thread's `vector_stores` helper and its messages' attachments create expire 7
days after their last use, as OpenAI's."""

from __future__ import annotations

from sqlalchemy import delete as sql_delete
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.core import ids
from hal9100.core.clock import now
from hal9100.core.resources import check_tool_resources
from hal9100.core.schemas import DeletedObject
from hal9100.db.models import (
    ACTIVE_RUN_STATUSES,
    Item,
    Message,
    ResponseEvents,
    Run,
    RunStep,
    Thread,
)
from hal9100.events.base import run_gone_event
from hal9100.messages.service import build_message
from hal9100.runtime import Runtime
from hal9100.threads.repository import ThreadRepository
from hal9100.threads.schemas import ThreadCreate, ThreadObject, ThreadUpdate
from hal9100.vector_stores import service as stores


def to_object(row: Thread) -> ThreadObject:
    return ThreadObject(
        id=row.id,
        created_at=row.created_at,
        tool_resources=row.tool_resources or {},
        metadata=row.metadata_ or {},
    )


async def build_thread(session: AsyncSession, runtime: Runtime, body: ThreadCreate) -> Thread:
    """Validate and add a thread with its initial messages, without committing (create and
    run adds its run in the same transaction); commit with `vector_stores.service.commit`,
    which queues the files of the stores made for it."""
    thread = Thread(
        id=ids.thread_id(),
        created_at=now(),
        tool_resources=await check_tool_resources(
            session,
            body.tool_resources,
            runtime=runtime,
            expires_after=dict(stores.THREAD_STORE_EXPIRY),
        ),
        metadata_=body.metadata or {},
    )
    session.add(thread)
    messages = [
        await build_message(
            session, thread.id, message, f"messages[{index}]", runtime=runtime, thread=thread
        )
        for index, message in enumerate(body.messages)
    ]
    # Flush the thread first: messages reference it.
    await session.flush()
    session.add_all(messages)
    return thread


async def create(session: AsyncSession, runtime: Runtime, body: ThreadCreate) -> ThreadObject:
    thread = await build_thread(session, runtime, body)
    await stores.commit(session, runtime)
    return to_object(thread)


async def retrieve(session: AsyncSession, thread_id: str) -> ThreadObject:
    return to_object(await ThreadRepository(session).get_or_404(thread_id))


async def update(
    session: AsyncSession, runtime: Runtime, thread_id: str, body: ThreadUpdate
) -> ThreadObject:
    row = await ThreadRepository(session).get_or_404(thread_id)
    if "tool_resources" in body.model_fields_set:
        row.tool_resources = await check_tool_resources(
            session,
            body.tool_resources,
            runtime=runtime,
            expires_after=dict(stores.THREAD_STORE_EXPIRY),
        )
    if "metadata" in body.model_fields_set:
        row.metadata_ = body.metadata or {}
    await stores.commit(session, runtime)
    return to_object(row)


async def delete(session: AsyncSession, runtime: Runtime, thread_id: str) -> DeletedObject:
    await ThreadRepository(session).ensure_exists(thread_id)
    # The thread, then its runs, are locked before any row goes, so this waits for a run's
    # executor writing at that moment instead of deadlocking with it on PostgreSQL: its
    # inserts hold the thread (the messages' key), a turn's end holds the run and then takes
    # its messages and steps. (SQLite ignores the clause; it has one writer.)
    await session.execute(select(Thread.id).where(Thread.id == thread_id).with_for_update())
    await session.execute(select(Run.id).where(Run.thread_id == thread_id).with_for_update())
    # Explicit deletes rather than trusting ON DELETE CASCADE: an SQLite connection opened
    # without foreign_keys=ON would silently keep the children.
    await session.execute(sql_delete(RunStep).where(RunStep.thread_id == thread_id))
    await session.execute(
        sql_delete(ResponseEvents).where(
            ResponseEvents.run_id.in_(select(Run.id).where(Run.thread_id == thread_id))
        )
    )
    # The active runs come from the delete itself, so a run started meanwhile is not missed.
    runs = await session.execute(
        sql_delete(Run).where(Run.thread_id == thread_id).returning(Run.id, Run.status)
    )
    active = [run_id for run_id, status in runs if status in ACTIVE_RUN_STATUSES]
    await session.execute(sql_delete(Message).where(Message.thread_id == thread_id))
    await session.execute(sql_delete(Item).where(Item.thread_id == thread_id))
    await session.execute(sql_delete(Thread).where(Thread.id == thread_id))
    await session.commit()
    # The runs went with their thread: their executors stop (finding no row, they write
    # nothing) and their streams end now rather than after a quiet spell.
    for run_id in active:
        await runtime.bus.request_cancel(run_id)
        await runtime.bus.publish(run_id, run_gone_event(run_id))
    return DeletedObject(id=thread_id, object="thread.deleted")
