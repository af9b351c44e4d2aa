"""The tables. One set of SQLAlchemy models serves SQLite and PostgreSQL.

Every API object has a `seq` (insertion order, the tie-breaker for cursors) and its public
`id`. Nested OpenAI structures (tools, content parts, step details) are JSON columns: they are
returned as they were given and never queried into.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hal9100.core.clock import ordinal

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
SeqType = BigInteger().with_variant(Integer(), "sqlite")
JsonType = JSON().with_variant(JSONB(), "postgresql")


class RunStatus(StrEnum):
    """A run's states, as OpenAI names them. It lives with the tables because the unique
    index below is built from them, and the engine, the sweeper and the API all import the
    tables already. The column stays a plain string: members are written as their values,
    and rows read back compare equal to them."""

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    REQUIRES_ACTION = "requires_action"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    FAILED = "failed"
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"
    EXPIRED = "expired"


# A thread holds at most one run in these states (`engine.state.ACTIVE`); the unique index
# on a thread's active run enforces it. Its WHERE text must match migration 0002's, which
# spells these out (a migration never imports the models): keep this order.
ACTIVE_RUN_STATUSES = (
    RunStatus.QUEUED,
    RunStatus.IN_PROGRESS,
    RunStatus.REQUIRES_ACTION,
    RunStatus.CANCELLING,
)
ACTIVE_RUN_SQL = "status IN (" + ", ".join(f"'{s}'" for s in ACTIVE_RUN_STATUSES) + ")"

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JsonType, list[Any]: JsonType}


class Assistant(Base):
    __tablename__ = "assistants"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)
    model: Mapped[str] = mapped_column(String(256))
    name: Mapped[str | None] = mapped_column(String(256))
    description: Mapped[str | None] = mapped_column(String(512))
    instructions: Mapped[str | None] = mapped_column(Text)
    tools: Mapped[list[Any]] = mapped_column(JsonType, default=list)
    tool_resources: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JsonType, default=dict)
    temperature: Mapped[float | None] = mapped_column(Float)
    top_p: Mapped[float | None] = mapped_column(Float)
    response_format: Mapped[Any | None] = mapped_column(JsonType)
    reasoning_effort: Mapped[str | None] = mapped_column(String(16))


class Thread(Base):
    __tablename__ = "threads"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)
    tool_resources: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JsonType, default=dict)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_thread_order", "thread_id", "created_at", "seq"),)

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    thread_id: Mapped[str] = mapped_column(String(64), ForeignKey("threads.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="completed")
    incomplete_details: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    completed_at: Mapped[int | None] = mapped_column(BigInteger)
    incomplete_at: Mapped[int | None] = mapped_column(BigInteger)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[list[Any]] = mapped_column(JsonType, default=list)
    assistant_id: Mapped[str | None] = mapped_column(String(64))
    run_id: Mapped[str | None] = mapped_column(String(64), index=True)
    attachments: Mapped[list[Any] | None] = mapped_column(JsonType)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JsonType, default=dict)
    # Its place among the thread's messages, run steps and items (null on rows older than
    # the column: their created_at stands in).
    ordinal: Mapped[int | None] = mapped_column(BigInteger, default=ordinal)
    # The content as a Responses or Conversations request gave it (input_text, input_file
    # ...), which the Assistants shape in `content` cannot hold whole.
    item_content: Mapped[list[Any] | None] = mapped_column(JsonType)


class File(Base):
    __tablename__ = "files"
    __table_args__ = (Index("ix_files_purpose_order", "purpose", "created_at", "seq"),)

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)
    filename: Mapped[str] = mapped_column(String(1024))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="processed")
    status_details: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    # Where the bytes live in object storage; not part of the API object.
    storage_key: Mapped[str] = mapped_column(String(1024))
    content_type: Mapped[str | None] = mapped_column(String(256))


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_thread_order", "thread_id", "created_at", "seq"),
        Index("ix_runs_status", "status"),
        # One active run per thread, enforced by the database itself: correct with any number
        # of API processes on either database (SQLite has no FOR UPDATE to serialize them).
        Index(
            "uq_runs_active_thread",
            "thread_id",
            unique=True,
            sqlite_where=text(ACTIVE_RUN_SQL),
            postgresql_where=text(ACTIVE_RUN_SQL),
        ),
    )

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    thread_id: Mapped[str] = mapped_column(String(64), ForeignKey("threads.id", ondelete="CASCADE"))
    assistant_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(24))
    required_action: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    last_error: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    started_at: Mapped[int | None] = mapped_column(BigInteger)
    cancelled_at: Mapped[int | None] = mapped_column(BigInteger)
    failed_at: Mapped[int | None] = mapped_column(BigInteger)
    completed_at: Mapped[int | None] = mapped_column(BigInteger)
    incomplete_details: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    model: Mapped[str] = mapped_column(String(256))
    instructions: Mapped[str] = mapped_column(Text, default="")
    tools: Mapped[list[Any]] = mapped_column(JsonType, default=list)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JsonType, default=dict)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    temperature: Mapped[float | None] = mapped_column(Float)
    top_p: Mapped[float | None] = mapped_column(Float)
    max_prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    max_completion_tokens: Mapped[int | None] = mapped_column(Integer)
    truncation_strategy: Mapped[dict[str, Any]] = mapped_column(JsonType)
    tool_choice: Mapped[Any] = mapped_column(JsonType)
    parallel_tool_calls: Mapped[bool] = mapped_column(Boolean, default=True)
    response_format: Mapped[Any | None] = mapped_column(JsonType)
    reasoning_effort: Mapped[str | None] = mapped_column(String(16))
    # --- execution state, not part of the API object ---
    additional_instructions: Mapped[str | None] = mapped_column(Text)
    include: Mapped[list[Any] | None] = mapped_column(JsonType)
    # The worker holding the run and until when; another worker may take over after that.
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[float | None] = mapped_column(Float)
    # Incremented on every takeover: a worker whose epoch is stale must not write.
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    # Set when the user asked to cancel; the executor notices it between and during LLM calls.
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Executions that ended in an unexpected error, in a row; past a bound the run fails
    # instead of being dispatched again (a crash, which runs no code, is not counted).
    failed_executions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The tool calls of the turn whose server-side calls are being run, each with its state
    # (pending, running, done): what a worker taking over needs to go on without making a
    # call twice. Null between such turns.
    open_calls: Mapped[list[Any] | None] = mapped_column(JsonType)
    # Tool calls the model got wrong (an unknown function, arguments that are not JSON) and
    # was asked to redo, over the whole run: bounded, so a model that never gets it right ends.
    corrections: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # A Responses API response (its id `resp_...`): what its request set that a run has no
    # column for (previous_response_id, conversation, store, text, tools as given...).
    response: Mapped[dict[str, Any] | None] = mapped_column(JsonType)


class RunStep(Base):
    __tablename__ = "run_steps"
    __table_args__ = (Index("ix_run_steps_run_order", "run_id", "created_at", "seq"),)

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    run_id: Mapped[str] = mapped_column(String(64), ForeignKey("runs.id", ondelete="CASCADE"))
    thread_id: Mapped[str] = mapped_column(String(64))
    assistant_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(24))
    status: Mapped[str] = mapped_column(String(24))
    step_details: Mapped[dict[str, Any]] = mapped_column(JsonType)
    last_error: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    expired_at: Mapped[int | None] = mapped_column(BigInteger)
    cancelled_at: Mapped[int | None] = mapped_column(BigInteger)
    failed_at: Mapped[int | None] = mapped_column(BigInteger)
    completed_at: Mapped[int | None] = mapped_column(BigInteger)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JsonType, default=dict)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    ordinal: Mapped[int | None] = mapped_column(BigInteger, default=ordinal)


class ResponseEvents(Base):
    """The event log of a response that has ended, as a stream that followed it to the end
    read it: its replay (`stream=true&starting_after=N`) is numbered alike once the event
    bus no longer holds it. Pairs of [event name, JSON data]."""

    __tablename__ = "response_events"

    run_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    events: Mapped[list[Any]] = mapped_column(JsonType)


class Item(Base):
    """A conversation item that is neither a message of the thread nor a tool call of one
    of its runs (those are items too, shown from their own tables): a function call output
    or a function call a client added, a reasoning item, a system or developer message.
    `data` is the item as the API answers it. A row of type `deleted` hides the run's tool
    call item whose id it holds."""

    __tablename__ = "items"
    __table_args__ = (Index("ix_items_thread_order", "thread_id", "ordinal"),)

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    thread_id: Mapped[str] = mapped_column(String(64), ForeignKey("threads.id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column(BigInteger, default=ordinal)
    type: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JsonType)


class VectorStore(Base):
    __tablename__ = "vector_stores"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)
    name: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    expires_after: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    last_active_at: Mapped[int] = mapped_column(BigInteger)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JsonType, default=dict)
    # The embedding model its vectors came from (set by its first ingested file): a query
    # embedded by another model cannot be compared with them, so such a store is searched
    # by keywords only.
    embedding_model: Mapped[str | None] = mapped_column(String(256))
    # The store a v1 assistant's or message's `file_ids` became (assistants=v1), named by the
    # object it belongs to; null for stores made through the vector store API.
    owner_id: Mapped[str | None] = mapped_column(String(64), index=True)


class VectorStoreFile(Base):
    """A file in a vector store, and the state of its ingestion. Its public id is the file's
    id: a file is in a store at most once. `status` is OpenAI's, or `deleted` for a file
    taken out of the store (the API never shows those rows)."""

    __tablename__ = "vector_store_files"
    __table_args__ = (
        Index("uq_vector_store_files_store_file", "vector_store_id", "id", unique=True),
        Index("ix_vector_store_files_store_order", "vector_store_id", "created_at", "seq"),
        Index("ix_vector_store_files_status", "status"),
        Index("ix_vector_store_files_batch", "batch_id"),
    )

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64))
    vector_store_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("vector_stores.id", ondelete="CASCADE")
    )
    created_at: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    last_error: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    usage_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    chunking_strategy: Mapped[dict[str, Any]] = mapped_column(JsonType)
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    batch_id: Mapped[str | None] = mapped_column(String(64))
    # --- ingestion state, not part of the API object (the same lease as a run's) ---
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[float | None] = mapped_column(Float)
    # Bumped by every claim and never reset, for the row's whole life (a file taken out of
    # the store keeps its row, status `deleted`, so that putting it back goes on counting):
    # the chunk index fences writes on it, which needs a number no earlier attempt had.
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    # Claims since the file was last put in the store: past a bound, it fails.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class VectorStoreFileBatch(Base):
    __tablename__ = "vector_store_file_batches"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    vector_store_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("vector_stores.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[int] = mapped_column(BigInteger)
    # Set by cancel; the status is otherwise read from the batch's files.
    cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
