"""The production chunk index: PostgreSQL full-text search, and pgvector when the server has
it, exact search in numpy over stored float32 vectors when it does not.

Tables come from migration 0005; which vector layout it chose (`vector` or `bytea`) is read
from the catalogue once, on first use.

Keywords: a stored `tsvector` (english) with a GIN index, queried with `websearch_to_tsquery`
on the query's `\\w+` tokens (`keywords.py`), never `to_tsquery`. Ranking every chunk that
matches ANY token of a common-word query is what made keyword search slow (ts_rank_cd over
all OR matches of 100k chunks: ~1 s p95), so the search first ranks chunks that match ALL
tokens, and only when those are fewer than wanted fills up with chunks matching ANY token;
each stage ranks at most `KEYWORD_CANDIDATES` matches (in index order), which bounds the
worst case at the cost of ranking only a sample of a huge match set.

Vectors: pgvector's `<=>` (cosine distance) over the windows of the stores' files with the
query's dimensions, exact (no HNSW: the column has no fixed size, and HNSW's recall was poor
in the design measurements), best window per chunk. Without pgvector a store's windows are
loaded into a `VectorMatrix`, cached per process and reloaded when the store's version row
(bumped in every write's transaction) has moved.

Fencing: `add` locks the file's attempt row FOR SHARE in the transaction that inserts, and
`begin_file`/`drop_file` change that row, so a write of a superseded attempt either commits
before the takeover's delete (which then removes it) or sees the new attempt and writes
nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hal9100.retrieval.base import Chunk, Fenced, Hit, Query
from hal9100.retrieval.fusion import (
    TS_RANK_HALF,
    FloatArray,
    VectorMatrix,
    candidate_depth,
    clamp_limit,
    fuse,
    merge_dense,
    saturate,
    unit_vector,
    weights,
)
from hal9100.retrieval.keywords import clean_text, storable_ids, websearch_all, websearch_any
from hal9100.retrieval.rerank import Reranker, applies, finish, first_stage_limit

Layout = Literal["vector", "bytea"]

KEYWORD_CANDIDATES = 1000
"""Most matches one keyword stage ranks (see the module docstring)."""
WINDOWS_PER_CHUNK = 4
"""Windows fetched per wanted chunk before keeping each chunk's best (pgvector)."""

_BUMP = text(
    "INSERT INTO chunk_index_stores (vector_store_id, version) VALUES (:s, 1) "
    "ON CONFLICT (vector_store_id) DO UPDATE SET version = chunk_index_stores.version + 1"
)
_DELETE_WINDOWS = text(
    "DELETE FROM chunk_index_windows WHERE vector_store_id = :s AND file_id = :f"
)
_DELETE_CHUNKS = text("DELETE FROM chunk_index_chunks WHERE vector_store_id = :s AND file_id = :f")
_FILTERS = (
    "vector_store_id = ANY(CAST(:stores AS text[])) "
    "AND (CAST(:files AS text[]) IS NULL OR file_id = ANY(CAST(:files AS text[])))"
)
_KEYWORD = text(
    "SELECT id, ts_rank_cd(tsv, q) AS r FROM ("
    "  SELECT id, tsv, q FROM chunk_index_chunks, websearch_to_tsquery('english', :t) AS q"
    f"  WHERE tsv @@ q AND {_FILTERS} AND NOT id = ANY(CAST(:seen AS bigint[]))"
    "  LIMIT :cap"
    ") AS m ORDER BY r DESC, id LIMIT :depth"
)
_DENSE = text(
    "SELECT chunk_id, max(sim) AS s FROM ("
    "  SELECT chunk_id, 1 - (embedding <=> CAST(:q AS vector)) AS sim"
    "  FROM chunk_index_windows"
    f"  WHERE dims = :dims AND {_FILTERS}"
    "  ORDER BY embedding <=> CAST(:q AS vector) LIMIT :windows"
    ") AS w GROUP BY chunk_id ORDER BY s DESC, chunk_id LIMIT :depth"
)
_COSINES = text(
    "SELECT chunk_id, max(1 - (embedding <=> CAST(:q AS vector))) FROM chunk_index_windows "
    "WHERE chunk_id = ANY(CAST(:ids AS bigint[])) AND dims = :dims GROUP BY chunk_id"
)


def _vector_literal(vector: FloatArray) -> str:
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


class PostgresChunkIndex:
    """`ChunkIndex` over migration 0005's tables, through the app's async engine."""

    def __init__(self, engine: AsyncEngine, *, reranker: Reranker | None = None) -> None:
        self._engine = engine
        self._reranker = reranker
        self._layout: Layout | None = None
        self._matrices: dict[str, VectorMatrix] = {}
        self._loading: dict[str, asyncio.Lock] = {}

    async def layout(self) -> Layout:
        """Which vector column migration 0005 made: pgvector's `vector`, or `bytea`."""
        if self._layout is None:
            async with self._engine.connect() as conn:
                found = (
                    await conn.execute(
                        text(
                            "SELECT t.typname FROM pg_attribute a "
                            "JOIN pg_type t ON t.oid = a.atttypid "
                            "WHERE a.attrelid = to_regclass('chunk_index_windows') "
                            "AND a.attname = 'embedding' AND NOT a.attisdropped"
                        )
                    )
                ).scalar()
            if found not in ("vector", "bytea"):
                raise RuntimeError("the chunk index tables are missing: run `hal9100 migrate`")
            self._layout = "vector" if found == "vector" else "bytea"
        return self._layout

    # --- writes ---------------------------------------------------------------------------

    async def begin_file(self, vector_store_id: str, file_id: str, attempt: int) -> None:
        async with self._engine.begin() as conn:
            taken = (
                await conn.execute(
                    text(
                        "INSERT INTO chunk_index_files (vector_store_id, file_id, attempt) "
                        "VALUES (:s, :f, :a) ON CONFLICT (vector_store_id, file_id) "
                        "DO UPDATE SET attempt = excluded.attempt "
                        "WHERE chunk_index_files.attempt <= excluded.attempt RETURNING attempt"
                    ),
                    {"s": vector_store_id, "f": file_id, "a": attempt},
                )
            ).first()
            if taken is None:
                raise Fenced(f"attempt {attempt} of {file_id}: a later attempt has begun")
            await self._delete_file(conn, vector_store_id, file_id)

    async def add(
        self, vector_store_id: str, file_id: str, attempt: int, chunks: Sequence[Chunk]
    ) -> None:
        layout = await self.layout()
        texts = [clean_text(chunk.text) for chunk in chunks]
        indexes = [chunk.index for chunk in chunks]
        owners: list[int] = []
        dims: list[int] = []
        embeddings: list[Any] = []
        for position, chunk in enumerate(chunks):
            for vector in chunk.vectors:
                unit = unit_vector(vector)
                if unit.shape[0] == 0:
                    continue
                owners.append(position)
                dims.append(int(unit.shape[0]))
                embeddings.append(_vector_literal(unit) if layout == "vector" else unit.tobytes())
        async with self._engine.begin() as conn:
            current = (
                await conn.execute(
                    text(
                        "SELECT attempt FROM chunk_index_files "
                        "WHERE vector_store_id = :s AND file_id = :f FOR SHARE"
                    ),
                    {"s": vector_store_id, "f": file_id},
                )
            ).scalar()
            if current != attempt:
                raise Fenced(f"attempt {attempt} of {file_id}: the current one is {current}")
            if not chunks:
                return
            # Ids taken first, so that each window row knows its chunk's without relying on
            # the order RETURNING gives.
            ids = list(
                (
                    await conn.execute(
                        text(
                            "SELECT nextval(pg_get_serial_sequence('chunk_index_chunks', 'id')) "
                            "FROM generate_series(1, :n)"
                        ),
                        {"n": len(chunks)},
                    )
                ).scalars()
            )
            await conn.execute(
                text(
                    "INSERT INTO chunk_index_chunks (id, vector_store_id, file_id, idx, text) "
                    "OVERRIDING SYSTEM VALUE "
                    "SELECT i, :s, :f, x, t FROM unnest(CAST(:ids AS bigint[]), "
                    "CAST(:idx AS integer[]), CAST(:texts AS text[])) AS u(i, x, t)"
                ),
                {"s": vector_store_id, "f": file_id, "ids": ids, "idx": indexes, "texts": texts},
            )
            if embeddings:
                element = "CAST(e AS vector)" if layout == "vector" else "e"
                array_type = "text[]" if layout == "vector" else "bytea[]"
                await conn.execute(
                    text(
                        "INSERT INTO chunk_index_windows "
                        "(chunk_id, vector_store_id, file_id, dims, embedding) "
                        f"SELECT c, :s, :f, d, {element} FROM unnest(CAST(:c AS bigint[]), "
                        f"CAST(:d AS integer[]), CAST(:e AS {array_type})) AS u(c, d, e)"
                    ),
                    {
                        "s": vector_store_id,
                        "f": file_id,
                        "c": [ids[p] for p in owners],
                        "d": dims,
                        "e": embeddings,
                    },
                )
            await conn.execute(_BUMP, {"s": vector_store_id})

    async def drop_file(self, vector_store_id: str, file_id: str) -> None:
        async with self._engine.begin() as conn:
            # Forgetting the attempt fences every attempt that began before: their `add`
            # finds no current attempt.
            await conn.execute(
                text("DELETE FROM chunk_index_files WHERE vector_store_id = :s AND file_id = :f"),
                {"s": vector_store_id, "f": file_id},
            )
            await self._delete_file(conn, vector_store_id, file_id)

    async def _delete_file(self, conn: AsyncConnection, store: str, file: str) -> None:
        await conn.execute(_DELETE_WINDOWS, {"s": store, "f": file})
        await conn.execute(_DELETE_CHUNKS, {"s": store, "f": file})
        await conn.execute(_BUMP, {"s": store})

    async def drop_store(self, vector_store_id: str) -> None:
        async with self._engine.begin() as conn:
            for table in ("files", "windows", "chunks", "stores"):
                await conn.execute(
                    text(f"DELETE FROM chunk_index_{table} WHERE vector_store_id = :s"),
                    {"s": vector_store_id},
                )
        self._matrices.pop(vector_store_id, None)

    # --- search ---------------------------------------------------------------------------

    async def search(self, query: Query) -> list[Hit]:
        limit = clamp_limit(query.limit)
        if limit == 0 or not query.vector_store_ids:
            return []
        layout = await self.layout()
        stores = storable_ids(query.vector_store_ids)
        files = None if query.file_ids is None else storable_ids(query.file_ids)
        fused_limit = first_stage_limit(limit, self._reranker, query.ranker)
        depth = candidate_depth(fused_limit)
        vector = None if query.vector is None else unit_vector(query.vector)
        _, text_weight = weights(query.embedding_weight, query.text_weight, vector is not None)
        filters = {"stores": stores, "files": files}
        async with self._engine.connect() as conn:
            keyword = await self._keyword(conn, query.text, filters, depth) if text_weight else []
            dense: list[tuple[int, float]] = []
            cosines: dict[int, float] = {}
            if vector is not None and vector.shape[0] > 0:
                also = [chunk_id for chunk_id, _ in keyword]
                if layout == "vector":
                    dense, cosines = await self._pgvector(conn, vector, filters, depth, also)
                else:
                    dense, cosines = await self._numpy(conn, vector, stores, files, depth, also)
            fused = fuse(
                keyword,
                dense,
                cosines,
                has_vector=vector is not None,
                embedding_weight=query.embedding_weight,
                text_weight=query.text_weight,
                limit=fused_limit,
                score_threshold=0.0
                if applies(self._reranker, query.ranker)
                else query.score_threshold,
            )
            rows = {
                row[0]: row[1:]
                for row in await conn.execute(
                    text(
                        "SELECT id, vector_store_id, file_id, idx, text FROM chunk_index_chunks "
                        "WHERE id = ANY(CAST(:ids AS bigint[]))"
                    ),
                    {"ids": [f.chunk_id for f in fused]},
                )
            }
            await conn.rollback()
        hits = [
            Hit(
                vector_store_id=rows[f.chunk_id][0],
                file_id=rows[f.chunk_id][1],
                index=rows[f.chunk_id][2],
                text=rows[f.chunk_id][3],
                score=f.score,
                details=f.details,
            )
            for f in fused
            # A chunk deleted between the candidate queries and this one is left out.
            if f.chunk_id in rows
        ]
        return await finish(hits, query, limit, self._reranker)

    async def _keyword(
        self, conn: AsyncConnection, query_text: str, filters: dict[str, Any], depth: int
    ) -> list[tuple[int, float]]:
        every = websearch_all(query_text)
        if every is None:
            return []
        found: list[tuple[int, float]] = []
        stages = [every]
        any_ = websearch_any(query_text)
        if any_ is not None and any_ != every:
            stages.append(any_)
        for stage in stages:
            result = await conn.execute(
                _KEYWORD,
                {
                    **filters,
                    "t": stage,
                    "seen": [chunk_id for chunk_id, _ in found],
                    "cap": KEYWORD_CANDIDATES,
                    "depth": depth - len(found),
                },
            )
            # The ANY stage's hits stay below the ALL stage's: matching every word is the
            # stronger evidence whatever ts_rank_cd says.
            found.extend((int(row[0]), saturate(float(row[1]), TS_RANK_HALF)) for row in result)
            if len(found) >= depth:
                break
        return found

    async def _pgvector(
        self,
        conn: AsyncConnection,
        vector: FloatArray,
        filters: dict[str, Any],
        depth: int,
        also: list[int],
    ) -> tuple[list[tuple[int, float]], dict[int, float]]:
        literal = _vector_literal(vector)
        dims = int(vector.shape[0])
        result = await conn.execute(
            _DENSE,
            {
                **filters,
                "q": literal,
                "dims": dims,
                "windows": depth * WINDOWS_PER_CHUNK,
                "depth": depth,
            },
        )
        dense = [(int(row[0]), float(row[1])) for row in result]
        known = {chunk_id for chunk_id, _ in dense}
        missing = [chunk_id for chunk_id in also if chunk_id not in known]
        cosines: dict[int, float] = {}
        if missing:
            result = await conn.execute(_COSINES, {"q": literal, "ids": missing, "dims": dims})
            cosines = {int(row[0]): float(row[1]) for row in result}
        return dense, cosines

    async def _numpy(
        self,
        conn: AsyncConnection,
        vector: FloatArray,
        stores: list[str],
        files: list[str] | None,
        depth: int,
        also: list[int],
    ) -> tuple[list[tuple[int, float]], dict[int, float]]:
        result = await conn.execute(
            text(
                "SELECT vector_store_id, version FROM chunk_index_stores "
                "WHERE vector_store_id = ANY(CAST(:stores AS text[]))"
            ),
            {"stores": stores},
        )
        versions = {str(row[0]): int(row[1]) for row in result}
        matrices = [
            await self._matrix(conn, store, int(versions[store]))
            for store in stores
            if store in versions
        ]
        wanted = None if files is None else frozenset(files)

        def run() -> tuple[list[tuple[int, float]], dict[int, float]]:
            return merge_dense((m.search(vector, wanted, depth, also) for m in matrices), depth)

        return await asyncio.to_thread(run)

    async def _matrix(self, conn: AsyncConnection, store: str, version: int) -> VectorMatrix:
        cached = self._matrices.get(store)
        if cached is not None and cached.version == version:
            return cached
        async with self._loading.setdefault(store, asyncio.Lock()):
            cached = self._matrices.get(store)
            if cached is not None and cached.version == version:
                return cached
            # Rows read after the version: a write in between leaves newer rows under the
            # older version, so the next search reloads; never the other way round.
            rows = await conn.execute(
                text(
                    "SELECT chunk_id, file_id, embedding FROM chunk_index_windows "
                    "WHERE vector_store_id = :s ORDER BY chunk_id"
                ),
                {"s": store},
            )
            listed = [(int(row[0]), str(row[1]), bytes(row[2])) for row in rows]
            matrix = await asyncio.to_thread(VectorMatrix.build, version, listed)
            self._matrices[store] = matrix
            return matrix

    # --- lifecycle ------------------------------------------------------------------------

    async def ping(self) -> None:
        async with self._engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def aclose(self) -> None:
        # The engine is the app's: it disposes of it.
        self._matrices.clear()
