"""Public retrieval evaluation corpus built from the Python FAQ shipped in Debian's python3.11-doc.

No registry reachable from the project's machines ships a classic IR test collection (Cranfield,
CACM, SciFact, ...) with its documents inside the package, so this module uses the next best
thing: question/answer pairs that nobody on the project wrote and that were fixed long before any
tuning.  The CPython documentation's FAQ (``faq/*.rst``, in the Debian package ``python3.11-doc``
under ``/usr/share/doc/python3.11/html/_sources``) is a set of sections whose heading is a user
question and whose body is the answer.  Each FAQ heading becomes a query; its body, with the
question removed, is the one relevant document (grade 1), as in open-domain SQuAD evaluation.
Every other section of the same documentation (tutorial, library reference, language reference,
HOWTOs, ...) is added as a distractor document, so the retrievers search a realistic
documentation site rather than a few hundred answers.

Install once per machine: ``apt-get install -y python3.11-doc``.
"""

from __future__ import annotations

import re
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEBIAN_PACKAGE = "python3.11-doc"
DEFAULT_ROOTS = (Path("/usr/share/doc/python3.11/html/_sources"),)
# Prose-heavy parts of the manual; changelogs (whatsnew) and build/packaging trivia are left out
# because they mention nearly every API by name and would only add noise.
DISTRACTOR_DIRS = ("tutorial", "howto", "library", "reference", "using", "extending")
# A section shorter than this is a bare grouping heading, not something a user would want back.
MIN_DISTRACTOR_WORDS = 10

_ADORNMENT = re.compile(r"^([=\-~^\"'*+#`:.])\1{2,}\s*$")
_ROLE = re.compile(r":(?:[\w.+-]+:)?([\w.+-]+):`([^`]*?)`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^`>]*>`_{0,2}")
_REF_TARGET = re.compile(r"\s*<[^<>]*>$")
_LITERAL = re.compile(r"``(.+?)``")
_SIMPLE_REF = re.compile(r"`([^`]+)`_{1,2}")
_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::\s*(.*)$")
_OPTION = re.compile(r"^\s+:[\w-]+:.*$")
_COMMENT = re.compile(r"^\s*\.\.(\s|$)")
# Directives whose argument is layout or bookkeeping rather than text a reader sees.
_SILENT_DIRECTIVES = frozenset(
    {
        "index",
        "toctree",
        "only",
        "highlight",
        "contents",
        "include",
        "image",
        "figure",
        "raw",
        "testsetup",
        "testcleanup",
        "sectionauthor",
        "moduleauthor",
        "currentmodule",
        "tabularcolumns",
        "literalinclude",
        "productionlist",
    }
)


@dataclass(frozen=True)
class Corpus:
    """Documents, queries and graded relevance judgements, keyed by stable string ids."""

    docs: dict[str, tuple[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    source: str


@dataclass(frozen=True)
class _Section:
    level: int
    title: str
    body: str


def _clean_inline(text: str) -> str:
    def role(match: re.Match[str]) -> str:
        inner = _REF_TARGET.sub("", match.group(2)).strip().lstrip("~!")
        # :pep:`8` must read "PEP 8", not a bare number.
        name = match.group(1)
        return f"{name.upper()} {inner}" if name in ("pep", "rfc") else inner

    text = _ROLE.sub(role, text)
    text = _LINK.sub(r"\1", text)
    text = _LITERAL.sub(r"\1", text)
    return _SIMPLE_REF.sub(r"\1", text)


def _clean_body(lines: list[str]) -> str:
    out: list[str] = []
    in_directive_options = False
    for line in lines:
        if in_directive_options and _OPTION.match(line):
            continue
        in_directive_options = False
        directive = _DIRECTIVE.match(line)
        if directive:
            in_directive_options = True
            name, argument = directive.group(2), directive.group(3)
            if name not in _SILENT_DIRECTIVES and argument:
                out.append(directive.group(1) + argument)
            continue
        if _COMMENT.match(line):
            continue
        out.append(line.rstrip())
    text = _clean_inline("\n".join(out))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _sections(path: Path) -> list[_Section]:
    """Split one reStructuredText source into sections, levels numbered by first appearance."""
    lines = path.read_text(encoding="utf-8").splitlines()
    styles: list[tuple[str, bool]] = []
    heads: list[tuple[int, int, int, str]] = []  # (first line, body start, level, title)
    i = 0
    while i < len(lines) - 1:
        title, under = lines[i].strip(), lines[i + 1]
        is_heading = (
            bool(title)
            and not _ADORNMENT.match(lines[i])
            and not lines[i].startswith((" ", "\t"))
            and _ADORNMENT.match(under) is not None
            and len(under.strip()) >= len(title)
        )
        if not is_heading:
            i += 1
            continue
        over = i > 0 and _ADORNMENT.match(lines[i - 1]) is not None
        style = (under[0], over)
        if style not in styles:
            styles.append(style)
        start = i - 1 if over else i
        heads.append((start, i + 2, styles.index(style), _clean_inline(title)))
        i += 2
    sections = []
    for n, (_, body_start, level, title) in enumerate(heads):
        end = heads[n + 1][0] if n + 1 < len(heads) else len(lines)
        sections.append(_Section(level, title, _clean_body(lines[body_start:end])))
    return sections


def _faq_pairs(path: Path, rel: str) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    sections = _sections(path)
    if len(sections) < 2:
        return {}, {}
    question_level = max(s.level for s in sections)
    page_title = sections[0].title
    docs: dict[str, tuple[str, str]] = {}
    queries: dict[str, str] = {}
    group = ""
    for n, section in enumerate(sections):
        if section.level == 0:
            continue
        # Grouping headings carry no text of their own; one gui.rst question sits at the grouping
        # level, so a trailing question mark also marks a question.
        is_question = section.level == question_level or section.title.endswith("?")
        if not is_question or not section.body:
            if not section.body:
                group = section.title
            continue
        key = f"{rel}#{n:03d}"
        docs[key] = (f"{page_title} / {group}" if group else page_title, section.body)
        queries[key] = section.title
    return docs, queries


def _package_version() -> str:
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", DEBIAN_PACKAGE],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() or "unknown"


def find_root() -> Path:
    """Where the installed package keeps the documentation sources."""
    for root in DEFAULT_ROOTS:
        if (root / "faq").is_dir():
            return root
    raise FileNotFoundError(
        f"Python documentation sources not found; run: apt-get install -y {DEBIAN_PACKAGE}"
    )


def load(*, distractors: bool = True, root: Path | None = None) -> Corpus:
    """Build the corpus from the installed documentation sources.

    With ``distractors=False`` only the FAQ answers are searched (about 180 documents).
    """
    base = root if root is not None else find_root()
    docs: dict[str, tuple[str, str]] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for path in sorted((base / "faq").glob("*.rst.txt")):
        rel = path.relative_to(base).as_posix().removesuffix(".rst.txt")
        faq_docs, faq_queries = _faq_pairs(path, rel)
        docs.update(faq_docs)
        for key, text in faq_queries.items():
            qid = f"q:{key}"
            queries[qid] = text
            qrels[qid] = {key: 1}
    if distractors:
        for folder in DISTRACTOR_DIRS:
            for path in sorted((base / folder).rglob("*.rst.txt")):
                rel = path.relative_to(base).as_posix().removesuffix(".rst.txt")
                for n, section in enumerate(_sections(path)):
                    if len(section.body.split()) >= MIN_DISTRACTOR_WORDS:
                        docs[f"{rel}#{n:03d}"] = (section.title, section.body)
    if not queries:
        raise ValueError(f"no FAQ questions found under {base / 'faq'}")
    return Corpus(docs, queries, qrels, f"{DEBIAN_PACKAGE} {_package_version()} ({base})")


def _stats(corpus: Corpus) -> list[str]:
    doc_words = [len(text.split()) for _, text in corpus.docs.values()]
    query_words = [len(text.split()) for text in corpus.queries.values()]
    judged = sum(len(rel) for rel in corpus.qrels.values())
    gold = {doc for rel in corpus.qrels.values() for doc in rel}
    sample_qid = next(iter(corpus.queries))
    sample_doc = next(iter(corpus.qrels[sample_qid]))
    return [
        f"source:       {corpus.source}",
        f"documents:    {len(corpus.docs)} ({len(gold)} judged FAQ answers, "
        f"{len(corpus.docs) - len(gold)} distractor sections)",
        f"queries:      {len(corpus.queries)}",
        f"judgements:   {judged} (grade 1, {judged / len(corpus.qrels):.2f} relevant per query)",
        f"doc words:    mean {statistics.mean(doc_words):.0f}, "
        f"median {statistics.median(doc_words):.0f}, max {max(doc_words)}",
        f"query words:  mean {statistics.mean(query_words):.1f}, max {max(query_words)}",
        f"corpus chars: {sum(len(t) + len(b) for t, b in corpus.docs.values())}",
        f"sample query: {sample_qid} -> {corpus.queries[sample_qid]!r}",
        f"its answer:   {sample_doc} -> {corpus.docs[sample_doc][1][:70]!r}...",
        "licence:      PSF License Agreement (Python documentation)",
    ]


if __name__ == "__main__":
    print("\n".join(_stats(load())))
