from __future__ import annotations

from sqlalchemy import select

from hal9100.core.pagination import ListParams, paginate
from hal9100.core.repository import Repository
from hal9100.db.models import Run, RunStep

# A thread holds at most one run in these states; OpenAI refuses new runs and messages then.
ACTIVE_STATUSES = ("queued", "in_progress", "requires_action", "cancelling")


class RunRepository(Repository[Run]):
    model = Run
    noun = "run"

    async def active_run_id(self, thread_id: str) -> str | None:
        return await self.session.scalar(
            select(Run.id)
            .where(Run.thread_id == thread_id, Run.status.in_(ACTIVE_STATUSES))
            .limit(1)
        )

    async def page_steps(self, run_id: str, params: ListParams) -> tuple[list[RunStep], bool]:
        return await paginate(
            self.session, RunStep, select(RunStep).where(RunStep.run_id == run_id), params
        )
