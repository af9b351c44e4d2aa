"""A worker's lease on a run: claimed with a guarded UPDATE, renewed while it works, given up
at the end. Every claim bumps the run's `epoch`; the engine's writes are fenced on it, so a
worker that lost its lease (it stalled, another took over) writes nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import bindparam, func, or_, select, update

from hal9100.core.clock import now
from hal9100.db.engine import SessionMaker
from hal9100.db.models import Run, RunStatus
from hal9100.engine.state import RUNNABLE


def _claim(statuses: tuple[RunStatus, ...], **values: Any) -> Any:
    """A claim's guarded UPDATE, built once (building and compiling it on every run cost
    more than running it): the run is free (no lease, or a lapsed one) and in `statuses`."""
    free = or_(Run.lease_owner.is_(None), Run.lease_expires_at < bindparam("stamp"))
    return (
        update(Run)
        .where(Run.id == bindparam("run_id"), Run.status.in_([s.value for s in statuses]), free)
        .values(
            lease_owner=bindparam("owner"),
            lease_expires_at=bindparam("expires"),
            epoch=Run.epoch + 1,
            **values,
        )
        .returning(Run)
        # A fresh session: no object of its to keep in step with the update.
        .execution_options(synchronize_session=False)
    )


_START = _claim(
    (RunStatus.QUEUED,),
    status=RunStatus.IN_PROGRESS,
    started_at=func.coalesce(Run.started_at, bindparam("started")),
)
_TAKE_OVER = _claim(RUNNABLE)


class Lease:
    def __init__(self, sessions: SessionMaker, worker_id: str, seconds: float) -> None:
        self.sessions = sessions
        self.worker_id = worker_id
        self.seconds = seconds

    async def claim(self, run_id: str) -> tuple[Run, bool] | None:
        """Take the lease on a run that has work. Returns the run, and whether this claim
        also started it (queued -> in_progress)."""
        stamp = time.time()
        params = {
            "run_id": run_id,
            "owner": self.worker_id,
            "stamp": stamp,
            "expires": stamp + self.seconds,
            "started": now(),
        }
        async with self.sessions() as session:
            # The common case in one statement: a queued run (new, or resumed with tool
            # outputs) is claimed and started together.
            run = await session.scalar(_START, params)
            started = run is not None
            if run is None:
                # Taking over a run in progress or being cancelled (its worker died).
                run = await session.scalar(_TAKE_OVER, params)
            if run is None:
                await session.rollback()
                return None
            await session.commit()
            return run, started

    async def keep(self, run_id: str, epoch: int, stop: asyncio.Future[str]) -> None:
        """Renew the lease until cancelled; resolve `stop` when the lease is lost or the
        database says the run is being cancelled (a cancel signal that was missed)."""
        while not stop.done():
            await asyncio.sleep(self.seconds / 3)
            async with self.sessions() as session:
                result = await session.execute(
                    update(Run)
                    .where(Run.id == run_id, Run.epoch == epoch, Run.lease_owner == self.worker_id)
                    .values(lease_expires_at=time.time() + self.seconds)
                )
                status = await session.scalar(select(Run.status).where(Run.id == run_id))
                await session.commit()
            if not getattr(result, "rowcount", 0):
                if not stop.done():
                    stop.set_result("lease_lost")
            elif status == RunStatus.CANCELLING and not stop.done():
                stop.set_result(RunStatus.CANCELLED)

    async def release(self, run_id: str, epoch: int) -> None:
        async with self.sessions() as session:
            await session.execute(
                update(Run)
                .where(Run.id == run_id, Run.epoch == epoch, Run.lease_owner == self.worker_id)
                .values(lease_owner=None, lease_expires_at=None)
            )
            await session.commit()
