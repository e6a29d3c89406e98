"""Lineage: the example each example came from (its parent) and the seed at the top of its chain (its root).

Pure, no I/O. A request shows its model a few candidate parents, in order: the seeds of a first stage, the source
examples of a stage evolved `from` another. Each example's parent is the candidate it most resembles (the Jaccard
similarity of their word sets, `normalize_text` words), on a tie the candidate at the example's own position, then
the first. A model told "one evolved example per original" may still reorder them, and a first stage's examples
follow no order at all, so the resemblance names the one it was made from where the position cannot.

Keys: a seed is "seed:<i>" (its line in the seed file, from 0), an example "custom_id#position". A root is the
root of the parent; a seed is its own root, and an example whose request showed no candidate (a first stage without
seeds) has no parent and is the root of its own chain.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from batchgen.dataset.validate import ASCII_NOT_WORD, normalize_text

Candidate = Sequence[str | None]  # [key, root]


def example_texts(raw: Any, fmt: str) -> list[str]:
    """The texts of an example as stored (a dict in format `fmt`), whatever roles they have."""
    if not isinstance(raw, dict):
        return []
    if fmt == "sharegpt":
        return [t.get("value", "") for t in raw.get("conversations", []) if isinstance(t, dict)]
    if fmt == "chatml":
        return [t.get("content", "") for t in raw.get("messages", []) if isinstance(t, dict)]
    if fmt == "alpaca":
        return [raw.get(key, "") for key in ("instruction", "input", "output")]
    return [raw.get("input", "")]


def words(texts: Iterable[Any]) -> frozenset[str]:
    """The normalized words of some texts, as a set."""
    joined = " ".join(t for t in texts if isinstance(t, str))
    if joined.isascii():  # normalize_text's words, without joining them to split them again
        return frozenset(joined.lower().translate(ASCII_NOT_WORD).split())
    return frozenset(normalize_text(joined).split())


def similarity(a: frozenset[str], b: frozenset[str]) -> float:
    """Jaccard similarity of two word sets (1.0 for two empty ones)."""
    common = len(a & b)
    union = len(a) + len(b) - common
    return common / union if union else 1.0


class ParentChooser:
    """Chooses each example's parent among its request's candidates, by resemblance (see the module docstring).

    `candidates` maps each candidate key to its example (in format `fmt`); their word sets are made once, on first
    use.
    """

    def __init__(self, candidates: Mapping[str, Any], fmt: str) -> None:
        self._examples, self._fmt = candidates, fmt
        self._words: dict[str, frozenset[str]] = {}

    def _words_of(self, key: str) -> frozenset[str]:
        found = self._words.get(key)
        if found is None:
            found = self._words[key] = words(example_texts(self._examples.get(key), self._fmt))
        return found

    def choose(self, raw: Any, position: int, candidates: Sequence[Candidate], own_key: str) -> tuple[str | None, str]:
        """(parent, root) of the example `raw` at `position` of a request shown `candidates` ([key, root], ...);
        `own_key` is the example's own key, the root of a chain it starts."""
        if not candidates:
            return None, own_key
        if len(candidates) == 1:
            best = candidates[0]
        else:
            mine = words(example_texts(raw, self._fmt))
            at = position if position < len(candidates) else 0

            def score(index: int) -> tuple[float, bool, int]:
                key = candidates[index][0]
                return (similarity(mine, self._words_of(key)) if key is not None else -1.0, index == at, -index)

            best = candidates[max(range(len(candidates)), key=score)]
        parent, root = best[0], best[1]
        return parent, root if root is not None else (parent or own_key)


def seed_candidates(seed_indices: Iterable[int]) -> list[list[str]]:
    """The candidate parents of a first-stage request: its seeds, each its own root."""
    return [[f"seed:{i}", f"seed:{i}"] for i in seed_indices]


__all__ = ["Candidate", "ParentChooser", "example_texts", "seed_candidates", "similarity", "words"]
