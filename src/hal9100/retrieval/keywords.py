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


def fts5_match(text: str) -> str | None:
    """An FTS5 MATCH expression for `text` (any of its tokens), or None when it has none."""
    words = tokens(text)
    if not words:
        return None
    return " OR ".join('"' + word.replace('"', '""') + '"' for word in words)


def websearch_all(text: str) -> str | None:
    """Input for `websearch_to_tsquery`: every token must match; None when there are none."""
    words = tokens(text)
    return " ".join(words) if words else None


def websearch_any(text: str) -> str | None:
    """Input for `websearch_to_tsquery`: any token may match (its ` or ` operator)."""
    words = tokens(text)
    return " or ".join(words) if words else None


def storable_ids(ids: Sequence[str]) -> list[str]:
    """The ids that could have been stored (no NUL, no lone surrogate), in order, without
    repeats: an id that could not be stored matches nothing, and must not reach the driver."""
    return [i for i in dict.fromkeys(ids) if not _UNSAFE.search(i)]
