"""What the vector stores call to turn text into vectors, whatever computes them."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


class EmbeddingError(Exception):
    """Embedding failed: the model could not be loaded, or the server refused or answered
    nonsense. `message` is meant for the vector-store file's `last_error`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@runtime_checkable
class Embedder(Protocol):
    # Names the model: vectors of different models must never be compared.
    name: str
    # 0 until known: a remote embedder learns it from its first answer.
    dimensions: int

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One unit-length vector per text, in order; [] for []."""
        ...

    async def aclose(self) -> None: ...


def unit_rows(matrix: np.ndarray[Any, Any], what: str) -> list[list[float]]:
    """Rows scaled to length 1, as lists. A row that is not finite or is all zeros cannot be
    normalised (and would poison every cosine taken with it): that is an error, naming `what`
    produced it."""
    rows = np.asarray(matrix, dtype=np.float64)
    if rows.ndim != 2:
        raise EmbeddingError(f"{what} gave an array of shape {rows.shape}, not one vector a text")
    if not np.isfinite(rows).all():
        raise EmbeddingError(f"{what} gave a vector with non-finite numbers (NaN or infinity)")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if rows.shape[0] and not (norms > 0).all():
        raise EmbeddingError(f"{what} gave an all-zero vector, which has no direction")
    unit: list[list[float]] = (rows / norms).tolist() if rows.shape[0] else []
    return unit
