"""Attribute filters (`filters` of a search, OpenAI's ComparisonFilter and CompoundFilter),
evaluated on a file's attributes.

Filters are applied to a store's files before the chunk index is searched: a store holds
thousands of files at most, while its chunks can be hundreds of thousands, so choosing the
files first keeps the index's queries the same whatever the filter.

Rules where OpenAI's documentation is silent: numbers compare as numbers (an int equals the
same float), strings and booleans only with their own type (`"1"` is not `1`, `true` is not
`1`); `gt`/`gte`/`lt`/`lte` compare numbers with numbers and strings with strings, and are
false across types; a file without the key matches `ne` and `nin` only.
"""

from __future__ import annotations

from typing import Any

from hal9100.vector_stores.schemas import ComparisonFilter, CompoundFilter


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "str" if isinstance(value, str) else "other"


def _equal(left: Any, right: Any) -> bool:
    return _kind(left) == _kind(right) and left == right


def _compare(op: str, left: Any, right: Any) -> bool:
    kind = _kind(left)
    if kind != _kind(right) or kind not in ("number", "str"):
        return False
    if op == "gt":
        return bool(left > right)
    if op == "gte":
        return bool(left >= right)
    if op == "lt":
        return bool(left < right)
    return bool(left <= right)


def matches(node: ComparisonFilter | CompoundFilter, attributes: dict[str, Any] | None) -> bool:
    if isinstance(node, CompoundFilter):
        results = (matches(child, attributes) for child in node.filters)
        return all(results) if node.type == "and" else any(results)
    attributes = attributes or {}
    if node.key not in attributes:
        return node.type in ("ne", "nin")
    value = attributes[node.key]
    wanted = node.value
    if node.type in ("in", "nin"):
        options = wanted if isinstance(wanted, list) else [wanted]
        found = any(_equal(value, option) for option in options)
        return found if node.type == "in" else not found
    if isinstance(wanted, list):
        return False
    if node.type == "eq":
        return _equal(value, wanted)
    if node.type == "ne":
        return not _equal(value, wanted)
    return _compare(node.type, value, wanted)
