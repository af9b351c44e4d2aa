"""Searching vector stores: the one path that the search endpoint and the `file_search` tool
share. Files are chosen first (completed, matching the attribute filters), then the chunk
index is asked, with the query embedded by the model each store was built with."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from hal9100.core.clock import now
from hal9100.db.engine import SessionMaker
from hal9100.db.models import VectorStore
from hal9100.embeddings.base import Embedder, EmbeddingError
from hal9100.retrieval.base import ChunkIndex, Hit, Query, Ranker
from hal9100.vector_stores.filters import matches
from hal9100.vector_stores.repository import StoreFileRepository, VectorStoreRepository
from hal9100.vector_stores.schemas import ComparisonFilter, CompoundFilter

log = logging.getLogger(__name__)

# What of a query is embedded and searched: more is no better a query, and costs more.
MAX_QUERY_CHARS = 10_000

# `rewrite_query`: the words a search engine gains nothing from. OpenAI rewrites with a model;
# HAL-9100 has no model of its own to spare for it, so it drops these and the punctuation,
# and reports the result as `search_query`, as OpenAI does.
_STOPWORDS = frozenset(
    """a about an and are as at be by can could did do does for from had has have how i
    in is it its me my of on or please should tell than that the their there these this
    those to was were what when where which who whom whose why will with would you your""".split()
)
_WORD = re.compile(r"\w+")


def rewrite(query: str) -> str:
    words = _WORD.findall(query)
    kept = [w for w in words if w.lower() not in _STOPWORDS]
    return " ".join(kept or words) or query


@dataclass(frozen=True, slots=True)
class SearchResult:
    vector_store_id: str
    file_id: str
    filename: str
    score: float
    text: str
    attributes: dict[str, Any]


def _ranker(value: Any) -> Ranker:
    # Assistants' file_search tool names its ranker `default_2024_08_21`; the search API's is
    # `default-2024-11-15`. Both mean "the default ranker".
    if value == "none":
        return "none"
    if value == "default-2024-11-15":
        return "default-2024-11-15"
    return "auto"


class VectorSearch:
    def __init__(
        self, sessions: SessionMaker, index: ChunkIndex, embedder: Embedder | None
    ) -> None:
        self.sessions = sessions
        self.index = index
        self.embedder = embedder

    async def search(
        self,
        vector_store_ids: Sequence[str],
        query: str | Sequence[str],
        *,
        max_num_results: int = 10,
        ranking_options: dict[str, Any] | None = None,
        filters: ComparisonFilter | CompoundFilter | dict[str, Any] | None = None,
    ) -> list[SearchResult]:
        """The best chunks of the stores' completed files for the query (several queries:
        each chunk's best score), best first. Expired and unknown stores are skipped."""
        queries = [query] if isinstance(query, str) else list(query)
        queries = [q[:MAX_QUERY_CHARS] for q in queries]
        if isinstance(filters, dict):
            from pydantic import TypeAdapter

            filters = TypeAdapter(ComparisonFilter | CompoundFilter).validate_python(filters)
        options = ranking_options or {}
        hybrid = options.get("hybrid_search") or {}
        stamp = now()
        async with self.sessions() as session:
            stores = list(
                await session.scalars(
                    select(VectorStore).where(VectorStore.id.in_(list(vector_store_ids)))
                )
            )
            stores = [s for s in stores if s.expires_at is None or s.expires_at > stamp]
            files: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
            allowed: dict[str, list[str]] = {}
            for store in stores:
                kept = []
                for file_id, attributes, filename in await StoreFileRepository(
                    session, store.id
                ).searchable():
                    if filters is None or matches(filters, attributes):
                        kept.append(file_id)
                        files[store.id, file_id] = (filename, attributes or {})
                allowed[store.id] = kept
            repo = VectorStoreRepository(session)
            # A store's use moves its expiry on; once a minute is enough, and keeps searches
            # from queueing on a write each.
            await repo.touch([s.id for s in stores if stamp - s.last_active_at >= 60], stamp)
            await session.commit()

        # Each store is searched on its own: a file may be in two stores with other
        # attributes, or completed in one and still being ingested in the other. The query
        # is embedded once, for the stores whose vectors compare with it: those built with
        # this process's embedding model (or with no vectors yet); the others are searched by
        # keywords only.
        model = self.embedder.name if self.embedder is not None else None
        dense = {s.id for s in stores if model and s.embedding_model in (None, model)}
        for store in stores:
            if store.id not in dense and store.embedding_model and model:
                log.warning(
                    "vector store %s was embedded with %s, not %s: searching it by keywords",
                    store.id,
                    store.embedding_model,
                    model,
                )
        best: dict[tuple[str, str, int], Hit] = {}
        for text in queries:
            vector = await self._embed(text) if dense else None
            for store in stores:
                if not allowed[store.id]:
                    continue
                hits = await self.index.search(
                    Query(
                        vector_store_ids=[store.id],
                        text=text,
                        vector=vector if store.id in dense else None,
                        limit=max_num_results,
                        file_ids=allowed[store.id],
                        embedding_weight=float(hybrid.get("embedding_weight", 1.0)),
                        text_weight=float(hybrid.get("text_weight", 1.0)),
                        score_threshold=float(options.get("score_threshold", 0.0)),
                        ranker=_ranker(options.get("ranker")),
                    )
                )
                for hit in hits:
                    key = (hit.vector_store_id, hit.file_id, hit.index)
                    if key not in best or best[key].score < hit.score:
                        best[key] = hit
        ranked = sorted(best.values(), key=lambda h: h.score, reverse=True)
        results: list[SearchResult] = []
        seen: set[tuple[str, str]] = set()
        for hit in ranked:
            described = files.get((hit.vector_store_id, hit.file_id))
            # The same chunk of one file in two stores is one result.
            if described is None or (hit.file_id, hit.text) in seen:
                continue
            seen.add((hit.file_id, hit.text))
            results.append(
                SearchResult(
                    vector_store_id=hit.vector_store_id,
                    file_id=hit.file_id,
                    filename=described[0],
                    score=hit.score,
                    text=hit.text,
                    attributes=described[1],
                )
            )
            if len(results) == max_num_results:
                break
        return results

    async def _embed(self, text: str) -> list[float] | None:
        if self.embedder is None or not text.strip():
            return None
        try:
            return (await self.embedder.embed([text]))[0]
        except EmbeddingError as exc:
            # The keyword half still answers; a search that fails outright helps nobody.
            log.warning("query embedding failed, searching by keywords only: %s", exc.message)
            return None
