"""The rule for repairing a model's tool-call arguments (`engine/calls.py`), a pure function:
repaired only when the repair is unambiguous, never guessed. The loop around it is tested
end to end in test_tool_loop.py."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hal9100.engine.calls import repair_arguments

KEYS = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=8)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
)
OBJECTS = st.dictionaries(
    KEYS,
    st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3), max_leaves=6),
    max_size=5,
)


@given(OBJECTS)
def test_valid_json_objects_pass_as_sent(value: dict[str, object]) -> None:
    text = json.dumps(value, indent=1)
    assert repair_arguments(text) == text


# What models write: printable text. (With control characters or unusual escapes the repair
# library may change a string; the rule then refuses the repair, the safe side.)
PRINTABLE = st.text(st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="\\"))
PLAIN_OBJECTS = st.dictionaries(
    PRINTABLE.filter(bool),
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | PRINTABLE,
    min_size=1,
    max_size=5,
)


@given(PLAIN_OBJECTS)
def test_a_missing_closing_brace_is_repaired_to_the_same_object(
    value: dict[str, object],
) -> None:
    text = json.dumps(value)
    repaired = repair_arguments(text[:-1])
    assert repaired is not None
    assert json.loads(repaired) == value


@given(OBJECTS.filter(bool), OBJECTS.filter(bool))
def test_two_objects_run_together_are_never_guessed(
    first: dict[str, object], second: dict[str, object]
) -> None:
    text = json.dumps(first) + json.dumps(second)
    repaired = repair_arguments(text)
    # Only when both are the same object is the answer not a guess.
    assert repaired is None or json.loads(repaired) == first == second


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", {}),
        ("   ", {}),
        ('{"city": "Paris",}', {"city": "Paris"}),
        ("{'city': 'Paris'}", {"city": "Paris"}),
        ("{city: Paris", {"city": "Paris"}),
        ('{"a": 1, "b": true, "c": null', {"a": 1, "b": True, "c": None}),
        ('```json\n{"city": "Paris"}\n```', {"city": "Paris"}),
        ('{"q": "a \\"quoted\\" word"', {"q": 'a "quoted" word'}),
        ('{"price": 1.50, "n": -3,}', {"price": 1.5, "n": -3}),
        ("{'ok': True, 'none': None}", {"ok": True, "none": None}),
    ],
)
def test_unambiguous_repairs(raw: str, expected: dict[str, object]) -> None:
    repaired = repair_arguments(raw)
    assert repaired is not None
    assert json.loads(repaired) == expected


@pytest.mark.parametrize(
    "raw",
    [
        'Sure! Here it is: {"city": "Paris"}',
        '{"city": "Paris"} I hope that helps',
        "[1, 2]",
        '"Paris"',
        "42",
        "null",
        "Paris",
        '{"a": 1}{"a": 2}',
        "{city: New York}",
        # Reviewed cases where a repair would change the meaning.
        '{"zip": 02134}',
        '{"filter": {"status": "open", "limit": 5}',
        '{"ids": [1, 2, "name": "x"}',
        '{"a": ["x" "y"]}',
        '{"flag": yes,}',
        '{"x": NaN}',
        '{"a": "b" "c": 2}',
    ],
)
def test_ambiguous_or_not_an_object_is_refused(raw: str) -> None:
    assert repair_arguments(raw) is None
