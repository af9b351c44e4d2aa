"""The embedded chunk index: a SQLite file of its own (`vectors.sqlite3`), FTS5 for keywords
and exact cosine search in numpy for vectors.

One thread owns the one `sqlite3` connection (WAL) and runs every call, searches included
(their numpy work too), so nothing here runs on the event loop and writes need no locking:
each write is one transaction on that thread, which also makes `add`'s fencing check and its
inserts atomic. The schema is created here, not by the app's migrations.

Vectors are float32 blobs, one row per embedding window; each vector store's windows are kept
in memory as a `VectorMatrix`, checked against the store's version row (bumped by every write,
in the write's transaction) before each search, so a write by another process is seen too.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from hal9100.retrieval.base import Chunk, Fenced, Hit, Query
from hal9100.retrieval.fusion import (
    BM25_HALF,
    MatrixCache,
    VectorMatrix,
    bm25_half,
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
    content_tokens,
    fts5_terms,
    storable_ids,
    within_budget,
)
from hal9100.retrieval.rerank import Reranker, applies, finish, first_stage_limit

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stores (
    store TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    store TEXT NOT NULL,
    file TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    PRIMARY KEY (store, file)
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    store TEXT NOT NULL,
    file TEXT NOT NULL,
    idx INTEGER NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_file ON chunks (store, file);
-- The keyword search checks each match's store and file here, not in the table's rows (which
-- hold the text: reading them was most of a common-word search's time).
CREATE INDEX IF NOT EXISTS chunks_owner ON chunks (id, store, file);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5 (
    text, content='chunks', content_rowid='id',
    tokenize='porter unicode61 remove_diacritics 2'
);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_vocab USING fts5vocab (chunks_fts, 'row');
CREATE TRIGGER IF NOT EXISTS chunks_fts_insert AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS chunks_fts_delete AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts (chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TABLE IF NOT EXISTS windows (
    chunk_id INTEGER NOT NULL,
    store TEXT NOT NULL,
    file TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS windows_store ON windows (store, chunk_id);
CREATE INDEX IF NOT EXISTS windows_file ON windows (store, file);
"""

# The query's tokens as FTS5 indexes them (porter stems), to look their frequency up in
# chunks_vocab: one row per token, in a table of this connection's own (temp).
_TOKENIZER = "porter unicode61 remove_diacritics 2"
_QUERY_SCHEMA = f"""
CREATE VIRTUAL TABLE IF NOT EXISTS temp.query_fts USING fts5 (text, tokenize='{_TOKENIZER}');
CREATE VIRTUAL TABLE IF NOT EXISTS temp.query_vocab USING fts5vocab (temp, query_fts, 'instance');
"""
KEYWORD_POSTINGS = 10_000
"""Most (chunk, term) matches one keyword search ranks, summed over its terms, before the
most common terms are left out (`keywords.within_budget`); the rarest term always stays."""
_STEMS_CACHED = 10_000
FREQUENCY_SECONDS = 60.0
"""How long a term's chunk count is used before it is counted again."""

_BUMP = (
    "INSERT INTO stores (store, version) VALUES (?, 1) "
    "ON CONFLICT (store) DO UPDATE SET version = version + 1"
)


class SqliteChunkIndex:
    """`ChunkIndex` over the SQLite file at `path` (created with its schema if missing)."""

    def __init__(self, path: Path, *, reranker: Reranker | None = None) -> None:
        self._path = path
        self._reranker = reranker
        # One thread: it owns the connection (sqlite3 objects stay on their thread) and
        # serialises the writes.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-index")
        self._connection: sqlite3.Connection | None = None
        self._matrices = MatrixCache()
        self._stems: dict[str, tuple[str, ...]] = {}
        self._counted: tuple[tuple[int, float], int] | None = None
        self._frequencies: dict[str, tuple[int, float]] = {}

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: every transaction here is an explicit BEGIN ... COMMIT.
            connection = sqlite3.connect(self._path, timeout=30, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA busy_timeout=30000")
            connection.executescript(_SCHEMA)
            connection.executescript(_QUERY_SCHEMA)
            self._connection = connection
        return self._connection

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db()
        # IMMEDIATE: take the write lock first, so the fencing read and the writes that
        # follow it see the same state even with another process writing.
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    # --- writes ---------------------------------------------------------------------------

    async def begin_file(self, vector_store_id: str, file_id: str, attempt: int) -> None:
        def run(db: sqlite3.Connection) -> None:
            row = db.execute(
                "SELECT attempt FROM files WHERE store = ? AND file = ?",
                (vector_store_id, file_id),
            ).fetchone()
            if row is not None and row[0] > attempt:
                raise Fenced(f"attempt {attempt} of {file_id}: attempt {row[0]} has begun")
            db.execute(
                "INSERT INTO files (store, file, attempt) VALUES (?, ?, ?) "
                "ON CONFLICT (store, file) DO UPDATE SET attempt = excluded.attempt",
                (vector_store_id, file_id, attempt),
            )
            _delete_file_rows(db, vector_store_id, file_id)
            db.execute(_BUMP, (vector_store_id,))

        await self._call(self._write, run)

    async def add(
        self, vector_store_id: str, file_id: str, attempt: int, chunks: Sequence[Chunk]
    ) -> None:
        # Prepared on the caller's side of the hop: pure Python, and it keeps the writer
        # thread's transaction short.
        rows = [(chunk.index, clean_text(chunk.text)) for chunk in chunks]
        vectors = [[unit_vector(v).tobytes() for v in chunk.vectors] for chunk in chunks]

        def run(db: sqlite3.Connection) -> None:
            row = db.execute(
                "SELECT attempt FROM files WHERE store = ? AND file = ?",
                (vector_store_id, file_id),
            ).fetchone()
            if row is None or row[0] != attempt:
                current = "none" if row is None else row[0]
                raise Fenced(f"attempt {attempt} of {file_id}: the current one is {current}")
            for (index, text), blobs in zip(rows, vectors, strict=True):
                cursor = db.execute(
                    "INSERT INTO chunks (store, file, idx, text) VALUES (?, ?, ?, ?)",
                    (vector_store_id, file_id, index, text),
                )
                chunk_id = cursor.lastrowid
                db.executemany(
                    "INSERT INTO windows (chunk_id, store, file, vector) VALUES (?, ?, ?, ?)",
                    [(chunk_id, vector_store_id, file_id, blob) for blob in blobs],
                )
            db.execute(_BUMP, (vector_store_id,))

        await self._call(self._write, run)

    async def drop_file(self, vector_store_id: str, file_id: str) -> None:
        def run(db: sqlite3.Connection) -> None:
            # Forgetting the file's attempt fences every attempt that began before: their
            # `add` finds no current attempt.
            db.execute("DELETE FROM files WHERE store = ? AND file = ?", (vector_store_id, file_id))
            _delete_file_rows(db, vector_store_id, file_id)
            db.execute(_BUMP, (vector_store_id,))

        await self._call(self._write, run)

    async def abandon(self, vector_store_id: str, file_id: str, attempt: int) -> None:
        def run(db: sqlite3.Connection) -> None:
            row = db.execute(
                "SELECT attempt FROM files WHERE store = ? AND file = ?",
                (vector_store_id, file_id),
            ).fetchone()
            if row is not None and row[0] > attempt:
                return
            db.execute("DELETE FROM files WHERE store = ? AND file = ?", (vector_store_id, file_id))
            _delete_file_rows(db, vector_store_id, file_id)
            db.execute(_BUMP, (vector_store_id,))

        await self._call(self._write, run)

    async def drop_store(self, vector_store_id: str) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM files WHERE store = ?", (vector_store_id,))
            db.execute("DELETE FROM windows WHERE store = ?", (vector_store_id,))
            db.execute("DELETE FROM chunks WHERE store = ?", (vector_store_id,))
            db.execute("DELETE FROM stores WHERE store = ?", (vector_store_id,))
            self._matrices.pop(vector_store_id)

        await self._call(self._write, run)

    # --- search ---------------------------------------------------------------------------

    async def search(self, query: Query) -> list[Hit]:
        limit = clamp_limit(query.limit)
        if limit == 0 or not query.vector_store_ids:
            return []
        hits = await self._call(self._search, query, limit)
        return await finish(hits, query, limit, self._reranker)

    def _search(self, query: Query, limit: int) -> list[Hit]:
        db = self._db()
        stores = storable_ids(query.vector_store_ids)
        files = None if query.file_ids is None else storable_ids(query.file_ids)
        stores_json = json.dumps(stores)
        files_json = None if files is None else json.dumps(files)
        fused_limit = first_stage_limit(limit, self._reranker, query.ranker)
        depth = candidate_depth(fused_limit)
        keyword: list[tuple[int, float]] = []
        _, text_weight = weights(
            query.embedding_weight, query.text_weight, query.vector is not None
        )
        db.execute("BEGIN")
        try:
            match, half = self._match(db, query.text) if text_weight > 0 else (None, BM25_HALF)
            if match is not None:
                keyword = [
                    (chunk_id, saturate(-rank, half))
                    for chunk_id, rank in db.execute(
                        "SELECT c.id, bm25(chunks_fts) AS r FROM chunks_fts "
                        "JOIN chunks c INDEXED BY chunks_owner ON c.id = chunks_fts.rowid "
                        "WHERE chunks_fts MATCH ? "
                        "AND c.store IN (SELECT value FROM json_each(?)) "
                        "AND (? IS NULL OR c.file IN (SELECT value FROM json_each(?))) "
                        "ORDER BY r LIMIT ?",
                        (match, stores_json, files_json, files_json, depth),
                    )
                ]
            dense: list[tuple[int, float]] = []
            cosines: dict[int, float] = {}
            if query.vector is not None:
                vector = unit_vector(query.vector)
                wanted = None if files is None else frozenset(files)
                also = [chunk_id for chunk_id, _ in keyword]
                dense, cosines = merge_dense(
                    (
                        self._matrix(db, store).search(vector, wanted, depth, also)
                        for store in stores
                    ),
                    depth,
                )
            fused = fuse(
                keyword,
                dense,
                cosines,
                has_vector=query.vector is not None,
                embedding_weight=query.embedding_weight,
                text_weight=query.text_weight,
                limit=fused_limit,
                score_threshold=0.0
                if applies(self._reranker, query.ranker)
                else query.score_threshold,
            )
            rows = {
                row[0]: row[1:]
                for row in db.execute(
                    "SELECT id, store, file, idx, text FROM chunks "
                    "WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps([f.chunk_id for f in fused]),),
                )
            }
        finally:
            db.execute("COMMIT")
        return hits_of(fused, rows)

    def _match(self, db: sqlite3.Connection, text: str) -> tuple[str | None, float]:
        """The MATCH expression for `text`: its tokens but stop words, the most common ones
        left out when ranking all their matches would cost more than KEYWORD_POSTINGS; and
        the bm25 that scores 0.5 for it (`fusion.bm25_half`)."""
        words = content_tokens(text)
        if not words:
            return None, BM25_HALF
        frequencies = []
        now = time.monotonic()
        for word in words:
            terms = self._stem(db, word)
            found = [f for f in (self._frequency(db, term, now) for term in terms) if f > 0]
            # A token FTS5 reads as several terms is a phrase: it matches at most where its
            # rarest term does (and nowhere if one of them is found nowhere).
            frequencies.append(min(found) if len(found) == len(terms) and found else 0)
        kept = within_budget(frequencies, KEYWORD_POSTINGS)
        half = bm25_half((frequencies[i] for i in kept), self._rows(db))
        return fts5_terms([words[i] for i in kept]), half

    def _rows(self, db: sqlite3.Connection) -> int:
        """How many chunks the FTS index holds (bm25's N), counted again only after a write
        to any store (each write bumps its store's version; a drop deletes the row)."""
        key = db.execute("SELECT count(*), total(version) FROM stores").fetchone()
        stamp = (int(key[0]), float(key[1]))
        if self._counted is None or self._counted[0] != stamp:
            self._counted = (stamp, int(db.execute("SELECT count(*) FROM chunks").fetchone()[0]))
        return self._counted[1]

    def _frequency(self, db: sqlite3.Connection, term: str, now: float) -> int:
        """How many chunks hold `term`, remembered for FREQUENCY_SECONDS: fts5vocab counts
        them by reading the term's whole list (milliseconds for a common word in 100k
        chunks), and the budget only needs the rough size."""
        cached = self._frequencies.get(term)
        if cached is not None and now - cached[1] < FREQUENCY_SECONDS:
            return cached[0]
        row = db.execute("SELECT doc FROM chunks_vocab WHERE term = ?", (term,)).fetchone()
        frequency = 0 if row is None else int(row[0])
        if len(self._frequencies) >= _STEMS_CACHED:
            self._frequencies.clear()
        self._frequencies[term] = (frequency, now)
        return frequency

    def _stem(self, db: sqlite3.Connection, word: str) -> tuple[str, ...]:
        """The terms FTS5 indexes for `word` (stemmed, folded), from the query tokenizer."""
        cached = self._stems.get(word)
        if cached is not None:
            return cached
        db.execute("DELETE FROM temp.query_fts")
        db.execute("INSERT INTO temp.query_fts (rowid, text) VALUES (1, ?)", (word,))
        terms = tuple(
            str(row[0]) for row in db.execute("SELECT term FROM temp.query_vocab ORDER BY offset")
        )
        if len(self._stems) >= _STEMS_CACHED:
            self._stems.clear()
        self._stems[word] = terms
        return terms

    def _matrix(self, db: sqlite3.Connection, store: str) -> VectorMatrix:
        row = db.execute("SELECT version FROM stores WHERE store = ?", (store,)).fetchone()
        version = 0 if row is None else int(row[0])
        cached = self._matrices.get(store, version)
        if cached is not None:
            return cached
        matrix = VectorMatrix.build(
            version,
            db.execute(
                "SELECT chunk_id, file, vector FROM windows WHERE store = ? ORDER BY chunk_id",
                (store,),
            ),
        )
        self._matrices.put(store, matrix)
        return matrix

    # --- lifecycle ------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._call(lambda: self._db().execute("SELECT 1").fetchone())

    async def aclose(self) -> None:
        def close() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            self._matrices.clear()

        await self._call(close)
        self._executor.shutdown(wait=True)


def _delete_file_rows(db: sqlite3.Connection, store: str, file: str) -> None:
    db.execute("DELETE FROM windows WHERE store = ? AND file = ?", (store, file))
    db.execute("DELETE FROM chunks WHERE store = ? AND file = ?", (store, file))
