"""Ingestion survives a killed worker: a file whose worker dies mid-ingestion ends
`completed` (another worker, or the restarted embedded server, does it again from the start),
never `in_progress` for ever, and its chunks are not doubled. A file over the token limit
fails with `invalid_file`."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest

from conftest import DeployFactory, make_client
from deployments import ServerProcess, server_env, start_embedded
from scripted_llm import ScriptedLLM

CRASH_ENV = {
    "HAL9100_LEASE_SECONDS": "2",
    "HAL9100_SWEEP_SECONDS": "0.5",
    "HAL9100_VECTOR_STORE_MAX_FILE_TOKENS": "60000",
}

# About 25,000 tokens: some 130 embedding windows, seconds of CPU for the local model, so a
# kill right after the claim lands mid-file.
WORDS = "aardvark badger cormorant dingo egret ferret gecko heron ibis jackal".split()
BIG_TEXT = "\n".join(
    f"Paragraph {i}: the {WORDS[i % 10]} met the {WORDS[(i * 7) % 10]} near river {i}."
    for i in range(1800)
)
NEEDLE = "The lighthouse keeper's password is periwinkle-42."


def _wait_file(client: openai.OpenAI, store_id: str, file_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.vector_stores.files.retrieve(file_id, vector_store_id=store_id).status
        if status != "in_progress":
            return status
        time.sleep(0.2)
    return "in_progress"


def _wait_log(logs: list[ServerProcess] | list, text: str, timeout: float = 60):  # type: ignore[no-untyped-def,type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in logs:
            if text in process.log():
                return process
        time.sleep(0.05)
    raise AssertionError(f"nobody logged {text!r}")


def _check_searchable(client: openai.OpenAI, store_id: str, file_id: str) -> None:
    page = client.vector_stores.search(store_id, query="lighthouse keeper password")
    assert page.data and page.data[0].file_id == file_id
    # One attempt's chunks only: the top results are not the same chunk twice.
    texts = [r.content[0].text for r in page.data]
    assert len(texts) == len(set(texts))


def test_worker_killed_mid_file_production(mode: str, own_deployment: DeployFactory) -> None:
    if mode != "production":
        pytest.skip("worker processes exist in production mode only")
    deployment = own_deployment(**CRASH_ENV)
    client = make_client(deployment.urls)
    file_id = client.files.create(
        file=("big.txt", (NEEDLE + "\n" + BIG_TEXT).encode()), purpose="assistants"
    ).id
    store = client.vector_stores.create(name="crash")
    client.vector_stores.files.create(vector_store_id=store.id, file_id=file_id)
    victim = _wait_log(deployment.workers, f"ingesting {store.id}/{file_id} (attempt 1)")
    victim.kill()
    assert _wait_file(client, store.id, file_id, timeout=120) == "completed"
    survivor = next(w for w in deployment.workers if w is not victim)
    assert f"ingesting {store.id}/{file_id} (attempt 2)" in survivor.log()
    _check_searchable(client, store.id, file_id)
    client.close()


def test_server_killed_mid_file_embedded(
    scripted_llm: ScriptedLLM, tmp_path: Path, mode: str
) -> None:
    if mode != "embedded":
        pytest.skip("one embedded server is the whole deployment")
    env = {**server_env(scripted_llm), **CRASH_ENV}
    first = start_embedded(env, tmp_path)
    client = make_client(first.url)
    file_id = client.files.create(
        file=("big.txt", (NEEDLE + "\n" + BIG_TEXT).encode()), purpose="assistants"
    ).id
    store = client.vector_stores.create(name="crash")
    client.vector_stores.files.create(vector_store_id=store.id, file_id=file_id)
    _wait_log(first.api, f"ingesting {store.id}/{file_id} (attempt 1)")
    first.api[0].kill()
    first.stop()
    client.close()

    second = start_embedded(env, tmp_path)
    try:
        client = make_client(second.url)
        assert _wait_file(client, store.id, file_id, timeout=120) == "completed"
        _check_searchable(client, store.id, file_id)
        client.close()
    finally:
        second.stop()


def test_file_over_the_token_limit_fails(mode: str, own_deployment: DeployFactory) -> None:
    deployment = own_deployment(**CRASH_ENV)
    client = make_client(deployment.urls)
    file_id = client.files.create(
        file=("huge.txt", (BIG_TEXT * 3).encode()), purpose="assistants"
    ).id
    store = client.vector_stores.create(name="too big")
    done = client.vector_stores.files.create_and_poll(file_id, vector_store_id=store.id)
    assert done.status == "failed"
    assert done.last_error is not None and done.last_error.code == "invalid_file"
    assert "tokens" in done.last_error.message
    client.close()
