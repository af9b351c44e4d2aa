"""Benchmark: retrieval quality and speed of the chunk index (issue 11).

Subcommands (run from the repository root with the project's virtualenv):

    .venv/bin/python bench/bench_retrieval.py embed      # embed the FAQ corpus once (minutes)
    .venv/bin/python bench/bench_retrieval.py quality --backend sqlite
    .venv/bin/python bench/bench_retrieval.py ingest     # parse / chunk / embed throughput
    .venv/bin/python bench/bench_retrieval.py query --chunks 10000 100000 --backend sqlite

* `quality`: the Python FAQ corpus of `eval_corpus.py` (179 questions, 2,826 documents), each
  document ingested as one file the way the ingestion job does it (`chunking.plan` auto
  800/400, its windows embedded with the local model, `ChunkIndex.add`), searched through
  `ChunkIndex.search` for keyword only (no query vector), dense only (`text_weight=0`) and
  hybrid (both weights 1); a file's rank is its best chunk's. Prints recall@5, MRR@10 and
  nDCG@10 (one relevant document per query, so nDCG@10 = 1/log2(1 + rank)).
* `embed`: fills the vector cache (`--cache`, default under /tmp) with every window and query
  of the corpus, so that `quality` re-runs take seconds; `quality` fills it as needed too.
* `ingest`: pages/s of `parsers.iter_pages` over real multi-page PDFs, chunks/s of
  `chunking.plan`, windows/s of `LocalEmbedder.embed`, each timed on its own.
* `query`: p50/p95 of `ChunkIndex.search` over stores of N synthetic chunks: text cut from the
  corpus documents (recombined to reach N), vectors random unit vectors (real ones take an hour
  to make at 100k; timing only, never quality), queries the FAQ questions with their real
  embeddings (the embedding itself timed apart, once per query).

Backends: `sqlite` (a file under a temporary directory), `pgvector` (pgserver's PostgreSQL,
started as the tests start it), `pg-bytea` (PostgreSQL at `--pg`, default Debian's on
127.0.0.1:5432, which has no pgvector: the numpy fallback). Each PostgreSQL run creates a
database of its own and drops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import math
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import eval_corpus  # noqa: E402

from hal9100.ingestion import chunking  # noqa: E402
from hal9100.retrieval.base import Chunk, ChunkIndex, Query  # noqa: E402

COMMAND = "bench/bench_retrieval.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "hal9100-bench" / "faq-vectors.npz"
STORE = "vs_bench"
MAX_TOKENS, OVERLAP = 800, 400  # OpenAI's `auto` chunking strategy
SEARCH_LIMIT = 50  # chunks asked for per query: enough distinct files for the top 10
DIMS = 384
PDFS = (
    Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf"),
    Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf"),
)

Matrix = npt.NDArray[np.float32]


def say(line: str) -> None:
    print(line, flush=True)


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {platform.python_version()}"


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# --- corpus and vectors -----------------------------------------------------------------


@dataclass
class Planned:
    doc_id: str
    plan: chunking.Plan


def document_text(title: str, body: str) -> str:
    """A corpus document as the file a user would upload: its heading, then its text."""
    return f"{title}\n\n{body}"


def plan_corpus(corpus: eval_corpus.Corpus) -> list[Planned]:
    return [
        Planned(doc_id, chunking.plan([document_text(*doc)], MAX_TOKENS, OVERLAP))
        for doc_id, doc in corpus.docs.items()
    ]


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class VectorCache:
    """Embeddings of texts by the local model, kept in an .npz file keyed by sha256."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, Matrix] = {}
        if path.exists():
            with np.load(path) as data:
                for key, row in zip(data["keys"], data["vectors"], strict=True):
                    self.rows[str(key)] = row

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self.rows), dtype="U64")
        vectors = np.stack(list(self.rows.values())) if self.rows else np.zeros((0, DIMS))
        partial = self.path.with_suffix(".partial.npz")
        np.savez(partial, keys=keys, vectors=vectors.astype(np.float32))
        partial.replace(self.path)

    async def fill(self, texts: Sequence[str], threads: int) -> None:
        from hal9100.embeddings.local import LocalEmbedder

        missing = list(dict.fromkeys(t for t in texts if _key(t) not in self.rows))
        if not missing:
            return
        say(f"embedding {len(missing):,} texts with LocalEmbedder(threads={threads}) ...")
        embedder = LocalEmbedder(threads=threads)
        started = time.perf_counter()
        step = 512
        try:
            for start in range(0, len(missing), step):
                batch = missing[start : start + step]
                for text, vector in zip(batch, await embedder.embed(batch), strict=True):
                    self.rows[_key(text)] = np.asarray(vector, dtype=np.float32)
                self.save()
                done = start + len(batch)
                rate = done / (time.perf_counter() - started)
                say(f"  {done:,}/{len(missing):,} ({rate:.1f}/s)")
        finally:
            await embedder.aclose()

    def get(self, text: str) -> Matrix:
        return self.rows[_key(text)]


# --- backends ---------------------------------------------------------------------------


def _migrations(names: Sequence[str]) -> Callable[[Any], None]:
    def apply(connection: Any) -> None:
        from alembic.migration import MigrationContext
        from alembic.operations import Operations

        versions = ROOT / "src/hal9100/db/migrations/versions"
        for name in names:
            for path in sorted(versions.glob(f"{name}_*.py")):
                spec = importlib.util.spec_from_file_location(path.stem, path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                with Operations.context(MigrationContext.configure(connection)):
                    module.upgrade()

    return apply


class Bench:
    """One backend's index for one measurement: made empty, filled, `ready()` for searching,
    dropped at the end. PostgreSQL gets migration 0005 before the load and the later ones
    (0006's HNSW indexes) after it, as a bulk load would: building an HNSW index at once is
    far faster than growing it row by row."""

    def __init__(self, backend: str, pg_url: str, workdir: Path) -> None:
        self.backend = backend
        self.pg_url = pg_url
        self.workdir = workdir
        self.index: ChunkIndex
        self._engine: object = None
        self._admin_url = ""
        self._name = ""

    async def __aenter__(self) -> Bench:
        if self.backend == "sqlite":
            from hal9100.retrieval.sqlite import SqliteChunkIndex

            self.index = SqliteChunkIndex(self.workdir / "vectors.sqlite3")
            return self
        import asyncpg

        from hal9100.db.engine import make_engine
        from hal9100.retrieval.postgres import PostgresChunkIndex

        if self.backend == "pgvector":
            from pgvector import pgvector_admin_url

            self._admin_url = pgvector_admin_url()
        else:
            self._admin_url = self.pg_url
        self._name = f"hal9100_bench_{uuid.uuid4().hex[:12]}"
        admin = await asyncpg.connect(self._admin_url)
        await admin.execute(f'CREATE DATABASE "{self._name}"')
        await admin.close()
        url = self._admin_url.rsplit("/", 1)[0].replace("postgres://", "postgresql+asyncpg://")
        engine = make_engine(f"{url}/{self._name}", pool_size=2)
        self._engine = engine
        async with engine.begin() as conn:
            await conn.run_sync(_migrations(["0005"]))
        self.index = PostgresChunkIndex(engine)
        want = "vector" if self.backend == "pgvector" else "bytea"
        if await self.index.layout() != want:
            raise SystemExit(f"{self.backend}: the server gave the {await self.index.layout()}")
        return self

    async def ready(self) -> float:
        """After the load: later migrations and fresh planner statistics; the seconds taken."""
        started = time.perf_counter()
        if self.backend == "sqlite":
            return 0.0
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import AsyncEngine

        from hal9100.retrieval.postgres import PostgresChunkIndex

        engine = self._engine
        assert isinstance(engine, AsyncEngine)
        async with engine.begin() as conn:
            await conn.execute(text("SET maintenance_work_mem = '1GB'"))
            await conn.run_sync(_migrations(["0006"]))
        async with engine.connect() as conn:
            await conn.execute(text("COMMIT"))
            for table in ("chunk_index_chunks", "chunk_index_windows"):
                await conn.execute(text(f"VACUUM ANALYZE {table}"))
        await self.index.aclose()
        self.index = PostgresChunkIndex(engine)  # reads the indexes 0006 made
        await self.index.layout()
        return time.perf_counter() - started

    async def __aexit__(self, *exc: object) -> None:
        await self.index.aclose()
        if self.backend == "sqlite":
            return
        import asyncpg
        from sqlalchemy.ext.asyncio import AsyncEngine

        assert isinstance(self._engine, AsyncEngine)
        await self._engine.dispose()
        admin = await asyncpg.connect(self._admin_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{self._name}" WITH (FORCE)')
        await admin.close()


# --- quality ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    vector: bool
    embedding_weight: float
    text_weight: float


MODES = {
    "keyword": Mode(vector=False, embedding_weight=1.0, text_weight=1.0),
    "dense": Mode(vector=True, embedding_weight=1.0, text_weight=0.0),
    "hybrid": Mode(vector=True, embedding_weight=1.0, text_weight=1.0),
}


@dataclass
class Scores:
    recall5: float
    mrr10: float
    ndcg10: float
    found: list[int | None]


def score(ranks: list[int | None]) -> Scores:
    """Metrics for one relevant document per query; rank from 1, None when not returned."""
    n = len(ranks)
    return Scores(
        recall5=sum(1 for r in ranks if r is not None and r <= 5) / n,
        mrr10=sum(1 / r for r in ranks if r is not None and r <= 10) / n,
        ndcg10=sum(1 / math.log2(1 + r) for r in ranks if r is not None and r <= 10) / n,
        found=ranks,
    )


async def quality(args: argparse.Namespace) -> None:
    corpus = eval_corpus.load()
    started = time.perf_counter()
    planned = plan_corpus(corpus)
    windows = sum(len(p.plan.windows) for p in planned)
    chunks = sum(len(p.plan.chunks) for p in planned)
    say(
        f"corpus: {corpus.source}; {len(corpus.docs):,} documents -> {chunks:,} chunks, "
        f"{windows:,} windows (planned in {time.perf_counter() - started:.1f} s)"
    )
    cache = VectorCache(args.cache)
    queries = list(corpus.queries.items())
    await cache.fill(
        [w for p in planned for w in p.plan.windows] + [q for _, q in queries], args.threads
    )
    results: dict[str, Scores] = {}
    with tempfile.TemporaryDirectory(prefix="hal9100-bench-") as workdir:
        async with Bench(args.backend, args.pg, Path(workdir)) as bench:
            index = bench.index
            started = time.perf_counter()
            for attempt, p in enumerate(planned, start=1):
                await index.begin_file(STORE, p.doc_id, attempt)
                await index.add(
                    STORE,
                    p.doc_id,
                    attempt,
                    [
                        Chunk(
                            i,
                            c.text,
                            c.tokens,
                            [
                                cast(Sequence[float], cache.get(p.plan.windows[w]))
                                for w in c.windows
                            ],
                        )
                        for i, c in enumerate(p.plan.chunks)
                    ],
                )
            await bench.ready()
            index = bench.index
            say(f"indexed into {args.backend} in {time.perf_counter() - started:.1f} s")
            for mode, spec in MODES.items():
                ranks: list[int | None] = []
                for qid, text in queries:
                    hits = await index.search(
                        Query(
                            vector_store_ids=[STORE],
                            text=text,
                            vector=cache.get(text).tolist() if spec.vector else None,
                            limit=SEARCH_LIMIT,
                            embedding_weight=spec.embedding_weight,
                            text_weight=spec.text_weight,
                            ranker="none",
                        )
                    )
                    files = list(dict.fromkeys(hit.file_id for hit in hits))
                    relevant = next(iter(corpus.qrels[qid]))
                    ranks.append(files.index(relevant) + 1 if relevant in files else None)
                results[mode] = score(ranks)
    say("")
    say(f"quality, {args.backend}, {len(queries)} queries, file level (best chunk)")
    say(f"{'mode':<8} {'recall@5':>9} {'MRR@10':>8} {'nDCG@10':>8} {'not in top 10':>14}")
    for mode, s in results.items():
        missing = sum(1 for r in s.found if r is None or r > 10)
        say(f"{mode:<8} {s.recall5:>9.3f} {s.mrr10:>8.3f} {s.ndcg10:>8.3f} {missing:>14}")
    if args.show_losses:
        for n, (qid, text) in enumerate(queries):
            k, d, h = (results[m].found[n] for m in ("keyword", "dense", "hybrid"))
            if h is None or any(r is not None and r < h for r in (k, d)):
                say(f"  {qid}: keyword {k} dense {d} hybrid {h}: {text}")
    say(f"command: {COMMAND}")


# --- speed -----------------------------------------------------------------------------


def synthetic_files(
    corpus: eval_corpus.Corpus, total_chunks: int, seed: int
) -> list[tuple[str, chunking.Plan]]:
    """Files of about `total_chunks` chunks in all, each two corpus documents run together
    (so the vocabulary and document lengths are the corpus's, recombined), planned as
    ingestion plans them; the last file is cut to hit the count exactly."""
    rng = random.Random(seed)
    docs = [document_text(*doc) for doc in corpus.docs.values()]
    files: list[tuple[str, chunking.Plan]] = []
    count = 0
    while count < total_chunks:
        text = rng.choice(docs) + "\n\n" + rng.choice(docs)
        plan = chunking.plan([text], MAX_TOKENS, OVERLAP)
        keep = plan.chunks[: total_chunks - count]
        files.append((f"file-{len(files):06d}", chunking.Plan(keep, plan.windows)))
        count += len(keep)
    return files


async def fill_synthetic(
    index: ChunkIndex, files: list[tuple[str, chunking.Plan]], seed: int
) -> tuple[int, float]:
    """Index the files with random unit vectors (one per window, shared by the chunks that
    list it, as real ones are); returns the window rows written and the seconds taken."""
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    rows = 0
    for n, (file_id, plan) in enumerate(files):
        vectors = rng.normal(size=(len(plan.windows), DIMS)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        await index.begin_file(STORE, file_id, 1)
        await index.add(
            STORE,
            file_id,
            1,
            [
                Chunk(i, c.text, c.tokens, [cast(Sequence[float], vectors[w]) for w in c.windows])
                for i, c in enumerate(plan.chunks)
            ],
        )
        rows += sum(len(c.windows) for c in plan.chunks)
        if n % 2000 == 0 and n:
            say(f"  {n:,} files, {rows:,} window rows, {time.perf_counter() - started:.0f} s")
    return rows, time.perf_counter() - started


async def query_speed(args: argparse.Namespace) -> None:
    corpus = eval_corpus.load()
    questions = list(corpus.queries.values())
    cache = VectorCache(args.cache)
    await cache.fill(questions, args.threads)
    from hal9100.embeddings.local import LocalEmbedder

    # The query's own embedding, timed apart: one text, as a search embeds it.
    embedder = LocalEmbedder(threads=args.threads)
    await embedder.embed(["warm-up"])
    embed_times = []
    for text in questions[:50]:
        began = time.perf_counter()
        await embedder.embed([text])
        embed_times.append(time.perf_counter() - began)
    await embedder.aclose()
    say(
        f"query embedding (LocalEmbedder threads={args.threads}, 50 questions): "
        f"p50 {percentile(embed_times, 0.5) * 1000:.1f} ms, "
        f"p95 {percentile(embed_times, 0.95) * 1000:.1f} ms"
    )
    table: list[str] = []
    for size in args.chunks:
        files = synthetic_files(corpus, size, seed=size)
        for backend in args.backend:
            with tempfile.TemporaryDirectory(prefix="hal9100-bench-") as workdir:
                where = Path(workdir)
                kept = backend == "sqlite" and args.keep_sqlite is not None
                if kept:
                    # The same file for runs of different code (before/after a change).
                    where = args.keep_sqlite / f"sqlite-{size}"
                    where.mkdir(parents=True, exist_ok=True)
                async with Bench(backend, args.pg, where) as bench:
                    if kept and (where / "filled").exists():
                        say(f"{backend}: reusing {where}")
                    else:
                        say(f"{backend}: indexing {size:,} chunks in {len(files):,} files ...")
                        rows, seconds = await fill_synthetic(bench.index, files, seed=size)
                        extra = await bench.ready()
                        say(
                            f"{backend}: {size:,} chunks, {rows:,} window rows in "
                            f"{seconds:.0f} s (+{extra:.0f} s for migration 0006 and ANALYZE)"
                        )
                        if kept:
                            (where / "filled").touch()
                    index = bench.index
                    for mode, spec in MODES.items():
                        times = await time_queries(index, questions, cache, spec, args.repeat)
                        line = (
                            f"{backend:<9} {size:>7,} {mode:<8} "
                            f"p50 {percentile(times, 0.5) * 1000:6.1f} ms  "
                            f"p95 {percentile(times, 0.95) * 1000:6.1f} ms  "
                            f"max {max(times) * 1000:6.1f} ms  (n={len(times)})"
                        )
                        say(line)
                        table.append(line)
    say("")
    say("query latency without the embedding (ChunkIndex.search, limit 20, one at a time)")
    for line in table:
        say(line)
    say("vectors: random unit vectors (timing only); text: corpus documents recombined")
    say(f"command: {COMMAND}")


async def time_queries(
    index: ChunkIndex,
    questions: list[str],
    cache: VectorCache,
    spec: Mode,
    repeat: int,
) -> list[float]:
    async def one(text: str) -> float:
        query = Query(
            vector_store_ids=[STORE],
            text=text,
            vector=cache.get(text).tolist() if spec.vector else None,
            limit=20,
            embedding_weight=spec.embedding_weight,
            text_weight=spec.text_weight,
            ranker="none",
        )
        began = time.perf_counter()
        await index.search(query)
        return time.perf_counter() - began

    for text in questions[:10]:  # warm-up: caches, the vector matrix, plans
        await one(text)
    return [await one(text) for _ in range(repeat) for text in questions]


async def ingest_speed(args: argparse.Namespace) -> None:
    from hal9100.embeddings.local import LocalEmbedder
    from hal9100.ingestion.parsers import iter_pages

    say("parse (parsers.iter_pages, pypdf):")
    all_pages: list[str] = []
    for pdf in PDFS:
        data = pdf.read_bytes()
        times = []
        for _ in range(args.repeat):
            began = time.perf_counter()
            pages = list(iter_pages(data, pdf.name, "application/pdf"))
            times.append(time.perf_counter() - began)
        all_pages.extend(pages)
        best = statistics.median(times)
        say(
            f"  {pdf} ({len(data):,} bytes): {len(pages)} pages in {best:.3f} s "
            f"(median of {args.repeat}) = {len(pages) / best:.1f} pages/s"
        )
    corpus = eval_corpus.load()
    texts = [document_text(*doc) for doc in corpus.docs.values()]
    chunking.plan(["warm-up"], MAX_TOKENS, OVERLAP)
    began = time.perf_counter()
    plans = [chunking.plan([t], MAX_TOKENS, OVERLAP) for t in texts]
    seconds = time.perf_counter() - began
    chunks = sum(len(p.chunks) for p in plans)
    windows = [w for p in plans for w in p.windows]
    say(
        f"chunk (chunking.plan auto 800/400, the {len(texts):,} corpus documents, "
        f"{sum(len(t) for t in texts):,} chars): {chunks:,} chunks, {len(windows):,} windows "
        f"in {seconds:.2f} s = {chunks / seconds:,.0f} chunks/s"
    )
    began = time.perf_counter()
    pdf_plan = chunking.plan(all_pages, MAX_TOKENS, OVERLAP)
    seconds = time.perf_counter() - began
    say(
        f"chunk (the {len(all_pages)} PDF pages as one file): {len(pdf_plan.chunks)} chunks in "
        f"{seconds:.3f} s = {len(pdf_plan.chunks) / seconds:,.0f} chunks/s"
    )
    sample = windows[: args.embed_windows]
    for threads in sorted({1, args.threads}):
        embedder = LocalEmbedder(threads=threads)
        await embedder.embed(["warm-up"])
        began = time.perf_counter()
        await embedder.embed(sample)
        seconds = time.perf_counter() - began
        await embedder.aclose()
        say(
            f"embed (LocalEmbedder threads={threads}, {len(sample)} windows of <= 192 o200k "
            f"tokens): {seconds:.1f} s = {len(sample) / seconds:.1f} windows/s"
        )
    say(f"command: {COMMAND}")


async def embed_only(args: argparse.Namespace) -> None:
    corpus = eval_corpus.load()
    planned = plan_corpus(corpus)
    cache = VectorCache(args.cache)
    await cache.fill(
        [w for p in planned for w in p.plan.windows] + list(corpus.queries.values()), args.threads
    )
    say(f"cache {args.cache}: {len(cache.rows):,} vectors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--threads", type=int, default=2, help="LocalEmbedder threads")
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432/postgres")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("embed")
    q = sub.add_parser("quality")
    q.add_argument("--backend", choices=["sqlite", "pgvector", "pg-bytea"], default="sqlite")
    q.add_argument("--show-losses", action="store_true")
    s = sub.add_parser("query")
    s.add_argument("--chunks", type=int, nargs="+", default=[10_000])
    s.add_argument(
        "--backend", nargs="+", choices=["sqlite", "pgvector", "pg-bytea"], default=["sqlite"]
    )
    s.add_argument("--repeat", type=int, default=1, help="passes over the 179 questions")
    s.add_argument(
        "--keep-sqlite",
        type=Path,
        help="keep the SQLite stores in this folder and reuse them in later runs",
    )
    i = sub.add_parser("ingest")
    i.add_argument("--repeat", type=int, default=3)
    i.add_argument("--embed-windows", type=int, default=256)
    args = parser.parse_args()
    say(f"machine: {machine()}")
    if args.command == "embed":
        asyncio.run(embed_only(args))
    elif args.command == "quality":
        asyncio.run(quality(args))
    elif args.command == "query":
        asyncio.run(query_speed(args))
    else:
        asyncio.run(ingest_speed(args))


if __name__ == "__main__":
    main()
