"""Text that no database takes back, and what becomes of it.

NUL is refused by PostgreSQL in text and JSON; a surrogate is half of a UTF-16 pair and no
character at all (SQLite stores it, and then no read of the row can encode it). Clients'
text with either is refused (`core.guards`); a model's is made storable here, with U+FFFD in
their place, before anyone sees it.
"""

from __future__ import annotations

import re

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def problem(text: str) -> str | None:
    """What makes `text` unstorable, in words for an error message, or None."""
    if "\x00" in text:
        return "a NUL character (\\u0000), which is not allowed in text"
    found = UNSTORABLE.search(text)
    if found is not None:
        return (
            f"a lone surrogate (\\u{ord(found.group()):04x}), which is not valid Unicode "
            "(a surrogate is only valid as half of a UTF-16 pair)"
        )
    return None


def storable(text: str) -> str:
    """`text` with NUL and lone surrogates replaced by U+FFFD, and surrogate pairs joined
    into the characters they stand for."""
    if text.isascii():  # O(1) in CPython
        return text.replace("\x00", "\ufffd") if "\x00" in text else text
    if UNSTORABLE.search(text) is None:
        return text
    joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return joined.replace("\x00", "\ufffd")


class StorableStream:
    """Makes a stream of text fragments storable, fragment by fragment, as `storable` does.

    A high surrogate that ends a fragment waits for the next one: a proxy that cut a string
    mid-character (JavaScript strings are UTF-16) sends the halves of a pair in two fragments.
    """

    __slots__ = ("_high",)

    def __init__(self) -> None:
        self._high = ""

    def feed(self, text: str) -> str:
        if self._high:
            text, self._high = self._high + text, ""
        elif text.isascii():
            if "\x00" not in text:
                return text
        elif UNSTORABLE.search(text) is None:
            return text
        if text and "\ud800" <= text[-1] <= "\udbff":
            text, self._high = text[:-1], text[-1]
        return storable(text)

    def flush(self) -> str:
        """What is still held back, once the stream ended: a high surrogate alone."""
        held, self._high = self._high, ""
        return "\ufffd" if held else ""
