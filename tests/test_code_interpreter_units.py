"""The code_interpreter tool's own pieces: the code decoded from arguments as they stream,
and the names files get in /mnt/data."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from hal9100.tools.code_interpreter import partial_code, sandbox_names

_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(code=_TEXT, ascii_only=st.booleans(), spaced=st.booleans())
def test_every_prefix_of_the_arguments_decodes_to_a_prefix_of_the_code(
    code: str, ascii_only: bool, spaced: bool
) -> None:
    arguments = json.dumps({"code": code}, ensure_ascii=ascii_only)
    if not spaced:
        arguments = arguments.replace('"code": ', '"code":')
    seen = ""
    for end in range(len(arguments) + 1):
        decoded = partial_code(arguments[:end])
        assert code.startswith(decoded)
        assert decoded.startswith(seen)  # deltas only ever append
        seen = decoded
    assert seen == code


def test_arguments_without_code_decode_to_nothing() -> None:
    for arguments in ("", "{", '{"other": "x"}', "print(1)", '{"code": 5}'):
        assert partial_code(arguments) == ""


def test_names_are_plain_unique_and_safe() -> None:
    names = sandbox_names(
        [
            ("file-1", "data.csv"),
            ("file-2", "data.csv"),
            ("file-3", "../../etc/passwd"),
            ("file-4", ""),
            ("file-5", "a\x00b\nc"),
            ("file-6", ".."),
            ("file-1", "again.csv"),
        ]
    )
    assert names == {
        "file-1": "data.csv",
        "file-2": "file-2-data.csv",
        "file-3": ".._.._etc_passwd",
        "file-4": "file-4",
        "file-5": "a_b_c",
        "file-6": "file-6",
    }
    assert all("/" not in n and "\x00" not in n for n in names.values())
