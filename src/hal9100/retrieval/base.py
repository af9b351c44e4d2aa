"""The chunk index behind vector stores: where a file's chunks, their words and their vectors
are kept, and how they are searched.

Two implementations, chosen at start-up in `runtime.py`: SQLite (embedded mode: a database
file of its own beside the main one, FTS5 for keywords and exact vector search in numpy,
served by a thread so that no search or write runs on the event loop) and PostgreSQL
(production: full-text search, and pgvector when the server has it, exact search in numpy
over stored vectors when it does not).

The index knows vector stores and files only by id; which files a search may see (a store's
completed files, after attribute filters) is decided by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

# OpenAI's `ranking_options.ranker`: "none" ranks by the fused first-stage scores only;
# "auto" and "default-2024-11-15" also apply the reranker when one is configured.
Ranker = Literal["none", "auto", "default-2024-11-15"]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a file, as ingestion made it."""

    index: int
    """Its position in the file, from 0."""
    text: str
    tokens: int
    vectors: Sequence[Sequence[float]]
    """Unit length, from the store's embedding model: one per embedding window of the chunk
    (a chunk of 800 tokens is longer than what a small embedding model reads, so it is
    embedded as several windows, and its dense score is its best window's). Empty when the
    index is keyword-only."""


@dataclass(frozen=True, slots=True)
class Query:
    vector_store_ids: Sequence[str]
    text: str
    """The query as the user wrote it: any text at all (punctuation, quotes, operators,
    unbalanced parentheses, 10,000 characters) must search, never raise."""
    vector: Sequence[float] | None
    """The text's embedding (unit length), or None for keyword-only search."""
    limit: int
    file_ids: Sequence[str] | None = None
    """Only these files (after attribute filters); None: every file of the stores."""
    embedding_weight: float = 1.0
    text_weight: float = 1.0
    """Weights of the dense and keyword rankings in the fusion (OpenAI's `hybrid_search`)."""
    score_threshold: float = 0.0
    ranker: Ranker = "auto"


@dataclass(frozen=True, slots=True)
class Hit:
    vector_store_id: str
    file_id: str
    index: int
    text: str
    score: float
    """In [0, 1], higher is better; hits come sorted by it, best first."""
    details: dict[str, float] = field(default_factory=dict)
    """Per-ranker scores and ranks, for benchmarks and debugging (never sent to clients)."""


class Fenced(Exception):
    """A write from an ingestion attempt that is no longer the file's current one (another
    worker took the file over): the caller must stop without writing anything more."""


class ChunkIndex(Protocol):
    async def begin_file(self, vector_store_id: str, file_id: str, attempt: int) -> None:
        """Start ingestion attempt `attempt` of a file (attempts only grow): drop every chunk
        an earlier attempt wrote, and refuse later writes of earlier attempts. Raises Fenced
        if a later attempt has begun already."""
        ...

    async def add(
        self, vector_store_id: str, file_id: str, attempt: int, chunks: Sequence[Chunk]
    ) -> None:
        """Store chunks of the file, atomically (all or none). Raises Fenced, writing
        nothing, unless `attempt` is the file's current attempt."""
        ...

    async def drop_file(self, vector_store_id: str, file_id: str) -> None:
        """Remove a file's chunks (the file left the store); later writes of any attempt
        that began before are refused."""
        ...

    async def abandon(self, vector_store_id: str, file_id: str, attempt: int) -> None:
        """Drop what attempt `attempt` wrote (it was cancelled or failed), unless a later
        attempt has begun: then the file's chunks are that one's, and stay."""
        ...

    async def drop_store(self, vector_store_id: str) -> None: ...

    async def search(self, query: Query) -> list[Hit]: ...

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...
