from __future__ import annotations

from sqlalchemy import bindparam, select

from hal9100.core.pagination import ListParams, paginate
from hal9100.core.repository import Repository
from hal9100.db.engine import locks_rows
from hal9100.db.models import Run, RunStep, Thread
from hal9100.engine.state import ACTIVE

# Built once: making and compiling the statement anew cost more than running it.
_ACTIVE_RUN = (
    select(Run.id)
    .where(Run.thread_id == bindparam("thread_id"), Run.status.in_([s.value for s in ACTIVE]))
    .limit(1)
)


class RunRepository(Repository[Run]):
    model = Run
    noun = "run"

    async def active_run_id(self, thread_id: str) -> str | None:
        """The thread's active run, if any.

        Callers ask before adding a run or a message, so the thread's row is locked first,
        until the transaction ends: requests racing on one thread (through several API
        processes) are serialized, and the later one sees the run the earlier one added. `FOR
        NO KEY UPDATE` rather than `FOR UPDATE`, so that executors inserting messages and
        steps (foreign keys to the thread) are not held up. SQLite ignores the clause; it
        has a single writer anyway, so the lock's statement is not sent there.
        """
        if locks_rows(self.session):
            await self.session.execute(
                select(Thread.id).where(Thread.id == thread_id).with_for_update(key_share=True)
            )
        return await self.session.scalar(_ACTIVE_RUN, {"thread_id": thread_id})

    async def page_steps(self, run_id: str, params: ListParams) -> tuple[list[RunStep], bool]:
        return await paginate(
            self.session, RunStep, select(RunStep).where(RunStep.run_id == run_id), params
        )
