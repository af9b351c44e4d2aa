"""Fusing the keyword and dense rankings into one list of scored hits, and the exact vector
search in numpy that the SQLite index and PostgreSQL without pgvector share.

The rule
--------
Each backend returns two candidate lists, each fetched deeper than the caller's limit
(`candidate_depth`): keyword candidates with a keyword score in [0, 1] and dense candidates
with their cosine (the best window's). Every candidate also gets its cosine when the query
has a vector, even if only the keyword side found it, so that both numbers below are known
for every hit.

* Score: a weighted probabilistic OR of the two pieces of evidence,
  `1 - (1 - max(cosine, 0)) ** (w_e / w) * (1 - keyword) ** (w_t / w)` with
  `w = max(w_e, w_t)` (OpenAI's `hybrid_search` weights): strong evidence from either side
  scores high (a chunk that is the query's paraphrase but shares no word with it still
  scores its cosine), both together score higher, and an unrelated query (small cosine, no
  or weak keyword match) scores low whatever the store holds, which rank normalisation
  would not give (it scores the best of a bad lot 1.0). With equal weights it is
  `1 - (1 - cosine) * (1 - keyword)`; a side with weight 0 drops out.
* Order: by that score, best first; ties go to the weighted reciprocal rank fusion
  (`w_e / (60 + dense_rank) + w_t / (60 + keyword_rank)`), then the chunk id. Scores are
  therefore monotone in the returned order and each hit reports its own score:
  `score_threshold` drops exactly the hits below it.

  Reciprocal rank fusion alone ordered the hits first (it was the plan): it counts both
  rankings as equally good, and on the evaluation corpus (bench/bench_retrieval.py) the
  keyword ranking of questions is much weaker than the dense one, so RRF ranked below the
  dense side alone (recall@5 0.676 against 0.715), while the score, which weighs each side
  by how strong its evidence is, ranked above both (numbers in the bench's output).

Without a query vector the dense weight is 0, so order and score are the keyword side's
alone; with `text_weight` 0 they are the dense side's alone. Negative or NaN weights count
as 0, and if both are 0 both count as 1.

The keyword score saturates the backend's native relevance `r >= 0` as `r / (r + K)`, K
being the relevance that scores 0.5. SQLite (bm25, sign flipped): K is `BM25_IDF_SCALE`
times the sum of the IDFs of the query's terms (FTS5's own formula); that sum is about the
bm25 of a chunk of ordinary length holding each term once, so the keyword score means the
same for a short and a long query, and a chunk matching only the query's commonest words
scores little; `BM25_HALF` when the IDFs are unknown. PostgreSQL has no BM25: its relevance
is the sum of the IDFs of the query's tokens a chunk holds (from the planner's lexeme
statistics) plus `ts_rank_cd` (term frequency and proximity, mostly below 1), saturated with
the same K; the two backends' keyword scores are comparable in spirit, not equal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from hal9100.retrieval.base import Hit

RRF_K = 60
MAX_LIMIT = 50
BM25_HALF = 5.0
"""bm25 (SQLite FTS5, negated) that scores 0.5 when the query's IDFs are unknown: roughly one
occurrence of a term found in a thousandth of a large store's chunks."""
BM25_IDF_SCALE = 2.0
"""K over the query's summed IDFs. Tuned on the evaluation corpus (bench/bench_retrieval.py,
the Python FAQ): 1.0, the value with a meaning (0.5 for a chunk holding each term once),
put hybrid above the dense side in recall@5 but not in MRR@10 or nDCG@10; 0.5 to 4 were
tried, 3 scored best, 2 is the smallest tried above both sides on all three."""

FloatArray = npt.NDArray[np.float32]


def candidate_depth(limit: int) -> int:
    """How many candidates each side fetches before fusion."""
    return max(50, 4 * limit)


def bm25_half(frequencies: Iterable[int], rows: int) -> float:
    """The bm25 that scores 0.5 for a query whose terms are found in `frequencies` chunks
    each, out of `rows`: BM25_IDF_SCALE times the sum of their IDFs as FTS5 computes them
    (each at least 1e-6); BM25_HALF when no term is known."""
    total = 0.0
    for frequency in frequencies:
        if frequency > 0:
            idf = math.log((rows - frequency + 0.5) / (frequency + 0.5)) if rows > 0 else 0.0
            total += max(idf, 1e-6)
    return BM25_IDF_SCALE * total if total > 0 else BM25_HALF


def clamp_limit(limit: int) -> int:
    return max(0, min(int(limit), MAX_LIMIT))


def saturate(relevance: float, half: float) -> float:
    if not half > 0 or math.isinf(half):
        half = BM25_HALF
    if not relevance > 0 or math.isnan(relevance):
        return 0.0
    if math.isinf(relevance):
        return 1.0
    return relevance / (relevance + half)


def unit_vector(vector: Sequence[float]) -> FloatArray:
    """`vector` as float32 of unit length (non-finite values as 0; a zero vector stays 0):
    callers promise unit vectors, this keeps a careless one from scoring above 1."""
    array = np.nan_to_num(np.asarray(vector, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    norm = float(np.linalg.norm(array))
    if norm > 0 and math.isfinite(norm):
        array = array / norm
    return array.astype(np.float32, copy=False)


def weights(embedding_weight: float, text_weight: float, has_vector: bool) -> tuple[float, float]:
    def sane(weight: float) -> float:
        return min(float(weight), 1e6) if weight > 0 else 0.0  # NaN > 0 is False

    dense = sane(embedding_weight) if has_vector else 0.0
    text = sane(text_weight)
    if dense + text <= 0:
        return (1.0 if has_vector else 0.0), 1.0
    return dense, text


@dataclass(slots=True)
class Fused:
    chunk_id: int
    score: float
    details: dict[str, float] = field(default_factory=dict)


def fuse(
    keyword: Sequence[tuple[int, float]],
    dense: Sequence[tuple[int, float]],
    cosines: Mapping[int, float],
    *,
    has_vector: bool,
    embedding_weight: float,
    text_weight: float,
    limit: int,
    score_threshold: float,
) -> list[Fused]:
    """The fused, scored, thresholded and cut list (rule in the module docstring).

    `keyword`: (chunk id, keyword score in [0, 1]) best first; `dense`: (chunk id, cosine)
    best first; `cosines`: the cosine of any other candidate (missing: 0)."""
    w_dense, w_text = weights(embedding_weight, text_weight, has_vector)
    rrf: dict[int, float] = {}
    details: dict[int, dict[str, float]] = {}
    keyword_scores: dict[int, float] = {}
    cosine_of: dict[int, float] = dict(cosines)
    for rank, (chunk_id, score) in enumerate(keyword, start=1):
        if chunk_id in keyword_scores:
            continue
        keyword_scores[chunk_id] = score
        rrf[chunk_id] = rrf.get(chunk_id, 0.0) + w_text / (RRF_K + rank)
        details.setdefault(chunk_id, {}).update(keyword=score, keyword_rank=float(rank))
    if w_dense > 0:
        seen: set[int] = set()
        for rank, (chunk_id, cosine) in enumerate(dense, start=1):
            if chunk_id in seen:
                continue
            seen.add(chunk_id)
            cosine_of[chunk_id] = cosine
            rrf[chunk_id] = rrf.get(chunk_id, 0.0) + w_dense / (RRF_K + rank)
            details.setdefault(chunk_id, {})["dense_rank"] = float(rank)
    top_weight = max(w_dense, w_text)
    absolute: dict[int, float] = {}
    for chunk_id in rrf:
        cosine = cosine_of.get(chunk_id, 0.0)
        cosine = min(max(cosine, 0.0), 1.0) if math.isfinite(cosine) else 0.0
        keyword_score = keyword_scores.get(chunk_id, 0.0)
        miss = (1.0 - cosine) ** (w_dense / top_weight) * (1.0 - keyword_score) ** (
            w_text / top_weight
        )
        absolute[chunk_id] = min(max(1.0 - miss, 0.0), 1.0)
        if has_vector:
            details[chunk_id]["dense"] = cosine
    order = sorted(rrf, key=lambda c: (-absolute[c], -rrf[c], c))
    hits: list[Fused] = []
    for chunk_id in order[: clamp_limit(limit)]:
        if absolute[chunk_id] < score_threshold:
            break
        info = details[chunk_id]
        info.update(rrf=rrf[chunk_id], absolute=absolute[chunk_id])
        hits.append(Fused(chunk_id, absolute[chunk_id], info))
    return hits


@dataclass(slots=True)
class _Block:
    """The windows of one embedding size: a matrix of distinct vectors, and for each stored
    window row its vector and its chunk."""

    matrix: FloatArray
    row_vectors: npt.NDArray[np.intp]
    """The matrix row of each stored window row: overlapping chunks (800 tokens, 400 apart)
    share most of their windows, so each distinct vector is multiplied once."""
    starts: npt.NDArray[np.intp]
    """First window row of each chunk (rows are grouped by chunk) for the per-chunk maximum."""
    chunk_ids: npt.NDArray[np.int64]
    chunk_files: npt.NDArray[np.int32]


def hits_of(fused: Sequence[Fused], rows: Mapping[int, Sequence[Any]]) -> list[Hit]:
    """The fused chunks as hits, from their rows (store, file, index, text) by chunk id; a
    chunk deleted between the candidate queries and the read of its row is left out."""
    return [
        Hit(
            vector_store_id=rows[f.chunk_id][0],
            file_id=rows[f.chunk_id][1],
            index=rows[f.chunk_id][2],
            text=rows[f.chunk_id][3],
            score=f.score,
            details=f.details,
        )
        for f in fused
        if f.chunk_id in rows
    ]


# What the cached matrices of one process may hold in all: the least recently searched
# stores are dropped past it (and rebuilt from the stored rows when searched again).
CACHE_BYTES = 512 * 1024 * 1024


class MatrixCache:
    """The stores' matrices of one process, least recently used dropped first past
    `max_bytes`: stores made per thread come and go, and nothing else would ever free
    theirs."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: dict[str, VectorMatrix] = {}

    def get(self, store: str, version: int) -> VectorMatrix | None:
        found = self._items.get(store)
        if found is None or found.version != version:
            return None
        # Most recent last: dicts keep insertion order.
        self._items[store] = self._items.pop(store)
        return found

    def put(self, store: str, matrix: VectorMatrix) -> None:
        self._items.pop(store, None)
        self._items[store] = matrix
        total = sum(m.nbytes for m in self._items.values())
        for oldest in list(self._items):
            if total <= self.max_bytes or oldest == store:
                break
            total -= self._items.pop(oldest).nbytes

    def pop(self, store: str) -> None:
        self._items.pop(store, None)

    def clear(self) -> None:
        self._items.clear()


@dataclass(slots=True)
class VectorMatrix:
    """A vector store's windows in memory, for exact cosine search (dot products of unit
    vectors): a chunk's score is its best window's. Built from the stored rows, cached by the
    index against the store's version, so it is rebuilt only after a write."""

    version: int
    files: dict[str, int]
    blocks: dict[int, _Block]

    @property
    def nbytes(self) -> int:
        return sum(
            b.matrix.nbytes
            + b.row_vectors.nbytes
            + b.starts.nbytes
            + b.chunk_ids.nbytes
            + b.chunk_files.nbytes
            for b in self.blocks.values()
        )

    @classmethod
    def build(cls, version: int, rows: Iterable[tuple[int, str, bytes]]) -> VectorMatrix:
        """From (chunk id, file id, float32 bytes) rows sorted by chunk id."""
        file_codes: dict[str, int] = {}
        # Per size: each row's chunk and file code, and its vector's position among the
        # distinct vectors (bytes-equal windows are one row of the matrix).
        grouped: dict[int, tuple[list[int], list[int], list[int], dict[bytes, int]]] = {}
        for chunk_id, file_id, blob in rows:
            dims = len(blob) // 4
            if dims == 0:
                continue
            chunks, files, positions, distinct = grouped.setdefault(dims, ([], [], [], {}))
            chunks.append(chunk_id)
            files.append(file_codes.setdefault(file_id, len(file_codes)))
            positions.append(distinct.setdefault(blob[: dims * 4], len(distinct)))
        blocks: dict[int, _Block] = {}
        for dims, (chunks, files, positions, distinct) in grouped.items():
            matrix = np.frombuffer(b"".join(distinct), dtype=np.float32).reshape(
                len(distinct), dims
            )
            row_chunks = np.asarray(chunks, dtype=np.int64)
            row_files = np.asarray(files, dtype=np.int32)
            change = np.flatnonzero(np.diff(row_chunks)) + 1
            starts = np.concatenate(([0], change)).astype(np.intp)
            blocks[dims] = _Block(
                matrix=matrix,
                row_vectors=np.asarray(positions, dtype=np.intp),
                starts=starts,
                chunk_ids=row_chunks[starts],
                chunk_files=row_files[starts],
            )
        return cls(version=version, files=file_codes, blocks=blocks)

    def search(
        self,
        vector: FloatArray,
        file_ids: frozenset[str] | None,
        depth: int,
        also: Sequence[int],
    ) -> tuple[list[tuple[int, float]], dict[int, float]]:
        """The `depth` best chunks as (chunk id, cosine), best first, and the cosines of the
        chunks in `also` that are in this store (for keyword-only candidates)."""
        return self.pick(self.score(vector, file_ids), depth, also)

    def score(self, vector: FloatArray, file_ids: frozenset[str] | None) -> ChunkScores | None:
        """Every chunk's cosine (-inf outside `file_ids`): the costly half of `search`, which
        needs no keyword candidates, so that it can run beside the keyword search."""
        block = self.blocks.get(int(vector.shape[0]))
        if block is None or block.matrix.shape[0] == 0:
            return None
        scores = np.maximum.reduceat((block.matrix @ vector)[block.row_vectors], block.starts)
        if file_ids is not None:
            allowed = np.asarray(
                [self.files[f] for f in file_ids if f in self.files] or [-1],
                dtype=np.int32,
            )
            scores = np.where(np.isin(block.chunk_files, allowed), scores, -np.inf)
        return ChunkScores(block.chunk_ids, scores)

    @staticmethod
    def pick(
        scored: ChunkScores | None, depth: int, also: Sequence[int]
    ) -> tuple[list[tuple[int, float]], dict[int, float]]:
        """`search`'s answer from `score`'s."""
        if scored is None:
            return [], {}
        chunk_ids, scores = scored.chunk_ids, scored.scores
        count = min(depth, scores.shape[0])
        top = np.argpartition(-scores, count - 1)[:count] if count else np.empty(0, np.intp)
        top = top[np.argsort(-scores[top], kind="stable")]
        best = [(int(chunk_ids[i]), float(scores[i])) for i in top if np.isfinite(scores[i])]
        extra: dict[int, float] = {}
        if also:
            wanted = np.asarray(also, dtype=np.int64)
            positions = np.searchsorted(chunk_ids, wanted)
            positions = np.minimum(positions, chunk_ids.shape[0] - 1)
            for chunk_id, position in zip(wanted, positions, strict=True):
                if chunk_ids[position] == chunk_id and np.isfinite(scores[position]):
                    extra[int(chunk_id)] = float(scores[position])
        return best, extra


@dataclass(slots=True)
class ChunkScores:
    chunk_ids: npt.NDArray[np.int64]
    """Sorted."""
    scores: npt.NDArray[np.float32]


def merge_dense(
    parts: Iterable[tuple[list[tuple[int, float]], dict[int, float]]], depth: int
) -> tuple[list[tuple[int, float]], dict[int, float]]:
    """Several stores' dense results as one: the `depth` best overall, and all cosines."""
    best: list[tuple[int, float]] = []
    cosines: dict[int, float] = {}
    for top, extra in parts:
        best.extend(top)
        cosines.update(extra)
    best.sort(key=lambda item: (-item[1], item[0]))
    return best[:depth], cosines
