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
from collections import Counter
from typing import Any

import json_repair

from hal9100.engine.recorder import Call

# A markdown code fence some models wrap their arguments in.
_FENCE = re.compile(r"^```[a-zA-Z]*\s*(.*?)\s*```$", re.DOTALL)
# The literals of a JSON-like text: strings in either quote, numbers, bare words.
_TOKENS = re.compile(
    r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|[A-Za-z_]\w*'
)
_WORDS = {"true": "True", "false": "False", "null": "None", "none": "None"}


def _literal(token: str) -> str:
    if token.startswith('"'):
        try:
            value: str = json.loads(token)
            return value
        except ValueError:
            return token[1:-1]
    if token.startswith("'"):
        return token[1:-1]
    return _WORDS.get(token.lower(), token)


def _flatten(value: Any, out: list[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            out.append(key)
            _flatten(item, out)
    elif isinstance(value, list):
        for item in value:
            _flatten(item, out)
    elif isinstance(value, bool) or value is None:
        out.append(str(value))
    elif isinstance(value, str):
        out.append(value)
    else:
        out.append(json.dumps(value))


def repair_arguments(raw: str) -> str | None:
    """`raw` as a JSON object, repaired when that is unambiguous; None when it is not.

    A repair counts as unambiguous when it keeps every literal of the text and invents none:
    the repaired object's keys and values are, as a multiset, exactly the literals written
    (so two objects run together, or prose around the JSON, are not guessed at)."""
    text = raw.strip()
    if not text:
        # Open models send nothing for a function without parameters.
        return "{}"
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    else:
        return text if isinstance(value, dict) else None
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        value = json_repair.loads(text)
    except Exception:
        return None
    if not isinstance(value, dict):
        return None
    found: list[str] = []
    _flatten(value, found)
    written = [_literal(t) for t in _TOKENS.findall(text)]
    numbers_equal = Counter(_normal(t) for t in found) == Counter(_normal(t) for t in written)
    if not numbers_equal:
        return None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _normal(token: str) -> str:
    """Numbers compare by value (1.0 and 1 are one literal to a repair)."""
    try:
        return repr(float(token))
    except ValueError:
        return token


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
