"""A run's execution states and the guarded writes that move it between them, shared by
the engine, the sweeper and every API that starts, cancels or resumes runs.

Every transition is a guarded UPDATE: it names the states it may leave (and, for an engine,
the lease epoch it holds), so two processes racing on one run cannot both win.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.ext.asyncio import AsyncSession

from hal9100.core.clock import now
from hal9100.db.models import ACTIVE_RUN_STATUSES, Run, RunStatus

# A thread holds at most one run in these states (OpenAI refuses new runs and messages then);
# they are also the states a run can expire from.
ACTIVE = ACTIVE_RUN_STATUSES
# States in which a run has work for an engine.
RUNNABLE = (RunStatus.QUEUED, RunStatus.IN_PROGRESS, RunStatus.CANCELLING)
# A run that is not active is finished for good; derived so that no state is in neither.
TERMINAL = tuple(status for status in RunStatus if status not in ACTIVE)


class LeaseLost(Exception):
    """Another worker owns the run now (its epoch moved on): stop without writing."""


async def transition(
    session: AsyncSession,
    run_id: str,
    from_statuses: tuple[RunStatus, ...],
    values: dict[str, Any],
    *,
    epoch: int | None = None,
) -> Run | None:
    """Apply `values` if the run is still in one of `from_statuses` (and at `epoch`, for an
    engine). Returns the updated run, or None when the guard failed. Does not commit."""
    statement = _transition_statement(from_statuses, tuple(values), epoch is not None)
    params = {f"v_{name}": value for name, value in values.items()}
    params["run_id"] = run_id
    if epoch is not None:
        params["fence_epoch"] = epoch
    run: Run | None = await session.scalar(statement, params)
    return run


@functools.cache
def _transition_statement(
    from_statuses: tuple[RunStatus, ...], columns: tuple[str, ...], fenced: bool
) -> Any:
    """The guarded UPDATE for one shape of transition, built once: building and compiling
    it anew on every turn cost more than running it. Its values are parameters."""
    query = update(Run).where(
        Run.id == bindparam("run_id"), Run.status.in_([s.value for s in from_statuses])
    )
    if fenced:
        query = query.where(Run.epoch == bindparam("fence_epoch"))
    # One round trip: the guarded UPDATE hands back the row it changed (SQLite >= 3.35 and
    # PostgreSQL both support RETURNING), loaded over any copy the session holds; so the
    # session's other objects need no matching against the criteria (synchronize_session).
    return (
        query.values({name: bindparam(f"v_{name}") for name in columns})
        .returning(Run)
        .execution_options(populate_existing=True, synchronize_session=False)
    )


def terminal_values(status: RunStatus, **extra: Any) -> dict[str, Any]:
    """Column values for entering terminal `status` (timestamps, no pending action)."""
    values: dict[str, Any] = {
        "status": status,
        "required_action": None,
        "open_calls": None,
        "lease_owner": None,
        "lease_expires_at": None,
        **extra,
    }
    stamp = now()
    if status == RunStatus.COMPLETED:
        values["completed_at"] = stamp
    elif status == RunStatus.FAILED:
        values["failed_at"] = stamp
    elif status == RunStatus.CANCELLED:
        values["cancelled_at"] = stamp
    elif status == RunStatus.INCOMPLETE:
        values["completed_at"] = stamp
    return values
