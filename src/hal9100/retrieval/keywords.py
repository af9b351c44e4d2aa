"""Turning any user text into a keyword query that cannot break the search engine.

Both backends take only the text's `\\w+` tokens: SQLite gets each token quoted as an FTS5
string (a doubled `"` inside; `\\w` has none, but the quoting is what makes operators such as
`OR`, `NEAR(`, `*`, `^` or `:` plain words) and OR-joined; PostgreSQL gets the tokens joined by
spaces (all must match) or by ` or ` (any may) for `websearch_to_tsquery`, which never raises
on such input once NUL and lone surrogates are gone and the text is short. User text never
reaches `to_tsquery` or a MATCH expression unquoted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MAX_QUERY_CHARS = 1000
"""Longer queries are cut: websearch_to_tsquery overflows its stack near 500 KB, and a
thousand characters of keywords already match everything that will match."""
MAX_TOKENS = 64
"""Distinct tokens kept: beyond this an OR query only costs time."""

STOPWORDS = frozenset(
    """
    i me my myself we our ours ourselves you your yours yourself yourselves he him his
    himself she her hers herself it its itself they them their theirs themselves what which
    who whom this that these those am is are was were be been being have has had having do
    does did doing a an the and but if or because as until while of at by for with about
    against between into through during before after above below to from up down in out on
    off over under again further then once here there when where why how all any both each
    few more most other some such no nor not only own same so than too very s t can will
    just don should now
    """.split()
)
"""English stop words: Snowball's list, as PostgreSQL's `english` configuration drops them, so
that both backends search the same words. In a question ("How do I ...?") they are most of
the words, and BM25 gives those that are not in half the chunks (I, do, can, my) real weight:
chunks full of them outranked chunks on the question's subject."""

_UNSAFE = re.compile("[\x00\ud800-\udfff]")
_TOKEN = re.compile(r"\w+")


def clean_text(text: str) -> str:
    """`text` without NUL (PostgreSQL text cannot hold it) and lone surrogates (not
    encodable as UTF-8): for queries and for stored chunk text alike."""
    return _UNSAFE.sub("", text)


def tokens(text: str) -> list[str]:
    """The distinct `\\w+` tokens of the first MAX_QUERY_CHARS characters, lower-cased, in
    order of first appearance, at most MAX_TOKENS of them."""
    seen: dict[str, None] = {}
    for token in _TOKEN.findall(clean_text(text[: MAX_QUERY_CHARS * 2])[:MAX_QUERY_CHARS]):
        seen.setdefault(token.lower(), None)
        if len(seen) >= MAX_TOKENS:
            break
    return list(seen)


def content_tokens(text: str) -> list[str]:
    """`tokens(text)` without English stop words, or all of them when they are all stop
    words ("to be or not to be" still searches)."""
    words = tokens(text)
    content = [word for word in words if word not in STOPWORDS]
    return content or words


def within_budget(frequencies: Sequence[int], budget: int) -> list[int]:
    """Positions of the query tokens worth searching for, given how many chunks contain each
    (`frequencies`, in query order): the rarest first while the sum stays within `budget`,
    always at least the rarest one, in query order.

    Ranking costs time in proportion to the matches, and a word found in most chunks (the,
    how, do) multiplies them while its BM25 weight is near 0: leaving such words out bounds
    the work and hardly moves the ranking. A token found nowhere costs nothing and is kept.
    """
    order = sorted(range(len(frequencies)), key=lambda i: (frequencies[i], i))
    kept: list[int] = []
    spent = 0
    for position in order:
        frequency = max(int(frequencies[position]), 0)
        if kept and spent + frequency > budget:
            break
        kept.append(position)
        spent += frequency
    return sorted(kept)


def fts5_terms(words: Sequence[str]) -> str | None:
    """An FTS5 MATCH expression for any of `words` (tokens from `tokens`), None for none."""
    if not words:
        return None
    return " OR ".join('"' + word.replace('"', '""') + '"' for word in words)


def websearch_any(text: str) -> str | None:
    """Input for `websearch_to_tsquery`: any token may match (its ` or ` operator)."""
    words = tokens(text)
    return " or ".join(words) if words else None


def storable_ids(ids: Sequence[str]) -> list[str]:
    """The ids that could have been stored (no NUL, no lone surrogate), in order, without
    repeats: an id that could not be stored matches nothing, and must not reach the driver."""
    return [i for i in dict.fromkeys(ids) if not _UNSAFE.search(i)]
