"""Text out of the files a vector store ingests, page by page.

The formats are OpenAI's list for `file_search` less `.doc`: the old binary Word format has no
permissively licensed parser in Python, so a `.doc` is refused as unsupported. PDF goes through
pypdf, DOCX through python-docx, PPTX through python-pptx, HTML through the standard library's
`html.parser`; everything else is text (JSON too: OpenAI indexes it as text, valid or not).

Blocking, CPU-bound code: the ingestion job runs it in a worker thread.
"""

from __future__ import annotations

import codecs
import io
import re
import zipfile
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from typing import Any

from hal9100.core.text import storable

# OpenAI's `file_search` extensions, without `.doc` (see the module docstring).
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".c",
        ".cpp",
        ".cs",
        ".css",
        ".docx",
        ".go",
        ".html",
        ".java",
        ".js",
        ".json",
        ".md",
        ".pdf",
        ".php",
        ".pptx",
        ".py",
        ".rb",
        ".sh",
        ".tex",
        ".ts",
        ".txt",
    }
)

# A DOCX/PPTX whose members declare more than this, unpacked, is refused before any library
# inflates it: a few KB of zip can declare gigabytes.
MAX_UNPACKED_BYTES = 200 * 1024 * 1024
# Each member costs memory and time in the zip directory and the OPC package even when empty.
MAX_ARCHIVE_MEMBERS = 10_000
# Longest message an error carries (parser exceptions can quote whole objects of the file).
MAX_MESSAGE = 200

_DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
_PPTX_TYPE = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
# Only consulted for a file name without an extension.
_KIND_OF_TYPE = {
    "application/pdf": "pdf",
    _DOCX_TYPE: "docx",
    _PPTX_TYPE: "pptx",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/json": "text",
    "application/javascript": "text",
    "application/typescript": "text",
    "application/x-sh": "text",
    "application/x-tex": "text",
}


class UnsupportedFile(Exception):
    """Not a format we index (last_error code `unsupported_file`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidFile(Exception):
    """Claims a supported format but cannot be read as one (last_error code `invalid_file`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _short(text: str) -> str:
    text = storable(text)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _invalid(what: str, exc: BaseException) -> InvalidFile:
    detail = " ".join(str(exc).split())
    return InvalidFile(_short(f"{what}: {detail}" if detail else f"{what} ({type(exc).__name__})"))


def _kind(filename: str, content_type: str | None) -> str:
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if dot and stem.strip("."):  # ".bashrc" is a name, not an extension
        suffix = "." + ext.lower()
        if suffix not in SUPPORTED_EXTENSIONS:
            raise UnsupportedFile(_short(f"Files with extension {suffix} are not supported."))
        if suffix == ".ts" and media.startswith("video/"):  # MPEG transport stream
            raise UnsupportedFile("Video files are not supported.")
        return {".pdf": "pdf", ".docx": "docx", ".pptx": "pptx", ".html": "html"}.get(
            suffix, "text"
        )
    kind = _KIND_OF_TYPE.get(media) or ("text" if media.startswith("text/") else None)
    if kind is None:
        raise UnsupportedFile(
            _short(
                f"Cannot tell the format of a file named {base!r} without an extension"
                + (f" from its type {media!r}." if media else ".")
            )
        )
    return kind


def iter_pages(data: bytes, filename: str, content_type: str | None = None) -> Iterator[str]:
    """The text of the file, one page at a time: one per PDF page, one per PPTX slide, one for
    anything else. Every page is `storable`; a page with no text (a scanned PDF) is "".

    The format comes from the extension of `filename`; `content_type` only helps a name
    without one. UnsupportedFile is raised here, by the call, and so are most InvalidFile
    (corrupt archive, zip bomb, unreadable or encrypted PDF); the rest while iterating.
    """
    kind = _kind(filename, content_type)
    charset = _charset(content_type)
    opener: Callable[[bytes], Iterator[str]]
    if kind == "pdf":
        opener = _pdf_pages
    elif kind == "docx":
        opener = _docx_pages
    elif kind == "pptx":
        opener = _pptx_pages
    elif kind == "html":
        opener = lambda raw: iter([_html_text(_decode(raw, charset))])  # noqa: E731
    else:
        opener = lambda raw: iter([_decode(raw, charset)])  # noqa: E731
    return _guarded(opener, data, kind)


def _guarded(opener: Callable[[bytes], Iterator[str]], data: bytes, kind: str) -> Iterator[str]:
    """Opens eagerly (errors at the call), then yields storable pages; any library error, now
    or later, becomes InvalidFile."""
    what = f"Could not read the file as {kind.upper()}"
    try:
        pages = opener(data)
    except (InvalidFile, UnsupportedFile):
        raise
    except Exception as exc:
        raise _invalid(what, exc) from exc
    return _storable_pages(pages, what)


def _storable_pages(pages: Iterator[str], what: str) -> Iterator[str]:
    while True:
        try:
            page = next(pages)
        except StopIteration:
            return
        except (InvalidFile, UnsupportedFile):
            raise
        except Exception as exc:
            raise _invalid(what, exc) from exc
        yield storable(page)


# --- text ------------------------------------------------------------------------------------

_BOMS = (
    # UTF-32's little-endian BOM begins with UTF-16's: test it first.
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_SNIFF = 1024
# Controls that text does not contain (tab, newlines, form feed, escape are fine).
_CONTROL = re.compile("[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")
_CONTROL_SAMPLE = 8192
_CONTROL_SHARE = 0.1


def _charset(content_type: str | None) -> str | None:
    for param in (content_type or "").split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            name = value.strip().strip('"').lower()
            try:
                return codecs.lookup(name).name
            except LookupError:
                return None
    return None


def _utf16_without_bom(head: bytes) -> str | None:
    """UTF-16 sniffed from its NULs: mostly-ASCII UTF-16 has one in every other byte."""
    even, odd = head[0::2], head[1::2]
    if len(odd) < 8:
        return None
    if odd.count(0) >= 0.9 * len(odd) and even.count(0) <= 0.1 * len(even):
        return "utf-16-le"
    if even.count(0) >= 0.9 * len(even) and odd.count(0) <= 0.1 * len(odd):
        return "utf-16-be"
    return None


def _decode(data: bytes, charset: str | None = None) -> str:
    text: str | None = None
    for bom, codec in _BOMS:
        if data.startswith(bom):
            text = data.decode(codec, "replace")
            break
    else:
        head = data[:_SNIFF]
        if b"\x00" in head:
            codec16 = _utf16_without_bom(head)
            if codec16 is None:
                raise InvalidFile("The file is binary, not text (it contains NUL bytes).")
            try:
                text = data.decode(codec16)
            except UnicodeDecodeError as exc:
                raise InvalidFile("The file is binary, not text.") from exc
        else:
            for candidate in ("utf-8", charset):
                if candidate is not None:
                    try:
                        text = data.decode(candidate)
                        break
                    except UnicodeDecodeError:
                        pass
            if text is None:
                try:
                    text = data.decode("cp1252")
                except UnicodeDecodeError:
                    # The five bytes cp1252 leaves undefined: latin-1 maps every byte.
                    text = data.decode("latin-1")
    sample = text[:_CONTROL_SAMPLE]
    if sample and len(_CONTROL.findall(sample)) > _CONTROL_SHARE * len(sample):
        raise InvalidFile("The file is binary, not text (mostly control characters).")
    return text.replace("\r\n", "\n")


# --- HTML ------------------------------------------------------------------------------------

_DROPPED = frozenset({"script", "style", "template", "noscript", "svg", "math", "head"})
_KEPT_IN_HEAD = frozenset({"title"})
_PREFORMATTED = frozenset({"pre", "textarea", "listing", "plaintext"})
_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "br", "caption", "dd", "details",
        "dialog", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1",
        "h2", "h3", "h4", "h5", "h6", "header", "hr", "html", "li", "main", "nav", "ol", "p",
        "pre", "section", "summary", "table", "tbody", "td", "tfoot", "th", "thead", "title",
        "tr", "ul",
    }
)  # fmt: skip
_SPACES = re.compile(r"\s+")


class _TextOfHTML(HTMLParser):
    """What a browser shows as text, roughly: whitespace collapsed outside <pre>, a line break
    around each block, nothing of scripts, styles or the head but its title."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._dropped: list[str] = []  # open dropped elements, innermost last
        self._title = 0
        self._pre = 0
        self._line_start = True

    def _break(self) -> None:
        if self.parts and self.parts[-1].endswith(" "):
            self.parts[-1] = self.parts[-1].rstrip(" ")
        self.parts.append("\n")
        self._line_start = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body" and "head" in self._dropped:
            # The head ends where the body starts, closed or not.
            self._dropped.remove("head")
        if tag in _DROPPED:
            self._dropped.append(tag)
            return
        if tag in _KEPT_IN_HEAD:
            self._title += 1
        if tag in _PREFORMATTED:
            self._pre += 1
        if tag in _BLOCKS:
            self._break()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCKS and tag not in _DROPPED:
            self._break()

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROPPED:
            # Close the innermost open element of that name (and whatever it left open).
            if tag in self._dropped:
                del self._dropped[len(self._dropped) - 1 - self._dropped[::-1].index(tag) :]
            return
        if tag in _KEPT_IN_HEAD and self._title:
            self._title -= 1
        if tag in _PREFORMATTED and self._pre:
            self._pre -= 1
        if tag in _BLOCKS:
            self._break()

    def handle_data(self, data: str) -> None:
        # A <title> is text even inside the dropped <head>.
        if self._dropped and not (self._title and self._dropped == ["head"]):
            return
        if self._pre:
            self.parts.append(data)
            self._line_start = data.endswith("\n")
            return
        data = _SPACES.sub(" ", data)
        if self._line_start:
            data = data.lstrip(" ")
        if data:
            self.parts.append(data)
            self._line_start = False


# Constructs html.parser cannot close, each after the last terminator it could close with.
_UNCLOSABLE = (
    (re.compile(r">"), "<", "&lt;"),
    (re.compile(r"--\s*>"), "<!--", "&lt;!--"),
    (re.compile(r"\]\s*>"), "<![", "&lt;!["),
)


def _defused(markup: str) -> str:
    """`markup` with the starts of constructs that can never close turned into text.

    html.parser (CPython 3.11) rescans to the end of the input for each of them, and then
    again once per character at the end: minutes for a few hundred KB of "<?", "<!--x>" or
    "<![CDATA[x>". Unclosed, they would have come out as text anyway.
    """
    for terminator, start, text in _UNCLOSABLE:
        last = 0
        for last_match in terminator.finditer(markup):
            last = last_match.end()
        if start in markup[last:]:
            markup = markup[:last] + markup[last:].replace(start, text)
    return markup


def _html_text(markup: str) -> str:
    markup = _defused(markup)
    parser = _TextOfHTML()
    parser.feed(markup)
    parser.close()
    return re.sub(r"\n{3,}", "\n\n", "".join(parser.parts)).strip("\n")


# --- PDF -------------------------------------------------------------------------------------


def _pdf_pages(data: bytes) -> Iterator[str]:
    from pypdf import PasswordType, PdfReader

    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
        raise InvalidFile("The PDF is encrypted with a password.")
    count = len(reader.pages)
    return (reader.pages[i].extract_text() or "" for i in range(count))


# --- DOCX and PPTX ---------------------------------------------------------------------------


def _check_archive(data: bytes, kind: str) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise _invalid(f"The file is not a valid {kind} (not a zip archive)", exc) from exc
    if len(members) > MAX_ARCHIVE_MEMBERS:
        raise InvalidFile(f"The {kind} archive has more than {MAX_ARCHIVE_MEMBERS} parts.")
    if sum(member.file_size for member in members) > MAX_UNPACKED_BYTES:
        raise InvalidFile(
            f"The {kind} archive unpacks to more than {MAX_UNPACKED_BYTES // 2**20} MB."
        )


def _lines(*texts: str) -> str:
    return "\n".join(text for text in texts if text)


def _docx_pages(data: bytes) -> Iterator[str]:
    import docx
    from docx.table import Table

    _check_archive(data, "DOCX")
    document = docx.Document(io.BytesIO(data))

    def blocks(container: Any) -> Iterator[str]:
        for item in container.iter_inner_content():
            if isinstance(item, Table):
                yield from table(item)
            else:
                yield item.text

    def table(item: Table) -> Iterator[str]:
        for row in item.rows:
            cells: list[str] = []
            seen: set[int] = set()
            for cell in row.cells:
                # A merged cell comes back once per grid column it spans.
                if id(cell._tc) in seen:
                    continue
                seen.add(id(cell._tc))
                cells.append(" ".join(_lines(*blocks(cell)).split("\n")).strip())
            yield " | ".join(cells)

    return iter([_lines(*blocks(document))])


def _pptx_pages(data: bytes) -> Iterator[str]:
    from pptx import Presentation
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    _check_archive(data, "PPTX")
    presentation = Presentation(io.BytesIO(data))

    def shapes(container: Any) -> Iterator[str]:
        for shape in container:
            if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
                yield from shapes(shape.shapes)
            elif getattr(shape, "has_text_frame", False) and shape.has_text_frame:
                yield shape.text_frame.text
            elif getattr(shape, "has_table", False) and shape.has_table:
                for row in shape.table.rows:
                    yield " | ".join(" ".join(cell.text.split()) for cell in row.cells)

    def slide_text(slide: Any) -> str:
        texts = list(shapes(slide.shapes))
        if slide.has_notes_slide:
            notes = slide.notes_slide.notes_text_frame
            if notes is not None:
                texts.append(notes.text)
        # python-pptx writes a line break inside a paragraph as a vertical tab.
        return _lines(*texts).replace("\v", "\n")

    return (slide_text(slide) for slide in presentation.slides)
