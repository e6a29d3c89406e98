"""How many output tokens a model may be asked for: the limit `max_tokens` must stay within.

genai-prices carries each model's context window but not its output limit, and no other installed package
carries it either, so batchgen keeps the figures of OpenAI's model pages in a small table,
`batchgen/data/output_limits.toml`. A request above the limit is refused by the API line by line, after the
batch was uploaded and queued; the loader refuses the job before that (`loader.load_spec`).

A dated snapshot (gpt-4o-mini-2024-07-18) or a fine-tune (ft:gpt-4o-mini-2024-07-18:org::id) has the limit of
its model, unless the table names it itself (gpt-4o-2024-05-13 has 4,096, not gpt-4o's 16,384). A model the
table does not name has no known limit: its max_tokens is not checked, and the plan says so.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class OutputLimit:
    """The output-token limit that applies to a model, and the table entry it comes from."""

    model: str
    tokens: int


def output_limit(model: str) -> OutputLimit | None:
    """The output limit of a model, or None when the table does not know it."""
    table = _table()
    for name in _names(model):
        if name in table:
            return OutputLimit(name, table[name])
    return None


def _names(model: str) -> Iterator[str]:
    """The model itself, then the model a fine-tune is made from, then that without its snapshot date."""
    name = model.removeprefix("ft:").split(":", 1)[0] if model.startswith("ft:") else model
    yield name
    undated = _DATED.sub("", name)
    if undated != name:
        yield undated


@lru_cache(maxsize=1)
def _table() -> dict[str, int]:
    text = files("batchgen").joinpath("data", "output_limits.toml").read_text(encoding="utf-8")
    return {str(name): int(tokens) for name, tokens in tomllib.loads(text)["output_tokens"].items()}
