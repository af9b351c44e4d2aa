"""Vector stores through the official SDK, in both modes: stores, files, batches, ingestion
of every listed file type, search (filters, ranking options, hostile queries), expiry."""

from __future__ import annotations

import io
import time

import httpx
import openai
import pytest

DOCS = {
    "curie.txt": (
        "Marie Curie was a physicist and chemist who conducted pioneering research on "
        "radioactivity. She was the first woman to win a Nobel Prize, and the only person "
        "to win Nobel Prizes in two different sciences: physics in 1903 and chemistry in 1911."
    ),
    "volcano.md": (
        "# Volcanoes\n\nA volcano is a rupture in the crust of a planet that allows hot lava, "
        "volcanic ash and gases to escape from a magma chamber below the surface. Mount "
        "Etna in Sicily is one of the most active volcanoes in the world."
    ),
    "bread.html": (
        "<html><head><title>Bread</title><style>p{color:red}</style></head><body><h1>Baking "
        "bread</h1><p>Sourdough bread is leavened by wild yeast and lactic acid bacteria. "
        "Knead the dough, let it rise overnight, then bake it in a hot oven.</p></body></html>"
    ),
}


def upload(client: openai.OpenAI, name: str, text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return client.files.create(file=(name, data), purpose="assistants").id


def wait_store(
    client: openai.OpenAI, store_id: str, timeout: float = 90
) -> openai.types.VectorStore:
    deadline = time.monotonic() + timeout
    while True:
        store = client.vector_stores.retrieve(store_id)
        if store.status != "in_progress" or time.monotonic() > deadline:
            return store
        time.sleep(0.2)


@pytest.fixture(scope="module")
def library(server, request) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A store holding DOCS, ingested once for the module's tests."""
    from conftest import make_client

    client = make_client(server.urls)
    ids = {name: upload(client, name, text) for name, text in DOCS.items()}
    store = client.vector_stores.create(name="library", file_ids=list(ids.values()))
    done = wait_store(client, store.id)
    assert done.status == "completed", done
    assert done.file_counts.completed == 3, done.file_counts
    client.close()
    return {"store": store.id, **ids}


def test_store_lifecycle(client: openai.OpenAI) -> None:
    store = client.vector_stores.create(name="empty", metadata={"team": "a"})
    assert store.object == "vector_store"
    assert store.status == "completed"
    assert store.file_counts.total == 0
    assert store.usage_bytes == 0
    assert store.metadata == {"team": "a"}
    assert client.vector_stores.retrieve(store.id).name == "empty"
    updated = client.vector_stores.update(
        store.id, name="renamed", expires_after={"anchor": "last_active_at", "days": 2}
    )
    assert updated.name == "renamed"
    assert updated.expires_at == updated.last_active_at + 2 * 86400
    ids = [s.id for s in client.vector_stores.list(limit=100)]
    assert store.id in ids
    deleted = client.vector_stores.delete(store.id)
    assert deleted.deleted and deleted.object == "vector_store.deleted"
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(store.id)


def test_ingested_files_and_search(client: openai.OpenAI, library: dict[str, str]) -> None:
    store = client.vector_stores.retrieve(library["store"])
    assert store.usage_bytes > 0
    files = list(client.vector_stores.files.list(library["store"]))
    assert {f.id for f in files} == {library[n] for n in DOCS}
    for f in files:
        assert f.status == "completed" and f.last_error is None
        assert f.chunking_strategy.type == "static"
    page = client.vector_stores.search(library["store"], query="What did Curie win?")
    assert page.data, page
    assert page.data[0].file_id == library["curie.txt"]
    assert page.data[0].filename == "curie.txt"
    assert "Nobel" in page.data[0].content[0].text
    scores = [r.score for r in page.data]
    assert scores == sorted(scores, reverse=True)
    assert all(0 <= s <= 1 for s in scores)
    # Semantic: no word of the query is in the document.
    page = client.vector_stores.search(library["store"], query="molten rock erupting mountain")
    assert page.data[0].file_id == library["volcano.md"]


def test_html_is_read_as_text(client: openai.OpenAI, library: dict[str, str]) -> None:
    pages = list(
        client.vector_stores.files.content(library["bread.html"], vector_store_id=library["store"])
    )
    text = "".join(p.text or "" for p in pages)
    assert "Sourdough" in text
    assert "color:red" not in text and "<p>" not in text


def test_search_filters_and_attributes(client: openai.OpenAI) -> None:
    store = client.vector_stores.create(name="filtered")
    a = upload(client, "a.txt", "Quarterly report on apple harvests in Normandy.")
    b = upload(client, "b.txt", "Quarterly report on apple prices in Kent.")
    fa = client.vector_stores.files.create_and_poll(
        a, vector_store_id=store.id, attributes={"region": "fr", "year": 2023, "public": True}
    )
    fb = client.vector_stores.files.create_and_poll(
        b, vector_store_id=store.id, attributes={"region": "uk", "year": 2024, "public": False}
    )
    assert fa.status == fb.status == "completed"
    assert fa.attributes == {"region": "fr", "year": 2023, "public": True}

    def found(filters: dict) -> set[str]:  # type: ignore[type-arg]
        page = client.vector_stores.search(store.id, query="apple report", filters=filters)  # type: ignore[arg-type]
        return {r.file_id for r in page.data}

    assert found({"type": "eq", "key": "region", "value": "fr"}) == {a}
    assert found({"type": "ne", "key": "region", "value": "fr"}) == {b}
    assert found({"type": "gte", "key": "year", "value": 2024}) == {b}
    assert found({"type": "lt", "key": "year", "value": 2024}) == {a}
    assert found({"type": "in", "key": "region", "value": ["uk", "de"]}) == {b}
    assert found({"type": "nin", "key": "region", "value": ["uk"]}) == {a}
    assert found({"type": "eq", "key": "public", "value": True}) == {a}
    assert found(
        {
            "type": "or",
            "filters": [
                {"type": "eq", "key": "region", "value": "uk"},
                {"type": "and", "filters": [{"type": "gt", "key": "year", "value": 2000}]},
            ],
        }
    ) == {a, b}
    assert found({"type": "eq", "key": "missing", "value": "x"}) == set()
    updated = client.vector_stores.files.update(
        file_id=a, vector_store_id=store.id, attributes={"region": "uk"}
    )
    assert updated.attributes == {"region": "uk"}
    assert found({"type": "eq", "key": "region", "value": "uk"}) == {a, b}


def test_ranking_options_and_threshold(client: openai.OpenAI, library: dict[str, str]) -> None:
    everything = client.vector_stores.search(
        library["store"], query="Nobel Prize chemistry", max_num_results=50
    )
    assert len(everything.data) >= 1
    top = everything.data[0].score
    strict = client.vector_stores.search(
        library["store"],
        query="Nobel Prize chemistry",
        ranking_options={"ranker": "none", "score_threshold": min(1.0, top + 1e-6)},
    )
    assert strict.data == []
    one = client.vector_stores.search(library["store"], query="bread", max_num_results=1)
    assert len(one.data) == 1
    rewritten = client.vector_stores.search(
        library["store"], query="What is sourdough bread?", rewrite_query=True
    )
    assert rewritten.search_query == ["sourdough bread"]


HOSTILE = [
    "What did Curie win?",
    '"unbalanced',
    "(((",
    "a) OR (b",
    "NEAR(curie nobel, 2)",
    "curie*",
    "-curie",
    "title:curie",
    "^curie",
    "'; DROP TABLE chunks; --",
    "!!!???...",
    "",
    " ",
    "é" * 50,
    "x" * 10_000,
    "curie " * 2000,
    "\u202e\u200b",
]


@pytest.mark.parametrize("query", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_queries_never_break_search(
    client: openai.OpenAI, library: dict[str, str], query: str
) -> None:
    page = client.vector_stores.search(library["store"], query=query)
    for result in page.data:
        assert 0 <= result.score <= 1


def test_unsupported_and_invalid_files(client: openai.OpenAI) -> None:
    store = client.vector_stores.create(name="bad files")
    exe = upload(client, "tool.exe", b"MZ\x90\x00" + bytes(range(256)) * 10)
    pdf = upload(client, "broken.pdf", b"%PDF-1.7\nthis is not a pdf at all")
    first = client.vector_stores.files.create_and_poll(exe, vector_store_id=store.id)
    assert first.status == "failed"
    assert first.last_error is not None and first.last_error.code == "unsupported_file"
    second = client.vector_stores.files.create_and_poll(pdf, vector_store_id=store.id)
    assert second.status == "failed"
    assert second.last_error is not None and second.last_error.code == "invalid_file"
    counts = client.vector_stores.retrieve(store.id).file_counts
    assert (counts.failed, counts.total) == (2, 2)
    failed = list(client.vector_stores.files.list(store.id, filter="failed"))
    assert {f.id for f in failed} == {exe, pdf}
    assert list(client.vector_stores.files.list(store.id, filter="completed")) == []


def test_batches_upload_and_poll(client: openai.OpenAI) -> None:
    store = client.vector_stores.create(name="batched")
    batch = client.vector_stores.file_batches.upload_and_poll(
        store.id,
        files=[
            ("one.txt", io.BytesIO(b"The first file is about owls.")),
            ("two.py", io.BytesIO(b"def hoot():\n    return 'owl'\n")),
            ("three.json", io.BytesIO(b'{"bird": "owl", "sound": "hoot"}')),
        ],
    )
    assert batch.object == "vector_store.files_batch"
    assert batch.status == "completed"
    assert batch.file_counts.completed == 3 and batch.file_counts.total == 3
    listed = list(client.vector_stores.file_batches.list_files(batch.id, vector_store_id=store.id))
    assert len(listed) == 3
    again = client.vector_stores.file_batches.retrieve(batch.id, vector_store_id=store.id)
    assert again.status == "completed"
    with pytest.raises(openai.BadRequestError):
        client.vector_stores.file_batches.cancel(batch.id, vector_store_id=store.id)


def test_batch_with_per_file_settings(client: openai.OpenAI) -> None:
    store = client.vector_stores.create(name="per file")
    a = upload(client, "a.txt", "alpha " * 300)
    b = upload(client, "b.txt", "beta " * 300)
    batch = client.vector_stores.file_batches.create_and_poll(
        vector_store_id=store.id,
        files=[
            {"file_id": a, "attributes": {"k": "a"}},
            {
                "file_id": b,
                "chunking_strategy": {
                    "type": "static",
                    "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 50},
                },
            },
        ],
    )
    assert batch.status == "completed"
    fb = client.vector_stores.files.retrieve(b, vector_store_id=store.id)
    assert fb.chunking_strategy.type == "static"
    assert fb.chunking_strategy.static.max_chunk_size_tokens == 100  # type: ignore[union-attr]
    fa = client.vector_stores.files.retrieve(a, vector_store_id=store.id)
    assert fa.attributes == {"k": "a"}
    assert fa.chunking_strategy.static.max_chunk_size_tokens == 800  # type: ignore[union-attr]


def test_delete_file_removes_it_from_search(client: openai.OpenAI) -> None:
    store = client.vector_stores.create(name="deleting")
    keep = upload(client, "keep.txt", "Penguins live in the southern hemisphere.")
    drop = upload(client, "drop.txt", "Penguins cannot fly but swim very well.")
    batch = client.vector_stores.file_batches.create_and_poll(
        vector_store_id=store.id, file_ids=[keep, drop]
    )
    assert batch.file_counts.completed == 2
    deleted = client.vector_stores.files.delete(drop, vector_store_id=store.id)
    assert deleted.deleted and deleted.object == "vector_store.file.deleted"
    page = client.vector_stores.search(store.id, query="penguins")
    assert {r.file_id for r in page.data} == {keep}
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.retrieve(drop, vector_store_id=store.id)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {
                "chunking_strategy": {
                    "type": "static",
                    "static": {"max_chunk_size_tokens": 99, "chunk_overlap_tokens": 0},
                }
            },
            "chunking_strategy.static.max_chunk_size_tokens",
        ),
        (
            {
                "chunking_strategy": {
                    "type": "static",
                    "static": {"max_chunk_size_tokens": 4097, "chunk_overlap_tokens": 0},
                }
            },
            "chunking_strategy.static.max_chunk_size_tokens",
        ),
        (
            {
                "chunking_strategy": {
                    "type": "static",
                    "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 401},
                }
            },
            "chunking_strategy.static",
        ),
        ({"chunking_strategy": {"type": "other"}}, "chunking_strategy.type"),
        ({"expires_after": {"anchor": "created_at", "days": 1}}, "expires_after.anchor"),
        ({"expires_after": {"anchor": "last_active_at", "days": 366}}, "expires_after.days"),
        ({"file_ids": ["file-nope"]}, "file_ids[0]"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_create_refuses_bad_requests(http: httpx.Client, body: dict, param: str) -> None:  # type: ignore[type-arg]
    response = http.post("/v1/vector_stores", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error


def test_search_refuses_bad_requests(http: httpx.Client, library: dict[str, str]) -> None:
    url = f"/v1/vector_stores/{library['store']}/search"
    for body in (
        {},
        {"query": "x", "max_num_results": 0},
        {"query": "x", "max_num_results": 51},
        {"query": []},
        {"query": "x", "ranking_options": {"score_threshold": 1.5}},
        {"query": "x", "ranking_options": {"ranker": "bm25"}},
        {"query": "x", "filters": {"type": "regex", "key": "a", "value": "b"}},
    ):
        response = http.post(url, json=body)
        assert response.status_code == 400, (body, response.text)
    assert http.post("/v1/vector_stores/vs_nope/search", json={"query": "x"}).status_code == 404


def test_unknown_objects_are_404(client: openai.OpenAI, library: dict[str, str]) -> None:
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.retrieve("file-nope", vector_store_id=library["store"])
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.file_batches.retrieve("vsfb_nope", vector_store_id=library["store"])
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.list("vs_nope")


def test_production_on_pgvector(mode: str, deploy) -> None:  # type: ignore[no-untyped-def]
    """The same store on a PostgreSQL with pgvector (the layout production images have), where
    dense search runs in the database instead of in the server processes."""
    if mode != "production":
        pytest.skip("PostgreSQL is production mode's")
    from conftest import make_client

    deployment = deploy(pgvector=True)
    client = make_client(deployment.urls)
    ids = {name: upload(client, name, text) for name, text in DOCS.items()}
    store = client.vector_stores.create(name="pgvector", file_ids=list(ids.values()))
    done = wait_store(client, store.id)
    assert done.status == "completed" and done.file_counts.completed == 3, done
    page = client.vector_stores.search(store.id, query="molten rock erupting mountain")
    assert page.data[0].file_id == ids["volcano.md"]
    page = client.vector_stores.search(store.id, query="What did Curie win?")
    assert page.data[0].file_id == ids["curie.txt"]
    for query in HOSTILE:
        client.vector_stores.search(store.id, query=query)
    client.close()
    import asyncio

    import asyncpg

    async def layout() -> str:
        url = deployment.env["DATABASE_URL"].replace("postgres://", "postgresql://")
        connection = await asyncpg.connect(url)
        try:
            kind = await connection.fetchval(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'chunk_index_windows'::regclass AND attname = 'embedding'"
            )
        finally:
            await connection.close()
        return str(kind)

    assert asyncio.run(layout()).startswith("vector")


# One subject per file type, each searched for by name: every file must be found.
SUBJECTS = {
    "txt": "saffron",
    "md": "glacier",
    "json": "violin",
    "html": "lighthouse",
    "css": "volcano",
    "tex": "penguin",
    "sh": "cathedral",
    "c": "submarine",
    "cpp": "orchard",
    "cs": "telescope",
    "go": "avalanche",
    "java": "harpsichord",
    "js": "kangaroo",
    "ts": "porcelain",
    "php": "hurricane",
    "py": "waterfall",
    "rb": "chameleon",
    "docx": "lantern",
    "pptx": "meteorite",
    "pdf": "tapestry",
}


def _subject_text(ext: str) -> str:
    subject = SUBJECTS[ext]
    return f"Notes on the {subject}: everything we know about the {subject}."


def _office_docs() -> dict[str, bytes]:
    import docx
    import pptx
    from pptx.util import Inches

    from test_ingestion_units import make_pdf

    document = docx.Document()
    document.add_paragraph(_subject_text("docx"))
    docx_bytes = io.BytesIO()
    document.save(docx_bytes)
    deck = pptx.Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[6])
    box = slide.shapes.add_textbox(Inches(1), Inches(1), Inches(4), Inches(1))
    box.text_frame.text = _subject_text("pptx")
    pptx_bytes = io.BytesIO()
    deck.save(pptx_bytes)
    return {
        "doc.docx": docx_bytes.getvalue(),
        "deck.pptx": pptx_bytes.getvalue(),
        "paper.pdf": make_pdf(["A first page.", _subject_text("pdf")]),
    }


TEXT_TYPES = ["txt", "md", "json", "html", "css", "tex", "sh", "c", "cpp", "cs", "go", "java"]
TEXT_TYPES += ["js", "ts", "php", "py", "rb"]


def test_every_listed_type_is_ingested_and_found(client: openai.OpenAI) -> None:
    files = {f"file.{ext}": f"// {_subject_text(ext)}\n".encode() for ext in TEXT_TYPES}
    files.update(_office_docs())
    store = client.vector_stores.create(name="every type")
    batch = client.vector_stores.file_batches.upload_and_poll(
        store.id, files=[(name, io.BytesIO(data)) for name, data in files.items()]
    )
    assert batch.file_counts.completed == len(files), list(
        client.vector_stores.files.list(store.id, filter="failed")
    )
    names = {
        f.id: client.files.retrieve(f.id).filename
        for f in client.vector_stores.files.list(store.id)
    }
    for name in files:
        page = client.vector_stores.search(store.id, query=SUBJECTS[name.rsplit(".", 1)[1]])
        assert page.data, name
        assert names[page.data[0].file_id] == name, (name, page.data[0])


def _set_expired(deployment, store_id: str) -> None:  # type: ignore[no-untyped-def]
    """Time passing: the store was last used long ago (no API moves a clock)."""
    import asyncio
    import sqlite3

    past = int(time.time()) - 30 * 86_400
    statement = "UPDATE vector_stores SET last_active_at = {0}, expires_at = {1} WHERE id = '{2}'"
    sql = statement.format(past, past + 86_400, store_id)
    if deployment.mode == "embedded":
        connection = sqlite3.connect(deployment.api[0].data_dir / "hal9100.sqlite3", timeout=30)
        with connection:
            connection.execute(sql)
        connection.close()
        return
    import asyncpg

    async def run() -> None:
        url = deployment.env["DATABASE_URL"].replace("postgres://", "postgresql://")
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


def test_expired_store(client: openai.OpenAI, server, library: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    file_id = library["curie.txt"]
    store = client.vector_stores.create(
        name="short-lived",
        file_ids=[file_id],
        expires_after={"anchor": "last_active_at", "days": 1},
    )
    assert wait_store(client, store.id).status == "completed"
    _set_expired(server, store.id)
    expired = client.vector_stores.retrieve(store.id)
    assert expired.status == "expired"
    with pytest.raises(openai.BadRequestError) as caught:
        client.vector_stores.search(store.id, query="Curie")
    assert "expired" in str(caught.value)
    listed = {s.id: s.status for s in client.vector_stores.list(limit=100)}
    assert listed[store.id] == "expired"


def _whole_log(deployment) -> str:  # type: ignore[no-untyped-def]
    # `Deployment.log` keeps the tail; the start-up lines are at the head.
    return "".join(p.log_path.read_text(errors="replace") for p in deployment.api)


def test_semantic_search_offline(mode: str, deploy, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The default install searches by meaning with no network: the tokenizer's rank files
    and the embedding model ship in packages. Every request off loopback goes to a dead
    proxy, and tiktoken's download cache is empty."""
    if mode != "embedded":
        pytest.skip("one embedded server shows it")
    from conftest import make_client

    dead = "http://127.0.0.1:9"
    deployment = deploy(
        HTTP_PROXY=dead,
        HTTPS_PROXY=dead,
        ALL_PROXY=dead,
        NO_PROXY="127.0.0.1,localhost",
        TIKTOKEN_CACHE_DIR=str(tmp_path / "empty-tiktoken-cache"),
        HF_HUB_OFFLINE="1",
    )
    client = make_client(deployment.urls)
    ids = {name: upload(client, name, text) for name, text in DOCS.items()}
    store = client.vector_stores.create(name="offline", file_ids=list(ids.values()))
    assert wait_store(client, store.id).file_counts.completed == 3
    page = client.vector_stores.search(store.id, query="molten rock erupting mountain")
    assert page.data[0].file_id == ids["volcano.md"]
    assert "embeddings=local all-MiniLM-L6-v2" in _whole_log(deployment)
    client.close()


def test_keyword_only_when_no_model(own_deployment) -> None:  # type: ignore[no-untyped-def]
    """HAL9100_EMBEDDINGS=none: the server says at start-up that search is by keywords only,
    and keyword search works."""
    from conftest import make_client

    deployment = own_deployment(HAL9100_EMBEDDINGS="none")
    assert "keywords only" in _whole_log(deployment)
    client = make_client(deployment.urls)
    ids = {name: upload(client, name, text) for name, text in DOCS.items()}
    store = client.vector_stores.create(name="keywords", file_ids=list(ids.values()))
    assert wait_store(client, store.id).file_counts.completed == 3
    page = client.vector_stores.search(store.id, query="Which volcano is in Sicily?")
    assert page.data and page.data[0].file_id == ids["volcano.md"]
    assert all(0 <= r.score <= 1 for r in page.data)
    client.close()


def test_files_upload_and_poll(client: openai.OpenAI) -> None:
    store = client.vector_stores.create(name="upload and poll")
    done = client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id,
        file=("notes.md", io.BytesIO(b"# Notes\n\nThe otter sleeps holding hands.")),
        attributes={"kind": "notes"},
    )
    assert done.status == "completed" and done.attributes == {"kind": "notes"}
    page = client.vector_stores.search(store.id, query="otter")
    assert [r.file_id for r in page.data] == [done.id]


def test_remote_embedding_server(own_deployment, scripted_llm) -> None:  # type: ignore[no-untyped-def]
    """HAL9100_EMBEDDING_URL: vectors come from an OpenAI-compatible /v1/embeddings server
    (the scripted one here), named in the start-up line; ingestion and search use it."""
    from conftest import make_client

    deployment = own_deployment(
        HAL9100_EMBEDDING_URL=scripted_llm.base_url, HAL9100_EMBEDDING_MODEL="scripted-embed"
    )
    assert "embeddings=scripted-embed at" in _whole_log(deployment)
    client = make_client(deployment.urls)
    ids = {name: upload(client, name, text) for name, text in DOCS.items()}
    store = client.vector_stores.create(name="remote", file_ids=list(ids.values()))
    assert wait_store(client, store.id).file_counts.completed == 3
    page = client.vector_stores.search(store.id, query="Which volcano is in Sicily?")
    assert page.data and page.data[0].file_id == ids["volcano.md"]
    client.close()
