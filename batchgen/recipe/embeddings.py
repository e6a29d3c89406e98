"""The embedding models' vector sizes, and the `dimensions` each of them takes.

An embeddings answer is checked against the size its request asked for: the model's own size, or `dimensions`
where the model can shorten its vectors (the text-embedding-3 family, from 1 up to its own size). ada-002 always
answers with 1536 numbers and the API refuses `dimensions` for it. A model not listed here (a local model behind
an OpenAI-compatible server) has no known size: without `dimensions` any non-empty vector is taken.
"""

from __future__ import annotations

from typing import Final

# name -> (numbers per vector, whether the request may ask for fewer with `dimensions`)
EMBEDDING_MODELS: Final[dict[str, tuple[int, bool]]] = {
    "text-embedding-3-small": (1536, True),
    "text-embedding-3-large": (3072, True),
    "text-embedding-ada-002": (1536, False),
}


def vector_size(model: str, dimensions: int | None = None) -> int | None:
    """How many numbers an answer to this request holds; None when the model's size is not known."""
    if dimensions is not None:
        return dimensions
    known = EMBEDDING_MODELS.get(model)
    return known[0] if known else None


def dimensions_problem(model: str, dimensions: int) -> str | None:
    """Why `dimensions` cannot be asked of this model (one line), or None when it can."""
    known = EMBEDDING_MODELS.get(model)
    if known is None:
        return None
    size, shortenable = known
    if not shortenable:
        return f"{model} always returns {size} numbers and does not take dimensions; remove it"
    if dimensions > size:
        return f"{model} returns at most {size} numbers, so dimensions = {dimensions} is too many"
    return None
