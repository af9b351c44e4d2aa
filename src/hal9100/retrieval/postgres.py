"""The production chunk index: PostgreSQL full-text search, and pgvector when the server has
it, exact search in numpy over stored float32 vectors when it does not.

Tables come from migration 0005; which vector layout it chose (`vector` or `bytea`) is read
from the catalogue once, on first use.

Keywords: a stored `tsvector` (english) with a GIN index, queried with `websearch_to_tsquery`
on the query's `\\w+` tokens (`keywords.py`), never `to_tsquery`. Ranking every chunk that
matches any token of a common-word query is what made keyword search slow (ts_rank_cd over
all OR matches of 100k chunks: ~1 s p95), so the tokens whose lexemes are found in many
chunks are left out first (`keywords.within_budget` on the planner's own lexeme frequencies,
`pg_stats.most_common_elems` of the tsvector column, read once a minute; english stop words
have no lexeme at all). The chunks matching any token kept, at most `KEYWORD_CANDIDATES` of
them (in index order: this bounds the worst case, a query of common words only, at the cost
of ranking a sample of its matches), are ranked by the IDFs of the tokens each holds plus
ts_rank_cd: ts_rank_cd alone has no IDF, and ranked chunks full of the query's commonest
word above chunks holding its rare ones (keyword recall@5 on the evaluation corpus 0.257,
now 0.41; `fusion.py` turns the relevance into a score).

Vectors: pgvector's `<=>` (cosine distance), best window per chunk. When migration 0006 made
an HNSW index for the query's size (on `embedding::vector(N)`, partial on `dims = N`), the
nearest windows of the whole table come from it and are then narrowed to the stores' files;
when fewer than the wanted chunks survive that (a store or a file filter that is a small
part of the table), or there is no index for the size, the search is exact over the stores'
windows (an index scan on the store, fast exactly when the store is small). A store that is
a large part of a large table but not most of it falls between the two: exact, and slow
(pgvector 0.8's iterative index scans would serve it; pgserver bundles 0.6). Without pgvector
a store's windows are loaded into a `VectorMatrix`, cached per process and reloaded when the
store's version row (bumped in every write's transaction) has moved.

Fencing: `add` locks the file's attempt row FOR SHARE in the transaction that inserts, and
`begin_file`/`drop_file` change that row, so a write of a superseded attempt either commits
before the takeover's delete (which then removes it) or sees the new attempt and writes
nothing.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hal9100.retrieval.base import Chunk, Fenced, Hit, Query
from hal9100.retrieval.fusion import (
    BM25_IDF_SCALE,
    ChunkScores,
    FloatArray,
    MatrixCache,
    VectorMatrix,
    candidate_depth,
    clamp_limit,
    fuse,
    hits_of,
    merge_dense,
    saturate,
    unit_vector,
    weights,
)
from hal9100.retrieval.keywords import (
    clean_text,
    storable_ids,
    tokens,
    websearch_any,
    within_budget,
)
from hal9100.retrieval.rerank import Reranker, applies, finish, first_stage_limit

Layout = Literal["vector", "bytea"]
T = TypeVar("T")

KEYWORD_CANDIDATES = 1000
"""Most matches the keyword search ranks (see the module docstring)."""
KEYWORD_POSTINGS = 5000
"""Estimated (chunk, lexeme) matches, summed over the query's tokens, beyond which the most
common tokens are left out; the rarest token always stays. Tuned on the evaluation corpus
(bench/bench_retrieval.py quality --backend pg-bytea, keyword recall@5): 1,000 left out
words that mattered (0.251), no limit let common words swamp the ranking (0.296), 5,000
gave 0.413."""
STATS_SECONDS = 60.0
"""How long the lexeme frequencies read from pg_stats are used before being read again."""
WINDOWS_PER_CHUNK = 4
"""Windows fetched per wanted chunk before keeping each chunk's best (pgvector)."""

# The file's attempt row set to `:a` and locked, unless a later attempt has begun (then no
# row comes back): what `begin_file` and `abandon` start from.
_TAKE_ATTEMPT = text(
    "INSERT INTO chunk_index_files (vector_store_id, file_id, attempt) "
    "VALUES (:s, :f, :a) ON CONFLICT (vector_store_id, file_id) "
    "DO UPDATE SET attempt = excluded.attempt "
    "WHERE chunk_index_files.attempt <= excluded.attempt RETURNING attempt"
)
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
    # Each kept token's tsquery made once (MATERIALIZED: not once per row), then the chunks
    # matching any of them, at most :cap, scored by the IDFs of the tokens they hold plus
    # ts_rank_cd (in [0, 1) for ordinary chunks: term frequency and proximity, a tie-break).
    "WITH terms AS MATERIALIZED ("
    "  SELECT websearch_to_tsquery('english', u.t) AS tq, u.w"
    "  FROM unnest(CAST(:terms AS text[]), CAST(:idfs AS float8[])) AS u(t, w)"
    ") "
    "SELECT id, (SELECT coalesce(sum(terms.w), 0) FROM terms WHERE m.tsv @@ terms.tq)"
    "  + ts_rank_cd(m.tsv, m.q, 1) AS r FROM ("
    "  SELECT id, tsv, q FROM chunk_index_chunks, websearch_to_tsquery('english', :t) AS q"
    f"  WHERE tsv @@ q AND {_FILTERS}"
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
HNSW_DIMS = (384, 768, 1024, 1536)
"""Sizes migration 0006 indexes (it keeps its own copy)."""
HNSW_EF_MAX = 1000
"""pgvector's largest `hnsw.ef_search`: the most windows one index scan returns."""


def _hnsw_query(dims: int) -> Any:
    vector = f"CAST(:q AS vector({dims}))"
    column = f"CAST(embedding AS vector({dims}))"
    # The filters stay outside the index scan's LIMIT: inside, the planner could trade the
    # index for a scan of the stores' rows, and it would cut the nearest windows short.
    return text(
        "SELECT chunk_id, max(sim) AS s FROM ("
        f"  SELECT chunk_id, vector_store_id, file_id, 1 - ({column} <=> {vector}) AS sim"
        f"  FROM chunk_index_windows WHERE dims = {dims}"
        f"  ORDER BY {column} <=> {vector} LIMIT :windows"
        f") AS w WHERE {_FILTERS} GROUP BY chunk_id ORDER BY s DESC, chunk_id LIMIT :depth"
    )


_HNSW = {dims: _hnsw_query(dims) for dims in HNSW_DIMS}
_LEXEMES = text(
    "SELECT t.n, l.lexeme FROM unnest(CAST(:words AS text[])) WITH ORDINALITY AS t(word, n), "
    "LATERAL unnest(to_tsvector('english', t.word)) AS l"
)
_STATS = text(
    "SELECT s.most_common_elems::text::text[], s.most_common_elem_freqs, c.reltuples "
    "FROM pg_class c LEFT JOIN pg_stats s ON s.schemaname = current_schema() "
    "AND s.tablename = 'chunk_index_chunks' AND s.attname = 'tsv' "
    "WHERE c.oid = to_regclass('chunk_index_chunks')"
)
_COSINES = text(
    "SELECT chunk_id, max(1 - (embedding <=> CAST(:q AS vector))) FROM chunk_index_windows "
    "WHERE chunk_id = ANY(CAST(:ids AS bigint[])) AND dims = :dims GROUP BY chunk_id"
)


@dataclass(frozen=True, slots=True)
class _LexemeStats:
    """How many chunks hold each lexeme, as the planner estimates it after ANALYZE
    (autovacuum keeps it fresh): its most common lexemes with their frequencies; any other
    lexeme is at most as frequent as the least of them. Empty before the first ANALYZE:
    then nothing is left out."""

    frequencies: dict[str, float]
    floor: float
    rows: float
    read_at: float

    @classmethod
    def of(cls, elements: list[str], frequencies: list[float], rows: float) -> _LexemeStats:
        # pg_stats: one frequency per element, then their minimum and maximum (and a null
        # frequency); a list that does not fit that shape is not trusted.
        if len(frequencies) < len(elements) + 2:
            return cls({}, 0.0, rows, time.monotonic())
        known = {str(e): float(f) for e, f in zip(elements, frequencies, strict=False)}
        return cls(known, float(frequencies[len(elements)]), rows, time.monotonic())

    def matches(self, lexeme: str) -> int:
        return int(self.frequencies.get(lexeme, self.floor) * self.rows)


async def _nothing() -> list[tuple[int, float]]:
    return []


def _idf(matches: int, rows: float) -> float:
    """BM25's IDF (as SQLite's FTS5 computes it) of a lexeme in `matches` of `rows` chunks;
    1.0 when the statistics are missing (never analysed: every token weighs the same)."""
    if rows <= 0:
        return 1.0
    matches = min(max(matches, 0), int(rows))
    return max(math.log((rows - matches + 0.5) / (matches + 0.5)), 1e-6)


def _vector_literal(vector: FloatArray) -> str:
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


class PostgresChunkIndex:
    """`ChunkIndex` over migration 0005's tables, through the app's async engine."""

    def __init__(self, engine: AsyncEngine, *, reranker: Reranker | None = None) -> None:
        self._engine = engine
        self._reranker = reranker
        self._layout: Layout | None = None
        self._hnsw: frozenset[int] = frozenset()
        self._stats: _LexemeStats | None = None
        self._matrices = MatrixCache()
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
            async with self._engine.connect() as conn:
                names = (
                    await conn.execute(
                        text(
                            "SELECT indexname FROM pg_indexes "
                            "WHERE tablename = 'chunk_index_windows' "
                            "AND indexname LIKE 'chunk\\_index\\_windows\\_hnsw\\_%'"
                        )
                    )
                ).scalars()
                self._hnsw = frozenset(
                    int(name.rsplit("_", 1)[1])
                    for name in names
                    if name.rsplit("_", 1)[1].isdigit() and int(name.rsplit("_", 1)[1]) in _HNSW
                )
            self._layout = "vector" if found == "vector" else "bytea"
        return self._layout

    # --- writes ---------------------------------------------------------------------------

    async def begin_file(self, vector_store_id: str, file_id: str, attempt: int) -> None:
        async with self._engine.begin() as conn:
            taken = (
                await conn.execute(
                    _TAKE_ATTEMPT,
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

    async def abandon(self, vector_store_id: str, file_id: str, attempt: int) -> None:
        async with self._engine.begin() as conn:
            # The file's attempt row, taken (or made) and locked unless a later attempt has
            # begun: a `begin_file` of a later attempt waits for this transaction.
            mine = (
                await conn.execute(
                    _TAKE_ATTEMPT,
                    {"s": vector_store_id, "f": file_id, "a": attempt},
                )
            ).first()
            if mine is None:
                return
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
        self._matrices.pop(vector_store_id)

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
        # The keyword and dense halves run at once, each on a connection of its own that it
        # gives back when done (never holding one while waiting for another, which a busy
        # pool could deadlock on); the rest runs on a third.
        dense_ready = vector is not None and vector.shape[0] > 0
        keyword_half = (
            self._apart(lambda c: self._keyword(c, query.text, filters, depth))
            if text_weight
            else _nothing()
        )
        nearest: list[tuple[int, float]] = []
        scores: list[ChunkScores | None] = []
        if vector is not None and dense_ready and layout == "vector":
            keyword, nearest = await asyncio.gather(
                keyword_half,
                self._apart(lambda c: self._pgvector_nearest(c, vector, filters, depth)),
            )
        elif vector is not None and dense_ready:
            keyword, scores = await asyncio.gather(
                keyword_half,
                self._apart(lambda c: self._numpy_scores(c, vector, stores, files)),
            )
        else:
            keyword = await keyword_half
        async with self._engine.connect() as conn:
            dense: list[tuple[int, float]] = []
            cosines: dict[int, float] = {}
            also = [chunk_id for chunk_id, _ in keyword]
            if vector is not None and dense_ready and layout == "vector":
                dense = nearest
                cosines = await self._pgvector_cosines(conn, vector, dense, also)
            elif dense_ready:
                dense, cosines = merge_dense(
                    (VectorMatrix.pick(scored, depth, also) for scored in scores), depth
                )
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
        return await finish(hits_of(fused, rows), query, limit, self._reranker)

    async def _keyword(
        self, conn: AsyncConnection, query_text: str, filters: dict[str, Any], depth: int
    ) -> list[tuple[int, float]]:
        words = tokens(query_text)
        if not words:
            return []
        lexemes: dict[int, list[str]] = {}
        for n, lexeme in await conn.execute(_LEXEMES, {"words": words}):
            lexemes.setdefault(int(n) - 1, []).append(str(lexeme))
        # Tokens without a lexeme (english stop words) match nothing in websearch_to_tsquery.
        indexed = [i for i in range(len(words)) if i in lexemes]
        if not indexed:
            return []
        stats = await self._lexeme_stats(conn)
        # A token of several lexemes is a phrase: it matches at most where its rarest does.
        frequencies = [min(stats.matches(lexeme) for lexeme in lexemes[i]) for i in indexed]
        kept = [indexed[i] for i in within_budget(frequencies, KEYWORD_POSTINGS)]
        any_ = websearch_any(" ".join(words[i] for i in kept))
        if any_ is None:
            return []
        idfs = [_idf(min(stats.matches(lexeme) for lexeme in lexemes[i]), stats.rows) for i in kept]
        result = await conn.execute(
            _KEYWORD,
            {
                **filters,
                "t": any_,
                "terms": [words[i] for i in kept],
                "idfs": idfs,
                "cap": KEYWORD_CANDIDATES,
                "depth": depth,
            },
        )
        half = BM25_IDF_SCALE * sum(idfs)
        return [(int(row[0]), saturate(float(row[1]), half)) for row in result]

    async def _lexeme_stats(self, conn: AsyncConnection) -> _LexemeStats:
        stats = self._stats
        if stats is None or time.monotonic() - stats.read_at > STATS_SECONDS:
            row = (await conn.execute(_STATS)).first()
            elements = list(row[0] or []) if row is not None else []
            frequencies = list(row[1] or []) if row is not None else []
            rows = max(float(row[2] or 0.0), 0.0) if row is not None else 0.0
            stats = _LexemeStats.of(elements, frequencies, rows)
            self._stats = stats
        return stats

    async def _apart(self, half: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        async with self._engine.connect() as conn:
            try:
                return await half(conn)
            finally:
                await conn.rollback()

    async def _pgvector_nearest(
        self, conn: AsyncConnection, vector: FloatArray, filters: dict[str, Any], depth: int
    ) -> list[tuple[int, float]]:
        dims = int(vector.shape[0])
        windows = depth * WINDOWS_PER_CHUNK
        parameters = {
            **filters,
            "q": _vector_literal(vector),
            "dims": dims,
            "windows": windows,
            "depth": depth,
        }
        dense: list[tuple[int, float]] = []
        if dims in self._hnsw:
            # Local to the search's transaction (rolled back at its end).
            ef_search = min(max(windows, 40), HNSW_EF_MAX)
            await conn.execute(
                text("SELECT set_config('hnsw.ef_search', :ef, true)"), {"ef": str(ef_search)}
            )
            result = await conn.execute(_HNSW[dims], parameters)
            dense = [(int(row[0]), float(row[1])) for row in result]
        if len(dense) < depth:
            result = await conn.execute(_DENSE, parameters)
            dense = [(int(row[0]), float(row[1])) for row in result]
        return dense

    async def _pgvector_cosines(
        self,
        conn: AsyncConnection,
        vector: FloatArray,
        dense: list[tuple[int, float]],
        also: list[int],
    ) -> dict[int, float]:
        """The cosines of the keyword candidates the dense side did not return."""
        known = {chunk_id for chunk_id, _ in dense}
        missing = [chunk_id for chunk_id in also if chunk_id not in known]
        if not missing:
            return {}
        result = await conn.execute(
            _COSINES,
            {"q": _vector_literal(vector), "ids": missing, "dims": int(vector.shape[0])},
        )
        return {int(row[0]): float(row[1]) for row in result}

    async def _numpy_scores(
        self,
        conn: AsyncConnection,
        vector: FloatArray,
        stores: list[str],
        files: list[str] | None,
    ) -> list[ChunkScores | None]:
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
        return await asyncio.to_thread(lambda: [m.score(vector, wanted) for m in matrices])

    async def _matrix(self, conn: AsyncConnection, store: str, version: int) -> VectorMatrix:
        cached = self._matrices.get(store, version)
        if cached is not None:
            return cached
        async with self._loading.setdefault(store, asyncio.Lock()):
            cached = self._matrices.get(store, version)
            if cached is not None:
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
            fetched = rows.all()
            # Converting a large store's rows takes long enough to stall the loop: a thread.
            matrix = await asyncio.to_thread(
                lambda: VectorMatrix.build(
                    version, ((int(r[0]), str(r[1]), bytes(r[2])) for r in fetched)
                )
            )
            self._matrices.put(store, matrix)
            return matrix

    # --- lifecycle ------------------------------------------------------------------------

    async def ping(self) -> None:
        async with self._engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def aclose(self) -> None:
        # The engine is the app's: it disposes of it.
        self._matrices.clear()
