"""Citation markers made annotations (runs/citations.py): whole answers, and answers streamed
in pieces split anywhere, which must emit exactly what the whole answer makes."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hal9100.runs.citations import MAX_MARKER, CitationStream, annotate, sources_of
from hal9100.tools import file_search

SOURCES = {(0, 0): "file-a", (0, 1): "file-b", (1, 0): "file-c", (12, 3): "file-d"}


PATHS = {
    "/mnt/data/out.csv": "file-o",
    "/mnt/data/dir/plot.png": "file-p",
    "/mnt/data/a.": "file-q",
}


def _streamed(
    pieces: list[str], sources: Any = SOURCES, paths: Any = PATHS
) -> tuple[str, list[dict[str, Any]]]:
    """What a client accumulates from the deltas, checked against what the stream stores."""
    stream = CitationStream(sources, paths)
    value = ""
    annotations: list[dict[str, Any]] = []
    for emitted in [*(stream.feed(p) for p in pieces), stream.finish()]:
        if emitted is None:
            continue
        for note in emitted.annotations:
            # A delta's annotation points into the whole message, at text it carries itself.
            assert note["index"] == len(annotations)
            start = note["start_index"] - len(value)
            assert emitted.text[start : start + len(note["text"])] == note["text"]
            annotations.append({k: v for k, v in note.items() if k != "index"})
        value += emitted.text
    assert (value, annotations) == (stream.value, stream.annotations)
    return value, annotations


def test_known_marker_becomes_annotation() -> None:
    text = "Paris is the capital【0:1†geo.pdf】."
    value, notes = annotate(text, SOURCES)
    assert value == text
    assert notes == [
        {
            "type": "file_citation",
            "text": "【0:1†geo.pdf】",
            "start_index": 20,
            "end_index": 33,
            "file_citation": {"file_id": "file-b"},
        }
    ]
    assert value[20:33] == "【0:1†geo.pdf】"


def test_unknown_markers_are_removed_and_indices_follow() -> None:
    value, notes = annotate("A【9:9†x】 B【0:0†source】 C[7:1†y] D[1:0†z]", SOURCES)
    assert value == "A B【0:0†source】 C D[1:0†z]"
    assert [
        (n["file_citation"]["file_id"], value[n["start_index"] : n["end_index"]]) for n in notes
    ] == [
        ("file-a", "【0:0†source】"),
        ("file-c", "[1:0†z]"),
    ]


def test_what_is_no_marker_stays_text() -> None:
    for text in [
        "[link](http://x) and [1] and [0:1] and 【note】 and [0:1 †x] and 【0:1†a\nb】",
        "【",
        "[0:",
        "【0:1†unfinished",
        "【1234567:0†x】",
        "【0:0†" + "n" * 300 + "】",
    ]:
        assert annotate(text, SOURCES) == (text, [])
        assert _streamed(list(text)) == (text, [])


def test_marker_split_is_held_until_whole() -> None:
    stream = CitationStream(SOURCES)
    first = stream.feed("Yes【0")
    assert first is not None and first.text == "Yes" and stream.held == "【0"
    assert stream.feed(":1†geo") is None
    last = stream.feed(".pdf】 ok")
    assert last is not None and last.text == "【0:1†geo.pdf】 ok"
    assert last.annotations[0]["start_index"] == 3 and last.annotations[0]["index"] == 0
    assert stream.finish() is None


def test_the_hold_is_bounded() -> None:
    stream = CitationStream(SOURCES)
    stream.feed("【0:0†")
    for _ in range(MAX_MARKER):
        stream.feed("x")
        assert len(stream.held) <= MAX_MARKER
    assert stream.held == ""
    assert stream.value.startswith("【0:0†x")


def test_huge_answer_with_many_openers_is_linear_enough() -> None:
    text = ("[" * 1000 + "【" * 1000 + " word ") * 200
    assert annotate(text, SOURCES) == (text, [])


def test_hostile_text_around_markers() -> None:
    text = "\ufffd\x00😀【0:0†\ud800】" + "é" * 3
    value, notes = annotate(text, SOURCES)
    assert value == text
    assert value[notes[0]["start_index"] : notes[0]["end_index"]] == "【0:0†\ud800】"


def test_sources_from_stored_steps() -> None:
    tool = file_search.FileSearchTool(20, {"ranker": "auto", "score_threshold": 0.0})
    results = [
        {"file_id": f"file-{i}", "file_name": "n", "score": 0.5, "content": []} for i in range(2)
    ]
    done = tool._output({"query": "q"}, 3, ["q"], results, None)
    step = {
        "type": "tool_calls",
        "tool_calls": [
            {"id": "call_1", **done.details},
            {"id": "call_2", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "call_3", "type": "file_search", "file_search": {"results": results}},
        ],
    }
    assert sources_of([step]) == {(3, 0): "file-0", (3, 1): "file-1"}


_PIECES = st.lists(
    st.one_of(
        st.sampled_from(["【0:0†a】", "【0:1†b.pdf】", "[1:0†c]", "【12:3†source】", "【5:5†x】"]),
        st.sampled_from(["【", "】", "[", "]", "†", ":", "0", "1", "12", "\n", " "]),
        st.sampled_from(
            [
                "sandbox:/mnt/data/out.csv",
                "sandbox:/mnt/data/dir/plot.png",
                "sandbox:/mnt/data/a.",
                "sandbox:/mnt/data/",
                "sandbox:",
                "sand",
                "s",
                "(",
                ")",
                ".",
            ]
        ),
        st.text(max_size=8),
    ),
    max_size=30,
)


@settings(max_examples=400, deadline=None)
@given(parts=_PIECES, data=st.data())
def test_any_split_streams_what_the_whole_makes(parts: list[str], data: st.DataObject) -> None:
    text = "".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    whole = annotate(text, SOURCES, PATHS)
    assert _streamed(pieces) == whole
    value, notes = whole
    for note in notes:
        assert value[note["start_index"] : note["end_index"]] == note["text"]
    # Only markers are ever removed: without any, the text is untouched.
    if "†" not in text:
        assert value == text
        assert all(n["type"] == "file_path" for n in notes)
    for note in notes:
        if note["type"] == "file_path":
            assert PATHS[note["text"].removeprefix("sandbox:")] == note["file_path"]["file_id"]


# --- the file_search tool's own pieces ---------------------------------------------------------


@given(st.text())
def test_marker_names_cannot_end_or_fake_a_marker(filename: str) -> None:
    made = file_search.marker(3, 4, filename)
    value, notes = annotate(f"x{made}y", {(3, 4): "file-x"})
    assert value == f"x{made}y"
    assert [n["text"] for n in notes] == [made]


@given(st.dictionaries(st.sampled_from(["query", "queries", "other"]), st.from_type(object)))
def test_any_arguments_give_storable_queries(arguments: dict[str, Any]) -> None:
    for query in file_search._queries(arguments):
        assert query.strip() and "\x00" not in query
        query.encode("utf-8")  # no lone surrogate


def test_queries_of_both_shapes() -> None:
    assert file_search._queries({"query": " a\x00 "}) == ["a\ufffd"]
    assert file_search._queries({"queries": ["a", "a", " ", 3, "b\ud800"]}) == ["a", "b\ufffd"]
    assert file_search._queries({"query": "", "queries": "not a list"}) == []


def test_public_details_strip_ours_and_content_unless_asked() -> None:
    tool = file_search.FileSearchTool(20, {"ranker": "auto", "score_threshold": 0.0})
    results = [{"file_id": "f", "file_name": "n", "score": 1.0, "content": [{"type": "text"}]}]
    details = {"id": "call_1", **tool._output({"query": "q"}, 0, ["q"], results, None).details}
    plain = file_search.public_details(details, include_content=False)
    assert plain == {
        "id": "call_1",
        "type": "file_search",
        "file_search": {
            "ranking_options": {"ranker": "auto", "score_threshold": 0.0},
            "results": [{"file_id": "f", "file_name": "n", "score": 1.0}],
        },
    }
    full = file_search.public_details(details, include_content=True)
    assert full["file_search"]["results"] == results and file_search.PRIVATE not in full
    function = {"id": "c", "type": "function", "function": {"name": "f"}}
    assert file_search.public_details(function, include_content=False) is function


def test_replayed_output_is_what_the_model_read() -> None:
    tool = file_search.FileSearchTool(20, {"ranker": "auto", "score_threshold": 0.0})
    results = [
        {
            "file_id": "f",
            "file_name": "a】b.pdf",
            "score": 1.0,
            "content": [{"type": "text", "text": "T"}],
        }
    ]
    done = tool._output({"query": "q"}, 2, ["q"], results, None)
    assert file_search.replayed_output(done.details) == done.output
    assert "【2:0†a b.pdf】\nT" in done.output
    assert file_search.replayed_arguments(done.details) == '{"query": "q"}'
    empty = tool._output({"query": "q"}, 2, ["q"], [], "There are no files to search.")
    assert file_search.replayed_output(empty.details) == empty.output


def test_sandbox_links_become_file_path_annotations() -> None:
    text = (
        "Get [it](sandbox:/mnt/data/out.csv). Or sandbox:/mnt/data/out.csv, "
        "not sandbox:/mnt/data/other.csv, nor sandbox:/etc/passwd."
    )
    value, notes = annotate(text, {}, PATHS)
    assert value == text  # links stay in the text, as OpenAI's do
    assert [(n["text"], n["file_path"]["file_id"]) for n in notes] == [
        ("sandbox:/mnt/data/out.csv", "file-o"),
        ("sandbox:/mnt/data/out.csv", "file-o"),
    ]
    for note in notes:
        assert value[note["start_index"] : note["end_index"]] == note["text"]


def test_a_link_split_anywhere_is_held_until_whole() -> None:
    text = "see sandbox:/mnt/data/dir/plot.png now"
    for cut in range(len(text) + 1):
        assert _streamed([text[:cut], text[cut:]]) == annotate(text, {}, PATHS)
