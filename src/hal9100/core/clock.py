"""Wall-clock time as the API shows it (Unix seconds)."""

from __future__ import annotations

import time


def now() -> int:
    return int(time.time())


_last_ordinal = 0


def ordinal() -> int:
    """A position in time for ordering a conversation's entries across tables (messages,
    run steps, items): microseconds, strictly increasing within a process, so entries
    written in one second keep their order."""
    global _last_ordinal
    _last_ordinal = max(time.time_ns() // 1000, _last_ordinal + 1)
    return _last_ordinal
