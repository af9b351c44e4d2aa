"""The reranker slot: a second stage that reorders the fused hits (a cross-encoder, a remote
rerank API). None is built in; an index given one applies it for the rankers "auto" and
"default-2024-11-15", never for "none"."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Protocol

from hal9100.retrieval.base import Hit, Query, Ranker

RERANK_DEPTH = 50
"""How many fused hits a reranker sees (at least the caller's limit)."""


class Reranker(Protocol):
    async def rerank(self, query: str, hits: list[Hit]) -> list[Hit]:
        """`hits` reordered, each with a new `score` in [0, 1]; may drop hits, never adds."""
        ...


def applies(reranker: Reranker | None, ranker: Ranker) -> bool:
    return reranker is not None and ranker != "none"


def first_stage_limit(limit: int, reranker: Reranker | None, ranker: Ranker) -> int:
    """How many fused hits to make: more when a reranker will choose among them."""
    return max(limit, RERANK_DEPTH) if applies(reranker, ranker) else limit


async def finish(hits: list[Hit], query: Query, limit: int, reranker: Reranker | None) -> list[Hit]:
    """The final list: the fused hits as they are, or reranked, clamped to [0, 1], sorted,
    thresholded and cut to `limit`."""
    if reranker is None or not applies(reranker, query.ranker) or not hits:
        return hits[:limit]
    reranked = await reranker.rerank(query.text, hits)
    clean = [
        replace(hit, score=min(max(hit.score, 0.0), 1.0) if math.isfinite(hit.score) else 0.0)
        for hit in reranked
    ]
    clean.sort(key=lambda hit: -hit.score)
    return [hit for hit in clean if hit.score >= query.score_threshold][:limit]
