"""Text embeddings for vector stores: a local ONNX model (the default) or any
OpenAI-compatible embeddings server. The settings that choose between them (and keyword-only
search without either) come with the vector stores themselves (issue 11)."""

from __future__ import annotations

from hal9100.embeddings.base import Embedder, EmbeddingError
from hal9100.embeddings.local import LocalEmbedder
from hal9100.embeddings.remote import RemoteEmbedder

__all__ = ["Embedder", "EmbeddingError", "LocalEmbedder", "RemoteEmbedder"]
