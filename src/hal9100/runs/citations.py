"""Citation markers in an assistant's answer made into OpenAI's `file_citation` annotations,
as the answer streams.

The `file_search` tool shows the model each result under a marker `【turn:index†name】`
(`turn`: which file_search call of the run, `index`: which of its results). A marker in the
answer that names a result of the run becomes an annotation whose `text` is the marker and
whose `start_index`/`end_index` locate it in the message's text value (Python string indices,
code points); a marker naming no result (a made-up one, or one copied from an earlier run's
answer) is removed from the text. The `name` part is not checked: models shorten, translate
or replace it (OpenAI's own answers say `†source`).

The same markers written with ASCII brackets, `[turn:index†name]`, are accepted too: small
models write them so, and the dagger makes such text a citation attempt rather than prose or
a Markdown link.

The answer arrives in arbitrary pieces: a marker split across them is held back until it is
complete or clearly is not one, at most `MAX_MARKER` characters. Decisions depend only on the
text, never on where it was split, so the pieces a stream emits join to exactly what
`annotate` makes of the whole answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hal9100.tools import code_interpreter
from hal9100.tools.file_search import stored_turn

# Where a marker ends, by where it opens.
CLOSERS = {"【": "】", "[": "]"}
DAGGER = "†"
MAX_DIGITS = 6
MAX_NAME = 256
# The longest marker: opener, two numbers, colon, dagger, name, closer.
MAX_MARKER = 2 * MAX_DIGITS + MAX_NAME + 4

# (turn, index) -> file id: the results of a run's file_search calls.
Sources = Mapping[tuple[int, int], str]

_MARKER, _MAYBE, _NOT = 0, 1, 2


def _digits(text: str, at: int) -> int:
    end = at
    while end < len(text) and end - at < MAX_DIGITS + 1 and "0" <= text[end] <= "9":
        end += 1
    return end


def _match(text: str, at: int) -> tuple[int, int, int, int]:
    """Whether a marker opens at `text[at]` (an opener): (_MARKER, end, turn, index) for a
    whole one, (_MAYBE, ...) when `text` ends before that is known, (_NOT, ...) otherwise."""
    closer = CLOSERS[text[at]]
    size = len(text)
    numbers: list[int] = []
    position = at + 1
    for separator in (":", DAGGER):
        end = _digits(text, position)
        if end - position > MAX_DIGITS:
            return _NOT, 0, 0, 0
        if end == size:
            return _MAYBE, 0, 0, 0
        if end == position or text[end] != separator:
            return _NOT, 0, 0, 0
        numbers.append(int(text[position:end]))
        position = end + 1
    limit = position + MAX_NAME
    while position < size:
        char = text[position]
        if char == closer:
            return _MARKER, position + 1, numbers[0], numbers[1]
        if char in "\r\n" or position >= limit:
            return _NOT, 0, 0, 0
        position += 1
    return _MAYBE, 0, 0, 0


LINK = "sandbox:/mnt/data/"
MAX_LINK = len(LINK) + 512
# What ends a sandbox link's path: space, quotes, brackets and Markdown's link syntax.
_LINK_END = frozenset(" \t\r\n\"'`<>()[]{}|")
# Sentence punctuation right after a link, when the path without it is the file.
_TRAILING = ".,;:!?"
_OPENER = re.compile("[【\\[]|" + re.escape(LINK[:1]))


def _match_link(text: str, at: int, final: bool) -> tuple[int, int]:
    """Whether a sandbox link opens at `text[at]`: (_MARKER, end) when it is whole,
    (_MAYBE, 0) when `text` ends before that is known, (_NOT, 0) otherwise."""
    head = text[at : at + len(LINK)]
    if head != LINK:
        return (_MAYBE, 0) if not final and LINK.startswith(head) else (_NOT, 0)
    end = at + len(LINK)
    while end < len(text) and text[end] not in _LINK_END and end - at < MAX_LINK:
        end += 1
    if end == len(text) and not final and end - at < MAX_LINK:
        return _MAYBE, 0
    return (_MARKER, end) if end > at + len(LINK) else (_NOT, 0)


def _next_opener(text: str, start: int) -> int:
    found = _OPENER.search(text, start)
    return found.start() if found else -1


@dataclass(slots=True)
class Piece:
    """What a stream emits for one piece of the answer: its text and the annotations it
    completes (indices into the whole message; `index` their position in the message's
    annotations, as OpenAI's message deltas carry it)."""

    text: str
    annotations: list[dict[str, Any]]

    def delta(self) -> dict[str, Any]:
        """The `text` of a `thread.message.delta` content part."""
        return {"value": self.text, "annotations": self.annotations}


@dataclass(slots=True)
class CitationStream:
    """One answer's text as it streams: `feed` each piece as it comes, `finish` at the end;
    `value` and `annotations` are what was emitted so far, as the message stores them."""

    sources: Sources
    # "/mnt/data/<path>" -> file id: the files the run's code wrote, for `sandbox:` links.
    paths: Mapping[str, str] = field(default_factory=dict)
    _pending: str = ""
    _parts: list[str] = field(default_factory=list)
    _length: int = 0
    _annotations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def value(self) -> str:
        return "".join(self._parts)

    @property
    def annotations(self) -> list[dict[str, Any]]:
        """Stored shape: without the deltas' `index`."""
        return [{k: v for k, v in a.items() if k != "index"} for a in self._annotations]

    @property
    def held(self) -> str:
        """Text received but not emitted yet (the start of what may be a marker)."""
        return self._pending

    def _note(self, kind: str, text: str, start: int, file_id: str, pending: int) -> dict[str, Any]:
        """An annotation of `text` at `start` in the message (`pending`: those of this piece
        before it), in a delta's shape."""
        return {
            "index": len(self._annotations) + pending,
            "type": kind,
            "text": text,
            "start_index": start,
            "end_index": start + len(text),
            kind: {"file_id": file_id},
        }

    def feed(self, text: str) -> Piece | None:
        self._pending += text
        return self._scan(final=False)

    def finish(self) -> Piece | None:
        """The answer ended: a marker left open is text after all."""
        return self._scan(final=True)

    def _scan(self, final: bool) -> Piece | None:
        text = self._pending
        out: list[str] = []
        notes: list[dict[str, Any]] = []
        length = self._length
        position = 0
        while position < len(text):
            opener = _next_opener(text, position)
            if opener < 0:
                out.append(text[position:])
                length += len(text) - position
                position = len(text)
                break
            out.append(text[position:opener])
            length += opener - position
            if text[opener] == LINK[0]:
                state, end = _match_link(text, opener, final)
                if state == _MAYBE:
                    position = opener
                    break
                if state == _NOT:
                    out.append(text[opener])
                    length += 1
                    position = opener + 1
                    continue
                link = text[opener:end]
                path = link[len("sandbox:") :]
                while path not in self.paths and path and path[-1] in _TRAILING:
                    path, link = path[:-1], link[:-1]
                file_id = self.paths.get(path)
                if file_id is not None:
                    notes.append(self._note("file_path", link, length, file_id, len(notes)))
                else:
                    link = text[opener:end]
                out.append(link)
                length += len(link)
                position = opener + len(link)
                continue
            state, end, turn, index = _match(text, opener)
            if state == _MAYBE and not final:
                position = opener
                break
            if state == _MARKER:
                file_id = self.sources.get((turn, index))
                if file_id is not None:
                    marker = text[opener:end]
                    notes.append(self._note("file_citation", marker, length, file_id, len(notes)))
                    out.append(marker)
                    length += len(marker)
                position = end
                continue
            out.append(text[opener])
            length += 1
            position = opener + 1
        self._pending = text[position:]
        emitted = "".join(out)
        if not emitted and not notes:
            return None
        self._parts.append(emitted)
        self._length = length
        self._annotations.extend(notes)
        return Piece(emitted, notes)


def annotate(
    text: str, sources: Sources, paths: Mapping[str, str] | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """A whole answer's text value and annotations, as a message stores them."""
    stream = CitationStream(sources, paths or {})
    stream.feed(text)
    stream.finish()
    return stream.value, stream.annotations


def paths_of(step_details: list[dict[str, Any]]) -> dict[str, str]:
    """The files a run's code_interpreter calls wrote, by path, from its `tool_calls` step
    details: what `sandbox:` links in its answers may name (the latest write wins)."""
    out: dict[str, str] = {}
    for details in step_details:
        for call in details.get("tool_calls", []):
            if call.get("type") == code_interpreter.NAME:
                out.update(code_interpreter.exported_files(call))
    return out


def sources_of(step_details: list[dict[str, Any]]) -> dict[tuple[int, int], str]:
    """The results that markers may cite, from a run's `tool_calls` step details (as
    `tools.file_search` stores its calls)."""
    out: dict[tuple[int, int], str] = {}
    for details in step_details:
        for call in details.get("tool_calls", []):
            if call.get("type") != "file_search":
                continue
            turn = stored_turn(call)
            if turn is None:
                continue
            results = (call.get("file_search") or {}).get("results") or []
            for index, result in enumerate(results):
                if isinstance(result, dict) and isinstance(result.get("file_id"), str):
                    out[(turn, index)] = result["file_id"]
    return out
