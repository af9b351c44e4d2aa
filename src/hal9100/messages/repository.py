from __future__ import annotations

from sqlalchemy import bindparam, select

from hal9100.core.pagination import ListParams
from hal9100.core.repository import Repository
from hal9100.db.models import Message

# A thread's messages in order, read for every model turn's prompt; built once (building and
# compiling it anew cost more than running it).
_ALL_IN_THREAD = (
    select(Message)
    .where(Message.thread_id == bindparam("thread_id"))
    .order_by(Message.created_at, Message.seq)
)


class MessageRepository(Repository[Message]):
    model = Message
    noun = "message"

    async def get_in_thread(self, thread_id: str, message_id: str) -> Message | None:
        return await self.session.scalar(
            select(Message).where(Message.id == message_id, Message.thread_id == thread_id)
        )

    async def page_in_thread(
        self, thread_id: str, params: ListParams, run_id: str | None = None
    ) -> tuple[list[Message], bool]:
        query = select(Message).where(Message.thread_id == thread_id)
        if run_id is not None:
            query = query.where(Message.run_id == run_id)
        return await self.page(params, query)

    async def all_in_thread(self, thread_id: str) -> list[Message]:
        result = await self.session.scalars(_ALL_IN_THREAD, {"thread_id": thread_id})
        return list(result.all())
