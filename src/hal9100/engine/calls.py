"""Sorting a turn's tool calls: which the server runs, which go to the client, and which the
model got wrong and must redo.

OpenAI's models never call a function they were not offered and always send JSON
arguments; small open models do both. Such a call is never handed to the client as it came:
it goes back to the model as a tool error, or, when the repair is unambiguous (a trailing
comma, single quotes, a missing closing brace), its arguments are repaired.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import json_repair

from hal9100.engine.recorder import Call

# A markdown code fence some models wrap their arguments in.
_FENCE = re.compile(r"^```[a-zA-Z]*\s*(.*?)\s*```$", re.DOTALL)
# The tokens of a JSON-like text: strings in either quote, numbers, bare words, punctuation.
_TOKEN = re.compile(
    r'\s*(?:(?P<s>"(?:[^"\\]|\\.)*")|(?P<q>\'(?:[^\'\\]|\\.)*\')'
    r"|(?P<n>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(?P<w>[A-Za-z_]\w*)|(?P<p>[{}\[\]:,]))"
)
_LITERALS = {"true": "true", "True": "true", "false": "false", "False": "false"}
_LITERALS |= {"null": "null", "None": "null"}
# Bare words that some language reads as something other than the string they spell.
_OTHER_MEANINGS = {"yes", "no", "on", "off", "y", "n", "nil", "undefined", "nan", "infinity"}
_OTHER_MEANINGS |= {"inf", "none", "null", "true", "false"}

Token = tuple[str, Any]


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _tokens(text: str) -> list[Token] | None:
    """`text` as (kind, value) tokens, or None when it holds anything else (prose
    punctuation, an unterminated string): such a text is not one JSON object mistyped."""
    raw: list[tuple[str, str]] = []
    position, end = 0, len(text.rstrip())
    while position < end:
        found = _TOKEN.match(text, position)
        if found is None:
            return None
        kind = found.lastgroup
        assert kind is not None
        raw.append((kind, found.group(kind)))
        position = found.end()
    out: list[Token] = []
    for index, (kind, value) in enumerate(raw):
        following = raw[index + 1][1] if index + 1 < len(raw) else None
        if kind == "s":
            try:
                out.append(("s", json.loads(value)))
            except ValueError:
                return None
        elif kind == "q":
            inner = value[1:-1].replace("\\'", "'")
            try:
                out.append(("s", json.loads(f'"{inner}"')))
            except ValueError:
                return None
        elif kind == "n":
            if re.match(r"-?0\d", value):
                return None  # a leading zero: a code or an id, not the number it would become
            out.append(("n", Decimal(value)))
        elif kind == "w":
            if following == ":":
                out.append(("s", value))  # an unquoted key
            elif value in _LITERALS:
                out.append(("l", _LITERALS[value]))
            elif value.lower() in _OTHER_MEANINGS:
                return None  # `yes` is true in YAML, `NaN` a number in JavaScript...
            else:
                out.append(("s", value))  # an unquoted one-word string: Paris
        elif value == "," and following in ("}", "]", None):
            continue  # a trailing comma
        else:
            out.append(("p", value))
    return out


def repair_arguments(raw: str) -> str | None:
    """`raw` as a JSON object, repaired when that is unambiguous; None when it is not.

    A repair counts as unambiguous when the repaired object reads, token for token, as what
    was written, apart from quotes (single, or none around a key), Python's True/False/None,
    trailing commas, a code fence, a one-word string left unquoted, and the closing brace
    of a flat object left off at the end. So two objects run together, prose around the JSON,
    a bracket missing inside, a missing comma, a number with a leading zero, or `yes` are
    not guessed at."""
    text = raw.strip()
    if not text:
        # Open models send nothing for a function without parameters.
        return "{}"
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except ValueError:
        pass
    else:
        return text if isinstance(value, dict) else None
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    written = _tokens(text)
    if not written or written[0] != ("p", "{"):
        return None
    try:
        value = json_repair.loads(text)
    except Exception:
        return None
    if not isinstance(value, dict):
        return None
    try:
        repaired = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return None
    read = _tokens(repaired)
    if read is None:
        return None
    if read == written:
        return repaired
    # The closing brace left off: where it belonged is only certain in a flat object (in
    # `{"a": {"b": 1}, "c": 2` an inner brace may be the one missing).
    nested = any(token in (("p", "{"), ("p", "[")) for token in written[1:])
    if not nested and read[:-1] == written and read[-1] == ("p", "}"):
        return repaired
    return None


def check(call: Call, offered: set[str], *, correct: bool) -> tuple[str | None, str | None]:
    """Returns (arguments to use, None) for a usable call, or (None, error for the model)."""
    if call.name not in offered:
        if not correct:
            return call.arguments, None
        names = ", ".join(sorted(offered)) or "none"
        return None, (
            f'Error: there is no function named "{call.name}". The functions you can call '
            f"are: {names}. Nothing was run; call one of them instead."
        )
    if not correct:
        # As the model made it, repairable or not.
        return call.arguments, None
    arguments = repair_arguments(call.arguments)
    if arguments is None:
        try:
            json.loads(call.arguments)
            reason = "they are not a JSON object"
        except ValueError as exc:
            reason = f"they are not valid JSON ({exc})"
        return None, (
            f"Error: the arguments of this call to {call.name} could not be read: {reason}. "
            f"Nothing was run; call {call.name} again with its arguments as one JSON object."
        )
    return arguments, None
