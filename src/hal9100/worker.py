"""The worker: takes runs off the queue and hands them to the engine, and sweeps for runs
that need attention (expired, or held by a worker that died).

Embedded mode runs one inside the API process; production runs `hal9100 worker` processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid

from sqlalchemy import ColumnElement, or_, select, update

from hal9100.config import Settings
from hal9100.core import ids
from hal9100.core.clock import now
from hal9100.db.engine import make_engine, make_sessionmaker
from hal9100.db.models import Run, RunStatus, VectorStoreFile
from hal9100.engine.loop import Engine
from hal9100.engine.recorder import Execution
from hal9100.engine.state import ACTIVE, RUNNABLE, terminal_values, transition
from hal9100.ingestion.job import Ingestor
from hal9100.queue.base import EXECUTE_RUN, INGEST_FILE
from hal9100.responses import service as responses
from hal9100.responses.recorder import ResponsesRecorder
from hal9100.runs.lifecycle import close_open_work, run_event
from hal9100.runs.recorder import AssistantsRecorder
from hal9100.runs.service import route
from hal9100.runtime import Runtime, connect_runtime, make_sandbox

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(self, runtime: Runtime, concurrency: int) -> None:
        self.runtime = runtime
        self.concurrency = concurrency
        worker_id = new_worker_id()
        self.sandbox = make_sandbox(runtime.settings, runtime.directory, worker_id)
        self.engine = Engine(
            sessions=runtime.sessions,
            bus=runtime.bus,
            router=runtime.router,
            storage=runtime.storage,
            settings=runtime.settings,
            worker_id=worker_id,
            recorder=self._recorder,
            vector_search=runtime.vector_search,
            sandbox=self.sandbox,
        )
        self.ingestor = Ingestor(
            sessions=runtime.sessions,
            storage=runtime.storage,
            index=runtime.index,
            embedder=runtime.embedder,
            settings=runtime.settings,
            worker_id=self.engine.worker_id,
        )
        self._sweeper: asyncio.Task[None] | None = None

    def _recorder(self, execution: Execution) -> AssistantsRecorder:
        # A run is a response of the Responses API, or an Assistants run.
        if execution.run_id.startswith(ids.RESPONSE_PREFIX):
            return ResponsesRecorder(execution, self.runtime.storage)
        return AssistantsRecorder(execution, self.runtime.storage)

    async def start(self) -> None:
        self.runtime.router.warm()
        await self.runtime.queue.start_consuming(
            {EXECUTE_RUN: self.engine.execute, INGEST_FILE: self.ingestor},
            {
                EXECUTE_RUN: self.concurrency,
                INGEST_FILE: self.runtime.settings.ingest_concurrency,
            },
            worker=self.engine.worker_id,
        )
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="run-sweeper")
        if self.sandbox is not None and not await self.sandbox.backend.problems():
            self.sandbox.start()

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.runtime.queue.aclose()
        if self.sandbox is not None:
            await self.sandbox.aclose()

    async def _sweep_forever(self) -> None:
        retention_due = 0.0
        while True:
            try:
                await sweep(self.runtime)
            except Exception:
                log.exception("sweep failed")
            if time.monotonic() >= retention_due:
                retention_due = time.monotonic() + responses.retention_check_seconds(
                    self.runtime.settings
                )
                try:
                    dropped = await responses.drop_expired(self.runtime)
                    if dropped:
                        log.info("dropped %d responses past their retention", dropped)
                except Exception:
                    log.exception("response retention sweep failed")
            try:
                await self.ingestor.sweep(self.runtime.queue)
            except Exception:
                log.exception("ingestion sweep failed")
            await asyncio.sleep(self.runtime.settings.sweep_seconds)


async def run_worker(settings: Settings, concurrency: int) -> None:
    """`hal9100 worker`: execute runs until SIGTERM or SIGINT, then drain and exit."""
    if not settings.redis_url or not settings.database_url:
        # Without both it would share nothing with the API processes: an empty in-process
        # queue, or a SQLite file of its own.
        raise SystemExit(
            "hal9100 worker needs REDIS_URL and DATABASE_URL (the Redis and PostgreSQL its API "
            "processes use); an embedded server (`hal9100 serve` without them) executes its "
            "own runs."
        )
    runtime = await connect_runtime(settings)
    worker = Worker(runtime, concurrency)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await worker.start()
    log.info("worker %s executing up to %d runs at once", worker.engine.worker_id, concurrency)
    try:
        await stop.wait()
        log.info("draining: finishing the runs in hand (up to %ss)", settings.drain_seconds)
    finally:
        await worker.stop()
        await runtime.aclose()


async def sweep(runtime: Runtime) -> None:
    """Expire overdue runs that no executor is working on, and re-dispatch runs whose
    dispatch or lease lapsed (lost from the queue, or their worker died)."""
    stamp = time.time()
    async with runtime.sessions() as session:
        overdue = (
            await session.scalars(
                select(Run.id).where(
                    Run.status.in_(ACTIVE),
                    Run.expires_at < now(),
                    (Run.lease_owner.is_(None)) | (Run.lease_expires_at < stamp),
                )
            )
        ).all()
        lapsed = (
            await session.execute(
                select(Run.id, Run.thread_id, Run.tools).where(
                    Run.status.in_(RUNNABLE),
                    _lease_lapsed(stamp),
                )
            )
        ).all()
    for run_id in overdue:
        await expire(runtime, run_id)
    for run_id, thread_id, tools in lapsed:
        if run_id in overdue:
            continue
        async with runtime.sessions() as session:
            # Push the dispatch deadline out first so concurrent sweepers enqueue it once.
            result = await session.execute(
                update(Run)
                .where(Run.id == run_id, Run.status.in_(RUNNABLE), _lease_lapsed(stamp))
                .values(lease_owner=None, lease_expires_at=stamp + runtime.settings.lease_seconds)
            )
            await session.commit()
        if getattr(result, "rowcount", 0):
            log.info("run %s: dispatch or lease lapsed, re-queueing", run_id)
            worker = await route(runtime, thread_id, tools)
            await runtime.queue.enqueue(EXECUTE_RUN, run_id, worker=worker)


async def release_leases(url: str) -> None:
    """Clear the leases and dispatch deadlines of the runs with work left, so that the first
    sweep re-dispatches them at once instead of when those lapse. Only for a server that has
    just claimed its data directory (`datadir.claim`): the lock proves that the processes
    holding these leases, and the in-process queue that held these runs, are gone."""
    engine = make_engine(url)
    try:
        async with make_sessionmaker(engine)() as session:
            result = await session.execute(
                update(Run)
                .where(Run.status.in_(RUNNABLE))
                .values(lease_owner=None, lease_expires_at=None)
            )
            # Files being ingested too: the sweep queues them again at once.
            await session.execute(
                update(VectorStoreFile)
                .where(VectorStoreFile.status == "in_progress")
                .values(lease_owner=None, lease_expires_at=None)
            )
            await session.commit()
    finally:
        await engine.dispose()
    released: int = getattr(result, "rowcount", 0)
    if released:
        log.info("taking over %d run(s) left by the previous server", released)


def _lease_lapsed(stamp: float) -> ColumnElement[bool]:
    """No live lease and no pending dispatch. A run with work left and no lease at all
    (an executor interrupted mid-run, e.g. its queue job aborted, released the run without
    finishing it) counts too: nothing else would ever pick it up again."""
    return or_(Run.lease_expires_at.is_(None), Run.lease_expires_at < stamp)


async def expire(runtime: Runtime, run_id: str) -> None:
    async with runtime.sessions() as session:
        updated = await transition(
            session,
            run_id,
            ACTIVE,
            terminal_values(RunStatus.EXPIRED),
        )
        if updated is None:
            await session.rollback()
            return
        events = await close_open_work(session, run_id, RunStatus.EXPIRED)
        await session.commit()
    for item in [*events, run_event(updated)]:
        await runtime.bus.publish(run_id, item)
