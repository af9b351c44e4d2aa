"""Embeddings from a server speaking OpenAI's `POST /v1/embeddings` (OpenAI, vLLM, Ollama,
llama.cpp's server, Hugging Face TEI), through the official `openai` client."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import openai

from hal9100.embeddings.base import EmbeddingError, unit_rows

# Inputs per request: well under OpenAI's limit (2,048), and a request a slow self-hosted
# server answers well within the timeout.
BATCH_SIZE = 64


class RemoteEmbedder:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.name = model
        # Learned from the first answer; every later answer must match it.
        self.dimensions = 0
        self.base_url = base_url
        self.batch_size = batch_size
        # Self-hosted servers usually want no key, but the client insists on one.
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "unused",
            timeout=timeout,
            max_retries=max_retries,
        )

    async def embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            vectors.extend(await self._embed_batch(texts[start : start + self.batch_size]))
        return vectors

    async def aclose(self) -> None:
        await self._client.close()

    async def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        # OpenAI refuses an empty string as input; a space embeds to the same "nothing".
        inputs = [text or " " for text in texts]
        try:
            # The raw response: the SDK's parsed object would accept any JSON (it does not
            # validate), and a proxy's HTML page must be an error, not an AttributeError.
            # "float" because several self-hosted servers cannot send base64.
            raw = await self._client.embeddings.with_raw_response.create(
                model=self.name, input=inputs, encoding_format="float"
            )
            payload = json.loads(raw.http_response.content)
        except openai.APIStatusError as exc:
            raise EmbeddingError(
                f"embedding server {self.base_url} answered HTTP {exc.status_code}: "
                f"{_server_message(exc)}"
            ) from exc
        except openai.APIConnectionError as exc:
            raise EmbeddingError(
                f"embedding server {self.base_url} unreachable: {exc.__cause__ or exc}"
            ) from exc
        except openai.OpenAIError as exc:
            raise EmbeddingError(f"embedding server {self.base_url} failed: {exc}") from exc
        except ValueError:
            raise EmbeddingError(
                f"embedding server {self.base_url} answered something that is not JSON"
            ) from None
        matrix = self._vectors(payload, len(inputs))
        return unit_rows(matrix, f"embedding server {self.base_url}")

    def _vectors(self, payload: Any, count: int) -> np.ndarray[Any, Any]:
        where = f"embedding server {self.base_url}"
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise EmbeddingError(f"{where} answered JSON that is no embeddings list")
        if len(data) != count:
            raise EmbeddingError(f"{where} answered {len(data)} embeddings for {count} inputs")
        rows: list[list[float]] = [[] for _ in range(count)]
        indexes: list[int] = [
            item["index"]
            for item in data
            if isinstance(item, dict) and type(item.get("index")) is int
        ]
        # Servers send them in order with an index; trust the index only when it is a
        # permutation of the positions, else the order.
        order = indexes if sorted(indexes) == list(range(count)) else list(range(count))
        for position, item in enumerate(data):
            vector = item.get("embedding") if isinstance(item, dict) else None
            if (
                not isinstance(vector, list)
                or not vector
                or not all(
                    isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                    for x in vector
                )
            ):
                raise EmbeddingError(f"{where} answered an embedding that is no list of numbers")
            rows[order[position]] = vector
        width = len(rows[0])
        if any(len(row) != width for row in rows):
            raise EmbeddingError(f"{where} answered embeddings of different lengths")
        if self.dimensions and width != self.dimensions:
            raise EmbeddingError(
                f"{where} answered {width}-dimensional embeddings, earlier {self.dimensions}"
            )
        self.dimensions = width
        return np.array(rows, dtype=np.float64)


def _server_message(exc: openai.APIStatusError) -> str:
    """The server's own words: OpenAI's {"error": {"message"}}, TEI's {"error": "..."},
    or the start of whatever body came back."""
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    text = exc.response.text.strip()
    return text[:500] if text else exc.message
