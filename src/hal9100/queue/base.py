"""The task queue: the API enqueues named tasks, each with a key (a run's id); workers take
them and call the task's handler.

A task only says "this has work to do". The database holds the state and a lease on it, so
a task delivered twice does its work once, and a task lost from the queue is found again by
a sweeper.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

# The task that executes a run; its key is the run's id.
EXECUTE_RUN = "execute_run"
# The task that ingests one file of a vector store; its key is `ingest_key(store, file)`.
INGEST_FILE = "ingest_file"


def ingest_key(vector_store_id: str, file_id: str) -> str:
    return f"{vector_store_id}/{file_id}"


def split_ingest_key(key: str) -> tuple[str, str]:
    vector_store_id, _, file_id = key.partition("/")
    return vector_store_id, file_id


Handler = Callable[[str], Awaitable[None]]


class TaskQueue(Protocol):
    async def enqueue(self, task: str, key: str, *, worker: str | None = None) -> None:
        """Queue the task; with `worker`, for that worker only (a run routed to the worker
        holding its thread's code_interpreter session). A queue with one consumer process
        ignores it."""
        ...

    async def start_consuming(
        self,
        handlers: Mapping[str, Handler],
        concurrency: Mapping[str, int],
        worker: str | None = None,
    ) -> None:
        """Begin calling `handlers[task](key)` for queued tasks, at most `concurrency[task]`
        of each task at once, and also the tasks queued for `worker`. Each task has a lane
        of its own: a batch of 2,000 files to ingest never holds up a run, nor runs a
        file."""
        ...

    async def aclose(self) -> None:
        """Stop taking tasks and wait for the ones in hand to finish."""
        ...
