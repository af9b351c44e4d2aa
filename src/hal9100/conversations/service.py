"""Conversations: threads seen through the Conversations API. A conversation created here is
a thread (its id `conv_...`), and any thread is a conversation."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.conversations import items as items_
from hal9100.conversations.schemas import (
    ConversationCreate,
    ConversationObject,
    ConversationUpdate,
    ItemList,
    ItemsCreate,
)
from hal9100.core import ids
from hal9100.core.clock import now
from hal9100.core.errors import not_found
from hal9100.core.pagination import ListParams
from hal9100.core.schemas import DeletedObject
from hal9100.db.models import Item, Message, Thread
from hal9100.messages.service import ensure_no_active_run
from hal9100.runtime import Runtime
from hal9100.threads import service as threads
from hal9100.threads.repository import ThreadRepository


def to_object(row: Thread) -> ConversationObject:
    return ConversationObject(id=row.id, created_at=row.created_at, metadata=row.metadata_ or {})


async def _thread(session: AsyncSession, conversation_id: str) -> Thread:
    row = await ThreadRepository(session).get(conversation_id)
    if row is None:
        raise not_found("conversation", conversation_id)
    return row


async def create(session: AsyncSession, body: ConversationCreate) -> ConversationObject:
    thread = Thread(id=ids.conversation_id(), created_at=now(), metadata_=body.metadata or {})
    session.add(thread)
    rows = items_.build_entries(thread.id, body.items or [], "items")
    await session.flush()
    session.add_all(rows)
    await session.commit()
    return to_object(thread)


async def retrieve(session: AsyncSession, conversation_id: str) -> ConversationObject:
    return to_object(await _thread(session, conversation_id))


async def update(
    session: AsyncSession, conversation_id: str, body: ConversationUpdate
) -> ConversationObject:
    row = await _thread(session, conversation_id)
    row.metadata_ = body.metadata or {}
    await session.commit()
    return to_object(row)


async def delete(session: AsyncSession, runtime: Runtime, conversation_id: str) -> DeletedObject:
    await _thread(session, conversation_id)
    await threads.delete(session, runtime, conversation_id)
    return DeletedObject(id=conversation_id, object="conversation.deleted")


async def add_items(
    session: AsyncSession, conversation_id: str, body: ItemsCreate, include: set[str]
) -> ItemList:
    await _thread(session, conversation_id)
    rows = items_.build_entries(conversation_id, body.items, "items")
    session.add_all(rows)
    # As for a message: nothing is added under a run that is building its prompt from the
    # thread (checked after the insert, in its transaction).
    await session.flush()
    await ensure_no_active_run(session, conversation_id)
    await session.commit()
    data = [items_.entry_item(row) for row in rows]
    return ItemList(
        data=data,
        first_id=data[0]["id"] if data else None,
        last_id=data[-1]["id"] if data else None,
        has_more=False,
    )


async def list_items(
    session: AsyncSession, conversation_id: str, params: ListParams, include: set[str]
) -> ItemList:
    await _thread(session, conversation_id)
    entries = await items_.thread_entries(session, conversation_id, include)
    return items_.page([e.item for e in entries], params)


async def _entry(
    session: AsyncSession, conversation_id: str, item_id: str, include: set[str]
) -> items_.Entry:
    await _thread(session, conversation_id)
    for entry in await items_.thread_entries(session, conversation_id, include):
        if entry.item.get("id") == item_id:
            return entry
    raise not_found("item", item_id)


async def retrieve_item(
    session: AsyncSession, conversation_id: str, item_id: str, include: set[str]
) -> dict[str, object]:
    return (await _entry(session, conversation_id, item_id, include)).item


async def delete_item(
    session: AsyncSession, conversation_id: str, item_id: str
) -> ConversationObject:
    entry = await _entry(session, conversation_id, item_id, set())
    # A run building its prompt from the thread, or waiting for the client's answer to a
    # call, must not see its history change.
    await ensure_no_active_run(session, conversation_id)
    source = entry.source
    if isinstance(source, Message | Item):
        await session.delete(source)
    else:
        # A tool call of a run: its step stays the run's record; the item is hidden.
        session.add(
            Item(
                id=ids.new_id("del_"),
                created_at=now(),
                thread_id=conversation_id,
                type=items_.DELETED,
                data={"id": item_id},
            )
        )
    await session.commit()
    return to_object(await _thread(session, conversation_id))
