"""The chunk index through its interface, on every backend: SQLite (a real file), PostgreSQL
without pgvector (Debian's on 127.0.0.1:5432: the bytea + numpy fallback) and PostgreSQL with
pgvector (pgserver's). Each PostgreSQL gets a database of its own for the session, with
migrations 0005 and 0006 applied directly (it does not depend on the app's other tables), dropped at
the end; tests keep apart by using vector store ids of their own.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import numpy as np
import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text as sql_text
from sqlalchemy.engine import Connection

from hal9100.db.engine import make_engine
from hal9100.retrieval import postgres as postgres_module
from hal9100.retrieval import sqlite as sqlite_module
from hal9100.retrieval.base import Chunk, ChunkIndex, Fenced, Hit, Query
from hal9100.retrieval.fusion import (
    BM25_HALF,
    BM25_IDF_SCALE,
    VectorMatrix,
    bm25_half,
    fuse,
    unit_vector,
)
from hal9100.retrieval.keywords import content_tokens, within_budget
from hal9100.retrieval.postgres import PostgresChunkIndex
from hal9100.retrieval.sqlite import SqliteChunkIndex
from pgvector import pgvector_admin_url

PG_ADMIN_URL = os.environ.get("HAL9100_TEST_PG", "postgres://postgres@127.0.0.1:5432/postgres")
REQUIRE_SERVICES = os.environ.get("HAL9100_REQUIRE_SERVICES", "") not in ("", "0", "false")
VERSIONS = Path(__file__).resolve().parent.parent / "src/hal9100/db/migrations/versions"
MIGRATIONS = [VERSIONS / "0005_chunk_index.py", VERSIONS / "0006_chunk_vector_hnsw.py"]
BACKENDS = ["sqlite", "pg-bytea", "pg-vector"]
T = TypeVar("T")

# --- databases --------------------------------------------------------------------------


def _apply_migration(connection: Connection) -> None:
    for path in MIGRATIONS:
        spec = importlib.util.spec_from_file_location(f"chunk_index_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with Operations.context(MigrationContext.configure(connection)):
            module.upgrade()


async def _create_database(admin_url: str) -> tuple[str, str]:
    name = f"hal9100_index_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = admin_url.rsplit("/", 1)[0].replace("postgres://", "postgresql+asyncpg://") + "/" + name
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(_apply_migration)
    await engine.dispose()
    return name, url


async def _drop_database(admin_url: str, name: str) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _run_apart(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` on an event loop of its own, in a thread of its own: session fixtures
    are first requested from inside a test's running loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _session_database(admin_url: str | None, reason: str) -> Iterator[str]:
    if admin_url is None:
        if REQUIRE_SERVICES:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        name, url = _run_apart(_create_database(admin_url))
    except (OSError, asyncpg.PostgresError) as exc:
        if REQUIRE_SERVICES:
            pytest.fail(f"{reason}: {exc}")
        pytest.skip(f"{reason}: {exc}")
    yield url
    _run_apart(_drop_database(admin_url, name))


@pytest.fixture(scope="session")
def pg_bytea_url() -> Iterator[str]:
    yield from _session_database(PG_ADMIN_URL, "PostgreSQL at HAL9100_TEST_PG is unreachable")


@pytest.fixture(scope="session")
def pg_vector_url() -> Iterator[str]:
    yield from _session_database(pgvector_admin_url(), "pgserver did not start")


@pytest.fixture(params=BACKENDS)
async def index(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ChunkIndex]:
    backend: str = request.param
    if backend == "sqlite":
        sqlite_index = SqliteChunkIndex(tmp_path / "vectors.sqlite3")
        yield sqlite_index
        await sqlite_index.aclose()
        return
    url = request.getfixturevalue("pg_bytea_url" if backend == "pg-bytea" else "pg_vector_url")
    engine = make_engine(url, pool_size=2)
    pg_index = PostgresChunkIndex(engine)
    layout = await pg_index.layout()
    assert layout == ("bytea" if backend == "pg-bytea" else "vector")
    yield pg_index
    await pg_index.aclose()
    await engine.dispose()


# --- data -------------------------------------------------------------------------------

DOCS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Photosynthesis converts sunlight, water and carbon dioxide into glucose and oxygen.",
    "The central bank raised interest rates to fight inflation this quarter.",
    "Kittens and puppies are popular pets; cats purr when they are content.",
    "A recipe for sourdough bread: flour, water, salt and a lively starter.",
    "Quarterly earnings beat expectations as revenue grew twelve percent.",
]


def _vector(seed: int, dims: int = 16) -> list[float]:
    rng = np.random.default_rng(seed)
    return [float(x) for x in unit_vector(rng.normal(size=dims).tolist())]


def _chunks(texts: list[str], dims: int | None = 16, seed: int = 0) -> list[Chunk]:
    return [
        Chunk(
            index=i,
            text=t,
            tokens=len(t.split()),
            # Two windows per chunk, the second the one a query below aims at.
            vectors=[]
            if dims is None
            else [_vector(seed * 1000 + 2 * i, dims), _vector(seed * 1000 + 2 * i + 1, dims)],
        )
        for i, t in enumerate(texts)
    ]


def _store() -> str:
    return f"vs_{uuid.uuid4().hex[:16]}"


async def _filled(
    index: ChunkIndex, store: str, file: str, texts: list[str], **kw: object
) -> list[Chunk]:
    chunks = _chunks(texts, **kw)  # type: ignore[arg-type]
    await index.begin_file(store, file, 1)
    await index.add(store, file, 1, chunks)
    return chunks


def _check(hits: list[Hit], limit: int, threshold: float = 0.0) -> None:
    assert len(hits) <= min(limit, 50)
    scores = [h.score for h in hits]
    assert all(0.0 <= s <= 1.0 and not math.isnan(s) for s in scores), scores
    assert scores == sorted(scores, reverse=True)
    assert all(s >= threshold for s in scores)


# --- tests ------------------------------------------------------------------------------


async def test_round_trip_hybrid(index: ChunkIndex) -> None:
    store = _store()
    chunks = await _filled(index, store, "file-a", DOCS)
    await index.ping()
    # The dense side alone finds the chunk whose second window is the query vector.
    target = chunks[4]
    hits = await index.search(Query([store], "zzz", target.vectors[1], limit=3))
    _check(hits, 3)
    assert (hits[0].file_id, hits[0].index, hits[0].text) == ("file-a", 4, DOCS[4])
    assert hits[0].vector_store_id == store
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    # Keywords and vector agreeing put it first too; stemming finds "jumping" -> "jumps".
    hits = await index.search(Query([store], "fox jumping", chunks[0].vectors[0], limit=6))
    _check(hits, 6)
    assert hits[0].index == 0
    assert hits[0].details["keyword_rank"] == 1.0 and hits[0].details["dense_rank"] == 1.0


async def test_keyword_only(index: ChunkIndex) -> None:
    store = _store()
    await _filled(index, store, "file-a", DOCS, dims=None)
    hits = await index.search(Query([store], "bank interest rates", None, limit=10))
    _check(hits, 10)
    assert hits[0].index == 2
    assert {h.index for h in hits} <= {0, 2}
    assert 0 < hits[0].score < 1
    # Only punctuation: nothing to match, nothing found, nothing raised.
    assert await index.search(Query([store], "?!... -- ''", None, limit=10)) == []
    # A vector query on a keyword-only store: the keyword side still answers.
    hits = await index.search(Query([store], "sourdough", _vector(1), limit=5))
    assert [h.index for h in hits] == [4]


async def test_unrelated_query_scores_low(index: ChunkIndex) -> None:
    store = _store()
    await _filled(index, store, "file-a", DOCS)
    hits = await index.search(Query([store], "xylophone quantum", _vector(99_999), limit=5))
    _check(hits, 5)
    assert hits and hits[0].score < 0.6  # random 16-dim vectors: cosine well below 1
    assert (
        await index.search(
            Query([store], "xylophone quantum", _vector(99_999), limit=5, score_threshold=0.7)
        )
        == []
    )


async def test_weights_and_threshold(index: ChunkIndex) -> None:
    store = _store()
    chunks = await _filled(index, store, "file-a", DOCS)
    query_vector = chunks[3].vectors[0]
    dense_only = await index.search(
        Query([store], "bread flour", query_vector, limit=6, text_weight=0.0)
    )
    assert dense_only[0].index == 3 and "keyword_rank" not in dense_only[0].details
    text_only = await index.search(
        Query([store], "bread flour", query_vector, limit=6, embedding_weight=0.0)
    )
    assert text_only[0].index == 4 and [h.index for h in text_only] == [4]
    everything = await index.search(Query([store], "bread flour", query_vector, limit=6))
    _check(everything, 6)
    cut = everything[1].score
    kept = await index.search(
        Query([store], "bread flour", query_vector, limit=6, score_threshold=cut)
    )
    _check(kept, 6, cut)
    assert [h.index for h in kept] == [h.index for h in everything if h.score >= cut]


async def test_file_ids_filter(index: ChunkIndex) -> None:
    store = _store()
    await _filled(index, store, "file-a", DOCS[:3], seed=1)
    b = await _filled(index, store, "file-b", DOCS[3:], seed=2)
    query = Query([store], "bank water", b[0].vectors[0], limit=10, file_ids=["file-a"])
    hits = await index.search(query)
    assert hits and {h.file_id for h in hits} == {"file-a"}
    many = [f"file-{i}" for i in range(5000)] + ["file-b"]
    hits = await index.search(
        Query([store], "bank water", b[0].vectors[0], limit=10, file_ids=many)
    )
    assert hits and {h.file_id for h in hits} == {"file-b"}
    # file-b's chunk 0 carries the query vector.
    assert [h.index for h in hits if h.details.get("dense_rank") == 1.0] == [0]
    assert await index.search(Query([store], "bank", b[0].vectors[0], limit=10, file_ids=[])) == []


async def test_stores_are_separate_and_combinable(index: ChunkIndex) -> None:
    one, two = _store(), _store()
    await _filled(index, one, "file-a", DOCS[:3], seed=3)
    await _filled(index, two, "file-a", DOCS[3:], seed=4)
    hits = await index.search(Query([one], "cats bank", None, limit=10))
    assert {h.vector_store_id for h in hits} == {one}
    hits = await index.search(Query([one, two], "cats bank", None, limit=10))
    assert {h.vector_store_id for h in hits} == {one, two}


async def test_fencing(index: ChunkIndex) -> None:
    store = _store()
    await _filled(index, store, "file-a", ["alpha beta gamma", "delta epsilon"])
    # A newer attempt drops what the older wrote and refuses its later writes.
    await index.begin_file(store, "file-a", 2)
    assert await index.search(Query([store], "alpha delta", None, limit=10)) == []
    with pytest.raises(Fenced):
        await index.add(store, "file-a", 1, _chunks(["stale words alpha"]))
    with pytest.raises(Fenced):
        await index.begin_file(store, "file-a", 1)
    assert await index.search(Query([store], "stale alpha", None, limit=10)) == []
    await index.add(store, "file-a", 2, _chunks(["fresh words"]))
    hits = await index.search(Query([store], "fresh", None, limit=10))
    assert [(h.file_id, h.text) for h in hits] == [("file-a", "fresh words")]
    # An attempt that never began cannot write either.
    with pytest.raises(Fenced):
        await index.add(store, "file-b", 1, _chunks(["never began"]))
    assert await index.search(Query([store], "began", None, limit=10)) == []


async def test_abandon_drops_only_the_current_attempts_chunks(index: ChunkIndex) -> None:
    store = _store()
    await _filled(index, store, "file-a", ["alpha beta gamma"])
    # A later attempt has begun and written: an older one giving up leaves its chunks.
    await index.begin_file(store, "file-a", 2)
    await index.add(store, "file-a", 2, _chunks(["fresh words"]))
    await index.abandon(store, "file-a", 1)
    hits = await index.search(Query([store], "fresh", None, limit=10))
    assert [h.text for h in hits] == ["fresh words"]
    # The current attempt giving up drops what it wrote, and is fenced from then on.
    await index.abandon(store, "file-a", 2)
    assert await index.search(Query([store], "fresh alpha", None, limit=10)) == []
    with pytest.raises(Fenced):
        await index.add(store, "file-a", 2, _chunks(["late write"]))
    # A file with no attempt on record: nothing to drop, nothing raised.
    await index.abandon(store, "file-z", 1)


async def test_drop_file_and_store(index: ChunkIndex) -> None:
    store = _store()
    await _filled(index, store, "file-a", DOCS[:3])
    b = await _filled(index, store, "file-b", DOCS[3:], seed=5)
    await index.drop_file(store, "file-a")
    hits = await index.search(Query([store], "bank fox water", b[0].vectors[0], limit=10))
    assert hits and {h.file_id for h in hits} == {"file-b"}
    # The dropped file's attempt is fenced; the file can come back with a new ingestion.
    with pytest.raises(Fenced):
        await index.add(store, "file-a", 1, _chunks(["late write"]))
    await _filled(index, store, "file-a", ["it came back"])
    assert [h.file_id for h in await index.search(Query([store], "came", None, limit=5))] == [
        "file-a"
    ]
    await index.drop_store(store)
    assert (
        await index.search(Query([store], "bank fox water came", b[0].vectors[0], limit=10)) == []
    )
    with pytest.raises(Fenced):
        await index.add(store, "file-b", 1, _chunks(["after the store went"]))


async def test_vectors_seen_after_writes(index: ChunkIndex) -> None:
    store = _store()
    first = await _filled(index, store, "file-a", DOCS[:2], seed=6)
    assert (await index.search(Query([store], "", first[1].vectors[1], limit=1)))[0].index == 1
    await index.begin_file(store, "file-a", 2)
    second = _chunks(["replacement text"], seed=7)
    await index.add(store, "file-a", 2, second)
    hits = await index.search(Query([store], "", second[0].vectors[0], limit=5))
    assert [(h.index, h.text) for h in hits] == [(0, "replacement text")]


async def test_dimensions_per_store(index: ChunkIndex) -> None:
    small, large = _store(), _store()
    a = await _filled(index, small, "file-a", DOCS[:3], dims=8, seed=8)
    b = await _filled(index, large, "file-b", DOCS[3:], dims=384, seed=9)
    hits = await index.search(Query([small], "", a[2].vectors[0], limit=5))
    assert hits[0].index == 2 and hits[0].vector_store_id == small
    hits = await index.search(Query([large], "", b[1].vectors[1], limit=5))
    assert hits[0].index == 1 and hits[0].vector_store_id == large
    # A query across both: only the store of matching size answers on the dense side.
    hits = await index.search(Query([small, large], "", b[1].vectors[1], limit=5))
    assert {h.vector_store_id for h in hits} == {large}


async def test_limit_and_hostile_chunk_text(index: ChunkIndex) -> None:
    store = _store()
    texts = [f"common word number {i} \x00 with \ud800 surrogate" for i in range(80)]
    await _filled(index, store, "file-a", texts, dims=None)
    hits = await index.search(Query([store], "common", None, limit=500))
    _check(hits, 500)
    assert len(hits) == 50
    assert all("\x00" not in h.text and "\ud800" not in h.text for h in hits)
    assert await index.search(Query([store], "common", None, limit=0)) == []


HOSTILE = st.lists(
    st.sampled_from(
        [
            '"',
            "'",
            "*",
            "-",
            "OR",
            "AND",
            "NOT",
            "NEAR(",
            ":",
            "^",
            "(",
            ")",
            "\\",
            "\x00",
            "\ud800",
            "\udfff",
            "fox",
            "bank",
            "é",
            " ",
            "|",
            "&",
            "!",
            "<->",
            "{",
            "+",
            "\n",
        ]
    ),
    max_size=40,
).map("".join) | st.text(max_size=200)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=HOSTILE, threshold=st.sampled_from([0.0, 0.2, 0.5]), with_vector=st.booleans())
@example(text="x" * 10_000, threshold=0.0, with_vector=True)
@example(text="fox " * 2_500, threshold=0.0, with_vector=False)
@example(text='"fox" OR NEAR(bank, 2) -fox "unbalanced ((', threshold=0.0, with_vector=False)
async def test_hostile_queries(
    index: ChunkIndex, text: str, threshold: float, with_vector: bool
) -> None:
    store = getattr(index, "_hostile_store", None)
    if store is None:
        store = _store()
        await _filled(index, store, "file-a", DOCS)
        index._hostile_store = store  # type: ignore[attr-defined]
    hits = await index.search(
        Query(
            [store],
            text,
            _vector(3) if with_vector else None,
            limit=7,
            score_threshold=threshold,
            file_ids=["file-a", text] if len(text) % 2 else None,
        )
    )
    _check(hits, 7, threshold)


# --- speed measures (bench/bench_retrieval.py): same answers, less work ------------------


@given(frequencies=st.lists(st.integers(min_value=0, max_value=10**7), max_size=70))
@example(frequencies=[])
@example(frequencies=[10**7, 10**7])
def test_within_budget(frequencies: list[int]) -> None:
    budget = 20_000
    kept = within_budget(frequencies, budget)
    assert kept == sorted(set(kept))
    assert all(0 <= i < len(frequencies) for i in kept)
    if not frequencies:
        assert kept == []
        return
    # The rarest always stays; the kept ones fit the budget unless that one alone does not.
    rarest = min(range(len(frequencies)), key=lambda i: (frequencies[i], i))
    assert rarest in kept
    assert sum(frequencies[i] for i in kept) <= max(budget, frequencies[rarest])
    # Every token left out is at least as common as every token kept, and did not fit.
    dropped = [i for i in range(len(frequencies)) if i not in kept]
    if dropped:
        assert min(frequencies[i] for i in dropped) >= max(frequencies[i] for i in kept)
        spent = sum(frequencies[i] for i in kept)
        assert spent + min(frequencies[i] for i in dropped) > budget


async def test_common_words_left_out_of_keyword_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: a word found in most chunks costs ranking time and adds nothing; the query's
    rare words still find their chunk, and a query of common words only still answers."""
    monkeypatch.setattr(sqlite_module, "KEYWORD_POSTINGS", 100)
    index = SqliteChunkIndex(tmp_path / "vectors.sqlite3")
    try:
        store = _store()
        texts = [f"the python function number {i} returns the value" for i in range(150)]
        texts[77] += " with a zeppelin"
        await _filled(index, store, "file-a", texts, dims=None)
        match, _ = await index._call(
            lambda: index._match(index._db(), "Does the python zeppelin fly?")
        )
        assert match == '"zeppelin" OR "fly"'
        hits = await index.search(Query([store], "How does the zeppelin function?", None, 5))
        assert hits[0].index == 77
        # Stemmed as FTS5 stems: "functions" is the indexed "function".
        hits = await index.search(Query([store], "the functions", None, 5))
        assert len(hits) == 5
    finally:
        await index.aclose()


def test_vector_matrix_shares_windows() -> None:
    """Windows shared by overlapping chunks are one matrix row; every chunk still scores
    its own best window, and file filters still apply."""
    a, b, c = (unit_vector(_vector(seed, 8)) for seed in (1, 2, 3))
    rows = [
        (1, "f", a.tobytes()),
        (1, "f", b.tobytes()),
        (2, "f", b.tobytes()),
        (2, "f", c.tobytes()),
        (3, "g", a.tobytes()),
    ]
    matrix = VectorMatrix.build(1, rows)
    assert matrix.blocks[8].matrix.shape == (3, 8)
    best, extra = matrix.search(c, None, 10, also=[1, 3, 99])
    assert best[0] == (2, pytest.approx(1.0, abs=1e-5))
    assert {chunk for chunk, _ in best} == {1, 2, 3}
    assert extra[1] == pytest.approx(float(max(a @ c, b @ c)), abs=1e-5)
    assert set(extra) == {1, 3}
    best, _ = matrix.search(a, frozenset({"g"}), 10, also=[])
    assert [chunk for chunk, _ in best] == [3]


async def test_pgvector_hnsw_used_and_exact_for_small_stores(pg_vector_url: str) -> None:
    """pgvector: a large store's nearest windows come from migration 0006's HNSW index, a
    small store of the same table is searched exactly, and both find their chunks."""
    engine = make_engine(pg_vector_url, pool_size=2)
    index = PostgresChunkIndex(engine)
    try:
        assert await index.layout() == "vector"
        big, small = _store(), _store()
        chunks = await _filled(index, big, "file-a", [f"chunk {i}" for i in range(120)], dims=384)
        few = await _filled(index, small, "file-b", DOCS[:3], dims=384, seed=5)
        async with engine.connect() as conn:
            # On a table this small the planner may rightly prefer a scan and a sort to the
            # HNSW index (whether it does depends on statistics autovacuum may or may not have
            # gathered yet: a CI run got a bitmap scan of the store index and a sort); with
            # those ruled out, the plan shows whether the query's shape can use the index.
            # The statistics are gathered first, so the plan does not depend on autovacuum.
            await conn.execute(sql_text("ANALYZE chunk_index_windows"))
            for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
                await conn.execute(sql_text(f"SET LOCAL {setting} = off"))
            plan = "\n".join(
                str(row[0])
                for row in await conn.execute(
                    sql_text("EXPLAIN " + str(postgres_module._HNSW[384])),
                    {
                        "q": "[" + ",".join(str(x) for x in chunks[9].vectors[0]) + "]",
                        "windows": 200,
                        "depth": 50,
                        "stores": [big],
                        "files": None,
                    },
                )
            )
        assert "chunk_index_windows_hnsw_384" in plan, plan
        for target in (3, 9, 117):
            hits = await index.search(Query([big], "", chunks[target].vectors[1], limit=3))
            assert hits[0].index == target and hits[0].score == pytest.approx(1.0, abs=1e-4)
        hits = await index.search(Query([small], "", few[2].vectors[0], limit=3))
        assert [h.index for h in hits] == [2, 0, 1] or hits[0].index == 2
        assert {h.vector_store_id for h in hits} == {small}
        hits = await index.search(Query([big], "", few[2].vectors[0], limit=3, file_ids=["x"]))
        assert hits == []
    finally:
        await index.aclose()
        await engine.dispose()


def test_content_tokens() -> None:
    assert content_tokens("How do I make a zeppelin fly?") == ["make", "zeppelin", "fly"]
    # All stop words: searched as they are rather than not at all.
    assert content_tokens("To be or not to be") == ["to", "be", "or", "not"]
    assert content_tokens("\x00\ud800 ...") == []


def test_fusion_orders_by_score() -> None:
    """A hit with strong evidence on one side ranks above one found first by a weak other
    side (rank fusion alone put them the other way round), and scores fall down the list."""
    fused = fuse(
        keyword=[(1, 0.05), (2, 0.6)],
        dense=[(3, 0.9), (1, 0.2)],
        cosines={2: 0.1},
        has_vector=True,
        embedding_weight=1.0,
        text_weight=1.0,
        limit=10,
        score_threshold=0.0,
    )
    assert [f.chunk_id for f in fused] == [3, 2, 1]
    assert [f.score for f in fused] == sorted((f.score for f in fused), reverse=True)
    assert fused[0].score == pytest.approx(0.9)
    assert fused[1].score == pytest.approx(1 - 0.9 * 0.4)
    cut = fuse(
        keyword=[(1, 0.05), (2, 0.6)],
        dense=[(3, 0.9), (1, 0.2)],
        cosines={2: 0.1},
        has_vector=True,
        embedding_weight=1.0,
        text_weight=1.0,
        limit=10,
        score_threshold=0.5,
    )
    assert [f.chunk_id for f in cut] == [3, 2]


def test_bm25_half() -> None:
    assert bm25_half([], 100) == BM25_HALF
    assert bm25_half([0, 0], 100) == BM25_HALF
    one = bm25_half([10], 1000)
    assert one == pytest.approx(BM25_IDF_SCALE * math.log((1000 - 10 + 0.5) / 10.5))
    # A word in most chunks adds (almost) nothing, as in FTS5's bm25.
    assert bm25_half([10, 900], 1000) == pytest.approx(one + BM25_IDF_SCALE * 1e-6)


def test_matrix_cache_drops_the_least_recently_searched() -> None:
    from hal9100.retrieval.fusion import MatrixCache, VectorMatrix

    def matrix(version: int) -> VectorMatrix:
        rows = [(i, "file", np.ones(16, dtype=np.float32).tobytes()) for i in range(10)]
        return VectorMatrix.build(version, rows)

    size = matrix(1).nbytes
    cache = MatrixCache(max_bytes=2 * size)
    cache.put("a", matrix(1))
    cache.put("b", matrix(1))
    assert cache.get("a", 1) is not None  # a is now the most recent
    cache.put("c", matrix(1))
    assert cache.get("b", 1) is None
    assert cache.get("a", 1) is not None and cache.get("c", 1) is not None
    # A newer version is a miss, and one store alone over the budget is still kept.
    assert cache.get("a", 2) is None
    tiny = MatrixCache(max_bytes=1)
    tiny.put("big", matrix(1))
    assert tiny.get("big", 1) is not None
