"""Messages of a thread: what users write and what runs answer.

A message's attachments with the file_search tool (and v1's `file_ids`, read as such) go
into its thread's vector store (`core.resources.add_to_thread_store`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.core import ids
from hal9100.core.clock import now
from hal9100.core.errors import APIError, not_found
from hal9100.core.pagination import ListParams, envelope
from hal9100.core.resources import add_to_thread_store, check_file_refs
from hal9100.core.schemas import DeletedObject, ListResponse, dump_json
from hal9100.db.models import Message, Thread
from hal9100.db.rows import insert_rows
from hal9100.messages.repository import MessageRepository
from hal9100.messages.schemas import MessageCreate, MessageObject, MessageUpdate
from hal9100.runs.repository import RunRepository
from hal9100.runtime import Runtime
from hal9100.threads.repository import ThreadRepository
from hal9100.vector_stores import service as stores


def to_object(row: Message) -> MessageObject:
    return MessageObject(
        id=row.id,
        created_at=row.created_at,
        thread_id=row.thread_id,
        status=row.status,
        incomplete_details=row.incomplete_details,
        completed_at=row.completed_at,
        incomplete_at=row.incomplete_at,
        role=row.role,
        content=row.content,
        assistant_id=row.assistant_id,
        run_id=row.run_id,
        attachments=row.attachments if row.attachments is not None else [],
        metadata=row.metadata_ or {},
    )


def content_parts(body: MessageCreate) -> list[dict[str, Any]]:
    """The request's content in the stored (response) form."""
    if isinstance(body.content, str):
        return [{"type": "text", "text": {"value": body.content, "annotations": []}}]
    parts: list[dict[str, Any]] = []
    for part in body.content:
        if part.type == "text":
            parts.append({"type": "text", "text": {"value": part.text, "annotations": []}})
        elif part.type == "image_file":
            parts.append({"type": "image_file", "image_file": dump_json(part.image_file)})
        else:
            parts.append({"type": "image_url", "image_url": dump_json(part.image_url)})
    return parts


async def build_message(
    session: AsyncSession,
    thread_id: str,
    body: MessageCreate,
    param: str = "",
    *,
    runtime: Runtime | None = None,
    thread: Thread | None = None,
) -> Message:
    """Validate and build (not add) a message row; `param` prefixes error locations. Files
    it attaches for file_search are put in the thread's store (`thread`, else read by id);
    `vector_stores.service.commit` with `runtime` queues them (without it, the ingestion
    sweeper does, on its next pass)."""
    prefix = f"{param}." if param else ""
    parts = [] if isinstance(body.content, str) else body.content
    attachments = body.attachments or []
    await check_file_refs(
        session,
        [
            (part.image_file.file_id, f"{prefix}content[{index}].image_file.file_id")
            for index, part in enumerate(parts)
            if part.type == "image_file"
        ]
        + [
            (attachment.file_id, f"{prefix}attachments[{index}].file_id")
            for index, attachment in enumerate(attachments)
        ],
    )
    searched = [
        a.file_id for a in attachments if any(tool.type == "file_search" for tool in a.tools)
    ]
    if searched:
        if thread is None:
            thread = await ThreadRepository(session).get_or_404(thread_id)
        await add_to_thread_store(session, runtime, thread, searched)
    return Message(
        id=ids.message_id(),
        created_at=now(),
        thread_id=thread_id,
        status="completed",
        role=body.role,
        content=content_parts(body),
        attachments=dump_json(attachments),
        metadata_=body.metadata or {},
    )


async def ensure_no_active_run(session: AsyncSession, thread_id: str) -> None:
    active = await RunRepository(session).active_run_id(thread_id)
    if active is not None:
        raise APIError(
            400,
            f"Can't add messages to {thread_id} while a run {active} is active.",
        )


async def create(
    session: AsyncSession, runtime: Runtime, thread_id: str, body: MessageCreate
) -> MessageObject:
    # The thread itself is read only if attachments go into its vector store.
    await ThreadRepository(session).ensure_exists(thread_id)
    row = await build_message(session, thread_id, body, runtime=runtime)
    # Checked after the insert, in its transaction: on SQLite (which ignores the row lock the
    # check takes) that transaction holds the database's write lock by then, so a run that
    # another process adds is either seen here or added after this message.
    await insert_rows(session, [row])
    await ensure_no_active_run(session, thread_id)
    await stores.commit(session, runtime)
    return to_object(row)


async def _get(session: AsyncSession, thread_id: str, message_id: str) -> Message:
    await ThreadRepository(session).ensure_exists(thread_id)
    row = await MessageRepository(session).get_in_thread(thread_id, message_id)
    if row is None:
        raise not_found("message", message_id)
    return row


async def retrieve(session: AsyncSession, thread_id: str, message_id: str) -> MessageObject:
    return to_object(await _get(session, thread_id, message_id))


async def update(
    session: AsyncSession, thread_id: str, message_id: str, body: MessageUpdate
) -> MessageObject:
    row = await _get(session, thread_id, message_id)
    if "metadata" in body.model_fields_set:
        row.metadata_ = body.metadata or {}
    await session.commit()
    return to_object(row)


async def delete(session: AsyncSession, thread_id: str, message_id: str) -> DeletedObject:
    await _get(session, thread_id, message_id)
    await MessageRepository(session).delete_by_id(message_id)
    await session.commit()
    return DeletedObject(id=message_id, object="thread.message.deleted")


async def list_(
    session: AsyncSession, thread_id: str, params: ListParams, run_id: str | None
) -> ListResponse[MessageObject]:
    await ThreadRepository(session).ensure_exists(thread_id)
    rows, has_more = await MessageRepository(session).page_in_thread(thread_id, params, run_id)
    return envelope([to_object(r) for r in rows], has_more)
